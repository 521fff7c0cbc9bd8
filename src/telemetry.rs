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

use std::borrow::Cow;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};

use crate::config::OtlpConfig;
use crate::vocabulary::Reason;

/// The W3C trace context request headers.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// How long one export (one POST, retries included) may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`RequestTracer::shutdown`] waits for the last batch.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a partial batch is sent, unless `OTEL_BSP_SCHEDULE_DELAY` says otherwise.
const SCHEDULE_DELAY: Duration = Duration::from_secs(1);
/// A collector's answer is a few bytes; anything past this is refused.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

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
        let method = method_name(method);
        let parent = match traceparent.and_then(|value| parse_traceparent(value.as_bytes())) {
            Some((trace_id, span_id, flags)) => {
                let state = tracestate
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| TraceState::from_str(value).ok())
                    .unwrap_or_default();
                Context::new().with_remote_span_context(SpanContext::new(
                    trace_id, span_id, flags, true, state,
                ))
            }
            None => Context::new(),
        };
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

/// The proxy's span for one request. Ends (as it is) when dropped without [`finish`].
///
/// [`finish`]: RequestSpan::finish
#[derive(Debug)]
pub struct RequestSpan {
    span: opentelemetry_sdk::trace::Span,
    method: Cow<'static, str>,
}

/// How a request ended, for [`RequestSpan::finish`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanEnd<'a> {
    /// The status code sent to the client; 0 when no response was sent.
    pub status: u16,
    /// The matched route's name (`default` for the default upstream).
    pub route: &'a str,
    /// The upstream that served (or failed) the request.
    pub upstream: &'a str,
    /// The backend of the last attempt, if one was chosen.
    pub backend: Option<SocketAddr>,
    pub request_id: &'a str,
    /// Why the proxy refused or failed the request (`connect_refused`, `body_too_large`, ...).
    pub error: Option<Reason>,
    /// The route's fallback upstream served instead.
    pub fallback: bool,
}

impl RequestSpan {
    /// Whether this span is sampled and will be exported.
    pub fn is_recording(&self) -> bool {
        self.span.is_recording()
    }

    /// This span's trace id, when it is recorded (for access logs).
    pub fn trace_id(&self) -> Option<TraceId> {
        self.is_recording()
            .then(|| self.span.span_context().trace_id())
    }

    /// The `traceparent` to send upstream: this span's trace id, with this span as the parent,
    /// and its sampling decision (flags `01` when the span is exported, `00` when not, as
    /// OpenTelemetry propagates an unsampled context). `None` only once the tracer is shut down.
    pub fn traceparent(&self) -> Option<HeaderValue> {
        let context = self.span.span_context();
        if !context.is_valid() {
            return None;
        }
        Some(format_traceparent(
            context.trace_id(),
            context.span_id(),
            context.trace_flags(),
        ))
    }

    /// Ends the span with the request's outcome. The span's status is `Error` for a 5xx and
    /// for a request that failed before any response; 4xx answers keep `Unset` (the client's
    /// error, per the HTTP semantic conventions) but still carry `error.type` when the proxy
    /// refused them.
    pub fn finish(mut self, end: &SpanEnd<'_>) {
        if !self.span.is_recording() {
            return;
        }
        let span = &mut self.span;
        span.update_name(format!("{} {}", self.method, end.route));
        if end.status != 0 {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(end.status),
            ));
        }
        span.set_attribute(KeyValue::new("strangler.route", end.route.to_owned()));
        span.set_attribute(KeyValue::new("strangler.upstream", end.upstream.to_owned()));
        if let Some(backend) = end.backend {
            span.set_attribute(KeyValue::new("strangler.backend", backend.to_string()));
        }
        if !end.request_id.is_empty() {
            span.set_attribute(KeyValue::new(
                "strangler.request_id",
                end.request_id.to_owned(),
            ));
        }
        if end.fallback {
            span.set_attribute(KeyValue::new("strangler.fallback", true));
        }
        let failed = end.status >= 500 || (end.status == 0 && end.error.is_some());
        let error_type = match end.error {
            Some(reason) => Some(reason.as_str().to_owned()),
            None if end.status >= 500 => Some(end.status.to_string()),
            None => None,
        };
        if let Some(error_type) = error_type {
            if failed {
                span.set_status(Status::error(error_type.clone()));
            }
            span.set_attribute(KeyValue::new("error.type", error_type));
        }
        span.end();
    }
}

fn method_name(method: &Method) -> Cow<'static, str> {
    let name = match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return Cow::Owned(method.as_str().to_owned()),
    };
    Cow::Borrowed(name)
}

/// Parses a W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`). Returns
/// `None` for anything invalid: version `ff`, upper-case or short ids, all-zero ids, a version
/// 00 header with trailing data. Later versions are read by their version-00 prefix, as the
/// spec asks.
pub fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    let value = value.trim_ascii();
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex_byte(value[0], value[1])?;
    match version {
        0xff => return None,
        0 if value.len() != 55 => return None,
        _ if value.len() > 55 && value[55] != b'-' => return None,
        _ => {}
    }
    let mut trace_id = [0u8; 16];
    for (byte, pair) in trace_id.iter_mut().zip(value[3..35].chunks_exact(2)) {
        *byte = hex_byte(pair[0], pair[1])?;
    }
    let mut span_id = [0u8; 8];
    for (byte, pair) in span_id.iter_mut().zip(value[36..52].chunks_exact(2)) {
        *byte = hex_byte(pair[0], pair[1])?;
    }
    let flags = hex_byte(value[53], value[54])?;
    let trace_id = TraceId::from_bytes(trace_id);
    let span_id = SpanId::from_bytes(span_id);
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    // Only the sampled bit is defined for version 00.
    Some((trace_id, span_id, TraceFlags::new(flags & 0x01)))
}

/// `00-<trace id>-<span id>-<flags>`, 55 bytes.
pub fn format_traceparent(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> HeaderValue {
    fn put_hex(out: &mut [u8], bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
    }
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put_hex(&mut out[3..35], &trace_id.to_bytes());
    put_hex(&mut out[36..52], &span_id.to_bytes());
    put_hex(&mut out[53..55], &[flags.to_u8()]);
    HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
}

fn hex_byte(high: u8, low: u8) -> Option<u8> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            _ => None,
        }
    }
    Some(nibble(high)? << 4 | nibble(low)?)
}

/// The OTLP exporter, reporting when exports start failing and when they recover (the SDK's
/// own diagnostics are compiled out).
#[derive(Debug)]
struct ReportingExporter {
    inner: opentelemetry_otlp::SpanExporter,
    endpoint: String,
    failing: AtomicBool,
}

impl SpanExporter for ReportingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(error) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                endpoint = %self.endpoint,
                %error,
                spans,
                "OTLP export failed; spans are dropped until the collector answers"
            ),
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = %self.endpoint, "OTLP export works again");
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// An HTTP/1.1 client (hyper, plain TCP) for the OTLP exporter. The SDK's batch processor runs
/// exports on its own thread with a minimal executor, where hyper (which needs a Tokio reactor)
/// cannot run; so each exchange is spawned onto a current-thread Tokio runtime on a dedicated
/// thread, and the exporter awaits its join handle. The thread stops when the client is dropped.
#[derive(Debug)]
struct ExportClient {
    runtime: tokio::runtime::Handle,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ExportClient {
    fn start(timeout: Duration) -> std::io::Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, handle) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("otlp-http".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let _ = ready.send(Ok(runtime.handle().clone()));
                // Runs spawned exchanges until the client is dropped.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let runtime = handle
            .recv()
            .map_err(|_| std::io::Error::other("the OTLP HTTP thread exited"))??;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Ok(Self {
            runtime,
            client,
            timeout,
            _stop: stop,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let exchange = self.runtime.spawn(async move {
            let exchange = async {
                let response = client.request(request.map(Full::new)).await?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_RESPONSE_BODY)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {timeout:?}").into()),
            }
        });
        exchange.await.map_err(HttpError::from)?
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

    use super::*;

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
    fn parses_a_valid_traceparent() {
        let (trace, span, flags) =
            parse_traceparent(format!("00-{TRACE}-{PARENT}-01").as_bytes()).unwrap();
        assert_eq!(format!("{trace:032x}"), TRACE);
        assert_eq!(format!("{span:016x}"), PARENT);
        assert!(flags.is_sampled());
        let (_, _, flags) =
            parse_traceparent(format!("00-{TRACE}-{PARENT}-00").as_bytes()).unwrap();
        assert!(!flags.is_sampled());
        // Later versions: the version-00 prefix counts, more fields may follow.
        assert!(
            parse_traceparent(format!("01-{TRACE}-{PARENT}-01-what-ever").as_bytes()).is_some()
        );
        assert!(parse_traceparent(format!(" 00-{TRACE}-{PARENT}-01 ").as_bytes()).is_some());
    }

    #[test]
    fn rejects_invalid_traceparents() {
        for bad in [
            String::new(),
            "garbage".to_owned(),
            format!("00-{TRACE}-{PARENT}"),
            format!("00-{TRACE}-{PARENT}-01-extra"),
            format!("ff-{TRACE}-{PARENT}-01"),
            format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
            format!("00-{}-{PARENT}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{TRACE}-{PARENT}-0g"),
            format!("00_{TRACE}-{PARENT}-01"),
            format!("01-{TRACE}-{PARENT}-01x"),
            format!("00-{}-{PARENT}-01", &TRACE[1..]),
        ] {
            assert!(
                parse_traceparent(bad.as_bytes()).is_none(),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn formats_a_traceparent() {
        let (trace, span, flags) =
            parse_traceparent(format!("00-{TRACE}-{PARENT}-01").as_bytes()).unwrap();
        assert_eq!(
            format_traceparent(trace, span, flags),
            format!("00-{TRACE}-{PARENT}-01").as_str()
        );
        assert_eq!(
            format_traceparent(trace, span, TraceFlags::NOT_SAMPLED),
            format!("00-{TRACE}-{PARENT}-00").as_str()
        );
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
