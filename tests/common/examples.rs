//! The vendor example configs in `examples/` run by the tests: the config's path, the
//! env vars each one names (with test values), the overrides that point it at the test's
//! backend and mocks, and the vendor shapes of the generic mock token service.

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::backend::{Backend, Echo};
use super::rig::Rig;
use super::sidecar::{finish, Launch};
use super::token_service::{Shape, TokenService};
use super::tokens::HS_SECRET;

pub const PATH: &str = "/api/chatrooms";

pub fn example(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    assert!(p.is_file(), "missing {}", p.display());
    p
}

pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub struct Checked {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// `auth-sidecar check-config --config examples/<name>`, bounded by 20 s.
pub async fn check_example(name: &str, env: &[(String, String)]) -> Checked {
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
pub async fn run_example(
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
pub fn overrides(backend: &Backend) -> Vec<(String, String)> {
    env(&[
        ("AUTH_SIDECAR__BACKEND__URL", &backend.url()),
        ("AUTH_SIDECAR__SERVER__LISTEN", "127.0.0.1:0"),
        ("AUTH_SIDECAR__ADMIN__LISTEN", "127.0.0.1:0"),
        ("AUTH_SIDECAR__LOG__FORMAT", "json"),
    ])
}

pub fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn assert_backend_clean(echo: &Echo, secrets: &[&str]) {
    for h in ["x-refresh-token", "x-app-identity", "x-api-key"] {
        assert!(echo.header(h).is_none(), "the backend saw `{h}`");
    }
    for (k, v) in &echo.headers {
        for s in secrets {
            assert!(!v.contains(s), "the backend saw a secret in `{k}`");
        }
    }
}

pub const LM_KEY: &str = "lm-api-key-0f9e8d7c6b5a4f3e2d1c0b9a";
pub const MS_KEY: &str = "mindset-api-key-77aa66bb55cc44dd33ee";
pub const KU_KEY: &str = "chat-token-service-key-1a2b3c4d5e6f";
/// The secret of the app identity tokens in likeminds.toml.
pub const LM_APP_SECRET: &str = "likeminds-app-identity-secret-0123456789abcdef";
pub const KU_SECRET: &str = "kustomer-secret-key-for-identity-jwts-0123456789";

pub fn example_env(name: &str) -> Vec<(String, String)> {
    match name {
        "likeminds.toml" => env(&[
            ("LIKEMINDS_API_KEY", LM_KEY),
            ("LIKEMINDS_TOKEN_SECRET", HS_SECRET),
            ("APP_IDENTITY_SECRET", LM_APP_SECRET),
        ]),
        "mindset.toml" => env(&[
            ("MINDSET_API_KEY", MS_KEY),
            ("APP_SESSION_SECRET", HS_SECRET),
        ]),
        "kustomer.toml" => env(&[
            ("KUSTOMER_JWT_SECRET", KU_SECRET),
            ("CHAT_TOKEN_SERVICE_KEY", KU_KEY),
            ("CHAT_TOKEN_SECRET", HS_SECRET),
        ]),
        _ => unreachable!(),
    }
}

/// The binary running `examples/<name>` with `env`, in front of `backend`, with no
/// generic token service (the vendor mock is the test's own).
pub async fn run_example_alone(
    name: &str,
    backend: Backend,
    env: Vec<(String, String)>,
) -> Rig<Backend> {
    let path = example(name).to_string_lossy().into_owned();
    Rig::builder()
        .backend(backend)
        .args(["--config", &path])
        .envs(&env)
        .start()
        .await
}

/// LikeMinds: refresh and initiate answers under `/data` in a `{"success": true}`
/// envelope, initiate at `/sdk/initiate` with `user_unique_id` / `user_name`.
pub fn likeminds_shape() -> Shape {
    let mut s = Shape::default_with_key(LM_KEY);
    s.refresh_path = "/likeminds/refresh".into();
    s.refresh_access_ptr = "/data/access_token".into();
    s.refresh_refresh_ptr = Some("/data/refresh_token".into());
    s.initiate_path = "/sdk/initiate".into();
    s.identity_fields = vec!["/user_unique_id".into()];
    s.envelope = json!({"success": true});
    s
}

/// The Kustomer example's chat token service (the customer's own).
pub fn kustomer_shape() -> Shape {
    let mut s = Shape::default_with_key(KU_KEY);
    s.refresh_path = "/v1/token/refresh".into();
    s.initiate_path = "/v1/sessions".into();
    s.identity_fields = vec!["/email".into(), "/externalId".into()];
    s
}
