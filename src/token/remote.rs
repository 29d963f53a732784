//! Keys and answers that come over the network: a JWKS URL (fetched before ready,
//! refreshed in the background, refetched on unknown `kid` at most once per interval,
//! last good set kept on failure) and RFC 7662 introspection for opaque tokens.

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
use crate::config::{Introspection, Jwks};

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
            tracing::debug!("jwks: skipped {s}");
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
            tracing::info!(url = %self.cfg.url, "jwks: key set installed");
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
                tracing::warn!(error = %e, "jwks: refetch for an unknown kid failed; keeping the last good keys");
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

/// RFC 7662 introspection for tokens that are not JWTs, with answers cached.
pub struct Introspector {
    cfg: Introspection,
    http: Arc<dyn TokenHttp>,
    project: Arc<dyn Project>,
    /// `Retry-After` when the endpoint cannot answer.
    retry_after: Duration,
    cache: Cache<TokenHash, Option<Arc<Verified>>>,
}

/// Introspection failed to give an answer (an outage, never a 401).
#[derive(Debug, Clone, Copy)]
struct Unavailable;

struct AnswerTtl {
    ttl: Duration,
    negative_ttl: Duration,
}

impl moka::Expiry<TokenHash, Option<Arc<Verified>>> for AnswerTtl {
    fn expire_after_create(
        &self,
        _k: &TokenHash,
        v: &Option<Arc<Verified>>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(match v {
            Some(v) => Duration::from_secs(v.exp.saturating_sub(now_secs())).min(self.ttl),
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
    ) -> Arc<Self> {
        let cache = Cache::builder()
            .max_capacity(cfg.cache_capacity)
            .expire_after(AnswerTtl {
                ttl: cfg.cache_ttl,
                negative_ttl: cfg.negative_ttl,
            })
            .build();
        Arc::new(Introspector {
            cfg,
            http,
            project,
            retry_after,
            cache,
        })
    }

    /// The verified identity of an active token; an inactive one is invalid, and no
    /// answer is an outage. One call per token at a time; answers cached until the
    /// token's expiry or the TTL.
    pub async fn check(self: &Arc<Self>, token: &str) -> Result<Arc<Verified>, VerifyError> {
        let key = hash_token(token);
        let this = self.clone();
        let token = token.to_string();
        // The introspection span is a child of the request that asked.
        let task = tokio::spawn(
            async move { this.cache.try_get_with(key, this.call(token)).await }
                .with_current_context(),
        );
        match task.await {
            Ok(Ok(Some(v))) => Ok(v),
            Ok(Ok(None)) => Err(VerifyError::Invalid("the access token is not active")),
            _ => Err(VerifyError::Unavailable {
                retry_after: self.retry_after,
            }),
        }
    }

    async fn call(&self, token: String) -> Result<Option<Arc<Verified>>, Unavailable> {
        let body = format!(
            "token={}&token_type_hint=access_token",
            percent_encoding::utf8_percent_encode(&token, percent_encoding::NON_ALPHANUMERIC)
        );
        let mut headers = vec![(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        )];
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
                method: Method::POST,
                uri: self.cfg.url.clone(),
                headers,
                body: Bytes::from(body),
                timeout: self.cfg.timeout,
                max_response_bytes: 64 * 1024,
            })
            .await;
        let result = match answer {
            Ok(a) if a.status == 200 => self.parse(&a.body),
            Ok(a) => {
                tracing::warn!(
                    status = a.status,
                    "introspection answered with an error status"
                );
                Err(Unavailable)
            }
            Err(e) => {
                tracing::warn!(error = %e, "introspection call failed");
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
        result
    }

    fn parse(&self, body: &[u8]) -> Result<Option<Arc<Verified>>, Unavailable> {
        let v: Map<String, Value> = serde_json::from_slice(body).map_err(|_| Unavailable)?;
        if v.get("active") != Some(&Value::Bool(true)) {
            return Ok(None);
        }
        let now = now_secs();
        let exp = v
            .get("exp")
            .and_then(|e| e.as_u64())
            .unwrap_or(now + self.cfg.cache_ttl.as_secs());
        if exp <= now {
            return Ok(None);
        }
        let sub = v
            .get("sub")
            .or_else(|| v.get("username"))
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let Some(sub) = sub else { return Ok(None) };
        let headers = match self.project.project(&sub, &v) {
            Ok(h) => h,
            Err(_) => return Ok(None),
        };
        Ok(Some(Arc::new(Verified {
            sub,
            exp,
            claims: v,
            headers,
        })))
    }
}
