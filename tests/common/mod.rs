//! Shared support for the integration tests: the real `auth-sidecar` binary started on
//! ephemeral ports ([`Sidecar`]), a small real HTTP backend ([`Backend`]), token minting
//! ([`tokens`]) and an HTTP client layer that can also speak raw bytes ([`http`]).
//!
//! Every integration test file does `mod common;` and uses what it needs, so some items
//! are unused in some files.
#![allow(dead_code)]

pub mod backend;
pub mod config;
pub mod http;
pub mod sidecar;
pub mod tokens;

#[allow(unused_imports)]
pub use backend::{refusing_addr, Backend, Echo};
#[allow(unused_imports)]
pub use config::{fixture, q, Cfg};
#[allow(unused_imports)]
pub use http::{client, raw, raw_request, Resp};
#[allow(unused_imports)]
pub use sidecar::{check_config, run_to_exit, Sidecar};
#[allow(unused_imports)]
pub use tokens::*;

use std::future::Future;
use std::time::Duration;

/// Every test body runs under this bound, so a hang is a failure, not a stuck CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `fut` with [`TEST_TIMEOUT`]; panics if it takes longer.
pub async fn bounded<F: Future>(fut: F) -> F::Output {
    bounded_for(TEST_TIMEOUT, fut).await
}

/// Runs `fut` with a custom bound.
pub async fn bounded_for<F: Future>(limit: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}
