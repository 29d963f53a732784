//! Verification keys: loaded from the HMAC secret, PEM files and JWKS documents, with
//! weak or ill-fitting keys refused. The token's header never chooses a key type: the
//! algorithm's family must match the key's, and a JWKS `oct` key is never used.

use std::sync::Arc;

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

/// Smallest RSA modulus accepted (RFC 8725 §3.5 / NIST SP 800-131A).
pub const MIN_RSA_BITS: usize = 2048;

/// Algorithm families, so an RSA key can never verify an HMAC token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

pub fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Family::Rsa,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
    }
}

/// One usable key.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub family: Family,
    /// Set when the key (a JWK's `alg`) is bound to one algorithm.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
    /// Public keys parsed once by aws-lc-rs (the provider jsonwebtoken uses too), for
    /// each algorithm of their family: jsonwebtoken rebuilds the key from its bytes on
    /// every verification, a tenth of an RS256 check and a third of an ES256 one.
    pub parsed: Option<Arc<ParsedKey>>,
}

impl VerifyKey {
    pub fn new(
        kid: Option<String>,
        family: Family,
        alg: Option<Algorithm>,
        key: DecodingKey,
    ) -> VerifyKey {
        let parsed = ParsedKey::new(family, &key).map(Arc::new);
        VerifyKey {
            kid,
            family,
            alg,
            key,
            parsed,
        }
    }
}

/// One public key, ready to verify, for each algorithm it fits.
pub struct ParsedKey(Vec<(Algorithm, ParsedPublicKey)>);

fn params(alg: Algorithm) -> Option<&'static dyn sig::VerificationAlgorithm> {
    Some(match alg {
        Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &sig::ED25519,
        other => rsa_params(other)?,
    })
}

fn rsa_params(alg: Algorithm) -> Option<&'static RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl ParsedKey {
    /// None for HMAC keys and for keys aws-lc-rs cannot parse (jsonwebtoken's path is
    /// then used). An EC key parses only for its own curve's algorithm.
    fn new(fam: Family, key: &DecodingKey) -> Option<ParsedKey> {
        let parse = |alg: Algorithm| -> Option<ParsedPublicKey> {
            match key.kind() {
                DecodingKeyKind::SecretOrDer(bytes) => {
                    ParsedPublicKey::new(params(alg)?, bytes).ok()
                }
                DecodingKeyKind::RsaModulusExponent { n, e } => RsaPublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                }
                .to_parsed_public_key(rsa_params(alg)?)
                .ok(),
            }
        };
        let list: Vec<_> = ASYMMETRIC
            .iter()
            .filter(|a| family(**a) == fam)
            .filter_map(|a| Some((*a, parse(*a)?)))
            .collect();
        (!list.is_empty()).then_some(ParsedKey(list))
    }

    /// Checks a signature over the JWS signing input; None when this key has no parsed
    /// form for `alg` (the caller falls back to jsonwebtoken, which then refuses).
    pub fn verify(&self, alg: Algorithm, msg: &[u8], signature: &[u8]) -> Option<bool> {
        let (_, k) = self.0.iter().find(|(a, _)| *a == alg)?;
        Some(k.verify_sig(msg, signature).is_ok())
    }
}

/// The keys in force. Swapped whole on reload or JWKS refresh.
#[derive(Clone, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Bad(String),
}

impl KeySet {
    /// Keys that may verify a token with this `alg` and `kid`. A key without a kid
    /// matches any kid; a kid that names no key yields nothing (the caller may refetch).
    pub fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a VerifyKey> + 'a {
        let fam = family(alg);
        self.keys.iter().filter(move |k| {
            k.family == fam
                && k.alg.is_none_or(|a| a == alg)
                && match (kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        })
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn add_hmac(&mut self, secret: &[u8]) {
        self.keys.push(VerifyKey::new(
            None,
            Family::Hmac,
            None,
            DecodingKey::from_secret(secret),
        ));
    }

    /// Loads a public key PEM (RSA, EC or Ed25519), refusing RSA keys under 2048 bits.
    pub fn add_pem(&mut self, pem: &[u8], kid: Option<String>) -> Result<(), KeyError> {
        if pem.windows(7).any(|w| w == b"PRIVATE") {
            return Err(KeyError::Bad(
                "is a private key; give the public key".into(),
            ));
        }
        let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            let bits = rsa_bits_from_der(k.as_bytes()).unwrap_or(0);
            if bits < MIN_RSA_BITS {
                return Err(KeyError::Bad(format!(
                    "RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
                )));
            }
            (Family::Rsa, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            (Family::Ec, k)
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (Family::Ed, k)
        } else {
            return Err(KeyError::Bad(
                "is not an RSA, EC or Ed25519 public key in PEM".into(),
            ));
        };
        self.keys.push(VerifyKey::new(kid, family, None, key));
        Ok(())
    }

    /// Adds the usable keys of a JWKS document. Keys that do not fit (`use` other than
    /// `sig`, an `alg` outside the allow-list, `oct` keys, weak RSA, unknown types) are
    /// skipped and reported; a document that is not a JWKS at all is an error.
    pub fn add_jwks(&mut self, text: &str, allowed: &[Algorithm]) -> Result<Vec<String>, KeyError> {
        let doc: serde_json::Value =
            serde_json::from_str(text).map_err(|e| KeyError::Bad(format!("not JSON: {e}")))?;
        let list = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| KeyError::Bad("no `keys` array".into()))?;
        let mut skipped = Vec::new();
        for (i, raw) in list.iter().enumerate() {
            match parse_jwk(raw, allowed) {
                Ok(k) => self.keys.push(k),
                Err(why) => skipped.push(format!("key {i}: {why}")),
            }
        }
        Ok(skipped)
    }
}

fn parse_jwk(raw: &serde_json::Value, allowed: &[Algorithm]) -> Result<VerifyKey, String> {
    if raw.get("kty").and_then(|v| v.as_str()) == Some("oct") {
        return Err("symmetric (oct) keys are never taken from a JWKS".into());
    }
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| format!("unsupported: {e}"))?;
    if let Some(u) = &jwk.common.public_key_use {
        if *u != PublicKeyUse::Signature {
            return Err("`use` is not `sig`".into());
        }
    }
    let alg = match &jwk.common.key_algorithm {
        Some(ka) => {
            let alg: Algorithm = ka
                .to_string()
                .parse()
                .map_err(|_| format!("`alg` {ka} is not a signature algorithm"))?;
            if !allowed.contains(&alg) {
                return Err(format!("`alg` {ka} is not in auth.algorithms"));
            }
            Some(alg)
        }
        None => None,
    };
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = base64_url_len(&p.n);
            if n * 8 < MIN_RSA_BITS {
                return Err(format!("RSA key has {} bits", n * 8));
            }
            Family::Rsa
        }
        AlgorithmParameters::EllipticCurve(_) => Family::Ec,
        AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
        AlgorithmParameters::OctetKey(_) => return Err("oct keys are not accepted".into()),
    };
    if alg.is_some_and(|a| self::family(a) != family) {
        return Err("`alg` does not fit `kty`".into());
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key material: {e}"))?;
    Ok(VerifyKey::new(jwk.common.key_id.clone(), family, alg, key))
}

/// Decoded length of a base64url modulus, ignoring leading zero bytes.
fn base64_url_len(s: &str) -> usize {
    use base64::Engine;
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')) {
        Ok(b) => b.iter().skip_while(|x| **x == 0).count(),
        Err(_) => 0,
    }
}

/// Modulus size of a PKCS#1 `RSAPublicKey` DER (SEQUENCE { INTEGER n, INTEGER e }).
fn rsa_bits_from_der(der: &[u8]) -> Option<usize> {
    fn read_len(b: &[u8], i: &mut usize) -> Option<usize> {
        let first = *b.get(*i)?;
        *i += 1;
        if first < 0x80 {
            return Some(first as usize);
        }
        let n = (first & 0x7f) as usize;
        let mut len = 0usize;
        for _ in 0..n {
            len = (len << 8) | *b.get(*i)? as usize;
            *i += 1;
        }
        Some(len)
    }
    let mut i = 0;
    if *der.get(i)? != 0x30 {
        return None;
    }
    i += 1;
    read_len(der, &mut i)?;
    if *der.get(i)? != 0x02 {
        return None;
    }
    i += 1;
    let len = read_len(der, &mut i)?;
    let n = der.get(i..i + len)?;
    Some(n.iter().skip_while(|x| **x == 0).count() * 8)
}
