//! Configuration, and nothing else: the TOML schema, environment overrides, secret
//! loading and validation into typed [`Config`]. Everything is checked here, before any
//! port is bound, and every problem is reported at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use serde::{Deserialize, Serialize};

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

// ---------------------------------------------------------------------------
// Raw schema: what the file (plus env overrides) says. Unknown keys are errors.
// ---------------------------------------------------------------------------

/// The file's schema. Field docs are the config reference (README mirrors them).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct RawConfig {
    pub server: ServerRaw,
    pub admin: AdminRaw,
    pub backend: BackendRaw,
    pub auth: AuthRaw,
    pub identity: IdentityRaw,
    pub routes: Vec<RouteRaw>,
    pub refresh: Option<RefreshRaw>,
    pub initiate: Option<InitiateRaw>,
    pub app_identity: Option<AppIdentityRaw>,
    pub introspection: Option<IntrospectionRaw>,
    pub response_tokens: ResponseTokensRaw,
    pub log: LogRaw,
}

/// RFC 7662 introspection for opaque (non-JWT) access tokens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct IntrospectionRaw {
    pub url: String,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub timeout: String,
    pub cache_ttl: String,
    pub negative_ttl: String,
    pub cache_capacity: u64,
}

impl Default for IntrospectionRaw {
    fn default() -> Self {
        Self {
            url: String::new(),
            client_id: None,
            client_secret: None,
            timeout: "3s".into(),
            cache_ttl: "5m".into(),
            negative_ttl: "10s".into(),
            cache_capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ServerRaw {
    pub listen: String,
    pub worker_threads: usize,
    pub request_id_header: String,
    pub header_read_timeout: String,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub shutdown_grace: String,
    /// Close upgraded (WebSocket) connections this long after the token that opened
    /// them expired; "off" disables it.
    pub upgrade_token_grace: String,
    pub tls: Option<TlsRaw>,
}

impl Default for ServerRaw {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            worker_threads: 2,
            request_id_header: "x-request-id".into(),
            header_read_timeout: "10s".into(),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            shutdown_grace: "30s".into(),
            upgrade_token_grace: "60s".into(),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsRaw {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AdminRaw {
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`); unset = no admin port.
    pub listen: Option<String>,
    /// Whether `/readyz` also requires the backend to accept a TCP connection.
    pub ready_requires_backend: bool,
}

impl Default for AdminRaw {
    fn default() -> Self {
        Self {
            listen: None,
            ready_requires_backend: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct BackendRaw {
    pub url: String,
    pub connect_timeout: String,
    pub response_timeout: String,
    pub pool_idle_timeout: String,
    pub pool_max_idle: usize,
    pub max_connections: usize,
    pub http2: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key: Option<Secret>,
}

impl Default for BackendRaw {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:3000".into(),
            connect_timeout: "2s".into(),
            response_timeout: "60s".into(),
            pool_idle_timeout: "90s".into(),
            pool_max_idle: 256,
            max_connections: 1024,
            http2: false,
            ca_file: None,
            client_cert_file: None,
            client_key: None,
        }
    }
}

/// Where a secret comes from: exactly one of an environment variable or a file.
/// Inline values are refused so a secret never lands in a ConfigMap.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(try_from = "SecretRepr")]
pub struct Secret {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

/// What the file may hold for a secret; an inline string is read only to refuse it
/// with an error that does not echo it.
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretRepr {
    Reference {
        env: Option<String>,
        file: Option<PathBuf>,
    },
    Inline(#[allow(dead_code)] toml::Value),
}

impl TryFrom<SecretRepr> for Secret {
    type Error = String;
    fn try_from(r: SecretRepr) -> Result<Self, String> {
        match r {
            SecretRepr::Reference { env, file } => Ok(Secret { env, file }),
            SecretRepr::Inline(_) => Err(
                "secrets are never inline: write { env = \"VAR\" } or { file = \"/path\" }".into(),
            ),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AuthRaw {
    pub algorithms: Vec<String>,
    pub hmac_secret: Option<Secret>,
    pub public_keys: Vec<PublicKeyRaw>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub jwks_min_refresh: String,
    pub jwks_max_refresh: String,
    pub jwks_unknown_kid_interval: String,
    pub jwks_timeout: String,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub leeway: String,
    pub required_claims: Vec<String>,
    pub max_token_bytes: usize,
    pub cache_capacity: u64,
    pub forward_authorization: bool,
    pub cookie: Option<String>,
    pub query_param: Option<String>,
    pub websocket_protocol_prefix: Option<String>,
}

impl Default for AuthRaw {
    fn default() -> Self {
        Self {
            algorithms: vec!["HS256".into()],
            hmac_secret: None,
            public_keys: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_min_refresh: "1m".into(),
            jwks_max_refresh: "1h".into(),
            jwks_unknown_kid_interval: "30s".into(),
            jwks_timeout: "5s".into(),
            issuer: None,
            audience: Vec::new(),
            leeway: "30s".into(),
            required_claims: Vec::new(),
            max_token_bytes: 8 * 1024,
            cache_capacity: 100_000,
            forward_authorization: true,
            cookie: None,
            query_param: None,
            websocket_protocol_prefix: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyRaw {
    pub file: PathBuf,
    pub kid: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct IdentityRaw {
    pub prefix: String,
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub claims: BTreeMap<String, String>,
    pub all_claims: Option<String>,
}

impl Default for IdentityRaw {
    fn default() -> Self {
        Self {
            prefix: "x-auth-".into(),
            user_id: "x-auth-user-id".into(),
            email: "x-auth-email".into(),
            name: "x-auth-name".into(),
            claims: BTreeMap::new(),
            all_claims: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRaw {
    pub prefix: String,
    #[serde(default)]
    pub mode: RouteMode,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub require_claims: BTreeMap<String, String>,
}

/// How a route treats credentials.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RefreshRaw {
    pub url: String,
    pub method: String,
    pub body: String,
    pub content_type: String,
    pub api_key_header: Option<String>,
    pub api_key: Option<Secret>,
    pub access_token_pointer: String,
    pub refresh_token_pointer: String,
    pub timeout: String,
    pub grace: String,
    pub rejected_ttl: String,
    pub header: String,
    pub cookie: Option<String>,
    pub max_response_bytes: usize,
    pub retry_after: String,
}

impl Default for RefreshRaw {
    fn default() -> Self {
        Self {
            url: String::new(),
            method: "POST".into(),
            body: r#"{"refresh_token": "{refresh_token}"}"#.into(),
            content_type: "application/json".into(),
            api_key_header: None,
            api_key: None,
            access_token_pointer: "/access_token".into(),
            refresh_token_pointer: "/refresh_token".into(),
            timeout: "5s".into(),
            grace: "30s".into(),
            rejected_ttl: "10s".into(),
            header: "x-refresh-token".into(),
            cookie: None,
            max_response_bytes: 64 * 1024,
            retry_after: "5s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct InitiateRaw {
    pub url: String,
    pub api_key: Option<Secret>,
    pub api_key_header: String,
    pub body: String,
    pub access_token_pointer: String,
    pub refresh_token_pointer: String,
    pub timeout: String,
    pub max_staleness: String,
    pub when_refresh_token_missing: bool,
    pub require_same_subject: bool,
}

impl Default for InitiateRaw {
    fn default() -> Self {
        Self {
            url: String::new(),
            api_key: None,
            api_key_header: "x-api-key".into(),
            body: r#"{"user_unique_id": "{sub}", "user_name": "{name}"}"#.into(),
            access_token_pointer: "/data/access_token".into(),
            refresh_token_pointer: "/data/refresh_token".into(),
            timeout: "5s".into(),
            max_staleness: "7d".into(),
            when_refresh_token_missing: false,
            require_same_subject: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AppIdentityRaw {
    pub header: String,
    pub secret: Option<Secret>,
    pub max_age: String,
}

impl Default for AppIdentityRaw {
    fn default() -> Self {
        Self {
            header: "x-app-identity".into(),
            secret: None,
            max_age: "15m".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ResponseTokensRaw {
    pub access_header: String,
    pub refresh_header: String,
    pub cookies: bool,
    pub access_cookie: String,
    pub refresh_cookie: String,
    pub cookie_same_site: String,
    pub cookie_secure: bool,
    pub cookie_path: String,
}

impl Default for ResponseTokensRaw {
    fn default() -> Self {
        Self {
            access_header: "x-auth-access-token".into(),
            refresh_header: "x-auth-refresh-token".into(),
            cookies: false,
            access_cookie: "access_token".into(),
            refresh_cookie: "refresh_token".into(),
            cookie_same_site: "Lax".into(),
            cookie_secure: true,
            cookie_path: "/".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LogRaw {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogRaw {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

// ---------------------------------------------------------------------------
// Typed, validated config.
// ---------------------------------------------------------------------------

/// A validated configuration: every value parsed, every secret loaded.
#[derive(Clone)]
pub struct Config {
    /// The raw form, for `check-config` (secrets are references, never values).
    pub raw: RawConfig,
    pub server: Server,
    pub admin_listen: Option<SocketAddr>,
    pub backend: Backend,
    pub auth: Auth,
    pub identity: Identity,
    pub routes: Vec<Route>,
    pub refresh: Option<Refresh>,
    pub initiate: Option<Initiate>,
    pub app_identity: Option<AppIdentity>,
    pub introspection: Option<Introspection>,
    pub response_tokens: ResponseTokens,
    pub log: LogRaw,
}

#[derive(Clone, Debug)]
pub struct Jwks {
    pub url: Uri,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub unknown_kid_interval: Duration,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Introspection {
    pub url: Uri,
    pub client: Option<(String, SecretBytes)>,
    pub timeout: Duration,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub cache_capacity: u64,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.server.listen)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct Server {
    pub listen: SocketAddr,
    pub worker_threads: usize,
    pub request_id_header: HeaderName,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    pub upgrade_token_grace: Option<Duration>,
    pub tls: Option<TlsRaw>,
}

#[derive(Clone)]
pub struct Backend {
    pub uri: Uri,
    /// `scheme://authority` of the backend, used to rebuild every request's URI.
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix of the backend URL (without trailing slash), prepended to requests.
    pub base_path: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    /// HTTP/1.1 connections open to the backend at once; requests beyond wait for one.
    pub max_connections: usize,
    pub http2: bool,
    pub tls: ClientTls,
}

/// TLS settings for outbound calls (backend, token service).
#[derive(Clone, Default)]
pub struct ClientTls {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_pem: Option<SecretBytes>,
}

/// Secret material; its Debug never shows the value.
#[derive(Clone)]
pub struct SecretBytes(pub Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug)]
pub struct Auth {
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub hmac_secret: Option<SecretBytes>,
    pub public_keys: Vec<(Vec<u8>, Option<String>, PathBuf)>,
    pub jwks: Option<(String, PathBuf)>,
    pub jwks_url: Option<Jwks>,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub leeway: Duration,
    pub required_claims: Vec<String>,
    pub max_token_bytes: usize,
    pub cache_capacity: u64,
    pub forward_authorization: bool,
    pub cookie: Option<String>,
    pub query_param: Option<String>,
    pub websocket_protocol_prefix: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Identity {
    /// Lowercase, `-` form; any inbound header starting with it is removed.
    pub prefix: String,
    pub user_id: HeaderName,
    pub email: HeaderName,
    pub name: HeaderName,
    pub claims: Vec<(String, HeaderName)>,
    pub all_claims: Option<HeaderName>,
}

#[derive(Clone, Debug)]
pub struct Route {
    /// Canonical, without trailing slash ("" for the root rule).
    pub prefix: String,
    pub mode: RouteMode,
    pub methods: Vec<Method>,
    pub require_claims: Vec<(String, String)>,
}

/// An API key and the header it is sent in.
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub header: HeaderName,
    pub secret: SecretBytes,
}

#[derive(Clone, Debug)]
pub struct Refresh {
    pub uri: Uri,
    pub method: Method,
    pub body: String,
    pub content_type: HeaderValue,
    pub api_key: Option<ApiKey>,
    pub access_token_pointer: String,
    pub refresh_token_pointer: String,
    pub timeout: Duration,
    pub grace: Duration,
    pub rejected_ttl: Duration,
    pub header: HeaderName,
    pub cookie: Option<String>,
    pub max_response_bytes: usize,
    pub retry_after: Duration,
    pub cache_capacity: u64,
}

#[derive(Clone, Debug)]
pub struct Initiate {
    pub uri: Uri,
    pub api_key: ApiKey,
    pub body: String,
    pub access_token_pointer: String,
    pub refresh_token_pointer: String,
    pub timeout: Duration,
    pub max_staleness: Duration,
    pub when_refresh_token_missing: bool,
    /// When the expired token proved the user, the new token must have the same `sub`.
    pub require_same_subject: bool,
    pub grace: Duration,
    pub cache_capacity: u64,
    pub max_response_bytes: usize,
    pub retry_after: Duration,
}

#[derive(Clone, Debug)]
pub struct AppIdentity {
    pub header: HeaderName,
    pub secret: SecretBytes,
    pub max_age: Duration,
    pub leeway: Duration,
}

#[derive(Clone, Debug)]
pub struct ResponseTokens {
    pub access_header: HeaderName,
    pub refresh_header: HeaderName,
    pub cookies: bool,
    pub access_cookie: String,
    pub refresh_cookie: String,
    pub cookie_same_site: String,
    pub cookie_secure: bool,
    pub cookie_path: String,
}

// ---------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------

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
        let mut raw: RawConfig = {
            let de = toml::Value::Table(table);
            let result = serde_ignored::deserialize(de, |path| {
                problems.push(format!("unknown key `{path}`"));
            });
            match result {
                Ok(raw) => raw,
                Err(e) => {
                    problems.push(e.to_string().trim().to_string());
                    return Err(ConfigError(problems));
                }
            }
        };
        resolve_paths(&mut raw, base_dir);
        let cfg = validate(&raw, env, &mut problems);
        match cfg {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(ConfigError(problems)),
        }
    }

    /// The effective config as TOML, with secret references shown and no secret value.
    pub fn redacted_toml(&self) -> String {
        toml::to_string_pretty(&self.raw).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
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

fn resolve_paths(raw: &mut RawConfig, base: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    let fix_secret = |s: &mut Option<Secret>| {
        if let Some(Secret { file: Some(p), .. }) = s {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    };
    if let Some(t) = &mut raw.server.tls {
        fix(&mut t.cert_file);
        fix(&mut t.key_file);
    }
    raw.backend.ca_file.iter_mut().for_each(fix);
    raw.backend.client_cert_file.iter_mut().for_each(fix);
    fix_secret(&mut raw.backend.client_key);
    fix_secret(&mut raw.auth.hmac_secret);
    raw.auth
        .public_keys
        .iter_mut()
        .for_each(|k| fix(&mut k.file));
    raw.auth.jwks_file.iter_mut().for_each(fix);
    if let Some(r) = &mut raw.refresh {
        fix_secret(&mut r.api_key);
    }
    if let Some(i) = &mut raw.initiate {
        fix_secret(&mut i.api_key);
    }
    if let Some(a) = &mut raw.app_identity {
        fix_secret(&mut a.secret);
    }
}

/// Parses "250ms", "30s", "5m", "2h", "7d".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 30s, 5m, 2h, 7d)"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("`{s}` has no valid unit (ms, s, m, h, d)")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

struct Checker<'a> {
    problems: &'a mut Vec<String>,
    env: &'a dyn EnvSource,
}

impl Checker<'_> {
    fn fail(&mut self, msg: String) {
        self.problems.push(msg);
    }
    fn duration(&mut self, key: &str, v: &str) -> Duration {
        parse_duration(v).unwrap_or_else(|e| {
            self.fail(format!("{key}: {e}"));
            Duration::ZERO
        })
    }
    fn header(&mut self, key: &str, v: &str) -> HeaderName {
        HeaderName::from_bytes(v.as_bytes()).unwrap_or_else(|_| {
            self.fail(format!("{key}: `{v}` is not a valid header name"));
            HeaderName::from_static("x-invalid")
        })
    }
    fn uri(&mut self, key: &str, v: &str) -> Uri {
        match v.parse::<Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() =>
            {
                u
            }
            _ => {
                self.fail(format!("{key}: `{v}` is not an http(s) URL"));
                Uri::from_static("http://invalid")
            }
        }
    }
    fn pointer(&mut self, key: &str, v: &str) {
        if !(v.is_empty() || v.starts_with('/')) {
            self.fail(format!(
                "{key}: `{v}` is not a JSON pointer (it must start with /)"
            ));
        }
    }
    /// Loads a secret from its env var or file; never accepts an inline value.
    fn secret(&mut self, key: &str, s: &Secret) -> Option<SecretBytes> {
        match (&s.env, &s.file) {
            (Some(var), None) => match self.env.get(var) {
                Some(v) if !v.is_empty() => Some(SecretBytes(v.into_bytes())),
                _ => {
                    self.fail(format!(
                        "{key}: environment variable {var} is not set or empty"
                    ));
                    None
                }
            },
            (None, Some(path)) => match std::fs::read(path) {
                Ok(mut v) => {
                    // Files written by editors and Kubernetes Secrets often end in a newline.
                    while v.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        v.pop();
                    }
                    Some(SecretBytes(v))
                }
                Err(e) => {
                    self.fail(format!("{key}: cannot read {}: {e}", path.display()));
                    None
                }
            },
            _ => {
                self.fail(format!("{key}: give exactly one of `env` or `file`"));
                None
            }
        }
    }
}

fn validate(raw: &RawConfig, env: &dyn EnvSource, problems: &mut Vec<String>) -> Option<Config> {
    let mut c = Checker { problems, env };

    // server
    let s = &raw.server;
    let listen = s.listen.parse::<SocketAddr>().unwrap_or_else(|_| {
        c.fail(format!(
            "server.listen: `{}` is not an address like 127.0.0.1:8080",
            s.listen
        ));
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    if s.worker_threads == 0 || s.worker_threads > 256 {
        c.fail("server.worker_threads: must be between 1 and 256".into());
    }
    // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
    if s.max_header_bytes < 8192 || s.max_header_bytes > 1024 * 1024 {
        c.fail("server.max_header_bytes: must be between 8192 and 1048576".into());
    }
    if s.max_headers == 0 || s.max_headers > 1000 {
        c.fail("server.max_headers: must be between 1 and 1000".into());
    }
    if s.max_connections == 0 {
        c.fail("server.max_connections: must be at least 1".into());
    }
    let upgrade_token_grace = if s.upgrade_token_grace == "off" {
        None
    } else {
        Some(c.duration("server.upgrade_token_grace", &s.upgrade_token_grace))
    };
    if let Some(tls) = &s.tls {
        for (k, p) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
            if !p.is_file() {
                c.fail(format!("server.tls.{k}: {} does not exist", p.display()));
            }
        }
    }
    let server = Server {
        listen,
        worker_threads: s.worker_threads,
        request_id_header: c.header("server.request_id_header", &s.request_id_header),
        header_read_timeout: c.duration("server.header_read_timeout", &s.header_read_timeout),
        max_header_bytes: s.max_header_bytes,
        max_headers: s.max_headers,
        max_connections: s.max_connections,
        shutdown_grace: c.duration("server.shutdown_grace", &s.shutdown_grace),
        upgrade_token_grace,
        tls: s.tls.clone(),
    };

    let admin_listen = raw.admin.listen.as_ref().map(|a| {
        a.parse::<SocketAddr>().unwrap_or_else(|_| {
            c.fail(format!("admin.listen: `{a}` is not an address"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    });
    if admin_listen.is_some() && admin_listen == Some(listen) && listen.port() != 0 {
        c.fail("admin.listen: must differ from server.listen".into());
    }

    let backend = validate_backend(&mut c, &raw.backend);
    let auth = validate_auth(&mut c, &raw.auth);
    let identity = validate_identity(&mut c, &raw.identity);
    let routes = validate_routes(&mut c, &raw.routes);
    let refresh = raw.refresh.as_ref().map(|r| validate_refresh(&mut c, r));
    let initiate = raw.initiate.as_ref().map(|i| validate_initiate(&mut c, i));
    let app_identity = raw.app_identity.as_ref().and_then(|a| {
        let secret = match &a.secret {
            Some(s) => c.secret("app_identity.secret", s),
            None => {
                c.fail("app_identity.secret: required (env or file)".into());
                None
            }
        };
        if secret.as_ref().is_some_and(|s| s.0.len() < 32) {
            c.fail("app_identity.secret: must be at least 32 bytes".into());
        }
        Some(AppIdentity {
            header: c.header("app_identity.header", &a.header),
            secret: secret?,
            max_age: c.duration("app_identity.max_age", &a.max_age),
            leeway: Duration::from_secs(30),
        })
    });
    let introspection = raw.introspection.as_ref().map(|i| {
        let client = match (&i.client_id, &i.client_secret) {
            (Some(id), Some(s)) => c
                .secret("introspection.client_secret", s)
                .map(|s| (id.clone(), s)),
            (None, None) => None,
            _ => {
                c.fail(
                    "introspection.client_id and introspection.client_secret go together".into(),
                );
                None
            }
        };
        Introspection {
            url: c.uri("introspection.url", &i.url),
            client,
            timeout: c.duration("introspection.timeout", &i.timeout),
            cache_ttl: c.duration("introspection.cache_ttl", &i.cache_ttl),
            negative_ttl: c.duration("introspection.negative_ttl", &i.negative_ttl),
            cache_capacity: i.cache_capacity.max(1),
        }
    });
    if app_identity.is_some() && initiate.is_none() {
        c.fail("app_identity: needs an [initiate] section to start sessions with".into());
    }
    let rt = &raw.response_tokens;
    if !matches!(rt.cookie_same_site.as_str(), "Strict" | "Lax" | "None") {
        c.fail("response_tokens.cookie_same_site: must be Strict, Lax or None".into());
    }
    let response_tokens = ResponseTokens {
        access_header: c.header("response_tokens.access_header", &rt.access_header),
        refresh_header: c.header("response_tokens.refresh_header", &rt.refresh_header),
        cookies: rt.cookies,
        access_cookie: rt.access_cookie.clone(),
        refresh_cookie: rt.refresh_cookie.clone(),
        cookie_same_site: rt.cookie_same_site.clone(),
        cookie_secure: rt.cookie_secure,
        cookie_path: rt.cookie_path.clone(),
    };
    if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
        c.fail(format!(
            "log.level: `{}` is not a valid filter",
            raw.log.level
        ));
    }

    let refresh = refresh.flatten();
    let initiate = initiate.flatten();
    Some(Config {
        raw: raw.clone(),
        server,
        admin_listen,
        backend: backend?,
        auth: auth?,
        identity,
        routes,
        refresh,
        initiate,
        app_identity,
        introspection,
        response_tokens,
        log: raw.log.clone(),
    })
}

fn validate_backend(c: &mut Checker<'_>, b: &BackendRaw) -> Option<Backend> {
    let uri = c.uri("backend.url", &b.url);
    if uri.query().is_some() {
        c.fail("backend.url: must not have a query".into());
    }
    let client_key_pem = b
        .client_key
        .as_ref()
        .and_then(|k| c.secret("backend.client_key", k));
    if b.client_cert_file.is_some() != client_key_pem.is_some() {
        c.fail("backend.client_cert_file and backend.client_key go together".into());
    }
    if let Some(ca) = &b.ca_file {
        if !ca.is_file() {
            c.fail(format!("backend.ca_file: {} does not exist", ca.display()));
        }
    }
    let connect_timeout = c.duration("backend.connect_timeout", &b.connect_timeout);
    let response_timeout = c.duration("backend.response_timeout", &b.response_timeout);
    if connect_timeout.is_zero() || response_timeout.is_zero() {
        c.fail("backend timeouts must be greater than zero".into());
    }
    let pool_idle_timeout = c.duration("backend.pool_idle_timeout", &b.pool_idle_timeout);
    if b.max_connections == 0 {
        c.fail("backend.max_connections must be at least 1".into());
    }
    Some(Backend {
        scheme: uri.scheme()?.clone(),
        authority: uri.authority()?.clone(),
        base_path: uri.path().trim_end_matches('/').to_string(),
        uri,
        connect_timeout,
        response_timeout,
        pool_idle_timeout,
        pool_max_idle: b.pool_max_idle,
        max_connections: b.max_connections,
        http2: b.http2,
        tls: ClientTls {
            ca_file: b.ca_file.clone(),
            client_cert_file: b.client_cert_file.clone(),
            client_key_pem,
        },
    })
}

fn validate_auth(c: &mut Checker<'_>, a: &AuthRaw) -> Option<Auth> {
    use jsonwebtoken::Algorithm;
    let mut algorithms = Vec::new();
    for name in &a.algorithms {
        match name.parse::<Algorithm>() {
            Ok(alg) => algorithms.push(alg),
            Err(_) => c.fail(format!(
                "auth.algorithms: `{name}` is not supported (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)"
            )),
        }
    }
    if a.algorithms.is_empty() {
        c.fail("auth.algorithms: at least one algorithm is required".into());
    }
    let wants_hmac = algorithms
        .iter()
        .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
    let wants_public = algorithms
        .iter()
        .any(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
    let hmac_secret = a
        .hmac_secret
        .as_ref()
        .and_then(|s| c.secret("auth.hmac_secret", s));
    if let Some(s) = &hmac_secret {
        if s.0.len() < 32 {
            c.fail("auth.hmac_secret: must be at least 32 bytes (RFC 7518 §3.2)".into());
        }
    }
    if wants_hmac && a.hmac_secret.is_none() {
        c.fail("auth.hmac_secret: an HS* algorithm is allowed but no secret is configured".into());
    }
    if !wants_hmac && a.hmac_secret.is_some() {
        c.fail("auth.hmac_secret: set, but no HS* algorithm is in auth.algorithms".into());
    }
    let mut public_keys = Vec::new();
    for (i, k) in a.public_keys.iter().enumerate() {
        match std::fs::read(&k.file) {
            Ok(pem) => public_keys.push((pem, k.kid.clone(), k.file.clone())),
            Err(e) => c.fail(format!(
                "auth.public_keys[{i}]: cannot read {}: {e}",
                k.file.display()
            )),
        }
    }
    let jwks = a
        .jwks_file
        .as_ref()
        .and_then(|p| match std::fs::read_to_string(p) {
            Ok(t) => Some((t, p.clone())),
            Err(e) => {
                c.fail(format!("auth.jwks_file: cannot read {}: {e}", p.display()));
                None
            }
        });
    if wants_public && a.public_keys.is_empty() && a.jwks_file.is_none() && a.jwks_url.is_none() {
        c.fail("auth: an asymmetric algorithm is allowed but no public_keys, jwks_file or jwks_url is configured".into());
    }
    let jwks_url = a.jwks_url.as_ref().map(|u| {
        let j = Jwks {
            url: c.uri("auth.jwks_url", u),
            min_refresh: c.duration("auth.jwks_min_refresh", &a.jwks_min_refresh),
            max_refresh: c.duration("auth.jwks_max_refresh", &a.jwks_max_refresh),
            unknown_kid_interval: c.duration(
                "auth.jwks_unknown_kid_interval",
                &a.jwks_unknown_kid_interval,
            ),
            timeout: c.duration("auth.jwks_timeout", &a.jwks_timeout),
        };
        if j.min_refresh > j.max_refresh || j.min_refresh.is_zero() {
            c.fail(
                "auth.jwks_min_refresh: must be above zero and not above jwks_max_refresh".into(),
            );
        }
        j
    });
    if a.max_token_bytes < 64 || a.max_token_bytes > 64 * 1024 {
        c.fail("auth.max_token_bytes: must be between 64 and 65536".into());
    }
    if a.cache_capacity == 0 {
        c.fail("auth.cache_capacity: must be at least 1".into());
    }
    for (key, v) in [
        ("auth.cookie", &a.cookie),
        ("auth.query_param", &a.query_param),
        (
            "auth.websocket_protocol_prefix",
            &a.websocket_protocol_prefix,
        ),
    ] {
        if v.as_deref().is_some_and(|s| s.is_empty()) {
            c.fail(format!("{key}: must not be empty when set"));
        }
    }
    Some(Auth {
        algorithms,
        hmac_secret,
        public_keys,
        jwks,
        jwks_url,
        issuer: a.issuer.clone(),
        audience: a.audience.clone(),
        leeway: c.duration("auth.leeway", &a.leeway),
        required_claims: a.required_claims.clone(),
        max_token_bytes: a.max_token_bytes,
        cache_capacity: a.cache_capacity,
        forward_authorization: a.forward_authorization,
        cookie: a.cookie.clone(),
        query_param: a.query_param.clone(),
        websocket_protocol_prefix: a.websocket_protocol_prefix.clone(),
    })
}

fn validate_identity(c: &mut Checker<'_>, i: &IdentityRaw) -> Identity {
    let prefix = i.prefix.to_ascii_lowercase().replace('_', "-");
    if prefix.len() < 3 {
        c.fail("identity.prefix: must be at least 3 characters (e.g. x-auth-)".into());
    }
    let mut claims = Vec::new();
    for (claim, header) in &i.claims {
        let h = c.header(&format!("identity.claims.{claim}"), header);
        claims.push((claim.clone(), h));
    }
    let identity = Identity {
        user_id: c.header("identity.user_id", &i.user_id),
        email: c.header("identity.email", &i.email),
        name: c.header("identity.name", &i.name),
        all_claims: i
            .all_claims
            .as_ref()
            .map(|h| c.header("identity.all_claims", h)),
        claims,
        prefix,
    };
    for h in identity.all_headers() {
        if h.as_str().starts_with("x-forwarded-")
            || h == http::header::AUTHORIZATION
            || h == http::header::HOST
        {
            c.fail(format!("identity: `{h}` cannot be an identity header"));
        }
    }
    identity
}

impl Identity {
    /// Every header the sidecar sets from identity.
    pub fn all_headers(&self) -> impl Iterator<Item = &HeaderName> {
        [&self.user_id, &self.email, &self.name]
            .into_iter()
            .chain(self.claims.iter().map(|(_, h)| h))
            .chain(self.all_claims.iter())
    }
}

fn validate_routes(c: &mut Checker<'_>, routes: &[RouteRaw]) -> Vec<Route> {
    let mut out: Vec<Route> = Vec::new();
    for (i, r) in routes.iter().enumerate() {
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
        let mut methods = Vec::new();
        for m in &r.methods {
            match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => c.fail(format!("routes[{i}].methods: `{m}` is not a method")),
            }
        }
        if r.mode == RouteMode::Public && !r.require_claims.is_empty() {
            c.fail(format!("routes[{i}]: a public route cannot require claims"));
        }
        out.push(Route {
            prefix,
            mode: r.mode,
            methods,
            require_claims: r
                .require_claims
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        });
    }
    // Longest prefix first, so the first match is the most specific.
    out.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    out
}

fn validate_refresh(c: &mut Checker<'_>, r: &RefreshRaw) -> Option<Refresh> {
    let uri = c.uri("refresh.url", &r.url);
    c.pointer("refresh.access_token_pointer", &r.access_token_pointer);
    c.pointer("refresh.refresh_token_pointer", &r.refresh_token_pointer);
    if r.access_token_pointer.is_empty() {
        c.fail("refresh.access_token_pointer: must not be empty".into());
    }
    if !r.body.contains("{refresh_token}") {
        c.fail("refresh.body: must contain the {refresh_token} placeholder".into());
    }
    let method = Method::from_bytes(r.method.as_bytes()).unwrap_or_else(|_| {
        c.fail(format!("refresh.method: `{}` is not a method", r.method));
        Method::POST
    });
    let api_key = match (&r.api_key_header, &r.api_key) {
        (Some(h), Some(s)) => {
            let h = c.header("refresh.api_key_header", h);
            c.secret("refresh.api_key", s)
                .map(|secret| ApiKey { header: h, secret })
        }
        (None, None) => None,
        _ => {
            c.fail("refresh.api_key_header and refresh.api_key go together".into());
            None
        }
    };
    let content_type = HeaderValue::from_str(&r.content_type).unwrap_or_else(|_| {
        c.fail("refresh.content_type: not a valid header value".into());
        HeaderValue::from_static("application/json")
    });
    if r.max_response_bytes == 0 || r.max_response_bytes > 1024 * 1024 {
        c.fail("refresh.max_response_bytes: must be between 1 and 1048576".into());
    }
    let timeout = c.duration("refresh.timeout", &r.timeout);
    if timeout.is_zero() {
        c.fail("refresh.timeout: must be greater than zero".into());
    }
    Some(Refresh {
        uri,
        method,
        body: r.body.clone(),
        content_type,
        api_key,
        access_token_pointer: r.access_token_pointer.clone(),
        refresh_token_pointer: r.refresh_token_pointer.clone(),
        timeout,
        grace: c.duration("refresh.grace", &r.grace),
        rejected_ttl: c.duration("refresh.rejected_ttl", &r.rejected_ttl),
        header: c.header("refresh.header", &r.header),
        cookie: r.cookie.clone(),
        max_response_bytes: r.max_response_bytes,
        retry_after: c.duration("refresh.retry_after", &r.retry_after),
        cache_capacity: 100_000,
    })
}

fn validate_initiate(c: &mut Checker<'_>, i: &InitiateRaw) -> Option<Initiate> {
    let uri = c.uri("initiate.url", &i.url);
    c.pointer("initiate.access_token_pointer", &i.access_token_pointer);
    c.pointer("initiate.refresh_token_pointer", &i.refresh_token_pointer);
    let header = c.header("initiate.api_key_header", &i.api_key_header);
    let key = match &i.api_key {
        Some(s) => c.secret("initiate.api_key", s),
        None => {
            c.fail("initiate.api_key: required (env or file)".into());
            None
        }
    };
    let timeout = c.duration("initiate.timeout", &i.timeout);
    if timeout.is_zero() {
        c.fail("initiate.timeout: must be greater than zero".into());
    }
    Some(Initiate {
        uri,
        api_key: ApiKey {
            header,
            secret: key?,
        },
        body: i.body.clone(),
        access_token_pointer: i.access_token_pointer.clone(),
        refresh_token_pointer: i.refresh_token_pointer.clone(),
        timeout,
        max_staleness: c.duration("initiate.max_staleness", &i.max_staleness),
        when_refresh_token_missing: i.when_refresh_token_missing,
        require_same_subject: i.require_same_subject,
        grace: Duration::from_secs(30),
        cache_capacity: 100_000,
        max_response_bytes: 64 * 1024,
        retry_after: Duration::from_secs(5),
    })
}
