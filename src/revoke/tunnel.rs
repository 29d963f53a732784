//! A WebSocket tunnel that a revocation can end cleanly. After the upgrade both sides
//! are raw bytes; the backend-to-client direction is followed frame by frame (headers
//! only, payloads are copied untouched) so that a close frame can be written between
//! two frames: `1008` (policy violation) with a short reason, then the TCP close.

use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{Refused, Stop};

/// How long a revocation waits for the backend to finish a frame it is half-way
/// through before the connection is cut without a close frame.
const FINISH_FRAME: Duration = Duration::from_millis(500);

/// How the tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// One side closed.
    Closed,
    /// The opening token expired (plus grace).
    Expired,
    /// Its user was refused: a close frame was sent when `framed`.
    Refused { why: Refused, framed: bool },
}

/// Where the server-to-client byte stream is, frame-wise (RFC 6455 §5.2).
#[derive(Default)]
pub struct Frames {
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    head: [u8; 14],
    head_len: usize,
}

impl Frames {
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.head_len == 0
    }

    /// Consumes `data` up to the end of the current frame (or all of it); returns how
    /// many bytes that was.
    pub fn step(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            if self.remaining > 0 {
                let take = self.remaining.min((data.len() - i) as u64);
                i += take as usize;
                self.remaining -= take;
                if self.remaining == 0 {
                    return i;
                }
                continue;
            }
            self.head[self.head_len] = data[i];
            self.head_len += 1;
            i += 1;
            if let Some(payload) = self.header_done() {
                self.head_len = 0;
                self.remaining = payload;
                if payload == 0 {
                    return i;
                }
            }
        }
        i
    }

    /// Consumes all of `data`.
    pub fn feed(&mut self, data: &[u8]) {
        let mut off = 0;
        while off < data.len() {
            off += self.step(&data[off..]);
        }
    }

    /// The payload length once the whole header is in.
    fn header_done(&self) -> Option<u64> {
        let h = &self.head[..self.head_len];
        if h.len() < 2 {
            return None;
        }
        let ext = match h[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
        if h.len() < 2 + ext + mask {
            return None;
        }
        Some(match ext {
            2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            8 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            _ => u64::from(h[1] & 0x7f),
        })
    }
}

/// An unmasked server close frame: code 1008 and `reason` (short: under 124 bytes).
pub fn close_frame(reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(120)];
    let mut f = Vec::with_capacity(4 + reason.len());
    f.push(0x88);
    f.push((2 + reason.len()) as u8);
    f.extend_from_slice(&1008u16.to_be_bytes());
    f.extend_from_slice(reason);
    f
}

fn reason(why: Refused) -> &'static str {
    match why {
        Refused::Revoked => "session revoked",
        Refused::Banned => "user banned",
    }
}

/// Copies both ways until one side closes, the deadline passes, or `stop` fires.
pub async fn run<C, B>(client: C, backend: B, deadline: Option<SystemTime>, stop: Stop) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = tokio::io::split(backend);
    // Neither direction holds a copy buffer while the socket is idle (`crate::tunnel`).
    let up = async {
        let _ = crate::tunnel::copy_one(&mut cr, &mut bw).await;
    };
    let left = deadline.map(|at| {
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    });
    let down = async {
        let expiry = async {
            match left {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        let mut stop = stop;
        let mut frames = Frames::default();
        let mut stopping: Option<Refused> = None;
        let finish = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(finish);
        let ended = loop {
            tokio::select! {
                biased;
                why = &mut stop, if stopping.is_none() => {
                    if frames.at_boundary() {
                        break Ended::Refused { why, framed: true };
                    }
                    stopping = Some(why);
                    finish.as_mut().reset(tokio::time::Instant::now() + FINISH_FRAME);
                }
                _ = &mut finish, if stopping.is_some() => {
                    break Ended::Refused { why: stopping.unwrap_or(Refused::Revoked), framed: false };
                }
                _ = &mut expiry => break Ended::Expired,
                chunk = crate::tunnel::read_chunk(&mut br) => {
                    let buf = match chunk {
                        Ok(b) if !b.is_empty() => b,
                        _ => break Ended::Closed,
                    };
                    match stopping {
                        None => {
                            frames.feed(&buf);
                            if cw.write_all(&buf).await.is_err() {
                                break Ended::Closed;
                            }
                        }
                        Some(why) => {
                            let k = frames.step(&buf);
                            if cw.write_all(&buf[..k]).await.is_err() {
                                break Ended::Closed;
                            }
                            if frames.at_boundary() {
                                break Ended::Refused { why, framed: true };
                            }
                        }
                    }
                }
            }
        };
        if let Ended::Refused { why, framed: true } = &ended {
            let frame = close_frame(reason(*why));
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = cw.write_all(&frame).await;
                let _ = cw.flush().await;
            })
            .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), cw.shutdown()).await;
        ended
    };
    tokio::pin!(up);
    tokio::pin!(down);
    let mut up_done = false;
    loop {
        tokio::select! {
            e = &mut down => return e,
            _ = &mut up, if !up_done => up_done = true,
        }
    }
}

/// One line (and a count) for how a watched tunnel ended.
pub fn log_end(e: Ended) {
    match e {
        Ended::Closed => {}
        Ended::Expired => tracing::info!("closing upgraded connection: its token has expired"),
        Ended::Refused { why, framed } => {
            super::count_closed("websocket");
            tracing::info!(
                reason = why.as_str(),
                close_frame = framed,
                "closing upgraded connection: its user was revoked"
            );
        }
    }
}
