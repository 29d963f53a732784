//! Mocks of vendor APIs that the generic [`super::token_service`] cannot play: real
//! HTTP/1.1 servers (hyper 1) on 127.0.0.1:0 speaking the vendor's documented shape and
//! counting what they receive.
//!
//! [`Mindset`]: `POST /api-authenticate-embedded-user` (docs.mindset.ai, "Authentication"):
//! header `x-api-key`, JSON body `userEmail` and optional `addToAccounts:
//! [{"accountUid": …}]`; answers `{"authToken": "<opaque>"}` (not a JWT), creating the
//! user on first sight. A wrong key is `401`, a body without `userEmail` `400`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::token_service::Recorded;

/// The path of Mindset's authentication call.
pub const MINDSET_PATH: &str = "/api-authenticate-embedded-user";

/// How the mock answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VendorMode {
    Normal,
    /// 200 with an HTML page.
    Garbage,
    /// 500 with a JSON error.
    Status500,
}

struct MindsetState {
    api_key: String,
    mode: Mutex<VendorMode>,
    latency: Mutex<Duration>,
    calls: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    /// email → the authToken issued to it.
    issued: Mutex<Vec<(String, String)>>,
}

/// A running Mindset mock; dropping it stops the listener.
pub struct Mindset {
    pub addr: SocketAddr,
    state: Arc<MindsetState>,
    task: JoinHandle<()>,
}

impl Drop for Mindset {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mindset {
    pub async fn start(api_key: &str) -> Mindset {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MindsetState {
            api_key: api_key.into(),
            mode: Mutex::new(VendorMode::Normal),
            latency: Mutex::new(Duration::ZERO),
            calls: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| mindset(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Mindset { addr, state, task }
    }

    /// `http://127.0.0.1:PORT/api-authenticate-embedded-user`.
    pub fn url(&self) -> String {
        format!("http://{}{MINDSET_PATH}", self.addr)
    }

    pub fn set_mode(&self, m: VendorMode) {
        *self.state.mode.lock().unwrap() = m;
    }

    pub fn set_latency(&self, d: Duration) {
        *self.state.latency.lock().unwrap() = d;
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The authTokens issued, (email, token), oldest first.
    pub fn issued(&self) -> Vec<(String, String)> {
        self.state.issued.lock().unwrap().clone()
    }
}

fn answer(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap()
}

fn json_answer(status: u16, v: Value) -> Response<Full<Bytes>> {
    answer(status, "application/json", v.to_string())
}

async fn mindset(
    st: Arc<MindsetState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let rec = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    if rec.path != MINDSET_PATH || rec.method != "POST" {
        return Ok(json_answer(404, json!({"error": "Not Found"})));
    }
    let n = st.calls.fetch_add(1, Ordering::SeqCst);
    st.requests.lock().unwrap().push(rec.clone());
    let latency = *st.latency.lock().unwrap();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match *st.mode.lock().unwrap() {
        VendorMode::Normal => {}
        VendorMode::Garbage => {
            return Ok(answer(
                200,
                "text/html",
                "<html><body>maintenance</body></html>",
            ))
        }
        VendorMode::Status500 => {
            return Ok(json_answer(500, json!({"error": "Internal Server Error"})))
        }
    }
    if rec.header("x-api-key") != Some(st.api_key.as_str()) {
        return Ok(json_answer(401, json!({"error": "Unauthorized"})));
    }
    let Ok(doc) = serde_json::from_str::<Value>(&rec.body) else {
        return Ok(json_answer(400, json!({"error": "Invalid JSON body"})));
    };
    let Some(email) = doc["userEmail"].as_str().filter(|e| e.contains('@')) else {
        return Ok(json_answer(400, json!({"error": "userEmail is required"})));
    };
    if let Some(accounts) = doc.get("addToAccounts") {
        let ok = accounts
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x["accountUid"].is_string()));
        if !ok {
            return Ok(json_answer(
                400,
                json!({"error": "addToAccounts is malformed"}),
            ));
        }
    }
    // Opaque on purpose: no dots, nothing a JWT parser could read.
    let token = format!("mst_{:08x}{:04x}", email.len() * 7919 + n, n);
    st.issued
        .lock()
        .unwrap()
        .push((email.to_string(), token.clone()));
    Ok(json_answer(200, json!({"authToken": token})))
}
