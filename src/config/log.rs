//! `[log]`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Checker;

/// Log output.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Log {
    /// `human` or `json` (for machines); one line per request, never a secret.
    pub format: LogFormat,
    /// An EnvFilter (`info`, `auth_sidecar=debug,info`, …); `AUTH_SIDECAR_LOG` overrides
    /// it.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl Log {
    pub(super) fn validate(&self, c: &mut Checker<'_>) {
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            c.fail(format!("log.level: `{}` is not a valid filter", self.level));
        }
    }
}
