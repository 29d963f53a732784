//! A small real HTTP/1.1 backend (hyper 1) on 127.0.0.1:0 that records what it received.
//!
//! - any path: echoes method, path, query, every received header (in order, duplicates
//!   kept) and the body as JSON ([`Echo`]);
//! - `/sse`: server-sent events, [`SSE_EVENTS`] of them (`?events=N`: N, at most 1000),
//!   [`SSE_GAP`] apart;
//! - `/upload`: `{"bytes": n, "sha256": "<hex>"}` of the streamed body;
//! - `/slow?ms=N`: sleeps N ms (default 5000) before answering;
//! - `/status/NNN`: answers NNN with the echo body;
//! - `/hop-response`: answers with hop-by-hop headers of its own;
//! - `/ws`: WebSocket echo (answers 101, picks the first offered subprotocol);
//! - `/ws-refuse`: answers an upgrade request with 403, never 101.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

pub const SSE_EVENTS: usize = 5;
pub const SSE_GAP: Duration = Duration::from_millis(300);

type RespBody = BoxBody<Bytes, Infallible>;

/// What the backend saw for one request.
#[derive(Clone, Debug, Deserialize)]
pub struct Echo {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub version: String,
    /// Every header as received, in order; names are lowercase.
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body_len: usize,
    #[serde(default)]
    pub body: String,
}

impl Echo {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Header names starting with `prefix`, reading `_` as `-`, case-insensitively.
    pub fn names_with_prefix(&self, prefix: &str) -> Vec<String> {
        let prefix = prefix.to_ascii_lowercase().replace('_', "-");
        self.headers
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| {
                k.to_ascii_lowercase()
                    .replace('_', "-")
                    .starts_with(&prefix)
            })
            .collect()
    }
}

#[derive(Default)]
struct State {
    count: AtomicUsize,
    seen: Mutex<Vec<Echo>>,
    ws_messages: AtomicUsize,
    /// Connection and tunnel tasks, so [`Backend::kill`] can end them all.
    tasks: Mutex<Vec<AbortHandle>>,
}

impl State {
    fn track(&self, h: AbortHandle) {
        let mut t = self.tasks.lock().unwrap();
        t.retain(|a| !a.is_finished());
        t.push(h);
    }
}

/// A running test backend; the accept loop stops on Drop.
pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start() -> Backend {
        Self::start_serving(false).await
    }

    /// The same backend speaking HTTP/2 only (cleartext, prior knowledge: what the
    /// sidecar's `backend.http2 = true` speaks to an `http://` URL). `/ws` upgrades are
    /// HTTP/1.1-only and not served.
    pub async fn start_h2() -> Backend {
        Self::start_serving(true).await
    }

    /// The HTTP/1.1 backend on a fixed address (SO_REUSEADDR), e.g. the address of a
    /// backend that was [`kill`](Self::kill)ed: a restart on the same port. Retries the
    /// bind for up to 2 s.
    pub async fn start_on(addr: SocketAddr) -> Backend {
        let mut last = None;
        for _ in 0..100 {
            let bound = TcpSocket::new_v4().and_then(|s| {
                s.set_reuseaddr(true)?;
                s.bind(addr)?;
                s.listen(1024)
            });
            match bound {
                Ok(l) => return Self::serve(l, false),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot listen on {addr} again: {last:?}");
    }

    /// Stops like a killed process: the listener closes and every open connection
    /// (keep-alive, streaming response, WebSocket tunnel) is dropped.
    pub fn kill(self) {
        self.task.abort();
        for t in self.state.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn start_serving(h2: bool) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Self::serve(listener, h2)
    }

    fn serve(listener: TcpListener, h2: bool) -> Backend {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let st2 = st.clone();
                let h = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                        return;
                    }
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
                st2.track(h.abort_handle());
            }
        });
        Backend { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests reached the backend.
    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// Every request the backend saw (bodies of `/upload` are not kept).
    pub fn seen(&self) -> Vec<Echo> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The last request the backend saw.
    pub fn last(&self) -> Echo {
        self.seen()
            .last()
            .cloned()
            .expect("the backend saw no request")
    }

    /// WebSocket messages the backend received on tunnels.
    pub fn ws_messages(&self) -> usize {
        self.state.ws_messages.load(Ordering::SeqCst)
    }
}

/// An address where nothing listens (a port bound, then closed).
pub fn refusing_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).boxed()
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<RespBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-backend", "test")
        .body(full(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

fn describe(req: &Request<Incoming>) -> Echo {
    Echo {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len: 0,
        body: String::new(),
    }
}

fn echo_json(e: &Echo) -> serde_json::Value {
    serde_json::json!({
        "method": e.method,
        "path": e.path,
        "query": e.query,
        "version": e.version,
        "headers": e.headers,
        "body_len": e.body_len,
        "body": e.body,
    })
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

async fn handle(
    st: Arc<State>,
    mut req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    st.count.fetch_add(1, Ordering::SeqCst);
    let mut echo = describe(&req);
    let path = req.uri().path().to_string();
    let is_upgrade = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));

    match path.as_str() {
        "/upload" => {
            st.seen.lock().unwrap().push(echo);
            let mut hasher = Sha256::new();
            let mut n: u64 = 0;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(d) = f.into_data() {
                            n += d.len() as u64;
                            hasher.update(&d);
                        }
                    }
                    Err(e) => {
                        return Ok(json_response(
                            StatusCode::BAD_REQUEST,
                            &serde_json::json!({"error": format!("body: {e}"), "bytes": n}),
                        ))
                    }
                }
            }
            let hex: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"bytes": n, "sha256": hex}),
            ))
        }
        "/sse" => {
            st.seen.lock().unwrap().push(echo);
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
            let events = query_param(&req, "events")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(SSE_EVENTS)
                .min(1000);
            tokio::spawn(async move {
                for i in 1..=events {
                    if i > 1 {
                        tokio::time::sleep(SSE_GAP).await;
                    }
                    let ev = format!("id: {i}\nevent: tick\ndata: event {i}\n\n");
                    if tx.send(Bytes::from(ev)).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .header("x-backend", "test")
                .body(ChannelBody { rx }.boxed())
                .unwrap())
        }
        "/slow" => {
            st.seen.lock().unwrap().push(echo.clone());
            let ms = query_param(&req, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(5000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json_response(StatusCode::OK, &echo_json(&echo)))
        }
        "/hop-response" => {
            st.seen.lock().unwrap().push(echo);
            Ok(Response::builder()
                .header("connection", "x-hop-resp")
                .header("x-hop-resp", "must-not-pass")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .header("x-end-to-end", "kept")
                .header("x-backend", "test")
                .body(full("hop"))
                .unwrap())
        }
        "/ws" | "/ws-refuse" if is_upgrade => {
            st.seen.lock().unwrap().push(echo);
            if path == "/ws-refuse" {
                return Ok(json_response(
                    StatusCode::FORBIDDEN,
                    &serde_json::json!({"refused": true}),
                ));
            }
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return Ok(json_response(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "no key"}),
                ));
            };
            let protocol = req
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.split(',')
                        .map(str::trim)
                        .find(|p| !p.is_empty())
                        .map(str::to_string)
                });
            let on_upgrade = hyper::upgrade::on(&mut req);
            let st2 = st.clone();
            let tunnel = tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(_) | Message::Binary(_) => {
                            st2.ws_messages.fetch_add(1, Ordering::SeqCst);
                            if ws.send(msg).await.is_err() {
                                break;
                            }
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
            });
            st.track(tunnel.abort_handle());
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let mut b = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .header("sec-websocket-accept", accept)
                .header("x-backend", "test");
            if let Some(p) = protocol {
                b = b.header("sec-websocket-protocol", p);
            }
            Ok(b.body(full(Bytes::new())).unwrap())
        }
        _ => {
            // Read the whole (small) body for the echo.
            let mut body = req.into_body();
            let mut data = Vec::new();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(d) = f.into_data() {
                            echo.body_len += d.len();
                            if data.len() < 64 * 1024 {
                                data.extend_from_slice(&d);
                            }
                        }
                    }
                    Err(_) => break,
                }
            }
            echo.body = String::from_utf8_lossy(&data).into_owned();
            st.seen.lock().unwrap().push(echo.clone());
            let status = path
                .strip_prefix("/status/")
                .and_then(|s| s.parse::<u16>().ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            let mut resp = json_response(status, &echo_json(&echo));
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    "www-authenticate",
                    "Basic realm=\"backend\"".parse().unwrap(),
                );
            }
            Ok(resp)
        }
    }
}

/// A response body fed from a channel, one frame per message, as soon as it is sent.
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}
