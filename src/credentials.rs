//! Credentials: where a credential can be in a request, how it is taken out, and what
//! must never reach the backend. The access token (Authorization, a cookie, or on
//! upgrades a query parameter or a `Sec-WebSocket-Protocol` entry), the refresh token
//! (a header or a cookie), the app identity token, and every header the sidecar owns.
//! Pure functions over request parts; no I/O.

use http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::percent_decode_str;

use crate::config::{Auth, Config};
use crate::error::ProxyError;

/// Headers some backends route on: the sidecar decides on the path, nobody else.
const ROUTING_HEADERS: [&str; 3] = ["x-original-url", "x-rewrite-url", "x-forwarded-uri"];

/// Where this config lets credentials be, built once per config.
pub struct Credentials {
    auth: Auth,
    refresh_header: Option<HeaderName>,
    refresh_cookie: Option<String>,
    app_header: Option<HeaderName>,
    stripper: Stripper,
}

/// The credentials only the sidecar reads: taken out of the request before anything
/// else looks at it.
#[derive(Debug, Default)]
pub struct Owned {
    pub refresh_token: Option<String>,
    pub app_token: Option<String>,
}

impl Credentials {
    pub fn new(cfg: &Config) -> Credentials {
        let refresh_header = cfg.refresh.as_ref().map(|r| r.header.clone());
        let app_header = cfg.app_identity.as_ref().map(|a| a.header.clone());
        let mut extra: Vec<HeaderName> = ROUTING_HEADERS
            .into_iter()
            .map(HeaderName::from_static)
            .collect();
        extra.extend(refresh_header.iter().cloned());
        extra.extend(app_header.iter().cloned());
        extra.extend(cfg.assertion.as_ref().map(|a| a.header.clone()));
        Credentials {
            auth: cfg.auth.clone(),
            refresh_cookie: cfg.refresh.as_ref().and_then(|r| r.cookie.clone()),
            stripper: Stripper::new(cfg, &extra.iter().collect::<Vec<_>>()),
            refresh_header,
            app_header,
        }
    }

    /// Reads the refresh token and app identity token, then removes every header the
    /// sidecar owns (identity prefix, identity headers, those tokens, routing headers).
    pub fn take_owned(&self, headers: &mut HeaderMap) -> Owned {
        let text = |h: &Option<HeaderName>| {
            h.as_ref()
                .and_then(|h| headers.get(h))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let refresh_token = text(&self.refresh_header).or_else(|| {
            let name = self.refresh_cookie.as_deref()?;
            cookie_values(headers, name).next().map(str::to_string)
        });
        let owned = Owned {
            refresh_token,
            app_token: text(&self.app_header),
        };
        self.stripper.strip(headers);
        owned
    }

    /// The one access token of a request (borrowed from it), if any.
    pub fn access_token<'a>(
        &'a self,
        parts: &'a Parts,
        upgrade: bool,
    ) -> Result<Option<Credential<'a>>, ProxyError> {
        extract(parts, &self.auth, upgrade)
    }

    /// Takes the client's credentials out of a request about to be forwarded: the
    /// sidecar's cookies, the `Authorization` header unless it is forwarded (then the
    /// renewed token replaces it), and the upgrade-only carriers. Returns the query to
    /// forward.
    pub fn remove_for_backend(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
        upgrade: bool,
        source: Option<Source>,
        renewed_access_token: Option<&str>,
    ) -> Option<String> {
        let mut own_cookies: Vec<&str> = self.refresh_cookie.as_deref().into_iter().collect();
        if !self.auth.forward_authorization {
            own_cookies.extend(self.auth.cookie.as_deref());
        }
        remove_cookies(headers, &own_cookies);
        if !self.auth.forward_authorization {
            headers.remove(header::AUTHORIZATION);
        } else if let Some(t) = renewed_access_token {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                headers.insert(header::AUTHORIZATION, v);
            }
        }
        if let Some(h) = &self.auth.token_header {
            // The renewed token replaces the client's only where the client sent it.
            match renewed_access_token.filter(|_| self.auth.forward_token_header) {
                Some(t) if source == Some(Source::Header) => {
                    if let Ok(v) = HeaderValue::from_str(t) {
                        headers.insert(h.clone(), v);
                    }
                }
                _ if !self.auth.forward_token_header => {
                    headers.remove(h);
                }
                _ => {}
            }
        }
        let query = match (&self.auth.query_param, query) {
            (Some(name), Some(q)) if upgrade => query_without(q, name),
            (_, q) => q.map(str::to_string),
        };
        if source == Some(Source::WebSocketProtocol) {
            if let Some(prefix) = &self.auth.websocket_protocol_prefix {
                match protocols_without_token(headers, prefix) {
                    Some(v) => headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v),
                    None => headers.remove(header::SEC_WEBSOCKET_PROTOCOL),
                };
            }
        }
        query
    }
}

/// Where a token was found; upgrade-only sources are removed before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Authorization,
    /// `auth.token_header` (e.g. ConnectyCube's `CB-Token`).
    Header,
    Cookie,
    Query,
    WebSocketProtocol,
}

/// A bearer token found in the request.
#[derive(Debug, Clone)]
pub struct Credential<'a> {
    /// Borrowed from the request where it can be (the common case: no copy per request).
    pub token: std::borrow::Cow<'a, str>,
    pub source: Source,
}

/// Finds the one access token in a request. Two tokens (two Authorization headers, or a
/// header and a cookie) are refused: which one would the backend believe?
pub fn extract<'a>(
    parts: &'a Parts,
    auth: &'a Auth,
    upgrade: bool,
) -> Result<Option<Credential<'a>>, ProxyError> {
    let mut found: Option<Credential<'a>> = None;
    let mut put = |c: Credential<'a>| {
        if found.is_some() {
            return Err(ProxyError::InvalidRequest(
                "credentials were sent more than once",
            ));
        }
        found = Some(c);
        Ok(())
    };
    let mut authz = parts.headers.get_all(header::AUTHORIZATION).iter();
    if let Some(v) = authz.next() {
        if authz.next().is_some() {
            return Err(ProxyError::InvalidRequest(
                "more than one Authorization header",
            ));
        }
        // Another scheme (Basic, Digest) is not a credential of ours: RFC 6750 §3.1
        // answers it like a request without a token.
        if let Some(t) = bearer(v)? {
            put(Credential {
                token: t.into(),
                source: Source::Authorization,
            })?;
        }
    }
    if let Some(name) = &auth.token_header {
        let mut hits = parts.headers.get_all(name).iter();
        if let Some(v) = hits.next() {
            if hits.next().is_some() {
                return Err(ProxyError::InvalidRequest(
                    "the token header was sent more than once",
                ));
            }
            let t = v
                .to_str()
                .map_err(|_| ProxyError::InvalidToken("the access token is malformed"))?
                .trim_matches(' ');
            put(Credential {
                token: check_token_chars(t)?.into(),
                source: Source::Header,
            })?;
        }
    }
    if let Some(name) = &auth.cookie {
        let mut hits = cookie_values(&parts.headers, name);
        if let Some(t) = hits.next() {
            if hits.next().is_some() {
                return Err(ProxyError::InvalidRequest(
                    "the token cookie was sent more than once",
                ));
            }
            put(Credential {
                token: check_token_chars(t)?.into(),
                source: Source::Cookie,
            })?;
        }
    }
    if upgrade {
        if let Some(name) = &auth.query_param {
            let mut hits = query_values(parts.uri.query().unwrap_or(""), name);
            if let Some(t) = hits.next() {
                if hits.next().is_some() {
                    return Err(ProxyError::InvalidRequest(
                        "the token parameter was sent more than once",
                    ));
                }
                put(Credential {
                    token: check_token_chars(&t)?.to_string().into(),
                    source: Source::Query,
                })?;
            }
        }
        if let Some(prefix) = &auth.websocket_protocol_prefix {
            if let Some(t) = protocol_token(&parts.headers, prefix) {
                put(Credential {
                    token: check_token_chars(t)?.into(),
                    source: Source::WebSocketProtocol,
                })?;
            }
        }
    }
    if let Some(c) = &found {
        if c.token.len() > auth.max_token_bytes {
            return Err(ProxyError::InvalidToken("the access token is too large"));
        }
    }
    Ok(found)
}

/// `Bearer <token68>`, scheme case-insensitive (RFC 6750 §2.1, RFC 9110 §11.1);
/// `None` for another scheme.
fn bearer(v: &HeaderValue) -> Result<Option<&str>, ProxyError> {
    const MALFORMED: ProxyError =
        ProxyError::InvalidRequest("the Authorization header is malformed");
    // Bytes first: a valid token is token68, a subset of what `to_str` accepts, so the
    // value is scanned once; `to_str` runs only to tell a malformed header from a
    // malformed token.
    let b = v.as_bytes();
    let (scheme, rest) = match b.iter().position(|&c| c == b' ') {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &b[b.len()..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        v.to_str().map_err(|_| MALFORMED)?;
        return Ok(None);
    }
    // Only spaces are trimmed: a tab or CR around a token makes it a malformed token.
    let start = rest.iter().position(|&c| c != b' ').unwrap_or(rest.len());
    let end = rest
        .iter()
        .rposition(|&c| c != b' ')
        .map_or(start, |i| i + 1);
    let token = &rest[start..end];
    if token.is_empty() {
        return Err(ProxyError::InvalidToken("the bearer token is empty"));
    }
    let checked = std::str::from_utf8(token)
        .map_err(|_| MALFORMED)
        .and_then(check_token_chars);
    // A bad token in a header that is not even visible ASCII: the header is malformed.
    checked
        .map(Some)
        .map_err(|e| if v.to_str().is_err() { MALFORMED } else { e })
}

/// token68 characters only (RFC 9110 §11.2): anything else is not a token we issued.
fn check_token_chars(t: &str) -> Result<&str, ProxyError> {
    let body = t.trim_end_matches('=');
    // A fold with `&` (no early exit) lets the compiler vectorise the scan; tokens are
    // short and almost always valid, so there is nothing to gain from stopping early.
    let ok = body.bytes().fold(true, |ok, b| {
        ok & (b.is_ascii_alphanumeric()
            | (b == b'-')
            | (b == b'.')
            | (b == b'_')
            | (b == b'~')
            | (b == b'+')
            | (b == b'/'))
    });
    if !body.is_empty() && ok {
        Ok(t)
    } else {
        Err(ProxyError::InvalidToken("the access token is malformed"))
    }
}

/// Values of cookie `name` across every Cookie header.
pub fn cookie_values<'a>(h: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = String> + 'a {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode_str(k).decode_utf8().ok()?;
        (k == name).then(|| {
            percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The query string without parameter `name` (None when nothing is left).
pub fn query_without(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map(|(k, _)| k).unwrap_or(pair);
            percent_decode_str(k)
                .decode_utf8()
                .map(|k| k != name)
                .unwrap_or(true)
        })
        .collect();
    let q = kept.join("&");
    (!q.is_empty()).then_some(q)
}

fn protocol_token<'a>(h: &'a HeaderMap, prefix: &str) -> Option<&'a str> {
    h.get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(prefix))
}

/// `Sec-WebSocket-Protocol` with the token-carrying entry removed.
pub fn protocols_without_token(h: &HeaderMap, prefix: &str) -> Option<HeaderValue> {
    let kept: Vec<&str> = h
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with(prefix))
        .collect();
    if kept.is_empty() {
        None
    } else {
        HeaderValue::from_str(&kept.join(", ")).ok()
    }
}

/// What the strip step removes: the identity prefix plus named headers (refresh token,
/// app identity token, identity headers outside the prefix).
pub struct Stripper {
    prefix: Vec<u8>,
    names: Vec<Vec<u8>>,
}

/// Lowercase with `_` read as `-`, so `X_Auth_User_Id` is caught like `x-auth-user-id`
/// (some servers and CGI gateways treat the two as the same header).
fn normalized_eq(name: &[u8], want: &[u8]) -> bool {
    name.len() == want.len() && starts_normalized(name, want)
}

fn starts_normalized(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len()
        && name.iter().zip(prefix).all(|(a, b)| {
            (if *a == b'_' {
                b'-'
            } else {
                a.to_ascii_lowercase()
            }) == *b
        })
}

impl Stripper {
    pub fn new(cfg: &Config, extra: &[&HeaderName]) -> Stripper {
        let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-").into_bytes();
        let mut names: Vec<Vec<u8>> = cfg
            .identity
            .all_headers()
            .map(|h| norm(h.as_str()))
            .collect();
        names.extend(extra.iter().map(|h| norm(h.as_str())));
        names.push(norm(cfg.response_tokens.access_header.as_str()));
        names.push(norm(cfg.response_tokens.refresh_header.as_str()));
        let prefix = norm(&cfg.identity.prefix);
        names.retain(|n| !n.starts_with(&prefix));
        names.sort();
        names.dedup();
        Stripper { prefix, names }
    }

    fn owned(&self, name: &[u8]) -> bool {
        starts_normalized(name, &self.prefix) || self.names.iter().any(|n| normalized_eq(name, n))
    }

    /// Removes every header the sidecar owns. Returns how many names were removed.
    pub fn strip(&self, headers: &mut HeaderMap) -> usize {
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|k| self.owned(k.as_str().as_bytes()))
            .cloned()
            .collect();
        for name in &doomed {
            headers.remove(name);
        }
        doomed.len()
    }
}

/// Removes the named cookies from every `Cookie` header (the sidecar's own credentials
/// never reach the backend); drops a header left empty.
pub fn remove_cookies(headers: &mut HeaderMap, names: &[&str]) {
    if names.is_empty() || !headers.contains_key(header::COOKIE) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| {
            let name = pair.split_once('=').map(|(k, _)| k).unwrap_or(pair).trim();
            !pair.is_empty() && !names.contains(&name)
        })
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}
