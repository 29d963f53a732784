//! `[assertion]`: a short-lived JWT the sidecar signs for the backend, so it can check the
//! identity itself (its public keys: `/.well-known/jwks.json` on the admin port).

use std::time::Duration;

use http::HeaderName;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::secret::Secret;
use super::{types, Checker};

/// The signed identity assertion.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Assertion {
    /// Request header that carries it to the backend (stripped from clients like every
    /// identity header).
    #[serde(with = "types::header")]
    #[schemars(with = "String")]
    pub header: HeaderName,
    /// The signing key, a secret reference to a PEM private key: EC P-256 (PKCS#8 or
    /// SEC1) for `ES256`, Ed25519 (PKCS#8) for `EdDSA`; required.
    pub key: Secret,
    /// `ES256` or `EdDSA`.
    pub algorithm: String,
    /// `kid` of the key (published in the JWKS); required. A reload with another key
    /// keeps publishing the old one until its last assertions have expired.
    pub kid: String,
    /// `iss` of the assertions.
    pub issuer: String,
    /// `aud` of the assertions (the backend); required.
    pub audience: String,
    /// Lifetime of an assertion, at most 60s (and never past the access token's `exp`).
    /// One assertion is reused for the same identity while it has more than half of
    /// this left, so signing does not cost a signature per request.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub ttl: Duration,
}

impl Default for Assertion {
    fn default() -> Self {
        Self {
            header: HeaderName::from_static("x-auth-assertion"),
            key: Secret::default(),
            algorithm: "ES256".into(),
            kid: String::new(),
            issuer: "auth-sidecar".into(),
            audience: String::new(),
            ttl: Duration::from_secs(60),
        }
    }
}

impl Assertion {
    pub(super) fn validate(&mut self, c: &mut Checker<'_>) {
        if !matches!(self.algorithm.as_str(), "ES256" | "EdDSA") {
            c.fail("assertion.algorithm: must be ES256 or EdDSA".into());
        }
        if !self.key.is_set() {
            c.fail("assertion.key: required (env or file)".into());
        } else {
            self.key.load("assertion.key", c);
        }
        if self.kid.is_empty() {
            c.fail("assertion.kid: required".into());
        }
        if self.audience.is_empty() {
            c.fail("assertion.audience: required".into());
        }
        if self.ttl.is_zero() || self.ttl > Duration::from_secs(60) {
            c.fail("assertion.ttl: must be between 1s and 60s".into());
        }
    }
}
