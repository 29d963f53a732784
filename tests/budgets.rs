//! Budgets for token-service calls, on the real binary against the mock token service:
//! a 429's `Retry-After` is passed on and stops calls for that long, a refused initiate
//! is remembered, and rate limits (per replica and per user) hold a flood of expired,
//! well-signed tokens to the budget while valid users are still served.

mod common;

use std::time::{Duration, Instant};

use common::token_service::{Mode, TokenService};
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

/// An access token for `sub` that expired a minute ago, signed with the right key.
fn expired_for(sub: &str) -> String {
    let now = now();
    mint(
        Algorithm::HS256,
        &json!({"sub": sub, "iat": now - 600, "exp": now - 60}),
    )
}

async fn renew(sc: &Sidecar, access: &str, refresh: &str) -> Resp {
    send(
        client()
            .get(sc.url("/api"))
            .bearer_auth(access)
            .header("x-refresh-token", refresh),
    )
    .await
}

#[tokio::test]
async fn a_429_passes_its_retry_after_on_and_stops_calls_for_that_long() {
    bounded(async {
        let Rig {
            sc,
            ts,
            backend: _backend,
            ..
        } = Rig::builder()
            .token_service(TokenService::start(lifecycle::API_KEY).await)
            .lifecycle(|lc| {
                lc.no_initiate();
            })
            .start()
            .await;
        ts.set_refresh_mode(Mode::Status429); // Retry-After: 1
        let a = ts.expired_pair_for("alice", 60);
        let r = renew(&sc, &a.access, &a.refresh).await;
        r.assert_error(503, "token_service_unavailable");
        assert_eq!(
            r.header("retry-after"),
            Some("1"),
            "the service's own back-off"
        );
        assert_eq!(ts.refresh_calls(), 1);
        // Another user within that second: no call at all.
        ts.set_refresh_mode(Mode::Normal);
        let b = ts.expired_pair_for("bob", 60);
        let r = renew(&sc, &b.access, &b.refresh).await;
        r.assert_error(503, "token_service_unavailable");
        assert_eq!(
            ts.refresh_calls(),
            1,
            "no call while the service asked us to wait"
        );
        // After it: served.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = renew(&sc, &b.access, &b.refresh).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(ts.refresh_calls(), 2);
    })
    .await
}

#[tokio::test]
async fn a_refused_initiate_is_remembered_for_the_user() {
    bounded(async {
        let Rig {
            sc, ts, backend, ..
        } = Rig::builder()
            .token_service(TokenService::start(lifecycle::API_KEY).await)
            .lifecycle(|lc| {
                lc.initiate("rejected_ttl", "\"30s\"");
            })
            .start()
            .await;
        ts.set_initiate_mode(Mode::Reject(403));
        let access = expired_for("carol");
        for i in 0..3 {
            let r = renew(&sc, &access, &format!("dead-refresh-token-{i}")).await;
            r.assert_error(401, "refresh_rejected");
        }
        assert_eq!(
            ts.initiate_calls(),
            1,
            "one refused initiate per user in rejected_ttl"
        );
        assert_eq!(backend.count(), 0);
    })
    .await
}

#[tokio::test]
async fn a_flood_of_expired_well_signed_tokens_stays_within_the_call_budget() {
    bounded(async {
        let Rig {
            sc, ts, backend, ..
        } = Rig::builder()
            .token_service(TokenService::start(lifecycle::API_KEY).await)
            .lifecycle(|lc| {
                lc.no_initiate()
                    .refresh("max_calls_per_second", "10")
                    .refresh("max_calls_per_user_per_minute", "6");
            })
            .start()
            .await;
        let started = Instant::now();
        // 400 distinct users, each with a forged refresh token the service refuses.
        let mut tasks = Vec::new();
        for i in 0..400 {
            let sc_url = sc.url("/api");
            tasks.push(tokio::spawn(async move {
                let r = send(
                    client()
                        .get(sc_url)
                        .bearer_auth(expired_for(&format!("user-{i}")))
                        .header("x-refresh-token", format!("forged-{i}")),
                )
                .await;
                r.status
            }));
        }
        // Meanwhile a valid user is served.
        let ok = send(client().get(sc.url("/api")).bearer_auth(valid())).await;
        assert_eq!(ok.status, 200, "valid users are served during the flood");
        let mut statuses = std::collections::BTreeMap::new();
        for t in tasks {
            *statuses.entry(t.await.unwrap()).or_insert(0) += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        let calls = ts.refresh_calls();
        let budget = 10.0 + 10.0 * secs;
        assert!(
            (calls as f64) <= budget + 1.0,
            "{calls} calls in {secs:.2}s for a budget of 10/s (burst 10): {statuses:?}"
        );
        assert!(calls >= 5, "the budget is spent, not zero: {calls}");
        // Refused by the service: 401; refused by the budget: 503, never 200.
        assert!(
            statuses.keys().all(|s| *s == 401 || *s == 503),
            "{statuses:?}"
        );
        assert_eq!(
            backend.count(),
            1,
            "only the valid user's request was forwarded"
        );

        // One user with many forged refresh tokens: the per-user budget (burst 3).
        let before = ts.refresh_calls();
        tokio::time::sleep(Duration::from_millis(1200)).await; // global bucket refills
        let access = expired_for("mallory");
        for i in 0..10 {
            renew(&sc, &access, &format!("forged-m-{i}")).await;
        }
        let user_calls = ts.refresh_calls() - before;
        assert!(user_calls <= 3, "one user: {user_calls} calls");
    })
    .await
}
