//! Single flight: one call per key however many requests wait for it.

use std::sync::Arc;

use opentelemetry::context::FutureExt as _;

use super::{RenewError, Session};

/// Runs a moka single flight in its own task: a client that disconnects mid-call drops
/// only its wait, never the call that others are waiting on. Counts coalesced waits.
pub(super) async fn single_flight<K, F>(
    call: &'static str,
    flight: F,
    on_panic: RenewError,
) -> Result<Arc<Session>, RenewError>
where
    K: Send + Sync + 'static,
    F: std::future::Future<Output = Result<moka::Entry<K, Arc<Session>>, Arc<RenewError>>>
        + Send
        + 'static,
{
    // The call's trace span is a child of the request that started the flight.
    let task = tokio::spawn(
        async move {
            match flight.await {
                Ok(e) => {
                    if !e.is_fresh() {
                        metrics::counter!("auth_sidecar_coalesced_total", "call" => call)
                            .increment(1);
                    }
                    Ok(e.into_value())
                }
                Err(f) => Err((*f).clone()),
            }
        }
        .with_current_context(),
    );
    task.await.unwrap_or(Err(on_panic))
}
