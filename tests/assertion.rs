//! The signed identity assertion on the real binary: the backend verifies it with a
//! standard JWT library (jsonwebtoken) against the JWKS on the admin port; it is reused
//! (one signature per identity per half lifetime); clients cannot send their own; a key
//! change by reload keeps the old key published until its assertions expire.

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
use serde_json::Value;

fn assertion_cfg(key: &str, alg: &str, kid: &str, ttl: &str) -> String {
    format!(
        "[assertion]\nkey = {{ file = {} }}\nalgorithm = {}\nkid = {}\naudience = \"chat\"\nttl = {}\n",
        q(&fixture(key)),
        q(alg),
        q(kid),
        q(ttl)
    )
}

async fn jwks(sc: &Sidecar) -> JwkSet {
    let r = send(client().get(sc.admin_url("/.well-known/jwks.json"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).expect("a JWKS")
}

/// What a backend does: find the key by `kid` in the JWKS and verify with jsonwebtoken.
fn backend_verifies(token: &str, set: &JwkSet) -> Result<Value, String> {
    let kid = decode_header(token)
        .map_err(|e| e.to_string())?
        .kid
        .ok_or("no kid")?;
    let jwk = set.find(&kid).ok_or(format!("kid {kid} not in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let alg = decode_header(token).unwrap().alg;
    let mut v = Validation::new(alg);
    v.set_audience(&["chat"]);
    v.set_issuer(&["auth-sidecar"]);
    v.leeway = 0;
    decode::<Value>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

async fn assertion_of(sc: &Sidecar) -> String {
    let r = send(client().get(sc.url("/api")).bearer_auth(valid())).await;
    r.ok_echo()
        .header("x-auth-assertion")
        .expect("the backend gets an assertion")
        .to_string()
}

#[tokio::test]
async fn the_backend_verifies_the_assertion_against_the_sidecars_jwks() {
    bounded(async {
        for (key, alg, kid) in [
            ("ec_p256_private.pem", "ES256", "as-ec"),
            ("ed25519_private.pem", "EdDSA", "as-ed"),
        ] {
            let Rig {
                sc, backend: _b, ..
            } = Rig::builder()
                .cfg(|c| {
                    c.extra(&assertion_cfg(key, alg, kid, "60s"))
                        .route("prefix = \"/public\"\nmode = \"public\"")
                })
                .start()
                .await;
            let t = assertion_of(&sc).await;
            let set = jwks(&sc).await;
            let claims = backend_verifies(&t, &set).unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(claims["sub"], "alice", "{claims}");
            assert_eq!(claims["email"], "alice@example.com");
            assert_eq!(claims["name"], "Alice Example");
            let (iat, exp) = (
                claims["iat"].as_u64().unwrap(),
                claims["exp"].as_u64().unwrap(),
            );
            assert!(exp > iat && exp - iat <= 60, "{claims}");
            assert_eq!(
                decode_header(&t).unwrap().alg,
                if alg == "ES256" {
                    Algorithm::ES256
                } else {
                    Algorithm::EdDSA
                }
            );
            // Reused, not signed again, for the same identity.
            assert_eq!(
                assertion_of(&sc).await,
                t,
                "{alg}: one signature per identity"
            );
            // A client's own assertion never reaches the backend.
            let r = send(
                client()
                    .get(sc.url("/public/x"))
                    .header("x-auth-assertion", &t),
            )
            .await;
            assert_eq!(r.ok_echo().header("x-auth-assertion"), None, "{alg}");
            // A tampered one fails at the backend.
            let mut bad = t.clone();
            bad.replace_range(bad.len() - 4.., "AAAA");
            assert!(backend_verifies(&bad, &set).is_err());
        }
    })
    .await
}

#[tokio::test]
async fn a_key_change_by_reload_keeps_the_old_key_until_its_assertions_expire() {
    bounded(async {
        let Rig {
            sc,
            cfg,
            backend: _b,
            ..
        } = Rig::builder()
            .cfg(|c| {
                c.extra(&assertion_cfg(
                    "ec_p256_private.pem",
                    "ES256",
                    "k-old",
                    "3s",
                ))
            })
            .start()
            .await;
        let old = assertion_of(&sc).await;
        assert!(backend_verifies(&old, &jwks(&sc).await).is_ok());
        // Reload with a new key.
        let text = cfg
            .clone()
            .extra(&assertion_cfg(
                "ed25519_private.pem",
                "EdDSA",
                "k-new",
                "3s",
            ))
            .render()
            .replace(
                &assertion_cfg("ec_p256_private.pem", "ES256", "k-old", "3s"),
                "",
            );
        std::fs::write(sc.dir.path().join("config.toml"), text).unwrap();
        sc.signal("HUP");
        let mut new = String::new();
        for _ in 0..100 {
            new = assertion_of(&sc).await;
            if decode_header(&new).unwrap().kid.as_deref() == Some("k-new") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            decode_header(&new).unwrap().kid.as_deref(),
            Some("k-new"),
            "reloaded"
        );
        let set = jwks(&sc).await;
        assert!(
            set.find("k-old").is_some() && set.find("k-new").is_some(),
            "both published"
        );
        assert!(
            backend_verifies(&old, &set).is_ok(),
            "the old assertion still verifies"
        );
        assert!(backend_verifies(&new, &set).is_ok());
        // After the old assertions' lifetime the old key is gone, and so are they.
        tokio::time::sleep(Duration::from_millis(4200)).await;
        let set = jwks(&sc).await;
        assert!(set.find("k-old").is_none(), "old key still published");
        assert!(
            backend_verifies(&old, &set).is_err(),
            "an expired assertion"
        );
    })
    .await
}
