//! Prometheus metrics. Hot-path handles are registered once at start-up, so counting a
//! request is an atomic add, not a registry lookup.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// What the proxy decided for a request (a label on `auth_sidecar_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Valid token, forwarded with identity.
    Allowed,
    /// Forwarded after a refresh.
    Refreshed,
    /// Forwarded after a new session was initiated.
    Initiated,
    /// Optional route, no token: forwarded without identity.
    Anonymous,
    /// Public route.
    Public,
    /// Refused by the sidecar (4xx).
    Rejected,
    /// Failed because something else failed (5xx from the sidecar).
    Failed,
}

const DECISIONS: [(Decision, &str); 7] = [
    (Decision::Allowed, "allowed"),
    (Decision::Refreshed, "refreshed"),
    (Decision::Initiated, "initiated"),
    (Decision::Anonymous, "anonymous"),
    (Decision::Public, "public"),
    (Decision::Rejected, "rejected"),
    (Decision::Failed, "failed"),
];

impl Decision {
    pub fn as_str(self) -> &'static str {
        DECISIONS[self as usize].1
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

struct Inner {
    requests: Vec<[Counter; 5]>,
    backend_latency: Histogram,
    open_connections: Gauge,
    upgraded_connections: Gauge,
}

/// Cheap-to-clone metric handles.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process; returns its handle.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .clone()
}

impl Metrics {
    pub fn new() -> Metrics {
        let requests = DECISIONS
            .iter()
            .map(|(_, d)| {
                CLASSES.map(|c| metrics::counter!("auth_sidecar_requests_total", "decision" => *d, "status" => c))
            })
            .collect();
        metrics::describe_counter!(
            "auth_sidecar_requests_total",
            "Requests by decision and status class"
        );
        metrics::describe_counter!(
            "auth_sidecar_token_service_calls_total",
            "Refresh and initiate calls by outcome"
        );
        metrics::describe_histogram!(
            "auth_sidecar_backend_seconds",
            "Time to the backend's response headers"
        );
        Metrics(Arc::new(Inner {
            requests,
            backend_latency: metrics::histogram!("auth_sidecar_backend_seconds"),
            open_connections: metrics::gauge!("auth_sidecar_open_connections"),
            upgraded_connections: metrics::gauge!("auth_sidecar_upgraded_connections"),
        }))
    }

    pub fn request(&self, d: Decision, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.0.requests[d as usize][class].increment(1);
    }

    pub fn backend_latency(&self, d: Duration) {
        self.0.backend_latency.record(d.as_secs_f64());
    }

    /// Counts an open connection until the guard drops.
    pub fn connection_guard(&self) -> GaugeGuard {
        GaugeGuard::new(self.0.open_connections.clone())
    }

    pub fn upgraded_guard(&self) -> GaugeGuard {
        GaugeGuard::new(self.0.upgraded_connections.clone())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Increments a gauge now and decrements it on drop.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(g: Gauge) -> Self {
        g.increment(1.0);
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
