//! The admin listener: `/healthz` (alive), `/readyz` (config valid, keys loaded, backend
//! reachable, not draining) and `/metrics` (Prometheus text). Its own port, so the
//! proxy port never exposes them.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::body::ProxyBody;
use crate::proxy::State;

/// Shared process health flags.
#[derive(Default)]
pub struct Health {
    pub draining: AtomicBool,
}

pub async fn serve(
    listener: TcpListener,
    state: Arc<ArcSwap<State>>,
    health: Arc<Health>,
    prom: Option<PrometheusHandle>,
) {
    // No stop signal on purpose: the admin port stays up through the drain, so /readyz
    // answers 503 (draining) until the process exits.
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let (state, health, prom) = (state.clone(), health.clone(), prom.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (state, health, prom) = (state.clone(), health.clone(), prom.clone());
                async move { Ok::<_, Infallible>(route(req, &state, &health, prom.as_ref()).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn route(
    req: Request<Incoming>,
    state: &ArcSwap<State>,
    health: &Health,
    prom: Option<&PrometheusHandle>,
) -> Response<ProxyBody> {
    if crate::revoke::api::serves(req.uri().path()) {
        let st = state.load_full();
        return crate::revoke::api::handle(req, st.revocation.as_deref()).await;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let st = state.load_full();
            let mut problems = Vec::new();
            if health.draining.load(Ordering::Relaxed) {
                problems.push("draining");
            }
            if st.verifier.keys().is_empty() {
                problems.push("no verification keys loaded");
            }
            if st.jwks.as_ref().is_some_and(|j| !j.loaded()) {
                problems.push("jwks not loaded yet");
            }
            if st.cfg.admin.ready_requires_backend {
                let backend = st.forwarder.authority();
                let https = st.cfg.backend.scheme == http::uri::Scheme::HTTPS;
                if !crate::listen::reachable(backend, if https { 443 } else { 80 }).await {
                    problems.push("backend unreachable");
                }
            }
            if problems.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {}\n", problems.join(", ")),
                )
            }
        }
        "/metrics" => match prom {
            Some(p) => {
                let st = state.load();
                metrics::gauge!("auth_sidecar_verify_cache_entries")
                    .set(st.verifier.cache_size() as f64);
                let mut r = text(StatusCode::OK, &p.render());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            None => text(StatusCode::NOT_FOUND, "metrics recorder not installed\n"),
        },
        "/.well-known/jwks.json" => match &state.load().assertion {
            Some(a) => {
                let mut r = text(StatusCode::OK, &a.jwks());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/jwk-set+json"),
                );
                r
            }
            None => text(StatusCode::NOT_FOUND, "no assertion key configured\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
