//! `[cors]` on raw requests: preflights answered (policy mode) or forwarded (forward
//! mode) without a token, disallowed origins, the CORS headers on the sidecar's own
//! answers and on renewed pairs, merging with a backend's own CORS headers, the
//! credentials-with-`*` refusal at load, and the origin check on WebSocket upgrades.

mod common;

use common::token_service::TokenService;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PAGE: &str = "http://app.example.test:8080";
const EVIL: &str = "http://evil.example.net";

/// A `[cors]` section: `mode`, the page origin allowed, credentials on, and `extra` lines.
fn cors(mode: &str, extra: &str) -> String {
    format!(
        "[cors]\nmode = {}\nallowed_origins = [{}, \"https://*.example.org\"]\n\
         allowed_methods = [\"GET\", \"HEAD\", \"POST\", \"PUT\", \"PATCH\", \"DELETE\"]\n\
         allowed_headers = [\"authorization\", \"content-type\", \"x-refresh-token\", \"x-request-id\"]\n\
         max_age = \"10m\"\nallow_credentials = true\n{extra}\n",
        q(mode),
        q(PAGE)
    )
}

async fn rig(mode: &str, extra: &str) -> Rig {
    let text = cors(mode, extra);
    Rig::start_with(move |c| c.extra(&text)).await
}

/// Comma-separated tokens of every `name` header, lowercased.
fn tokens(r: &Resp, name: &str) -> Vec<String> {
    r.header_all(name)
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn assert_vary_origin_once(r: &Resp) {
    let n = tokens(r, "vary").iter().filter(|t| *t == "origin").count();
    assert_eq!(n, 1, "Vary: Origin exactly once: {:?}", r.headers);
}

fn preflight(origin: &str, method: &str, headers: &str) -> String {
    raw_req(
        "OPTIONS",
        "/api/messages",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", method),
            ("Access-Control-Request-Headers", headers),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_preflight_is_answered_without_a_token() {
    bounded(async {
        let Rig { sc, backend, .. } = rig("policy", "").await;
        let r = raw(
            sc.addr,
            &preflight(
                PAGE,
                "POST",
                "Authorization, Content-Type, X-Evil, x-refresh-token",
            ),
        )
        .await;
        assert_eq!(r.status, 204, "{:?}", r.headers);
        assert_eq!(r.header("access-control-allow-origin"), Some(PAGE));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        let methods = tokens(&r, "access-control-allow-methods");
        for m in ["get", "post", "delete"] {
            // Fails today: handle() runs cors::decorate on the preflight answer, and in
            // policy mode decorate removes Allow-Methods/Allow-Headers/Max-Age.
            assert!(
                methods.iter().any(|x| x == m),
                "Access-Control-Allow-Methods lost: {:?}",
                r.headers
            );
        }
        // Only what was asked and allowed; x-evil is not echoed back.
        assert_eq!(
            tokens(&r, "access-control-allow-headers"),
            ["authorization", "content-type", "x-refresh-token"]
        );
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert_vary_origin_once(&r);
        assert_eq!(backend.count(), 0, "the sidecar answered, not the backend");

        // A wildcard-subdomain pattern: one or more labels, same scheme only.
        let r = raw(sc.addr, &preflight("https://a.b.example.org", "GET", "")).await;
        assert_eq!(r.status, 204);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://a.b.example.org")
        );
        for bad in [
            "http://a.example.org",
            "https://example.org",
            "https://a.example.org.evil.net",
        ] {
            let r = raw(sc.addr, &preflight(bad, "GET", "")).await;
            assert_eq!(r.status, 403, "{bad}");
            assert!(r.header("access-control-allow-origin").is_none(), "{bad}");
        }
        // A method the policy does not allow.
        let r = raw(sc.addr, &preflight(PAGE, "PROPFIND", "")).await;
        assert_eq!(r.status, 403);
        assert!(r.header("access-control-allow-origin").is_none());
        assert_eq!(backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_preflight_from_a_disallowed_origin_gets_no_allow_origin() {
    bounded(async {
        let Rig { sc, backend, .. } = rig("policy", "").await;
        for origin in [EVIL, "null", "http://app.example.test:8081"] {
            let r = raw(sc.addr, &preflight(origin, "GET", "authorization")).await;
            assert_eq!(r.status, 403, "{origin}: {:?}", r.headers);
            for h in [
                "access-control-allow-origin",
                "access-control-allow-credentials",
                "access-control-allow-methods",
                "access-control-allow-headers",
            ] {
                assert!(r.header(h).is_none(), "{origin}: {h} in {:?}", r.headers);
            }
            assert_vary_origin_once(&r);
        }
        // Two Origin headers are not an allowed origin either.
        let req = raw_req(
            "OPTIONS",
            "/x",
            &[
                ("Origin", PAGE),
                ("Origin", EVIL),
                ("Access-Control-Request-Method", "GET"),
            ],
        );
        let r = raw(sc.addr, &req).await;
        assert_eq!(r.status, 403);
        assert!(r.header("access-control-allow-origin").is_none());
        assert_eq!(backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_preflight_reaches_the_backend_without_a_token_and_identity_stripped() {
    bounded(async {
        let Rig { sc, backend, .. } = rig("forward", "").await;
        let req = raw_req(
            "OPTIONS",
            "/api/messages",
            &[
                ("Origin", PAGE),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "authorization"),
                ("X-Auth-User-Id", "mallory"),
                ("X_Auth_Email", "mallory@example.com"),
            ],
        );
        let r = raw(sc.addr, &req).await;
        let echo = r.ok_echo();
        assert_eq!(echo.method, "OPTIONS");
        assert_eq!(echo.header("origin"), Some(PAGE));
        assert_eq!(echo.header("access-control-request-method"), Some("POST"));
        assert!(
            echo.names_with_prefix("x-auth-").is_empty(),
            "identity headers reached the backend: {:?}",
            echo.headers
        );
        assert!(echo.header("authorization").is_none());
        assert_eq!(backend.count(), 1);
        // The backend owns the policy in forward mode: the sidecar adds nothing.
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{:?}",
            r.headers
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_that_is_not_a_preflight_needs_a_token() {
    bounded(async {
        for mode in ["policy", "forward"] {
            let Rig { sc, backend, .. } = rig(mode, "").await;
            // No Access-Control-Request-Method: an ordinary OPTIONS.
            let r = raw(sc.addr, &raw_req("OPTIONS", "/x", &[("Origin", PAGE)])).await;
            r.assert_error(401, "missing_token");
            assert_eq!(
                r.header("access-control-allow-origin"),
                Some(PAGE),
                "{mode}"
            );
            // No Origin.
            let r = raw(
                sc.addr,
                &raw_req("OPTIONS", "/x", &[("Access-Control-Request-Method", "GET")]),
            )
            .await;
            r.assert_error(401, "missing_token");
            assert!(r.header("access-control-allow-origin").is_none());
            assert_eq!(backend.count(), 0, "{mode}");
            // With a token it is forwarded like any request.
            let auth = bearer(&valid());
            let r = raw(
                sc.addr,
                &raw_req("OPTIONS", "/x", &[("Authorization", &auth)]),
            )
            .await;
            assert_eq!(r.ok_echo().header("x-auth-user-id"), Some(SUB), "{mode}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_401_for_an_allowed_origin_is_readable_by_the_page() {
    bounded(async {
        for mode in ["policy", "forward"] {
            let Rig { sc, .. } = rig(mode, "").await;
            let tok = expired();
            let auth = bearer(&tok);
            let r = raw(
                sc.addr,
                &raw_req("GET", "/api", &[("Origin", PAGE), ("Authorization", &auth)]),
            )
            .await;
            r.assert_error(401, "token_expired");
            assert_eq!(
                r.header("access-control-allow-origin"),
                Some(PAGE),
                "{mode}"
            );
            assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
            assert_eq!(r.header_all("access-control-expose-headers").len(), 1);
            let expose = tokens(&r, "access-control-expose-headers");
            for h in ["x-auth-error", "retry-after"] {
                assert!(expose.iter().any(|e| e == h), "{mode}: {expose:?}");
            }
            assert_vary_origin_once(&r);

            // A disallowed origin: the refusal, with no CORS grant (still Vary).
            let r = raw(sc.addr, &raw_req("GET", "/api", &[("Origin", EVIL)])).await;
            r.assert_error(401, "missing_token");
            assert!(r.header("access-control-allow-origin").is_none(), "{mode}");
            assert!(
                r.header("access-control-expose-headers").is_none(),
                "{mode}"
            );
            assert_vary_origin_once(&r);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_mode_decorates_backend_answers_forward_mode_does_not() {
    bounded(async {
        let auth = bearer(&valid());
        let Rig {
            sc, backend: _b1, ..
        } = rig("policy", "").await;
        let r = raw(
            sc.addr,
            &raw_req("GET", "/api", &[("Origin", PAGE), ("Authorization", &auth)]),
        )
        .await;
        r.ok_echo();
        assert_eq!(r.header("access-control-allow-origin"), Some(PAGE));
        assert_vary_origin_once(&r);
        drop(sc);
        let Rig {
            sc, backend: _b2, ..
        } = rig("forward", "").await;
        let r = raw(
            sc.addr,
            &raw_req("GET", "/api", &[("Origin", PAGE), ("Authorization", &auth)]),
        )
        .await;
        r.ok_echo();
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{:?}",
            r.headers
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_pair_is_exposed_to_the_page() {
    bounded(async {
        let ts = TokenService::start(API_KEY).await;
        let text = cors("forward", "");
        let rig = Rig::builder()
            .token_service(ts)
            .lifecycle(|_| {})
            .cfg(move |c| c.extra(&text))
            .start()
            .await;
        let old = rig.ts.expired_pair("alice");
        let auth = bearer(&old.access);
        let r = raw(
            rig.sc.addr,
            &raw_req(
                "GET",
                "/api",
                &[
                    ("Origin", PAGE),
                    ("Authorization", &auth),
                    ("X-Refresh-Token", &old.refresh),
                ],
            ),
        )
        .await;
        assert_eq!(r.ok_echo().header("x-auth-user-id"), Some("alice"));
        let issued = rig.ts.last_issued().expect("a new pair");
        assert_eq!(
            r.header("x-auth-access-token"),
            Some(issued.access.as_str())
        );
        assert_eq!(
            r.header("x-auth-refresh-token"),
            Some(issued.refresh.as_str())
        );
        // A renewed pair is the sidecar's own answer even in forward mode.
        assert_eq!(r.header("access-control-allow-origin"), Some(PAGE));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.header_all("access-control-expose-headers").len(), 1);
        let expose = tokens(&r, "access-control-expose-headers");
        for h in [
            "x-auth-access-token",
            "x-auth-refresh-token",
            "x-auth-error",
            "retry-after",
        ] {
            assert_eq!(
                expose.iter().filter(|e| *e == h).count(),
                1,
                "{h} once in {expose:?}"
            );
        }
        assert_vary_origin_once(&r);
    })
    .await
}

/// A backend that answers every request with its own CORS headers (and no body).
async fn cors_backend() -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = "HTTP/1.1 200 OK\r\n\
                    Content-Length: 2\r\n\
                    X-Backend: cors\r\n\
                    Access-Control-Allow-Origin: *\r\n\
                    Access-Control-Allow-Origin: http://other.example\r\n\
                    Access-Control-Allow-Credentials: false\r\n\
                    Access-Control-Allow-Methods: TRACE\r\n\
                    Access-Control-Max-Age: 99999\r\n\
                    Access-Control-Expose-Headers: X-Backend-Thing, x-auth-error\r\n\
                    Access-Control-Expose-Headers: Content-Language\r\n\
                    Vary: Accept-Encoding\r\n\
                    Vary: origin\r\n\
                    Connection: close\r\n\r\nok";
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_mode_replaces_and_merges_the_backends_cors_headers() {
    bounded(async {
        let (url, _task) = cors_backend().await;
        let text = cors("policy", "");
        let Rig { sc, .. } = Rig::builder()
            .backend(url)
            .cfg(move |c| c.extra(&text))
            .start()
            .await;
        let auth = bearer(&valid());
        let r = raw(
            sc.addr,
            &raw_req("GET", "/api", &[("Origin", PAGE), ("Authorization", &auth)]),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.headers);
        assert_eq!(r.header("x-backend"), Some("cors"));
        assert_eq!(
            r.header_all("access-control-allow-origin"),
            [PAGE],
            "one ACAO, the request's origin: {:?}",
            r.headers
        );
        assert_eq!(r.header_all("access-control-allow-credentials"), ["true"]);
        assert!(
            r.header("access-control-allow-methods").is_none(),
            "{:?}",
            r.headers
        );
        assert!(
            r.header("access-control-max-age").is_none(),
            "{:?}",
            r.headers
        );
        assert_eq!(
            r.header_all("access-control-expose-headers").len(),
            1,
            "merged into one header: {:?}",
            r.headers
        );
        let expose = tokens(&r, "access-control-expose-headers");
        for h in [
            "x-backend-thing",
            "content-language",
            "x-auth-error",
            "retry-after",
        ] {
            assert_eq!(
                expose.iter().filter(|e| *e == h).count(),
                1,
                "{h} once in {expose:?}"
            );
        }
        assert_vary_origin_once(&r);
        assert!(tokens(&r, "vary").iter().any(|t| t == "accept-encoding"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_with_a_wildcard_origin_are_refused_at_load() {
    bounded(async {
        let cfg = Cfg::new("http://127.0.0.1:9").extra(
            "[cors]\nmode = \"policy\"\nallowed_origins = [\"*\"]\nallow_credentials = true\n",
        );
        let out = check_config(&cfg).await;
        assert_eq!(out.status.code(), Some(64), "{}", out.all());
        assert!(
            out.all().contains("cors.allow_credentials"),
            "{}",
            out.all()
        );
        // `*` without credentials loads.
        let cfg = Cfg::new("http://127.0.0.1:9")
            .extra("[cors]\nmode = \"policy\"\nallowed_origins = [\"*\"]\n");
        let out = check_config(&cfg).await;
        assert_eq!(out.status.code(), Some(0), "{}", out.all());
    })
    .await
}

/// Sends a WebSocket upgrade for `/ws` with `headers`; the status and whether the
/// tunnel echoes a frame.
async fn upgrade(sc: &Sidecar, headers: &[(&str, &str)]) -> (Resp, bool) {
    let mut all = vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    all.extend_from_slice(headers);
    let req = raw_req("GET", "/ws", &all);
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let (head, _) = common::http::read_head(&mut s).await;
    if head.status != 101 {
        return (head, false);
    }
    // A masked text frame "hi"; the echo backend answers it unmasked.
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 2];
    frame.extend_from_slice(&mask);
    frame.extend(b"hi".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    s.write_all(&frame).await.unwrap();
    let mut buf = [0u8; 4];
    let echoed = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .is_ok_and(|r| r.is_ok())
        && buf == [0x81, 2, b'h', b'i'];
    (head, echoed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_authenticated_upgrade_needs_an_allowed_origin() {
    bounded(async {
        let text = cors("forward", "");
        let Rig { sc, backend, .. } = Rig::start_with(move |c| {
            c.auth("cookie", "\"access_token\"")
                .auth("query_param", "\"access_token\"")
                .extra(&text)
        })
        .await;
        let cookie = format!("access_token={}", valid());
        let (r, tunnel) = upgrade(&sc, &[("Origin", EVIL), ("Cookie", &cookie)]).await;
        assert_eq!(r.status, 403, "{:?}", r.headers);
        assert_eq!(r.header("x-auth-error"), Some("origin_not_allowed"));
        assert!(!tunnel);
        // No Origin at all is not an allowed origin either.
        let (r, _) = upgrade(&sc, &[("Cookie", &cookie)]).await;
        assert_eq!(r.status, 403);
        assert_eq!(r.header("x-auth-error"), Some("origin_not_allowed"));
        assert_eq!(backend.count(), 0, "no tunnel to the backend");

        let (r, tunnel) = upgrade(&sc, &[("Origin", PAGE), ("Cookie", &cookie)]).await;
        assert_eq!(r.status, 101, "{:?}", r.headers);
        assert!(tunnel, "the tunnel echoes");
        assert_eq!(backend.last().header("x-auth-user-id"), Some(SUB));
        // forward_authorization (the default) forwards the access cookie like it
        // forwards Authorization.
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_authenticated_upgrade_is_checked_only_when_opted_in() {
    bounded(async {
        let auth = bearer(&valid());
        let proto = format!("access_token.{}, chat", valid());
        for check_all in [false, true] {
            let text = cors(
                "policy",
                &format!("websocket_origin_check_all = {check_all}"),
            );
            let Rig { sc, backend, .. } = Rig::start_with(move |c| {
                c.auth("websocket_protocol_prefix", "\"access_token.\"")
                    .extra(&text)
            })
            .await;
            for h in [
                ("Authorization", auth.as_str()),
                ("Sec-WebSocket-Protocol", proto.as_str()),
            ] {
                let (r, tunnel) = upgrade(&sc, &[("Origin", EVIL), h]).await;
                if check_all {
                    assert_eq!(r.status, 403, "{}: {:?}", h.0, r.headers);
                    assert_eq!(r.header("x-auth-error"), Some("origin_not_allowed"));
                    assert!(!tunnel);
                } else {
                    assert_eq!(r.status, 101, "{}: {:?}", h.0, r.headers);
                    assert!(tunnel);
                }
                let (r, tunnel) = upgrade(&sc, &[("Origin", PAGE), h]).await;
                assert_eq!(r.status, 101, "{}: {:?}", h.0, r.headers);
                assert!(tunnel);
                if h.0 == "Sec-WebSocket-Protocol" {
                    assert_eq!(r.header("sec-websocket-protocol"), Some("chat"));
                    let last = backend.last();
                    assert_eq!(last.header("sec-websocket-protocol"), Some("chat"));
                }
            }
            let expected = if check_all { 2 } else { 4 };
            assert_eq!(backend.count(), expected, "check_all = {check_all}");
        }
    })
    .await
}
