//! A well-signed token may carry any NumericDate: a far-future `exp` (1.8e98, found by the
//! verify_signed_claims fuzz target) must neither panic nor wrap around into "expired",
//! on a plain request or a WebSocket upgrade (whose tunnel deadline is derived from it).

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

#[tokio::test]
async fn a_far_future_exp_is_a_valid_token_and_no_crash() {
    bounded(async {
        let Rig { sc, backend, .. } = Rig::start_with(|c| c).await;
        for exp in [
            json!(1.8e98),
            json!(u64::MAX),
            json!(18_446_744_073_709_551_000u64),
        ] {
            let t = mint(
                Algorithm::HS256,
                &json!({"sub": "alice", "iat": now(), "exp": exp}),
            );
            let r = send(client().get(sc.url("/api")).bearer_auth(&t)).await;
            assert_eq!(r.status, 200, "exp {exp}: {}", r.text());
            let up = raw(
                sc.addr,
                &raw_req(
                    "GET",
                    "/ws",
                    &[
                        ("Authorization", &bearer(&t)),
                        ("Upgrade", "websocket"),
                        ("Connection", "Upgrade"),
                        ("Sec-WebSocket-Version", "13"),
                        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                    ],
                ),
            )
            .await;
            assert_eq!(up.status, 101, "exp {exp}");
        }
        assert!(sc.logs().lines().all(|l| !l.contains("panicked")));
        assert_eq!(backend.count(), 6);
    })
    .await
}
