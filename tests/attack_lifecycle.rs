//! Faults and abuse around the token lifecycle, against the real binary: refresh herds of
//! many users, rotation and reuse detection, stolen refresh tokens, clients that vanish
//! mid-refresh, hung and slow token services, malformed answers down to the byte, answers
//! for another user, template injection into the token-service request, JWKS outages and
//! unknown-kid storms, clock skew, and memory under 100 000 garbage tokens and 10 000
//! forged refresh attempts. Each test is bounded (< 30 s).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mock;
use common::token_service::{Mode, Pair, TokenService};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Rigs
// ---------------------------------------------------------------------------

/// The mock token service, a backend and the sidecar; `refresh` and `initiate` are the
/// lines of those sections (url and api key are filled in); `initiate = None` leaves
/// initiate off.
async fn rig(refresh: &str, initiate: Option<&str>) -> Rig<Backend, TokenService> {
    let ts = TokenService::start(API_KEY).await;
    let mut extra = format!(
        "[refresh]\nurl = {}\ntimeout = \"1s\"\nretry_after = \"2s\"\n{refresh}\n",
        q(&ts.refresh_url())
    );
    if let Some(i) = initiate {
        extra.push_str(&format!(
            "[initiate]\nurl = {}\napi_key = {{ env = {} }}\ntimeout = \"1s\"\n{i}\n",
            q(&ts.initiate_url()),
            q(API_KEY_ENV)
        ));
    }
    Rig::builder()
        .token_service(ts)
        .env(API_KEY_ENV, API_KEY)
        .cfg(move |c| c.extra(&extra))
        .start()
        .await
}

fn build(
    c: &reqwest::Client,
    sc: &Sidecar,
    access: &str,
    refresh: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut rb = c.get(sc.url("/api/messages")).bearer_auth(access);
    if let Some(r) = refresh {
        rb = rb.header("x-refresh-token", r);
    }
    rb
}

async fn send(sc: &Sidecar, access: &str, refresh: Option<&str>) -> Resp {
    Resp::from_reqwest(
        build(&client(), sc, access, refresh)
            .send()
            .await
            .expect("request"),
    )
    .await
}

async fn send_pair(sc: &Sidecar, p: &Pair) -> Resp {
    send(sc, &p.access, Some(&p.refresh)).await
}

/// `sub` of a JWT, read without verification (for checking whose token came back).
fn sub_of(token: &str) -> String {
    use base64::Engine;
    let p = token.split('.').nth(1).unwrap_or("");
    let v: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    v["sub"].as_str().unwrap_or("").to_string()
}

fn assert_unavailable(r: &Resp, ctx: &str) {
    assert_ne!(
        r.status, 401,
        "{ctx}: an outage must never be a 401 (it logs the user out)"
    );
    r.assert_error(503, "token_service_unavailable");
    assert!(r.header("retry-after").is_some(), "{ctx}: no Retry-After");
    assert!(r.header("x-auth-access-token").is_none(), "{ctx}");
}

async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// An HS256 access token for `sub` that expired `ago` seconds ago (valid signature).
fn expired_for(sub: &str, ago: i64) -> String {
    mint(
        Algorithm::HS256,
        &json!({"sub": sub, "email": format!("{sub}@example.com"), "name": format!("User {sub}"), "iat": now() - ago - 600, "exp": now() - ago}),
    )
}

// ---------------------------------------------------------------------------
// A token service that answers with exact bytes
// ---------------------------------------------------------------------------

/// What the raw token service does with one request.
#[derive(Clone)]
enum Act {
    /// Writes these bytes and closes.
    Send(Vec<u8>),
    /// Reads the request, never answers.
    Hang,
    /// Writes the head, then one byte every `gap`, forever.
    Drip(Vec<u8>, Duration),
}

type Script = Arc<dyn Fn(&str) -> Act + Send + Sync>;

struct RawService {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawService {
    async fn start(script: Script) -> RawService {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(Mutex::new(script));
        let (c2, s2) = (calls.clone(), script.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (c, sc) = (c2.clone(), s2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    // Head, then Content-Length bytes of body.
                    let body_text = loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text[..end]
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                break text;
                            }
                        }
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    let act = (sc.lock().unwrap().clone())(&body_text);
                    match act {
                        Act::Send(b) => {
                            let _ = s.write_all(&b).await;
                            let _ = s.shutdown().await;
                        }
                        Act::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        Act::Drip(head, gap) => {
                            if s.write_all(&head).await.is_err() {
                                return;
                            }
                            loop {
                                tokio::time::sleep(gap).await;
                                if s.write_all(b" ").await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        RawService {
            addr,
            calls,
            script,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/refresh", self.addr)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set(&self, s: Script) {
        *self.script.lock().unwrap() = s;
    }
}

fn http(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn json_200(v: &Value) -> Act {
    Act::Send(http(
        "200 OK",
        &[("Content-Type", "application/json")],
        &serde_json::to_vec(v).unwrap(),
    ))
}

async fn raw_rig(script: Script, refresh_extra: &str) -> (RawService, Backend, Sidecar) {
    let svc = RawService::start(script).await;
    let Rig { backend, sc, .. } = Rig::start_with(|c| {
        c.extra(&format!(
            "[refresh]\nurl = {}\ntimeout = \"1s\"\nretry_after = \"2s\"\n{refresh_extra}\n",
            q(&svc.url())
        ))
    })
    .await;
    (svc, backend, sc)
}

// ---------------------------------------------------------------------------
// Herds, rotation, reuse, stolen refresh tokens
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_herd_of_many_users_refreshes_once_each_and_never_mixes_identities() {
    bounded_for(LIMIT, async {
        let r = rig("", None).await;
        r.ts.set_latency(Duration::from_millis(200));
        let users: Vec<(String, Pair)> = (0..40)
            .map(|i| {
                let u = format!("user{i:02}");
                let p = r.ts.expired_pair(&u);
                (u, p)
            })
            .collect();
        let c = client();
        let mut set = tokio::task::JoinSet::new();
        for (u, p) in &users {
            for _ in 0..6 {
                let rb = build(&c, &r.sc, &p.access, Some(&p.refresh));
                let u = u.clone();
                set.spawn(async move { (u, Resp::from_reqwest(rb.send().await.unwrap()).await) });
            }
        }
        let mut mixed = Vec::new();
        while let Some(j) = set.join_next().await {
            let (u, resp) = j.unwrap();
            let e = resp.ok_echo();
            let got = e.header("x-auth-user-id").unwrap_or("").to_string();
            let new_sub = sub_of(resp.header("x-auth-access-token").unwrap_or(""));
            if got != u || new_sub != u {
                mixed.push(format!(
                    "{u} got identity {got} and a new token for {new_sub}"
                ));
            }
        }
        assert!(
            mixed.is_empty(),
            "identities mixed in the herd:\n{}",
            mixed.join("\n")
        );
        assert_eq!(
            r.ts.refresh_calls(),
            users.len(),
            "one refresh call per refresh token"
        );
        assert_eq!(r.ts.initiate_calls(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_of_a_rotated_refresh_token_after_grace_is_refused_and_never_gets_the_new_pair() {
    bounded_for(LIMIT, async {
        let r = rig("grace = \"1s\"\nrejected_ttl = \"1s\"", None).await;
        let old = r.ts.expired_pair("alice");
        let first = send_pair(&r.sc, &old).await;
        let new_access = first.header("x-auth-access-token").unwrap().to_string();
        let new_refresh = first.header("x-auth-refresh-token").unwrap().to_string();
        assert!(r.ts.is_used(&old.refresh));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // The old pair again (a thief replaying it, or a very late tab): the service
        // detects reuse; the sidecar refuses and hands out nothing.
        let replay = send_pair(&r.sc, &old).await;
        replay.assert_error(401, "refresh_rejected");
        assert!(replay.header("x-auth-access-token").is_none());
        assert!(!replay.text().contains(&new_access) && !replay.text().contains(&new_refresh));
        // Remembered as rejected: a replay storm does not reach the service.
        for _ in 0..20 {
            send_pair(&r.sc, &old)
                .await
                .assert_error(401, "refresh_rejected");
        }
        assert_eq!(
            r.ts.refresh_calls(),
            2,
            "one rotation and one detected reuse"
        );
        assert_eq!(r.backend.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_initiate_on_a_replayed_pair_starts_a_session_for_the_same_user_only() {
    bounded_for(LIMIT, async {
        // Product behaviour (README step 5): a rejected refresh falls back to initiate for
        // the user the expired token proves. docs/security.md lists the risk: an expired
        // access token younger than initiate.max_staleness is enough to start a session.
        let r = rig("grace = \"1s\"", Some("max_staleness = \"10m\"")).await;
        let old = r.ts.expired_pair_for("alice", 60);
        let _ = send_pair(&r.sc, &old).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let replay = send_pair(&r.sc, &old).await;
        let e = replay.ok_echo();
        assert_eq!(e.header("x-auth-user-id"), Some("alice"));
        assert_eq!(
            sub_of(replay.header("x-auth-access-token").unwrap()),
            "alice"
        );
        assert_eq!(r.ts.initiate_calls(), 1);
        // Expired longer ago than max_staleness: no session, however the refresh fails.
        let stale = r.ts.expired_pair_for("bob", 3600);
        let mut dead = stale.clone();
        dead.refresh = "rt-dead".into();
        send_pair(&r.sc, &dead)
            .await
            .assert_error(401, "refresh_rejected");
        assert_eq!(r.ts.initiate_calls(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_refresh_token_with_someone_elses_access_token_yields_no_tokens() {
    bounded_for(LIMIT, async {
        let r = rig("grace = \"5s\"", None).await;
        let alice = r.ts.expired_pair("alice");
        let mallory_expired = expired_for("mallory", 600);
        // Mallory's own (valid, expired) token with Alice's stolen refresh token.
        for _ in 0..3 {
            let resp = send(&r.sc, &mallory_expired, Some(&alice.refresh)).await;
            resp.assert_error(502, "token_service_bad_response");
            assert!(
                resp.header("x-auth-access-token").is_none()
                    && resp.header("x-auth-refresh-token").is_none()
            );
            assert!(!resp.text().contains("ey"), "a token in the error body");
        }
        assert_eq!(r.backend.count(), 0);
        // Alice, within the grace window, still gets the pair her refresh token bought.
        let mine = send_pair(&r.sc, &alice).await;
        assert_eq!(mine.ok_echo().header("x-auth-user-id"), Some("alice"));
        assert_eq!(sub_of(mine.header("x-auth-access-token").unwrap()), "alice");
        assert_eq!(r.ts.refresh_calls(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_user_is_a_502_on_refresh_and_on_initiate() {
    bounded_for(LIMIT, async {
        let r = rig("", Some("max_staleness = \"1h\"")).await;
        r.ts.set_refresh_mode(Mode::OtherUser);
        let p = r.ts.expired_pair("alice");
        let resp = send_pair(&r.sc, &p).await;
        resp.assert_error(502, "token_service_bad_response");
        // Refresh refused, initiate answers with Mallory's session for Alice's request.
        r.ts.set_refresh_mode(Mode::Reject(400));
        r.ts.set_initiate_mode(Mode::OtherUser);
        let p = r.ts.expired_pair_for("alice", 60);
        let resp = send_pair(&r.sc, &p).await;
        assert_ne!(
            resp.status,
            200,
            "initiate for alice returned mallory's session and the request went on as {:?}",
            resp.header("x-auth-access-token").map(sub_of)
        );
        resp.assert_error(502, "token_service_bad_response");
        assert!(resp.header("x-auth-access-token").is_none());
        assert_eq!(r.backend.count(), 0);
    })
    .await
}

// ---------------------------------------------------------------------------
// Cancellation, hung and slow token services
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_all_vanish_mid_refresh_leave_no_stuck_flight_behind() {
    bounded_for(LIMIT, async {
        let r = rig("", None).await;
        r.ts.set_refresh_mode(Mode::Hang);
        let p = r.ts.expired_pair("alice");
        let impatient = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(150))
            .build()
            .unwrap();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..30 {
            let rb = build(&impatient, &r.sc, &p.access, Some(&p.refresh));
            set.spawn(async move { rb.send().await.is_err() });
        }
        while let Some(j) = set.join_next().await {
            assert!(j.unwrap(), "a client was meant to give up");
        }
        assert_eq!(r.ts.refresh_calls(), 1, "30 waiters, one call");
        // The abandoned call times out (1 s) and is not cached as an answer: once the
        // service is back the same pair works with a second call.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        r.ts.set_refresh_mode(Mode::Normal);
        let started = Instant::now();
        let resp = send_pair(&r.sc, &p).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "stuck behind the abandoned flight"
        );
        assert_eq!(resp.ok_echo().header("x-auth-user-id"), Some("alice"));
        assert_eq!(r.ts.refresh_calls(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_or_slow_token_service_is_a_prompt_503_for_a_whole_herd() {
    bounded_for(LIMIT, async {
        let r = rig("", None).await;
        for (what, hang) in [("hung", true), ("slower than the timeout", false)] {
            if hang {
                r.ts.set_refresh_mode(Mode::Hang);
            } else {
                r.ts.set_refresh_mode(Mode::Normal);
                r.ts.set_latency(Duration::from_secs(3));
            }
            let p = r.ts.expired_pair("alice");
            let calls_before = r.ts.refresh_calls();
            let c = client();
            let started = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..60 {
                let rb = build(&c, &r.sc, &p.access, Some(&p.refresh));
                set.spawn(async move { Resp::from_reqwest(rb.send().await.unwrap()).await });
            }
            while let Some(j) = set.join_next().await {
                assert_unavailable(&j.unwrap(), what);
            }
            let took = started.elapsed();
            assert!(
                took < Duration::from_millis(4000),
                "{what}: the herd waited {took:?} (timeout is 1 s)"
            );
            assert!(
                r.ts.refresh_calls() - calls_before <= 2,
                "{what}: {} calls for one refresh token",
                r.ts.refresh_calls() - calls_before
            );
        }
        assert_eq!(r.backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_token_service_answers_are_503_or_502_never_401_never_forwarded() {
    bounded_for(LIMIT, async {
        let (svc, backend, sc) = raw_rig(Arc::new(|_: &str| Act::Hang), "").await;
        let alice_ok = mint(Algorithm::HS256, &claims("alice"));
        let alice_expired = expired_for("alice", 600);
        let mallory = mint(Algorithm::HS256, &claims("mallory"));
        let none = format!("{}.{}.", b64_json(&json!({"alg": "none"})), b64_json(&claims("alice")));
        let nested = format!("{{\"access_token\": {}1{}}}", "[".repeat(20_000), "]".repeat(20_000));
        let skewed_nbf = mint(Algorithm::HS256, &claims_with(json!({"sub": "alice", "nbf": now() + 120})));
        let cases: Vec<(&str, Act, u16)> = vec![
            ("not JSON", Act::Send(http("200 OK", &[], b"hello")), 503),
            ("HTML error page", Act::Send(http("200 OK", &[("Content-Type", "text/html")], b"<html>502</html>")), 503),
            ("invalid status line", Act::Send(b"HTTP/1.1 abc\r\n\r\n".to_vec()), 503),
            ("not HTTP at all", Act::Send(b"\x00\x01\x02\x03garbage\r\n\r\n".to_vec()), 503),
            ("closed without a byte", Act::Send(Vec::new()), 503),
            ("Content-Length larger than the body", Act::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"access_token\":\"".to_vec()), 503),
            ("access_token not a string", json_200(&json!({"access_token": 123})), 503),
            ("empty object", json_200(&json!({})), 503),
            ("JSON nested 20k deep", Act::Send(http("200 OK", &[], nested.as_bytes())), 503),
            ("1 MiB answer", Act::Send(http("200 OK", &[], &vec![b' '; 1024 * 1024])), 503),
            ("200 KiB header", Act::Send(http("200 OK", &[("X-Big", &"b".repeat(200 * 1024))], b"{}")), 503),
            ("head, then a byte a second", Act::Drip(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{".to_vec(), Duration::from_millis(300)), 503),
            ("endless chunked drip", Act::Drip(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), Duration::from_millis(100)), 503),
            ("head never finishes", Act::Drip(b"HTTP/1.1 200 OK\r\nX-Slow: ".to_vec(), Duration::from_millis(100)), 503),
            ("302 redirect", Act::Send(http("302 Found", &[("Location", "http://127.0.0.1:9/")], b"")), 503),
            ("204", Act::Send(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_vec()), 503),
            ("500", Act::Send(http("500 Internal Server Error", &[], b"{}")), 503),
            ("401 refusal", Act::Send(http("401 Unauthorized", &[], b"{\"error\":\"invalid_grant\"}")), 401),
            ("OAuth error in a 200", json_200(&json!({"error": "invalid_grant"})), 401),
            ("access token with CR LF", json_200(&json!({"access_token": "a\r\nX-Admin: 1", "refresh_token": "r"})), 502),
            ("refresh token with CR LF", json_200(&json!({"access_token": alice_ok, "refresh_token": "r\r\nSet-Cookie: x=1"})), 502),
            ("alg none access token", json_200(&json!({"access_token": none, "refresh_token": "r"})), 502),
            ("an expired access token", json_200(&json!({"access_token": alice_expired, "refresh_token": "r"})), 502),
            ("another user's token", json_200(&json!({"access_token": mallory, "refresh_token": "r"})), 502),
            ("a token valid only in 2 minutes (service clock ahead)", json_200(&json!({"access_token": skewed_nbf, "refresh_token": "r"})), 502),
            ("HTTP/1.0 without a length, valid", Act::Send(format!("HTTP/1.0 200 OK\r\n\r\n{{\"access_token\":\"{alice_ok}\",\"refresh_token\":\"r2\"}}").into_bytes()), 200),
            // Last: a 429 stops every call for its Retry-After (checked below).
            ("429", Act::Send(http("429 Too Many Requests", &[("Retry-After", "100")], b"{}")), 503),
        ];
        let mut failures = Vec::new();
        for (i, (what, act, want)) in cases.into_iter().enumerate() {
            svc.set(Arc::new(move |_: &str| act.clone()));
            let before = backend.count();
            let calls = svc.calls();
            let started = Instant::now();
            let rt = format!("rt-case-{i}");
            let resp = send(&sc, &alice_expired, Some(&rt)).await;
            let took = started.elapsed();
            let ok = match want {
                503 => resp.status == 503 && resp.header("x-auth-error") == Some("token_service_unavailable") && resp.header("retry-after").is_some(),
                502 => resp.status == 502 && resp.header("x-auth-error") == Some("token_service_bad_response"),
                401 => resp.status == 401 && resp.header("x-auth-error") == Some("refresh_rejected"),
                _ => resp.status == 200 && resp.header("x-backend") == Some("test"),
            };
            let forwarded = backend.count() - before;
            if !ok || (want != 200 && forwarded != 0) || (want == 200 && forwarded != 1) {
                failures.push(format!("{what}: wanted {want}, got {} {:?} {} (forwarded {forwarded})", resp.status, resp.header("x-auth-error"), resp.text()));
            }
            if want != 200 && resp.header("x-auth-access-token").is_some() {
                failures.push(format!("{what}: tokens handed out"));
            }
            if took > Duration::from_millis(4000) {
                failures.push(format!("{what}: took {took:?} (timeout 1 s)"));
            }
            if svc.calls() != calls + 1 {
                failures.push(format!("{what}: {} calls", svc.calls() - calls));
            }
            if what == "429" && resp.header("retry-after") != Some("100") {
                failures.push(format!("429: Retry-After {:?}, not the service's 100", resp.header("retry-after")));
            }
        }
        assert!(failures.is_empty(), "token-service answers:\n  {}", failures.join("\n  "));
    })
    .await
}

// ---------------------------------------------------------------------------
// Template injection into the token-service request
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_and_claims_cannot_inject_into_the_token_service_request() {
    bounded_for(LIMIT, async {
        let r = rig("", Some("max_staleness = \"1h\"")).await;
        r.ts.set_refresh_mode(Mode::Reject(400));
        for evil in [
            r#"rt","refresh_token":"attacker"#,
            r#"rt\","user_unique_id":"admin"#,
            r#"rt"}, "refresh_token": "attacker", "x": {"#,
            r#"{refresh_token}"#,
            r#"rt\u0022"#,
        ] {
            let access = expired_for("alice", 60);
            let _ = send(&r.sc, &access, Some(evil)).await;
            let body = r.ts.last_refresh().expect("a refresh call").json();
            assert_eq!(body["refresh_token"], json!(evil), "the refresh token was not sent as one JSON string: {body}");
            assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
        }
        // A claim that tries to rewrite the initiate body: JSON-escaped, the user stays alice.
        let access = mint(
            Algorithm::HS256,
            &json!({"sub": "alice", "name": "x\", \"user_unique_id\": \"admin", "iat": now() - 700, "exp": now() - 60}),
        );
        let resp = send(&r.sc, &access, Some("rt-dead")).await;
        let init = r.ts.last_initiate().expect("an initiate call").json();
        assert_eq!(init["user_unique_id"], json!("alice"), "{init}");
        assert_eq!(resp.ok_echo().header("x-auth-user-id"), Some("alice"));
    })
    .await
}

// ---------------------------------------------------------------------------
// JWKS faults
// ---------------------------------------------------------------------------

fn rs1_jwk() -> Value {
    let v: Value = serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
    v["keys"][0].clone()
}

async fn jwks_rig(jwks_url: &str, extra: &[(&str, &str)]) -> (Backend, Sidecar) {
    let Rig { backend, sc, .. } = Rig::start_with(|c| {
        let mut c = c
            .auth("algorithms", r#"["RS256"]"#)
            .no_auth_key("hmac_secret")
            .auth("jwks_url", &q(jwks_url))
            .auth("jwks_timeout", "\"1s\"");
        for (k, v) in extra {
            c = c.auth(k, v);
        }
        c
    })
    .await;
    (backend, sc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_kid_storm_refetches_the_jwks_at_most_once_per_interval() {
    bounded_for(LIMIT, async {
        let jwks = mock::JwksServer::start(vec![rs1_jwk()]).await;
        let (backend, sc) =
            jwks_rig(&jwks.url(), &[("jwks_unknown_kid_interval", "\"30s\"")]).await;
        let good = mint(Algorithm::RS256, &claims(SUB));
        assert!(
            eventually(Duration::from_secs(5), || jwks.fetches() >= 1).await,
            "the JWKS was never fetched"
        );
        let mut ok = false;
        for _ in 0..50 {
            if send(&sc, &good, None).await.status == 200 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "a valid token never passed");
        let base = jwks.fetches();
        let attacker = attacker_rsa_key();
        let c = client();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..300 {
            let t = sign_with_header(
                &json!({"alg": "RS256", "kid": format!("kid-{i}-{}", now())}),
                &claims(SUB),
                Algorithm::RS256,
                &attacker,
            );
            let rb = c.get(sc.url("/api/x")).bearer_auth(t);
            set.spawn(async move { Resp::from_reqwest(rb.send().await.unwrap()).await });
        }
        while let Some(j) = set.join_next().await {
            j.unwrap().assert_error(401, "invalid_token");
        }
        assert!(
            jwks.fetches() - base <= 1,
            "{} JWKS fetches for 300 unknown kids",
            jwks.fetches() - base
        );
        assert_eq!(backend.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_outage_is_a_503_and_bad_documents_never_replace_good_keys() {
    bounded_for(LIMIT, async {
        // Down before the sidecar starts: no keys is an outage, not a bad token.
        let jwks = mock::JwksServer::start(vec![rs1_jwk()]).await;
        jwks.set_down(true);
        let (backend, sc) = jwks_rig(&jwks.url(), &[("jwks_unknown_kid_interval", "\"1s\""), ("jwks_min_refresh", "\"1s\"")]).await;
        let good = mint(Algorithm::RS256, &claims(SUB));
        let r = send(&sc, &good, None).await;
        r.assert_error(503, "keys_unavailable");
        assert!(r.header("retry-after").is_some());
        assert_eq!(backend.count(), 0);
        // Back: keys load in the background.
        jwks.set_down(false);
        let mut ok = false;
        for _ in 0..100 {
            if send(&sc, &good, None).await.status == 200 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "keys never loaded after the JWKS came back");
        // Documents that must not replace the good set: empty, only an oct key, a weak
        // key, 5 000 junk keys (over the size cap). A refetch is forced by unknown kids.
        let junk: Vec<Value> = (0..5000).map(|i| json!({"kty": "RSA", "kid": format!("j{i}"), "n": "AQAB", "e": "AQAB", "x": "y".repeat(100)})).collect();
        for (what, keys) in [
            ("empty", vec![]),
            ("oct only", vec![json!({"kty": "oct", "kid": "rs1", "k": b64(HS_SECRET.as_bytes())})]),
            ("junk", junk),
        ] {
            jwks.set_keys(keys);
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let t = sign_with_header(&json!({"alg": "RS256", "kid": format!("force-{what}")}), &claims(SUB), Algorithm::RS256, &attacker_rsa_key());
            send(&sc, &t, None).await.assert_error(401, "invalid_token");
            let r = send(&sc, &good, None).await;
            assert_eq!(r.status, 200, "after a `{what}` JWKS the good key is gone: {}", r.text());
        }
        // An HS256 token signed with the oct key's secret never verifies.
        let hs = sign_with_header(&json!({"alg": "HS256", "kid": "rs1"}), &claims(SUB), Algorithm::HS256, &EncodingKey::from_secret(HS_SECRET.as_bytes()));
        send(&sc, &hs, None).await.assert_error(401, "invalid_token");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_jwks_endpoint_never_hangs_requests() {
    bounded_for(LIMIT, async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let (backend, sc) = jwks_rig(&format!("http://{addr}/jwks.json"), &[]).await;
        let c = client();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let rb = c
                .get(sc.url("/api/x"))
                .bearer_auth(mint(Algorithm::RS256, &claims(SUB)));
            set.spawn(async move {
                let started = Instant::now();
                let r = Resp::from_reqwest(rb.send().await.unwrap()).await;
                (r, started.elapsed())
            });
        }
        while let Some(j) = set.join_next().await {
            let (r, took) = j.unwrap();
            r.assert_error(503, "keys_unavailable");
            assert!(
                took < Duration::from_secs(3),
                "a request waited {took:?} on a hung JWKS"
            );
        }
        assert_eq!(backend.count(), 0);
    })
    .await
}

// ---------------------------------------------------------------------------
// Clock skew
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_within_the_leeway_is_absorbed_and_beyond_it_is_reported() {
    bounded_for(LIMIT, async {
        let (svc, backend, sc) = raw_rig(Arc::new(|_: &str| Act::Hang), "").await;
        let n = now();
        for (what, claims, want) in [
            (
                "issued 20 s in the future (nbf)",
                json!({"sub": "alice", "nbf": n + 20, "iat": n + 20, "exp": n + 620}),
                200,
            ),
            (
                "issued an hour in the future (iat only)",
                json!({"sub": "alice", "iat": n + 3600, "exp": n + 600}),
                200,
            ),
            (
                "exp 20 s ago (service clock behind, within leeway)",
                json!({"sub": "alice", "iat": n - 620, "exp": n - 20}),
                200,
            ),
            (
                "exp 2 min ago (service clock behind)",
                json!({"sub": "alice", "iat": n - 720, "exp": n - 120}),
                502,
            ),
            (
                "nbf 2 min ahead (service clock ahead)",
                json!({"sub": "alice", "nbf": n + 120, "exp": n + 720}),
                502,
            ),
        ] {
            let t = mint(Algorithm::HS256, &claims);
            svc.set(Arc::new(move |_: &str| {
                json_200(&json!({"access_token": t, "refresh_token": "r"}))
            }));
            let resp = send(&sc, &expired_for("alice", 600), Some(&format!("rt-{what}"))).await;
            assert_eq!(resp.status, want, "{what}: {}", resp.text());
            if want == 502 {
                resp.assert_error(502, "token_service_bad_response");
            }
        }
        assert_eq!(backend.count(), 3);
    })
    .await
}

// ---------------------------------------------------------------------------
// Memory under garbage
// ---------------------------------------------------------------------------

/// Sends `reqs` pipelined on `conns` connections (batches of 256); returns statuses.
async fn pipeline(addr: SocketAddr, reqs: Vec<String>, conns: usize) -> Vec<u16> {
    let per = reqs.len().div_ceil(conns);
    let mut set = tokio::task::JoinSet::new();
    for part in reqs.chunks(per).map(|c| c.to_vec()) {
        set.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.set_nodelay(true);
            let mut out = Vec::with_capacity(part.len());
            let mut buf: Vec<u8> = Vec::new();
            let mut chunk = vec![0u8; 256 * 1024];
            for batch in part.chunks(256) {
                let bytes: String = batch.concat();
                s.write_all(bytes.as_bytes()).await.unwrap();
                let mut got = 0;
                while got < batch.len() {
                    // Parse as many complete responses as the buffer holds.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        out.push(head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0));
                        buf.drain(..end + 4 + len);
                        got += 1;
                    }
                    if got >= batch.len() {
                        break;
                    }
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the proxy closed a pipelined connection");
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(j) = set.join_next().await {
        all.extend(j.unwrap());
    }
    all
}

fn rand_b64(seed: u64, len: usize) -> String {
    // xorshift: deterministic, unique per seed.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len);
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.push(x as u8);
    }
    b64(&bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_stays_bounded_under_100k_garbage_tokens_and_10k_forged_refreshes() {
    bounded_for(Duration::from_secs(60), async {
        let r = rig("", Some("when_refresh_token_missing = true")).await;
        let pid = r.sc.pid().unwrap();
        let rss0 = vm_rss_kb(pid);
        let header = b64_json(&json!({"alg": "HS256", "typ": "JWT"}));
        // 100 000 distinct garbage tokens: JWT-shaped with a real header (the HMAC path),
        // random segments, and alg-none.
        let started = Instant::now();
        let reqs: Vec<String> = (0..100_000u64)
            .map(|i| {
                let t = match i % 3 {
                    0 => format!("{header}.{}.{}", rand_b64(i, 60), rand_b64(i + 7, 32)),
                    1 => format!(
                        "{}.{}.{}",
                        rand_b64(i, 20),
                        rand_b64(i + 3, 40),
                        rand_b64(i + 5, 32)
                    ),
                    _ => format!("{}.{}.", b64_json(&json!({"alg": "none"})), rand_b64(i, 48)),
                };
                format!("GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\n\r\n")
            })
            .collect();
        let st = pipeline(r.sc.addr, reqs, 8).await;
        assert_eq!(st.len(), 100_000);
        assert!(
            st.iter().all(|s| *s == 401),
            "{:?}",
            st.iter().filter(|s| **s != 401).take(5).collect::<Vec<_>>()
        );
        let rss1 = vm_rss_kb(pid);
        eprintln!(
            "100k garbage tokens in {:?}; RSS {rss0} -> {rss1} kB",
            started.elapsed()
        );

        // 10 000 forged refresh attempts: expired tokens for alice with bad signatures,
        // each with a random refresh token (and some with none, initiate being allowed
        // without one): none may reach the token service.
        let live = expired_for("alice", 60);
        let (msg, _) = live.rsplit_once('.').unwrap();
        let started = Instant::now();
        let reqs: Vec<String> = (0..10_000u64)
            .map(|i| {
                let forged = format!("{msg}.{}", rand_b64(i, 32));
                let rt = if i % 4 == 0 {
                    String::new()
                } else {
                    format!("X-Refresh-Token: rt-{}\r\n", rand_b64(i, 24))
                };
                format!(
                    "GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {forged}\r\n{rt}\r\n"
                )
            })
            .collect();
        let st = pipeline(r.sc.addr, reqs, 8).await;
        assert!(st.iter().all(|s| *s == 401));
        let rss2 = vm_rss_kb(pid);
        eprintln!(
            "10k forged refreshes in {:?}; RSS {rss2} kB",
            started.elapsed()
        );
        assert_eq!(r.ts.calls(), 0, "a forged token reached the token service");
        assert_eq!(r.backend.count(), 0);
        for (when, rss) in [
            ("after 100k garbage tokens", rss1),
            ("after 10k forged refreshes", rss2),
        ] {
            assert!(rss < 200 * 1024, "sidecar RSS {rss} kB {when}");
        }
    })
    .await
}
