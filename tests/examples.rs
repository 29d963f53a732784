//! The vendor example configs in `examples/`: each passes `check-config` with the env
//! vars it names (and fails, naming them, without), and each runs against a mock of its
//! vendor's API shape, with URLs and ports overridden through `AUTH_SIDECAR__*`.

mod common;

use common::examples::*;
use common::token_service::TokenService;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_passes_check_config_with_its_env_vars() {
    bounded(async {
        for name in ["likeminds.toml", "mindset.toml", "kustomer.toml"] {
            let e = example_env(name);
            let out = check_example(name, &e).await;
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
            let out = check_example(name, &[]).await;
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
// Mindset: the app's own session token on the proxy path; authToken from the endpoint
// (tests/vendors.rs), never a Mindset call for a proxied request
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mindset_example_checks_app_sessions_and_never_calls_mindset_on_the_proxy_path() {
    bounded(async {
        let mindset = common::vendors::Mindset::start(MS_KEY).await;
        let backend = Backend::start().await;
        let mut e = example_env("mindset.toml");
        e.extend(overrides(&backend));
        e.extend(env(&[("AUTH_SIDECAR__INITIATE__URL", &mindset.url())]));
        let Rig { backend, sc, .. } = run_example_alone("mindset.toml", backend, e).await;
        let c = client();

        // The app's session token for dana: forwarded with her identity.
        let session = sign(
            &json!({"sub": "u-dana", "email": "dana@example.com", "iat": now(), "exp": now() + 600}),
            HS_SECRET,
        );
        let r = send(c.get(sc.url(PATH)).bearer_auth(&session)).await;
        let echo = r.ok_echo();
        assert_eq!(echo.header("x-auth-user-id"), Some("u-dana"));
        assert_eq!(echo.header("x-auth-email"), Some("dana@example.com"));
        assert!(r.header("x-auth-access-token").is_none());

        // Expired: the app's own login renews it, not Mindset (no refresh token, no
        // initiate on the proxy path).
        let old = sign(
            &json!({"sub": "u-dana", "email": "dana@example.com", "iat": now() - 1200, "exp": now() - 600}),
            HS_SECRET,
        );
        let r = send(c.get(sc.url(PATH)).bearer_auth(&old)).await;
        r.assert_error(401, "token_expired");
        assert_eq!(mindset.calls(), 0);
        for echo in backend.seen() {
            assert_backend_clean(&echo, &[MS_KEY]);
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Kustomer-style: the app identity token starts the session
// ---------------------------------------------------------------------------

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
