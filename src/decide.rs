//! What a request is: its canonical path, the route rule that governs it, and the
//! credentials it carries. Pure functions over request parts; no I/O.

use http::{header, request::Parts, HeaderMap, HeaderValue, Method};
use percent_encoding::percent_decode_str;

use crate::config::{Auth, Route, RouteMode};
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

/// Where a token was found; upgrade-only sources are removed before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Authorization,
    Cookie,
    Query,
    WebSocketProtocol,
}

/// A bearer token found in the request.
#[derive(Debug, Clone)]
pub struct Credential<'a> {
    /// Borrowed from the request where it can be (the common case: no copy per request).
    pub token: std::borrow::Cow<'a, str>,
    pub source: Source,
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

/// Finds the one access token in a request. Two tokens (two Authorization headers, or a
/// header and a cookie) are refused: which one would the backend believe?
pub fn extract<'a>(
    parts: &'a Parts,
    auth: &'a Auth,
    upgrade: bool,
) -> Result<Option<Credential<'a>>, ProxyError> {
    let mut found: Option<Credential<'a>> = None;
    let mut put = |c: Credential<'a>| {
        if found.is_some() {
            return Err(ProxyError::InvalidRequest(
                "credentials were sent more than once",
            ));
        }
        found = Some(c);
        Ok(())
    };
    let mut authz = parts.headers.get_all(header::AUTHORIZATION).iter();
    if let Some(v) = authz.next() {
        if authz.next().is_some() {
            return Err(ProxyError::InvalidRequest(
                "more than one Authorization header",
            ));
        }
        // Another scheme (Basic, Digest) is not a credential of ours: RFC 6750 §3.1
        // answers it like a request without a token.
        if let Some(t) = bearer(v)? {
            put(Credential {
                token: t.into(),
                source: Source::Authorization,
            })?;
        }
    }
    if let Some(name) = &auth.cookie {
        let mut hits = cookie_values(&parts.headers, name);
        if let Some(t) = hits.next() {
            if hits.next().is_some() {
                return Err(ProxyError::InvalidRequest(
                    "the token cookie was sent more than once",
                ));
            }
            put(Credential {
                token: check_token_chars(t)?.into(),
                source: Source::Cookie,
            })?;
        }
    }
    if upgrade {
        if let Some(name) = &auth.query_param {
            let mut hits = query_values(parts.uri.query().unwrap_or(""), name);
            if let Some(t) = hits.next() {
                if hits.next().is_some() {
                    return Err(ProxyError::InvalidRequest(
                        "the token parameter was sent more than once",
                    ));
                }
                put(Credential {
                    token: check_token_chars(&t)?.to_string().into(),
                    source: Source::Query,
                })?;
            }
        }
        if let Some(prefix) = &auth.websocket_protocol_prefix {
            if let Some(t) = protocol_token(&parts.headers, prefix) {
                put(Credential {
                    token: check_token_chars(t)?.into(),
                    source: Source::WebSocketProtocol,
                })?;
            }
        }
    }
    if let Some(c) = &found {
        if c.token.len() > auth.max_token_bytes {
            return Err(ProxyError::InvalidToken("the access token is too large"));
        }
    }
    Ok(found)
}

/// `Bearer <token68>`, scheme case-insensitive (RFC 6750 §2.1, RFC 9110 §11.1);
/// `None` for another scheme.
fn bearer(v: &HeaderValue) -> Result<Option<&str>, ProxyError> {
    let s = v
        .to_str()
        .map_err(|_| ProxyError::InvalidRequest("the Authorization header is malformed"))?;
    let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        return Err(ProxyError::InvalidToken("the bearer token is empty"));
    }
    check_token_chars(token).map(Some)
}

/// token68 characters only (RFC 9110 §11.2): anything else is not a token we issued.
fn check_token_chars(t: &str) -> Result<&str, ProxyError> {
    let body = t.trim_end_matches('=');
    // A fold with `&` (no early exit) lets the compiler vectorise the scan; tokens are
    // short and almost always valid, so there is nothing to gain from stopping early.
    let ok = body.bytes().fold(true, |ok, b| {
        ok & (b.is_ascii_alphanumeric()
            | (b == b'-')
            | (b == b'.')
            | (b == b'_')
            | (b == b'~')
            | (b == b'+')
            | (b == b'/'))
    });
    if !body.is_empty() && ok {
        Ok(t)
    } else {
        Err(ProxyError::InvalidToken("the access token is malformed"))
    }
}

/// Values of cookie `name` across every Cookie header.
pub fn cookie_values<'a>(h: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = String> + 'a {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode_str(k).decode_utf8().ok()?;
        (k == name).then(|| {
            percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The query string without parameter `name` (None when nothing is left).
pub fn query_without(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map(|(k, _)| k).unwrap_or(pair);
            percent_decode_str(k)
                .decode_utf8()
                .map(|k| k != name)
                .unwrap_or(true)
        })
        .collect();
    let q = kept.join("&");
    (!q.is_empty()).then_some(q)
}

fn protocol_token<'a>(h: &'a HeaderMap, prefix: &str) -> Option<&'a str> {
    h.get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(prefix))
}

/// `Sec-WebSocket-Protocol` with the token-carrying entry removed.
pub fn protocols_without_token(h: &HeaderMap, prefix: &str) -> Option<HeaderValue> {
    let kept: Vec<&str> = h
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with(prefix))
        .collect();
    if kept.is_empty() {
        None
    } else {
        HeaderValue::from_str(&kept.join(", ")).ok()
    }
}
