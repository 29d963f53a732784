//! The outbound call interface of the token layer: what it asks of the token service,
//! JWKS and introspection endpoints, and what comes back. `outbound` implements it with
//! hyper; tests and benchmarks can bring their own.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Uri};

/// One outbound call to the token service.
pub struct Call {
    /// What the call is for (`refresh`, `initiate`, `jwks`, `introspection`): the
    /// name of its trace span.
    pub purpose: &'static str,
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
    /// `Retry-After` in seconds, when the answer had one (a 429's back-off).
    pub retry_after: Option<Duration>,
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
