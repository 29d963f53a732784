//! The shared store (Redis or a compatible fork): makes each refresh and initiate call
//! once across every replica that shares it. Implements the token layer's
//! [`Coordinator`]; valid tokens never reach it (only renewals do).
//!
//! One flight, in the store (all keys of a flight share a hash tag, so one cluster slot):
//! - `lease`: taken with `SET NX PX` by the replica that makes the call, renewed while
//!   the call runs, released when its outcome is published;
//! - `result`: the new pair, sealed ([`seal`]), written once (`NX`) for the grace window;
//! - `rejected` / `failed`: the call was refused (kept for `rejected_ttl`) or failed
//!   (kept briefly), so the other replicas do not call again.
//!
//! Other replicas poll (with backoff) until one of those appears, take the lease over
//! when its holder died, or give up at `wait_timeout` with a 503 (never a call without
//! the lease). Any store error (down, slow, hung, `READONLY`) means this replica falls
//! back to its own single flight, and skips the store for `backoff`; one log line per
//! change of state.

mod conn;
mod seal;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Script;

use crate::config::{ClientTls, SharedStore};
use crate::token::coordinate::{BoxFuture, CallOnce, Coordinated, Coordinator, Flight, Pair};
use crate::token::{RenewError, Session};
use conn::Conn;
use seal::FlightKeys;

/// Takes the flight's outcome if there is one, or the lease if nobody holds it.
/// KEYS: result, rejected, failed, lease. ARGV: owner, lease ms.
const ACQUIRE: &str = r"
local r = redis.call('GET', KEYS[1])
if r then return {'result', r} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'rejected'} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'failed'} end
if redis.call('SET', KEYS[4], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'won'} end
return {'held'}
";

/// Extends the lease while we still hold it. KEYS: lease. ARGV: owner, lease ms.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Writes the outcome once and releases our lease. KEYS: outcome, lease.
/// ARGV: value, ttl ms, owner.
const PUBLISH: &str = r"
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
end
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
";

/// How long a failed call keeps the other replicas from calling again.
const FAILED_TTL: Duration = Duration::from_secs(1);

pub struct Store {
    conn: Conn,
    prefix: String,
    secret: Vec<u8>,
    op_timeout: Duration,
    lease: Duration,
    wait_timeout: Duration,
    backoff: Duration,
    max_value_bytes: usize,
    /// Set while the store is being skipped after a failure.
    down_until: Mutex<Option<Instant>>,
    /// This process's lease owner prefix (random): owners are `<replica>:<n>`.
    replica: String,
    next_owner: AtomicU64,
    scripts: Scripts,
}

struct Scripts {
    acquire: Script,
    renew: Script,
    publish: Script,
}

/// Why an operation on the store gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

enum Acquired {
    Result(Vec<u8>),
    Rejected,
    Failed,
    Won,
    Held,
}

impl Store {
    /// Builds the client; connects lazily (the sidecar starts while the store is down).
    pub fn new(cfg: &SharedStore, tls: &ClientTls) -> Result<Arc<Store>, String> {
        let conn = Conn::new(cfg, tls)?;
        let mut replica = [0u8; 8];
        aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut replica)
            .map_err(|_| "no randomness for the replica id".to_string())?;
        Ok(Arc::new(Store {
            conn,
            prefix: cfg.key_prefix.clone(),
            secret: cfg.secret.0.clone(),
            op_timeout: cfg.operation_timeout,
            lease: cfg.lease,
            wait_timeout: cfg.wait_timeout,
            backoff: cfg.backoff,
            max_value_bytes: cfg.max_value_bytes,
            down_until: Mutex::new(None),
            replica: replica.iter().map(|b| format!("{b:02x}")).collect(),
            next_owner: AtomicU64::new(0),
            scripts: Scripts {
                acquire: Script::new(ACQUIRE),
                renew: Script::new(RENEW),
                publish: Script::new(PUBLISH),
            },
        }))
    }

    fn is_down(&self) -> bool {
        let g = lock(&self.down_until);
        matches!(*g, Some(t) if Instant::now() < t)
    }

    fn went_down(&self, e: &StoreError) {
        let mut g = lock(&self.down_until);
        let was_up = g.is_none();
        *g = Some(Instant::now() + self.backoff);
        if was_up {
            metrics::gauge!("auth_sidecar_store_up").set(0.0);
            crate::request_log::request_event!(WARN, error = %e, backoff_ms = self.backoff.as_millis() as u64,
                "shared store unavailable: each replica coordinates its own calls until it is back");
        }
    }

    fn went_up(&self) {
        let mut g = lock(&self.down_until);
        if g.take().is_some() {
            metrics::gauge!("auth_sidecar_store_up").set(1.0);
            crate::request_log::request_event!(
                INFO,
                "shared store reachable again: calls are coordinated across replicas"
            );
        }
    }

    /// An operation on the store, bounded by the operation timeout; failures flip the
    /// store to "down", a success after that back to "up".
    async fn op<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let r = match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout),
        };
        match &r {
            Ok(_) => self.went_up(),
            Err(e) => self.went_down(e),
        }
        r
    }

    fn key(&self, kind: &str, id: &str, what: &str) -> String {
        format!("{}{kind}:{{{id}}}:{what}", self.prefix)
    }

    async fn acquire(&self, keys: &[String; 4], owner: &str) -> Result<Acquired, StoreError> {
        let mut inv = self.scripts.acquire.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        inv.arg(owner).arg(self.lease.as_millis() as u64);
        let reply: Vec<Vec<u8>> = self.op(self.conn.invoke(&inv)).await?;
        Ok(match reply.first().map(Vec::as_slice) {
            Some(b"result") => Acquired::Result(reply.into_iter().nth(1).unwrap_or_default()),
            Some(b"rejected") => Acquired::Rejected,
            Some(b"failed") => Acquired::Failed,
            Some(b"won") => Acquired::Won,
            _ => Acquired::Held,
        })
    }

    /// Renews the lease every third of its life until dropped.
    fn keep_lease(self: &Arc<Self>, lease_key: String, owner: String) -> AbortOnDrop {
        let this = self.clone();
        AbortOnDrop(tokio::spawn(async move {
            let every = (this.lease / 3).max(Duration::from_millis(50));
            loop {
                tokio::time::sleep(every).await;
                let mut inv = this.scripts.renew.prepare_invoke();
                inv.key(&lease_key)
                    .arg(&owner)
                    .arg(this.lease.as_millis() as u64);
                match this.op::<i64>(this.conn.invoke(&inv)).await {
                    Ok(1) => {}
                    Ok(_) => {
                        crate::request_log::request_event!(
                            WARN,
                            "shared store: the lease of a call in flight was lost"
                        );
                        return;
                    }
                    Err(_) => {}
                }
            }
        }))
    }

    /// This replica makes the call, keeping the lease alive, and publishes the outcome.
    async fn lead(
        self: &Arc<Self>,
        f: &Flight<'_>,
        keys: &[String; 4],
        flight: &FlightKeys,
        owner: &str,
        call: CallOnce<'_>,
    ) -> Result<Arc<Session>, RenewError> {
        let renewing = self.keep_lease(keys[3].clone(), owner.to_string());
        let result = call().await;
        drop(renewing);
        let ms = |d: Duration| (d.as_millis() as u64).max(1);
        let (key, value, ttl) = match &result {
            Ok(s) => {
                let pair = Pair {
                    access_token: s.access_token.clone(),
                    refresh_token: s.refresh_token.clone(),
                };
                match flight
                    .seal(&pair)
                    .filter(|v| v.len() <= self.max_value_bytes)
                {
                    Some(v) => (&keys[0], v, ms(f.grace)),
                    None => {
                        crate::request_log::request_event!(
                            WARN,
                            "shared store: a new pair is too large to share"
                        );
                        (&keys[0], Vec::new(), 0)
                    }
                }
            }
            Err(RenewError::Rejected(_)) if !f.rejected_ttl.is_zero() => {
                (&keys[1], b"1".to_vec(), ms(f.rejected_ttl))
            }
            Err(RenewError::Rejected(_)) | Err(RenewError::Expired) => (&keys[1], Vec::new(), 0),
            Err(_) => (&keys[2], b"1".to_vec(), ms(FAILED_TTL.min(f.retry_after))),
        };
        let mut inv = self.scripts.publish.prepare_invoke();
        inv.key(key).key(&keys[3]).arg(value).arg(ttl).arg(owner);
        // A failed publish is logged by `op`; the caller still gets its pair.
        let _ = self.op::<i64>(self.conn.invoke(&inv)).await;
        result
    }

    async fn run(self: Arc<Self>, f: Flight<'_>, call: CallOnce<'_>) -> Coordinated {
        let kind = f.kind;
        let count = |outcome: &'static str| {
            metrics::counter!("auth_sidecar_store_coordination_total", "call" => kind, "outcome" => outcome)
                .increment(1);
        };
        if self.is_down() {
            count("fallback");
            return Coordinated::Ran(call().await);
        }
        let Some(flight) = FlightKeys::new(&self.secret, kind, f.secret) else {
            count("fallback");
            return Coordinated::Ran(call().await);
        };
        let keys = ["result", "rejected", "failed", "lease"].map(|w| self.key(kind, &flight.id, w));
        let owner = format!(
            "{}:{}",
            self.replica,
            self.next_owner.fetch_add(1, Ordering::Relaxed)
        );
        let unavailable = RenewError::Unavailable {
            retry_after: f.retry_after,
        };
        let deadline = Instant::now() + self.wait_timeout;
        let mut seen_held = false;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.acquire(&keys, &owner).await {
                Err(_) => {
                    count("fallback");
                    return Coordinated::Ran(call().await);
                }
                Ok(Acquired::Result(v)) => match flight.open(&v, self.max_value_bytes) {
                    Some(pair) => {
                        count("waited");
                        return Coordinated::Shared(pair);
                    }
                    None => {
                        crate::request_log::request_event!(
                            WARN,
                            "shared store: a stored pair did not open; refusing it"
                        );
                        count("unreadable");
                        return Coordinated::Refused(unavailable);
                    }
                },
                Ok(Acquired::Rejected) => {
                    count("rejected");
                    return Coordinated::Refused(RenewError::Rejected(
                        "the refresh token was rejected; log in again",
                    ));
                }
                Ok(Acquired::Failed) => {
                    count("failed");
                    return Coordinated::Refused(unavailable);
                }
                Ok(Acquired::Won) => {
                    count(if seen_held { "took_over" } else { "won" });
                    let r = self.lead(&f, &keys, &flight, &owner, call).await;
                    return Coordinated::Ran(r);
                }
                Ok(Acquired::Held) => seen_held = true,
            }
            let now = Instant::now();
            if now >= deadline {
                count("timeout");
                return Coordinated::Refused(unavailable);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

/// What another module (revocations) uses of the store: its scripts run with the same
/// timeout and up/down tracking, its keys under the same prefix.
impl Store {
    pub async fn run_script<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.op(self.conn.invoke(inv)).await
    }

    /// `<prefix><kind>:{<id>}:<what>`: keys with one `id` share a cluster slot.
    pub fn key_for(&self, kind: &str, id: &str, what: &str) -> String {
        self.key(kind, id, what)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }
}

pub use conn::pubsub_client;

/// The coordinator handed to the lifecycle.
pub struct Shared(pub Arc<Store>);

impl Coordinator for Shared {
    fn coordinate<'a>(
        &'a self,
        flight: Flight<'a>,
        call: CallOnce<'a>,
    ) -> BoxFuture<'a, Coordinated> {
        Box::pin(self.0.clone().run(flight, call))
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
