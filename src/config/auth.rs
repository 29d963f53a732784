//! `[auth]`: how access tokens are found and verified, and where the keys come from
//! (HMAC secret, PEM public keys, a JWKS file, a JWKS URL).

use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Uri};
use jsonwebtoken::Algorithm;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::secret::Secret;
use super::{types, Checker};

/// Access token verification.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Auth {
    /// Allow-list, at least one: HS256/384/512, RS256/384/512, PS256/384/512,
    /// ES256/384, EdDSA.
    #[serde(with = "types::algorithms")]
    #[schemars(with = "Vec<String>")]
    pub algorithms: Vec<Algorithm>,
    /// HMAC key for the HS* algorithms, a secret reference of at least 32 bytes
    /// (RFC 7518 §3.2); required when an HS* algorithm is allowed, refused otherwise.
    pub hmac_secret: Option<Secret>,
    /// PEM public keys, `[{ file = "key.pem", kid = "k1" }]`: RSA (≥ 2048 bits), EC or
    /// Ed25519.
    pub public_keys: Vec<PublicKey>,
    /// A JWKS document on disk; `oct` keys and keys whose `use`/`alg`/`kty` do not fit
    /// are ignored.
    #[serde(rename = "jwks_file")]
    #[schemars(with = "Option<PathBuf>")]
    pub jwks: Option<JwksFile>,
    /// Remote JWKS: fetched before the sidecar reports ready, refreshed per
    /// `Cache-Control: max-age` within `jwks_min_refresh` … `jwks_max_refresh`,
    /// refetched on an unknown `kid` at most once per `jwks_unknown_kid_interval`; the
    /// last good key set keeps serving while the endpoint is down.
    #[serde(with = "types::opt_http_url")]
    #[schemars(with = "Option<String>")]
    pub jwks_url: Option<Uri>,
    /// Shortest interval between JWKS refreshes, above zero and not above
    /// `jwks_max_refresh`.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub jwks_min_refresh: Duration,
    /// Longest interval between JWKS refreshes (also when the answer has no max-age).
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub jwks_max_refresh: Duration,
    /// A token naming an unknown `kid` refetches the JWKS at most once per this interval,
    /// so attacker-chosen kids cannot make the sidecar hammer the endpoint.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub jwks_unknown_kid_interval: Duration,
    /// Timeout of one JWKS fetch.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub jwks_timeout: Duration,
    /// Largest JWKS document accepted, in bytes (1 … 16777216); a larger answer is a
    /// failed fetch.
    pub jwks_max_bytes: usize,
    /// Required `iss` when set.
    pub issuer: Option<String>,
    /// Accepted `aud` values; when set, `aud` is required.
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// Claims that must be present.
    pub required_claims: Vec<String>,
    /// Longer tokens are refused before decoding; 64 … 65536 bytes.
    pub max_token_bytes: usize,
    /// Verified-token cache entries, at most, at least 1 (16 shards of 1/16 each from
    /// 1 024 up; a full shard drops expired entries first, then an arbitrary one);
    /// expired entries are swept every 5 s and the memory handed back.
    pub cache_capacity: u64,
    /// Entries, at most (at least 1), in the cache of expired tokens whose signature was
    /// valid (the input to refresh and initiate), so a retry storm of one expired token
    /// verifies its signature once.
    pub expired_cache_capacity: u64,
    /// How long an expired-but-well-signed token is remembered in that cache; above
    /// zero.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub expired_cache_ttl: Duration,
    /// Forward the `Authorization` header to the backend (after a refresh: the new
    /// token).
    pub forward_authorization: bool,
    /// Also accept the access token from this cookie (not empty when set).
    pub cookie: Option<String>,
    /// On WebSocket upgrades only: accept the token from this query parameter (removed
    /// before forwarding; not empty when set).
    pub query_param: Option<String>,
    /// On upgrades only: a `Sec-WebSocket-Protocol` entry with this prefix carries the
    /// token (removed before forwarding; not empty when set).
    pub websocket_protocol_prefix: Option<String>,
    /// Also accept the access token as the whole value of this header (ConnectyCube
    /// clients send `CB-Token: <token>`); one credential per request as for the others.
    #[serde(with = "types::opt_header")]
    #[schemars(with = "Option<String>")]
    pub token_header: Option<HeaderName>,
    /// Forward `token_header` to the backend (after a renewal: the new token); off =
    /// removed.
    pub forward_token_header: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            algorithms: vec![Algorithm::HS256],
            hmac_secret: None,
            public_keys: Vec::new(),
            jwks: None,
            jwks_url: None,
            jwks_min_refresh: Duration::from_secs(60),
            jwks_max_refresh: Duration::from_secs(3600),
            jwks_unknown_kid_interval: Duration::from_secs(30),
            jwks_timeout: Duration::from_secs(5),
            jwks_max_bytes: 512 * 1024,
            issuer: None,
            audience: Vec::new(),
            leeway: Duration::from_secs(30),
            required_claims: Vec::new(),
            max_token_bytes: 8 * 1024,
            cache_capacity: 100_000,
            expired_cache_capacity: 10_000,
            expired_cache_ttl: Duration::from_secs(60),
            forward_authorization: true,
            cookie: None,
            query_param: None,
            websocket_protocol_prefix: None,
            token_header: None,
            forward_token_header: false,
        }
    }
}

/// One PEM public key.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct PublicKey {
    /// PEM file of the public key (required).
    pub file: PathBuf,
    /// The `kid` that tokens signed with this key carry; unset = tried for any token.
    pub kid: Option<String>,
    /// The file's contents, read at validation.
    #[serde(skip)]
    pub pem: Vec<u8>,
}

/// A JWKS document read from disk; written back as its path.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "PathBuf", into = "PathBuf")]
pub struct JwksFile {
    pub path: PathBuf,
    /// The document, read at validation.
    pub text: String,
}

impl From<PathBuf> for JwksFile {
    fn from(path: PathBuf) -> Self {
        JwksFile {
            path,
            text: String::new(),
        }
    }
}

impl From<JwksFile> for PathBuf {
    fn from(j: JwksFile) -> Self {
        j.path
    }
}

/// The remote JWKS settings, when `auth.jwks_url` is set.
#[derive(Clone, Debug)]
pub struct Jwks {
    pub url: Uri,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub unknown_kid_interval: Duration,
    pub timeout: Duration,
    pub max_bytes: usize,
}

fn is_hmac(a: &Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl Auth {
    /// The remote JWKS settings, when `jwks_url` is set.
    pub fn remote_jwks(&self) -> Option<Jwks> {
        self.jwks_url.as_ref().map(|url| Jwks {
            url: url.clone(),
            min_refresh: self.jwks_min_refresh,
            max_refresh: self.jwks_max_refresh,
            unknown_kid_interval: self.jwks_unknown_kid_interval,
            timeout: self.jwks_timeout,
            max_bytes: self.jwks_max_bytes,
        })
    }

    /// Whether any JWT key source is configured (none: every token is opaque, checked
    /// by the session check).
    pub fn has_keys(&self) -> bool {
        self.hmac_secret.is_some()
            || !self.public_keys.is_empty()
            || self.jwks.is_some()
            || self.jwks_url.is_some()
    }

    /// `opaque`: a session check is configured, so a config without any JWT key is
    /// valid (every token goes to the session check).
    pub(super) fn validate(&mut self, c: &mut Checker<'_>, opaque: bool) {
        let keyless = opaque && !self.has_keys();
        if self.algorithms.is_empty() {
            c.fail("auth.algorithms: at least one algorithm is required".into());
        }
        let wants_hmac = self.algorithms.iter().any(is_hmac);
        let wants_public = self.algorithms.iter().any(|a| !is_hmac(a));
        if let Some(s) = &mut self.hmac_secret {
            if s.load("auth.hmac_secret", c) && s.0.len() < 32 {
                c.fail("auth.hmac_secret: must be at least 32 bytes (RFC 7518 §3.2)".into());
            }
        }
        if wants_hmac && self.hmac_secret.is_none() && !keyless {
            c.fail(
                "auth.hmac_secret: an HS* algorithm is allowed but no secret is configured".into(),
            );
        }
        if !wants_hmac && self.hmac_secret.is_some() {
            c.fail("auth.hmac_secret: set, but no HS* algorithm is in auth.algorithms".into());
        }
        for (i, k) in self.public_keys.iter_mut().enumerate() {
            if k.file.as_os_str().is_empty() {
                c.fail(format!("auth.public_keys[{i}].file: required"));
                continue;
            }
            match std::fs::read(&k.file) {
                Ok(pem) => k.pem = pem,
                Err(e) => c.fail(format!(
                    "auth.public_keys[{i}]: cannot read {}: {e}",
                    k.file.display()
                )),
            }
        }
        if let Some(j) = &mut self.jwks {
            match std::fs::read_to_string(&j.path) {
                Ok(t) => j.text = t,
                Err(e) => c.fail(format!(
                    "auth.jwks_file: cannot read {}: {e}",
                    j.path.display()
                )),
            }
        }
        if wants_public
            && !keyless
            && self.public_keys.is_empty()
            && self.jwks.is_none()
            && self.jwks_url.is_none()
        {
            c.fail("auth: an asymmetric algorithm is allowed but no public_keys, jwks_file or jwks_url is configured".into());
        }
        if self.jwks_url.is_some()
            && (self.jwks_min_refresh > self.jwks_max_refresh || self.jwks_min_refresh.is_zero())
        {
            c.fail(
                "auth.jwks_min_refresh: must be above zero and not above jwks_max_refresh".into(),
            );
        }
        if self.jwks_max_bytes == 0 || self.jwks_max_bytes > 16 * 1024 * 1024 {
            c.fail("auth.jwks_max_bytes: must be between 1 and 16777216".into());
        }
        if self.max_token_bytes < 64 || self.max_token_bytes > 64 * 1024 {
            c.fail("auth.max_token_bytes: must be between 64 and 65536".into());
        }
        if self.cache_capacity == 0 {
            c.fail("auth.cache_capacity: must be at least 1".into());
        }
        if self.expired_cache_capacity == 0 {
            c.fail("auth.expired_cache_capacity: must be at least 1".into());
        }
        if self.expired_cache_ttl.is_zero() {
            c.fail("auth.expired_cache_ttl: must be greater than zero".into());
        }
        if self.token_header.as_ref().is_some_and(|h| {
            h == http::header::AUTHORIZATION || h == http::header::COOKIE || h == http::header::HOST
        }) {
            c.fail("auth.token_header: must be a header of its own (not Authorization, Cookie or Host)".into());
        }
        for (key, v) in [
            ("auth.cookie", &self.cookie),
            ("auth.query_param", &self.query_param),
            (
                "auth.websocket_protocol_prefix",
                &self.websocket_protocol_prefix,
            ),
        ] {
            if v.as_deref().is_some_and(|s| s.is_empty()) {
                c.fail(format!("{key}: must not be empty when set"));
            }
        }
    }
}
