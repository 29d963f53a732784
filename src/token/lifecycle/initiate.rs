//! Initiate: who a new session is for (the expired token's verified claims while recent
//! enough, or a valid app identity token), and one initiate call per user at a time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method};

use super::exchange::{escape, sensitive, Exchange};
use super::flight::single_flight;
use super::{Lifecycle, RenewError, Session};
use crate::token::call::Call;
use crate::token::coordinate::Flight;
use crate::token::now_secs;
use crate::token::verify::{Verdict, Verified};

const INITIATE_REFUSED: RenewError =
    RenewError::Rejected("the token service refused to start a session");

/// What proves who a new session is for.
pub(super) struct Subject {
    /// Single-flight key: one initiate per user at a time.
    key: String,
    pub(super) sub: String,
    email: String,
    name: String,
    external_id: String,
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
                });
            }
        }
        let (verifier, token) = (self.app_verifier.as_ref()?, app_token?);
        let app = match verifier.verify_uncached(token, now_secs()) {
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
        let result = self
            .coordinated(flight, Box::new(|| Box::pin(self.initiate_call(&s))))
            .await;
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
        })
        .await
    }
}
