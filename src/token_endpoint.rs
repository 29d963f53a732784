//! The token endpoint (`[token_endpoint]`): the API the vendors' guides ask the customer
//! to build on their server (LikeMinds' `getTokens()` / `onRefreshTokenExpired`,
//! Mindset's `authToken`, Kustomer's `logIn(jwt)`), answered by the sidecar. A client
//! proves who it is (its access token, or an app identity token); the sidecar starts a
//! vendor session for that user through initiate (the lifecycle's single flight: one
//! call per user however many callers) and/or signs a login JWT, and answers JSON in the
//! configured shape. Never forwarded, never cacheable; refusals are the proxy's own
//! (`401`/`503` + `Retry-After`, `X-Auth-Error`). Nothing it returns holds the API key:
//! only tokens issued for the proven user.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, request::Parts, HeaderName, HeaderValue, Method, Response};
use serde_json::{Map, Value};

use crate::body::ProxyBody;
use crate::config::{Config, Cors, Field, LoginClaim, Proof};
use crate::credentials::{Credentials, Owned};
use crate::error::ProxyError;
use crate::token::{
    now_secs, JwksRemote, Lifecycle, Session, Subject, Verdict, Verified, Verifier, VerifyError,
};

/// The endpoint, built once per config.
pub struct TokenEndpoint {
    cfg: crate::config::TokenEndpoint,
    lifecycle: Arc<Lifecycle>,
    verifier: Arc<Verifier>,
    jwks: Option<Arc<JwksRemote>>,
    /// The app identity header, when `[app_identity]` is set and accepted as a proof.
    app_header: Option<HeaderName>,
    login: Option<LoginSigner>,
    /// Revocations and bans, when `[revocation]` is configured.
    revs: Option<Arc<crate::revoke::Revocations>>,
}

/// What one answer did, for the access log and metrics.
pub struct Answered {
    pub response: Response<ProxyBody>,
    /// The session started (or shared) for the caller, if the answer needed one.
    pub session: Option<Arc<Session>>,
}

impl TokenEndpoint {
    /// `None` when `[token_endpoint]` is not configured.
    pub fn new(
        cfg: &Config,
        lifecycle: Arc<Lifecycle>,
        verifier: Arc<Verifier>,
        jwks: Option<Arc<JwksRemote>>,
        revs: Option<Arc<crate::revoke::Revocations>>,
    ) -> Option<TokenEndpoint> {
        let te = cfg.token_endpoint.clone()?;
        let app_header = cfg
            .app_identity
            .as_ref()
            .filter(|_| te.accept.contains(&Proof::AppIdentity))
            .map(|a| a.header.clone());
        let login = te.login_jwt.as_ref().map(|l| LoginSigner {
            key: jsonwebtoken::EncodingKey::from_secret(&l.secret.0),
            claims: l.claims.clone(),
        });
        Some(TokenEndpoint {
            cfg: te,
            lifecycle,
            verifier,
            jwks,
            app_header,
            login,
            revs,
        })
    }

    /// Is this request for the endpoint (exactly its path)?
    pub fn matches(&self, path: &str) -> bool {
        path == self.cfg.path
    }

    /// A CORS preflight to the endpoint, from `[cors]`'s origins: the methods and the
    /// request headers the endpoint reads are allowed whatever the proxy-wide lists say.
    pub fn preflight(&self, cors: &Cors, parts: &Parts) -> Response<ProxyBody> {
        let mut c = cors.clone();
        c.allowed_methods = vec!["GET".into(), "POST".into()];
        for h in [header::AUTHORIZATION, header::CONTENT_TYPE]
            .iter()
            .chain(self.app_header.iter())
        {
            if !c.allowed_headers.iter().any(|a| a == h.as_str()) {
                c.allowed_headers.push(h.as_str().to_string());
            }
        }
        let mut resp = crate::cors::answer_preflight(&c, parts);
        no_store(resp.headers_mut());
        resp
    }

    /// The answer to a `GET`/`POST`: who the caller proves to be, then the tokens.
    pub async fn answer(
        &self,
        parts: &Parts,
        owned: &Owned,
        credentials: &Credentials,
    ) -> Result<Answered, ProxyError> {
        if parts.method != Method::GET && parts.method != Method::POST {
            return Err(ProxyError::MethodNotAllowed);
        }
        let (subject, by_token) = self.prove(parts, owned, credentials).await?;
        // A banned user gets nothing here either: no session, no login JWT.
        if let Some(r) = &self.revs {
            if r.banned(&subject.sub) || r.banned(&subject.external_id) {
                crate::revoke::count_refused(crate::revoke::Refused::Banned);
                return Err(ProxyError::UserBanned);
            }
        }
        // Signed first: an identity that cannot have a login JWT costs no initiate call.
        let login = match &self.login {
            Some(l) => Some(l.sign(&subject)?),
            None => None,
        };
        let session = if self.cfg.fields.values().any(|f| f.needs_session()) {
            Some(self.lifecycle.start(subject.clone(), by_token).await?)
        } else {
            None
        };
        let mut doc = Map::new();
        for (name, field) in &self.cfg.fields {
            let v = match (field, &session) {
                (Field::AccessToken, Some(s)) => Value::String(s.access_token.clone()),
                (Field::RefreshToken, Some(s)) => Value::String(s.refresh_token.clone()),
                (Field::ExpiresAt, Some(s)) => Value::from(s.verified.exp),
                (Field::UserId, Some(s)) => Value::String(s.verified.sub.clone()),
                (Field::UserId, None) => Value::String(subject.sub.clone()),
                (Field::LoginJwt, _) => login.clone().map(Value::String).unwrap_or(Value::Null),
                // Config validation ties session fields to `[initiate]`.
                (_, None) => Value::Null,
            };
            doc.insert(name.clone(), v);
        }
        let body = Value::Object(doc).to_string();
        let mut response = Response::new(ProxyBody::full(Bytes::from(body)));
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        no_store(h);
        Ok(Answered { response, session })
    }

    /// The caller's identity, by the first accepted proof it carries; `true` when it was
    /// an access token.
    async fn prove(
        &self,
        parts: &Parts,
        owned: &Owned,
        credentials: &Credentials,
    ) -> Result<(Subject, bool), ProxyError> {
        let mut stale = false;
        for proof in &self.cfg.accept {
            match proof {
                Proof::AccessToken => {
                    let Some(cred) = credentials.access_token(parts, false)? else {
                        continue;
                    };
                    let v = self.verify(&cred.token).await?;
                    // A revoked token proves nothing (logged out everywhere, or its
                    // `jti`/`sid` revoked).
                    if let Some(r) = &self.revs {
                        r.check(&v)
                            .inspect_err(|why| crate::revoke::count_refused(*why))?;
                    }
                    match self.lifecycle.subject_for(Some(&v), None) {
                        Some(s) => return Ok((s, true)),
                        None => stale = true,
                    }
                }
                Proof::AppIdentity => {
                    let Some(t) = owned
                        .app_token
                        .as_deref()
                        .filter(|_| self.app_header.is_some())
                    else {
                        continue;
                    };
                    return match self.lifecycle.subject_for(None, Some(t)) {
                        Some(s) => Ok((s, false)),
                        None => Err(ProxyError::InvalidToken(
                            "the app identity token is not valid",
                        )),
                    };
                }
            }
        }
        if stale {
            return Err(ProxyError::RefreshRejected(
                "the session is too old to renew; log in again",
            ));
        }
        Err(ProxyError::MissingToken)
    }

    /// The access token, verified with every claim kept (the body template may read
    /// any); an unknown `kid` refetches the JWKS as on the proxy path.
    async fn verify(&self, token: &str) -> Result<Arc<Verified>, ProxyError> {
        let mut verdict = self.verifier.verify_full(token, now_secs());
        if matches!(verdict, Err(VerifyError::UnknownKid)) {
            if let Some(jwks) = &self.jwks {
                if jwks.on_unknown_kid(&self.verifier).await {
                    verdict = self.verifier.verify_full(token, now_secs());
                }
                if !jwks.loaded() {
                    return Err(ProxyError::KeysUnavailable);
                }
            }
        }
        match verdict? {
            Verdict::Valid(v) | Verdict::Expired(v) => Ok(v),
        }
    }
}

fn no_store(h: &mut http::HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Signs Kustomer-style login JWTs.
struct LoginSigner {
    key: jsonwebtoken::EncodingKey,
    claims: Vec<LoginClaim>,
}

impl LoginSigner {
    /// HS256, `{"alg":"HS256","typ":"JWT"}`, the identifying claims the identity has and
    /// `iat` now (Kustomer accepts it for 15 minutes).
    fn sign(&self, s: &Subject) -> Result<String, ProxyError> {
        let mut claims = Map::new();
        for c in &self.claims {
            let (name, v) = match c {
                LoginClaim::ExternalId => ("externalId", &s.external_id),
                LoginClaim::Email => ("email", &s.email),
            };
            if !v.is_empty() {
                claims.insert(name.into(), Value::String(v.clone()));
            }
        }
        if claims.is_empty() {
            return Err(ProxyError::InsufficientScope(
                "the identity has no externalId or email for the login token",
            ));
        }
        claims.insert("iat".into(), Value::from(now_secs()));
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|_| ProxyError::KeysUnavailable)
    }
}
