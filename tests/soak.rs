//! Soak under faults: one sidecar, mixed traffic (valid RS256 tokens from a rotating
//! JWKS, expired access tokens refreshed for many users, garbage tokens, a public route,
//! WebSockets, SSE, 256 KiB uploads) while the token service cycles through
//! ok → down → slow → 500 → garbage, the JWKS endpoint rotates keys and fails, the
//! config is reloaded by SIGHUP every 3 s and the backend is restarted every 20 s.
//!
//! Duration: `SOAK_SECONDS` (default 100, about 2 minutes with setup);
//! `SOAK_SECONDS=1800 cargo test --release --test soak -- --nocapture` runs it for 30
//! minutes. The summary table is printed with `--nocapture`.
//!
//! Asserted at the end:
//! 1. no request carrying a valid token (or an expired one with a live refresh token)
//!    ever got a 401 (or 403);
//! 2. every 5xx is 502/503/504 with the sidecar's `X-Auth-Error`: 503
//!    `token_service_unavailable` only while the token service (or the JWKS endpoint)
//!    was faulty, 503 `keys_unavailable` only while the JWKS endpoint was, 502/504 and
//!    client-side transport errors only around a backend restart ([`GRACE`] after each
//!    window ends);
//! 3. every pair the token service issued reached a client in `X-Auth-Access-Token` /
//!    `X-Auth-Refresh-Token`, except the ones answered after the sidecar had given up
//!    (issued between the start of a slow phase and the end of the 500 phase after it:
//!    the mock answers a slow call after `refresh.timeout`) and the last second's;
//! 4. RSS and open fds level off: the least-squares slope over the second half of the
//!    per-second samples is below [`RSS_SLOPE_KIB_S`] and [`FD_SLOPE_S`], and the final
//!    fd count is below [`FD_MAX`];
//! 5. no panic and no ERROR-level log line (none is expected: every reload is valid,
//!    JWKS and token-service failures are WARN).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mock::JwksServer;
use common::token_service::{Mode, Pair, TokenService};
use common::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Time after a fault window ends during which its effects may still show (a request
/// that started during the window, a pool connection that died with the backend).
const GRACE: Duration = Duration::from_secs(2);
/// Token-service fault phases last this long each.
const PHASE: Duration = Duration::from_secs(4);
/// Latency of the slow phase: above `refresh.timeout` / `initiate.timeout` (1 s).
const SLOW: Duration = Duration::from_millis(1500);
/// SIGHUP interval.
const RELOAD_EVERY: Duration = Duration::from_secs(3);
/// Backend restart interval, and how long it stays down.
const RESTART_EVERY: Duration = Duration::from_secs(20);
const BACKEND_DOWN: Duration = Duration::from_secs(1);
/// Access-token lifetime of the mock token service: short, so a user is refreshed again
/// on every visit (with `auth.leeway = 0s`).
const ACCESS_TTL: u64 = 2;
/// RSS slope bound over the second half, KiB/s: a leak this fast is 112 MiB in 30
/// minutes, far above allocator noise, while a short run's warm-up is excluded by
/// looking at the second half only.
const RSS_SLOPE_KIB_S: f64 = 64.0;
/// fd slope bound over the second half: one leaked descriptor every 2 s.
const FD_SLOPE_S: f64 = 0.5;
/// Open fds at the end, at most: the load holds well under 100 connections.
const FD_MAX: usize = 512;
/// Users per refresh task at a time; one is replaced by a new user every few visits.
const USERS_PER_TASK: usize = 60;
const UPLOAD_BYTES: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Valid,
    Refresh,
    Garbage,
    Public,
    Ws,
    Sse,
    Upload,
}

impl Kind {
    /// The request carried a valid token (or an expired one with a live refresh token).
    fn is_authentic(self) -> bool {
        !matches!(self, Kind::Garbage | Kind::Public)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    TokenService,
    Jwks,
    Backend,
}

/// One request's outcome: `status` 0 is a client-side error (connect, reset, timeout,
/// a stream cut mid-body, a wrong body).
#[derive(Clone, Debug)]
struct Outcome {
    kind: Kind,
    start: Instant,
    end: Instant,
    status: u16,
    code: Option<String>,
    detail: String,
}

struct Window {
    fault: Fault,
    what: &'static str,
    start: Instant,
    end: Option<Instant>,
}

#[derive(Default)]
struct World {
    outcomes: Mutex<Vec<Outcome>>,
    windows: Mutex<Vec<Window>>,
    /// Refresh tokens (and access tokens) that reached a client.
    seen_refresh: Mutex<HashSet<String>>,
    seen_access: Mutex<HashSet<String>>,
    /// Index ranges of `issued()` answered after the sidecar gave up (slow phases).
    exempt: Mutex<Vec<(usize, usize)>>,
    stop: AtomicBool,
    /// JWKS key generation the clients sign with.
    signing_gen: AtomicU64,
    rotations: AtomicUsize,
    rotation_timeouts: AtomicUsize,
    jwks_faults: AtomicUsize,
    ts_cycles: AtomicUsize,
    hups: AtomicUsize,
    restarts: AtomicUsize,
    users: AtomicUsize,
}

impl World {
    fn open(&self, fault: Fault, what: &'static str) -> usize {
        let mut w = self.windows.lock().unwrap();
        w.push(Window {
            fault,
            what,
            start: Instant::now(),
            end: None,
        });
        w.len() - 1
    }

    fn close(&self, i: usize) {
        self.windows.lock().unwrap()[i].end = Some(Instant::now());
    }

    /// Whether `[start, end]` overlaps a window of one of `faults` (extended by GRACE).
    fn during(&self, faults: &[Fault], start: Instant, end: Instant) -> bool {
        self.windows.lock().unwrap().iter().any(|w| {
            faults.contains(&w.fault) && start <= w.end.map_or(end, |e| e + GRACE) && end >= w.start
        })
    }

    fn record(
        &self,
        kind: Kind,
        start: Instant,
        status: u16,
        code: Option<String>,
        detail: String,
    ) {
        self.outcomes.lock().unwrap().push(Outcome {
            kind,
            start,
            end: Instant::now(),
            status,
            code,
            detail,
        });
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `d`, or less when the run ends; false when it ended.
    async fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if !self.running() {
                return false;
            }
            tokio::time::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
            )
            .await;
        }
        self.running()
    }

    /// Notes a renewed pair on a response.
    fn saw_pair(&self, r: &Resp) -> Option<Pair> {
        let access = r.header("x-auth-access-token")?.to_string();
        self.seen_access.lock().unwrap().insert(access.clone());
        let refresh = r.header("x-auth-refresh-token")?.to_string();
        self.seen_refresh.lock().unwrap().insert(refresh.clone());
        Some(Pair { access, refresh })
    }
}

// -- keys -------------------------------------------------------------------------

/// The two RSA key pairs of the fixtures; generation `g` uses key `g % 2` as kid `k<g>`.
struct Keys {
    enc: [EncodingKey; 2],
    jwk: [Value; 2],
}

impl Keys {
    fn load() -> Keys {
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
        let rs1 = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == "rs1")
            .expect("rs1 in jwks.json")
            .clone();
        let other: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("attacker_jwk.json")).unwrap())
                .unwrap();
        Keys {
            enc: [signing_key(Algorithm::RS256).0, attacker_rsa_key()],
            jwk: [rs1, other],
        }
    }

    fn jwk(&self, g: u64) -> Value {
        let mut k = self.jwk[(g % 2) as usize].clone();
        k["kid"] = json!(format!("k{g}"));
        k
    }

    fn token(&self, g: u64, sub: &str) -> String {
        sign_with_header(
            &json!({"alg": "RS256", "typ": "JWT", "kid": format!("k{g}")}),
            &claims(sub),
            Algorithm::RS256,
            &self.enc[(g % 2) as usize],
        )
    }
}

// -- helpers ----------------------------------------------------------------------

fn soak_seconds() -> u64 {
    std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Least-squares slope of `(t, y)`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

fn soak_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(8)
        .build()
        .unwrap()
}

/// Sends `rb`; `Err` is a client-side error.
async fn try_send(rb: reqwest::RequestBuilder) -> Result<Resp, String> {
    let r = rb.send().await.map_err(|e| format!("send: {e}"))?;
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
    let body = r
        .bytes()
        .await
        .map_err(|e| format!("status {status}, body: {e}"))?
        .to_vec();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// Records `r` as an outcome of `kind`; a 200 must be the backend's.
fn record_resp(w: &World, kind: Kind, start: Instant, r: Result<Resp, String>) -> Option<Resp> {
    match r {
        Ok(r) => {
            let code = r.header("x-auth-error").map(str::to_string);
            let mut detail = String::new();
            let mut status = r.status;
            if status == 200 && r.header("x-backend") != Some("test") {
                detail = format!("200 not from the backend: {}", r.text());
                status = 0;
            }
            if status >= 400 {
                detail = r.text().chars().take(200).collect();
            }
            w.record(kind, start, status, code, detail);
            Some(r)
        }
        Err(e) => {
            w.record(kind, start, 0, None, e);
            None
        }
    }
}

// -- the actors --------------------------------------------------------------------

async fn valid_load(w: Arc<World>, keys: Arc<Keys>, sc_url: String, id: usize) {
    let c = soak_client();
    let mut n = 0u64;
    while w.running() {
        n += 1;
        let sub = format!("v{id}-{n}");
        let tok = keys.token(w.signing_gen.load(Ordering::SeqCst), &sub);
        let start = Instant::now();
        let r = try_send(c.get(format!("{sc_url}/api/v/{n}")).bearer_auth(&tok)).await;
        if let Some(r) = record_resp(&w, Kind::Valid, start, r) {
            if r.status == 200 {
                let user = r.echo().header("x-auth-user-id").map(str::to_string);
                if user.as_deref() != Some(sub.as_str()) {
                    w.record(Kind::Valid, start, 0, None, format!("identity {user:?}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn refresh_load(w: Arc<World>, ts: Arc<TokenService>, sc_url: String, id: usize) {
    let c = soak_client();
    let new_user = |n: usize| {
        w.users.fetch_add(1, Ordering::SeqCst);
        let sub = format!("u{id}-{n}");
        let p = ts.expired_pair_for(&sub, 60);
        (sub, p)
    };
    let mut next = 0usize;
    let mut users: Vec<(String, Pair)> = (0..USERS_PER_TASK)
        .map(|_| {
            next += 1;
            new_user(next)
        })
        .collect();
    let mut i = 0usize;
    while w.running() {
        i += 1;
        let slot = i % users.len();
        // Every 7th visit, a new user takes the slot (many users over the run).
        if i % 7 == 0 {
            next += 1;
            users[slot] = new_user(next);
        }
        let (sub, pair) = users[slot].clone();
        let start = Instant::now();
        let r = try_send(
            c.get(format!("{sc_url}/api/r/{i}"))
                .bearer_auth(&pair.access)
                .header("x-refresh-token", &pair.refresh),
        )
        .await;
        if let Some(r) = record_resp(&w, Kind::Refresh, start, r) {
            if let Some(p) = w.saw_pair(&r) {
                users[slot].1 = p;
            }
            if r.status == 200 {
                let user = r.echo().header("x-auth-user-id").map(str::to_string);
                if user.as_deref() != Some(sub.as_str()) {
                    w.record(Kind::Refresh, start, 0, None, format!("identity {user:?}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

async fn garbage_load(w: Arc<World>, keys: Arc<Keys>, sc_url: String) {
    let c = soak_client();
    let mut n = 0u64;
    while w.running() {
        n += 1;
        let good = keys.token(w.signing_gen.load(Ordering::SeqCst), "mallory");
        let tok = match n % 4 {
            0 => format!("garbage-{n}"),
            1 => tamper_signature(&good),
            2 => tamper_payload(&good, &claims("root")),
            _ => format!("{good}.x"),
        };
        let start = Instant::now();
        let r = try_send(c.get(format!("{sc_url}/api/g/{n}")).bearer_auth(&tok)).await;
        record_resp(&w, Kind::Garbage, start, r);
        let start = Instant::now();
        let r = try_send(c.get(format!("{sc_url}/public/p/{n}"))).await;
        record_resp(&w, Kind::Public, start, r);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ws_load(w: Arc<World>, keys: Arc<Keys>, ws_url: String) {
    let mut n = 0u64;
    while w.running() {
        n += 1;
        let tok = keys.token(w.signing_gen.load(Ordering::SeqCst), &format!("ws{n}"));
        let start = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), ws_once(&ws_url, &tok, n)).await;
        match r {
            Err(_) => w.record(Kind::Ws, start, 0, None, "timed out".into()),
            Ok(Ok(())) => w.record(Kind::Ws, start, 101, None, String::new()),
            Ok(Err((status, code, e))) => w.record(Kind::Ws, start, status, code, e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

type WsErr = (u16, Option<String>, String);

async fn ws_once(url: &str, tok: &str, n: u64) -> Result<(), WsErr> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        tungstenite::http::HeaderValue::from_str(&bearer(tok)).unwrap(),
    );
    let (mut ws, _) = match tokio_tungstenite::connect_async(req).await {
        Ok(x) => x,
        Err(tungstenite::Error::Http(resp)) => {
            let code = resp
                .headers()
                .get("x-auth-error")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            return Err((resp.status().as_u16(), code, "handshake refused".into()));
        }
        Err(e) => return Err((0, None, format!("handshake: {e}"))),
    };
    let text = format!("soak message {n}");
    ws.send(Message::text(text.clone()))
        .await
        .map_err(|e| (0, None, format!("send: {e}")))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == text => break,
            Some(Ok(Message::Text(t))) => return Err((0, None, format!("wrong echo {t}"))),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err((0, None, format!("read: {e}"))),
            None => return Err((0, None, "closed before the echo".into())),
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

async fn sse_load(w: Arc<World>, keys: Arc<Keys>, sc_url: String) {
    let c = soak_client();
    let mut n = 0u64;
    while w.running() {
        n += 1;
        let tok = keys.token(w.signing_gen.load(Ordering::SeqCst), &format!("sse{n}"));
        let start = Instant::now();
        match c
            .get(format!("{sc_url}/sse"))
            .bearer_auth(&tok)
            .send()
            .await
        {
            Err(e) => w.record(Kind::Sse, start, 0, None, format!("send: {e}")),
            Ok(r) if r.status() != 200 => {
                let r = try_send_done(r).await;
                record_resp(&w, Kind::Sse, start, r);
            }
            Ok(mut r) => {
                // Three events are enough; then the stream is dropped mid-way.
                let mut text = String::new();
                let mut err = None;
                while text.matches("data: ").count() < 3 {
                    match tokio::time::timeout(Duration::from_secs(5), r.chunk()).await {
                        Ok(Ok(Some(b))) => text.push_str(&String::from_utf8_lossy(&b)),
                        Ok(Ok(None)) => {
                            err = Some("stream ended early".to_string());
                            break;
                        }
                        Ok(Err(e)) => {
                            err = Some(format!("stream: {e}"));
                            break;
                        }
                        Err(_) => {
                            err = Some("stream stalled".to_string());
                            break;
                        }
                    }
                }
                match err {
                    None => w.record(Kind::Sse, start, 200, None, String::new()),
                    Some(e) => w.record(Kind::Sse, start, 0, None, e),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn try_send_done(r: reqwest::Response) -> Result<Resp, String> {
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            )
        })
        .collect();
    let body = r.bytes().await.map_err(|e| format!("body: {e}"))?.to_vec();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

async fn upload_load(w: Arc<World>, keys: Arc<Keys>, sc_url: String) {
    let c = soak_client();
    let body: Vec<u8> = (0..UPLOAD_BYTES).map(|i| (i % 251) as u8).collect();
    let mut n = 0u64;
    while w.running() {
        n += 1;
        let tok = keys.token(w.signing_gen.load(Ordering::SeqCst), &format!("up{n}"));
        let start = Instant::now();
        let r = try_send(
            c.post(format!("{sc_url}/upload"))
                .bearer_auth(&tok)
                .body(body.clone()),
        )
        .await;
        if let Some(r) = record_resp(&w, Kind::Upload, start, r) {
            if r.status == 200 && r.json()["bytes"] != json!(UPLOAD_BYTES) {
                w.record(Kind::Upload, start, 0, None, format!("short: {}", r.text()));
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// ok → down → slow → 500 → garbage → ok, [`PHASE`] each.
async fn ts_cycler(w: Arc<World>, ts: Arc<TokenService>) {
    while w.pause(PHASE).await {
        w.ts_cycles.fetch_add(1, Ordering::SeqCst);
        let i = w.open(Fault::TokenService, "down");
        ts.refuse().await;
        let go = w.pause(PHASE).await;
        ts.resume().await;
        w.close(i);
        if !go {
            break;
        }

        let i = w.open(Fault::TokenService, "slow");
        let from = ts.issued().len();
        ts.set_latency(SLOW);
        let go = w.pause(PHASE).await;
        ts.set_latency(Duration::ZERO);
        w.close(i);
        // The 500 phase: the slow calls still sleeping answer (and rotate) now, after
        // the sidecar gave up on them; nothing else is issued.
        let i = w.open(Fault::TokenService, "500");
        ts.set_mode(Mode::Status500);
        let go = go && w.pause(PHASE.max(SLOW + Duration::from_millis(500))).await;
        ts.set_mode(Mode::Normal);
        w.exempt.lock().unwrap().push((from, ts.issued().len()));
        w.close(i);
        if !go {
            break;
        }

        let i = w.open(Fault::TokenService, "garbage");
        ts.set_mode(Mode::Garbage);
        let go = w.pause(PHASE).await;
        ts.set_mode(Mode::Normal);
        w.close(i);
        if !go {
            break;
        }
    }
    ts.set_mode(Mode::Normal);
    ts.set_latency(Duration::ZERO);
    ts.resume().await;
}

/// Waits until the JWKS endpoint answered twice more than `before` (so at least one
/// fetch read the current document); false after 10 s.
async fn fetched_since(jwks: &JwksServer, before: usize) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if jwks.fetches() >= before + 2 {
            // Let the sidecar swap the set in.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Rotation (publish old + new, switch the signing key, drop the old), then an outage
/// (connections closed) and a 500 phase, in a loop.
async fn jwks_cycler(w: Arc<World>, jwks: Arc<JwksServer>, keys: Arc<Keys>) {
    while w.pause(Duration::from_secs(3)).await {
        let g = w.signing_gen.load(Ordering::SeqCst);
        let before = jwks.fetches();
        jwks.set_keys(vec![keys.jwk(g), keys.jwk(g + 1)]);
        if !fetched_since(&jwks, before).await {
            // Not seen yet: keep signing with the old key, still published.
            w.rotation_timeouts.fetch_add(1, Ordering::SeqCst);
            jwks.set_keys(vec![keys.jwk(g)]);
            continue;
        }
        w.signing_gen.store(g + 1, Ordering::SeqCst);
        // Tokens minted with the old key may still be in flight: drop it later.
        if !w.pause(Duration::from_secs(3)).await {
            break;
        }
        let before = jwks.fetches();
        jwks.set_keys(vec![keys.jwk(g + 1)]);
        if fetched_since(&jwks, before).await {
            w.rotations.fetch_add(1, Ordering::SeqCst);
        } else {
            w.rotation_timeouts.fetch_add(1, Ordering::SeqCst);
        }
        if !w.pause(Duration::from_secs(2)).await {
            break;
        }

        w.jwks_faults.fetch_add(1, Ordering::SeqCst);
        let i = w.open(Fault::Jwks, "jwks down");
        jwks.set_down(true);
        let go = w.pause(Duration::from_secs(3)).await;
        jwks.set_down(false);
        w.close(i);
        if !go {
            break;
        }
        let i = w.open(Fault::Jwks, "jwks 500");
        jwks.set_failing(Some(500));
        let go = w.pause(Duration::from_secs(3)).await;
        jwks.set_failing(None);
        w.close(i);
        if !go {
            break;
        }
    }
    jwks.set_down(false);
    jwks.set_failing(None);
}

/// Rewrites the config (a harmless comment changes, the mtime is kept) and sends
/// SIGHUP, every 3 s.
async fn reloader(w: Arc<World>, path: std::path::PathBuf, base: String, pid: u32) {
    let mut n = 0u64;
    while w.pause(RELOAD_EVERY).await {
        n += 1;
        // The mtime is put back, so the reload comes from the signal, not the watcher.
        let before = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap();
        std::fs::write(&path, format!("{base}\n# soak reload {n}\n")).expect("rewrite config");
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_modified(before).unwrap();
        drop(f);
        let st = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -HUP {pid} failed");
        w.hups.fetch_add(1, Ordering::SeqCst);
    }
}

/// Kills the backend every 20 s and starts it again on the same port after 1 s.
async fn restarter(w: Arc<World>, mut backend: Backend) -> Backend {
    let addr: SocketAddr = backend.addr;
    while w.pause(RESTART_EVERY).await {
        let i = w.open(Fault::Backend, "backend restart");
        backend.kill();
        tokio::time::sleep(BACKEND_DOWN).await;
        backend = Backend::start_on(addr).await;
        w.close(i);
        w.restarts.fetch_add(1, Ordering::SeqCst);
    }
    backend
}

// -- the test ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn soak_under_faults() {
    let secs = soak_seconds();
    bounded_for(Duration::from_secs(secs + 120), soak(secs)).await
}

async fn soak(secs: u64) {
    let keys = Arc::new(Keys::load());
    let jwks = JwksServer::start(vec![keys.jwk(0)]).await;
    jwks.set_max_age(Some(1));
    let jwks_url = jwks.url();
    let ts = TokenService::start(API_KEY).await;
    ts.set_access_ttl(ACCESS_TTL);
    let Rig {
        backend,
        ts,
        jwks,
        sc,
        ..
    } = Rig::builder()
        .token_service(ts)
        .jwks(jwks)
        .cfg(move |c| {
            c.auth("algorithms", r#"["HS256", "RS256"]"#)
                .auth("jwks_url", &q(&jwks_url))
                .auth("jwks_min_refresh", "\"1s\"")
                .auth("jwks_max_refresh", "\"2s\"")
                .auth("jwks_unknown_kid_interval", "\"1s\"")
                .auth("jwks_timeout", "\"1s\"")
                .auth("leeway", "\"0s\"")
                .backend("connect_timeout", "\"1s\"")
                .route("prefix = \"/public\"\nmode = \"public\"")
        })
        .lifecycle(|lc| {
            lc.refresh("retry_after", "\"1s\"")
                .initiate("retry_after", "\"1s\"");
        })
        .start()
        .await;
    // The JWKS is fetched before /readyz says ready, not before the `listening` line:
    // until then a valid token is 503 keys_unavailable (documented), so wait.
    let admin = soak_client();
    let t = Instant::now();
    loop {
        let r = admin.get(sc.admin_url("/readyz")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not ready within 10 s\n{}",
            sc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ts = Arc::new(ts);
    let jwks = Arc::new(jwks);
    let pid = sc.pid().expect("sidecar pid");
    let w = Arc::new(World::default());
    let url = sc.url("");
    let t0 = Instant::now();

    let mut load = Vec::new();
    for id in 0..2 {
        load.push(tokio::spawn(valid_load(
            w.clone(),
            keys.clone(),
            url.clone(),
            id,
        )));
        load.push(tokio::spawn(refresh_load(
            w.clone(),
            ts.clone(),
            url.clone(),
            id,
        )));
    }
    load.push(tokio::spawn(garbage_load(
        w.clone(),
        keys.clone(),
        url.clone(),
    )));
    load.push(tokio::spawn(ws_load(
        w.clone(),
        keys.clone(),
        sc.ws_url("/ws"),
    )));
    load.push(tokio::spawn(sse_load(w.clone(), keys.clone(), url.clone())));
    load.push(tokio::spawn(upload_load(
        w.clone(),
        keys.clone(),
        url.clone(),
    )));
    load.push(tokio::spawn(ts_cycler(w.clone(), ts.clone())));
    load.push(tokio::spawn(jwks_cycler(
        w.clone(),
        jwks.clone(),
        keys.clone(),
    )));
    load.push(tokio::spawn(reloader(
        w.clone(),
        sc.dir.path().join("config.toml"),
        sc.config_text.clone(),
        pid,
    )));
    let restart = tokio::spawn(restarter(w.clone(), backend));

    // Samples every second until the end.
    let mut samples: Vec<(f64, u64, usize)> = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        samples.push((t0.elapsed().as_secs_f64(), vm_rss_kb(pid), fd_count(pid)));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let end = Instant::now();
    w.stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.expect("a soak task panicked");
    }
    let _backend = restart.await.expect("the restarter panicked");
    let issued_at_end = ts.issued().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    samples.push((t0.elapsed().as_secs_f64(), vm_rss_kb(pid), fd_count(pid)));
    assert!(sc.is_alive(), "the sidecar died\n{}", sc.logs());

    // -- evaluate --------------------------------------------------------------------
    let outcomes = w.outcomes.lock().unwrap().clone();
    let mut failures: Vec<String> = Vec::new();
    let mut table: BTreeMap<(Kind, u16, String), usize> = BTreeMap::new();
    let mut in_fault = 0usize;
    let rel = |t: Instant| t.duration_since(t0).as_secs_f64();
    for o in &outcomes {
        *table
            .entry((o.kind, o.status, o.code.clone().unwrap_or_default()))
            .or_default() += 1;
        let ts_fault = w.during(&[Fault::TokenService, Fault::Jwks], o.start, o.end);
        let jwks_fault = w.during(&[Fault::Jwks], o.start, o.end);
        let be_fault = w.during(&[Fault::Backend], o.start, o.end);
        if ts_fault || be_fault {
            in_fault += 1;
        }
        let code = o.code.as_deref().unwrap_or("");
        let at = format!(
            "{:?} {}..{}s: {} {code} {}",
            o.kind,
            format_args!("{:.2}", rel(o.start)),
            format_args!("{:.2}", rel(o.end)),
            o.status,
            o.detail
        );
        let ok = match (o.kind, o.status) {
            (Kind::Ws, 101) => true,
            (Kind::Garbage, 401) => code == "invalid_token",
            (Kind::Garbage, s) if s < 500 => false,
            (k, 401 | 403) if k.is_authentic() => false,
            (_, 200) => o.kind != Kind::Garbage,
            (_, 503) if code == "token_service_unavailable" => {
                ts_fault && matches!(o.kind, Kind::Refresh)
            }
            (_, 503) if code == "keys_unavailable" => jwks_fault,
            (_, 502) if code == "backend_unavailable" => be_fault,
            (_, 504) if code == "backend_timeout" => be_fault,
            (_, 0) => be_fault,
            _ => false,
        };
        if !ok {
            failures.push(at);
        }
    }

    // Every issued pair reached a client.
    let issued = ts.issued();
    let exempt = w.exempt.lock().unwrap().clone();
    let seen_r = w.seen_refresh.lock().unwrap().clone();
    let seen_a = w.seen_access.lock().unwrap().clone();
    let mut lost = Vec::new();
    let mut exempted = 0usize;
    for (i, p) in issued.iter().enumerate().take(issued_at_end) {
        if exempt.iter().any(|(a, b)| (*a..*b).contains(&i)) {
            exempted += 1;
            continue;
        }
        if !(seen_r.contains(&p.refresh) && seen_a.contains(&p.access)) {
            lost.push(i);
        }
    }
    // The last second's pairs may still be on their way when the load stopped.
    let last_second = {
        let n_recent = outcomes
            .iter()
            .filter(|o| o.kind == Kind::Refresh && o.end + Duration::from_secs(1) > end)
            .count();
        n_recent.min(issued_at_end)
    };
    let lost_tail = lost
        .iter()
        .filter(|i| **i + last_second >= issued_at_end)
        .count();
    let lost_real: Vec<usize> = lost
        .iter()
        .copied()
        .filter(|i| *i + last_second < issued_at_end)
        .collect();

    // RSS / fd over the second half.
    let half: Vec<&(f64, u64, usize)> = samples
        .iter()
        .filter(|s| s.0 >= secs as f64 / 2.0)
        .collect();
    let rss_slope = slope(&half.iter().map(|s| (s.0, s.1 as f64)).collect::<Vec<_>>());
    let fd_slope = slope(&half.iter().map(|s| (s.0, s.2 as f64)).collect::<Vec<_>>());
    let (first, last) = (samples[0], *samples.last().unwrap());

    // Logs.
    let lines = sc.stdout_lines();
    let logs = sc.logs();
    let reloaded = lines
        .iter()
        .filter(|l| l.contains("\"config reloaded\""))
        .count();
    let error_lines: Vec<&String> = lines
        .iter()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .map(|v| v["level"] == "ERROR")
                .unwrap_or(false)
        })
        .collect();
    let warn_lines = lines
        .iter()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .map(|v| v["level"] == "WARN")
                .unwrap_or(false)
        })
        .count();
    let panicked = logs.to_ascii_lowercase().contains("panick");

    // -- summary ---------------------------------------------------------------------
    println!(
        "\n=== soak: {secs} s, {} requests ({in_fault} overlapping a fault window) ===",
        outcomes.len()
    );
    println!(
        "{:<8} {:>6} {:<28} {:>8}",
        "kind", "status", "x-auth-error", "count"
    );
    for ((k, s, c), n) in &table {
        println!("{:<8} {:>6} {:<28} {:>8}", format!("{k:?}"), s, c, n);
    }
    let windows = w.windows.lock().unwrap();
    let count_w = |what: &str| windows.iter().filter(|x| x.what == what).count();
    println!(
        "token service: {} cycles (down {}, slow {}, 500 {}, garbage {}); refresh calls {}, initiate calls {}",
        w.ts_cycles.load(Ordering::SeqCst),
        count_w("down"),
        count_w("slow"),
        count_w("500"),
        count_w("garbage"),
        ts.refresh_calls(),
        ts.initiate_calls()
    );
    println!(
        "pairs issued {}: reached a client {}, answered after the sidecar gave up (slow) {}, last-second tail {}, lost {}",
        issued_at_end,
        issued_at_end - exempted - lost.len(),
        exempted,
        lost_tail,
        lost_real.len()
    );
    println!("refresh users {}", w.users.load(Ordering::SeqCst));
    println!(
        "JWKS: rotations {} (timed out {}), outages {} (down + 500), fetches {}, refused {}",
        w.rotations.load(Ordering::SeqCst),
        w.rotation_timeouts.load(Ordering::SeqCst),
        w.jwks_faults.load(Ordering::SeqCst),
        jwks.fetches(),
        jwks.refused()
    );
    println!(
        "reloads: SIGHUP {} , \"config reloaded\" lines {}; backend restarts {}",
        w.hups.load(Ordering::SeqCst),
        reloaded,
        w.restarts.load(Ordering::SeqCst)
    );
    println!(
        "RSS KiB start {} end {} slope {:.1} KiB/s (bound {RSS_SLOPE_KIB_S}); fds start {} end {} slope {:.3}/s (bound {FD_SLOPE_S}, max {FD_MAX})",
        first.1, last.1, rss_slope, first.2, last.2, fd_slope
    );
    println!(
        "log: {} lines, {} WARN, {} ERROR, panic: {panicked}",
        lines.len(),
        warn_lines,
        error_lines.len()
    );

    // -- assertions ------------------------------------------------------------------
    let mut problems = Vec::new();
    if !failures.is_empty() {
        problems.push(format!(
            "{} unexpected outcomes (first 40):\n  {}",
            failures.len(),
            failures
                .iter()
                .take(40)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    if !lost_real.is_empty() {
        let show: Vec<String> = lost_real
            .iter()
            .take(10)
            .map(|i| format!("#{i} refresh {}", issued[*i].refresh))
            .collect();
        problems.push(format!(
            "{} issued pairs never reached a client: {}",
            lost_real.len(),
            show.join(", ")
        ));
    }
    if rss_slope >= RSS_SLOPE_KIB_S {
        problems.push(format!(
            "RSS grows: {rss_slope:.1} KiB/s over the second half"
        ));
    }
    if fd_slope >= FD_SLOPE_S || last.2 >= FD_MAX {
        problems.push(format!(
            "fds grow: {fd_slope:.3}/s over the second half, {} at the end",
            last.2
        ));
    }
    if panicked {
        problems.push("a panic in the sidecar's output".into());
    }
    if !error_lines.is_empty() {
        problems.push(format!(
            "ERROR lines:\n  {}",
            error_lines
                .iter()
                .take(10)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    let hups = w.hups.load(Ordering::SeqCst);
    if reloaded < hups {
        problems.push(format!("{hups} SIGHUPs but {reloaded} reloads logged"));
    }
    // The run must really have exercised every part.
    for (what, n) in [
        (
            "refresh 200s",
            table
                .iter()
                .filter(|((k, s, _), _)| *k == Kind::Refresh && *s == 200)
                .map(|(_, n)| n)
                .sum::<usize>(),
        ),
        ("token-service cycles", w.ts_cycles.load(Ordering::SeqCst)),
        ("JWKS rotations", w.rotations.load(Ordering::SeqCst)),
        ("backend restarts", w.restarts.load(Ordering::SeqCst)),
        (
            "WebSocket echoes",
            table
                .iter()
                .filter(|((k, s, _), _)| *k == Kind::Ws && *s == 101)
                .map(|(_, n)| n)
                .sum(),
        ),
    ] {
        if n == 0 {
            problems.push(format!("no {what} during the run"));
        }
    }
    assert!(
        problems.is_empty(),
        "soak failed:\n{}\n--- fault windows ---\n{}\n--- sidecar log (last 60 lines) ---\n{}",
        problems.join("\n"),
        windows
            .iter()
            .map(|x| format!(
                "{} {:.2}..{}",
                x.what,
                rel(x.start),
                x.end.map_or("open".into(), |e| format!("{:.2}", rel(e)))
            ))
            .collect::<Vec<_>>()
            .join("\n"),
        lines
            .iter()
            .rev()
            .take(60)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
