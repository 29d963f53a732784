//! auth-sidecar: a reverse proxy that owns a chat backend's token lifecycle.
//!
//! A request flows one way: `listen` accepts it; [`credentials`] takes out what the
//! sidecar owns; [`path`] canonicalises the path and [`decide`] finds its route rule;
//! [`token`] verifies and (when expired) renews; [`inject`] sets identity headers;
//! `forward` sends it to the backend. `proxy` holds that order in one place (one
//! context value per request); `error` is the only place failures turn into responses;
//! [`config`] is the only place configuration is read. This file builds the state from
//! a config and runs the servers.

// One audited exception: `token::cache::release_freed_memory` (glibc's malloc_trim).
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]

// Public: used by the binary, tests, benchmarks or fuzz targets. The rest is internal.
pub(crate) mod admin;
pub(crate) mod assertion;
pub(crate) mod body;
pub(crate) mod client_io;
pub mod config;
pub(crate) mod cors;
pub mod credentials;
pub mod decide;
pub(crate) mod error;
pub(crate) mod forward;
pub(crate) mod inbound;
pub mod inject;
pub(crate) mod listen;
pub(crate) mod metrics;
pub(crate) mod otel;
pub(crate) mod outbound;
pub mod path;
pub(crate) mod pool;
pub(crate) mod proxy;
pub(crate) mod request_log;
pub(crate) mod revoke;
pub(crate) mod store;
pub mod telemetry;
pub mod token;
pub(crate) mod token_endpoint;
pub(crate) mod tunnel;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{Config, ProcessEnv};
use crate::proxy::State;

/// Builds everything a request needs from a validated config. Fails (listing every
/// problem) when keys or TLS material do not load.
fn build_state(
    cfg: Config,
    metrics: metrics::Metrics,
    revs: Arc<revoke::Revocations>,
) -> Result<State, Vec<String>> {
    let mut problems = Vec::new();
    let keys = match token::load_keys(&cfg) {
        Ok(k) => Some(k),
        Err(p) => {
            problems.extend(p);
            None
        }
    };
    let tls = outbound::client_tls(&cfg.backend.client_tls())
        .map_err(|e| problems.push(format!("outbound TLS: {e}")))
        .ok();
    if let Some(t) = &cfg.server.tls {
        if let Err(e) = listen::build_acceptor(t) {
            problems.push(format!("server.tls: {e}"));
        }
    }
    let (Some(keys), Some(tls)) = (keys, tls) else {
        return Err(problems);
    };
    if keys.is_empty() && cfg.auth.jwks_url.is_none() && cfg.auth.has_keys() {
        return Err(vec!["auth: no usable verification key was loaded".into()]);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let client = outbound::HyperTokenHttp::new(tls.clone());
    let http: Arc<dyn token::call::TokenHttp> = match otel::get() {
        Some(otel) => Arc::new(otel::Traced {
            inner: client,
            otel,
        }),
        None => Arc::new(client),
    };
    let jwks = cfg.auth.remote_jwks().map(|j| {
        token::JwksRemote::new(j, http.clone(), cfg.auth.algorithms.clone(), keys.clone())
    });
    let mut route_claims: Vec<String> = cfg
        .routes
        .iter()
        .flat_map(|r| {
            r.require_claims
                .iter()
                .chain(r.limits.iter().flat_map(|l| l.claims.iter()))
                .map(|(c, _)| c.clone())
        })
        .collect();
    if cfg.revocation.is_some() {
        // What the revocation check reads of a cached token.
        route_claims.extend(["iat", "jti", "sid"].map(String::from));
    }
    let identity: Arc<dyn token::Project> = Arc::new(inject::IdentityHeaders(cfg.identity.clone()));
    let verifier =
        Arc::new(token::Verifier::new(&cfg.auth, keys, identity.clone()).keep_claims(route_claims));
    let coordinator = match &cfg.shared_store {
        Some(s) => match store::Store::new(s, &cfg.backend.client_tls()) {
            Ok(st) => Some(Arc::new(store::Shared(st)) as Arc<dyn token::Coordinator>),
            Err(e) => return Err(vec![e]),
        },
        None => None,
    };
    let lifecycle = token::Lifecycle::new(
        cfg.refresh.clone(),
        cfg.initiate.clone(),
        cfg.app_identity.clone(),
        http.clone(),
        coordinator,
        verifier.clone(),
    );
    let remember = cfg
        .initiate
        .as_ref()
        .map(|i| i.max_staleness)
        .unwrap_or(std::time::Duration::from_secs(3600));
    let introspector = cfg.introspection.clone().map(|i| {
        token::Introspector::new(i, http.clone(), identity, lifecycle.retry_after(), remember)
    });
    let assertion = match &cfg.assertion {
        Some(a) => Some(Arc::new(
            assertion::Signer::new(a, &cfg.identity).map_err(|e| vec![e])?,
        )),
        None => None,
    };
    let revocation = revoke::api::Service::new(&cfg, revs, verifier.clone()).map(Arc::new);
    if let Some(r) = &revocation {
        lifecycle.set_gate(Arc::new(revoke::BanGate(r.revs.clone())));
    }
    let token_endpoint = token_endpoint::TokenEndpoint::new(
        &cfg,
        lifecycle.clone(),
        verifier.clone(),
        jwks.clone(),
        revocation.as_ref().map(|r| r.revs.clone()),
    );
    Ok(State {
        token_endpoint,
        revocation,
        assertion,
        credentials: credentials::Credentials::new(&cfg),
        forwarder: forward::Forwarder::new(&cfg.backend, tls, cfg.server.worker_threads),
        cfg: Arc::new(cfg),
        verifier,
        lifecycle,
        metrics,
        jwks,
        introspector,
    })
}

/// Starts a state's background work (JWKS refresh); it stops when the state is dropped.
fn start_background(state: &State) {
    if let Some(j) = &state.jwks {
        j.spawn(Arc::downgrade(&state.verifier));
    }
    // Expired tokens leave the verify caches (and their memory goes back) even when no
    // traffic touches them; the task ends with the verifier it serves.
    let verifier = Arc::downgrade(&state.verifier);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(v) = verifier.upgrade() else { return };
            let removed = v.sweep();
            if removed > 0 {
                tracing::debug!(removed, "expired tokens dropped from the verify cache");
            }
        }
    });
}

/// Loads and fully checks a config file (keys, secrets, TLS material), as
/// `check-config` and reload do. Lists every problem.
pub fn check_config(path: &Path) -> Result<Config, Vec<String>> {
    let cfg = Config::load(path, &ProcessEnv).map_err(|e| e.0)?;
    build_state(
        cfg.clone(),
        metrics::Metrics::new(),
        Arc::new(revoke::Revocations::new()),
    )?;
    Ok(cfg)
}

/// Listening sockets, bound only after the whole state is built (so a bad key never
/// leaves a port open that serves nothing), and before serving (so their addresses are
/// known).
pub struct Bound {
    pub proxy: tokio::net::TcpListener,
    pub admin: Option<tokio::net::TcpListener>,
}

/// A config turned into everything the proxy serves with; no port bound yet.
pub struct Server {
    cfg: Config,
    state: State,
    metrics: metrics::Metrics,
    prom: Option<metrics_exporter_prometheus::PrometheusHandle>,
    tls: Option<Arc<listen::TlsReloader>>,
    /// Revocations live for the process: a reload keeps them.
    revs: Arc<revoke::Revocations>,
}

impl Server {
    /// Builds keys, secrets, clients and TLS. Fails (listing every problem) before any
    /// socket exists.
    pub fn new(cfg: Config) -> anyhow::Result<Server> {
        // One crypto provider for every rustls user in the process (the Redis client builds
        // its TLS config from the process default).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        // The recorder first: handles registered while building the state bind to it.
        let prom = metrics::install();
        let metrics = metrics::Metrics::new();
        // Before the state: its outbound client is wrapped when traces are on.
        if let Some(t) = &cfg.tracing {
            if tokio::runtime::Handle::try_current().is_err() {
                anyhow::bail!("tracing: the server must be built inside a tokio runtime");
            }
            otel::init(t).map_err(|e| anyhow::anyhow!(e))?;
        }
        let revs = Arc::new(revoke::Revocations::new());
        if let (Some(st), Some(_)) = (&cfg.shared_store, &cfg.revocation) {
            // Its own store client and a dedicated pub/sub connection, for the process.
            let tls = cfg.backend.client_tls();
            let store = store::Store::new(st, &tls).map_err(|e| anyhow::anyhow!(e))?;
            let client = store::pubsub_client(st, &tls).map_err(|e| anyhow::anyhow!(e))?;
            revs.set_shared(revoke::shared::Shared::new(store, client));
        }
        let state = build_state(cfg.clone(), metrics.clone(), revs.clone())
            .map_err(|p| anyhow::anyhow!(p.join("; ")))?;
        let tls = match &cfg.server.tls {
            Some(t) => Some(listen::TlsReloader::new(t).map_err(|e| anyhow::anyhow!(e))?),
            None => None,
        };
        Ok(Server {
            cfg,
            state,
            metrics,
            prom,
            tls,
            revs,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Binds the proxy and admin listeners.
    pub async fn bind(&self) -> std::io::Result<Bound> {
        let proxy = listen::bind(self.cfg.server.listen).await?;
        let admin = match self.cfg.admin.listen {
            Some(a) => Some(listen::bind(a).await?),
            None => None,
        };
        Ok(Bound { proxy, admin })
    }

    /// Serves on the bound sockets until SIGTERM/SIGINT; reloads on SIGHUP or a changed
    /// config file; drains on shutdown.
    pub async fn serve(self, config_path: Option<PathBuf>, bound: Bound) -> anyhow::Result<()> {
        let Server {
            cfg,
            state,
            metrics: m,
            prom,
            tls,
            revs,
        } = self;
        revoke::start(&revs);
        if let Some(h) = prom.clone() {
            // The exporter keeps every histogram sample until it is folded into buckets;
            // with nobody scraping, that is 8 bytes per request forever. Fold them regularly.
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    h.run_upkeep();
                }
            });
        }
        start_background(&state);
        let state = Arc::new(ArcSwap::from_pointee(state));
        let listener = bound.proxy;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let health = Arc::new(admin::Health::default());
        if let Some(l) = bound.admin {
            tracing::info!(addr = %l.local_addr()?, "admin listening");
            tokio::spawn(admin::serve(l, state.clone(), health.clone(), prom));
        }
        let mut workers = listen::Workers::start(
            listener,
            cfg.server.worker_threads,
            state.clone(),
            tls.clone(),
            stop_rx.clone(),
        )?;
        tracing::info!(addr = %addr, tls = tls.is_some(), backend = %cfg.backend.uri, "listening");

        signal_loop(config_path, state, tls, m, revs).await;
        health.draining.store(true, Ordering::Relaxed);
        tracing::info!("shutting down: no new connections; finishing in-flight requests");
        let _ = stop_tx.send(true);
        workers.drained().await;
        // Upgraded connections (WebSockets) are not tracked by the HTTP drain: give them
        // the rest of the grace period.
        let deadline = tokio::time::Instant::now() + cfg.server.shutdown_grace;
        while forward::open_tunnels() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        otel::shutdown(Duration::from_secs(5)).await;
        // Now the worker threads may end (and with them any tunnel past the grace period).
        drop(workers);
        tracing::info!("stopped");
        Ok(())
    }
}

/// Runs the proxy: builds the state, then binds, then serves until a stop signal.
pub async fn run(cfg: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let server = Server::new(cfg)?;
    let bound = server.bind().await?;
    server.serve(config_path, bound).await
}

/// Waits for a stop signal; meanwhile reloads on SIGHUP or when the config file (or a
/// TLS certificate) changes.
async fn signal_loop(
    path: Option<PathBuf>,
    state: Arc<ArcSwap<State>>,
    tls: Option<Arc<listen::TlsReloader>>,
    m: metrics::Metrics,
    revs: Arc<revoke::Revocations>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    let mtime = |p: &Option<PathBuf>| {
        p.as_ref()
            .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    };
    let mut last = mtime(&path);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        let reload = tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => true,
            _ = tick.tick() => {
                if let Some(t) = &tls { t.check(); }
                let now = mtime(&path);
                let changed = now != last;
                last = now;
                changed
            }
        };
        if let (true, Some(p)) = (reload, &path) {
            reload_config(p, &state, &m, &revs);
        }
    }
}

fn reload_config(
    path: &Path,
    state: &ArcSwap<State>,
    m: &metrics::Metrics,
    revs: &Arc<revoke::Revocations>,
) {
    let cfg = match Config::load(path, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(problems = %e.0.join("; "), "reload refused: invalid config; the old one keeps serving");
            return;
        }
    };
    let old = state.load();
    if cfg.server.listen != old.cfg.server.listen || cfg.admin.listen != old.cfg.admin.listen {
        tracing::warn!(
            "listen addresses change only on restart; the rest of the new config applies"
        );
    }
    match build_state(cfg, m.clone(), revs.clone()) {
        Ok(s) => {
            if let (Some(new), Some(prev)) = (&s.jwks, &old.jwks) {
                new.inherit(prev, &s.verifier);
            }
            if let (Some(new), Some(prev)) = (&s.assertion, &old.assertion) {
                new.inherit(prev);
            }
            start_background(&s);
            state.store(Arc::new(s));
            tracing::info!("config reloaded");
        }
        Err(p) => {
            tracing::error!(problems = %p.join("; "), "reload refused; the old config keeps serving")
        }
    }
}
