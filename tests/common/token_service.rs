//! A mock token service: a real HTTP/1.1 server (hyper 1) on 127.0.0.1:0 with two
//! endpoints, *refresh* and *initiate*, whose request and response shapes are
//! configurable ([`Shape`]) so that one mock can play LikeMinds, Mindset, Kustomer-style
//! or a plain OAuth-ish service.
//!
//! - Access tokens are HS256 JWTs signed with the test secret ([`HS_SECRET`]), so the
//!   sidecar under test verifies them.
//! - Refresh tokens rotate: each refresh issues a new one and marks the old one used; a
//!   used (or unknown) refresh token is refused with 400 `{"error":"invalid_grant"}`
//!   (reuse detection, as real token services do). With
//!   [`TokenService::set_family_revocation`], reusing a rotated refresh token also
//!   revokes its whole family (every refresh token descended from the same login,
//!   including the one the first caller got), as OAuth 2.0 security guidance asks.
//! - Initiate checks the API key and puts the identity it was asked for into the new
//!   token's `sub`.
//! - Every call is counted per endpoint, and the last request (headers and body) kept.
//! - Faults at runtime: refuse connections (the listener is closed, and every open
//!   connection with it), hang, 500, 429, garbage, oversized answers, a token for another
//!   user, a token signed with the wrong key, any rejection status; plus latency.
//!
//! Faults never consume refresh tokens, so a pair that met a fault still works once the
//! service is back (which is what the sidecar promises its clients).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{AbortHandle, JoinHandle};

use super::tokens::HS_SECRET;

/// The secret of the "wrong key" fault: tokens signed with it must never verify.
pub const WRONG_SECRET: &str = "token-service-wrong-key-never-trust-0123456789abcdef";

/// The user a `Mode::OtherUser` answer names.
pub const OTHER_USER: &str = "mallory";

/// Size of a `Mode::Oversized` answer (over the sidecar's default 64 KiB cap).
pub const OVERSIZED_BYTES: usize = 80 * 1024;

/// How an endpoint behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Does its job.
    Normal,
    /// Never answers (until the service is dropped).
    Hang,
    /// 500 with a JSON error body.
    Status500,
    /// 429 with `Retry-After: 1`.
    Status429,
    /// 200 with an HTML page.
    Garbage,
    /// 200 with a JSON answer (holding valid tokens) larger than [`OVERSIZED_BYTES`].
    Oversized,
    /// 200 with a valid token for [`OTHER_USER`].
    OtherUser,
    /// 200 with a token signed with [`WRONG_SECRET`].
    WrongKey,
    /// Refuses with this status and an `invalid_grant` body (status 200 = an OAuth-style
    /// error object in a 200 answer).
    Reject(u16),
}

/// Request and response shapes of a vendor's API.
#[derive(Clone, Debug)]
pub struct Shape {
    pub refresh_path: String,
    pub initiate_path: String,
    /// JSON pointer of the refresh token in the refresh request body (a form body is
    /// read by the pointer's last segment).
    pub refresh_token_field: String,
    /// Header and value the refresh endpoint requires, if any.
    pub refresh_api_key: Option<(String, String)>,
    /// Where the new tokens go in the refresh answer.
    pub refresh_access_ptr: String,
    pub refresh_refresh_ptr: Option<String>,
    /// Header and value the initiate endpoint requires.
    pub initiate_api_key: (String, String),
    /// JSON pointers read (in order, first non-empty string wins) for the identity an
    /// initiate call asks for; it becomes the new token's `sub`.
    pub identity_fields: Vec<String>,
    /// JSON pointers read for the new token's `name` claim.
    pub name_fields: Vec<String>,
    /// Where the new tokens go in the initiate answer (`None`: no refresh token issued).
    pub initiate_access_ptr: String,
    pub initiate_refresh_ptr: Option<String>,
    /// Fields merged into every successful answer (e.g. `{"success": true}`).
    pub envelope: Value,
}

impl Shape {
    /// The sidecar's defaults: `/refresh` answering `{access_token, refresh_token}`,
    /// `/initiate` (x-api-key, `user_unique_id`) answering under `/data`.
    pub fn default_with_key(api_key: &str) -> Shape {
        Shape {
            refresh_path: "/refresh".into(),
            initiate_path: "/initiate".into(),
            refresh_token_field: "/refresh_token".into(),
            refresh_api_key: None,
            refresh_access_ptr: "/access_token".into(),
            refresh_refresh_ptr: Some("/refresh_token".into()),
            initiate_api_key: ("x-api-key".into(), api_key.into()),
            identity_fields: vec!["/user_unique_id".into()],
            name_fields: vec!["/user_name".into(), "/name".into()],
            initiate_access_ptr: "/data/access_token".into(),
            initiate_refresh_ptr: Some("/data/refresh_token".into()),
            envelope: json!({}),
        }
    }
}

/// One request the service received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Names lowercase, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "token service request body is not JSON ({e}): {}",
                self.body
            )
        })
    }
}

/// A pair the service issued (or registered for a test to start from).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub access: String,
    pub refresh: String,
}

#[derive(Clone, Debug)]
struct Grant {
    sub: String,
    email: String,
    name: String,
    used: bool,
    /// The login this refresh token descends from (rotation keeps it).
    family: u64,
    /// Revoked with its family after a reuse.
    revoked: bool,
}

struct State {
    shape: Mutex<Shape>,
    refresh_mode: Mutex<Mode>,
    initiate_mode: Mutex<Mode>,
    latency_ms: AtomicU64,
    access_ttl: AtomicU64,
    refresh_calls: AtomicUsize,
    initiate_calls: AtomicUsize,
    other_calls: AtomicUsize,
    answered: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    grants: Mutex<HashMap<String, Grant>>,
    issued: Mutex<Vec<Pair>>,
    serial: AtomicU64,
    nonce: u64,
    /// Reuse of a rotated refresh token revokes its family.
    family_revocation: std::sync::atomic::AtomicBool,
    /// Families revoked so far.
    families_revoked: AtomicUsize,
}

/// A running mock token service. Dropping it closes the listener and every connection.
pub struct TokenService {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: Mutex<Option<JoinHandle<()>>>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Drop for TokenService {
    fn drop(&mut self) {
        if let Some(t) = self.accept.lock().unwrap().take() {
            t.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

fn bind_reuse(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

impl TokenService {
    /// Starts with the default shape and `api_key` as the initiate API key.
    pub async fn start(api_key: &str) -> TokenService {
        Self::start_with(Shape::default_with_key(api_key)).await
    }

    pub async fn start_with(shape: Shape) -> TokenService {
        let listener = bind_reuse("127.0.0.1:0".parse().unwrap()).expect("bind token service");
        let addr = listener.local_addr().unwrap();
        let nonce = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u16(addr.port());
            h.finish()
        };
        let state = Arc::new(State {
            shape: Mutex::new(shape),
            refresh_mode: Mutex::new(Mode::Normal),
            initiate_mode: Mutex::new(Mode::Normal),
            latency_ms: AtomicU64::new(0),
            access_ttl: AtomicU64::new(600),
            refresh_calls: AtomicUsize::new(0),
            initiate_calls: AtomicUsize::new(0),
            other_calls: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            grants: Mutex::new(HashMap::new()),
            issued: Mutex::new(Vec::new()),
            serial: AtomicU64::new(0),
            nonce,
            family_revocation: std::sync::atomic::AtomicBool::new(false),
            families_revoked: AtomicUsize::new(0),
        });
        let ts = TokenService {
            addr,
            state,
            accept: Mutex::new(None),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        ts.spawn_accept(listener);
        ts
    }

    fn spawn_accept(&self, listener: TcpListener) {
        let st = self.state.clone();
        let conns = self.conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let h = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                let mut c = conns.lock().unwrap();
                c.retain(|a| !a.is_finished());
                c.push(h.abort_handle());
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn refresh_url(&self) -> String {
        self.url(&self.state.shape.lock().unwrap().refresh_path.clone())
    }

    pub fn initiate_url(&self) -> String {
        self.url(&self.state.shape.lock().unwrap().initiate_path.clone())
    }

    // -- faults -----------------------------------------------------------------

    /// Sets the behaviour of both endpoints.
    pub fn set_mode(&self, m: Mode) {
        *self.state.refresh_mode.lock().unwrap() = m;
        *self.state.initiate_mode.lock().unwrap() = m;
    }

    pub fn set_refresh_mode(&self, m: Mode) {
        *self.state.refresh_mode.lock().unwrap() = m;
    }

    pub fn set_initiate_mode(&self, m: Mode) {
        *self.state.initiate_mode.lock().unwrap() = m;
    }

    /// Every answer waits this long first.
    pub fn set_latency(&self, d: Duration) {
        self.state
            .latency_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Off by default: reuse of a rotated refresh token is refused, nothing more. On:
    /// the reuse also revokes every refresh token of the same family (issued from the
    /// same login, by rotation), so the pair the first caller got stops working too.
    pub fn set_family_revocation(&self, on: bool) {
        self.state.family_revocation.store(on, Ordering::SeqCst);
    }

    /// Lifetime of the access tokens the service issues (default 600 s).
    pub fn set_access_ttl(&self, secs: u64) {
        self.state.access_ttl.store(secs, Ordering::SeqCst);
    }

    /// Stops listening: the listener is closed and every open connection dropped, so a
    /// connection attempt is refused.
    pub async fn refuse(&self) {
        let task = self.accept.lock().unwrap().take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        let conns: Vec<AbortHandle> = self.conns.lock().unwrap().drain(..).collect();
        for c in &conns {
            c.abort();
        }
        // Let the aborted connection tasks run their drops (closing the sockets).
        for _ in 0..50 {
            if conns.iter().all(|c| c.is_finished()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            tokio::net::TcpStream::connect(self.addr).await.is_err(),
            "the token service still accepts connections after refuse()"
        );
    }

    /// Listens again on the same port after [`refuse`](Self::refuse).
    pub async fn resume(&self) {
        if self.accept.lock().unwrap().is_some() {
            return;
        }
        let mut last = None;
        for _ in 0..100 {
            match bind_reuse(self.addr) {
                Ok(l) => {
                    self.spawn_accept(l);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot listen on {} again: {last:?}", self.addr);
    }

    // -- observations -----------------------------------------------------------

    pub fn refresh_calls(&self) -> usize {
        self.state.refresh_calls.load(Ordering::SeqCst)
    }

    pub fn initiate_calls(&self) -> usize {
        self.state.initiate_calls.load(Ordering::SeqCst)
    }

    /// Every request, on any path.
    pub fn calls(&self) -> usize {
        self.refresh_calls() + self.initiate_calls() + self.state.other_calls.load(Ordering::SeqCst)
    }

    /// Answers sent (after the latency), on any path.
    pub fn answered(&self) -> usize {
        self.state.answered.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    fn last_on(&self, path: &str) -> Option<Recorded> {
        self.requests().into_iter().rev().find(|r| r.path == path)
    }

    /// The last request to the refresh endpoint.
    pub fn last_refresh(&self) -> Option<Recorded> {
        let p = self.state.shape.lock().unwrap().refresh_path.clone();
        self.last_on(&p)
    }

    /// The last request to the initiate endpoint.
    pub fn last_initiate(&self) -> Option<Recorded> {
        let p = self.state.shape.lock().unwrap().initiate_path.clone();
        self.last_on(&p)
    }

    /// Every pair the service issued (by refresh or initiate), oldest first.
    pub fn issued(&self) -> Vec<Pair> {
        self.state.issued.lock().unwrap().clone()
    }

    pub fn last_issued(&self) -> Option<Pair> {
        self.issued().last().cloned()
    }

    /// Whether `refresh` was revoked with its family (after a reuse).
    pub fn is_revoked(&self, refresh: &str) -> bool {
        self.state
            .grants
            .lock()
            .unwrap()
            .get(refresh)
            .is_some_and(|g| g.revoked)
    }

    /// How many families a reuse revoked.
    pub fn families_revoked(&self) -> usize {
        self.state.families_revoked.load(Ordering::SeqCst)
    }

    /// Whether the service considers `refresh` used (rotated away).
    pub fn is_used(&self, refresh: &str) -> bool {
        self.state
            .grants
            .lock()
            .unwrap()
            .get(refresh)
            .is_some_and(|g| g.used)
    }

    // -- pairs for tests to start from ---------------------------------------------

    /// A live refresh token for `sub` (email `sub@example.com` unless `sub` is an email).
    pub fn register_refresh(&self, sub: &str) -> String {
        let (email, name) = default_profile(sub);
        self.state.new_refresh(sub, &email, &name, None)
    }

    /// A pair for `sub` whose access token expired `expired_ago` seconds ago (valid
    /// signature), with a live refresh token.
    pub fn expired_pair_for(&self, sub: &str, expired_ago: u64) -> Pair {
        let (email, name) = default_profile(sub);
        let now = now();
        let access = self.state.sign(
            &json!({
                "sub": sub,
                "email": email,
                "name": name,
                "iat": now - expired_ago - 600,
                "exp": now - expired_ago,
                "jti": self.state.next_serial(),
            }),
            HS_SECRET.as_bytes(),
        );
        Pair {
            access,
            refresh: self.state.new_refresh(sub, &email, &name, None),
        }
    }

    /// A pair for `sub` whose access token expired 10 minutes ago.
    pub fn expired_pair(&self, sub: &str) -> Pair {
        self.expired_pair_for(sub, 600)
    }
}

fn default_profile(sub: &str) -> (String, String) {
    let email = if sub.contains('@') {
        sub.to_string()
    } else {
        format!("{sub}@example.com")
    };
    (email, format!("User {sub}"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl State {
    fn next_serial(&self) -> u64 {
        self.serial.fetch_add(1, Ordering::SeqCst)
    }

    fn sign(&self, claims: &Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .expect("sign")
    }

    fn access_for(&self, sub: &str, email: &str, name: &str, secret: &[u8]) -> String {
        let now = now();
        let mut c = json!({
            "sub": sub,
            "iat": now,
            "exp": now + self.access_ttl.load(Ordering::SeqCst),
            "jti": format!("at-{}", self.next_serial()),
        });
        if !email.is_empty() {
            c["email"] = json!(email);
        }
        if !name.is_empty() {
            c["name"] = json!(name);
        }
        self.sign(&c, secret)
    }

    /// A new refresh token: of `family` (a rotation), or the first of a new one (a login).
    fn new_refresh(&self, sub: &str, email: &str, name: &str, family: Option<u64>) -> String {
        let serial = self.next_serial();
        let rt = format!("rt-{:016x}-{serial}", self.nonce);
        self.grants.lock().unwrap().insert(
            rt.clone(),
            Grant {
                sub: sub.into(),
                email: email.into(),
                name: name.into(),
                used: false,
                family: family.unwrap_or(serial),
                revoked: false,
            },
        );
        rt
    }
}

type Body = Full<Bytes>;

fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", content_type)
        .header("x-token-service", "mock")
        .body(Full::new(body.into()))
        .unwrap()
}

fn json_resp(status: u16, v: &Value) -> Response<Body> {
    respond(status, "application/json", serde_json::to_vec(v).unwrap())
}

/// Sets `ptr` (a JSON pointer) in `doc` to `v`, creating objects on the way.
fn put(doc: &mut Value, ptr: &str, v: Value) {
    let mut cur = doc;
    let segs: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
    for (i, seg) in segs.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let obj = cur.as_object_mut().unwrap();
        if i + 1 == segs.len() {
            obj.insert(seg.to_string(), v);
            return;
        }
        cur = obj.entry(seg.to_string()).or_insert_with(|| json!({}));
    }
}

fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn first_string(doc: &Value, ptrs: &[String]) -> Option<String> {
    ptrs.iter().find_map(|p| {
        doc.pointer(p)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    })
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers: Vec<(String, String)> = req
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
    let rec = Recorded {
        method,
        path: path.clone(),
        headers,
        body,
    };
    let shape = st.shape.lock().unwrap().clone();
    let (endpoint, mode) = if path == shape.refresh_path {
        st.refresh_calls.fetch_add(1, Ordering::SeqCst);
        ("refresh", *st.refresh_mode.lock().unwrap())
    } else if path == shape.initiate_path {
        st.initiate_calls.fetch_add(1, Ordering::SeqCst);
        ("initiate", *st.initiate_mode.lock().unwrap())
    } else {
        st.other_calls.fetch_add(1, Ordering::SeqCst);
        ("other", Mode::Normal)
    };
    st.requests.lock().unwrap().push(rec.clone());

    let latency = st.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let resp = answer(&st, &shape, endpoint, mode, &rec).await;
    st.answered.fetch_add(1, Ordering::SeqCst);
    Ok(resp)
}

async fn answer(
    st: &State,
    shape: &Shape,
    endpoint: &str,
    mode: Mode,
    rec: &Recorded,
) -> Response<Body> {
    if endpoint == "other" {
        return json_resp(404, &json!({"error": "not_found"}));
    }
    let (access_ptr, refresh_ptr) = if endpoint == "refresh" {
        (
            shape.refresh_access_ptr.clone(),
            shape.refresh_refresh_ptr.clone(),
        )
    } else {
        (
            shape.initiate_access_ptr.clone(),
            shape.initiate_refresh_ptr.clone(),
        )
    };
    let tokens_answer = |access: String, refresh: Option<String>| -> Value {
        let mut doc = shape.envelope.clone();
        if !doc.is_object() {
            doc = json!({});
        }
        put(&mut doc, &access_ptr, json!(access));
        if let (Some(p), Some(r)) = (&refresh_ptr, refresh) {
            put(&mut doc, p, json!(r));
        }
        doc
    };
    match mode {
        Mode::Normal => {}
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return json_resp(500, &json!({"error": "hung"}));
        }
        Mode::Status500 => return json_resp(500, &json!({"error": "server_error"})),
        Mode::Status429 => {
            let mut r = json_resp(429, &json!({"error": "rate_limited"}));
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("1"));
            return r;
        }
        Mode::Garbage => {
            return respond(
                200,
                "text/html",
                "<html><body>502 Bad Gateway (upstream proxy)</body></html>",
            )
        }
        Mode::Oversized => {
            let mut doc = tokens_answer(
                st.access_for("alice", "alice@example.com", "", HS_SECRET.as_bytes()),
                Some(format!("rt-oversized-{}", st.next_serial())),
            );
            doc["padding"] = json!("x".repeat(OVERSIZED_BYTES));
            return json_resp(200, &doc);
        }
        Mode::OtherUser => {
            let access = st.access_for(
                OTHER_USER,
                "mallory@example.com",
                "Mallory",
                HS_SECRET.as_bytes(),
            );
            return json_resp(
                200,
                &tokens_answer(access, Some(format!("rt-other-{}", st.next_serial()))),
            );
        }
        Mode::WrongKey => {
            // The right user, the wrong key.
            let sub = if endpoint == "refresh" {
                body_refresh_token(shape, rec)
                    .and_then(|rt| st.grants.lock().unwrap().get(&rt).map(|g| g.sub.clone()))
                    .unwrap_or_else(|| "alice".into())
            } else {
                "alice".into()
            };
            let access = st.access_for(&sub, "", "", WRONG_SECRET.as_bytes());
            return json_resp(
                200,
                &tokens_answer(access, Some(format!("rt-wrongkey-{}", st.next_serial()))),
            );
        }
        Mode::Reject(status) => {
            let err = if endpoint == "refresh" {
                "invalid_grant"
            } else {
                "access_denied"
            };
            return json_resp(
                status,
                &json!({"error": err, "error_description": "refused by the mock"}),
            );
        }
    }

    if endpoint == "refresh" {
        if let Some((h, v)) = &shape.refresh_api_key {
            if rec.header(h) != Some(v.as_str()) {
                return json_resp(401, &json!({"error": "invalid_client"}));
            }
        }
        let Some(rt) = body_refresh_token(shape, rec) else {
            return json_resp(400, &json!({"error": "invalid_request"}));
        };
        let grant = {
            let mut grants = st.grants.lock().unwrap();
            match grants.get_mut(&rt) {
                Some(g) if !g.used && !g.revoked => {
                    g.used = true;
                    Some(g.clone())
                }
                // Reuse of a rotated refresh token: with family revocation, every token
                // of its family dies (a thief and the user can no longer both go on).
                Some(g) if st.family_revocation.load(Ordering::SeqCst) => {
                    let family = g.family;
                    let mut any = false;
                    for g in grants.values_mut().filter(|g| g.family == family) {
                        any |= !g.revoked;
                        g.revoked = true;
                    }
                    if any {
                        st.families_revoked.fetch_add(1, Ordering::SeqCst);
                    }
                    None
                }
                // Reuse of a rotated refresh token, or one we never issued.
                _ => None,
            }
        };
        let Some(g) = grant else {
            return json_resp(
                400,
                &json!({"error": "invalid_grant", "error_description": "refresh token reused or unknown"}),
            );
        };
        let access = st.access_for(&g.sub, &g.email, &g.name, HS_SECRET.as_bytes());
        let new_rt = refresh_ptr
            .as_ref()
            .map(|_| st.new_refresh(&g.sub, &g.email, &g.name, Some(g.family)));
        st.issued.lock().unwrap().push(Pair {
            access: access.clone(),
            refresh: new_rt.clone().unwrap_or_else(|| rt.clone()),
        });
        return json_resp(200, &tokens_answer(access, new_rt));
    }

    // initiate
    let (h, v) = &shape.initiate_api_key;
    if rec.header(h) != Some(v.as_str()) {
        return json_resp(401, &json!({"error": "invalid_api_key"}));
    }
    let Ok(doc) = serde_json::from_str::<Value>(&rec.body) else {
        return json_resp(400, &json!({"error": "invalid_request", "why": "not JSON"}));
    };
    let Some(sub) = first_string(&doc, &shape.identity_fields) else {
        return json_resp(
            400,
            &json!({"error": "invalid_request", "why": "no identity"}),
        );
    };
    let email = first_string(&doc, &["/email".into(), "/userEmail".into()]).unwrap_or_else(|| {
        if sub.contains('@') {
            sub.clone()
        } else {
            String::new()
        }
    });
    let name = first_string(&doc, &shape.name_fields).unwrap_or_default();
    let access = st.access_for(&sub, &email, &name, HS_SECRET.as_bytes());
    let rt = refresh_ptr
        .as_ref()
        .map(|_| st.new_refresh(&sub, &email, &name, None));
    st.issued.lock().unwrap().push(Pair {
        access: access.clone(),
        refresh: rt.clone().unwrap_or_default(),
    });
    json_resp(200, &tokens_answer(access, rt))
}

fn body_refresh_token(shape: &Shape, rec: &Recorded) -> Option<String> {
    if let Ok(doc) = serde_json::from_str::<Value>(&rec.body) {
        return doc
            .pointer(&shape.refresh_token_field)
            .and_then(|v| v.as_str())
            .map(str::to_string);
    }
    let key = shape.refresh_token_field.rsplit('/').next().unwrap_or("");
    form_value(&rec.body, key)
}
