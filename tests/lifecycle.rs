//! The token lifecycle end to end: the real binary, a real backend, a real mock token
//! service (tests/common/token_service.rs), real sockets. Refresh (single flight, grace,
//! rotation and reuse detection), initiate (API key, body template, app identity), every
//! way the token service can fail, cookie mode, what the backend may never see, and a
//! log audit at trace level.

mod common;

use std::time::Duration;

use common::token_service::{Mode, Pair, Shape, TokenService};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const PATH: &str = "/api/messages";

// ---------------------------------------------------------------------------
// Rig
// ---------------------------------------------------------------------------

/// The mock token service, a backend and the sidecar with the lifecycle sections.
type LcRig = Rig<Backend, TokenService>;

async fn start_rig(f: impl FnOnce(&mut Lc)) -> LcRig {
    start_rig_with(|c| c, f).await
}

async fn start_rig_with(cfg: impl FnOnce(Cfg) -> Cfg, f: impl FnOnce(&mut Lc)) -> LcRig {
    let ts = TokenService::start(API_KEY).await;
    start_rig_on(ts, cfg, f).await
}

/// [`Lc::for_service`] changed by `f`, after the config changes of `cfg`.
async fn start_rig_on(
    ts: TokenService,
    cfg: impl FnOnce(Cfg) -> Cfg,
    f: impl FnOnce(&mut Lc),
) -> LcRig {
    Rig::builder()
        .token_service(ts)
        .cfg(cfg)
        .lifecycle(f)
        .start()
        .await
}

// ---------------------------------------------------------------------------
// Requests and assertions
// ---------------------------------------------------------------------------

/// What a client sends.
#[derive(Clone, Copy, Default)]
struct Creds<'a> {
    access: Option<&'a str>,
    refresh: Option<&'a str>,
    app: Option<&'a str>,
}

fn pair(p: &Pair) -> Creds<'_> {
    Creds {
        access: Some(&p.access),
        refresh: Some(&p.refresh),
        app: None,
    }
}

fn build(c: &reqwest::Client, sc: &Sidecar, creds: Creds<'_>) -> reqwest::RequestBuilder {
    let mut rb = c.get(sc.url(PATH));
    if let Some(a) = creds.access {
        rb = rb.bearer_auth(a);
    }
    if let Some(r) = creds.refresh {
        rb = rb.header("x-refresh-token", r);
    }
    if let Some(a) = creds.app {
        rb = rb.header("x-app-identity", a);
    }
    rb
}

async fn send(sc: &Sidecar, creds: Creds<'_>) -> Resp {
    common::send(build(&client(), sc, creds)).await
}

/// Asserts a 200 from the backend after a renewal; returns the new pair and the echo.
fn renewed(r: &Resp) -> (Pair, Echo) {
    let echo = r.ok_echo();
    let access = r
        .header("x-auth-access-token")
        .unwrap_or_else(|| panic!("no x-auth-access-token: {:?}", r.headers))
        .to_string();
    let refresh = r
        .header("x-auth-refresh-token")
        .unwrap_or_else(|| panic!("no x-auth-refresh-token: {:?}", r.headers))
        .to_string();
    let cc = r.header("cache-control").unwrap_or("");
    assert!(
        cc.contains("no-store"),
        "a response carrying tokens must not be stored: cache-control {cc:?}"
    );
    let expose = r
        .header("access-control-expose-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        expose.contains("x-auth-access-token") && expose.contains("x-auth-refresh-token"),
        "Access-Control-Expose-Headers must name the token headers: {expose:?}"
    );
    assert_eq!(
        echo.header("authorization"),
        Some(format!("Bearer {access}").as_str()),
        "the backend must get the new access token"
    );
    assert_no_lifecycle_headers(&echo);
    (Pair { access, refresh }, echo)
}

fn assert_no_lifecycle_headers(echo: &Echo) {
    for h in ["x-refresh-token", "x-app-identity", "x-api-key"] {
        assert!(
            echo.header(h).is_none(),
            "the backend saw `{h}`: {:?}",
            echo.headers
        );
    }
    assert!(
        echo.names_with_prefix("x-refresh").is_empty(),
        "the backend saw a refresh token header: {:?}",
        echo.headers
    );
}

/// Asserts the sidecar's 503 for an unavailable token service.
fn assert_unavailable(r: &Resp, ctx: &str) {
    assert_ne!(
        r.status, 401,
        "{ctx}: a token service outage must never be a 401 (it logs the user out)"
    );
    r.assert_error(503, "token_service_unavailable");
    let ra = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("{ctx}: 503 without Retry-After: {:?}", r.headers));
    let secs: u64 = ra
        .parse()
        .unwrap_or_else(|_| panic!("{ctx}: Retry-After {ra:?} is not delay-seconds"));
    assert!(secs >= 1, "{ctx}: Retry-After {secs}");
}

fn app_token(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Polls `cond` every 10 ms for up to `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `n` identical requests at once; returns every response.
async fn burst(sc: &Sidecar, n: usize, creds: Creds<'_>) -> Vec<Resp> {
    let c = client();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let rb = build(&c, sc, creds);
        set.spawn(async move { common::send(rb).await });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(r.expect("request task panicked"));
    }
    out
}

// ---------------------------------------------------------------------------
// Refresh: single flight, grace, rotation
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_concurrent_requests_with_one_expired_pair_make_one_refresh_call() {
    bounded(async {
        let rig = start_rig(|_| {}).await;
        rig.ts.set_latency(Duration::from_millis(300));
        let old = rig.ts.expired_pair("alice");
        let resps = burst(&rig.sc, 500, pair(&old)).await;
        assert_eq!(resps.len(), 500);
        let issued = rig
            .ts
            .last_issued()
            .expect("the token service issued nothing");
        for r in &resps {
            let (p, echo) = renewed(r);
            assert_eq!(p, issued, "every response carries the one new pair");
            assert_eq!(echo.header("x-auth-user-id"), Some("alice"));
        }
        assert_eq!(rig.ts.refresh_calls(), 1, "single flight: one refresh call");
        assert_eq!(rig.ts.initiate_calls(), 0);
        assert_eq!(rig.backend.count(), 500);
        assert_ne!(
            issued.refresh, old.refresh,
            "the service rotated the refresh token"
        );
        assert!(rig.ts.is_used(&old.refresh));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_call_sends_the_refresh_token_in_the_default_template() {
    bounded(async {
        let rig = start_rig(|_| {}).await;
        let old = rig.ts.expired_pair("alice");
        let r = send(&rig.sc, pair(&old)).await;
        let (new, echo) = renewed(&r);
        assert_eq!(echo.header("x-auth-user-id"), Some("alice"));
        assert_eq!(echo.header("x-auth-email"), Some("alice@example.com"));
        let call = rig.ts.last_refresh().expect("no refresh call");
        assert_eq!(call.method, "POST");
        assert_eq!(call.json(), json!({"refresh_token": old.refresh}));
        assert!(call
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")));
        assert!(
            call.header("x-api-key").is_none(),
            "the initiate API key must not be sent on refresh"
        );
        // The new access token is valid: it passes as is, without another renewal.
        let r = send(
            &rig.sc,
            Creds {
                access: Some(&new.access),
                ..Default::default()
            },
        )
        .await;
        let echo = r.ok_echo();
        assert_eq!(echo.header("x-auth-user-id"), Some("alice"));
        assert!(r.header("x-auth-access-token").is_none());
        assert_eq!(rig.ts.refresh_calls(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_pair_within_grace_gets_the_same_new_pair_without_another_call() {
    bounded(async {
        let rig = start_rig(|_| {}).await;
        let old = rig.ts.expired_pair("alice");
        let (first, _) = renewed(&send(&rig.sc, pair(&old)).await);
        for i in 0..5 {
            let (again, _) = renewed(&send(&rig.sc, pair(&old)).await);
            assert_eq!(again, first, "request {i} with the old pair within grace");
        }
        assert_eq!(rig.ts.refresh_calls(), 1, "grace: no further refresh calls");
        assert_eq!(rig.ts.initiate_calls(), 0);
        assert_eq!(rig.backend.count(), 6);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_grace_the_old_pair_trips_reuse_detection() {
    bounded(async {
        let rig = start_rig(|lc| {
            lc.no_initiate().refresh("grace", "\"1s\"");
        })
        .await;
        let old = rig.ts.expired_pair("alice");
        renewed(&send(&rig.sc, pair(&old)).await);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = send(&rig.sc, pair(&old)).await;
        r.assert_error(401, "refresh_rejected");
        assert_eq!(
            rig.ts.refresh_calls(),
            2,
            "after grace the old refresh token goes to the service (and is refused as reused)"
        );
        assert_eq!(rig.backend.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_template_api_key_and_pointers_are_used() {
    bounded(async {
        let mut shape = Shape::default_with_key(API_KEY);
        shape.refresh_path = "/oauth/token".into();
        shape.refresh_token_field = "/token".into();
        shape.refresh_api_key = Some(("x-client-key".into(), "refresh-client-key-123456".into()));
        shape.refresh_access_ptr = "/result/at".into();
        shape.refresh_refresh_ptr = Some("/result/rt".into());
        let ts = TokenService::start_with(shape).await;
        let rig = start_rig_on(
            ts,
            |c| c.env("TEST_REFRESH_KEY", "refresh-client-key-123456"),
            |lc| {
                lc.refresh(
                    "body",
                    &q(r#"{"grant_type": "refresh_token", "token": "{refresh_token}"}"#),
                )
                .refresh("api_key_header", "\"x-client-key\"")
                .refresh("api_key", "{ env = \"TEST_REFRESH_KEY\" }")
                .refresh("access_token_pointer", "\"/result/at\"")
                .refresh("refresh_token_pointer", "\"/result/rt\"");
            },
        )
        .await;
        let old = rig.ts.expired_pair("alice");
        let (new, echo) = renewed(&send(&rig.sc, pair(&old)).await);
        assert_eq!(new, rig.ts.last_issued().unwrap());
        assert!(
            echo.headers
                .iter()
                .all(|(_, v)| !v.contains("refresh-client-key-123456")),
            "the refresh API key reached the backend"
        );
        let call = rig.ts.last_refresh().unwrap();
        assert_eq!(
            call.json(),
            json!({"grant_type": "refresh_token", "token": old.refresh})
        );
        assert_eq!(
            call.header("x-client-key"),
            Some("refresh-client-key-123456")
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_encoded_refresh_template_is_percent_encoded() {
    bounded(async {
        let rig = start_rig(|lc| {
            lc.refresh("content_type", "\"application/x-www-form-urlencoded\"")
                .refresh(
                    "body",
                    "\"grant_type=refresh_token&refresh_token={refresh_token}\"",
                );
        })
        .await;
        let old = rig.ts.expired_pair("alice");
        let (new, _) = renewed(&send(&rig.sc, pair(&old)).await);
        assert_eq!(new, rig.ts.last_issued().unwrap());
        let call = rig.ts.last_refresh().unwrap();
        assert_eq!(
            call.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert!(call
            .body
            .starts_with("grant_type=refresh_token&refresh_token="));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_does_not_rotate_keeps_the_old_refresh_token() {
    bounded(async {
        let mut shape = Shape::default_with_key(API_KEY);
        shape.refresh_refresh_ptr = None;
        let ts = TokenService::start_with(shape).await;
        let rig = start_rig_on(ts, |c| c, |_| {}).await;
        let old = rig.ts.expired_pair("alice");
        let (new, _) = renewed(&send(&rig.sc, pair(&old)).await);
        assert_ne!(new.access, old.access);
        assert_eq!(
            new.refresh, old.refresh,
            "no new refresh token in the answer: the old one stays in force"
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// Rejected refresh → initiate
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_refresh_initiates_once_with_the_api_key_and_the_claims() {
    bounded(async {
        let rig = start_rig(|_| {}).await;
        let mut old = rig.ts.expired_pair("alice");
        old.refresh = "rt-this-one-was-never-issued".into();
        let r = send(&rig.sc, pair(&old)).await;
        let (new, echo) = renewed(&r);
        assert_eq!(rig.ts.refresh_calls(), 1);
        assert_eq!(rig.ts.initiate_calls(), 1, "exactly one initiate call");
        assert_eq!(new, rig.ts.last_issued().unwrap());
        assert_eq!(echo.header("x-auth-user-id"), Some("alice"));
        let call = rig.ts.last_initiate().unwrap();
        assert_eq!(call.method, "POST");
        assert_eq!(call.header("x-api-key"), Some(API_KEY));
        assert_eq!(
            call.json(),
            json!({"user_unique_id": "alice", "user_name": "User alice"}),
            "the default initiate body, filled from the verified claims"
        );
        // The new session is usable at once, and its refresh token is live.
        assert!(!rig.ts.is_used(&new.refresh));
        let echo = send(
            &rig.sc,
            Creds {
                access: Some(&new.access),
                ..Default::default()
            },
        )
        .await
        .ok_echo();
        assert_eq!(echo.header("x-auth-user-id"), Some("alice"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_of_refusal_is_a_rejection() {
    bounded(async {
        // Without initiate: each refusal form is a 401 refresh_rejected.
        let rig = start_rig(|lc| {
            lc.no_initiate();
        })
        .await;
        for status in [400u16, 401, 403, 200] {
            rig.ts.set_refresh_mode(Mode::Reject(status));
            let old = rig.ts.expired_pair("alice");
            let r = send(&rig.sc, pair(&old)).await;
            assert_ne!(
                r.status,
                503,
                "refusal {status} read as an outage: {}",
                r.text()
            );
            r.assert_error(401, "refresh_rejected");
        }
        assert_eq!(rig.backend.count(), 0);
        drop(rig);

        // With initiate: each refusal form leads to one initiate call.
        let rig = start_rig(|_| {}).await;
        for (i, status) in [400u16, 401, 403, 200].into_iter().enumerate() {
            rig.ts.set_refresh_mode(Mode::Reject(status));
            let user = format!("user-{status}");
            let old = rig.ts.expired_pair(&user);
            let (_, echo) = renewed(&send(&rig.sc, pair(&old)).await);
            assert_eq!(echo.header("x-auth-user-id"), Some(user.as_str()));
            assert_eq!(rig.ts.initiate_calls(), i + 1, "refusal {status}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_refresh_token_is_remembered_for_rejected_ttl() {
    bounded(async {
        let rig = start_rig(|lc| {
            lc.no_initiate().refresh("rejected_ttl", "\"1s\"");
        })
        .await;
        let mut old = rig.ts.expired_pair("alice");
        old.refresh = "rt-dead-dead-dead".into();
        for _ in 0..5 {
            send(&rig.sc, pair(&old))
                .await
                .assert_error(401, "refresh_rejected");
        }
        assert_eq!(rig.ts.refresh_calls(), 1, "a rejected token is remembered");
        tokio::time::sleep(Duration::from_millis(1400)).await;
        send(&rig.sc, pair(&old))
            .await
            .assert_error(401, "refresh_rejected");
        assert_eq!(
            rig.ts.refresh_calls(),
            2,
            "and forgotten after rejected_ttl"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_with_a_dead_refresh_token_initiate_once() {
    bounded(async {
        let rig = start_rig(|_| {}).await;
        rig.ts.set_latency(Duration::from_millis(200));
        let mut old = rig.ts.expired_pair("alice");
        old.refresh = "rt-revoked-by-the-vendor".into();
        let resps = burst(&rig.sc, 50, pair(&old)).await;
        let issued = rig.ts.last_issued().expect("nothing issued");
        for r in &resps {
            let (p, echo) = renewed(r);
            assert_eq!(p, issued);
            assert_eq!(echo.header("x-auth-user-id"), Some("alice"));
        }
        assert_eq!(
            rig.ts.initiate_calls(),
            1,
            "one initiate per user at a time"
        );
        assert_eq!(
            rig.ts.refresh_calls(),
            1,
            "one refresh call per refresh token"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_without_a_refresh_token_is_token_expired() {
    bounded(async {
        let rig = start_rig(|_| {}).await;
        let old = rig.ts.expired_pair("alice");
        let r = send(
            &rig.sc,
            Creds {
                access: Some(&old.access),
                ..Default::default()
            },
        )
        .await;
        r.assert_error(401, "token_expired");
        assert_eq!(rig.ts.calls(), 0);
        assert_eq!(rig.backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_initiate_a_rejected_refresh_is_refresh_rejected() {
    bounded(async {
        let rig = start_rig(|lc| {
            lc.no_initiate();
        })
        .await;
        let mut old = rig.ts.expired_pair("alice");
        old.refresh = "rt-unknown".into();
        send(&rig.sc, pair(&old))
            .await
            .assert_error(401, "refresh_rejected");
        assert_eq!(rig.backend.count(), 0);
    })
    .await
}

// ---------------------------------------------------------------------------
// App identity tokens
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_identity_token_starts_a_session_and_email_wins_over_external_id() {
    bounded(async {
        let rig = start_rig(|_| {}).await;
        let now = now();
        let both = app_token(
            &json!({"email": "bob@example.com", "externalId": "ext-bob", "name": "Bob", "iat": now}),
            APP_SECRET,
        );
        let r = send(
            &rig.sc,
            Creds {
                app: Some(&both),
                ..Default::default()
            },
        )
        .await;
        let (new, echo) = renewed(&r);
        assert_eq!(echo.header("x-auth-user-id"), Some("bob@example.com"));
        assert_eq!(new, rig.ts.last_issued().unwrap());
        let call = rig.ts.last_initiate().unwrap();
        assert_eq!(call.header("x-api-key"), Some(API_KEY));
        assert_eq!(
            call.json(),
            json!({"user_unique_id": "bob@example.com", "user_name": "Bob"}),
            "email wins over externalId"
        );

        let ext = app_token(&json!({"externalId": "ext-carol", "iat": now}), APP_SECRET);
        let r = send(
            &rig.sc,
            Creds {
                app: Some(&ext),
                ..Default::default()
            },
        )
        .await;
        let (_, echo) = renewed(&r);
        assert_eq!(echo.header("x-auth-user-id"), Some("ext-carol"));
        assert_eq!(
            rig.ts.last_initiate().unwrap().json()["user_unique_id"],
            json!("ext-carol")
        );
        assert_eq!(rig.ts.initiate_calls(), 2);
        assert_eq!(rig.ts.refresh_calls(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_initiate_template_gets_every_placeholder() {
    bounded(async {
        let mut shape = Shape::default_with_key(API_KEY);
        shape.identity_fields = vec!["/who/email".into()];
        let ts = TokenService::start_with(shape).await;
        let rig = start_rig_on(ts, |c| c, |lc| {
            lc.initiate(
                "body",
                &q(r#"{"who": {"email": "{email}", "ext": "{external_id}", "sub": "{sub}", "name": "{name}"}, "guest": false}"#),
            );
        })
        .await;
        let t = app_token(
            &json!({"email": "dora@example.com", "externalId": "ext-dora", "name": "Dora \"D\" Q", "iat": now()}),
            APP_SECRET,
        );
        let r = send(
            &rig.sc,
            Creds {
                app: Some(&t),
                ..Default::default()
            },
        )
        .await;
        renewed(&r);
        assert_eq!(
            rig.ts.last_initiate().unwrap().json(),
            json!({"who": {"email": "dora@example.com", "ext": "ext-dora", "sub": "dora@example.com", "name": "Dora \"D\" Q"}, "guest": false}),
            "placeholders are filled and JSON-escaped"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_app_identity_tokens_are_refused_without_calling_the_token_service() {
    bounded(async {
        let rig = start_rig(|_| {}).await;
        let now = now();
        let cases: Vec<(&str, String)> = vec![
            (
                "iat 16 minutes ago",
                app_token(
                    &json!({"email": "bob@example.com", "iat": now - 16 * 60}),
                    APP_SECRET,
                ),
            ),
            (
                "iat in the future",
                app_token(
                    &json!({"email": "bob@example.com", "iat": now + 600}),
                    APP_SECRET,
                ),
            ),
            (
                "no iat",
                app_token(&json!({"email": "bob@example.com"}), APP_SECRET),
            ),
            (
                "wrong secret",
                app_token(
                    &json!({"email": "bob@example.com", "iat": now}),
                    "another-app-secret-that-is-long-enough-0123",
                ),
            ),
            (
                "signed with the access-token secret",
                app_token(&json!({"email": "bob@example.com", "iat": now}), HS_SECRET),
            ),
            (
                "alg none",
                format!(
                    "{}.{}.",
                    b64_json(&json!({"alg": "none", "typ": "JWT"})),
                    b64_json(&json!({"email": "bob@example.com", "iat": now}))
                ),
            ),
            (
                "tampered payload",
                tamper_payload(
                    &app_token(&json!({"email": "bob@example.com", "iat": now}), APP_SECRET),
                    &json!({"email": "admin@example.com", "iat": now}),
                ),
            ),
            (
                "no identity",
                app_token(&json!({"iat": now, "name": "Nobody"}), APP_SECRET),
            ),
        ];
        for (what, t) in &cases {
            let r = send(
                &rig.sc,
                Creds {
                    app: Some(t),
                    ..Default::default()
                },
            )
            .await;
            assert_eq!(r.status, 401, "{what}: {} {}", r.status, r.text());
            assert!(r.header("x-auth-error").is_some(), "{what}");
            assert!(r.header("x-auth-access-token").is_none(), "{what}");
        }
        assert_eq!(
            rig.ts.calls(),
            0,
            "no token service call for a bad app token"
        );
        assert_eq!(rig.backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_app_identity_requests_for_one_user_initiate_once() {
    bounded(async {
        let rig = start_rig(|_| {}).await;
        rig.ts.set_latency(Duration::from_millis(200));
        let t = app_token(&json!({"externalId": "ext-erin", "iat": now()}), APP_SECRET);
        let resps = burst(
            &rig.sc,
            50,
            Creds {
                app: Some(&t),
                ..Default::default()
            },
        )
        .await;
        let issued = rig.ts.last_issued().unwrap();
        for r in &resps {
            assert_eq!(renewed(r).0, issued);
        }
        assert_eq!(rig.ts.initiate_calls(), 1);
    })
    .await
}

// ---------------------------------------------------------------------------
// Forged, unsigned and stale tokens: 401, and the token service is never asked
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unsigned_and_stale_tokens_never_reach_the_token_service() {
    bounded(async {
        let rig = start_rig(|lc| {
            lc.initiate("max_staleness", "\"5m\"")
                .initiate("when_refresh_token_missing", "true");
        })
        .await;
        let live = rig.ts.expired_pair("alice");
        let forged_sig = tamper_signature(&live.access);
        let forged_sub = tamper_payload(
            &live.access,
            &json!({"sub": "admin", "iat": now() - 1200, "exp": now() - 600}),
        );
        let none = format!(
            "{}.{}.",
            b64_json(&json!({"alg": "none", "typ": "JWT"})),
            b64_json(&json!({"sub": "alice", "iat": now() - 1200, "exp": now() - 600}))
        );
        let wrong_key = app_token(
            &json!({"sub": "alice", "iat": now() - 1200, "exp": now() - 600}),
            "not-the-access-token-secret-0123456789abcdef",
        );
        for (what, t) in [
            ("bad signature", &forged_sig),
            ("tampered sub", &forged_sub),
            ("alg none", &none),
            ("wrong key", &wrong_key),
        ] {
            for refresh in [Some(live.refresh.as_str()), None] {
                let r = send(
                    &rig.sc,
                    Creds {
                        access: Some(t),
                        refresh,
                        app: None,
                    },
                )
                .await;
                r.assert_error(401, "invalid_token");
                let _ = what;
            }
        }
        // Expired 10 minutes ago, max_staleness 5 minutes, no refresh token: too stale
        // to prove who the user is, even though initiate may run without a refresh token.
        let stale = rig.ts.expired_pair_for("alice", 600);
        let r = send(
            &rig.sc,
            Creds {
                access: Some(&stale.access),
                ..Default::default()
            },
        )
        .await;
        r.assert_error(401, "refresh_rejected");
        assert_eq!(rig.ts.calls(), 0, "no token service call for any of these");
        assert!(
            !rig.ts.is_used(&live.refresh),
            "the refresh token was not spent"
        );
        assert_eq!(rig.backend.count(), 0);

        // Recent enough (expired 1 minute ago): initiate without a refresh token works.
        let recent = rig.ts.expired_pair_for("alice", 60);
        let r = send(
            &rig.sc,
            Creds {
                access: Some(&recent.access),
                ..Default::default()
            },
        )
        .await;
        let (_, echo) = renewed(&r);
        assert_eq!(echo.header("x-auth-user-id"), Some("alice"));
        assert_eq!(rig.ts.initiate_calls(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_with_a_dead_refresh_token_does_not_initiate() {
    bounded(async {
        let rig = start_rig(|lc| {
            lc.initiate("max_staleness", "\"5m\"");
        })
        .await;
        let mut stale = rig.ts.expired_pair_for("alice", 600);
        stale.refresh = "rt-dead".into();
        send(&rig.sc, pair(&stale))
            .await
            .assert_error(401, "refresh_rejected");
        assert_eq!(rig.ts.refresh_calls(), 1);
        assert_eq!(rig.ts.initiate_calls(), 0, "too stale to prove the user");

        // A valid app identity token proves the user instead.
        let t = app_token(&json!({"externalId": "alice", "iat": now()}), APP_SECRET);
        let r = send(
            &rig.sc,
            Creds {
                access: Some(&stale.access),
                refresh: Some(&stale.refresh),
                app: Some(&t),
            },
        )
        .await;
        let (_, echo) = renewed(&r);
        assert_eq!(echo.header("x-auth-user-id"), Some("alice"));
        assert_eq!(rig.ts.initiate_calls(), 1);
    })
    .await
}

// ---------------------------------------------------------------------------
// Token service unavailable: 503, never 401, nothing cached
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unavailable_mode_is_a_503_and_the_pair_works_once_the_service_is_back() {
    bounded(async {
        let rig = start_rig(|lc| {
            lc.refresh("timeout", "\"700ms\"");
        })
        .await;
        let modes = [
            ("refused", None),
            ("hang", Some(Mode::Hang)),
            ("500", Some(Mode::Status500)),
            ("429", Some(Mode::Status429)),
            ("garbage", Some(Mode::Garbage)),
            ("oversized", Some(Mode::Oversized)),
        ];
        for (what, mode) in modes {
            let old = rig.ts.expired_pair(&format!("user-{what}"));
            match mode {
                None => rig.ts.refuse().await,
                Some(m) => rig.ts.set_mode(m),
            }
            let calls_before = rig.ts.refresh_calls();
            for attempt in 0..2 {
                let r = send(&rig.sc, pair(&old)).await;
                assert_unavailable(&r, &format!("{what} (attempt {attempt})"));
            }
            if mode == Some(Mode::Status429) {
                // A 429 (Retry-After: 1) stops calls for that long: the retry makes none.
                assert_eq!(rig.ts.refresh_calls() - calls_before, 1, "{what}");
            } else if mode.is_some() {
                assert_eq!(
                    rig.ts.refresh_calls() - calls_before,
                    2,
                    "{what}: a failure is not cached as an answer; each retry asks again"
                );
            }
            assert_eq!(
                rig.ts.initiate_calls(),
                0,
                "{what}: an outage is not a rejection"
            );
            assert!(!rig.ts.is_used(&old.refresh), "{what}");
            match mode {
                None => rig.ts.resume().await,
                Some(_) => rig.ts.set_mode(Mode::Normal),
            }
            if mode == Some(Mode::Status429) {
                tokio::time::sleep(Duration::from_millis(1100)).await;
            }
            let r = send(&rig.sc, pair(&old)).await;
            let (new, echo) = renewed(&r);
            assert_eq!(new, rig.ts.last_issued().unwrap(), "{what}");
            assert_eq!(
                echo.header("x-auth-user-id"),
                Some(format!("user-{what}").as_str())
            );
        }
        assert_eq!(rig.backend.count(), modes.len());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_initiate_is_a_503_too() {
    bounded(async {
        let rig = start_rig(|_| {}).await;
        let mut old = rig.ts.expired_pair("alice");
        old.refresh = "rt-dead".into();
        for mode in [Mode::Status500, Mode::Status429, Mode::Garbage] {
            rig.ts.set_initiate_mode(mode);
            let r = send(&rig.sc, pair(&old)).await;
            assert_unavailable(&r, &format!("initiate {mode:?}"));
        }
        let t = app_token(&json!({"externalId": "frank", "iat": now()}), APP_SECRET);
        let r = send(
            &rig.sc,
            Creds {
                app: Some(&t),
                ..Default::default()
            },
        )
        .await;
        assert_unavailable(&r, "app identity, initiate garbage");
        rig.ts.set_initiate_mode(Mode::Normal);
        // The 429 above (Retry-After: 1) stopped initiate calls for a second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (_, echo) = renewed(&send(&rig.sc, pair(&old)).await);
        assert_eq!(echo.header("x-auth-user-id"), Some("alice"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_max_response_bytes_is_unavailable() {
    bounded(async {
        // A normal refresh answer (two tokens) is a few hundred bytes: over a 200-byte cap.
        let rig = start_rig(|lc| {
            lc.refresh("max_response_bytes", "200");
        })
        .await;
        let old = rig.ts.expired_pair("alice");
        let r = send(&rig.sc, pair(&old)).await;
        assert_unavailable(&r, "answer over refresh.max_response_bytes");
        assert_eq!(rig.ts.refresh_calls(), 1);
        assert_eq!(rig.ts.initiate_calls(), 0);
        assert_eq!(rig.backend.count(), 0);
    })
    .await
}

// ---------------------------------------------------------------------------
// Bad answers: 502
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_user_or_with_the_wrong_key_is_a_502() {
    bounded(async {
        let rig = start_rig(|_| {}).await;
        rig.ts.set_refresh_mode(Mode::OtherUser);
        let old = rig.ts.expired_pair("alice");
        let r = send(&rig.sc, pair(&old)).await;
        r.assert_error(502, "token_service_bad_response");
        assert!(r.header("x-auth-access-token").is_none());
        assert!(!r.text().contains("ey"), "no token in the error body");

        rig.ts.set_refresh_mode(Mode::WrongKey);
        let old = rig.ts.expired_pair("bob");
        let r = send(&rig.sc, pair(&old)).await;
        r.assert_error(502, "token_service_bad_response");
        assert!(r.header("x-auth-access-token").is_none());

        assert_eq!(rig.backend.count(), 0, "nothing reaches the backend");
        assert_eq!(rig.ts.initiate_calls(), 0);
    })
    .await
}

// ---------------------------------------------------------------------------
// A client that goes away mid-refresh
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_refresh_does_not_lose_the_result() {
    bounded(async {
        let rig = start_rig(|lc| {
            lc.refresh("timeout", "\"5s\"");
        })
        .await;
        rig.ts.set_latency(Duration::from_secs(1));
        let old = rig.ts.expired_pair("alice");
        let impatient = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let gone = build(&impatient, &rig.sc, pair(&old)).send().await;
        assert!(
            gone.is_err(),
            "the client was meant to give up after 200 ms"
        );
        assert!(
            eventually(Duration::from_secs(5), || rig.ts.answered() >= 1).await,
            "the refresh call never completed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        rig.ts.set_latency(Duration::ZERO);
        let r = send(&rig.sc, pair(&old)).await;
        let (new, _) = renewed(&r);
        assert_eq!(
            new,
            rig.ts.last_issued().unwrap(),
            "the pair minted for the departed client is the one handed out"
        );
        assert_eq!(rig.ts.refresh_calls(), 1, "still exactly one refresh call");
    })
    .await
}

// ---------------------------------------------------------------------------
// Cookie mode
// ---------------------------------------------------------------------------

async fn cookie_rig() -> LcRig {
    start_rig_with(
        |c| c.auth("cookie", "\"chat_at\""),
        |lc| {
            lc.refresh("cookie", "\"chat_rt\"")
                .tokens("cookies", "true")
                .tokens("access_cookie", "\"chat_at\"")
                .tokens("refresh_cookie", "\"chat_rt\"")
                .tokens("cookie_same_site", "\"Strict\"");
        },
    )
    .await
}

async fn send_cookies(sc: &Sidecar, cookie: &str) -> Resp {
    common::send(client().get(sc.url(PATH)).header("cookie", cookie)).await
}

fn set_cookie<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.header_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no Set-Cookie for {name}: {:?}", r.headers))
}

fn cookie_value<'a>(set_cookie: &'a str, name: &str) -> &'a str {
    set_cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix(&format!("{name}="))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_mode_sets_http_only_secure_same_site_cookies() {
    bounded(async {
        let rig = cookie_rig().await;
        let old = rig.ts.expired_pair("alice");
        let r = send_cookies(
            &rig.sc,
            &format!("chat_at={}; chat_rt={}", old.access, old.refresh),
        )
        .await;
        let echo = r.ok_echo();
        assert_eq!(echo.header("x-auth-user-id"), Some("alice"));
        let issued = rig.ts.last_issued().unwrap();
        let at = set_cookie(&r, "chat_at");
        let rt = set_cookie(&r, "chat_rt");
        for c in [at, rt] {
            let attrs: Vec<String> = c
                .split(';')
                .map(|a| a.trim().to_ascii_lowercase())
                .collect();
            assert!(attrs.iter().any(|a| a == "httponly"), "HttpOnly: {c}");
            assert!(attrs.iter().any(|a| a == "secure"), "Secure: {c}");
            assert!(
                attrs.iter().any(|a| a == "samesite=strict"),
                "SameSite: {c}"
            );
            assert!(attrs.iter().any(|a| a == "path=/"), "Path: {c}");
        }
        assert_eq!(cookie_value(at, "chat_at"), issued.access);
        assert_eq!(cookie_value(rt, "chat_rt"), issued.refresh);
        assert!(
            r.header("cache-control").unwrap_or("").contains("no-store"),
            "{:?}",
            r.headers
        );
        assert!(
            r.header("x-auth-access-token").is_none() && r.header("x-auth-refresh-token").is_none(),
            "cookie mode keeps tokens out of script-readable headers: {:?}",
            r.headers
        );
        assert_eq!(
            echo.header("authorization"),
            Some(format!("Bearer {}", issued.access).as_str())
        );
        // The browser sends the new cookies back: allowed as is.
        let r = send_cookies(
            &rig.sc,
            &format!("chat_at={}; chat_rt={}", issued.access, issued.refresh),
        )
        .await;
        assert_eq!(r.ok_echo().header("x-auth-user-id"), Some("alice"));
        assert!(r.header_all("set-cookie").is_empty());
        assert_eq!(rig.ts.refresh_calls(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_mode_the_backend_never_sees_the_refresh_cookie() {
    bounded(async {
        let rig = cookie_rig().await;
        let old = rig.ts.expired_pair("alice");
        let r = send_cookies(
            &rig.sc,
            &format!(
                "theme=dark; chat_at={}; chat_rt={}",
                old.access, old.refresh
            ),
        )
        .await;
        let echo = r.ok_echo();
        let issued = rig.ts.last_issued().unwrap();
        for (k, v) in &echo.headers {
            assert!(
                !v.contains(&old.refresh) && !v.contains(&issued.refresh),
                "the backend saw a refresh token in `{k}: {v}`"
            );
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// What the backend may never see
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_never_sees_refresh_tokens_app_tokens_or_the_api_key() {
    bounded(async {
        let rig = start_rig(|_| {}).await;
        let mut secrets: Vec<String> = vec![API_KEY.into(), APP_SECRET.into()];

        // Refresh.
        let a = rig.ts.expired_pair("alice");
        let (new, _) = renewed(&send(&rig.sc, pair(&a)).await);
        secrets.extend([a.refresh.clone(), new.refresh.clone()]);
        // A valid token sent along with a refresh token: no renewal, header still removed.
        let r = send(
            &rig.sc,
            Creds {
                access: Some(&new.access),
                refresh: Some(&new.refresh),
                app: None,
            },
        )
        .await;
        r.ok_echo();
        // Rejected refresh → initiate.
        let mut b = rig.ts.expired_pair("bob");
        b.refresh = "rt-bob-dead-0001".into();
        let (nb, _) = renewed(&send(&rig.sc, pair(&b)).await);
        secrets.extend([b.refresh.clone(), nb.refresh.clone()]);
        // App identity (alone, and along with a valid token).
        let t = app_token(
            &json!({"email": "carol@example.com", "iat": now()}),
            APP_SECRET,
        );
        let (nc, _) = renewed(
            &send(
                &rig.sc,
                Creds {
                    app: Some(&t),
                    ..Default::default()
                },
            )
            .await,
        );
        secrets.extend([t.clone(), nc.refresh.clone()]);
        send(
            &rig.sc,
            Creds {
                access: Some(&nc.access),
                app: Some(&t),
                refresh: None,
            },
        )
        .await
        .ok_echo();
        // Odd spellings of the owned headers.
        let r = common::send(
            client()
                .get(rig.sc.url(PATH))
                .bearer_auth(&nc.access)
                .header("X-Refresh-Token", &nc.refresh)
                .header("x_refresh_token", &nc.refresh)
                .header("X_App_Identity", &t),
        )
        .await;
        r.ok_echo();

        let seen = rig.backend.seen();
        assert_eq!(seen.len(), 6);
        for echo in &seen {
            assert_no_lifecycle_headers(echo);
            assert!(
                echo.names_with_prefix("x-app").is_empty(),
                "{:?}",
                echo.headers
            );
            for (k, v) in &echo.headers {
                for s in &secrets {
                    assert!(!v.contains(s.as_str()), "the backend saw a secret in `{k}`");
                }
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Log audit
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_level_log_of_the_whole_lifecycle_holds_no_token_or_key() {
    bounded(async {
        let mut rig = start_rig_with(
            |c| c.log_level("trace"),
            |lc| {
                lc.refresh("timeout", "\"700ms\"");
            },
        )
        .await;
        let mut secrets: Vec<String> = vec![API_KEY.into(), APP_SECRET.into(), HS_SECRET.into()];
        fn remember(p: &Pair, s: &mut Vec<String>) {
            s.push(p.access.clone());
            s.push(signature_of(&p.access).to_string());
            if !p.refresh.is_empty() {
                s.push(p.refresh.clone());
            }
        }

        // Refresh, then the old pair within grace.
        let a = rig.ts.expired_pair("alice");
        remember(&a, &mut secrets);
        let (na, _) = renewed(&send(&rig.sc, pair(&a)).await);
        remember(&na, &mut secrets);
        renewed(&send(&rig.sc, pair(&a)).await);
        // The new token, used as is.
        send(
            &rig.sc,
            Creds {
                access: Some(&na.access),
                ..Default::default()
            },
        )
        .await
        .ok_echo();
        // Rejected refresh → initiate.
        let mut b = rig.ts.expired_pair("bob");
        b.refresh = "rt-bob-revoked-7c1d".into();
        remember(&b, &mut secrets);
        let (nb, _) = renewed(&send(&rig.sc, pair(&b)).await);
        remember(&nb, &mut secrets);
        // App identity.
        let t = app_token(
            &json!({"email": "carol@example.com", "iat": now()}),
            APP_SECRET,
        );
        secrets.push(t.clone());
        secrets.push(signature_of(&t).to_string());
        let (nc, _) = renewed(
            &send(
                &rig.sc,
                Creds {
                    app: Some(&t),
                    ..Default::default()
                },
            )
            .await,
        );
        remember(&nc, &mut secrets);
        // A too-old app token, a forged token, an outage, a bad answer.
        let old_app = app_token(
            &json!({"email": "carol@example.com", "iat": now() - 3600}),
            APP_SECRET,
        );
        secrets.push(old_app.clone());
        assert_eq!(
            send(
                &rig.sc,
                Creds {
                    app: Some(&old_app),
                    ..Default::default()
                },
            )
            .await
            .status,
            401
        );
        let d = rig.ts.expired_pair("dave");
        remember(&d, &mut secrets);
        let forged = tamper_signature(&d.access);
        secrets.push(forged.clone());
        send(
            &rig.sc,
            Creds {
                access: Some(&forged),
                refresh: Some(&d.refresh),
                app: None,
            },
        )
        .await
        .assert_error(401, "invalid_token");
        rig.ts.set_mode(Mode::Status500);
        assert_unavailable(&send(&rig.sc, pair(&d)).await, "500");
        rig.ts.set_mode(Mode::Hang);
        assert_unavailable(&send(&rig.sc, pair(&d)).await, "hang");
        rig.ts.set_mode(Mode::WrongKey);
        send(&rig.sc, pair(&d))
            .await
            .assert_error(502, "token_service_bad_response");
        rig.ts.set_mode(Mode::OtherUser);
        let e = rig.ts.expired_pair("erin");
        remember(&e, &mut secrets);
        send(&rig.sc, pair(&e))
            .await
            .assert_error(502, "token_service_bad_response");
        rig.ts.set_mode(Mode::Normal);
        for p in rig.ts.issued() {
            remember(&p, &mut secrets);
        }

        rig.sc.stop();
        let logs = rig.sc.logs();
        let lines = rig.sc.stdout_lines();
        let decisions: Vec<String> = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| common::sidecar::log_field(&v, "decision"))
            .collect();
        for want in ["refreshed", "initiated", "allowed", "rejected", "failed"] {
            assert!(
                decisions.iter().any(|d| d == want),
                "no access line with decision {want}: {decisions:?}"
            );
        }
        assert!(
            lines
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|v| matches!(v["level"].as_str(), Some("DEBUG" | "TRACE"))),
            "the log was not captured at debug/trace level"
        );
        for s in &secrets {
            assert!(s.len() >= 16, "a secret too short to search for: {s:?}");
            if let Some(line) = logs.lines().find(|l| l.contains(s.as_str())) {
                panic!(
                    "a token or key appears in the log (secret starting {:?}):\n{line}",
                    &s[..8]
                );
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// More of the contract
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_forward_authorization_the_backend_gets_identity_but_no_token() {
    bounded(async {
        let rig = start_rig_with(|c| c.auth("forward_authorization", "false"), |_| {}).await;
        let old = rig.ts.expired_pair("alice");
        let r = send(&rig.sc, pair(&old)).await;
        let echo = r.ok_echo();
        assert_eq!(echo.header("x-auth-user-id"), Some("alice"));
        assert!(
            echo.header("authorization").is_none(),
            "forward_authorization = false: no Authorization to the backend, got {:?}",
            echo.header("authorization")
        );
        let issued = rig.ts.last_issued().unwrap();
        assert_eq!(
            r.header("x-auth-access-token"),
            Some(issued.access.as_str())
        );
        assert_eq!(
            r.header("x-auth-refresh-token"),
            Some(issued.refresh.as_str())
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_cannot_inject_json_into_the_body_template() {
    bounded(async {
        let rig = start_rig(|lc| {
            lc.no_initiate();
        })
        .await;
        let old = rig.ts.expired_pair("alice");
        let evil = r#"x", "grant_type": "client_credentials", "scope": "admin\u0000"#;
        let r = send(
            &rig.sc,
            Creds {
                access: Some(&old.access),
                refresh: Some(evil),
                app: None,
            },
        )
        .await;
        r.assert_error(401, "refresh_rejected");
        let call = rig.ts.last_refresh().expect("no refresh call");
        assert_eq!(
            call.json(),
            json!({"refresh_token": evil}),
            "the refresh token must stay one JSON string: {}",
            call.body
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_and_initiate_both_refused_is_refresh_rejected() {
    bounded(async {
        let rig = start_rig(|_| {}).await;
        rig.ts.set_initiate_mode(Mode::Reject(403));
        let mut old = rig.ts.expired_pair("alice");
        old.refresh = "rt-dead".into();
        let r = send(&rig.sc, pair(&old)).await;
        r.assert_error(401, "refresh_rejected");
        assert_eq!(rig.ts.refresh_calls(), 1);
        assert_eq!(rig.ts.initiate_calls(), 1);
        let t = app_token(&json!({"externalId": "gina", "iat": now()}), APP_SECRET);
        let r = send(
            &rig.sc,
            Creds {
                app: Some(&t),
                ..Default::default()
            },
        )
        .await;
        r.assert_error(401, "refresh_rejected");
        assert_eq!(rig.backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_never_reaches_a_client() {
    bounded(async {
        let rig = start_rig(|_| {}).await;
        let mut resps = Vec::new();
        let mut old = rig.ts.expired_pair("alice");
        old.refresh = "rt-dead".into();
        resps.push(send(&rig.sc, pair(&old)).await);
        rig.ts.set_initiate_mode(Mode::Reject(401));
        let mut b = rig.ts.expired_pair("bob");
        b.refresh = "rt-dead-b".into();
        resps.push(send(&rig.sc, pair(&b)).await);
        rig.ts.set_initiate_mode(Mode::Status500);
        let mut c = rig.ts.expired_pair("carl");
        c.refresh = "rt-dead-c".into();
        resps.push(send(&rig.sc, pair(&c)).await);
        assert_eq!(resps[0].status, 200);
        assert_eq!(resps[1].status, 401);
        assert_eq!(resps[2].status, 503);
        for r in &resps {
            for (k, v) in &r.headers {
                assert!(
                    !v.contains(API_KEY),
                    "the API key is in the response header {k}"
                );
            }
            assert!(
                !r.text().contains(API_KEY),
                "the API key is in a response body"
            );
        }
    })
    .await
}

/// A backend that exposes a header of its own to browsers.
async fn exposing_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("access-control-expose-headers", "x-chat-cursor")
                            .header("x-chat-cursor", "42")
                            .header("x-backend", "expose")
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_the_headers_the_backend_exposes_to_browsers() {
    bounded(async {
        let ts = TokenService::start(API_KEY).await;
        let (addr, task) = exposing_backend().await;
        let Rig { ts, sc, .. } = Rig::builder()
            .backend(format!("http://{addr}"))
            .token_service(ts)
            .lifecycle(|lc| {
                lc.no_initiate();
            })
            .start()
            .await;
        let old = ts.expired_pair("alice");
        let r = send(&sc, pair(&old)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-backend"), Some("expose"));
        assert!(r.header("x-auth-access-token").is_some());
        let exposed: Vec<String> = r
            .header_all("access-control-expose-headers")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_ascii_lowercase())
            .collect();
        for want in [
            "x-auth-access-token",
            "x-auth-refresh-token",
            "x-chat-cursor",
        ] {
            assert!(
                exposed.iter().any(|e| e == want),
                "Access-Control-Expose-Headers lost `{want}`: {exposed:?}"
            );
        }
        task.abort();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failure_after_a_refresh_still_hands_out_the_new_pair() {
    bounded(async {
        // The token service has rotated the refresh token by the time the backend fails:
        // the client's old pair only lives for the grace window, so the new pair must
        // reach the client with the error, or a backend outage longer than the grace
        // window logs the user out.
        let ts = TokenService::start(API_KEY).await;
        let dead = refusing_addr();
        let Rig { ts, sc, .. } = Rig::builder()
            .backend(format!("http://{dead}"))
            .token_service(ts)
            .lifecycle(|lc| {
                lc.no_initiate();
            })
            .start()
            .await;
        let old = ts.expired_pair("alice");
        let r = send(&sc, pair(&old)).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.header("x-auth-error"), Some("backend_unavailable"));
        assert_eq!(ts.refresh_calls(), 1);
        assert!(
            ts.is_used(&old.refresh),
            "the service rotated the refresh token"
        );
        let issued = ts.last_issued().unwrap();
        assert_eq!(
            r.header("x-auth-access-token"),
            Some(issued.access.as_str()),
            "the new access token was lost with the backend's failure"
        );
        assert_eq!(
            r.header("x-auth-refresh-token"),
            Some(issued.refresh.as_str())
        );
    })
    .await
}
