//! Refresh herd: HERD_N (10 000) requests at once, all carrying the same expired access
//! token and the same refresh token, through a real auth-sidecar process
//! (`worker_threads = 1`) to a token service that answers after a fixed delay
//! (TS_LATENCY_MS, 50 ms). The sidecar must call the token service exactly once and
//! answer every request with 200 and the new access token.
//!
//! In this process: the token service (counts calls), the backend (`200 ok`) and the
//! client (HTTP/2 prior knowledge over HERD_CONNS connections, at most 256 streams each:
//! the sidecar's `max_concurrent_streams`). The sidecar is the binary cargo builds
//! alongside this bench (`CARGO_BIN_EXE_auth-sidecar`, or SIDECAR_BIN), started fresh
//! for every round so each herd meets a cold single-flight cache.
//!
//! Each round also runs a baseline herd: the same HERD_N requests with a valid token (no
//! refresh), also on a fresh sidecar. Its latency is what queueing HERD_N simultaneous
//! requests on one worker costs by itself; refresh p99 minus baseline p99 is what the
//! refresh adds beyond the token service's own latency.
//!
//!   cargo bench --bench refresh_herd
//!   HERD_N=2000 HERD_ROUNDS=1 HERD_ALGS=HS256 cargo bench --bench refresh_herd
//!
//! | env | default | meaning |
//! |---|---|---|
//! | HERD_N | 10000 | concurrent requests per herd |
//! | HERD_CONNS | 50 | client HTTP/2 connections (HERD_N / HERD_CONNS must be <= 256) |
//! | TS_LATENCY_MS | 50 | token-service delay before it answers |
//! | HERD_ROUNDS | 3 | rounds per algorithm (fresh sidecar each) |
//! | HERD_ALGS | "HS256 RS256" | access-token algorithms (keys from tests/fixtures) |
//! | HERD_WORKERS | 1 | the sidecar's server.worker_threads |
//! | HERD_BACKEND | h1 | sidecar -> backend protocol: h1 (default config) or h2 (backend.http2) |
//! | HERD_MAX_CONNS | (default 1024) | the sidecar's backend.max_connections (HTTP/1.1 backend) |
//! | HERD_BASELINE | 1 | also run the valid-token baseline herd |
//! | HERD_EXPIRED_AGO_S | 2 | how long ago the shared access token expired (minted per round) |
//!
//! The fd limit must allow HERD_N backend connections in this process and in the sidecar
//! (`ulimit -n`, 20000 here); the bench refuses to start when it is too low.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

const HS_SECRET: &str = "herd-hs256-secret-0123456789abcdef0123456789abcdef";
const ISSUER: &str = "https://issuer.bench.local";
const AUDIENCE: &str = "bench-api";
const SUB: &str = "user-42";
const REFRESH_TOKEN: &str = "rt-herd-0001";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Params {
    n: usize,
    conns: usize,
    ts_latency: Duration,
    rounds: usize,
    algs: Vec<Algorithm>,
    workers: usize,
    backend_h2: bool,
    /// backend.max_connections (0: the sidecar's default).
    max_conns: usize,
    baseline: bool,
    expired_ago: u64,
}

fn params() -> Params {
    let algs = std::env::var("HERD_ALGS").unwrap_or_else(|_| "HS256 RS256".into());
    Params {
        n: env_or("HERD_N", 10_000),
        conns: env_or("HERD_CONNS", 50),
        ts_latency: Duration::from_millis(env_or("TS_LATENCY_MS", 50)),
        rounds: env_or("HERD_ROUNDS", 3),
        algs: algs
            .split_whitespace()
            .map(|a| match a {
                "HS256" => Algorithm::HS256,
                "RS256" => Algorithm::RS256,
                other => panic!("HERD_ALGS: {other} is not HS256 or RS256"),
            })
            .collect(),
        workers: env_or("HERD_WORKERS", 1),
        backend_h2: std::env::var("HERD_BACKEND").is_ok_and(|v| v == "h2"),
        max_conns: env_or("HERD_MAX_CONNS", 0),
        baseline: env_or("HERD_BASELINE", 1) == 1,
        expired_ago: env_or("HERD_EXPIRED_AGO_S", 2),
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn now() -> u64 {
    auth_sidecar::token::now_secs()
}

fn mint(alg: Algorithm, exp: u64, jti: &str) -> String {
    let (key, kid) = match alg {
        Algorithm::HS256 => (EncodingKey::from_secret(HS_SECRET.as_bytes()), None),
        _ => {
            let pem = std::fs::read(fixtures().join("rsa2048_private.pem")).expect("fixture");
            (
                EncodingKey::from_rsa_pem(&pem).expect("RSA key"),
                Some("rs1"),
            )
        }
    };
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    let claims = json!({
        "sub": SUB, "iss": ISSUER, "aud": AUDIENCE,
        "iat": now().min(exp), "exp": exp, "jti": jti,
    });
    jsonwebtoken::encode(&h, &claims, &key).expect("sign")
}

// ---------------------------------------------------------------- servers in this process

/// Serves `handler` on a loopback port (HTTP/1.1 and HTTP/2 prior knowledge).
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http2().max_concurrent_streams(100_000);
        let builder = Arc::new(builder);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let h = handler.clone();
            let b = builder.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = b.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

struct TokenService {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
}

async fn token_service(latency: Duration, access_token: Arc<String>) -> TokenService {
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let c = c.clone();
        let at = access_token.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let ok = body.is_ok_and(|b| {
                serde_json::from_slice::<serde_json::Value>(&b)
                    .ok()
                    .and_then(|v| v.get("refresh_token")?.as_str().map(str::to_string))
                    .is_some_and(|rt| rt == REFRESH_TOKEN)
            });
            tokio::time::sleep(latency).await;
            if !ok {
                return Response::builder()
                    .status(400)
                    .body(Full::new(Bytes::from_static(
                        br#"{"error":"invalid_grant"}"#,
                    )))
                    .unwrap();
            }
            let body = json!({"access_token": *at, "refresh_token": "rt-herd-0002"});
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap()
        }
    })
    .await;
    TokenService { addr, calls }
}

async fn backend() -> SocketAddr {
    serve(|_req: Request<Incoming>| async { Response::new(Full::new(Bytes::from_static(b"ok"))) })
        .await
}

// ---------------------------------------------------------------- the sidecar process

struct Sidecar {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn sidecar_bin() -> PathBuf {
    std::env::var_os("SIDECAR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_auth-sidecar")))
}

async fn start_sidecar(
    p: &Params,
    alg: Algorithm,
    backend: SocketAddr,
    ts: SocketAddr,
    valid: &str,
) -> Sidecar {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let keys = match alg {
        Algorithm::HS256 => r#"algorithms = ["HS256"]
hmac_secret = { env = "HERD_HS_SECRET" }"#
            .to_string(),
        _ => format!(
            r#"algorithms = ["RS256"]
public_keys = [{{ file = "{}", kid = "rs1" }}]"#,
            fixtures().join("rsa2048_public.pem").display()
        ),
    };
    let text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
worker_threads = {workers}
max_connections = 30000

[backend]
url = "http://{backend}"
http2 = {h2}
{max_conns}

[auth]
{keys}
issuer = "{ISSUER}"
audience = ["{AUDIENCE}"]
leeway = "0s"

[refresh]
url = "http://{ts}/refresh"
timeout = "10s"

[log]
level = "warn"
"#,
        workers = p.workers,
        h2 = p.backend_h2,
        max_conns = if p.max_conns > 0 {
            format!("max_connections = {}", p.max_conns)
        } else {
            String::new()
        },
    );
    let cfg = dir.path().join("sidecar.toml");
    std::fs::write(&cfg, text).expect("write config");
    let child = Command::new(sidecar_bin())
        .arg("--config")
        .arg(&cfg)
        .env("HERD_HS_SECRET", HS_SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", sidecar_bin().display()));
    let sc = Sidecar {
        child,
        port,
        _dir: dir,
    };
    // Ready when a valid token gets 200.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut conns) = connect(port, 1).await {
            let (status, _) = one(&mut conns[0], port, valid, None).await;
            if status == StatusCode::OK {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the sidecar did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sc
}

// ---------------------------------------------------------------- the client

type Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn connect(port: u16, n: usize) -> std::io::Result<Vec<Sender>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        out.push(send);
    }
    Ok(out)
}

/// One request; returns the status and the `x-auth-access-token` it carried.
async fn one(
    send: &mut Sender,
    port: u16,
    token: &str,
    refresh: Option<&str>,
) -> (StatusCode, Option<String>) {
    let mut b = Request::builder()
        .uri(format!("http://127.0.0.1:{port}/api/messages"))
        .header("authorization", format!("Bearer {token}"));
    if let Some(rt) = refresh {
        b = b.header("x-refresh-token", rt);
    }
    let req = b.body(Empty::new()).unwrap();
    if send.ready().await.is_err() {
        return (StatusCode::from_u16(599).unwrap(), None);
    }
    match send.send_request(req).await {
        Ok(resp) => {
            let status = resp.status();
            let at = resp
                .headers()
                .get("x-auth-access-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let _ = resp.into_body().collect().await;
            (status, at)
        }
        Err(_) => (StatusCode::from_u16(599).unwrap(), None),
    }
}

struct HerdResult {
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, usize>,
    with_new_token: usize,
    wall: Duration,
}

/// Fires `n` requests at once over `senders` and waits for all of them.
async fn herd(
    senders: &[Sender],
    n: usize,
    port: u16,
    token: &str,
    refresh: Option<&str>,
    new_token: &str,
) -> HerdResult {
    let gate = Arc::new(tokio::sync::Barrier::new(n + 1));
    let token = Arc::new(token.to_string());
    let refresh = refresh.map(|r| Arc::new(r.to_string()));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let mut send = senders[i % senders.len()].clone();
        let gate = gate.clone();
        let token = token.clone();
        let refresh = refresh.clone();
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let t0 = Instant::now();
            let (status, at) = one(
                &mut send,
                port,
                &token,
                refresh.as_deref().map(|s| s.as_str()),
            )
            .await;
            (t0.elapsed(), status, at)
        }));
    }
    let start = Instant::now();
    gate.wait().await;
    let mut r = HerdResult {
        latencies: Vec::with_capacity(n),
        statuses: BTreeMap::new(),
        with_new_token: 0,
        wall: Duration::ZERO,
    };
    for t in tasks {
        let (lat, status, at) = t.await.expect("request task");
        r.latencies.push(lat);
        *r.statuses.entry(status.as_u16()).or_default() += 1;
        if at.as_deref() == Some(new_token) {
            r.with_new_token += 1;
        }
    }
    r.wall = start.elapsed();
    r.latencies.sort();
    r
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn fd_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

struct Row {
    alg: Algorithm,
    phase: &'static str,
    round: usize,
    calls: u64,
    r: HerdResult,
}

fn main() {
    let p = params();
    assert!(
        p.n.div_ceil(p.conns) <= 256,
        "HERD_N / HERD_CONNS must be <= 256 (the sidecar's max_concurrent_streams)"
    );
    let need = p.n as u64 + p.conns as u64 + 256;
    if let Some(lim) = fd_limit() {
        assert!(
            lim >= need,
            "fd limit {lim} is below the {need} this herd needs: raise `ulimit -n`"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rows = rt.block_on(run(&p));
    report(&p, &rows);
}

async fn run(p: &Params) -> Vec<Row> {
    let backend = backend().await;
    let mut rows = Vec::new();
    for &alg in &p.algs {
        let valid = mint(alg, now() + 3600, "valid");
        let fresh = Arc::new(mint(alg, now() + 3600, "refreshed"));
        let ts = token_service(p.ts_latency, fresh.clone()).await;
        for round in 1..=p.rounds {
            let mut phases = vec![("refresh", true)];
            if p.baseline {
                phases.push(("baseline (valid token)", false));
            }
            // Expired a moment ago, as when a herd of clients shares one session whose
            // access token has just run out (leeway is 0 s).
            let expired = mint(alg, now() - p.expired_ago, "expired");
            for (phase, refresh) in phases {
                let sc = start_sidecar(p, alg, backend, ts.addr, &valid).await;
                let senders = connect(sc.port, p.conns).await.expect("connect to sidecar");
                let before = ts.calls.load(Ordering::SeqCst);
                let r = if refresh {
                    herd(
                        &senders,
                        p.n,
                        sc.port,
                        &expired,
                        Some(REFRESH_TOKEN),
                        &fresh,
                    )
                    .await
                } else {
                    herd(&senders, p.n, sc.port, &valid, None, &fresh).await
                };
                let calls = ts.calls.load(Ordering::SeqCst) - before;
                eprintln!(
                    "[herd] {alg:?} round {round} {phase}: {} requests, token-service calls {calls}, \
                     p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, statuses {:?}",
                    p.n,
                    pct(&r.latencies, 0.5),
                    pct(&r.latencies, 0.99),
                    pct(&r.latencies, 1.0),
                    r.statuses
                );
                drop(senders);
                drop(sc);
                rows.push(Row {
                    alg,
                    phase,
                    round,
                    calls,
                    r,
                });
            }
        }
    }
    rows
}

fn report(p: &Params, rows: &[Row]) {
    let ts_ms = p.ts_latency.as_secs_f64() * 1000.0;
    println!(
        "\n### Refresh herd: {} concurrent requests, one expired token + one refresh token, \
         token service {:.0} ms; sidecar worker_threads = {}, backend {}; client HTTP/2 over {} connections\n",
        p.n,
        ts_ms,
        p.workers,
        if p.backend_h2 { "HTTP/2" } else { "HTTP/1.1" },
        p.conns
    );
    println!("| alg | phase | round | token-service calls | 200 | with new token | p50 ms | p90 ms | p99 ms | max ms | all done ms |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let r = &row.r;
        let ok = r.statuses.get(&200).copied().unwrap_or(0);
        let others: Vec<String> = r
            .statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(s, n)| format!("{s}x{n}"))
            .collect();
        let okcol = if others.is_empty() {
            ok.to_string()
        } else {
            format!("{ok} (others: {})", others.join(", "))
        };
        let calls = if row.phase == "refresh" {
            row.calls.to_string()
        } else {
            format!("{} (none expected)", row.calls)
        };
        println!(
            "| {:?} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            row.alg,
            row.phase,
            row.round,
            calls,
            okcol,
            if row.phase == "refresh" {
                r.with_new_token.to_string()
            } else {
                "-".into()
            },
            pct(&r.latencies, 0.5),
            pct(&r.latencies, 0.9),
            pct(&r.latencies, 0.99),
            pct(&r.latencies, 1.0),
            r.wall.as_secs_f64() * 1000.0
        );
    }
    println!("\n| target | alg | measured (median of rounds) | verdict |");
    println!("|---|---|---|---|");
    for &alg in &p.algs {
        let herd: Vec<&Row> = rows
            .iter()
            .filter(|r| r.alg == alg && r.phase == "refresh")
            .collect();
        let base: Vec<&Row> = rows
            .iter()
            .filter(|r| r.alg == alg && r.phase != "refresh")
            .collect();
        let calls: Vec<u64> = herd.iter().map(|r| r.calls).collect();
        let all_ok = herd
            .iter()
            .all(|r| r.r.with_new_token == p.n && r.r.statuses.get(&200) == Some(&p.n));
        println!(
            "| exactly 1 token-service call per herd, every request 200 with the new token | {alg:?} | calls per round {calls:?}; all answered: {all_ok} | {} |",
            if calls.iter().all(|c| *c == 1) && all_ok { "PASS" } else { "FAIL" }
        );
        let med = |v: Vec<f64>| {
            let mut v = v;
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let p99 = med(herd.iter().map(|r| pct(&r.r.latencies, 0.99)).collect());
        let b99 = med(base.iter().map(|r| pct(&r.r.latencies, 0.99)).collect());
        let extra = if base.is_empty() {
            String::new()
        } else {
            format!(
                "; the same herd with a valid token (no refresh): p99 {b99:.1} ms (refresh minus baseline: {:+.1} ms)",
                p99 - b99
            )
        };
        println!(
            "| p99 <= token-service latency + 5 ms ({:.0} ms) | {alg:?} | p99 {p99:.1} ms{extra} | {} |",
            ts_ms + 5.0,
            if p99 <= ts_ms + 5.0 { "PASS" } else { "FAIL" }
        );
    }
}
