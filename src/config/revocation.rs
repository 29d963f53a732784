//! `[revocation]`: taking a user out at once (log out everywhere, bans, one token or
//! session, OIDC back-channel logout). Optional: without it nothing is ever revoked and
//! the request path does no revocation work at all.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::secret::Secret;
use super::{types, Checker};

/// Revocation and bans.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Revocation {
    /// Bearer secret of the admin API's `/revocations/…` endpoints, a secret reference
    /// of at least 16 bytes; unset = those endpoints answer 404 (off).
    pub admin_secret: Option<Secret>,
    /// The longest time a token issued before a revocation can still be presented (the
    /// access-token lifetime; plus `initiate.max_staleness` when initiate renews old
    /// tokens). A log-out-everywhere or a revoked `jti`/`sid` is kept this long plus
    /// `auth.leeway` (locally and in the shared store), then forgotten.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub max_token_lifetime: Duration,
    /// Longest ban accepted.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub max_ban: Duration,
    /// Revoked users plus revoked tokens and sessions held, at most (bounded memory); a
    /// revocation beyond it is refused with 507 and nothing changes.
    pub max_entries: usize,
    /// Serve OIDC Back-Channel Logout 1.0 at `POST /backchannel-logout` on the admin
    /// port (the identity provider's call carries no admin secret: the logout token is
    /// verified with the access-token keys and issuer).
    pub backchannel_logout: bool,
    /// Accepted `aud` of logout tokens (your client id at the identity provider); empty
    /// = `auth.audience`. One of the two must be set when `backchannel_logout` is on.
    pub backchannel_audience: Vec<String>,
    /// A logout token's `iat` may be at most this old (and its `jti` is remembered this
    /// long, so a replay is refused).
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub backchannel_max_age: Duration,
}

impl Default for Revocation {
    fn default() -> Self {
        Self {
            admin_secret: None,
            max_token_lifetime: Duration::from_secs(24 * 3600),
            max_ban: Duration::from_secs(365 * 24 * 3600),
            max_entries: 1_000_000,
            backchannel_logout: false,
            backchannel_audience: Vec::new(),
            backchannel_max_age: Duration::from_secs(120),
        }
    }
}

impl Revocation {
    pub(super) fn validate(&mut self, c: &mut Checker<'_>, audience: &[String]) {
        if let Some(s) = &mut self.admin_secret {
            if s.load("revocation.admin_secret", c) && s.0.len() < 16 {
                c.fail("revocation.admin_secret: must be at least 16 bytes".into());
            }
        }
        if self.max_token_lifetime.is_zero()
            || self.max_token_lifetime > Duration::from_secs(30 * 24 * 3600)
        {
            c.fail("revocation.max_token_lifetime: must be above zero and at most 30d".into());
        }
        if self.max_ban.is_zero() || self.max_ban > Duration::from_secs(10 * 365 * 24 * 3600) {
            c.fail("revocation.max_ban: must be above zero and at most 3650d".into());
        }
        if self.max_entries == 0 || self.max_entries > 10_000_000 {
            c.fail("revocation.max_entries: must be between 1 and 10000000".into());
        }
        if self.backchannel_logout && self.backchannel_audience.is_empty() && audience.is_empty() {
            c.fail("revocation.backchannel_audience: required when backchannel_logout is on and auth.audience is empty".into());
        }
        if self.backchannel_max_age.is_zero()
            || self.backchannel_max_age > Duration::from_secs(3600)
        {
            c.fail("revocation.backchannel_max_age: must be above zero and at most 1h".into());
        }
    }
}
