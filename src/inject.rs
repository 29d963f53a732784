//! Identity headers: strip every inbound header the sidecar owns, then set the verified
//! identity. Also writes new tokens onto responses. Header names are built once.

use http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::config::{Config, ResponseTokens};
use crate::token::{Session, Verified};

pub const X_AUTH_ERROR: HeaderName = HeaderName::from_static("x-auth-error");

/// What the strip step removes: the identity prefix plus named headers (refresh token,
/// app identity token, identity headers outside the prefix).
pub struct Stripper {
    prefix: Vec<u8>,
    names: Vec<Vec<u8>>,
}

/// Lowercase with `_` read as `-`, so `X_Auth_User_Id` is caught like `x-auth-user-id`
/// (some servers and CGI gateways treat the two as the same header).
fn normalized_eq(name: &[u8], want: &[u8]) -> bool {
    name.len() == want.len() && starts_normalized(name, want)
}

fn starts_normalized(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len()
        && name.iter().zip(prefix).all(|(a, b)| {
            (if *a == b'_' {
                b'-'
            } else {
                a.to_ascii_lowercase()
            }) == *b
        })
}

impl Stripper {
    pub fn new(cfg: &Config, extra: &[&HeaderName]) -> Stripper {
        let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-").into_bytes();
        let mut names: Vec<Vec<u8>> = cfg
            .identity
            .all_headers()
            .map(|h| norm(h.as_str()))
            .collect();
        names.extend(extra.iter().map(|h| norm(h.as_str())));
        names.push(norm(cfg.response_tokens.access_header.as_str()));
        names.push(norm(cfg.response_tokens.refresh_header.as_str()));
        let prefix = norm(&cfg.identity.prefix);
        names.retain(|n| !n.starts_with(&prefix));
        names.sort();
        names.dedup();
        Stripper { prefix, names }
    }

    fn owned(&self, name: &[u8]) -> bool {
        starts_normalized(name, &self.prefix) || self.names.iter().any(|n| normalized_eq(name, n))
    }

    /// Removes every header the sidecar owns. Returns how many names were removed.
    pub fn strip(&self, headers: &mut HeaderMap) -> usize {
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|k| self.owned(k.as_str().as_bytes()))
            .cloned()
            .collect();
        for name in &doomed {
            headers.remove(name);
        }
        doomed.len()
    }
}

/// Sets (never appends) the identity headers of a verified token.
pub fn set_identity(headers: &mut HeaderMap, who: &Verified) {
    for (name, value) in &who.headers {
        headers.insert(name.clone(), value.clone());
    }
}

/// Puts a new token pair on a response: headers readable by browsers, or cookies.
pub fn set_session(headers: &mut HeaderMap, cfg: &ResponseTokens, s: &Session) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if cfg.cookies {
        let max_age = s
            .verified
            .exp
            .saturating_sub(crate::token::verify::now_secs());
        for (name, value, age) in [
            (&cfg.access_cookie, &s.access_token, Some(max_age)),
            (&cfg.refresh_cookie, &s.refresh_token, None),
        ] {
            let mut c = format!(
                "{name}={value}; Path={}; HttpOnly; SameSite={}",
                cfg.cookie_path, cfg.cookie_same_site
            );
            if cfg.cookie_secure {
                c.push_str("; Secure");
            }
            if value.is_empty() {
                continue;
            }
            if let Some(a) = age {
                c.push_str(&format!("; Max-Age={a}"));
            }
            if let Ok(v) = HeaderValue::from_str(&c) {
                headers.append(header::SET_COOKIE, v);
            }
        }
        return;
    }
    if let Ok(a) = HeaderValue::from_str(&s.access_token) {
        headers.insert(cfg.access_header.clone(), a);
    }
    // A service that does not rotate refresh tokens leaves the client's one in force.
    if !s.refresh_token.is_empty() {
        if let Ok(r) = HeaderValue::from_str(&s.refresh_token) {
            headers.insert(cfg.refresh_header.clone(), r);
        }
    }
    // Merge with what the backend already exposes to browsers.
    let mut expose: Vec<String> = headers
        .get_all(header::ACCESS_CONTROL_EXPOSE_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    for name in [
        cfg.access_header.as_str(),
        cfg.refresh_header.as_str(),
        X_AUTH_ERROR.as_str(),
    ] {
        if !expose.iter().any(|e| e.eq_ignore_ascii_case(name)) {
            expose.push(name.to_string());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&expose.join(", ")) {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

/// Removes the named cookies from every `Cookie` header (the sidecar's own credentials
/// never reach the backend); drops a header left empty.
pub fn remove_cookies(headers: &mut HeaderMap, names: &[&str]) {
    if names.is_empty() || !headers.contains_key(header::COOKIE) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| {
            let name = pair.split_once('=').map(|(k, _)| k).unwrap_or(pair).trim();
            !pair.is_empty() && !names.contains(&name)
        })
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}
