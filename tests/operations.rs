//! Operating the sidecar, end to end against the real binary on real sockets: TLS in
//! (ALPN h2 / http/1.1, TLS 1.2/1.3 only) and certificate rotation without a restart;
//! TLS out (token service and JWKS over HTTPS with `backend.ca_file`); a JWKS URL
//! (rotation, unknown-kid rate limit, outages, `Cache-Control: max-age`); RFC 7662
//! introspection; `/metrics`, `/healthz`, `/readyz`; SIGTERM drain; reload on SIGHUP and
//! on a changed file; slowloris, header limits and the connection cap; WebSockets that
//! outlive their token.
//!
//! Every await is bounded; timing assertions leave room for a loaded CI machine but are
//! tight enough to catch the behaviour they name.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::mock::{self, Answer, JwksServer, MockServer, Req};
use common::tls::{self, client_config, client_config_with, https_get, tls_path, TlsFront};
use common::token_service::TokenService;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// GET `url` with an optional bearer token and extra headers.
async fn get_with(url: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Resp {
    let mut rb = client().get(url);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    send(rb).await
}

async fn get(url: &str, token: Option<&str>) -> Resp {
    get_with(url, token, &[]).await
}

/// An admin endpoint: `Ok((status, body))`, or `Err` when the connection is refused.
async fn admin(sc: &Sidecar, path: &str) -> Result<(u16, String), String> {
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    match c.get(sc.admin_url(path)).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            Ok((s, r.text().await.unwrap_or_default()))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A raw HTTP/1.1 GET head with a bearer token; `extra` is more header lines (each
/// ending in CRLF).
fn head(path: &str, tok: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {tok}\r\n{extra}\r\n")
}

/// Polls `check` every `every` until it returns true or `limit` passes; true if it did.
async fn eventually<F, Fut>(limit: Duration, every: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits (up to `limit`) for `/readyz` to answer 200.
async fn wait_ready(sc: &Sidecar, limit: Duration) {
    let ok = eventually(limit, Duration::from_millis(100), || async {
        matches!(admin(sc, "/readyz").await, Ok((200, _)))
    })
    .await;
    assert!(
        ok,
        "not ready within {limit:?}: {:?}\n{}",
        admin(sc, "/readyz").await,
        sc.logs()
    );
}

/// The JSON stdout lines of a sidecar.
fn json_lines(sc: &Sidecar) -> Vec<Value> {
    sc.json_lines()
}

fn message_of(v: &Value) -> String {
    sidecar_log_field(v, "message")
}

fn sidecar_log_field(v: &Value, key: &str) -> String {
    common::sidecar::log_field(v, key).unwrap_or_default()
}

/// Replaces the sidecar's config file. With `keep_mtime`, the file's modification time
/// is put back afterwards, so only a signal (not the 2 s file watcher) can pick it up.
fn rewrite_config(sc: &Sidecar, text: &str, keep_mtime: bool) {
    let path = sc.dir.path().join("config.toml");
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, text).unwrap();
    if keep_mtime {
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_modified(before).unwrap();
    }
}

/// One plain HTTP/1.1 keep-alive connection (hyper client conn), to check that a
/// connection survives something.
struct H1 {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    task: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

impl H1 {
    async fn open(addr: SocketAddr) -> H1 {
        let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("http/1.1 handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        H1 { send, task, addr }
    }

    /// GET on this connection (fails the test if the connection is gone).
    async fn get(&mut self, path: &str, token: Option<&str>) -> Resp {
        tokio::time::timeout(Duration::from_secs(10), async {
            self.send
                .ready()
                .await
                .expect("the keep-alive connection was closed");
            let mut req = ::http::Request::builder()
                .uri(path)
                .header("host", self.addr.to_string());
            if let Some(t) = token {
                req = req.header("authorization", bearer(t));
            }
            let resp = self
                .send
                .send_request(req.body(Empty::new()).unwrap())
                .await
                .expect("request on the keep-alive connection failed");
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = resp
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
                .to_vec();
            Resp {
                status,
                headers,
                body,
            }
        })
        .await
        .expect("request on the keep-alive connection timed out")
    }

    fn close(self) {
        self.task.abort();
    }
}

// -- keys -------------------------------------------------------------------------

/// The fixture RSA public key as a JWK (kid rs1), from fixtures/jwks.json.
fn rs1_jwk() -> Value {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "rs1")
        .expect("rs1 in jwks.json")
        .clone()
}

/// A second RSA key (the attacker fixture, here playing a rotated-in key) as kid rs2.
fn rs2_jwk() -> Value {
    let mut k: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("attacker_jwk.json")).unwrap())
            .unwrap();
    k["kid"] = json!("rs2");
    k
}

/// RS256, kid rs1, signed with the fixture key.
fn rs1_token(sub: &str) -> String {
    mint(Algorithm::RS256, &claims(sub))
}

/// RS256, kid rs2, signed with the key behind [`rs2_jwk`].
fn rs2_token(sub: &str) -> String {
    sign_with_header(
        &json!({"alg": "RS256", "typ": "JWT", "kid": "rs2"}),
        &claims(sub),
        Algorithm::RS256,
        &attacker_rsa_key(),
    )
}

/// RS256 only, keys from `url`.
fn jwks_cfg(c: Cfg, url: &str) -> Cfg {
    c.no_auth_key("hmac_secret")
        .auth("algorithms", r#"["RS256"]"#)
        .auth("jwks_url", &q(url))
}

// -- Prometheus text --------------------------------------------------------------

/// One sample of a Prometheus text exposition.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => (&line[..i], &line[i..]),
            None => panic!("bad metrics line {line:?}"),
        };
        let mut labels = Vec::new();
        let value_part = if let Some(body) = rest.strip_prefix('{') {
            let end = body.rfind('}').expect("unterminated labels");
            let mut s = &body[..end];
            while !s.is_empty() {
                let eq = s.find('=').expect("label without =");
                let key = s[..eq].trim().trim_start_matches(',').trim().to_string();
                let after = &s[eq + 1..];
                assert!(after.starts_with('"'), "unquoted label value in {line:?}");
                let mut val = String::new();
                let mut chars = after[1..].char_indices();
                let mut close = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                val.push(match n {
                                    'n' => '\n',
                                    other => other,
                                });
                            }
                        }
                        '"' => {
                            close = Some(i);
                            break;
                        }
                        c => val.push(c),
                    }
                }
                let close = close.expect("unterminated label value");
                labels.push((key, val));
                s = &after[1 + close + 1..];
                s = s.trim_start_matches(',');
            }
            &body[end + 1..]
        } else {
            rest
        };
        let value = value_part
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// The value of `name` whose labels include all of `labels` (None when absent).
fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
}

async fn scrape(sc: &Sidecar) -> (String, Vec<Sample>) {
    let r = client()
        .get(sc.admin_url("/metrics"))
        .send()
        .await
        .expect("scrape /metrics");
    assert_eq!(r.status(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "metrics content-type {ct}");
    let text = r.text().await.unwrap();
    let samples = parse_prometheus(&text);
    (text, samples)
}

// ---------------------------------------------------------------------------
// 1-2. TLS in
// ---------------------------------------------------------------------------

fn tls_cfg(c: Cfg, cert: &str, key: &str) -> Cfg {
    c.extra(&format!(
        "[server.tls]\ncert_file = {}\nkey_file = {}\n",
        q(cert),
        q(key)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_in_serves_h2_and_http11_chosen_by_alpn() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| tls_cfg(c, &tls_path("server.pem"), &tls_path("server.key"))).await;
        let auth = bearer(&valid());
        let leaf = tls::certs("server.pem")[0].as_ref().to_vec();
        for (alpn, version) in [
            (&b"h2"[..], ::http::Version::HTTP_2),
            (&b"http/1.1"[..], ::http::Version::HTTP_11),
        ] {
            let label = String::from_utf8_lossy(alpn).into_owned();
            let x = https_get(
                sc.addr,
                client_config("ca.pem", &[alpn]),
                "/api/tls",
                &[("authorization", &auth)],
            )
            .await;
            assert_eq!(x.alpn.as_deref(), Some(alpn), "ALPN offered {label}");
            assert_eq!(x.http_version, version, "{label}");
            assert_eq!(x.peer_cert, leaf, "{label}: not the configured certificate");
            assert_eq!(
                x.status,
                200,
                "{label}: {}",
                String::from_utf8_lossy(&x.body)
            );
            assert_eq!(x.header("x-backend"), Some("test"), "{label}");
            let echo: Echo = serde_json::from_slice(&x.body).unwrap();
            assert_eq!(echo.path, "/api/tls");
            assert_eq!(echo.header_all("x-auth-user-id"), vec![SUB], "{label}");
            assert_eq!(echo.header("x-forwarded-proto"), Some("https"), "{label}");
        }
        // The same pipeline runs over TLS: no token is the sidecar's 401.
        let x = https_get(sc.addr, client_config("ca.pem", &[b"h2"]), "/api/tls", &[]).await;
        assert_eq!(x.status, 401);
        assert_eq!(x.header("x-auth-error"), Some("missing_token"));
        assert_eq!(backend.count(), 2, "exactly the two authorised requests");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_in_speaks_tls12_and_tls13_and_nothing_older() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| tls_cfg(c, &tls_path("server.pem"), &tls_path("server.key"))).await;
        let auth = bearer(&valid());
        for (v, want) in [
            (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
            (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        ] {
            let cfg = client_config_with("ca.pem", &[b"http/1.1"], &[v]);
            let x = https_get(sc.addr, cfg, "/api/v", &[("authorization", &auth)]).await;
            assert_eq!(x.version, Some(want));
            assert_eq!(x.status, 200, "{want:?}");
        }

        // A client that trusts only an unrelated CA does not get through.
        let other = client_config("other_ca.pem", &[b"http/1.1"]);
        assert!(
            tls::connect(sc.addr, other, "localhost").await.is_err(),
            "the handshake succeeded against an unrelated CA"
        );

        // A TLS 1.1-only ClientHello (no supported_versions extension) is refused with an
        // alert or a close, never a ServerHello.
        let hello = tls11_client_hello();
        let mut s = TcpStream::connect(sc.addr).await.unwrap();
        s.write_all(&hello).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("no answer to a TLS 1.1 ClientHello within 5 s")
            .unwrap_or(0);
        if n > 0 {
            assert_eq!(
                buf[0],
                0x15,
                "expected a TLS alert record, got {:02x?}",
                &buf[..n]
            );
        }
        assert_eq!(backend.count(), 2);
    })
    .await
}

/// A minimal ClientHello offering only TLS 1.1 (legacy_version 0x0302, no
/// supported_versions), with ECDHE/RSA CBC suites that TLS 1.1 could use.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend([0x42u8; 32]);
    body.push(0);
    let suites: [u16; 6] = [0xc009, 0xc00a, 0xc013, 0xc014, 0x002f, 0x0035];
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]);
    let mut ext = Vec::new();
    ext.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    ext.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![0x01];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_files_swapped_on_disk_are_served_without_a_restart() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::copy(tls::tls_fixture("server.pem"), &cert).unwrap();
        std::fs::copy(tls::tls_fixture("server.key"), &key).unwrap();
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| tls_cfg(c, &cert.to_string_lossy(), &key.to_string_lossy())).await;
        let pid = sc.pid();
        let old_leaf = tls::certs("server.pem")[0].as_ref().to_vec();
        let new_leaf = tls::certs("server2.pem")[0].as_ref().to_vec();
        assert_ne!(old_leaf, new_leaf);
        let auth = bearer(&valid());
        let h1 = || client_config("ca.pem", &[b"http/1.1"]);

        let x = https_get(sc.addr, h1(), "/api/a", &[("authorization", &auth)]).await;
        assert_eq!(x.peer_cert, old_leaf);
        assert_eq!(x.status, 200);

        // An old connection, open across the swap.
        let stream = tls::connect(sc.addr, h1(), "localhost").await.unwrap();
        let (mut old_conn, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let old_task = tokio::spawn(conn);

        // cert-manager style rotation: key and certificate rewritten in place.
        std::fs::write(
            &key,
            std::fs::read(tls::tls_fixture("server2.key")).unwrap(),
        )
        .unwrap();
        std::fs::write(
            &cert,
            std::fs::read(tls::tls_fixture("server2.pem")).unwrap(),
        )
        .unwrap();
        let swapped = Instant::now();
        let mut seen = false;
        while swapped.elapsed() < Duration::from_secs(6) {
            let s = tls::connect(sc.addr, h1(), "localhost")
                .await
                .expect("handshake during the rotation");
            if tls::session_facts(&s).2 == new_leaf {
                seen = true;
                break;
            }
            drop(s);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let took = swapped.elapsed();
        assert!(
            seen,
            "new connections still get the old certificate {took:?} after the swap\n{}",
            sc.logs()
        );
        assert!(took <= Duration::from_millis(5500), "took {took:?}");
        assert_eq!(sc.pid(), pid);
        assert!(sc.is_alive(), "the process restarted or died");

        // New connections are served with the new certificate.
        let x = https_get(sc.addr, h1(), "/api/b", &[("authorization", &auth)]).await;
        assert_eq!(x.peer_cert, new_leaf);
        assert_eq!(x.status, 200);

        // The connection opened before the swap still works.
        let req = ::http::Request::builder()
            .uri("/api/old")
            .header("host", format!("localhost:{}", sc.addr.port()))
            .header("authorization", &auth)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), old_conn.send_request(req))
            .await
            .expect("old connection timed out")
            .expect("the connection opened before the swap was dropped");
        assert_eq!(resp.status(), 200);
        old_task.abort();
        assert!(json_lines(&sc)
            .iter()
            .any(|l| message_of(l).contains("TLS certificate reloaded")));
    })
    .await
}

// ---------------------------------------------------------------------------
// 3. TLS out: token service and JWKS over HTTPS, trusted through backend.ca_file
// ---------------------------------------------------------------------------

struct TlsOut {
    backend: Backend,
    ts: TokenService,
    ts_front: TlsFront,
    jwks: JwksServer,
    jwks_front: TlsFront,
    sc: Sidecar,
}

async fn tls_out(ca: &str) -> TlsOut {
    let ts = TokenService::start("unused-initiate-key").await;
    let ts_front = TlsFront::start(ts.addr).await;
    let jwks = JwksServer::start(vec![rs1_jwk()]).await;
    let jwks_front = TlsFront::start(jwks.server.addr).await;
    let Rig {
        backend,
        ts,
        jwks,
        sc,
        ..
    } = Rig::builder()
        .token_service(ts)
        .jwks(jwks)
        .cfg(|c| {
            c.auth("algorithms", r#"["HS256", "RS256"]"#)
                .auth("jwks_url", &q(&jwks_front.url("/jwks.json")))
                .auth("jwks_min_refresh", "\"1s\"")
                .backend("ca_file", &q(&tls_path(ca)))
                .extra(&format!(
                    "[refresh]\nurl = {}\ntimeout = \"2s\"\nretry_after = \"3s\"\n",
                    q(&ts_front.url("/refresh"))
                ))
        })
        .start()
        .await;
    TlsOut {
        backend,
        ts,
        ts_front,
        jwks,
        jwks_front,
        sc,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_out_refresh_and_jwks_over_https_work_with_the_test_ca() {
    bounded(async {
        let t = tls_out("ca.pem").await;
        // (Not /readyz: with the HMAC key also configured it says ready before the JWKS
        // is loaded; see tls_out_with_a_wrong_ca_is_an_outage_never_a_401.)
        let fetched = eventually(
            Duration::from_secs(5),
            Duration::from_millis(50),
            || async { t.jwks.fetches() >= 1 },
        )
        .await;
        assert!(
            fetched,
            "the JWKS was not fetched over HTTPS (handshakes ok {}, failed {})\n{}",
            t.jwks_front.handshakes_ok(),
            t.jwks_front.handshakes_failed(),
            t.sc.logs()
        );
        assert!(t.jwks_front.handshakes_ok() >= 1);
        wait_ready(&t.sc, Duration::from_secs(5)).await;

        // A token whose key came from the HTTPS JWKS.
        let r = get(&t.sc.url("/api/rs"), Some(&rs1_token("carol"))).await;
        assert_eq!(r.ok_echo().header("x-auth-user-id"), Some("carol"));

        // A refresh through the HTTPS token service.
        let pair = t.ts.expired_pair("bob");
        let r = get_with(
            &t.sc.url("/api/refresh"),
            Some(&pair.access),
            &[("x-refresh-token", &pair.refresh)],
        )
        .await;
        let e = r.ok_echo();
        assert_eq!(e.header("x-auth-user-id"), Some("bob"));
        assert!(
            r.header("x-auth-access-token").is_some(),
            "no new access token: {:?}",
            r.headers
        );
        assert_eq!(t.ts.refresh_calls(), 1);
        assert!(t.ts_front.handshakes_ok() >= 1);
        assert_eq!(t.ts_front.handshakes_failed(), 0);
        assert_eq!(t.jwks_front.handshakes_failed(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_out_with_a_wrong_ca_is_an_outage_never_a_401() {
    bounded(async {
        let t = tls_out("other_ca.pem").await;
        // Let the JWKS loader try (and fail) a few times.
        let tried = eventually(
            Duration::from_secs(5),
            Duration::from_millis(100),
            || async { t.jwks_front.handshakes_failed() >= 2 },
        )
        .await;
        assert!(tried, "the sidecar never tried the HTTPS JWKS");

        let pair = t.ts.expired_pair("bob");
        let r = get_with(
            &t.sc.url("/api/refresh"),
            Some(&pair.access),
            &[("x-refresh-token", &pair.refresh)],
        )
        .await;
        r.assert_error(503, "token_service_unavailable");
        assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
        assert_eq!(
            t.ts.refresh_calls(),
            0,
            "the call went through an untrusted TLS"
        );
        // The TLS front counts the failed handshake on its own task: give it a moment.
        let counted = eventually(
            Duration::from_secs(5),
            Duration::from_millis(20),
            || async { t.ts_front.handshakes_failed() >= 1 },
        )
        .await;
        assert!(counted, "the token service front saw no failed handshake");
        assert!(!t.ts.is_used(&pair.refresh));

        // No JWKS could be loaded: an RS256 token is an outage, not a bad token.
        let r = get(&t.sc.url("/api/rs"), Some(&rs1_token("carol"))).await;
        r.assert_error(503, "keys_unavailable");
        assert_eq!(t.jwks.fetches(), 0);
        assert_eq!(t.backend.count(), 0);

        // The JWKS is not loaded, so the sidecar is not ready (even though the HMAC key
        // from the file is).
        let ready = admin(&t.sc, "/readyz").await;
        assert!(
            matches!(ready, Ok((503, _))),
            "readiness with the JWKS unloaded: {ready:?}"
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// 4. JWKS URL
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_a_new_kid_is_accepted_after_one_refetch() {
    bounded(async {
        let jwks = JwksServer::start(vec![rs1_jwk()]).await;
        let url = jwks.url();
        let Rig {
            backend: _backend,
            jwks,
            sc,
            ..
        } = Rig::builder()
            .cfg(|c| jwks_cfg(c, &url))
            .jwks(jwks)
            .start()
            .await;
        wait_ready(&sc, Duration::from_secs(5)).await;
        assert_eq!(jwks.fetches(), 1);

        let r = get(&sc.url("/api/a"), Some(&rs1_token("u-rs1"))).await;
        assert_eq!(r.ok_echo().header("x-auth-user-id"), Some("u-rs1"));
        assert_eq!(jwks.fetches(), 1, "a known kid must not refetch");

        // The issuer rotates in rs2.
        jwks.set_keys(vec![rs1_jwk(), rs2_jwk()]);
        let r = get(&sc.url("/api/b"), Some(&rs2_token("u-rs2"))).await;
        assert_eq!(r.ok_echo().header("x-auth-user-id"), Some("u-rs2"));
        assert_eq!(jwks.fetches(), 2, "exactly one refetch for the new kid");

        // Another rs2 token (not cached) and an rs1 token: no more fetches.
        let r = get(&sc.url("/api/c"), Some(&rs2_token("u-rs2b"))).await;
        assert_eq!(r.ok_echo().header("x-auth-user-id"), Some("u-rs2b"));
        let r = get(&sc.url("/api/d"), Some(&rs1_token("u-rs1b"))).await;
        assert_eq!(r.status, 200);
        assert_eq!(jwks.fetches(), 2);

        // A kid nobody published, right after: refused as a bad token, no refetch (the
        // unknown-kid interval is 30 s by default).
        let forged = sign_with_header(
            &json!({"alg": "RS256", "typ": "JWT", "kid": "rs3"}),
            &claims("mallory"),
            Algorithm::RS256,
            &attacker_rsa_key(),
        );
        let r = get(&sc.url("/api/e"), Some(&forged)).await;
        r.assert_error(401, "invalid_token");
        assert_eq!(jwks.fetches(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_unknown_kids_refetch_at_most_once_per_interval() {
    bounded(async {
        const INTERVAL: Duration = Duration::from_secs(1);
        let jwks = JwksServer::start(vec![rs1_jwk()]).await;
        let url = jwks.url();
        let Rig {
            backend, jwks, sc, ..
        } = Rig::builder()
            .cfg(|c| {
                jwks_cfg(c, &url)
                    .auth("jwks_unknown_kid_interval", "\"1s\"")
                    .auth("jwks_min_refresh", "\"1h\"")
                    .auth("jwks_max_refresh", "\"1h\"")
            })
            .jwks(jwks)
            .start()
            .await;
        wait_ready(&sc, Duration::from_secs(5)).await;
        let before = jwks.fetches();
        assert_eq!(before, 1);

        // 1000 tokens with random kids (the signature never gets checked: no key fits).
        let sig = signature_of(&rs1_token("x")).to_string();
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let tokens: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    "{}.{}.{}",
                    b64_json(
                        &json!({"alg": "RS256", "typ": "JWT", "kid": format!("k-{nonce:x}-{i}")})
                    ),
                    b64_json(&claims("mallory")),
                    sig
                )
            })
            .collect();
        let c = client();
        let url = sc.url("/api/storm");
        let started = Instant::now();
        // Ten waves of 100, spread over ~2.3 s so that the interval elapses twice.
        for wave in tokens.chunks(100) {
            let statuses: Vec<(u16, Option<String>)> =
                futures_util::stream::iter(wave.iter().cloned())
                    .map(|t| {
                        let c = c.clone();
                        let url = url.clone();
                        async move {
                            let r = c.get(&url).bearer_auth(t).send().await.expect("request");
                            let code = r
                                .headers()
                                .get("x-auth-error")
                                .map(|v| v.to_str().unwrap().to_string());
                            (r.status().as_u16(), code)
                        }
                    })
                    .buffer_unordered(16)
                    .collect()
                    .await;
            for (s, code) in statuses {
                assert_eq!(s, 401, "an unknown kid must be a 401 (keys are loaded)");
                assert_eq!(code.as_deref(), Some("invalid_token"));
            }
            tokio::time::sleep(Duration::from_millis(230)).await;
        }
        let elapsed = started.elapsed();
        let during = jwks.fetches() - before;
        let bound = (elapsed.as_secs_f64() / INTERVAL.as_secs_f64()).floor() as usize + 1;
        eprintln!("unknown-kid storm: {during} refetches in {elapsed:?} (bound {bound})");
        assert!(
            during <= bound,
            "{during} refetches in {elapsed:?} with a {INTERVAL:?} interval (at most {bound})"
        );
        assert!(
            during >= 2,
            "only {during} refetch(es) in {elapsed:?}: the interval should have allowed more"
        );
        assert_eq!(backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_down_after_start_the_last_good_keys_keep_working() {
    bounded(async {
        let jwks = JwksServer::start(vec![rs1_jwk()]).await;
        jwks.set_max_age(Some(1));
        let url = jwks.url();
        let Rig {
            backend: _backend,
            jwks,
            sc,
            ..
        } = Rig::builder()
            .cfg(|c| {
                jwks_cfg(c, &url)
                    .auth("jwks_min_refresh", "\"1s\"")
                    .auth("jwks_unknown_kid_interval", "\"1s\"")
            })
            .jwks(jwks)
            .start()
            .await;
        wait_ready(&sc, Duration::from_secs(5)).await;

        jwks.set_down(true);
        let failed = eventually(
            Duration::from_secs(6),
            Duration::from_millis(100),
            || async { jwks.refused() >= 2 },
        )
        .await;
        assert!(failed, "the background refresh never hit the outage");

        // Fresh tokens (not in the verify cache) still verify with the last good set.
        for sub in ["d1", "d2", "d3"] {
            let r = get(&sc.url("/api/x"), Some(&rs1_token(sub))).await;
            assert_eq!(r.ok_echo().header("x-auth-user-id"), Some(sub));
        }
        let ready = admin(&sc, "/readyz").await;
        assert!(matches!(ready, Ok((200, _))), "{ready:?}");
        // Keys are loaded: an unknown kid is still a bad token, not an outage.
        let r = get(&sc.url("/api/x"), Some(&rs2_token("u"))).await;
        r.assert_error(401, "invalid_token");

        // Back up: the background refresh picks it up again.
        let before = jwks.fetches();
        jwks.set_down(false);
        let recovered = eventually(
            Duration::from_secs(5),
            Duration::from_millis(100),
            || async { jwks.fetches() > before },
        )
        .await;
        assert!(recovered, "no fetch after the JWKS endpoint came back");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_down_at_start_is_not_ready_and_requests_get_503_keys_unavailable() {
    bounded(async {
        let jwks = JwksServer::start(vec![rs1_jwk()]).await;
        jwks.set_down(true);
        let url = jwks.url();
        let Rig {
            backend, jwks, sc, ..
        } = Rig::builder()
            .cfg(|c| jwks_cfg(c, &url).auth("jwks_min_refresh", "\"1s\""))
            .jwks(jwks)
            .start()
            .await;
        let tried = eventually(
            Duration::from_secs(5),
            Duration::from_millis(50),
            || async { jwks.refused() >= 1 },
        )
        .await;
        assert!(tried, "the JWKS was never fetched");

        let ready = admin(&sc, "/readyz").await;
        match &ready {
            Ok((503, body)) => assert!(body.contains("key"), "{body}"),
            other => panic!("ready without keys: {other:?}"),
        }
        let r = get(&sc.url("/api/x"), Some(&rs1_token("u"))).await;
        r.assert_error(503, "keys_unavailable");
        assert!(r.header("retry-after").is_some());
        assert_eq!(backend.count(), 0);

        // The endpoint comes up: the retry loads the keys.
        jwks.set_down(false);
        wait_ready(&sc, Duration::from_secs(5)).await;
        let r = get(&sc.url("/api/x"), Some(&rs1_token("u"))).await;
        assert_eq!(r.ok_echo().header("x-auth-user-id"), Some("u"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_cache_control_max_age_is_honoured_within_the_bounds() {
    bounded(async {
        let backend = Backend::start().await;
        // (max-age, min, max, expected gap between background fetches)
        let cases: [(u64, &str, &str, f64); 3] = [
            (1, "1s", "1h", 1.0),    // honoured
            (1, "2s", "1h", 2.0),    // raised to jwks_min_refresh
            (3600, "1s", "2s", 2.0), // capped at jwks_max_refresh
        ];
        let mut running = Vec::new();
        for (max_age, min, max, gap) in cases {
            let jwks = JwksServer::start(vec![rs1_jwk()]).await;
            jwks.set_max_age(Some(max_age));
            let url = jwks.url();
            let Rig { jwks, sc, .. } = Rig::builder()
                .backend(&backend)
                .cfg(|c| {
                    jwks_cfg(c, &url)
                        .auth("jwks_min_refresh", &q(min))
                        .auth("jwks_max_refresh", &q(max))
                })
                .jwks(jwks)
                .start()
                .await;
            running.push((jwks, sc, max_age, min, max, gap));
        }
        tokio::time::sleep(Duration::from_millis(4700)).await;
        for (jwks, _sc, max_age, min, max, gap) in &running {
            let times = jwks.fetch_times();
            let gaps: Vec<f64> = times
                .windows(2)
                .map(|w| (w[1] - w[0]).as_secs_f64())
                .collect();
            let what = format!("max-age={max_age} min={min} max={max}: gaps {gaps:?}");
            assert!(gaps.len() >= 2, "too few fetches: {what}");
            for g in &gaps {
                assert!(
                    *g >= gap - 0.25 && *g <= gap + 0.9,
                    "expected a refetch every {gap} s: {what}"
                );
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// 5. Introspection
// ---------------------------------------------------------------------------

const INTROSPECTION_SECRET: &str = "itest-introspection-client-secret-42";

fn introspection_handler() -> mock::Handler {
    use base64::Engine;
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("sidecar-client:{INTROSPECTION_SECRET}"))
    );
    Arc::new(move |r: &Req| {
        if r.method != "POST" || r.header("authorization") != Some(want.as_str()) {
            return Answer::json(401, &json!({"error": "invalid_client"}));
        }
        let token = r.form("token").unwrap_or_default();
        if token.starts_with("opaque-active-") {
            Answer::json(
                200,
                &json!({"active": true, "sub": "u1", "email": "u1@example.com",
                        "exp": now() + 300, "token_type": "access_token"}),
            )
        } else {
            Answer::json(200, &json!({"active": false}))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_checks_opaque_tokens_and_caches_the_answer() {
    bounded(async {
        let intro = MockServer::start(introspection_handler()).await;
        let Rig { backend, sc, .. } = Rig::builder()
            .env("TEST_INTROSPECTION_SECRET", INTROSPECTION_SECRET)
            .cfg(|c| {
                c.extra(&format!(
                    "[introspection]\nurl = {}\nclient_id = \"sidecar-client\"\n\
                     client_secret = {{ env = \"TEST_INTROSPECTION_SECRET\" }}\n\
                     cache_ttl = \"5m\"\ntimeout = \"1s\"\n",
                    q(&intro.url("/introspect"))
                ))
            })
            .start()
            .await;
        let active = "opaque-active-7f2c91d0a4";

        let r = get(&sc.url("/api/me"), Some(active)).await;
        let e = r.ok_echo();
        assert_eq!(e.header_all("x-auth-user-id"), vec!["u1"]);
        assert_eq!(e.header("x-auth-email"), Some("u1@example.com"));
        assert_eq!(intro.count(), 1);
        let call = &intro.requests()[0];
        assert_eq!(call.method, "POST");
        assert_eq!(call.path, "/introspect");
        assert!(
            call.header("content-type")
                .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")),
            "{:?}",
            call.headers
        );
        assert_eq!(call.form("token").as_deref(), Some(active), "{}", call.body);

        // Repeated: served from the cache.
        for _ in 0..3 {
            let r = get(&sc.url("/api/me"), Some(active)).await;
            assert_eq!(r.ok_echo().header("x-auth-user-id"), Some("u1"));
        }
        assert_eq!(intro.count(), 1, "the active answer was not cached");

        // Inactive: a bad token.
        let r = get(&sc.url("/api/me"), Some("opaque-revoked-1b2c3d")).await;
        r.assert_error(401, "invalid_token");
        assert_eq!(intro.count(), 2);

        // JWTs do not go to introspection.
        let r = get(&sc.url("/api/me"), Some(&valid())).await;
        assert_eq!(r.ok_echo().header("x-auth-user-id"), Some(SUB));
        assert_eq!(intro.count(), 2);

        // Endpoint down: an outage (503), never a 401; the cached answer still serves.
        intro.set_down(true);
        let r = get(&sc.url("/api/me"), Some("opaque-active-new-9e8d")).await;
        r.assert_error(503, "token_service_unavailable");
        assert!(r.header("retry-after").is_some());
        let r = get(&sc.url("/api/me"), Some(active)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(backend.count(), 6);
    })
    .await
}

// ---------------------------------------------------------------------------
// 6. Metrics, liveness, readiness
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_leave_the_verify_cache_without_any_traffic() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c.auth("leeway", &q("0s"))).await;
        let entries = |s: &[Sample]| metric(s, "auth_sidecar_verify_cache_entries", &[]);
        // Five tokens that expire in 2 s, and one that lives on.
        let c = client();
        for i in 0..5 {
            let t = mint(
                Algorithm::HS256,
                &claims_with(json!({ "sub": format!("short-{i}"), "exp": now() + 2 })),
            );
            let r = c
                .get(sc.url("/x"))
                .bearer_auth(&t)
                .send()
                .await
                .expect("send");
            assert_eq!(r.status().as_u16(), 200);
        }
        let long = mint(Algorithm::HS256, &claims("long"));
        let r = c
            .get(sc.url("/x"))
            .bearer_auth(&long)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), 200);
        let (_, s) = scrape(&sc).await;
        assert_eq!(entries(&s), Some(6.0));
        // No request from here on: the 5 s sweeper alone must drop the expired five.
        let swept = eventually(
            Duration::from_secs(15),
            Duration::from_millis(250),
            || async {
                let (_, s) = scrape(&sc).await;
                entries(&s) == Some(1.0)
            },
        )
        .await;
        let (_, s) = scrape(&sc).await;
        assert!(
            swept,
            "cache entries after expiry, no traffic: {:?}",
            entries(&s)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_decisions_cache_hits_and_open_connections() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let allowed = [("decision", "allowed"), ("status", "2xx")];
        let rejected = [("decision", "rejected"), ("status", "4xx")];
        let hit = [("result", "hit")];
        let miss = [("result", "miss")];
        let (_, m0) = scrape(&sc).await;
        let v0 = |s: &[Sample], l: &[(&str, &str)]| metric(s, "auth_sidecar_requests_total", l);

        // The same token three times (one verification, then cache hits), two without.
        let c = client();
        let tok = valid();
        for _ in 0..3 {
            let r = c
                .get(sc.url("/api/m"))
                .bearer_auth(&tok)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        for _ in 0..2 {
            let r = c.get(sc.url("/api/m")).send().await.unwrap();
            assert_eq!(r.status(), 401);
        }
        let (text, m1) = scrape(&sc).await;
        let delta = |l: &[(&str, &str)]| {
            v0(&m1, l).unwrap_or_else(|| panic!("no requests_total{l:?} in\n{text}"))
                - v0(&m0, l).unwrap_or(0.0)
        };
        assert_eq!(delta(&allowed), 3.0, "{text}");
        assert_eq!(delta(&rejected), 2.0, "{text}");
        let cache = |s: &[Sample], l: &[(&str, &str)]| {
            metric(s, "auth_sidecar_verify_cache_total", l).unwrap_or(0.0)
        };
        assert!(
            cache(&m1, &hit) - cache(&m0, &hit) >= 2.0,
            "verify cache hits did not move:\n{text}"
        );
        assert!(cache(&m1, &miss) - cache(&m0, &miss) >= 1.0, "{text}");
        let open = metric(&m1, "auth_sidecar_open_connections", &[])
            .unwrap_or_else(|| panic!("no auth_sidecar_open_connections in\n{text}"));
        assert!(
            open >= 1.0,
            "a keep-alive connection is open: {open}\n{text}"
        );
        assert!(
            text.contains("# TYPE auth_sidecar_requests_total counter"),
            "{text}"
        );
        // The backend latency histogram: one sample per forwarded request, cumulative
        // buckets ending in +Inf = count, a positive sum.
        let lat = |s: &[Sample], n: &str, l: &[(&str, &str)]| metric(s, n, l).unwrap_or(0.0);
        let count = "auth_sidecar_backend_seconds_count";
        assert_eq!(lat(&m1, count, &[]) - lat(&m0, count, &[]), 3.0, "{text}");
        assert!(
            text.contains("# TYPE auth_sidecar_backend_seconds histogram"),
            "{text}"
        );
        let buckets: Vec<f64> = m1
            .iter()
            .filter(|s| s.name == "auth_sidecar_backend_seconds_bucket")
            .map(|s| s.value)
            .collect();
        assert_eq!(buckets.len(), 15, "{text}");
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{text}");
        assert_eq!(
            lat(
                &m1,
                "auth_sidecar_backend_seconds_bucket",
                &[("le", "+Inf")]
            ),
            lat(&m1, count, &[]),
            "{text}"
        );
        assert!(
            lat(&m1, "auth_sidecar_backend_seconds_sum", &[]) > 0.0,
            "{text}"
        );
        assert_eq!(backend.count(), 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_sum_every_workers_requests() {
    bounded(async {
        // Each worker thread counts into its own tally; a scrape sums them all.
        let Rig { backend, sc, .. } = Rig::start_with(|c| c.server("worker_threads", "2")).await;
        let tok = valid();
        let (_, m0) = scrape(&sc).await;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (url, tok) = (sc.url("/api/w"), tok.clone());
            tasks.push(tokio::spawn(async move {
                // A client per task: its own connections, spread over the workers.
                let c = client();
                for _ in 0..10 {
                    let r = c.get(&url).bearer_auth(&tok).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                }
                let r = c.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 401);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (text, m1) = scrape(&sc).await;
        let d = |n: &str, l: &[(&str, &str)]| {
            metric(&m1, n, l).unwrap_or(0.0) - metric(&m0, n, l).unwrap_or(0.0)
        };
        let allowed = [("decision", "allowed"), ("status", "2xx")];
        let rejected = [("decision", "rejected"), ("status", "4xx")];
        assert_eq!(d("auth_sidecar_requests_total", &allowed), 80.0, "{text}");
        assert_eq!(d("auth_sidecar_requests_total", &rejected), 8.0, "{text}");
        assert_eq!(d("auth_sidecar_backend_seconds_count", &[]), 80.0, "{text}");
        let lookups = d("auth_sidecar_verify_cache_total", &[("result", "hit")])
            + d("auth_sidecar_verify_cache_total", &[("result", "miss")]);
        assert_eq!(lookups, 80.0, "{text}");
        assert_eq!(backend.count(), 80);
        // A second scrape without traffic reads the same totals.
        let (_, m2) = scrape(&sc).await;
        assert_eq!(
            metric(&m2, "auth_sidecar_requests_total", &allowed),
            metric(&m1, "auth_sidecar_requests_total", &allowed)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_always_200_and_readiness_follows_the_backend() {
    bounded(async {
        // admin.ready_requires_backend defaults to true.
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        assert_eq!(admin(&sc, "/healthz").await, Ok((200, "ok\n".into())));
        assert!(matches!(admin(&sc, "/readyz").await, Ok((200, _))));

        // The backend goes away.
        drop(backend);
        let down = eventually(
            Duration::from_secs(3),
            Duration::from_millis(100),
            || async { matches!(admin(&sc, "/readyz").await, Ok((503, _))) },
        )
        .await;
        let ready = admin(&sc, "/readyz").await;
        assert!(down, "ready with the backend gone: {ready:?}");
        assert!(
            ready.as_ref().is_ok_and(|(_, b)| b.contains("backend")),
            "{ready:?}"
        );
        assert!(matches!(admin(&sc, "/healthz").await, Ok((200, _))));
        // The proxy says so too.
        let r = get(&sc.url("/api/x"), Some(&valid())).await;
        r.assert_error(502, "backend_unavailable");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_ignores_the_backend_when_ready_requires_backend_is_false() {
    bounded(async {
        let dead = refusing_addr();
        let Rig { mut sc, .. } = Rig::builder()
            .backend(format!("http://{dead}"))
            .cfg(|mut c| {
                // Cfg writes `[admin] listen` itself when `admin` is set; this test needs
                // one more key in that table, so the table comes from `extra` instead.
                c.admin = false;
                c.extra("[admin]\nlisten = \"127.0.0.1:0\"\nready_requires_backend = false\n")
            })
            .start()
            .await;
        admin_from_logs(&mut sc);
        assert_eq!(admin(&sc, "/healthz").await.map(|x| x.0), Ok(200));
        let ready = admin(&sc, "/readyz").await;
        assert!(
            matches!(ready, Ok((200, _))),
            "admin.ready_requires_backend = false, yet /readyz depends on the backend: {ready:?}"
        );
    })
    .await
}

/// For a sidecar whose `[admin]` table is in `cfg.extra`: learns the admin address from
/// its `admin listening` log line (logged before `listening`).
fn admin_from_logs(sc: &mut Sidecar) {
    let addr = json_lines(sc)
        .iter()
        .find(|l| message_of(l) == "admin listening")
        .and_then(|l| sidecar_log_field(l, "addr").parse().ok())
        .unwrap_or_else(|| panic!("no `admin listening` line\n{}", sc.logs()));
    sc.admin = Some(addr);
}

// ---------------------------------------------------------------------------
// 7. SIGTERM
// ---------------------------------------------------------------------------

/// A connection that has sent nothing yet has no request to finish: SIGTERM does not wait
/// for its header read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_for_a_connection_that_sent_nothing() {
    bounded(async {
        let Rig {
            backend: _backend,
            mut sc,
            ..
        } = Rig::start_with(|c| {
            c.server("shutdown_grace", "\"20s\"")
                .server("header_read_timeout", "\"15s\"")
        })
        .await;
        wait_ready(&sc, Duration::from_secs(5)).await;
        let mut silent = TcpStream::connect(sc.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let term = Instant::now();
        let status = sc.stop().expect("no exit status");
        let took = term.elapsed();
        assert!(status.success(), "exit status {status:?}\n{}", sc.logs());
        assert!(
            took < Duration::from_secs(5),
            "exit took {took:?} (header read timeout 15 s, grace 20 s)"
        );
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut buf)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "the silent connection was left open: {n:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_stops_accepting_and_exits_0() {
    bounded(async {
        let Rig {
            backend, mut sc, ..
        } = Rig::start_with(|c| c.server("shutdown_grace", "\"10s\"")).await;
        wait_ready(&sc, Duration::from_secs(5)).await;
        let tok = valid();
        let url = sc.url("/slow?ms=1500");
        let slow = tokio::spawn(async move { get(&url, Some(&tok)).await });
        let arrived = eventually(
            Duration::from_secs(5),
            Duration::from_millis(20),
            || async { backend.count() >= 1 },
        )
        .await;
        assert!(arrived, "the slow request never reached the backend");

        let term = Instant::now();
        sc.signal("TERM");
        // Readiness drops (503, or the admin port closes) and the proxy stops accepting.
        let unready = eventually(
            Duration::from_secs(1),
            Duration::from_millis(20),
            || async { !matches!(admin(&sc, "/readyz").await, Ok((200, _))) },
        )
        .await;
        assert!(unready, "still ready after SIGTERM");
        let addr = sc.addr;
        let refused = eventually(
            Duration::from_secs(1),
            Duration::from_millis(20),
            || async { TcpStream::connect(addr).await.is_err() },
        )
        .await;
        assert!(refused, "the proxy still accepts connections after SIGTERM");
        assert!(
            !slow.is_finished(),
            "the slow request finished before the checks: they prove nothing"
        );

        let r = tokio::time::timeout(Duration::from_secs(10), slow)
            .await
            .expect("the in-flight request did not finish")
            .unwrap();
        assert_eq!(r.ok_echo().path, "/slow");
        let status = sc.stop().expect("no exit status");
        let took = term.elapsed();
        assert!(status.success(), "exit status {status:?}\n{}", sc.logs());
        assert!(
            took < Duration::from_secs(5),
            "exit took {took:?} (the backend answered after 1.5 s; grace is 10 s)"
        );
        assert_eq!(backend.count(), 1);
    })
    .await
}

// ---------------------------------------------------------------------------
// 8. Reload
// ---------------------------------------------------------------------------

fn reload_base(c: Cfg) -> Cfg {
    c.route("prefix = \"/api\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_good_config_without_dropping_a_keep_alive_connection() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            cfg: base,
            ..
        } = Rig::start_with(reload_base).await;
        let tok = valid();
        let mut conn = H1::open(sc.addr).await;
        conn.get("/open/x", None)
            .await
            .assert_error(401, "missing_token");
        let e = conn.get("/api/me", Some(&tok)).await.ok_echo();
        assert_eq!(e.header("x-auth-user-id"), Some(SUB));

        let next = base
            .clone()
            .route("prefix = \"/open\"\nmode = \"public\"")
            .identity("user_id", "\"x-user-v2\"");
        // The file's mtime is kept, so only the signal can trigger this reload.
        rewrite_config(&sc, &next.render(), true);
        sc.signal("HUP");
        let mut applied = false;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(4) {
            if conn.get("/open/x", None).await.status == 200 {
                applied = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            applied,
            "the new route did not apply after SIGHUP\n{}",
            sc.logs()
        );
        let e = conn.get("/api/me", Some(&tok)).await.ok_echo();
        assert_eq!(e.header("x-user-v2"), Some(SUB), "{:?}", e.headers);
        assert_eq!(e.header("x-auth-user-id"), None);
        assert!(json_lines(&sc)
            .iter()
            .any(|l| message_of(l) == "config reloaded"));
        assert!(sc.is_alive());
        conn.close();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_logs_an_error_and_keeps_the_old_one() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| reload_base(c).route("prefix = \"/open\"\nmode = \"public\""))
                .await;
        let tok = valid();
        let mut conn = H1::open(sc.addr).await;
        assert_eq!(conn.get("/open/x", None).await.status, 200);

        // An unknown key, and the /open route gone: must not apply.
        let broken = reload_base(Cfg::new(&backend.url())).auth("algorithm", "[\"HS256\"]");
        rewrite_config(&sc, &broken.render(), true);
        sc.signal("HUP");
        let logged = eventually(Duration::from_secs(3), Duration::from_millis(50), || {
            let lines = json_lines(&sc);
            async move {
                lines.iter().any(|l| {
                    l["level"] == "ERROR"
                        && message_of(l).contains("reload refused")
                        && l.to_string().contains("auth.algorithm")
                })
            }
        })
        .await;
        assert!(
            logged,
            "no error log line naming the problem after SIGHUP\n{}",
            sc.logs()
        );
        assert!(sc.is_alive(), "the process died on a bad config");
        // The old config keeps serving, on the old connection and on new ones.
        assert_eq!(conn.get("/open/x", None).await.status, 200);
        let e = conn.get("/api/me", Some(&tok)).await.ok_echo();
        assert_eq!(e.header("x-auth-user-id"), Some(SUB));
        let r = get(&sc.url("/open/y"), None).await;
        assert_eq!(r.status, 200);
        get(&sc.url("/api/me"), None)
            .await
            .assert_error(401, "missing_token");
        conn.close();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_while_the_jwks_endpoint_is_down_keeps_the_last_good_keys() {
    bounded(async {
        let jwks = JwksServer::start(vec![rs1_jwk()]).await;
        let url = jwks.url();
        let Rig {
            backend: _backend,
            jwks,
            sc,
            cfg,
            ..
        } = Rig::builder()
            .cfg(|c| jwks_cfg(c, &url).auth("jwks_min_refresh", "\"1s\""))
            .jwks(jwks)
            .start()
            .await;
        wait_ready(&sc, Duration::from_secs(5)).await;
        let r = get(&sc.url("/api/a"), Some(&rs1_token("k1"))).await;
        assert_eq!(r.status, 200);

        // The JWKS endpoint goes down, then an unrelated, valid config change is applied.
        jwks.set_down(true);
        let next = cfg.clone().route("prefix = \"/open\"\nmode = \"public\"");
        rewrite_config(&sc, &next.render(), true);
        sc.signal("HUP");
        let reloaded = eventually(Duration::from_secs(3), Duration::from_millis(50), || {
            let lines = json_lines(&sc);
            async move { lines.iter().any(|l| message_of(l) == "config reloaded") }
        })
        .await;
        assert!(reloaded, "the reload did not happen\n{}", sc.logs());
        assert_eq!(get(&sc.url("/open/x"), None).await.status, 200);

        // The keys fetched before the reload are still the last good set.
        let r = get(&sc.url("/api/b"), Some(&rs1_token("k2"))).await;
        assert_eq!(
            r.status,
            200,
            "after a reload with the JWKS endpoint down, a valid token got {} {}",
            r.status,
            r.text()
        );
        let ready = admin(&sc, "/readyz").await;
        assert!(matches!(ready, Ok((200, _))), "{ready:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_config_file_is_picked_up_without_a_signal() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            cfg: base,
            ..
        } = Rig::start_with(reload_base).await;
        get(&sc.url("/open/x"), None)
            .await
            .assert_error(401, "missing_token");
        // Let the file's mtime move visibly past the start.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let next = base.clone().route("prefix = \"/open\"\nmode = \"public\"");
        rewrite_config(&sc, &next.render(), false);
        let changed = Instant::now();
        let applied = eventually(
            Duration::from_secs(5),
            Duration::from_millis(100),
            || async { get(&sc.url("/open/x"), None).await.status == 200 },
        )
        .await;
        assert!(applied, "the changed file was not picked up\n{}", sc.logs());
        assert!(
            changed.elapsed() < Duration::from_millis(4500),
            "took {:?} (checked every 2 s)",
            changed.elapsed()
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// 9. Slowloris, header limits, connection cap
// ---------------------------------------------------------------------------

/// A client that connects and never sends a byte holds a connection slot; it is closed
/// once `server.header_read_timeout` passes, as a client that drips its head is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| c.server("header_read_timeout", "\"1s\"")).await;
        let mut silent = TcpStream::connect(sc.addr).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(6), async {
            loop {
                match silent.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let after = started.elapsed();
        assert!(
            closed.is_ok(),
            "the silent client was still connected after {after:?}"
        );
        assert!(
            after >= Duration::from_millis(900) && after <= Duration::from_secs(3),
            "closed after {after:?} with header_read_timeout = 1s"
        );
        let r = get(&sc.url("/api/after"), Some(&valid())).await;
        assert_eq!(r.ok_echo().path, "/api/after");
        assert_eq!(backend.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off_while_others_are_served() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| c.server("header_read_timeout", "\"1s\"")).await;
        let tok = valid();
        let head = head("/api/slowloris", &tok, "");
        let stream = TcpStream::connect(sc.addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            for b in head.bytes() {
                if wr.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        // Another client is served normally meanwhile (before the slow one is cut off).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = get(&sc.url("/api/normal"), Some(&tok)).await;
        assert_eq!(r.ok_echo().path, "/api/normal");
        let normal_done = started.elapsed();

        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(6), async {
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let after = started.elapsed();
        writer.abort();
        assert!(
            closed.is_ok(),
            "the slow client was still connected after {after:?}"
        );
        assert!(
            after >= Duration::from_millis(900) && after <= Duration::from_secs(3),
            "closed after {after:?} with header_read_timeout = 1s"
        );
        assert!(
            normal_done < after,
            "the normal client was served ({normal_done:?}) only after the slow one was \
             closed ({after:?})"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            got.is_empty() || text.starts_with("HTTP/1.1 408"),
            "unexpected answer to the slow client: {text}"
        );
        assert_eq!(backend.count(), 1, "the slow request reached the backend");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let tok = valid();
        // One 20 KiB header (over server.max_header_bytes = 16 KiB).
        let big = head(
            "/api/x",
            &tok,
            &format!("X-Big: {}\r\nConnection: close\r\n", "a".repeat(20 * 1024)),
        );
        let r = raw(sc.addr, &big).await;
        assert_eq!(r.status, 431, "{}", r.text());
        // 150 small headers (over server.max_headers = 100).
        let mut extra: String = (0..150).map(|i| format!("X-H-{i}: {i}\r\n")).collect();
        extra.push_str("Connection: close\r\n");
        let many = head("/api/x", &tok, &extra);
        let r = raw(sc.addr, &many).await;
        assert_eq!(r.status, 431, "{}", r.text());
        assert_eq!(backend.count(), 0);
        // A normal request still works.
        let r = get(&sc.url("/api/x"), Some(&tok)).await;
        assert_eq!(r.status, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_max_header_bytes_is_enforced() {
    bounded(async {
        // The smallest cap hyper can enforce (check-config accepts 8192..=1048576).
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| c.server("max_header_bytes", "8192")).await;
        let tok = valid();
        // A 10 KiB head: over the configured 8 KiB cap, under the 16 KiB default.
        let req = head(
            "/api/x",
            &tok,
            &format!("X-Big: {}\r\nConnection: close\r\n", "a".repeat(10 * 1024)),
        );
        let r = raw(sc.addr, &req).await;
        assert_eq!(
            r.status, 431,
            "a 10 KiB request head passed server.max_header_bytes = 8192"
        );
        assert_eq!(backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_the_connection_over_the_limit() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c.server("max_connections", "2")).await;
        let tok = valid();
        let mut c1 = H1::open(sc.addr).await;
        let mut c2 = H1::open(sc.addr).await;
        assert_eq!(c1.get("/api/1", Some(&tok)).await.status, 200);
        assert_eq!(c2.get("/api/2", Some(&tok)).await.status, 200);

        // The third concurrent connection is closed without an answer.
        let mut c3 = TcpStream::connect(sc.addr).await.unwrap();
        let _ = c3.write_all(head("/api/3", &tok, "").as_bytes()).await;
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(3), c3.read(&mut buf))
            .await
            .expect("the third connection was neither answered nor closed")
            .unwrap_or(0);
        assert_eq!(
            n,
            0,
            "the third connection was served: {}",
            String::from_utf8_lossy(&buf[..n])
        );
        assert_eq!(backend.count(), 2);

        // The first two still work.
        assert_eq!(c1.get("/api/1b", Some(&tok)).await.status, 200);
        assert_eq!(c2.get("/api/2b", Some(&tok)).await.status, 200);

        // Closing one frees its slot.
        c1.close();
        let addr = sc.addr;
        let tok2 = tok.clone();
        let freed = eventually(Duration::from_secs(3), Duration::from_millis(100), || {
            let tok = tok2.clone();
            async move {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    return false;
                };
                let req = head("/api/4", &tok, "Connection: close\r\n");
                if s.write_all(req.as_bytes()).await.is_err() {
                    return false;
                }
                let mut b = [0u8; 16];
                matches!(
                    tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await,
                    Ok(Ok(n)) if n >= 12 && b.starts_with(b"HTTP/1.1 200")
                )
            }
        })
        .await;
        assert!(freed, "a slot did not free up after a connection closed");
        c2.close();
    })
    .await
}

// ---------------------------------------------------------------------------
// 10. WebSockets that outlive their token
// ---------------------------------------------------------------------------

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_open(sc: &Sidecar, token: &str) -> Ws {
    let mut req = sc.ws_url("/ws").into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        tungstenite::http::HeaderValue::from_str(&bearer(token)).unwrap(),
    );
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("WebSocket handshake timed out")
    .expect("upgrade through the sidecar");
    assert_eq!(resp.status(), 101);
    ws
}

/// Sends `text` and waits (2 s) for its echo.
async fn ws_echo(ws: &mut Ws, text: &str) -> Result<(), String> {
    ws.send(Message::text(text.to_string()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Err(_) => return Err("no echo within 2 s".into()),
            Ok(None) => return Err("closed".into()),
            Ok(Some(Err(e))) => return Err(format!("error: {e}")),
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => return Ok(()),
            Ok(Some(Ok(Message::Close(_)))) => return Err("close frame".into()),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

fn at_unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs as u64)
}

async fn sleep_until_system(t: SystemTime) {
    if let Ok(d) = t.duration_since(SystemTime::now()) {
        tokio::time::sleep(d).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_closed_after_its_token_expires_plus_the_grace() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| {
            c.auth("leeway", "\"0s\"")
                .server("upgrade_token_grace", "\"1s\"")
        })
        .await;
        let exp = now() + 3;
        let token = hs256_with(json!({"exp": exp}));
        let mut ws = ws_open(&sc, &token).await;
        ws_echo(&mut ws, "before expiry").await.unwrap();

        // Expired, but within the grace: still open.
        let expiry = at_unix(exp);
        sleep_until_system(expiry + Duration::from_millis(300)).await;
        ws_echo(&mut ws, "within the grace")
            .await
            .expect("closed before expiry + grace");

        // Then the sidecar closes it (the backend echo would keep it open forever).
        let closed = tokio::time::timeout(Duration::from_secs(4), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        let at = SystemTime::now();
        assert!(
            closed.is_ok(),
            "the WebSocket outlived its token by over 4 s"
        );
        let after_expiry = at.duration_since(expiry).unwrap_or_default();
        assert!(
            after_expiry >= Duration::from_millis(900)
                && after_expiry <= Duration::from_millis(2600),
            "closed {after_expiry:?} after expiry (grace 1 s)"
        );
        // The log line is written as the tunnel closes; the reader thread may be a moment behind.
        let logged = eventually(
            Duration::from_secs(3),
            Duration::from_millis(50),
            || async {
                json_lines(&sc)
                    .iter()
                    .any(|l| message_of(l).contains("token has expired"))
            },
        )
        .await;
        assert!(logged, "no log line for the close");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_stays_open_past_its_token_when_the_grace_is_off() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| {
            c.auth("leeway", "\"0s\"")
                .server("upgrade_token_grace", "\"off\"")
        })
        .await;
        let exp = now() + 2;
        let token = hs256_with(json!({"exp": exp}));
        let mut ws = ws_open(&sc, &token).await;
        ws_echo(&mut ws, "before expiry").await.unwrap();
        sleep_until_system(at_unix(exp) + Duration::from_millis(1800)).await;
        ws_echo(&mut ws, "long after expiry")
            .await
            .expect("closed although upgrade_token_grace = \"off\"");
        assert_eq!(backend.ws_messages(), 2);
        let _ = ws.close(None).await;
    })
    .await
}
