//! Renewal of an opaque vendor session (ConnectyCube's `sessionExpired`, done on the
//! server): the session check said the session no longer exists, and this sidecar
//! confirmed the token for a user recently; initiate starts a new session for that
//! user (a guest: a new guest), and the token that comes back is checked with the same
//! session check rather than as a JWT.

use std::sync::Arc;

use super::initiate::Subject;
use super::{Lifecycle, RenewError, Session};
use crate::token::coordinate::{CallOnce, Coordinated, Flight, Pair};
use crate::token::remote::Introspector;
use crate::token::verify::Verified;

impl Lifecycle {
    /// A new session for the user `old` was confirmed for. `app_token` is the app
    /// identity token the client sent (a Custom Identity Provider login), if any.
    pub async fn renew_opaque(
        self: &Arc<Self>,
        old: Arc<Verified>,
        app_token: Option<&str>,
        check: &Arc<Introspector>,
    ) -> Result<Arc<Session>, RenewError> {
        let Some(init) = &self.initiate else {
            return Err(RenewError::Expired);
        };
        // An application session has no user to start a session for.
        if old.sub.is_empty() {
            return Err(RenewError::Expired);
        }
        let guest = old.claim_str("session_kind") == Some("guest");
        let template = if guest {
            match &init.guest_body {
                Some(b) => b,
                None => {
                    return Err(RenewError::Rejected(
                        "a guest session is not renewed; start a new one",
                    ))
                }
            }
        } else {
            &init.body
        };
        if template.contains("{app_token}") && app_token.is_none() {
            return Err(RenewError::Rejected(
                "renewing this session needs the app identity token",
            ));
        }
        if let (Some(v), Some(t)) = (&self.app_verifier, app_token) {
            if !matches!(
                v.verify_uncached(t, crate::token::now_secs()),
                Ok(crate::token::Verdict::Valid(_))
            ) {
                return Err(RenewError::Rejected("the app identity token is not valid"));
            }
        }
        let s = |k: &str| old.claim_str(k).unwrap_or("").to_string();
        let subject = Subject {
            key: format!("opaque:{}", old.sub),
            sub: old.sub.clone(),
            email: s("email"),
            name: s("name"),
            external_id: old.sub.clone(),
            claims: old.claims.clone(),
            opaque: Some(super::initiate::Opaque {
                login: s("login"),
                app_token: app_token.unwrap_or("").to_string(),
                guest,
                check: check.clone(),
            }),
        };
        let new = match self.initiate(subject).await {
            Ok(s) => s,
            Err(RenewError::Rejected(_)) => {
                return Err(RenewError::Rejected(
                    "the token service refused to start a session",
                ))
            }
            Err(e) => return Err(e),
        };
        // A guest is a new user each time; a user must come back as the same user.
        if !guest && init.require_same_subject && new.verified.sub != old.sub {
            return Err(RenewError::BadResponse(
                "the token service started a session for another user",
            ));
        }
        Ok(new)
    }

    /// `coordinated` for an opaque session: one create-session call per user across
    /// the replicas sharing a store; a session another replica started is checked with
    /// the session check (it is not a JWT) before anyone uses it.
    pub(super) async fn coordinated_opaque<'a>(
        &'a self,
        flight: Flight<'a>,
        call: CallOnce<'a>,
        check: &Arc<Introspector>,
    ) -> Result<Arc<Session>, RenewError> {
        let Some(c) = &self.coordinator else {
            return call().await;
        };
        match c.coordinate(flight, call).await {
            Coordinated::Ran(r) => r,
            Coordinated::Refused(e) => Err(e),
            Coordinated::Shared(Pair {
                access_token,
                refresh_token,
            }) => match check.check(&access_token).await {
                Ok(v) => Ok(Arc::new(Session {
                    access_token,
                    refresh_token,
                    verified: v,
                    initiated: true,
                })),
                Err(crate::token::VerifyError::Unavailable { .. }) => Err(self.unavailable()),
                Err(_) => Err(RenewError::BadResponse("a shared session does not check")),
            },
        }
    }

    /// A first opaque session for the user an app identity token proves (the client has
    /// no session token yet): initiate with that token as the login.
    pub async fn start_opaque(
        self: &Arc<Self>,
        app_token: &str,
        check: &Arc<Introspector>,
    ) -> Result<Arc<Session>, RenewError> {
        let Some(init) = &self.initiate else {
            return Err(RenewError::Expired);
        };
        let Some(mut subject) = self.subject(None, Some(app_token), init.max_staleness) else {
            return Err(RenewError::Rejected("the app identity token is not valid"));
        };
        subject.opaque = Some(super::initiate::Opaque {
            login: String::new(),
            app_token: app_token.to_string(),
            guest: false,
            check: check.clone(),
        });
        match self.initiate(subject).await {
            Err(RenewError::Rejected(_)) => Err(RenewError::Rejected(
                "the token service refused to start a session",
            )),
            r => r,
        }
    }
}
