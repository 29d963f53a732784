//! `[cors]`: browsers on other origins. Preflights are never refused for lack of a token;
//! the sidecar forwards them (the backend owns its policy) or answers them from this
//! policy, and its own responses carry the CORS headers a page needs to read them.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{types, Checker};

/// Who answers CORS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CorsMode {
    /// Preflights go to the backend (identity headers stripped, no token needed); the
    /// sidecar adds CORS headers only to its own responses (refusals, renewed pairs).
    #[default]
    Forward,
    /// The sidecar answers preflights and sets the CORS headers of every response for an
    /// allowed origin, the backend's included (the backend's own are replaced).
    Policy,
}

/// The CORS policy.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Cors {
    /// `forward` or `policy` (see the modes).
    pub mode: CorsMode,
    /// Allowed origins: exact (`https://app.example.com`), one wildcard label for
    /// subdomains (`https://*.example.com`), or `*` (any; not with credentials).
    pub allowed_origins: Vec<String>,
    /// Methods a preflight may ask for (policy mode).
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight may ask for, lowercase (policy mode); `Authorization`,
    /// the refresh-token header and `Content-Type` are the usual ones.
    pub allowed_headers: Vec<String>,
    /// `Access-Control-Max-Age` of preflight answers (policy mode).
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub max_age: Duration,
    /// `Access-Control-Allow-Credentials: true` (cookies, `credentials: "include"`);
    /// refused together with a `*` origin.
    pub allow_credentials: bool,
    /// Also check `Origin` on WebSocket upgrades authenticated by a header (those
    /// authenticated by a cookie or a query parameter are always checked when origins
    /// are configured: cross-site WebSocket hijacking).
    pub websocket_origin_check_all: bool,
}

impl Default for Cors {
    fn default() -> Self {
        Self {
            mode: CorsMode::Forward,
            allowed_origins: Vec::new(),
            allowed_methods: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                .map(String::from)
                .to_vec(),
            allowed_headers: [
                "authorization",
                "content-type",
                "x-refresh-token",
                "x-request-id",
            ]
            .map(String::from)
            .to_vec(),
            max_age: Duration::from_secs(600),
            allow_credentials: false,
            websocket_origin_check_all: false,
        }
    }
}

impl Cors {
    pub(super) fn validate(&mut self, c: &mut Checker<'_>) {
        for o in &self.allowed_origins {
            let ok = o == "*"
                || ((o.starts_with("https://") || o.starts_with("http://"))
                    && !o.ends_with('/')
                    && o.split("://").nth(1).is_some_and(|h| {
                        !h.is_empty() && !h.contains('/') && !h[1..].contains('*')
                    }));
            if !ok {
                c.fail(format!(
                    "cors.allowed_origins: `{o}` is not an origin (scheme://host[:port], `*.` for one label, or `*`)"
                ));
            }
        }
        if self.allow_credentials && self.allowed_origins.iter().any(|o| o == "*") {
            c.fail("cors.allow_credentials: cannot go with a `*` origin (browsers refuse it, and it would let any site act as the user)".into());
        }
        for m in &self.allowed_methods {
            if http::Method::from_bytes(m.as_bytes()).is_err() {
                c.fail(format!("cors.allowed_methods: `{m}` is not a method"));
            }
        }
        for h in &mut self.allowed_headers {
            *h = h.to_ascii_lowercase();
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                c.fail(format!("cors.allowed_headers: `{h}` is not a header name"));
            }
        }
    }
}
