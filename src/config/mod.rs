//! Configuration, and nothing else: the TOML schema, environment overrides, secret
//! loading and validation into a typed [`Config`]. Everything is checked here, before
//! any port is bound, and every problem is reported at once.
//!
//! Each section is one struct, in its own file, that serde reads directly into typed
//! values (see [`types`] for the self-parsing field types); its `///` field docs are the
//! configuration reference (README's table is generated from them, see [`reference`]).
//! A key is added in one file: the field with its doc, its default in the `Default`
//! impl next to it, and a check in that file's `validate` when serde cannot express it.

mod assertion;
mod auth;
mod backend;
mod cors;
mod forward_auth;
mod identity;
mod lifecycle;
mod log;
mod otel;
pub mod reference;
mod response;
mod revocation;
mod routes;
mod secret;
mod server;
mod store;
mod token_endpoint;
pub mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use assertion::Assertion;
pub use auth::{Auth, Jwks, JwksFile, PublicKey};
pub use backend::{Backend, ClientTls};
pub use cors::{Cors, CorsMode};
pub use forward_auth::ForwardAuth;
pub use identity::Identity;
pub use lifecycle::{
    ApiKey, AppIdentity, CheckStyle, ClientCredentials, Initiate, Introspection, Refresh,
    Signature, SignatureAlgorithm, TokenFormat,
};
pub use log::{Log, LogFormat};
pub use otel::{OtlpProtocol, Tracing};
pub use response::ResponseTokens;
pub use revocation::Revocation;
pub use routes::{Limit, Route, RouteMode};
pub use secret::{Secret, SecretBytes};
pub use server::{Admin, Server, Tls};
pub use store::SharedStore;
pub use token_endpoint::{Field, LoginClaim, LoginJwt, Proof, TokenEndpoint};
pub use types::parse_duration;

/// Prefix of environment variables that override config keys:
/// `AUTH_SIDECAR__BACKEND__URL=http://127.0.0.1:4000` sets `backend.url`.
pub const ENV_PREFIX: &str = "AUTH_SIDECAR__";

/// Every problem found while loading a config, reported together.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// A configuration: the file's schema and, once loaded through [`Config::load`] or
/// [`Config::from_toml`], every value parsed, checked and every secret loaded.
/// Serializing it gives the effective config with secrets as references only.
#[derive(Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Config {
    /// The proxy listener.
    pub server: Server,
    /// The admin listener (health, readiness, metrics).
    pub admin: Admin,
    /// Where authenticated requests go.
    pub backend: Backend,
    /// Access token verification and keys.
    pub auth: Auth,
    /// Identity headers set for the backend.
    pub identity: Identity,
    /// Route rules: the longest prefix on segment boundaries wins; a path that matches
    /// no rule is `required`.
    pub routes: Vec<Route>,
    /// Refresh of expired access tokens; unset = no refresh.
    pub refresh: Option<Refresh>,
    /// Server-side session start with the API key; unset = no initiate.
    pub initiate: Option<Initiate>,
    /// Your app's own identity token as a proof of the user for initiate.
    pub app_identity: Option<AppIdentity>,
    /// The session check for opaque tokens: RFC 7662 introspection, or a vendor's
    /// session call (`style = "session"`); unset = JWTs only.
    pub introspection: Option<Introspection>,
    /// Redis shared by the replicas, so each refresh and initiate is made once across
    /// them; unset = each replica on its own.
    pub shared_store: Option<SharedStore>,
    /// Log out everywhere, bans, one token or session, OIDC back-channel logout; unset =
    /// nothing is revoked.
    pub revocation: Option<Revocation>,
    /// A short-lived JWT signed by the sidecar for the backend; unset = none.
    pub assertion: Option<Assertion>,
    /// Browsers on other origins: preflights and CORS headers; unset = no CORS handling
    /// (preflights need a token like any request).
    pub cors: Option<Cors>,
    /// A decision endpoint for a front proxy (nginx `auth_request`, Envoy `ext_authz`,
    /// Traefik `ForwardAuth`); unset = none.
    pub forward_auth: Option<ForwardAuth>,
    /// OpenTelemetry traces over OTLP; unset = no spans (a `traceparent` passes
    /// through untouched).
    pub tracing: Option<Tracing>,
    /// An endpoint that hands a client the vendor's tokens (the SDK's `getTokens()`,
    /// Mindset's `authToken`, Kustomer's login JWT); unset = none.
    pub token_endpoint: Option<TokenEndpoint>,
    /// Where renewed tokens go in the response.
    pub response_tokens: ResponseTokens,
    /// Log output.
    pub log: Log,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.server.listen)
            .finish_non_exhaustive()
    }
}

/// Where the environment comes from: the real process env, or a map in tests.
pub trait EnvSource {
    fn get(&self, key: &str) -> Option<String>;
    fn vars(&self) -> Vec<(String, String)>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).cloned()
    }
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl Config {
    /// Reads the file at `path`, applies env overrides, loads secrets and validates.
    pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("cannot read {}: {e}", path.display())]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base, env)
    }

    /// Parses config text; relative file paths are resolved against `base_dir`.
    pub fn from_toml(
        text: &str,
        base_dir: &Path,
        env: &dyn EnvSource,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError(vec![format!("config is not valid TOML: {e}")]))?;
        apply_env_overrides(&mut table, env, &mut problems);
        let Some(mut cfg) = deserialize(toml::Value::Table(table), &mut problems) else {
            return Err(ConfigError(problems));
        };
        cfg.resolve_paths(base_dir);
        let mut c = Checker {
            problems: &mut problems,
            env,
        };
        cfg.validate(&mut c);
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The effective config as TOML, with secret references shown and no secret value.
    pub fn redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Each section's own checks, then the checks across sections.
    fn validate(&mut self, c: &mut Checker<'_>) {
        self.server.validate(c);
        if let Some(a) = self.admin.listen {
            if a == self.server.listen && a.port() != 0 {
                c.fail("admin.listen: must differ from server.listen".into());
            }
        }
        self.backend.validate(c);
        self.auth.validate(c, self.introspection.is_some());
        self.identity.validate(c);
        routes::validate(c, &mut self.routes);
        if let Some(r) = &mut self.refresh {
            r.validate(c);
        }
        if let Some(i) = &mut self.initiate {
            i.validate(c);
        }
        if let Some(a) = &mut self.app_identity {
            a.validate(c);
        }
        if let Some(i) = &mut self.introspection {
            i.validate(c);
        }
        if let Some(st) = &mut self.shared_store {
            st.validate(c);
        }
        if let Some(r) = &mut self.revocation {
            r.validate(c, &self.auth.audience);
        }
        if let Some(f) = &mut self.forward_auth {
            f.validate(c);
        }
        if let Some(x) = &mut self.cors {
            x.validate(c);
        }
        if let Some(a) = &mut self.assertion {
            a.validate(c);
        }
        if let Some(t) = &mut self.tracing {
            t.validate(c);
        }
        if let Some(t) = &mut self.token_endpoint {
            t.validate(c, self.initiate.is_some(), self.app_identity.is_some());
            let under = |p: &str, base: &str| {
                p.strip_prefix(base)
                    .is_some_and(|r| r.is_empty() || r.starts_with('/'))
            };
            if let Some(f) = &self.forward_auth {
                if under(&t.path, &f.path) || under(&f.path, &t.path) {
                    c.fail("token_endpoint.path: must not overlap forward_auth.path".into());
                }
            }
        }
        if self.app_identity.is_some() && self.initiate.is_none() && self.token_endpoint.is_none() {
            c.fail("app_identity: needs an [initiate] section to start sessions with (or a [token_endpoint])".into());
        }
        self.response_tokens.validate(c);
        self.log.validate(c);
    }

    /// Relative file paths (TLS files, CA bundle, keys, secret files) are relative to
    /// the config file's directory.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        let fix_secret = |s: &mut Secret| {
            if let Some(p) = &mut s.file {
                fix(p);
            }
        };
        if let Some(t) = &mut self.server.tls {
            fix(&mut t.cert_file);
            fix(&mut t.key_file);
        }
        self.backend.ca_file.iter_mut().for_each(fix);
        self.backend.client_cert_file.iter_mut().for_each(fix);
        self.backend.client_key.iter_mut().for_each(fix_secret);
        self.auth.hmac_secret.iter_mut().for_each(fix_secret);
        self.auth
            .public_keys
            .iter_mut()
            .for_each(|k| fix(&mut k.file));
        if let Some(j) = &mut self.auth.jwks {
            fix(&mut j.path);
        }
        if let Some(r) = &mut self.refresh {
            r.api_key_secret.iter_mut().for_each(fix_secret);
        }
        if let Some(i) = &mut self.initiate {
            fix_secret(&mut i.api_key_secret);
            if let Some(sig) = &mut i.signature {
                fix_secret(&mut sig.secret);
            }
        }
        if let Some(a) = &mut self.app_identity {
            fix_secret(&mut a.secret);
        }
        if let Some(i) = &mut self.introspection {
            i.client_secret.iter_mut().for_each(fix_secret);
        }
        if let Some(a) = &mut self.assertion {
            fix_secret(&mut a.key);
        }
        if let Some(l) = self
            .token_endpoint
            .as_mut()
            .and_then(|t| t.login_jwt.as_mut())
        {
            fix_secret(&mut l.secret);
        }
        if let Some(r) = &mut self.revocation {
            r.admin_secret.iter_mut().for_each(fix_secret);
        }
        if let Some(st) = &mut self.shared_store {
            fix_secret(&mut st.secret);
            st.username.iter_mut().for_each(fix_secret);
            st.password.iter_mut().for_each(fix_secret);
        }
    }
}

/// Deserializes the whole table, collecting every unknown key and every value serde
/// refuses: on an error, the offending key is reported (`section.key: message`) and
/// dropped so that its default applies, and the rest is read again, until it passes.
fn deserialize(mut value: toml::Value, problems: &mut Vec<String>) -> Option<Config> {
    let mut unknown: Vec<String> = Vec::new();
    let mut refused = Vec::new();
    let cfg = loop {
        let mut ignored = Vec::new();
        // `refresh.?.x`: the `?` marks the `Option` around a section, not a key.
        let mut note = |p: serde_ignored::Path<'_>| ignored.push(p.to_string().replace(".?", ""));
        let de = serde_ignored::Deserializer::new(value.clone(), &mut note);
        let result: Result<Config, _> = serde_path_to_error::deserialize(de);
        for k in ignored {
            if !unknown.contains(&k) {
                unknown.push(k);
            }
        }
        match result {
            Ok(cfg) => break Some(cfg),
            Err(e) => {
                let path = e.path().clone();
                // toml appends "in `key`" on a line of its own; the key leads instead.
                let msg = e.into_inner().to_string();
                let msg = msg.split("\nin `").next().unwrap_or("").trim().to_string();
                if path.iter().next().is_none() {
                    refused.push(msg);
                    break None;
                }
                refused.push(format!("{path}: {msg}"));
                if !remove_path(&mut value, &path) {
                    break None;
                }
            }
        }
    };
    problems.extend(unknown.into_iter().map(|k| format!("unknown key `{k}`")));
    problems.extend(refused);
    cfg
}

/// Removes the value at `path`; false when there is nothing to remove.
fn remove_path(value: &mut toml::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut here = value;
    for s in parents {
        let next = match (s, here) {
            (Segment::Map { key }, toml::Value::Table(t)) => t.get_mut(key.as_str()),
            (Segment::Seq { index }, toml::Value::Array(a)) => a.get_mut(*index),
            _ => None,
        };
        match next {
            Some(n) => here = n,
            None => return false,
        }
    }
    match (last, here) {
        (Segment::Map { key }, toml::Value::Table(t)) => t.remove(key.as_str()).is_some(),
        (Segment::Seq { index }, toml::Value::Array(a)) if *index < a.len() => {
            a.remove(*index);
            true
        }
        _ => false,
    }
}

/// `AUTH_SIDECAR__A__B=v` sets `a.b = v`; `v` is read as a TOML value when it parses as
/// one (numbers, booleans, arrays, inline tables) and as a string otherwise.
fn apply_env_overrides(table: &mut toml::Table, env: &dyn EnvSource, problems: &mut Vec<String>) {
    let mut vars = env.vars();
    vars.sort();
    for (key, value) in vars {
        let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            problems.push(format!("environment variable {key}: empty key segment"));
            continue;
        }
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        if let Err(p) = set_path(table, &path, parsed) {
            problems.push(format!("environment variable {key}: `{p}` is not a table"));
        }
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Ok(()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(first.clone()),
            }
        }
    }
}

/// Collects problems during validation and gives the sections the environment to load
/// secrets from.
pub(crate) struct Checker<'a> {
    problems: &'a mut Vec<String>,
    env: &'a dyn EnvSource,
}

impl Checker<'_> {
    fn fail(&mut self, msg: String) {
        self.problems.push(msg);
    }
    /// A URL that has no default must be set (unless its value was already refused).
    fn require_url(&mut self, key: &str, u: &http::Uri) {
        let prefix = format!("{key}: ");
        if !types::is_set(u) && !self.problems.iter().any(|p| p.starts_with(&prefix)) {
            self.fail(format!("{key}: `` is not an http(s) URL"));
        }
    }
    fn pointer(&mut self, key: &str, v: &str) {
        if !(v.is_empty() || v.starts_with('/')) {
            self.fail(format!(
                "{key}: `{v}` is not a JSON pointer (it must start with /)"
            ));
        }
    }
}
