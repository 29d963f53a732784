//! Bytes copied both ways over an upgraded connection (a WebSocket), holding no buffer
//! while the connection is idle. A leaf: `forward` calls it once both sides switched.
//!
//! `tokio::io::copy_bidirectional` keeps an 8 KiB buffer per direction for the life of
//! the connection: 16 KiB for every idle chat socket. Here each read goes into a buffer
//! on the poll's stack and is written straight on; only bytes the other side cannot take
//! yet are copied to the heap, and that copy is freed once written. An idle tunnel holds
//! no copy buffer at all (benches/ws.sh measures RSS per connection).

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

/// Copies `a` to `b` and `b` to `a` until both have reached end of file (each end's
/// writer is shut down when its reader ends) or either fails. Returns the bytes copied
/// each way, as `tokio::io::copy_bidirectional` does.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Half::default();
    let mut b_to_a = Half::default();
    poll_fn(|cx| {
        let ab = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let ba = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (ab, ba) {
            (Poll::Ready(x), Poll::Ready(y)) => Poll::Ready(Ok((x, y))),
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
