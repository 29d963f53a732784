//! The backend connection pool, seen from outside: the real binary in front of a small
//! HTTP/1.1 backend written here that counts the connections it accepts and holds, and
//! can misbehave the way real backends do (close a kept-alive connection right after
//! answering, stream a body slowly).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `200 ok`, keep-alive, for as long as the proxy keeps the connection.
    KeepAlive,
    /// Answers one request, then closes without saying so (no `Connection: close`):
    /// what a backend whose keep-alive timeout just fired looks like to the proxy.
    CloseAfterOne,
    /// `/slow` gets headers and the first half of a 64 KiB body, then the rest after 2 s.
    SlowBody,
}

struct CountingBackend {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    /// The most connections open at once.
    peak: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Upstream for CountingBackend {
    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl CountingBackend {
    async fn start(mode: Mode) -> CountingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (a, o, r, p) = (
            accepted.clone(),
            open.clone(),
            requests.clone(),
            peak.clone(),
        );
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let now_open = o.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now_open, Ordering::SeqCst);
                let (o, r) = (o.clone(), r.clone());
                tokio::spawn(async move {
                    serve(s, mode, &r).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        CountingBackend {
            addr,
            accepted,
            open,
            peak,
            requests,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads request heads (these tests send no bodies) and answers each.
async fn serve(mut s: TcpStream, mode: Mode, requests: &AtomicUsize) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end);
        requests.fetch_add(1, Ordering::SeqCst);
        let slow = mode == Mode::SlowBody && head.starts_with("GET /slow");
        if slow {
            let half = vec![b'a'; 32 * 1024];
            let start = "HTTP/1.1 200 OK\r\ncontent-length: 65536\r\n\r\n";
            if s.write_all(start.as_bytes()).await.is_err() || s.write_all(&half).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            if s.write_all(&half).await.is_err() {
                return;
            }
        } else {
            let resp = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-backend: pool\r\n\r\nok";
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
        if mode == Mode::CloseAfterOne {
            return;
        }
    }
}

fn token() -> String {
    mint(Algorithm::HS256, &claims("alice"))
}

async fn get_ok(sc: &Sidecar, path: &str, t: &str) {
    let r = client()
        .get(sc.url(path))
        .bearer_auth(t)
        .send()
        .await
        .expect("request to the sidecar");
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{path}: {body}");
}

/// GET in a task of its own, for concurrent requests; its status (0 when it failed).
/// The body is read to the end, as a client does: one that leaves before it has been
/// sent costs its backend connection (the pool cannot reuse a half-read response).
fn spawn_get(sc: &Sidecar, path: &str, t: &str) -> tokio::task::JoinHandle<u16> {
    let (url, t) = (sc.url(path), t.to_string());
    tokio::spawn(async move {
        let Ok(r) = client().get(url).bearer_auth(t).send().await else {
            return 0;
        };
        let status = r.status().as_u16();
        match r.bytes().await {
            Ok(_) => status,
            Err(_) => 0,
        }
    })
}

#[tokio::test]
async fn sequential_requests_reuse_one_backend_connection() {
    bounded(async {
        let b = CountingBackend::start(Mode::KeepAlive).await;
        // One worker: every client connection is served by the same pool shard.
        let Rig { sc, .. } = Rig::builder()
            .backend(&b)
            .cfg(|c| c.server("worker_threads", "1"))
            .start()
            .await;
        let t = token();
        for _ in 0..50 {
            get_ok(&sc, "/x", &t).await;
        }
        assert_eq!(b.requests(), 50);
        assert_eq!(
            b.accepted(),
            1,
            "50 requests one after another need one connection"
        );
    })
    .await;
}

#[tokio::test]
async fn each_worker_keeps_its_own_backend_connections() {
    bounded(async {
        let b = CountingBackend::start(Mode::KeepAlive).await;
        let Rig { sc, .. } = Rig::builder()
            .backend(&b)
            .cfg(|c| c.server("worker_threads", "3"))
            .start()
            .await;
        // Each worker is a thread of its own.
        let pid = sc.pid().expect("pid");
        let workers = || {
            let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .expect("/proc tasks")
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .filter(|n| n.starts_with("worker-"))
                .collect();
            names.sort();
            names
        };
        // A thread takes its name as it starts: give them a moment.
        let mut names = workers();
        for _ in 0..40 {
            if names.len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            names = workers();
        }
        assert_eq!(names, ["worker-0", "worker-1", "worker-2"]);
        let t = token();
        // A new client connection per request lands on any worker; each worker opens
        // at most one backend connection for requests that come one after another.
        for _ in 0..30 {
            get_ok(&sc, "/fresh", &t).await;
        }
        let fresh = b.accepted();
        assert!(
            (1..=3).contains(&fresh),
            "{fresh} backend connections for sequential requests on 3 workers"
        );
        // One keep-alive client connection stays on one worker: no new backend connection.
        let keep = client();
        for _ in 0..30 {
            assert_eq!(
                send(keep.get(sc.url("/kept")).bearer_auth(&t)).await.status,
                200
            );
        }
        assert!(
            b.accepted() <= fresh + 1,
            "{} backend connections after 30 requests on one client connection (before: {fresh})",
            b.accepted()
        );
        // Concurrent load over many client connections: all served, within max_connections.
        let burst: Vec<_> = (0..90)
            .map(|i| spawn_get(&sc, &format!("/burst{i}"), &t))
            .collect();
        for h in burst {
            assert_eq!(h.await.expect("task"), 200);
        }
        assert_eq!(b.requests(), 150);
    })
    .await;
}

#[tokio::test]
async fn a_connection_the_backend_closed_after_answering_is_never_a_502() {
    bounded(async {
        // Every pooled connection is dead by the time it is reused: the pool must notice
        // (or retry the unsent request on a fresh connection), never fail the request.
        let b = CountingBackend::start(Mode::CloseAfterOne).await;
        let Rig { sc, .. } = Rig::builder().backend(&b).start().await;
        let t = token();
        for i in 0..30 {
            get_ok(&sc, &format!("/x{i}"), &t).await;
            if i % 3 == 0 {
                // Some reuse attempts right away, some after the close has landed.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(b.requests(), 30);
        assert_eq!(
            b.accepted(),
            30,
            "one connection per request with this backend"
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_bursts_are_served_and_idle_connections_are_capped() {
    bounded(async {
        let b = CountingBackend::start(Mode::KeepAlive).await;
        let Rig { sc, .. } = Rig::builder()
            .backend(&b)
            .cfg(|c| c.backend("pool_max_idle", "4"))
            .start()
            .await;
        let t = token();
        for _ in 0..3 {
            let burst: Vec<_> = (0..40)
                .map(|i| spawn_get(&sc, &format!("/b{i}"), &t))
                .collect();
            for h in burst {
                assert_eq!(h.await.expect("task"), 200);
            }
        }
        assert_eq!(b.requests(), 120);
        // Connections beyond the idle cap are closed once their exchange is over.
        let mut open = b.open();
        for _ in 0..50 {
            if open <= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            open = b.open();
        }
        assert!(
            open <= 4,
            "{open} backend connections still open with pool_max_idle = 4"
        );
        // And the kept ones are used: another 20 sequential requests open nothing new.
        let before = b.accepted();
        for _ in 0..20 {
            get_ok(&sc, "/again", &t).await;
        }
        assert_eq!(
            b.accepted(),
            before,
            "idle pooled connections were not reused"
        );
    })
    .await;
}

#[tokio::test]
async fn connections_idle_past_the_timeout_are_not_reused() {
    bounded(async {
        let b = CountingBackend::start(Mode::KeepAlive).await;
        let Rig { sc, .. } = Rig::builder()
            .backend(&b)
            .cfg(|c| {
                c.backend("pool_idle_timeout", &q("300ms"))
                    .server("worker_threads", "1")
            })
            .start()
            .await;
        let t = token();
        get_ok(&sc, "/one", &t).await;
        get_ok(&sc, "/two", &t).await;
        assert_eq!(b.accepted(), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        get_ok(&sc, "/three", &t).await;
        assert_eq!(
            b.accepted(),
            2,
            "a connection idle 600 ms was reused (timeout 300 ms)"
        );
    })
    .await;
}

#[tokio::test]
async fn a_client_leaving_mid_body_does_not_poison_the_pool() {
    bounded(async {
        let b = CountingBackend::start(Mode::SlowBody).await;
        let Rig { sc, .. } = Rig::builder().backend(&b).start().await;
        let t = token();
        // Start a slow download and walk away after the first bytes.
        let mut s = TcpStream::connect(sc.addr).await.expect("connect");
        let req = format!(
            "GET /slow HTTP/1.1\r\nHost: app.example.com\r\nAuthorization: Bearer {t}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut first = [0u8; 1024];
        let n = s.read(&mut first).await.expect("read");
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
        drop(s);
        // The half-read backend connection must not be handed to the next request: each
        // of these gets its own complete `ok`.
        for i in 0..10 {
            let r = client()
                .get(sc.url(&format!("/after{i}")))
                .bearer_auth(&t)
                .send()
                .await
                .expect("request");
            assert_eq!(r.status().as_u16(), 200);
            assert_eq!(r.text().await.expect("body"), "ok");
        }
        assert_eq!(b.requests(), 11);
        assert!(b.accepted() >= 2, "the abandoned connection was reused");
    })
    .await;
}

#[tokio::test]
async fn a_herd_waits_for_max_connections_instead_of_opening_one_each() {
    bounded(async {
        let b = CountingBackend::start(Mode::KeepAlive).await;
        let Rig { sc, .. } = Rig::builder()
            .backend(&b)
            .cfg(|c| c.backend("max_connections", "3"))
            .start()
            .await;
        let t = token();
        let herd: Vec<_> = (0..60)
            .map(|i| spawn_get(&sc, &format!("/h{i}"), &t))
            .collect();
        for h in herd {
            assert_eq!(h.await.expect("task"), 200);
        }
        assert_eq!(b.requests(), 60);
        assert!(
            b.peak() <= 3,
            "{} backend connections at once (max 3)",
            b.peak()
        );
        assert!(
            b.accepted() <= 3,
            "{} connections opened (max 3)",
            b.accepted()
        );
    })
    .await;
}

#[tokio::test]
async fn waiting_for_a_connection_is_bounded_by_the_response_timeout() {
    bounded(async {
        // One connection, held by a slow download: the next request waits, and gets a
        // 504 at the response timeout rather than hanging or opening a second one.
        let b = CountingBackend::start(Mode::SlowBody).await;
        let Rig { sc, .. } = Rig::builder()
            .backend(&b)
            .cfg(|c| {
                c.backend("max_connections", "1")
                    .backend("response_timeout", &q("500ms"))
            })
            .start()
            .await;
        let t = token();
        let slow = {
            let (url, t) = (sc.url("/slow"), t.clone());
            tokio::spawn(async move {
                let r = client().get(url).bearer_auth(t).send().await.expect("slow");
                r.bytes().await.map(|b| b.len()).unwrap_or(0)
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = client()
            .get(sc.url("/queued"))
            .bearer_auth(&t)
            .send()
            .await
            .expect("queued");
        assert_eq!(r.status().as_u16(), 504);
        assert_eq!(
            slow.await.expect("task"),
            65536,
            "the slow download was cut"
        );
        assert_eq!(b.peak(), 1);
        // Once the connection is free again, requests flow.
        get_ok(&sc, "/after", &t).await;
    })
    .await;
}
