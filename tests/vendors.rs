//! The token endpoint (`[token_endpoint]`) of each vendor example, against a mock of
//! that vendor's API: LikeMinds' getTokens() (one initiate for many concurrent callers,
//! `is_guest` and the SDK platform headers), Mindset's opaque `authToken` (with
//! `addToAccounts`, `x-api-key` checked), Kustomer's `logIn(jwt)` minted and verifiable
//! with the secret; wrong API key, vendor down, vendor garbage → the documented codes;
//! the API key in no response; CORS preflights answered.

mod common;

use common::examples::*;
use common::token_service::{Mode, TokenService};
use common::vendors::{Mindset, VendorMode};
use common::*;
use common::{API_KEY, APP_SECRET};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

const LM_TOKENS: &str = "/likeminds/tokens";
const MS_TOKENS: &str = "/mindset/auth-token";
const KU_TOKENS: &str = "/kustomer/login-token";
const ORIGIN: &str = "https://app.example.com";

/// The likeminds example against a LikeMinds-shaped mock, with `extra` overrides.
async fn likeminds(extra: &[(&str, &str)]) -> Rig<Backend, TokenService> {
    let ts = TokenService::start_with(likeminds_shape()).await;
    let backend = Backend::start().await;
    let mut e = example_env("likeminds.toml");
    e.extend(overrides(&backend));
    e.extend(env(&[
        ("AUTH_SIDECAR__REFRESH__URL", &ts.refresh_url()),
        ("AUTH_SIDECAR__INITIATE__URL", &ts.initiate_url()),
        ("AUTH_SIDECAR__INITIATE__TIMEOUT", "1s"),
    ]));
    e.extend(env(extra));
    run_example("likeminds.toml", ts, backend, e).await
}

/// The mindset example against the Mindset mock (or `url` instead of it).
async fn mindset(api_key: &str, ms: &Mindset, url: Option<&str>) -> Rig<Backend> {
    let backend = Backend::start().await;
    let mut e = example_env("mindset.toml");
    e.retain(|(k, _)| k != "MINDSET_API_KEY");
    e.extend(env(&[("MINDSET_API_KEY", api_key)]));
    e.extend(overrides(&backend));
    let target = url.map(str::to_string).unwrap_or_else(|| ms.url());
    e.extend(env(&[
        ("AUTH_SIDECAR__INITIATE__URL", &target),
        ("AUTH_SIDECAR__INITIATE__TIMEOUT", "1s"),
    ]));
    run_example_alone("mindset.toml", backend, e).await
}

fn session_token(sub: &str, email: &str) -> String {
    sign(
        &json!({"sub": sub, "email": email, "iat": now(), "exp": now() + 600}),
        HS_SECRET,
    )
}

/// What every answer of the endpoint must be: the sidecar's, never cacheable, never
/// holding `secret`.
fn assert_own_and_clean(r: &Resp, secret: &str) {
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "{:?}",
        r.headers
    );
    assert_ne!(
        r.header("x-backend"),
        Some("test"),
        "answered by the backend"
    );
    for (k, v) in &r.headers {
        assert!(!v.contains(secret), "the API key is in the header {k}");
    }
    assert!(!r.text().contains(secret), "the API key is in the body");
}

fn json_ok(r: &Resp) -> Value {
    assert_eq!(r.status, 200, "{} {:?}", r.text(), r.headers);
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

// ---------------------------------------------------------------------------
// LikeMinds
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn likeminds_get_tokens_is_one_initiate_for_many_concurrent_callers() {
    bounded(async {
        let rig = likeminds(&[]).await;
        rig.ts.set_latency(std::time::Duration::from_millis(200));
        let app = sign(
            &json!({"externalId": "lm-7", "name": "Guest Seven", "is_guest": true, "iat": now()}),
            LM_APP_SECRET,
        );
        let c = client();
        let calls = (0..40).map(|_| {
            let (c, url, app) = (c.clone(), rig.sc.url(LM_TOKENS), app.clone());
            tokio::spawn(async move { send(c.post(url).header("x-app-identity", app)).await })
        });
        let mut answers = Vec::new();
        for h in calls {
            answers.push(h.await.unwrap());
        }
        assert_eq!(rig.ts.initiate_calls(), 1, "one initiate for 40 callers");
        let issued = rig.ts.last_issued().unwrap();
        for r in &answers {
            assert_own_and_clean(r, LM_KEY);
            let v = json_ok(r);
            assert_eq!(
                v,
                json!({"accessToken": issued.access, "refreshToken": issued.refresh})
            );
        }
        let call = rig.ts.last_initiate().unwrap();
        assert_eq!(call.path, "/sdk/initiate");
        assert_eq!(call.header("x-api-key"), Some(LM_KEY));
        assert_eq!(call.header("x-platform-code"), Some("rt"));
        assert_eq!(call.header("x-version-code"), Some("1"));
        assert_eq!(call.header("x-sdk-source"), Some("chat"));
        assert_eq!(
            call.json(),
            json!({"user_unique_id": "lm-7", "user_name": "Guest Seven", "is_guest": true})
        );

        // onRefreshTokenExpired with the expired LikeMinds access token as the proof:
        // a user, not a guest.
        let old = rig.ts.expired_pair("lm-8");
        let r = send(c.get(rig.sc.url(LM_TOKENS)).bearer_auth(&old.access)).await;
        assert_own_and_clean(&r, LM_KEY);
        let v = json_ok(&r);
        let issued = rig.ts.last_issued().unwrap();
        assert_eq!(v["accessToken"], json!(issued.access));
        assert_eq!(
            rig.ts.last_initiate().unwrap().json(),
            json!({"user_unique_id": "lm-8", "user_name": "User lm-8", "is_guest": false})
        );
        assert_eq!(rig.ts.initiate_calls(), 2);
        // The endpoint forwards nothing.
        assert_eq!(rig.backend.count(), 0);
        assert!(!rig.sc.logs().contains(LM_KEY), "the API key is in the log");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn likeminds_get_tokens_refusals_follow_the_error_contract() {
    bounded(async {
        let rig = likeminds(&[]).await;
        let c = client();
        let url = rig.sc.url(LM_TOKENS);
        let app_for = |who: &str| sign(&json!({"externalId": who, "iat": now()}), LM_APP_SECRET);
        let mut seen = Vec::new();

        // No proof, a forged proof, a stale one, a wrong method.
        let r = send(c.post(&url)).await;
        r.assert_error(401, "missing_token");
        seen.push(r);
        let forged = sign(&json!({"externalId": "lm-x", "iat": now()}), HS_SECRET);
        let r = send(c.post(&url).header("x-app-identity", forged)).await;
        r.assert_error(401, "invalid_token");
        seen.push(r);
        let stale = rig.ts.expired_pair_for("lm-old", 8 * 86400);
        let r = send(c.post(&url).bearer_auth(&stale.access)).await;
        r.assert_error(401, "refresh_rejected");
        seen.push(r);
        let r = send(c.put(&url).header("x-app-identity", app_for("lm-put"))).await;
        r.assert_error(405, "method_not_allowed");
        seen.push(r);
        assert_eq!(rig.ts.initiate_calls(), 0);

        // Vendor garbage, vendor 5xx, vendor down: 503 + Retry-After, never a 401.
        for (i, mode) in [Mode::Garbage, Mode::Status500].into_iter().enumerate() {
            rig.ts.set_initiate_mode(mode);
            let r = send(
                c.post(&url)
                    .header("x-app-identity", app_for(&format!("lm-{i}"))),
            )
            .await;
            r.assert_error(503, "token_service_unavailable");
            assert!(
                r.header("retry-after").is_some(),
                "{mode:?}: no Retry-After"
            );
            seen.push(r);
        }
        rig.ts.set_initiate_mode(Mode::Normal);
        rig.ts.refuse().await;
        let r = send(c.post(&url).header("x-app-identity", app_for("lm-down"))).await;
        r.assert_error(503, "token_service_unavailable");
        assert!(r.header("retry-after").is_some());
        seen.push(r);
        for r in &seen {
            assert_own_and_clean(r, LM_KEY);
        }
        assert_eq!(rig.backend.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn likeminds_wrong_api_key_is_refresh_rejected_and_never_echoed() {
    bounded(async {
        const WRONG: &str = "lm-wrong-api-key-000000000000000";
        let rig = likeminds(&[("LIKEMINDS_API_KEY", WRONG)]).await;
        let app = sign(&json!({"externalId": "lm-9", "iat": now()}), LM_APP_SECRET);
        let r = send(
            client()
                .post(rig.sc.url(LM_TOKENS))
                .header("x-app-identity", app),
        )
        .await;
        r.assert_error(401, "refresh_rejected");
        assert_own_and_clean(&r, WRONG);
        assert_eq!(rig.ts.initiate_calls(), 1);
        assert_eq!(
            rig.ts.last_initiate().unwrap().header("x-api-key"),
            Some(WRONG)
        );
        // The operator sees why; the key itself is in no log line.
        let logs = rig.sc.logs();
        assert!(logs.contains("check initiate.api_key"), "{logs}");
        assert!(!logs.contains(WRONG), "the API key is in the log");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_answers_cors_preflights_and_carries_cors_headers() {
    bounded(async {
        let origins = format!("[\"{ORIGIN}\"]");
        let rig = likeminds(&[("AUTH_SIDECAR__CORS__ALLOWED_ORIGINS", &origins)]).await;
        let c = client();
        let url = rig.sc.url(LM_TOKENS);
        let r = send(
            c.request(reqwest::Method::OPTIONS, &url)
                .header("origin", ORIGIN)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "x-app-identity, content-type",
                ),
        )
        .await;
        assert_eq!(r.status, 204, "{:?}", r.headers);
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        let methods = r.header("access-control-allow-methods").unwrap_or("");
        assert!(methods.contains("POST"), "{methods}");
        let allowed = r.header("access-control-allow-headers").unwrap_or("");
        assert!(
            allowed.contains("x-app-identity") && allowed.contains("content-type"),
            "{allowed}"
        );
        assert_eq!(r.header("cache-control"), Some("no-store"));

        // Another origin: refused, without CORS headers.
        let r = send(
            c.request(reqwest::Method::OPTIONS, &url)
                .header("origin", "https://evil.example")
                .header("access-control-request-method", "POST"),
        )
        .await;
        assert_eq!(r.status, 403);
        assert!(r.header("access-control-allow-origin").is_none());

        // The answer itself, and a refusal, are readable by the page.
        let app = sign(
            &json!({"externalId": "lm-cors", "iat": now()}),
            LM_APP_SECRET,
        );
        let r = send(
            c.post(&url)
                .header("origin", ORIGIN)
                .header("x-app-identity", app),
        )
        .await;
        json_ok(&r);
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        let r = send(c.post(&url).header("origin", ORIGIN)).await;
        r.assert_error(401, "missing_token");
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        let expose = r.header("access-control-expose-headers").unwrap_or("");
        assert!(expose.contains("x-auth-error"), "{expose}");
        assert_eq!(rig.backend.count(), 0, "a preflight reached the backend");
        assert_eq!(rig.ts.initiate_calls(), 1);
    })
    .await
}

// ---------------------------------------------------------------------------
// Mindset
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mindset_auth_token_is_opaque_with_add_to_accounts_and_one_call_per_user() {
    bounded(async {
        let ms = Mindset::start(MS_KEY).await;
        ms.set_latency(std::time::Duration::from_millis(200));
        let rig = mindset(MS_KEY, &ms, None).await;
        let c = client();
        let session = session_token("u-dana", "dana@example.com");
        let calls = (0..20).map(|_| {
            let (c, url, t) = (c.clone(), rig.sc.url(MS_TOKENS), session.clone());
            tokio::spawn(async move { send(c.post(url).bearer_auth(t)).await })
        });
        let mut answers = Vec::new();
        for h in calls {
            answers.push(h.await.unwrap());
        }
        assert_eq!(ms.calls(), 1, "one Mindset call for 20 callers");
        let (email, token) = ms.issued().pop().unwrap();
        assert_eq!(email, "dana@example.com");
        assert!(!token.contains('.'), "the mock's authToken is opaque");
        for r in &answers {
            assert_own_and_clean(r, MS_KEY);
            assert_eq!(json_ok(r), json!({"authToken": token}));
        }
        let call = &ms.requests()[0];
        assert_eq!(call.method, "POST");
        assert_eq!(call.path, "/api-authenticate-embedded-user");
        assert_eq!(call.header("x-api-key"), Some(MS_KEY));
        assert_eq!(call.header("content-type"), Some("application/json"));
        assert_eq!(
            call.json(),
            json!({"userEmail": "dana@example.com", "addToAccounts": [{"accountUid": "REPLACE-ACCOUNT-UID"}]})
        );
        assert_eq!(rig.backend.count(), 0);
        assert!(!rig.sc.logs().contains(MS_KEY), "the API key is in the log");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mindset_wrong_key_down_and_garbage_follow_the_error_contract() {
    bounded(async {
        const WRONG: &str = "mindset-wrong-key-0000000000000";
        let ms = Mindset::start(MS_KEY).await;
        let c = client();

        // A wrong API key: Mindset says 401; the client gets refresh_rejected.
        let rig = mindset(WRONG, &ms, None).await;
        let r = send(
            c.post(rig.sc.url(MS_TOKENS))
                .bearer_auth(session_token("u-erin", "erin@example.com")),
        )
        .await;
        r.assert_error(401, "refresh_rejected");
        assert_own_and_clean(&r, WRONG);
        assert_eq!(ms.calls(), 1);
        assert_eq!(ms.requests()[0].header("x-api-key"), Some(WRONG));
        drop(rig);

        // The right key; Mindset answering garbage, then 500: 503 + Retry-After.
        let rig = mindset(MS_KEY, &ms, None).await;
        for (i, mode) in [VendorMode::Garbage, VendorMode::Status500]
            .into_iter()
            .enumerate()
        {
            ms.set_mode(mode);
            let who = format!("u{i}@example.com");
            let r = send(
                c.post(rig.sc.url(MS_TOKENS))
                    .bearer_auth(session_token(&who, &who)),
            )
            .await;
            r.assert_error(503, "token_service_unavailable");
            assert!(r.header("retry-after").is_some(), "{mode:?}");
            assert_own_and_clean(&r, MS_KEY);
        }
        ms.set_mode(VendorMode::Normal);
        // A token that is not ours proves nothing; no Mindset call.
        let calls = ms.calls();
        let forged = sign(
            &json!({"sub": "u-x", "email": "x@example.com", "iat": now(), "exp": now() + 600}),
            LM_APP_SECRET,
        );
        let r = send(c.post(rig.sc.url(MS_TOKENS)).bearer_auth(forged)).await;
        r.assert_error(401, "invalid_token");
        assert_eq!(ms.calls(), calls);
        drop(rig);

        // Mindset down (nothing listens): 503 + Retry-After.
        let down = format!(
            "http://{}/api-authenticate-embedded-user",
            common::refusing_addr()
        );
        let rig = mindset(MS_KEY, &ms, Some(&down)).await;
        let r = send(
            c.post(rig.sc.url(MS_TOKENS))
                .bearer_auth(session_token("u-fay", "fay@example.com")),
        )
        .await;
        r.assert_error(503, "token_service_unavailable");
        assert!(r.header("retry-after").is_some());
        assert_own_and_clean(&r, MS_KEY);
    })
    .await
}

// ---------------------------------------------------------------------------
// Kustomer
// ---------------------------------------------------------------------------

fn decode_login(jwt: &str) -> (jsonwebtoken::Header, Value) {
    let mut v = Validation::new(Algorithm::HS256);
    v.validate_exp = false;
    v.required_spec_claims.clear();
    let d = jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_secret(KU_SECRET.as_bytes()), &v)
        .expect("the login JWT verifies with HS256 and the Kustomer secret");
    (d.header, d.claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomer_login_jwt_is_minted_for_the_proven_user() {
    bounded(async {
        let ts = TokenService::start_with(kustomer_shape()).await;
        let backend = Backend::start().await;
        let mut e = example_env("kustomer.toml");
        e.extend(overrides(&backend));
        e.extend(env(&[
            ("AUTH_SIDECAR__REFRESH__URL", &ts.refresh_url()),
            ("AUTH_SIDECAR__INITIATE__URL", &ts.initiate_url()),
        ]));
        let rig = run_example("kustomer.toml", ts, backend, e).await;
        let c = client();
        let url = rig.sc.url(KU_TOKENS);

        // By the chat access token: externalId = sub, email from the token.
        let access = session_token("ext-frank", "frank@example.com");
        let r = send(c.post(&url).bearer_auth(&access)).await;
        assert_own_and_clean(&r, KU_KEY);
        let v = json_ok(&r);
        assert_eq!(v["userId"], json!("ext-frank"));
        let jwt = v["jwt"].as_str().expect("a jwt field");
        let (header, claims) = decode_login(jwt);
        assert_eq!(header.alg, Algorithm::HS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(claims["externalId"], json!("ext-frank"));
        assert_eq!(claims["email"], json!("frank@example.com"));
        let iat = claims["iat"].as_i64().expect("a numeric iat");
        assert!((iat - now()).abs() <= 60, "iat {iat} is not now");
        assert!(!r.text().contains(KU_SECRET));

        // By an app identity token with only an email: no externalId in the login JWT.
        let app = sign(
            &json!({"email": "gail@example.com", "iat": now()}),
            KU_SECRET,
        );
        let r = send(c.get(&url).header("x-app-identity", &app)).await;
        let v = json_ok(&r);
        let (_, claims) = decode_login(v["jwt"].as_str().unwrap());
        assert_eq!(claims["email"], json!("gail@example.com"));
        assert!(claims.get("externalId").is_none(), "{claims}");

        // A forged access token, an old app identity token: refused, nothing minted.
        let forged = sign(
            &json!({"sub": "ext-frank", "iat": now(), "exp": now() + 600}),
            LM_APP_SECRET,
        );
        send(c.post(&url).bearer_auth(forged))
            .await
            .assert_error(401, "invalid_token");
        let late = sign(
            &json!({"email": "gail@example.com", "iat": now() - 16 * 60}),
            KU_SECRET,
        );
        send(c.post(&url).header("x-app-identity", late))
            .await
            .assert_error(401, "invalid_token");
        // Minting calls no vendor.
        assert_eq!(rig.ts.calls(), 0);
        assert_eq!(rig.backend.count(), 0);
    })
    .await
}

// ---------------------------------------------------------------------------
// The initiate body template, from the identity
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initiate_body_reads_any_claim_of_the_proof_and_cannot_be_injected() {
    bounded(async {
        let ts = TokenService::start(API_KEY).await;
        let body = r#"'{"user_unique_id": "{sub}", "tier": "{claim:tier}", "age": "{claim:age}", "accounts": {json:accounts}, "none": {json:missing}, "guest": {bool:guest}, "left": "{unknown}"}'"#;
        let rig = Rig::builder()
            .token_service(ts)
            .lifecycle(|lc| {
                lc.initiate("body", body);
            })
            .cfg(|c| {
                c.extra(
                    "[token_endpoint]\npath = \"/tokens\"\nfields = { accessToken = \"access_token\", user = \"user_id\", expiresAt = \"expires_at\" }\n",
                )
            })
            .start()
            .await;
        // A claim holding quotes and a placeholder stays one JSON string, unexpanded.
        let app = sign(
            &json!({
                "externalId": "ext-\"{sub}\"",
                "tier": "gold \"{email}\"",
                "age": 42,
                "accounts": [{"accountUid": "a1"}],
                "guest": "true",
                "iat": now(),
            }),
            APP_SECRET,
        );
        let r = send(
            client()
                .post(rig.sc.url("/tokens"))
                .header("x-app-identity", &app),
        )
        .await;
        assert_own_and_clean(&r, API_KEY);
        let v = json_ok(&r);
        let issued = rig.ts.last_issued().unwrap();
        assert_eq!(v["accessToken"], json!(issued.access));
        assert_eq!(v["user"], json!("ext-\"{sub}\""));
        assert!(v["expiresAt"].as_u64().unwrap() > now() as u64);
        assert_eq!(
            rig.ts.last_initiate().unwrap().json(),
            json!({
                "user_unique_id": "ext-\"{sub}\"",
                "tier": "gold \"{email}\"",
                "age": "42",
                "accounts": [{"accountUid": "a1"}],
                "none": null,
                "guest": true,
                "left": "{unknown}",
            })
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// Opaque initiate answers on the proxy path
// ---------------------------------------------------------------------------

async fn opaque_rig(ms: &Mindset, format: &str) -> Rig {
    let text = format!(
        "[initiate]\nurl = {}\napi_key = {{ env = \"MS_KEY\" }}\nbody = '{{\"userEmail\": \"{{email}}\"}}'\naccess_token_pointer = \"/authToken\"\nrefresh_token_pointer = \"\"\ntoken_format = \"{format}\"\nwhen_refresh_token_missing = true\ntimeout = \"1s\"\n",
        q(&ms.url())
    );
    Rig::builder()
        .cfg(move |c| c.env("MS_KEY", MS_KEY).extra(&text))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_token_from_initiate_is_handed_out_as_is_only_when_configured() {
    bounded(async {
        let ms = Mindset::start(MS_KEY).await;
        let old = sign(
            &json!({"sub": "u-hal", "email": "hal@example.com", "iat": now() - 1200, "exp": now() - 600}),
            HS_SECRET,
        );

        // token_format = "opaque": the expired session renews through initiate, the
        // opaque token goes back in the response header, the backend gets the proven user.
        let rig = opaque_rig(&ms, "opaque").await;
        let r = send(client().get(rig.sc.url("/api/x")).bearer_auth(&old)).await;
        let echo = r.ok_echo();
        let (_, token) = ms.issued().pop().unwrap();
        assert_eq!(r.header("x-auth-access-token"), Some(token.as_str()));
        assert!(r.header("x-auth-refresh-token").is_none());
        assert_eq!(echo.header("x-auth-user-id"), Some("u-hal"));
        assert_eq!(echo.header("x-auth-email"), Some("hal@example.com"));
        assert_eq!(ms.calls(), 1);
        drop(rig);

        // The default (jwt): the same answer does not verify, so it is never used.
        let rig = opaque_rig(&ms, "jwt").await;
        let r = send(client().get(rig.sc.url("/api/x")).bearer_auth(&old)).await;
        r.assert_error(502, "token_service_bad_response");
        assert_eq!(rig.backend.count(), 0);
        assert_eq!(ms.calls(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cors_policy_mode_the_endpoint_preflight_still_allows_what_it_reads() {
    bounded(async {
        let origins = format!("[\"{ORIGIN}\"]");
        let rig = likeminds(&[
            ("AUTH_SIDECAR__CORS__ALLOWED_ORIGINS", &origins),
            ("AUTH_SIDECAR__CORS__MODE", "policy"),
        ])
        .await;
        let r = send(
            client()
                .request(reqwest::Method::OPTIONS, rig.sc.url(LM_TOKENS))
                .header("origin", ORIGIN)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "x-app-identity"),
        )
        .await;
        assert_eq!(r.status, 204, "{:?}", r.headers);
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("x-app-identity")
        );
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(rig.backend.count(), 0);
    })
    .await
}
