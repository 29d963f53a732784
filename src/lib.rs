//! auth-sidecar: a reverse proxy that owns a chat backend's token lifecycle.
//!
//! A request flows one way: [`listen`] accepts it, [`decide`] canonicalises the path
//! and finds the route and credentials, [`token`] verifies and (when expired) renews,
//! [`inject`] strips and sets identity headers, [`forward`] sends it to the backend.
//! [`proxy`] holds that order in one place; [`error`] is the only place failures turn
//! into responses; [`config`] is the only place configuration is read.

// One audited exception: `token::cache::release_freed_memory` (glibc's malloc_trim).
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod body;
pub mod config;
pub mod decide;
pub mod demo;
pub mod error;
pub mod forward;
pub mod inject;
pub mod listen;
pub mod metrics;
pub mod outbound;
pub mod path;
pub mod pool;
pub mod proxy;
pub mod telemetry;
pub mod token;

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
pub fn build_state(cfg: Config, metrics: metrics::Metrics) -> Result<State, Vec<String>> {
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
    if keys.is_empty() && cfg.auth.jwks_url.is_none() {
        return Err(vec!["auth: no usable verification key was loaded".into()]);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let http: Arc<dyn token::lifecycle::TokenHttp> =
        Arc::new(outbound::HyperTokenHttp::new(tls.clone()));
    let jwks = cfg.auth.remote_jwks().map(|j| {
        token::JwksRemote::new(j, http.clone(), cfg.auth.algorithms.clone(), keys.clone())
    });
    let introspector = cfg
        .introspection
        .clone()
        .map(|i| token::Introspector::new(i, http.clone(), cfg.identity.clone()));
    let route_claims = cfg
        .routes
        .iter()
        .flat_map(|r| r.require_claims.iter().map(|(c, _)| c.clone()))
        .collect();
    let verifier =
        Arc::new(token::Verifier::new(&cfg.auth, &cfg.identity, keys).keep_claims(route_claims));
    let lifecycle = token::Lifecycle::new(
        cfg.refresh.clone(),
        cfg.initiate.clone(),
        cfg.app_identity.clone(),
        http.clone(),
        verifier.clone(),
    );
    // Routing headers some backends honour: the sidecar decides on the path, nobody else.
    let mut extra: Vec<http::HeaderName> = ["x-original-url", "x-rewrite-url", "x-forwarded-uri"]
        .into_iter()
        .map(http::HeaderName::from_static)
        .collect();
    if let Some(h) = lifecycle.refresh_header() {
        extra.push(h.clone());
    }
    if let Some(h) = lifecycle.app_identity_header() {
        extra.push(h.clone());
    }
    let stripper = inject::Stripper::new(&cfg, &extra.iter().collect::<Vec<_>>());
    let forwarder = forward::Forwarder::new(&cfg.backend, tls);
    Ok(State {
        cfg: Arc::new(cfg),
        verifier,
        lifecycle,
        forwarder,
        stripper,
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

/// Loads and fully checks a config file, as `check-config` and reload do.
pub fn load_checked(path: &Path) -> Result<(Config, State), Vec<String>> {
    let cfg = Config::load(path, &ProcessEnv).map_err(|e| e.0)?;
    let state = build_state(cfg.clone(), metrics::Metrics::new())?;
    Ok((cfg, state))
}

/// Listening sockets, bound before anything is served (so their addresses are known).
pub struct Bound {
    pub proxy: tokio::net::TcpListener,
    pub admin: Option<tokio::net::TcpListener>,
}

impl Bound {
    pub async fn bind(cfg: &Config) -> std::io::Result<Bound> {
        let proxy = listen::bind(cfg.server.listen).await?;
        let admin = match cfg.admin.listen {
            Some(a) => Some(listen::bind(a).await?),
            None => None,
        };
        Ok(Bound { proxy, admin })
    }
}

/// Runs the proxy until SIGTERM/SIGINT: binds, serves, reloads on SIGHUP or a changed
/// config file, drains on shutdown.
pub async fn run(cfg: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let bound = Bound::bind(&cfg).await?;
    serve(cfg, config_path, bound).await
}

/// Serves on already-bound sockets until a stop signal.
pub async fn serve(cfg: Config, config_path: Option<PathBuf>, bound: Bound) -> anyhow::Result<()> {
    let prom = metrics::install();
    if let Some(h) = prom.clone() {
        // The exporter keeps every histogram sample until it is folded into buckets; with
        // nobody scraping, that is 8 bytes per request forever. Fold them regularly.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                h.run_upkeep();
            }
        });
    }
    let m = metrics::Metrics::new();
    let state = build_state(cfg.clone(), m.clone()).map_err(|p| anyhow::anyhow!(p.join("; ")))?;
    start_background(&state);
    let state = Arc::new(ArcSwap::from_pointee(state));
    let listener = bound.proxy;
    let addr = listener.local_addr()?;
    let tls = match &cfg.server.tls {
        Some(t) => Some(listen::TlsReloader::new(t).map_err(|e| anyhow::anyhow!(e))?),
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let health = Arc::new(admin::Health::default());
    if let Some(l) = bound.admin {
        tracing::info!(addr = %l.local_addr()?, "admin listening");
        tokio::spawn(admin::serve(l, state.clone(), health.clone(), prom));
    }
    tracing::info!(addr = %addr, tls = tls.is_some(), backend = %cfg.backend.uri, "listening");
    let server = tokio::spawn(listen::serve(
        listener,
        state.clone(),
        tls.clone(),
        stop_rx.clone(),
    ));

    signal_loop(config_path, state, tls, m).await;
    health.draining.store(true, Ordering::Relaxed);
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    let _ = stop_tx.send(true);
    let _ = server.await;
    // Upgraded connections (WebSockets) are not tracked by the HTTP drain: give them
    // the rest of the grace period.
    let deadline = tokio::time::Instant::now() + cfg.server.shutdown_grace;
    while forward::open_tunnels() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Waits for a stop signal; meanwhile reloads on SIGHUP or when the config file (or a
/// TLS certificate) changes.
async fn signal_loop(
    path: Option<PathBuf>,
    state: Arc<ArcSwap<State>>,
    tls: Option<Arc<listen::TlsReloader>>,
    m: metrics::Metrics,
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
            reload_config(p, &state, &m);
        }
    }
}

fn reload_config(path: &Path, state: &ArcSwap<State>, m: &metrics::Metrics) {
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
    match build_state(cfg, m.clone()) {
        Ok(s) => {
            if let (Some(new), Some(prev)) = (&s.jwks, &old.jwks) {
                new.inherit(prev, &s.verifier);
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
