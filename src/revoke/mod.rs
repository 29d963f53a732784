//! Taking a user out at once: log out everywhere (tokens issued before now), bans (every
//! token, and no refresh or initiate), one token (`jti`) or session (`sid`) revoked.
//!
//! - `mod.rs` (here): the process-wide set of revocations, the per-request check, and
//!   the epoch every open stream watches;
//! - [`tunnel`]: a WebSocket tunnel that ends with a close frame 1008 on revocation;
//! - [`shared`]: the shared store: revocations published to every replica and kept with
//!   a TTL, loaded on start and on every reconnect;
//! - [`api`]: the admin API (`/revocations/…`) and [`backchannel`] (OIDC Back-Channel
//!   Logout 1.0).
//!
//! The set lives for the process, not for a config: a reload keeps it. On the request
//! path the check costs nothing while nothing is revoked (two atomic loads), and one
//! hash lookup on `sub` while users are (plus one per `jti`/`sid` claim while single
//! tokens are). Open streams do not register anywhere: each waits on one epoch that a
//! revocation bumps, then checks itself with that same lookup.

pub mod api;
pub mod backchannel;
pub mod shared;
pub mod tunnel;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::config::Config;
use crate::error::ProxyError;
use crate::token::{now_secs, Verified};

/// Why a verified token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Logged out everywhere after it was issued, or its `jti`/`sid` revoked.
    Revoked,
    /// Its user is banned.
    Banned,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Revoked => "revoked",
            Refused::Banned => "banned",
        }
    }
}

impl From<Refused> for ProxyError {
    fn from(r: Refused) -> ProxyError {
        match r {
            Refused::Revoked => ProxyError::TokenRevoked,
            Refused::Banned => ProxyError::UserBanned,
        }
    }
}

/// What is known about one user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserEntry {
    /// Tokens with an `iat` before this (seconds) are refused; 0 = none.
    #[serde(default)]
    pub nbf: u64,
    /// Until when `nbf` is kept (seconds).
    #[serde(default)]
    pub nbf_until: u64,
    /// Banned until (seconds); 0 = not banned.
    #[serde(default)]
    pub ban: u64,
}

impl UserEntry {
    fn until(&self) -> u64 {
        self.nbf_until.max(self.ban)
    }
}

/// One change, as stored and published: a field name (`u:<sub>`, `j:<hash>`,
/// `s:<hash>`), its JSON value (empty: removed) and when it may be forgotten.
#[derive(Debug, Clone)]
pub struct Record {
    pub field: String,
    pub value: String,
    pub until: u64,
}

/// The process-wide revocations.
pub struct Revocations {
    users: RwLock<HashMap<String, UserEntry>>,
    /// SHA-256 of `j:<jti>` / `s:<sid>` → until when it is kept.
    ids: RwLock<HashMap<[u8; 32], u64>>,
    /// Non-zero while the maps hold anything: the request path reads only these.
    users_n: AtomicUsize,
    ids_n: AtomicUsize,
    /// Bumped by every change; open streams wait on it.
    epoch: watch::Sender<u64>,
    epoch_now: AtomicU64,
    /// `max_token_lifetime + leeway` (seconds), from the current config.
    keep: AtomicU64,
    max_entries: AtomicUsize,
    /// The shared store, when one is configured (set once at start).
    shared: OnceLock<Arc<shared::Shared>>,
}

/// A revocation could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("too many revocations are held (revocation.max_entries)")]
    Full,
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// The key of a revoked `jti` (`kind` `j`) or `sid` (`s`): a hash, so neither is
/// held or stored as given.
pub fn id_hash(kind: char, value: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([kind as u8, b':']);
    h.update(value.as_bytes());
    h.finalize().into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new()
    }
}

impl Revocations {
    pub fn new() -> Revocations {
        let (epoch, _) = watch::channel(0);
        Revocations {
            users: RwLock::new(HashMap::new()),
            ids: RwLock::new(HashMap::new()),
            users_n: AtomicUsize::new(0),
            ids_n: AtomicUsize::new(0),
            epoch,
            epoch_now: AtomicU64::new(0),
            keep: AtomicU64::new(24 * 3600 + 30),
            max_entries: AtomicUsize::new(1_000_000),
            shared: OnceLock::new(),
        }
    }

    /// Takes the limits of a (new) config.
    pub fn configure(&self, cfg: &Config) {
        if let Some(r) = &cfg.revocation {
            let keep = r.max_token_lifetime.as_secs() + cfg.auth.leeway.as_secs();
            self.keep.store(keep, Ordering::Relaxed);
            self.max_entries.store(r.max_entries, Ordering::Relaxed);
        }
    }

    pub fn keep_secs(&self) -> u64 {
        self.keep.load(Ordering::Relaxed)
    }

    pub fn set_shared(&self, s: Arc<shared::Shared>) {
        let _ = self.shared.set(s);
    }

    pub fn shared(&self) -> Option<&Arc<shared::Shared>> {
        self.shared.get()
    }

    /// The current epoch, read before a check: a stream opened after it sees any change
    /// made since.
    pub fn epoch(&self) -> u64 {
        self.epoch_now.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.epoch_now.fetch_add(1, Ordering::AcqRel);
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    /// The request-path check of a verified token.
    pub fn check(&self, v: &Verified) -> Result<(), Refused> {
        if self.users_n.load(Ordering::Relaxed) != 0 {
            if let Some(e) = read(&self.users).get(v.sub.as_str()) {
                let now = now_secs();
                if e.ban > now {
                    return Err(Refused::Banned);
                }
                if e.nbf != 0 && e.nbf_until >= now {
                    // No `iat`: nothing proves the token is newer than the log-out.
                    let iat = v.claims.get("iat").and_then(|i| i.as_f64());
                    if iat.is_none_or(|i| i < e.nbf as f64) {
                        return Err(Refused::Revoked);
                    }
                }
            }
        }
        if self.ids_n.load(Ordering::Relaxed) != 0 {
            let now = now_secs();
            for (kind, claim) in [('j', "jti"), ('s', "sid")] {
                if let Some(x) = v.claim_str(claim) {
                    if read(&self.ids)
                        .get(&id_hash(kind, x))
                        .is_some_and(|u| *u >= now)
                    {
                        return Err(Refused::Revoked);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `user` is banned now (refresh and initiate are refused).
    pub fn banned(&self, user: &str) -> bool {
        self.users_n.load(Ordering::Relaxed) != 0
            && read(&self.users)
                .get(user)
                .is_some_and(|e| e.ban > now_secs())
    }

    fn room(&self, new: bool) -> Result<(), ApplyError> {
        let n = self.users_n.load(Ordering::Relaxed) + self.ids_n.load(Ordering::Relaxed);
        if new && n >= self.max_entries.load(Ordering::Relaxed) {
            return Err(ApplyError::Full);
        }
        Ok(())
    }

    fn set_user(&self, sub: &str, f: impl FnOnce(&mut UserEntry)) -> Result<Record, ApplyError> {
        let mut m = write(&self.users);
        self.room(!m.contains_key(sub))?;
        let mut e = m.get(sub).copied().unwrap_or_default();
        f(&mut e);
        let rec = user_record(sub, &e);
        if e.until() <= now_secs() {
            m.remove(sub);
        } else {
            m.insert(sub.to_string(), e);
        }
        self.users_n.store(m.len(), Ordering::Relaxed);
        drop(m);
        self.bump();
        Ok(rec)
    }

    /// Log out everywhere: tokens of `sub` issued before `now` are refused.
    pub fn logout(&self, sub: &str, now: u64) -> Result<Record, ApplyError> {
        let until = now + self.keep_secs();
        self.set_user(sub, |e| {
            e.nbf = e.nbf.max(now);
            e.nbf_until = e.nbf_until.max(until);
        })
    }

    /// Bans `sub` until `until` (seconds).
    pub fn ban(&self, sub: &str, until: u64) -> Result<Record, ApplyError> {
        self.set_user(sub, |e| e.ban = until)
    }

    /// Lifts a ban; false when `sub` was not banned.
    pub fn unban(&self, sub: &str) -> Option<Record> {
        if !self.banned(sub) {
            return None;
        }
        self.set_user(sub, |e| e.ban = 0).ok()
    }

    /// Revokes one `jti` (`kind` `j`) or `sid` (`s`).
    pub fn revoke_id(&self, kind: char, value: &str, now: u64) -> Result<Record, ApplyError> {
        let key = id_hash(kind, value);
        let until = now + self.keep_secs();
        let mut m = write(&self.ids);
        self.room(!m.contains_key(&key))?;
        m.insert(key, until);
        self.ids_n.store(m.len(), Ordering::Relaxed);
        drop(m);
        self.bump();
        Ok(Record {
            field: format!("{kind}:{}", hex(&key)),
            value: format!("{{\"until\":{until}}}"),
            until,
        })
    }

    /// Applies a record from the shared store (published or loaded). Nothing older
    /// than what is held is lost: `nbf` only moves forward; a ban is taken as given
    /// (so a lifted ban is lifted everywhere). Returns whether anything changed.
    pub fn apply(&self, field: &str, value: &str) -> bool {
        let now = now_secs();
        let changed = if let Some(sub) = field.strip_prefix("u:") {
            let got: UserEntry = if value.is_empty() {
                UserEntry::default()
            } else {
                match serde_json::from_str(value) {
                    Ok(e) => e,
                    Err(_) => return false,
                }
            };
            let mut m = write(&self.users);
            let old = m.get(sub).copied();
            let mut e = old.unwrap_or_default();
            if got.nbf > e.nbf {
                e.nbf = got.nbf;
            }
            e.nbf_until = e.nbf_until.max(got.nbf_until);
            e.ban = got.ban;
            if old.is_none() && self.room(true).is_err() {
                crate::request_log::request_event!(
                    WARN,
                    "revocation from the shared store dropped: revocation.max_entries reached"
                );
                return false;
            }
            if e.until() <= now {
                m.remove(sub);
            } else {
                m.insert(sub.to_string(), e);
            }
            self.users_n.store(m.len(), Ordering::Relaxed);
            old != m.get(sub).copied()
        } else if let Some((kind, h)) = field
            .split_once(':')
            .filter(|(k, _)| *k == "j" || *k == "s")
        {
            let _ = kind;
            let Some(key) = unhex(h) else { return false };
            #[derive(serde::Deserialize)]
            struct Until {
                until: u64,
            }
            let Ok(Until { until }) = serde_json::from_str::<Until>(value) else {
                return false;
            };
            if until < now {
                return false;
            }
            let mut m = write(&self.ids);
            if !m.contains_key(&key) && self.room(true).is_err() {
                return false;
            }
            let old = m.insert(key, until);
            self.ids_n.store(m.len(), Ordering::Relaxed);
            old.is_none_or(|o| o < until)
        } else {
            false
        };
        if changed {
            self.bump();
        }
        changed
    }

    /// Current bans: `(sub, until)`.
    pub fn bans(&self) -> Vec<(String, u64)> {
        let now = now_secs();
        let mut v: Vec<(String, u64)> = read(&self.users)
            .iter()
            .filter(|(_, e)| e.ban > now)
            .map(|(s, e)| (s.clone(), e.ban))
            .collect();
        v.sort();
        v
    }

    /// How many users and ids are held.
    pub fn len(&self) -> (usize, usize) {
        (
            self.users_n.load(Ordering::Relaxed),
            self.ids_n.load(Ordering::Relaxed),
        )
    }

    /// Forgets what has expired; returns how many went.
    pub fn sweep(&self) -> usize {
        let now = now_secs();
        let mut removed = 0;
        {
            let mut m = write(&self.users);
            let before = m.len();
            m.retain(|_, e| e.until() > now);
            removed += before - m.len();
            self.users_n.store(m.len(), Ordering::Relaxed);
        }
        {
            let mut m = write(&self.ids);
            let before = m.len();
            m.retain(|_, u| *u >= now);
            removed += before - m.len();
            self.ids_n.store(m.len(), Ordering::Relaxed);
        }
        metrics::gauge!("auth_sidecar_bans_active").set(self.bans().len() as f64);
        removed
    }

    /// A future that completes when `who` is refused, for a stream opened after a
    /// check at epoch `seen`.
    pub fn watch(self: &Arc<Self>, who: Arc<Verified>, seen: u64) -> Stop {
        Stop(Box::pin(self.clone().until_refused(who, seen)))
    }

    /// Completes when `who` is refused, checked after every change since epoch `seen`.
    pub async fn until_refused(self: Arc<Self>, who: Arc<Verified>, seen: u64) -> Refused {
        let mut rx = self.epoch.subscribe();
        if self.epoch() != seen {
            // Something changed between the check and now: look again at once.
            rx.mark_changed();
        }
        loop {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if let Err(r) = self.check(&who) {
                return r;
            }
        }
    }
}

fn user_record(sub: &str, e: &UserEntry) -> Record {
    let until = e.until();
    Record {
        field: format!("u:{sub}"),
        value: if until == 0 {
            String::new()
        } else {
            serde_json::to_string(e).unwrap_or_default()
        },
        until,
    }
}

/// Completes when the user of a stream is refused (with why).
pub struct Stop(pub Pin<Box<dyn Future<Output = Refused> + Send>>);

impl Future for Stop {
    type Output = Refused;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Refused> {
        self.0.as_mut().poll(cx)
    }
}

/// What the lifecycle asks before starting a session for a user.
pub struct BanGate(pub Arc<Revocations>);

impl crate::token::lifecycle::Gate for BanGate {
    fn banned(&self, user: &str) -> bool {
        self.0.banned(user)
    }
}

/// Counts a refused request (`reason`: revoked / banned).
pub fn count_refused(r: Refused) {
    metrics::counter!("auth_sidecar_revocation_refused_total", "reason" => r.as_str()).increment(1);
}

/// Counts a stream closed by a revocation (`kind`: websocket / stream / pending).
pub fn count_closed(kind: &'static str) {
    metrics::counter!("auth_sidecar_revocation_closed_total", "kind" => kind).increment(1);
}

/// Starts the sweeper (and the shared-store subscriber, when there is one); once per
/// process.
pub fn start(revs: &Arc<Revocations>) {
    let weak = Arc::downgrade(revs);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(r) = weak.upgrade() else { return };
            r.sweep();
        }
    });
    if let Some(s) = revs.shared() {
        s.clone().spawn_subscriber(Arc::downgrade(revs));
    }
}
