//! The admin API of revocations, on the admin port (never the proxy port), behind its
//! own bearer secret (`revocation.admin_secret`; unset = these endpoints are 404):
//!
//! - `POST /revocations/logout` `{"sub"}`: log out everywhere (tokens issued before now);
//! - `POST /revocations/bans` `{"sub", "duration"}`: ban (`"2h"`, or seconds);
//! - `GET /revocations/bans`: the current bans; `POST /revocations/unban` `{"sub"}`;
//! - `POST /revocations/token` `{"jti"}` or `{"sid"}`: one token or session.
//!
//! Every answer says whether the revocation reached the shared store (`"shared"`): 200
//! when it did (or there is no store: `"scope": "replica"`), 207 when it applied on this
//! replica only because the store could not be reached. A wrong or missing secret is
//! 401 and changes nothing. One log line per revocation: who asked, what scope; never a
//! token.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::backchannel::Backchannel;
use super::{ApplyError, Record, Revocations};
use crate::body::ProxyBody;
use crate::config::Config;
use crate::token::{now_secs, Verifier};

/// Largest admin or back-channel request body read.
const MAX_BODY: usize = 64 * 1024;

/// Revocations as one config serves them: the process-wide set, the admin secret and
/// the back-channel endpoint.
pub struct Service {
    pub revs: Arc<Revocations>,
    secret: Option<Vec<u8>>,
    max_ban: Duration,
    backchannel: Option<Backchannel>,
}

impl Service {
    pub fn new(cfg: &Config, revs: Arc<Revocations>, verifier: Arc<Verifier>) -> Option<Service> {
        let r = cfg.revocation.as_ref()?;
        revs.configure(cfg);
        Some(Service {
            secret: r.admin_secret.as_ref().map(|s| s.0.clone()),
            max_ban: r.max_ban,
            backchannel: r
                .backchannel_logout
                .then(|| Backchannel::new(cfg, r, verifier)),
            revs,
        })
    }
}

/// Whether `path` is one of ours.
pub fn serves(path: &str) -> bool {
    path == "/backchannel-logout" || path == "/revocations" || path.starts_with("/revocations/")
}

pub fn json_response(status: StatusCode, v: &Value) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(v.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    json_response(status, &json!({"error": code, "message": message}))
}

/// The request body, bounded in size and time.
pub async fn read_body(body: Incoming) -> Option<Bytes> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match tokio::time::timeout(Duration::from_secs(5), limited.collect()).await {
        Ok(Ok(c)) => Some(c.to_bytes()),
        _ => None,
    }
}

pub async fn handle(req: Request<Incoming>, svc: Option<&Service>) -> Response<ProxyBody> {
    let Some(svc) = svc else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "revocation is not configured",
        );
    };
    if req.uri().path() == "/backchannel-logout" {
        return match &svc.backchannel {
            Some(b) => b.handle(req, &svc.revs).await,
            None => error(
                StatusCode::NOT_FOUND,
                "not_found",
                "back-channel logout is off",
            ),
        };
    }
    let Some(secret) = &svc.secret else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the revocation API is off (no revocation.admin_secret)",
        );
    };
    if !authorized(&req, secret) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin secret is missing or wrong",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if method == Method::GET && path == "/revocations/bans" {
        let bans: Vec<Value> = svc
            .revs
            .bans()
            .into_iter()
            .map(|(sub, until)| json!({"sub": sub, "until": until}))
            .collect();
        let (users, ids) = svc.revs.len();
        return json_response(
            StatusCode::OK,
            &json!({
                "bans": bans,
                "held": {"users": users, "tokens_and_sessions": ids},
                "shared_store": svc.revs.shared().map(|s| if s.subscribed() { "subscribed" } else { "unreachable" }).unwrap_or("none"),
            }),
        );
    }
    if method != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST (GET for /revocations/bans)",
        );
    }
    let Some(body) = read_body(req.into_body()).await else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body is too large or too slow",
        );
    };
    let Ok(Value::Object(args)) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be a JSON object",
        );
    };
    let text = |k: &str| {
        args.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 1024)
    };
    let now = now_secs();
    let (action, applied, about) = match path.as_str() {
        "/revocations/logout" => {
            let Some(sub) = text("sub") else {
                return missing("sub");
            };
            (
                "logout",
                svc.revs.logout(sub, now),
                json!({"sub": sub, "not_before": now}),
            )
        }
        "/revocations/bans" => {
            let Some(sub) = text("sub") else {
                return missing("sub");
            };
            let duration = match args.get("duration") {
                Some(Value::Number(n)) => n.as_u64().map(Duration::from_secs),
                Some(Value::String(s)) => crate::config::parse_duration(s).ok(),
                _ => None,
            };
            let Some(d) = duration.filter(|d| !d.is_zero() && *d <= svc.max_ban) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "`duration` (\"2h\" or seconds) is required, above zero and at most revocation.max_ban",
                );
            };
            let until = now + d.as_secs();
            (
                "ban",
                svc.revs.ban(sub, until),
                json!({"sub": sub, "until": until}),
            )
        }
        "/revocations/unban" => {
            let Some(sub) = text("sub") else {
                return missing("sub");
            };
            match svc.revs.unban(sub) {
                Some(rec) => ("unban", Ok(rec), json!({"sub": sub})),
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        "not_banned",
                        "this user is not banned",
                    )
                }
            }
        }
        "/revocations/token" => match (text("jti"), text("sid")) {
            (Some(jti), None) => (
                "token",
                svc.revs.revoke_id('j', jti, now),
                json!({"jti": jti}),
            ),
            (None, Some(sid)) => (
                "session",
                svc.revs.revoke_id('s', sid, now),
                json!({"sid": sid}),
            ),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "give exactly one of `jti` or `sid`",
                )
            }
        },
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such revocation endpoint",
            )
        }
    };
    let rec = match applied {
        Ok(r) => r,
        Err(e @ ApplyError::Full) => {
            return error(StatusCode::INSUFFICIENT_STORAGE, "full", &e.to_string())
        }
    };
    let (status, mut body) = share(&svc.revs, rec, "admin", action, &about).await;
    if let (Value::Object(b), Value::Object(a)) = (&mut body, about) {
        b.extend(a);
    }
    json_response(status, &body)
}

fn missing(k: &str) -> Response<ProxyBody> {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &format!("`{k}` (a non-empty string) is required"),
    )
}

/// Publishes an applied revocation to the other replicas and logs it; the status and
/// body say whether it reached them.
pub async fn share(
    revs: &Revocations,
    rec: Record,
    source: &'static str,
    action: &'static str,
    about: &Value,
) -> (StatusCode, Value) {
    metrics::counter!("auth_sidecar_revocations_total", "kind" => action, "source" => source)
        .increment(1);
    if action == "ban" || action == "unban" {
        metrics::gauge!("auth_sidecar_bans_active").set(revs.bans().len() as f64);
    }
    let (status, body, shared) = match revs.shared() {
        None => (
            StatusCode::OK,
            json!({"applied": action, "shared": false, "scope": "replica",
                   "note": "no shared_store: applied on this replica only"}),
            "none",
        ),
        Some(s) => match s.publish(rec).await {
            Ok(()) => (
                StatusCode::OK,
                json!({"applied": action, "shared": true, "scope": "all replicas"}),
                "yes",
            ),
            Err(e) => (
                StatusCode::MULTI_STATUS,
                json!({"applied": action, "shared": false, "scope": "replica",
                       "applied_locally": true, "unreached": ["shared_store"],
                       "error": e,
                       "note": "applied on this replica only; other replicas get it when the store is back"}),
                "failed",
            ),
        },
    };
    let sub = about.get("sub").and_then(|v| v.as_str()).unwrap_or("-");
    // A jti or sid is logged by a hash prefix only.
    let id = about
        .get("jti")
        .or(about.get("sid"))
        .and_then(|v| v.as_str())
        .map(|v| super::hex(&super::id_hash('x', v)[..6]))
        .unwrap_or_else(|| "-".into());
    tracing::info!(
        target: "auth_sidecar::revocation",
        source,
        action,
        sub,
        id = id.as_str(),
        shared,
        "revocation"
    );
    (status, body)
}

/// `Authorization: Bearer <secret>`, compared in constant time.
fn authorized(req: &Request<Incoming>, secret: &[u8]) -> bool {
    let Some(v) = req.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let b = v.as_bytes();
    let Some(given) = b
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
        .and(b.get(7..))
    else {
        return false;
    };
    aws_lc_rs::constant_time::verify_slices_are_equal(given, secret).is_ok()
}
