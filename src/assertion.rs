//! The signed identity assertion: a short-lived JWT (ES256 or EdDSA) the sidecar signs
//! over the verified identity, for a backend that checks identity itself; and the JWKS
//! that publishes the public keys (the current one, and after a key change the previous
//! ones until their last assertions have expired). One signature per identity per half
//! lifetime, not per request.

use std::sync::Mutex;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{Assertion as Cfg, Identity};
use crate::token::cache::TokenCache;
use crate::token::{now_secs, Verified};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

enum Key {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// A public key in the JWKS, and until when it must stay there (None: the current key).
struct Published {
    jwk: Value,
    kid: String,
    until: Option<u64>,
}

pub struct Signer {
    cfg: Cfg,
    identity: Identity,
    key: Key,
    header_b64: String,
    published: Mutex<Vec<Published>>,
    /// Identity digest → (assertion, its exp).
    cache: TokenCache<(HeaderValue, u64)>,
    rng: SystemRandom,
}

impl Signer {
    pub fn new(cfg: &Cfg, identity: &Identity) -> Result<Signer, String> {
        let der = pem_der(&cfg.key.0)?;
        let (key, alg, jwk) = match cfg.algorithm.as_str() {
            "EdDSA" => {
                let k = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                    .map_err(|_| "assertion.key: not an Ed25519 PKCS#8 private key".to_string())?;
                let x = B64.encode(k.public_key().as_ref());
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x});
                (Key::EdDsa(k), "EdDSA", jwk)
            }
            _ => {
                let k = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                    .map_err(|_| "assertion.key: not an EC P-256 private key".to_string())?;
                let p = k.public_key().as_ref();
                if p.len() != 65 {
                    return Err("assertion.key: unexpected public key form".into());
                }
                let jwk = json!({"kty": "EC", "crv": "P-256",
                    "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])});
                (Key::Es256(k), "ES256", jwk)
            }
        };
        let mut jwk = jwk;
        jwk["kid"] = json!(cfg.kid);
        jwk["alg"] = json!(alg);
        jwk["use"] = json!("sig");
        let header = json!({"alg": alg, "typ": "JWT", "kid": cfg.kid});
        Ok(Signer {
            header_b64: B64.encode(header.to_string()),
            published: Mutex::new(vec![Published {
                jwk,
                kid: cfg.kid.clone(),
                until: None,
            }]),
            cfg: cfg.clone(),
            identity: identity.clone(),
            key,
            cache: TokenCache::new(100_000),
            rng: SystemRandom::new(),
        })
    }

    /// After a reload: keep publishing the previous keys until the assertions signed
    /// with them have expired.
    pub fn inherit(&self, old: &Signer) {
        let now = now_secs();
        let Ok(theirs) = old.published.lock() else {
            return;
        };
        let Ok(mut mine) = self.published.lock() else {
            return;
        };
        for p in theirs.iter() {
            if mine.iter().any(|m| m.kid == p.kid) {
                continue;
            }
            let until = p.until.unwrap_or(now + old.cfg.ttl.as_secs());
            if until >= now {
                mine.push(Published {
                    jwk: p.jwk.clone(),
                    kid: p.kid.clone(),
                    until: Some(until),
                });
            }
        }
    }

    /// The JWKS document (admin `/.well-known/jwks.json`).
    pub fn jwks(&self) -> String {
        let now = now_secs();
        let keys: Vec<Value> = match self.published.lock() {
            Ok(p) => p
                .iter()
                .filter(|k| k.until.is_none_or(|u| u >= now))
                .map(|k| k.jwk.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        json!({ "keys": keys }).to_string()
    }

    /// Sets the assertion header for `who` (a cached one while it has half its life left).
    pub fn set(&self, headers: &mut HeaderMap, who: &Verified) {
        let now = now_secs();
        let ttl = self.cfg.ttl.as_secs();
        let mut h = Sha256::new();
        h.update(who.sub.as_bytes());
        for (n, v) in &who.headers {
            h.update([0]);
            h.update(n.as_str());
            h.update([0]);
            h.update(v.as_bytes());
        }
        let digest: [u8; 32] = h.finalize().into();
        if let Some((v, exp)) = self.cache.get(&digest, now) {
            if exp.saturating_sub(now) * 2 > ttl || exp == who.exp {
                headers.insert(self.cfg.header.clone(), v);
                return;
            }
        }
        let exp = (now + ttl).min(who.exp);
        if let Some(v) = self.sign(who, now, exp) {
            self.cache.insert(digest, (v.clone(), exp), exp, now);
            headers.insert(self.cfg.header.clone(), v);
        }
    }

    fn sign(&self, who: &Verified, now: u64, exp: u64) -> Option<HeaderValue> {
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.cfg.issuer));
        claims.insert("aud".into(), json!(self.cfg.audience));
        claims.insert("sub".into(), json!(who.sub));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(exp));
        let header_value = |name: &HeaderName| {
            who.headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.to_str().ok())
        };
        for (claim, name) in [
            ("email", &self.identity.email),
            ("name", &self.identity.name),
        ] {
            if let Some(v) = header_value(name) {
                claims.insert(claim.into(), json!(v));
            }
        }
        for (claim, name) in &self.identity.claims {
            if let Some(v) = header_value(name) {
                claims.insert(claim.clone(), json!(v));
            }
        }
        let input = format!(
            "{}.{}",
            self.header_b64,
            B64.encode(Value::Object(claims).to_string())
        );
        let sig = match &self.key {
            Key::Es256(k) => k.sign(&self.rng, input.as_bytes()).ok()?.as_ref().to_vec(),
            Key::EdDsa(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
        };
        HeaderValue::from_str(&format!("{input}.{}", B64.encode(sig))).ok()
    }
}

/// The DER of the first private key in a PEM document.
fn pem_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    let key = rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|_| "assertion.key: not a PEM private key".to_string())?
        .ok_or_else(|| "assertion.key: no private key found".to_string())?;
    Ok(key.secret_der().to_vec())
}
