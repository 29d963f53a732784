//! Refresh: one call per refresh token; concurrent requests share it, requests within
//! the grace window reuse its result, and a rejected token is remembered.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

use super::exchange::{escape, sensitive, Exchange};
use super::flight::single_flight;
use super::{Lifecycle, RenewError, Session};
use crate::token::cache::hash_token;
use crate::token::call::Call;
use crate::token::coordinate::Flight;

impl Lifecycle {
    /// `user`: the expired token's `sub`, for the per-user budget.
    pub(super) async fn refresh(
        self: &Arc<Self>,
        refresh_token: &str,
        user: &str,
    ) -> Result<Arc<Session>, RenewError> {
        let key = hash_token(refresh_token);
        if self.rejected.contains_key(&key) {
            metrics::counter!("auth_sidecar_refresh_total", "outcome" => "rejected_cached")
                .increment(1);
            return Err(super::REFRESH_REJECTED);
        }
        let this = self.clone();
        let rt = refresh_token.to_string();
        let user = user.to_string();
        let unavailable = self.unavailable();
        single_flight(
            "refresh",
            async move {
                this.refreshed
                    .entry(key)
                    .or_try_insert_with(this.call_refresh(rt, user))
                    .await
            },
            unavailable,
        )
        .await
    }

    async fn call_refresh(
        &self,
        refresh_token: String,
        user: String,
    ) -> Result<Arc<Session>, RenewError> {
        let Some(cfg) = &self.refresh else {
            return Err(super::REFRESH_REJECTED);
        };
        let flight = Flight {
            kind: "refresh",
            secret: &refresh_token,
            grace: cfg.grace,
            rejected_ttl: cfg.rejected_ttl,
            retry_after: cfg.retry_after,
        };
        let result = self
            .coordinated(
                flight,
                Box::new(|| Box::pin(self.refresh_call(&refresh_token, &user))),
                None,
            )
            .await;
        if matches!(result, Err(RenewError::Rejected(_))) {
            // Remembered before the single flight ends, so no waiter can slip in a second call.
            self.rejected.insert(hash_token(&refresh_token), ()).await;
        }
        result
    }

    /// The refresh call itself, within the budget.
    async fn refresh_call(
        &self,
        refresh_token: &str,
        user: &str,
    ) -> Result<Arc<Session>, RenewError> {
        let Some(cfg) = &self.refresh else {
            return Err(super::REFRESH_REJECTED);
        };
        if let Err(retry_after) = self.refresh_budget.check(user) {
            return Err(RenewError::Unavailable { retry_after });
        }
        let json = cfg.content_type.to_str().is_ok_and(|c| c.contains("json"));
        let body = cfg
            .body
            .replace("{refresh_token}", &escape(refresh_token, json));
        let mut headers = vec![(http::header::CONTENT_TYPE, cfg.content_type.clone())];
        headers.extend(cfg.extra_headers.iter().cloned());
        if let Some(key) = &cfg.api_key {
            if let Ok(v) = HeaderValue::from_bytes(&key.secret.0) {
                headers.push((key.header.clone(), sensitive(v)));
            }
        }
        let call = Call {
            purpose: "refresh",
            method: cfg.method.clone(),
            uri: cfg.uri.clone(),
            headers,
            body: Bytes::from(body),
            timeout: cfg.timeout,
            max_response_bytes: cfg.max_response_bytes,
        };
        self.exchange(Exchange {
            kind: "refresh",
            call,
            access_ptr: &cfg.access_token_pointer,
            refresh_ptr: &cfg.refresh_token_pointer,
            old_refresh: Some(refresh_token),
            initiated: false,
            budget: &self.refresh_budget,
            opaque: None,
            check: None,
        })
        .await
    }
}
