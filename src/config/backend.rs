//! `[backend]`: where requests go, and the outbound TLS settings shared with the token
//! service, JWKS and introspection calls.

use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::secret::{Secret, SecretBytes};
use super::{types, Checker};

/// The backend that authenticated requests are forwarded to.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Backend {
    /// The only place requests go: scheme, authority and an optional base path (no
    /// query).
    #[serde(rename = "url", with = "types::http_url")]
    #[schemars(with = "String")]
    pub uri: Uri,
    /// Connect failure after this → 502.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// No response headers in time → 504 (bodies stream without a limit). Above zero.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub response_timeout: Duration,
    /// Keep-alive pool: a connection idle longer than this is not reused. A
    /// connection the backend closed is skipped, never a 502.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub pool_idle_timeout: Duration,
    /// Keep-alive pool: at most this many idle connections are kept (the warmest are
    /// used first).
    pub pool_max_idle: usize,
    /// HTTP/1.1 connections open to the backend at once, at least 1; a request beyond
    /// waits (within `response_timeout`) for one to come back. At most 32 are being
    /// opened at any moment, so a herd of thousands of requests mostly reuses
    /// connections instead of flooding the backend's accept queue. A streaming response
    /// (SSE, long poll) holds its connection until it ends; an upgraded WebSocket does
    /// not count.
    pub max_connections: usize,
    /// Speak HTTP/2 (prior knowledge, or ALPN over TLS) to the backend.
    pub http2: bool,
    /// Extra CA bundle (PEM) for https backends, token service, JWKS and
    /// introspection, added to the web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS; goes with `client_key`.
    pub client_cert_file: Option<PathBuf>,
    /// Client certificate's private key (mTLS), a secret reference; goes with
    /// `client_cert_file`.
    pub client_key: Option<Secret>,
    /// `scheme` of `url`, used to rebuild every request's URI.
    #[serde(skip)]
    pub scheme: Scheme,
    /// `authority` of `url`, used to rebuild every request's URI.
    #[serde(skip)]
    pub authority: Authority,
    /// Path prefix of `url` (without trailing slash), prepended to requests.
    #[serde(skip)]
    pub base_path: String,
}

impl Default for Backend {
    fn default() -> Self {
        Self {
            uri: Uri::from_static("http://127.0.0.1:3000"),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle: 256,
            max_connections: 1024,
            http2: false,
            ca_file: None,
            client_cert_file: None,
            client_key: None,
            scheme: Scheme::HTTP,
            authority: Authority::from_static("127.0.0.1:3000"),
            base_path: String::new(),
        }
    }
}

/// TLS settings for outbound calls (backend, token service).
#[derive(Clone, Default)]
pub struct ClientTls {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_pem: Option<SecretBytes>,
}

impl Backend {
    /// The outbound TLS settings (CA bundle, client certificate and key).
    pub fn client_tls(&self) -> ClientTls {
        ClientTls {
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_pem: self.client_key.as_ref().map(|k| k.value.clone()),
        }
    }

    pub(super) fn validate(&mut self, c: &mut Checker<'_>) {
        c.require_url("backend.url", &self.uri);
        if self.uri.query().is_some() {
            c.fail("backend.url: must not have a query".into());
        }
        let key_loaded = self
            .client_key
            .as_mut()
            .is_some_and(|k| k.load("backend.client_key", c));
        if self.client_cert_file.is_some() != key_loaded {
            c.fail("backend.client_cert_file and backend.client_key go together".into());
        }
        if let Some(ca) = &self.ca_file {
            if !ca.is_file() {
                c.fail(format!("backend.ca_file: {} does not exist", ca.display()));
            }
        }
        if self.connect_timeout.is_zero() || self.response_timeout.is_zero() {
            c.fail("backend timeouts must be greater than zero".into());
        }
        if self.max_connections == 0 {
            c.fail("backend.max_connections must be at least 1".into());
        }
        if let (Some(s), Some(a)) = (self.uri.scheme(), self.uri.authority()) {
            self.scheme = s.clone();
            self.authority = a.clone();
        }
        self.base_path = self.uri.path().trim_end_matches('/').to_string();
    }
}
