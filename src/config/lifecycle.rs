//! The token lifecycle sections: `[refresh]`, `[initiate]`, `[app_identity]` and
//! `[introspection]`. Each is optional; its presence enables the feature.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::secret::{Secret, SecretBytes};
use super::{types, Checker};

/// An API key sent on calls to the token service: the header and its value.
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub header: HeaderName,
    pub secret: SecretBytes,
}

/// Refresh: an expired access token with a valid signature, plus a refresh token, is
/// exchanged for a new pair (one call per refresh token, however many requests wait).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Refresh {
    /// Token service refresh endpoint (required; setting `[refresh]` enables refresh).
    #[serde(rename = "url", with = "types::http_url")]
    #[schemars(with = "String")]
    pub uri: Uri,
    /// Method of the refresh call.
    #[serde(with = "types::method")]
    #[schemars(with = "String")]
    pub method: Method,
    /// Request body template; must contain `{refresh_token}`, which is JSON-escaped (or
    /// form-encoded for non-JSON content types).
    pub body: String,
    /// Content type of the request body.
    #[serde(with = "types::header_value")]
    #[schemars(with = "String")]
    pub content_type: HeaderValue,
    /// Header of an optional API key on refresh calls; goes with `api_key`.
    #[serde(with = "types::opt_header")]
    #[schemars(with = "Option<String>")]
    pub api_key_header: Option<HeaderName>,
    /// Optional API key on refresh calls, a secret reference; goes with
    /// `api_key_header`.
    #[serde(rename = "api_key")]
    pub api_key_secret: Option<Secret>,
    /// `api_key_header` with the loaded `api_key`, when both are set.
    #[serde(skip)]
    pub api_key: Option<ApiKey>,
    /// Static headers sent on every refresh call (an SDK's platform headers), name →
    /// value; not a secret (use `api_key` for one).
    pub headers: BTreeMap<String, String>,
    /// `headers`, parsed.
    #[serde(skip)]
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// JSON pointer (starting with `/`, not empty) to the new access token in the answer.
    pub access_token_pointer: String,
    /// JSON pointer to the new refresh token in the answer; no new refresh token keeps
    /// the old one.
    pub refresh_token_pointer: String,
    /// Timeout per refresh call, above zero.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// How long a new pair is handed to requests still carrying the old one (another
    /// tab, a retry, a WebSocket reconnect).
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub grace: Duration,
    /// How long a refresh token that the token service rejected is remembered.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub rejected_ttl: Duration,
    /// Header the client sends its refresh token in (removed before forwarding).
    #[serde(with = "types::header")]
    #[schemars(with = "String")]
    pub header: HeaderName,
    /// Cookie the client may send its refresh token in instead; unset = none.
    pub cookie: Option<String>,
    /// Larger answers from the token service are "unavailable" (503); 1 … 1048576 bytes.
    pub max_response_bytes: usize,
    /// `Retry-After` on a 503 when the token service is unavailable.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub retry_after: Duration,
    /// Entries, at most (at least 1), in the refreshed-pair grace cache and in the
    /// rejected-token cache (each).
    pub cache_capacity: u64,
    /// Calls per second, at most, from this replica (0 = unlimited); past it a renewal
    /// is answered 503 with `Retry-After` without a call, so a flood of expired tokens
    /// cannot spend the token service's budget.
    pub max_calls_per_second: u32,
    /// Calls per minute, at most, for one user (`sub`) from this replica, with a burst of
    /// 3 (0 = unlimited). A user normally needs one call per access-token lifetime.
    pub max_calls_per_user_per_minute: u32,
}

impl Default for Refresh {
    fn default() -> Self {
        Self {
            uri: Uri::default(),
            method: Method::POST,
            body: r#"{"refresh_token": "{refresh_token}"}"#.into(),
            content_type: HeaderValue::from_static("application/json"),
            api_key_header: None,
            api_key_secret: None,
            api_key: None,
            headers: BTreeMap::new(),
            extra_headers: Vec::new(),
            access_token_pointer: "/access_token".into(),
            refresh_token_pointer: "/refresh_token".into(),
            timeout: Duration::from_secs(5),
            grace: Duration::from_secs(30),
            rejected_ttl: Duration::from_secs(10),
            header: HeaderName::from_static("x-refresh-token"),
            cookie: None,
            max_response_bytes: 64 * 1024,
            retry_after: Duration::from_secs(5),
            cache_capacity: 100_000,
            max_calls_per_second: 100,
            max_calls_per_user_per_minute: 0,
        }
    }
}

/// Static request headers: valid names and values, never the API key's header or the
/// content type (the sidecar sets those).
fn parse_headers(
    c: &mut Checker<'_>,
    key: &str,
    map: &BTreeMap<String, String>,
    api_key_header: &Option<HeaderName>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (k, v) in map {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) else {
            c.fail(format!("{key}: `{k}` is not a valid header name and value"));
            continue;
        };
        if Some(&name) == api_key_header.as_ref() || name == http::header::CONTENT_TYPE {
            c.fail(format!("{key}: `{k}` is set by the sidecar itself"));
            continue;
        }
        out.push((name, value));
    }
    out
}

fn check_response_bytes(c: &mut Checker<'_>, key: &str, n: usize) {
    if n == 0 || n > 1024 * 1024 {
        c.fail(format!("{key}: must be between 1 and 1048576"));
    }
}

impl Refresh {
    pub(super) fn validate(&mut self, c: &mut Checker<'_>) {
        c.require_url("refresh.url", &self.uri);
        c.pointer("refresh.access_token_pointer", &self.access_token_pointer);
        c.pointer("refresh.refresh_token_pointer", &self.refresh_token_pointer);
        if self.access_token_pointer.is_empty() {
            c.fail("refresh.access_token_pointer: must not be empty".into());
        }
        if !self.body.contains("{refresh_token}") {
            c.fail("refresh.body: must contain the {refresh_token} placeholder".into());
        }
        self.api_key = match (&self.api_key_header, &mut self.api_key_secret) {
            (Some(h), Some(s)) => s.load("refresh.api_key", c).then(|| ApiKey {
                header: h.clone(),
                secret: s.value.clone(),
            }),
            (None, None) => None,
            _ => {
                c.fail("refresh.api_key_header and refresh.api_key go together".into());
                None
            }
        };
        self.extra_headers =
            parse_headers(c, "refresh.headers", &self.headers, &self.api_key_header);
        check_response_bytes(c, "refresh.max_response_bytes", self.max_response_bytes);
        if self.timeout.is_zero() {
            c.fail("refresh.timeout: must be greater than zero".into());
        }
        if self.cache_capacity == 0 {
            c.fail("refresh.cache_capacity: must be at least 1".into());
        }
    }
}

/// Initiate: a new session started server-side with the API key, for the user proven by
/// a recently expired token or an app identity token (one call per user at a time).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Initiate {
    /// Token service initiate endpoint (required; setting `[initiate]` enables initiate).
    #[serde(rename = "url", with = "types::http_url")]
    #[schemars(with = "String")]
    pub uri: Uri,
    /// The API key, a secret reference (required); it never leaves the sidecar: not in
    /// a response, not to the backend, not in a log line.
    #[serde(rename = "api_key")]
    pub api_key_secret: Secret,
    /// Header the API key is sent in.
    #[serde(with = "types::header")]
    #[schemars(with = "String")]
    pub api_key_header: HeaderName,
    /// `api_key_header` with the loaded `api_key`.
    #[serde(skip)]
    pub api_key: ApiKey,
    /// The API key goes only in the body, where it has `{api_key}` (ConnectyCube's
    /// `auth_key`), not in `api_key_header`.
    pub api_key_in_body: bool,
    /// Request body template, filled from the verified identity: `{sub}`, `{email}`,
    /// `{name}`, `{external_id}` (JSON-escaped), and any claim of the proving token:
    /// `{claim:NAME}` (its text, JSON-escaped), `{bool:NAME}` (`true` when the claim is
    /// true, else `false`), `{json:NAME}` (its JSON value, `null` when absent). For an
    /// opaque session renewed server-side also `{login}` (the confirmed session's login)
    /// and `{app_token}` (the app identity token the client sent: a Custom Identity
    /// Provider login); always `{nonce}` (random, 10 digits) and `{timestamp}` (Unix
    /// seconds), `{signature}` with `[initiate.signature]` and `{api_key}` with
    /// `api_key_in_body`.
    pub body: String,
    /// Body template for renewing a guest session (a guest is a new user each time);
    /// unset = guest sessions are not renewed. Placeholders as in `body`.
    pub guest_body: Option<String>,
    /// Sign the body (ConnectyCube's create-session call); unset = unsigned.
    pub signature: Option<Signature>,
    /// Static headers sent on every initiate call (an SDK's platform headers), name →
    /// value; not a secret (the API key goes in `api_key`).
    pub headers: BTreeMap<String, String>,
    /// `headers`, parsed.
    #[serde(skip)]
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// `jwt` (the default): the answer's access token is verified with `[auth]` before
    /// anyone uses it. `opaque`: it is not a JWT the sidecar can check (Mindset's
    /// `authToken`); it is handed out as is, for the user the request proved.
    pub token_format: TokenFormat,
    /// With `token_format = "opaque"`: how long a token is taken to live (its
    /// `expires_at` on the token endpoint, the cookie's `Max-Age`).
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub opaque_lifetime: Duration,
    /// JSON pointer (starting with `/`) to the new access token in the answer.
    pub access_token_pointer: String,
    /// JSON pointer (starting with `/`) to the new refresh token in the answer.
    pub refresh_token_pointer: String,
    /// Timeout per initiate call, above zero.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// An expired token older than this cannot prove who a new session is for.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub max_staleness: Duration,
    /// Also initiate for an expired token sent without a refresh token.
    pub when_refresh_token_missing: bool,
    /// When the expired token proved the user, the new token must carry the same `sub`
    /// (else 502).
    pub require_same_subject: bool,
    /// How long a session started by initiate is handed to other requests for the same
    /// user.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub grace: Duration,
    /// Entries, at most (at least 1), in the initiated-session grace cache.
    pub cache_capacity: u64,
    /// Larger answers from the token service are "unavailable" (503); 1 … 1048576 bytes.
    pub max_response_bytes: usize,
    /// `Retry-After` on a 503 when only initiate is configured (with `[refresh]`,
    /// `refresh.retry_after` applies).
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub retry_after: Duration,
    /// Calls per second, at most, from this replica (0 = unlimited); past it a renewal
    /// is answered 503 with `Retry-After` without a call, so a flood of expired tokens
    /// cannot spend the token service's budget.
    pub max_calls_per_second: u32,
    /// Calls per minute, at most, for one user from this replica, with a burst of 3 (0 =
    /// unlimited).
    pub max_calls_per_user_per_minute: u32,
    /// How long a user for whom the token service refused to start a session is
    /// refused again without a call.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub rejected_ttl: Duration,
}

/// Whether a body template is a JSON object with its placeholders filled in (numbers
/// where `{nonce}`/`{timestamp}` stand bare, text inside strings).
fn signable(template: &str) -> bool {
    let mut t = template.replace("{nonce}", "1").replace("{timestamp}", "1");
    for p in [
        "{sub}",
        "{email}",
        "{name}",
        "{external_id}",
        "{login}",
        "{app_token}",
        "{api_key}",
        "{signature}",
    ] {
        t = t.replace(p, "x");
    }
    matches!(
        serde_json::from_str::<serde_json::Value>(&t),
        Ok(serde_json::Value::Object(_))
    )
}

/// A signature over the initiate body's own parameters: every field except `field`
/// (nested objects as `user[login]`), sorted by name, joined as `name=value&…`, MACed
/// with the secret and written in hex as the value of `field` (where the body has
/// `{signature}`).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Signature {
    /// `hmac-sha1` (ConnectyCube) or `hmac-sha256`.
    pub algorithm: SignatureAlgorithm,
    /// The MAC key, a secret reference (required): ConnectyCube's auth secret.
    pub secret: Secret,
    /// The body field that carries the signature (left out of the signed string).
    pub field: String,
}

/// MAC of an initiate signature.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureAlgorithm {
    /// HMAC-SHA1, hex.
    #[default]
    HmacSha1,
    /// HMAC-SHA256, hex.
    HmacSha256,
}

impl Default for Signature {
    fn default() -> Self {
        Self {
            algorithm: SignatureAlgorithm::HmacSha1,
            secret: Secret::default(),
            field: "signature".into(),
        }
    }
}

impl Default for ApiKey {
    fn default() -> Self {
        ApiKey {
            header: HeaderName::from_static("x-api-key"),
            secret: SecretBytes::default(),
        }
    }
}

impl Default for Initiate {
    fn default() -> Self {
        Self {
            uri: Uri::default(),
            api_key_secret: Secret::default(),
            api_key_header: HeaderName::from_static("x-api-key"),
            api_key: ApiKey::default(),
            api_key_in_body: false,
            body: r#"{"user_unique_id": "{sub}", "user_name": "{name}"}"#.into(),
            headers: BTreeMap::new(),
            extra_headers: Vec::new(),
            token_format: TokenFormat::Jwt,
            opaque_lifetime: Duration::from_secs(3600),
            guest_body: None,
            signature: None,
            access_token_pointer: "/data/access_token".into(),
            refresh_token_pointer: "/data/refresh_token".into(),
            timeout: Duration::from_secs(5),
            max_staleness: Duration::from_secs(7 * 86400),
            when_refresh_token_missing: false,
            require_same_subject: true,
            grace: Duration::from_secs(30),
            cache_capacity: 100_000,
            max_response_bytes: 64 * 1024,
            retry_after: Duration::from_secs(5),
            max_calls_per_second: 20,
            max_calls_per_user_per_minute: 0,
            rejected_ttl: Duration::from_secs(10),
        }
    }
}

impl Initiate {
    pub(super) fn validate(&mut self, c: &mut Checker<'_>) {
        c.require_url("initiate.url", &self.uri);
        c.pointer("initiate.access_token_pointer", &self.access_token_pointer);
        c.pointer(
            "initiate.refresh_token_pointer",
            &self.refresh_token_pointer,
        );
        if !self.api_key_secret.is_set() {
            c.fail("initiate.api_key: required (env or file)".into());
        } else if self.api_key_secret.load("initiate.api_key", c) {
            self.api_key = ApiKey {
                header: self.api_key_header.clone(),
                secret: self.api_key_secret.value.clone(),
            };
        }
        if self.api_key_in_body && !self.body.contains("{api_key}") {
            c.fail("initiate.body: must contain {api_key} with api_key_in_body".into());
        }
        if let Some(sig) = &mut self.signature {
            if !sig.secret.is_set() {
                c.fail("initiate.signature.secret: required (env or file)".into());
            } else {
                sig.secret.load("initiate.signature.secret", c);
            }
            if sig.field.is_empty() {
                c.fail("initiate.signature.field: must not be empty".into());
            }
            for (key, b) in [
                ("initiate.body", Some(&self.body)),
                ("initiate.guest_body", self.guest_body.as_ref()),
            ] {
                let Some(b) = b else { continue };
                if !b.contains("{signature}") {
                    c.fail(format!(
                        "{key}: must contain {{signature}} with [initiate.signature]"
                    ));
                } else if !signable(b) {
                    c.fail(format!("{key}: must be a JSON object once its placeholders are filled (the signature is computed over its fields)"));
                }
            }
        }
        if self.timeout.is_zero() {
            c.fail("initiate.timeout: must be greater than zero".into());
        }
        let key_header = Some(self.api_key_header.clone());
        self.extra_headers = parse_headers(c, "initiate.headers", &self.headers, &key_header);
        if self.opaque_lifetime.is_zero() {
            c.fail("initiate.opaque_lifetime: must be greater than zero".into());
        }
        check_response_bytes(c, "initiate.max_response_bytes", self.max_response_bytes);
        if self.cache_capacity == 0 {
            c.fail("initiate.cache_capacity: must be at least 1".into());
        }
    }
}

/// What kind of access token initiate answers with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    /// A JWT, verified with `[auth]`.
    #[default]
    Jwt,
    /// Not checked as a JWT: handed out as is for the proven user.
    Opaque,
}

/// Your app's own HS256 identity token, used to start a session (through initiate) when
/// the client has no chat tokens yet.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct AppIdentity {
    /// Header carrying the app identity token (`externalId` or `email`; email wins; `iat`
    /// within `max_age`); removed before forwarding.
    #[serde(with = "types::header")]
    #[schemars(with = "String")]
    pub header: HeaderName,
    /// HS256 key of the app identity token, a secret reference of at least 32 bytes
    /// (required).
    pub secret: Secret,
    /// Oldest `iat` accepted.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub max_age: Duration,
    /// Clock skew allowed on the app identity token's `exp` and `iat`.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub leeway: Duration,
}

impl Default for AppIdentity {
    fn default() -> Self {
        Self {
            header: HeaderName::from_static("x-app-identity"),
            secret: Secret::default(),
            max_age: Duration::from_secs(15 * 60),
            leeway: Duration::from_secs(30),
        }
    }
}

impl AppIdentity {
    pub(super) fn validate(&mut self, c: &mut Checker<'_>) {
        if !self.secret.is_set() {
            c.fail("app_identity.secret: required (env or file)".into());
        } else if self.secret.load("app_identity.secret", c) && self.secret.0.len() < 32 {
            c.fail("app_identity.secret: must be at least 32 bytes".into());
        }
    }
}

/// RFC 7662 introspection for opaque (non-JWT) access tokens.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Introspection {
    /// RFC 7662 endpoint for tokens that are not JWTs (required; setting
    /// `[introspection]` enables it).
    #[serde(with = "types::http_url")]
    #[schemars(with = "String")]
    pub url: Uri,
    /// Client id for HTTP Basic auth on the endpoint; goes with `client_secret`.
    pub client_id: Option<String>,
    /// Client secret for HTTP Basic auth, a secret reference; goes with `client_id`.
    pub client_secret: Option<Secret>,
    /// `client_id` with the loaded `client_secret`, when both are set.
    #[serde(skip)]
    pub client: Option<ClientCredentials>,
    /// Timeout per introspection call.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Active answers are cached until the token's `exp`, at most this long.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub cache_ttl: Duration,
    /// Inactive answers are cached this long.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub negative_ttl: Duration,
    /// Cached answers, at most (0 is read as 1).
    pub cache_capacity: u64,
    /// `rfc7662` (the default): the token in a form body, `active` must be true;
    /// `session`: a vendor's own session call (ConnectyCube's `GET /session`), the
    /// token in `token_header`, a 2xx answer is a live session and 401/403/404 one that
    /// does not exist.
    pub style: CheckStyle,
    /// Method of the call; unset = POST for `rfc7662`, GET for `session`.
    #[serde(with = "types::opt_method")]
    #[schemars(with = "Option<String>")]
    pub method: Option<Method>,
    /// Header the token is sent in (the `session` style, required there), e.g.
    /// `CB-Token`.
    #[serde(with = "types::opt_header")]
    #[schemars(with = "Option<String>")]
    pub token_header: Option<HeaderName>,
    /// JSON pointer to the user id (`sub`); unset = `/sub`, else `/username`
    /// (RFC 7662). A number is read as its decimal text; `0`, null or absent means an
    /// application session (no user) when `app_sessions` is on.
    pub user_id_pointer: Option<String>,
    /// JSON pointer to the login (claim `login`; also `{login}` in initiate bodies).
    pub login_pointer: Option<String>,
    /// JSON pointer to the email (claim `email`); unset = `/email`.
    pub email_pointer: Option<String>,
    /// JSON pointer to the display name (claim `name`); unset = `/name`.
    pub name_pointer: Option<String>,
    /// JSON pointer to the expiry (seconds since the epoch); unset = `/exp` for
    /// `rfc7662`, none for `session`. No expiry: the session lives `idle_timeout` (else `cache_ttl`)
    /// from its last confirmation.
    pub expiry_pointer: Option<String>,
    /// JSON pointer to a session kind given as text (`app`, `guest`, `user`); unset =
    /// derived: no user = `app`, `guest_pointer` true = `guest`, else `user`. The kind
    /// is the claim `session_kind`, which route `limits` can test.
    pub kind_pointer: Option<String>,
    /// JSON pointer to a flag (true, 1 or "1") that marks a guest user.
    pub guest_pointer: Option<String>,
    /// A session without a user (user id 0, null or absent) is an application session
    /// instead of an invalid token.
    pub app_sessions: bool,
    /// Sliding expiry: an answer is trusted at most this long after the vendor last
    /// confirmed it (ConnectyCube: 2 h after the last request); unset = no idle limit.
    #[serde(with = "types::duration_or_off")]
    #[schemars(with = "String")]
    pub idle_timeout: Option<Duration>,
    /// With `idle_timeout`: a session in use whose confirmation is older than this is
    /// re-confirmed in the background (the request goes on), so the vendor sees it
    /// active before the idle window ends; unset = half of `idle_timeout`.
    #[serde(with = "types::duration_or_off")]
    #[schemars(with = "String")]
    pub reconfirm_after: Option<Duration>,
    /// How long a confirmed session is remembered (by token hash) as proof of its user
    /// for a server-side renewal once the vendor says it no longer exists; unset =
    /// `initiate.max_staleness`.
    #[serde(with = "types::duration_or_off")]
    #[schemars(with = "String")]
    pub remember_for: Option<Duration>,
}

/// How the session check call is made and read.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckStyle {
    /// RFC 7662 token introspection.
    #[default]
    Rfc7662,
    /// A vendor session call with the token in a header.
    Session,
}

/// The introspection client's credentials.
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    pub id: String,
    pub secret: SecretBytes,
}

impl Default for Introspection {
    fn default() -> Self {
        Self {
            url: Uri::default(),
            client_id: None,
            client_secret: None,
            client: None,
            timeout: Duration::from_secs(3),
            cache_ttl: Duration::from_secs(5 * 60),
            negative_ttl: Duration::from_secs(10),
            cache_capacity: 100_000,
            style: CheckStyle::Rfc7662,
            method: None,
            token_header: None,
            user_id_pointer: None,
            login_pointer: None,
            email_pointer: None,
            name_pointer: None,
            expiry_pointer: None,
            kind_pointer: None,
            guest_pointer: None,
            app_sessions: false,
            idle_timeout: None,
            reconfirm_after: None,
            remember_for: None,
        }
    }
}

impl Introspection {
    pub(super) fn validate(&mut self, c: &mut Checker<'_>) {
        c.require_url("introspection.url", &self.url);
        self.client = match (&self.client_id, &mut self.client_secret) {
            (Some(id), Some(s)) => {
                s.load("introspection.client_secret", c)
                    .then(|| ClientCredentials {
                        id: id.clone(),
                        secret: s.value.clone(),
                    })
            }
            (None, None) => None,
            _ => {
                c.fail(
                    "introspection.client_id and introspection.client_secret go together".into(),
                );
                None
            }
        };
        self.cache_capacity = self.cache_capacity.max(1);
        if self.style == CheckStyle::Session && self.token_header.is_none() {
            c.fail("introspection.token_header: required with style = \"session\"".into());
        }
        for (key, p) in [
            ("introspection.user_id_pointer", &self.user_id_pointer),
            ("introspection.login_pointer", &self.login_pointer),
            ("introspection.email_pointer", &self.email_pointer),
            ("introspection.name_pointer", &self.name_pointer),
            ("introspection.expiry_pointer", &self.expiry_pointer),
            ("introspection.kind_pointer", &self.kind_pointer),
            ("introspection.guest_pointer", &self.guest_pointer),
        ] {
            if let Some(p) = p {
                c.pointer(key, p);
            }
        }
        if self.timeout.is_zero() {
            c.fail("introspection.timeout: must be greater than zero".into());
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            c.fail("introspection.idle_timeout: must be greater than zero".into());
        }
        if let (Some(idle), Some(re)) = (self.idle_timeout, self.reconfirm_after) {
            if re >= idle {
                c.fail("introspection.reconfirm_after: must be below idle_timeout".into());
            }
        }
    }

    /// The method of the call.
    pub fn method(&self) -> Method {
        match (&self.method, self.style) {
            (Some(m), _) => m.clone(),
            (None, CheckStyle::Rfc7662) => Method::POST,
            (None, CheckStyle::Session) => Method::GET,
        }
    }
}
