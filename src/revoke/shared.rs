//! Revocations across replicas, through the shared store. Every revocation is written
//! to one hash (field → JSON: `u:<sub>`, `j:<sha256 of jti>`, `s:<sha256 of sid>`; no
//! token) with a sorted set of when each field may be forgotten, so the keys expire
//! when their last field does; and published on a channel in the same script. Each
//! replica keeps a dedicated subscriber connection; on start and on every reconnect it
//! loads the whole hash, so a replica that started later or was cut off still refuses
//! what was revoked meanwhile. Revocations that could not be written (store down) are
//! kept and written on reconnect.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::Script;

use super::{Record, Revocations};
use crate::store::{Store, StoreError};
use crate::token::now_secs;

/// Prunes forgotten fields, writes (or removes) one, sets the keys' TTL to the last
/// field's, publishes. KEYS: data, until. ARGV: field, value, until, now, channel,
/// message.
const WRITE: &str = r"
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
for _, f in ipairs(gone) do redis.call('HDEL', KEYS[1], f) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if top[2] then
  local ms = (tonumber(top[2]) - tonumber(ARGV[4]) + 1) * 1000
  redis.call('PEXPIRE', KEYS[1], ms)
  redis.call('PEXPIRE', KEYS[2], ms)
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
";

/// Prunes forgotten fields and returns the rest (field, value, …). KEYS: data, until.
/// ARGV: now.
const LOAD: &str = r"
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
for _, f in ipairs(gone) do redis.call('HDEL', KEYS[1], f) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
return redis.call('HGETALL', KEYS[1])
";

/// Revocations kept for a later write, at most.
const MAX_PENDING: usize = 100_000;

/// Revocations in the shared store.
pub struct Shared {
    store: Arc<Store>,
    client: redis::Client,
    channel: String,
    data: String,
    until: String,
    write: Script,
    load: Script,
    pending: Mutex<Vec<Record>>,
    subscribed: AtomicBool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Message {
    f: String,
    v: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn new(store: Arc<Store>, client: redis::Client) -> Arc<Shared> {
        Arc::new(Shared {
            channel: format!("{}revocations", store.prefix()),
            data: store.key_for("revoke", "all", "data"),
            until: store.key_for("revoke", "all", "until"),
            store,
            client,
            write: Script::new(WRITE),
            load: Script::new(LOAD),
            pending: Mutex::new(Vec::new()),
            subscribed: AtomicBool::new(false),
        })
    }

    /// Whether this replica currently receives other replicas' revocations.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    async fn write_one(&self, rec: &Record) -> Result<(), StoreError> {
        let msg = serde_json::to_string(&Message {
            f: rec.field.clone(),
            v: rec.value.clone(),
        })
        .unwrap_or_default();
        let mut inv = self.write.prepare_invoke();
        inv.key(&self.data)
            .key(&self.until)
            .arg(&rec.field)
            .arg(&rec.value)
            .arg(rec.until)
            .arg(now_secs())
            .arg(&self.channel)
            .arg(msg);
        self.store.run_script::<i64>(&inv).await.map(|_| ())
    }

    /// Stores and publishes a revocation already applied here. On failure it is kept
    /// and written on the next reconnect; the error says why it is not shared yet.
    pub async fn publish(&self, rec: Record) -> Result<(), String> {
        match self.write_one(&rec).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut p = lock(&self.pending);
                if p.len() < MAX_PENDING {
                    p.push(rec);
                }
                Err(format!("shared store: {e}"))
            }
        }
    }

    async fn flush_pending(&self) {
        let recs = std::mem::take(&mut *lock(&self.pending));
        let mut failed = Vec::new();
        for r in recs {
            if self.write_one(&r).await.is_err() {
                failed.push(r);
            }
        }
        if !failed.is_empty() {
            let mut p = lock(&self.pending);
            failed.append(&mut p);
            *p = failed;
        }
    }

    async fn load_into(&self, revs: &Revocations) -> Result<usize, StoreError> {
        let mut inv = self.load.prepare_invoke();
        inv.key(&self.data).key(&self.until).arg(now_secs());
        let flat: Vec<String> = self.store.run_script(&inv).await?;
        let mut n = 0;
        for pair in flat.chunks(2) {
            if let [f, v] = pair {
                revs.apply(f, v);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Subscribes (reconnecting with backoff), then writes what is pending and loads
    /// everything; applies each published revocation as it comes. Ends with the
    /// revocations it serves.
    pub fn spawn_subscriber(self: Arc<Self>, revs: Weak<Revocations>) {
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            let limit = self.store.op_timeout().max(Duration::from_millis(500));
            loop {
                if revs.strong_count() == 0 {
                    return;
                }
                let connected = async {
                    let mut ps = self.client.get_async_pubsub().await?;
                    ps.subscribe(&self.channel).await?;
                    Ok::<_, redis::RedisError>(ps)
                };
                match tokio::time::timeout(limit, connected).await {
                    Ok(Ok(mut ps)) => {
                        self.flush_pending().await;
                        let Some(r) = revs.upgrade() else { return };
                        match self.load_into(&r).await {
                            Ok(n) => {
                                tracing::info!(
                                    loaded = n,
                                    "revocations: subscribed to the shared store"
                                )
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "revocations: loading from the shared store failed; retrying");
                                tokio::time::sleep(pause).await;
                                pause = (pause * 2).min(Duration::from_secs(2));
                                continue;
                            }
                        }
                        drop(r);
                        pause = Duration::from_millis(100);
                        self.subscribed.store(true, Ordering::Relaxed);
                        metrics::gauge!("auth_sidecar_revocation_subscribed").set(1.0);
                        let mut stream = ps.on_message();
                        while let Some(msg) = stream.next().await {
                            let Some(r) = revs.upgrade() else { return };
                            let Ok(m) = serde_json::from_slice::<Message>(msg.get_payload_bytes())
                            else {
                                continue;
                            };
                            if r.apply(&m.f, &m.v) {
                                metrics::counter!("auth_sidecar_revocations_total", "kind" => "shared", "source" => "store")
                                    .increment(1);
                            }
                        }
                        self.subscribed.store(false, Ordering::Relaxed);
                        metrics::gauge!("auth_sidecar_revocation_subscribed").set(0.0);
                        tracing::warn!("revocations: lost the shared store's channel; reconnecting (and reloading)");
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "revocations: cannot subscribe to the shared store")
                    }
                    Err(_) => {
                        tracing::debug!("revocations: subscribing to the shared store timed out")
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        });
    }
}
