//! Keys and answers that come over the network: a JWKS URL (fetched before ready,
//! refreshed in the background, refetched on unknown `kid` at most once per interval,
//! last good set kept on failure) and the session check for opaque tokens: RFC 7662
//! introspection, or a vendor's own session call (ConnectyCube's `GET /session` with
//! `CB-Token`), with a sliding idle window.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method};
use moka::future::Cache;
use opentelemetry::context::FutureExt as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::cache::{hash_token, TokenHash};
use super::call::{Call, TokenHttp};
use super::keys::KeySet;
use super::now_secs;
use super::verify::{Project, Verified, Verifier, VerifyError};
use crate::config::{CheckStyle, Introspection, Jwks};

/// A JWKS endpoint and what we last got from it.
pub struct JwksRemote {
    cfg: Jwks,
    http: Arc<dyn TokenHttp>,
    algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Keys from the config (HMAC secret, PEM files, JWKS file), merged with the remote set.
    static_keys: KeySet,
    loaded: AtomicBool,
    last_doc: Mutex<Option<[u8; 32]>>,
    /// The keys last fetched from the URL (without the static ones).
    remote_keys: Mutex<Option<KeySet>>,
    last_kid_fetch: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
}

impl JwksRemote {
    pub fn new(
        cfg: Jwks,
        http: Arc<dyn TokenHttp>,
        algorithms: Vec<jsonwebtoken::Algorithm>,
        static_keys: KeySet,
    ) -> Arc<Self> {
        Arc::new(JwksRemote {
            cfg,
            http,
            algorithms,
            static_keys,
            loaded: AtomicBool::new(false),
            last_doc: Mutex::new(None),
            remote_keys: Mutex::new(None),
            last_kid_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Has a key set ever been loaded from the URL?
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Fetches once and installs the keys when they changed. Returns how long until the
    /// next refresh (the document's max-age within the configured bounds).
    pub async fn refresh(&self, verifier: &Verifier) -> Result<Duration, String> {
        let _one = self.fetching.lock().await;
        let started = Instant::now();
        let call = Call {
            purpose: "jwks",
            method: Method::GET,
            uri: self.cfg.url.clone(),
            headers: vec![(
                http::header::ACCEPT,
                HeaderValue::from_static("application/json"),
            )],
            body: Bytes::new(),
            timeout: self.cfg.timeout,
            max_response_bytes: self.cfg.max_bytes,
        };
        let result = self.fetch(call, verifier).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("auth_sidecar_jwks_fetches_total", "outcome" => outcome).increment(1);
        metrics::histogram!("auth_sidecar_jwks_fetch_seconds")
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn fetch(&self, call: Call, verifier: &Verifier) -> Result<Duration, String> {
        let answer = self
            .http
            .call(call)
            .await
            .map_err(|e| format!("fetch failed: {e}"))?;
        if answer.status != 200 {
            return Err(format!("answered {}", answer.status));
        }
        let text = std::str::from_utf8(&answer.body).map_err(|_| "not UTF-8".to_string())?;
        let mut remote = KeySet::default();
        let skipped = remote
            .add_jwks(text, &self.algorithms)
            .map_err(|e| e.to_string())?;
        for s in skipped {
            crate::request_log::request_event!(DEBUG, "jwks: skipped {s}");
        }
        if remote.is_empty() {
            return Err("the document has no usable key".into());
        }
        let mut set = self.static_keys.clone();
        set.keys.extend(remote.keys.iter().cloned());
        let digest: [u8; 32] = Sha256::digest(&answer.body).into();
        let changed = {
            let mut last = self.last_doc.lock().map_err(|_| "poisoned")?;
            let changed = *last != Some(digest);
            *last = Some(digest);
            changed
        };
        if let Ok(mut r) = self.remote_keys.lock() {
            *r = Some(remote);
        }
        if changed {
            verifier.set_keys(set);
            crate::request_log::request_event!(INFO, url = %self.cfg.url, "jwks: key set installed");
        }
        self.loaded.store(true, Ordering::Relaxed);
        let ttl = answer.max_age.unwrap_or(self.cfg.max_refresh);
        Ok(ttl.clamp(self.cfg.min_refresh, self.cfg.max_refresh))
    }

    /// Carries the last good remote keys over a reload (same URL), so a reload while the
    /// endpoint is down does not drop them.
    pub fn inherit(&self, old: &JwksRemote, verifier: &Verifier) {
        if old.cfg.url != self.cfg.url || !old.loaded() {
            return;
        }
        let Some(remote) = old.remote_keys.lock().ok().and_then(|r| r.clone()) else {
            return;
        };
        let mut set = self.static_keys.clone();
        set.keys.extend(remote.keys.iter().cloned());
        verifier.set_keys(set);
        if let (Ok(mut mine), Ok(theirs)) = (self.last_doc.lock(), old.last_doc.lock()) {
            *mine = *theirs;
        }
        if let Ok(mut r) = self.remote_keys.lock() {
            *r = Some(remote);
        }
        self.loaded.store(true, Ordering::Relaxed);
    }

    /// A token named a `kid` we do not have: refetch, but at most once per interval so
    /// attacker-chosen kids cannot make us hammer the endpoint. True when a fetch ran.
    pub async fn on_unknown_kid(&self, verifier: &Verifier) -> bool {
        {
            let Ok(mut last) = self.last_kid_fetch.lock() else {
                return false;
            };
            if last.is_some_and(|t| t.elapsed() < self.cfg.unknown_kid_interval) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match self.refresh(verifier).await {
            Ok(_) => true,
            Err(e) => {
                crate::request_log::request_event!(WARN, error = %e, "jwks: refetch for an unknown kid failed; keeping the last good keys");
                false
            }
        }
    }

    /// Background refresh loop; ends when the verifier (its config generation) is gone.
    pub fn spawn(self: &Arc<Self>, verifier: Weak<Verifier>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let Some(v) = verifier.upgrade() else { return };
                let wait = match this.refresh(&v).await {
                    Ok(next) => {
                        failures = 0;
                        next
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, url = %this.cfg.url, "jwks: fetch failed; keeping the last good keys");
                        // Retry sooner while nothing is loaded, with a gentle backoff.
                        Duration::from_secs(1u64 << failures.min(5))
                            .min(this.cfg.min_refresh.max(Duration::from_secs(1)))
                    }
                };
                drop(v);
                tokio::time::sleep(wait).await;
            }
        });
    }
}

/// The session check for tokens that are not JWTs (RFC 7662 introspection, or a
/// vendor's session call), with answers cached by token hash: never past the session's
/// expiry nor, with `idle_timeout`, past the idle window since the vendor last confirmed
/// it; a session in use is re-confirmed before that window ends.
pub struct Introspector {
    cfg: Introspection,
    http: Arc<dyn TokenHttp>,
    project: Arc<dyn Project>,
    /// `Retry-After` when the endpoint cannot answer.
    retry_after: Duration,
    cache: Cache<TokenHash, Option<Arc<Answer>>>,
    /// The last identity the vendor confirmed for a token, kept `remember_for`: proof of
    /// the user for a server-side renewal once the session is gone.
    confirmed: Cache<TokenHash, Arc<Verified>>,
    /// Tokens being re-confirmed in the background (one call per token at a time).
    reconfirming: Cache<TokenHash, ()>,
    reconfirm_after: Option<Duration>,
}

/// A live session and when the vendor confirmed it.
struct Answer {
    v: Arc<Verified>,
    at: Instant,
}

/// What the session check says about a token.
pub enum Checked {
    /// A live session.
    Active(Arc<Verified>),
    /// No such session (expired or never was); with the identity this sidecar last
    /// confirmed for the token, if it remembers one.
    Gone(Option<Arc<Verified>>),
}

/// The check failed to give an answer (an outage, never a 401).
#[derive(Debug, Clone, Copy)]
struct Unavailable;

struct AnswerTtl {
    ttl: Duration,
    negative_ttl: Duration,
}

impl moka::Expiry<TokenHash, Option<Arc<Answer>>> for AnswerTtl {
    fn expire_after_create(
        &self,
        _k: &TokenHash,
        v: &Option<Arc<Answer>>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(match v {
            // `exp` already includes the idle window (see `parse`).
            Some(a) => Duration::from_secs(a.v.exp.saturating_sub(now_secs())).min(self.ttl),
            None => self.negative_ttl,
        })
    }
}

impl Introspector {
    pub fn new(
        cfg: Introspection,
        http: Arc<dyn TokenHttp>,
        project: Arc<dyn Project>,
        retry_after: Duration,
        remember_default: Duration,
    ) -> Arc<Self> {
        let mut ttl = cfg.cache_ttl;
        if let Some(idle) = cfg.idle_timeout {
            ttl = ttl.min(idle);
        }
        let cache = Cache::builder()
            .max_capacity(cfg.cache_capacity)
            .expire_after(AnswerTtl {
                ttl,
                negative_ttl: cfg.negative_ttl,
            })
            .build();
        let confirmed = Cache::builder()
            .max_capacity(cfg.cache_capacity)
            .time_to_live(
                cfg.remember_for
                    .unwrap_or(remember_default)
                    .max(Duration::from_millis(1)),
            )
            .build();
        let reconfirming = Cache::builder()
            .max_capacity(cfg.cache_capacity)
            .time_to_live(cfg.timeout.saturating_mul(2).max(Duration::from_millis(1)))
            .build();
        let reconfirm_after = cfg
            .idle_timeout
            .map(|idle| cfg.reconfirm_after.unwrap_or(idle / 2));
        Arc::new(Introspector {
            cfg,
            http,
            project,
            retry_after,
            cache,
            confirmed,
            reconfirming,
            reconfirm_after,
        })
    }

    /// The verified identity of an active token; an inactive one is invalid, and no
    /// answer is an outage.
    pub async fn check(self: &Arc<Self>, token: &str) -> Result<Arc<Verified>, VerifyError> {
        match self.session(token).await? {
            Checked::Active(v) => Ok(v),
            Checked::Gone(_) => Err(VerifyError::Invalid("the access token is not active")),
        }
    }

    /// What the check says about a token. One call per token at a time; answers cached
    /// (see the type's doc). No answer is an outage.
    pub async fn session(self: &Arc<Self>, token: &str) -> Result<Checked, VerifyError> {
        let key = hash_token(token);
        let this = self.clone();
        let owned = token.to_string();
        // The session check's span is a child of the request that asked.
        let task = tokio::spawn(
            async move {
                this.cache
                    .try_get_with(key, this.call_and_remember(key, owned))
                    .await
            }
            .with_current_context(),
        );
        match task.await {
            Ok(Ok(Some(a))) => {
                self.maybe_reconfirm(key, &a, token);
                Ok(Checked::Active(a.v.clone()))
            }
            Ok(Ok(None)) => Ok(Checked::Gone(self.confirmed.get(&key).await)),
            _ => Err(VerifyError::Unavailable {
                retry_after: self.retry_after,
            }),
        }
    }

    /// A session in use whose confirmation is getting old is confirmed again in the
    /// background, so the vendor counts it as active and the cache stays warm.
    fn maybe_reconfirm(self: &Arc<Self>, key: TokenHash, a: &Answer, token: &str) {
        let Some(after) = self.reconfirm_after else {
            return;
        };
        if a.at.elapsed() < after || self.reconfirming.contains_key(&key) {
            return;
        }
        let this = self.clone();
        let token = token.to_string();
        tokio::spawn(async move {
            if !this.reconfirming.entry(key).or_insert(()).await.is_fresh() {
                return;
            }
            // An outage leaves the entry as it is: it still ends at the idle window.
            if let Ok(answer) = this.call_and_remember(key, token).await {
                this.cache.insert(key, answer).await;
            }
            this.reconfirming.invalidate(&key).await;
        });
    }

    async fn call_and_remember(
        &self,
        key: TokenHash,
        token: String,
    ) -> Result<Option<Arc<Answer>>, Unavailable> {
        let answer = self.call(token).await?;
        if let Some(a) = &answer {
            self.confirmed.insert(key, a.v.clone()).await;
        }
        Ok(answer)
    }

    async fn call(&self, token: String) -> Result<Option<Arc<Answer>>, Unavailable> {
        let mut headers = Vec::new();
        let mut body = Bytes::new();
        match (&self.cfg.style, &self.cfg.token_header) {
            (CheckStyle::Session, Some(h)) => {
                let mut v = HeaderValue::from_str(&token).map_err(|_| Unavailable)?;
                v.set_sensitive(true);
                headers.push((h.clone(), v));
            }
            _ => {
                body = Bytes::from(format!(
                    "token={}&token_type_hint=access_token",
                    percent_encoding::utf8_percent_encode(
                        &token,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                ));
                headers.push((
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                ));
            }
        }
        headers.push((
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        ));
        if let Some(client) = &self.cfg.client {
            use base64::Engine;
            let mut raw = client.id.as_bytes().to_vec();
            raw.push(b':');
            raw.extend_from_slice(&client.secret.0);
            let b = base64::engine::general_purpose::STANDARD.encode(raw);
            if let Ok(mut v) = HeaderValue::from_str(&format!("Basic {b}")) {
                v.set_sensitive(true);
                headers.push((http::header::AUTHORIZATION, v));
            }
        }
        let started = Instant::now();
        let answer = self
            .http
            .call(Call {
                purpose: "introspection",
                method: self.cfg.method(),
                uri: self.cfg.url.clone(),
                headers,
                body,
                timeout: self.cfg.timeout,
                max_response_bytes: 64 * 1024,
            })
            .await;
        let session = self.cfg.style == CheckStyle::Session;
        let result = match answer {
            Ok(a) if a.status == 200 || (session && (200..300).contains(&a.status)) => {
                self.parse(&a.body)
            }
            // The vendor's "Required session does not exist".
            Ok(a) if session && matches!(a.status, 401 | 403 | 404) => Ok(None),
            Ok(a) => {
                crate::request_log::request_event!(
                    WARN,
                    status = a.status,
                    "session check answered with an error status"
                );
                Err(Unavailable)
            }
            Err(e) => {
                crate::request_log::request_event!(WARN, error = %e, "session check call failed");
                Err(Unavailable)
            }
        };
        let outcome = match &result {
            Ok(Some(_)) => "active",
            Ok(None) => "inactive",
            Err(_) => "unavailable",
        };
        metrics::counter!("auth_sidecar_introspection_calls_total", "outcome" => outcome)
            .increment(1);
        metrics::histogram!("auth_sidecar_introspection_seconds")
            .record(started.elapsed().as_secs_f64());
        result.map(|v| {
            v.map(|v| {
                Arc::new(Answer {
                    v,
                    at: Instant::now(),
                })
            })
        })
    }

    fn parse(&self, body: &[u8]) -> Result<Option<Arc<Verified>>, Unavailable> {
        let cfg = &self.cfg;
        let v: Map<String, Value> = serde_json::from_slice(body).map_err(|_| Unavailable)?;
        let doc = Value::Object(v);
        let session = cfg.style == CheckStyle::Session;
        if !session && doc.get("active") != Some(&Value::Bool(true)) {
            return Ok(None);
        }
        let at = |p: &Option<String>, default: &str| -> Option<&Value> {
            match p {
                Some(p) => doc.pointer(p),
                None if default.is_empty() => None,
                None => doc.pointer(default),
            }
        };
        let text = |v: Option<&Value>| -> Option<String> {
            match v? {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let sub = match &cfg.user_id_pointer {
            Some(p) => text(doc.pointer(p)),
            None => text(doc.get("sub")).or_else(|| text(doc.get("username"))),
        }
        .filter(|s| s != "0");
        let sub = match sub {
            Some(s) => s,
            None if cfg.app_sessions => String::new(),
            None => return Ok(None),
        };
        let now = now_secs();
        let fallback = cfg.idle_timeout.unwrap_or(cfg.cache_ttl).as_secs();
        let mut exp = at(&cfg.expiry_pointer, if session { "" } else { "/exp" })
            .and_then(|e| e.as_u64())
            .unwrap_or(now.saturating_add(fallback));
        if let Some(idle) = cfg.idle_timeout {
            exp = exp.min(now.saturating_add(idle.as_secs()));
        }
        if exp <= now {
            return Ok(None);
        }
        // The session style keeps only what it derived (the raw answer holds the token);
        // RFC 7662 answers are the token's claims.
        let mut claims = match (&doc, session) {
            (Value::Object(m), false) => m.clone(),
            _ => Map::new(),
        };
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                claims.insert(k.to_string(), Value::String(v));
            }
        };
        put("login", text(at(&cfg.login_pointer, "")));
        put("email", text(at(&cfg.email_pointer, "/email")));
        put("name", text(at(&cfg.name_pointer, "/name")));
        let guest = at(&cfg.guest_pointer, "").is_some_and(|g| {
            matches!(g, Value::Bool(true)) || g.as_u64() == Some(1) || g.as_str() == Some("1")
        });
        let kind = text(at(&cfg.kind_pointer, "")).or_else(|| {
            (session || cfg.app_sessions || cfg.guest_pointer.is_some()).then(|| {
                if sub.is_empty() {
                    "app"
                } else if guest {
                    "guest"
                } else {
                    "user"
                }
                .to_string()
            })
        });
        put("session_kind", kind);
        if !sub.is_empty() {
            claims.insert("sub".into(), Value::String(sub.clone()));
        }
        claims.insert("exp".into(), Value::from(exp));
        let headers = match self.project.project(&sub, &claims) {
            Ok(h) => h,
            Err(_) => return Ok(None),
        };
        Ok(Some(Arc::new(Verified {
            sub,
            exp,
            claims,
            headers,
        })))
    }
}
