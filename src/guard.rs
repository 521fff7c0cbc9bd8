//! Guards: a canary that rolls itself back.
//!
//! A route's `guard:` watches its new side over a sliding window — the new side's error rate,
//! its p99 latency (absolute, or relative to legacy's on the same route) and the shadow
//! mismatch rate — and, once a threshold is crossed with enough samples behind it, **trips**:
//! the route sends everything to its legacy target (with legacy's own edits, as the kill
//! switch does), keeps shadowing if it shadows, and stays tripped until an operator resets it
//! (`POST /routes/{name}/reset`) or the route's config changes. A trip is a latch, never
//! undone by the numbers getting better: with the new side out of traffic they could only
//! improve by not being measured, which is how a guard flaps. `mode: observe` latches the same
//! way and reports, but changes no routing.
//!
//! This module owns the guard's settings check, the window (lock-free: per-bucket atomic
//! counters and log-linear latency histograms, rotated by time), the rules and the latch. The
//! proxy tells it what each request did and routes by [`Guard::holds`]; the diff worker tells
//! it each verdict; the reload carries a guard to the next generation while the route's config
//! is unchanged ([`crate::routing::RouteTable::inherit_guards`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Diagnostic, GuardConfig, GuardMode};
use crate::metrics::Metrics;

/// Buckets a window is cut into: the window slides by a tenth of its length.
const BUCKETS: usize = 10;

/// How often (at most) a route's rules are evaluated; recording is always counted.
const EVALUATE_EVERY_MS: u64 = 20;

/// Why a guard tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TripReason {
    /// The new side's errors (5xx, or failures the route fell back from) over `max_error_rate`.
    ErrorRate = 1,
    /// The new side's p99 over `max_p99`, or over `max_latency_ratio` times legacy's.
    Latency = 2,
    /// Shadow mismatches over `max_mismatch_rate`.
    Mismatch = 3,
}

impl TripReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TripReason::ErrorRate => "error_rate",
            TripReason::Latency => "latency",
            TripReason::Mismatch => "mismatch",
        }
    }
}

/// Which side of a route served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The route's legacy target's upstream.
    Legacy,
    /// Any other upstream of the route.
    New,
}

/// What tripped a guard, with the numbers that did it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trip {
    pub reason: &'static str,
    pub mode: GuardMode,
    /// RFC 3339.
    pub at: String,
    /// The measured value: a rate (0–1) or a p99 in milliseconds.
    pub observed: f64,
    /// The threshold it crossed, in the same unit.
    pub threshold: f64,
    /// Samples in the window the rule judged.
    pub samples: u64,
    /// The same, as a sentence for logs and `strangler routes`.
    pub detail: String,
}

/// Checks a route's `guard:`; `new_side` says whether the route can send requests anywhere
/// but legacy, `shadowed` whether it mirrors.
pub fn check(
    config: &GuardConfig,
    path: &str,
    new_side: bool,
    shadowed: bool,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let rates = [
        ("max_error_rate", config.max_error_rate),
        ("max_mismatch_rate", config.max_mismatch_rate),
    ];
    for (field, rate) in rates {
        if let Some(rate) = rate
            && !(rate > 0.0 && rate <= 1.0)
        {
            diagnostics.push(
                Diagnostic::new(
                    format!("{path}.{field}"),
                    "must be above 0.0 and at most 1.0",
                )
                .with_hint("a share of the window's requests: 0.05 is 5 %"),
            );
        }
    }
    if let Some(ratio) = config.max_latency_ratio
        && !(ratio >= 1.0 && ratio.is_finite())
    {
        diagnostics.push(
            Diagnostic::new(format!("{path}.max_latency_ratio"), "must be at least 1.0")
                .with_hint("2.0 trips when the new side's p99 is over twice legacy's"),
        );
    }
    if config.max_p99.is_some_and(|p99| p99.is_zero()) {
        diagnostics.push(Diagnostic::new(
            format!("{path}.max_p99"),
            "must be greater than zero",
        ));
    }
    if config.window < Duration::from_secs(1) || config.window > Duration::from_secs(3600) {
        diagnostics.push(
            Diagnostic::new(format!("{path}.window"), "must be between 1s and 1h")
                .with_hint("30s judges the last half-minute"),
        );
    }
    if config.min_requests == 0 {
        diagnostics.push(
            Diagnostic::new(format!("{path}.min_requests"), "must be at least 1")
                .with_hint("a handful of requests must not trip a guard: 20 is a sane floor"),
        );
    }
    let traffic_rules = config.max_error_rate.is_some()
        || config.max_p99.is_some()
        || config.max_latency_ratio.is_some();
    if !traffic_rules && config.max_mismatch_rate.is_none() {
        diagnostics.push(
            Diagnostic::new(path.to_owned(), "sets no threshold: it would never trip")
                .with_hint("set max_error_rate, max_p99, max_latency_ratio or max_mismatch_rate"),
        );
    }
    if traffic_rules && !new_side {
        diagnostics.push(
            Diagnostic::new(
                path.to_owned(),
                "watches the new side's traffic, but this route sends none anywhere but legacy",
            )
            .with_hint("guard a canary (`split`) or a route whose `upstream` is the new service"),
        );
    }
    if config.max_mismatch_rate.is_some() && !shadowed {
        diagnostics.push(
            Diagnostic::new(
                format!("{path}.max_mismatch_rate"),
                "needs the route to shadow: there are no comparisons to count",
            )
            .with_hint("add `shadow: { upstream: ... }` to the route"),
        );
    }
}

/// Latency histogram: four sub-buckets per power of two of microseconds (within ~19 %), from
/// 1 µs to past a minute.
struct Histogram([AtomicU32; SLOTS]);

const SLOTS: usize = 108;

fn slot_of(micros: u64) -> usize {
    if micros < 4 {
        return micros as usize;
    }
    let power = 63 - micros.leading_zeros() as usize;
    let index = (power - 1) * 4 + ((micros >> (power - 2)) & 3) as usize;
    index.min(SLOTS - 1)
}

/// The upper bound, in microseconds, of what slot `index` holds.
fn slot_upper(index: usize) -> u64 {
    if index < 4 {
        return index as u64 + 1;
    }
    let power = index / 4 + 1;
    let low = (4 + (index % 4) as u64) << (power - 2);
    low + (1 << (power - 2))
}

impl Histogram {
    fn new() -> Self {
        Histogram(std::array::from_fn(|_| AtomicU32::new(0)))
    }

    fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.0[slot_of(micros)].fetch_add(1, Relaxed);
    }

    fn clear(&self) {
        for slot in &self.0 {
            slot.store(0, Relaxed);
        }
    }
}

/// One slice of the window.
struct Bucket {
    /// Which slice of time this bucket holds now (`now / bucket length`).
    slice: AtomicU64,
    new_requests: AtomicU64,
    new_errors: AtomicU64,
    legacy_requests: AtomicU64,
    compared: AtomicU64,
    mismatches: AtomicU64,
    new_latency: Histogram,
    legacy_latency: Histogram,
}

impl Bucket {
    fn new() -> Self {
        Bucket {
            slice: AtomicU64::new(0),
            new_requests: AtomicU64::new(0),
            new_errors: AtomicU64::new(0),
            legacy_requests: AtomicU64::new(0),
            compared: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            new_latency: Histogram::new(),
            legacy_latency: Histogram::new(),
        }
    }

    fn clear(&self) {
        for counter in [
            &self.new_requests,
            &self.new_errors,
            &self.legacy_requests,
            &self.compared,
            &self.mismatches,
        ] {
            counter.store(0, Relaxed);
        }
        self.new_latency.clear();
        self.legacy_latency.clear();
    }
}

/// The sums of a window.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Totals {
    new_requests: u64,
    new_errors: u64,
    legacy_requests: u64,
    compared: u64,
    mismatches: u64,
    /// Milliseconds.
    new_p99: f64,
    legacy_p99: f64,
}

/// A route's guard: its settings, window and latch. Shared by every generation that keeps the
/// route's config unchanged.
pub struct Guard {
    config: GuardConfig,
    started: Instant,
    bucket_ms: u64,
    buckets: [Bucket; BUCKETS],
    last_evaluated: AtomicU64,
    /// 0 while untripped, else a [`TripReason`].
    tripped: AtomicU8,
    trip: Mutex<Option<Trip>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("config", &self.config)
            .field("tripped", &self.tripped)
            .finish_non_exhaustive()
    }
}

impl Guard {
    pub fn new(config: &GuardConfig) -> Guard {
        let window_ms = u64::try_from(config.window.as_millis()).unwrap_or(u64::MAX);
        Guard {
            config: config.clone(),
            started: Instant::now(),
            bucket_ms: (window_ms / BUCKETS as u64).max(1),
            buckets: std::array::from_fn(|_| Bucket::new()),
            last_evaluated: AtomicU64::new(0),
            tripped: AtomicU8::new(0),
            trip: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Whether the route must send everything to legacy now: tripped, and enforcing.
    pub fn holds(&self) -> bool {
        self.config.mode == GuardMode::Enforce && self.tripped.load(Relaxed) != 0
    }

    /// The trip in force, if any (in either mode).
    pub fn trip(&self) -> Option<Trip> {
        self.trip.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts one finished request; returns the trip when this call tripped the guard.
    pub fn record_request(&self, side: Side, failed: bool, elapsed: Duration) -> Option<Trip> {
        self.record_request_at(self.now_ms(), side, failed, elapsed)
    }

    /// Counts one judged shadow exchange; returns the trip when this call tripped the guard.
    pub fn record_diff(&self, mismatch: bool) -> Option<Trip> {
        self.record_diff_at(self.now_ms(), mismatch)
    }

    /// Clears the latch and the window; returns the trip it cleared.
    pub fn reset(&self) -> Option<Trip> {
        let mut trip = self.trip.lock().unwrap_or_else(|e| e.into_inner());
        for bucket in &self.buckets {
            bucket.clear();
        }
        self.tripped.store(0, Relaxed);
        trip.take()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn record_request_at(
        &self,
        now_ms: u64,
        side: Side,
        failed: bool,
        elapsed: Duration,
    ) -> Option<Trip> {
        if self.tripped.load(Relaxed) != 0 {
            return None;
        }
        let bucket = self.bucket(now_ms)?;
        match side {
            Side::New => {
                bucket.new_requests.fetch_add(1, Relaxed);
                if failed {
                    bucket.new_errors.fetch_add(1, Relaxed);
                }
                bucket.new_latency.record(elapsed);
            }
            Side::Legacy => {
                bucket.legacy_requests.fetch_add(1, Relaxed);
                bucket.legacy_latency.record(elapsed);
            }
        }
        self.evaluate(now_ms)
    }

    fn record_diff_at(&self, now_ms: u64, mismatch: bool) -> Option<Trip> {
        if self.tripped.load(Relaxed) != 0 {
            return None;
        }
        let bucket = self.bucket(now_ms)?;
        bucket.compared.fetch_add(1, Relaxed);
        if mismatch {
            bucket.mismatches.fetch_add(1, Relaxed);
        }
        self.evaluate(now_ms)
    }

    /// The bucket of `now`, emptied first when it still holds an older slice. `None` for a
    /// straggler whose slice the bucket has already moved past.
    fn bucket(&self, now_ms: u64) -> Option<&Bucket> {
        let slice = now_ms / self.bucket_ms + 1;
        let bucket = &self.buckets[(slice % BUCKETS as u64) as usize];
        let held = bucket.slice.load(Relaxed);
        if held == slice {
            return Some(bucket);
        }
        if held > slice {
            return None;
        }
        // One thread empties it; a count racing the clear may be lost, which a window of
        // thousands of requests does not notice.
        if bucket
            .slice
            .compare_exchange(held, slice, Relaxed, Relaxed)
            .is_ok()
        {
            bucket.clear();
        }
        Some(bucket)
    }

    fn has_latency_rules(&self) -> bool {
        self.config.max_p99.is_some() || self.config.max_latency_ratio.is_some()
    }

    fn totals(&self, now_ms: u64, with_latency: bool) -> Totals {
        let slice = now_ms / self.bucket_ms + 1;
        let oldest = slice.saturating_sub(BUCKETS as u64 - 1);
        let mut totals = Totals::default();
        let mut new_latency = [0u64; SLOTS];
        let mut legacy_latency = [0u64; SLOTS];
        for bucket in &self.buckets {
            let held = bucket.slice.load(Relaxed);
            if held < oldest || held > slice {
                continue;
            }
            totals.new_requests += bucket.new_requests.load(Relaxed);
            totals.new_errors += bucket.new_errors.load(Relaxed);
            totals.legacy_requests += bucket.legacy_requests.load(Relaxed);
            totals.compared += bucket.compared.load(Relaxed);
            totals.mismatches += bucket.mismatches.load(Relaxed);
            if !with_latency {
                continue;
            }
            for index in 0..SLOTS {
                new_latency[index] += u64::from(bucket.new_latency.0[index].load(Relaxed));
                legacy_latency[index] += u64::from(bucket.legacy_latency.0[index].load(Relaxed));
            }
        }
        totals.new_p99 = p99_ms(&new_latency);
        totals.legacy_p99 = p99_ms(&legacy_latency);
        totals
    }

    /// Judges the window after a sample. Counts are summed every time (a few dozen loads), so
    /// a rate trips on the very sample that crosses it; latency percentiles (thousands of
    /// histogram slots) at most every [`EVALUATE_EVERY_MS`] per route.
    fn evaluate(&self, now_ms: u64) -> Option<Trip> {
        let last = self.last_evaluated.load(Relaxed);
        let latency_due = (now_ms >= last + EVALUATE_EVERY_MS || last == 0)
            && self.has_latency_rules()
            && self
                .last_evaluated
                .compare_exchange(last, now_ms.max(1), Relaxed, Relaxed)
                .is_ok();
        let totals = self.totals(now_ms, latency_due);
        let (reason, observed, threshold, samples, detail) = self.judge(&totals, latency_due)?;
        let mut trip = self.trip.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .tripped
            .compare_exchange(0, reason as u8, Relaxed, Relaxed)
            .is_err()
        {
            return None;
        }
        let tripped = Trip {
            reason: reason.as_str(),
            mode: self.config.mode,
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            observed,
            threshold,
            samples,
            detail,
        };
        *trip = Some(tripped.clone());
        Some(tripped)
    }

    /// The first rule the window breaks: (reason, observed, threshold, samples, sentence).
    fn judge(&self, t: &Totals, with_latency: bool) -> Option<(TripReason, f64, f64, u64, String)> {
        let config = &self.config;
        let min = config.min_requests;
        let window = humantime::format_duration(config.window);
        if let Some(max) = config.max_error_rate
            && t.new_requests >= min
        {
            let rate = t.new_errors as f64 / t.new_requests as f64;
            if rate > max {
                return Some((
                    TripReason::ErrorRate,
                    rate,
                    max,
                    t.new_requests,
                    format!(
                        "new side failed {} of {} requests in {window} ({:.1} % > {:.1} %)",
                        t.new_errors,
                        t.new_requests,
                        rate * 100.0,
                        max * 100.0
                    ),
                ));
            }
        }
        if let Some(max) = config.max_p99
            && with_latency
            && t.new_requests >= min
        {
            let max_ms = max.as_secs_f64() * 1000.0;
            if t.new_p99 > max_ms {
                return Some((
                    TripReason::Latency,
                    t.new_p99,
                    max_ms,
                    t.new_requests,
                    format!(
                        "new side's p99 {:.1} ms over {} requests in {window} > {max_ms:.1} ms",
                        t.new_p99, t.new_requests
                    ),
                ));
            }
        }
        if let Some(ratio) = config.max_latency_ratio
            && with_latency
            && t.new_requests >= min
            && t.legacy_requests >= min
        {
            let threshold = t.legacy_p99 * ratio;
            if t.new_p99 > threshold {
                return Some((
                    TripReason::Latency,
                    t.new_p99,
                    threshold,
                    t.new_requests,
                    format!(
                        "new side's p99 {:.1} ms > {ratio} x legacy's {:.1} ms ({} new, {} legacy requests in {window})",
                        t.new_p99, t.legacy_p99, t.new_requests, t.legacy_requests
                    ),
                ));
            }
        }
        if let Some(max) = config.max_mismatch_rate
            && t.compared >= min
        {
            let rate = t.mismatches as f64 / t.compared as f64;
            if rate > max {
                return Some((
                    TripReason::Mismatch,
                    rate,
                    max,
                    t.compared,
                    format!(
                        "shadow mismatched {} of {} comparisons in {window} ({:.1} % > {:.1} %)",
                        t.mismatches,
                        t.compared,
                        rate * 100.0,
                        max * 100.0
                    ),
                ));
            }
        }
        None
    }
}

/// The p99 of a histogram, in milliseconds (the upper bound of its slot); 0 when empty.
fn p99_ms(slots: &[u64; SLOTS]) -> f64 {
    let total: u64 = slots.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = total - total / 100;
    let mut seen = 0;
    for (index, count) in slots.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return slot_upper(index) as f64 / 1000.0;
        }
    }
    slot_upper(SLOTS - 1) as f64 / 1000.0
}

/// Reports a trip: a WARN with the numbers, and the trip counter.
pub fn report(route: &str, trip: &Trip, metrics: &Metrics) {
    metrics
        .guard_trips
        .with_label_values(&[route, trip.reason, trip.mode.as_str()])
        .inc();
    match trip.mode {
        GuardMode::Enforce => tracing::warn!(
            route,
            reason = trip.reason,
            observed = trip.observed,
            threshold = trip.threshold,
            samples = trip.samples,
            "guard tripped: {}; the route serves from legacy until reset (POST /routes/{route}/reset) or its config changes",
            trip.detail
        ),
        GuardMode::Observe => tracing::warn!(
            route,
            reason = trip.reason,
            observed = trip.observed,
            threshold = trip.threshold,
            samples = trip.samples,
            "guard would have tripped (mode: observe, routing unchanged): {}",
            trip.detail
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> GuardConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn diagnostics(yaml: &str, new_side: bool, shadowed: bool) -> Vec<String> {
        let mut found = Vec::new();
        check(
            &config(yaml),
            "routes[0].guard",
            new_side,
            shadowed,
            &mut found,
        );
        found
            .iter()
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect()
    }

    #[test]
    fn the_histogram_keeps_latencies_within_a_fifth() {
        for micros in [
            1u64, 3, 4, 7, 8, 100, 999, 1000, 12_345, 1_000_000, 59_000_000,
        ] {
            let slot = slot_of(micros);
            assert!(slot_upper(slot) > micros, "{micros} in slot {slot}");
            assert!(
                slot == 0 || slot_upper(slot - 1) <= micros,
                "{micros}: slot {slot} starts after it"
            );
            assert!(
                slot_upper(slot) as f64 <= micros as f64 * 1.26 + 1.0,
                "{micros} reported as {}",
                slot_upper(slot)
            );
        }
    }

    #[test]
    fn below_the_minimum_nothing_trips_however_bad() {
        let guard = Guard::new(&config("{ max_error_rate: 0.05, min_requests: 20 }"));
        for i in 0..19 {
            let trip = guard.record_request_at(1000 + i * 30, Side::New, true, Duration::ZERO);
            assert!(trip.is_none(), "tripped on request {i}");
        }
        let trip = guard
            .record_request_at(2000, Side::New, true, Duration::ZERO)
            .expect("the 20th failure trips it");
        assert_eq!(trip.reason, "error_rate");
        assert_eq!(trip.samples, 20);
        assert!(guard.holds());
    }

    #[test]
    fn a_rate_hovering_at_the_threshold_trips_once_and_stays_tripped() {
        let guard = Guard::new(&config("{ max_error_rate: 0.10, min_requests: 20 }"));
        let mut trips = 0;
        // 10 % errors exactly (not over), then 11 %: the latch holds whatever follows.
        for i in 0..2000u64 {
            let failed = if i < 1000 { i % 10 == 0 } else { i % 9 == 0 };
            if guard
                .record_request_at(1000 + i * 25, Side::New, failed, Duration::ZERO)
                .is_some()
            {
                trips += 1;
            }
        }
        assert_eq!(trips, 1);
        assert!(guard.holds());
        for i in 0..100 {
            assert!(
                guard
                    .record_request_at(60_000 + i * 25, Side::New, false, Duration::ZERO)
                    .is_none()
            );
        }
        assert!(guard.holds(), "good numbers do not undo a trip");
        assert!(guard.reset().is_some());
        assert!(!guard.holds());
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        let guard = Guard::new(&config(
            "{ max_error_rate: 0.5, min_requests: 10, window: 10s }",
        ));
        for i in 0..9 {
            assert!(
                guard
                    .record_request_at(1000 + i * 100, Side::New, true, Duration::ZERO)
                    .is_none()
            );
        }
        // Twenty seconds later the nine failures are out of the window.
        for i in 0..10 {
            assert!(
                guard
                    .record_request_at(30_000 + i * 100, Side::New, i == 0, Duration::ZERO)
                    .is_none()
            );
        }
        assert!(!guard.holds());
    }

    #[test]
    fn latency_trips_relative_to_legacy_or_absolute() {
        let relative = Guard::new(&config("{ max_latency_ratio: 2.0, min_requests: 20 }"));
        let mut tripped = None;
        for i in 0..40u64 {
            let now = 1000 + i * 30;
            tripped = tripped.or(relative.record_request_at(
                now,
                Side::Legacy,
                false,
                Duration::from_millis(10),
            ));
            tripped = tripped.or(relative.record_request_at(
                now,
                Side::New,
                false,
                Duration::from_millis(50),
            ));
        }
        let trip = tripped.expect("50 ms is over twice 10 ms");
        assert_eq!(trip.reason, "latency");
        assert!(trip.detail.contains("legacy's"), "{}", trip.detail);

        let fine = Guard::new(&config("{ max_latency_ratio: 2.0, min_requests: 20 }"));
        for i in 0..40u64 {
            let now = 1000 + i * 30;
            assert!(
                fine.record_request_at(now, Side::Legacy, false, Duration::from_millis(10))
                    .is_none()
            );
            assert!(
                fine.record_request_at(now, Side::New, false, Duration::from_millis(15))
                    .is_none()
            );
        }

        let absolute = Guard::new(&config("{ max_p99: 100ms, min_requests: 5 }"));
        let mut trip = None;
        for i in 0..5u64 {
            trip = trip.or(absolute.record_request_at(
                1000 + i * 30,
                Side::New,
                false,
                Duration::from_millis(300),
            ));
        }
        assert_eq!(trip.expect("300 ms > 100 ms").reason, "latency");
    }

    #[test]
    fn mismatches_trip_the_diff_rule_and_observe_mode_changes_no_routing() {
        let guard = Guard::new(&config(
            "{ max_mismatch_rate: 0.2, min_requests: 10, mode: observe }",
        ));
        let mut trip = None;
        for i in 0..10u64 {
            trip = trip.or(guard.record_diff_at(1000 + i * 30, i % 2 == 0));
        }
        let trip = trip.expect("half mismatched");
        assert_eq!((trip.reason, trip.mode), ("mismatch", GuardMode::Observe));
        assert!(!guard.holds(), "observe never routes");
        assert!(
            guard.trip().is_some(),
            "but it says what it would have done"
        );
    }

    #[test]
    fn settings_are_checked_with_located_messages() {
        assert!(diagnostics("{ max_error_rate: 0.05 }", true, false).is_empty());
        let messages = diagnostics(
            "{ max_error_rate: 5, max_latency_ratio: 0.5, min_requests: 0, window: 0s }",
            true,
            false,
        );
        for field in [
            "max_error_rate",
            "max_latency_ratio",
            "min_requests",
            "window",
        ] {
            assert!(
                messages
                    .iter()
                    .any(|m| m.contains(&format!("routes[0].guard.{field}"))),
                "{field}: {messages:?}"
            );
        }
        assert!(diagnostics("{}", true, true)[0].contains("never trip"));
        assert!(
            diagnostics("{ max_error_rate: 0.1 }", false, true)[0]
                .contains("none anywhere but legacy")
        );
        assert!(
            diagnostics("{ max_mismatch_rate: 0.1 }", true, false)[0]
                .contains("needs the route to shadow")
        );
    }
}
