//! Several replicas sharing one store: three real sidecar processes in front of one real
//! backend, one real `redis-server` (tests/common/redis.rs) and one mock token service
//! that rotates refresh tokens, refuses a reused one and then revokes its whole family.
//! Requests are spread round-robin over the replicas. Each refresh and initiate must be
//! made once across all of them; a dead replica or a dead, hung or missing Redis must
//! never cost a client its session; the store must hold nothing readable and nothing
//! forever; valid tokens must never touch it.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::token_service::{Pair, TokenService};
use common::*;

const PATH: &str = "/api/messages";
const STORE_SECRET_ENV: &str = "TEST_STORE_SECRET";
const STORE_SECRET: &str = "itest-shared-store-secret-9d2e4c6a8b0f1e3d5c7a9b";

// ---------------------------------------------------------------------------
// Rig: N sidecars, one backend, one token service, one Redis
// ---------------------------------------------------------------------------

struct Replicas {
    backend: Backend,
    ts: TokenService,
    redis: Option<RedisServer>,
    scs: Vec<Sidecar>,
}

/// `[shared_store]` with `url` and the test secret, plus `overrides` (TOML literals).
fn store_section(url: &str, overrides: &[(&str, &str)]) -> String {
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    m.insert("url".into(), q(url));
    m.insert(
        "secret".into(),
        format!("{{ env = {} }}", q(STORE_SECRET_ENV)),
    );
    for (k, v) in overrides {
        m.insert((*k).into(), (*v).into());
    }
    let mut s = String::from("[shared_store]\n");
    for (k, v) in m {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s
}

impl Replicas {
    /// A Redis, then `n` sidecars sharing it, with `store` overrides and the lifecycle
    /// sections changed by `lc`.
    async fn start(n: usize, store: &[(&str, &str)], lc: impl Fn(&mut Lc)) -> Replicas {
        let redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .expect("start redis");
        let url = redis.url();
        Self::start_on(n, Some(redis), &url, store, lc).await
    }

    async fn start_on(
        n: usize,
        redis: Option<RedisServer>,
        url: &str,
        store: &[(&str, &str)],
        lc: impl Fn(&mut Lc),
    ) -> Replicas {
        let backend = Backend::start().await;
        let ts = TokenService::start(API_KEY).await;
        ts.set_family_revocation(true);
        let mut l = Lc::for_service(&ts);
        lc(&mut l);
        let cfg = Cfg::new(&backend.url())
            .env(API_KEY_ENV, API_KEY)
            .env(APP_SECRET_ENV, APP_SECRET)
            .env(STORE_SECRET_ENV, STORE_SECRET)
            .extra(&l.render())
            .extra(&store_section(url, store));
        let scs = futures_util::future::join_all((0..n).map(|_| Sidecar::start(&cfg))).await;
        Replicas {
            backend,
            ts,
            redis,
            scs,
        }
    }

    fn redis(&self) -> &RedisServer {
        self.redis.as_ref().expect("no redis")
    }

    /// Sum of a counter over every replica.
    async fn coord_total(&self, call: &str, outcome: &str) -> f64 {
        let mut t = 0.0;
        for sc in &self.scs {
            t += coord(sc, call, outcome).await;
        }
        t
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

fn request(c: &reqwest::Client, sc: &Sidecar, p: &Pair) -> reqwest::RequestBuilder {
    c.get(sc.url(PATH))
        .bearer_auth(&p.access)
        .header("x-refresh-token", &p.refresh)
}

/// One answer of a herd: which replica, the response (or the transport error), and how
/// long it took.
struct Answer {
    replica: usize,
    resp: Result<Resp, String>,
    took: Duration,
}

impl Answer {
    fn ok(&self) -> &Resp {
        self.resp
            .as_ref()
            .unwrap_or_else(|e| panic!("request to replica {} failed: {e}", self.replica))
    }
}

/// Sends `n` requests with `p` at once, request `i` to replica `pick(i)`.
async fn herd_on(
    scs: &[Sidecar],
    n: usize,
    p: &Pair,
    pick: impl Fn(usize) -> usize,
) -> tokio::task::JoinSet<Answer> {
    let c = client();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let replica = pick(i);
        let rb = request(&c, &scs[replica], p);
        set.spawn(async move {
            let t0 = Instant::now();
            let resp = match rb.send().await {
                Ok(r) => Ok(Resp::from_reqwest(r).await),
                Err(e) => Err(e.to_string()),
            };
            Answer {
                replica,
                resp,
                took: t0.elapsed(),
            }
        });
    }
    set
}

async fn collect(mut set: tokio::task::JoinSet<Answer>) -> Vec<Answer> {
    let mut out = Vec::new();
    while let Some(a) = set.join_next().await {
        out.push(a.expect("request task panicked"));
    }
    out
}

/// `n` requests with `p`, round-robin over every replica; every answer.
async fn herd(r: &Replicas, n: usize, p: &Pair) -> Vec<Answer> {
    let k = r.scs.len();
    collect(herd_on(&r.scs, n, p, |i| i % k).await).await
}

async fn send_pair(sc: &Sidecar, p: &Pair) -> Resp {
    common::send(request(&client(), sc, p)).await
}

/// Asserts a 200 from the backend for `sub` after a renewal; returns the new pair.
fn renewed(r: &Resp, sub: &str) -> Pair {
    let echo = r.ok_echo();
    assert_eq!(
        echo.header("x-auth-user-id"),
        Some(sub),
        "the backend must see the user"
    );
    let access = r
        .header("x-auth-access-token")
        .unwrap_or_else(|| panic!("no x-auth-access-token: {:?}", r.headers))
        .to_string();
    let refresh = r
        .header("x-auth-refresh-token")
        .unwrap_or_else(|| panic!("no x-auth-refresh-token: {:?}", r.headers))
        .to_string();
    assert_eq!(
        echo.header("authorization"),
        Some(format!("Bearer {access}").as_str()),
        "the backend must get the new access token"
    );
    assert!(echo.header("x-refresh-token").is_none());
    Pair { access, refresh }
}

fn percentile(lat: &[Duration], p: f64) -> Duration {
    let mut v = lat.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Polls `cond` every 10 ms for up to `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// Sum of the samples of `name` whose labels include every one of `labels`.
async fn metric(sc: &Sidecar, name: &str, labels: &[(&str, &str)]) -> f64 {
    let r = common::send(client().get(sc.admin_url("/metrics"))).await;
    assert_eq!(r.status, 200, "/metrics: {}", r.text());
    let mut total = 0.0;
    for line in r.text().lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels_part, value) = match rest.strip_prefix('{') {
            Some(x) => match x.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        if labels.iter().all(|(k, v)| {
            labels_part
                .split(',')
                .any(|kv| kv == format!("{k}=\"{v}\""))
        }) {
            total += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}

async fn coord(sc: &Sidecar, call: &str, outcome: &str) -> f64 {
    metric(
        sc,
        "auth_sidecar_store_coordination_total",
        &[("call", call), ("outcome", outcome)],
    )
    .await
}

// ---------------------------------------------------------------------------
// Herds across replicas
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_requests_over_three_replicas_make_one_refresh_call() {
    bounded(async {
        let r = Replicas::start(3, &[], |_| {}).await;
        r.ts.set_latency(Duration::from_millis(300));
        let old = r.ts.expired_pair("alice");
        let answers = herd(&r, 300, &old).await;
        assert_eq!(answers.len(), 300);
        let issued =
            r.ts.last_issued()
                .expect("the token service issued nothing");
        for a in &answers {
            let p = renewed(a.ok(), "alice");
            assert_eq!(
                p, issued,
                "replica {}: every response carries the one new pair",
                a.replica
            );
        }
        assert_eq!(
            r.ts.refresh_calls(),
            1,
            "one refresh call across three replicas"
        );
        assert_eq!(r.ts.initiate_calls(), 0);
        assert_eq!(r.backend.count(), 300);
        assert_eq!(
            r.ts.families_revoked(),
            0,
            "no reuse reached the token service"
        );
        // The old pair again, on each replica, within grace: the same new pair, no call.
        for (i, sc) in r.scs.iter().enumerate() {
            let p = renewed(&send_pair(sc, &old).await, "alice");
            assert_eq!(p, issued, "replica {i}: the old pair within grace");
        }
        assert_eq!(r.ts.refresh_calls(), 1, "grace: no further refresh calls");
        assert_eq!(r.coord_total("refresh", "won").await, 1.0);
        assert_eq!(
            r.coord_total("refresh", "waited").await,
            2.0,
            "each other replica took the winner's pair (once: its local single flight)"
        );
        assert_eq!(r.coord_total("refresh", "fallback").await, 0.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_refresh_token_over_three_replicas_initiates_once() {
    bounded(async {
        let r = Replicas::start(3, &[], |_| {}).await;
        r.ts.set_latency(Duration::from_millis(200));
        let mut old = r.ts.expired_pair("alice");
        old.refresh = "rt-revoked-by-the-vendor".into();
        let answers = herd(&r, 300, &old).await;
        let issued = r.ts.last_issued().expect("nothing issued");
        for a in &answers {
            let p = renewed(a.ok(), "alice");
            assert_eq!(p, issued, "replica {}: the one initiated pair", a.replica);
        }
        assert_eq!(
            r.ts.initiate_calls(),
            1,
            "one initiate across three replicas"
        );
        assert_eq!(
            r.ts.refresh_calls(),
            1,
            "one refresh call (refused) across three replicas"
        );
        assert_eq!(r.coord_total("initiate", "won").await, 1.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_refresh_token_is_refused_once_for_every_replica() {
    bounded(async {
        let r = Replicas::start(3, &[], |lc| {
            lc.no_initiate();
        })
        .await;
        r.ts.set_latency(Duration::from_millis(100));
        let mut old = r.ts.expired_pair("alice");
        old.refresh = "rt-dead-dead-dead".into();
        for a in herd(&r, 60, &old).await {
            a.ok().assert_error(401, "refresh_rejected");
        }
        for round in 0..3 {
            for (i, sc) in r.scs.iter().enumerate() {
                let resp = send_pair(sc, &old).await;
                assert_eq!(resp.status, 401, "round {round}, replica {i}");
                resp.assert_error(401, "refresh_rejected");
            }
        }
        assert_eq!(
            r.ts.refresh_calls(),
            1,
            "within rejected_ttl a rejection is shared by every replica"
        );
        assert_eq!(r.backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_service_slower_than_the_lease_still_gets_one_call() {
    bounded(async {
        let r = Replicas::start(
            3,
            &[("lease", "\"1s\""), ("wait_timeout", "\"10s\"")],
            |lc| {
                lc.refresh("timeout", "\"5s\"");
            },
        )
        .await;
        r.ts.set_latency(Duration::from_millis(2500));
        let old = r.ts.expired_pair("alice");
        let answers = herd(&r, 30, &old).await;
        let issued = r.ts.last_issued().expect("nothing issued");
        for a in &answers {
            assert_eq!(renewed(a.ok(), "alice"), issued);
        }
        assert_eq!(
            r.ts.refresh_calls(),
            1,
            "the lease is renewed while the call runs: nobody takes it over"
        );
        assert_eq!(r.coord_total("refresh", "took_over").await, 0.0);
        assert_eq!(r.ts.families_revoked(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_winner_killed_mid_refresh_costs_no_session() {
    bounded(async {
        let r = Replicas::start(3, &[("lease", "\"1s\""), ("wait_timeout", "\"10s\"")], |lc| {
            lc.no_initiate().refresh("timeout", "\"5s\"");
        })
        .await;
        r.ts.set_latency(Duration::from_millis(2000));
        let old = r.ts.expired_pair("alice");
        // Replica 0 alone first: it takes the lease and calls.
        let first = herd_on(&r.scs, 1, &old, |_| 0).await;
        assert!(
            eventually(Duration::from_secs(5), || r.ts.refresh_calls() == 1).await,
            "replica 0 did not call the token service"
        );
        assert_eq!(coord(&r.scs[0], "refresh", "won").await, 1.0);
        // The rest on replicas 1 and 2: they wait on replica 0's lease.
        let rest = herd_on(&r.scs, 40, &old, |i| 1 + i % 2).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        r.scs[0].signal("KILL");
        let killed_at = Instant::now();
        let rest = collect(rest).await;
        let first = collect(first).await;
        // Replica 0's own client lost its connection (or, never, a 503).
        for a in &first {
            if let Ok(resp) = &a.resp {
                assert_ne!(resp.status, 401, "replica 0's client: {}", resp.text());
            }
        }
        let calls = r.ts.refresh_calls();
        let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
        for a in &rest {
            *statuses.entry(a.ok().status).or_default() += 1;
        }
        let detail = format!(
            "statuses {statuses:?}, refresh calls {calls}, families revoked {}, answered {:?} after the kill\n--- replica 1 ---\n{}",
            r.ts.families_revoked(),
            killed_at.elapsed(),
            r.scs[1].logs()
        );
        assert!(calls <= 2, "at most 2 refresh calls in all: {detail}");
        assert!(!statuses.contains_key(&401), "no 401 after a replica died: {detail}");
        let issued = r.ts.last_issued().expect("nothing issued");
        for a in &rest {
            assert_eq!(renewed(a.ok(), "alice"), issued, "{detail}");
        }
        assert!(
            coord(&r.scs[1], "refresh", "took_over").await
                + coord(&r.scs[2], "refresh", "took_over").await
                == 1.0,
            "one survivor took the lease over: {detail}"
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// Redis down, hung, back
// ---------------------------------------------------------------------------

/// Token-service latency in the outage test.
const OUTAGE_TS_LATENCY: Duration = Duration::from_millis(200);
const OUTAGE_OP_TIMEOUT: Duration = Duration::from_millis(150);
/// Beyond operation_timeout + the token service's latency: one more token-service
/// latency (a replica that fell back sends a refresh token another replica already
/// rotated; the service refuses it and the replica initiates a new session: a second
/// call), plus 1 s for two shared cores running 3 sidecars, Redis, the token service, the
/// backend and the client herd.
const OUTAGE_MARGIN: Duration = Duration::from_millis(1200);

fn check_phase(name: &str, answers: &[Answer], sub: &str) -> Duration {
    for a in answers {
        let resp = a.ok();
        assert_eq!(
            resp.status,
            200,
            "{name}: replica {}: {} {}",
            a.replica,
            resp.status,
            resp.text()
        );
        renewed(resp, sub);
    }
    let lat: Vec<Duration> = answers.iter().map(|a| a.took).collect();
    let p99 = percentile(&lat, 0.99);
    let bound = OUTAGE_OP_TIMEOUT + OUTAGE_TS_LATENCY + OUTAGE_MARGIN;
    eprintln!(
        "{name}: {} requests, p50 {:?}, p99 {p99:?} (bound {bound:?})",
        answers.len(),
        percentile(&lat, 0.5)
    );
    assert!(p99 <= bound, "{name}: p99 {p99:?} over {bound:?}");
    p99
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_hung_and_back_never_fails_a_request() {
    bounded(async {
        let backoff = Duration::from_secs(1);
        let mut r = Replicas::start(
            3,
            &[("operation_timeout", "\"150ms\""), ("backoff", "\"1s\"")],
            |_| {},
        )
        .await;
        r.ts.set_latency(OUTAGE_TS_LATENCY);

        // Killed mid-herd.
        let p1 = r.ts.expired_pair("alice");
        let set = herd_on(&r.scs, 90, &p1, |i| i % 3).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        r.redis.as_mut().unwrap().kill();
        let answers = collect(set).await;
        check_phase("redis killed mid-herd", &answers, "alice");
        let fallback_killed = r.coord_total("refresh", "fallback").await;

        // Hung (SIGSTOP): back on its port, then stopped, once the backoff is over.
        tokio::task::block_in_place(|| r.redis.as_mut().unwrap().restart());
        tokio::time::sleep(backoff + Duration::from_millis(300)).await;
        r.redis().stop();
        let p2 = r.ts.expired_pair("bob");
        let answers = herd(&r, 90, &p2).await;
        check_phase("redis hung", &answers, "bob");
        let fallback_hung = r.coord_total("refresh", "fallback").await;
        r.redis().cont();
        let conted = Instant::now();

        // Back: each replica coordinates again once a store operation succeeds after the
        // backoff. Probed with one fresh pair per replica and round until it does.
        tokio::time::sleep(backoff + Duration::from_millis(300)).await;
        let mut resumed: Vec<Option<Duration>> = vec![None; r.scs.len()];
        let mut probe = 0;
        while resumed.iter().any(Option::is_none) {
            assert!(
                conted.elapsed() < backoff + Duration::from_secs(6),
                "coordination did not resume within {:?} of SIGCONT: {resumed:?}",
                backoff + Duration::from_secs(6)
            );
            for (i, sc) in r.scs.iter().enumerate() {
                if resumed[i].is_some() {
                    continue;
                }
                let before = coord(sc, "refresh", "fallback").await;
                let user = format!("probe-{probe}");
                probe += 1;
                let p = r.ts.expired_pair(&user);
                renewed(&send_pair(sc, &p).await, &user);
                if coord(sc, "refresh", "fallback").await == before {
                    resumed[i] = Some(conted.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("coordination resumed after SIGCONT (backoff {backoff:?}): {resumed:?}");
        let fallback_probes = r.coord_total("refresh", "fallback").await;

        let won_before = r.coord_total("refresh", "won").await;
        let waited_before = r.coord_total("refresh", "waited").await;
        let calls_before = r.ts.refresh_calls();
        let p3 = r.ts.expired_pair("carol");
        let answers = herd(&r, 90, &p3).await;
        check_phase("redis back", &answers, "carol");
        let won = r.coord_total("refresh", "won").await - won_before;
        let waited = r.coord_total("refresh", "waited").await - waited_before;
        let calls = r.ts.refresh_calls() - calls_before;
        let fallback_back = r.coord_total("refresh", "fallback").await - fallback_probes;

        let detail = format!(
            "fallback: killed {fallback_killed}, hung {}, back {fallback_back}; back: won {won}, waited {waited}, calls {calls}",
            fallback_hung - fallback_killed
        );
        eprintln!("{detail}");
        let store_logs = |sc: &Sidecar| {
            sc.logs()
                .lines()
                .filter(|l| l.contains("store"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let detail = format!(
            "{detail}\n--- replica 0, store lines ---\n{}\n--- replica 1 ---\n{}",
            store_logs(&r.scs[0]),
            store_logs(&r.scs[1])
        );
        assert!(fallback_killed >= 1.0, "fallback while Redis was killed: {detail}");
        assert!(fallback_hung > fallback_killed, "fallback while Redis hung: {detail}");
        assert_eq!(won, 1.0, "coordination resumed: {detail}");
        assert_eq!(waited, 2.0, "coordination resumed: {detail}");
        assert_eq!(fallback_back, 0.0, "{detail}");
        assert_eq!(calls, 1, "one refresh call once Redis is back: {detail}");
        for (i, sc) in r.scs.iter().enumerate() {
            assert_eq!(
                metric(sc, "auth_sidecar_store_up", &[]).await,
                1.0,
                "replica {i}: store up again"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_from_the_start_replicas_start_ready_and_refresh() {
    bounded(async {
        let url = format!("redis://{}/0", refusing_addr());
        let r = Replicas::start_on(3, None, &url, &[], |lc| {
            lc.no_initiate();
        })
        .await;
        for (i, sc) in r.scs.iter().enumerate() {
            let resp = common::send(client().get(sc.admin_url("/readyz"))).await;
            assert_eq!(resp.status, 200, "replica {i} /readyz: {}", resp.text());
        }
        r.ts.set_latency(Duration::from_millis(100));
        // Each replica its own user's herd, all at once.
        let pairs: Vec<Pair> = ["alice", "bob", "carol"]
            .iter()
            .map(|u| r.ts.expired_pair(u))
            .collect();
        let mut sets = Vec::new();
        for (i, p) in pairs.iter().enumerate() {
            sets.push(herd_on(&r.scs, 20, p, |_| i).await);
        }
        for (i, set) in sets.into_iter().enumerate() {
            for a in collect(set).await {
                renewed(a.ok(), ["alice", "bob", "carol"][i]);
            }
        }
        assert_eq!(
            r.ts.refresh_calls(),
            3,
            "one call per replica (its own single flight)"
        );
        for (i, sc) in r.scs.iter().enumerate() {
            assert!(coord(sc, "refresh", "fallback").await >= 1.0, "replica {i}");
            assert_eq!(
                metric(sc, "auth_sidecar_store_up", &[]).await,
                0.0,
                "replica {i}"
            );
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// What the store holds, and what it is asked
// ---------------------------------------------------------------------------

/// Windows of `s` (every 12 bytes, overlapping) and `s` itself.
fn pieces(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    let mut out = vec![s.to_string()];
    if b.len() > 12 {
        for i in (0..=b.len() - 12).step_by(4) {
            out.push(String::from_utf8_lossy(&b[i..i + 12]).into_owned());
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_holds_no_token_secret_or_user_in_plain_text_and_nothing_forever() {
    bounded(async {
        let r = Replicas::start(3, &[], |_| {}).await;
        r.ts.set_latency(Duration::from_millis(100));
        let user = "dana-dump-user";
        let email = "dana-dump-user@example.com";
        // Refresh herd, then a dead refresh token (initiate), then the old pair again.
        let old = r.ts.expired_pair(user);
        for a in herd(&r, 30, &old).await {
            renewed(a.ok(), user);
        }
        let mut dead = r.ts.expired_pair(user);
        dead.refresh = "rt-dead-token-of-dana-0001".into();
        for a in herd(&r, 30, &dead).await {
            renewed(a.ok(), user);
        }
        for sc in &r.scs {
            renewed(&send_pair(sc, &old).await, user);
        }
        assert_eq!(r.ts.refresh_calls(), 2);
        assert_eq!(r.ts.initiate_calls(), 1);

        let dump = tokio::task::block_in_place(|| r.redis().dump());
        assert!(
            dump.len() >= 3,
            "expected at least the refresh result, the rejection and the initiate result: {:?}",
            dump.iter()
                .map(|e| String::from_utf8_lossy(&e.key))
                .collect::<Vec<_>>()
        );
        let mut secrets: Vec<(String, String)> = Vec::new();
        for p in r.ts.issued().iter().chain([&old, &dead]) {
            secrets.push(("access token".into(), p.access.clone()));
            secrets.push(("refresh token".into(), p.refresh.clone()));
            // The payload and signature of the JWT on their own.
            for part in p.access.split('.') {
                secrets.push(("access token part".into(), part.to_string()));
            }
        }
        for (what, s) in [
            ("API key", API_KEY),
            ("app identity secret", APP_SECRET),
            ("HS256 secret", HS_SECRET),
            ("store secret", STORE_SECRET),
            ("user", user),
            ("email", email),
        ] {
            secrets.push((what.into(), s.into()));
        }
        for e in &dump {
            let shown = String::from_utf8_lossy(&e.key).into_owned();
            assert!(e.pttl_ms > 0, "key {shown} has no TTL (PTTL {})", e.pttl_ms);
            for (what, s) in &secrets {
                for piece in pieces(s) {
                    for (where_, hay) in [("key", &e.key), ("value", &e.value)] {
                        assert!(
                            !find(hay, piece.as_bytes()),
                            "the {where_} of {shown} ({}) holds part of a {what}: {piece:?}",
                            e.kind
                        );
                    }
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn valid_tokens_make_no_redis_commands() {
    bounded(async {
        let r = Replicas::start(3, &[], |_| {}).await;
        // One refresh first, so each replica has its connection and scripts.
        let old = r.ts.expired_pair("alice");
        for a in herd(&r, 3, &old).await {
            renewed(a.ok(), "alice");
        }
        let before = r.redis().commandstats_from_clients();
        assert!(
            !before.is_empty(),
            "the refresh must have used Redis (sanity): {before:?}"
        );
        r.redis().config_resetstat();
        let tokens: Vec<String> = (0..20).map(|i| valid_for(&format!("user-{i}"))).collect();
        let c = client();
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..2000 {
            let rb = c
                .get(r.scs[i % 3].url(PATH))
                .bearer_auth(&tokens[i % tokens.len()]);
            let permit = sem.clone().acquire_owned().await.unwrap();
            set.spawn(async move {
                let resp = common::send(rb).await;
                drop(permit);
                resp.status
            });
        }
        let mut ok = 0;
        while let Some(s) = set.join_next().await {
            assert_eq!(s.unwrap(), 200);
            ok += 1;
        }
        assert_eq!(ok, 2000);
        let after = r.redis().commandstats_from_clients();
        assert!(
            after.is_empty(),
            "valid tokens must not reach the store; Redis saw {after:?}"
        );
        assert_eq!(r.ts.calls(), 1);
    })
    .await
}
