//! Route rules: which rule governs a canonical path, and whether a request (its method,
//! its verified claims) meets that rule. Pure functions; no I/O.

use http::{header, request::Parts, HeaderMap, Method};
use serde_json::{Map, Value};

use crate::config::{Route, RouteMode};
use crate::error::ProxyError;

/// The rule for a canonical path: longest matching prefix, on segment boundaries, with
/// `;parameters` ignored for matching (servlet containers drop them).
pub fn route_for<'a>(routes: &'a [Route], canonical: &str) -> Option<&'a Route> {
    let stripped;
    let path = if canonical.contains(';') {
        stripped = canonical
            .split('/')
            .map(|s| s.split(';').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("/");
        stripped.as_str()
    } else {
        canonical
    };
    routes.iter().find(|r| {
        r.prefix.is_empty()
            || path == r.prefix
            || (path.starts_with(&r.prefix) && path.as_bytes().get(r.prefix.len()) == Some(&b'/'))
    })
}

pub fn mode_of(route: Option<&Route>) -> RouteMode {
    route.map(|r| r.mode).unwrap_or_default()
}

/// Is this a WebSocket upgrade request (HTTP/1.1 `Upgrade: websocket`)?
pub fn is_websocket_upgrade(parts: &Parts) -> bool {
    parts.method == Method::GET
        && parts
            .headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
        && header_has_token(&parts.headers, header::CONNECTION, "upgrade")
}

pub fn header_has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Route requirements: allowed methods, and required claim values when there is an
/// identity to check them against.
pub fn check_route(
    route: &Route,
    method: &Method,
    claims: Option<&Map<String, Value>>,
) -> Result<(), ProxyError> {
    if !route.methods.is_empty() && !route.methods.contains(method) {
        return Err(ProxyError::InsufficientScope(
            "this method is not allowed for this route",
        ));
    }
    let Some(claims) = claims else { return Ok(()) };
    for (claim, want) in &route.require_claims {
        if !claim_matches(claims, claim, want) {
            return Err(ProxyError::InsufficientScope(
                "the token lacks a claim this route requires",
            ));
        }
    }
    // The first limit whose condition fits this identity decides its methods.
    let limit = route.limits.iter().find(|l| {
        l.claims
            .iter()
            .all(|(claim, want)| claim_matches(claims, claim, want))
    });
    if limit.is_some_and(|l| !l.methods.contains(method)) {
        return Err(ProxyError::InsufficientScope(
            "this method is not allowed for this kind of session",
        ));
    }
    Ok(())
}

/// Claim `claim` has value `want`: string equal, array contains, space-separated
/// `scope` contains, or a bool/number written as text.
fn claim_matches(claims: &Map<String, Value>, claim: &str, want: &str) -> bool {
    match claims.get(claim) {
        Some(Value::String(s)) => {
            s == want || (claim == "scope" && s.split(' ').any(|x| x == want))
        }
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(want)),
        Some(Value::Bool(b)) => b.to_string() == want,
        Some(Value::Number(n)) => n.to_string() == want,
        _ => false,
    }
}
