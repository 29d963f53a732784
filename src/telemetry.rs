//! Logging setup. Tokens, cookies and secrets are never handed to a log macro: request
//! lines carry method, path (no query), status, latency, decision and user id only.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogFormat, LogRaw};

/// Environment variable that overrides `log.level` (an EnvFilter directive).
pub const ENV_LOG: &str = "AUTH_SIDECAR_LOG";

/// Installs the global subscriber. Logs go to stdout (one line per event).
pub fn init(log: &LogRaw) {
    let level = std::env::var(ENV_LOG).unwrap_or_else(|_| log.level.clone());
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Dependencies (hyper, rustls, moka) log connection internals at trace level; keep
    // them at warn unless the filter names them explicitly.
    let filter = [
        "hyper",
        "hyper_util",
        "h2",
        "rustls",
        "tokio_rustls",
        "moka",
        "mio",
    ]
    .iter()
    .fold(filter, |f, target| {
        if level.contains(target) {
            f
        } else {
            match format!("{target}=warn").parse() {
                Ok(d) => f.add_directive(d),
                Err(_) => f,
            }
        }
    });
    use std::io::IsTerminal;
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(false)
            .with_current_span(true)
            .try_init(),
        LogFormat::Human => builder.try_init(),
    };
}
