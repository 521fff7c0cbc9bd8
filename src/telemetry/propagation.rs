//! W3C trace context on the wire, read and written by the OpenTelemetry SDK's
//! [`TraceContextPropagator`]: the client's `traceparent`/`tracestate` become the parent of the
//! proxy's span, and the proxy's span becomes the `traceparent` sent upstream.
//!
//! One rule is added in front of the SDK's parser: each of the four fields must have its full
//! length (2, 32, 16 and 2 hex digits), as the spec requires; the SDK reads hex numbers and
//! would take `00-1-2-01` as a trace id of 1.

use http::HeaderValue;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use super::TRACEPARENT;

/// The two headers as the propagator reads them.
struct Incoming<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for Incoming<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Whether the first four fields have their full lengths (later versions may add fields).
fn well_formed(traceparent: &str) -> bool {
    let mut fields = traceparent.trim().split('-');
    [2, 32, 16, 2]
        .into_iter()
        .all(|length| fields.next().is_some_and(|field| field.len() == length))
}

/// The client's span, when `traceparent` is valid (with `tracestate` carried along), as the
/// parent of the proxy's span; `None` starts a new trace.
pub fn extract(
    traceparent: Option<&HeaderValue>,
    tracestate: Option<&HeaderValue>,
) -> Option<Context> {
    let traceparent = traceparent?.to_str().ok().filter(|v| well_formed(v))?;
    let incoming = Incoming {
        traceparent: Some(traceparent),
        tracestate: tracestate.and_then(|value| value.to_str().ok()),
    };
    let context = TraceContextPropagator::new().extract(&incoming);
    context.has_active_span().then_some(context)
}

/// Captures the `traceparent` the propagator writes (`tracestate` is not sent upstream).
#[derive(Default)]
struct Outgoing(Option<String>);

impl Injector for Outgoing {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT.as_str() {
            self.0 = Some(value);
        }
    }
}

/// `00-<trace id>-<span id>-<flags>` for `span`, which must be valid.
pub fn traceparent(span: &SpanContext) -> HeaderValue {
    let mut outgoing = Outgoing::default();
    let context = Context::new().with_remote_span_context(span.clone());
    TraceContextPropagator::new().inject_context(&context, &mut outgoing);
    let value = outgoing.0.expect("a valid span context is always written");
    HeaderValue::from_str(&value).expect("hex digits and dashes are a valid header value")
}

#[cfg(test)]
pub(crate) mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    /// What the proxy reads from a `traceparent`: trace id, parent span id and flags.
    pub(crate) fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
        let value = HeaderValue::from_bytes(value).ok()?;
        let context = extract(Some(&value), None)?;
        let span = context.span();
        let parent = span.span_context();
        Some((parent.trace_id(), parent.span_id(), parent.trace_flags()))
    }

    fn format_traceparent(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> HeaderValue {
        traceparent(&SpanContext::new(
            trace_id,
            span_id,
            flags,
            false,
            TraceState::default(),
        ))
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
    fn the_tracestate_travels_with_a_valid_parent_only() {
        let parent = HeaderValue::from_str(&format!("00-{TRACE}-{PARENT}-01")).unwrap();
        let state = HeaderValue::from_static("vendor=abc");
        let context = extract(Some(&parent), Some(&state)).unwrap();
        assert_eq!(
            context.span().span_context().trace_state().header(),
            "vendor=abc"
        );
        assert!(context.span().span_context().is_remote());
        assert!(extract(None, Some(&state)).is_none());
    }
}
