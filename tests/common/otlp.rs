//! A test OpenTelemetry collector on 127.0.0.1:0 that speaks OTLP as the specification
//! defines it: `POST /v1/traces` with a protobuf body (HTTP), or the
//! `TraceService/Export` gRPC method over cleartext HTTP/2. Bodies are decoded with the
//! official protobuf definitions (the `opentelemetry-proto` crate, generated from the
//! opentelemetry-proto repository), and every span is kept for the test to inspect.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use tokio::net::TcpListener;

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// One exported span, flattened out of its resource and scope.
#[derive(Clone, Debug)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub kind: SpanKind,
    /// Lowercase hex, as in `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: Vec<(String, String)>,
    /// `status.code`: 0 unset, 1 ok, 2 error.
    pub status: i32,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    spans: Mutex<Vec<Span>>,
    exports: AtomicUsize,
    /// Content types the exports arrived with.
    content_types: Mutex<Vec<String>>,
}

/// A running collector; stops on Drop.
pub struct Collector {
    pub addr: SocketAddr,
    grpc: bool,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    /// OTLP/HTTP with protobuf bodies.
    pub async fn http() -> Collector {
        Self::start(false).await
    }

    /// OTLP/gRPC.
    pub async fn grpc() -> Collector {
        Self::start(true).await
    }

    async fn start(grpc: bool) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    if grpc {
                        let svc = hyper::service::service_fn(move |r| grpc_export(st.clone(), r));
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let svc = hyper::service::service_fn(move |r| http_export(st.clone(), r));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        Collector {
            addr,
            grpc,
            state,
            task,
        }
    }

    /// The `tracing.endpoint` to configure.
    pub fn endpoint(&self) -> String {
        if self.grpc {
            format!("http://{}", self.addr)
        } else {
            format!("http://{}/v1/traces", self.addr)
        }
    }

    /// `[tracing]` for this collector, with a short batch delay.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[tracing]\nprotocol = \"{}\"\nendpoint = \"{}\"\nbatch_delay = \"100ms\"\n{extra}\n",
            if self.grpc { "grpc" } else { "http/protobuf" },
            self.endpoint()
        )
    }

    pub fn spans(&self) -> Vec<Span> {
        self.state.spans.lock().unwrap().clone()
    }

    pub fn exports(&self) -> usize {
        self.state.exports.load(Ordering::SeqCst)
    }

    pub fn content_types(&self) -> Vec<String> {
        self.state.content_types.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until `done` holds for the spans received so far.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("collector: {what} not seen within 10 s; got {spans:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn value_string(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn record(st: &State, req: ExportTraceServiceRequest) {
    let mut out = st.spans.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .map(|a| value_string(&a.value))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Span {
                    service: service.clone(),
                    name: s.name.clone(),
                    kind: SpanKind::try_from(s.kind).unwrap_or(SpanKind::Unspecified),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    attributes: s
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), value_string(&a.value)))
                        .collect(),
                    status: s.status.map(|x| x.code).unwrap_or(0),
                });
            }
        }
    }
    st.exports.fetch_add(1, Ordering::SeqCst);
}

fn content_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn http_export(
    st: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let ct = content_type(&req);
    let ok = req.method() == "POST" && req.uri().path() == "/v1/traces";
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let reply = |status: u16, body: Vec<u8>| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    };
    let (true, Ok(body)) = (ok, body) else {
        return reply(404, Vec::new());
    };
    st.content_types.lock().unwrap().push(ct.clone());
    if ct != "application/x-protobuf" {
        return reply(415, Vec::new());
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(r) => {
            record(&st, r);
            reply(200, ExportTraceServiceResponse::default().encode_to_vec())
        }
        Err(_) => reply(400, Vec::new()),
    }
}

type GrpcBody =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// gRPC over HTTP/2: a length-prefixed message in, a length-prefixed message and a
/// `grpc-status` trailer out.
async fn grpc_export(
    st: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<GrpcBody>, Infallible> {
    let ct = content_type(&req);
    let path_ok = req.uri().path() == GRPC_PATH;
    let compressed = req.headers().contains_key("grpc-encoding");
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let status = match (path_ok, body) {
        (true, Ok(mut b)) if b.len() >= 5 && !compressed && b[0] == 0 => {
            st.content_types.lock().unwrap().push(ct);
            b.advance(1);
            let len = b.get_u32() as usize;
            match (b.len() == len).then(|| ExportTraceServiceRequest::decode(b)) {
                Some(Ok(r)) => {
                    record(&st, r);
                    "0"
                }
                _ => "13",
            }
        }
        (false, _) => "12",
        _ => "13",
    };
    let msg = ExportTraceServiceResponse::default().encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(status));
    let frames = vec![
        Ok(Frame::data(Bytes::from(framed))),
        Ok(Frame::trailers(trailers)),
    ];
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap())
}
