//! `[token_endpoint]`: the API the vendors' guides ask the customer to build ("create an
//! API on your server" that returns the SDK's tokens), served by the sidecar on its
//! proxy port. Optional: without it, every path is proxied.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::secret::Secret;
use super::Checker;

/// How a client proves who it is to the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Proof {
    /// An app identity token in `app_identity.header` (needs `[app_identity]`).
    AppIdentity,
    /// Its access token (`Authorization: Bearer`), verified with `[auth]`: valid, or
    /// expired less than `initiate.max_staleness` ago.
    AccessToken,
}

/// What a response field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// The access token initiate returned (needs `[initiate]`).
    AccessToken,
    /// The refresh token initiate returned (needs `[initiate]`; `""` when none).
    RefreshToken,
    /// When the access token expires, seconds since the epoch (needs `[initiate]`).
    ExpiresAt,
    /// The user the client proved to be.
    UserId,
    /// The login JWT the sidecar signs (needs `[token_endpoint.login_jwt]`).
    LoginJwt,
}

impl Field {
    /// Needs a session from initiate.
    pub fn needs_session(self) -> bool {
        matches!(
            self,
            Field::AccessToken | Field::RefreshToken | Field::ExpiresAt
        )
    }
}

/// Which identifying claims go in a login JWT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LoginClaim {
    /// `externalId`: the app identity token's `externalId`, or the access token's `sub`.
    #[serde(rename = "externalId")]
    ExternalId,
    /// `email`: the proven identity's email.
    #[serde(rename = "email")]
    Email,
}

/// A login JWT signed by the sidecar (Kustomer's `logIn(jwt)`): HS256, header
/// `{"alg":"HS256","typ":"JWT"}`, the configured identifying claims and `iat` now.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct LoginJwt {
    /// HS256 key, a secret reference (required): Kustomer's secret from
    /// `GET /v1/auth/customer/settings` (`attributes.secret`).
    pub secret: Secret,
    /// Identifying claims put in, each when the identity has it (`externalId`, `email`);
    /// at least one must be there, or the request is refused (403). Kustomer uses
    /// `email` over `externalId` when both are present.
    pub claims: Vec<LoginClaim>,
}

impl Default for LoginJwt {
    fn default() -> Self {
        Self {
            secret: Secret::default(),
            claims: vec![LoginClaim::ExternalId],
        }
    }
}

/// The token endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct TokenEndpoint {
    /// Path on the proxy listener (exactly this path; `GET` or `POST`, preflights
    /// answered) that returns tokens as JSON instead of forwarding. Canonical, not `/`.
    pub path: String,
    /// Proofs accepted, tried in this order: `access_token`, `app_identity`.
    pub accept: Vec<Proof>,
    /// The JSON answer: field name → what it holds (`access_token`, `refresh_token`,
    /// `expires_at`, `user_id`, `login_jwt`). The default is the LikeMinds SDK's
    /// `{"accessToken", "refreshToken"}`.
    pub fields: BTreeMap<String, Field>,
    /// Sign a login JWT for the proven user (Kustomer); unset = none.
    pub login_jwt: Option<LoginJwt>,
}

impl Default for TokenEndpoint {
    fn default() -> Self {
        Self {
            path: "/_auth/tokens".into(),
            accept: vec![Proof::AccessToken, Proof::AppIdentity],
            fields: BTreeMap::from([
                ("accessToken".to_string(), Field::AccessToken),
                ("refreshToken".to_string(), Field::RefreshToken),
            ]),
            login_jwt: None,
        }
    }
}

impl TokenEndpoint {
    /// `initiate`, `app_identity`: whether those sections are set.
    pub(super) fn validate(&mut self, c: &mut Checker<'_>, initiate: bool, app_identity: bool) {
        let canonical = crate::path::canonical_path(&self.path).ok();
        let trimmed = self.path.trim_end_matches('/');
        if !self.path.starts_with('/')
            || trimmed.is_empty()
            || canonical.as_deref().map(|c| c.trim_end_matches('/')) != Some(trimmed)
        {
            c.fail(format!(
                "token_endpoint.path: `{}` must be a canonical path other than /",
                self.path
            ));
        }
        self.path = self.path.trim_end_matches('/').to_string();
        if self.fields.is_empty() {
            c.fail("token_endpoint.fields: name at least one field".into());
        }
        if !initiate && self.fields.values().any(|f| f.needs_session()) {
            c.fail("token_endpoint.fields: access_token, refresh_token and expires_at need an [initiate] section".into());
        }
        let mints = self.fields.values().any(|f| *f == Field::LoginJwt);
        if mints != self.login_jwt.is_some() {
            c.fail(
                "token_endpoint: a `login_jwt` field and [token_endpoint.login_jwt] go together"
                    .into(),
            );
        }
        self.accept.dedup();
        if self.accept.is_empty() {
            c.fail("token_endpoint.accept: name at least one proof".into());
        }
        if self.accept == [Proof::AppIdentity] && !app_identity {
            c.fail("token_endpoint.accept: app_identity needs an [app_identity] section".into());
        }
        if let Some(l) = &mut self.login_jwt {
            if !l.secret.is_set() {
                c.fail("token_endpoint.login_jwt.secret: required (env or file)".into());
            } else if l.secret.load("token_endpoint.login_jwt.secret", c) && l.secret.0.is_empty() {
                c.fail("token_endpoint.login_jwt.secret: must not be empty".into());
            }
            if l.claims.is_empty() {
                c.fail("token_endpoint.login_jwt.claims: name externalId, email or both".into());
            }
        }
    }
}
