//! `[tracing]`: OpenTelemetry traces exported over OTLP. Optional: without it no span is
//! made and `traceparent` passes through untouched.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{types, Checker};

/// How spans leave the process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OtlpProtocol {
    /// OTLP over HTTP with a protobuf body (`POST …/v1/traces`).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP over gRPC (`TraceService/Export`).
    #[serde(rename = "grpc")]
    Grpc,
}

/// OpenTelemetry tracing. Read at start: a reload keeps the running exporter.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Tracing {
    /// `http/protobuf` or `grpc`.
    pub protocol: OtlpProtocol,
    /// Collector URL (plain `http://`): the full traces URL for `http/protobuf`
    /// (default `http://127.0.0.1:4318/v1/traces`), the gRPC endpoint for `grpc`
    /// (default `http://127.0.0.1:4317`).
    pub endpoint: Option<String>,
    /// Timeout of one export call; a collector that is slow or down costs dropped
    /// spans, never a request.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Fraction of new traces sampled, 0.0 to 1.0 (by trace id, so every replica
    /// decides the same for one trace).
    pub sample_ratio: f64,
    /// Follow the caller's sampling decision when its `traceparent` has one
    /// (`sample_ratio` then applies only to traces the sidecar starts).
    pub parent_based: bool,
    /// Continue the trace of an incoming `traceparent`/`tracestate`; `false` starts a
    /// new trace for every request (for a sidecar facing untrusted clients directly).
    pub continue_incoming: bool,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// How long finished spans wait to be sent in one batch.
    #[serde(with = "types::duration")]
    #[schemars(with = "String")]
    pub batch_delay: Duration,
    /// Finished spans held for export at most; beyond it new spans are dropped, so a
    /// collector outage costs bounded memory.
    pub max_queue: usize,
}

impl Default for Tracing {
    fn default() -> Self {
        Self {
            protocol: OtlpProtocol::HttpProtobuf,
            endpoint: None,
            timeout: Duration::from_secs(5),
            sample_ratio: 1.0,
            parent_based: true,
            continue_incoming: true,
            service_name: "auth-sidecar".into(),
            batch_delay: Duration::from_secs(5),
            max_queue: 2048,
        }
    }
}

impl Tracing {
    /// The collector URL, the protocol's default when unset.
    pub fn endpoint(&self) -> String {
        match (&self.endpoint, self.protocol) {
            (Some(e), _) => e.clone(),
            (None, OtlpProtocol::HttpProtobuf) => "http://127.0.0.1:4318/v1/traces".into(),
            (None, OtlpProtocol::Grpc) => "http://127.0.0.1:4317".into(),
        }
    }

    pub(super) fn validate(&mut self, c: &mut Checker<'_>) {
        let e = self.endpoint();
        match e.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => {}
            _ => c.fail(format!(
                "tracing.endpoint: `{e}` must be an http:// URL with a host"
            )),
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            c.fail("tracing.sample_ratio: must be between 0.0 and 1.0".into());
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            c.fail("tracing.timeout: must be between 1ms and 60s".into());
        }
        if self.batch_delay.is_zero() || self.batch_delay > Duration::from_secs(60) {
            c.fail("tracing.batch_delay: must be between 1ms and 60s".into());
        }
        if !(1..=1_000_000).contains(&self.max_queue) {
            c.fail("tracing.max_queue: must be between 1 and 1000000".into());
        }
        if self.service_name.is_empty() {
            c.fail("tracing.service_name: must not be empty".into());
        }
    }
}
