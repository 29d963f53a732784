//! The request path, in order: strip → decide (path, route, credentials) → verify →
//! lifecycle (refresh / initiate) → inject → forward. Every failure leaves through
//! `ProxyError::into_response`; one access-log line per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use http::{header, request::Parts, HeaderValue, Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::body::ProxyBody;
use crate::config::{Config, RouteMode};
use crate::decide::{self, Source};
use crate::error::ProxyError;
use crate::forward::{Forwarder, Hop};
use crate::inject::{self, Stripper};
use crate::metrics::{Decision, Metrics};
use crate::token::{
    Introspector, JwksRemote, Lifecycle, LifecycleError, Session, Verdict, Verified, Verifier,
    VerifyError,
};

/// Everything a request needs, built once per config (and swapped whole on reload).
pub struct State {
    pub cfg: Arc<Config>,
    pub verifier: Arc<Verifier>,
    pub lifecycle: Arc<Lifecycle>,
    pub forwarder: Forwarder,
    pub stripper: Stripper,
    pub metrics: Metrics,
    pub jwks: Option<Arc<JwksRemote>>,
    pub introspector: Option<Arc<Introspector>>,
}

/// Facts about the connection a request came in on.
#[derive(Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The peer's IP as a header value, for `X-Forwarded-For` (formatted once).
    pub ip: HeaderValue,
    pub tls: bool,
}

impl ConnInfo {
    pub fn new(remote: SocketAddr, tls: bool) -> ConnInfo {
        let ip = HeaderValue::from_str(&remote.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        ConnInfo { remote, ip, tls }
    }
}

/// The outcome of the auth steps for one request.
struct Authorized {
    who: Option<Arc<Verified>>,
    renewed: Option<Arc<Session>>,
    decision: Decision,
    source: Option<Source>,
}

/// Handles one request end to end. Never fails: errors become responses.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let request_id = request_id(&parts, &state.cfg.server.request_id_header);
    let method = parts.method.clone();
    let mut log_path = String::new();
    let mut user: Option<Arc<Verified>> = None;

    // Every line logged while handling the request carries its id (the span is at
    // error level so it exists whenever any logging is on).
    // Recorded with Display: the ids are plain tokens, and str's Debug escapes char by char.
    let span = tracing::error_span!("request", request_id = %request_id.to_str().unwrap_or(""));
    let result = run(
        &state,
        &mut parts,
        body,
        conn,
        &request_id,
        &mut log_path,
        &mut user,
    )
    .instrument(span)
    .await;
    let (decision, mut resp) = match result {
        Ok(r) => r,
        Err(e) => {
            let d = if e.status().is_server_error() {
                Decision::Failed
            } else {
                Decision::Rejected
            };
            tracing::debug!(code = e.code(), reason = %e, "request refused");
            (d, e.into_response())
        }
    };
    resp.headers_mut().insert(
        state.cfg.server.request_id_header.clone(),
        request_id.clone(),
    );
    let status = resp.status().as_u16();
    state.metrics.request(decision, status);
    tracing::info!(
        target: "auth_sidecar::access",
        request_id = request_id.to_str().unwrap_or(""),
        method = %method,
        path = %log_path,
        status,
        latency_us = started.elapsed().as_micros() as u64,
        decision = decision.as_str(),
        user = user.as_ref().map(|u| u.sub.as_str()).unwrap_or("-"),
    );
    resp
}

async fn run(
    state: &State,
    parts: &mut Parts,
    body: Incoming,
    conn: ConnInfo,
    request_id: &HeaderValue,
    log_path: &mut String,
    user: &mut Option<Arc<Verified>>,
) -> Result<(Decision, Response<ProxyBody>), ProxyError> {
    let cfg = &state.cfg;
    if parts.method == http::Method::CONNECT {
        return Err(ProxyError::InvalidRequest("CONNECT is not supported"));
    }
    if parts.version == http::Version::HTTP_11 && !one_valid_host(&parts.headers) {
        // RFC 9112 §3.2: exactly one valid Host, or 400.
        return Err(ProxyError::InvalidRequest(
            "an HTTP/1.1 request needs exactly one valid Host header",
        ));
    }
    // Credentials the sidecar owns are read before the strip removes them.
    let refresh_token = state
        .lifecycle
        .refresh_header()
        .and_then(|h| parts.headers.get(h))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            let name = state.lifecycle.refresh_cookie()?;
            decide::cookie_values(&parts.headers, name)
                .next()
                .map(str::to_string)
        });
    let app_token = state
        .lifecycle
        .app_identity_header()
        .and_then(|h| parts.headers.get(h))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state.stripper.strip(&mut parts.headers);

    let (canonical, forward_path) = crate::path::resolve_path(parts.uri.path())
        .map_err(|_| ProxyError::InvalidRequest("the request path is ambiguous or malformed"))?;
    if tracing::enabled!(target: "auth_sidecar::access", tracing::Level::INFO) {
        log_path.push_str(&canonical);
    }
    let route = decide::route_for(&cfg.routes, &canonical);
    let mode = decide::mode_of(route);
    let upgrade = decide::is_websocket_upgrade(parts);
    // Hop-by-hop headers (and whatever `Connection` names) go before identity is set,
    // so a client's `Connection: x-auth-user-id` cannot remove what the sidecar adds.
    crate::forward::remove_hop_by_hop(&mut parts.headers);

    let auth = if mode == RouteMode::Public {
        Authorized {
            who: None,
            renewed: None,
            decision: Decision::Public,
            source: None,
        }
    } else {
        authorize(
            state,
            parts,
            mode,
            upgrade,
            refresh_token.as_deref(),
            app_token.as_deref(),
        )
        .await?
    };
    if let Some(route) = route {
        check_route(route, &parts.method, auth.who.as_deref())?;
    }
    *user = auth.who.clone();

    // Inject: identity set (never appended), token plumbing adjusted for the backend.
    if let Some(who) = &auth.who {
        inject::set_identity(&mut parts.headers, who);
    }
    // The sidecar's own cookies (refresh token; the access cookie unless forwarded)
    // never reach the backend.
    let mut own_cookies: Vec<&str> = state.lifecycle.refresh_cookie().into_iter().collect();
    if !cfg.auth.forward_authorization {
        own_cookies.extend(cfg.auth.cookie.as_deref());
    }
    inject::remove_cookies(&mut parts.headers, &own_cookies);
    if !cfg.auth.forward_authorization {
        parts.headers.remove(header::AUTHORIZATION);
    } else if let Some(s) = &auth.renewed {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", s.access_token)) {
            parts.headers.insert(header::AUTHORIZATION, v);
        }
    }
    let mut query = parts.uri.query().map(str::to_string);
    if let (Some(name), Some(q)) = (&cfg.auth.query_param, &query) {
        if upgrade {
            query = decide::query_without(q, name);
        }
    }
    if auth.source == Some(Source::WebSocketProtocol) {
        if let Some(prefix) = &cfg.auth.websocket_protocol_prefix {
            match decide::protocols_without_token(&parts.headers, prefix) {
                Some(v) => parts.headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v),
                None => parts.headers.remove(header::SEC_WEBSOCKET_PROTOCOL),
            };
        }
    }
    parts
        .headers
        .insert(cfg.server.request_id_header.clone(), request_id.clone());

    let tunnel_deadline = match (&auth.who, cfg.server.upgrade_token_grace) {
        (Some(who), Some(grace)) if upgrade => {
            Some(UNIX_EPOCH + Duration::from_secs(who.exp) + grace)
        }
        _ => None,
    };
    let hop = Hop {
        client_ip: conn.ip.clone(),
        tls: conn.tls,
        path: &forward_path,
        query: query.as_deref(),
        upgrade,
        tunnel_deadline,
    };
    let req = Request::from_parts(std::mem::replace(parts, empty_parts()), body);
    let (decision, mut resp) = match state.forwarder.forward(req, hop, &state.metrics).await {
        Ok(r) => (auth.decision, r),
        Err(e) => (Decision::Failed, e.into_response()),
    };
    // The new pair goes back even when the backend failed: the old refresh token may
    // already be rotated away, and losing the pair would log the user out.
    if let Some(s) = &auth.renewed {
        inject::set_session(resp.headers_mut(), &cfg.response_tokens, s);
    }
    Ok((decision, resp))
}

/// Steps 3-6 of the decision: verify, renew if expired, or refuse.
async fn authorize(
    state: &State,
    parts: &Parts,
    mode: RouteMode,
    upgrade: bool,
    refresh_token: Option<&str>,
    app_token: Option<&str>,
) -> Result<Authorized, ProxyError> {
    let cred = decide::extract(parts, &state.cfg.auth, upgrade)?;
    let Some(cred) = cred else {
        if app_token.is_some() && state.lifecycle.can_renew() {
            let s = renew(state, None, None, app_token).await?;
            return Ok(renewed(s, None));
        }
        if mode == RouteMode::Optional {
            return Ok(Authorized {
                who: None,
                renewed: None,
                decision: Decision::Anonymous,
                source: None,
            });
        }
        return Err(ProxyError::MissingToken);
    };
    if let Some(intro) = &state.introspector {
        // Opaque (non-JWT) tokens are checked with the token service.
        if cred.token.bytes().filter(|b| *b == b'.').count() != 2 {
            return match intro.check(&cred.token).await {
                Ok(Some(v)) => Ok(Authorized {
                    who: Some(v),
                    renewed: None,
                    decision: Decision::Allowed,
                    source: Some(cred.source),
                }),
                Ok(None) => Err(ProxyError::InvalidToken("the access token is not active")),
                Err(_) => Err(ProxyError::TokenServiceUnavailable {
                    retry_after: state.lifecycle.retry_after(),
                }),
            };
        }
    }
    let mut verdict = state.verifier.verify(&cred.token);
    if matches!(verdict, Err(VerifyError::UnknownKid)) {
        if let Some(jwks) = &state.jwks {
            if jwks.on_unknown_kid(&state.verifier).await {
                verdict = state.verifier.verify(&cred.token);
            }
            if !jwks.loaded() {
                return Err(ProxyError::KeysUnavailable);
            }
        }
    }
    match verdict {
        Ok(Verdict::Valid(v)) => Ok(Authorized {
            who: Some(v),
            renewed: None,
            decision: Decision::Allowed,
            source: Some(cred.source),
        }),
        Ok(Verdict::Expired(old)) => {
            if !state.lifecycle.can_renew() {
                return Err(ProxyError::TokenExpired);
            }
            let s = renew(state, Some(old), refresh_token, app_token).await?;
            Ok(renewed(s, Some(cred.source)))
        }
        Err(VerifyError::Invalid(why)) => Err(ProxyError::InvalidToken(why)),
        Err(VerifyError::UnknownKid) => {
            Err(ProxyError::InvalidToken("the token names an unknown key"))
        }
        Err(VerifyError::NoKeys) => Err(ProxyError::KeysUnavailable),
    }
}

fn renewed(s: Arc<Session>, source: Option<Source>) -> Authorized {
    Authorized {
        who: Some(s.verified.clone()),
        decision: if s.initiated {
            Decision::Initiated
        } else {
            Decision::Refreshed
        },
        renewed: Some(s),
        source,
    }
}

async fn renew(
    state: &State,
    old: Option<Arc<Verified>>,
    refresh_token: Option<&str>,
    app_token: Option<&str>,
) -> Result<Arc<Session>, ProxyError> {
    state
        .lifecycle
        .renew(old, refresh_token, app_token)
        .await
        .map_err(|e| match e {
            LifecycleError::Expired => ProxyError::TokenExpired,
            LifecycleError::Rejected(why) => ProxyError::RefreshRejected(why),
            LifecycleError::Unavailable => ProxyError::TokenServiceUnavailable {
                retry_after: state.lifecycle.retry_after(),
            },
            LifecycleError::BadResponse(why) => ProxyError::TokenServiceBadResponse(why),
        })
}

/// Route requirements: allowed methods, and required claim values when there is an
/// identity to check them against.
fn check_route(
    route: &crate::config::Route,
    method: &http::Method,
    who: Option<&Verified>,
) -> Result<(), ProxyError> {
    if !route.methods.is_empty() && !route.methods.contains(method) {
        return Err(ProxyError::InsufficientScope(
            "this method is not allowed for this route",
        ));
    }
    let Some(who) = who else { return Ok(()) };
    for (claim, want) in &route.require_claims {
        let ok = match who.claims.get(claim) {
            Some(serde_json::Value::String(s)) => {
                s == want || (claim == "scope" && s.split(' ').any(|x| x == want))
            }
            Some(serde_json::Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(want)),
            Some(serde_json::Value::Bool(b)) => b.to_string() == *want,
            Some(serde_json::Value::Number(n)) => n.to_string() == *want,
            _ => false,
        };
        if !ok {
            return Err(ProxyError::InsufficientScope(
                "the token lacks a claim this route requires",
            ));
        }
    }
    Ok(())
}

fn one_valid_host(h: &http::HeaderMap) -> bool {
    let mut hosts = h.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(v), None) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<http::uri::Authority>().ok())
            .is_some(),
        _ => false,
    }
}

/// The client's request id when it is sane, otherwise a new one.
fn request_id(parts: &Parts, name: &http::HeaderName) -> HeaderValue {
    if let Some(v) = parts.headers.get(name) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
        {
            return v.clone();
        }
    }
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        h.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 32];
    let s = hex32(seed, n, &mut buf);
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("0"))
}

fn hex32(a: u64, b: u64, buf: &mut [u8; 32]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in a
        .to_be_bytes()
        .iter()
        .chain(b.to_be_bytes().iter())
        .enumerate()
    {
        buf[i * 2] = HEX[(byte >> 4) as usize];
        buf[i * 2 + 1] = HEX[(byte & 0xf) as usize];
    }
    std::str::from_utf8(buf).unwrap_or("0")
}

fn empty_parts() -> Parts {
    Request::new(()).into_parts().0
}
