//! OIDC Back-Channel Logout 1.0 (`POST /backchannel-logout` on the admin port): the
//! identity provider posts a `logout_token` (form-encoded). It is verified with the
//! access tokens' keys, algorithms and issuer, against `revocation.backchannel_audience`
//! (or `auth.audience`); it must carry the back-channel `events` member, no `nonce`, a
//! `jti` not seen before, an `iat` at most `backchannel_max_age` old, and a `sid` or a
//! `sub` (§2.4). A `sid` revokes that session; a `sub` alone logs the user out
//! everywhere. Refusals are `400` with `{"error": "invalid_request", …}` (§2.8) and change
//! nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::api::{json_response, read_body, share};
use super::Revocations;
use crate::body::ProxyBody;
use crate::config::{Config, Revocation};
use crate::token::{now_secs, Verdict, Verifier};

/// The `events` member a logout token must carry (§2.4).
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// `jti`s remembered, at most (older ones go first when full).
const MAX_SEEN: usize = 100_000;

pub struct Backchannel {
    verifier: Verifier,
    /// The access tokens' verifier, whose keys (kept current by JWKS refreshes) are used.
    access: Arc<Verifier>,
    /// Hash of each accepted `jti` → until when it is remembered.
    seen: Mutex<HashMap<[u8; 32], u64>>,
    remember: u64,
}

fn refuse(why: &str) -> Response<ProxyBody> {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": "invalid_request", "error_description": why}),
    )
}

impl Backchannel {
    pub fn new(cfg: &Config, r: &Revocation, access: Arc<Verifier>) -> Backchannel {
        let audience = if r.backchannel_audience.is_empty() {
            cfg.auth.audience.clone()
        } else {
            r.backchannel_audience.clone()
        };
        Backchannel {
            verifier: Verifier::logout_tokens(&cfg.auth, audience, r.backchannel_max_age),
            access,
            seen: Mutex::new(HashMap::new()),
            remember: r.backchannel_max_age.as_secs() + 2 * cfg.auth.leeway.as_secs(),
        }
    }

    pub async fn handle(&self, req: Request<Incoming>, revs: &Revocations) -> Response<ProxyBody> {
        if req.method() != Method::POST {
            return refuse("use POST");
        }
        let form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form {
            return refuse("the body must be application/x-www-form-urlencoded");
        }
        let Some(body) = read_body(req.into_body()).await else {
            return refuse("the body is too large or too slow");
        };
        let Some(token) = form_value(&body, "logout_token") else {
            return refuse("no logout_token");
        };
        let now = now_secs();
        self.verifier.use_keys_of(&self.access);
        let v = match self.verifier.verify_uncached(&token, now) {
            Ok(Verdict::Valid(v)) => v,
            Ok(Verdict::Expired(_)) => return refuse("the logout token has expired"),
            Err(e) => return refuse(&format!("the logout token is not valid: {e}")),
        };
        let events_ok = matches!(
            v.claims.get("events"),
            Some(Value::Object(m)) if matches!(m.get(EVENT), Some(Value::Object(_)))
        );
        if !events_ok {
            return refuse("the logout token has no back-channel logout event");
        }
        if v.claims.contains_key("nonce") {
            return refuse("a logout token must not carry a nonce");
        }
        let Some(jti) = v.claim_str("jti").filter(|j| !j.is_empty()) else {
            return refuse("the logout token has no jti");
        };
        let sid = v.claim_str("sid").filter(|s| !s.is_empty());
        if sid.is_none() && v.sub.is_empty() {
            return refuse("the logout token names neither a sid nor a sub");
        }
        let key = super::id_hash('b', jti);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.get(&key).is_some_and(|u| *u >= now) {
                return refuse("this logout token was already used");
            }
            if seen.len() >= MAX_SEEN {
                seen.retain(|_, u| *u >= now);
                if seen.len() >= MAX_SEEN {
                    return json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"error": "temporarily_unavailable", "error_description": "too many logout tokens at once"}),
                    );
                }
            }
            seen.insert(key, now + self.remember);
        }
        let (action, applied, about) = match sid {
            Some(sid) => (
                "session",
                revs.revoke_id('s', sid, now),
                json!({"sid": sid}),
            ),
            None => (
                "logout",
                revs.logout(&v.sub, now),
                json!({"sub": v.sub.as_str()}),
            ),
        };
        let Ok(rec) = applied else {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "temporarily_unavailable", "error_description": "too many revocations are held"}),
            );
        };
        // The identity provider is told it worked once it applies here: a store outage is
        // retried by this replica on reconnect, and logged.
        let _ = share(revs, rec, "backchannel", action, &about).await;
        json_response(StatusCode::OK, &json!({}))
    }
}

/// `name`'s value in a form body (`+` is a space, then percent-decoding).
fn form_value(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8()
                .ok()
                .map(|s| s.into_owned())
        })?
    })
}
