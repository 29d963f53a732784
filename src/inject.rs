//! Identity to the backend and tokens to the client: verified claims become identity
//! headers (once per token, through the token layer's [`Project`] hook), identity
//! headers are set on the forwarded request, and a renewed pair goes on the response.

use http::{header, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::config::{Identity, ResponseTokens};
use crate::error::X_AUTH_ERROR;
use crate::token::{Project, Session, Verified};

/// Claims → identity headers, as the `[identity]` config maps them.
pub struct IdentityHeaders(pub Identity);

impl Project for IdentityHeaders {
    /// A claim that is not a valid header value (CR, LF, NUL, non-visible bytes) fails
    /// the token rather than being split or mangled.
    fn project(
        &self,
        sub: &str,
        claims: &Map<String, Value>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, &'static str> {
        const BAD: &str = "a claim cannot be sent as a header value";
        let cfg = &self.0;
        let value = |s: &str| HeaderValue::from_str(s).map_err(|_| BAD);
        // An application session has no user: no user id header at all.
        let mut out = Vec::with_capacity(4);
        if !sub.is_empty() {
            out.push((cfg.user_id.clone(), value(sub)?));
        }
        let mut add = |name: &HeaderName, claim: Option<&Value>| -> Result<(), &'static str> {
            match claim {
                Some(Value::String(s)) => out.push((name.clone(), value(s)?)),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                    out.push((name.clone(), value(&v.to_string())?))
                }
                Some(Value::Array(items)) => {
                    let parts: Option<Vec<&str>> = items.iter().map(|i| i.as_str()).collect();
                    let joined = parts.ok_or(BAD)?.join(",");
                    out.push((name.clone(), value(&joined)?));
                }
                Some(Value::Null) | None => {}
                Some(Value::Object(_)) => return Err(BAD),
            }
            Ok(())
        };
        add(&cfg.email, claims.get("email"))?;
        add(&cfg.name, claims.get("name"))?;
        add(&cfg.session_kind, claims.get("session_kind"))?;
        for (claim, header) in &cfg.claims {
            add(header, claims.get(claim))?;
        }
        if let Some(h) = &cfg.all_claims {
            use base64::Engine;
            let json = serde_json::to_vec(claims).map_err(|_| BAD)?;
            let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
            out.push((h.clone(), value(&enc)?));
        }
        // Kept for the token's whole life in the verify cache: no spare capacity (three
        // unused slots are 216 bytes per cached token).
        out.shrink_to_fit();
        Ok(out)
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
        let max_age = s.verified.exp.saturating_sub(crate::token::now_secs());
        let refresh_path = cfg.refresh_cookie_path.as_ref().unwrap_or(&cfg.cookie_path);
        for (name, value, age, path) in [
            (
                &cfg.access_cookie,
                &s.access_token,
                Some(max_age),
                &cfg.cookie_path,
            ),
            (&cfg.refresh_cookie, &s.refresh_token, None, refresh_path),
        ] {
            let mut c = format!(
                "{name}={value}; Path={path}; HttpOnly; SameSite={}",
                cfg.cookie_same_site
            );
            if cfg.cookie_secure {
                c.push_str("; Secure");
            }
            if cfg.cookie_partitioned {
                c.push_str("; Partitioned");
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
    crate::cors::merge_expose(
        headers,
        &[
            cfg.access_header.as_str(),
            cfg.refresh_header.as_str(),
            X_AUTH_ERROR.as_str(),
        ],
    );
}
