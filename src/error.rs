//! Every per-request failure, and the one place that turns it into a response (the
//! token layer's outcomes are mapped here, once).
//!
//! Each variant says whose fault it is (client, token service, backend, us); that
//! decides the status class. Messages never contain a token or a secret.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;

/// The header that repeats the error code, so a client can tell the sidecar's refusal
/// from the backend's.
pub const X_AUTH_ERROR: http::HeaderName = http::HeaderName::from_static("x-auth-error");

/// The sidecar's own answer to a request it will not (or cannot) forward.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// Client: no credentials on a route that requires them.
    #[error("no access token")]
    MissingToken,
    /// Client: the token failed verification.
    #[error("{0}")]
    InvalidToken(&'static str),
    /// Client: the token's signature is valid but it expired, and there is no way to renew it.
    #[error("the access token has expired")]
    TokenExpired,
    /// Client: refresh and initiate both refused; the user must log in again.
    #[error("{0}")]
    RefreshRejected(&'static str),
    /// Client: a valid token, revoked (logged out everywhere since, or its `jti`/`sid`).
    #[error("the access token has been revoked; log in again")]
    TokenRevoked,
    /// Client: the user is banned; nothing is renewed either.
    #[error("this user is banned")]
    UserBanned,
    /// Client: the request itself is malformed or ambiguous.
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// Client: sent its request body too slowly.
    #[error("the request body arrived too slowly")]
    RequestTimeout,
    /// Client: a cookie- or query-authenticated upgrade from an origin not allowed.
    #[error("this origin may not open a connection here")]
    OriginNotAllowed,
    /// Client: a method the sidecar's own endpoint does not answer.
    #[error("this endpoint answers GET and POST")]
    MethodNotAllowed,
    /// Client: a valid token that lacks what the route needs.
    #[error("{0}")]
    InsufficientScope(&'static str),
    /// Token service: unreachable, slow, 5xx, 429 or talking nonsense.
    #[error("the token service is unavailable")]
    TokenServiceUnavailable { retry_after: Duration },
    /// Token service: answered, but with tokens we must not use (wrong user, bad signature).
    #[error("{0}")]
    TokenServiceBadResponse(&'static str),
    /// Us: no key to check tokens with (an outage, not a bad token).
    #[error("no verification keys are available")]
    KeysUnavailable,
    /// Backend: refused or failed the connection.
    #[error("the backend is unavailable")]
    BackendUnavailable,
    /// Backend: no response headers within the timeout.
    #[error("the backend did not answer in time")]
    BackendTimeout,
    /// Us: shutting down or at the connection limit.
    #[error("the proxy is not accepting requests")]
    Overloaded,
}

impl ProxyError {
    /// Stable code for clients (`error` in the JSON body and `X-Auth-Error`).
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::MissingToken => "missing_token",
            ProxyError::InvalidToken(_) => "invalid_token",
            ProxyError::TokenExpired => "token_expired",
            ProxyError::RefreshRejected(_) => "refresh_rejected",
            ProxyError::TokenRevoked => "token_revoked",
            ProxyError::UserBanned => "user_banned",
            ProxyError::InvalidRequest(_) => "invalid_request",
            ProxyError::RequestTimeout => "request_timeout",
            ProxyError::OriginNotAllowed => "origin_not_allowed",
            ProxyError::InsufficientScope(_) => "insufficient_scope",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::TokenServiceUnavailable { .. } => "token_service_unavailable",
            ProxyError::TokenServiceBadResponse(_) => "token_service_bad_response",
            ProxyError::KeysUnavailable => "keys_unavailable",
            ProxyError::BackendUnavailable => "backend_unavailable",
            ProxyError::BackendTimeout => "backend_timeout",
            ProxyError::Overloaded => "unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingToken
            | ProxyError::InvalidToken(_)
            | ProxyError::TokenExpired
            | ProxyError::RefreshRejected(_)
            | ProxyError::TokenRevoked
            | ProxyError::UserBanned => StatusCode::UNAUTHORIZED,
            ProxyError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::InsufficientScope(_) | ProxyError::OriginNotAllowed => {
                StatusCode::FORBIDDEN
            }
            ProxyError::TokenServiceUnavailable { .. }
            | ProxyError::KeysUnavailable
            | ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::TokenServiceBadResponse(_) | ProxyError::BackendUnavailable => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The response the client gets: JSON body, `X-Auth-Error`, and the RFC 6750
    /// challenge on 401/403.
    pub fn into_response(self) -> Response<ProxyBody> {
        let code = self.code();
        let message = self.to_string();
        let body = serde_json::json!({ "error": code, "message": message }).to_string();
        let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(X_AUTH_ERROR, HeaderValue::from_static(code));
        let challenge = match &self {
            ProxyError::MissingToken => Some("Bearer".to_string()),
            ProxyError::InvalidToken(_)
            | ProxyError::TokenExpired
            | ProxyError::RefreshRejected(_)
            | ProxyError::TokenRevoked
            | ProxyError::UserBanned => Some(format!(
                "Bearer error=\"invalid_token\", error_description=\"{message}\""
            )),
            ProxyError::InsufficientScope(_) => Some(format!(
                "Bearer error=\"insufficient_scope\", error_description=\"{message}\""
            )),
            _ => None,
        };
        if let Some(v) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        if let ProxyError::TokenServiceUnavailable { retry_after } = &self {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
        }
        if matches!(self, ProxyError::MethodNotAllowed) {
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
        }
        if matches!(self, ProxyError::KeysUnavailable | ProxyError::Overloaded) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}

/// A token that did not verify: invalid (401), or no way to tell (503).
impl From<crate::token::VerifyError> for ProxyError {
    fn from(e: crate::token::VerifyError) -> ProxyError {
        use crate::token::VerifyError;
        match e {
            VerifyError::Invalid(why) => ProxyError::InvalidToken(why),
            VerifyError::UnknownKid => ProxyError::InvalidToken("the token names an unknown key"),
            VerifyError::NoKeys => ProxyError::KeysUnavailable,
            VerifyError::Unavailable { retry_after } => {
                ProxyError::TokenServiceUnavailable { retry_after }
            }
        }
    }
}

/// No new session: log in again (401), retry later (503), or the service misbehaved (502).
impl From<crate::token::RenewError> for ProxyError {
    fn from(e: crate::token::RenewError) -> ProxyError {
        use crate::token::RenewError;
        match e {
            RenewError::Expired => ProxyError::TokenExpired,
            RenewError::Rejected(why) => ProxyError::RefreshRejected(why),
            RenewError::Unavailable { retry_after } => {
                ProxyError::TokenServiceUnavailable { retry_after }
            }
            RenewError::BadResponse(why) => ProxyError::TokenServiceBadResponse(why),
            RenewError::Banned => ProxyError::UserBanned,
        }
    }
}
