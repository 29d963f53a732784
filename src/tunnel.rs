//! Bytes copied both ways over an upgraded connection (a WebSocket), holding no buffer
//! while the connection is idle. A leaf: `forward` calls it once both sides switched.
//!
//! `tokio::io::copy_bidirectional` keeps an 8 KiB buffer per direction for the life of
//! the connection: 16 KiB for every idle chat socket. Here each read goes into a buffer
//! on the poll's stack and is written straight on; only bytes the other side cannot take
//! yet are copied to the heap, and that copy is freed once written. An idle tunnel holds
//! no copy buffer at all (benches/ws.sh measures RSS per connection).

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Bytes read per poll (on the stack, not kept): a WebSocket frame of up to this size
/// passes in one read and one write.
const CHUNK: usize = 16 * 1024;

/// One direction's state between polls.
#[derive(Default)]
struct Half {
    /// Bytes read but not yet written (empty, unallocated, almost always).
    pending: Vec<u8>,
    pos: usize,
    read_done: bool,
    done: bool,
    need_flush: bool,
    copied: u64,
}

impl Half {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.copied));
        }
        loop {
            while self.pos < self.pending.len() {
                let n = ready!(w.as_mut().poll_write(cx, &self.pending[self.pos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.copied += n as u64;
                self.need_flush = true;
            }
            if !self.pending.is_empty() {
                // Written out: give the memory back rather than keep it for the next stall.
                self.pending = Vec::new();
                self.pos = 0;
            }
            if self.read_done {
                if self.need_flush {
                    ready!(w.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(self.copied));
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut buf = ReadBuf::uninit(&mut stack);
            match r.as_mut().poll_read(cx, &mut buf) {
                Poll::Pending => {
                    if self.need_flush {
                        ready!(w.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let data = buf.filled();
            if data.is_empty() {
                self.read_done = true;
                continue;
            }
            let mut off = 0;
            while off < data.len() {
                match w.as_mut().poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        off += n;
                        self.copied += n as u64;
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // The other side is not reading: keep the rest until it is.
                        self.pending = data[off..].to_vec();
                        self.pos = 0;
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// A stream with bytes already read from it served first: what hyper had buffered past
/// an upgrade's head, or what the listener read to tell HTTP/2 from HTTP/1.1. Holds no
/// memory once they are read.
pub struct Early<S> {
    early: bytes::Bytes,
    io: S,
}

impl<S> Early<S> {
    /// Copies `early`: it is often a view of a much larger read buffer that it would
    /// otherwise keep alive for the life of the connection.
    pub fn new(early: &[u8], io: S) -> Self {
        Early {
            early: bytes::Bytes::copy_from_slice(early),
            io,
        }
    }

    /// The bytes not read yet and the stream.
    pub fn into_parts(self) -> (bytes::Bytes, S) {
        (self.early, self.io)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Early<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early.split_to(n));
            if this.early.is_empty() {
                this.early = bytes::Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Early<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Which parts of a tunnel were woken since its last poll. One task drives both copy
/// directions and the deadline; polling all three on every wake-up cost two reads that
/// could only answer "not ready" (through hyper's upgrade layers) and a timer check per
/// message. Each part gets its own waker that marks its bit before waking the task, and
/// only marked parts are polled.
struct Woken {
    bits: AtomicU8,
    task: AtomicWaker,
}

const A_TO_B: u8 = 1;
const B_TO_A: u8 = 2;
const DEADLINE: u8 = 4;

struct PartWaker {
    woken: Arc<Woken>,
    bit: u8,
}

impl Wake for PartWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.bits.fetch_or(self.bit, Ordering::AcqRel);
        self.woken.task.wake();
    }
}

/// Copies `a` to `b` and `b` to `a` until both have reached end of file (each end's
/// writer is shut down when its reader ends), either fails, or `deadline` passes
/// (`Ok(None)`). Returns the bytes copied each way, as `tokio::io::copy_bidirectional`
/// does.
pub async fn copy_bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    deadline: Option<Instant>,
) -> io::Result<Option<(u64, u64)>>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let woken = Arc::new(Woken {
        bits: AtomicU8::new(A_TO_B | B_TO_A | DEADLINE),
        task: AtomicWaker::new(),
    });
    let part = |bit| {
        Waker::from(Arc::new(PartWaker {
            woken: woken.clone(),
            bit,
        }))
    };
    let (w_ab, w_ba, w_deadline) = (part(A_TO_B), part(B_TO_A), part(DEADLINE));
    let mut a_to_b = Half::default();
    let mut b_to_a = Half::default();
    let (mut ab, mut ba) = (None, None);
    let sleep = deadline.map(tokio::time::sleep_until);
    tokio::pin!(sleep);
    poll_fn(|cx| {
        // Register before taking the bits: a wake-up after the swap then polls again.
        woken.task.register(cx.waker());
        let bits = woken.bits.swap(0, Ordering::AcqRel);
        if bits & DEADLINE != 0 {
            if let Some(s) = sleep.as_mut().as_pin_mut() {
                if s.poll(&mut Context::from_waker(&w_deadline)).is_ready() {
                    return Poll::Ready(Ok(None));
                }
            }
        }
        if bits & A_TO_B != 0 && ab.is_none() {
            let cx = &mut Context::from_waker(&w_ab);
            if let Poll::Ready(n) = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b)) {
                ab = Some(n?);
            }
        }
        if bits & B_TO_A != 0 && ba.is_none() {
            let cx = &mut Context::from_waker(&w_ba);
            if let Poll::Ready(n) = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a)) {
                ba = Some(n?);
            }
        }
        match (ab, ba) {
            (Some(x), Some(y)) => Poll::Ready(Ok(Some((x, y)))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Copies `r` to `w` until `r` ends (then shuts `w` down), holding no buffer while idle.
pub async fn copy_one<R, W>(r: &mut R, w: &mut W) -> io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut half = Half::default();
    poll_fn(|cx| half.poll_copy(cx, Pin::new(&mut *r), Pin::new(&mut *w))).await
}

/// What `r` has to read now, in a buffer that lives only as long as the caller keeps it
/// (a reader waiting for data holds none); empty at end of file. Cancel-safe: bytes are
/// taken only when the read completes.
pub async fn read_chunk<R>(r: &mut R) -> io::Result<Vec<u8>>
where
    R: AsyncRead + Unpin + ?Sized,
{
    poll_fn(|cx| {
        let mut stack = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut buf = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut *r).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(buf.filled().to_vec()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    type Ended = tokio::task::JoinHandle<io::Result<Option<(u64, u64)>>>;

    /// A client and a backend joined by the tunnel: (client end, backend end, tunnel task).
    fn joined(
        buf: usize,
        deadline: Option<Instant>,
    ) -> (tokio::io::DuplexStream, tokio::io::DuplexStream, Ended) {
        let (client, mut a) = duplex(buf);
        let (mut b, backend) = duplex(buf);
        let task = tokio::spawn(async move { copy_bidirectional(&mut a, &mut b, deadline).await });
        (client, backend, task)
    }

    #[tokio::test]
    async fn many_small_messages_each_way_arrive_in_order_and_are_counted() {
        let (mut client, mut backend, task) = joined(64, None);
        let echo = tokio::spawn(async move {
            let mut m = [0u8; 32];
            for _ in 0..2_000 {
                backend.read_exact(&mut m).await.unwrap();
                backend.write_all(&m).await.unwrap();
            }
            backend.shutdown().await.unwrap();
            let mut rest = Vec::new();
            backend.read_to_end(&mut rest).await.unwrap();
            rest.len()
        });
        // A lost wake-up shows as a stall: fail it rather than hang.
        let pingpong = async {
            for i in 0..2_000u32 {
                let mut m = [0u8; 32];
                m[..4].copy_from_slice(&i.to_be_bytes());
                client.write_all(&m).await.unwrap();
                let mut back = [0u8; 32];
                client.read_exact(&mut back).await.unwrap();
                assert_eq!(back, m, "message {i} came back changed");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), pingpong)
            .await
            .expect("the echo stalled");
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(echo.await.unwrap(), 0);
        let counts = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap();
        assert_eq!(counts.unwrap().unwrap(), Some((64_000, 64_000)));
    }

    #[tokio::test]
    async fn a_large_transfer_to_a_slow_reader_is_delivered_whole() {
        // A 64-byte pipe: nearly every write stalls, so the pending-bytes path and the
        // write-side wake-ups carry the transfer.
        let (mut client, mut backend, task) = joined(64, None);
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        let mut chunk = [0u8; 100];
        loop {
            let n = backend.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            tokio::task::yield_now().await;
        }
        assert!(
            got == data,
            "{} of {} bytes, or reordered",
            got.len(),
            data.len()
        );
        drop(backend);
        drop(writer.await.unwrap());
        let counts = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap();
        assert_eq!(counts.unwrap().unwrap(), Some((1_000_000, 0)));
    }

    #[tokio::test]
    async fn the_deadline_ends_an_idle_tunnel_and_a_busy_one() {
        let (_client, _backend, task) =
            joined(64, Some(Instant::now() + Duration::from_millis(50)));
        let ended = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap();
        assert!(matches!(ended, Ok(Ok(None))), "{ended:?}");

        let (mut client, mut backend, task) =
            joined(64, Some(Instant::now() + Duration::from_millis(200)));
        let chatter = tokio::spawn(async move {
            let mut m = [7u8; 16];
            while client.write_all(&m).await.is_ok() && backend.read_exact(&mut m).await.is_ok() {}
        });
        let ended = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap();
        assert!(matches!(ended, Ok(Ok(None))), "{ended:?}");
        tokio::time::timeout(Duration::from_secs(5), chatter)
            .await
            .unwrap()
            .unwrap();
    }
}
