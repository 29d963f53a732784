//! Access-token verification with jsonwebtoken, and the cache that makes it happen once
//! per token. Claims are read only after the signature has been verified; an expired
//! token with a valid signature is reported as such, distinct from an invalid one.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::cache::{hash_token, TokenCache};
use super::keys::KeySet;
use super::now_secs;
use crate::config::Auth;

/// What the layer above derives from a token's verified claims (its identity headers),
/// once per token; the token layer does not know what they are. An error refuses the
/// token (a claim that cannot be sent, say).
pub trait Project: Send + Sync + 'static {
    fn project(
        &self,
        sub: &str,
        claims: &Map<String, Value>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, &'static str>;
}

/// Derives nothing (app identity tokens never become identity headers).
pub struct NoProjection;

impl Project for NoProjection {
    fn project(
        &self,
        _: &str,
        _: &Map<String, Value>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, &'static str> {
        Ok(Vec::new())
    }
}

/// A token whose signature and claims were checked.
#[derive(Debug)]
pub struct Verified {
    pub sub: String,
    pub exp: u64,
    pub claims: Map<String, Value>,
    /// What [`Project`] derived from the claims (identity headers), once per token.
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
    /// The service that checks opaque tokens could not answer: an outage, not a bad token.
    #[error("the token service is unavailable")]
    Unavailable { retry_after: Duration },
}

/// Which claims a kind of token must carry, beyond a good signature.
#[derive(Debug, Clone, Copy)]
struct Policy {
    /// A non-empty `sub` (access tokens); app identity tokens name the user otherwise.
    require_sub: bool,
    /// An `exp` (access tokens); without one, an app identity token lives by `iat`.
    require_exp: bool,
    /// `iat` required and no older than this (seconds), nor in the future beyond leeway.
    max_age: Option<u64>,
}

/// Verifies access tokens against the current key set and remembers verified ones.
pub struct Verifier {
    keys: RwLock<Arc<KeySet>>,
    algorithms: Vec<Algorithm>,
    /// `iss` must be exactly this one string (RFC 7519 §4.1.1), not an array holding it.
    issuer: Option<String>,
    audience: Vec<String>,
    leeway: u64,
    max_token_bytes: usize,
    required_claims: Vec<String>,
    policy: Policy,
    project: Arc<dyn Project>,
    /// Verified tokens until their `exp` (plus leeway).
    cache: TokenCache<Arc<Verified>>,
    /// Recently seen expired-but-well-signed tokens: a refresh herd (thousands of
    /// requests on one expired pair) checks the signature once, not once per request.
    expired: TokenCache<Arc<Verified>>,
    /// How long an expired-but-well-signed token's verdict is remembered (seconds).
    expired_ttl: u64,
    /// Claims worth keeping in a cached entry (those route rules read); the rest are
    /// dropped, so 100 000 cached tokens stay small.
    kept_claims: Vec<String>,
    hits: metrics::Counter,
    misses: metrics::Counter,
}

impl Verifier {
    /// The access-token verifier: `auth`'s rules, identity derived by `project`.
    pub fn new(auth: &Auth, keys: KeySet, project: Arc<dyn Project>) -> Verifier {
        Verifier {
            keys: RwLock::new(Arc::new(keys)),
            algorithms: auth.algorithms.clone(),
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            leeway: auth.leeway.as_secs(),
            max_token_bytes: auth.max_token_bytes,
            required_claims: auth.required_claims.clone(),
            policy: Policy {
                require_sub: true,
                require_exp: true,
                max_age: None,
            },
            project,
            cache: TokenCache::new(auth.cache_capacity),
            expired: TokenCache::new(auth.expired_cache_capacity),
            expired_ttl: auth.expired_cache_ttl.as_secs(),
            kept_claims: Vec::new(),
            hits: metrics::counter!("auth_sidecar_verify_cache_total", "result" => "hit"),
            misses: metrics::counter!("auth_sidecar_verify_cache_total", "result" => "miss"),
        }
    }

    /// The verifier for the customer app's own identity tokens (Kustomer-style: HS256
    /// with the app secret, `externalId` or `email`, `iat` within `max_age`, `exp`
    /// optional): the same parser and checks as access tokens (duplicate members
    /// refused, `crit` refused), other claim rules.
    pub fn app_identity(secret: &[u8], leeway: Duration, max_age: Duration) -> Verifier {
        let mut keys = KeySet::default();
        keys.add_hmac(secret);
        let v = Verifier {
            keys: RwLock::new(Arc::new(keys)),
            algorithms: vec![Algorithm::HS256],
            issuer: None,
            audience: Vec::new(),
            leeway: leeway.as_secs(),
            max_token_bytes: 8 * 1024,
            required_claims: Vec::new(),
            policy: Policy {
                require_sub: false,
                require_exp: false,
                max_age: Some(max_age.as_secs()),
            },
            project: Arc::new(NoProjection),
            cache: TokenCache::new(1),
            expired: TokenCache::new(1),
            expired_ttl: 0,
            kept_claims: Vec::new(),
            hits: metrics::counter!("auth_sidecar_verify_cache_total", "result" => "hit"),
            misses: metrics::counter!("auth_sidecar_verify_cache_total", "result" => "miss"),
        };
        v.keep_claims(vec!["email".into(), "externalId".into(), "name".into()])
    }

    /// The verifier for OIDC back-channel logout tokens: the access tokens' algorithms,
    /// issuer and leeway (keys from [`Verifier::use_keys_of`]), `audience` instead of
    /// theirs; `sub` optional (a `sid` may name the session alone), `exp` optional, `iat`
    /// required and at most `max_age` old; no required claims of access tokens.
    pub fn logout_tokens(auth: &Auth, audience: Vec<String>, max_age: Duration) -> Verifier {
        let mut v = Verifier::new(auth, KeySet::default(), Arc::new(NoProjection));
        v.audience = audience;
        v.required_claims = Vec::new();
        v.policy = Policy {
            require_sub: false,
            require_exp: false,
            max_age: Some(max_age.as_secs()),
        };
        v.cache = TokenCache::new(1);
        v.expired = TokenCache::new(1);
        v.keep_claims(["sid", "jti", "events", "nonce"].map(String::from).to_vec())
    }

    /// Verifies with another verifier's current keys (kept current by JWKS refreshes).
    pub fn use_keys_of(&self, other: &Verifier) {
        let keys = other.keys();
        if let Ok(mut k) = self.keys.write() {
            *k = keys;
        }
    }

    /// Keeps only these claims in cached entries (identity headers are already built).
    pub fn keep_claims(mut self, names: Vec<String>) -> Self {
        self.kept_claims = names;
        self
    }

    /// Swaps the key set (reload, JWKS refresh); cached verdicts made with old keys go.
    pub fn set_keys(&self, keys: KeySet) {
        if let Ok(mut k) = self.keys.write() {
            *k = Arc::new(keys);
        }
        self.cache.clear();
        self.expired.clear();
    }

    pub fn keys(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn cache_size(&self) -> u64 {
        self.cache.len() as u64
    }

    /// Drops expired entries from both caches; when many went, hands the memory back.
    /// Returns how many went.
    pub fn sweep(&self) -> usize {
        let now = now_secs();
        let removed = self.cache.sweep(now) + self.expired.sweep(now);
        if removed >= 1024 {
            super::cache::release_freed_memory();
        }
        removed
    }

    /// The full check, with the cache in front.
    pub fn verify(&self, token: &str) -> Result<Verdict, VerifyError> {
        if token.len() > self.max_token_bytes {
            return Err(VerifyError::Invalid("the access token is too large"));
        }
        let key = hash_token(token);
        let now = now_secs();
        if let Some(v) = self.cache.get(&key, now) {
            self.hits.increment(1);
            return Ok(Verdict::Valid(v));
        }
        if let Some(v) = self.expired.get(&key, now) {
            self.hits.increment(1);
            return Ok(Verdict::Expired(v));
        }
        self.misses.increment(1);
        let verdict = self.verify_uncached(token, now)?;
        match &verdict {
            Verdict::Valid(v) => {
                self.cache
                    .insert(key, v.clone(), v.exp.saturating_add(self.leeway), now)
            }
            Verdict::Expired(v) => self
                .expired
                .insert(key, v.clone(), now + self.expired_ttl, now),
        }
        Ok(verdict)
    }

    /// Signature, algorithm, issuer, audience and time checks, without the cache.
    pub fn verify_uncached(&self, token: &str, now: u64) -> Result<Verdict, VerifyError> {
        self.verify_checked(token, now, false)
    }

    /// As [`Verifier::verify_uncached`], keeping every claim of a valid token (a proof of
    /// who a new session is for: its body template may read any claim).
    pub fn verify_full(&self, token: &str, now: u64) -> Result<Verdict, VerifyError> {
        self.verify_checked(token, now, true)
    }

    /// An identity vouched for by other means (the user an opaque token was issued
    /// for): `claims` projected into identity headers as a verified token's would be.
    pub fn vouch(
        &self,
        sub: &str,
        claims: Map<String, Value>,
        exp: u64,
    ) -> Result<Arc<Verified>, VerifyError> {
        let headers = self
            .project
            .project(sub, &claims)
            .map_err(VerifyError::Invalid)?;
        Ok(Arc::new(Verified {
            sub: sub.to_string(),
            exp,
            claims,
            headers,
        }))
    }

    fn verify_checked(
        &self,
        token: &str,
        now: u64,
        keep_all: bool,
    ) -> Result<Verdict, VerifyError> {
        if token.len() > self.max_token_bytes {
            return Err(VerifyError::Invalid("the access token is too large"));
        }
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Invalid("the access token is not a signed JWT"));
        };
        // Each part is decoded once (jsonwebtoken's `decode` reads the header three times
        // and the payload twice); the signature is checked before the payload is read.
        let header =
            JoseHeader::parse(head).ok_or(VerifyError::Invalid("the token header is malformed"))?;
        if header.crit {
            // RFC 7515 §4.1.11: we understand no extensions, so any `crit` is fatal.
            return Err(VerifyError::Invalid(
                "the token has critical header extensions",
            ));
        }
        let alg = header.alg;
        if !self.algorithms.contains(&alg) {
            return Err(VerifyError::Invalid("the token's algorithm is not allowed"));
        }
        let keys = self.keys();
        if keys.is_empty() {
            return Err(VerifyError::NoKeys);
        }
        let signature = B64
            .decode(sig)
            .map_err(|_| VerifyError::Invalid("the access token is malformed"))?;
        let signing_input = &token.as_bytes()[..head.len() + 1 + body.len()];
        let mut last = VerifyError::UnknownKid;
        for k in keys.candidates(alg, header.kid.as_deref()) {
            // The family of the key was matched to the algorithm by `candidates`.
            let parsed = k.parsed.as_ref();
            let good = match parsed.and_then(|p| p.verify(alg, signing_input, &signature)) {
                Some(good) => good,
                None => {
                    jsonwebtoken::crypto::verify(sig, signing_input, &k.key, alg).unwrap_or(false)
                }
            };
            if good {
                let UniqueMap(claims) =
                    b64_json(body).ok_or(VerifyError::Invalid("the access token is malformed"))?;
                return self.check_claims(claims, now, keep_all);
            }
            last = VerifyError::Invalid("the token's signature is invalid");
        }
        Err(last)
    }

    fn check_claims(
        &self,
        mut claims: Map<String, Value>,
        now: u64,
        keep_all: bool,
    ) -> Result<Verdict, VerifyError> {
        const MISSING: VerifyError = VerifyError::Invalid("the token lacks a required claim");
        if let Some(want) = &self.issuer {
            match claims.get("iss") {
                None | Some(Value::Null) => return Err(MISSING),
                Some(Value::String(s)) if s == want => {}
                Some(_) => return Err(VerifyError::Invalid("the token's issuer is not accepted")),
            }
        }
        if !self.audience.is_empty() {
            let ours = |v: &Value| {
                v.as_str()
                    .is_some_and(|s| self.audience.iter().any(|a| a == s))
            };
            let ok = match claims.get("aud") {
                None | Some(Value::Null) => return Err(MISSING),
                Some(v @ Value::String(_)) => ours(v),
                // RFC 7519 §4.1.3: an array of strings, one of which must be ours.
                Some(Value::Array(list)) => {
                    list.iter().all(Value::is_string) && list.iter().any(ours)
                }
                Some(_) => false,
            };
            if !ok {
                return Err(VerifyError::Invalid("the token's audience is not accepted"));
            }
        }
        let exp = match claims.get("exp") {
            None if !self.policy.require_exp => u64::MAX - self.leeway,
            e => numeric_date(e).ok_or(VerifyError::Invalid("the token has no valid exp"))?,
        };
        if let Some(nbf) = claims.get("nbf") {
            let nbf = numeric_date(Some(nbf))
                .ok_or(VerifyError::Invalid("the token's nbf is malformed"))?;
            if nbf > now + self.leeway {
                return Err(VerifyError::Invalid("the token is not valid yet"));
            }
        }
        let iat = match claims.get("iat") {
            Some(iat) => Some(
                numeric_date(Some(iat))
                    .ok_or(VerifyError::Invalid("the token's iat is malformed"))?,
            ),
            None => None,
        };
        if let Some(max_age) = self.policy.max_age {
            let iat = iat.ok_or(MISSING)?;
            if iat > now + self.leeway || now.saturating_sub(iat) > max_age {
                return Err(VerifyError::Invalid(
                    "the token is too old or not valid yet",
                ));
            }
        }
        let sub = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None if !self.policy.require_sub => String::new(),
            _ => return Err(VerifyError::Invalid("the token has no subject")),
        };
        for c in &self.required_claims {
            if !claims.contains_key(c) {
                return Err(VerifyError::Invalid("the token lacks a required claim"));
            }
        }
        let headers = self
            .project
            .project(&sub, &claims)
            .map_err(VerifyError::Invalid)?;
        // Saturating: a signed `exp` may be any NumericDate, 1e300 included.
        let expired = now > exp.saturating_add(self.leeway);
        if !expired && !keep_all {
            // A valid token is cached until it expires: keep only the claims route rules
            // read (its identity headers are built). An expired one keeps all of them, for
            // the initiate body.
            // A new map, not `retain`: an emptied BTreeMap keeps its ~600-byte node.
            claims = std::mem::take(&mut claims)
                .into_iter()
                .filter(|(k, _)| self.kept_claims.contains(k))
                .collect();
        }
        let v = Arc::new(Verified {
            sub,
            exp,
            claims,
            headers,
        });
        if expired {
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

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The JOSE header fields we act on (RFC 7515 §4.1).
struct JoseHeader {
    /// Must name an algorithm jsonwebtoken knows: `none` and odd spellings do not parse.
    alg: Algorithm,
    kid: Option<String>,
    /// Any `crit`: RFC 7515 §4.1.11 makes a token with extensions we do not understand
    /// invalid, and we understand none.
    crit: bool,
}

impl JoseHeader {
    fn parse(part: &str) -> Option<JoseHeader> {
        let UniqueMap(mut h) = b64_json(part)?;
        let alg = match h.get("alg") {
            Some(Value::String(s)) => s.parse().ok()?,
            _ => return None,
        };
        let kid = match h.remove("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return None,
        };
        let crit = !matches!(h.get("crit"), None | Some(Value::Null));
        Some(JoseHeader { alg, kid, crit })
    }
}

/// A JSON object whose top-level member names are unique (the claims and header fields
/// we read are all top-level). RFC 7519 §4 lets a parser reject duplicates or take the
/// last; rejecting means no two readers of a token can disagree about its `sub` or `exp`.
/// Nested objects keep serde_json's last-wins; nesting is bounded by its recursion limit.
struct UniqueMap(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<UniqueMap, A::Error> {
                let mut m = Map::new();
                while let Some((k, v)) = a.next_entry::<String, Value>()? {
                    if m.contains_key(&k) {
                        return Err(serde::de::Error::custom("duplicate member"));
                    }
                    m.insert(k, v);
                }
                Ok(UniqueMap(m))
            }
        }
        d.deserialize_map(Members)
    }
}

/// A base64url (no padding) JSON part of a compact JWS.
fn b64_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let raw = B64.decode(part).ok()?;
    serde_json::from_slice(&raw).ok()
}
