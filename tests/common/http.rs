//! HTTP client helpers: a reqwest client with timeouts, a uniform response type, and raw
//! HTTP/1.1 over a TcpStream for exact bytes (duplicate headers, odd header spellings,
//! unnormalised paths, absolute-form targets).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::backend::Echo;

/// A reqwest client for the tests: no proxy from the environment, bounded.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Sends `rb` (panics if the request fails) and reads the whole response.
pub async fn send(rb: reqwest::RequestBuilder) -> Resp {
    Resp::from_reqwest(rb.send().await.expect("request to the sidecar failed")).await
}

/// An `Authorization` value: `Bearer <t>`.
pub fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// A raw HTTP/1.1 request: `Host: app.example.com`, the given header lines, and
/// `Connection: close` unless a Connection header is given.
pub fn raw_req(method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: app.example.com\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    s
}

/// A listener that counts connection attempts (and drops each connection at once):
/// something the sidecar must never contact shows up as a count above zero.
pub async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let t = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            n2.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (a, n, t)
}

/// A response, from reqwest or from raw bytes.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    /// Names lowercase, in order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub async fn from_reqwest(r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): status {} {}",
                self.status,
                self.text()
            )
        })
    }

    /// The backend's echo of the request; panics (with the response) if this response
    /// did not come from the test backend's echo.
    pub fn echo(&self) -> Echo {
        assert_eq!(
            self.header("x-backend"),
            Some("test"),
            "expected the backend's answer, got status {} headers {:?} body {}",
            self.status,
            self.headers,
            self.text()
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {}", self.text()))
    }

    /// Asserts a 200 from the backend and returns its echo.
    pub fn ok_echo(&self) -> Echo {
        assert_eq!(
            self.status,
            200,
            "expected 200 from the backend, got {} headers {:?} body {}",
            self.status,
            self.headers,
            self.text()
        );
        self.echo()
    }

    /// Asserts that this is the sidecar's own error answer: `status`, `X-Auth-Error: code`,
    /// a JSON body `{"error": code, "message": "..."}`, not from the backend, and for 401s
    /// a `WWW-Authenticate: Bearer ...` header (with `error="invalid_token"` unless the
    /// token was missing).
    pub fn assert_error(&self, status: u16, code: &str) {
        let ctx = format!(
            "status {} headers {:?} body {}",
            self.status,
            self.headers,
            self.text()
        );
        assert_eq!(self.status, status, "wrong status for `{code}`: {ctx}");
        assert_ne!(
            self.header("x-backend"),
            Some("test"),
            "answered by the backend: {ctx}"
        );
        assert_eq!(
            self.header("x-auth-error"),
            Some(code),
            "X-Auth-Error: {ctx}"
        );
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {ctx}"));
        assert_eq!(
            v["error"],
            serde_json::Value::String(code.into()),
            "JSON error code: {ctx}"
        );
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "JSON message missing or empty: {ctx}"
        );
        if let Some(ct) = self.header("content-type") {
            assert!(
                ct.starts_with("application/json"),
                "content-type {ct}: {ctx}"
            );
        } else {
            panic!("no content-type on the error: {ctx}");
        }
        if status == 401 {
            let www = self
                .header("www-authenticate")
                .unwrap_or_else(|| panic!("401 without WWW-Authenticate: {ctx}"));
            assert!(www.starts_with("Bearer"), "WWW-Authenticate `{www}`: {ctx}");
            if code != "missing_token" {
                assert!(
                    www.contains("error=\"invalid_token\""),
                    "WWW-Authenticate `{www}`: {ctx}"
                );
                assert!(
                    www.contains("error_description="),
                    "WWW-Authenticate `{www}`: {ctx}"
                );
            }
        }
    }
}

/// Writes `request` (exact bytes) to the proxy and reads one response (bounded).
pub async fn raw(addr: SocketAddr, request: &str) -> Resp {
    raw_request(addr, request.as_bytes()).await
}

/// Writes `request` to `addr` and reads one HTTP/1.1 response: until the body is
/// complete (Content-Length or chunked) or the peer closes. 15 s bound.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> Resp {
    tokio::time::timeout(Duration::from_secs(15), async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write request");
        read_response(&mut s).await
    })
    .await
    .expect("raw HTTP exchange timed out")
}

/// Reads one response from `s`; panics if none can be parsed.
pub async fn read_response(s: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((resp, _used)) = parse_response(&buf, false) {
            return resp;
        }
        let n: usize = s.read(&mut chunk).await.unwrap_or_default();
        if n == 0 {
            if let Some((resp, _)) = parse_response(&buf, true) {
                return resp;
            }
            panic!(
                "connection closed before a full response: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads only the status line and headers (for upgrade answers); returns the response
/// (empty body) and any bytes after the headers.
pub async fn read_head(s: &mut TcpStream) -> (Resp, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let (status, headers) = parse_head(&buf[..end]);
            return (
                Resp {
                    status,
                    headers,
                    body: Vec::new(),
                },
                buf[end + 4..].to_vec(),
            );
        }
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            panic!(
                "connection closed before the response head: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// Parses a full response from `buf`; `eof` means no more bytes will come.
fn parse_response(buf: &[u8], eof: bool) -> Option<(Resp, usize)> {
    let end = find(buf, b"\r\n\r\n")?;
    let (status, headers) = parse_head(&buf[..end]);
    let body_start = end + 4;
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
        return Some((
            Resp {
                status,
                headers,
                body: Vec::new(),
            },
            body_start,
        ));
    }
    if get("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
        let mut body = Vec::new();
        let mut i = body_start;
        loop {
            let line_end = i + find(&buf[i..], b"\r\n")?;
            let size_txt = String::from_utf8_lossy(&buf[i..line_end]);
            let size =
                usize::from_str_radix(size_txt.split(';').next().unwrap().trim(), 16).ok()?;
            let data_start = line_end + 2;
            if size == 0 {
                // Skip trailers up to the final CRLF.
                let rest = &buf[data_start..];
                let t = find(rest, b"\r\n")?;
                let mut j = data_start;
                if t != 0 {
                    j += find(rest, b"\r\n\r\n")? + 2;
                }
                return Some((
                    Resp {
                        status,
                        headers,
                        body,
                    },
                    j + 2,
                ));
            }
            if buf.len() < data_start + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[data_start..data_start + size]);
            i = data_start + size + 2;
        }
    }
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if buf.len() >= body_start + len {
            return Some((
                Resp {
                    status,
                    headers,
                    body: buf[body_start..body_start + len].to_vec(),
                },
                body_start + len,
            ));
        }
        return None;
    }
    if eof {
        return Some((
            Resp {
                status,
                headers,
                body: buf[body_start..].to_vec(),
            },
            buf.len(),
        ));
    }
    None
}
