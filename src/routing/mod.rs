//! The compiled route table: what the hot path consults for every request.
//!
//! [`RouteTable::compile_loaded`] turns a parsed [`Config`] into immutable, validated runtime data
//! (compiled regexes, resolved upstreams, parsed header names) or reports every problem it finds.
//! A table is never modified after it is built: a new config generation is a new table, published
//! with one store into the [`SharedRouteTable`]. A request loads one table at its start and uses
//! it throughout, so it is routed and rewritten by exactly one generation.
//!
//! This module decides *where* a request goes and *what* is done to it. Talking to backends is
//! [`crate::upstream`]'s job; wiring the decision into Pingora is [`crate::proxy`]'s.

mod canary;
mod compile;
mod index;
mod matcher;
mod path_regex;

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use pingora_http::RequestHeader;

use crate::config::{Config, ConfigError, load_file};
use crate::edits::{HeaderActions, RequestEdits};
use crate::metrics::Metrics;
use crate::upstream::UpstreamPool;
pub use canary::{RetiredAnswer, Split, TesterOverride, constant_time_eq};
pub use compile::CheckedConfig;
use index::RouteIndex;
pub use matcher::{RequestMatcher, request_host};

/// The live table, swapped whole on reload.
pub type SharedRouteTable = Arc<ArcSwap<RouteTable>>;

/// Index of an upstream within its table.
pub type UpstreamId = usize;

/// Index of a target within its route's [`Route::targets`].
pub type TargetId = usize;

/// An upstream as one route uses it, with what that upstream needs done to the request.
#[derive(Debug, Clone)]
pub struct Target {
    pub upstream: UpstreamId,
    pub edits: RequestEdits,
}

/// One config generation, compiled.
#[derive(Debug)]
pub struct RouteTable {
    generation: u64,
    sha256: String,
    loaded_at: SystemTime,
    /// Everything to legacy, no shadows. From the config; the admin API can flip it, and a
    /// reload that does not change `kill_switch` in the file carries the flip over.
    pub kill_switch: std::sync::atomic::AtomicBool,
    pub tester_override: Option<TesterOverride>,
    /// Peers whose forwarding headers are believed (`server.trusted_proxies`).
    pub trusted_proxies: crate::forwarded::TrustedProxies,
    upstream_names: std::collections::HashMap<String, UpstreamId>,
    config: Config,
    routes: Vec<Route>,
    index: RouteIndex,
    upstreams: Vec<Arc<UpstreamPool>>,
    default_upstream: UpstreamId,
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    matcher: RequestMatcher,
    /// The route's `path_regex`, kept for candidates the index could not verify itself.
    path_regex: Option<path_regex::PathRegex>,
    /// Every upstream this route can send a request to, each with its own edits: the primary,
    /// the split's sides, the fallback, the legacy target of the kill switch. The fields below
    /// index into it.
    pub targets: Vec<Target>,
    /// Where the request goes when the route has no split.
    pub primary: TargetId,
    pub response_headers: HeaderActions,
    /// Mirroring of this route's requests, if configured.
    pub shadow: Option<Arc<crate::shadow::ShadowRule>>,
    /// Serves the request when the primary cannot be reached or answers a `fallback_on` status.
    pub fallback: Option<TargetId>,
    /// Statuses from `upstream` that send idempotent requests to `fallback`.
    pub fallback_on: Vec<u16>,
    /// Total time for a request on this route; `server.request_timeout` when `None`.
    pub timeout: Option<std::time::Duration>,
    pub stage: crate::config::Stage,
    /// Weighted upstreams, when the route is a canary.
    pub split: Option<Split>,
    /// Where the kill switch sends this route: its fallback target, else the default upstream
    /// with no edits.
    pub legacy: TargetId,
    /// The answer of a retired route.
    pub retired: Option<RetiredAnswer>,
    /// Automatic rollback to `legacy`, if configured; carried across reloads that leave the
    /// route's config as it was (see [`RouteTable::inherit_guards`]).
    pub guard: Option<Arc<crate::guard::Guard>>,
    /// Recording of this route's requests for replay, if configured.
    pub record: Option<Arc<crate::corpus::RecordRule>>,
}

/// What one route does with requests at this moment; see [`RouteTable::effective_routing`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct EffectiveRoute {
    pub route: String,
    pub stage: crate::config::Stage,
    /// Upstreams that serve the route's requests now (a split's sides, in order).
    pub serves: Vec<String>,
    pub fallback: Option<String>,
    /// Where copies go now; `None` while the kill switch stops them.
    pub shadow: Option<String>,
    pub kill_switch: bool,
    /// The route's guard, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardState>,
}

/// A guard as `/routes` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GuardState {
    pub mode: crate::config::GuardMode,
    /// Tripped in enforce mode: the route serves from legacy.
    pub holding: bool,
    /// What tripped it (in observe mode: what would have), with the numbers.
    pub trip: Option<crate::guard::Trip>,
}

impl Route {
    pub fn target(&self, id: TargetId) -> &Target {
        &self.targets[id]
    }

    /// The target a tester's override to `upstream` uses: the route's own target for that
    /// upstream when it has one (so the forced request is edited as that upstream expects),
    /// else `None` (the upstream gets the request unedited).
    pub fn target_for(&self, upstream: UpstreamId) -> Option<TargetId> {
        self.targets
            .iter()
            .position(|target| target.upstream == upstream)
    }
}

/// Routes from which a replaced table is freed on a thread of its own.
pub(crate) const FREE_IN_BACKGROUND_FROM: usize = 1_000;

impl Drop for RouteTable {
    /// A big table's routes, index and `config.routes` are freed on a short-lived thread of
    /// their own. The last reference to a replaced generation is usually dropped on a proxy worker, by the
    /// first request of the next generation (it replaces the metric cache that held the old
    /// table, see `proxy::meters`), and freeing 10,000 routes with their built regexes takes
    /// milliseconds that request would wait for. A small table is freed where it is dropped.
    fn drop(&mut self) {
        if self.routes.len() < FREE_IN_BACKGROUND_FROM {
            return;
        }
        let parts = (
            std::mem::take(&mut self.routes),
            std::mem::take(&mut self.index),
            std::mem::take(&mut self.config.routes),
        );
        // If no thread can be started, the closure and the parts in it are freed here.
        let _ = std::thread::Builder::new()
            .name("table-free".into())
            .spawn(move || drop(parts));
    }
}

impl RouteTable {
    /// The index (into [`Self::routes`]) of the first route, in file order, that matches
    /// `request`; `None` means the default upstream serves it.
    pub fn find(&self, request: &RequestHeader) -> Option<usize> {
        let path = request.uri.path();
        let mut host_buffer = [0u8; 256];
        let host = if self.index.uses_host() {
            request_host(request).and_then(|host| lower_case(host, &mut host_buffer))
        } else {
            None
        };
        self.index
            .candidates(path, host)
            .into_iter()
            .find(|number| {
                let route = &self.routes[*number as usize];
                (!self.index.needs_regex_check(*number)
                    || route
                        .path_regex
                        .as_ref()
                        .is_some_and(|regex| regex.is_match(path)))
                    && route.matcher.matches(request)
            })
            .map(|number| number as usize)
    }

    /// The upstream called `name`.
    pub fn upstream_id(&self, name: &str) -> Option<UpstreamId> {
        self.upstream_names.get(name).copied()
    }

    pub fn upstream(&self, id: UpstreamId) -> &UpstreamPool {
        &self.upstreams[id]
    }

    pub fn default_upstream(&self) -> UpstreamId {
        self.default_upstream
    }

    pub fn upstreams(&self) -> &[Arc<UpstreamPool>] {
        &self.upstreams
    }

    /// Carries backend health from the generation this table replaces, upstream by upstream
    /// (matched by name), so a reload does not reset what health checks and ejections learned.
    pub fn inherit_health(&self, previous: &RouteTable) {
        for pool in self.upstreams() {
            if let Some(old) = previous.upstream_id(pool.name()) {
                pool.inherit_health(previous.upstream(old));
            }
        }
    }

    /// Carries each route's guard (its window and whether it tripped) from the generation
    /// this table replaces, when the route's config is exactly what it was: a trip holds
    /// across unrelated reloads and DNS refreshes, and any edit of the route clears it (the
    /// team changed something; judge it afresh).
    pub fn inherit_guards(&mut self, previous: &RouteTable) {
        if self.routes.iter().all(|route| route.guard.is_none()) {
            return;
        }
        // Looked up by name in maps, not by a scan per route: with a guard on each of 10,000
        // routes the scans were 3 x 10^8 comparisons on the reload's path. Names are unique in
        // a compiled table; `or_insert` keeps the first, as the scans did.
        fn by_name(
            routes: &[crate::config::RouteConfig],
        ) -> std::collections::HashMap<&str, &crate::config::RouteConfig> {
            let mut map = std::collections::HashMap::with_capacity(routes.len());
            for config in routes {
                map.entry(config.name.as_str()).or_insert(config);
            }
            map
        }
        let configs = by_name(&self.config.routes);
        let previous_configs = by_name(&previous.config.routes);
        let mut previous_routes = std::collections::HashMap::with_capacity(previous.routes.len());
        for old in &previous.routes {
            previous_routes.entry(old.name.as_str()).or_insert(old);
        }
        for route in &mut self.routes {
            if route.guard.is_none() {
                continue;
            }
            let Some(old) = previous_routes.get(route.name.as_str()) else {
                continue;
            };
            let same_config =
                configs.get(route.name.as_str()) == previous_configs.get(route.name.as_str());
            if same_config && let Some(guard) = &old.guard {
                route.guard = Some(guard.clone());
            }
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Increases by one with every config applied since the process started.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Hex SHA-256 of the file this table was compiled from.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Where each route sends requests right now, kill switch included: for `/routes` and
    /// `strangler routes`, so an operator sees what is served, not only what is configured.
    pub fn effective_routing(&self) -> Vec<EffectiveRoute> {
        let kill_switch = self.kill_switch.load(std::sync::atomic::Ordering::Relaxed);
        let name = |route: &Route, target: TargetId| {
            self.upstreams[route.target(target).upstream]
                .name()
                .to_owned()
        };
        self.routes
            .iter()
            .map(|route| {
                // One read of the trip, so `serves`, `holding` and `trip` agree.
                let trip = route.guard.as_ref().and_then(|guard| guard.trip());
                let held = trip.is_some()
                    && route.guard.as_ref().is_some_and(|guard| {
                        guard.config().mode == crate::config::GuardMode::Enforce
                    });
                let serves = if route.retired.is_some() {
                    Vec::new()
                } else if kill_switch || held {
                    vec![name(route, route.legacy)]
                } else {
                    match &route.split {
                        Some(split) => split.targets().map(|t| name(route, t)).collect(),
                        None => vec![name(route, route.primary)],
                    }
                };
                EffectiveRoute {
                    route: route.name.clone(),
                    stage: route.stage,
                    serves,
                    fallback: route.fallback.map(|t| name(route, t)),
                    shadow: route
                        .shadow
                        .as_ref()
                        .filter(|_| !kill_switch)
                        .map(|rule| rule.upstream_name().to_owned()),
                    kill_switch,
                    guard: route.guard.as_ref().map(|guard| GuardState {
                        mode: guard.config().mode,
                        holding: held,
                        trip,
                    }),
                }
            })
            .collect()
    }

    /// The config as parsed, with defaults filled in.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sets the gauges read off this table (route stages, tripped guards, kill switch, backend
    /// health); the
    /// refresh [`Metrics::render`] runs before each scrape.
    pub fn refresh_gauges(&self, metrics: &Metrics) {
        metrics.route_stage.reset();
        for route in self.routes() {
            metrics
                .route_stage
                .with_label_values(&[route.name.as_str(), route.stage.as_str()])
                .set(1);
        }
        metrics.guard_tripped.reset();
        for route in self.routes() {
            if let Some(trip) = route.guard.as_ref().and_then(|guard| guard.trip()) {
                metrics
                    .guard_tripped
                    .with_label_values(&[route.name.as_str(), trip.reason, trip.mode.as_str()])
                    .set(1);
            }
        }
        metrics.kill_switch.set(i64::from(
            self.kill_switch.load(std::sync::atomic::Ordering::Relaxed),
        ));
        metrics.upstream_healthy.reset();
        for pool in self.upstreams() {
            for backend in pool.backends() {
                let address = backend.address().to_string();
                metrics
                    .upstream_healthy
                    .with_label_values(&[pool.name(), address.as_str()])
                    .set(i64::from(backend.available()));
            }
        }
    }
}

/// `host` in lower case, in `buffer` when it needs changing; `None` for names too long to be
/// indexed hosts (their routes' own host check still runs on the other candidates).
fn lower_case<'a>(host: &'a str, buffer: &'a mut [u8; 256]) -> Option<&'a str> {
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(host);
    }
    let lowered = buffer.get_mut(..host.len())?;
    lowered.copy_from_slice(host.as_bytes());
    lowered.make_ascii_lowercase();
    std::str::from_utf8(lowered).ok()
}

/// Reads, parses and compiles `path` into generation `generation` of the table.
pub fn load_route_table(path: &Path, generation: u64) -> Result<RouteTable, ConfigError> {
    RouteTable::compile_loaded(load_file(path)?, generation)
}

/// [`load_route_table`], plus the checks of what `strangler run` needs from this machine at
/// start (the diff store's directory, see [`crate::diff::check_store`]), reported with the
/// config's own problems. `validate` and `run` use it, so that one finds what the other would
/// refuse; reloads do not, since the store is opened once, at start.
pub fn load_route_table_for_run(path: &Path, generation: u64) -> Result<RouteTable, ConfigError> {
    let mut loaded = load_file(path)?;
    loaded
        .problems
        .extend(crate::diff::check_store(&loaded.config));
    RouteTable::compile_loaded(loaded, generation)
}

#[cfg(test)]
mod tests {
    //! The compiled table's own rules, in-process: what `/routes` says each route serves, what
    //! a reload carries over, and lookups by host whatever its case.

    use std::sync::atomic::Ordering;

    use super::*;
    use crate::config::{SourceFile, parse};

    fn table(yaml: &str) -> RouteTable {
        let source = format!(
            "upstreams:
  legacy: {{ backends: [127.0.0.1:9001] }}
  new: {{ backends: [127.0.0.1:9002] }}
  audit: {{ backends: [127.0.0.1:9003] }}
default_upstream: legacy
{yaml}"
        );
        let loaded = parse(SourceFile::new("routes.yaml", source))
            .unwrap_or_else(|error| panic!("does not parse: {error}"));
        RouteTable::compile_loaded(loaded, 1).unwrap_or_else(|error| panic!("{error}"))
    }

    const ROUTES: &str = "routes:
  - name: orders
    stage: canary
    match: { path_prefix: /orders }
    split: [{ upstream: new, weight: 30 }, { upstream: legacy, weight: 70 }]
    shadow: { upstream: audit }
  - name: invoices
    stage: new
    match: { path_prefix: /invoices }
    upstream: new
    fallback: legacy
  - name: reports
    stage: retired
    match: { path_prefix: /reports }
    retired: { status: 410 }
";

    fn effective(table: &RouteTable, route: &str) -> EffectiveRoute {
        table
            .effective_routing()
            .into_iter()
            .find(|effective| effective.route == route)
            .unwrap_or_else(|| panic!("no route {route}"))
    }

    #[test]
    fn each_route_shows_what_serves_it_now_a_split_its_sides_a_retired_route_nothing() {
        let table = table(ROUTES);
        let orders = effective(&table, "orders");
        assert_eq!(orders.serves, ["new", "legacy"]);
        assert_eq!(orders.shadow.as_deref(), Some("audit"));
        let invoices = effective(&table, "invoices");
        assert_eq!(invoices.serves, ["new"]);
        assert_eq!(invoices.fallback.as_deref(), Some("legacy"));
        assert!(effective(&table, "reports").serves.is_empty());
        assert!(!orders.kill_switch);
    }

    #[test]
    fn the_kill_switch_shows_every_route_served_by_legacy_and_no_copies() {
        let table = table(ROUTES);
        table.kill_switch.store(true, Ordering::Relaxed);
        let orders = effective(&table, "orders");
        assert_eq!(orders.serves, ["legacy"]);
        assert_eq!(orders.shadow, None, "the kill switch stops shadows");
        assert!(orders.kill_switch);
        assert_eq!(effective(&table, "invoices").serves, ["legacy"]);
        assert!(
            effective(&table, "reports").serves.is_empty(),
            "a retired route still answers by itself"
        );
    }

    #[test]
    fn a_tester_forcing_an_upstream_gets_the_routes_own_target_for_it() {
        let table = table(
            "routes:
  - name: orders
    match: { path_prefix: /api/orders }
    upstream: { name: new, rewrite: { strip_prefix: /api } }
    fallback: legacy
",
        );
        let route = &table.routes()[0];
        let new = table.upstream_id("new").unwrap();
        let forced = route.target_for(new).expect("the route reaches new");
        assert!(route.target(forced).edits.path.is_some());
        let audit = table.upstream_id("audit").unwrap();
        assert_eq!(
            route.target_for(audit),
            None,
            "not one of the route's upstreams"
        );
    }

    fn guarded(max_error_rate: &str) -> RouteTable {
        table(&format!(
            "routes:
  - name: orders
    stage: canary
    match: {{ path_prefix: /orders }}
    split: [{{ upstream: new, weight: 10 }}, {{ upstream: legacy, weight: 90 }}]
    guard: {{ max_error_rate: {max_error_rate} }}
"
        ))
    }

    fn guard(table: &RouteTable) -> Arc<crate::guard::Guard> {
        table.routes()[0].guard.clone().expect("a guard")
    }

    #[test]
    fn a_reload_keeps_a_routes_guard_only_while_the_route_is_unchanged() {
        let first = guarded("0.05");
        let mut same = guarded("0.05");
        same.inherit_guards(&first);
        assert!(
            Arc::ptr_eq(&guard(&first), &guard(&same)),
            "an unrelated reload keeps the guard's window and trip"
        );
        let mut edited = guarded("0.10");
        edited.inherit_guards(&first);
        assert!(
            !Arc::ptr_eq(&guard(&first), &guard(&edited)),
            "an edited route is judged afresh"
        );
    }

    #[test]
    fn hosts_are_looked_up_whatever_their_case_and_overlong_ones_fall_to_the_default() {
        let table = table(
            "routes:
  - { name: api, match: { host: api.example.com }, upstream: new }
",
        );
        let routed = |host: &str| {
            let mut request = RequestHeader::build("GET", b"/", None).unwrap();
            request.insert_header("host", host).unwrap();
            table.find(&request)
        };
        assert_eq!(routed("API.Example.COM:8443"), Some(0));
        assert_eq!(routed("api.example.com"), Some(0));
        assert_eq!(routed("other.example.com"), None);
        assert_eq!(routed(&format!("{}.example.com", "A".repeat(300))), None);
        let mut buffer = [0u8; 256];
        assert_eq!(lower_case("MiXed", &mut buffer), Some("mixed"));
        assert_eq!(lower_case(&"A".repeat(300), &mut buffer), None);
    }
}
