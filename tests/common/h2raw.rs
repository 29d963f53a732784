//! A tiny raw HTTP/2 (cleartext, prior knowledge) client that writes frames byte by
//! byte, for what a well-behaved client library refuses to send: uppercase field names,
//! connection-specific fields, trailers with owned names, stream floods, rapid resets and
//! CONTINUATION floods. HPACK is written as literals without indexing (no Huffman); of
//! the answers only frame types, stream ids, error codes and a best-effort `:status` are
//! read.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Debug)]
pub struct Frame {
    pub ty: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.ty {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// What became of one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response head arrived (with its `:status` when it could be read).
    Response(Option<u16>),
    /// The stream was reset with this error code.
    Reset(u32),
    /// The connection was shut with GOAWAY and this error code.
    GoAway(u32),
    /// The connection closed without either.
    Closed,
    /// Nothing within the time allowed.
    Timeout,
}

pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut v: usize) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing, names and values as given
/// (uppercase and all), no Huffman coding.
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, n.len());
        out.extend_from_slice(n.as_bytes());
        hpack_int(&mut out, 0, 7, v.len());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// A GET's header block for `path` plus `extra` fields.
pub fn get_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut f = vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "app.example.com"),
        (":path", path),
    ];
    f.extend_from_slice(extra);
    block(&f)
}

/// Best-effort `:status` from the first field of a response header block: static-table
/// indexes and a literal with a Huffman- or plain-coded three-digit value.
pub fn status_of(b: &[u8]) -> Option<u16> {
    let first = *b.first()?;
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    let idx = if first & 0x40 != 0 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if !(8..=14).contains(&idx) {
        return None;
    }
    let lb = *b.get(1)?;
    let huff = lb & 0x80 != 0;
    let len = (lb & 0x7f) as usize;
    let v = b.get(2..2 + len)?;
    let text = if huff {
        huffman_digits(v)?
    } else {
        String::from_utf8(v.to_vec()).ok()?
    };
    text.parse().ok()
}

/// HPACK Huffman for digits only (RFC 7541 Appendix B): 0-2 are 5 bits, 3-9 are 6.
fn huffman_digits(b: &[u8]) -> Option<String> {
    let bits: Vec<u8> = b
        .iter()
        .flat_map(|byte| (0..8).rev().map(move |i| (byte >> i) & 1))
        .collect();
    let mut i = 0;
    let mut out = String::new();
    let read = |i: usize, n: usize| -> Option<u32> {
        if i + n > bits.len() {
            return None;
        }
        Some(
            bits[i..i + n]
                .iter()
                .fold(0u32, |a, b| (a << 1) | *b as u32),
        )
    };
    while out.len() < 3 {
        let five = read(i, 5)?;
        if five <= 2 {
            out.push(char::from(b'0' + five as u8));
            i += 5;
            continue;
        }
        let six = read(i, 6)?;
        if (0b011001..=0b011111).contains(&six) {
            out.push(char::from(b'3' + (six - 0b011001) as u8));
            i += 6;
            continue;
        }
        return None;
    }
    Some(out)
}

/// One raw HTTP/2 connection.
pub struct H2 {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl H2 {
    /// Preface, our (empty) SETTINGS, and the ACK of the server's SETTINGS.
    pub async fn connect(addr: SocketAddr) -> H2 {
        let s = TcpStream::connect(addr).await.expect("connect h2");
        let _ = s.set_nodelay(true);
        let mut h = H2 { s, buf: Vec::new() };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        h.s.write_all(&hello).await.expect("preface");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match h.read_frame(left).await {
                Some(f) if f.ty == SETTINGS && f.flags & ACK == 0 => {
                    h.send(SETTINGS, ACK, 0, &[]).await;
                    return h;
                }
                Some(_) => continue,
                None => panic!("no SETTINGS from the server"),
            }
        }
    }

    pub async fn send(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) -> bool {
        self.s
            .write_all(&frame(ty, flags, stream, payload))
            .await
            .is_ok()
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.s.write_all(bytes).await.is_ok()
    }

    /// The next frame, or None on close/timeout.
    pub async fn read_frame(&mut self, limit: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        ty: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5] & 0x7f,
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]),
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(left, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until `stream` gets a response head or a reset, or the connection ends.
    /// PINGs are answered; SETTINGS acknowledged.
    pub async fn outcome(&mut self, stream: u32, limit: Duration) -> Outcome {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Outcome::Timeout;
            }
            let Some(f) = self.read_frame(left).await else {
                return if tokio::time::Instant::now() >= deadline {
                    Outcome::Timeout
                } else {
                    Outcome::Closed
                };
            };
            match f.ty {
                HEADERS if f.stream == stream => {
                    let mut b = f.payload.as_slice();
                    // PADDED (0x8) and PRIORITY (0x20) prefixes.
                    if f.flags & 0x8 != 0 {
                        b = &b[1..];
                    }
                    if f.flags & 0x20 != 0 {
                        b = &b[5..];
                    }
                    return Outcome::Response(status_of(b));
                }
                RST_STREAM if f.stream == stream => {
                    return Outcome::Reset(f.error_code().unwrap_or(0))
                }
                GOAWAY => return Outcome::GoAway(f.error_code().unwrap_or(0)),
                PING if f.flags & ACK == 0 => {
                    self.send(PING, ACK, 0, &f.payload).await;
                }
                SETTINGS if f.flags & ACK == 0 => {
                    self.send(SETTINGS, ACK, 0, &[]).await;
                }
                _ => {}
            }
        }
    }
}
