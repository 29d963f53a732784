//! A backend on a raw `TcpListener` for the smuggling and header tests: it keeps every
//! byte it received, parses HTTP/1.1 requests itself (Content-Length and chunked
//! framing, trailers included) and counts them, so a test can tell a request that the
//! proxy really sent from one made of body bytes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the raw backend answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawMode {
    /// `200 OK` with a small body, keep-alive.
    Ok,
    /// `101 Switching Protocols` (`Upgrade: h2c`) to every request, whatever was asked.
    SwitchProtocols,
}

/// One request as the raw backend parsed it.
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// The request line, e.g. `GET /x HTTP/1.1`.
    pub line: String,
    /// Header lines as received (name as sent, value trimmed), in order.
    pub headers: Vec<(String, String)>,
    /// The decoded body (chunks joined).
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// False when the connection ended before the body was complete.
    pub complete: bool,
    /// Every byte of this request as received.
    pub raw: Vec<u8>,
}

impl RawRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<RawRequest>>,
    bytes: Mutex<Vec<u8>>,
    connections: AtomicUsize,
    mode: Mutex<Option<RawMode>>,
}

/// A running raw backend; the accept loop stops on Drop.
pub struct RawBackend {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    pub async fn start() -> RawBackend {
        Self::start_with(RawMode::Ok).await
    }

    pub async fn start_with(mode: RawMode) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind raw");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        *state.mode.lock().unwrap() = Some(mode);
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                tokio::spawn(serve(stream, st));
            }
        });
        RawBackend { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests whose head was parsed (complete or not).
    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<RawRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Every byte received on every connection, in arrival order per read.
    pub fn bytes(&self) -> Vec<u8> {
        self.state.bytes.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

enum Parsed {
    /// A full request and how many bytes it used.
    Done(RawRequest, usize),
    /// More bytes are needed.
    Partial,
    /// The bytes are not HTTP/1.1 at all.
    Garbage,
}

fn parse(buf: &[u8]) -> Parsed {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Parsed::Partial;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("").to_string();
    if line.split(' ').count() != 3 {
        return Parsed::Garbage;
    }
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let start = end + 4;
    let mut req = RawRequest {
        line,
        headers: headers.clone(),
        body: Vec::new(),
        trailers: Vec::new(),
        complete: false,
        raw: Vec::new(),
    };
    if get("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked")) {
        let mut i = start;
        loop {
            let Some(le) = find(&buf[i..], b"\r\n") else {
                return Parsed::Partial;
            };
            let size_line = String::from_utf8_lossy(&buf[i..i + le]).into_owned();
            let Ok(size) =
                usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            else {
                return Parsed::Garbage;
            };
            let data = i + le + 2;
            if size == 0 {
                // Trailers until an empty line.
                let mut j = data;
                loop {
                    let Some(te) = find(&buf[j..], b"\r\n") else {
                        return Parsed::Partial;
                    };
                    if te == 0 {
                        j += 2;
                        break;
                    }
                    let t = String::from_utf8_lossy(&buf[j..j + te]).into_owned();
                    if let Some((k, v)) = t.split_once(':') {
                        req.trailers.push((k.to_string(), v.trim().to_string()));
                    }
                    j += te + 2;
                }
                req.complete = true;
                req.raw = buf[..j].to_vec();
                return Parsed::Done(req, j);
            }
            if buf.len() < data + size + 2 {
                return Parsed::Partial;
            }
            req.body.extend_from_slice(&buf[data..data + size]);
            i = data + size + 2;
        }
    }
    let len = get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if buf.len() < start + len {
        return Parsed::Partial;
    }
    req.body = buf[start..start + len].to_vec();
    req.complete = true;
    req.raw = buf[..start + len].to_vec();
    Parsed::Done(req, start + len)
}

async fn serve(mut s: TcpStream, st: Arc<State>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mode = st.mode.lock().unwrap().unwrap_or(RawMode::Ok);
    loop {
        // Answer every complete request already buffered.
        loop {
            match parse(&buf) {
                Parsed::Done(req, used) => {
                    buf.drain(..used);
                    let line = req.line.clone();
                    st.requests.lock().unwrap().push(req);
                    let answer = match mode {
                        RawMode::Ok => {
                            let body = format!("{{\"raw\":true,\"line\":{line:?}}}");
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Backend: raw\r\nContent-Length: {}\r\n\r\n{}",
                                body.len(),
                                body
                            )
                        }
                        RawMode::SwitchProtocols => "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nX-Backend: raw\r\n\r\n".to_string(),
                    };
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
                Parsed::Partial => break,
                Parsed::Garbage => {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
            }
        }
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if n == 0 {
            // A head that arrived without its whole body still counts as a request.
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let line = lines.next().unwrap_or("").to_string();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                    .collect();
                st.requests.lock().unwrap().push(RawRequest {
                    line,
                    headers,
                    body: buf[end + 4..].to_vec(),
                    trailers: Vec::new(),
                    complete: false,
                    raw: buf.clone(),
                });
            }
            return;
        }
        st.bytes.lock().unwrap().extend_from_slice(&chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
    }
}
