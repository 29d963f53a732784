//! End-to-end tests of the real `auth-sidecar` binary: a config file in a tempdir, the
//! proxy and admin listeners on port 0, a real test backend, real clients. Each test
//! asserts what a user would check: the status, the error code header and body, what the
//! backend saw, and that rejected requests never reach the backend.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The standard route table used by the route tests.
fn with_routes(c: Cfg) -> Cfg {
    c.route("prefix = \"/public\"\nmode = \"public\"")
        .route("prefix = \"/optional\"\nmode = \"optional\"")
        .route("prefix = \"/readonly\"\nmethods = [\"GET\"]")
        .route("prefix = \"/admin\"\nrequire_claims = { role = \"admin\" }")
}

/// GET `path` with an optional bearer token.
async fn get(sc: &Sidecar, path: &str, token: Option<&str>) -> Resp {
    let mut rb = client().get(sc.url(path));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    send(rb).await
}

/// Asserts a sidecar error answer and that the backend was never reached.
fn assert_rejected(r: &Resp, status: u16, code: &str, backend: &Backend) {
    r.assert_error(status, code);
    assert_eq!(backend.count(), 0, "a rejected request reached the backend");
}

async fn ws_connect(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    let mut req = url.into_client_request().expect("ws request");
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            tungstenite::http::HeaderValue::from_str(v).unwrap(),
        );
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("WebSocket handshake timed out")
}

/// Sends `text` and returns the next text message (5 s bound).
async fn ws_roundtrip(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text.to_string()))
        .await
        .expect("ws send");
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no echo within 5 s")
            .expect("tunnel closed")
            .expect("ws error");
        match msg {
            Message::Text(t) => return t.as_str().to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// The error of a handshake that must have failed.
fn ws_refused<T>(r: Result<T, tungstenite::Error>, what: &str) -> tungstenite::Error {
    match r {
        Ok(_) => panic!("{what}: the upgrade succeeded"),
        Err(e) => e,
    }
}

/// The status of a failed WebSocket handshake (the HTTP answer instead of 101).
fn ws_refusal(e: tungstenite::Error) -> tungstenite::handshake::client::Response {
    match e {
        tungstenite::Error::Http(resp) => resp,
        other => panic!("expected an HTTP refusal of the upgrade, got {other:?}"),
    }
}

fn ws_headers(resp: &tungstenite::http::Response<Option<Vec<u8>>>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

// ---------------------------------------------------------------------------
// Valid tokens
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_hs256_token_is_forwarded_with_identity_headers() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let token = valid();
        let r = get(&sc, "/echo?a=1", Some(&token)).await;
        let e = r.ok_echo();
        assert_eq!(e.header_all("x-auth-user-id"), vec![SUB]);
        assert_eq!(e.header_all("x-auth-email"), vec!["alice@example.com"]);
        assert_eq!(e.header_all("x-auth-name"), vec!["Alice Example"]);
        assert_eq!(e.path, "/echo");
        assert_eq!(e.query.as_deref(), Some("a=1"));
        assert_eq!(backend.count(), 1);
    })
    .await
}

/// A valid token for `alg` passes a sidecar that allows only `alg`.
async fn assert_algorithm_passes(alg: Algorithm) {
    let Rig { backend, sc, .. } = Rig::start_with(|c| c.only(alg)).await;
    let sub = format!("user-{}", alg_name(alg));
    let token = mint(
        alg,
        &json!({"sub": sub, "email": "u@example.com", "exp": now() + 600}),
    );
    let r = get(&sc, "/echo", Some(&token)).await;
    let e = r.ok_echo();
    assert_eq!(
        e.header_all("x-auth-user-id"),
        vec![sub.as_str()],
        "{alg:?}"
    );
    assert_eq!(
        e.header_all("x-auth-email"),
        vec!["u@example.com"],
        "{alg:?}"
    );
    assert_eq!(backend.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_rs256_token_is_forwarded_with_identity_headers() {
    bounded(assert_algorithm_passes(Algorithm::RS256)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_ps256_token_is_forwarded_with_identity_headers() {
    bounded(assert_algorithm_passes(Algorithm::PS256)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_es256_token_is_forwarded_with_identity_headers() {
    bounded(assert_algorithm_passes(Algorithm::ES256)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_eddsa_token_is_forwarded_with_identity_headers() {
    bounded(assert_algorithm_passes(Algorithm::EdDSA)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_passes_when_several_key_families_are_allowed_at_once() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c.all_algorithms()).await;
        let algs = [
            Algorithm::HS256,
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ];
        let mut failed = Vec::new();
        for alg in algs {
            let sub = format!("user-{}", alg_name(alg));
            let r = get(&sc, "/echo", Some(&mint(alg, &claims(&sub)))).await;
            if r.status != 200 {
                failed.push(format!("{alg:?}: {} {}", r.status, r.text()));
                continue;
            }
            assert_eq!(r.echo().header_all("x-auth-user-id"), vec![sub.as_str()]);
        }
        assert!(failed.is_empty(), "rejected valid tokens: {failed:#?}");
        assert_eq!(backend.count(), algs.len());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rs256_token_is_verified_with_the_key_from_a_jwks_file() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| {
            c.auth("algorithms", r#"["RS256"]"#)
                .no_auth_key("hmac_secret")
                .auth("jwks_file", &q(&fixture("jwks.json")))
        })
        .await;
        let token = mint(Algorithm::RS256, &claims("jwks-user"));
        get(&sc, "/echo", Some(&token)).await.ok_echo();
        assert_eq!(backend.last().header("x-auth-user-id"), Some("jwks-user"));
        // A token signed by a key that is not in the set does not pass.
        let forged = sign_with_header(
            &json!({"alg": "RS256", "typ": "JWT", "kid": "rs1"}),
            &claims("mallory"),
            Algorithm::RS256,
            &attacker_rsa_key(),
        );
        get(&sc, "/echo", Some(&forged))
            .await
            .assert_error(401, "invalid_token");
        assert_eq!(backend.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oct_key_in_the_jwks_file_never_becomes_an_hmac_key() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| {
            c.auth("algorithms", r#"["HS256", "RS256"]"#)
                .auth("jwks_file", &q(&fixture("jwks.json")))
        })
        .await;
        let oct = jsonwebtoken::EncodingKey::from_secret(JWKS_OCT_SECRET.as_bytes());
        for header in [
            json!({"alg": "HS256", "typ": "JWT", "kid": "oct1"}),
            json!({"alg": "HS256", "typ": "JWT"}),
        ] {
            let token = sign_with_header(&header, &claims("oct-user"), Algorithm::HS256, &oct);
            get(&sc, "/echo", Some(&token))
                .await
                .assert_error(401, "invalid_token");
        }
        assert_eq!(backend.count(), 0);
        // The configured secret and the RSA key from the same file still work.
        get(&sc, "/echo", Some(&valid())).await.ok_echo();
        get(&sc, "/echo", Some(&mint(Algorithm::RS256, &claims(SUB))))
            .await
            .ok_echo();
        assert_eq!(backend.count(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let token = valid();
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let r = send(
                client()
                    .get(sc.url("/echo"))
                    .header("authorization", format!("{scheme} {token}")),
            )
            .await;
            assert_eq!(
                r.ok_echo().header("x-auth-user-id"),
                Some(SUB),
                "scheme {scheme}"
            );
        }
        assert_eq!(backend.count(), 4);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_configured_cookie_is_accepted() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c.auth("cookie", &q("session"))).await;
        let token = valid();
        let r = send(
            client()
                .get(sc.url("/echo"))
                .header("cookie", format!("theme=dark; session={token}")),
        )
        .await;
        assert_eq!(r.ok_echo().header("x-auth-user-id"), Some(SUB));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expired_within_the_leeway_is_still_accepted() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c).await;
        let token = hs256_with(json!({"exp": now() - 5}));
        get(&sc, "/echo", Some(&token)).await.ok_echo();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_the_configured_issuer_and_one_of_the_audiences_passes() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| {
            c.auth("issuer", &q("https://issuer.example"))
                .auth("audience", r#"["chat-api", "chat-ws"]"#)
        })
        .await;
        let t1 = hs256_with(json!({"iss": "https://issuer.example", "aud": "chat-ws"}));
        get(&sc, "/echo", Some(&t1)).await.ok_echo();
        let t2 = hs256_with(json!({"iss": "https://issuer.example", "aud": ["other", "chat-api"]}));
        get(&sc, "/echo", Some(&t2)).await.ok_echo();
    })
    .await
}

// ---------------------------------------------------------------------------
// Rejected tokens: 401, the stable code, and the backend never reached
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_token_gets_401_missing_token() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let r = get(&sc, "/echo", None).await;
        assert_rejected(&r, 401, "missing_token", &backend);
        // An empty bearer credential is not a token either.
        let r = send(
            client()
                .get(sc.url("/echo"))
                .header("authorization", "Bearer "),
        )
        .await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_bearer_authorization_is_not_accepted_as_a_token() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        // RFC 6750 §3.1: a request that "attempted using an unsupported authentication
        // method" lacks a bearer token: 401 with the bare Bearer challenge, not a 400.
        let r = send(
            client()
                .get(sc.url("/echo"))
                .basic_auth("alice", Some("pw")),
        )
        .await;
        assert_rejected(&r, 401, "missing_token", &backend);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_gets_401_token_expired() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let r = get(&sc, "/echo", Some(&expired())).await;
        assert_rejected(&r, 401, "token_expired", &backend);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_is_not_yet_valid_gets_401_invalid_token() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let r = get(&sc, "/echo", Some(&future_nbf())).await;
        assert_rejected(&r, 401, "invalid_token", &backend);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_exp_is_rejected() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let r = get(&sc, "/echo", Some(&hs256_with(json!({"exp": null})))).await;
        assert_rejected(&r, 401, "invalid_token", &backend);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_wrong_issuer_or_without_issuer_is_rejected() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| c.auth("issuer", &q("https://issuer.example"))).await;
        for t in [
            hs256_with(json!({"iss": "https://evil.example"})),
            hs256_with(json!({"iss": "https://issuer.example/"})),
            hs256_with(json!({})),
        ] {
            get(&sc, "/echo", Some(&t))
                .await
                .assert_error(401, "invalid_token");
        }
        assert_eq!(backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_the_wrong_audience_or_without_audience_is_rejected() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| c.auth("audience", r#"["chat-api"]"#)).await;
        for t in [
            hs256_with(json!({"aud": "billing"})),
            hs256_with(json!({"aud": ["billing", "admin"]})),
            hs256_with(json!({})),
        ] {
            get(&sc, "/echo", Some(&t))
                .await
                .assert_error(401, "invalid_token");
        }
        assert_eq!(backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_sub_or_with_an_empty_sub_is_rejected() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        for t in [
            hs256_with(json!({"sub": null})),
            hs256_with(json!({"sub": ""})),
        ] {
            get(&sc, "/echo", Some(&t))
                .await
                .assert_error(401, "invalid_token");
        }
        assert_eq!(backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_crit_header_is_rejected() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let key = jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes());
        for header in [
            json!({"alg": "HS256", "typ": "JWT", "crit": ["exp"]}),
            json!({"alg": "HS256", "typ": "JWT", "crit": ["x-custom"], "x-custom": true}),
            json!({"alg": "HS256", "typ": "JWT", "crit": []}),
        ] {
            let t = sign_with_header(&header, &claims(SUB), Algorithm::HS256, &key);
            get(&sc, "/echo", Some(&t))
                .await
                .assert_error(401, "invalid_token");
        }
        assert_eq!(backend.count(), 0);
        // Control: the same header without `crit` passes.
        let t = sign_with_header(
            &json!({"alg": "HS256", "typ": "JWT"}),
            &claims(SUB),
            Algorithm::HS256,
            &key,
        );
        get(&sc, "/echo", Some(&t)).await.ok_echo();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_is_rejected_in_every_spelling() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c.all_algorithms()).await;
        for spelling in ["none", "None", "NONE", "nOnE"] {
            let t = alg_none(spelling);
            get(&sc, "/echo", Some(&t))
                .await
                .assert_error(401, "invalid_token");
            // The same with some bytes as a "signature".
            let t = format!("{t}{}", b64(b"not-a-signature"));
            get(&sc, "/echo", Some(&t))
                .await
                .assert_error(401, "invalid_token");
        }
        assert_eq!(backend.count(), 0);
        // Control: the same sidecar accepts real tokens.
        get(&sc, "/echo", Some(&valid())).await.ok_echo();
        get(&sc, "/echo", Some(&mint(Algorithm::RS256, &claims(SUB))))
            .await
            .ok_echo();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hs256_token_signed_with_the_rsa_public_key_is_rejected() {
    bounded(async {
        // RS256 only: HS256 is not in the allow-list.
        let Rig { backend, sc, .. } = Rig::start_with(|c| {
            c.auth("algorithms", r#"["RS256"]"#)
                .no_auth_key("hmac_secret")
                .auth(
                    "public_keys",
                    &format!(
                        "[{{ file = {}, kid = \"rs1\" }}]",
                        q(&fixture("rsa2048_public.pem"))
                    ),
                )
        })
        .await;
        let t = hs256_signed_with_rsa_public_pem();
        assert_rejected(
            &get(&sc, "/echo", Some(&t)).await,
            401,
            "invalid_token",
            &backend,
        );
        drop(sc);
        // Both families allowed: the RSA key must still never be used as an HMAC secret.
        let Rig { backend, sc, .. } = Rig::start_with(|c| c.all_algorithms()).await;
        assert_rejected(
            &get(&sc, "/echo", Some(&t)).await,
            401,
            "invalid_token",
            &backend,
        );
        // Control: real HS256 and RS256 tokens pass on this sidecar.
        get(&sc, "/echo", Some(&valid())).await.ok_echo();
        get(&sc, "/echo", Some(&mint(Algorithm::RS256, &claims(SUB))))
            .await
            .ok_echo();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_tampered_payload_is_rejected() {
    bounded(async {
        for alg in [
            Algorithm::HS256,
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ] {
            let Rig { backend, sc, .. } = Rig::start_with(|c| c.only(alg)).await;
            let t = mint(alg, &claims(SUB));
            let forged = tamper_payload(&t, &claims("admin"));
            get(&sc, "/echo", Some(&forged))
                .await
                .assert_error(401, "invalid_token");
            assert_eq!(backend.count(), 0, "{alg:?}");
            // Control: the untampered token passes.
            get(&sc, "/echo", Some(&t)).await.ok_echo();
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_tampered_signature_is_rejected() {
    bounded(async {
        for alg in [
            Algorithm::HS256,
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ] {
            let Rig { backend, sc, .. } = Rig::start_with(|c| c.only(alg)).await;
            let good = mint(alg, &claims(SUB));
            get(&sc, "/echo", Some(&tamper_signature(&good)))
                .await
                .assert_error(401, "invalid_token");
            assert_eq!(backend.count(), 0, "{alg:?}");
            // Control: the untampered token passes.
            get(&sc, "/echo", Some(&good)).await.ok_echo();
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_algorithm_outside_the_allow_list_is_rejected() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        for alg in [
            Algorithm::HS384,
            Algorithm::HS512,
            Algorithm::RS256,
            Algorithm::ES256,
        ] {
            let t = mint(alg, &claims(SUB));
            get(&sc, "/echo", Some(&t))
                .await
                .assert_error(401, "invalid_token");
        }
        assert_eq!(backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jku_x5u_and_jwk_headers_are_never_fetched_or_trusted() {
    bounded(async {
        // A listener that counts every connection the sidecar might make to it.
        let lure = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lure_addr = lure.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let lure_task = tokio::spawn(async move {
            while let Ok((mut s, _)) = lure.accept().await {
                h.fetch_add(1, Ordering::SeqCst);
                let jwk = std::fs::read_to_string(fixture("attacker_jwk.json")).unwrap();
                let body = format!("{{\"keys\": [{jwk}]}}");
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let Rig { backend, sc, .. } = Rig::start_with(|c| c.only(Algorithm::RS256)).await;
        let jwk: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("attacker_jwk.json")).unwrap()).unwrap();
        let attacker = attacker_rsa_key();
        let headers = [
            json!({"alg": "RS256", "typ": "JWT", "kid": "attacker", "jku": format!("http://{lure_addr}/jwks.json")}),
            json!({"alg": "RS256", "typ": "JWT", "kid": "rs1", "jku": format!("http://{lure_addr}/jwks.json")}),
            json!({"alg": "RS256", "typ": "JWT", "x5u": format!("http://{lure_addr}/cert.pem")}),
            json!({"alg": "RS256", "typ": "JWT", "kid": "attacker", "jwk": jwk}),
            json!({"alg": "RS256", "typ": "JWT", "kid": "rs1", "jwk": jwk}),
            json!({"alg": "RS256", "typ": "JWT", "jwk": jwk}),
        ];
        for header in headers {
            let t = sign_with_header(&header, &claims("mallory"), Algorithm::RS256, &attacker);
            let r = get(&sc, "/echo", Some(&t)).await;
            assert_eq!(r.status, 401, "header {header}: {}", r.text());
            r.assert_error(401, "invalid_token");
        }
        // Give any background fetch a moment to show itself.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(hits.load(Ordering::SeqCst), 0, "the sidecar fetched a URL named by a token header");
        assert_eq!(backend.count(), 0);
        // Control: a token signed by the configured key passes.
        get(&sc, "/echo", Some(&mint(Algorithm::RS256, &claims(SUB)))).await.ok_echo();
        lure_task.abort();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tokens_are_rejected_as_invalid_token() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let good = valid();
        let (h, rest) = good.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        let cases = [
            "not-a-jwt".to_string(),
            "a.b".to_string(),
            "a.b.c".to_string(),
            "a.b.c.d".to_string(),
            "..".to_string(),
            format!("{h}.{p}"),
            format!("{h}.{p}.{s}.{s}"),
            format!("{h}..{s}"),
            format!(".{p}.{s}"),
            format!("{h}.{p}.{s}!"),
            format!("{h}.{p}!.{s}"),
            format!("{}.{p}.{s}", b64(b"not json")),
            format!("{}.{p}.{s}", b64(b"[\"HS256\"]")),
            format!("{h}.{}.{s}", b64(b"not json")),
            format!("{h}.{}.{s}", b64(b"\"just a string\"")),
            format!("{}.{p}.{s}", b64_json(&json!({"typ": "JWT"}))),
            format!(
                "{}.{p}.{s}",
                b64_json(&json!({"alg": "HS256", "typ": "JWT"}))
            )
            .replace('.', ".."),
        ];
        for t in &cases {
            let r = get(&sc, "/echo", Some(t)).await;
            assert_eq!(r.status, 401, "token {t:?}: {}", r.text());
            r.assert_error(401, "invalid_token");
        }
        assert_eq!(backend.count(), 0);
        // Control: the token the cases were cut from passes.
        get(&sc, "/echo", Some(&good)).await.ok_echo();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_longer_than_max_token_bytes_is_rejected_as_invalid_token() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        // Over the default 8192 bytes, but correctly signed and well inside header limits.
        let t = oversized(9000);
        assert_rejected(
            &get(&sc, "/echo", Some(&t)).await,
            401,
            "invalid_token",
            &backend,
        );
        drop(sc);
        // A configured lower limit applies too; a token under it passes.
        let Rig { backend, sc, .. } = Rig::start_with(|c| c.auth("max_token_bytes", "600")).await;
        let big = oversized(700);
        assert_rejected(
            &get(&sc, "/echo", Some(&big)).await,
            401,
            "invalid_token",
            &backend,
        );
        let small = valid();
        assert!(small.len() < 600);
        get(&sc, "/echo", Some(&small)).await.ok_echo();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_with_cr_or_lf_fails_the_request_and_never_splits_into_headers() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| c.claim_header("role", "x-auth-role")).await;
        for extra in [
            json!({"name": "Alice\r\nX-Injected: evil"}),
            json!({"email": "a@example.com\nX-Injected: evil"}),
            json!({"sub": "alice\rX-Injected: evil"}),
            json!({"role": "user\r\nX-Injected: evil"}),
        ] {
            let t = hs256_with(extra.clone());
            let r = get(&sc, "/echo", Some(&t)).await;
            assert_eq!(r.status, 401, "claims {extra}: {}", r.text());
            r.assert_error(401, "invalid_token");
        }
        assert_eq!(
            backend.count(),
            0,
            "a request with a header-splitting claim reached the backend"
        );
        // Control: clean claims pass and are mapped.
        let e = get(&sc, "/echo", Some(&hs256_with(json!({"role": "user"}))))
            .await
            .ok_echo();
        assert_eq!(e.header("x-auth-role"), Some("user"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_cannot_verify_anything_are_an_outage_not_a_bad_token() {
    bounded(async {
        // A JWKS file with only an `oct` key: no usable public key for RS256. A
        // production proxy either refuses such a config at startup or answers 503
        // keys_unavailable; it never lets the token through and never says 401.
        let started = Rig::builder()
            .cfg(|c| {
                c.auth("algorithms", r#"["RS256"]"#)
                    .no_auth_key("hmac_secret")
                    .auth("jwks_file", &q(&fixture("jwks_oct_only.json")))
            })
            .try_start()
            .await;
        match started {
            Err((f, _cfg)) => {
                let out = f.output.to_ascii_lowercase();
                assert!(
                    out.contains("jwks") || out.contains("key"),
                    "refused at startup, but without saying why: {}",
                    f.output
                );
            }
            Ok(Rig { backend, sc, .. }) => {
                let t = mint(Algorithm::RS256, &claims(SUB));
                let r = get(&sc, "/echo", Some(&t)).await;
                assert_rejected(&r, 503, "keys_unavailable", &backend);
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Identity headers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_are_removed_in_every_spelling() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| c.claim_header("role", "x-auth-role")).await;
        let token = valid();
        let auth = bearer(&token);
        let r = raw(
            sc.addr,
            &raw_req(
                "GET",
                "/echo",
                &[
                    ("Authorization", &auth),
                    ("X-Auth-User-Id", "mallory-1"),
                    ("x-auth-user-id", "mallory-2"),
                    ("X_AUTH_USER_ID", "mallory-3"),
                    ("X_Auth_User_Id", "mallory-4"),
                    ("X-AUTH-EMAIL", "mallory@example.com"),
                    ("X-Auth-Anything", "spoofed"),
                    ("x-auth-role", "admin"),
                    ("X-Auth_Role", "admin"),
                    ("X-Unrelated", "kept"),
                ],
            ),
        )
        .await;
        let e = r.ok_echo();
        assert_eq!(e.header_all("x-auth-user-id"), vec![SUB], "{:?}", e.headers);
        assert_eq!(
            e.header_all("x-auth-email"),
            vec!["alice@example.com"],
            "{:?}",
            e.headers
        );
        // The token has no role claim: no role header at all, spoofed or not.
        assert!(e.header("x-auth-role").is_none(), "{:?}", e.headers);
        let mut names = e.names_with_prefix("x-auth-");
        names.sort();
        assert_eq!(
            names,
            vec!["x-auth-email", "x-auth-name", "x-auth-user-id"],
            "{:?}",
            e.headers
        );
        assert!(!e
            .headers
            .iter()
            .any(|(_, v)| v.contains("mallory") || v == "spoofed" || v == "admin"));
        assert_eq!(e.header("x-unrelated"), Some("kept"));
        assert_eq!(backend.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_are_removed_on_public_routes_and_anonymous_optional_requests() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(with_routes).await;
        for path in ["/public/page", "/optional/page"] {
            let r = raw(
                sc.addr,
                &raw_req(
                    "GET",
                    path,
                    &[
                        ("X-Auth-User-Id", "mallory"),
                        ("X_AUTH_USER_ID", "mallory"),
                        ("X-Auth-Email", "mallory@example.com"),
                        ("X-Auth-Anything", "spoofed"),
                    ],
                ),
            )
            .await;
            let e = r.ok_echo();
            assert!(
                e.names_with_prefix("x-auth-").is_empty(),
                "{path}: {:?}",
                e.headers
            );
        }
        // CORS preflights too.
        let r = raw(
            sc.addr,
            &raw_req(
                "OPTIONS",
                "/public/page",
                &[
                    ("Origin", "https://app.example.com"),
                    ("Access-Control-Request-Method", "POST"),
                    ("X-Auth-User-Id", "mallory"),
                ],
            ),
        )
        .await;
        if r.header("x-backend") == Some("test") {
            assert!(r.echo().names_with_prefix("x-auth-").is_empty());
        }
        assert!(backend.count() >= 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_header_naming_identity_headers_cannot_remove_them() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c).await;
        let token = valid();
        let auth = bearer(&token);
        let r = raw(
            sc.addr,
            &raw_req(
                "GET",
                "/echo",
                &[
                    ("Authorization", &auth),
                    (
                        "Connection",
                        "close, x-auth-user-id, X-Auth-Email, x_auth_name",
                    ),
                    ("X-Auth-User-Id", "mallory"),
                ],
            ),
        )
        .await;
        let e = r.ok_echo();
        assert_eq!(e.header_all("x-auth-user-id"), vec![SUB], "{:?}", e.headers);
        assert_eq!(
            e.header_all("x-auth-email"),
            vec!["alice@example.com"],
            "{:?}",
            e.headers
        );
        assert_eq!(
            e.header_all("x-auth-name"),
            vec!["Alice Example"],
            "{:?}",
            e.headers
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_claims_are_mapped_to_their_headers() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| {
            c.claim_header("role", "x-auth-role")
                .claim_header("tenant", "x-tenant-id")
        })
        .await;
        let t = hs256_with(json!({"role": "moderator", "tenant": "acme"}));
        let r = send(
            client()
                .get(sc.url("/echo"))
                .bearer_auth(&t)
                .header("x-tenant-id", "spoofed"),
        )
        .await;
        let e = r.ok_echo();
        assert_eq!(e.header_all("x-auth-role"), vec!["moderator"]);
        // An identity header outside the prefix is still set, never appended to.
        assert_eq!(e.header_all("x-tenant-id"), vec!["acme"], "{:?}", e.headers);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_identity_prefix_strips_every_header_under_it() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| {
            c.identity("prefix", &q("x-user-"))
                .identity("user_id", &q("x-user-id"))
                .identity("email", &q("x-user-email"))
                .identity("name", &q("x-user-name"))
        })
        .await;
        let token = valid();
        let auth = bearer(&token);
        let r = raw(
            sc.addr,
            &raw_req(
                "GET",
                "/echo",
                &[
                    ("Authorization", &auth),
                    ("X-User-Id", "mallory"),
                    ("X_USER_ROLE", "admin"),
                ],
            ),
        )
        .await;
        let e = r.ok_echo();
        assert_eq!(e.header_all("x-user-id"), vec![SUB]);
        let mut names = e.names_with_prefix("x-user-");
        names.sort();
        assert_eq!(
            names,
            vec!["x-user-email", "x-user-id", "x-user-name"],
            "{:?}",
            e.headers
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_is_forwarded_by_default_and_removed_when_configured() {
    bounded(async {
        let token = valid();
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c).await;
        let e = get(&sc, "/echo", Some(&token)).await.ok_echo();
        assert_eq!(e.header("authorization"), Some(bearer(&token).as_str()));
        drop(sc);
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c.auth("forward_authorization", "false")).await;
        let e = get(&sc, "/echo", Some(&token)).await.ok_echo();
        assert!(e.header("authorization").is_none(), "{:?}", e.headers);
        assert_eq!(e.header("x-auth-user-id"), Some(SUB));
        assert!(
            !e.headers.iter().any(|(_, v)| v.contains(&token)),
            "the token still reached the backend"
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// Ambiguous requests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_get_400_invalid_request() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let a = bearer(&valid());
        let b = bearer(&valid_for("bob"));
        for (first, second) in [(&a, &b), (&a, &a)] {
            let r = raw(
                sc.addr,
                &raw_req(
                    "GET",
                    "/echo",
                    &[("Authorization", first), ("authorization", second)],
                ),
            )
            .await;
            assert_rejected(&r, 400, "invalid_request", &backend);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_both_the_header_and_the_cookie_gets_400_invalid_request() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c.auth("cookie", &q("session"))).await;
        let t = valid();
        let r = send(
            client()
                .get(sc.url("/echo"))
                .bearer_auth(&t)
                .header("cookie", format!("session={t}")),
        )
        .await;
        assert_rejected(&r, 400, "invalid_request", &backend);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_param_token_is_not_accepted_on_a_plain_request() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| c.auth("query_param", &q("access_token"))).await;
        let r = get(&sc, &format!("/echo?access_token={}", valid()), None).await;
        assert_rejected(&r, 401, "missing_token", &backend);
    })
    .await
}

// ---------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_route_forwards_without_a_token_and_ignores_bad_ones() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(with_routes).await;
        let e = get(&sc, "/public/page", None).await.ok_echo();
        assert_eq!(e.path, "/public/page");
        assert!(e.header("x-auth-user-id").is_none());
        let e = get(&sc, "/public", Some("garbage")).await.ok_echo();
        assert!(e.header("x-auth-user-id").is_none());
        get(&sc, "/public/x", Some(&expired())).await.ok_echo();
        assert_eq!(backend.count(), 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_route_forwards_anonymous_requests_without_identity() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(with_routes).await;
        let e = get(&sc, "/optional/feed", None).await.ok_echo();
        assert!(e.names_with_prefix("x-auth-").is_empty(), "{:?}", e.headers);
        let e = get(&sc, "/optional/feed", Some(&valid())).await.ok_echo();
        assert_eq!(e.header("x-auth-user-id"), Some(SUB));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_route_still_rejects_a_bad_token() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(with_routes).await;
        get(&sc, "/optional/feed", Some("garbage"))
            .await
            .assert_error(401, "invalid_token");
        get(&sc, "/optional/feed", Some(&tamper_signature(&valid())))
            .await
            .assert_error(401, "invalid_token");
        get(&sc, "/optional/feed", Some(&expired()))
            .await
            .assert_error(401, "token_expired");
        assert_eq!(backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_under_no_route_requires_a_token() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(with_routes).await;
        assert_rejected(
            &get(&sc, "/anything/else", None).await,
            401,
            "missing_token",
            &backend,
        );
        get(&sc, "/anything/else", Some(&valid())).await.ok_echo();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_prefix_matches_whole_path_segments_only() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(with_routes).await;
        for path in ["/publicity", "/public-admin/x", "/public.json"] {
            let r = get(&sc, path, None).await;
            assert_eq!(
                r.status,
                401,
                "{path} was opened by the /public route: {}",
                r.text()
            );
            r.assert_error(401, "missing_token");
        }
        assert_eq!(backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_the_route_does_not_allow_gets_403_insufficient_scope() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(with_routes).await;
        let t = valid();
        get(&sc, "/readonly/doc", Some(&t)).await.ok_echo();
        for method in [
            reqwest::Method::POST,
            reqwest::Method::DELETE,
            reqwest::Method::PUT,
        ] {
            let r = send(
                client()
                    .request(method.clone(), sc.url("/readonly/doc"))
                    .bearer_auth(&t)
                    .body("x"),
            )
            .await;
            assert_eq!(r.status, 403, "{method}: {}", r.text());
            r.assert_error(403, "insufficient_scope");
        }
        assert_eq!(backend.count(), 1);
        // Without a token it is still a 401, not a 403.
        let r = send(client().post(sc.url("/readonly/doc"))).await;
        r.assert_error(401, "missing_token");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_lacking_the_required_claims_gets_403_insufficient_scope() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(with_routes).await;
        for t in [
            hs256_with(json!({"role": "user"})),
            valid(),
            hs256_with(json!({"role": "Admin"})),
        ] {
            get(&sc, "/admin/panel", Some(&t))
                .await
                .assert_error(403, "insufficient_scope");
        }
        assert_eq!(backend.count(), 0);
        get(&sc, "/admin/panel", None)
            .await
            .assert_error(401, "missing_token");
        let e = get(
            &sc,
            "/admin/panel",
            Some(&hs256_with(json!({"role": "admin"}))),
        )
        .await
        .ok_echo();
        assert_eq!(e.header("x-auth-user-id"), Some(SUB));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_resolved_before_route_matching_and_forwarding() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(with_routes).await;
        // Escaping a public prefix with .. lands on a protected path.
        for target in [
            "/public/../admin/panel",
            "/public/./../secret",
            "/public/%2e%2e/secret",
            "/public/%2E%2E/secret",
            "/public/.%2e/secret",
        ] {
            let r = raw(sc.addr, &raw_req("GET", target, &[])).await;
            assert_eq!(r.status, 401, "{target} was not protected: {}", r.text());
            r.assert_error(401, "missing_token");
        }
        assert_eq!(backend.count(), 0);
        // ... and a token sees the canonical path forwarded.
        let auth = bearer(&valid());
        let e = raw(
            sc.addr,
            &raw_req(
                "GET",
                "/public/../secret/./doc?x=1",
                &[("Authorization", &auth)],
            ),
        )
        .await
        .ok_echo();
        assert_eq!(e.path, "/secret/doc");
        assert_eq!(e.query.as_deref(), Some("x=1"));
        // The other way round: dot segments that end inside a public prefix are public.
        let e = raw(sc.addr, &raw_req("GET", "/secret/../public/page", &[]))
            .await
            .ok_echo();
        assert_eq!(e.path, "/public/page");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_paths_are_decoded_once_for_matching() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(with_routes).await;
        // Encoded letters cannot dodge a route.
        let r = raw(sc.addr, &raw_req("GET", "/%61dmin/panel", &[])).await;
        r.assert_error(401, "missing_token");
        assert_eq!(backend.count(), 0);
        let e = raw(sc.addr, &raw_req("GET", "/pub%6Cic/page", &[]))
            .await
            .ok_echo();
        assert_eq!(e.path, "/public/page");
        // Decoded once, %252e%252e still reads `..` to a backend that decodes again:
        // ambiguous, 400 on a public route too (server.allow_encoded_percent lets it
        // through; tests/path_decoding.rs).
        let r = raw(sc.addr, &raw_req("GET", "/public/%252e%252e/secret", &[])).await;
        r.assert_error(400, "invalid_request");
        assert_eq!(percent_decode("/a/%2e%2e"), "/a/..");
        let e = raw(sc.addr, &raw_req("GET", "/public/100%25/secret", &[]))
            .await
            .ok_echo();
        assert_eq!(e.path, "/public/100%25/secret", "forwarded as decided");
        let once = percent_decode(&e.path);
        assert!(
            !once.split('/').any(|s| s == ".."),
            "forwarded path {} reads as {once} at the backend",
            e.path
        );
        assert_eq!(backend.count(), 2, "the two public requests, nothing else");
    })
    .await
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_slashes_are_merged() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(with_routes).await;
        let e = raw(sc.addr, &raw_req("GET", "//public//page", &[]))
            .await
            .ok_echo();
        assert_eq!(e.path, "/public/page");
        let r = raw(sc.addr, &raw_req("GET", "//admin//panel", &[])).await;
        r.assert_error(401, "missing_token");
        assert_eq!(backend.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoded_slash_or_backslash_gets_400_invalid_request() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(with_routes).await;
        let auth = bearer(&valid());
        for target in [
            "/public%2F..%2Fadmin/panel",
            "/public/a%2Fb",
            "/public/a%2fb",
            "/public/a%5Cb",
            "/public/a%5cb",
            "/public/..%5C..%5Cadmin",
        ] {
            for headers in [vec![], vec![("Authorization", auth.as_str())]] {
                let r = raw(sc.addr, &raw_req("GET", target, &headers)).await;
                assert_eq!(r.status, 400, "{target}: {}", r.text());
                r.assert_error(400, "invalid_request");
            }
        }
        assert_eq!(backend.count(), 0);
    })
    .await
}

// ---------------------------------------------------------------------------
// Forwarding
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c).await;
        let auth = bearer(&valid());
        let r = raw(
            sc.addr,
            &raw_req(
                "GET",
                "/echo",
                &[
                    ("Authorization", &auth),
                    ("Connection", "close, X-Hop-Custom"),
                    ("X-Hop-Custom", "hop-value"),
                    ("Keep-Alive", "timeout=5"),
                    ("Proxy-Connection", "keep-alive"),
                    ("TE", "trailers"),
                    ("Upgrade", "foo/1.0"),
                    ("X-End-To-End", "yes"),
                ],
            ),
        )
        .await;
        let e = r.ok_echo();
        for h in [
            "x-hop-custom",
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
        ] {
            assert!(
                e.header(h).is_none(),
                "hop-by-hop `{h}` was forwarded: {:?}",
                e.headers
            );
        }
        if let Some(c) = e.header("connection") {
            assert!(
                !c.to_ascii_lowercase().contains("x-hop-custom"),
                "connection: {c}"
            );
        }
        assert_eq!(e.header("x-end-to-end"), Some("yes"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_not_returned() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c).await;
        let r = get(&sc, "/hop-response", Some(&valid())).await;
        assert_eq!(r.status, 200, "{}", r.text());
        for h in ["x-hop-resp", "keep-alive", "proxy-connection"] {
            assert!(
                r.header(h).is_none(),
                "hop-by-hop `{h}` came back: {:?}",
                r.headers
            );
        }
        assert_eq!(r.header("x-end-to-end"), Some("kept"));
        assert_eq!(r.text(), "hop");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_headers_are_set() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c).await;
        let t = valid();
        // Without client values.
        let e = get(&sc, "/echo", Some(&t)).await.ok_echo();
        assert_eq!(e.header_all("x-forwarded-for").join(", "), "127.0.0.1");
        assert_eq!(e.header_all("x-forwarded-proto"), vec!["http"]);
        assert_eq!(
            e.header_all("x-forwarded-host"),
            vec![sc.addr.to_string().as_str()]
        );
        // With client values: XFF appended to, proto and host set from what the sidecar saw.
        let auth = bearer(&t);
        let echo_of = |headers: Vec<(&'static str, &'static str)>| {
            let mut all = vec![("Authorization", auth.as_str())];
            all.extend(headers);
            let req = raw_req("GET", "/echo", &all);
            async move { raw(sc.addr, &req).await.ok_echo() }
        };
        let e = echo_of(vec![
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
        ])
        .await;
        let xff = e.header_all("x-forwarded-for").join(", ");
        let parts: Vec<&str> = xff.split(',').map(str::trim).collect();
        assert_eq!(
            parts,
            vec!["203.0.113.7", "127.0.0.1"],
            "x-forwarded-for: {xff}"
        );
        assert_eq!(e.header_all("x-forwarded-proto"), vec!["http"]);
        assert_eq!(e.header_all("x-forwarded-host"), vec!["app.example.com"]);
        // Several XFF headers (one empty): one list, in order, the peer last.
        let e = echo_of(vec![
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-For", " "),
            ("X-Forwarded-For", "198.51.100.2, 192.0.2.9"),
        ])
        .await;
        assert_eq!(
            e.header_all("x-forwarded-for"),
            vec!["203.0.113.7, 198.51.100.2, 192.0.2.9, 127.0.0.1"]
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sane_client_request_id_is_kept_and_returned() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c).await;
        let id = "req-3f2a9c1e-0001";
        let r = send(
            client()
                .get(sc.url("/echo"))
                .bearer_auth(valid())
                .header("x-request-id", id),
        )
        .await;
        assert_eq!(r.header("x-request-id"), Some(id));
        assert_eq!(r.ok_echo().header_all("x-request-id"), vec![id]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_generated_when_missing_or_insane() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c).await;
        let t = valid();
        let insane = format!("bad id \"<script>\" {}", "x".repeat(600));
        let mut ids = Vec::new();
        for sent in [None, None, Some(insane.as_str())] {
            let mut rb = client().get(sc.url("/echo")).bearer_auth(&t);
            if let Some(s) = sent {
                rb = rb.header("x-request-id", s);
            }
            let r = send(rb).await;
            let returned = r
                .header("x-request-id")
                .expect("no x-request-id on the response")
                .to_string();
            assert!(
                !returned.is_empty() && returned.len() <= 200,
                "{returned:?}"
            );
            assert_ne!(
                Some(returned.as_str()),
                sent,
                "an insane request id was kept"
            );
            assert_eq!(
                r.ok_echo().header_all("x-request-id"),
                vec![returned.as_str()]
            );
            ids.push(returned);
        }
        assert_ne!(ids[0], ids[1], "generated request ids must differ");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_request_ids_are_unique_across_workers() {
    bounded(async {
        // Each worker thread counts its own ids: they must never meet.
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c.server("worker_threads", "4")).await;
        let t = valid();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..10 {
            // A new client connection per request: they spread over the workers.
            let batch: Vec<_> = (0..20)
                .map(|_| {
                    let rb = client().get(sc.url("/echo")).bearer_auth(&t);
                    tokio::spawn(send(rb))
                })
                .collect();
            for h in batch {
                let r = h.await.expect("task");
                assert_eq!(r.status, 200);
                let id = r.header("x-request-id").expect("x-request-id").to_string();
                assert!(
                    ids.insert(id.clone()),
                    "request id {id} was handed out twice"
                );
            }
        }
        assert_eq!(ids.len(), 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_request_also_gets_a_request_id() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c).await;
        let r = get(&sc, "/echo", None).await;
        r.assert_error(401, "missing_token");
        assert!(
            r.header("x-request-id").is_some_and(|v| !v.is_empty()),
            "{:?}",
            r.headers
        );
        let r = send(
            client()
                .get(sc.url("/echo"))
                .header("x-request-id", "req-keep-me"),
        )
        .await;
        assert_eq!(r.header("x-request-id"), Some("req-keep-me"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_is_sent_to_the_backend_only() {
    bounded(async {
        // A lure that would notice a request sent to the authority in the target.
        let lure = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lure_addr = lure.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let lure_task = tokio::spawn(async move {
            while let Ok((_s, _)) = lure.accept().await {
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let auth = bearer(&valid());
        let target = format!("http://{lure_addr}/echo?x=1");
        let host = lure_addr.to_string();
        let r = raw(
            sc.addr,
            &format!(
                "GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        let e = r.ok_echo();
        assert_eq!(e.path, "/echo");
        assert_eq!(e.query.as_deref(), Some("x=1"));
        assert_eq!(backend.count(), 1);
        assert_eq!(hits.load(Ordering::SeqCst), 0, "the sidecar connected to the authority in the request");
        lure_task.abort();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_url_with_a_path_prefixes_every_forwarded_path() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| {
            let url = c.backend["url"].trim_matches('"').to_string();
            c.backend("url", &q(&format!("{url}/api/")))
        })
        .await;
        let t = valid();
        let e = get(&sc, "/echo?x=1", Some(&t)).await.ok_echo();
        assert_eq!(e.path, "/api/echo");
        assert_eq!(e.query.as_deref(), Some("x=1"));
        // A path the sidecar rewrote (dot segments) goes under the prefix too.
        let e = get(&sc, "/a/../echo", Some(&t)).await.ok_echo();
        assert_eq!(e.path, "/api/echo");
        assert_eq!(e.query, None);
        assert_eq!(backend.count(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_own_responses_pass_through_unchanged() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c).await;
        let r = get(&sc, "/status/401", Some(&valid())).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.header("x-backend"), Some("test"));
        assert!(
            r.header("x-auth-error").is_none(),
            "the backend's 401 was dressed as the sidecar's"
        );
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"backend\"")
        );
        let r = get(&sc, "/status/503", Some(&valid())).await;
        assert_eq!(r.status, 503);
        assert!(r.header("x-auth-error").is_none());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_reaches_the_backend_intact() {
    bounded(async {
        let Rig { backend: _backend, sc, .. } = Rig::start_with(|c| c).await;
        let auth = bearer(&valid());
        let req = format!(
            "POST /echo HTTP/1.1\r\nHost: app.example.com\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
        );
        let e = raw(sc.addr, &req).await.ok_echo();
        assert_eq!(e.method, "POST");
        assert_eq!(e.body, "hello, world");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_as_the_backend_sends_them() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c).await;
        let start = Instant::now();
        let resp = client()
            .get(sc.url("/sse"))
            .bearer_auth(valid())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream")));
        let mut stream = resp.bytes_stream();
        let mut text = String::new();
        let mut arrivals = Vec::new();
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("SSE stream stalled")
        {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("SSE chunk")));
            while arrivals.len() < common::backend::SSE_EVENTS
                && text.contains(&format!("data: event {}\n", arrivals.len() + 1))
            {
                arrivals.push(start.elapsed());
            }
        }
        let end = start.elapsed();
        assert_eq!(
            arrivals.len(),
            common::backend::SSE_EVENTS,
            "events: {text:?}"
        );
        let gap = common::backend::SSE_GAP;
        let spread = gap * (common::backend::SSE_EVENTS as u32 - 1);
        // The first event came long before the stream ended: it was not buffered.
        assert!(
            arrivals[0] + spread / 2 < end,
            "first event at {:?}, stream ended at {end:?}: the proxy buffered the stream",
            arrivals[0]
        );
        assert!(
            arrivals[0] + spread / 2 < arrivals[arrivals.len() - 1],
            "arrivals {arrivals:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_upload_streams_through_with_a_matching_digest() {
    bounded_for(Duration::from_secs(240), async {
        use sha2::{Digest, Sha256};
        const CHUNK: usize = 1024 * 1024;
        const CHUNKS: u64 = 100;
        fn chunk(i: u64) -> bytes::Bytes {
            // Deterministic, not all one byte, 1 MiB at a time (never 100 MiB at once).
            let mut v: Vec<u8> = (0..CHUNK).map(|j| (j % 251) as u8).collect();
            v[..8].copy_from_slice(&i.to_le_bytes());
            bytes::Bytes::from(v)
        }
        let mut h = Sha256::new();
        for i in 0..CHUNKS {
            h.update(chunk(i));
        }
        let expected: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();

        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(|c| c).await;
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
            (0..CHUNKS).map(|i| Ok::<_, std::io::Error>(chunk(i))),
        ));
        let big_client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(200))
            .build()
            .unwrap();
        let r = send(
            big_client
                .post(sc.url("/upload"))
                .bearer_auth(valid())
                .body(body),
        )
        .await;
        assert_eq!(r.status, 200, "{:?} {}", r.headers, r.text());
        let v = r.json();
        assert_eq!(v["bytes"], json!(CHUNK as u64 * CHUNKS));
        assert_eq!(v["sha256"], json!(expected));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_requests_are_served() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let h2 = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let resp = h2
            .get(sc.url("/echo?h2=1"))
            .bearer_auth(valid())
            .send()
            .await
            .expect("h2 request");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        let e = Resp::from_reqwest(resp).await.ok_echo();
        assert_eq!(e.header_all("x-auth-user-id"), vec![SUB]);
        assert_eq!(e.query.as_deref(), Some("h2=1"));
        // Rejections over h2 look the same.
        let resp = h2.get(sc.url("/echo")).send().await.unwrap();
        Resp::from_reqwest(resp)
            .await
            .assert_error(401, "missing_token");
        assert_eq!(backend.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_backend_gives_502_backend_unavailable() {
    bounded(async {
        let dead = refusing_addr();
        let Rig { sc, .. } = Rig::builder()
            .backend(format!("http://{dead}"))
            .start()
            .await;
        let r = get(&sc, "/echo", Some(&valid())).await;
        r.assert_error(502, "backend_unavailable");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gives_504_backend_timeout() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| c.backend("response_timeout", &q("500ms"))).await;
        let start = Instant::now();
        let r = get(&sc, "/slow?ms=5000", Some(&valid())).await;
        let took = start.elapsed();
        r.assert_error(504, "backend_timeout");
        assert!(took < Duration::from_secs(4), "the 504 took {took:?}");
        assert!(
            took >= Duration::from_millis(400),
            "the 504 came before the timeout: {took:?}"
        );
        assert_eq!(backend.count(), 1);
        // A backend that answers in time is fine.
        get(&sc, "/slow?ms=50", Some(&valid())).await.ok_echo();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warning_logged_for_a_request_carries_that_requests_id() {
    bounded(async {
        // One worker: the requests are polled in turn on one thread, so each line must
        // find its own request's id, not the one polled last.
        let dead = refusing_addr();
        let Rig { sc, .. } = Rig::builder()
            .backend(format!("http://{dead}"))
            .cfg(|c| c.server("worker_threads", "1"))
            .start()
            .await;
        let ids: Vec<String> = (0..6).map(|i| format!("req-warn-{i}")).collect();
        let tasks: Vec<_> = ids
            .iter()
            .map(|id| {
                let rb = client()
                    .get(sc.url("/echo"))
                    .bearer_auth(valid())
                    .header("x-request-id", id.as_str());
                tokio::spawn(send(rb))
            })
            .collect();
        for t in tasks {
            t.await
                .expect("task")
                .assert_error(502, "backend_unavailable");
        }
        // The lines are written before the responses; the reader thread may lag.
        let message = |v: &serde_json::Value| common::sidecar::log_field(v, "message");
        let warnings_now = || -> Vec<serde_json::Value> {
            sc.json_lines()
                .into_iter()
                .filter(|v| {
                    v["level"] == "WARN"
                        && message(v).is_some_and(|m| m.contains("backend request failed"))
                })
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut warnings = warnings_now();
        while warnings.len() < ids.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            warnings = warnings_now();
        }
        let mut seen: Vec<String> = warnings
            .iter()
            .map(|v| common::sidecar::log_field(v, "request_id").unwrap_or_default())
            .collect();
        seen.sort();
        assert_eq!(
            seen, ids,
            "one warning per request, each with its id: {warnings:#?}"
        );
        // Lines logged outside a request have no request id at all.
        let listening = sc
            .json_lines()
            .into_iter()
            .find(|v| message(v).as_deref() == Some("listening"))
            .expect("a listening line");
        assert_eq!(
            common::sidecar::log_field(&listening, "request_id"),
            None,
            "{listening}"
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// WebSockets
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echo_works_through_the_proxy_with_a_bearer_token() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let auth = bearer(&valid());
        let (mut ws, resp) = ws_connect(&sc.ws_url("/ws"), &[("authorization", &auth)])
            .await
            .expect("upgrade through the sidecar");
        assert_eq!(resp.status(), 101);
        assert_eq!(
            ws_roundtrip(&mut ws, "hello through the sidecar").await,
            "hello through the sidecar"
        );
        assert_eq!(ws_roundtrip(&mut ws, "second").await, "second");
        ws.send(Message::Binary(vec![1u8, 2, 3].into()))
            .await
            .unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m.into_data().as_ref(), &[1u8, 2, 3]);
        let _ = ws.close(None).await;
        let e = backend.last();
        assert_eq!(e.path, "/ws");
        assert_eq!(e.header_all("x-auth-user-id"), vec![SUB]);
        assert!(e
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket")));
        assert_eq!(backend.ws_messages(), 3);
    })
    .await
}

/// The tunnel holds no buffer while idle and keeps only what the other side cannot take
/// yet: messages far larger than one read (and than the socket buffers), several in
/// flight at once, still arrive whole and in order, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_websocket_messages_in_flight_together_arrive_whole_and_in_order() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let auth = bearer(&valid());
        let (mut ws, resp) = ws_connect(&sc.ws_url("/ws"), &[("authorization", &auth)])
            .await
            .expect("upgrade through the sidecar");
        assert_eq!(resp.status(), 101);
        let msgs: Vec<Vec<u8>> = (0..4u8)
            .map(|i| {
                (0..(3 * 1024 * 1024 + 17 * i as usize))
                    .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
                    .collect()
            })
            .collect();
        for m in &msgs {
            ws.send(Message::Binary(m.clone().into())).await.unwrap();
        }
        for m in &msgs {
            let got = tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .expect("an echo within 20 s")
                .unwrap()
                .unwrap();
            assert_eq!(got.into_data().as_ref(), m.as_slice());
        }
        assert_eq!(
            ws_roundtrip(&mut ws, "small after large").await,
            "small after large"
        );
        let _ = ws.close(None).await;
        assert_eq!(backend.ws_messages(), 5);
    })
    .await
}

/// An unmasked WebSocket text frame (server to client), payload under 126 bytes.
fn server_text_frame(text: &str) -> Vec<u8> {
    let mut f = vec![0x81, text.len() as u8];
    f.extend_from_slice(text.as_bytes());
    f
}

/// A backend that speaks first: its greeting frame goes out in the same write as its 101,
/// so hyper reads it together with the response head. The tunnel takes the backend
/// socket back out of hyper's upgrade layers and must still deliver those bytes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_greeting_sent_with_its_101_reaches_the_client_first() {
    bounded(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(AtomicUsize::new(0));
        let seen = received.clone();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let (mut head, mut chunk) = (Vec::new(), [0u8; 4096]);
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the upgrade request ended early");
                head.extend_from_slice(&chunk[..n]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let key = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"))
                .map(|(_, v)| v.trim().to_string())
                .expect("the upgrade carries its key");
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            out.extend_from_slice(&server_text_frame("welcome"));
            s.write_all(&out).await.unwrap();
            // Then each client frame (one small frame per read on loopback) gets an ack.
            loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                seen.fetch_add(n, Ordering::SeqCst);
                if s.write_all(&server_text_frame("ack")).await.is_err() {
                    break;
                }
            }
        });
        let Rig { sc, .. } = Rig::builder().backend(url).start().await;
        let auth = bearer(&valid());
        let (mut ws, resp) = ws_connect(&sc.ws_url("/ws"), &[("authorization", &auth)])
            .await
            .expect("upgrade through the sidecar");
        assert_eq!(resp.status(), 101);
        let next = |m: Option<Result<Message, tungstenite::Error>>| match m {
            Some(Ok(Message::Text(t))) => t.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        };
        let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the greeting within 5 s");
        assert_eq!(next(first), "welcome");
        ws.send(Message::Text("hello".into())).await.unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the ack within 5 s");
        assert_eq!(next(ack), "ack");
        // A masked 5-byte text frame: 2 header bytes, 4 mask bytes, the payload.
        assert_eq!(received.load(Ordering::SeqCst), 11);
    })
    .await
}

/// A client that sends its first frame in the same write as its upgrade request: hyper
/// reads the frame along with the head, and the tunnel, which takes the client socket
/// back out of hyper, must still pass it on to the backend first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_frame_sent_with_its_upgrade_request_reaches_the_backend() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let mut s = TcpStream::connect(sc.addr).await.unwrap();
        let mut out = format!(
            "GET /ws HTTP/1.1\r\nHost: chat.local\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nAuthorization: {}\r\n\r\n",
            bearer(&valid())
        )
        .into_bytes();
        // A masked text frame "early" (mask 1,2,3,4).
        let mask = [1u8, 2, 3, 4];
        out.extend_from_slice(&[0x81, 0x80 | 5]);
        out.extend_from_slice(&mask);
        out.extend(b"early".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&out).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let want = server_text_frame("early");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !got.windows(want.len()).any(|w| w == want.as_slice()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, s.read(&mut chunk))
                .await
                .expect("the echo within 5 s")
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(backend.ws_messages(), 1);
    })
    .await
}

/// A WebSocket to an HTTPS backend: the tunnel runs over the backend's TLS stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_to_an_https_backend_echoes_both_ways() {
    bounded(async {
        let backend = Backend::start().await;
        let front = common::tls::TlsFront::start(backend.addr).await;
        let ca = q(&common::tls::tls_path("ca.pem"));
        let rig = Rig::builder()
            .backend(front.url(""))
            .cfg(|c| c.backend("ca_file", &ca))
            .start()
            .await;
        let auth = bearer(&valid());
        let (mut ws, resp) = ws_connect(&rig.sc.ws_url("/ws"), &[("authorization", &auth)])
            .await
            .expect("upgrade through the sidecar");
        assert_eq!(resp.status(), 101);
        for text in ["over TLS", "and again"] {
            assert_eq!(ws_roundtrip(&mut ws, text).await, text);
        }
        let _ = ws.close(None).await;
        assert_eq!(backend.ws_messages(), 2);
        assert!(front.handshakes_ok() >= 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_without_a_token_gets_401_and_no_tunnel() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let err = ws_refused(
            ws_connect(&sc.ws_url("/ws"), &[]).await,
            "the upgrade must be refused",
        );
        let resp = ws_refusal(err);
        assert_eq!(resp.status(), 401);
        assert_eq!(
            ws_headers(&resp, "x-auth-error").as_deref(),
            Some("missing_token")
        );
        // And with a bad token.
        let auth = bearer(&tamper_signature(&valid()));
        let err = ws_refused(
            ws_connect(&sc.ws_url("/ws"), &[("authorization", &auth)]).await,
            "refused",
        );
        assert_eq!(ws_refusal(err).status(), 401);
        assert_eq!(backend.count(), 0);
        assert_eq!(backend.ws_messages(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_token_in_the_query_param_is_accepted_and_removed_before_forwarding() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| c.auth("query_param", &q("access_token"))).await;
        let token = valid();
        let (mut ws, _) = ws_connect(&sc.ws_url(&format!("/ws?room=7&access_token={token}")), &[])
            .await
            .expect("upgrade with a query token");
        assert_eq!(ws_roundtrip(&mut ws, "q").await, "q");
        let _ = ws.close(None).await;
        let e = backend.last();
        assert_eq!(e.path, "/ws");
        assert_eq!(e.query.as_deref(), Some("room=7"));
        assert_eq!(e.header("x-auth-user-id"), Some(SUB));
        assert!(
            !e.headers.iter().any(|(_, v)| v.contains(&token)),
            "{:?}",
            e.headers
        );
        // The token alone: nothing (or an empty query) is forwarded.
        let (mut ws, _) = ws_connect(&sc.ws_url(&format!("/ws?access_token={token}")), &[])
            .await
            .expect("upgrade");
        assert_eq!(ws_roundtrip(&mut ws, "q2").await, "q2");
        let _ = ws.close(None).await;
        let q = backend.last().query.unwrap_or_default();
        assert!(
            !q.contains("access_token") && !q.contains(&token),
            "query {q}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_token_in_the_subprotocol_is_accepted_and_removed_before_forwarding() {
    bounded(async {
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| c.auth("websocket_protocol_prefix", &q("bearer."))).await;
        let token = valid();
        let protocols = format!("chat, bearer.{token}");
        let (mut ws, resp) =
            ws_connect(&sc.ws_url("/ws"), &[("sec-websocket-protocol", &protocols)])
                .await
                .expect("upgrade with a subprotocol token");
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("chat")
        );
        assert_eq!(ws_roundtrip(&mut ws, "p").await, "p");
        let _ = ws.close(None).await;
        let e = backend.last();
        assert_eq!(e.header("x-auth-user-id"), Some(SUB));
        let seen = e.header_all("sec-websocket-protocol").join(",");
        assert!(
            !seen.contains(&token) && !seen.contains("bearer."),
            "forwarded protocols: {seen}"
        );
        assert!(seen.contains("chat"), "forwarded protocols: {seen}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_backend_answers_without_101_is_not_tunnelled() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let auth = bearer(&valid());
        let err = ws_refused(
            ws_connect(&sc.ws_url("/ws-refuse"), &[("authorization", &auth)]).await,
            "the backend refused the upgrade",
        );
        let resp = ws_refusal(err);
        assert_eq!(resp.status(), 403);
        assert_eq!(backend.count(), 1);

        // Raw: after the non-101 answer, WebSocket bytes must not be tunnelled.
        let mut s = TcpStream::connect(sc.addr).await.unwrap();
        let req = format!(
            "GET /ws-refuse HTTP/1.1\r\nHost: app.example.com\r\nAuthorization: {auth}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let resp = common::http::read_response(&mut s).await;
        assert_eq!(resp.status, 403, "{:?}", resp.headers);
        // A masked text frame "hi".
        let frame = [0x81u8, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        let _ = s.write_all(&frame).await;
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => {}
            Ok(Ok(n)) => assert!(
                buf[..n].starts_with(b"HTTP/1."),
                "bytes after a refused upgrade were answered as a tunnel: {:?}",
                &buf[..n]
            ),
        }
        assert_eq!(backend.ws_messages(), 0);
    })
    .await
}

// ---------------------------------------------------------------------------
// Admin listener
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_answers_liveness_and_readiness() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let r = send(client().get(sc.admin_url("/healthz"))).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = send(client().get(sc.admin_url("/readyz"))).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(backend.count(), 0, "admin requests are not proxied");
        // The admin port is not the proxy: proxy paths are not served there.
        assert_ne!(sc.admin, Some(sc.addr));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_backend_is_unreachable() {
    bounded(async {
        let dead = refusing_addr();
        let Rig { sc, .. } = Rig::builder()
            .backend(format!("http://{dead}"))
            .start()
            .await;
        let r = send(client().get(sc.admin_url("/readyz"))).await;
        assert_ne!(
            r.status,
            200,
            "ready although the backend refuses connections: {}",
            r.text()
        );
        let r = send(client().get(sc.admin_url("/healthz"))).await;
        assert_eq!(r.status, 200, "liveness must not depend on the backend");
    })
    .await
}

// ---------------------------------------------------------------------------
// Config: check-config and refusals at startup
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_prints_the_effective_config_with_secrets_redacted() {
    bounded(async {
        let secret_dir = tempfile::tempdir().unwrap();
        let app_secret = "file-secret-for-app-identity-0123456789abcdef";
        let api_key = "initiate-api-key-value-9f8e7d6c5b4a";
        std::fs::write(secret_dir.path().join("app.secret"), format!("{app_secret}\n")).unwrap();
        let cfg = Cfg::new("http://127.0.0.1:3000")
            .env("AUTH_SIDECAR__BACKEND__URL", "http://127.0.0.1:4999")
            .env("TEST_API_KEY", api_key)
            .extra(&format!(
                "[initiate]\nurl = \"http://127.0.0.1:5000/initiate\"\napi_key = {{ env = \"TEST_API_KEY\" }}\n\n[app_identity]\nsecret = {{ file = {} }}\n",
                q(&secret_dir.path().join("app.secret").to_string_lossy())
            ));
        let out = check_config(&cfg).await;
        let all = out.all();
        assert!(out.status.success(), "check-config failed: {all}");
        assert!(all.contains("http://127.0.0.1:4999"), "the env override is not in the effective config: {all}");
        assert!(all.contains("HS256"), "{all}");
        for secret in [HS_SECRET, app_secret, api_key] {
            assert!(!all.contains(secret), "check-config printed a secret value: {all}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_lists_every_problem_and_exits_non_zero() {
    bounded(async {
        let short = "sixteen-bytes!!!";
        assert_eq!(short.len(), 16);
        let text = r#"
[server]
listen = "not-an-address"
listn = "127.0.0.1:1"

[backend]
url = "ftp://backend.invalid"

[auth]
algorithms = ["HS256", "XX999"]
hmac_secret = { env = "TEST_HS_SHORT" }
leeway = "soon"

[[routes]]
prefix = "no-leading-slash"

[log]
format = "json"
"#;
        let env = vec![("TEST_HS_SHORT".to_string(), short.to_string())];
        let (out, _dir) = run_to_exit(text, &["check-config"], &env).await;
        let all = out.all();
        assert!(
            !out.status.success(),
            "check-config accepted a broken config: {all}"
        );
        for needle in [
            "listn",
            "server.listen",
            "backend.url",
            "XX999",
            "hmac_secret",
            "auth.leeway",
            "routes[0]",
        ] {
            assert!(all.contains(needle), "problem `{needle}` not listed: {all}");
        }
        assert!(!all.contains(short), "the secret value was printed: {all}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_an_unknown_key_alone() {
    bounded(async {
        let cfg = Cfg::new("http://127.0.0.1:3000").auth("issur", &q("https://typo.example"));
        let out = check_config(&cfg).await;
        assert!(!out.status.success(), "{}", out.all());
        assert!(out.all().contains("auth.issur"), "{}", out.all());
    })
    .await
}

async fn assert_refused_at_startup(cfg: &Cfg, mentions: &[&str], never: &[&str]) {
    match Sidecar::try_start(cfg).await {
        Ok(sc) => panic!(
            "the sidecar started with a config it must refuse:\n{}",
            sc.config_text
        ),
        Err(f) => {
            assert!(
                f.status.is_some_and(|s| !s.success()),
                "exit {:?}: {}",
                f.status,
                f.output
            );
            assert!(
                mentions.iter().any(|m| f.output.contains(m)),
                "the refusal does not name the problem ({mentions:?}): {}",
                f.output
            );
            for n in never {
                assert!(
                    !f.output.contains(n),
                    "the refusal printed a secret: {}",
                    f.output
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_byte_hmac_secret_is_refused_at_startup() {
    bounded(async {
        let short = "0123456789abcdef";
        let cfg = Cfg::new("http://127.0.0.1:3000").env(HS_ENV, short);
        assert_refused_at_startup(&cfg, &["hmac_secret"], &[short]).await;
        let out = check_config(&cfg).await;
        assert!(!out.status.success());
        assert!(
            out.all().contains("hmac_secret") && !out.all().contains(short),
            "{}",
            out.all()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_secret_is_refused_without_being_echoed() {
    bounded(async {
        let inline = "inline-secret-value-that-must-not-be-echoed-42";
        let cfg = Cfg::new("http://127.0.0.1:3000").auth("hmac_secret", &q(inline));
        assert_refused_at_startup(&cfg, &["hmac_secret", "inline"], &[inline]).await;
    })
    .await
}

fn rsa1024_cfg() -> Cfg {
    Cfg::new("http://127.0.0.1:3000")
        .auth("algorithms", r#"["RS256"]"#)
        .no_auth_key("hmac_secret")
        .auth(
            "public_keys",
            &format!(
                "[{{ file = {}, kid = \"weak\" }}]",
                q(&fixture("rsa1024_public.pem"))
            ),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsa_key_under_2048_bits_is_refused_at_startup() {
    bounded(async {
        assert_refused_at_startup(
            &rsa1024_cfg(),
            &["2048", "rsa1024_public.pem", "public_keys"],
            &[],
        )
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_an_rsa_key_under_2048_bits() {
    bounded(async {
        let out = check_config(&rsa1024_cfg()).await;
        assert!(
            !out.status.success(),
            "check-config accepted an RSA-1024 key: {}",
            out.all()
        );
        let all = out.all();
        assert!(
            all.contains("2048") || all.contains("rsa1024_public.pem"),
            "{all}"
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stdout_line_is_json_when_the_log_format_is_json() {
    bounded(async {
        let Rig {
            backend: _backend,
            mut sc,
            ..
        } = Rig::start_with(|c| c.log_level("debug")).await;
        get(&sc, "/echo", Some(&valid())).await.ok_echo();
        get(&sc, "/echo", None)
            .await
            .assert_error(401, "missing_token");
        sc.stop();
        for line in sc.stdout_lines() {
            assert!(
                serde_json::from_str::<serde_json::Value>(&line).is_ok(),
                "not a JSON log line: {line}"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_secret_appears_in_trace_logs() {
    bounded(async {
        let Rig {
            backend: _backend,
            mut sc,
            ..
        } = Rig::start_with(|c| {
            c.log_level("trace")
                .auth("cookie", &q("session"))
                .auth("query_param", &q("access_token"))
                .auth("websocket_protocol_prefix", &q("bearer."))
        })
        .await;
        let mut tokens: Vec<String> = Vec::new();
        let mut mint_one = |sub: &str| {
            let t = valid_for(sub);
            tokens.push(t.clone());
            t
        };
        let bearer_tok = mint_one("log-bearer");
        let cookie_tok = mint_one("log-cookie");
        let query_tok = mint_one("log-query");
        let proto_tok = mint_one("log-proto");
        let plain_query_tok = mint_one("log-plain-query");
        let h2_tok = mint_one("log-h2");
        let dup_tok = mint_one("log-dup");
        let tampered = tamper_signature(&valid_for("log-tampered"));
        let expired_tok = expired();
        let none_tok = alg_none("none");
        let garbage = "opaque-garbage-token-Zx9Qw8Er7Ty6Ui5Op4".to_string();
        tokens.extend([
            tampered.clone(),
            expired_tok.clone(),
            none_tok.clone(),
            garbage.clone(),
        ]);

        get(&sc, "/echo", Some(&bearer_tok)).await.ok_echo();
        get(&sc, "/echo", Some(&tampered))
            .await
            .assert_error(401, "invalid_token");
        get(&sc, "/echo", Some(&expired_tok))
            .await
            .assert_error(401, "token_expired");
        get(&sc, "/echo", Some(&none_tok))
            .await
            .assert_error(401, "invalid_token");
        get(&sc, "/echo", Some(&garbage))
            .await
            .assert_error(401, "invalid_token");
        send(
            client()
                .get(sc.url("/echo"))
                .header("cookie", format!("session={cookie_tok}")),
        )
        .await
        .ok_echo();
        get(&sc, &format!("/echo?access_token={plain_query_tok}"), None)
            .await
            .assert_error(401, "missing_token");
        let (mut ws, _) = ws_connect(&sc.ws_url(&format!("/ws?access_token={query_tok}")), &[])
            .await
            .expect("ws with query token");
        assert_eq!(ws_roundtrip(&mut ws, "log").await, "log");
        let _ = ws.close(None).await;
        let protocols = format!("chat, bearer.{proto_tok}");
        let (mut ws, _) = ws_connect(&sc.ws_url("/ws"), &[("sec-websocket-protocol", &protocols)])
            .await
            .expect("ws with protocol token");
        assert_eq!(ws_roundtrip(&mut ws, "log2").await, "log2");
        let _ = ws.close(None).await;
        let h2 = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let _ = h2.get(sc.url("/echo")).bearer_auth(&h2_tok).send().await;
        let dup = bearer(&dup_tok);
        let _ = raw(
            sc.addr,
            &raw_req(
                "GET",
                "/echo",
                &[("Authorization", &dup), ("Authorization", &dup)],
            ),
        )
        .await;

        sc.stop();
        let logs = sc.logs();
        assert!(
            sc.stdout_lines().len() >= 3,
            "suspiciously few log lines: {logs}"
        );
        assert!(!logs.contains(HS_SECRET), "the HMAC secret is in the logs");
        for t in &tokens {
            assert!(!logs.contains(t.as_str()), "a token is in the logs: {t}");
            if let Some((_, sig)) = t.rsplit_once('.') {
                if sig.len() >= 16 {
                    assert!(
                        !logs.contains(sig),
                        "a token signature is in the logs: {sig}"
                    );
                }
            }
        }
    })
    .await
}
