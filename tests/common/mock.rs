//! A programmable HTTP/1.1 test server (hyper 1) on 127.0.0.1:0: every request is
//! recorded (with the instant it arrived) and answered by a handler the test can swap at
//! runtime. "Down" mode closes every new connection at once and answers 503 on the ones
//! already open, so a client sees an outage either way.
//!
//! Used for the JWKS endpoint ([`JwksServer`]) and RFC 7662 introspection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Req {
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// Names lowercase, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A field of an `application/x-www-form-urlencoded` body, decoded.
    pub fn form(&self, key: &str) -> Option<String> {
        self.body.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| {
                percent_encoding::percent_decode_str(&v.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    }
}

/// What the handler answers.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(status: u16, v: &Value) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(v).unwrap(),
        }
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Answer {
        self.headers.push((k.into(), v.into()));
        self
    }
}

pub type Handler = Arc<dyn Fn(&Req) -> Answer + Send + Sync>;

struct State {
    handler: Mutex<Handler>,
    requests: Mutex<Vec<Req>>,
    down: AtomicBool,
    /// Connections closed unanswered while down.
    refused: AtomicUsize,
}

/// A running mock server; stops on Drop.
pub struct MockServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockServer {
    pub async fn start(handler: Handler) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            handler: Mutex::new(handler),
            requests: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            refused: AtomicUsize::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if st.down.load(Ordering::SeqCst) {
                    st.refused.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                    continue;
                }
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        MockServer { addr, state, task }
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn set_handler(&self, h: Handler) {
        *self.state.handler.lock().unwrap() = h;
    }

    /// Down: new connections are closed unanswered, open ones get 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Requests answered by the handler (not those refused while down).
    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Connections closed unanswered while down.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Req> {
        self.state.requests.lock().unwrap().clone()
    }
}

async fn handle(
    st: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    if st.down.load(Ordering::SeqCst) {
        st.refused.fetch_add(1, Ordering::SeqCst);
        return Ok(Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("connection", "close")
            .body(Full::new(Bytes::from_static(b"down")))
            .unwrap());
    }
    let rec = Req {
        at,
        method,
        path,
        headers,
        body,
    };
    let handler = st.handler.lock().unwrap().clone();
    let a = handler(&rec);
    st.requests.lock().unwrap().push(rec);
    let mut b = Response::builder().status(StatusCode::from_u16(a.status).unwrap());
    for (k, v) in &a.headers {
        b = b.header(k, v);
    }
    Ok(b.body(Full::new(Bytes::from(a.body))).unwrap())
}

// ---------------------------------------------------------------------------
// JWKS
// ---------------------------------------------------------------------------

struct JwksDoc {
    keys: Vec<Value>,
    max_age: Option<u64>,
    /// Answer this status with an error body instead of the key set.
    failing: Option<u16>,
}

/// A JWKS endpoint (`/jwks.json`) that counts fetches and whose key set and
/// `Cache-Control: max-age` can be switched at runtime.
pub struct JwksServer {
    pub server: MockServer,
    doc: Arc<Mutex<JwksDoc>>,
}

impl JwksServer {
    pub async fn start(keys: Vec<Value>) -> JwksServer {
        let doc = Arc::new(Mutex::new(JwksDoc {
            keys,
            max_age: None,
            failing: None,
        }));
        let d = doc.clone();
        let server = MockServer::start(Arc::new(move |_req: &Req| {
            let d = d.lock().unwrap();
            if let Some(status) = d.failing {
                return Answer::json(status, &json!({"error": "jwks_failing"}));
            }
            let mut a = Answer::json(200, &json!({ "keys": d.keys }));
            if let Some(m) = d.max_age {
                a = a.with_header("cache-control", &format!("public, max-age={m}"));
            }
            a
        }))
        .await;
        JwksServer { server, doc }
    }

    /// `http://127.0.0.1:PORT/jwks.json`.
    pub fn url(&self) -> String {
        self.server.url("/jwks.json")
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        self.doc.lock().unwrap().keys = keys;
    }

    pub fn set_max_age(&self, secs: Option<u64>) {
        self.doc.lock().unwrap().max_age = secs;
    }

    pub fn set_down(&self, down: bool) {
        self.server.set_down(down);
    }

    /// `Some(status)`: every fetch is answered with that status and an error body (the
    /// answer still counts in [`fetches`](Self::fetches)); `None`: the key set again.
    pub fn set_failing(&self, status: Option<u16>) {
        self.doc.lock().unwrap().failing = status;
    }

    /// Successful fetches (answered with the key set).
    pub fn fetches(&self) -> usize {
        self.server.count()
    }

    /// Fetch attempts refused while down.
    pub fn refused(&self) -> usize {
        self.server.refused()
    }

    /// When each successful fetch arrived.
    pub fn fetch_times(&self) -> Vec<Instant> {
        self.server.requests().iter().map(|r| r.at).collect()
    }
}
