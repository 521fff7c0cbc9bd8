//! OpenTelemetry traces: one server span per proxied request, exported with OTLP/HTTP
//! (protobuf) to a collector, so a trace crosses the proxy.
//!
//! Off unless `server.otlp` is set. When it is, the proxy builds one [`RequestTracer`] at
//! start-up and, per request:
//!
//! 1. [`RequestTracer::start`] opens a `SERVER` span. A valid W3C `traceparent` from the client
//!    makes it a child of the client's span (same trace id, parent-based sampling: a sampled
//!    parent is always traced, an unsampled one never); without one the span is a new root,
//!    sampled with `sample_ratio`.
//! 2. [`RequestSpan::traceparent`] is the header to send upstream instead of the client's: same
//!    trace id, parent = the proxy's span, so the backend's spans nest under the proxy's. It
//!    carries the sampling decision too (flags `00` for a span that is not sampled), so a backend
//!    that samples by its parent keeps or drops the same traces as the proxy.
//! 3. [`RequestSpan::finish`] records the outcome (status code, route, upstream, backend,
//!    request id, error) and ends the span.
//!
//! Ended spans go into a bounded queue (2048 spans, `OTEL_BSP_MAX_QUEUE_SIZE`) that the SDK's
//! batch processor drains on its own thread; when the queue is full, spans are dropped: a
//! request never waits for the exporter. Batches are POSTed to `{endpoint}/v1/traces` as
//! protobuf over plain HTTP/1.1 by a small hyper client that runs on a dedicated
//! single-threaded Tokio runtime (the batch thread has no runtime of its own). TLS is not
//! supported: point `endpoint` at a collector on loopback or in a sidecar.
//!
//! A span that is not sampled costs the sampling decision and its `traceparent`, nothing else:
//! no attributes are built and nothing is queued.
//!
//! This module owns the tracer and its config check; `span.rs` the request's span,
//! `propagation.rs` the W3C headers (through the SDK's propagator), `export.rs` the OTLP client.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use http::{HeaderValue, Method, Uri};
use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};

mod export;
mod propagation;
mod span;

use crate::config::OtlpConfig;
use export::{ExportClient, ReportingExporter};
pub use span::{RequestSpan, SpanEnd};

/// The W3C trace context request headers.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// How long one export (one POST, retries included) may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`RequestTracer::shutdown`] waits for the last batch.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a partial batch is sent, unless `OTEL_BSP_SCHEDULE_DELAY` says otherwise.
const SCHEDULE_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A `server.otlp` setting is invalid; `field` is its path in the config.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("cannot start the OTLP exporter: {0}")]
    Exporter(String),
}

/// Checks `config` without starting anything; returns the URL spans are POSTed to. Config
/// validation can call this to report a bad setting before the proxy starts.
pub fn validate(config: &OtlpConfig) -> Result<Uri, TelemetryError> {
    let invalid = |field: &'static str, message: String| TelemetryError::Invalid { field, message };
    if !(0.0..=1.0).contains(&config.sample_ratio) {
        return Err(invalid(
            "server.otlp.sample_ratio",
            format!("must be between 0.0 and 1.0, got {}", config.sample_ratio),
        ));
    }
    if config.service_name.trim().is_empty() {
        return Err(invalid(
            "server.otlp.service_name",
            "must not be empty".to_owned(),
        ));
    }
    let endpoint = |reason: &str| {
        invalid(
            "server.otlp.endpoint",
            format!("`{}` {reason}", config.endpoint),
        )
    };
    let base: Uri = config
        .endpoint
        .parse()
        .map_err(|error: http::uri::InvalidUri| endpoint(&format!("is not a URL: {error}")))?;
    match base.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(endpoint(
                "uses https, which is not supported: use a collector on loopback or a sidecar over http://",
            ));
        }
        _ => {
            return Err(endpoint(
                "is not an http:// URL, like http://127.0.0.1:4318",
            ));
        }
    }
    if base.host().is_none_or(str::is_empty) {
        return Err(endpoint("has no host"));
    }
    if base.query().is_some() {
        return Err(endpoint(
            "has a query string; it is a base URL, /v1/traces is appended to it",
        ));
    }
    let traces = format!("{}/v1/traces", config.endpoint.trim_end_matches('/'));
    traces
        .parse()
        .map_err(|error: http::uri::InvalidUri| endpoint(&format!("is not a URL: {error}")))
}

/// Builds request spans and exports them. Built once at start-up; clones share the exporter.
#[derive(Clone, Debug)]
pub struct RequestTracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl RequestTracer {
    /// Starts the exporter (a batch thread and a one-thread HTTP runtime) for `config`. Nothing
    /// is sent until the first span ends; an unreachable collector is not an error here.
    pub fn new(config: &OtlpConfig) -> Result<Self, TelemetryError> {
        let traces_url = validate(config)?;
        let client = ExportClient::start(EXPORT_TIMEOUT)
            .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces_url.to_string())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
        let exporter = ReportingExporter {
            inner: exporter,
            endpoint: traces_url.to_string(),
            failing: AtomicBool::new(false),
        };
        // The defaults read OTEL_BSP_* (queue 2048, batch 512); only the delay differs.
        let mut batch = BatchConfigBuilder::default();
        if std::env::var_os("OTEL_BSP_SCHEDULE_DELAY").is_none() {
            batch = batch.with_scheduled_delay(SCHEDULE_DELAY);
        }
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch.build())
            .build();
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("strangler")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        Ok(Self { provider, tracer })
    }

    /// Opens the proxy's server span for one request: a child of the client's span when
    /// `traceparent` is valid (with `tracestate` carried along), else the root of a new trace.
    pub fn start(
        &self,
        method: &Method,
        path: &str,
        traceparent: Option<&HeaderValue>,
        tracestate: Option<&HeaderValue>,
    ) -> RequestSpan {
        let method = span::method_name(method);
        let parent = propagation::extract(traceparent, tracestate).unwrap_or_default();
        let builder = self
            .tracer
            .span_builder(method.clone())
            .with_kind(SpanKind::Server);
        let mut span = self.tracer.build_with_context(builder, &parent);
        if span.is_recording() {
            span.set_attribute(KeyValue::new("http.request.method", method.clone()));
            span.set_attribute(KeyValue::new("url.path", path.to_owned()));
        }
        RequestSpan { span, method }
    }

    /// Exports what is queued and stops the exporter, waiting at most 2 s. Call once, when
    /// no more requests will finish (spans ended after this are dropped). Blocks the caller.
    pub fn shutdown(&self) {
        match self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            Ok(()) | Err(opentelemetry_sdk::error::OTelSdkError::AlreadyShutdown) => {}
            Err(error) => tracing::warn!(%error, "OTLP: spans queued at shutdown may be lost"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
    use prost::Message;

    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::Full;

    use super::*;
    use crate::telemetry::propagation::tests::parse_traceparent;
    use crate::vocabulary::Reason;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    fn config(endpoint: &str, sample_ratio: f64) -> OtlpConfig {
        OtlpConfig {
            endpoint: endpoint.to_owned(),
            service_name: "strangler-test".to_owned(),
            sample_ratio,
        }
    }

    #[test]
    fn validates_the_config() {
        assert_eq!(
            validate(&config("http://127.0.0.1:4318", 1.0)).unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            validate(&config("http://collector:4318/otlp/", 0.5)).unwrap(),
            "http://collector:4318/otlp/v1/traces"
        );
        for (bad, ratio) in [
            ("https://collector:4318", 1.0),
            ("collector:4318", 1.0),
            ("http://", 1.0),
            ("http://collector:4318?x=1", 1.0),
            ("http://collector:4318", 1.5),
            ("http://collector:4318", -0.1),
            ("http://collector:4318", f64::NAN),
        ] {
            assert!(validate(&config(bad, ratio)).is_err(), "{bad} {ratio}");
        }
        let error = RequestTracer::new(&config("https://c:4318", 1.0)).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("server.otlp.endpoint: `https://c:4318` uses https"),
            "{error}"
        );
    }

    #[test]
    fn a_valid_parent_makes_a_child_in_the_same_trace() {
        // Nothing listens there: spans are queued and dropped, which is fine for this test.
        let tracer = RequestTracer::new(&config("http://127.0.0.1:9", 0.0)).unwrap();
        let span = tracer.start(
            &Method::GET,
            "/x",
            Some(&header(&format!("00-{TRACE}-{PARENT}-01"))),
            Some(&header("vendor=abc")),
        );
        // A sampled parent is traced whatever the ratio.
        assert!(span.is_recording());
        let sent = span.traceparent().unwrap();
        let (trace, own, flags) = parse_traceparent(sent.as_bytes()).unwrap();
        assert_eq!(format!("{trace:032x}"), TRACE);
        assert_ne!(format!("{own:016x}"), PARENT);
        assert!(flags.is_sampled());
        assert_eq!(span.trace_id(), Some(trace));
        span.finish(&SpanEnd::default());

        // An unsampled parent is not traced, and the decision goes upstream.
        let span = tracer.start(
            &Method::GET,
            "/x",
            Some(&header(&format!("00-{TRACE}-{PARENT}-00"))),
            None,
        );
        assert!(!span.is_recording());
        assert_eq!(span.trace_id(), None);
        let sent = span.traceparent().unwrap();
        let (trace, _, flags) = parse_traceparent(sent.as_bytes()).unwrap();
        assert_eq!(format!("{trace:032x}"), TRACE);
        assert!(!flags.is_sampled());
        tracer.shutdown();
        // After shutdown, spans are neither recorded nor propagated.
        let span = tracer.start(&Method::GET, "/", None, None);
        assert!(!span.is_recording());
        assert!(span.traceparent().is_none());
    }

    #[test]
    fn no_or_invalid_parent_starts_a_new_trace() {
        let tracer = RequestTracer::new(&config("http://127.0.0.1:9", 1.0)).unwrap();
        let mut traces = Vec::new();
        for incoming in [
            None,
            Some(header("00-bad")),
            Some(header(&format!("ff-{TRACE}-{PARENT}-01"))),
        ] {
            let span = tracer.start(&Method::POST, "/y", incoming.as_ref(), None);
            let sent = span
                .traceparent()
                .expect("a root span is sampled at ratio 1.0");
            let (trace, _, flags) = parse_traceparent(sent.as_bytes()).unwrap();
            assert_ne!(format!("{trace:032x}"), TRACE);
            assert!(flags.is_sampled());
            traces.push(trace);
        }
        traces.dedup();
        assert_eq!(traces.len(), 3, "each request is its own trace");

        // At ratio 0, a root is never traced; its trace goes upstream marked unsampled.
        let tracer = RequestTracer::new(&config("http://127.0.0.1:9", 0.0)).unwrap();
        let span = tracer.start(&Method::GET, "/", None, None);
        assert!(!span.is_recording());
        let sent = span.traceparent().unwrap();
        let (trace, _, flags) = parse_traceparent(sent.as_bytes()).unwrap();
        assert_ne!(format!("{trace:032x}"), TRACE);
        assert!(!flags.is_sampled());
        span.finish(&SpanEnd::default());
    }

    /// A loopback OTLP/HTTP collector that decodes every `POST /v1/traces` body.
    struct Collector {
        address: SocketAddr,
        spans: Arc<Mutex<Vec<Received>>>,
    }

    type KeyValuePair = (String, String);
    /// A span with its resource's attributes.
    type Received = (Vec<KeyValuePair>, ProtoSpan);

    fn string_attributes(
        attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    ) -> Vec<KeyValuePair> {
        attributes
            .iter()
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    Some(any_value::Value::IntValue(i)) => i.to_string(),
                    Some(any_value::Value::BoolValue(b)) => b.to_string(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), value)
            })
            .collect()
    }

    impl Collector {
        async fn start() -> Collector {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let spans = Arc::new(Mutex::new(Vec::new()));
            let log = spans.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let log = log.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request: http::Request<Incoming>| {
                            let log = log.clone();
                            async move {
                                assert_eq!(request.uri().path(), "/v1/traces");
                                assert_eq!(request.method(), Method::POST);
                                assert_eq!(
                                    request.headers()["content-type"],
                                    "application/x-protobuf"
                                );
                                let body = request.into_body().collect().await.unwrap().to_bytes();
                                let export = ExportTraceServiceRequest::decode(body).unwrap();
                                for resource in export.resource_spans {
                                    let resource_attributes = resource
                                        .resource
                                        .map(|r| string_attributes(&r.attributes))
                                        .unwrap_or_default();
                                    for scope in resource.scope_spans {
                                        for span in scope.spans {
                                            log.lock()
                                                .unwrap()
                                                .push((resource_attributes.clone(), span));
                                        }
                                    }
                                }
                                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Collector { address, spans }
        }

        async fn wait_for(&self, count: usize) -> Vec<Received> {
            let started = Instant::now();
            loop {
                let spans = self.spans.lock().unwrap().clone();
                if spans.len() >= count {
                    return spans;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "the collector received {} of {count} spans",
                    spans.len()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    fn attribute<'a>(attributes: &'a [KeyValuePair], key: &str) -> Option<&'a str> {
        attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_reach_the_collector() {
        let collector = Collector::start().await;
        let tracer =
            RequestTracer::new(&config(&format!("http://{}", collector.address), 1.0)).unwrap();

        let child = tracer.start(
            &Method::GET,
            "/api/orders/7",
            Some(&header(&format!("00-{TRACE}-{PARENT}-01"))),
            None,
        );
        let sent = child.traceparent().unwrap();
        child.finish(&SpanEnd {
            status: 200,
            route: "orders",
            upstream: "orders-v2",
            backend: Some("127.0.0.1:9002".parse().unwrap()),
            request_id: "req-1",
            error: None,
            fallback: false,
        });
        // Exported by the batch processor's timer, without a flush.
        let spans = collector.wait_for(1).await;
        let (resource, span) = &spans[0];
        assert_eq!(attribute(resource, "service.name"), Some("strangler-test"));
        assert_eq!(hex(&span.trace_id), TRACE);
        assert_eq!(hex(&span.parent_span_id), PARENT);
        let (_, own, _) = parse_traceparent(sent.as_bytes()).unwrap();
        assert_eq!(hex(&span.span_id), format!("{own:016x}"));
        assert_eq!(span.name, "GET orders");
        assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
        let attributes = string_attributes(&span.attributes);
        for (key, value) in [
            ("http.request.method", "GET"),
            ("url.path", "/api/orders/7"),
            ("http.response.status_code", "200"),
            ("strangler.route", "orders"),
            ("strangler.upstream", "orders-v2"),
            ("strangler.backend", "127.0.0.1:9002"),
            ("strangler.request_id", "req-1"),
        ] {
            assert_eq!(attribute(&attributes, key), Some(value), "{key}");
        }
        assert_eq!(span.status.as_ref().map_or(0, |s| s.code), 0, "unset");

        // A proxy error: status Error with the reason; exported by shutdown's flush.
        let root = tracer.start(&Method::POST, "/broken", None, None);
        root.finish(&SpanEnd {
            status: 502,
            route: "broken",
            upstream: "gone",
            error: Some(Reason::ConnectRefused),
            ..SpanEnd::default()
        });
        let flushing = tracer.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || flushing.shutdown())
            .await
            .unwrap();
        assert!(started.elapsed() <= Duration::from_secs(3));
        let spans = collector.wait_for(2).await;
        let (_, span) = &spans[1];
        assert!(span.parent_span_id.is_empty(), "a root span");
        assert_ne!(hex(&span.trace_id), TRACE);
        let status = span.status.as_ref().unwrap();
        assert_eq!(status.code, 2, "STATUS_CODE_ERROR");
        assert_eq!(status.message, "connect_refused");
        let attributes = string_attributes(&span.attributes);
        assert_eq!(
            attribute(&attributes, "error.type"),
            Some("connect_refused")
        );
        assert_eq!(
            attribute(&attributes, "http.response.status_code"),
            Some("502")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_collector_never_blocks_and_shutdown_is_bounded() {
        // A port that accepts nothing (bound, then released).
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let tracer = RequestTracer::new(&config(&format!("http://{dead}"), 1.0)).unwrap();
        let started = Instant::now();
        for _ in 0..10_000 {
            let span = tracer.start(&Method::GET, "/", None, None);
            span.finish(&SpanEnd {
                status: 200,
                route: "r",
                upstream: "u",
                ..SpanEnd::default()
            });
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "10k spans took {:?}: the request path waited on the exporter",
            started.elapsed()
        );
        let started = Instant::now();
        tokio::task::spawn_blocking(move || tracer.shutdown())
            .await
            .unwrap();
        assert!(
            started.elapsed() <= Duration::from_secs(3),
            "shutdown took {:?}",
            started.elapsed()
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
