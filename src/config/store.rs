//! `[shared_store]`: Redis (or a compatible fork) shared by the replicas, so that each
//! refresh and initiate call is made once across all of them. Optional: without it,
//! each replica coordinates its own calls.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::secret::Secret;
use super::{types, Checker};

/// The shared store.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct SharedStore {
    /// `redis://host:port/db` or `rediss://…` (TLS, verified against the web PKI roots
    /// plus `backend.ca_file`); required. With `cluster = true`, any one node of the
    /// cluster.
    pub url: String,
    /// Redis ACL user name, a secret reference; unset = none (or the URL's).
    pub username: Option<Secret>,
    /// Redis password, a secret reference; unset = none (or the URL's).
    pub password: Option<Secret>,
    /// Key for the keyed hashes that name stored keys and for sealing stored values
    /// (AES-256-GCM, with a key derived from it and the old refresh token or user), a
    /// secret reference of at least 32 bytes; required, and the same on every replica.
    pub secret: Secret,
    /// Prefix of every key this sidecar writes.
    pub key_prefix: String,
    /// Bound on every store operation (connect included); past it the replica falls back
    /// to its own single flight.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub operation_timeout: Duration,
    /// Lease held by the replica making a call, at least 300ms; renewed every third of
    /// it while the call runs, so a token service slower than the lease does not let a
    /// second replica in; when the holder dies, another replica takes over after at most
    /// this long. The default outlasts the default call timeouts even without renewal.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub lease: Duration,
    /// How long a request waits for another replica's call before it is answered 503
    /// with `Retry-After` (the client keeps its tokens); longer than `lease`.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub wait_timeout: Duration,
    /// After a store failure, how long the store is skipped (each replica coordinates
    /// its own calls meanwhile) before it is tried again.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub backoff: Duration,
    /// Largest stored value written or read back (bytes).
    pub max_value_bytes: usize,
    /// The URL names a Redis Cluster node (keys of one flight share a hash tag).
    pub cluster: bool,
}

impl Default for SharedStore {
    fn default() -> Self {
        Self {
            url: String::new(),
            username: None,
            password: None,
            secret: Secret::default(),
            key_prefix: "auth-sidecar:".into(),
            operation_timeout: Duration::from_millis(150),
            lease: Duration::from_secs(10),
            wait_timeout: Duration::from_secs(15),
            backoff: Duration::from_secs(5),
            max_value_bytes: 32 * 1024,
            cluster: false,
        }
    }
}

impl SharedStore {
    pub(super) fn validate(&mut self, c: &mut Checker<'_>) {
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://")) {
            c.fail(format!(
                "shared_store.url: `{}` is not a redis:// or rediss:// URL",
                self.url
            ));
        }
        if !self.secret.is_set() {
            c.fail("shared_store.secret: required (env or file)".into());
        } else if self.secret.load("shared_store.secret", c) && self.secret.0.len() < 32 {
            c.fail("shared_store.secret: must be at least 32 bytes".into());
        }
        for (key, s) in [
            ("shared_store.username", &mut self.username),
            ("shared_store.password", &mut self.password),
        ] {
            if let Some(s) = s {
                s.load(key, c);
            }
        }
        if self.operation_timeout.is_zero() {
            c.fail("shared_store.operation_timeout: must be greater than zero".into());
        }
        if self.backoff.is_zero() {
            c.fail("shared_store.backoff: must be greater than zero".into());
        }
        if self.lease < Duration::from_millis(300) {
            c.fail("shared_store.lease: must be at least 300ms".into());
        }
        let hour = Duration::from_secs(3600);
        for (key, d) in [
            ("shared_store.operation_timeout", self.operation_timeout),
            ("shared_store.lease", self.lease),
            ("shared_store.wait_timeout", self.wait_timeout),
            ("shared_store.backoff", self.backoff),
        ] {
            if d > hour {
                c.fail(format!("{key}: must be at most 1h"));
            }
        }
        if self.wait_timeout <= self.lease {
            c.fail("shared_store.wait_timeout: must be longer than shared_store.lease".into());
        }
        if self.max_value_bytes < 1024 || self.max_value_bytes > 1024 * 1024 {
            c.fail("shared_store.max_value_bytes: must be between 1024 and 1048576".into());
        }
    }
}
