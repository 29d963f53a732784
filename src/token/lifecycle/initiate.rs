//! Initiate: who a new session is for (the expired token's verified claims while recent
//! enough, or a valid app identity token), and one initiate call per user at a time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method};

use super::exchange::{sensitive, Exchange};
use super::flight::single_flight;
use super::{Lifecycle, RenewError, Session};
use crate::token::call::Call;
use crate::token::coordinate::Flight;
use crate::token::now_secs;
use crate::token::verify::{Verdict, Verified};

const INITIATE_REFUSED: RenewError =
    RenewError::Rejected("the token service refused to start a session");

/// Who a new session is for, as a verified token proved it (no `Debug`: it holds
/// claims, which never go to a log).
#[derive(Clone)]
pub struct Subject {
    /// Single-flight key: one initiate per user at a time.
    pub(super) key: String,
    pub sub: String,
    pub email: String,
    pub name: String,
    /// The app identity token's `externalId`; an access token's `sub`.
    pub external_id: String,
    /// Every claim of the proving token (for the body template's `{claim:…}`).
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Set when renewing an opaque vendor session (see `opaque.rs`).
    pub(super) opaque: Option<Opaque>,
}

/// What renewing an opaque session adds to a subject.
#[derive(Clone)]
pub(super) struct Opaque {
    pub(super) login: String,
    pub(super) app_token: String,
    pub(super) guest: bool,
    /// The session check the new token is checked with (it is not a JWT).
    pub(super) check: Arc<crate::token::remote::Introspector>,
}

impl Lifecycle {
    pub(super) fn subject(
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
                    claims: old.claims.clone(),
                    opaque: None,
                });
            }
        }
        let (verifier, token) = (self.app_verifier.as_ref()?, app_token?);
        let app = match verifier.verify_full(token, now_secs()) {
            Ok(Verdict::Valid(v)) => v,
            _ => return None,
        };
        let get = |k: &str| app.claim_str(k).filter(|s| !s.is_empty());
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
            claims: app.claims.clone(),
            opaque: None,
        })
    }

    pub(super) async fn initiate(
        self: &Arc<Self>,
        subject: Subject,
    ) -> Result<Arc<Session>, RenewError> {
        if self.banned(&subject.sub) || self.banned(&subject.external_id) {
            return Err(RenewError::Banned);
        }
        if self.initiate_refused.contains_key(&subject.key) {
            metrics::counter!("auth_sidecar_initiate_total", "outcome" => "rejected_cached")
                .increment(1);
            return Err(INITIATE_REFUSED);
        }
        let this = self.clone();
        let key = subject.key.clone();
        let unavailable = self.unavailable();
        single_flight(
            "initiate",
            async move {
                this.initiated
                    .entry(key)
                    .or_try_insert_with(this.call_initiate(subject))
                    .await
            },
            unavailable,
        )
        .await
    }

    async fn call_initiate(&self, s: Subject) -> Result<Arc<Session>, RenewError> {
        let Some(cfg) = &self.initiate else {
            return Err(super::REFRESH_REJECTED);
        };
        let flight = Flight {
            kind: "initiate",
            secret: &s.key,
            grace: cfg.grace,
            rejected_ttl: std::time::Duration::ZERO,
            retry_after: self.retry_after(),
        };
        let call: crate::token::coordinate::CallOnce<'_> =
            Box::new(|| Box::pin(self.initiate_call(&s)));
        let result = match &s.opaque {
            // A session another replica started is checked by the session check.
            Some(o) => self.coordinated_opaque(flight, call, &o.check).await,
            None => {
                let opaque = self.opaque_identity(&s);
                self.coordinated(flight, call, opaque).await
            }
        };
        if matches!(result, Err(RenewError::Rejected(_))) {
            // Remembered before the single flight ends, so no waiter can slip in a second call.
            self.initiate_refused.insert(s.key.clone(), ()).await;
        }
        result
    }

    /// The initiate call itself, within the budget.
    async fn initiate_call(&self, s: &Subject) -> Result<Arc<Session>, RenewError> {
        let Some(cfg) = &self.initiate else {
            return Err(super::REFRESH_REJECTED);
        };
        if let Err(retry_after) = self.initiate_budget.check(&s.key) {
            return Err(RenewError::Unavailable { retry_after });
        }
        let template = match &s.opaque {
            Some(o) if o.guest => cfg.guest_body.as_deref().unwrap_or(&cfg.body),
            _ => &cfg.body,
        };
        // Nonce, timestamp and key go into the template before the identity does, and
        // the identity in one pass: no identity value is read as a placeholder.
        let body = super::template::render(&super::sign::prepare(template, cfg)?, s);
        let body = super::sign::sign(body, cfg)?;
        let mut headers = vec![(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )];
        headers.extend(cfg.extra_headers.iter().cloned());
        if let Ok(v) = HeaderValue::from_bytes(&cfg.api_key.secret.0) {
            if !cfg.api_key_in_body {
                headers.push((cfg.api_key.header.clone(), sensitive(v)));
            }
        }
        let call = Call {
            purpose: "initiate",
            method: Method::POST,
            uri: cfg.uri.clone(),
            headers,
            body: Bytes::from(body),
            timeout: cfg.timeout,
            max_response_bytes: cfg.max_response_bytes,
        };
        self.exchange(Exchange {
            kind: "initiate",
            call,
            access_ptr: &cfg.access_token_pointer,
            refresh_ptr: &cfg.refresh_token_pointer,
            old_refresh: None,
            initiated: true,
            budget: &self.initiate_budget,
            opaque: self.opaque_identity(s),
            check: s.opaque.as_ref().map(|o| &o.check),
        })
        .await
    }
}

impl Lifecycle {
    /// With `initiate.token_format = "opaque"`: the identity an opaque answer is taken to
    /// be for (the proven subject, for `initiate.opaque_lifetime`), since it cannot be
    /// verified as a JWT. `None` for JWT answers, which are verified.
    pub(super) fn opaque_identity(&self, s: &Subject) -> Option<Arc<Verified>> {
        let cfg = self.initiate.as_ref()?;
        if cfg.token_format != crate::config::TokenFormat::Opaque {
            return None;
        }
        let mut claims = serde_json::Map::new();
        for (k, v) in [("email", &s.email), ("name", &s.name)] {
            if !v.is_empty() {
                claims.insert(k.into(), serde_json::Value::String(v.clone()));
            }
        }
        let exp = now_secs().saturating_add(cfg.opaque_lifetime.as_secs());
        self.verifier.vouch(&s.sub, claims, exp).ok()
    }
}
