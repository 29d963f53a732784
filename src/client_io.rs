//! What a client connection is read and written through: the write-stall guard, the
//! bytes read to tell HTTP/2 from HTTP/1.1, and, after a WebSocket upgrade, the socket
//! taken back out of hyper. `listen` builds these, `forward` unwraps them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tunnel::Early;

/// The HTTP/2 connection preface (RFC 9113 §3.4), which an h2 client sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the first bytes tell the protocol: `(true, bytes)` for the HTTP/2
/// preface, `(false, bytes)` as soon as a byte differs from it (the first byte for
/// every HTTP/1.1 method but `P…`), or at end of file. The bytes read are returned to be
/// served again in front of the connection (`tunnel::Early`).
pub async fn sniff<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<(bool, Vec<u8>)> {
    let mut seen = Vec::with_capacity(H2_PREFACE.len());
    let mut buf = [0u8; 24];
    loop {
        let want = H2_PREFACE.len() - seen.len();
        let n = io.read(&mut buf[..want]).await?;
        if n == 0 {
            return Ok((false, seen));
        }
        seen.extend_from_slice(&buf[..n]);
        if !H2_PREFACE.starts_with(&seen) {
            return Ok((false, seen));
        }
        if seen.len() == H2_PREFACE.len() {
            return Ok((true, seen));
        }
    }
}

/// The cleartext client connection type hyper serves (`listen::serve_conn`), so that an
/// upgraded connection can be downcast back to its socket.
type PlainIo = TokioIo<Early<StallGuard<TcpStream>>>;

/// A client's upgraded connection: the socket itself when it is a cleartext one (its
/// write-stall guard kept), else hyper's `Upgraded`.
pub enum ClientSocket {
    Plain(StallGuard<TcpStream>),
    Hyper(TokioIo<hyper::upgrade::Upgraded>),
}

/// The client side of a tunnel, with any bytes the client sent after its upgrade request
/// (read by hyper already) first.
pub fn client_tunnel(up: hyper::upgrade::Upgraded) -> Early<ClientSocket> {
    match up.downcast::<PlainIo>() {
        Ok(parts) => {
            // The sniffed bytes began the first request, so hyper has read them; any left
            // would still come before what hyper buffered.
            let (sniffed, guard) = parts.io.into_inner().into_parts();
            let mut early = sniffed.to_vec();
            early.extend_from_slice(&parts.read_buf);
            Early::new(&early, ClientSocket::Plain(guard))
        }
        Err(up) => Early::new(&[], ClientSocket::Hyper(TokioIo::new(up))),
    }
}

macro_rules! each_client {
    ($io:expr, $s:ident => $e:expr) => {
        match $io {
            ClientSocket::Plain($s) => $e,
            ClientSocket::Hyper($s) => $e,
        }
    };
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each_client!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_client!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_client!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_client!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

pin_project_lite::pin_project! {
    /// A client connection cut off when a write makes no progress for `stall`: a client
    /// that stops reading a response (or a WebSocket) cannot hold the backend connection
    /// behind it forever. The timer exists only once a write has had to wait.
    pub struct StallGuard<S> {
        #[pin]
        io: S,
        stall: Duration,
        timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
        waiting: bool,
    }
}

impl<S> StallGuard<S> {
    pub fn new(io: S, stall: Duration) -> Self {
        StallGuard {
            io,
            stall,
            timer: None,
            waiting: false,
        }
    }
}

/// A write that could not proceed: arm the timer on the first wait; an error once it fires.
fn stalled(
    stall: Duration,
    timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    waiting: &mut bool,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<std::io::Error> {
    use std::future::Future;
    let deadline = tokio::time::Instant::now() + stall;
    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if !*waiting {
        *waiting = true;
        t.as_mut().reset(deadline);
    }
    match t.as_mut().poll(cx) {
        std::task::Poll::Ready(()) => std::task::Poll::Ready(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client stopped reading",
        )),
        std::task::Poll::Pending => std::task::Poll::Pending,
    }
}

macro_rules! guarded {
    ($this:ident, $cx:ident, $call:expr) => {
        match $call {
            std::task::Poll::Pending => {
                stalled(*$this.stall, $this.timer, $this.waiting, $cx).map(Err)
            }
            ready => {
                *$this.waiting = false;
                ready
            }
        }
    };
}

impl<S: tokio::io::AsyncWrite> tokio::io::AsyncWrite for StallGuard<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        guarded!(this, cx, this.io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        guarded!(this, cx, this.io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        guarded!(this, cx, this.io.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

impl<S: tokio::io::AsyncRead> tokio::io::AsyncRead for StallGuard<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}
