//! Keep-alive HTTP/1.1 connections to the one backend, for `forward`.
//!
//! hyper-util's general-purpose client keys its pool by scheme and authority (a SipHash
//! per request), wraps every checkout in a pooled handle and spawns a task per response
//! to notice when the connection is free again. With one backend none of that is needed:
//! a LIFO stack of `hyper::client::conn::http1` senders (the warmest connection first),
//! a connection handed back when its response body has been read to the end, and the
//! stalest dropped once it has idled past `backend.pool_idle_timeout`. At most
//! `backend.max_connections` are open at once, and at most `MAX_DIALING` are being
//! opened at once: a herd of requests mostly waits for a connection to come back instead
//! of opening thousands in the same millisecond, which overflows a backend's accept
//! queue (dropped SYNs are retried after a second, past the connect timeout: 502s).
//! Each wait is bounded by the response timeout around the whole exchange.
//!
//! With several workers (`listen::Workers`) each keeps its own stack of the connections
//! it opened: a request is sent on a connection driven by its own thread. Another
//! worker's idle connection is taken only when no new one may be opened.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;

use crate::inbound::Inbound;
use crate::tunnel::Early;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

thread_local! {
    /// The worker serving on this thread (0 on the main thread).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks this thread as worker `i` (`listen::Workers`): its pool shard.
pub fn set_worker(i: usize) {
    WORKER.with(|w| w.set(i));
}

/// The worker this code runs on, 0 … `server.worker_threads - 1`.
pub fn worker() -> usize {
    WORKER.with(|w| w.get())
}

pub struct H1Pool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`: what the connector dials.
    target: Uri,
    /// Idle connections per worker (index: `worker()`).
    idle: Box<[Mutex<VecDeque<Idle>>]>,
    /// Per worker.
    max_idle: usize,
    idle_timeout: Duration,
    /// One permit per open connection.
    slots: Arc<Semaphore>,
    /// One permit per connection being opened.
    dialing: Arc<Semaphore>,
    /// Signalled when a connection comes back or closes: a waiting request looks again.
    freed: Arc<Notify>,
}

/// Connection attempts in flight at once.
const MAX_DIALING: usize = 32;

/// Held while a connection is being opened.
struct Dial {
    _permit: OwnedSemaphorePermit,
    freed: Arc<Notify>,
}

impl Drop for Dial {
    fn drop(&mut self) {
        self.freed.notify_one();
    }
}

/// Held by a connection's task for as long as the connection is open.
struct Slot {
    _permit: OwnedSemaphorePermit,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.freed.notify_one();
    }
}

struct Idle {
    tx: SendRequest<Inbound>,
    since: Instant,
}

/// Why a request did not reach the backend.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl PoolError {
    pub fn is_connect(&self) -> bool {
        matches!(self, PoolError::Connect(_))
    }
}

/// A connection in use. Dropped after the response body ended, it goes back to the pool;
/// dropped before (client gone, body cut), the connection is closed with it.
pub struct Lease {
    tx: Option<SendRequest<Inbound>>,
    /// The worker whose runtime drives the connection: where it goes back.
    home: usize,
    pool: Arc<H1Pool>,
    pub done: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (true, Some(tx)) = (self.done, self.tx.take()) {
            self.pool.put(self.home, tx);
        }
    }
}

impl H1Pool {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        target: Uri,
        max_idle: usize,
        idle_timeout: Duration,
        max_connections: usize,
        workers: usize,
    ) -> H1Pool {
        let workers = workers.max(1);
        H1Pool {
            connector,
            target,
            idle: (0..workers).map(|_| Mutex::new(VecDeque::new())).collect(),
            max_idle: max_idle.div_ceil(workers),
            idle_timeout,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            dialing: Arc::new(Semaphore::new(MAX_DIALING)),
            freed: Arc::new(Notify::new()),
        }
    }

    /// Sends the request (origin-form URI, Host set) on a pooled connection or a new one.
    /// A pooled connection that turns out closed before the request was written is
    /// skipped, so a backend's keep-alive timeout never becomes a 502.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Inbound>,
    ) -> Result<(Response<Incoming>, Lease), PoolError> {
        loop {
            let (mut tx, home, reused) = self.checkout().await?;
            if let Err(e) = tx.ready().await {
                if reused {
                    continue;
                }
                return Err(e.into());
            }
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        tx: Some(tx),
                        home,
                        pool: self.clone(),
                        done: false,
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// A pooled connection (true), or a new one when fewer than `max_connections` are
    /// open (false); otherwise waits until one comes back or closes. With the worker
    /// whose runtime drives it.
    async fn checkout(&self) -> Result<(SendRequest<Inbound>, usize, bool), PoolError> {
        // A reload may name another worker count; workers change only on restart.
        let me = worker() % self.idle.len();
        loop {
            if let Some(c) = self.find(me).await? {
                return Ok(c);
            }
            // Register interest, then look once more: a connection that came back between
            // the first look and now is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(c) = self.find(me).await? {
                return Ok(c);
            }
            freed.await;
        }
    }

    /// This worker's warmest connection, a new one, or another worker's.
    async fn find(
        &self,
        me: usize,
    ) -> Result<Option<(SendRequest<Inbound>, usize, bool)>, PoolError> {
        if let Some(tx) = self.take(me) {
            return Ok(Some((tx, me, true)));
        }
        if let Some((slot, dial)) = self.try_slot() {
            // Boxed: dialing is rare, and its future would otherwise grow every request's.
            let tx = Box::pin(self.connect(slot, dial)).await?;
            return Ok(Some((tx, me, false)));
        }
        let n = self.idle.len();
        Ok((1..n)
            .map(|k| (me + k) % n)
            .find_map(|w| self.take(w).map(|tx| (tx, w, true))))
    }

    /// Both permits, or neither. Only whole guards signal `freed` when dropped: a slot
    /// given back here because every dial permit was taken needs no signal (each of those
    /// dials signals when it ends), and signalling it would wake this very task in a loop.
    fn try_slot(&self) -> Option<(Slot, Dial)> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let dial = self.dialing.clone().try_acquire_owned().ok()?;
        let freed = self.freed.clone();
        Some((
            Slot {
                _permit: slot,
                freed: freed.clone(),
            },
            Dial {
                _permit: dial,
                freed,
            },
        ))
    }

    fn take(&self, worker: usize) -> Option<SendRequest<Inbound>> {
        let mut idle = self.lock(worker);
        while let Some(i) = idle.pop_back() {
            if !i.tx.is_closed() && i.since.elapsed() < self.idle_timeout {
                return Some(i.tx);
            }
        }
        None
    }

    fn put(&self, worker: usize, tx: SendRequest<Inbound>) {
        if tx.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock(worker);
        // The oldest sit at the front: drop those idle too long (and any beyond the cap).
        while idle
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= self.idle_timeout || i.tx.is_closed())
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back(Idle { tx, since: now });
            drop(idle);
            self.freed.notify_one();
        }
    }

    async fn connect(&self, slot: Slot, dial: Dial) -> Result<SendRequest<Inbound>, PoolError> {
        // The connector carries the connect timeout, TCP options and TLS (with ALPN
        // http/1.1 for https backends).
        let io = self
            .connector
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| PoolError::Connect(e.to_string()))?;
        let (tx, conn) = http1::Builder::new().writev(false).handshake(io).await?;
        drop(dial);
        tokio::spawn(async move {
            // Upgrades: a backend's 101 hands the socket over to the WebSocket tunnel
            // (which then no longer counts against max_connections).
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "backend connection ended");
            }
            drop(slot);
        });
        Ok(tx)
    }

    fn lock(&self, worker: usize) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        match self.idle[worker].lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// A backend socket after its 101, taken back out of hyper's `Upgraded` when it is one
/// of this pool's (nearly always): the tunnel then reads and writes the socket itself
/// instead of through hyper's boxed upgrade layers, about a tenth of the instructions
/// per echoed WebSocket message (benches/ws.sh).
pub enum Socket {
    Plain(tokio::net::TcpStream),
    /// (hyper-rustls wraps the socket for hyper, then the TLS stream for tokio.)
    Tls(Box<tokio_rustls::client::TlsStream<TokioIo<TokioIo<tokio::net::TcpStream>>>>),
    Hyper(TokioIo<hyper::upgrade::Upgraded>),
}

type PoolIo = hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// The backend side of a tunnel, with any bytes hyper had read past the 101 first.
pub fn backend_tunnel(up: hyper::upgrade::Upgraded) -> Early<Socket> {
    match up.downcast::<PoolIo>() {
        Ok(parts) => Early::new(
            &parts.read_buf,
            match parts.io {
                hyper_rustls::MaybeHttpsStream::Http(tcp) => Socket::Plain(tcp.into_inner()),
                hyper_rustls::MaybeHttpsStream::Https(tls) => {
                    Socket::Tls(Box::new(tls.into_inner()))
                }
            },
        ),
        Err(up) => Early::new(&[], Socket::Hyper(TokioIo::new(up))),
    }
}

macro_rules! each_io {
    ($io:expr, $s:ident => $e:expr) => {
        match $io {
            Socket::Plain($s) => $e,
            Socket::Tls($s) => $e,
            Socket::Hyper($s) => $e,
        }
    };
}

impl tokio::io::AsyncRead for Socket {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        each_io!(self.get_mut(), s => std::pin::Pin::new(s).poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Socket {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        each_io!(self.get_mut(), s => std::pin::Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        each_io!(self.get_mut(), s => std::pin::Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        each_io!(self.get_mut(), s => std::pin::Pin::new(s).poll_shutdown(cx))
    }
}
