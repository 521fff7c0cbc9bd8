//! Which backend serves an attempt, what its answer says about its health, and whether a failed
//! attempt is tried again (on another backend, or on the route's fallback).
//!
//! The rules: every wait on an upstream is cut to the time left before the request's deadline;
//! a failed connect may be retried for every method (nothing reached the backend), on another
//! backend, within the pool's `retries`; a failure after sending retries only what Pingora can
//! replay and cannot have been acted on twice; a `fallback_on` status sends an idempotent,
//! replayable request to the fallback before anything reaches the client. Passive health counts
//! only the backend's own failures, never the deadline's nor a client's. Pools, their health and
//! peers are [`crate::upstream`]'s.

use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::context::{FallbackReason, RequestContext};
use crate::hygiene;
use crate::vocabulary::Reason;

/// A backend in rotation of the request's upstream, its timeouts cut to the time left; the
/// fallback's when none is; else a 503 `no_healthy_backend`.
pub fn select_peer(ctx: &mut RequestContext) -> Result<Box<HttpPeer>> {
    // Every wait on the upstream is cut to the time left, so a slow upstream gets its 504
    // at the request's deadline, not a read timeout later.
    let left = ctx.check_deadline()?;
    loop {
        if let Some((index, peer)) = ctx.table.upstream(ctx.upstream).select_untried(ctx.tried) {
            ctx.backend = Some(index);
            let mut peer = Box::new(peer.clone());
            let options = &mut peer.options;
            for timeout in [
                &mut options.connection_timeout,
                &mut options.read_timeout,
                &mut options.write_timeout,
            ] {
                *timeout = Some(timeout.map_or(left, |timeout| timeout.min(left)));
            }
            return Ok(peer);
        }
        // Every backend is out: the fallback, if any, serves instead.
        if ctx.take_fallback(FallbackReason::Unreachable) {
            continue;
        }
        ctx.refusal = Some(Reason::NoHealthyBackend);
        return Err(Error::explain(
            ErrorType::HTTPStatus(503),
            "no healthy backend",
        ));
    }
}

/// The upstream's response head: refused when its framing is ambiguous, counted for passive
/// health, and turned into a retry on the fallback when its status is one the route lists.
pub fn check_response(
    session: &Session,
    response: &ResponseHeader,
    ctx: &mut RequestContext,
) -> Result<()> {
    if let Some(refusal) = hygiene::check_response_framing(response) {
        if let Some(backend) = ctx.backend {
            ctx.table.upstream(ctx.upstream).report_failure(backend);
        }
        ctx.refusal = Some(refusal.reason);
        ctx.shadow = None;
        return Err(Error::explain(
            ErrorType::HTTPStatus(refusal.status),
            "upstream response framing is ambiguous",
        ));
    }
    if let Some(backend) = ctx.backend
        && !response.status.is_informational()
    {
        let pool = ctx.table.upstream(ctx.upstream);
        match response.status.as_u16() {
            502..=504 => pool.report_failure(backend),
            _ => pool.report_success(backend),
        }
    }
    // A listed 5xx from the route's upstream: an idempotent request whose body can still be
    // replayed is served by the fallback instead; nothing was sent to the client yet.
    if ctx
        .route()
        .is_some_and(|route| route.fallback_on.contains(&response.status.as_u16()))
        && session.req_header().method.is_idempotent()
        && !session.as_ref().retry_buffer_truncated()
        && ctx.take_fallback(FallbackReason::Status)
    {
        ctx.retry_on_fallback = true;
        ctx.shadow = None;
        let mut error = Error::explain(
            ErrorType::HTTPStatus(response.status.as_u16()),
            "upstream answered with a fallback status",
        );
        error.set_retry(true);
        return Err(error);
    }
    Ok(())
}

/// After a failed connect: the backend is marked (and counted against, unless the deadline cut
/// the wait), and the attempt is retried on another backend or on the fallback while time is
/// left.
pub fn retry_after_connect_failure(ctx: &mut RequestContext, mut error: Box<Error>) -> Box<Error> {
    let pool = ctx.table.upstream(ctx.upstream);
    if let Some(backend) = ctx.backend {
        if !ctx.cut_by_deadline(&error) {
            pool.report_failure(backend);
        }
        ctx.tried.mark(backend);
    }
    ctx.failed_attempts += 1;
    // Nothing reached the backend, so another attempt is safe for every method: on another
    // backend (the same one would only double the wait), within the deadline.
    let another = ctx.failed_attempts <= pool.retries()
        && pool.has_untried(ctx.tried)
        && !ctx.deadline_reached();
    let retry =
        another || (!ctx.deadline_reached() && ctx.take_fallback(FallbackReason::Unreachable));
    error.set_retry(retry);
    error
}

/// After a failure while proxying (connected, perhaps sent): the backend is counted against
/// when it failed itself, and the attempt is retried only when it cannot have been acted on.
pub fn retry_after_proxy_error(
    peer: &HttpPeer,
    session: &Session,
    error: Box<Error>,
    ctx: &mut RequestContext,
    client_reused: bool,
) -> Box<Error> {
    // Only the backend's own failures count against it, not a client that went away.
    if let Some(backend) = ctx.backend
        && *error.esource() == ErrorSource::Upstream
        && !ctx.cut_by_deadline(&error)
    {
        ctx.table.upstream(ctx.upstream).report_failure(backend);
    }
    // Pingora's rule: retry only idempotent requests whose body is still replayable, and
    // only when a reused (possibly stale) connection failed. A POST that reached a backend
    // is never sent twice.
    let mut error = error.more_context(format!("Peer: {peer}"));
    if std::mem::take(&mut ctx.retry_on_fallback) {
        error.set_retry(true);
        return error;
    }
    let replayable = session.req_header().method.is_idempotent()
        && !session.as_ref().retry_buffer_truncated()
        && session.response_written().is_none()
        && !ctx.deadline_reached();
    if !replayable {
        error.set_retry(false);
    } else if client_reused {
        // A pooled connection the backend had closed: the same backend is fine.
        error.set_retry(true);
    } else {
        // A fresh connection failed: an idempotent request goes to another backend.
        if let Some(backend) = ctx.backend {
            ctx.tried.mark(backend);
        }
        let pool = ctx.table.upstream(ctx.upstream);
        error.set_retry(pool.has_untried(ctx.tried));
    }
    error
}
