//! Coordination of one lifecycle call across replicas. The lifecycle's local single
//! flight makes one call per refresh token (or user) in this process; a [`Coordinator`]
//! (the shared store) makes that one call across every replica that shares it. Without
//! one, the local single flight is all there is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::lifecycle::{RenewError, Session};

/// One flight: what is coordinated, and how long its outcomes are shared.
pub struct Flight<'a> {
    /// `refresh` or `initiate`: keeps the two key spaces apart (and labels metrics).
    pub kind: &'static str,
    /// What identifies the flight: the refresh token, or the user's key. Never stored
    /// or sent anywhere: only keyed hashes of it, and keys derived from it.
    pub secret: &'a str,
    /// How long a new pair is handed to every replica that asks for the same flight.
    pub grace: Duration,
    /// How long a rejection is remembered by every replica (zero: not at all).
    pub rejected_ttl: Duration,
    /// `Retry-After` for a 503 when the flight's outcome could not be had in time.
    pub retry_after: Duration,
}

/// A pair another replica obtained; verified again before anyone uses it.
#[derive(Debug, Clone)]
pub struct Pair {
    pub access_token: String,
    pub refresh_token: String,
}

/// What coordination concluded.
pub enum Coordinated {
    /// This replica made the call (it held the lease, or the store was unavailable and
    /// the replica fell back to its own single flight).
    Ran(Result<Arc<Session>, RenewError>),
    /// Another replica made the call; this is its pair.
    Shared(Pair),
    /// Another replica's call was refused (or failed) just now, or waiting for it took
    /// too long: no call from here.
    Refused(RenewError),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The call, made only if this replica is to make it.
pub type CallOnce<'a> =
    Box<dyn FnOnce() -> BoxFuture<'a, Result<Arc<Session>, RenewError>> + Send + 'a>;

/// Makes a flight's call at most once across the replicas sharing a store.
pub trait Coordinator: Send + Sync + 'static {
    fn coordinate<'a>(
        &'a self,
        flight: Flight<'a>,
        call: CallOnce<'a>,
    ) -> BoxFuture<'a, Coordinated>;
}
