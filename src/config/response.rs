//! `[response_tokens]`: how renewed tokens reach the client.

use http::HeaderName;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{types, Checker};

/// Where a new pair (after refresh or initiate) is sent to the client.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ResponseTokens {
    /// Response header with the new access token (exposed to browsers through
    /// `Access-Control-Expose-Headers`).
    #[serde(with = "types::header")]
    #[schemars(with = "String")]
    pub access_header: HeaderName,
    /// Response header with the new refresh token.
    #[serde(with = "types::header")]
    #[schemars(with = "String")]
    pub refresh_header: HeaderName,
    /// Send new tokens as `Set-Cookie` (HttpOnly; the access cookie's `Max-Age` from the
    /// token) instead of headers.
    pub cookies: bool,
    /// Cookie name of the access token in cookie mode.
    pub access_cookie: String,
    /// Cookie name of the refresh token in cookie mode.
    pub refresh_cookie: String,
    /// `SameSite` of the cookies: `Strict`, `Lax` or `None`.
    pub cookie_same_site: String,
    /// `Secure` attribute of the cookies.
    pub cookie_secure: bool,
    /// `Path` attribute of the cookies.
    pub cookie_path: String,
    /// `Path` of the refresh cookie alone (e.g. the API prefix that refreshes); unset =
    /// `cookie_path`.
    pub refresh_cookie_path: Option<String>,
    /// `Partitioned` (CHIPS) on the cookies, for a cross-site embed; needs `Secure`.
    pub cookie_partitioned: bool,
}

impl Default for ResponseTokens {
    fn default() -> Self {
        Self {
            access_header: HeaderName::from_static("x-auth-access-token"),
            refresh_header: HeaderName::from_static("x-auth-refresh-token"),
            cookies: false,
            access_cookie: "access_token".into(),
            refresh_cookie: "refresh_token".into(),
            cookie_same_site: "Lax".into(),
            cookie_secure: true,
            cookie_path: "/".into(),
            refresh_cookie_path: None,
            cookie_partitioned: false,
        }
    }
}

impl ResponseTokens {
    pub(super) fn validate(&self, c: &mut Checker<'_>) {
        if !matches!(self.cookie_same_site.as_str(), "Strict" | "Lax" | "None") {
            c.fail("response_tokens.cookie_same_site: must be Strict, Lax or None".into());
        }
        if self.cookies && self.cookie_same_site == "None" && !self.cookie_secure {
            c.fail("response_tokens.cookie_same_site: None needs cookie_secure = true".into());
        }
        if self.cookie_partitioned && !self.cookie_secure {
            c.fail("response_tokens.cookie_partitioned: needs cookie_secure = true".into());
        }
    }
}
