//! `[identity]`: the headers the sidecar sets from a verified token, and the prefix of
//! headers it owns (removed from every inbound request).

use std::collections::BTreeMap;

use http::HeaderName;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{types, Checker};

/// Identity headers.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Identity {
    /// Every inbound header with this prefix is removed, in any case and with `_` for
    /// `-` (stored lowercase, `-` form); at least 3 characters.
    pub prefix: String,
    /// Header set from `sub`.
    #[serde(with = "types::header")]
    #[schemars(with = "String")]
    pub user_id: HeaderName,
    /// Header set from `email`.
    #[serde(with = "types::header")]
    #[schemars(with = "String")]
    pub email: HeaderName,
    /// Header set from `name`.
    #[serde(with = "types::header")]
    #[schemars(with = "String")]
    pub name: HeaderName,
    /// Header set from the claim `session_kind` (`app`, `guest` or `user`, from the
    /// session check), when the identity has one.
    #[serde(with = "types::header")]
    #[schemars(with = "String")]
    pub session_kind: HeaderName,
    /// Extra claim → header map, e.g. `{ role = "x-auth-role" }` (arrays joined with `,`).
    #[serde(with = "types::header_map")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub claims: BTreeMap<String, HeaderName>,
    /// Header carrying all verified claims as base64url JSON; unset = not sent.
    #[serde(with = "types::opt_header")]
    #[schemars(with = "Option<String>")]
    pub all_claims: Option<HeaderName>,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            prefix: "x-auth-".into(),
            user_id: HeaderName::from_static("x-auth-user-id"),
            email: HeaderName::from_static("x-auth-email"),
            name: HeaderName::from_static("x-auth-name"),
            session_kind: HeaderName::from_static("x-auth-session-kind"),
            claims: BTreeMap::new(),
            all_claims: None,
        }
    }
}

impl Identity {
    /// Every header the sidecar sets from identity.
    pub fn all_headers(&self) -> impl Iterator<Item = &HeaderName> {
        [&self.user_id, &self.email, &self.name, &self.session_kind]
            .into_iter()
            .chain(self.claims.values())
            .chain(self.all_claims.iter())
    }

    pub(super) fn validate(&mut self, c: &mut Checker<'_>) {
        self.prefix = self.prefix.to_ascii_lowercase().replace('_', "-");
        if self.prefix.len() < 3 {
            c.fail("identity.prefix: must be at least 3 characters (e.g. x-auth-)".into());
        }
        let mut bad = Vec::new();
        for h in self.all_headers() {
            if h.as_str().starts_with("x-forwarded-")
                || h == http::header::AUTHORIZATION
                || h == http::header::HOST
            {
                bad.push(format!("identity: `{h}` cannot be an identity header"));
            }
        }
        bad.into_iter().for_each(|m| c.fail(m));
    }
}
