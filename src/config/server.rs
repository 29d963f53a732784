//! `[server]` (the proxy listener), `[server.tls]` and `[admin]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{types, Checker};

/// The proxy listener.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Server {
    /// Proxy address (HTTP/1.1 and HTTP/2 cleartext with prior knowledge; TLS when
    /// `server.tls` is set).
    #[serde(with = "types::listen_addr")]
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// Worker threads, 1 … 256. Each runs its own single-threaded runtime and accepts
    /// from the shared listening socket, with its own backend connections; `1` = the main
    /// thread serves everything.
    pub worker_threads: usize,
    /// Request id header: kept when the client's value is sane (≤128 of
    /// `[A-Za-z0-9._:-]`), generated otherwise; returned on the response.
    #[serde(with = "types::header")]
    #[schemars(with = "String")]
    pub request_id_header: HeaderName,
    /// A client must send its request head within this (slowloris).
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub header_read_timeout: Duration,
    /// Request head size cap in bytes (431 beyond), 8192 … 1048576; also the HTTP/2
    /// header list size.
    pub max_header_bytes: usize,
    /// HTTP/1 header count cap (431 beyond), 1 … 1000.
    pub max_headers: usize,
    /// Concurrent connections, at least 1; more are closed on accept.
    pub max_connections: usize,
    /// SIGTERM: in-flight requests and WebSockets get this long.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
    /// An upgraded (WebSocket) connection is closed this long after the token that
    /// opened it expired; `"off"` disables it.
    #[serde(with = "types::duration_or_off")]
    #[schemars(with = "String")]
    pub upgrade_token_grace: Option<Duration>,
    /// Let a path that still holds `%` and two hex digits after one decoding (a raw
    /// `%252e`) through, as that literal text; off, such a path is `400` on every route,
    /// public ones included, because a backend that decodes twice would read another
    /// path. Only for backends that never decode a path twice.
    pub allow_encoded_percent: bool,
    /// A request body that sends no byte for this long is cut off (`408` when the
    /// backend has not answered yet) and its backend connection dropped.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub body_read_timeout: Duration,
    /// A client that reads nothing of a response (or a WebSocket) for this long while
    /// the sidecar has bytes to write is disconnected, and the backend connection behind
    /// it dropped.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub write_stall_timeout: Duration,
    /// TLS on the proxy port (unset = cleartext); the files are reloaded when they change.
    pub tls: Option<Tls>,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            worker_threads: 2,
            request_id_header: HeaderName::from_static("x-request-id"),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(30),
            upgrade_token_grace: Some(Duration::from_secs(60)),
            allow_encoded_percent: false,
            body_read_timeout: Duration::from_secs(30),
            write_stall_timeout: Duration::from_secs(60),
            tls: None,
        }
    }
}

/// Certificate and key of the proxy's TLS listener.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Tls {
    /// PEM certificate chain (required with `[server.tls]`).
    pub cert_file: PathBuf,
    /// PEM private key (required with `[server.tls]`).
    pub key_file: PathBuf,
}

impl Server {
    pub(super) fn validate(&self, c: &mut Checker<'_>) {
        let day = Duration::from_secs(86_400);
        for (key, d) in [
            ("server.body_read_timeout", self.body_read_timeout),
            ("server.write_stall_timeout", self.write_stall_timeout),
        ] {
            if d.is_zero() || d > day {
                c.fail(format!("{key}: must be between 1ms and 1d"));
            }
        }
        if self.worker_threads == 0 || self.worker_threads > 256 {
            c.fail("server.worker_threads: must be between 1 and 256".into());
        }
        // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
        if self.max_header_bytes < 8192 || self.max_header_bytes > 1024 * 1024 {
            c.fail("server.max_header_bytes: must be between 8192 and 1048576".into());
        }
        if self.max_headers == 0 || self.max_headers > 1000 {
            c.fail("server.max_headers: must be between 1 and 1000".into());
        }
        if self.max_connections == 0 {
            c.fail("server.max_connections: must be at least 1".into());
        }
        if let Some(tls) = &self.tls {
            for (k, p) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if p.as_os_str().is_empty() {
                    c.fail(format!("server.tls.{k}: required"));
                } else if !p.is_file() {
                    c.fail(format!("server.tls.{k}: {} does not exist", p.display()));
                }
            }
        }
    }
}

/// The admin listener.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Admin {
    /// Admin address (`/healthz`, `/readyz`, `/metrics`); unset = no admin port. Must
    /// differ from `server.listen`.
    #[serde(with = "types::opt_addr")]
    #[schemars(with = "Option<String>")]
    pub listen: Option<SocketAddr>,
    /// Whether `/readyz` also needs a TCP connection to the backend.
    pub ready_requires_backend: bool,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: None,
            ready_requires_backend: true,
        }
    }
}
