//! OpenTelemetry traces, when `[tracing]` is configured: one server span per request,
//! a client span per call to the token service, JWKS or introspection endpoint, W3C
//! `traceparent`/`tracestate` continued from the caller and sent on to the backend and
//! those services, exported over OTLP (HTTP/protobuf or gRPC) in batches.
//!
//! Attributes are chosen, never copied: method, path without its query, route, status,
//! decision, error code, user id. No header value, query string or token reaches a span.
//! Without `[tracing]` none of this runs (one `OnceLock` read per request).

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;

use crate::config::{OtlpProtocol, Tracing};
use crate::token::call::{Answer, Call, CallError, TokenHttp};

static OTEL: OnceLock<Otel> = OnceLock::new();

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The process's tracer: built once at start from `[tracing]`.
pub struct Otel {
    provider: SdkTracerProvider,
    tracer: Tracer,
    propagator: TraceContextPropagator,
    continue_incoming: bool,
}

/// The tracer, when `[tracing]` is configured.
pub fn get() -> Option<&'static Otel> {
    OTEL.get()
}

/// Builds the exporter and tracer (inside the runtime: the batch processor is a task on
/// it). A second call keeps the first tracer.
pub fn init(cfg: &Tracing) -> Result<(), String> {
    if OTEL.get().is_some() {
        return Ok(());
    }
    let endpoint = cfg.endpoint();
    let exporter = match cfg.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(cfg.timeout)
            .build(),
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(cfg.timeout)
            .build(),
    }
    .map_err(|e| format!("tracing: cannot build the OTLP exporter: {e}"))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(cfg.max_queue)
        .with_scheduled_delay(cfg.batch_delay)
        .with_max_export_batch_size(cfg.max_queue.min(512))
        .build();
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_batch_config(batch)
        .build();
    let ratio = Sampler::TraceIdRatioBased(cfg.sample_ratio);
    let sampler = if cfg.parent_based {
        Sampler::ParentBased(Box::new(ratio))
    } else {
        ratio
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("auth-sidecar");
    let _ = OTEL.set(Otel {
        provider,
        tracer,
        propagator: TraceContextPropagator::new(),
        continue_incoming: cfg.continue_incoming,
    });
    Ok(())
}

/// Sends the spans still queued (bounded by `wait`). The SDK's shutdown blocks on the
/// batch task, which runs on this runtime, so it waits on a blocking thread.
pub async fn shutdown(wait: Duration) {
    let Some(o) = OTEL.get() else { return };
    let provider = o.provider.clone();
    let done = tokio::task::spawn_blocking(move || provider.shutdown());
    if tokio::time::timeout(wait, done).await.is_err() {
        tracing::warn!("tracing: spans still queued at shutdown were dropped");
    }
}

/// What the request span records when it ends.
pub struct Outcome<'a> {
    pub method: &'a str,
    pub status: u16,
    pub route: Option<&'a str>,
    pub path: &'a str,
    pub decision: &'static str,
    pub error: Option<&'static str>,
    pub user: Option<&'a str>,
    pub request_id: &'a str,
}

impl Otel {
    /// Starts the request's server span, as a child of the caller's `traceparent` when
    /// `continue_incoming` allows; the returned context carries it.
    pub fn start_request(
        &self,
        method: &Method,
        headers: &HeaderMap,
        client: IpAddr,
        tls: bool,
    ) -> Context {
        let parent = if self.continue_incoming {
            self.propagator.extract(&Headers(headers))
        } else {
            Context::new()
        };
        let span = self
            .tracer
            .span_builder(method.as_str().to_owned())
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.as_str().to_owned()),
                KeyValue::new("url.scheme", if tls { "https" } else { "http" }),
                KeyValue::new("client.address", client.to_string()),
            ])
            .start_with_context(&self.tracer, &parent);
        parent.with_span(span)
    }

    /// Replaces the caller's trace headers with the current span's (the backend's
    /// parent is the sidecar's span). Sent also when the span is not sampled, so the
    /// backend follows the same decision.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        self.propagator
            .inject_context(&Context::current(), &mut HeadersMut(headers));
    }
}

/// Ends the request span with what the request came to.
pub fn end_request(cx: &Context, o: &Outcome<'_>) {
    let span = cx.span();
    if !span.is_recording() {
        return;
    }
    // Named `{method} {route}` once the route is known (semantic conventions).
    if let Some(r) = o.route {
        span.update_name(format!(
            "{} {}",
            o.method,
            if r.is_empty() { "/" } else { r }
        ));
    }
    span.set_attribute(KeyValue::new("http.response.status_code", o.status as i64));
    span.set_attribute(KeyValue::new("url.path", bounded(o.path)));
    if let Some(r) = o.route {
        span.set_attribute(KeyValue::new(
            "http.route",
            if r.is_empty() {
                "/".into()
            } else {
                r.to_owned()
            },
        ));
    }
    span.set_attribute(KeyValue::new("auth_sidecar.decision", o.decision));
    span.set_attribute(KeyValue::new(
        "auth_sidecar.request_id",
        o.request_id.to_owned(),
    ));
    if let Some(e) = o.error {
        span.set_attribute(KeyValue::new("auth_sidecar.error", e));
    }
    if let Some(u) = o.user {
        span.set_attribute(KeyValue::new("enduser.id", bounded(u)));
    }
    // Server spans: only 5xx is an error (a 401 is the sidecar doing its job).
    if o.status >= 500 {
        span.set_status(Status::error(o.error.unwrap_or("server error")));
    }
    span.end();
}

fn bounded(s: &str) -> String {
    let mut end = s.len().min(256);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes an empty `tracestate` when there is none.
        if value.is_empty() {
            return;
        }
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Wraps the outbound client: a client span per call (child of the request that made
/// it, or a root for background JWKS refreshes) and `traceparent` on the call.
pub struct Traced<H> {
    pub inner: H,
    pub otel: &'static Otel,
}

impl<H: TokenHttp> TokenHttp for Traced<H> {
    fn call(
        &self,
        mut call: Call,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Answer, CallError>> + Send>>
    {
        let o = self.otel;
        let mut attrs = vec![
            KeyValue::new("http.request.method", call.method.as_str().to_owned()),
            KeyValue::new("url.path", bounded(call.uri.path())),
            KeyValue::new("auth_sidecar.call", call.purpose),
        ];
        if let Some(h) = call.uri.host() {
            attrs.push(KeyValue::new("server.address", bounded(h)));
        }
        if let Some(p) = call.uri.port_u16() {
            attrs.push(KeyValue::new("server.port", p as i64));
        }
        let parent = Context::current();
        let span = o
            .tracer
            .span_builder(call.purpose)
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start_with_context(&o.tracer, &parent);
        let cx = parent.with_span(span);
        let mut trace = HeaderMap::new();
        o.propagator
            .inject_context(&cx, &mut HeadersMut(&mut trace));
        call.headers
            .retain(|(k, _)| *k != TRACEPARENT && *k != TRACESTATE);
        call.headers
            .extend(trace.into_iter().filter_map(|(k, v)| k.map(|k| (k, v))));
        let fut = self.inner.call(call);
        let mut guard = CallSpan(Some(cx));
        Box::pin(async move {
            let r = fut.await;
            if let Some(cx) = guard.0.take() {
                let span = cx.span();
                match &r {
                    Ok(a) => {
                        span.set_attribute(KeyValue::new(
                            "http.response.status_code",
                            a.status as i64,
                        ));
                        if a.status >= 400 {
                            span.set_attribute(KeyValue::new("error.type", a.status.to_string()));
                            span.set_status(Status::error(format!("status {}", a.status)));
                        }
                    }
                    Err(e) => {
                        span.set_attribute(KeyValue::new("error.type", error_type(e)));
                        span.set_status(Status::error(e.to_string()));
                    }
                }
                span.end();
            }
            r
        })
    }
}

/// A call's span until the call finishes; a call dropped before its answer (its
/// caller gave up) ends as `cancelled`.
struct CallSpan(Option<Context>);

impl Drop for CallSpan {
    fn drop(&mut self) {
        if let Some(cx) = self.0.take() {
            let span = cx.span();
            span.set_attribute(KeyValue::new("error.type", "cancelled"));
            span.end();
        }
    }
}

fn error_type(e: &CallError) -> &'static str {
    match e {
        CallError::Connect => "connect",
        CallError::Timeout => "timeout",
        CallError::TooLarge => "response_too_large",
        CallError::Io => "io",
    }
}
