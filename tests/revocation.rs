//! Taking a user out (README "Taking a user out"): log out everywhere, bans, one token or
//! session, OIDC Back-Channel Logout 1.0; across replicas through a real Redis. Real
//! sidecar processes in front of the real test backend (WebSocket echo, SSE), the mock
//! token service counting its calls, and the admin API over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::token_service::TokenService;
use common::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

const ADMIN_ENV: &str = "TEST_REVOKE_SECRET";
const ADMIN: &str = "itest-revocation-admin-secret-3b7d9f1a";
const STORE_SECRET_ENV: &str = "TEST_STORE_SECRET";
const STORE_SECRET: &str = "itest-shared-store-secret-9d2e4c6a8b0f1e3d5c7a9b";
const PATH: &str = "/api/messages";
/// What the issue asks: sockets closed within a second of the revocation.
const WITHIN: Duration = Duration::from_secs(1);

fn revocation_section(extra: &str) -> String {
    format!(
        "[revocation]\nadmin_secret = {{ env = {} }}\n{extra}\n",
        q(ADMIN_ENV)
    )
}

fn with_revocation(c: Cfg) -> Cfg {
    c.env(ADMIN_ENV, ADMIN).extra(&revocation_section(""))
}

/// A token for `sub` issued `ago` seconds ago, with `extra` claims.
fn token(sub: &str, ago: i64, extra: Value) -> String {
    let mut c = claims(sub);
    c["iat"] = json!(now() - ago);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    mint(Algorithm::HS256, &c)
}

async fn get(sc: &Sidecar, tok: &str) -> Resp {
    send(client().get(sc.url(PATH)).bearer_auth(tok)).await
}

async fn admin(
    sc: &Sidecar,
    method: &str,
    path: &str,
    body: Option<Value>,
    secret: Option<&str>,
) -> Resp {
    let c = client();
    let url = sc.admin_url(path);
    let mut rb = match method {
        "GET" => c.get(url),
        "POST" => c.post(url),
        "DELETE" => c.delete(url),
        m => panic!("method {m}"),
    };
    if let Some(s) = secret {
        rb = rb.bearer_auth(s);
    }
    if let Some(b) = body {
        rb = rb
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    send(rb).await
}

async fn revoke(sc: &Sidecar, path: &str, body: Value) -> Resp {
    admin(sc, "POST", path, Some(body), Some(ADMIN)).await
}

async fn ws_open(sc: &Sidecar, tok: &str) -> Ws {
    let mut req = sc.ws_url("/ws").into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        tungstenite::http::HeaderValue::from_str(&bearer(tok)).unwrap(),
    );
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake failed");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), "hello"),
        other => panic!("no echo: {other:?}"),
    }
    ws
}

/// Waits (up to `limit`) for the close frame; returns its code and reason and when it
/// came.
async fn ws_closed(ws: &mut Ws, limit: Duration) -> (CloseCode, String, Instant) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close frame within {limit:?}"),
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return (f.code, f.reason.to_string(), Instant::now())
            }
            Ok(Some(Ok(Message::Close(None)))) => panic!("a close frame without a code"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => panic!("the tunnel broke without a close frame: {e}"),
            Ok(None) => panic!("the tunnel closed without a close frame"),
        }
    }
}

async fn ws_still_open(ws: &mut Ws) {
    ws.send(Message::text("still"))
        .await
        .expect("send on an open tunnel");
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), "still"),
        other => panic!("the other user's tunnel is not open: {other:?}"),
    }
}

/// Sum of a metric's samples whose labels include `labels`.
async fn metric(sc: &Sidecar, name: &str, labels: &[(&str, &str)]) -> f64 {
    let r = send(client().get(sc.admin_url("/metrics"))).await;
    let mut total = 0.0;
    for line in r.text().lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (l, v) = match rest.strip_prefix('{') {
            Some(x) => match x.split_once('}') {
                Some(p) => p,
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        if labels
            .iter()
            .all(|(k, val)| l.split(',').any(|kv| kv == format!("{k}=\"{val}\"")))
        {
            total += v.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}

async fn eventually_async<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn revocation_log_lines(sc: &Sidecar) -> Vec<Value> {
    sc.json_lines()
        .into_iter()
        .filter(|v| common::sidecar::log_field(v, "message").as_deref() == Some("revocation"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// One replica
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_everywhere_refuses_the_cached_token_and_closes_sockets_and_sse_within_a_second() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(with_revocation).await;
        let old = token("alice", 5, json!({"jti": "alice-1"}));
        // Verified and cached before the revocation.
        for _ in 0..2 {
            get(&sc, &old).await.ok_echo();
        }
        let mut sockets = Vec::new();
        for _ in 0..3 {
            sockets.push(ws_open(&sc, &old).await);
        }
        let bob = token("bob", 5, json!({}));
        let mut bobs = ws_open(&sc, &bob).await;
        let sse = client()
            .get(sc.url("/sse?events=200"))
            .bearer_auth(&old)
            .send()
            .await
            .unwrap();
        assert_eq!(sse.status(), 200);
        let mut sse = sse.bytes_stream();
        let first = tokio::time::timeout(Duration::from_secs(5), sse.next()).await;
        assert!(
            matches!(first, Ok(Some(Ok(_)))),
            "no first SSE event: {first:?}"
        );

        let r = revoke(&sc, "/revocations/logout", json!({"sub": "alice"})).await;
        let revoked_at = Instant::now();
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert_eq!(body["applied"], "logout");
        assert_eq!(body["shared"], false, "no shared store: {body}");
        assert_eq!(body["scope"], "replica");

        for (i, ws) in sockets.iter_mut().enumerate() {
            let (code, reason, at) = ws_closed(ws, Duration::from_secs(5)).await;
            assert_eq!(code, CloseCode::Policy, "socket {i}: close code");
            assert!(
                !reason.is_empty() && reason.len() < 123,
                "socket {i}: reason {reason:?}"
            );
            let took = at.saturating_duration_since(revoked_at);
            assert!(
                took <= WITHIN,
                "socket {i} closed {took:?} after the revocation"
            );
            // Then the TCP close.
            let end = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
            assert!(
                matches!(end, Ok(None) | Ok(Some(Err(_)))),
                "socket {i} stayed open after its close frame: {end:?}"
            );
        }
        // The SSE stream ends (whatever it had in flight may still arrive first).
        let sse_end = tokio::time::timeout(WITHIN + Duration::from_millis(400), async {
            while let Some(Ok(_)) = sse.next().await {}
        })
        .await;
        assert!(
            sse_end.is_ok(),
            "the SSE stream did not end within a second"
        );
        assert!(revoked_at.elapsed() < Duration::from_secs(5));

        get(&sc, &old).await.assert_error(401, "token_revoked");
        // Another user is untouched.
        ws_still_open(&mut bobs).await;
        get(&sc, &bob).await.ok_echo();
        // A fresh login after the revocation works.
        let fresh = token("alice", 0, json!({"jti": "alice-2"}));
        let e = get(&sc, &fresh).await.ok_echo();
        assert_eq!(e.header("x-auth-user-id"), Some("alice"));
        let mut ws = ws_open(&sc, &fresh).await;
        ws_still_open(&mut ws).await;

        assert!(
            metric(
                &sc,
                "auth_sidecar_revocation_closed_total",
                &[("kind", "websocket")]
            )
            .await
                >= 3.0
        );
        assert!(
            metric(
                &sc,
                "auth_sidecar_revocation_closed_total",
                &[("kind", "stream")]
            )
            .await
                >= 1.0
        );
        assert!(
            metric(
                &sc,
                "auth_sidecar_revocation_refused_total",
                &[("reason", "revoked")]
            )
            .await
                >= 1.0
        );
        assert_eq!(
            metric(
                &sc,
                "auth_sidecar_revocations_total",
                &[("kind", "logout"), ("source", "admin")]
            )
            .await,
            1.0
        );
        let lines = revocation_log_lines(&sc);
        assert_eq!(lines.len(), 1, "one log line per revocation: {lines:?}");
        assert_eq!(
            common::sidecar::log_field(&lines[0], "action").as_deref(),
            Some("logout")
        );
        assert_eq!(
            common::sidecar::log_field(&lines[0], "sub").as_deref(),
            Some("alice")
        );
        assert!(!sc.logs().contains(&old), "a token reached the log");
    })
    .await
}

fn lifecycle_rig(ts: TokenService) -> common::RigBuilder<'static, Backend, TokenService> {
    Rig::builder()
        .token_service(ts)
        .lifecycle(|_| {})
        .cfg(with_revocation)
}

fn app_token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(APP_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_refuses_tokens_refresh_and_initiate_without_calling_the_token_service() {
    bounded(async {
        let ts = TokenService::start(API_KEY).await;
        let Rig {
            backend: _backend,
            ts,
            sc,
            ..
        } = lifecycle_rig(ts).start().await;
        let valid = token("alice", 5, json!({}));
        get(&sc, &valid).await.ok_echo();
        let mut ws = ws_open(&sc, &valid).await;

        let r = revoke(
            &sc,
            "/revocations/bans",
            json!({"sub": "alice", "duration": "1h"}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let until = r.json()["until"].as_u64().unwrap();
        assert!(until >= now() as u64 + 3590 && until <= now() as u64 + 3600);
        let (code, reason, _) = ws_closed(&mut ws, Duration::from_secs(5)).await;
        assert_eq!(code, CloseCode::Policy);
        assert!(reason.contains("banned"), "{reason}");

        get(&sc, &valid).await.assert_error(401, "user_banned");
        // Even a token issued after the ban.
        get(&sc, &token("alice", 0, json!({})))
            .await
            .assert_error(401, "user_banned");
        // Refresh: an expired token with a live refresh token.
        let pair = ts.expired_pair("alice");
        let r = send(
            client()
                .get(sc.url(PATH))
                .bearer_auth(&pair.access)
                .header("x-refresh-token", &pair.refresh),
        )
        .await;
        r.assert_error(401, "user_banned");
        // Initiate: an app identity token for the user, no access token.
        let app = app_token(&json!({"externalId": "alice", "iat": now()}));
        let r = send(client().get(sc.url(PATH)).header("x-app-identity", &app)).await;
        r.assert_error(401, "user_banned");
        assert_eq!(
            ts.calls(),
            0,
            "the token service was called for a banned user"
        );

        let r = admin(&sc, "GET", "/revocations/bans", None, Some(ADMIN)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["bans"], json!([{"sub": "alice", "until": until}]));

        // Other users renew as before.
        let bob = ts.expired_pair("bob");
        let r = send(
            client()
                .get(sc.url(PATH))
                .bearer_auth(&bob.access)
                .header("x-refresh-token", &bob.refresh),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(ts.refresh_calls(), 1);

        // Lifted: alice refreshes again.
        let r = revoke(&sc, "/revocations/unban", json!({"sub": "alice"})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = admin(&sc, "GET", "/revocations/bans", None, Some(ADMIN)).await;
        assert_eq!(r.json()["bans"], json!([]));
        let r = send(
            client()
                .get(sc.url(PATH))
                .bearer_auth(&pair.access)
                .header("x-refresh-token", &pair.refresh),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(ts.refresh_calls(), 2);
        get(&sc, &valid).await.ok_echo();
        let r = revoke(&sc, "/revocations/unban", json!({"sub": "alice"})).await;
        assert_eq!(r.status, 404, "not banned any more");
        assert_eq!(
            metric(&sc, "auth_sidecar_revocations_total", &[("kind", "ban")]).await,
            1.0
        );
        assert!(
            metric(
                &sc,
                "auth_sidecar_revocation_refused_total",
                &[("reason", "banned")]
            )
            .await
                >= 2.0
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_by_jti_and_one_session_by_sid() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(with_revocation).await;
        let t1 = token("alice", 5, json!({"jti": "t-1", "sid": "s-1"}));
        let t2 = token("alice", 5, json!({"jti": "t-2", "sid": "s-2"}));
        let t3 = token("alice", 5, json!({"jti": "t-3", "sid": "s-2"}));
        for t in [&t1, &t2, &t3] {
            get(&sc, t).await.ok_echo();
        }
        let mut ws2 = ws_open(&sc, &t2).await;
        let r = revoke(&sc, "/revocations/token", json!({"jti": "t-1"})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        get(&sc, &t1).await.assert_error(401, "token_revoked");
        get(&sc, &t2).await.ok_echo();
        ws_still_open(&mut ws2).await;

        let r = revoke(&sc, "/revocations/token", json!({"sid": "s-2"})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let (code, _, _) = ws_closed(&mut ws2, Duration::from_secs(5)).await;
        assert_eq!(code, CloseCode::Policy);
        get(&sc, &t2).await.assert_error(401, "token_revoked");
        get(&sc, &t3).await.assert_error(401, "token_revoked");
        get(&sc, &token("alice", 0, json!({"jti": "t-4", "sid": "s-3"})))
            .await
            .ok_echo();

        let r = revoke(&sc, "/revocations/token", json!({"jti": "a", "sid": "b"})).await;
        assert_eq!(r.status, 400);
        // The log names the jti by a hash prefix only.
        let logs = sc.logs();
        assert!(!logs.contains("\"t-1\""), "a jti in the log");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_secret_and_is_not_on_the_proxy_port() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(with_revocation).await;
        let t = token("alice", 5, json!({}));
        get(&sc, &t).await.ok_echo();
        let body = json!({"sub": "alice"});
        for (what, secret) in [
            ("no secret", None),
            (
                "a wrong secret",
                Some("itest-revocation-admin-secret-3b7d9f1b"),
            ),
            ("a prefix of it", Some(&ADMIN[..10])),
            ("a user's token", Some(t.as_str())),
        ] {
            for (path, b) in [
                ("/revocations/logout", body.clone()),
                ("/revocations/bans", json!({"sub": "alice", "duration": 60})),
                ("/revocations/token", json!({"jti": "x"})),
            ] {
                let r = admin(&sc, "POST", path, Some(b), secret).await;
                assert_eq!(r.status, 401, "{what} on {path}: {}", r.text());
                assert_eq!(r.json()["error"], "unauthorized");
            }
            let r = admin(&sc, "GET", "/revocations/bans", None, secret).await;
            assert_eq!(r.status, 401, "{what}: list");
        }
        get(&sc, &t).await.ok_echo();

        // The proxy port has no such endpoint: the request is the backend's like any
        // other (here with the admin secret as a token: refused as one), and nothing
        // changes.
        let before = backend.count();
        let r = send(
            client()
                .post(sc.url("/revocations/logout"))
                .bearer_auth(ADMIN)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await;
        r.assert_error(401, "invalid_token");
        assert_eq!(backend.count(), before);
        let r = send(
            client()
                .post(sc.url("/revocations/logout"))
                .bearer_auth(&t)
                .body(body.to_string()),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.echo().path,
            "/revocations/logout",
            "forwarded to the backend"
        );
        get(&sc, &t).await.ok_echo();

        // No admin secret configured: the endpoints are off.
        let Rig {
            backend: _b2,
            sc: off,
            ..
        } = Rig::start_with(|c| c.extra("[revocation]\nmax_ban = \"1d\"\n")).await;
        let r = admin(
            &off,
            "POST",
            "/revocations/logout",
            Some(body.clone()),
            Some(ADMIN),
        )
        .await;
        assert_eq!(r.status, 404);
        let Rig {
            backend: _b3,
            sc: none,
            ..
        } = Rig::start_with(|c| c).await;
        let r = admin(
            &none,
            "POST",
            "/revocations/logout",
            Some(body),
            Some(ADMIN),
        )
        .await;
        assert_eq!(r.status, 404);
    })
    .await
}

// ---------------------------------------------------------------------------------------
// OIDC Back-Channel Logout 1.0
// ---------------------------------------------------------------------------------------

const ISS: &str = "https://idp.example.test";

fn backchannel_cfg(c: Cfg) -> Cfg {
    c.auth("issuer", &q(ISS))
        .auth("audience", r#"["chat-api"]"#)
        .env(ADMIN_ENV, ADMIN)
        .extra(&revocation_section(
            "backchannel_logout = true\nbackchannel_audience = [\"chat-client\"]\nbackchannel_max_age = \"2m\"",
        ))
}

fn access(sub: &str, sid: &str) -> String {
    token(sub, 5, json!({"iss": ISS, "aud": "chat-api", "sid": sid}))
}

fn logout_claims(jti: &str) -> Value {
    json!({
        "iss": ISS,
        "aud": "chat-client",
        "iat": now(),
        "exp": now() + 120,
        "jti": jti,
        "sub": "alice",
        "sid": "sess-1",
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    })
}

fn logout_token(c: &Value) -> String {
    sign_with_header(
        &json!({"alg": "HS256", "typ": "logout+jwt"}),
        c,
        Algorithm::HS256,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
}

async fn post_logout(sc: &Sidecar, t: &str) -> Resp {
    send(
        client()
            .post(sc.admin_url("/backchannel-logout"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("logout_token={t}")),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_revokes_the_session_and_refuses_bad_logout_tokens() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(backchannel_cfg).await;
        let s1 = access("alice", "sess-1");
        let s2 = access("alice", "sess-2");
        get(&sc, &s1).await.ok_echo();
        get(&sc, &s2).await.ok_echo();

        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = logout_claims("jti-bad");
            f(&mut c);
            logout_token(&c)
        };
        let bad: Vec<(&str, String)> = vec![
            (
                "a bad signature",
                tamper_signature(&logout_token(&logout_claims("jti-bad"))),
            ),
            (
                "another key",
                sign_with_header(
                    &json!({"alg": "HS256"}),
                    &logout_claims("jti-bad"),
                    Algorithm::HS256,
                    &EncodingKey::from_secret(b"another-secret-another-secret-another-secret"),
                ),
            ),
            ("a wrong audience", with(&|c| c["aud"] = json!("chat-api"))),
            (
                "a wrong issuer",
                with(&|c| c["iss"] = json!("https://evil.test")),
            ),
            (
                "no events",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("events");
                }),
            ),
            (
                "another event",
                with(&|c| c["events"] = json!({"http://schemas.openid.net/event/other": {}})),
            ),
            ("a nonce", with(&|c| c["nonce"] = json!("n-0S6_WzA2Mj"))),
            (
                "an old iat",
                with(&|c| {
                    c["iat"] = json!(now() - 600);
                    c["exp"] = json!(now() + 60);
                }),
            ),
            (
                "an expired exp",
                with(&|c| {
                    c["exp"] = json!(now() - 300);
                }),
            ),
            (
                "no jti",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("jti");
                }),
            ),
            (
                "neither sid nor sub",
                with(&|c| {
                    let o = c.as_object_mut().unwrap();
                    o.remove("sid");
                    o.remove("sub");
                }),
            ),
            ("alg none", alg_none("none")),
        ];
        for (what, t) in &bad {
            let r = post_logout(&sc, t).await;
            assert_eq!(r.status, 400, "{what}: {}", r.text());
            assert_eq!(r.json()["error"], "invalid_request", "{what}");
            assert!(r.json()["error_description"].is_string(), "{what}");
            get(&sc, &s1).await.ok_echo();
        }
        // Not a form, no token, wrong method.
        let r = send(
            client()
                .post(sc.admin_url("/backchannel-logout"))
                .body("{}"),
        )
        .await;
        assert_eq!(r.status, 400);
        let r = send(client().get(sc.admin_url("/backchannel-logout"))).await;
        assert_eq!(r.status, 400);

        let good = logout_token(&logout_claims("jti-1"));
        let r = post_logout(&sc, &good).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("cache-control"), Some("no-store"));
        get(&sc, &s1).await.assert_error(401, "token_revoked");
        get(&sc, &s2).await.ok_echo();

        // A replayed jti (even naming another session) changes nothing.
        let mut replay = logout_claims("jti-1");
        replay["sid"] = json!("sess-2");
        let r = post_logout(&sc, &logout_token(&replay)).await;
        assert_eq!(r.status, 400, "{}", r.text());
        get(&sc, &s2).await.ok_echo();

        // A sub alone logs the user out everywhere.
        let mut by_sub = logout_claims("jti-2");
        by_sub.as_object_mut().unwrap().remove("sid");
        let r = post_logout(&sc, &logout_token(&by_sub)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        get(&sc, &s2).await.assert_error(401, "token_revoked");
        assert_eq!(
            metric(
                &sc,
                "auth_sidecar_revocations_total",
                &[("source", "backchannel")]
            )
            .await,
            2.0
        );
        assert!(!sc.logs().contains(&good), "a logout token reached the log");
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Replicas
// ---------------------------------------------------------------------------------------

fn store_section(url: &str) -> String {
    format!(
        "[shared_store]\nurl = {}\nsecret = {{ env = {} }}\n",
        q(url),
        q(STORE_SECRET_ENV)
    )
}

fn replica_cfg(backend: &Backend, redis_url: &str) -> Cfg {
    with_revocation(Cfg::new(&backend.url()))
        .env(STORE_SECRET_ENV, STORE_SECRET)
        .extra(&store_section(redis_url))
}

async fn subscribed(sc: &Sidecar) -> bool {
    let r = admin(sc, "GET", "/revocations/bans", None, Some(ADMIN)).await;
    r.status == 200 && r.json()["shared_store"] == "subscribed"
}

async fn all_subscribed(scs: &[Sidecar]) {
    for (i, sc) in scs.iter().enumerate() {
        assert!(
            eventually_async(Duration::from_secs(15), || subscribed(sc)).await,
            "replica {i} never subscribed to the shared store"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_close_the_users_sockets_everywhere_and_a_restarted_replica_still_refuses() {
    bounded_for(Duration::from_secs(150), async {
        let redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap();
        let backend = Backend::start().await;
        let cfg = replica_cfg(&backend, &redis.url());
        let mut scs = futures_util::future::join_all((0..3).map(|_| Sidecar::start(&cfg))).await;
        all_subscribed(&scs).await;
        let old = token("alice", 5, json!({"jti": "r-1"}));
        let mut sockets = Vec::new();
        for sc in &scs {
            get(sc, &old).await.ok_echo();
            sockets.push(ws_open(sc, &old).await);
        }

        let r = revoke(&scs[0], "/revocations/logout", json!({"sub": "alice"})).await;
        let at = Instant::now();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["shared"], true, "{}", r.text());
        for (i, ws) in sockets.iter_mut().enumerate() {
            let (code, _, when) = ws_closed(ws, Duration::from_secs(5)).await;
            assert_eq!(code, CloseCode::Policy, "replica {i}");
            let took = when.saturating_duration_since(at);
            assert!(
                took <= WITHIN,
                "replica {i}: closed {took:?} after the revocation"
            );
        }
        for (i, sc) in scs.iter().enumerate() {
            let r = get(sc, &old).await;
            assert_eq!(r.status, 401, "replica {i}: {}", r.text());
            r.assert_error(401, "token_revoked");
        }
        // A ban reaches every replica too.
        let r = revoke(
            &scs[1],
            "/revocations/bans",
            json!({"sub": "carol", "duration": "10m"}),
        )
        .await;
        assert_eq!(r.json()["shared"], true);
        for sc in &scs {
            let carol = token("carol", 0, json!({}));
            assert!(
                eventually_async(Duration::from_secs(2), || async {
                    get(sc, &carol).await.status == 401
                })
                .await,
                "the ban did not reach a replica"
            );
        }

        // A replica started after the revocation loads it.
        let mut restarted = scs.pop().unwrap();
        restarted.stop();
        drop(restarted);
        let late = Sidecar::start(&cfg).await;
        all_subscribed(std::slice::from_ref(&late)).await;
        get(&late, &old).await.assert_error(401, "token_revoked");
        get(&late, &token("carol", 0, json!({})))
            .await
            .assert_error(401, "user_banned");
        get(&late, &token("alice", 0, json!({}))).await.ok_echo();

        // The store holds identifiers, no token, and nothing forever.
        let dump = tokio::task::spawn_blocking(move || (redis.dump(), redis))
            .await
            .unwrap();
        let (entries, _redis) = dump;
        let ours: Vec<_> = entries
            .iter()
            .filter(|e| String::from_utf8_lossy(&e.key).contains("revoke"))
            .collect();
        assert!(!ours.is_empty(), "no revocation in the store");
        let keep = 24 * 3600 + 30 + 5;
        for e in &ours {
            assert!(
                e.pttl_ms > 0 && e.pttl_ms <= keep * 1000,
                "{:?} has TTL {}",
                String::from_utf8_lossy(&e.key),
                e.pttl_ms
            );
            let v = String::from_utf8_lossy(&e.value);
            assert!(
                !v.contains(&old) && !v.contains("r-1") && !v.contains(STORE_SECRET),
                "{v}"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_during_a_revocation_is_reported_and_shared_when_it_is_back() {
    bounded_for(Duration::from_secs(150), async {
        let mut redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap();
        let backend = Backend::start().await;
        let cfg = replica_cfg(&backend, &redis.url());
        let scs = futures_util::future::join_all((0..2).map(|_| Sidecar::start(&cfg))).await;
        all_subscribed(&scs).await;
        let old = token("alice", 5, json!({}));
        for sc in &scs {
            get(sc, &old).await.ok_echo();
        }
        let mut redis = tokio::task::spawn_blocking(move || {
            redis.kill();
            redis
        })
        .await
        .unwrap();

        let r = revoke(&scs[0], "/revocations/logout", json!({"sub": "alice"})).await;
        assert_eq!(r.status, 207, "never a silent success: {}", r.text());
        let b = r.json();
        assert_eq!(b["shared"], false, "{b}");
        assert_eq!(b["applied_locally"], true, "{b}");
        assert_eq!(b["unreached"], json!(["shared_store"]), "{b}");
        assert!(b["error"].is_string(), "{b}");
        // Applied here, not (yet) on the other replica: exactly what the answer said.
        get(&scs[0], &old).await.assert_error(401, "token_revoked");
        get(&scs[1], &old).await.ok_echo();
        let lines = revocation_log_lines(&scs[0]);
        assert_eq!(
            common::sidecar::log_field(&lines[0], "shared").as_deref(),
            Some("failed")
        );

        // The store is back (empty): the pending revocation is written and reaches the
        // other replica.
        redis = tokio::task::spawn_blocking(move || {
            redis.restart();
            redis
        })
        .await
        .unwrap();
        let other = &scs[1];
        assert!(
            eventually_async(Duration::from_secs(20), || async {
                get(other, &old).await.status == 401
            })
            .await,
            "the revocation never reached the other replica after the store came back"
        );
        get(other, &old).await.assert_error(401, "token_revoked");
        drop(redis);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_while_a_large_message_streams_closes_after_that_frame() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(with_revocation).await;
        for round in 0..3 {
            // Issued (iat has one-second resolution) after the previous round's log-out
            // and before this round's.
            let t = token("alice", 1, json!({}));
            let mut ws = ws_open(&sc, &t).await;
            // 4 MiB echoed back: the revocation lands while the echo is mid-frame.
            let big = vec![round as u8; 4 * 1024 * 1024];
            ws.send(Message::binary(big.clone())).await.unwrap();
            // Reading nothing yet keeps the echo in flight in the tunnel.
            let r = revoke(
                &sc,
                "/revocations/token",
                json!({"jti": format!("none-{round}")}),
            )
            .await;
            assert_eq!(r.status, 200);
            let r = revoke(&sc, "/revocations/logout", json!({"sub": "alice"})).await;
            assert_eq!(r.status, 200);
            // Whatever arrives is well-framed: the whole message or nothing, then 1008.
            let mut got_close = None;
            while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                match m {
                    Ok(Message::Binary(b)) => assert_eq!(b.len(), big.len(), "a cut message"),
                    Ok(Message::Close(f)) => {
                        got_close = f.map(|f| f.code);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => panic!("round {round}: broken framing: {e}"),
                }
            }
            // Cut between frames when the rest of the frame does not come in time: then
            // the TCP close alone; never garbage.
            if let Some(code) = got_close {
                assert_eq!(code, CloseCode::Policy);
            }
            get(&sc, &t).await.assert_error(401, "token_revoked");
            tokio::time::sleep(Duration::from_millis(2100)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_long_poll_of_a_revoked_user_is_answered_401_within_a_second() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(with_revocation).await;
        let t = token("alice", 5, json!({}));
        let bob = token("bob", 5, json!({}));
        let url = sc.url("/slow?ms=8000");
        let poll = tokio::spawn(send(client().get(url.clone()).bearer_auth(&t)));
        let other = tokio::spawn(send(
            client().get(sc.url("/slow?ms=1500")).bearer_auth(&bob),
        ));
        // Both polls are waiting at the backend.
        let seen =
            eventually_async(Duration::from_secs(5), || async { backend.count() >= 2 }).await;
        assert!(seen, "the long polls did not reach the backend");
        let r = revoke(&sc, "/revocations/logout", json!({"sub": "alice"})).await;
        let at = Instant::now();
        assert_eq!(r.status, 200);
        let r = poll.await.unwrap();
        assert!(
            at.elapsed() <= WITHIN,
            "answered {:?} after the revocation",
            at.elapsed()
        );
        r.assert_error(401, "token_revoked");
        // Another user's poll is answered by the backend as usual.
        let r = other.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            metric(
                &sc,
                "auth_sidecar_revocation_closed_total",
                &[("kind", "pending")]
            )
            .await
                >= 1.0
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_logged_out_everywhere_is_not_refreshed() {
    bounded(async {
        let ts = TokenService::start(API_KEY).await;
        let Rig {
            backend: _backend,
            ts,
            sc,
            ..
        } = lifecycle_rig(ts).start().await;
        // Issued 20 minutes ago, expired 10 minutes ago: before the log-out.
        let pair = ts.expired_pair("alice");
        let r = revoke(&sc, "/revocations/logout", json!({"sub": "alice"})).await;
        assert_eq!(r.status, 200);
        let r = send(
            client()
                .get(sc.url(PATH))
                .bearer_auth(&pair.access)
                .header("x-refresh-token", &pair.refresh),
        )
        .await;
        r.assert_error(401, "token_revoked");
        assert_eq!(ts.calls(), 0, "a logged-out session was renewed");
        // A new login (an app identity token) starts a session as usual.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let app = app_token(&json!({"externalId": "alice", "iat": now()}));
        let r = send(client().get(sc.url(PATH)).header("x-app-identity", &app)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(ts.initiate_calls(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_keeps_the_revocations() {
    bounded(async {
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(with_revocation).await;
        let t = token("alice", 5, json!({}));
        get(&sc, &t).await.ok_echo();
        let r = revoke(
            &sc,
            "/revocations/bans",
            json!({"sub": "bob", "duration": 600}),
        )
        .await;
        assert_eq!(r.status, 200);
        let r = revoke(&sc, "/revocations/logout", json!({"sub": "alice"})).await;
        assert_eq!(r.status, 200);
        sc.signal("HUP");
        let reloaded = eventually_async(Duration::from_secs(10), || async {
            sc.stdout_lines()
                .iter()
                .any(|l| l.contains("config reloaded"))
        })
        .await;
        assert!(reloaded, "no reload: {}", sc.logs());
        get(&sc, &t).await.assert_error(401, "token_revoked");
        get(&sc, &token("bob", 0, json!({})))
            .await
            .assert_error(401, "user_banned");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_gives_nothing_for_a_revoked_token_or_a_banned_user() {
    bounded(async {
        let ts = TokenService::start(API_KEY).await;
        let Rig {
            backend: _backend,
            ts,
            sc,
            ..
        } = lifecycle_rig(ts)
            .cfg(|c| {
                c.extra(
                    "[token_endpoint]\npath = \"/sdk/tokens\"\naccept = [\"access_token\", \"app_identity\"]\n",
                )
            })
            .start()
            .await;
        let tokens = |proof: (&'static str, String)| {
            let sc = &sc;
            async move {
                let rb = client().post(sc.url("/sdk/tokens"));
                let rb = match proof.0 {
                    "bearer" => rb.bearer_auth(proof.1),
                    _ => rb.header("x-app-identity", proof.1),
                };
                send(rb).await
            }
        };
        // Before: both proofs get tokens.
        let old = token("alice", 30, json!({}));
        let r = tokens(("bearer", old.clone())).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let calls = ts.initiate_calls();
        assert_eq!(calls, 1);

        // Logged out everywhere: the old token proves nothing, and no initiate is made.
        let r = revoke(&sc, "/revocations/logout", json!({"sub": "alice"})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        tokens(("bearer", old.clone()))
            .await
            .assert_error(401, "token_revoked");
        assert_eq!(ts.initiate_calls(), calls);

        // Banned: neither a fresh token nor an app identity token gets anything.
        let r = revoke(
            &sc,
            "/revocations/bans",
            json!({"sub": "alice", "duration": "1h"}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        tokens(("bearer", token("alice", 0, json!({}))))
            .await
            .assert_error(401, "user_banned");
        let app = app_token(&json!({"externalId": "alice", "iat": now()}));
        tokens(("app", app)).await.assert_error(401, "user_banned");
        assert_eq!(ts.initiate_calls(), calls, "no initiate for a banned user");
        // Another user is untouched.
        let r = tokens(("bearer", token("bob", 0, json!({})))).await;
        assert_eq!(r.status, 200, "{}", r.text());
    })
    .await
}
