//! Fuzzer-chosen header and payload *JSON*, HS256-signed with the configured secret, so
//! the claim checks run past the signature. Properties: no panic; an accepted token's
//! subject is the payload's `sub` string as a reference JSON reader sees it, `exp` is a
//! number, `nbf` (if any) is within the leeway, and `crit` is absent.
#![no_main]
use std::sync::OnceLock;

use auth_sidecar::token::{Verdict, Verifier};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let c = auth_sidecar_fuzz::hs_config(
            "issuer = \"https://issuer.example\"\naudience = [\"chat-api\"]\nleeway = \"30s\"",
            "[identity.claims]\nrole = \"x-auth-role\"\n",
        );
        let keys = auth_sidecar::token::load_keys(&c).expect("keys");
        Verifier::new(
            &c.auth,
            keys,
            std::sync::Arc::new(auth_sidecar::inject::IdentityHeaders(c.identity.clone())),
        )
    })
}

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let mut it = data.splitn(2, |b| *b == 0xff);
    let (Some(header), Some(payload)) = (it.next(), it.next()) else {
        return;
    };
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key = EncodingKey::from_secret(auth_sidecar_fuzz::HS_SECRET.as_bytes());
    let Ok(sig) = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::HS256) else {
        return;
    };
    let token = format!("{msg}.{sig}");
    let Ok(verdict) = verifier().verify_uncached(&token, NOW) else {
        return;
    };
    let who = match verdict {
        Verdict::Valid(w) => w,
        Verdict::Expired(w) => w,
    };
    let h: Value = serde_json::from_slice(header).expect("accepted header is JSON");
    assert!(h.get("crit").is_none(), "crit accepted: {h}");
    let p: Value = serde_json::from_slice(payload).expect("accepted payload is JSON");
    assert_eq!(
        p["sub"].as_str(),
        Some(who.sub.as_str()),
        "sub read differently: {p}"
    );
    assert!(p["exp"].is_number(), "exp not a number: {p}");
    if let Some(nbf) = p.get("nbf") {
        let nbf = nbf.as_f64().expect("nbf number");
        assert!(nbf <= (NOW + 30) as f64, "nbf {nbf} in the future accepted");
    }
    match &p["iss"] {
        Value::String(s) => assert_eq!(s, "https://issuer.example"),
        // Known and reported (docs/security.md): an array containing the issuer passes.
        Value::Array(a) => assert!(a.iter().any(|x| x == "https://issuer.example"), "iss: {p}"),
        other => panic!("iss {other} accepted"),
    }
});
