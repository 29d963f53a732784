//! `[[routes]]`: per-path rules (mode, methods, required claims).

use http::Method;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, Serializer};

use super::{types, Checker};

/// One route rule. The longest prefix on segment boundaries wins.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Route {
    /// Path prefix (required): canonical, starting with `/` (no dot segments, encoded
    /// characters or `//`), each listed once; matched on segment boundaries. Stored
    /// without trailing slash (`""` for the root rule, written back as `/`).
    #[serde(serialize_with = "root_as_slash")]
    pub prefix: String,
    /// `required` (the default): a valid token is needed; `optional`: anonymous
    /// requests are forwarded without identity, but a bad token is still a 401;
    /// `public`: no authentication (identity headers are still stripped).
    pub mode: RouteMode,
    /// Methods allowed on this route (any case); empty = any; others get 403.
    #[serde(with = "types::methods")]
    #[schemars(with = "Vec<String>")]
    pub methods: Vec<Method>,
    /// Claims the token must carry, claim → value (string equal, array contains,
    /// space-separated `scope` contains); 403 `insufficient_scope` when unmet. Not on a
    /// public route.
    #[serde(with = "types::string_pairs")]
    #[schemars(with = "std::collections::BTreeMap<String, String>")]
    pub require_claims: Vec<(String, String)>,
    /// Methods by who is asking: the first entry whose `claims` all match the identity
    /// allows only its `methods` (403 `insufficient_scope` for others), e.g.
    /// `[{ claims = { session_kind = "app" }, methods = ["GET", "HEAD"] }]`. Claims
    /// match as in `require_claims`. Not on a public route.
    pub limits: Vec<Limit>,
}

/// Methods allowed to identities that match a claim condition.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Limit {
    /// Claim → value, all required (at least one).
    #[serde(with = "types::string_pairs")]
    #[schemars(with = "std::collections::BTreeMap<String, String>")]
    pub claims: Vec<(String, String)>,
    /// Methods allowed to a matching identity (any case; at least one).
    #[serde(with = "types::methods")]
    #[schemars(with = "Vec<String>")]
    pub methods: Vec<Method>,
}

fn root_as_slash<S: Serializer>(p: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if p.is_empty() { "/" } else { p })
}

/// How a route treats credentials.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RouteMode {
    /// A valid token is required (the default).
    #[default]
    Required,
    /// Anonymous requests pass without identity; a bad token is still a 401.
    Optional,
    /// No authentication; identity headers are still stripped.
    Public,
}

/// Checks and canonicalises the prefixes; drops rules that cannot be matched and sorts
/// the rest longest prefix first, so the first match is the most specific.
pub(super) fn validate(c: &mut Checker<'_>, routes: &mut Vec<Route>) {
    let mut out: Vec<Route> = Vec::new();
    for (i, mut r) in std::mem::take(routes).into_iter().enumerate() {
        if !r.prefix.starts_with('/') {
            c.fail(format!(
                "routes[{i}].prefix: `{}` must start with /",
                r.prefix
            ));
            continue;
        }
        let prefix = match crate::path::canonical_path(&r.prefix) {
            Ok(p) if p == r.prefix.trim_end_matches('/') || (p == "/" && r.prefix == "/") => p,
            _ => {
                c.fail(format!(
                    "routes[{i}].prefix: `{}` is not canonical (no dot segments, encoded characters or //)",
                    r.prefix
                ));
                continue;
            }
        };
        let prefix = prefix.trim_end_matches('/').to_string();
        if out.iter().any(|o| o.prefix == prefix) {
            c.fail(format!(
                "routes[{i}].prefix: `{}` is listed twice",
                r.prefix
            ));
        }
        if r.mode == RouteMode::Public && !(r.require_claims.is_empty() && r.limits.is_empty()) {
            c.fail(format!("routes[{i}]: a public route cannot require claims"));
        }
        for (j, l) in r.limits.iter().enumerate() {
            if l.claims.is_empty() || l.methods.is_empty() {
                c.fail(format!(
                    "routes[{i}].limits[{j}]: needs at least one claim and one method"
                ));
            }
        }
        r.prefix = prefix;
        out.push(r);
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    *routes = out;
}
