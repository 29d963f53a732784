//! Refresh herd across replicas: HERD_N requests at once, all with one expired access
//! token and its refresh token, spread round-robin over 3 sidecar processes sharing one
//! real `redis-server`, against the same herd on 1 sidecar without a shared store. Both
//! meet the same mock token service (rotation, reuse detection, family revocation;
//! TS_LATENCY_MS before each answer). Reports token-service calls (1 in both), statuses
//! and latency (p50, p99, max) per setup and round.
//!
//! Everything comes from tests/common: the real binary cargo builds alongside this bench,
//! the test backend, the mock token service, the Redis helper. Each round starts fresh
//! processes; every process is killed when its round ends (Drop), and the whole run is
//! bounded by HERD_LIMIT_S.
//!
//!   cargo bench --bench replicas_herd
//!   HERD_N=500 HERD_ROUNDS=1 cargo bench --bench replicas_herd
//!
//! | env | default | meaning |
//! |---|---|---|
//! | HERD_N | 1500 | concurrent requests per herd |
//! | TS_LATENCY_MS | 50 | token-service delay before it answers |
//! | HERD_ROUNDS | 3 | rounds per setup (fresh processes each) |
//! | HERD_LIMIT_S | 240 | bound on the whole run |

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::token_service::{Pair, TokenService};
use common::{Backend, Cfg, Lc, Sidecar, API_KEY, API_KEY_ENV, APP_SECRET, APP_SECRET_ENV};

const STORE_SECRET_ENV: &str = "BENCH_STORE_SECRET";
const STORE_SECRET: &str = "bench-shared-store-secret-5a7c9e1b3d5f7a9c1e3b";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Outcome {
    calls: usize,
    statuses: BTreeMap<String, usize>,
    lat: Vec<Duration>,
    wall: Duration,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn round(replicas: usize, n: usize, latency: Duration) -> Outcome {
    let redis = if replicas > 1 {
        Some(
            tokio::task::spawn_blocking(RedisServer::start)
                .await
                .expect("redis"),
        )
    } else {
        None
    };
    let backend = Backend::start().await;
    let ts = TokenService::start(API_KEY).await;
    ts.set_family_revocation(true);
    ts.set_latency(latency);
    let mut lc = Lc::for_service(&ts);
    lc.no_initiate().refresh("timeout", "\"10s\"");
    let mut cfg = Cfg::new(&backend.url())
        .env(API_KEY_ENV, API_KEY)
        .env(APP_SECRET_ENV, APP_SECRET)
        .env(STORE_SECRET_ENV, STORE_SECRET)
        .extra(&lc.render());
    if let Some(r) = &redis {
        cfg = cfg.extra(&format!(
            "[shared_store]\nurl = {}\nsecret = {{ env = {} }}\n",
            common::q(&r.url()),
            common::q(STORE_SECRET_ENV)
        ));
    }
    let scs: Vec<Sidecar> =
        futures_util::future::join_all((0..replicas).map(|_| Sidecar::start(&cfg))).await;
    let old: Pair = ts.expired_pair("bench-user");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(n)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let rb = client
            .get(scs[i % replicas].url("/api/messages"))
            .bearer_auth(&old.access)
            .header("x-refresh-token", &old.refresh);
        set.spawn(async move {
            let t = Instant::now();
            let status = match rb.send().await {
                Ok(r) => {
                    let s = r.status().as_u16().to_string();
                    let _ = r.bytes().await;
                    s
                }
                Err(e) if e.is_timeout() => "timeout".into(),
                Err(_) => "error".into(),
            };
            (status, t.elapsed())
        });
    }
    let mut statuses = BTreeMap::new();
    let mut lat = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        let (s, d) = r.expect("request task");
        *statuses.entry(s).or_insert(0) += 1;
        lat.push(d);
    }
    let wall = t0.elapsed();
    lat.sort();
    let calls = ts.refresh_calls() + ts.initiate_calls();
    drop(scs);
    drop(redis);
    Outcome {
        calls,
        statuses,
        lat,
        wall,
    }
}

async fn run() {
    let n: usize = env_or("HERD_N", 1500);
    let latency = Duration::from_millis(env_or("TS_LATENCY_MS", 50));
    let rounds: usize = env_or("HERD_ROUNDS", 3);
    println!(
        "replicas_herd: {n} requests with one expired pair, token service latency {latency:?}, {rounds} round(s)"
    );
    println!("| setup | round | calls | statuses | p50 | p99 | max | wall |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, replicas) in [("3 replicas + Redis", 3), ("1 replica", 1)] {
        for r in 1..=rounds {
            let o = round(replicas, n, latency).await;
            println!(
                "| {name} | {r} | {} | {:?} | {:.1} ms | {:.1} ms | {:.1} ms | {:.0} ms |",
                o.calls,
                o.statuses,
                pct(&o.lat, 0.5).as_secs_f64() * 1e3,
                pct(&o.lat, 0.99).as_secs_f64() * 1e3,
                o.lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
                o.wall.as_secs_f64() * 1e3
            );
        }
    }
}

fn main() {
    let limit = Duration::from_secs(env_or("HERD_LIMIT_S", 240));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if tokio::time::timeout(limit, run()).await.is_err() {
            eprintln!("replicas_herd: did not finish within {limit:?}");
            std::process::exit(1);
        }
    });
}
