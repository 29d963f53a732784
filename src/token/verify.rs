//! Access-token verification with jsonwebtoken, and the cache that makes it happen once
//! per token. Claims are read only after the signature has been verified; an expired
//! token with a valid signature is reported as such, distinct from an invalid one.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, Validation};
use moka::sync::Cache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::keys::KeySet;
use crate::config::{Auth, Identity as IdentityCfg};

/// A token whose signature and claims were checked.
#[derive(Debug)]
pub struct Verified {
    pub sub: String,
    pub exp: u64,
    pub claims: Map<String, Value>,
    /// Identity headers, built once per token (values already checked).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Verified {
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(|v| v.as_str())
    }
}

/// What verification concluded about a well-signed token.
#[derive(Debug, Clone)]
pub enum Verdict {
    Valid(Arc<Verified>),
    /// Signature, issuer and audience verified, but `exp` has passed.
    Expired(Arc<Verified>),
}

/// Why a token is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Invalid(&'static str),
    /// The token names a key we do not have (a JWKS refetch may find it).
    #[error("the token names an unknown key")]
    UnknownKid,
    /// No keys loaded at all: an outage, not a bad token.
    #[error("no verification keys")]
    NoKeys,
}

/// SHA-256 of a token: the cache key, so tokens themselves are not kept in memory.
pub type TokenHash = [u8; 32];

pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verifies access tokens against the current key set and remembers verified ones.
pub struct Verifier {
    keys: RwLock<Arc<KeySet>>,
    /// One Validation per allowed algorithm: jsonwebtoken insists that every algorithm
    /// in a Validation fits the key, so a mixed allow-list cannot share one.
    validations: Vec<(Algorithm, Validation)>,
    leeway: u64,
    max_token_bytes: usize,
    /// `iss` must then be one string (RFC 7519 §4.1.1), not an array that contains ours.
    issuer_required: bool,
    required_claims: Vec<String>,
    identity: IdentityCfg,
    cache: Cache<TokenHash, Arc<Verified>>,
    /// Recently seen expired-but-well-signed tokens: a refresh herd (thousands of
    /// requests on one expired pair) checks the signature once, not once per request.
    expired: Cache<TokenHash, Arc<Verified>>,
    /// Claims worth keeping in a cached entry (those route rules read); the rest are
    /// dropped, so 100 000 cached tokens stay small.
    kept_claims: Vec<String>,
    hits: metrics::Counter,
    misses: metrics::Counter,
}

/// Each cache entry lives until its token's `exp` (plus leeway), never longer.
struct ExpireAtExp {
    leeway: u64,
}

impl moka::Expiry<TokenHash, Arc<Verified>> for ExpireAtExp {
    fn expire_after_create(
        &self,
        _k: &TokenHash,
        v: &Arc<Verified>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            (v.exp + self.leeway).saturating_sub(now_secs()),
        ))
    }
}

impl Verifier {
    pub fn new(auth: &Auth, identity: &IdentityCfg, keys: KeySet) -> Verifier {
        let mut v = Validation::new(Algorithm::HS256);
        // Time claims are checked by us, so that an expired token stays distinguishable.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.leeway = 0;
        let mut required: HashSet<String> = ["sub".to_string()].into();
        if let Some(iss) = &auth.issuer {
            v.set_issuer(&[iss]);
            required.insert("iss".into());
        }
        if auth.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&auth.audience);
            required.insert("aud".into());
        }
        v.required_spec_claims = required;
        let validations = auth
            .algorithms
            .iter()
            .map(|alg| {
                let mut one = v.clone();
                one.algorithms = vec![*alg];
                (*alg, one)
            })
            .collect();
        let leeway = auth.leeway.as_secs();
        let cache = Cache::builder()
            .max_capacity(auth.cache_capacity)
            .expire_after(ExpireAtExp { leeway })
            .build();
        Verifier {
            keys: RwLock::new(Arc::new(keys)),
            validations,
            leeway,
            max_token_bytes: auth.max_token_bytes,
            issuer_required: auth.issuer.is_some(),
            required_claims: auth.required_claims.clone(),
            identity: identity.clone(),
            cache,
            expired: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            kept_claims: Vec::new(),
            hits: metrics::counter!("auth_sidecar_verify_cache_total", "result" => "hit"),
            misses: metrics::counter!("auth_sidecar_verify_cache_total", "result" => "miss"),
        }
    }

    /// Keeps only these claims in cached entries (identity headers are already built).
    pub fn keep_claims(mut self, names: Vec<String>) -> Self {
        self.kept_claims = names;
        self
    }

    fn slim(&self, v: &Verified) -> Arc<Verified> {
        Arc::new(Verified {
            sub: v.sub.clone(),
            exp: v.exp,
            claims: v
                .claims
                .iter()
                .filter(|(k, _)| self.kept_claims.contains(k))
                .map(|(k, val)| (k.clone(), val.clone()))
                .collect(),
            headers: v.headers.clone(),
        })
    }

    /// Swaps the key set (reload, JWKS refresh); cached verdicts made with old keys go.
    pub fn set_keys(&self, keys: KeySet) {
        if let Ok(mut k) = self.keys.write() {
            *k = Arc::new(keys);
        }
        self.cache.invalidate_all();
        self.expired.invalidate_all();
    }

    pub fn keys(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn cache_size(&self) -> u64 {
        self.cache.entry_count()
    }

    /// The full check, with the cache in front.
    pub fn verify(&self, token: &str) -> Result<Verdict, VerifyError> {
        if token.len() > self.max_token_bytes {
            return Err(VerifyError::Invalid("the access token is too large"));
        }
        let key = hash_token(token);
        let now = now_secs();
        if let Some(v) = self.cache.get(&key) {
            if now <= v.exp + self.leeway {
                self.hits.increment(1);
                return Ok(Verdict::Valid(v));
            }
        }
        if let Some(v) = self.expired.get(&key) {
            self.hits.increment(1);
            return Ok(Verdict::Expired(v));
        }
        self.misses.increment(1);
        let verdict = self.verify_uncached(token, now)?;
        match &verdict {
            Verdict::Valid(v) => self.cache.insert(key, self.slim(v)),
            Verdict::Expired(v) => self.expired.insert(key, v.clone()),
        }
        Ok(verdict)
    }

    /// Signature, algorithm, issuer, audience and time checks, without the cache.
    pub fn verify_uncached(&self, token: &str, now: u64) -> Result<Verdict, VerifyError> {
        if token.len() > self.max_token_bytes {
            return Err(VerifyError::Invalid("the access token is too large"));
        }
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(VerifyError::Invalid("the access token is not a signed JWT"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| VerifyError::Invalid("the token header is malformed"))?;
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: we understand no extensions, so any `crit` is fatal.
            return Err(VerifyError::Invalid(
                "the token has critical header extensions",
            ));
        }
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(VerifyError::Invalid("the token's algorithm is not allowed"));
        };
        let keys = self.keys();
        if keys.is_empty() {
            return Err(VerifyError::NoKeys);
        }
        let kid = header.kid.as_deref();
        let mut last = VerifyError::UnknownKid;
        for k in keys.candidates(header.alg, kid) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, validation) {
                Ok(data) => return self.check_claims(data.claims, now),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = classify(&e);
                    let key_level = matches!(
                        e.kind(),
                        K::InvalidSignature
                            | K::InvalidAlgorithm
                            | K::InvalidEcdsaKey
                            | K::InvalidEddsaKey
                            | K::InvalidRsaKey(_)
                            | K::InvalidKeyFormat
                    );
                    // A claim failure after a good signature will not change with another key.
                    if !key_level {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    fn check_claims(&self, claims: Map<String, Value>, now: u64) -> Result<Verdict, VerifyError> {
        if self.issuer_required && !matches!(claims.get("iss"), Some(Value::String(_))) {
            return Err(VerifyError::Invalid("the token's issuer is not accepted"));
        }
        let exp = numeric_date(claims.get("exp"))
            .ok_or(VerifyError::Invalid("the token has no valid exp"))?;
        if let Some(nbf) = claims.get("nbf") {
            let nbf = numeric_date(Some(nbf))
                .ok_or(VerifyError::Invalid("the token's nbf is malformed"))?;
            if nbf > now + self.leeway {
                return Err(VerifyError::Invalid("the token is not valid yet"));
            }
        }
        if let Some(iat) = claims.get("iat") {
            numeric_date(Some(iat)).ok_or(VerifyError::Invalid("the token's iat is malformed"))?;
        }
        let sub = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(VerifyError::Invalid("the token has no subject")),
        };
        for c in &self.required_claims {
            if !claims.contains_key(c) {
                return Err(VerifyError::Invalid("the token lacks a required claim"));
            }
        }
        let headers = identity_headers(&self.identity, &sub, &claims)?;
        let v = Arc::new(Verified {
            sub,
            exp,
            claims,
            headers,
        });
        if now > exp + self.leeway {
            Ok(Verdict::Expired(v))
        } else {
            Ok(Verdict::Valid(v))
        }
    }
}

/// NumericDate (RFC 7519 §2): a non-negative JSON number; fractions are truncated.
fn numeric_date(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

fn classify(e: &jsonwebtoken::errors::Error) -> VerifyError {
    use jsonwebtoken::errors::ErrorKind as K;
    VerifyError::Invalid(match e.kind() {
        K::InvalidSignature => "the token's signature is invalid",
        K::InvalidIssuer => "the token's issuer is not accepted",
        K::InvalidAudience => "the token's audience is not accepted",
        K::MissingRequiredClaim(_) => "the token lacks a required claim",
        K::InvalidAlgorithm => "the token's algorithm does not fit the key",
        K::InvalidClaimFormat(_) => "the token has a malformed claim",
        _ => "the access token is malformed",
    })
}

/// Header values from claims. A value that is not a valid header value (CR, LF, NUL,
/// non-visible bytes) fails the token rather than being split or mangled.
pub(crate) fn identity_headers(
    cfg: &IdentityCfg,
    sub: &str,
    claims: &Map<String, Value>,
) -> Result<Vec<(HeaderName, HeaderValue)>, VerifyError> {
    const BAD: VerifyError = VerifyError::Invalid("a claim cannot be sent as a header value");
    let value = |s: &str| HeaderValue::from_str(s).map_err(|_| BAD);
    let mut out = vec![(cfg.user_id.clone(), value(sub)?)];
    let mut add = |name: &HeaderName, claim: Option<&Value>| -> Result<(), VerifyError> {
        match claim {
            Some(Value::String(s)) => out.push((name.clone(), value(s)?)),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                out.push((name.clone(), value(&v.to_string())?))
            }
            Some(Value::Array(items)) => {
                let parts: Option<Vec<&str>> = items.iter().map(|i| i.as_str()).collect();
                let joined = parts.ok_or(BAD)?.join(",");
                out.push((name.clone(), value(&joined)?));
            }
            Some(Value::Null) | None => {}
            Some(Value::Object(_)) => return Err(BAD),
        }
        Ok(())
    };
    add(&cfg.email, claims.get("email"))?;
    add(&cfg.name, claims.get("name"))?;
    for (claim, header) in &cfg.claims {
        add(header, claims.get(claim))?;
    }
    if let Some(h) = &cfg.all_claims {
        use base64::Engine;
        let json = serde_json::to_vec(claims).map_err(|_| BAD)?;
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        out.push((h.clone(), value(&enc)?));
    }
    Ok(out)
}
