//! `examples/connectycube.toml` end to end against a mock of ConnectyCube's session API
//! (tests/common/connectycube.rs): opaque `CB-Token` sessions checked with `GET /session`,
//! the three session kinds and their rights, the sliding expiry, the server-side
//! `sessionExpired` (a signed `POST /session`), and the vendor failing. Plus route limits
//! on JWT claims, the same rule for tokens the sidecar verifies itself.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::connectycube::{ConnectyCube, CC_AUTH_KEY, CC_AUTH_SECRET};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const PATH: &str = "/api/dialogs";

fn example() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join("connectycube.toml");
    assert!(p.is_file(), "missing {}", p.display());
    p.to_string_lossy().into_owned()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn secrets() -> Vec<(String, String)> {
    env(&[
        ("CONNECTYCUBE_AUTH_KEY", CC_AUTH_KEY),
        ("CONNECTYCUBE_AUTH_SECRET", CC_AUTH_SECRET),
        ("APP_IDENTITY_SECRET", APP_SECRET),
    ])
}

/// The example, pointed at `cc` and `backend`, plus `extra` overrides.
async fn run(cc: &ConnectyCube, backend: Backend, extra: &[(&str, &str)]) -> Rig {
    let mut e = secrets();
    e.extend(env(&[
        ("AUTH_SIDECAR__BACKEND__URL", &backend.url()),
        ("AUTH_SIDECAR__SERVER__LISTEN", "127.0.0.1:0"),
        ("AUTH_SIDECAR__ADMIN__LISTEN", "127.0.0.1:0"),
        ("AUTH_SIDECAR__LOG__FORMAT", "json"),
        ("AUTH_SIDECAR__INTROSPECTION__URL", &cc.session_url()),
        ("AUTH_SIDECAR__INITIATE__URL", &cc.session_url()),
    ]));
    e.extend(env(extra));
    Rig::builder()
        .backend(backend)
        .args(["--config".to_string(), example()])
        .envs(&e)
        .start()
        .await
}

/// A short cache, so that "two hours later" (the mock dropping a session) can be had
/// in a test: the sidecar's answer ends within 1 s.
const SHORT_CACHE: (&str, &str) = ("AUTH_SIDECAR__INTROSPECTION__CACHE_TTL", "1s");

/// ConnectyCube drops the session, and the sidecar's cached answer for it runs out.
async fn expire(cc: &ConnectyCube, token: &str) {
    cc.expire(token);
    tokio::time::sleep(Duration::from_millis(1300)).await;
}

/// The app's own identity token (the Custom Identity Provider login) for `user`.
fn app_token(user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"externalId": user, "name": format!("User {user}"), "iat": now, "exp": now + 600}),
        &EncodingKey::from_secret(APP_SECRET.as_bytes()),
    )
    .unwrap()
}

/// No secret of the sidecar's and no app identity token reached the backend.
fn assert_backend_clean(echo: &Echo) {
    for (k, v) in &echo.headers {
        for s in [CC_AUTH_KEY, CC_AUTH_SECRET, APP_SECRET] {
            assert!(!v.contains(s), "the backend saw a secret in {k}");
        }
        assert_ne!(
            k, "x-app-identity",
            "the backend saw the app identity token"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_passes_check_config_and_names_its_env_vars() {
    bounded(async {
        let path = example();
        let (out, _dir) =
            finish(Launch::args(["check-config", "--config", &path]).envs(&secrets())).await;
        assert_eq!(out.status.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
        for (var, value) in secrets() {
            assert!(!out.stdout.contains(&value) && !out.stderr.contains(&value));
            assert!(out.stdout.contains(&var), "the redacted config names {var}");
        }
        let (out, _dir) = finish(Launch::args(["check-config", "--config", &path])).await;
        assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
        for (var, _) in secrets() {
            assert!(out.stderr.contains(&var), "the error names {var}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_guest_and_app_sessions_have_their_rights() {
    bounded(async {
        let cc = ConnectyCube::start(Duration::from_secs(7200)).await;
        let rig = run(&cc, Backend::start().await, &[]).await;
        let c = client();
        let url = rig.sc.url(PATH);

        // A user session: full access, identity from the session object.
        let (user, uid) = cc.user_session("alice", "Alice Smith");
        let r = send(c.get(&url).header("CB-Token", &user)).await;
        let echo = r.ok_echo();
        assert_eq!(
            echo.header("x-auth-user-id"),
            Some(uid.to_string().as_str())
        );
        assert_eq!(echo.header("x-auth-session-kind"), Some("user"));
        assert_eq!(echo.header("x-auth-login"), Some("alice"));
        assert_eq!(echo.header("x-auth-email"), Some("alice@example.com"));
        assert_eq!(echo.header("x-auth-name"), Some("Alice Smith"));
        // forward_token_header: the backend may call ConnectyCube with it.
        assert_eq!(echo.header("cb-token"), Some(user.as_str()));
        let r = send(c.post(&url).header("CB-Token", &user).body("{}")).await;
        r.ok_echo();
        assert_eq!(cc.gets(), 1, "the answer is cached by token hash");

        // A guest: reads, cannot write.
        let (guest, gid) = cc.guest_session("Visitor");
        let r = send(c.get(&url).header("CB-Token", &guest)).await;
        let echo = r.ok_echo();
        assert_eq!(echo.header("x-auth-session-kind"), Some("guest"));
        assert_eq!(
            echo.header("x-auth-user-id"),
            Some(gid.to_string().as_str())
        );
        let r = send(c.post(&url).header("CB-Token", &guest).body("{}")).await;
        r.assert_error(403, "insufficient_scope");

        // An application session (user_id 0): read-only, and no user id at all.
        let app = cc.app_session();
        let r = send(c.get(&url).header("CB-Token", &app)).await;
        let echo = r.ok_echo();
        assert_eq!(echo.header("x-auth-session-kind"), Some("app"));
        assert_eq!(echo.header("x-auth-user-id"), None);
        assert_eq!(echo.header("x-auth-email"), None);
        let backend_seen = rig.backend.count();
        for m in ["POST", "PUT", "DELETE"] {
            let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
            let r = send(c.request(method, &url).header("CB-Token", &app)).await;
            r.assert_error(403, "insufficient_scope");
        }
        assert_eq!(
            rig.backend.count(),
            backend_seen,
            "refusals never reach the backend"
        );

        // A token ConnectyCube does not know; a client-sent kind header is stripped.
        let r = send(
            c.get(&url)
                .header("CB-Token", "0123456789abcdef0123456789abcdef01234567"),
        )
        .await;
        r.assert_error(401, "invalid_token");
        let r = send(
            c.get(&url)
                .header("CB-Token", &app)
                .header("X-Auth-Session-Kind", "user")
                .header("X-Auth-User-Id", "1"),
        )
        .await;
        let echo = r.ok_echo();
        assert_eq!(echo.header("x-auth-session-kind"), Some("app"));
        assert_eq!(echo.header("x-auth-user-id"), None);

        // One credential per request: CB-Token and a bearer token together are a 400.
        let r = send(c.get(&url).header("CB-Token", &user).bearer_auth(&user)).await;
        r.assert_error(400, "invalid_request");
        // Two CB-Token headers too.
        let r = send(
            c.get(&url)
                .header("CB-Token", &user)
                .header("CB-Token", &guest),
        )
        .await;
        r.assert_error(400, "invalid_request");
        // No token at all.
        send(c.get(&url)).await.assert_error(401, "missing_token");
        for echo in rig.backend.seen() {
            assert_backend_clean(&echo);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_checked_again_and_an_active_one_is_kept_alive() {
    bounded(async {
        // ConnectyCube's 2 h, scaled down: sessions die 2 s after their last request.
        let cc = ConnectyCube::start(Duration::from_secs(2)).await;
        let rig = run(
            &cc,
            Backend::start().await,
            &[
                ("AUTH_SIDECAR__INTROSPECTION__IDLE_TIMEOUT", "2s"),
                ("AUTH_SIDECAR__INTROSPECTION__RECONFIRM_AFTER", "1s"),
            ],
        )
        .await;
        let c = client();
        let url = rig.sc.url(PATH);

        // Idle past the window: the cache does not vouch for it, ConnectyCube is asked
        // again and says the session is gone (no app identity token: nothing to renew with).
        let (idle, _) = cc.user_session("ivan", "Ivan");
        send(c.get(&url).header("CB-Token", &idle)).await.ok_echo();
        assert_eq!(cc.gets(), 1);
        tokio::time::sleep(Duration::from_millis(2600)).await;
        let r = send(c.get(&url).header("CB-Token", &idle)).await;
        r.assert_error(401, "refresh_rejected");
        assert_eq!(cc.gets(), 2, "the idle session was checked again");

        // Active: a request every 250 ms for 5 s (2.5 windows) works throughout, and the
        // sidecar's re-confirmations keep it alive at ConnectyCube.
        let (active, uid) = cc.user_session("anna", "Anna");
        let before = cc.gets();
        let started = std::time::Instant::now();
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(5) {
            let r = send(c.get(&url).header("CB-Token", &active)).await;
            let echo = r.ok_echo();
            assert_eq!(
                echo.header("x-auth-user-id"),
                Some(uid.to_string().as_str())
            );
            n += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(cc.is_live(&active), "ConnectyCube still has the session");
        let checks = cc.gets() - before;
        assert!(
            checks >= 3,
            "re-confirmed within each window ({checks} checks)"
        );
        assert!(
            checks < n,
            "answered from the cache in between ({checks} of {n})"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_renewed_server_side_with_a_signed_call() {
    bounded(async {
        let cc = ConnectyCube::start(Duration::from_secs(7200)).await;
        let rig = run(&cc, Backend::start().await, &[SHORT_CACHE]).await;
        let c = client();
        let url = rig.sc.url(PATH);

        // Alice logs in through the Custom Identity Provider: her app token is the login.
        let id_token = app_token("alice");
        let (old, uid) = cc.user_session("alice", "Alice");
        let r = send(
            c.get(&url)
                .header("CB-Token", &old)
                .header("X-App-Identity", &id_token),
        )
        .await;
        r.ok_echo();
        assert_eq!(r.header("x-auth-access-token"), None);

        // Two hours later ConnectyCube has dropped it: "Required session does not exist".
        expire(&cc, &old).await;
        let r = send(
            c.post(&url)
                .header("CB-Token", &old)
                .header("X-App-Identity", &id_token)
                .body("{}"),
        )
        .await;
        let echo = r.ok_echo();
        let new = r
            .header("x-auth-access-token")
            .expect("new token")
            .to_string();
        assert_ne!(new, old);
        assert!(cc.is_live(&new));
        assert_eq!(cc.user_of(&new), Some(uid), "a session for the same user");
        assert_eq!(cc.creates(), 1);
        assert_eq!(cc.refused_creates(), 0, "the mock accepted the signature");
        assert_eq!(echo.header("cb-token"), Some(new.as_str()));
        assert_eq!(
            echo.header("x-auth-user-id"),
            Some(uid.to_string().as_str())
        );
        assert_eq!(
            r.header("x-auth-refresh-token"),
            None,
            "ConnectyCube has none"
        );
        let call = cc.last_create().unwrap();
        assert_eq!(call["user"]["login"], Value::String(id_token.clone()));
        assert_eq!(call["auth_key"], Value::String(CC_AUTH_KEY.into()));
        let sig = call["signature"].as_str().unwrap();
        assert!(sig.len() == 40 && sig.bytes().all(|b| b.is_ascii_hexdigit()));

        // The new token works as is (checked with GET /session, not as a JWT).
        let r = send(c.get(&url).header("CB-Token", &new)).await;
        assert_eq!(
            r.ok_echo().header("x-auth-user-id"),
            Some(uid.to_string().as_str())
        );

        // A guest: a new guest session with the same full_name.
        let (guest, gid) = cc.guest_session("Visitor Vic");
        send(c.get(&url).header("CB-Token", &guest)).await.ok_echo();
        expire(&cc, &guest).await;
        let r = send(c.get(&url).header("CB-Token", &guest)).await;
        let echo = r.ok_echo();
        let new_guest = r.header("x-auth-access-token").unwrap().to_string();
        assert_eq!(echo.header("x-auth-session-kind"), Some("guest"));
        let g = cc.user(cc.user_of(&new_guest).unwrap()).unwrap();
        assert!(g.is_guest && g.full_name == "Visitor Vic" && g.id != gid);
        let call = cc.last_create().unwrap();
        assert_eq!(call["user"]["guest"], json!("1"));
        assert_eq!(cc.creates(), 2);

        // An app session that ended has no user to renew for.
        let app = cc.app_session();
        send(c.get(&url).header("CB-Token", &app)).await.ok_echo();
        expire(&cc, &app).await;
        let r = send(c.get(&url).header("CB-Token", &app)).await;
        r.assert_error(401, "token_expired");
        assert_eq!(cc.creates(), 2);

        // A token this sidecar never confirmed proves nobody.
        let (stranger, _) = cc.user_session("mallory", "M");
        expire(&cc, &stranger).await;
        let r = send(
            c.get(&url)
                .header("CB-Token", &stranger)
                .header("X-App-Identity", &app_token("mallory")),
        )
        .await;
        r.assert_error(401, "invalid_token");
        assert_eq!(cc.creates(), 2);
        for echo in rig.backend.seen() {
            assert_backend_clean(&echo);
        }
    })
    .await
}

/// A name is data: a guest called `{api_key} {signature}` is renewed with exactly that
/// name, and neither the auth key nor the signature lands in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_values_cannot_pull_secrets_into_the_create_session_call() {
    bounded(async {
        let cc = ConnectyCube::start(Duration::from_secs(7200)).await;
        let rig = run(&cc, Backend::start().await, &[SHORT_CACHE]).await;
        let c = client();
        let url = rig.sc.url(PATH);
        let name = "{api_key} {signature} {nonce}";
        let (guest, _) = cc.guest_session(name);
        send(c.get(&url).header("CB-Token", &guest)).await.ok_echo();
        expire(&cc, &guest).await;
        let r = send(c.get(&url).header("CB-Token", &guest)).await;
        r.ok_echo();
        assert_eq!(cc.creates(), 1, "the signature still verifies");
        let call = cc.last_create().unwrap();
        assert_eq!(call["user"]["full_name"], json!(name));
        let new = r.header("x-auth-access-token").unwrap();
        let g = cc.user(cc.user_of(new).unwrap()).unwrap();
        assert_eq!(g.full_name, name);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_make_one_create_session_call() {
    bounded(async {
        let cc = ConnectyCube::start(Duration::from_secs(7200)).await;
        let rig = run(&cc, Backend::start().await, &[SHORT_CACHE]).await;
        let c = client();
        let url = rig.sc.url(PATH);
        let id_token = app_token("bob");
        let (old, uid) = cc.user_session("bob", "Bob");
        send(
            c.get(&url)
                .header("CB-Token", &old)
                .header("X-App-Identity", &id_token),
        )
        .await
        .ok_echo();
        expire(&cc, &old).await;
        cc.set_create_delay(Duration::from_millis(300));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (c, url, old, id) = (c.clone(), url.clone(), old.clone(), id_token.clone());
            tasks.push(tokio::spawn(async move {
                send(
                    c.get(&url)
                        .header("CB-Token", &old)
                        .header("X-App-Identity", &id),
                )
                .await
            }));
        }
        let mut tokens = std::collections::HashSet::new();
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(
                r.ok_echo().header("x-auth-user-id"),
                Some(uid.to_string().as_str())
            );
            tokens.insert(r.header("x-auth-access-token").unwrap().to_string());
        }
        assert_eq!(cc.creates(), 1, "one create-session call for 50 requests");
        assert_eq!(tokens.len(), 1, "every request got the same new session");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_auth_key_or_secret_is_refused_by_connectycube() {
    bounded(async {
        let cc = ConnectyCube::start(Duration::from_secs(7200)).await;
        for (var, wrong) in [
            ("CONNECTYCUBE_AUTH_SECRET", "not-the-auth-secret"),
            ("CONNECTYCUBE_AUTH_KEY", "not-the-auth-key"),
        ] {
            let refused = cc.refused_creates();
            let rig = run(&cc, Backend::start().await, &[(var, wrong), SHORT_CACHE]).await;
            let c = client();
            let url = rig.sc.url(PATH);
            let id_token = app_token("carol");
            let (old, _) = cc.user_session("carol", "Carol");
            send(
                c.get(&url)
                    .header("CB-Token", &old)
                    .header("X-App-Identity", &id_token),
            )
            .await
            .ok_echo();
            expire(&cc, &old).await;
            let r = send(
                c.get(&url)
                    .header("CB-Token", &old)
                    .header("X-App-Identity", &id_token),
            )
            .await;
            r.assert_error(401, "refresh_rejected");
            assert!(!r.text().contains(wrong), "{var}: the answer shows the key");
            assert_eq!(
                cc.refused_creates(),
                refused + 1,
                "{var}: the mock refused it"
            );
            assert_eq!(cc.creates(), 0);
            let log = rig.sc.logs();
            assert!(!log.contains(wrong), "{var}: logged");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectycube_down_or_talking_nonsense_is_a_503_never_a_401() {
    bounded(async {
        let cc = ConnectyCube::start(Duration::from_secs(7200)).await;
        let rig = run(&cc, Backend::start().await, &[]).await;
        let c = client();
        let url = rig.sc.url(PATH);
        let (known, uid) = cc.user_session("dave", "Dave");
        send(c.get(&url).header("CB-Token", &known)).await.ok_echo();
        let (fresh, _) = cc.user_session("erin", "Erin");

        cc.set_down(true);
        // A session confirmed a moment ago keeps working from the cache.
        let r = send(c.get(&url).header("CB-Token", &known)).await;
        assert_eq!(
            r.ok_echo().header("x-auth-user-id"),
            Some(uid.to_string().as_str())
        );
        // One that cannot be checked is an outage, not a bad token.
        let r = send(c.get(&url).header("CB-Token", &fresh)).await;
        r.assert_error(503, "token_service_unavailable");
        assert!(r.header("retry-after").is_some());
        cc.set_down(false);

        // 200 with an HTML page instead of the session object.
        cc.set_garbage(true);
        let (other, _) = cc.user_session("finn", "Finn");
        let r = send(c.get(&url).header("CB-Token", &other)).await;
        r.assert_error(503, "token_service_unavailable");
        assert!(r.header("retry-after").is_some());
        cc.set_garbage(false);

        // Not cached as an answer: once ConnectyCube is back, both work.
        send(c.get(&url).header("CB-Token", &fresh)).await.ok_echo();
        send(c.get(&url).header("CB-Token", &other)).await.ok_echo();
    })
    .await
}

/// "App and guest sessions are read-only" for JWTs: the same route limits on claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_limits_apply_to_jwt_claims_too() {
    bounded(async {
        let rig = Rig::start_with(|c| {
            c.route(
                "prefix = \"/\"\nlimits = [{ claims = { is_guest = \"true\" }, methods = [\"GET\"] }, { claims = { role = \"reader\" }, methods = [\"GET\", \"HEAD\"] }]",
            )
        })
        .await;
        let c = client();
        let url = rig.sc.url(PATH);
        let guest = hs256_with(json!({"is_guest": true}));
        let reader = hs256_with(json!({"role": "reader"}));
        let user = hs256_with(json!({"role": "member"}));
        send(c.get(&url).bearer_auth(&guest)).await.ok_echo();
        send(c.post(&url).bearer_auth(&guest)).await.assert_error(403, "insufficient_scope");
        send(c.get(&url).bearer_auth(&reader)).await.ok_echo();
        send(c.delete(&url).bearer_auth(&reader)).await.assert_error(403, "insufficient_scope");
        send(c.post(&url).bearer_auth(&user)).await.ok_echo();
        send(c.delete(&url).bearer_auth(&user)).await.ok_echo();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cb_token_is_removed_before_forwarding_unless_configured() {
    bounded(async {
        let cc = ConnectyCube::start(Duration::from_secs(7200)).await;
        let rig = run(
            &cc,
            Backend::start().await,
            &[("AUTH_SIDECAR__AUTH__FORWARD_TOKEN_HEADER", "false")],
        )
        .await;
        let (user, uid) = cc.user_session("gina", "Gina");
        let r = send(client().get(rig.sc.url(PATH)).header("CB-Token", &user)).await;
        let echo = r.ok_echo();
        assert_eq!(
            echo.header("x-auth-user-id"),
            Some(uid.to_string().as_str())
        );
        assert_eq!(echo.header("cb-token"), None);
        assert!(echo.headers.iter().all(|(_, v)| !v.contains(&user)));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_body_that_is_not_json_is_refused_at_load() {
    bounded(async {
        let path = example();
        let mut e = secrets();
        e.extend(env(&[(
            "AUTH_SIDECAR__INITIATE__BODY",
            r#"application_id=12345&auth_key={api_key}&nonce={nonce}&signature={signature}"#,
        )]));
        let (out, _dir) = finish(Launch::args(["check-config", "--config", &path]).envs(&e)).await;
        assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
        assert!(
            out.stderr.contains("initiate.body: must be a JSON object"),
            "{}",
            out.stderr
        );
    })
    .await
}

/// Two replicas sharing a Redis: one create-session call for the user however the
/// requests are spread, and the replica that did not make it checks the shared session
/// with `GET /session` before using it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_store_make_one_create_session_call() {
    bounded(async {
        let redis = tokio::task::spawn_blocking(common::redis::RedisServer::start)
            .await
            .unwrap();
        let cc = ConnectyCube::start(Duration::from_secs(7200)).await;
        let store_secret = "itest-shared-store-secret-cc-5f1e2d3c4b5a6978";
        let redis_url = redis.url();
        let store = [
            SHORT_CACHE,
            ("AUTH_SIDECAR__SHARED_STORE__URL", redis_url.as_str()),
            (
                "AUTH_SIDECAR__SHARED_STORE__SECRET",
                r#"{ env = "CC_STORE_SECRET" }"#,
            ),
            ("CC_STORE_SECRET", store_secret),
        ];
        let a = run(&cc, Backend::start().await, &store).await;
        let b = run(&cc, Backend::start().await, &store).await;
        let c = client();
        let id_token = app_token("henry");
        let (old, uid) = cc.user_session("henry", "Henry");
        // Each replica has confirmed the token for henry.
        for rig in [&a, &b] {
            send(
                c.get(rig.sc.url(PATH))
                    .header("CB-Token", &old)
                    .header("X-App-Identity", &id_token),
            )
            .await
            .ok_echo();
        }
        expire(&cc, &old).await;
        cc.set_create_delay(Duration::from_millis(300));
        let mut tasks = Vec::new();
        for i in 0..40 {
            let url = if i % 2 == 0 {
                a.sc.url(PATH)
            } else {
                b.sc.url(PATH)
            };
            let (c, old, id) = (c.clone(), old.clone(), id_token.clone());
            tasks.push(tokio::spawn(async move {
                send(
                    c.get(&url)
                        .header("CB-Token", &old)
                        .header("X-App-Identity", &id),
                )
                .await
            }));
        }
        let mut tokens = std::collections::HashSet::new();
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(
                r.ok_echo().header("x-auth-user-id"),
                Some(uid.to_string().as_str())
            );
            tokens.insert(r.header("x-auth-access-token").unwrap().to_string());
        }
        assert_eq!(
            cc.creates(),
            1,
            "one create-session call across both replicas"
        );
        assert_eq!(tokens.len(), 1, "both replicas handed out the same session");
        // Nothing in Redis holds the session token in the clear.
        let new = tokens.into_iter().next().unwrap();
        for e in redis.dump() {
            assert!(
                !format!("{e:?}").contains(&new),
                "the store holds the token"
            );
        }
    })
    .await
}
