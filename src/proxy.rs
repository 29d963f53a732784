//! The request path. One [`Ctx`] per request is read and filled by the phases, in order:
//! admit → take credentials → route → authorize → prepare → forward → respond.
//! [`decide`] runs the phases up to the decision and forwards nothing, so a decision
//! endpoint can use it alone. Every failure leaves through `ProxyError::into_response`;
//! one access-log line per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use http::{header, request::Parts, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::config::{Config, CorsMode, ForwardAuth, Route, RouteMode};
use crate::credentials::{Credentials, Owned, Source};
use crate::decide;
use crate::error::ProxyError;
use crate::forward::{Forwarder, Hop};
use crate::inject;
use crate::metrics::{Decision, Metrics};
use crate::token::{
    Checked, Introspector, JwksRemote, Lifecycle, Session, Verdict, Verified, Verifier,
};

/// Everything a request needs, built once per config (and swapped whole on reload).
pub struct State {
    pub cfg: Arc<Config>,
    pub verifier: Arc<Verifier>,
    pub lifecycle: Arc<Lifecycle>,
    pub credentials: Credentials,
    pub forwarder: Forwarder,
    pub metrics: Metrics,
    pub jwks: Option<Arc<JwksRemote>>,
    pub introspector: Option<Arc<Introspector>>,
    pub assertion: Option<Arc<crate::assertion::Signer>>,
    pub token_endpoint: Option<crate::token_endpoint::TokenEndpoint>,
    /// Revocations and bans, when `[revocation]` is configured.
    pub revocation: Option<Arc<crate::revoke::api::Service>>,
}

/// Facts about the connection a request came in on.
#[derive(Clone)]
pub struct ConnInfo {
    /// The TCP peer (what `forward_auth.trusted_sources` is checked against).
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

/// What the phases learn about one request; each phase reads what earlier ones filled.
pub struct Ctx<'s> {
    pub request_id: HeaderValue,
    pub method: Method,
    started: Instant,
    /// The path route rules matched (decoded once, dots resolved); empty until `route`.
    pub canonical: String,
    /// The same path as sent to the backend (re-encoded).
    pub forward_path: String,
    pub route: Option<&'s Route>,
    pub mode: RouteMode,
    pub upgrade: bool,
    /// The refresh and app identity tokens, taken out before anything else reads the request.
    pub owned: Owned,
    /// Where the access token was found.
    pub source: Option<Source>,
    /// The verified identity (after a renewal: the new token's).
    pub who: Option<Arc<Verified>>,
    /// A new pair to hand to the client.
    pub renewed: Option<Arc<Session>>,
    pub decision: Decision,
    /// The request's `Origin`, when the CORS policy allows it.
    pub origin: Option<HeaderValue>,
    /// A CORS preflight (never refused for lack of a token).
    pub preflight: bool,
    /// The sidecar's refusal code, for the access log.
    pub error: Option<&'static str>,
    /// Answered by the sidecar's own endpoint (tokens): CORS headers as on a refusal.
    pub own_answer: bool,
    /// The revocation epoch at the check (streams opened later look again on a change).
    pub revoke_seen: u64,
}

impl Ctx<'_> {
    pub fn new(state: &State, parts: &Parts) -> Self {
        Ctx {
            request_id: request_id(parts, &state.cfg.server.request_id_header),
            method: parts.method.clone(),
            started: Instant::now(),
            canonical: String::new(),
            forward_path: String::new(),
            route: None,
            mode: RouteMode::default(),
            upgrade: false,
            owned: Owned::default(),
            source: None,
            who: None,
            renewed: None,
            decision: Decision::Rejected,
            origin: None,
            preflight: false,
            error: None,
            own_answer: false,
            revoke_seen: 0,
        }
    }

    fn renewed(&mut self, s: Arc<Session>) {
        self.decision = if s.initiated {
            Decision::Initiated
        } else {
            Decision::Refreshed
        };
        self.who = Some(s.verified.clone());
        self.renewed = Some(s);
    }
}

/// Handles one request end to end. Never fails: errors become responses.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let mut ctx = Ctx::new(&state, &parts);
    if let Some(c) = &state.cfg.cors {
        ctx.origin = crate::cors::allowed_origin(c, &parts.headers);
        ctx.preflight = crate::cors::is_preflight(&parts);
    }
    // With `[tracing]`: the request's span is the current context for every phase
    // (the token service's and the backend's `traceparent` come from it).
    let otel = crate::otel::get().map(|o| {
        let cx = o.start_request(&parts.method, &parts.headers, conn.remote.ip(), conn.tls);
        (cx, parts.uri.path().to_owned())
    });
    let id = ctx.request_id.clone();
    let result = async {
        if let Some(fa) = &state.cfg.forward_auth {
            if is_decision_path(fa, parts.uri.path()) {
                return Box::pin(answer_decision(&state, &mut ctx, &mut parts, &conn, fa)).await;
            }
        }
        if let Some(te) = &state.token_endpoint {
            if te.matches(parts.uri.path()) {
                return Box::pin(answer_tokens(&state, &mut ctx, &mut parts, te)).await;
            }
        }
        if let Some(c) = state
            .cfg
            .cors
            .as_ref()
            .filter(|c| c.mode == CorsMode::Policy)
        {
            if ctx.preflight {
                ctx.decision = Decision::Public;
                return Ok(crate::cors::answer_preflight(c, &parts));
            }
        }
        decide(&state, &mut ctx, &mut parts).await?;
        let query = prepare(&state, &ctx, &mut parts);
        Ok(forward(&state, &mut ctx, parts, body, &conn, query.as_deref()).await)
    };
    // Every line logged while handling the request carries its id.
    let result = crate::request_log::WithRequestId::new(id, result);
    let result = match &otel {
        Some((cx, _)) => {
            use opentelemetry::context::FutureExt as _;
            result.with_context(cx.clone()).await
        }
        None => result.await,
    };
    let (mut resp, own) = match result {
        Ok(r) => (r, ctx.renewed.is_some() || ctx.own_answer),
        Err(e) => (refuse(&mut ctx, e), true),
    };
    // A policy-mode preflight (and one to the token endpoint) was answered whole by
    // `cors::answer_preflight`.
    if let Some(c) = state
        .cfg
        .cors
        .as_ref()
        .filter(|c| !(ctx.preflight && (c.mode == CorsMode::Policy || ctx.own_answer)))
    {
        let rt = &state.cfg.response_tokens;
        let expose = [&rt.access_header, &rt.refresh_header];
        crate::cors::decorate(c, ctx.origin.as_ref(), own, &expose, resp.headers_mut());
    }
    let resp = respond(&state, &ctx, resp);
    if let Some((cx, raw_path)) = &otel {
        crate::otel::end_request(
            cx,
            &crate::otel::Outcome {
                method: ctx.method.as_str(),
                status: resp.status().as_u16(),
                route: ctx.route.map(|r| r.prefix.as_str()),
                path: if ctx.canonical.is_empty() {
                    raw_path
                } else {
                    &ctx.canonical
                },
                decision: ctx.decision.as_str(),
                error: ctx.error,
                user: ctx.who.as_ref().map(|u| u.sub.as_str()),
                request_id: ctx.request_id.to_str().unwrap_or(""),
            },
        );
    }
    resp
}

/// Phases up to the decision: admit, take credentials, route, authorize. Fills `ctx`
/// with the identity (or refuses); forwards nothing.
pub async fn decide<'s>(
    state: &'s State,
    ctx: &mut Ctx<'s>,
    parts: &mut Parts,
) -> Result<(), ProxyError> {
    admit(parts)?;
    // Credentials the sidecar owns are read before the strip removes them.
    ctx.owned = state.credentials.take_owned(&mut parts.headers);
    route(state, ctx, parts)?;
    authorize(state, ctx, parts).await
}

fn is_decision_path(fa: &ForwardAuth, path: &str) -> bool {
    path.strip_prefix(fa.path.as_str())
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The decision endpoint, instead of the proxy path: every phase up to the decision,
/// for the original request the front proxy names; `200` with the identity headers (and
/// a renewed pair) for the front proxy to copy, or the refusal. Forwards nothing.
async fn answer_decision<'s>(
    state: &'s State,
    ctx: &mut Ctx<'s>,
    parts: &mut Parts,
    conn: &ConnInfo,
    fa: &ForwardAuth,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (method, target) = original_request(parts, fa, fa.trusts(conn.remote.ip()))?;
    for h in ORIGINAL_HEADERS {
        parts.headers.remove(h);
    }
    parts.method = method;
    parts.uri = target;
    decide(state, ctx, parts).await?;
    let mut resp = Response::new(ProxyBody::empty());
    if let Some(who) = &ctx.who {
        inject::set_identity(resp.headers_mut(), who);
    }
    if let Some(s) = &ctx.renewed {
        inject::set_session(resp.headers_mut(), &state.cfg.response_tokens, s);
    }
    Ok(resp)
}

/// The token endpoint, instead of the proxy path: admitted, its preflight answered,
/// the sidecar-owned credentials taken out; then the tokens for the proven caller, or
/// the refusal. Forwards nothing.
async fn answer_tokens<'s>(
    state: &'s State,
    ctx: &mut Ctx<'s>,
    parts: &mut Parts,
    te: &crate::token_endpoint::TokenEndpoint,
) -> Result<Response<ProxyBody>, ProxyError> {
    ctx.own_answer = true;
    ctx.canonical = parts.uri.path().to_string();
    admit(parts)?;
    if let (Some(c), true) = (&state.cfg.cors, ctx.preflight) {
        ctx.decision = Decision::Public;
        return Ok(te.preflight(c, parts));
    }
    ctx.owned = state.credentials.take_owned(&mut parts.headers);
    let answered = te.answer(parts, &ctx.owned, &state.credentials).await?;
    ctx.decision = match &answered.session {
        Some(s) => {
            ctx.who = Some(s.verified.clone());
            Decision::Initiated
        }
        None => Decision::Allowed,
    };
    Ok(answered.response)
}

/// The headers in which front proxies name the original request.
const ORIGINAL_HEADERS: [&str; 4] = [
    "x-original-method",
    "x-original-uri",
    "x-forwarded-method",
    "x-forwarded-uri",
];

/// The request to decide on: from a trusted front proxy's headers (nginx: X-Original-*,
/// Traefik: X-Forwarded-*); the path after the endpoint's (Envoy's `path_prefix`); or,
/// from anyone else, the request itself.
fn original_request(
    parts: &Parts,
    fa: &ForwardAuth,
    trusted: bool,
) -> Result<(Method, http::Uri), ProxyError> {
    const AMBIGUOUS: ProxyError =
        ProxyError::InvalidRequest("the original request is named more than once");
    let one = |names: [&str; 2]| -> Result<Option<&str>, ProxyError> {
        let mut found = None;
        for n in names {
            for v in parts.headers.get_all(n) {
                let v = v
                    .to_str()
                    .map_err(|_| ProxyError::InvalidRequest("the original request is malformed"))?;
                if found.replace(v).is_some() {
                    return Err(AMBIGUOUS);
                }
            }
        }
        Ok(found)
    };
    let uri = |s: &str| -> Result<http::Uri, ProxyError> {
        let u: http::Uri = s
            .parse()
            .map_err(|_| ProxyError::InvalidRequest("the original URI is malformed"))?;
        // Origin-form only: a front proxy names a path, never another host.
        if u.scheme().is_some() || u.authority().is_some() || !s.starts_with('/') {
            return Err(ProxyError::InvalidRequest("the original URI is not a path"));
        }
        Ok(u)
    };
    if trusted {
        if let Some(target) = one(["x-original-uri", "x-forwarded-uri"])? {
            let method = match one(["x-original-method", "x-forwarded-method"])? {
                Some(m) => Method::from_bytes(m.as_bytes())
                    .map_err(|_| ProxyError::InvalidRequest("the original method is malformed"))?,
                None => parts.method.clone(),
            };
            return Ok((method, uri(target)?));
        }
    }
    let path = parts.uri.path();
    let rest = &path[fa.path.len().min(path.len())..];
    if rest.starts_with('/') {
        let target = match parts.uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        return Ok((parts.method.clone(), uri(&target)?));
    }
    Ok((parts.method.clone(), parts.uri.clone()))
}

/// First, before anything is read: refuses requests no route can make sense of.
fn admit(parts: &Parts) -> Result<(), ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::InvalidRequest("CONNECT is not supported"));
    }
    if parts.version == http::Version::HTTP_11 && !one_valid_host(&parts.headers) {
        // RFC 9112 §3.2: exactly one valid Host, or 400.
        return Err(ProxyError::InvalidRequest(
            "an HTTP/1.1 request needs exactly one valid Host header",
        ));
    }
    Ok(())
}

/// After the strip: the canonical path, its route rule and mode, and whether this is an
/// upgrade; hop-by-hop headers go here, before identity is set.
fn route<'s>(state: &'s State, ctx: &mut Ctx<'s>, parts: &mut Parts) -> Result<(), ProxyError> {
    let (canonical, forward_path) =
        crate::path::resolve_path_with(parts.uri.path(), state.cfg.server.allow_encoded_percent)
            .map_err(|_| {
                ProxyError::InvalidRequest("the request path is ambiguous or malformed")
            })?;
    ctx.route = decide::route_for(&state.cfg.routes, &canonical);
    ctx.mode = decide::mode_of(ctx.route);
    ctx.upgrade = decide::is_websocket_upgrade(parts);
    ctx.canonical = canonical;
    ctx.forward_path = forward_path;
    // `Connection` may name headers to drop: done before identity is set, so a client's
    // `Connection: x-auth-user-id` cannot remove what the sidecar adds.
    crate::forward::remove_hop_by_hop(&mut parts.headers);
    Ok(())
}

/// After routing: who is asking (steps 3-6 of the decision: verify, renew if expired, or
/// refuse) and whether the route lets them.
async fn authorize(state: &State, ctx: &mut Ctx<'_>, parts: &Parts) -> Result<(), ProxyError> {
    if ctx.mode == RouteMode::Public || ctx.preflight {
        // A preflight carries no credentials: the backend answers it (forward mode).
        ctx.decision = Decision::Public;
        if ctx.preflight {
            return Ok(());
        }
    } else {
        identify(state, ctx, parts).await?;
    }
    if let Some(route) = ctx.route {
        let claims = ctx.who.as_deref().map(|w| &w.claims);
        decide::check_route(route, &parts.method, claims)?;
    }
    Ok(())
}

/// On a non-public route: the verified identity, renewed when expired, or a refusal.
// The renewals, the session check and the key fetch are awaited boxed: a future holds
// room for its largest await, and every request's future is moved several times on its
// way to the first poll, so unboxed these rare paths made each request copy kilobytes.
async fn identify(state: &State, ctx: &mut Ctx<'_>, parts: &Parts) -> Result<(), ProxyError> {
    let app_token = ctx.owned.app_token.as_deref();
    let Some(cred) = state.credentials.access_token(parts, ctx.upgrade)? else {
        if let (Some(t), Some(intro)) = (app_token, &state.introspector) {
            if !state.cfg.auth.has_keys() && state.lifecycle.can_initiate() {
                // Every token is opaque here: the new one is checked by the session check.
                let s = Box::pin(state.lifecycle.start_opaque(t, intro)).await?;
                ctx.renewed(s);
                return Ok(());
            }
        }
        if app_token.is_some() && state.lifecycle.can_renew() {
            let s = Box::pin(state.lifecycle.renew(None, None, app_token)).await?;
            check_revoked(state, &mut ctx.revoke_seen, &s.verified)?;
            ctx.renewed(s);
            return Ok(());
        }
        if ctx.mode == RouteMode::Optional {
            ctx.decision = Decision::Anonymous;
            return Ok(());
        }
        return Err(ProxyError::MissingToken);
    };
    ctx.source = Some(cred.source);
    check_upgrade_origin(state, ctx, cred.source)?;
    if let Some(intro) = &state.introspector {
        // Opaque (non-JWT) tokens are checked with the token service.
        if !state.cfg.auth.has_keys() || cred.token.bytes().filter(|b| *b == b'.').count() != 2 {
            let app_token = app_token.map(str::to_string);
            return Box::pin(identify_opaque(
                state,
                ctx,
                intro,
                &cred.token,
                app_token.as_deref(),
            ))
            .await;
        }
    }
    let mut verdict = state.verifier.verify(&cred.token);
    if matches!(verdict, Err(crate::token::VerifyError::UnknownKid)) {
        if let Some(jwks) = &state.jwks {
            if Box::pin(jwks.on_unknown_kid(&state.verifier)).await {
                verdict = state.verifier.verify(&cred.token);
            }
            if !jwks.loaded() {
                return Err(ProxyError::KeysUnavailable);
            }
        }
    }
    match verdict? {
        Verdict::Valid(v) => {
            check_revoked(state, &mut ctx.revoke_seen, &v)?;
            ctx.who = Some(v);
            ctx.decision = Decision::Allowed;
        }
        Verdict::Expired(old) => {
            if !state.lifecycle.can_renew() {
                return Err(ProxyError::TokenExpired);
            }
            // A banned user, or a session logged out since, is not renewed: refused
            // before the token service is asked.
            check_revoked(state, &mut ctx.revoke_seen, &old)?;
            let refresh = ctx.owned.refresh_token.as_deref();
            let s = Box::pin(state.lifecycle.renew(Some(old), refresh, app_token)).await?;
            check_revoked(state, &mut ctx.revoke_seen, &s.verified)?;
            ctx.renewed(s);
        }
    }
    Ok(())
}

/// An opaque token: the session check's answer, or a server-side renewal of a session
/// that is gone but was confirmed for its user recently.
async fn identify_opaque(
    state: &State,
    ctx: &mut Ctx<'_>,
    intro: &Arc<Introspector>,
    token: &str,
    app_token: Option<&str>,
) -> Result<(), ProxyError> {
    match intro.session(token).await? {
        Checked::Active(v) => {
            check_revoked(state, &mut ctx.revoke_seen, &v)?;
            ctx.who = Some(v);
            ctx.decision = Decision::Allowed;
        }
        Checked::Gone(Some(old)) if state.lifecycle.can_initiate() => {
            // A revoked session or a banned user is not renewed.
            check_revoked(state, &mut ctx.revoke_seen, &old)?;
            let s = state.lifecycle.renew_opaque(old, app_token, intro).await?;
            check_revoked(state, &mut ctx.revoke_seen, &s.verified)?;
            ctx.renewed(s);
        }
        Checked::Gone(Some(_)) => return Err(ProxyError::TokenExpired),
        Checked::Gone(None) => {
            return Err(ProxyError::InvalidToken("the access token is not active"))
        }
    }
    Ok(())
}

/// Refuses a revoked token or a banned user (one hash lookup while anything is
/// revoked, none otherwise), and notes the epoch it checked at.
fn check_revoked(state: &State, seen: &mut u64, v: &Verified) -> Result<(), ProxyError> {
    if let Some(r) = &state.revocation {
        *seen = r.revs.epoch();
        if let Err(why) = r.revs.check(v) {
            crate::revoke::count_refused(why);
            return Err(why.into());
        }
    }
    Ok(())
}

/// Cross-site WebSocket hijacking: an upgrade that a browser authenticates by itself (a
/// cookie, a query parameter in a link) must come from an allowed origin; header-carried
/// tokens opt in (`cors.websocket_origin_check_all`).
fn check_upgrade_origin(state: &State, ctx: &Ctx<'_>, source: Source) -> Result<(), ProxyError> {
    let Some(c) = &state.cfg.cors else {
        return Ok(());
    };
    let ambient = matches!(source, Source::Cookie | Source::Query);
    if ctx.upgrade
        && !c.allowed_origins.is_empty()
        && (ambient || c.websocket_origin_check_all)
        && ctx.origin.is_none()
    {
        return Err(ProxyError::OriginNotAllowed);
    }
    Ok(())
}

/// After a positive decision: identity set (never appended), the client's credentials
/// taken out, the request id in. Returns the query to forward.
fn prepare(state: &State, ctx: &Ctx<'_>, parts: &mut Parts) -> Option<String> {
    if let Some(who) = &ctx.who {
        inject::set_identity(&mut parts.headers, who);
        if let Some(a) = &state.assertion {
            a.set(&mut parts.headers, who);
        }
    }
    let renewed = ctx.renewed.as_ref().map(|s| s.access_token.as_str());
    let query = state.credentials.remove_for_backend(
        &mut parts.headers,
        parts.uri.query(),
        ctx.upgrade,
        ctx.source,
        renewed,
    );
    parts.headers.insert(
        state.cfg.server.request_id_header.clone(),
        ctx.request_id.clone(),
    );
    if let Some(o) = crate::otel::get() {
        o.inject(&mut parts.headers);
    }
    query
}

/// Sends the prepared request to the backend; its response (or the sidecar's 502/504)
/// carries a renewed pair either way.
async fn forward(
    state: &State,
    ctx: &mut Ctx<'_>,
    parts: Parts,
    body: Incoming,
    conn: &ConnInfo,
    query: Option<&str>,
) -> Response<ProxyBody> {
    let tunnel_deadline = match (&ctx.who, state.cfg.server.upgrade_token_grace) {
        (Some(who), Some(grace)) if ctx.upgrade => {
            // None (no deadline) when `exp` is beyond what a SystemTime can hold.
            UNIX_EPOCH
                .checked_add(Duration::from_secs(who.exp))
                .and_then(|t| t.checked_add(grace))
        }
        _ => None,
    };
    // A revoked user's pending request, stream or tunnel ends within the second.
    let watched = match (&state.revocation, &ctx.who) {
        (Some(r), Some(who)) => Some((r.revs.clone(), who.clone())),
        _ => None,
    };
    let hop = Hop {
        client_ip: conn.ip.clone(),
        tls: conn.tls,
        path: &ctx.forward_path,
        query,
        upgrade: ctx.upgrade,
        tunnel_deadline,
        revoked: watched
            .as_ref()
            .filter(|_| ctx.upgrade)
            .map(|(revs, who)| revs.watch(who.clone(), ctx.revoke_seen)),
    };
    let body = crate::inbound::Inbound::new(body, state.cfg.server.body_read_timeout);
    let req = Request::from_parts(parts, body);
    let forwarded = state.forwarder.forward(req, hop, &state.metrics);
    let result = match &watched {
        Some((revs, who)) => {
            tokio::select! {
                r = forwarded => r,
                why = revs.clone().until_refused(who.clone(), ctx.revoke_seen) => {
                    crate::revoke::count_closed("pending");
                    Err(ProxyError::from(why))
                }
            }
        }
        None => forwarded.await,
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            ctx.decision = Decision::Failed;
            e.into_response()
        }
    };
    if let Some((revs, who)) = watched {
        // Open-ended bodies (SSE, streamed long polls: no Content-Length) end when
        // their user is revoked; sized ones finish by themselves.
        let open_ended = matches!(resp.body(), ProxyBody::Stream { .. })
            && !resp.headers().contains_key(header::CONTENT_LENGTH)
            && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        if open_ended {
            let stop = revs.watch(who, ctx.revoke_seen);
            resp = resp.map(|b| {
                b.watched(async move {
                    let _ = stop.await;
                    crate::revoke::count_closed("stream");
                })
            });
        }
    }
    // The new pair goes back even when the backend failed: the old refresh token may
    // already be rotated away, and losing the pair would log the user out.
    if let Some(s) = &ctx.renewed {
        inject::set_session(resp.headers_mut(), &state.cfg.response_tokens, s);
    }
    resp
}

/// A phase refused the request: the sidecar's own answer.
fn refuse(ctx: &mut Ctx<'_>, e: ProxyError) -> Response<ProxyBody> {
    ctx.decision = if e.status().is_server_error() {
        Decision::Failed
    } else {
        Decision::Rejected
    };
    tracing::debug!(
        request_id = ctx.request_id.to_str().unwrap_or(""),
        code = e.code(),
        reason = %e,
        "request refused"
    );
    ctx.error = Some(e.code());
    // A refused request is logged without a user, even when its token verified.
    ctx.who = None;
    e.into_response()
}

/// Last, for every request: the request id on the response, metrics, the access-log line.
fn respond(state: &State, ctx: &Ctx<'_>, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    resp.headers_mut().insert(
        state.cfg.server.request_id_header.clone(),
        ctx.request_id.clone(),
    );
    let status = resp.status().as_u16();
    state.metrics.request(ctx.decision, status);
    tracing::info!(
        target: "auth_sidecar::access",
        request_id = ctx.request_id.to_str().unwrap_or(""),
        method = %ctx.method,
        path = %ctx.canonical,
        status,
        latency_us = ctx.started.elapsed().as_micros() as u64,
        decision = ctx.decision.as_str(),
        error = ctx.error.unwrap_or("-"),
        user = ctx.who.as_ref().map(|u| u.sub.as_str()).unwrap_or("-"),
    );
    resp
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
    // A counter per thread (its number in the top bits): no cache line shared between
    // workers on every request.
    static THREADS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static COUNTER: std::cell::Cell<u64> =
            std::cell::Cell::new(THREADS.fetch_add(1, Ordering::Relaxed) << 48);
    }
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        h.finish()
    });
    let n = COUNTER.with(|c| {
        let n = c.get();
        c.set(n.wrapping_add(1));
        n
    });
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
