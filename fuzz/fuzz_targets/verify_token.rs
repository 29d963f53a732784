//! `token::Verifier::verify_uncached` on arbitrary token bytes, against four verifiers
//! (HMAC, RSA, EC, Ed25519 families, fixture keys). Properties: no panic; a token that
//! verifies is canonical (each segment is the unpadded base64url of its own bytes, so one
//! token has one spelling) and has a non-empty subject.
#![no_main]
use std::sync::OnceLock;

use auth_sidecar::token::{Verdict, Verifier};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;

fn verifiers() -> &'static Vec<Verifier> {
    static V: OnceLock<Vec<Verifier>> = OnceLock::new();
    V.get_or_init(|| {
        let f = auth_sidecar_fuzz::fixtures();
        let pk = |file: &str, kid: &str| {
            format!("public_keys = [{{ file = {:?}, kid = {kid:?} }}]", f.join(file).to_string_lossy())
        };
        let cfgs = vec![
            auth_sidecar_fuzz::hs_config("", ""),
            auth_sidecar_fuzz::config(
                &format!("algorithms = [\"RS256\", \"RS384\", \"RS512\", \"PS256\", \"PS384\", \"PS512\"]\n{}", pk("rsa2048_public.pem", "rs1")),
                "",
            ),
            auth_sidecar_fuzz::config(&format!("algorithms = [\"ES256\"]\n{}", pk("ec_p256_public.pem", "ec1")), ""),
            auth_sidecar_fuzz::config(&format!("algorithms = [\"EdDSA\"]\n{}", pk("ed25519_public.pem", "ed1")), ""),
        ];
        cfgs.iter()
            .map(|c| {
                let keys = auth_sidecar::token::load_keys(c).expect("keys");
                Verifier::new(&c.auth, keys, std::sync::Arc::new(auth_sidecar::inject::IdentityHeaders(c.identity.clone())))
            })
            .collect()
    })
}

/// Seconds for the checks: fixed, so a run is reproducible (seed tokens expire in 2100).
const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    for v in verifiers() {
        match v.verify_uncached(token, NOW) {
            Ok(Verdict::Valid(who)) | Ok(Verdict::Expired(who)) => {
                assert!(!who.sub.is_empty());
                for seg in token.split('.') {
                    let bytes = URL_SAFE_NO_PAD
                        .decode(seg)
                        .unwrap_or_else(|e| panic!("verified, but {seg:?} is not base64url: {e}"));
                    assert_eq!(
                        URL_SAFE_NO_PAD.encode(bytes),
                        seg,
                        "verified a non-canonical spelling"
                    );
                }
            }
            Err(_) => {}
        }
    }
});
