//! The Pingora [`ProxyHttp`] implementation: wires the route table into Pingora's request
//! phases and does nothing else. It reads top-down in the order Pingora 0.9 calls the phases
//! (`pingora-proxy`'s `lib.rs` and `proxy_h1.rs`); each phase is a few named steps that live in
//! the files beside it.
//!
//! | phase                           | what happens                                            | steps in        |
//! |---------------------------------|---------------------------------------------------------|-----------------|
//! | `new_ctx`                       | load the current route table snapshot; start the deadline | `context.rs`  |
//! | `request_filter`                | span, request id, limits and framing, route match,      | `request_id.rs`, `limits.rs`, |
//! |                                 | retired answer, route deadline, kill switch, split,     | `choose.rs`,    |
//! |                                 | guard, tester override, shadow decision                 | `mirror.rs`     |
//! | `upstream_peer`                 | a backend in rotation (else the fallback, else 503),    | `backend.rs`    |
//! |                                 | its timeouts cut to the time left before the deadline   |                 |
//! | `fail_to_connect`               | passive health, connect retries, fallback when unreachable | `backend.rs` |
//! | `upstream_request_filter`       | tester token out, X-Forwarded-*, traceparent, the       | `forwarding.rs` |
//! |                                 | target's path/host rewrite and header edits             |                 |
//! | `request_body_filter`           | body size limit; tee body chunks into the shadow copy   | here            |
//! | `upstream_response_filter`      | deadline, framing, passive health, fallback on listed   | `backend.rs`    |
//! |                                 | 5xx, capture the primary's head for comparison          |                 |
//! | `response_filter`               | strip hop-by-hop, echo the request id, response header edits | `forwarding.rs` |
//! | `upstream_response_body_filter` | deadline; capture the primary's body (bounded)          | here            |
//! | `error_while_proxy`             | passive health; retry only what cannot have been sent twice | `backend.rs` |
//! | `fail_to_proxy`                 | 502/503/504/4xx with `x-strangler-error` and the request id | `errors.rs`, [`crate::response`] |
//! | `logging`                       | shadow hand-off, metrics, guard, span, access log       | `observe.rs`, `meters.rs` |
//!
//! Pingora calls `response_filter` on the response head before any body reaches
//! `upstream_response_body_filter`; `fail_to_connect`, `error_while_proxy` and `fail_to_proxy`
//! only run when something failed, and `logging` always runs last.
//!
//! Connection-level limits (connection cap, header-read deadline, the watch that cuts a stalled
//! response at its deadline) live in [`crate::connection`], which these phases keep informed.

mod backend;
mod choose;
mod context;
mod errors;
mod forwarding;
mod limits;
pub mod meters;
mod mirror;
mod observe;
mod recording;
mod request_id;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderName;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

pub use self::context::RequestContext;
use crate::connection;
use crate::hygiene;
use crate::metrics::Metrics;
use crate::response::ErrorResponse;
pub use crate::response::{REQUEST_ID, STRANGLER_ERROR};
use crate::routing::SharedRouteTable;
use crate::shadow::ShadowDispatcher;
use crate::telemetry::{RequestTracer, TRACEPARENT, TRACESTATE};
use crate::vocabulary::Reason;

pub const STRANGLER_FALLBACK: HeaderName = HeaderName::from_static("x-strangler-fallback");
pub const STRANGLER_STAGE: HeaderName = HeaderName::from_static("x-strangler-stage");

/// The proxy service. Cheap to share: the route table handle, the shadow dispatcher, the
/// metrics and the tracer are all shared, immutable or atomic.
pub struct StranglerProxy {
    routes: SharedRouteTable,
    shadows: Arc<ShadowDispatcher>,
    metrics: Arc<Metrics>,
    /// Exports a span per request when `server.otlp` is set.
    tracer: Option<RequestTracer>,
    /// The metric children of the current generation's (route, upstream) pairs.
    meters: meters::MeterCache,
}

impl StranglerProxy {
    pub fn new(
        routes: SharedRouteTable,
        shadows: Arc<ShadowDispatcher>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            routes,
            shadows,
            metrics,
            tracer: None,
            meters: meters::MeterCache::default(),
        }
    }

    pub fn with_tracer(mut self, tracer: Option<RequestTracer>) -> Self {
        self.tracer = tracer;
        self
    }
}

#[async_trait]
impl ProxyHttp for StranglerProxy {
    type CTX = RequestContext;

    /// Pingora registers a (disabled) response-compression module by default, and every request
    /// pays for its filter calls. strangler passes bodies through as the backend sent them.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Self::CTX {
        RequestContext::new(self.routes.load_full())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // First, so refused requests (413, 431, 400, retired) are traced too.
        if let Some(tracer) = &self.tracer {
            let request = session.req_header();
            ctx.span = Some(tracer.start(
                &request.method,
                request.uri.path(),
                request.headers.get(TRACEPARENT),
                request.headers.get(TRACESTATE),
            ));
        }
        // Pipelined requests are answered one after the other, in order (RFC 9112 §9.3.2);
        // Pingora's default closes the connection after the first and drops the rest.
        session.as_downstream_mut().set_pipelining_enabled(true);
        ctx.request_id = request_id::adopt(session.req_header_mut());
        connection::request_started(ctx.deadline, &ctx.request_id);
        ctx.origin = forwarding::peer_ip(session)
            .map(|peer| ctx.table.trusted_proxies.origin(session.req_header(), peer));

        let limits = &ctx.table.config().server.limits;
        let refusal = limits::check(session, limits);
        // A client that stops sending its body mid-way is cut off (408) instead of holding a slot.
        session
            .as_downstream_mut()
            .set_read_timeout(Some(limits.body_idle_timeout));
        if let Some(reason) = refusal {
            ctx.refusal = Some(reason);
            let answer = ErrorResponse::of(reason, ctx.request_id.clone());
            write_error_response(session, &answer).await?;
            return Ok(true);
        }

        choose::to_origin_form(session)?;
        if !choose::match_route(session.req_header(), ctx) {
            return Ok(false);
        }
        if choose::answer_retired(session, ctx).await? {
            return Ok(true);
        }
        choose::apply_route_timeout(ctx);
        if choose::kill_switch(ctx, &self.metrics) {
            return Ok(false);
        }
        choose::choose_target(session.req_header(), ctx);
        recording::begin(session.req_header(), ctx);
        mirror::begin(&self.shadows, &self.metrics, session.req_header(), ctx);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        backend::select_peer(ctx)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        error: Box<Error>,
    ) -> Box<Error> {
        backend::retry_after_connect_failure(ctx, error)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora_http::RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        forwarding::strip_tester_token(upstream_request, ctx);
        forwarding::add_forwarding_headers(session, upstream_request, ctx)?;
        // The copy starts from the request before any target's edits: it gets its own.
        if let Some(copy) = ctx.shadow.as_mut() {
            copy.set_forwarded_request(upstream_request);
        }
        forwarding::apply_target_edits(upstream_request, ctx)?;
        if let Some(copy) = ctx.shadow.as_mut() {
            copy.set_primary_request(upstream_request);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // A body without Content-Length (chunked) is measured as it streams.
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_bytes > ctx.table.config().server.limits.max_body.as_u64() {
            ctx.refusal = Some(Reason::BodyTooLarge);
            ctx.shadow = None;
            return Err(Error::explain(
                ErrorType::HTTPStatus(413),
                "request body too large",
            ));
        }
        if let Some(copy) = ctx.shadow.as_mut()
            && !copy.on_body_chunk(&self.shadows, body.as_ref(), end_of_stream)
        {
            ctx.shadow = None;
        }
        if let Some(recording) = ctx.recording.as_mut()
            && !recording.on_body_chunk(body.as_ref(), end_of_stream)
        {
            ctx.recording = None;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.check_deadline()?;
        backend::check_response(session, response, ctx)?;
        if let Some(copy) = ctx.shadow.as_mut()
            && !response.status.is_informational()
        {
            copy.capture_primary_header(response);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        connection::response_started();
        if connection::closing_after_response() {
            // Draining: Pingora then writes `Connection: close` and closes after this response.
            session.set_keepalive(None);
        }
        forwarding::strip_response_hop_by_hop(response);
        hygiene::keep_upgrade_headers(response)?;
        hygiene::strip_bodyless_framing(response);
        forwarding::edit_response(response, ctx)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        // Past the deadline mid-body: the client must see the response cut short.
        ctx.check_deadline()?;
        if let Some(copy) = ctx.shadow.as_mut() {
            copy.capture_primary_body(body.as_ref());
        }
        Ok(None)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        error: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        backend::retry_after_proxy_error(peer, session, error, ctx, client_reused)
    }

    /// Failed requests are logged once, by `fail_to_proxy`, with the route and request id.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        true
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let (status, reason) = errors::classify(error);
        let mut reason = ctx.refusal.unwrap_or(reason);
        // An upstream timeout cut to the request's deadline is the deadline's doing.
        if status == 504 && ctx.deadline_reached() {
            reason = Reason::RequestTimeout;
            ctx.refusal = Some(reason);
        }
        if status > 0 {
            let answer = ErrorResponse::new(status, reason, ctx.request_id.clone());
            if let Err(write_error) = write_error_response(session, &answer).await {
                tracing::debug!(%write_error, "could not send the error response");
            }
        }
        tracing::warn!(
            request_id = %String::from_utf8_lossy(ctx.request_id.as_bytes()),
            route = ctx.route_label(),
            upstream = ctx.table.upstream(ctx.upstream).name(),
            status,
            reason = reason.as_str(),
            error = %error,
            "request failed"
        );
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Self::CTX) {
        connection::request_finished();
        let span = ctx.span.take();
        let shadowed = ctx.shadow.is_some();
        if let Some(copy) = ctx.shadow.as_mut() {
            copy.finish(error.is_some());
        }
        let outcome = observe::Outcome {
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            elapsed: ctx.started.elapsed(),
            error,
            shadowed,
        };
        let reason = observe::count(session, ctx, &outcome, &self.metrics, &self.meters);
        observe::log(session, ctx, span, &outcome, reason);
    }
}

/// Writes strangler's own answer for a refusal or a failure (see [`crate::response`]).
async fn write_error_response(session: &mut Session, answer: &ErrorResponse) -> Result<()> {
    let (response, body) = answer.to_pingora()?;
    session
        .as_downstream_mut()
        .write_error_response(response, body)
        .await
}
