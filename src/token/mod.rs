//! Everything about tokens, and nothing about HTTP servers: keys, verification with its
//! cache, the refresh/initiate lifecycle, and the outbound call interface they use.
//! Returns claims and outcomes; what becomes a header or a response is decided above.

pub mod cache;
pub mod call;
pub mod coordinate;
pub mod keys;
pub mod lifecycle;
pub mod remote;
pub mod verify;

use std::time::{SystemTime, UNIX_EPOCH};

pub use coordinate::{Coordinated, Coordinator, Flight, Pair};
pub use keys::KeySet;
pub use lifecycle::{Lifecycle, RenewError, Session, Subject};
pub use remote::{Checked, Introspector, JwksRemote};
pub use verify::{NoProjection, Project, Verdict, Verified, Verifier, VerifyError};

use crate::config::Config;

/// Seconds since the Unix epoch (JWT NumericDate).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Builds the key set a config describes. Errors name the file and the reason.
pub fn load_keys(cfg: &Config) -> Result<KeySet, Vec<String>> {
    let mut set = KeySet::default();
    let mut problems = Vec::new();
    if let Some(secret) = &cfg.auth.hmac_secret {
        set.add_hmac(&secret.0);
    }
    for k in &cfg.auth.public_keys {
        if let Err(e) = set.add_pem(&k.pem, k.kid.clone()) {
            problems.push(format!("auth.public_keys: {}: {e}", k.file.display()));
        }
    }
    if let Some(jwks) = &cfg.auth.jwks {
        let (text, path) = (&jwks.text, &jwks.path);
        match set.add_jwks(text, &cfg.auth.algorithms) {
            Ok(skipped) => {
                for s in skipped {
                    tracing::warn!(file = %path.display(), "jwks: skipped {s}");
                }
            }
            Err(e) => problems.push(format!("auth.jwks_file: {}: {e}", path.display())),
        }
    }
    if problems.is_empty() {
        Ok(set)
    } else {
        Err(problems)
    }
}
