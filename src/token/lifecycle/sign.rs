//! Signed initiate calls (ConnectyCube's create-session): `{nonce}` and `{timestamp}`
//! placeholders, and a MAC over the body's own parameters: every field but the
//! signature's, nested objects named `user[login]`, sorted by name, joined as
//! `name=value&…`, written in hex where the body has `{signature}`.

use aws_lc_rs::{hmac, rand::SecureRandom};
use serde_json::Value;

use super::RenewError;
use crate::config::{Initiate, SignatureAlgorithm};

const UNSIGNABLE: RenewError =
    RenewError::BadResponse("the initiate body is not a JSON object that can be signed");

/// Fills the placeholders the sidecar owns: `{nonce}`, `{timestamp}` and (with
/// `api_key_in_body`) `{api_key}`. Runs on the template before any identity value is
/// put in, so a user's name that reads `{api_key}` stays text.
pub(super) fn prepare(template: &str, cfg: &Initiate) -> Result<String, RenewError> {
    let mut nonce = [0u8; 4];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| UNSIGNABLE)?;
    // A positive integer of up to 10 digits, as the vendor's SDKs send.
    let nonce = u32::from_be_bytes(nonce).max(1);
    let body = template
        .replace("{nonce}", &nonce.to_string())
        .replace("{timestamp}", &crate::token::now_secs().to_string());
    if !cfg.api_key_in_body {
        return Ok(body);
    }
    let key = std::str::from_utf8(&cfg.api_key.secret.0).map_err(|_| UNSIGNABLE)?;
    Ok(body.replace("{api_key}", &super::exchange::escape(key, true)))
}

/// The finished body, signed when a signature is configured: the MAC of its parameter
/// string goes in the signature field (set as a JSON value, so no identity value can
/// stand in for it).
pub(super) fn sign(body: String, cfg: &Initiate) -> Result<String, RenewError> {
    let Some(sig) = &cfg.signature else {
        return Ok(body);
    };
    let mut json: Value = serde_json::from_str(&body).map_err(|_| UNSIGNABLE)?;
    let Value::Object(top) = &mut json else {
        return Err(UNSIGNABLE);
    };
    let mut params = Vec::new();
    for (k, v) in top.iter() {
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
    top.insert(sig.field.clone(), Value::String(hex));
    serde_json::to_string(&json).map_err(|_| UNSIGNABLE)
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
