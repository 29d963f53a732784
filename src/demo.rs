//! DEV ONLY: `auth-sidecar demo` and `auth-sidecar token`. The demo runs the real proxy
//! with a built-in echo backend and a built-in dev token service, both reachable only
//! from the `demo` subcommand: nothing here can be switched on in the normal run mode.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use auth_sidecar::config::{Config, EnvSource, ProcessEnv};
use auth_sidecar::token::now_secs;

/// Lifetime of tokens the dev token service issues: short, so the lifecycle is visible.
const DEV_ACCESS_TTL: u64 = 30;
const DEV_REFRESH_TTL: u64 = 60;
/// Lifetime of the valid access token the walkthrough prints (long enough to paste).
const PRINTED_ACCESS_TTL: u64 = 900;

/// The shipped config, used when the config file is not there (e.g. run from elsewhere).
const EMBEDDED_CONFIG: &str = include_str!("../config.toml");

/// Mints an HS256 token with the claims the sidecar expects.
pub fn mint(secret: &[u8], cfg: &Config, sub: &str, extra: &[(&str, Value)], exp: i64) -> String {
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), json!(sub));
    claims.insert("iat".into(), json!(now_secs()));
    claims.insert("exp".into(), json!(exp));
    if let Some(iss) = &cfg.auth.issuer {
        claims.insert("iss".into(), json!(iss));
    }
    if let Some(aud) = cfg.auth.audience.first() {
        claims.insert("aud".into(), json!(aud));
    }
    for (k, v) in extra {
        claims.insert((*k).to_string(), v.clone());
    }
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut b = vec![0u8; n];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !ok {
        use std::hash::{BuildHasher, Hasher};
        for (i, x) in b.iter_mut().enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            *x = h.finish() as u8;
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `auth-sidecar token`: mints a token from the config's HMAC secret (dev helper).
pub fn token_command(
    path: &Path,
    sub: &str,
    email: Option<&str>,
    name: Option<&str>,
    ttl: Duration,
) -> Result<String, String> {
    let cfg = Config::load(path, &ProcessEnv).map_err(|e| e.to_string())?;
    let secret = cfg
        .auth
        .hmac_secret
        .as_ref()
        .ok_or("the config has no auth.hmac_secret to sign with")?;
    let mut extra = Vec::new();
    if let Some(e) = email {
        extra.push(("email", json!(e)));
    }
    if let Some(n) = name {
        extra.push(("name", json!(n)));
    }
    Ok(mint(
        &secret.0,
        &cfg,
        sub,
        &extra,
        (now_secs() + ttl.as_secs()) as i64,
    ))
}

/// The dev token service's memory of refresh tokens.
#[derive(Default)]
struct DevTokens {
    refresh: HashMap<String, (String, u64, bool)>,
}

struct Demo {
    secret: Vec<u8>,
    api_key: String,
    cfg: Config,
    tokens: Mutex<DevTokens>,
}

impl Demo {
    fn issue(&self, sub: &str) -> (String, String) {
        let now = now_secs();
        let access = mint(
            &self.secret,
            &self.cfg,
            sub,
            &[
                ("name", json!(sub)),
                ("email", json!(format!("{sub}@example.test"))),
            ],
            (now + DEV_ACCESS_TTL) as i64,
        );
        let refresh = format!("rt-{}", random_hex(16));
        if let Ok(mut t) = self.tokens.lock() {
            t.refresh.insert(
                refresh.clone(),
                (sub.to_string(), now + DEV_REFRESH_TTL, false),
            );
        }
        (access, refresh)
    }
}

/// `auth-sidecar demo`: the proxy on the shipped config, an echo backend, a dev token
/// service, and a printed walkthrough.
pub async fn run_demo(config_path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config_path).unwrap_or_else(|_| EMBEDDED_CONFIG.to_string());
    let secret = random_hex(32);
    let api_key = random_hex(16);
    let backend = TcpListener::bind("127.0.0.1:0").await?;
    let tokens = TcpListener::bind("127.0.0.1:0").await?;
    let (backend_addr, tokens_addr) = (backend.local_addr()?, tokens.local_addr()?);

    let mut env: BTreeMap<String, String> = ProcessEnv.vars().into_iter().collect();
    let defaults = [
        ("AUTH_SIDECAR_HMAC_SECRET", secret.clone()),
        ("AUTH_SIDECAR_DEMO_API_KEY", api_key.clone()),
        (
            "AUTH_SIDECAR__BACKEND__URL",
            format!("http://{backend_addr}"),
        ),
        (
            "AUTH_SIDECAR__REFRESH__URL",
            format!("http://{tokens_addr}/refresh"),
        ),
        (
            "AUTH_SIDECAR__INITIATE__URL",
            format!("http://{tokens_addr}/initiate"),
        ),
        (
            "AUTH_SIDECAR__INITIATE__API_KEY",
            "{ env = \"AUTH_SIDECAR_DEMO_API_KEY\" }".into(),
        ),
    ];
    for (k, v) in defaults {
        env.insert(k.into(), v);
    }
    let base = config_path.parent().unwrap_or(Path::new("."));
    let cfg = Config::from_toml(&text, base, &env).map_err(|e| anyhow::anyhow!("{e}"))?;
    auth_sidecar::telemetry::init(&cfg.log);
    let demo = Arc::new(Demo {
        secret: secret.clone().into_bytes(),
        api_key,
        cfg: cfg.clone(),
        tokens: Mutex::new(DevTokens::default()),
    });
    tokio::spawn(serve_plain(backend, Arc::new(|req| Box::pin(echo(req)))));
    let d = demo.clone();
    tokio::spawn(serve_plain(
        tokens,
        Arc::new(move |req| Box::pin(token_service(d.clone(), req))),
    ));

    let server = auth_sidecar::Server::new(cfg)?;
    let bound = server.bind().await?;
    let proxy = bound.proxy.local_addr()?;
    let admin = bound.admin.as_ref().and_then(|a| a.local_addr().ok());
    print_walkthrough(&demo, proxy, admin);
    server.serve(None, bound).await
}

fn print_walkthrough(
    demo: &Demo,
    proxy: std::net::SocketAddr,
    admin: Option<std::net::SocketAddr>,
) {
    let now = now_secs() as i64;
    let who = |s: &str| {
        [
            ("name", json!(s)),
            ("email", json!(format!("{s}@example.test"))),
        ]
    };
    let valid = mint(
        &demo.secret,
        &demo.cfg,
        "alice",
        &who("alice"),
        now + PRINTED_ACCESS_TTL as i64,
    );
    let expired = mint(&demo.secret, &demo.cfg, "alice", &who("alice"), now - 60);
    let (_, live_refresh) = demo.issue("alice");
    // A refresh token the dev service will refuse, as if it had expired.
    let dead_refresh = format!("rt-expired-{}", random_hex(8));
    if let Ok(mut t) = demo.tokens.lock() {
        t.refresh
            .insert(dead_refresh.clone(), ("bob".into(), now as u64 - 1, false));
    }
    let expired_bob = mint(&demo.secret, &demo.cfg, "bob", &who("bob"), now - 120);
    let url = format!("http://{proxy}/api/me");
    println!(
        "auth-sidecar demo (DEV ONLY: built-in echo backend and dev token service, random secrets)"
    );
    println!(
        "proxy http://{proxy}  admin {}",
        admin.map(|a| format!("http://{a}")).unwrap_or("-".into())
    );
    println!(
        "The valid access token below lives {} min, the live refresh token {DEV_REFRESH_TTL}s \
         (run step 4 within that); tokens the dev token service issues on refresh or \
         initiate live {DEV_ACCESS_TTL}s (access) and {DEV_REFRESH_TTL}s (refresh). Paste these:\n",
        PRINTED_ACCESS_TTL / 60
    );
    let steps = [
        (
            "1. A valid access token: the backend sees who the caller is.",
            "expect: HTTP 200; the backend sees x-auth-user-id: alice",
            format!("curl -si {url} -H 'Authorization: Bearer {valid}'"),
        ),
        (
            "2. A spoofed identity header is stripped and replaced.",
            "expect: HTTP 200; the backend sees x-auth-user-id: alice",
            format!("curl -si {url} -H 'Authorization: Bearer {valid}' -H 'X-Auth-User-Id: mallory'"),
        ),
        (
            "3. A bad token is refused before the backend.",
            "expect: HTTP 401; response has x-auth-error: invalid_token",
            format!("curl -si {url} -H 'Authorization: Bearer not.a.token'"),
        ),
        (
            "4. An expired access token with a live refresh token is refreshed.",
            "expect: HTTP 200; response has x-auth-access-token",
            format!("curl -si {url} -H 'Authorization: Bearer {expired}' -H 'X-Refresh-Token: {live_refresh}'"),
        ),
        (
            "5. An expired refresh token: a new session is initiated server-side.",
            "expect: HTTP 200; response has x-auth-refresh-token",
            format!("curl -si {url} -H 'Authorization: Bearer {expired_bob}' -H 'X-Refresh-Token: {dead_refresh}'"),
        ),
        (
            "6. An expired token and no refresh token: the client must renew.",
            "expect: HTTP 401; response has x-auth-error: token_expired",
            format!("curl -si {url} -H 'Authorization: Bearer {expired}'"),
        ),
    ];
    for (title, expect, cmd) in steps {
        println!("# {title}\n#   {expect}\n{cmd}\n");
    }
    println!("# Mint your own: auth-sidecar token --sub carol --ttl 60s (needs AUTH_SIDECAR_HMAC_SECRET)");
    println!("# demo ready");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

async fn serve_plain(listener: TcpListener, handler: Handler) {
    while let Ok((stream, _)) = listener.accept().await {
        let h = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json_response(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The echo backend: shows what the sidecar forwarded (identity headers included).
async fn echo(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str() != "authorization")
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({ "backend": "demo echo", "method": req.method().as_str(), "path": req.uri().path(), "headers": headers }),
    )
}

/// The dev token service: `/refresh` (rotating refresh tokens) and `/initiate` (API key).
async fn token_service(demo: Arc<Demo>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, 16 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_response(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"}))
        }
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match (parts.method, parts.uri.path()) {
        (Method::POST, "/refresh") => {
            let rt = v
                .get("refresh_token")
                .and_then(|r| r.as_str())
                .unwrap_or("");
            let sub = {
                let Ok(mut t) = demo.tokens.lock() else {
                    return json_response(StatusCode::INTERNAL_SERVER_ERROR, json!({}));
                };
                match t.refresh.get_mut(rt) {
                    Some((sub, exp, used)) if !*used && *exp > now_secs() => {
                        *used = true;
                        Some(sub.clone())
                    }
                    _ => None,
                }
            };
            match sub {
                Some(sub) => {
                    let (a, r) = demo.issue(&sub);
                    json_response(
                        StatusCode::OK,
                        json!({"access_token": a, "refresh_token": r}),
                    )
                }
                None => json_response(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"})),
            }
        }
        (Method::POST, "/initiate") => {
            let key = parts.headers.get("x-api-key").map(|k| k.as_bytes());
            if key != Some(demo.api_key.as_bytes()) {
                return json_response(StatusCode::UNAUTHORIZED, json!({"error": "bad api key"}));
            }
            let Some(user) = v
                .get("user_unique_id")
                .and_then(|u| u.as_str())
                .filter(|u| !u.is_empty())
            else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "user_unique_id required"}),
                );
            };
            let (a, r) = demo.issue(user);
            json_response(
                StatusCode::OK,
                json!({"success": true, "data": {"access_token": a, "refresh_token": r}}),
            )
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    }
}
