//! One exchange with the token service: make the call, classify the answer, read the
//! tokens, and verify the new access token before anyone uses it.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use serde_json::Value;

use super::{Lifecycle, RenewError, Session};
use crate::token::call::Call;
use crate::token::now_secs;
use crate::token::verify::{Verdict, Verified};

/// A call and where its answer keeps the tokens.
pub(super) struct Exchange<'a> {
    /// `refresh` or `initiate`: labels the call's metrics.
    pub kind: &'static str,
    pub call: Call,
    pub access_ptr: &'a str,
    pub refresh_ptr: &'a str,
    /// The refresh token sent, kept when the service does not rotate it.
    pub old_refresh: Option<&'a str>,
    pub initiated: bool,
    /// Paused by a `429`.
    pub budget: &'a super::budget::Budget,
    /// Set when the answer's token is opaque: who it is for, instead of verifying it.
    pub opaque: Option<Arc<Verified>>,
    /// The new token is opaque: checked with this session check instead of as a JWT.
    pub check: Option<&'a Arc<crate::token::remote::Introspector>>,
}

impl Lifecycle {
    /// The exchange, timed and counted.
    pub(super) async fn exchange(&self, x: Exchange<'_>) -> Result<Arc<Session>, RenewError> {
        let (kind, started) = (x.kind, std::time::Instant::now());
        let result = self.exchange_once(x).await;
        record(kind, &result, started);
        result
    }

    async fn exchange_once(&self, x: Exchange<'_>) -> Result<Arc<Session>, RenewError> {
        const REJECTED: RenewError = RenewError::Rejected("the token service refused");
        let answer = match self.http.call(x.call).await {
            Ok(a) => a,
            Err(e) => {
                crate::request_log::request_event!(WARN, error = %e, "token service call failed");
                return Err(self.unavailable());
            }
        };
        let json: Option<Value> = serde_json::from_slice(&answer.body).ok();
        match answer.status {
            // 422: understood and refused (ConnectyCube's "Unexpected signature").
            400 | 401 | 403 | 422 => {
                if x.kind == "initiate" && matches!(answer.status, 401 | 403) {
                    // Initiate carries no user credential: a 401/403 usually means the API key.
                    crate::request_log::request_event!(
                        WARN,
                        status = answer.status,
                        "the token service refused initiate; check initiate.api_key"
                    );
                }
                return Err(REJECTED);
            }
            429 => {
                // The client gets the service's own back-off, and nobody calls before it.
                let retry_after = answer
                    .retry_after
                    .unwrap_or(self.retry_after())
                    .clamp(Duration::from_secs(1), Duration::from_secs(3600));
                x.budget.pause(retry_after);
                return Err(RenewError::Unavailable { retry_after });
            }
            200..=299 => {}
            status => {
                crate::request_log::request_event!(
                    WARN,
                    status,
                    "token service answered with an error status"
                );
                return Err(self.unavailable());
            }
        }
        let Some(json) = json else {
            crate::request_log::request_event!(WARN, "token service answer is not JSON");
            return Err(self.unavailable());
        };
        // Some services answer 200 with an OAuth-style error object.
        if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
            if matches!(
                err,
                "invalid_grant" | "invalid_token" | "unauthorized_client" | "access_denied"
            ) {
                return Err(REJECTED);
            }
        }
        let Some(access) = json
            .pointer(x.access_ptr)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
        else {
            crate::request_log::request_event!(
                WARN,
                pointer = x.access_ptr,
                "token service answer has no access token"
            );
            return Err(self.unavailable());
        };
        let refresh = match json
            .pointer(x.refresh_ptr)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
        {
            Some(r) => r.to_string(),
            // A service that does not rotate keeps the old refresh token in force.
            None => x.old_refresh.unwrap_or("").to_string(),
        };
        if HeaderValue::from_str(access).is_err() || HeaderValue::from_str(&refresh).is_err() {
            return Err(RenewError::BadResponse(
                "the token service returned tokens that cannot be sent",
            ));
        }
        if let Some(v) = x.opaque {
            return Ok(Arc::new(Session {
                access_token: access.to_string(),
                refresh_token: refresh,
                verified: v,
                initiated: x.initiated,
            }));
        }
        if let Some(check) = x.check {
            return match check.check(access).await {
                Ok(v) => Ok(Arc::new(Session {
                    access_token: access.to_string(),
                    refresh_token: refresh,
                    verified: v,
                    initiated: x.initiated,
                })),
                Err(crate::token::VerifyError::Unavailable { .. }) => Err(self.unavailable()),
                Err(_) => Err(RenewError::BadResponse(
                    "the token service returned a session that does not check",
                )),
            };
        }
        match self.verifier.verify_uncached(access, now_secs()) {
            Ok(Verdict::Valid(v)) => Ok(Arc::new(Session {
                access_token: access.to_string(),
                refresh_token: refresh,
                verified: v,
                initiated: x.initiated,
            })),
            Ok(Verdict::Expired(_)) => Err(RenewError::BadResponse(
                "the token service returned an expired token",
            )),
            Err(_) => Err(RenewError::BadResponse(
                "the token service returned a token that does not verify",
            )),
        }
    }
}

pub(super) fn sensitive(mut v: HeaderValue) -> HeaderValue {
    v.set_sensitive(true);
    v
}

/// Escapes a value for the body template: JSON string content, or form encoding.
pub(super) fn escape(s: &str, json: bool) -> String {
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

fn record(
    call: &'static str,
    result: &Result<Arc<Session>, RenewError>,
    started: std::time::Instant,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(RenewError::Rejected(_)) => "rejected",
        Err(RenewError::Unavailable { .. }) => "unavailable",
        Err(RenewError::BadResponse(_)) | Err(RenewError::Expired) => "bad_response",
        // Never the outcome of a call: a banned user is refused before one.
        Err(RenewError::Banned) => "banned",
    };
    metrics::counter!("auth_sidecar_token_service_calls_total", "call" => call, "outcome" => outcome).increment(1);
    metrics::histogram!("auth_sidecar_token_service_seconds", "call" => call)
        .record(started.elapsed().as_secs_f64());
}
