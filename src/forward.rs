//! Forwarding to the backend: one pooled keep-alive client, hop-by-hop headers removed
//! (RFC 9110 §7.6.1), `X-Forwarded-*` set, bodies streamed both ways, WebSocket
//! upgrades tunnelled only when the backend agrees with a 101.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{PathAndQuery, Uri};
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;
use crate::config::Backend;
use crate::error::ProxyError;
use crate::inbound::Inbound;
use crate::metrics::Metrics;
use crate::pool::H1Pool;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus the non-standard ones still seen about.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

static OPEN_TUNNELS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Upgraded connections currently open (shutdown waits for them within the grace).
pub fn open_tunnels() -> usize {
    OPEN_TUNNELS.load(std::sync::atomic::Ordering::Relaxed)
}

struct TunnelCount;

impl TunnelCount {
    fn new() -> Self {
        OPEN_TUNNELS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TunnelCount
    }
}

impl Drop for TunnelCount {
    fn drop(&mut self) {
        OPEN_TUNNELS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The pooled backend client.
#[derive(Clone)]
pub struct Forwarder {
    client: BackendClient,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    host: HeaderValue,
    base_path: String,
    response_timeout: Duration,
}

/// HTTP/1.1 backends get the purpose-built pool; HTTP/2 backends (one multiplexed
/// connection) go through hyper-util's client.
#[derive(Clone)]
enum BackendClient {
    H1(Arc<H1Pool>),
    H2(Box<Client<HttpsConnector<HttpConnector>, Inbound>>),
}

/// Per-request facts the forwarder needs beyond the request itself.
pub struct Hop<'a> {
    /// The peer's IP, formatted once per connection.
    pub client_ip: HeaderValue,
    pub tls: bool,
    /// The canonical path, encoded, as decided on.
    pub path: &'a str,
    /// The query to forward (already without any token parameter).
    pub query: Option<&'a str>,
    pub upgrade: bool,
    /// When an upgraded connection must be closed (token expiry plus grace).
    pub tunnel_deadline: Option<std::time::SystemTime>,
    /// Ends an upgraded connection when its user is revoked (close frame 1008).
    pub revoked: Option<crate::revoke::Stop>,
}

impl Forwarder {
    /// `workers`: the proxy's worker threads (the pool keeps their connections apart).
    pub fn new(cfg: &Backend, tls: rustls::ClientConfig, workers: usize) -> Forwarder {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let client = if cfg.http2 {
            BackendClient::H2(Box::new(
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(cfg.pool_idle_timeout)
                    .pool_max_idle_per_host(cfg.pool_max_idle)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .http2_only(true)
                    .build(builder.enable_http2().wrap_connector(http)),
            ))
        } else {
            let target = Uri::builder()
                .scheme(cfg.scheme.clone())
                .authority(cfg.authority.clone())
                .path_and_query("/")
                .build()
                .unwrap_or_default();
            BackendClient::H1(Arc::new(H1Pool::new(
                builder.enable_http1().wrap_connector(http),
                target,
                cfg.pool_max_idle,
                cfg.pool_idle_timeout,
                cfg.max_connections,
                workers,
            )))
        };
        Forwarder {
            client,
            host: HeaderValue::from_str(cfg.authority.as_str())
                .unwrap_or(HeaderValue::from_static("localhost")),
            scheme: cfg.scheme.clone(),
            authority: cfg.authority.clone(),
            base_path: cfg.base_path.clone(),
            response_timeout: cfg.response_timeout,
        }
    }

    /// Sends the request to the backend and returns its response, streaming.
    pub async fn forward(
        &self,
        mut req: Request<Inbound>,
        hop: Hop<'_>,
        metrics: &Metrics,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let client_upgrade = hop.upgrade.then(|| hyper::upgrade::on(&mut req));
        // HTTP/2 clients name the host in `:authority` (the URI), HTTP/1.1 in `Host`.
        let uri_host = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        {
            // Hop-by-hop headers were removed by the proxy before identity was set.
            let h = req.headers_mut();
            if hop.upgrade {
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            // The client's Host comes back from the insert: no copy of it is made.
            if let Some(orig) = h.insert(header::HOST, self.host.clone()).or(uri_host) {
                h.insert(X_FORWARDED_HOST, orig);
            }
            append_forwarded_for(h, &hop.client_ip);
            h.insert(
                X_FORWARDED_PROTO,
                HeaderValue::from_static(if hop.tls { "https" } else { "http" }),
            );
        }
        let started = std::time::Instant::now();
        let limit = self.response_timeout;
        let sent = match &self.client {
            BackendClient::H1(pool) => {
                // HTTP/1.1 to an origin server: origin-form target (RFC 9112 §3.2.1). The
                // client's own target is kept when it is already that (the common case).
                if !self.same_target(req.uri(), hop.path, hop.query) {
                    *req.uri_mut() = Uri::from(self.path_and_query(hop.path, hop.query)?);
                }
                *req.version_mut() = Version::HTTP_11;
                match tokio::time::timeout(limit, pool.send(req)).await {
                    Err(_) => Err(ProxyError::BackendTimeout),
                    Ok(Err(e)) => Err(failed(&e, e.is_connect())),
                    Ok(Ok((resp, lease))) => Ok((resp, Some(lease))),
                }
            }
            BackendClient::H2(client) => {
                *req.uri_mut() = self.absolute(self.path_and_query(hop.path, hop.query)?)?;
                // A WebSocket upgrade is an HTTP/1.1 mechanism.
                *req.version_mut() = if hop.upgrade {
                    Version::HTTP_11
                } else {
                    Version::HTTP_2
                };
                match tokio::time::timeout(limit, client.request(req)).await {
                    Err(_) => Err(ProxyError::BackendTimeout),
                    Ok(Err(e)) => Err(failed(&e, e.is_connect())),
                    Ok(Ok(resp)) => Ok((resp, None)),
                }
            }
        };
        metrics.backend_latency(started.elapsed());
        let (mut resp, lease) = sent?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_side) = client_upgrade else {
                crate::request_log::request_event!(
                    WARN,
                    "backend switched protocols without being asked"
                );
                return Err(ProxyError::BackendUnavailable);
            };
            let backend_side = hyper::upgrade::on(&mut resp);
            spawn_tunnel(
                client_side,
                backend_side,
                hop.tunnel_deadline,
                hop.revoked,
                metrics.clone(),
            );
            let (parts, _) = resp.into_parts();
            return Ok(Response::from_parts(parts, ProxyBody::empty()));
        }
        let (mut parts, body) = resp.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, ProxyBody::stream(body, lease)))
    }

    /// Whether the request's target is already the origin-form one the backend gets:
    /// no base path, the decided path and query unchanged, no scheme or authority.
    fn same_target(&self, uri: &Uri, path: &str, query: Option<&str>) -> bool {
        self.base_path.is_empty()
            && uri.scheme().is_none()
            && uri.authority().is_none()
            && uri.path() == path
            && uri.query() == query
    }

    /// The backend's path and query: the configured base path, then the decided path.
    fn path_and_query(&self, path: &str, query: Option<&str>) -> Result<PathAndQuery, ProxyError> {
        let pq = match query {
            Some(q) => format!("{}{}?{}", self.base_path, path, q),
            None if self.base_path.is_empty() => path.to_string(),
            None => format!("{}{}", self.base_path, path),
        };
        PathAndQuery::try_from(pq)
            .map_err(|_| ProxyError::InvalidRequest("the request target is malformed"))
    }

    /// An absolute URI: always the configured scheme and authority, never the request's.
    fn absolute(&self, pq: PathAndQuery) -> Result<Uri, ProxyError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| ProxyError::InvalidRequest("the request target is malformed"))
    }

    /// A cheap reachability probe for readiness: can we open a connection?
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }
}

/// Logs why the backend could not be reached (the client gets the plain 502).
/// A failed backend request: the client's own body stalled (408), or the backend (502).
fn failed(e: &(dyn std::error::Error + 'static), connect: bool) -> ProxyError {
    if crate::inbound::is_idle_body(e) {
        crate::request_log::request_event!(
            DEBUG,
            "request body stalled; the backend request was abandoned"
        );
        return ProxyError::RequestTimeout;
    }
    crate::request_log::request_event!(WARN, error = %e, connect, "backend request failed");
    ProxyError::BackendUnavailable
}

/// Removes hop-by-hop headers and every header the `Connection` header names.
pub fn remove_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names first: which hop-by-hop headers are there (most requests
    // carry none, most responses only `Connection: keep-alive`), and is any name spelt
    // with `_`. HeaderName equality is an enum comparison for standard names.
    let mut present = 0u16;
    let mut underscore = false;
    for k in h.keys() {
        match HOP_BY_HOP.iter().position(|hb| hb == k) {
            Some(i) => present |= 1 << i,
            None => underscore |= k.as_str().contains('_'),
        }
    }
    if present == 0 && !underscore {
        return;
    }
    // HOP_BY_HOP[0] is `Connection`: the headers it names go too (those that are
    // hop-by-hop anyway are removed below). Most name only such headers (a backend's
    // `Connection: keep-alive`): then nothing is parsed or collected.
    let is_hop = |t: &str| {
        HOP_BY_HOP
            .iter()
            .any(|hb| t.eq_ignore_ascii_case(hb.as_str()))
    };
    let names_others = || {
        h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map_or(true, |v| v.split(',').any(|t| !is_hop(t.trim())))
        })
    };
    if present & 1 != 0 && names_others() {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !HOP_BY_HOP.contains(n))
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
    if !underscore {
        return;
    }
    // `Transfer_Encoding` and friends: a backend that reads `_` as `-` would frame the
    // body differently from us (request smuggling).
    let aliases: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .filter(|k| {
            let n = k.as_str().replace('_', "-");
            n == "content-length" || HOP_BY_HOP.iter().any(|hb| hb.as_str() == n)
        })
        .cloned()
        .collect();
    for n in aliases {
        h.remove(n);
    }
}

fn append_forwarded_for(h: &mut HeaderMap, ip: &HeaderValue) {
    use http::header::Entry;
    let mut prev = match h.entry(X_FORWARDED_FOR) {
        Entry::Vacant(v) => {
            v.insert(ip.clone());
            return;
        }
        Entry::Occupied(o) => o,
    };
    // Several XFF headers are folded into one list, in order, so the backend reads a
    // single list that ends with the peer the sidecar saw.
    let mut list = String::new();
    for v in prev.iter() {
        let v = v.to_str().unwrap_or("").trim();
        if !v.is_empty() {
            list.push_str(v);
            list.push_str(", ");
        }
    }
    list.push_str(ip.to_str().unwrap_or(""));
    prev.insert(HeaderValue::from_str(&list).unwrap_or_else(|_| ip.clone()));
}

/// Copies bytes both ways once both sides have switched protocols; closes at the
/// deadline (the opening token's expiry plus grace) when there is one.
fn spawn_tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    deadline: Option<std::time::SystemTime>,
    revoked: Option<crate::revoke::Stop>,
    metrics: Metrics,
) {
    tokio::spawn(async move {
        let (c, b) = match tokio::try_join!(client, backend) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let _open = metrics.upgraded_guard();
        let _count = TunnelCount::new();
        let mut c = crate::client_io::client_tunnel(c);
        let mut b = crate::pool::backend_tunnel(b);
        if let Some(stop) = revoked {
            crate::revoke::tunnel::log_end(crate::revoke::tunnel::run(c, b, deadline, stop).await);
            return;
        }
        let deadline = deadline.map(|at| {
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::Instant::now() + left
        });
        if let Ok(None) = crate::tunnel::copy_bidirectional(&mut c, &mut b, deadline).await {
            tracing::info!("closing upgraded connection: its token has expired");
        }
    });
}
