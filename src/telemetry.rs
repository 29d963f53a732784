//! Logging setup. Tokens, cookies and secrets are never handed to a log macro: request
//! lines carry method, path (no query), status, latency, decision and user id only.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

use crate::config::{Log, LogFormat};

/// Environment variable that overrides `log.level` (an EnvFilter directive).
pub const ENV_LOG: &str = "AUTH_SIDECAR_LOG";

/// Installs the global subscriber. Logs go to stdout (one line per event).
pub fn init(log: &Log) {
    let level = std::env::var(ENV_LOG).unwrap_or_else(|_| log.level.clone());
    // Dependencies (hyper, rustls, moka) log connection internals at trace level; keep
    // them at warn unless the filter names them explicitly.
    let quiet: Vec<String> = [
        "hyper",
        "hyper_util",
        "h2",
        "rustls",
        "tokio_rustls",
        "moka",
        "mio",
    ]
    .iter()
    .filter(|t| !level.contains(*t))
    .map(|t| format!("{t}=warn"))
    .collect();
    let full = std::iter::once(level.as_str())
        .chain(quiet.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(",");
    // Plain `target=level` lists (the usual case) get the static `Targets` filter;
    // EnvFilter, needed only for span and field directives, takes a lock on every span
    // enter and exit, i.e. several times per request.
    match full.parse::<Targets>() {
        Ok(targets) => install(targets, log),
        Err(_) => {
            let env = EnvFilter::try_new(&full).unwrap_or_else(|_| EnvFilter::new("info"));
            install(env, log)
        }
    }
}

fn install<F: Layer<Registry> + Send + Sync + 'static>(filter: F, log: &Log) {
    use std::io::IsTerminal;
    let ansi = std::io::stdout().is_terminal();
    let base = Registry::default().with(filter);
    let _ = match log.format {
        LogFormat::Json => base
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(false)
                    .with_current_span(true)
                    .with_ansi(ansi)
                    .with_writer(std::io::stdout),
            )
            .try_init(),
        LogFormat::Human => base
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stdout))
            .try_init(),
    };
}
