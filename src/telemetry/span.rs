//! The proxy's server span for one request: what it records when the request ends, and the
//! `traceparent` it hands upstream (written by [`super::propagation`]). Opening it is
//! [`super::RequestTracer::start`]'s.

use std::borrow::Cow;
use std::net::SocketAddr;

use http::{HeaderValue, Method};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, Status, TraceId};

use crate::vocabulary::Reason;

/// The proxy's span for one request. Ends (as it is) when dropped without [`finish`].
///
/// [`finish`]: RequestSpan::finish
#[derive(Debug)]
pub struct RequestSpan {
    pub(super) span: opentelemetry_sdk::trace::Span,
    pub(super) method: Cow<'static, str>,
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
        Some(super::propagation::traceparent(context))
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

pub(super) fn method_name(method: &Method) -> Cow<'static, str> {
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
