//! The connection to the store: one Redis server (redis-rs's connection manager:
//! reconnects by itself, connects lazily) or a Redis Cluster (feature `redis-cluster`;
//! connected on first use, again after a failure).

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, ScriptInvocation};

use crate::config::{ClientTls, SharedStore};

// One value per store, built once: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    /// Made on first use: the connection manager needs a running runtime, and
    /// `check-config` builds the state without one.
    Single {
        client: Client,
        config: ConnectionManagerConfig,
        manager: tokio::sync::OnceCell<ConnectionManager>,
    },
    #[cfg(feature = "redis-cluster")]
    Cluster(cluster::Lazy),
}

/// A plain client for the URL (a single server, or the one cluster node named), with
/// the configured credentials and CA.
fn single_client(cfg: &SharedStore, ca: Option<Vec<u8>>) -> Result<Client, String> {
    let mut info = cfg
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("shared_store.url: {e}"))?;
    let mut settings = info.redis_settings().clone();
    if let Some(u) = &cfg.username {
        settings = settings.set_username(String::from_utf8_lossy(&u.0));
    }
    if let Some(p) = &cfg.password {
        settings = settings.set_password(String::from_utf8_lossy(&p.0));
    }
    info = info.set_redis_settings(settings);
    match ca {
        Some(root) => Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root),
            },
        ),
        None => Client::open(info),
    }
    .map_err(|e| format!("shared_store.url: {e}"))
}

/// A client for a dedicated pub/sub connection (a cluster broadcasts `PUBLISH` to every
/// node, so any one node will do).
pub fn pubsub_client(cfg: &SharedStore, tls: &ClientTls) -> Result<Client, String> {
    single_client(cfg, read_ca(cfg, tls)?)
}

fn read_ca(cfg: &SharedStore, tls: &ClientTls) -> Result<Option<Vec<u8>>, String> {
    Ok(match (&tls.ca_file, cfg.url.starts_with("rediss://")) {
        (Some(path), true) => Some(
            std::fs::read(path)
                .map_err(|e| format!("shared_store: cannot read {}: {e}", path.display()))?,
        ),
        _ => None,
    })
}

impl Conn {
    pub fn new(cfg: &SharedStore, tls: &ClientTls) -> Result<Conn, String> {
        let ca = read_ca(cfg, tls)?;
        if cfg.cluster {
            #[cfg(feature = "redis-cluster")]
            return cluster::Lazy::new(cfg, ca).map(Conn::Cluster);
            #[cfg(not(feature = "redis-cluster"))]
            return Err("shared_store.cluster: this build has no `redis-cluster` feature".into());
        }
        let client = single_client(cfg, ca)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.operation_timeout))
            .set_response_timeout(Some(cfg.operation_timeout))
            .set_number_of_retries(1)
            .set_max_delay(std::time::Duration::from_millis(500));
        Ok(Conn::Single {
            client,
            config: manager,
            manager: tokio::sync::OnceCell::new(),
        })
    }

    /// Runs a script (EVALSHA, falling back to EVAL once per connection).
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        inv: &ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Single {
                client,
                config,
                manager,
            } => {
                let m = manager
                    .get_or_try_init(|| async {
                        ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    })
                    .await?;
                inv.invoke_async(&mut m.clone()).await
            }
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(c) => {
                let mut conn = c.get().await?;
                let r = inv.invoke_async(&mut conn).await;
                if r.is_err() {
                    c.reset().await;
                }
                r
            }
        }
    }
}

#[cfg(feature = "redis-cluster")]
mod cluster {
    use redis::cluster::{ClusterClient, ClusterClientBuilder};
    use redis::cluster_async::ClusterConnection;
    use tokio::sync::Mutex;

    use crate::config::SharedStore;

    /// A cluster connection made on first use and remade after a failure.
    pub struct Lazy {
        client: ClusterClient,
        conn: Mutex<Option<ClusterConnection>>,
    }

    impl Lazy {
        pub fn new(cfg: &SharedStore, ca: Option<Vec<u8>>) -> Result<Lazy, String> {
            let mut b = ClusterClientBuilder::new(vec![cfg.url.as_str()])
                .connection_timeout(cfg.operation_timeout)
                .response_timeout(cfg.operation_timeout)
                .retries(1);
            if let Some(u) = &cfg.username {
                b = b.username(String::from_utf8_lossy(&u.0));
            }
            if let Some(p) = &cfg.password {
                b = b.password(String::from_utf8_lossy(&p.0));
            }
            if let Some(root) = ca {
                b = b.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                });
            }
            let client = b.build().map_err(|e| format!("shared_store.url: {e}"))?;
            Ok(Lazy {
                client,
                conn: Mutex::new(None),
            })
        }

        pub async fn get(&self) -> redis::RedisResult<ClusterConnection> {
            let mut g = self.conn.lock().await;
            if let Some(c) = g.as_ref() {
                return Ok(c.clone());
            }
            let c = self.client.get_async_connection().await?;
            *g = Some(c.clone());
            Ok(c)
        }

        pub async fn reset(&self) {
            *self.conn.lock().await = None;
        }
    }
}
