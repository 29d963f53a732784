//! OpenTelemetry on the real binary, exporting to a test collector that decodes OTLP
//! with the official protobuf definitions (tests/common/otlp.rs): the request span and
//! its children for the token service, JWKS and introspection; `traceparent` continued
//! from the client and sent on to the backend and the token service; sampling; both
//! transports; no secret in any attribute; off by default.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::mock::{self, Answer, JwksServer, MockServer, Req};
use common::otlp::{Collector, Span};
use common::token_service::TokenService;
use common::*;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::{json, Value};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(flags: &str) -> String {
    format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-{flags}")
}

/// `(trace id, parent id, flags)` of a `traceparent` value.
fn parse_tp(v: &str) -> (String, String, String) {
    let p: Vec<&str> = v.split('-').collect();
    assert_eq!(p.len(), 4, "traceparent {v}");
    assert_eq!(p[0], "00", "traceparent {v}");
    (p[1].into(), p[2].into(), p[3].into())
}

fn rs1_jwk() -> Value {
    let v: Value = serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
    v["keys"][0].clone()
}

/// No attribute value of any span contains any of `secrets`.
fn assert_no_secrets(spans: &[Span], secrets: &[&str]) {
    for s in spans {
        for (k, v) in &s.attributes {
            for secret in secrets {
                assert!(
                    !v.contains(secret),
                    "span {} attribute {k} carries a secret: {v}",
                    s.name
                );
            }
            assert!(
                !v.contains('?'),
                "span {} attribute {k} carries a query string: {v}",
                s.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_request_is_one_trace_from_the_client_through_the_token_service_to_the_backend()
{
    bounded(async {
        let collector = Collector::http().await;
        let jwks = JwksServer::start(vec![rs1_jwk()]).await;
        let jwks_url = jwks.url();
        let otel = collector.config("");
        let Rig {
            backend,
            ts,
            sc,
            jwks: _jwks,
            ..
        } = Rig::builder()
            .token_service(TokenService::start(API_KEY).await)
            .jwks(jwks)
            .lifecycle(|_| {})
            .cfg(move |c| {
                c.auth("algorithms", r#"["HS256", "RS256"]"#)
                    .auth("jwks_url", &q(&jwks_url))
                    .auth("jwks_timeout", "\"1s\"")
                    .route("prefix = \"/api\"")
                    .extra(&otel)
            })
            .start()
            .await;
        let old = ts.expired_pair("alice");
        let r = send(
            client()
                .get(sc.url("/api/rooms/7?cursor=abc"))
                .bearer_auth(&old.access)
                .header("x-refresh-token", &old.refresh)
                .header("traceparent", traceparent("01"))
                .header("tracestate", "vendor=opaque1"),
        )
        .await;
        let echo = r.ok_echo();
        let new_access = r
            .header("x-auth-access-token")
            .expect("a renewed pair")
            .to_string();
        let new_refresh = r
            .header("x-auth-refresh-token")
            .expect("a renewed pair")
            .to_string();

        // The backend's parent is the sidecar's span, in the client's trace.
        let (b_trace, b_parent, b_flags) = parse_tp(
            echo.header("traceparent")
                .expect("the backend gets a traceparent"),
        );
        assert_eq!(b_trace, CLIENT_TRACE);
        assert_ne!(
            b_parent, CLIENT_SPAN,
            "the sidecar's own span is the parent"
        );
        assert_eq!(b_flags, "01");
        assert_eq!(echo.header("tracestate"), Some("vendor=opaque1"));
        assert_eq!(echo.header_all("traceparent").len(), 1);

        // The token service's parent is the refresh span, in the same trace.
        let call = ts.last_refresh().expect("a refresh call");
        let (t_trace, t_parent, _) = parse_tp(
            call.header("traceparent")
                .expect("the token service gets a traceparent"),
        );
        assert_eq!(t_trace, CLIENT_TRACE);

        let spans = collector
            .wait_for("the request and refresh spans", |s| {
                s.iter()
                    .any(|x| x.trace_id == CLIENT_TRACE && x.kind == SpanKind::Server)
                    && s.iter()
                        .any(|x| x.trace_id == CLIENT_TRACE && x.name == "refresh")
            })
            .await;
        let server = spans
            .iter()
            .find(|x| x.trace_id == CLIENT_TRACE && x.kind == SpanKind::Server)
            .unwrap();
        assert_eq!(server.service, "auth-sidecar");
        assert_eq!(
            server.parent_span_id, CLIENT_SPAN,
            "continued from the client"
        );
        assert_eq!(
            server.span_id, b_parent,
            "the backend's parent is the request span"
        );
        assert_eq!(server.name, "GET /api");
        assert_eq!(server.attr("http.request.method"), Some("GET"));
        assert_eq!(server.attr("http.response.status_code"), Some("200"));
        assert_eq!(server.attr("http.route"), Some("/api"));
        assert_eq!(server.attr("url.path"), Some("/api/rooms/7"));
        assert_eq!(server.attr("auth_sidecar.decision"), Some("refreshed"));
        assert_eq!(server.attr("enduser.id"), Some("alice"));
        assert_eq!(server.status, 0, "a 200 is not an error");

        let refresh = spans
            .iter()
            .find(|x| x.trace_id == CLIENT_TRACE && x.name == "refresh")
            .unwrap();
        assert_eq!(refresh.kind, SpanKind::Client);
        assert_eq!(
            refresh.parent_span_id, server.span_id,
            "a child of the request"
        );
        assert_eq!(refresh.span_id, t_parent, "the token service's parent");
        assert_eq!(refresh.attr("http.request.method"), Some("POST"));
        assert_eq!(refresh.attr("http.response.status_code"), Some("200"));
        assert_eq!(refresh.attr("server.address"), Some("127.0.0.1"));

        // The JWKS fetched at start is a root client span of its own.
        let spans = collector
            .wait_for("a JWKS span with its answer", |s| {
                s.iter()
                    .any(|x| x.name == "jwks" && x.attr("http.response.status_code") == Some("200"))
            })
            .await;
        let j = spans.iter().find(|x| x.name == "jwks").unwrap();
        assert_eq!(j.kind, SpanKind::Client);
        assert_eq!(
            j.parent_span_id, "",
            "a background fetch starts its own trace"
        );

        assert_no_secrets(
            &spans,
            &[
                &old.access,
                &old.refresh,
                &new_access,
                &new_refresh,
                API_KEY,
            ],
        );
        assert!(
            collector
                .content_types()
                .iter()
                .all(|c| c == "application/x-protobuf"),
            "{:?}",
            collector.content_types()
        );
        assert_eq!(backend.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_new_traces_and_a_refusal_recorded_without_an_error_status() {
    bounded(async {
        let collector = Collector::grpc().await;
        let otel = collector.config("continue_incoming = false");
        let Rig { backend, sc, .. } = Rig::start_with(|c| c.extra(&otel)).await;

        // No traceparent: the sidecar starts the trace and sends it on.
        let r = send(client().get(sc.url("/api/a")).bearer_auth(valid())).await;
        let (trace, parent, flags) =
            parse_tp(r.ok_echo().header("traceparent").expect("a traceparent"));
        assert_eq!(flags, "01");
        // continue_incoming = false: a client's traceparent is not followed.
        let r = send(
            client()
                .get(sc.url("/api/b"))
                .bearer_auth(valid())
                .header("traceparent", traceparent("01"))
                .header("tracestate", "vendor=x"),
        )
        .await;
        let echo = r.ok_echo();
        let (trace_b, _, _) = parse_tp(echo.header("traceparent").unwrap());
        assert_ne!(trace_b, CLIENT_TRACE);
        assert_eq!(
            echo.header("tracestate"),
            None,
            "the client's tracestate is dropped too"
        );
        // A refusal.
        let bad = valid().replace('.', ".x");
        let r = send(client().get(sc.url("/api/c")).bearer_auth(&bad)).await;
        assert_eq!(r.status, 401);

        let spans = collector
            .wait_for("three request spans", |s| {
                s.iter().filter(|x| x.kind == SpanKind::Server).count() >= 3
            })
            .await;
        let a = spans.iter().find(|x| x.trace_id == trace).expect("span a");
        assert_eq!(a.span_id, parent);
        assert_eq!(a.parent_span_id, "", "a root span");
        let b = spans
            .iter()
            .find(|x| x.trace_id == trace_b)
            .expect("span b");
        assert_eq!(b.parent_span_id, "", "not a child of the client's span");
        assert!(spans.iter().all(|x| x.trace_id != CLIENT_TRACE));
        let c = spans
            .iter()
            .find(|x| x.attr("url.path") == Some("/api/c"))
            .expect("span c");
        assert_eq!(c.attr("http.response.status_code"), Some("401"));
        assert_eq!(c.attr("auth_sidecar.error"), Some("invalid_token"));
        assert_eq!(c.attr("enduser.id"), None);
        assert_eq!(
            c.status, 0,
            "a 401 is the sidecar doing its job, not an error"
        );
        assert_no_secrets(&spans, &[&valid(), &bad]);
        assert_eq!(backend.count(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_ratio_for_new_traces_and_the_callers_decision_otherwise() {
    bounded(async {
        let collector = Collector::http().await;
        let otel = collector.config("sample_ratio = 0.0\nparent_based = true");
        let Rig {
            sc, backend: _b, ..
        } = Rig::start_with(|c| c.extra(&otel)).await;

        // A new trace at ratio 0: not exported, but the backend still gets the trace
        // (unsampled), so it follows the same decision.
        let r = send(client().get(sc.url("/api/new")).bearer_auth(valid())).await;
        let (_, _, flags) = parse_tp(r.ok_echo().header("traceparent").unwrap());
        assert_eq!(flags, "00");
        // The caller says "not sampled".
        let r = send(
            client()
                .get(sc.url("/api/unsampled"))
                .bearer_auth(valid())
                .header(
                    "traceparent",
                    format!("00-{}-{CLIENT_SPAN}-00", "1".repeat(32)),
                ),
        )
        .await;
        let (t, _, flags) = parse_tp(r.ok_echo().header("traceparent").unwrap());
        assert_eq!(
            (t.as_str(), flags.as_str()),
            ("1".repeat(32).as_str(), "00")
        );
        // The caller says "sampled": exported despite ratio 0.
        let r = send(
            client()
                .get(sc.url("/api/sampled"))
                .bearer_auth(valid())
                .header("traceparent", traceparent("01")),
        )
        .await;
        let (_, _, flags) = parse_tp(r.ok_echo().header("traceparent").unwrap());
        assert_eq!(flags, "01");

        collector
            .wait_for("the sampled span", |s| {
                s.iter().any(|x| x.trace_id == CLIENT_TRACE)
            })
            .await;
        // Spans are exported in the order they end; give a later batch time anyway.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let spans = collector.spans();
        assert_eq!(
            spans.len(),
            1,
            "only the sampled trace is exported: {spans:#?}"
        );
        assert_eq!(spans[0].attr("url.path"), Some("/api/sampled"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_calls_are_child_spans_and_neither_token_nor_client_secret_is_recorded() {
    bounded(async {
        const SECRET: &str = "otel-introspection-client-secret-77";
        let handler: mock::Handler = Arc::new(|r: &Req| {
            if r.form("token").is_some_and(|t| t.starts_with("opaque-active-")) {
                Answer::json(
                    200,
                    &json!({"active": true, "sub": "u1", "exp": now() + 300}),
                )
            } else {
                Answer::json(200, &json!({"active": false}))
            }
        });
        let intro = MockServer::start(handler).await;
        let collector = Collector::http().await;
        let otel = collector.config("");
        let intro_url = intro.url("/introspect");
        let Rig {
            sc, backend: _b, ..
        } = Rig::builder()
            .env("OTEL_TEST_INTRO_SECRET", SECRET)
            .cfg(move |c| {
                c.extra(&format!(
                    "[introspection]\nurl = {}\nclient_id = \"sc\"\n\
                     client_secret = {{ env = \"OTEL_TEST_INTRO_SECRET\" }}\ntimeout = \"1s\"\n{otel}",
                    q(&intro_url)
                ))
            })
            .start()
            .await;
        let token = "opaque-active-5d1e0c77aa";
        let r = send(
            client()
                .get(sc.url("/api/me"))
                .bearer_auth(token)
                .header("traceparent", traceparent("01")),
        )
        .await;
        assert_eq!(r.ok_echo().header("x-auth-user-id"), Some("u1"));
        let (t, p, _) = parse_tp(
            intro.requests()[0]
                .header("traceparent")
                .expect("the introspection endpoint gets a traceparent"),
        );
        assert_eq!(t, CLIENT_TRACE);
        let spans = collector
            .wait_for("the introspection span", |s| {
                s.iter().any(|x| x.name == "introspection")
                    && s.iter().any(|x| x.kind == SpanKind::Server)
            })
            .await;
        let server = spans.iter().find(|x| x.kind == SpanKind::Server).unwrap();
        let child = spans.iter().find(|x| x.name == "introspection").unwrap();
        assert_eq!(child.parent_span_id, server.span_id);
        assert_eq!(child.span_id, p);
        assert_eq!(child.trace_id, CLIENT_TRACE);
        assert_no_secrets(&spans, &[token, SECRET, "b3RlbC"]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tracing_the_trace_headers_pass_through_and_a_dead_collector_costs_no_request() {
    bounded(async {
        // Off (the default): the client's trace headers reach the backend as sent.
        let Rig {
            sc, backend: _b, ..
        } = Rig::start_with(|c| c).await;
        let r = send(
            client()
                .get(sc.url("/api/x"))
                .bearer_auth(valid())
                .header("traceparent", traceparent("01"))
                .header("tracestate", "vendor=v"),
        )
        .await;
        let echo = r.ok_echo();
        assert_eq!(echo.header("traceparent"), Some(traceparent("01").as_str()));
        assert_eq!(echo.header("tracestate"), Some("vendor=v"));

        // A collector that refuses connections: every request still succeeds.
        let dead = format!("http://{}/v1/traces", refusing_addr());
        let Rig { backend, sc, .. } = Rig::start_with(move |c| {
            c.extra(&format!(
                "[tracing]\nendpoint = {}\nbatch_delay = \"50ms\"\ntimeout = \"200ms\"\n",
                q(&dead)
            ))
        })
        .await;
        for i in 0..50 {
            let r = send(
                client()
                    .get(sc.url(&format!("/api/{i}")))
                    .bearer_auth(valid()),
            )
            .await;
            assert_eq!(r.status, 200, "request {i} with the collector down");
        }
        assert_eq!(backend.count(), 50);
    })
    .await
}
