//! The vendor example configs in `examples/`: each passes `check-config` with the env
//! vars it names (and fails, naming them, without), and each runs against a mock of its
//! vendor's API shape, with URLs and ports overridden through `AUTH_SIDECAR__*`.

mod common;

use std::path::PathBuf;

use common::token_service::{Pair, Shape, TokenService};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const PATH: &str = "/api/chatrooms";

fn example(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    assert!(p.is_file(), "missing {}", p.display());
    p
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `auth-sidecar check-config --config examples/<name>`, bounded by 20 s.
async fn check_config(name: &str, env: &[(String, String)]) -> Checked {
    let path = example(name).to_string_lossy().into_owned();
    let (out, _dir) = finish(Launch::args(["check-config", "--config", &path]).envs(env)).await;
    Checked {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

/// The binary running `examples/<name>` with `env` (which points it at `backend` and
/// `ts`), up once it logs `listening`; killed on Drop.
async fn run_example(
    name: &str,
    ts: TokenService,
    backend: Backend,
    env: Vec<(String, String)>,
) -> Rig<Backend, TokenService> {
    let path = example(name).to_string_lossy().into_owned();
    Rig::builder()
        .backend(backend)
        .token_service(ts)
        .args(["--config", &path])
        .envs(&env)
        .start()
        .await
}

/// The overrides every run uses: the backend, ephemeral ports, JSON logs.
fn overrides(backend: &Backend) -> Vec<(String, String)> {
    env(&[
        ("AUTH_SIDECAR__BACKEND__URL", &backend.url()),
        ("AUTH_SIDECAR__SERVER__LISTEN", "127.0.0.1:0"),
        ("AUTH_SIDECAR__ADMIN__LISTEN", "127.0.0.1:0"),
        ("AUTH_SIDECAR__LOG__FORMAT", "json"),
    ])
}

fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn assert_backend_clean(echo: &Echo, secrets: &[&str]) {
    for h in ["x-refresh-token", "x-app-identity", "x-api-key"] {
        assert!(echo.header(h).is_none(), "the backend saw `{h}`");
    }
    for (k, v) in &echo.headers {
        for s in secrets {
            assert!(!v.contains(s), "the backend saw a secret in `{k}`");
        }
    }
}

// ---------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------

const LM_KEY: &str = "lm-api-key-0f9e8d7c6b5a4f3e2d1c0b9a";
const MS_KEY: &str = "mindset-api-key-77aa66bb55cc44dd33ee";
const KU_KEY: &str = "chat-token-service-key-1a2b3c4d5e6f";
const KU_SECRET: &str = "kustomer-secret-key-for-identity-jwts-0123456789";

fn example_env(name: &str) -> Vec<(String, String)> {
    match name {
        "likeminds.toml" => env(&[
            ("LIKEMINDS_API_KEY", LM_KEY),
            ("LIKEMINDS_TOKEN_SECRET", HS_SECRET),
        ]),
        "mindset.toml" => env(&[
            ("MINDSET_API_KEY", MS_KEY),
            ("MINDSET_TOKEN_SECRET", HS_SECRET),
        ]),
        "kustomer.toml" => env(&[
            ("KUSTOMER_JWT_SECRET", KU_SECRET),
            ("CHAT_TOKEN_SERVICE_KEY", KU_KEY),
            ("CHAT_TOKEN_SECRET", HS_SECRET),
        ]),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_passes_check_config_with_its_env_vars() {
    bounded(async {
        for name in ["likeminds.toml", "mindset.toml", "kustomer.toml"] {
            let e = example_env(name);
            let out = check_config(name, &e).await;
            assert_eq!(
                out.code,
                Some(0),
                "{name}: check-config failed\n{}\n{}",
                out.stdout,
                out.stderr
            );
            for (var, value) in &e {
                assert!(
                    !out.stdout.contains(value.as_str()) && !out.stderr.contains(value.as_str()),
                    "{name}: check-config printed the value of {var}"
                );
                assert!(
                    out.stdout.contains(var.as_str()),
                    "{name}: the redacted config should name {var} as a reference"
                );
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_names_its_missing_env_vars() {
    bounded(async {
        for name in ["likeminds.toml", "mindset.toml", "kustomer.toml"] {
            let out = check_config(name, &[]).await;
            assert_eq!(out.code, Some(64), "{name}: {}", out.stderr);
            for (var, _) in example_env(name) {
                assert!(
                    out.stderr.contains(&var),
                    "{name}: the error does not name {var}:\n{}",
                    out.stderr
                );
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// LikeMinds: refresh under /data, initiate with user_unique_id / user_name
// ---------------------------------------------------------------------------

fn likeminds_shape() -> Shape {
    let mut s = Shape::default_with_key(LM_KEY);
    s.refresh_path = "/likeminds/refresh".into();
    s.refresh_access_ptr = "/data/access_token".into();
    s.refresh_refresh_ptr = Some("/data/refresh_token".into());
    s.initiate_path = "/sdk/initiate".into();
    s.identity_fields = vec!["/user_unique_id".into()];
    s.envelope = json!({"success": true});
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn likeminds_example_refreshes_then_initiates() {
    bounded(async {
        let ts = TokenService::start_with(likeminds_shape()).await;
        let backend = Backend::start().await;
        let mut e = example_env("likeminds.toml");
        e.extend(overrides(&backend));
        e.extend(env(&[
            ("AUTH_SIDECAR__REFRESH__URL", &ts.refresh_url()),
            ("AUTH_SIDECAR__INITIATE__URL", &ts.initiate_url()),
        ]));
        let Rig {
            ts, backend, sc, ..
        } = run_example("likeminds.toml", ts, backend, e).await;
        let c = client();

        // Expired access token + refresh token: refreshed.
        let old = ts.expired_pair("lm-user-1");
        let r = send(
            c.get(sc.url(PATH))
                .bearer_auth(&old.access)
                .header("x-refresh-token", &old.refresh),
        )
        .await;
        let echo = r.ok_echo();
        let issued = ts.last_issued().unwrap();
        assert_eq!(
            r.header("x-auth-access-token"),
            Some(issued.access.as_str())
        );
        assert_eq!(
            r.header("x-auth-refresh-token"),
            Some(issued.refresh.as_str())
        );
        assert_eq!(echo.header("x-auth-user-id"), Some("lm-user-1"));
        assert_eq!(
            ts.last_refresh().unwrap().json(),
            json!({"refresh_token": old.refresh})
        );
        assert_eq!(ts.refresh_calls(), 1);
        assert_eq!(ts.initiate_calls(), 0);

        // Dead refresh token: initiate with the API key and the LikeMinds body.
        let mut dead = ts.expired_pair("lm-user-2");
        dead.refresh = "rt-expired-at-likeminds".into();
        let r = send(
            c.get(sc.url(PATH))
                .bearer_auth(&dead.access)
                .header("x-refresh-token", &dead.refresh),
        )
        .await;
        let echo = r.ok_echo();
        let issued = ts.last_issued().unwrap();
        assert_eq!(
            r.header("x-auth-access-token"),
            Some(issued.access.as_str())
        );
        assert_eq!(
            r.header("x-auth-refresh-token"),
            Some(issued.refresh.as_str())
        );
        assert_eq!(echo.header("x-auth-user-id"), Some("lm-user-2"));
        let call = ts.last_initiate().unwrap();
        assert_eq!(call.path, "/sdk/initiate");
        assert_eq!(call.header("x-api-key"), Some(LM_KEY));
        assert_eq!(
            call.json(),
            json!({"user_unique_id": "lm-user-2", "user_name": "User lm-user-2", "is_guest": false})
        );
        assert_eq!(ts.initiate_calls(), 1);
        for echo in backend.seen() {
            assert_backend_clean(
                &echo,
                &[LM_KEY, &old.refresh, &dead.refresh, &issued.refresh],
            );
        }
        assert!(!sc.logs().contains(LM_KEY), "the API key is in the log");
    })
    .await
}

// ---------------------------------------------------------------------------
// Mindset: initiate only, {"userEmail": "{email}"} with x-api-key, {"authToken"}
// ---------------------------------------------------------------------------

fn mindset_shape() -> Shape {
    let mut s = Shape::default_with_key(MS_KEY);
    s.initiate_path = "/api/v1/appuid/test-app/sdkusers/auth".into();
    s.identity_fields = vec!["/userEmail".into(), "/externalId".into()];
    s.name_fields = vec!["/name".into()];
    s.initiate_access_ptr = "/authToken".into();
    s.initiate_refresh_ptr = None;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mindset_example_renews_an_expired_token_through_initiate() {
    bounded(async {
        let ts = TokenService::start_with(mindset_shape()).await;
        let backend = Backend::start().await;
        let mut e = example_env("mindset.toml");
        e.extend(overrides(&backend));
        e.extend(env(&[("AUTH_SIDECAR__INITIATE__URL", &ts.initiate_url())]));
        let Rig {
            ts, backend, sc, ..
        } = run_example("mindset.toml", ts, backend, e).await;
        let c = client();

        // A Mindset session token for dana, expired 10 minutes ago; no refresh token.
        let old: Pair = ts.expired_pair("dana@example.com");
        let r = send(c.get(sc.url(PATH)).bearer_auth(&old.access)).await;
        let echo = r.ok_echo();
        let issued = ts.last_issued().unwrap();
        assert_eq!(
            r.header("x-auth-access-token"),
            Some(issued.access.as_str())
        );
        assert_eq!(echo.header("x-auth-user-id"), Some("dana@example.com"));
        assert_eq!(echo.header("x-auth-email"), Some("dana@example.com"));
        assert_eq!(
            echo.header("authorization"),
            Some(format!("Bearer {}", issued.access).as_str())
        );
        let call = ts.last_initiate().unwrap();
        assert_eq!(call.header("x-api-key"), Some(MS_KEY));
        assert_eq!(
            call.json(),
            json!({"userEmail": "dana@example.com", "name": "User dana@example.com"})
        );
        assert_eq!(ts.initiate_calls(), 1);
        assert_eq!(ts.refresh_calls(), 0);

        // The new token works as is.
        let r = send(c.get(sc.url(PATH)).bearer_auth(&issued.access)).await;
        assert_eq!(
            r.ok_echo().header("x-auth-user-id"),
            Some("dana@example.com")
        );

        // Expired more than max_staleness (24h) ago: no longer proves the user.
        let stale = ts.expired_pair_for("dana@example.com", 25 * 3600);
        let r = send(c.get(sc.url(PATH)).bearer_auth(&stale.access)).await;
        r.assert_error(401, "refresh_rejected");
        assert_eq!(ts.initiate_calls(), 1);
        for echo in backend.seen() {
            assert_backend_clean(&echo, &[MS_KEY]);
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Kustomer-style: the app identity token starts the session
// ---------------------------------------------------------------------------

fn kustomer_shape() -> Shape {
    let mut s = Shape::default_with_key(KU_KEY);
    s.refresh_path = "/v1/token/refresh".into();
    s.initiate_path = "/v1/sessions".into();
    s.identity_fields = vec!["/email".into(), "/externalId".into()];
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomer_example_starts_sessions_from_app_identity_tokens() {
    bounded(async {
        let ts = TokenService::start_with(kustomer_shape()).await;
        let backend = Backend::start().await;
        let mut e = example_env("kustomer.toml");
        e.extend(overrides(&backend));
        e.extend(env(&[
            ("AUTH_SIDECAR__REFRESH__URL", &ts.refresh_url()),
            ("AUTH_SIDECAR__INITIATE__URL", &ts.initiate_url()),
        ]));
        let Rig {
            ts, backend, sc, ..
        } = run_example("kustomer.toml", ts, backend, e).await;
        let c = client();

        // No chat tokens yet: the app's identity JWT (email wins over externalId).
        let app = sign(
            &json!({"email": "erin@example.com", "externalId": "ext-erin", "iat": now()}),
            KU_SECRET,
        );
        let r = send(c.get(sc.url(PATH)).header("x-app-identity", &app)).await;
        let echo = r.ok_echo();
        let issued = ts.last_issued().unwrap();
        assert_eq!(
            r.header("x-auth-access-token"),
            Some(issued.access.as_str())
        );
        assert_eq!(
            r.header("x-auth-refresh-token"),
            Some(issued.refresh.as_str())
        );
        assert_eq!(echo.header("x-auth-user-id"), Some("erin@example.com"));
        let call = ts.last_initiate().unwrap();
        assert_eq!(call.header("x-api-key"), Some(KU_KEY));
        assert_eq!(
            call.json(),
            json!({"email": "erin@example.com", "externalId": "ext-erin", "name": ""})
        );

        // externalId only.
        let app2 = sign(&json!({"externalId": "ext-frank", "iat": now()}), KU_SECRET);
        let r = send(c.get(sc.url(PATH)).header("x-app-identity", &app2)).await;
        assert_eq!(r.ok_echo().header("x-auth-user-id"), Some("ext-frank"));
        assert_eq!(
            ts.last_initiate().unwrap().json(),
            json!({"email": "", "externalId": "ext-frank", "name": ""})
        );

        // Later: the access token expired, the refresh token lives: a refresh.
        let old = ts.expired_pair("ext-frank");
        let r = send(
            c.get(sc.url(PATH))
                .bearer_auth(&old.access)
                .header("x-refresh-token", &old.refresh),
        )
        .await;
        assert_eq!(r.ok_echo().header("x-auth-user-id"), Some("ext-frank"));
        assert_eq!(ts.refresh_calls(), 1);

        // An identity token older than 15 minutes starts nothing.
        let calls = ts.calls();
        let late = sign(
            &json!({"email": "erin@example.com", "iat": now() - 16 * 60}),
            KU_SECRET,
        );
        let r = send(c.get(sc.url(PATH)).header("x-app-identity", &late)).await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(ts.calls(), calls);
        for echo in backend.seen() {
            assert_backend_clean(&echo, &[KU_KEY, &app, &app2, &old.refresh]);
        }
    })
    .await
}
