//! The token lifecycle: refresh an expired access token (one call per refresh token,
//! however many requests arrive at once), and start a new session through *initiate*
//! when the refresh token is dead. Knows nothing of the proxy's HTTP server: it talks
//! to the token service through [`TokenHttp`].
//!
//! Outcome rules (who gets what):
//! - token service says no (400/401/403, `invalid_grant`): *rejected* → try initiate;
//! - token service unreachable, slow, 5xx, 429, or an answer we cannot read:
//!   *unavailable* → 503, the client keeps its tokens, nothing is cached;
//! - token service answers with a token that does not verify or names another user:
//!   *bad response* → 502.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Uri};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use moka::future::Cache;
use serde_json::{Map, Value};

use super::verify::{hash_token, now_secs, TokenHash, Verdict, Verified, Verifier};
use crate::config::{AppIdentity, Initiate, Refresh};

/// One outbound call to the token service.
pub struct Call {
    pub method: Method,
    pub uri: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub timeout: Duration,
    pub max_response_bytes: usize,
}

/// The token service's answer.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    /// `Cache-Control: max-age`, when the answer had one (JWKS refresh timing).
    pub max_age: Option<Duration>,
}

/// A call that produced no usable answer.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum CallError {
    #[error("connection failed")]
    Connect,
    #[error("timed out")]
    Timeout,
    #[error("response too large")]
    TooLarge,
    #[error("i/o error")]
    Io,
}

/// How the lifecycle reaches the token service (a hyper client in production).
pub trait TokenHttp: Send + Sync + 'static {
    fn call(&self, call: Call) -> Pin<Box<dyn Future<Output = Result<Answer, CallError>> + Send>>;
}

/// A fresh pair of tokens and the verified identity of the new access token.
#[derive(Debug)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub verified: Arc<Verified>,
    /// Started by initiate (a new session) rather than a refresh.
    pub initiated: bool,
}

/// Why no new session could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// Expired, and nothing to renew it with.
    #[error("the access token has expired")]
    Expired,
    /// Refresh and initiate refused (or initiate not possible): log in again.
    #[error("{0}")]
    Rejected(&'static str),
    /// The token service could not be asked: retry later, keep your tokens.
    #[error("the token service is unavailable")]
    Unavailable,
    /// The token service answered with tokens we must not use.
    #[error("{0}")]
    BadResponse(&'static str),
}

/// Single-flight failure kinds; `Rejected` and `Unavailable` are never cached as answers
/// (moka does not store errors).
#[derive(Debug, Clone, Copy)]
enum Failure {
    Rejected,
    Unavailable,
    Bad(&'static str),
}

/// What proves who a new session is for.
struct Subject {
    /// Single-flight key: one initiate per user at a time.
    key: String,
    sub: String,
    email: String,
    name: String,
    external_id: String,
}

pub struct Lifecycle {
    refresh: Option<Refresh>,
    initiate: Option<Initiate>,
    app: Option<AppIdentity>,
    http: Arc<dyn TokenHttp>,
    verifier: Arc<Verifier>,
    refreshed: Cache<TokenHash, Arc<Session>>,
    rejected: Cache<TokenHash, ()>,
    initiated: Cache<String, Arc<Session>>,
}

impl Lifecycle {
    pub fn new(
        refresh: Option<Refresh>,
        initiate: Option<Initiate>,
        app: Option<AppIdentity>,
        http: Arc<dyn TokenHttp>,
        verifier: Arc<Verifier>,
    ) -> Arc<Lifecycle> {
        let grace = refresh
            .as_ref()
            .map(|r| r.grace)
            .unwrap_or(Duration::from_secs(30));
        let rejected_ttl = refresh
            .as_ref()
            .map(|r| r.rejected_ttl)
            .unwrap_or(Duration::from_secs(10));
        Arc::new(Lifecycle {
            refreshed: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(grace.max(Duration::from_millis(1)))
                .build(),
            rejected: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(rejected_ttl.max(Duration::from_millis(1)))
                .build(),
            initiated: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(grace.max(Duration::from_millis(1)))
                .build(),
            refresh,
            initiate,
            app,
            http,
            verifier,
        })
    }

    /// Whether this lifecycle can do anything for a request without a usable token.
    pub fn can_renew(&self) -> bool {
        self.refresh.is_some() || self.initiate.is_some()
    }

    pub fn refresh_header(&self) -> Option<&HeaderName> {
        self.refresh.as_ref().map(|r| &r.header)
    }

    pub fn refresh_cookie(&self) -> Option<&str> {
        self.refresh.as_ref().and_then(|r| r.cookie.as_deref())
    }

    pub fn app_identity_header(&self) -> Option<&HeaderName> {
        self.app.as_ref().map(|a| &a.header)
    }

    pub fn retry_after(&self) -> Duration {
        self.refresh
            .as_ref()
            .map(|r| r.retry_after)
            .unwrap_or(Duration::from_secs(5))
    }

    /// Renews a session. `expired` is the verified (signature, issuer, audience) but
    /// expired access token, if the client sent one; `refresh_token` and `app_token`
    /// are what the client sent for them.
    pub async fn renew(
        self: &Arc<Self>,
        expired: Option<Arc<Verified>>,
        refresh_token: Option<&str>,
        app_token: Option<&str>,
    ) -> Result<Arc<Session>, LifecycleError> {
        let mut rejected = false;
        if let (Some(old), Some(rt), Some(_)) = (&expired, refresh_token, &self.refresh) {
            match self.refresh(rt).await {
                Ok(s) if s.verified.sub == old.sub => return Ok(s),
                Ok(_) => {
                    metrics::counter!("auth_sidecar_refresh_total", "outcome" => "wrong_subject")
                        .increment(1);
                    return Err(LifecycleError::BadResponse(
                        "the token service returned a token for another user",
                    ));
                }
                Err(Failure::Rejected) => rejected = true,
                Err(Failure::Unavailable) => return Err(LifecycleError::Unavailable),
                Err(Failure::Bad(why)) => return Err(LifecycleError::BadResponse(why)),
            }
        }
        let Some(init) = &self.initiate else {
            return Err(if rejected {
                LifecycleError::Rejected("the refresh token was rejected; log in again")
            } else {
                LifecycleError::Expired
            });
        };
        if !rejected
            && refresh_token.is_none()
            && !init.when_refresh_token_missing
            && app_token.is_none()
        {
            return Err(LifecycleError::Expired);
        }
        let subject = match self.subject(expired.as_deref(), app_token, init.max_staleness) {
            Some(s) => s,
            None if rejected => {
                return Err(LifecycleError::Rejected(
                    "the refresh token was rejected; log in again",
                ))
            }
            None if app_token.is_some() => {
                return Err(LifecycleError::Rejected(
                    "the app identity token is not valid",
                ))
            }
            None if expired.is_some() => {
                return Err(LifecycleError::Rejected(
                    "the session is too old to renew; log in again",
                ))
            }
            None => return Err(LifecycleError::Expired),
        };
        let proven_by_token = expired
            .as_ref()
            .filter(|old| subject.sub == old.sub)
            .map(|o| o.sub.clone());
        match self.initiate(subject).await {
            Ok(s)
                if init.require_same_subject
                    && proven_by_token
                        .as_ref()
                        .is_some_and(|sub| *sub != s.verified.sub) =>
            {
                Err(LifecycleError::BadResponse(
                    "the token service started a session for another user",
                ))
            }
            Ok(s) => Ok(s),
            Err(Failure::Rejected) => Err(LifecycleError::Rejected(
                "the token service refused to start a session",
            )),
            Err(Failure::Unavailable) => Err(LifecycleError::Unavailable),
            Err(Failure::Bad(why)) => Err(LifecycleError::BadResponse(why)),
        }
    }

    /// One refresh call per refresh token: concurrent requests share it, requests
    /// within the grace window reuse its result, and a rejected token is remembered.
    async fn refresh(self: &Arc<Self>, refresh_token: &str) -> Result<Arc<Session>, Failure> {
        let key = hash_token(refresh_token);
        if self.rejected.contains_key(&key) {
            metrics::counter!("auth_sidecar_refresh_total", "outcome" => "rejected_cached")
                .increment(1);
            return Err(Failure::Rejected);
        }
        let this = self.clone();
        let rt = refresh_token.to_string();
        single_flight("refresh", async move {
            this.refreshed
                .entry(key)
                .or_try_insert_with(this.call_refresh(rt))
                .await
        })
        .await
    }

    async fn call_refresh(&self, refresh_token: String) -> Result<Arc<Session>, Failure> {
        let Some(cfg) = &self.refresh else {
            return Err(Failure::Rejected);
        };
        let json = cfg.content_type.to_str().is_ok_and(|c| c.contains("json"));
        let body = cfg
            .body
            .replace("{refresh_token}", &escape(&refresh_token, json));
        let mut headers = vec![(http::header::CONTENT_TYPE, cfg.content_type.clone())];
        if let Some(key) = &cfg.api_key {
            if let Ok(v) = HeaderValue::from_bytes(&key.secret.0) {
                headers.push((key.header.clone(), sensitive(v)));
            }
        }
        let call = Call {
            method: cfg.method.clone(),
            uri: cfg.uri.clone(),
            headers,
            body: Bytes::from(body),
            timeout: cfg.timeout,
            max_response_bytes: cfg.max_response_bytes,
        };
        let started = std::time::Instant::now();
        let result = self
            .exchange(
                call,
                &cfg.access_token_pointer,
                &cfg.refresh_token_pointer,
                Some(&refresh_token),
                false,
            )
            .await;
        if matches!(result, Err(Failure::Rejected)) {
            // Remembered before the single flight ends, so no waiter can slip in a second call.
            self.rejected.insert(hash_token(&refresh_token), ()).await;
        }
        record("refresh", &result, started);
        result
    }

    /// Who a new session is for: the expired token's verified claims if it is recent
    /// enough, otherwise a valid app identity token.
    fn subject(
        &self,
        expired: Option<&Verified>,
        app_token: Option<&str>,
        max_staleness: Duration,
    ) -> Option<Subject> {
        if let Some(old) = expired {
            if now_secs() <= old.exp.saturating_add(max_staleness.as_secs()) {
                let s = |k: &str| old.claim_str(k).unwrap_or("").to_string();
                return Some(Subject {
                    key: format!("sub:{}", old.sub),
                    sub: old.sub.clone(),
                    email: s("email"),
                    name: s("name"),
                    external_id: old.sub.clone(),
                });
            }
        }
        let (app, token) = (self.app.as_ref()?, app_token?);
        let claims = verify_app_token(app, token)?;
        let get = |k: &str| {
            claims
                .get(k)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
        };
        let email = get("email").map(str::to_string);
        let external_id = get("externalId").map(str::to_string);
        // Email wins when both are present (as Kustomer's login does).
        let (key, sub) = match (&email, &external_id) {
            (Some(e), _) => (format!("email:{e}"), e.clone()),
            (None, Some(x)) => (format!("ext:{x}"), x.clone()),
            (None, None) => return None,
        };
        Some(Subject {
            key,
            sub,
            email: email.unwrap_or_default(),
            name: get("name").unwrap_or("").to_string(),
            external_id: external_id.unwrap_or_default(),
        })
    }

    async fn initiate(self: &Arc<Self>, subject: Subject) -> Result<Arc<Session>, Failure> {
        let this = self.clone();
        let key = subject.key.clone();
        single_flight("initiate", async move {
            this.initiated
                .entry(key)
                .or_try_insert_with(this.call_initiate(subject))
                .await
        })
        .await
    }

    async fn call_initiate(&self, s: Subject) -> Result<Arc<Session>, Failure> {
        let Some(cfg) = &self.initiate else {
            return Err(Failure::Rejected);
        };
        let body = cfg
            .body
            .replace("{sub}", &escape(&s.sub, true))
            .replace("{email}", &escape(&s.email, true))
            .replace("{name}", &escape(&s.name, true))
            .replace("{external_id}", &escape(&s.external_id, true));
        let mut headers = vec![(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )];
        if let Ok(v) = HeaderValue::from_bytes(&cfg.api_key.secret.0) {
            headers.push((cfg.api_key.header.clone(), sensitive(v)));
        }
        let call = Call {
            method: Method::POST,
            uri: cfg.uri.clone(),
            headers,
            body: Bytes::from(body),
            timeout: cfg.timeout,
            max_response_bytes: 64 * 1024,
        };
        let started = std::time::Instant::now();
        let result = self
            .exchange(
                call,
                &cfg.access_token_pointer,
                &cfg.refresh_token_pointer,
                None,
                true,
            )
            .await;
        record("initiate", &result, started);
        result
    }

    /// Makes the call, classifies the answer, reads the tokens and verifies the new
    /// access token before anyone uses it.
    async fn exchange(
        &self,
        call: Call,
        access_ptr: &str,
        refresh_ptr: &str,
        old_refresh: Option<&str>,
        initiated: bool,
    ) -> Result<Arc<Session>, Failure> {
        let answer = match self.http.call(call).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "token service call failed");
                return Err(Failure::Unavailable);
            }
        };
        let json: Option<Value> = serde_json::from_slice(&answer.body).ok();
        match answer.status {
            400 | 401 | 403 => return Err(Failure::Rejected),
            200..=299 => {}
            status => {
                tracing::warn!(status, "token service answered with an error status");
                return Err(Failure::Unavailable);
            }
        }
        let Some(json) = json else {
            tracing::warn!("token service answer is not JSON");
            return Err(Failure::Unavailable);
        };
        // Some services answer 200 with an OAuth-style error object.
        if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
            if matches!(
                err,
                "invalid_grant" | "invalid_token" | "unauthorized_client" | "access_denied"
            ) {
                return Err(Failure::Rejected);
            }
        }
        let Some(access) = json
            .pointer(access_ptr)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
        else {
            tracing::warn!(
                pointer = access_ptr,
                "token service answer has no access token"
            );
            return Err(Failure::Unavailable);
        };
        let refresh = match json
            .pointer(refresh_ptr)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
        {
            Some(r) => r.to_string(),
            // A service that does not rotate keeps the old refresh token in force.
            None => old_refresh.unwrap_or("").to_string(),
        };
        if HeaderValue::from_str(access).is_err() || HeaderValue::from_str(&refresh).is_err() {
            return Err(Failure::Bad(
                "the token service returned tokens that cannot be sent",
            ));
        }
        match self.verifier.verify_uncached(access, now_secs()) {
            Ok(Verdict::Valid(v)) => Ok(Arc::new(Session {
                access_token: access.to_string(),
                refresh_token: refresh,
                verified: v,
                initiated,
            })),
            Ok(Verdict::Expired(_)) => {
                Err(Failure::Bad("the token service returned an expired token"))
            }
            Err(_) => Err(Failure::Bad(
                "the token service returned a token that does not verify",
            )),
        }
    }
}

/// Runs a moka single flight in its own task: a client that disconnects mid-call drops
/// only its wait, never the call that others are waiting on. Counts coalesced waits.
async fn single_flight<K, F>(call: &'static str, flight: F) -> Result<Arc<Session>, Failure>
where
    K: Send + Sync + 'static,
    F: std::future::Future<Output = Result<moka::Entry<K, Arc<Session>>, Arc<Failure>>>
        + Send
        + 'static,
{
    let task = tokio::spawn(async move {
        match flight.await {
            Ok(e) => {
                if !e.is_fresh() {
                    metrics::counter!("auth_sidecar_coalesced_total", "call" => call).increment(1);
                }
                Ok(e.into_value())
            }
            Err(f) => Err(*f),
        }
    });
    task.await.unwrap_or(Err(Failure::Unavailable))
}

/// Verifies a customer app identity token (Kustomer-style: HS256, `externalId` or
/// `email`, `iat` recent). Returns its claims only when it verifies.
fn verify_app_token(app: &AppIdentity, token: &str) -> Option<Map<String, Value>> {
    if token.len() > 8 * 1024 {
        return None;
    }
    let mut v = Validation::new(Algorithm::HS256);
    v.validate_exp = true;
    v.required_spec_claims.clear();
    v.validate_aud = false;
    v.leeway = 30;
    let data = jsonwebtoken::decode::<Map<String, Value>>(
        token,
        &DecodingKey::from_secret(&app.secret.0),
        &v,
    )
    .ok()?;
    let iat = data.claims.get("iat")?.as_u64()?;
    let now = now_secs();
    if iat > now + 30 || now.saturating_sub(iat) > app.max_age.as_secs() {
        return None;
    }
    Some(data.claims)
}

fn sensitive(mut v: HeaderValue) -> HeaderValue {
    v.set_sensitive(true);
    v
}

/// Escapes a value for the body template: JSON string content, or form encoding.
fn escape(s: &str, json: bool) -> String {
    if json {
        // serde_json always writes a quoted string; drop exactly the outer quotes.
        let quoted = serde_json::to_string(s).unwrap_or_default();
        quoted
            .get(1..quoted.len().saturating_sub(1))
            .unwrap_or("")
            .to_string()
    } else {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    }
}

fn record(call: &'static str, result: &Result<Arc<Session>, Failure>, started: std::time::Instant) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(Failure::Rejected) => "rejected",
        Err(Failure::Unavailable) => "unavailable",
        Err(Failure::Bad(_)) => "bad_response",
    };
    metrics::counter!("auth_sidecar_token_service_calls_total", "call" => call, "outcome" => outcome).increment(1);
    metrics::histogram!("auth_sidecar_token_service_seconds", "call" => call)
        .record(started.elapsed().as_secs_f64());
}
