//! Prometheus metrics: one registry per process, the metric definitions, and text exposition.
//!
//! Label values come from config names (routes, upstreams) and fixed result words, never from
//! request data, so cardinality stays bounded. This module defines metrics; the code that
//! observes an event (a reload, a request) updates them.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::vocabulary::{DiffResult, Reason, ShadowEvent};

/// Every metric strangler exports.
pub struct Metrics {
    registry: Registry,
    /// `strangler_config_reloads_total{result}`: applied, unchanged, invalid, unreadable.
    pub config_reloads: IntCounterVec,
    /// `strangler_config_generation`: the generation now serving.
    pub config_generation: IntGauge,
    /// `strangler_config_last_reload_success`: 1 if the last reload attempt applied (or found
    /// nothing to change), 0 if it was rejected.
    pub config_last_reload_success: IntGauge,
    /// `strangler_config_last_reload_timestamp_seconds`: when the last attempt finished.
    pub config_last_reload_timestamp: IntGauge,
    /// `strangler_shadow_requests_total{route,outcome}`: see [`ShadowEvent`].
    pub shadow_requests: IntCounterVec,
    /// `strangler_shadow_inflight`: shadow exchanges under way.
    pub shadow_inflight: IntGauge,
    /// `strangler_diffs_total{route,result}`: match, mismatch, noise, skipped.
    pub diffs: IntCounterVec,
    /// `strangler_requests_total{route,upstream,code}`.
    pub requests: IntCounterVec,
    /// Requests no route matched, per method and path template: see [`crate::coverage`]. Not
    /// a Prometheus series (templates are too many for labels); served by `/coverage`.
    pub unmatched: crate::coverage::Unmatched,
    /// `strangler_request_duration_seconds{route,upstream}`: arrival to last byte sent.
    pub request_duration: HistogramVec,
    /// `strangler_upstream_errors_total{route,upstream,kind}`: the `x-strangler-error` reasons.
    pub upstream_errors: IntCounterVec,
    /// `strangler_upstream_healthy{upstream,backend}`: 1 in rotation, 0 out.
    pub upstream_healthy: IntGaugeVec,
    /// `strangler_route_stage{route,stage}`: 1 for each route's migration stage.
    pub route_stage: IntGaugeVec,
    /// `strangler_kill_switch`: 1 while everything goes to legacy.
    pub kill_switch: IntGauge,
    /// `strangler_fallbacks_total{route,from,to,reason}`: requests a route sent to its legacy
    /// target instead of the upstream it names: the primary was `unreachable`, answered a
    /// `fallback_on` status (`status`), or the `kill_switch` was on.
    pub fallbacks: IntCounterVec,
    /// `strangler_route_guard_trips_total{route,reason,mode}`: guards that tripped (see
    /// [`crate::guard`]); `mode="observe"` counts trips that changed no routing.
    pub guard_trips: IntCounterVec,
    /// `strangler_route_guard_tripped{route,reason,mode}`: 1 while a route's guard is tripped;
    /// read from the serving table at each scrape.
    pub guard_tripped: IntGaugeVec,
    /// `strangler_dns_refreshes_total{upstream,result}`: re-resolutions of an upstream's host
    /// names: `changed` (a new generation serves the new addresses), `unchanged`, `failed`
    /// (the last good addresses keep serving).
    pub dns_refreshes: IntCounterVec,
    /// `strangler_build_info{version}`: 1, labelled with the running version.
    pub build_info: IntGaugeVec,
    /// `strangler_kill_switch_changes_total{state,source}`: the kill switch turned `on` or
    /// `off`, from the `admin` API or the `config` file.
    pub kill_switch_changes: IntCounterVec,
    /// `strangler_diff_store_errors_total{operation}`: the diff store could not be opened
    /// (`open`) or written (`write`); the exchanges are counted in `strangler_diffs_total` but
    /// not stored.
    pub diff_store_errors: IntCounterVec,
    /// `strangler_diff_store_dropped_total{reason}`: compared exchanges a Postgres diff store
    /// did not get (`queue_full`, `unavailable`, `write_failed`); they are counted in
    /// `strangler_diffs_total` but neither stored nor in the store's aggregates.
    pub diff_store_dropped: IntCounterVec,
    /// `strangler_diff_store_written_total`: compared exchanges written to the diff store,
    /// SQLite or Postgres (counted; stored as rows when they differed or were sampled).
    pub diff_store_written: prometheus::IntCounter,
    /// Serializes scrapes; see [`Self::render`].
    scrape: std::sync::Mutex<()>,
    /// `strangler_open_connections`: client connections open now.
    pub open_connections: IntGauge,
    /// `strangler_connections_closed_total{reason}`: client connections the proxy closed
    /// itself: too_many_connections, header_timeout, request_timeout, uri_too_long,
    /// too_many_headers, headers_too_large for request heads refused before parsing, and
    /// drain_idle for kept-alive connections closed quiet while the process drains.
    pub connections_closed: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "strangler_config_reloads_total",
                "Config reload attempts by result",
            ),
            &["result"],
        )
        .expect("valid metric definition");
        let config_generation = IntGauge::new(
            "strangler_config_generation",
            "Generation of the config now serving; +1 per applied reload",
        )
        .expect("valid metric definition");
        let config_last_reload_success = IntGauge::new(
            "strangler_config_last_reload_success",
            "1 if the last reload attempt succeeded, 0 if the file was rejected",
        )
        .expect("valid metric definition");
        let config_last_reload_timestamp = IntGauge::new(
            "strangler_config_last_reload_timestamp_seconds",
            "Unix time of the last reload attempt",
        )
        .expect("valid metric definition");
        let shadow_requests = IntCounterVec::new(
            Opts::new(
                "strangler_shadow_requests_total",
                "Shadow copies by route and outcome (sent, completed, dropped_full, dropped_memory, skipped_*, error, timeout)",
            ),
            &["route", "outcome"],
        )
        .expect("valid metric definition");
        let shadow_inflight =
            IntGauge::new("strangler_shadow_inflight", "Shadow exchanges under way")
                .expect("valid metric definition");
        let diffs = IntCounterVec::new(
            Opts::new(
                "strangler_diffs_total",
                "Compared shadow exchanges by route and result (match, mismatch, noise, skipped)",
            ),
            &["route", "result"],
        )
        .expect("valid metric definition");
        let requests = IntCounterVec::new(
            Opts::new(
                "strangler_requests_total",
                "Requests by route, upstream and status code",
            ),
            &["route", "upstream", "code"],
        )
        .expect("valid metric definition");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "strangler_request_duration_seconds",
                "Time from a request's arrival to the end of its response",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["route", "upstream"],
        )
        .expect("valid metric definition");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "strangler_upstream_errors_total",
                "Failed requests by route, upstream and kind (the x-strangler-error reason)",
            ),
            &["route", "upstream", "kind"],
        )
        .expect("valid metric definition");
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "strangler_upstream_healthy",
                "1 while a backend is in rotation, 0 while it is out",
            ),
            &["upstream", "backend"],
        )
        .expect("valid metric definition");
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "strangler_fallbacks_total",
                "Requests sent to the route's legacy target instead of its upstream, by reason (unreachable, status, kill_switch, guard)",
            ),
            &["route", "from", "to", "reason"],
        )
        .expect("valid metric definition");
        let guard_trips = IntCounterVec::new(
            Opts::new(
                "strangler_route_guard_trips_total",
                "Route guards that tripped, by reason (error_rate, latency, mismatch) and mode (enforce, observe)",
            ),
            &["route", "reason", "mode"],
        )
        .expect("valid metric definition");
        let guard_tripped = IntGaugeVec::new(
            Opts::new(
                "strangler_route_guard_tripped",
                "1 while a route's guard is tripped (mode enforce: the route serves from legacy)",
            ),
            &["route", "reason", "mode"],
        )
        .expect("valid metric definition");
        let dns_refreshes = IntCounterVec::new(
            Opts::new(
                "strangler_dns_refreshes_total",
                "Re-resolutions of backend host names by upstream and result (changed, unchanged, failed)",
            ),
            &["upstream", "result"],
        )
        .expect("valid metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "strangler_build_info",
                "1, labelled with the running version",
            ),
            &["version"],
        )
        .expect("valid metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let kill_switch_changes = IntCounterVec::new(
            Opts::new(
                "strangler_kill_switch_changes_total",
                "Kill switch changes by new state and source (admin or config)",
            ),
            &["state", "source"],
        )
        .expect("valid metric definition");
        let diff_store_errors = IntCounterVec::new(
            Opts::new(
                "strangler_diff_store_errors_total",
                "Diff store failures by operation (open, write, trim); those exchanges are not stored",
            ),
            &["operation"],
        )
        .expect("valid metric definition");
        let diff_store_dropped = IntCounterVec::new(
            Opts::new(
                "strangler_diff_store_dropped_total",
                "Compared exchanges the Postgres diff store did not get, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric definition");
        let diff_store_written = prometheus::IntCounter::new(
            "strangler_diff_store_written_total",
            "Compared exchanges written to the diff store",
        )
        .expect("valid metric definition");
        let route_stage = IntGaugeVec::new(
            Opts::new(
                "strangler_route_stage",
                "1 for the migration stage of each route",
            ),
            &["route", "stage"],
        )
        .expect("valid metric definition");
        let kill_switch = IntGauge::new(
            "strangler_kill_switch",
            "1 while the kill switch sends everything to legacy",
        )
        .expect("valid metric definition");
        let open_connections =
            IntGauge::new("strangler_open_connections", "Client connections open now")
                .expect("valid metric definition");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "strangler_connections_closed_total",
                "Client connections closed by the proxy, by reason (too_many_connections, \
                 header_timeout, request_timeout, drain_idle, ...)",
            ),
            &["reason"],
        )
        .expect("valid metric definition");
        for metric in [
            Box::new(config_reloads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(config_generation.clone()),
            Box::new(config_last_reload_success.clone()),
            Box::new(config_last_reload_timestamp.clone()),
            Box::new(shadow_requests.clone()),
            Box::new(shadow_inflight.clone()),
            Box::new(diffs.clone()),
            Box::new(requests.clone()),
            Box::new(request_duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(upstream_healthy.clone()),
            Box::new(route_stage.clone()),
            Box::new(kill_switch.clone()),
            Box::new(kill_switch_changes.clone()),
            Box::new(fallbacks.clone()),
            Box::new(guard_trips.clone()),
            Box::new(guard_tripped.clone()),
            Box::new(build_info.clone()),
            Box::new(dns_refreshes.clone()),
            Box::new(diff_store_errors.clone()),
            Box::new(diff_store_dropped.clone()),
            Box::new(diff_store_written.clone()),
            Box::new(open_connections.clone()),
            Box::new(connections_closed.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        // process_cpu_seconds_total, process_resident_memory_bytes, open fds, start time.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics register once");
        // Results appear at 0 before they first happen, so rate() and alerts work from the start.
        for result in ["applied", "unchanged", "invalid", "unreadable"] {
            config_reloads.with_label_values(&[result]);
        }
        for state in ["on", "off"] {
            for source in ["admin", "config"] {
                kill_switch_changes.with_label_values(&[state, source]);
            }
        }
        for operation in ["open", "write", "trim"] {
            diff_store_errors.with_label_values(&[operation]);
        }
        for reason in crate::vocabulary::DropReason::ALL {
            diff_store_dropped.with_label_values(&[reason.as_str()]);
        }
        for reason in [
            Reason::TooManyConnections,
            Reason::HeaderTimeout,
            Reason::RequestTimeout,
            Reason::UriTooLong,
            Reason::TooManyHeaders,
            Reason::HeadersTooLarge,
        ] {
            connections_closed.with_label_values(&[reason.as_str()]);
        }
        // Not a refusal: a kept-alive connection closed quietly while the process drains.
        connections_closed.with_label_values(&["drain_idle"]);
        config_last_reload_success.set(1);
        Self {
            registry,
            config_reloads,
            config_generation,
            config_last_reload_success,
            config_last_reload_timestamp,
            shadow_requests,
            shadow_inflight,
            diffs,
            requests,
            unmatched: Default::default(),
            request_duration,
            upstream_errors,
            upstream_healthy,
            route_stage,
            kill_switch,
            kill_switch_changes,
            fallbacks,
            guard_trips,
            guard_tripped,
            build_info,
            dns_refreshes,
            diff_store_errors,
            diff_store_dropped,
            diff_store_written,
            scrape: std::sync::Mutex::new(()),
            open_connections,
            connections_closed,
        }
    }

    /// Drops the series of routes and upstreams a reload removed, so the series count stays
    /// bounded by what routes.yaml names now, not by every name the process ever had. Counters
    /// of names that still exist are kept.
    pub fn forget(&self, removed_routes: &[&str], removed_upstreams: &[&str]) {
        if removed_routes.is_empty() && removed_upstreams.is_empty() {
            return;
        }
        let by_route = [
            &self.requests,
            &self.upstream_errors,
            &self.shadow_requests,
            &self.diffs,
            &self.fallbacks,
            &self.guard_trips,
        ];
        for vec in by_route {
            forget_series(vec, "route", removed_routes);
        }
        forget_series(&self.request_duration, "route", removed_routes);
        for vec in [&self.requests, &self.upstream_errors] {
            forget_series(vec, "upstream", removed_upstreams);
        }
        forget_series(&self.request_duration, "upstream", removed_upstreams);
        for label in ["from", "to"] {
            forget_series(&self.fallbacks, label, removed_upstreams);
        }
    }

    /// `strangler_requests_total` summed over status codes: requests per (route, upstream)
    /// since the process started. What `/coverage` and the diff viewer's traffic table read.
    pub fn requests_by_route_and_upstream(
        &self,
    ) -> std::collections::BTreeMap<(String, String), u64> {
        use prometheus::core::Collector;
        let mut totals = std::collections::BTreeMap::new();
        for family in self.requests.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|pair| pair.name() == name)
                        .map(|pair| pair.value().to_owned())
                };
                if let (Some(route), Some(upstream)) = (label("route"), label("upstream")) {
                    *totals.entry((route, upstream)).or_default() +=
                        metric.get_counter().value() as u64;
                }
            }
        }
        totals
    }

    pub fn diff_result(&self, route: &str, result: DiffResult) {
        self.diffs
            .with_label_values(&[route, result.as_str()])
            .inc();
    }

    pub fn shadow_event(&self, route: &str, event: ShadowEvent) {
        self.shadow_requests
            .with_label_values(&[route, event.as_str()])
            .inc();
    }

    /// The Prometheus text exposition of every metric, after `refresh` has set the gauges read
    /// off live state (the route table's, see `RouteTable::refresh_gauges`). Scrapes take
    /// turns: the refresh resets those gauges before refilling them, and a concurrent scrape
    /// (two Prometheus replicas) must not catch them empty.
    pub fn render(&self, refresh: impl FnOnce(&Metrics)) -> Vec<u8> {
        let _one_scrape_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        refresh(self);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }
}

/// Removes every series of `vec` whose `label` is one of `values`.
fn forget_series<P>(vec: &prometheus::core::MetricVec<P>, label: &str, values: &[&str])
where
    P: prometheus::core::MetricVecBuilder,
{
    use prometheus::core::Collector;
    if values.is_empty() {
        return;
    }
    // A set: a reload that drops 10,000 routes checks every series against all of them.
    let values: std::collections::HashSet<&str> = values.iter().copied().collect();
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: std::collections::HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if labels
                .get(label)
                .is_some_and(|value| values.contains(value))
            {
                let _ = vec.remove(&labels);
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
