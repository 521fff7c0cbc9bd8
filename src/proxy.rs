//! The Pingora [`ProxyHttp`] implementation: wires the route table into Pingora's request
//! phases and does nothing else.
//!
//! | phase                     | what happens                                                  |
//! |---------------------------|---------------------------------------------------------------|
//! | `new_ctx`                 | load the current route table snapshot; start the deadline     |
//! | `request_filter`          | span, request id, limits and framing, route match, split,     |
//! |                           | kill switch, tester override, shadow decision, route deadline |
//! | `upstream_peer`           | a backend in rotation (else the fallback, else 503), with its |
//! |                           | timeouts cut to the time left before the deadline             |
//! | `fail_to_connect`         | passive health, connect retries, fallback when unreachable    |
//! | `error_while_proxy`       | passive health; retry only what cannot have been sent twice   |
//! | `upstream_request_filter` | X-Forwarded-*, traceparent, path/host rewrite, header edits   |
//! | `request_body_filter`     | body size limit; tee body chunks into the shadow copy         |
//! | `upstream_response_*`     | deadline, passive health, fallback on listed 5xx, capture the |
//! |                           | primary's response (bounded) for comparison                   |
//! | `response_filter`         | strip hop-by-hop, response header edits, echo the request id  |
//! | `logging`                 | shadow hand-off, metrics, span, access log                    |
//! | `fail_to_proxy`           | 502/503/504/4xx with `x-strangler-error` and the request id   |
//!
//! Connection-level limits (connection cap, header-read deadline, the watch that cuts a stalled
//! response at its deadline) live in [`crate::connection`], which these phases keep informed.
//!
//! Pingora itself strips the standard hop-by-hop request headers and those the client nominates in
//! `Connection`, and rejects nominations of `Host` or `X-Forwarded-*` (so a client cannot make
//! the proxy drop its own forwarding headers). Response hop-by-hop headers are stripped here.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TE, TRAILER, UPGRADE};
use http::{HeaderName, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use std::time::{Duration, Instant};

use crate::connection;
use crate::forwarded;
use crate::hygiene;
use crate::metrics::Metrics;
use crate::routing::{RouteTable, SharedRouteTable, TargetId, UpstreamId};
use crate::shadow::{Origin, ShadowCopy, ShadowDispatcher};
use crate::telemetry::{RequestSpan, RequestTracer, SpanEnd, TRACEPARENT, TRACESTATE};
use crate::upstream::Tried;
use crate::vocabulary::{Reason, ShadowEvent};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const STRANGLER_ERROR: HeaderName = HeaderName::from_static("x-strangler-error");
pub const STRANGLER_FALLBACK: HeaderName = HeaderName::from_static("x-strangler-fallback");
pub const STRANGLER_STAGE: HeaderName = HeaderName::from_static("x-strangler-stage");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

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

/// Why a request went to its route's legacy target instead of the upstream the route names; the
/// `reason` label of `strangler_fallbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FallbackReason {
    /// No backend in rotation, or connecting failed on every attempt.
    Unreachable,
    /// The upstream answered a `fallback_on` status.
    Status,
    /// The kill switch was on.
    KillSwitch,
    /// The route's guard tripped (see [`crate::guard`]).
    Guard,
}

impl FallbackReason {
    fn label(self) -> &'static str {
        match self {
            FallbackReason::Unreachable => "unreachable",
            FallbackReason::Status => "status",
            FallbackReason::KillSwitch => "kill_switch",
            FallbackReason::Guard => "guard",
        }
    }
}

/// A timeout this close to the request's deadline was cut to it (timers fire a little early or
/// late).
const DEADLINE_SLACK: Duration = Duration::from_millis(20);

/// Longest client-supplied request id we pass through; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 200;

/// The proxy service. Cheap to share: the route table handle, the shadow dispatcher, the
/// metrics and the tracer are all shared, immutable or atomic.
pub struct StranglerProxy {
    routes: SharedRouteTable,
    shadows: Arc<ShadowDispatcher>,
    metrics: Arc<Metrics>,
    /// Exports a span per request when `server.otlp` is set.
    tracer: Option<RequestTracer>,
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
        }
    }

    pub fn with_tracer(mut self, tracer: Option<RequestTracer>) -> Self {
        self.tracer = tracer;
        self
    }
}

/// Per-request state. `table` pins the config generation the request started with.
pub struct RequestContext {
    table: Arc<RouteTable>,
    /// Index of the matched route; `None` when the default upstream serves the request, or
    /// when the request was refused before it was routed (see `routed`).
    route: Option<usize>,
    /// The route table was consulted: a refusal before that is labelled `(refused)`, not as
    /// the default route.
    routed: bool,
    /// The upstream serving the current attempt.
    upstream: UpstreamId,
    /// The route's target for `upstream`, whose edits the upstream request gets; `None` when
    /// no route matched or a tester forced an upstream the route does not name (no edits).
    target: Option<TargetId>,
    request_id: HeaderValue,
    /// This request's shadow copy, when its route mirrors it and it was selected.
    shadow: Option<Box<ShadowCopy>>,
    /// This request, being recorded for replay (`record:`), when it was selected.
    recording: Option<Box<crate::corpus::Recording>>,
    /// The backend (index in its pool) of the current attempt.
    backend: Option<usize>,
    /// Connection attempts that failed so far.
    failed_attempts: u32,
    /// Backends of the current upstream this request failed on; a retry picks another.
    tried: Tried,
    /// The route's fallback upstream took over.
    fell_back: bool,
    /// Why the request went to the route's legacy target instead of its upstream, and the
    /// upstream it left; counted once, when the request is logged.
    fallback: Option<(UpstreamId, FallbackReason)>,
    /// Why the proxy refused or failed the request, when it knows better than the error type.
    refusal: Option<Reason>,
    /// Request body bytes seen so far.
    body_bytes: u64,
    /// The upstream answered with a fallback status; the next attempt goes to the fallback.
    retry_on_fallback: bool,
    started: Instant,
    /// When the whole exchange must be over (`timeout` of the route, else the server's).
    deadline: Instant,
    /// This request's span, when traces are exported.
    span: Option<RequestSpan>,
    /// The client, behind trusted proxies if any (see [`forwarded`]).
    origin: Option<forwarded::Origin>,
}

impl RequestContext {
    fn route(&self) -> Option<&crate::routing::Route> {
        self.route.map(|index| &self.table.routes()[index])
    }

    /// Sends the request to `target` of its route: that target's upstream, with its edits.
    fn use_target(&mut self, target: TargetId) {
        if let Some(route) = self.route() {
            self.upstream = route.target(target).upstream;
            self.target = Some(target);
        }
    }

    /// Switches the request to its route's fallback target: once, and never to the upstream
    /// already serving it (a canary split or the kill switch may have picked legacy already).
    /// Returns whether it did.
    fn take_fallback(&mut self, reason: FallbackReason) -> bool {
        let Some((fallback, upstream)) = self
            .route()
            .and_then(|route| route.fallback.map(|id| (id, route.target(id).upstream)))
        else {
            return false;
        };
        if self.fell_back || upstream == self.upstream {
            return false;
        }
        self.fell_back = true;
        self.fallback = Some((self.upstream, reason));
        self.use_target(fallback);
        self.failed_attempts = 0;
        self.tried = Tried::NONE;
        // The old index means nothing in the new pool.
        self.backend = None;
        true
    }

    /// The `route` label of metrics and logs: the route's name, `default` for requests no route
    /// matched, `(refused)` for requests refused before routing (limits, framing, hygiene).
    fn route_label(&self) -> &str {
        match self.route() {
            Some(route) => &route.name,
            None if self.routed => "default",
            None => "(refused)",
        }
    }

    /// Whether the request's deadline has (all but) passed.
    fn deadline_reached(&self) -> bool {
        Instant::now() + DEADLINE_SLACK >= self.deadline
    }

    /// Whether `error` is an upstream timeout that was cut short to the request's deadline: the
    /// route's budget ran out, which says nothing about the backend's health.
    fn cut_by_deadline(&self, error: &Error) -> bool {
        matches!(
            error.etype(),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
        ) && self.deadline_reached()
    }

    /// The time left before the request's deadline; a 504 error once it has passed.
    fn check_deadline(&mut self) -> Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.refusal = Some(Reason::RequestTimeout);
            return Err(Error::explain(
                ErrorType::HTTPStatus(504),
                "request deadline passed",
            ));
        }
        Ok(left)
    }
}

#[async_trait]
impl ProxyHttp for StranglerProxy {
    type CTX = RequestContext;

    /// Pingora registers a (disabled) response-compression module by default, and every request
    /// pays for its filter calls. strangler passes bodies through as the backend sent them.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Self::CTX {
        let table = self.routes.load_full();
        let upstream = table.default_upstream();
        let started = Instant::now();
        let deadline = started + table.config().server.request_timeout;
        RequestContext {
            table,
            route: None,
            routed: false,
            upstream,
            target: None,
            request_id: HeaderValue::from_static(""),
            shadow: None,
            recording: None,
            backend: None,
            failed_attempts: 0,
            tried: Tried::NONE,
            fell_back: false,
            fallback: None,
            refusal: None,
            body_bytes: 0,
            retry_on_fallback: false,
            started,
            deadline,
            span: None,
            origin: None,
        }
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
        let request = session.req_header_mut();
        match request.headers.get(REQUEST_ID) {
            Some(id) if is_acceptable_request_id(id) => ctx.request_id = id.clone(),
            _ => {
                ctx.request_id = connection::new_request_id();
                request.insert_header(REQUEST_ID, ctx.request_id.clone())?;
            }
        }
        connection::request_started(ctx.deadline, &ctx.request_id);
        ctx.origin = peer_ip(session)
            .map(|peer| ctx.table.trusted_proxies.origin(session.req_header(), peer));
        let refusal = hygiene::check_underscore_headers(session.req_header_mut())
            .map(|refusal| refusal.reason)
            .or_else(|| check_limits(session, &ctx.table.config().server.limits));
        // A client that stops sending its body mid-way is cut off (408) instead of holding a slot.
        let body_idle = ctx.table.config().server.limits.body_idle_timeout;
        session
            .as_downstream_mut()
            .set_read_timeout(Some(body_idle));
        if let Some(reason) = refusal {
            ctx.refusal = Some(reason);
            let status = reason
                .status()
                .expect("a request check's reason has a status");
            write_error_response(session, status, reason, &ctx.request_id).await?;
            return Ok(true);
        }

        // An absolute-form target (`GET http://host/a`) is routed and forwarded in origin form:
        // its authority agrees with `Host` (checked above), and backends expect a path.
        let absolute =
            hygiene::split_absolute_form(session.req_header().raw_path()).map(|(_, path)| {
                if path.first() == Some(&b'/') {
                    path.to_vec()
                } else {
                    [b"/", path].concat()
                }
            });
        if let Some(origin_form) = absolute {
            session.req_header_mut().set_raw_path(&origin_form)?;
        }
        ctx.route = ctx.table.find(session.req_header());
        ctx.routed = true;
        let Some(index) = ctx.route else {
            return Ok(false);
        };
        let route = &ctx.table.routes()[index];
        if let Some(retired) = &route.retired {
            let mut response = ResponseHeader::build(retired.status, Some(4))?;
            response.insert_header(CONTENT_LENGTH, retired.body.len())?;
            response.insert_header(STRANGLER_STAGE, "retired")?;
            response.insert_header(REQUEST_ID, ctx.request_id.clone())?;
            session
                .write_response_header(Box::new(response), retired.body.is_empty())
                .await?;
            if !retired.body.is_empty() {
                session
                    .write_response_body(Some(retired.body.clone()), true)
                    .await?;
            }
            return Ok(true);
        }
        if let Some(timeout) = route.timeout {
            ctx.deadline = ctx.started + timeout;
            connection::deadline_moved(ctx.deadline);
        }
        if ctx
            .table
            .kill_switch
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            // Everything back to legacy as legacy expects it, and no copies anywhere.
            let (legacy, primary) = (route.legacy, route.target(route.primary).upstream);
            if route.shadow.is_some() {
                self.metrics
                    .shadow_event(&route.name, ShadowEvent::SkippedKillSwitch);
            }
            ctx.use_target(legacy);
            if primary != ctx.upstream {
                ctx.fallback = Some((primary, FallbackReason::KillSwitch));
            }
            return Ok(false);
        }
        let client = ctx.origin.map(|origin| origin.client);
        let target = match &route.split {
            Some(split) => split.pick(session.req_header(), client),
            None => route.primary,
        };
        let (held, legacy) = (
            route.guard.as_ref().is_some_and(|guard| guard.holds()),
            route.legacy,
        );
        ctx.use_target(target);
        // A tripped guard holds the route on legacy, as legacy expects it; unlike the kill
        // switch, copies still go out, so the team sees when the new side is healthy again.
        if held {
            let chosen = ctx.upstream;
            ctx.use_target(legacy);
            if chosen != ctx.upstream {
                ctx.fallback = Some((chosen, FallbackReason::Guard));
            }
        }
        if let Some(forced) = tester_choice(&ctx.table, session.req_header(), client) {
            ctx.target = ctx.route().and_then(|route| route.target_for(forced));
            ctx.upstream = forced;
        }
        let route = &ctx.table.routes()[index];
        // A protocol switch (WebSocket) is a conversation, not a request to replay.
        let upgrade = hygiene::is_upgrade_request(session.req_header());
        if upgrade && route.shadow.is_some() {
            self.metrics
                .shadow_event(&route.name, ShadowEvent::SkippedUpgrade);
        }
        ctx.recording = route.record.as_ref().and_then(|rule| {
            crate::corpus::begin(
                &route.name,
                rule,
                session.req_header(),
                &ctx.table.config().server,
            )
        });
        if let Some(rule) = route.shadow.as_ref().filter(|_| !upgrade) {
            ctx.shadow = self.shadows.begin(
                &route.name,
                rule,
                session.req_header(),
                &ctx.request_id,
                &ctx.table.upstreams()[ctx.upstream],
                Origin {
                    stage: route.stage,
                    generation: ctx.table.generation(),
                    config_sha256: ctx.table.sha256(),
                    guard: route.guard.as_ref(),
                },
            );
        }
        Ok(false)
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
        if let Some(copy) = ctx.shadow.as_mut()
            && !response.status.is_informational()
        {
            copy.capture_primary_header(response);
        }
        Ok(())
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

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Self::CTX) {
        connection::request_finished();
        let span = ctx.span.take();
        let shadowed = ctx.shadow.is_some();
        if let Some(copy) = ctx.shadow.as_mut() {
            copy.finish(error.is_some());
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        let route = ctx.route_label();
        let pool = ctx.table.upstream(ctx.upstream);
        let upstream = pool.name();
        let mut code_buffer = itoa::Buffer::new();
        let code = code_buffer.format(status);
        self.metrics
            .requests
            .with_label_values(&[route, upstream, code])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[route, upstream])
            .observe(elapsed.as_secs_f64());
        record_in_guard(ctx, status, error.is_some(), elapsed, &self.metrics);
        if ctx.routed && ctx.route.is_none() && status != 0 {
            let request = session.req_header();
            self.metrics
                .unmatched
                .record(request.method.as_str(), request.uri.path());
        }
        if let Some((from, why)) = ctx.fallback {
            self.metrics
                .fallbacks
                .with_label_values(&[
                    route,
                    ctx.table.upstream(from).name(),
                    upstream,
                    why.label(),
                ])
                .inc();
        }
        let reason = ctx.refusal.or(error.map(|e| classify(e).1));
        if let Some(reason) = reason {
            self.metrics
                .upstream_errors
                .with_label_values(&[route, upstream, reason.as_str()])
                .inc();
        }
        let backend = ctx.backend.map(|index| pool.backends()[index].address());
        if let Some(span) = span {
            span.finish(&SpanEnd {
                status,
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
            status,
            // Whole microseconds, so the value prints without float noise (1.911, not 1.9109999).
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            bytes = session.body_bytes_sent(),
            shadowed,
            fallback = ctx.fell_back,
        );
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        // Every wait on the upstream is cut to the time left, so a slow upstream gets its 504
        // at the request's deadline, not a read timeout later.
        let left = ctx.check_deadline()?;
        loop {
            if let Some((index, peer)) = ctx.table.upstream(ctx.upstream).select_untried(ctx.tried)
            {
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

    /// Failed requests are logged once, by `fail_to_proxy`, with the route and request id.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        true
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut error: Box<Error>,
    ) -> Box<Error> {
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

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        error: Box<Error>,
        ctx: &mut Self::CTX,
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

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora_http::RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // The tester's token authorizes at the proxy; no backend (nor a shadow copy, which
        // starts from this request) needs it.
        if let Some(tester) = &ctx.table.tester_override {
            upstream_request.remove_header(&tester.token_header);
        }
        if let (Some(origin), Some(peer)) = (ctx.origin, peer_ip(session)) {
            forwarded::set_forwarding_headers(
                upstream_request,
                &origin,
                peer,
                session.req_header().headers.get(HOST),
                // TLS terminated here (a TLS listener, see `tls.rs`).
                session
                    .digest()
                    .is_some_and(|digest| digest.ssl_digest.is_some()),
            )?;
        }
        // The backend's spans nest under the proxy's own span.
        if let Some(traceparent) = ctx.span.as_ref().and_then(RequestSpan::traceparent) {
            upstream_request.insert_header(TRACEPARENT, traceparent)?;
        }

        // The copy starts from the request before any target's edits: it gets its own.
        if let Some(copy) = ctx.shadow.as_mut() {
            copy.set_forwarded_request(upstream_request);
        }
        let target = ctx
            .route()
            .zip(ctx.target)
            .map(|(route, target)| route.target(target));
        if let Some(target) = target {
            target.edits.apply(upstream_request)?;
        }
        if let Some(copy) = ctx.shadow.as_mut() {
            copy.set_primary_request(upstream_request);
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
        strip_response_hop_by_hop(response);
        hygiene::keep_upgrade_headers(response)?;
        hygiene::strip_bodyless_framing(response);
        if !response.headers.contains_key(REQUEST_ID) {
            response.insert_header(REQUEST_ID, ctx.request_id.clone())?;
        }
        if ctx.fell_back {
            let fallback = ctx.table.upstream(ctx.upstream).name().to_owned();
            response.insert_header(STRANGLER_FALLBACK, fallback)?;
        }
        match ctx.route() {
            Some(route) => route.response_headers.apply(response),
            None => Ok(()),
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let (status, reason) = classify(error);
        let mut reason = ctx.refusal.unwrap_or(reason);
        // An upstream timeout cut to the request's deadline is the deadline's doing.
        if status == 504 && ctx.deadline_reached() {
            reason = Reason::RequestTimeout;
            ctx.refusal = Some(reason);
        }
        if status > 0 {
            let written = write_error_response(session, status, reason, &ctx.request_id).await;
            if let Err(write_error) = written {
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
}

/// The upstream a tester forces with the override header, when the request is authorized.
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
            (crate::guard::Side::New, true)
        }
        // Held on legacy by the guard or the kill switch: not a sample of either side's health.
        Some((_, FallbackReason::Guard | FallbackReason::KillSwitch)) => return,
        _ if ctx.upstream == legacy => (crate::guard::Side::Legacy, status >= 500),
        _ => (
            crate::guard::Side::New,
            status >= 500 || (status == 0 && failed_without_answer),
        ),
    };
    if let Some(trip) = guard.record_request(side, failed, elapsed) {
        crate::guard::report(&route.name, &trip, metrics);
    }
}

fn tester_choice(
    table: &RouteTable,
    request: &pingora_http::RequestHeader,
    client: Option<std::net::IpAddr>,
) -> Option<UpstreamId> {
    let tester = table.tester_override.as_ref()?;
    let wanted = request.headers.get(&tester.header)?;
    if !tester.authorizes(request, client) {
        return None;
    }
    table.upstream_id(wanted.to_str().ok()?)
}

/// The limit `request` breaks (its reason carries the status), checked before anything is routed
/// or read.
fn check_limits(session: &Session, limits: &crate::config::LimitsConfig) -> Option<Reason> {
    let request = session.req_header();
    if request.raw_path().len() as u64 > limits.max_uri_length.as_u64() {
        return Some(Reason::UriTooLong);
    }
    if request.headers.len() > limits.max_header_count {
        return Some(Reason::TooManyHeaders);
    }
    let header_bytes: usize = request
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes as u64 > limits.max_header_bytes.as_u64() {
        return Some(Reason::HeadersTooLarge);
    }
    if request.version == http::Version::HTTP_11 && !request.headers.contains_key(HOST) {
        return Some(Reason::MissingHost);
    }
    let refusal = hygiene::check_request_target(request)
        .or_else(|| hygiene::check_host(request))
        .or_else(|| hygiene::check_path(request));
    if let Some(refusal) = refusal {
        return Some(refusal.reason);
    }
    if let Some(reason) = ambiguous_framing(session) {
        return Some(reason);
    }
    let declared = request
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_body.as_u64()) {
        return Some(Reason::BodyTooLarge);
    }
    None
}

/// Request framing that two parsers could read differently (the stuff of request smuggling).
/// Pingora tolerates some of it; a proxy in front of legacy servers of unknown vintage refuses
/// all of it.
fn ambiguous_framing(session: &Session) -> Option<Reason> {
    let request = session.req_header();
    let mut encodings = request
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter();
    if let Some(encoding) = encodings.next() {
        // Pingora drops `Content-Length` when `Transfer-Encoding` is also present (reading the
        // body as chunked, as RFC 9112 allows); only the raw header still shows both.
        let raw = session
            .as_downstream()
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes());
        if raw.is_some_and(|raw| {
            raw.split(|b| *b == b'\n')
                .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
        }) {
            return Some(Reason::AmbiguousFraming);
        }
        if encodings.next().is_some()
            || !encoding
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        {
            return Some(Reason::UnsupportedTransferEncoding);
        }
        return None;
    }
    // Every Content-Length value (repeated headers, or a comma-separated list) must be plain
    // digits and all must agree; compared in place, without collecting them.
    let mut first: Option<&[u8]> = None;
    let lengths = request
        .headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii);
    for length in lengths {
        if length.is_empty() || !length.iter().all(u8::is_ascii_digit) {
            return Some(Reason::InvalidContentLength);
        }
        match first {
            None => first = Some(length),
            Some(first) if first != length => return Some(Reason::ConflictingContentLength),
            Some(_) => {}
        }
    }
    None
}

fn is_acceptable_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_LEN
        && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// The address of the connection's peer (the client, or the load balancer in front).
fn peer_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|address| address.as_inet())
        .map(|address| address.ip())
}

/// Removes what a backend meant for its hop only. `Transfer-Encoding` stays: Pingora owns
/// response framing and reads it; `Upgrade` stays on a 101, where it is the point.
fn strip_response_hop_by_hop(response: &mut ResponseHeader) {
    let nominated: Vec<HeaderName> = response
        .headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
        .filter(|name| *name != CONTENT_LENGTH && *name != http::header::TRANSFER_ENCODING)
        .collect();
    // On a 101 the upgrade headers are the point (see `hygiene::keep_upgrade_headers`).
    let switching = response.status == http::StatusCode::SWITCHING_PROTOCOLS;
    for name in nominated
        .iter()
        .filter(|name| !(switching && **name == UPGRADE))
    {
        response.remove_header(name);
    }
    response.remove_header(&CONNECTION);
    response.remove_header(&KEEP_ALIVE);
    response.remove_header(&PROXY_CONNECTION);
    response.remove_header(&TE);
    response.remove_header(&TRAILER);
    if !switching {
        response.remove_header(&UPGRADE);
    }
}

/// The status a client sees for a failed request, and a short machine-readable reason.
fn classify(error: &Error) -> (u16, Reason) {
    use ErrorType::*;
    match (error.esource(), error.etype()) {
        (_, HTTPStatus(code)) => (*code, Reason::HttpStatus),
        (ErrorSource::Upstream, ConnectTimedout) => (504, Reason::ConnectTimeout),
        (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => (504, Reason::UpstreamTimeout),
        (ErrorSource::Upstream, ConnectRefused) => (502, Reason::ConnectRefused),
        (ErrorSource::Upstream, ConnectNoRoute | ConnectError | SocketError) => {
            (502, Reason::ConnectError)
        }
        // The backend's certificate did not verify (unknown CA, wrong name), or TLS failed.
        (ErrorSource::Upstream, TLSHandshakeFailure | InvalidCert | TLSHandshakeTimedout) => {
            (502, Reason::UpstreamTls)
        }
        (ErrorSource::Upstream, ConnectionClosed) => (502, Reason::UpstreamClosed),
        // The backend's answer did not parse (garbage, conflicting lengths): Pingora refused it.
        (ErrorSource::Upstream, InvalidHTTPHeader) => (502, Reason::UpstreamBadResponse),
        (ErrorSource::Upstream, _) => (502, Reason::UpstreamError),
        // The client is gone: nobody to answer.
        (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => {
            (0, Reason::ClientGone)
        }
        (ErrorSource::Downstream, ReadTimedout) => (408, Reason::ClientTimeout),
        (ErrorSource::Downstream, _) => (400, Reason::BadRequest),
        (ErrorSource::Internal | ErrorSource::Unset, _) => (500, Reason::InternalError),
    }
}

async fn write_error_response(
    session: &mut Session,
    status: u16,
    reason: Reason,
    request_id: &HeaderValue,
) -> Result<()> {
    let body = Bytes::from(format!(
        "{{\"error\":\"{}\",\"status\":{status},\"request_id\":\"{}\"}}\n",
        reason.as_str(),
        String::from_utf8_lossy(request_id.as_bytes())
    ));
    let mut response = ResponseHeader::build(status, Some(5))?;
    response.insert_header(CONTENT_TYPE, "application/json")?;
    response.insert_header(CONTENT_LENGTH, body.len())?;
    response.insert_header(http::header::CACHE_CONTROL, "private, no-store")?;
    response.insert_header(STRANGLER_ERROR, reason.as_str())?;
    response.insert_header(REQUEST_ID, request_id.clone())?;
    if status == 503 {
        // No backend is up: tell clients when trying again makes sense.
        response.insert_header(http::header::RETRY_AFTER, "5")?;
    }
    session
        .as_downstream_mut()
        .write_error_response(response, body)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_hop_by_hop_headers_are_stripped() {
        let mut response = ResponseHeader::build(200, None).unwrap();
        response
            .insert_header("connection", "keep-alive, x-hop")
            .unwrap();
        response.insert_header("x-hop", "1").unwrap();
        response.insert_header("keep-alive", "timeout=5").unwrap();
        response.insert_header("upgrade", "h2c").unwrap();
        response.insert_header("x-kept", "1").unwrap();
        strip_response_hop_by_hop(&mut response);
        let names: Vec<_> = response.headers.keys().map(|name| name.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn generated_request_ids_are_uuids() {
        let id = connection::new_request_id();
        assert_eq!(id.len(), 36);
        assert!(is_acceptable_request_id(&id));
        assert!(!is_acceptable_request_id(&HeaderValue::from_static(
            "has space"
        )));
    }
}
