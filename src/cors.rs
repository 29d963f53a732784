//! CORS: which origins are allowed, the sidecar's answer to a preflight (policy mode),
//! and the CORS headers on responses: the sidecar's own always (so a page can read
//! `X-Auth-Error`, `Retry-After` and a renewed pair), every response in policy mode.
//! Headers the backend set are replaced, never duplicated.

use http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::body::ProxyBody;
use crate::config::{Cors, CorsMode};

/// A preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`. An `OPTIONS`
/// without them is an ordinary request and needs a token like any other.
pub fn is_preflight(parts: &Parts) -> bool {
    parts.method == Method::OPTIONS
        && parts.headers.contains_key(header::ORIGIN)
        && parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The request's `Origin` when the policy allows it (exactly one, well-formed).
pub fn allowed_origin(cfg: &Cors, headers: &HeaderMap) -> Option<HeaderValue> {
    let mut all = headers.get_all(header::ORIGIN).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return None;
    };
    let o = v.to_str().ok()?;
    cfg.allowed_origins
        .iter()
        .any(|p| matches(p, o))
        .then(|| v.clone())
}

fn matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" {
        return origin != "null";
    }
    match pattern.split_once("://*.") {
        // `https://*.example.com`: one or more labels before the suffix, same scheme.
        Some((scheme, suffix)) => origin
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            .and_then(|host| host.strip_suffix(suffix))
            .and_then(|sub| sub.strip_suffix('.'))
            .is_some_and(|sub| {
                !sub.is_empty()
                    && sub
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            }),
        None => pattern.eq_ignore_ascii_case(origin),
    }
}

/// The sidecar's answer to a preflight in policy mode: 204 with the policy for an
/// allowed origin and an allowed method, 403 otherwise. Never needs a token.
pub fn answer_preflight(cfg: &Cors, parts: &Parts) -> http::Response<ProxyBody> {
    let mut resp = http::Response::new(ProxyBody::empty());
    let origin = allowed_origin(cfg, &parts.headers);
    let method_ok = parts
        .headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| {
            cfg.allowed_methods
                .iter()
                .any(|a| a.eq_ignore_ascii_case(m))
        });
    *resp.status_mut() = if origin.is_some() && method_ok {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::FORBIDDEN
    };
    let h = resp.headers_mut();
    vary_origin(h);
    let Some(origin) = origin.filter(|_| method_ok) else {
        return resp;
    };
    set_origin(cfg, h, origin);
    if let Ok(v) = HeaderValue::from_str(&cfg.allowed_methods.join(", ")) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    // Only the requested headers the policy allows.
    let asked: Vec<String> = parts
        .headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && cfg.allowed_headers.contains(t))
        .collect();
    if !asked.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&asked.join(", ")) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(cfg.max_age.as_secs()),
    );
    resp
}

/// CORS headers on a response for the request's origin. `own`: the sidecar wrote it
/// (a refusal) or it carries a renewed pair; other responses are left to the backend in
/// forward mode. `expose`: the headers a page must be able to read.
pub fn decorate(
    cfg: &Cors,
    origin: Option<&HeaderValue>,
    own: bool,
    expose: &[&HeaderName],
    h: &mut HeaderMap,
) {
    if !own && cfg.mode == CorsMode::Forward {
        return;
    }
    vary_origin(h);
    if cfg.mode == CorsMode::Policy {
        for name in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            h.remove(name);
        }
    }
    let Some(origin) = origin else { return };
    set_origin(cfg, h, origin.clone());
    let mut names: Vec<&str> = vec!["x-auth-error", "retry-after"];
    names.extend(expose.iter().map(|n| n.as_str()));
    merge_expose(h, &names);
}

fn set_origin(cfg: &Cors, h: &mut HeaderMap, origin: HeaderValue) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if cfg.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// `Vary: Origin`, once, merged with what is there.
fn vary_origin(h: &mut HeaderMap) {
    let present = h
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case("origin") || t == "*"
        });
    if !present {
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// `Access-Control-Expose-Headers` merged with `names`: one header, no name twice.
pub fn merge_expose(h: &mut HeaderMap, names: &[&str]) {
    let mut expose: Vec<String> = h
        .get_all(header::ACCESS_CONTROL_EXPOSE_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    for name in names {
        if !expose.iter().any(|e| e.eq_ignore_ascii_case(name)) {
            expose.push(name.to_string());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&expose.join(", ")) {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}
