//! Shared support for the integration tests: [`Rig`], the one way a suite starts the
//! real `auth-sidecar` binary ([`Sidecar`]) in front of a real backend ([`Backend`],
//! [`raw_backend`]) with an optional mock token service ([`token_service`]) and JWKS or
//! other mock server ([`mock`]); config building ([`config`], [`lifecycle`]), token
//! minting ([`tokens`]), TLS material ([`tls`]) and clients down to raw bytes ([`http`],
//! [`h2raw`]).
// Each integration test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod backend;
pub mod config;
pub mod connectycube;
pub mod examples;
pub mod front;
pub mod h2raw;
pub mod http;
pub mod lifecycle;
pub mod mock;
pub mod otlp;
pub mod ports;
pub mod raw_backend;
pub mod redis;
pub mod rig;
pub mod sidecar;
pub mod tls;
pub mod token_service;
pub mod tokens;
pub mod vendors;

#[allow(unused_imports)]
pub use backend::{refusing_addr, Backend, Echo};
#[allow(unused_imports)]
pub use config::{fixture, q, Cfg};
#[allow(unused_imports)]
pub use http::{bearer, client, counting_listener, raw, raw_req, raw_request, send, Resp};
#[allow(unused_imports)]
pub use lifecycle::{Lc, API_KEY, API_KEY_ENV, APP_SECRET, APP_SECRET_ENV};
#[allow(unused_imports)]
pub use rig::{Rig, RigBuilder, Upstream};
#[allow(unused_imports)]
pub use sidecar::{check_config, finish, run_to_exit, vm_rss_kb, Launch, Sidecar};
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
