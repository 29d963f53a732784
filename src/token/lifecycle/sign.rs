//! Signed initiate calls (ConnectyCube's create-session): `{nonce}` and `{timestamp}`
//! placeholders, and a MAC over the body's own parameters: every field but the
//! signature's, nested objects named `user[login]`, sorted by name, joined as
//! `name=value&…`, written in hex where the body has `{signature}`.

use aws_lc_rs::{hmac, rand::SecureRandom};
use serde_json::Value;

use super::RenewError;
use crate::config::{Initiate, Signature, SignatureAlgorithm};

const UNSIGNABLE: RenewError =
    RenewError::BadResponse("the initiate body is not a JSON object that can be signed");

/// Fills `{nonce}`, `{timestamp}` and (with `api_key_in_body`) `{api_key}`, then signs
/// when a signature is configured.
pub(super) fn finish(body: &str, cfg: &Initiate) -> Result<String, RenewError> {
    let mut nonce = [0u8; 4];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| UNSIGNABLE)?;
    // A positive integer of up to 10 digits, as the vendor's SDKs send.
    let nonce = u32::from_be_bytes(nonce).max(1);
    let body = body
        .replace("{nonce}", &nonce.to_string())
        .replace("{timestamp}", &crate::token::now_secs().to_string());
    let body = if cfg.api_key_in_body {
        let key = std::str::from_utf8(&cfg.api_key.secret.0).map_err(|_| UNSIGNABLE)?;
        body.replace("{api_key}", &super::exchange::escape(key, true))
    } else {
        body
    };
    match &cfg.signature {
        Some(sig) => sign(&body, sig),
        None => Ok(body),
    }
}

/// The body with `{signature}` replaced by the MAC of its parameter string.
pub(super) fn sign(body: &str, sig: &Signature) -> Result<String, RenewError> {
    let json: Value = serde_json::from_str(body).map_err(|_| UNSIGNABLE)?;
    let Value::Object(top) = &json else {
        return Err(UNSIGNABLE);
    };
    let mut params = Vec::new();
    for (k, v) in top {
        if *k != sig.field {
            flatten(k.clone(), v, &mut params);
        }
    }
    params.sort();
    let text = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let alg = match sig.algorithm {
        SignatureAlgorithm::HmacSha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        SignatureAlgorithm::HmacSha256 => hmac::HMAC_SHA256,
    };
    let tag = hmac::sign(&hmac::Key::new(alg, &sig.secret.0), text.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(body.replace("{signature}", &hex))
}

/// `user: {login: x}` → `("user[login]", "x")`; strings raw, numbers and booleans as
/// text, null and arrays left out.
fn flatten(name: String, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::String(s) => out.push((name, s.clone())),
        Value::Number(n) => out.push((name, n.to_string())),
        Value::Bool(b) => out.push((name, b.to_string())),
        Value::Object(m) => {
            for (k, v) in m {
                flatten(format!("{name}[{k}]"), v, out);
            }
        }
        Value::Null | Value::Array(_) => {}
    }
}
