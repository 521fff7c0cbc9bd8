//! The metric children every request touches (`strangler_requests_total{route,upstream,code}`
//! and `strangler_request_duration_seconds{route,upstream}`), cached per route table
//! generation, so counting a request is an index into a table instead of hashing its label
//! strings and taking the metric family's lock (`with_label_values`) twice.
//!
//! A generation's [`Meters`] has a slot per (route, upstream) pair of its table, the `default`
//! and `(refused)` rows included, filled on first use: memory is 16 bytes a pair until the pair
//! serves a request, then one small [`Slot`] (the histogram child and the counters of the common
//! status codes; rarer codes are counted the slow way). The cache follows the newest generation
//! seen; a request that started on an older one (in flight across a reload) is counted the slow
//! way, so the cache never flips back and forth. A child is the series itself: a cached child
//! and `with_label_values` count into the same series, and a series a reload forgets
//! ([`Metrics::forget`]) is only forgotten with names no newer generation has.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus::{Histogram, IntCounter};

use crate::metrics::Metrics;
use crate::routing::{RouteTable, UpstreamId};

/// The `route` row a request is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSlot {
    /// The route at this index of the table.
    Route(usize),
    /// No route matched: the default upstream served (`route="default"`).
    Default,
    /// Refused before it was routed (`route="(refused)"`).
    Refused,
}

/// Status codes whose counters are cached; any other is counted the slow way.
const COMMON_STATUSES: [u16; 28] = [
    0, 101, 200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409,
    410, 413, 414, 422, 429, 500, 502, 503, 504,
];

/// The cached children of one (route, upstream) pair.
struct Slot {
    duration: Histogram,
    statuses: [OnceLock<IntCounter>; COMMON_STATUSES.len()],
}

/// The metric children of one route table generation.
pub struct Meters {
    /// The generation these slots index (kept alive until a newer one replaces it).
    table: Arc<RouteTable>,
    upstreams: usize,
    /// `(routes + 2) × upstreams` slots, row by row; filled on first use.
    slots: Box<[OnceLock<Box<Slot>>]>,
}

impl Meters {
    pub fn new(table: Arc<RouteTable>) -> Self {
        let upstreams = table.upstreams().len();
        let rows = table.routes().len() + 2;
        let slots = (0..rows * upstreams).map(|_| OnceLock::new()).collect();
        Self {
            table,
            upstreams,
            slots,
        }
    }

    /// Counts one request served (or failed) by `upstream` on `route`.
    pub fn record(
        &self,
        route: RouteSlot,
        upstream: UpstreamId,
        status: u16,
        elapsed: Duration,
        metrics: &Metrics,
    ) {
        let routes = self.table.routes().len();
        let row = match route {
            RouteSlot::Route(index) => index,
            RouteSlot::Default => routes,
            RouteSlot::Refused => routes + 1,
        };
        let (route_label, upstream_label) =
            (self.route_label(route), self.upstream_label(upstream));
        let slot = self.slots[row * self.upstreams + upstream].get_or_init(|| {
            Box::new(Slot {
                duration: metrics
                    .request_duration
                    .with_label_values(&[route_label, upstream_label]),
                statuses: std::array::from_fn(|_| OnceLock::new()),
            })
        });
        slot.duration.observe(elapsed.as_secs_f64());
        let mut code_buffer = itoa::Buffer::new();
        let mut count = |code: u16| {
            metrics.requests.with_label_values(&[
                route_label,
                upstream_label,
                code_buffer.format(code),
            ])
        };
        match COMMON_STATUSES.binary_search(&status) {
            Ok(index) => slot.statuses[index].get_or_init(|| count(status)).inc(),
            Err(_) => count(status).inc(),
        }
    }

    fn route_label(&self, route: RouteSlot) -> &str {
        match route {
            RouteSlot::Route(index) => &self.table.routes()[index].name,
            RouteSlot::Default => "default",
            RouteSlot::Refused => "(refused)",
        }
    }

    fn upstream_label(&self, upstream: UpstreamId) -> &str {
        self.table.upstream(upstream).name()
    }
}

/// Counts one request without a cache: the labels hashed, each family looked up.
pub fn record_uncached(
    route: &str,
    upstream: &str,
    status: u16,
    elapsed: Duration,
    metrics: &Metrics,
) {
    let mut code_buffer = itoa::Buffer::new();
    let code = code_buffer.format(status);
    metrics
        .requests
        .with_label_values(&[route, upstream, code])
        .inc();
    metrics
        .request_duration
        .with_label_values(&[route, upstream])
        .observe(elapsed.as_secs_f64());
}

/// The [`Meters`] of the newest generation seen.
#[derive(Default)]
pub struct MeterCache {
    current: ArcSwapOption<Meters>,
}

impl MeterCache {
    /// Calls `count` with the meters of `table`'s generation, made on its first request; with
    /// `None` for a generation older than the cached one.
    pub fn with<R>(&self, table: &Arc<RouteTable>, count: impl FnOnce(Option<&Meters>) -> R) -> R {
        let cached = self.current.load();
        match cached.as_deref() {
            Some(meters) if Arc::ptr_eq(&meters.table, table) => return count(Some(meters)),
            Some(meters) if meters.table.generation() > table.generation() => return count(None),
            _ => {}
        }
        drop(cached);
        let fresh = Arc::new(Meters::new(table.clone()));
        self.current.store(Some(fresh.clone()));
        count(Some(&fresh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SourceFile, parse};

    fn table(generation: u64) -> Arc<RouteTable> {
        let yaml = "upstreams:
  legacy: { backends: [127.0.0.1:9001] }
  new: { backends: [127.0.0.1:9002] }
default_upstream: legacy
routes:
  - { name: orders, match: { path_prefix: /orders }, upstream: new }
";
        let loaded = parse(SourceFile::new("routes.yaml", yaml.to_owned())).unwrap();
        Arc::new(RouteTable::compile_loaded(loaded, generation).unwrap())
    }

    fn requests(metrics: &Metrics, route: &str, upstream: &str, code: &str) -> u64 {
        metrics
            .requests
            .with_label_values(&[route, upstream, code])
            .get()
    }

    #[test]
    fn cached_children_count_into_the_same_series_as_the_labels() {
        let metrics = Metrics::new();
        let table = table(1);
        let meters = Meters::new(table.clone());
        let new = table.upstream_id("new").unwrap();
        let legacy = table.upstream_id("legacy").unwrap();
        for _ in 0..3 {
            meters.record(
                RouteSlot::Route(0),
                new,
                200,
                Duration::from_millis(5),
                &metrics,
            );
        }
        // A rare status is counted the slow way, into the same family.
        meters.record(RouteSlot::Route(0), new, 418, Duration::ZERO, &metrics);
        meters.record(RouteSlot::Default, legacy, 404, Duration::ZERO, &metrics);
        meters.record(RouteSlot::Refused, legacy, 400, Duration::ZERO, &metrics);
        assert_eq!(requests(&metrics, "orders", "new", "200"), 3);
        assert_eq!(requests(&metrics, "orders", "new", "418"), 1);
        assert_eq!(requests(&metrics, "default", "legacy", "404"), 1);
        assert_eq!(requests(&metrics, "(refused)", "legacy", "400"), 1);
        let durations = metrics
            .request_duration
            .with_label_values(&["orders", "new"])
            .get_sample_count();
        assert_eq!(durations, 4);
    }

    #[test]
    fn the_cache_follows_the_newest_generation_and_never_goes_back() {
        let cache = MeterCache::default();
        let (old, new) = (table(1), table(2));
        assert!(cache.with(&old, |meters| meters.is_some()));
        assert!(cache.with(&new, |meters| {
            meters.is_some_and(|m| Arc::ptr_eq(&m.table, &new))
        }));
        // A request still on the old generation is counted without the cache.
        assert!(cache.with(&old, |meters| meters.is_none()));
        assert!(cache.with(&new, |meters| meters.is_some()));
    }

    #[test]
    fn the_common_statuses_are_sorted_for_the_search() {
        assert!(COMMON_STATUSES.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
