//! Features that had no test of their own, each against the real binary on real sockets:
//! outbound mTLS client certificates, `backend.http2 = true` through a slice of the
//! integration checks, `identity.all_claims`, `auth.required_claims`, the token-service,
//! coalescing and JWKS metrics, and the renewed pair on a WebSocket `101`. Each test
//! fails when its feature is missing or broken.

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::backend::{SSE_EVENTS, SSE_GAP};
use common::mock::JwksServer;
use common::tls::{self, tls_path, TlsFront};
use common::token_service::{Pair, TokenService};
use common::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

async fn get(sc: &Sidecar, path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Resp {
    let mut rb = client().get(sc.url(path));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    send(rb).await
}

/// A request with an expired access token and its refresh token.
async fn get_with_pair(sc: &Sidecar, path: &str, p: &Pair) -> Resp {
    get(
        sc,
        path,
        Some(&p.access),
        &[("x-refresh-token", &p.refresh)],
    )
    .await
}

async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

/// The value of the Prometheus sample `name{labels...}` (labels in any order; other
/// labels allowed), None when absent.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (n == name).then_some((rest, value))
        })
        .find(|(rest, _)| {
            labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, v)| v.parse().ok())
}

async fn scrape(sc: &Sidecar) -> String {
    let r = send(client().get(sc.admin_url("/metrics"))).await;
    assert_eq!(r.status, 200, "/metrics");
    r.text()
}

fn rs1_jwk() -> Value {
    let v: Value = serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
    v["keys"][0].clone()
}

// ---------------------------------------------------------------------------
// Outbound mTLS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_mtls_presents_the_client_certificate_and_without_one_the_backend_is_a_502() {
    bounded(async {
        // A backend behind TLS that requires a client certificate from the test CA.
        let backend = Backend::start().await;
        let front = TlsFront::start_with(
            backend.addr,
            tls::mtls_server_config("server.pem", "server.key", "ca.pem"),
        )
        .await;
        let url = front.url("");
        let ca = q(&tls_path("ca.pem"));
        let with = Rig::builder()
            .backend(url.clone())
            .cfg(|c| {
                c.backend("ca_file", &ca)
                    .backend("client_cert_file", &q(&tls_path("client.pem")))
                    .backend(
                        "client_key",
                        &format!("{{ file = {} }}", q(&tls_path("client.key"))),
                    )
            })
            .start()
            .await;
        let e = get(&with.sc, "/api/x", Some(&valid()), &[]).await.ok_echo();
        assert_eq!(e.header("x-auth-user-id"), Some(SUB));
        assert_eq!(backend.count(), 1);
        let want = tls::certs("client.pem")[0].as_ref().to_vec();
        let seen = front.client_certs();
        assert!(!seen.is_empty(), "the backend saw no client certificate");
        assert!(
            seen.iter().all(|c| *c == want),
            "the backend saw another client certificate"
        );
        assert_eq!(front.handshakes_failed(), 0);

        // The same backend without the client certificate: the handshake fails, 502.
        let without = Rig::builder()
            .backend(url)
            .cfg(|c| c.backend("ca_file", &ca))
            .start()
            .await;
        let r = get(&without.sc, "/api/x", Some(&valid()), &[]).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.header("x-backend").is_none());
        assert_eq!(
            backend.count(),
            1,
            "nothing reached the backend without mTLS"
        );
        assert!(
            eventually(Duration::from_secs(5), || front.handshakes_failed() >= 1).await,
            "the backend never refused a handshake"
        );
        drop((with, without));
    })
    .await
}

// ---------------------------------------------------------------------------
// backend.http2 = true
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_backend_gets_identity_no_spoofed_headers_streams_and_refreshed_requests() {
    bounded(async {
        // An HTTP/2-only backend: without `backend.http2 = true` every request is a 502.
        let Rig {
            backend, ts, sc, ..
        } = Rig::builder()
            .backend(Backend::start_h2().await)
            .token_service(TokenService::start(API_KEY).await)
            .lifecycle(|_| {})
            .cfg(|c| c.backend("http2", "true"))
            .start()
            .await;

        // A valid token: forwarded over h2 with identity; spoofed identity is stripped.
        let e = get(
            &sc,
            "/api/x?q=1",
            Some(&valid()),
            &[
                ("x-auth-user-id", "mallory"),
                ("X_Auth_Email", "mallory@example.com"),
                ("x-auth-role", "admin"),
                ("x-refresh-token", "not-for-the-backend"),
            ],
        )
        .await
        .ok_echo();
        assert_eq!(e.version, "HTTP/2.0", "the backend was not spoken to in h2");
        assert_eq!(e.path, "/api/x");
        assert_eq!(e.query.as_deref(), Some("q=1"));
        assert_eq!(e.header_all("x-auth-user-id"), vec![SUB]);
        assert_eq!(e.header_all("x-auth-email"), vec!["alice@example.com"]);
        assert!(e.header("x-auth-role").is_none(), "{:?}", e.headers);
        assert!(e.names_with_prefix("x-refresh-token").is_empty());
        assert!(
            !e.headers.iter().any(|(_, v)| v.contains("mallory")),
            "a spoofed value reached the backend: {:?}",
            e.headers
        );

        // A streamed response: the first event arrives long before the last is sent.
        let t = Instant::now();
        let resp = client()
            .get(sc.url("/sse"))
            .bearer_auth(valid())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut stream = resp.bytes_stream();
        let mut body = Vec::new();
        let mut first = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("sse chunk");
            if !chunk.is_empty() && first.is_none() {
                first = Some(t.elapsed());
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.matches("event: tick").count(), SSE_EVENTS, "{text}");
        let first = first.expect("no SSE data");
        let spread = SSE_GAP * (SSE_EVENTS as u32 - 1);
        assert!(
            first < spread / 2,
            "first event after {first:?}: the response was buffered, not streamed"
        );

        // A streamed request body arrives whole.
        let data: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            data.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
        let r = send(client().post(sc.url("/upload")).bearer_auth(valid()).body(
            reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
        ))
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_eq!(j["bytes"], data.len());
        use sha2::Digest;
        let hex: String = sha2::Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(j["sha256"], hex);

        // An expired pair: refreshed, forwarded over h2 with the new identity, the new
        // pair on the response, the refresh token never forwarded.
        let old = ts.expired_pair("bob");
        let r = get_with_pair(&sc, "/api/renew", &old).await;
        let e = r.ok_echo();
        assert_eq!(e.version, "HTTP/2.0");
        assert_eq!(e.header("x-auth-user-id"), Some("bob"));
        assert!(e.names_with_prefix("x-refresh-token").is_empty());
        let issued = ts.last_issued().expect("no pair issued");
        assert_eq!(
            r.header("x-auth-access-token"),
            Some(issued.access.as_str())
        );
        assert_eq!(
            r.header("x-auth-refresh-token"),
            Some(issued.refresh.as_str())
        );
        assert_eq!(ts.refresh_calls(), 1);
        assert_eq!(backend.count(), 4);
    })
    .await
}

// ---------------------------------------------------------------------------
// identity.all_claims, auth.required_claims
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_claims_puts_the_verified_claims_as_base64url_json_in_one_header() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| c.identity("all_claims", "\"x-auth-claims\"")).await;
        let claims = claims_with(json!({
            "role": "user",
            "scope": ["chat:read", "chat:write"],
            "org": {"id": 7, "name": "Ünïcode & co"},
        }));
        let t = mint(Algorithm::HS256, &claims);
        let spoofed = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin"}"#);
        let e = get(&sc, "/api/x", Some(&t), &[("X-Auth-Claims", &spoofed)])
            .await
            .ok_echo();
        let values = e.header_all("x-auth-claims");
        assert_eq!(values.len(), 1, "one header, set not appended: {values:?}");
        let bytes = URL_SAFE_NO_PAD
            .decode(values[0])
            .unwrap_or_else(|err| panic!("not base64url without padding: {err}: {}", values[0]));
        let got: Value = serde_json::from_slice(&bytes).expect("not JSON");
        assert_eq!(got, claims, "the header is not the token's verified claims");
        assert_eq!(e.header("x-auth-user-id"), Some(SUB));
        // A refused token gets no header at all (nothing reaches the backend).
        let r = get(&sc, "/api/x", Some(&tamper_signature(&t)), &[]).await;
        r.assert_error(401, "invalid_token");
        assert_eq!(backend.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_missing_a_required_claim_is_401_and_never_forwarded() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| c.auth("required_claims", r#"["email", "tenant"]"#)).await;
        for (what, extra) in [
            ("no tenant", json!({})),
            ("no email", json!({"tenant": "t1", "email": null})),
            ("neither", json!({"email": null})),
        ] {
            let t = mint(Algorithm::HS256, &claims_with(extra));
            let r = get(&sc, "/api/x", Some(&t), &[]).await;
            assert_eq!(r.status, 401, "{what}: {}", r.text());
            r.assert_error(401, "invalid_token");
        }
        assert_eq!(
            backend.count(),
            0,
            "a token missing a required claim was forwarded"
        );
        let t = mint(Algorithm::HS256, &claims_with(json!({"tenant": "t1"})));
        let e = get(&sc, "/api/x", Some(&t), &[]).await.ok_echo();
        assert_eq!(e.header("x-auth-user-id"), Some(SUB));
        assert_eq!(backend.count(), 1);
    })
    .await
}

// ---------------------------------------------------------------------------
// Metrics: token service calls, coalesced waits, JWKS fetches
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_refresh_calls_coalesced_waits_and_jwks_fetches() {
    bounded(async {
        let jwks = JwksServer::start(vec![rs1_jwk()]).await;
        let jwks_url = jwks.url();
        let Rig {
            backend,
            ts,
            jwks,
            sc,
            ..
        } = Rig::builder()
            .token_service(TokenService::start(API_KEY).await)
            .jwks(jwks)
            .lifecycle(|_| {})
            .cfg(move |c| {
                c.auth("algorithms", r#"["HS256", "RS256"]"#)
                    .auth("jwks_url", &q(&jwks_url))
                    .auth("jwks_timeout", "\"1s\"")
            })
            .start()
            .await;
        // The JWKS is fetched at start; an RS256 token verifies with its key.
        assert!(
            eventually(Duration::from_secs(5), || jwks.fetches() >= 1).await,
            "the JWKS was never fetched"
        );
        let rs = mint(Algorithm::RS256, &claims(SUB));
        let mut ok = false;
        for _ in 0..50 {
            if get(&sc, "/api/rs", Some(&rs), &[]).await.status == 200 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "an RS256 token never verified against the fetched JWKS");

        // One refresh on its own.
        let p1 = ts.expired_pair("alice");
        let r = get_with_pair(&sc, "/api/one", &p1).await;
        assert!(r.header("x-auth-access-token").is_some(), "not renewed");
        r.ok_echo();
        // A herd of 40 on one expired pair while the token service is slow: one call,
        // the rest wait on it.
        ts.set_latency(Duration::from_millis(400));
        let p2 = ts.expired_pair("bob");
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..40 {
            let rb = client()
                .get(sc.url("/api/herd"))
                .bearer_auth(&p2.access)
                .header("x-refresh-token", &p2.refresh);
            set.spawn(async move { send(rb).await });
        }
        while let Some(j) = set.join_next().await {
            let r = j.unwrap();
            assert_eq!(r.ok_echo().header("x-auth-user-id"), Some("bob"));
        }
        assert_eq!(ts.refresh_calls(), 2, "one call per refresh token");

        let text = scrape(&sc).await;
        let calls = metric(
            &text,
            "auth_sidecar_token_service_calls_total",
            &[("call", "refresh"), ("outcome", "ok")],
        );
        assert_eq!(calls, Some(2.0), "refresh calls:\n{text}");
        assert_eq!(
            metric(
                &text,
                "auth_sidecar_token_service_calls_total",
                &[("call", "initiate")]
            ),
            None,
            "no initiate call was made:\n{text}"
        );
        let coalesced = metric(
            &text,
            "auth_sidecar_coalesced_total",
            &[("call", "refresh")],
        )
        .unwrap_or_else(|| panic!("no coalesced_total{{call=\"refresh\"}}:\n{text}"));
        assert!(
            (1.0..=39.0).contains(&coalesced),
            "coalesced waits {coalesced} for a herd of 40 on one call"
        );
        let fetches = metric(
            &text,
            "auth_sidecar_jwks_fetches_total",
            &[("outcome", "ok")],
        );
        assert_eq!(
            fetches,
            Some(jwks.fetches() as f64),
            "JWKS fetches (the server counted {}):\n{text}",
            jwks.fetches()
        );
        assert_eq!(backend.count(), 42);
    })
    .await
}

// ---------------------------------------------------------------------------
// WebSocket 101 with a renewed pair
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_with_an_expired_token_and_a_refresh_token_gets_the_new_pair_on_the_101(
) {
    bounded(async {
        let Rig {
            backend, ts, sc, ..
        } = Rig::builder()
            .token_service(TokenService::start(API_KEY).await)
            .lifecycle(|_| {})
            .start()
            .await;
        let old = ts.expired_pair("alice");
        let mut req = sc.ws_url("/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", bearer(&old.access).parse().unwrap());
        req.headers_mut()
            .insert("x-refresh-token", old.refresh.parse().unwrap());
        let (mut ws, resp) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .expect("handshake timed out")
        .expect("the upgrade was refused");
        assert_eq!(resp.status(), 101);
        let issued = ts.last_issued().expect("no pair issued");
        let h = |n: &str| {
            resp.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            h("x-auth-access-token"),
            Some(issued.access.clone()),
            "{:?}",
            resp.headers()
        );
        assert_eq!(h("x-auth-refresh-token"), Some(issued.refresh.clone()));
        assert_eq!(ts.refresh_calls(), 1);
        // The tunnel works, as the renewed identity.
        for text in ["hello", "again"] {
            ws.send(Message::text(text)).await.expect("ws send");
            let got = loop {
                let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
                    .await
                    .expect("no echo within 5 s")
                    .expect("tunnel closed")
                    .expect("ws error");
                if let Message::Text(t) = m {
                    break t.to_string();
                }
            };
            assert_eq!(got, text);
        }
        assert_eq!(backend.ws_messages(), 2);
        let e = backend.last();
        assert_eq!(e.path, "/ws");
        assert_eq!(e.header("x-auth-user-id"), Some("alice"));
        assert!(e.names_with_prefix("x-refresh-token").is_empty());
        let _ = ws.close(None).await;
    })
    .await
}
