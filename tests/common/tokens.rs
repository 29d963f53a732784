//! Token minting: well-formed tokens signed with the fixture keys (jsonwebtoken's
//! EncodingKey), and hand-built ones for every kind of bad token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use super::config::fixture;

/// The HMAC secret the sidecar is given through [`HS_ENV`] (≥ 32 bytes).
pub const HS_SECRET: &str = "itest-hs256-secret-7f3a9c1e5b2d4f6a8c0e2b4d6f8a1c3e";
/// The env var carrying [`HS_SECRET`].
pub const HS_ENV: &str = "TEST_HS";
/// The secret of the `oct` key (kid "oct1") in fixtures/jwks.json; must never verify.
pub const JWKS_OCT_SECRET: &str = "jwks-oct-secret-must-never-verify-0123456789";

/// The default subject of test tokens.
pub const SUB: &str = "alice";

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Standard claims for `sub`: email, name, iat, exp in 10 minutes.
pub fn claims(sub: &str) -> Value {
    json!({
        "sub": sub,
        "email": format!("{sub}@example.com"),
        "name": "Alice Example",
        "iat": now(),
        "exp": now() + 600,
    })
}

/// `claims(SUB)` with `extra`'s fields set (a `null` removes the field).
pub fn claims_with(extra: Value) -> Value {
    let mut c = claims(SUB);
    let obj = c.as_object_mut().unwrap();
    for (k, v) in extra.as_object().expect("extra must be an object") {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    c
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// The signing key and kid for `alg` from the fixtures.
pub fn signing_key(alg: Algorithm) -> (EncodingKey, Option<&'static str>) {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            (EncodingKey::from_secret(HS_SECRET.as_bytes()), None)
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => (
            EncodingKey::from_rsa_pem(&read_fixture("rsa2048_private.pem")).unwrap(),
            Some("rs1"),
        ),
        Algorithm::ES256 | Algorithm::ES384 => (
            EncodingKey::from_ec_pem(&read_fixture("ec_p256_private.pem")).unwrap(),
            Some("ec1"),
        ),
        Algorithm::EdDSA => (
            EncodingKey::from_ed_pem(&read_fixture("ed25519_private.pem")).unwrap(),
            Some("ed1"),
        ),
    }
}

/// An RSA key the sidecar does not trust.
pub fn attacker_rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read_fixture("attacker_rsa2048_private.pem")).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64_json(v: &Value) -> String {
    b64(&serde_json::to_vec(v).unwrap())
}

/// `alg`'s name as it appears in a JOSE header.
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// Signs `header` (any JSON, used verbatim) and `claims` with `key` under `alg`.
pub fn sign_with_header(
    header: &Value,
    claims: &Value,
    alg: Algorithm,
    key: &EncodingKey,
) -> String {
    let msg = format!("{}.{}", b64_json(header), b64_json(claims));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).expect("sign");
    format!("{msg}.{sig}")
}

/// A token for `claims` signed with the fixture key for `alg` (kid set for asymmetric).
pub fn mint(alg: Algorithm, claims: &Value) -> String {
    let (key, kid) = signing_key(alg);
    let mut header = json!({"alg": alg_name(alg), "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    sign_with_header(&header, claims, alg, &key)
}

/// A fresh valid HS256 token for [`SUB`].
pub fn valid() -> String {
    mint(Algorithm::HS256, &claims(SUB))
}

/// A valid HS256 token for `sub`.
pub fn valid_for(sub: &str) -> String {
    mint(Algorithm::HS256, &claims(sub))
}

/// HS256 with `extra` claims merged into the standard ones.
pub fn hs256_with(extra: Value) -> String {
    mint(Algorithm::HS256, &claims_with(extra))
}

/// Expired 10 minutes ago (well past the default 30 s leeway).
pub fn expired() -> String {
    hs256_with(json!({"iat": now() - 1200, "exp": now() - 600}))
}

/// Not valid for another 10 minutes.
pub fn future_nbf() -> String {
    hs256_with(json!({"nbf": now() + 600}))
}

/// A header + payload with no signature at all, alg as given.
pub fn alg_none(alg_spelling: &str) -> String {
    format!(
        "{}.{}.",
        b64_json(&json!({"alg": alg_spelling, "typ": "JWT"})),
        b64_json(&claims(SUB))
    )
}

/// The classic key-confusion token: HS256 with the RSA *public* key PEM as HMAC secret.
pub fn hs256_signed_with_rsa_public_pem() -> String {
    let pem = read_fixture("rsa2048_public.pem");
    sign_with_header(
        &json!({"alg": "HS256", "typ": "JWT", "kid": "rs1"}),
        &claims(SUB),
        Algorithm::HS256,
        &EncodingKey::from_secret(&pem),
    )
}

/// `token` with its payload replaced (signature kept).
pub fn tamper_payload(token: &str, new_claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    format!("{}.{}.{}", parts[0], b64_json(new_claims), parts[2])
}

/// `token` with the first character of its signature changed (every bit of the first
/// base64url character is significant, so the signature bytes really change).
pub fn tamper_signature(token: &str) -> String {
    let (msg, sig) = token.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = sig.chars().collect();
    sig[0] = if sig[0] == 'A' { 'B' } else { 'A' };
    format!("{msg}.{}", sig.into_iter().collect::<String>())
}

/// The signature segment of a token.
pub fn signature_of(token: &str) -> &str {
    token.rsplit_once('.').unwrap().1
}

/// A syntactically valid HS256 token longer than `len` bytes (padding claim).
pub fn oversized(len: usize) -> String {
    let t = hs256_with(json!({"pad": "x".repeat(len)}));
    assert!(t.len() > len);
    t
}
