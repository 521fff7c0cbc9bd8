//! What is told about a request once it is over: the metrics (requests and durations through
//! the per-generation children of `meters.rs`, fallbacks, errors, the unmatched tally), the route's guard, the span's end and the access log line.
//!
//! Metric definitions are [`crate::metrics`]'s, the guard's rules [`crate::guard`]'s, the span
//! [`crate::telemetry`]'s; this file only reports one request to each, once.

use std::time::Duration;

use pingora_error::Error;
use pingora_proxy::Session;

use super::context::{FallbackReason, RequestContext};
use super::errors::classify;
use super::meters::{MeterCache, RouteSlot, record_uncached};
use crate::guard::{self, Side};
use crate::metrics::Metrics;
use crate::telemetry::{RequestSpan, SpanEnd};
use crate::vocabulary::Reason;

/// The client address for the access log: the address, or `-` when the peer is not an IP.
struct OptionalIp(Option<std::net::IpAddr>);

impl std::fmt::Display for OptionalIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(address) => address.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A backend address for the access log: the address, or `-` when no backend was picked.
struct OptionalAddress(Option<std::net::SocketAddr>);

impl std::fmt::Display for OptionalAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(address) => address.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// How one request ended, as the phases saw it.
pub struct Outcome<'a> {
    /// The status sent to the client; 0 when none was.
    pub status: u16,
    pub elapsed: Duration,
    pub error: Option<&'a Error>,
    /// A copy of the request was under way.
    pub shadowed: bool,
}

/// Counts the request in every metric it belongs to and tells its route's guard; returns the
/// reason it failed, if it did.
pub fn count(
    session: &Session,
    ctx: &RequestContext,
    outcome: &Outcome<'_>,
    metrics: &Metrics,
    meters: &MeterCache,
) -> Option<Reason> {
    let route = ctx.route_label();
    let upstream = ctx.table.upstream(ctx.upstream).name();
    let slot = match ctx.route {
        Some(index) => RouteSlot::Route(index),
        None if ctx.routed => RouteSlot::Default,
        None => RouteSlot::Refused,
    };
    // The error before the request: a scrape that sees a failed request counted sees why.
    let reason = ctx.refusal.or(outcome.error.map(|e| classify(e).1));
    if let Some(reason) = reason {
        metrics
            .upstream_errors
            .with_label_values(&[route, upstream, reason.as_str()])
            .inc();
    }
    meters.with(&ctx.table, |cached| match cached {
        Some(cached) => cached.record(slot, ctx.upstream, outcome.status, outcome.elapsed, metrics),
        None => record_uncached(route, upstream, outcome.status, outcome.elapsed, metrics),
    });
    record_in_guard(
        ctx,
        outcome.status,
        outcome.error.is_some(),
        outcome.elapsed,
        metrics,
    );
    if ctx.routed && ctx.route.is_none() && outcome.status != 0 {
        let request = session.req_header();
        metrics
            .unmatched
            .record(request.method.as_str(), request.uri.path());
    }
    if let Some((from, why)) = ctx.fallback {
        metrics
            .fallbacks
            .with_label_values(&[
                route,
                ctx.table.upstream(from).name(),
                upstream,
                why.label(),
            ])
            .inc();
    }
    reason
}

/// Tells the route's guard (if any) how the request went, on which side; reports a trip.
fn record_in_guard(
    ctx: &RequestContext,
    status: u16,
    failed_without_answer: bool,
    elapsed: Duration,
    metrics: &Metrics,
) {
    let Some(route) = ctx.route() else { return };
    let Some(guard) = &route.guard else { return };
    let legacy = route.target(route.legacy).upstream;
    let (side, failed) = match ctx.fallback {
        // The new side failed and legacy covered for it: the client never saw the failure,
        // the guard must.
        Some((from, FallbackReason::Unreachable | FallbackReason::Status)) if from != legacy => {
            (Side::New, true)
        }
        // Held on legacy by the guard or the kill switch: not a sample of either side's health.
        Some((_, FallbackReason::Guard | FallbackReason::KillSwitch)) => return,
        _ if ctx.upstream == legacy => (Side::Legacy, status >= 500),
        _ => (
            Side::New,
            status >= 500 || (status == 0 && failed_without_answer),
        ),
    };
    if let Some(trip) = guard.record_request(side, failed, elapsed) {
        guard::report(&route.name, &trip, metrics);
    }
}

/// Ends the span (when traces are exported) and writes the access log line.
pub fn log(
    session: &Session,
    ctx: &RequestContext,
    span: Option<RequestSpan>,
    outcome: &Outcome<'_>,
    reason: Option<Reason>,
) {
    let route = ctx.route_label();
    let pool = ctx.table.upstream(ctx.upstream);
    let upstream = pool.name();
    let backend = ctx.backend.map(|index| pool.backends()[index].address());
    if let Some(span) = span {
        span.finish(&SpanEnd {
            status: outcome.status,
            route,
            upstream,
            backend,
            request_id: ctx.request_id.to_str().unwrap_or_default(),
            error: reason,
            fallback: ctx.fell_back,
        });
    }
    tracing::info!(
        target: "strangler::access",
        request_id = %String::from_utf8_lossy(ctx.request_id.as_bytes()),
        client = %OptionalIp(ctx.origin.map(|origin| origin.client)),
        method = %session.req_header().method,
        path = session.req_header().uri.path(),
        route,
        upstream,
        backend = %OptionalAddress(backend),
        status = outcome.status,
        // Whole microseconds, so the value prints without float noise (1.911, not 1.9109999).
        duration_ms = outcome.elapsed.as_micros() as f64 / 1000.0,
        bytes = session.body_bytes_sent(),
        shadowed = outcome.shadowed,
        fallback = ctx.fell_back,
    );
}
