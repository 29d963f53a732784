//! The token lifecycle: refresh an expired access token (one call per refresh token,
//! however many requests arrive at once), and start a new session through *initiate*
//! when the refresh token is dead. Knows nothing of the proxy's HTTP server: it talks
//! to the token service through [`TokenHttp`].
//!
//! - `mod.rs` (here): who gets what: the order refresh → initiate and the outcome rules;
//! - [`refresh`]: the refresh call, its single flight, grace and rejected caches;
//! - [`initiate`]: who a new session is for, and the initiate call;
//! - [`exchange`]: one call to the token service, its answer read and the new token
//!   verified;
//! - [`flight`]: the single flight shared by both calls;
//! - [`opaque`]: renewal of an opaque vendor session (checked by the session check);
//! - [`sign`]: `{nonce}`/`{timestamp}` and the signature of a signed initiate call.
//!
//! Outcome rules:
//! - token service says no (400/401/403/422, `invalid_grant`): *rejected* → try initiate;
//! - token service unreachable, slow, 5xx, 429, or an answer we cannot read:
//!   *unavailable* → 503, the client keeps its tokens, nothing is cached;
//! - token service answers with a token that does not verify or names another user:
//!   *bad response* → 502.

mod budget;
mod exchange;
mod flight;
mod initiate;
mod opaque;
mod refresh;
mod sign;
mod template;

pub use initiate::Subject;

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use super::cache::TokenHash;
use super::call::TokenHttp;
use super::coordinate::{CallOnce, Coordinated, Coordinator, Flight, Pair};
use super::verify::{Verified, Verifier};
use crate::config::{AppIdentity, Initiate, Refresh};

/// A fresh pair of tokens and the verified identity of the new access token.
#[derive(Debug)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub verified: Arc<Verified>,
    /// Started by initiate (a new session) rather than a refresh.
    pub initiated: bool,
}

/// Why no new session could be had: the lifecycle's one outcome type. `Rejected` and
/// `Unavailable` are never cached as answers (moka does not store errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenewError {
    /// Expired, and nothing to renew it with.
    #[error("the access token has expired")]
    Expired,
    /// Refresh and initiate refused (or initiate not possible): log in again.
    #[error("{0}")]
    Rejected(&'static str),
    /// The token service could not be asked: retry later, keep your tokens.
    #[error("the token service is unavailable")]
    Unavailable { retry_after: Duration },
    /// The token service answered with tokens we must not use.
    #[error("{0}")]
    BadResponse(&'static str),
    /// The user is banned: the token service was not asked.
    #[error("this user is banned")]
    Banned,
}

/// Who may not get a new session (a banned user): asked before initiate calls the
/// token service.
pub trait Gate: Send + Sync + 'static {
    fn banned(&self, user: &str) -> bool;
}

const REFRESH_REJECTED: RenewError =
    RenewError::Rejected("the refresh token was rejected; log in again");

pub struct Lifecycle {
    refresh: Option<Refresh>,
    initiate: Option<Initiate>,
    /// Checks app identity tokens with the same verifier code as access tokens.
    app_verifier: Option<Verifier>,
    http: Arc<dyn TokenHttp>,
    /// The shared store, when replicas coordinate their calls.
    coordinator: Option<Arc<dyn Coordinator>>,
    verifier: Arc<Verifier>,
    refreshed: Cache<TokenHash, Arc<Session>>,
    rejected: Cache<TokenHash, ()>,
    initiated: Cache<String, Arc<Session>>,
    /// Users for whom initiate was refused just now (by their flight key).
    initiate_refused: Cache<String, ()>,
    refresh_budget: budget::Budget,
    initiate_budget: budget::Budget,
    /// Bans (set once, when revocation is configured).
    gate: std::sync::OnceLock<Arc<dyn Gate>>,
}

impl Lifecycle {
    pub fn new(
        refresh: Option<Refresh>,
        initiate: Option<Initiate>,
        app: Option<AppIdentity>,
        http: Arc<dyn TokenHttp>,
        coordinator: Option<Arc<dyn Coordinator>>,
        verifier: Arc<Verifier>,
    ) -> Arc<Lifecycle> {
        let ttl = |d: Duration| d.max(Duration::from_millis(1));
        let (grace, rejected_ttl, capacity) = refresh
            .as_ref()
            .map(|r| (r.grace, r.rejected_ttl, r.cache_capacity))
            .unwrap_or((Duration::from_secs(1), Duration::from_secs(1), 1));
        let (init_grace, init_capacity, init_refused_ttl) = initiate
            .as_ref()
            .map(|i| (i.grace, i.cache_capacity, i.rejected_ttl))
            .unwrap_or((Duration::from_secs(1), 1, Duration::from_secs(1)));
        let refresh_budget = refresh
            .as_ref()
            .map(|r| (r.max_calls_per_second, r.max_calls_per_user_per_minute))
            .unwrap_or((0, 0));
        let initiate_budget = initiate
            .as_ref()
            .map(|i| (i.max_calls_per_second, i.max_calls_per_user_per_minute))
            .unwrap_or((0, 0));
        let app_verifier = app
            .as_ref()
            .map(|a| Verifier::app_identity(&a.secret.0, a.leeway, a.max_age));
        Arc::new(Lifecycle {
            refreshed: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl(grace))
                .build(),
            rejected: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl(rejected_ttl))
                .build(),
            initiated: Cache::builder()
                .max_capacity(init_capacity)
                .time_to_live(ttl(init_grace))
                .build(),
            initiate_refused: Cache::builder()
                .max_capacity(init_capacity)
                .time_to_live(ttl(init_refused_ttl))
                .build(),
            refresh_budget: budget::Budget::new("refresh", refresh_budget.0, refresh_budget.1),
            initiate_budget: budget::Budget::new("initiate", initiate_budget.0, initiate_budget.1),
            refresh,
            initiate,
            app_verifier,
            http,
            coordinator,
            verifier,
            gate: std::sync::OnceLock::new(),
        })
    }

    /// Refuses sessions for banned users from now on.
    pub fn set_gate(&self, g: Arc<dyn Gate>) {
        let _ = self.gate.set(g);
    }

    fn banned(&self, user: &str) -> bool {
        self.gate.get().is_some_and(|g| g.banned(user))
    }

    /// Whether this lifecycle can do anything for a request without a usable token.
    pub fn can_renew(&self) -> bool {
        self.refresh.is_some() || self.initiate.is_some()
    }

    /// `Retry-After` when the token service is unavailable.
    pub fn retry_after(&self) -> Duration {
        match (&self.refresh, &self.initiate) {
            (Some(r), _) => r.retry_after,
            (None, Some(i)) => i.retry_after,
            (None, None) => Duration::from_secs(5),
        }
    }

    fn unavailable(&self) -> RenewError {
        RenewError::Unavailable {
            retry_after: self.retry_after(),
        }
    }

    /// Makes a flight's call, coordinated across replicas when a store is configured.
    /// A pair another replica obtained is verified again here before anyone uses it
    /// (`renew` then checks its subject as for a pair of our own).
    /// `opaque`: who another replica's opaque pair is for (it cannot be verified).
    async fn coordinated<'a>(
        &'a self,
        flight: Flight<'a>,
        call: CallOnce<'a>,
        opaque: Option<Arc<Verified>>,
    ) -> Result<Arc<Session>, RenewError> {
        let Some(c) = &self.coordinator else {
            return call().await;
        };
        let initiated = flight.kind == "initiate";
        match c.coordinate(flight, call).await {
            Coordinated::Ran(r) => r,
            Coordinated::Refused(e) => Err(e),
            Coordinated::Shared(Pair {
                access_token,
                refresh_token,
            }) => {
                if let Some(verified) = opaque {
                    return Ok(Arc::new(Session {
                        access_token,
                        refresh_token,
                        verified,
                        initiated,
                    }));
                }
                match self
                    .verifier
                    .verify_uncached(&access_token, super::now_secs())
                {
                    Ok(super::Verdict::Valid(v)) => Ok(Arc::new(Session {
                        access_token,
                        refresh_token,
                        verified: v,
                        initiated,
                    })),
                    _ => Err(RenewError::BadResponse(
                        "a shared token pair does not verify",
                    )),
                }
            }
        }
    }

    /// Renews a session. `expired` is the verified (signature, issuer, audience) but
    /// expired access token, if the client sent one; `refresh_token` and `app_token`
    /// are what the client sent for them.
    pub async fn renew(
        self: &Arc<Self>,
        expired: Option<Arc<Verified>>,
        refresh_token: Option<&str>,
        app_token: Option<&str>,
    ) -> Result<Arc<Session>, RenewError> {
        let mut rejected = false;
        if let (Some(old), Some(rt), Some(_)) = (&expired, refresh_token, &self.refresh) {
            match self.refresh(rt, &old.sub).await {
                Ok(s) if s.verified.sub == old.sub => return Ok(s),
                Ok(_) => {
                    metrics::counter!("auth_sidecar_refresh_total", "outcome" => "wrong_subject")
                        .increment(1);
                    return Err(RenewError::BadResponse(
                        "the token service returned a token for another user",
                    ));
                }
                Err(RenewError::Rejected(_)) => rejected = true,
                Err(e) => return Err(e),
            }
        }
        let Some(init) = &self.initiate else {
            return Err(if rejected {
                REFRESH_REJECTED
            } else {
                RenewError::Expired
            });
        };
        if !rejected
            && refresh_token.is_none()
            && !init.when_refresh_token_missing
            && app_token.is_none()
        {
            return Err(RenewError::Expired);
        }
        let subject = match self.subject(expired.as_deref(), app_token, init.max_staleness) {
            Some(s) => s,
            None if rejected => return Err(REFRESH_REJECTED),
            None if app_token.is_some() => {
                return Err(RenewError::Rejected("the app identity token is not valid"))
            }
            None if expired.is_some() => {
                return Err(RenewError::Rejected(
                    "the session is too old to renew; log in again",
                ))
            }
            None => return Err(RenewError::Expired),
        };
        let proven_by_token = expired
            .as_ref()
            .filter(|old| subject.sub == old.sub)
            .map(|o| o.sub.clone());
        match self.initiate(subject).await {
            Ok(s)
                if init.require_same_subject
                    && proven_by_token
                        .as_ref()
                        .is_some_and(|sub| *sub != s.verified.sub) =>
            {
                Err(RenewError::BadResponse(
                    "the token service started a session for another user",
                ))
            }
            Ok(s) => Ok(s),
            Err(RenewError::Rejected(_)) => Err(RenewError::Rejected(
                "the token service refused to start a session",
            )),
            Err(e) => Err(e),
        }
    }
}

/// For a token endpoint: who a client proves to be, and a session started for them.
impl Lifecycle {
    /// Who `token` (a verified access token, valid or expired less than
    /// `initiate.max_staleness` ago) or `app_token` (a valid app identity token) proves
    /// the client to be; the token first.
    pub fn subject_for(
        &self,
        token: Option<&Verified>,
        app_token: Option<&str>,
    ) -> Option<Subject> {
        let staleness = self
            .initiate
            .as_ref()
            .map(|i| i.max_staleness)
            .unwrap_or(Duration::ZERO);
        self.subject(token, app_token, staleness)
    }

    /// Whether initiate is configured (a session can be started).
    pub fn can_initiate(&self) -> bool {
        self.initiate.is_some()
    }

    /// A session for `subject` through initiate: one call per user at a time, the
    /// same pair for every caller within `initiate.grace`. `by_token`: the subject came
    /// from an access token, whose `sub` the new token must carry
    /// (`initiate.require_same_subject`).
    pub async fn start(
        self: &Arc<Self>,
        subject: Subject,
        by_token: bool,
    ) -> Result<Arc<Session>, RenewError> {
        let Some(init) = &self.initiate else {
            return Err(RenewError::Rejected("no initiate is configured"));
        };
        let want = subject.sub.clone();
        match self.initiate(subject).await {
            Ok(s) if init.require_same_subject && by_token && s.verified.sub != want => Err(
                RenewError::BadResponse("the token service started a session for another user"),
            ),
            Ok(s) => Ok(s),
            Err(RenewError::Rejected(_)) => Err(RenewError::Rejected(
                "the token service refused to start a session",
            )),
            Err(e) => Err(e),
        }
    }
}
