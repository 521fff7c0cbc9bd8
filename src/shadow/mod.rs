//! Shadow traffic: copies of a route's requests sent to a candidate upstream, off the request
//! path, so its answers can be compared with the primary's.
//!
//! The contract is that the primary never notices: a copy is decided when the request arrives
//! (method, sample, declared body size, in-flight caps), its body is teed chunk by chunk by
//! reference (no copy, no waiting), and the exchange runs as a task of its own (on the proxy's
//! runtime) with its own connection pool and timeout. When the caps are full a copy is dropped
//! and counted, never queued; memory is bounded by `max_inflight x max_body`. The primary's
//! response is captured (bounded) and, once both answers are in, [`observe`] counts the outcome
//! and the [`DiffSink`] gets it for comparison, off the proxy's threads.
//!
//! This module owns deciding, copying and sending. Routing owns which upstream is primary; the
//! proxy only calls the hooks here from its phases.

mod client;
mod rule;

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

pub use client::ShadowClient;
pub use rule::{ShadowRule, compile_shadow};

use crate::diff::DiffSink;
use crate::exchange::{
    Body, CapturedResponse, MemoryBudget, Provenance, RequestSummary, Reservation, ShadowFailure,
    ShadowOutcome,
};
use crate::metrics::Metrics;
use crate::upstream::UpstreamPool;
use crate::vocabulary::ShadowEvent;

/// Shared by every request: the client, the global cap, the diff sink and metrics.
pub struct ShadowDispatcher {
    client: ShadowClient,
    diffs: DiffSink,
    global: Arc<Semaphore>,
    memory: Arc<MemoryBudget>,
    metrics: Arc<Metrics>,
}

/// What the proxy knows of a request's routing when it decides on a copy.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub stage: crate::config::Stage,
    pub generation: u64,
    pub config_sha256: &'a str,
    /// The route's guard, which counts this copy's verdict.
    pub guard: Option<&'a Arc<crate::guard::Guard>>,
}

/// Counts how a shadow exchange ended; the comparison itself happens in [`crate::diff`].
pub fn observe(outcome: &ShadowOutcome, metrics: &Metrics) {
    let event = match &outcome.shadow {
        Ok(_) => ShadowEvent::Completed,
        Err(ShadowFailure::Timeout) => ShadowEvent::Timeout,
        Err(ShadowFailure::Failed(_)) => ShadowEvent::Error,
        Err(ShadowFailure::OverBudget) => ShadowEvent::DroppedMemory,
    };
    metrics.shadow_event(&outcome.route, event);
    tracing::debug!(
        route = %outcome.route,
        request_id = %outcome.request.request_id,
        primary = ?outcome.primary.as_ref().map(|r| r.status),
        shadow = ?outcome.shadow.as_ref().map(|r| r.status),
        "shadow exchange finished"
    );
}

/// How many bytes of the primary response are kept for comparison.
const PRIMARY_CAPTURE_LIMIT: usize = 1 << 20;

/// One request's shadow copy while the primary is in progress. Lives in the request context.
pub struct ShadowCopy {
    route: String,
    provenance: Provenance,
    rule: Arc<ShadowRule>,
    /// Global and per-route in-flight slots; they travel with the exchange and free on its end.
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    header: Option<RequestHeader>,
    /// The primary upstream's request, for the noise copy.
    noise_header: Option<RequestHeader>,
    /// The upstream that serves the request, which answers the noise copy (with
    /// `compare.noise`).
    noise_upstream: Option<Arc<UpstreamPool>>,
    body: Vec<Bytes>,
    body_len: usize,
    request: RequestSummary,
    /// Set once the copy is on its way; the primary's capture goes through it.
    primary_tx: Option<oneshot::Sender<(Option<CapturedResponse>, Reservation)>>,
    /// Bytes held for the teed body and the primary's capture.
    memory: Reservation,
    /// The primary's capture did not fit the memory budget: nothing to compare.
    over_budget: bool,
    /// Its outcome was counted already (a skip while the body streamed).
    counted: bool,
    metrics: Arc<Metrics>,
    primary: Option<CapturedResponse>,
    /// The primary's body chunks, by reference (Pingora's chunks are buffers of their own).
    primary_body: Body,
    dispatched: bool,
    guard: Option<Arc<crate::guard::Guard>>,
}

impl ShadowDispatcher {
    pub fn new(
        global_inflight: usize,
        max_memory: usize,
        metrics: Arc<Metrics>,
        diffs: DiffSink,
    ) -> Self {
        Self {
            diffs,
            // Enough idle connections for every copy the cap lets out at once, and its noise
            // twin.
            client: ShadowClient::new(global_inflight.saturating_mul(2)),
            global: Arc::new(Semaphore::new(global_inflight)),
            memory: MemoryBudget::new(max_memory),
            metrics,
        }
    }

    /// Decides whether `request`, served by `served`, gets a copy under `rule`. Returns the copy
    /// to fill, or records why not.
    pub fn begin(
        &self,
        route: &str,
        rule: &Arc<ShadowRule>,
        request: &RequestHeader,
        request_id: &HeaderValue,
        served: &Arc<UpstreamPool>,
        origin: Origin<'_>,
    ) -> Option<Box<ShadowCopy>> {
        let skip = |event| {
            self.metrics.shadow_event(route, event);
            None
        };
        if Arc::ptr_eq(&rule.upstream, served) {
            return skip(ShadowEvent::SkippedSameUpstream);
        }
        if !rule.allows_method(&request.method) {
            return skip(ShadowEvent::SkippedMethod);
        }
        if !rule.sampled(request) {
            return skip(ShadowEvent::SkippedSample);
        }
        if declared_body_len(request).is_some_and(|len| len > rule.max_body) {
            return skip(ShadowEvent::SkippedBody);
        }
        let Ok(global) = self.global.clone().try_acquire_owned() else {
            return skip(ShadowEvent::DroppedFull);
        };
        let Ok(per_route) = rule.inflight.clone().try_acquire_owned() else {
            return skip(ShadowEvent::DroppedFull);
        };
        let mut secrets = crate::redact::Secrets::default();
        secrets.add_credentials(request);
        Some(Box::new(ShadowCopy {
            route: route.to_owned(),
            provenance: Provenance {
                primary: served.name().into(),
                candidate: rule.upstream.name().into(),
                stage: origin.stage,
                generation: origin.generation,
                config_sha256: origin.config_sha256.into(),
            },
            rule: rule.clone(),
            permits: Some((global, per_route)),
            header: None,
            noise_header: None,
            noise_upstream: rule.compare.noise.then(|| served.clone()),
            body: Vec::new(),
            body_len: 0,
            request: RequestSummary {
                method: request.method.to_string(),
                path: request.uri.path().to_owned(),
                query: request
                    .uri
                    .query()
                    .map(|query| rule.redaction.query_and_secrets(query, &mut secrets)),
                request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
                secrets: secrets.sorted(),
            },
            primary_tx: None,
            memory: self.memory.reservation(),
            over_budget: false,
            counted: false,
            metrics: self.metrics.clone(),
            primary: None,
            primary_body: Body::default(),
            dispatched: false,
            guard: origin.guard.cloned(),
        }))
    }

    /// Sends the copy once its body is complete. Never waits.
    fn dispatch(&self, copy: &mut ShadowCopy) {
        let Some(header) = copy.header.take() else {
            return;
        };
        copy.dispatched = true;
        // Joined once (when it came in several chunks), shared by both copies.
        let body = rule::join(std::mem::take(&mut copy.body));
        // With noise cancellation, the primary's upstream answers the same request a second time.
        let noise_request = match (copy.noise_header.take(), copy.noise_upstream.take()) {
            (Some(noise_header), Some(pool)) => Some(copy.rule.build_request(
                noise_header,
                body.clone(),
                Some(pool),
            )),
            _ => None,
        };
        let request = copy.rule.build_request(header, body, None);
        let (primary_tx, primary_rx) = oneshot::channel();
        copy.primary_tx = Some(primary_tx);
        self.metrics.shadow_event(&copy.route, ShadowEvent::Sent);

        let client = self.client.clone();
        let metrics = self.metrics.clone();
        let diffs = self.diffs.clone();
        let rule = copy.rule.clone();
        let route = copy.route.clone();
        let provenance = copy.provenance.clone();
        let summary = std::mem::take(&mut copy.request);
        let permits = copy.permits.take();
        let guard = copy.guard.take();
        let mut shadow_memory = self.memory.reservation();
        let mut noise_memory = self.memory.reservation();
        let exchange = async move {
            let _permits = permits;
            metrics.shadow_inflight.inc();
            let shadow = client.send(
                request,
                rule.timeout,
                rule.response_limit,
                &mut shadow_memory,
            );
            let noise = async {
                match noise_request {
                    Some(request) => Some(
                        client
                            .send(
                                request,
                                rule.timeout,
                                rule.response_limit,
                                &mut noise_memory,
                            )
                            .await,
                    ),
                    None => None,
                }
            };
            let (shadow, noise) = tokio::join!(shadow, noise);
            metrics.shadow_inflight.dec();
            // The primary has usually finished long before; if it failed, `None` arrives.
            let (primary, mut memory) = primary_rx.await.unwrap_or_default();
            memory.absorb(shadow_memory);
            memory.absorb(noise_memory);
            let outcome = ShadowOutcome {
                route,
                provenance,
                request: summary,
                primary,
                shadow,
            };
            observe(&outcome, &metrics);
            diffs.submit(crate::diff::job(
                rule.compare.clone(),
                outcome,
                noise,
                memory,
                guard,
            ));
        };
        // A task of its own on the proxy's runtime: the request never awaits it. (A dedicated
        // runtime isolated nothing more, since every exchange is bounded by caps and timeouts,
        // and cost ~30 % more CPU per copy in cross-thread wake-ups; see docs/performance.md.)
        tokio::spawn(exchange);
    }
}

fn declared_body_len(request: &RequestHeader) -> Option<usize> {
    request
        .headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

impl ShadowCopy {
    /// The request as it left the client side of the proxy (`forwarded`: forwarding headers
    /// set, no target's edits yet); the copy applies its own target's edits to it.
    pub fn set_forwarded_request(&mut self, forwarded: &RequestHeader) {
        if self.dispatched {
            return;
        }
        self.header = Some(self.rule.shadow_header(forwarded));
    }

    /// The request exactly as the primary upstream gets it, for the noise copy (with
    /// `compare.noise`), which must ask the same question twice.
    pub fn set_primary_request(&mut self, primary: &RequestHeader) {
        if !self.dispatched && self.noise_upstream.is_some() {
            self.noise_header = Some(self.rule.noise_header(primary));
        }
    }

    /// Tees one chunk of the client's body (by reference) and sends the copy at the end.
    /// Returns `false` when the copy was abandoned (body over `max_body`).
    pub fn on_body_chunk(
        &mut self,
        dispatcher: &ShadowDispatcher,
        chunk: Option<&Bytes>,
        end_of_stream: bool,
    ) -> bool {
        if self.dispatched {
            // A retry replays the body; the copy already left.
            return true;
        }
        if let Some(chunk) = chunk.filter(|c| !c.is_empty()) {
            self.body_len += chunk.len();
            if self.body_len > self.rule.max_body {
                dispatcher
                    .metrics
                    .shadow_event(&self.route, ShadowEvent::SkippedBody);
                self.counted = true;
                return false;
            }
            if !self.memory.grow(chunk.len()) {
                dispatcher
                    .metrics
                    .shadow_event(&self.route, ShadowEvent::DroppedMemory);
                self.counted = true;
                return false;
            }
            self.body.push(chunk.clone());
        }
        if end_of_stream {
            dispatcher.dispatch(self);
        }
        true
    }

    pub fn capture_primary_header(&mut self, response: &ResponseHeader) {
        self.primary = Some(CapturedResponse {
            status: response.status,
            headers: response.headers.clone(),
            body: Body::default(),
            truncated: false,
        });
        // A retried request's first answer is not compared (its bytes stay held until the
        // exchange ends).
        self.primary_body = Body::default();
    }

    pub fn capture_primary_body(&mut self, chunk: Option<&Bytes>) {
        let (Some(primary), Some(chunk)) = (self.primary.as_mut(), chunk) else {
            return;
        };
        if self.over_budget {
            return;
        }
        let room = PRIMARY_CAPTURE_LIMIT.saturating_sub(self.primary_body.len());
        if chunk.len() > room {
            primary.truncated = true;
        }
        if room == 0 || chunk.is_empty() {
            return;
        }
        // By reference: the chunk is a buffer of its own, which the client's copy shares.
        let kept = if chunk.len() > room {
            chunk.slice(..room)
        } else {
            chunk.clone()
        };
        if !self.memory.grow(kept.len()) {
            // Nothing is compared on half a body; the exchange is counted as dropped.
            self.over_budget = true;
            self.primary_body = Body::default();
            return;
        }
        self.primary_body.push(kept);
    }

    /// Hands the primary's response (or its absence) to the shadow task.
    pub fn finish(&mut self, primary_failed: bool) {
        if let Some(tx) = self.primary_tx.take() {
            if self.over_budget {
                self.metrics
                    .shadow_event(&self.route, ShadowEvent::DroppedMemory);
            }
            let primary = match self.primary.take() {
                Some(mut primary) if !primary_failed && !self.over_budget => {
                    primary.body = std::mem::take(&mut self.primary_body);
                    Some(primary)
                }
                _ => None,
            };
            let _ = tx.send((primary, std::mem::take(&mut self.memory)));
        }
    }
}

impl Drop for ShadowCopy {
    /// Every copy begun ends in exactly one outcome: one that never left is `abandoned`.
    fn drop(&mut self) {
        if !self.dispatched && !self.counted {
            self.metrics
                .shadow_event(&self.route, ShadowEvent::Abandoned);
        }
    }
}
