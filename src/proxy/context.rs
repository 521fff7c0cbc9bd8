//! One request's state across the phases ([`RequestContext`]): the route table generation it
//! started with, the route and target chosen, the backend tried, the fallback taken, the
//! deadline, and the refusal or failure reason once known. Its methods are the moves the phases
//! make on it (switch target, take the fallback, check the deadline).
//!
//! What a phase decides lives beside it (`choose.rs`, `limits.rs`, …); this file only keeps the
//! state and the invariants between its fields (a fallback is taken once, a new pool starts with
//! no backend tried).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use pingora_error::{Error, ErrorType, Result};

use crate::forwarded;
use crate::routing::{Route, RouteTable, TargetId, UpstreamId};
use crate::shadow::ShadowCopy;
use crate::telemetry::RequestSpan;
use crate::upstream::Tried;
use crate::vocabulary::Reason;

/// A timeout this close to the request's deadline was cut to it (timers fire a little early or
/// late).
const DEADLINE_SLACK: Duration = Duration::from_millis(20);

/// Why a request went to its route's legacy target instead of the upstream the route names; the
/// `reason` label of `strangler_fallbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
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
    pub fn label(self) -> &'static str {
        match self {
            FallbackReason::Unreachable => "unreachable",
            FallbackReason::Status => "status",
            FallbackReason::KillSwitch => "kill_switch",
            FallbackReason::Guard => "guard",
        }
    }
}

/// Per-request state. `table` pins the config generation the request started with.
pub struct RequestContext {
    pub(super) table: Arc<RouteTable>,
    /// Index of the matched route; `None` when the default upstream serves the request, or
    /// when the request was refused before it was routed (see `routed`).
    pub(super) route: Option<usize>,
    /// The route table was consulted: a refusal before that is labelled `(refused)`, not as
    /// the default route.
    pub(super) routed: bool,
    /// The upstream serving the current attempt.
    pub(super) upstream: UpstreamId,
    /// The route's target for `upstream`, whose edits the upstream request gets; `None` when
    /// no route matched or a tester forced an upstream the route does not name (no edits).
    pub(super) target: Option<TargetId>,
    pub(super) request_id: HeaderValue,
    /// This request's shadow copy, when its route mirrors it and it was selected.
    pub(super) shadow: Option<Box<ShadowCopy>>,
    /// This request, being recorded for replay (`record:`), when it was selected.
    pub(super) recording: Option<Box<crate::corpus::Recording>>,
    /// The backend (index in its pool) of the current attempt.
    pub(super) backend: Option<usize>,
    /// Connection attempts that failed so far.
    pub(super) failed_attempts: u32,
    /// Backends of the current upstream this request failed on; a retry picks another.
    pub(super) tried: Tried,
    /// The route's fallback upstream took over.
    pub(super) fell_back: bool,
    /// Why the request went to the route's legacy target instead of its upstream, and the
    /// upstream it left; counted once, when the request is logged.
    pub(super) fallback: Option<(UpstreamId, FallbackReason)>,
    /// Why the proxy refused or failed the request, when it knows better than the error type.
    pub(super) refusal: Option<Reason>,
    /// Request body bytes seen so far.
    pub(super) body_bytes: u64,
    /// The upstream answered with a fallback status; the next attempt goes to the fallback.
    pub(super) retry_on_fallback: bool,
    pub(super) started: Instant,
    /// When the whole exchange must be over (`timeout` of the route, else the server's).
    pub(super) deadline: Instant,
    /// This request's span, when traces are exported.
    pub(super) span: Option<RequestSpan>,
    /// The client, behind trusted proxies if any (see [`forwarded`]).
    pub(super) origin: Option<forwarded::Origin>,
}

impl RequestContext {
    /// A request starting now on `table`: the default upstream, the server's deadline.
    pub(super) fn new(table: Arc<RouteTable>) -> Self {
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

    pub(super) fn route(&self) -> Option<&Route> {
        self.route.map(|index| &self.table.routes()[index])
    }

    /// Sends the request to `target` of its route: that target's upstream, with its edits.
    pub(super) fn use_target(&mut self, target: TargetId) {
        if let Some(route) = self.route() {
            self.upstream = route.target(target).upstream;
            self.target = Some(target);
        }
    }

    /// Switches the request to its route's fallback target: once, and never to the upstream
    /// already serving it (a canary split or the kill switch may have picked legacy already).
    /// Returns whether it did.
    pub(super) fn take_fallback(&mut self, reason: FallbackReason) -> bool {
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
    pub(super) fn route_label(&self) -> &str {
        match self.route() {
            Some(route) => &route.name,
            None if self.routed => "default",
            None => "(refused)",
        }
    }

    /// Whether the request's deadline has (all but) passed.
    pub(super) fn deadline_reached(&self) -> bool {
        Instant::now() + DEADLINE_SLACK >= self.deadline
    }

    /// Whether `error` is an upstream timeout that was cut short to the request's deadline: the
    /// route's budget ran out, which says nothing about the backend's health.
    pub(super) fn cut_by_deadline(&self, error: &Error) -> bool {
        matches!(
            error.etype(),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
        ) && self.deadline_reached()
    }

    /// The time left before the request's deadline; a 504 error once it has passed.
    pub(super) fn check_deadline(&mut self) -> Result<Duration> {
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
