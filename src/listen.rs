//! The listener: accepts connections (cleartext or TLS), serves HTTP/1.1 and HTTP/2 on
//! one port with upgrades, enforces connection limits and header timeouts, and drains
//! gracefully on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::client_io::{self, StallGuard};
use crate::config::{Server, Tls};
use crate::proxy::{self, ConnInfo, State};
use crate::tunnel;

/// The server TLS acceptor, rebuilt when the certificate files change.
pub struct TlsReloader {
    files: Tls,
    stamp: std::sync::Mutex<Option<(SystemTime, SystemTime)>>,
    acceptor: ArcSwap<tokio_rustls::TlsAcceptor>,
}

impl TlsReloader {
    pub fn new(files: &Tls) -> Result<Arc<TlsReloader>, String> {
        let acceptor = build_acceptor(files)?;
        Ok(Arc::new(TlsReloader {
            stamp: std::sync::Mutex::new(stamps(files)),
            files: files.clone(),
            acceptor: ArcSwap::from_pointee(acceptor),
        }))
    }

    /// Reloads when either file's mtime changed; a bad new pair keeps the old one.
    pub fn check(&self) {
        let now = stamps(&self.files);
        let Ok(mut last) = self.stamp.lock() else {
            return;
        };
        if now == *last {
            return;
        }
        match build_acceptor(&self.files) {
            Ok(a) => {
                self.acceptor.store(Arc::new(a));
                *last = now;
                tracing::info!(cert = %self.files.cert_file.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate changed but does not load; keeping the old one")
            }
        }
    }

    fn current(&self) -> Arc<tokio_rustls::TlsAcceptor> {
        self.acceptor.load_full()
    }
}

fn stamps(f: &Tls) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&f.cert_file)?, m(&f.key_file)?))
}

/// rustls server config: TLS 1.2 and 1.3 only, ALPN h2 and http/1.1.
pub fn build_acceptor(files: &Tls) -> Result<tokio_rustls::TlsAcceptor, String> {
    let cert_pem = std::fs::read(&files.cert_file)
        .map_err(|e| format!("{}: {e}", files.cert_file.display()))?;
    let key_pem =
        std::fs::read(&files.key_file).map_err(|e| format!("{}: {e}", files.key_file.display()))?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", files.cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate found",
            files.cert_file.display()
        ));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|_| format!("{}: not a PEM private key", files.key_file.display()))?
        .ok_or_else(|| format!("{}: no private key found", files.key_file.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::outbound::provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not fit: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The per-connection protocol settings, from config. hyper's own HTTP/1.1 and HTTP/2
/// builders rather than hyper-util's `auto` one, which wraps every connection in a
/// private type: served this way an upgraded cleartext connection can be downcast back
/// to its socket (`client_io::client_tunnel`), and the tunnel skips hyper's layers.
struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// The time a new connection has to show which protocol it speaks.
    sniff_timeout: Duration,
}

fn builder(s: &Server) -> Protocols {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout)
        .max_buf_size(s.max_header_bytes.max(8192))
        .writev(false)
        .keep_alive(true);
    if s.max_headers != 100 {
        // Non-default counts move header parsing to the heap; only pay when asked.
        h1.max_headers(s.max_headers);
    }
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(s.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(Some(64))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    Protocols {
        h1,
        h2,
        sniff_timeout: s.header_read_timeout,
    }
}

/// The proxy's workers, serving until `shutdown` turns true.
///
/// With one worker the calling runtime serves. With more, each worker is a thread with
/// its own current-thread runtime that accepts from the same listening socket, so a
/// connection, its requests and (through the pool's per-worker shards) the backend
/// connections it uses stay on one thread: no cross-thread wake-up per request, which a
/// multi-thread runtime pays whenever a client task and a pooled backend connection's
/// task sit on different workers. The process model is nginx's; a busy worker accepts
/// less, as an nginx worker does.
pub struct Workers {
    /// One per worker: fires when its listener has closed and its requests have drained.
    drained: Vec<tokio::sync::oneshot::Receiver<()>>,
    /// Dropped (with `Workers`): the worker threads end their runtimes. Until then they
    /// keep running what outlives the drain (WebSocket tunnels, spawned renewals).
    _release: watch::Sender<bool>,
}

impl Workers {
    pub fn start(
        listener: TcpListener,
        workers: usize,
        state: Arc<ArcSwap<State>>,
        tls: Option<Arc<TlsReloader>>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Workers> {
        let cfg = state.load().cfg.server.clone();
        let shared = Shared {
            builder: Arc::new(builder(&cfg)),
            limit: Arc::new(Semaphore::new(cfg.max_connections)),
            grace: cfg.shutdown_grace,
        };
        let (release, released) = watch::channel(false);
        let mut drained = Vec::with_capacity(workers);
        if workers <= 1 {
            let (done, rx) = tokio::sync::oneshot::channel();
            drained.push(rx);
            tokio::spawn(async move {
                serve(listener, state, tls, shutdown, shared).await;
                let _ = done.send(());
            });
            return Ok(Workers {
                drained,
                _release: release,
            });
        }
        let std_listener = listener.into_std()?;
        // Every runtime and socket first: a worker that cannot start fails the start.
        let mut parts = Vec::with_capacity(workers);
        for _ in 0..workers {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            parts.push((rt, std_listener.try_clone()?));
        }
        drop(std_listener);
        for (i, (rt, l)) in parts.into_iter().enumerate() {
            let (done, rx) = tokio::sync::oneshot::channel();
            drained.push(rx);
            let (state, tls, shutdown, shared) =
                (state.clone(), tls.clone(), shutdown.clone(), shared.clone());
            let mut released = released.clone();
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    crate::pool::set_worker(i);
                    rt.block_on(async move {
                        tokio::spawn(keep_timer_awake());
                        match TcpListener::from_std(l) {
                            Ok(l) => serve(l, state, tls, shutdown, shared).await,
                            Err(e) => {
                                tracing::error!(worker = i, error = %e, "worker cannot listen")
                            }
                        }
                        let _ = done.send(());
                        let _ = released.wait_for(|r| *r).await;
                    });
                })?;
        }
        Ok(Workers {
            drained,
            _release: release,
        })
    }

    /// Waits until every worker has closed its listener and drained its requests.
    pub async fn drained(&mut self) {
        for d in &mut self.drained {
            let _ = d.await;
        }
    }
}

/// A timer that fires every second on a worker's runtime. tokio's time driver writes to
/// its eventfd whenever a new timer is due before its next wake-up; with no other timer
/// pending that is every per-request timer armed after an idle moment (measured at 2
/// workers: 0.24 `write`s and 0.7 context switches per request, 0.08 with this). A
/// wake-up always due within a second makes those timers (seconds long) never the
/// earliest. The main thread's runtime has such timers already (reload checks, sweeps).
async fn keep_timer_awake() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// What the workers share: protocol settings, the connection limit, the grace period.
#[derive(Clone)]
struct Shared {
    builder: Arc<Protocols>,
    limit: Arc<Semaphore>,
    grace: Duration,
}

/// Accepts until `shutdown` turns true, then drains in-flight requests for up to the
/// grace period.
async fn serve(
    listener: TcpListener,
    state: Arc<ArcSwap<State>>,
    tls: Option<Arc<TlsReloader>>,
    mut shutdown: watch::Receiver<bool>,
    shared: Shared,
) {
    let Shared {
        builder,
        limit,
        grace,
    } = shared;
    // Each connection holds a clone of `open`; the drain ends when all are dropped.
    let (open, mut closed) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, remote) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "connection limit reached; closing new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let watcher = Watcher {
            shutdown: shutdown.clone(),
            _open: open.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _open = state.load().metrics.connection_guard();
            match tls {
                None => serve_conn(stream, remote, false, state, &builder, watcher).await,
                // Boxed: a task holds room for its largest branch for the life of the
                // connection, and the TLS one is twice the plain one's size.
                Some(t) => {
                    Box::pin(async move {
                        let handshake = tokio::time::timeout(
                            Duration::from_secs(10),
                            t.current().accept(stream),
                        );
                        match handshake.await {
                            Ok(Ok(s)) => {
                                serve_conn(s, remote, true, state, &builder, watcher).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                        }
                    })
                    .await
                }
            }
        });
    }
    drop(listener);
    tracing::info!(
        worker = crate::pool::worker(),
        "listener closed; draining in-flight requests"
    );
    drop(open);
    if tokio::time::timeout(grace, closed.recv()).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
}

/// What a connection keeps while it is served: the shutdown signal, and its share of
/// the drain (`serve` waits until every share is dropped).
struct Watcher {
    shutdown: watch::Receiver<bool>,
    _open: tokio::sync::mpsc::Sender<()>,
}

/// A served connection that can be asked to finish its in-flight requests and close.
trait Graceful: std::future::Future<Output = hyper::Result<()>> {
    fn graceful(self: std::pin::Pin<&mut Self>);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<I, B, S> Graceful for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, B, S> Graceful for http2::Connection<I, S, TokioExecutor>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Resolves once shutdown has begun (at once if it already has).
async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    // A dropped sender (the workers' owner gone) counts as shutdown too.
    let _ = rx.wait_for(|v| *v).await;
}

/// Serves `conn` to its end; on shutdown lets it finish what is in flight first.
async fn drive<C: Graceful>(conn: C, mut watcher: Watcher, remote: SocketAddr) {
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutting_down(&mut watcher.shutdown) => {
            conn.as_mut().graceful();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}

async fn serve_conn<S>(
    io: S,
    remote: SocketAddr,
    tls: bool,
    state: Arc<ArcSwap<State>>,
    protocols: &Protocols,
    mut watcher: Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let info = ConnInfo::new(remote, tls);
    let stall = state.load().cfg.server.write_stall_timeout;
    let svc = service_fn(move |req| {
        let info = info.clone();
        // Each request sees the config in force when it arrived (reload swaps it whole).
        let st = state.load_full();
        async move { Ok::<_, Infallible>(proxy::handle(st, req, info).await) }
    });
    let mut io = StallGuard::new(io, stall);
    let sniffed = tokio::select! {
        r = tokio::time::timeout(protocols.sniff_timeout, client_io::sniff(&mut io)) => r,
        // Nothing asked yet, so nothing to finish: a drain need not wait for it.
        _ = shutting_down(&mut watcher.shutdown) => return,
    };
    let (h2, seen) = match sniffed {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "connection ended before its first request");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "no request within the header read timeout");
            return;
        }
    };
    let io = TokioIo::new(tunnel::Early::new(&seen, io));
    if h2 {
        // Boxed, as above: HTTP/1.1 connections need not hold room for HTTP/2's state.
        Box::pin(drive(
            protocols.h2.serve_connection(io, svc),
            watcher,
            remote,
        ))
        .await;
    } else {
        let conn = protocols.h1.serve_connection(io, svc).with_upgrades();
        drive(conn, watcher, remote).await;
    }
}

/// Binds a listener (used before anything else starts, so a bad address fails early).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Whether a TCP connection to `authority` opens within a second (readiness).
pub async fn reachable(authority: &http::uri::Authority, default_port: u16) -> bool {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(default_port);
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect((host.as_str(), port))
        )
        .await,
        Ok(Ok(_))
    )
}
