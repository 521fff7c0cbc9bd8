//! OpenTelemetry OTLP span export, end to end: a fake collector on loopback records what the
//! real proxy exports, and a backend records the `traceparent` the proxy sends it.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

use support::{Backend, ClientRequest, Proxy};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// One exported span with its resource's attributes.
#[derive(Debug, Clone)]
struct Exported {
    service_name: Option<String>,
    span: Span,
}

impl Exported {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }
}

/// A loopback OTLP/HTTP collector: decodes every protobuf `POST /v1/traces` and keeps the spans.
struct Collector {
    address: SocketAddr,
    spans: Arc<Mutex<Vec<Exported>>>,
    /// Requests that were not a protobuf POST to /v1/traces.
    strays: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let strays = Arc::new(Mutex::new(Vec::new()));
        let (log, stray_log) = (spans.clone(), strays.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (log, stray_log) = (log.clone(), stray_log.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (log, stray_log) = (log.clone(), stray_log.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            let protobuf = parts
                                .headers
                                .get("content-type")
                                .is_some_and(|v| v == "application/x-protobuf");
                            let decoded = body
                                .ok()
                                .filter(|_| {
                                    parts.method == "POST"
                                        && parts.uri.path() == "/v1/traces"
                                        && protobuf
                                })
                                .and_then(|b| ExportTraceServiceRequest::decode(b).ok());
                            let Some(export) = decoded else {
                                stray_log
                                    .lock()
                                    .unwrap()
                                    .push(format!("{} {}", parts.method, parts.uri));
                                return Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(400)
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                );
                            };
                            let mut log = log.lock().unwrap();
                            for resource in export.resource_spans {
                                let service_name = resource
                                    .resource
                                    .as_ref()
                                    .and_then(|r| attribute(&r.attributes, "service.name"));
                                for scope in resource.scope_spans {
                                    log.extend(scope.spans.into_iter().map(|span| Exported {
                                        service_name: service_name.clone(),
                                        span,
                                    }));
                                }
                            }
                            Ok(Response::builder()
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(Bytes::new()))
                                .unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector {
            address,
            spans,
            strays,
            task,
        }
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (bounded by [`DEADLINE`]) for a span of trace `trace_id` and returns it.
    async fn wait_for_trace(&self, trace_id: &str, proxy: &Proxy) -> Exported {
        let what = format!("a span of trace {trace_id}");
        support::eventually(&what, || async {
            match self.spans().into_iter().find(|s| s.trace_id() == trace_id) {
                Some(span) => Ok(span),
                None => Err(format!(
                    "received {:?}, strays {:?}\nproxy stderr:\n{}",
                    self.spans(),
                    self.strays.lock().unwrap(),
                    proxy.stderr()
                )),
            }
        })
        .await
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    Some(match value.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `00-<trace>-<parent>-<flags>` → (trace, parent, flags).
fn split_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {value}");
    assert_eq!(parts[0], "00", "{value}");
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

/// Starts the proxy on `config` with `server.otlp` pointing at `collector`.
async fn start(config: &str, collector: &Collector, otlp_extra: &str) -> Proxy {
    start_with_env(config, collector, otlp_extra, &[]).await
}

async fn start_with_env(
    config: &str,
    collector: &Collector,
    otlp_extra: &str,
    env: &[(&str, &str)],
) -> Proxy {
    let otlp = format!(
        "  otlp:\n    endpoint: \"http://{}\"\n    service_name: strangler-e2e\n{otlp_extra}",
        collector.address
    );
    let mut proxy = Proxy::with(config).server(&otlp);
    for (name, value) in env {
        proxy = proxy.env(name, value);
    }
    proxy.env("RUST_LOG", "warn").start().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_crosses_the_proxy() {
    let collector = Collector::start().await;
    let backend = Backend::start("b").await;
    let candidate = Backend::start("c").await;
    let proxy = start(
        &format!(
            "upstreams:\n  u: {{ backends: [{}] }}\n  c: {{ backends: [{}] }}\ndefault_upstream: u\nroutes:\n  - {{ name: api, match: {{ path_prefix: /api }}, shadow: {{ upstream: c }} }}\n",
            backend.address, candidate.address
        ),
        &collector,
        "",
    )
    .await;

    let response = proxy
        .send(
            ClientRequest::get("/api/orders?id=7")
                .header("traceparent", &format!("00-{TRACE}-{CLIENT_SPAN}-01"))
                .header("tracestate", "vendor=abc"),
        )
        .await;
    assert_eq!(response.status, 200);

    // (b) The backend's parent is the proxy's span, in the client's trace.
    let received = backend.last();
    let sent = received
        .header("traceparent")
        .expect("the backend received a traceparent");
    let (trace, parent, flags) = split_traceparent(sent);
    assert_eq!(trace, TRACE, "same trace");
    assert_ne!(parent, CLIENT_SPAN, "the proxy's own span is the parent");
    assert_eq!(flags, "01", "sampled");
    assert_eq!(received.header("tracestate"), Some("vendor=abc"));
    // The shadow copy continues under the proxy's span too, beside the backend.
    candidate.wait_for_requests(1).await;
    assert_eq!(candidate.last().header("traceparent"), Some(sent));
    assert_eq!(candidate.last().header("x-strangler-shadow"), Some("1"));

    // (a) The collector got the proxy's span: child of the client's span, parent of the backend's.
    let span = collector.wait_for_trace(TRACE, &proxy).await;
    assert_eq!(span.parent_span_id(), CLIENT_SPAN);
    assert_eq!(span.span_id(), parent);
    assert_eq!(span.service_name.as_deref(), Some("strangler-e2e"));
    assert_eq!(span.span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(span.span.trace_state, "vendor=abc");
    assert_eq!(
        span.attribute("http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(span.attribute("url.path").as_deref(), Some("/api/orders"));
    assert_eq!(
        span.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(span.attribute("strangler.route").as_deref(), Some("api"));
    assert_eq!(span.attribute("strangler.upstream").as_deref(), Some("u"));
    assert_eq!(
        span.attribute("strangler.backend"),
        Some(backend.address.to_string())
    );
    assert_eq!(
        span.attribute("strangler.request_id").as_deref(),
        response.header("x-request-id")
    );
    assert_ne!(span.span.status.map_or(0, |s| s.code), 2, "not an error");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_parent_start_their_own_trace_and_errors_are_marked() {
    let collector = Collector::start().await;
    let backend = Backend::start("b").await;
    let dead = support::dead_address();
    let proxy = start(
        &format!(
            "upstreams:\n  u: {{ backends: [{}] }}\n  gone: {{ backends: [{dead}], retries: 0 }}\ndefault_upstream: u\nroutes:\n  - {{ name: broken, match: {{ path_prefix: /broken }}, upstream: gone }}\n",
            backend.address
        ),
        &collector,
        "",
    )
    .await;

    // No traceparent, or an invalid one: a new root, which the backend continues.
    for incoming in [None, Some("00-not-a-valid-header-01")] {
        let mut request = ClientRequest::get("/plain");
        if let Some(value) = incoming {
            request = request.header("traceparent", value);
        }
        assert_eq!(proxy.send(request).await.status, 200);
        let sent = backend.last().header("traceparent").map(str::to_owned);
        let (trace, parent, _) = split_traceparent(sent.as_deref().expect("a traceparent"));
        let span = collector.wait_for_trace(&trace, &proxy).await;
        assert!(span.span.parent_span_id.is_empty(), "a root span");
        assert_eq!(span.span_id(), parent);
        assert_eq!(
            span.attribute("strangler.route").as_deref(),
            Some("default")
        );
    }

    // A proxy error: the span's status is Error, with the reason.
    let broken_trace = "0af7651916cd43dd8448eb211c80319c";
    let response = proxy
        .send(ClientRequest::get("/broken").header(
            "traceparent",
            &format!("00-{broken_trace}-b7ad6b7169203331-01"),
        ))
        .await;
    assert_eq!(response.status, 502);
    let span = collector.wait_for_trace(broken_trace, &proxy).await;
    assert_eq!(
        span.attribute("http.response.status_code").as_deref(),
        Some("502")
    );
    assert_eq!(span.attribute("strangler.route").as_deref(), Some("broken"));
    let status = span.span.status.clone().expect("a span status");
    assert_eq!(status.code, 2, "STATUS_CODE_ERROR: {status:?}");
    assert!(span.attribute("error.type").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_keeps_sampled_parents_and_passes_the_decision_on() {
    let collector = Collector::start().await;
    let backend = Backend::start("b").await;
    let proxy = start(
        &format!(
            "upstreams:\n  u: {{ backends: [{}] }}\ndefault_upstream: u\n",
            backend.address
        ),
        &collector,
        "    sample_ratio: 0.0\n",
    )
    .await;

    // Ratio 0: a request without a parent is not traced; the backend gets a new trace marked
    // unsampled, so it drops it too when it samples by its parent.
    assert_eq!(proxy.get("/root").await.status, 200);
    let sent = backend.last().header("traceparent").map(str::to_owned);
    let (trace, _, flags) = split_traceparent(sent.as_deref().expect("a traceparent"));
    assert_ne!(trace, TRACE);
    assert_eq!(flags, "00");
    // An unsampled parent is not traced either; the decision goes on in the same trace.
    proxy
        .send(
            ClientRequest::get("/unsampled")
                .header("traceparent", &format!("00-{TRACE}-{CLIENT_SPAN}-00")),
        )
        .await;
    let sent = backend.last().header("traceparent").map(str::to_owned);
    let (trace, _, flags) = split_traceparent(sent.as_deref().expect("a traceparent"));
    assert_eq!(trace, TRACE);
    assert_eq!(flags, "00");
    // A sampled parent is always traced. Spans leave in order, so once this one has arrived,
    // anything from the two requests above would have too.
    let sampled_trace = "0af7651916cd43dd8448eb211c80319c";
    proxy
        .send(ClientRequest::get("/sampled").header(
            "traceparent",
            &format!("00-{sampled_trace}-b7ad6b7169203331-01"),
        ))
        .await;
    collector.wait_for_trace(sampled_trace, &proxy).await;
    let spans = collector.spans();
    assert_eq!(spans.len(), 1, "only the sampled request: {spans:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_still_queued_at_shutdown_are_flushed() {
    let collector = Collector::start().await;
    let backend = Backend::start("b").await;
    // A batch delay of a minute: only the flush at exit can deliver the span in time.
    let proxy = start_with_env(
        &format!(
            "upstreams:\n  u: {{ backends: [{}] }}\ndefault_upstream: u\n",
            backend.address
        ),
        &collector,
        "  drain_timeout: 1s\n",
        &[("OTEL_BSP_SCHEDULE_DELAY", "60000")],
    )
    .await;
    proxy
        .send(
            ClientRequest::get("/last")
                .header("traceparent", &format!("00-{TRACE}-{CLIENT_SPAN}-01")),
        )
        .await;
    assert!(collector.spans().is_empty(), "exported before shutdown");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let span = collector.wait_for_trace(TRACE, &proxy).await;
    assert_eq!(span.parent_span_id(), CLIENT_SPAN);
}
