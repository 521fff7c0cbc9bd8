//! Hot-path microbenchmarks: route lookup at 10 / 1,000 / 10,000 routes, config compile + swap
//! (and its parse alone), the first lookup of a regex route on a table just compiled (its regex
//! is built on first use, see `routing::path_regex`), the per-request header and path
//! rewriting, and counting a finished request in the metrics.
//!
//! `cargo bench --bench routing`. Compare numbers within one run; the machine is shared.

use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pingora_http::RequestHeader;
use strangler::config::{SourceFile, parse};
use strangler::routing::RouteTable;

/// The same allocator as the binary (src/main.rs): compiling a big config allocates a great
/// deal, and glibc malloc would make it look slower than it is in strangler.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A config with `routes` routes: alternating segment prefixes and anchored regexes, plus a
/// host-and-header route every 50, so the index sees every kind of condition.
fn config_text(routes: usize) -> String {
    let mut text = String::from(
        "upstreams:\n  legacy: { backends: [127.0.0.1:9001] }\n  new: { backends: [127.0.0.1:9002] }\ndefault_upstream: legacy\nroutes:\n",
    );
    for i in 0..routes {
        let route = if i % 50 == 49 {
            format!(
                "  - {{ name: r{i}, match: {{ host: 'svc{i}.example.com', headers: {{ x-tenant: t{i} }} }}, upstream: new }}\n"
            )
        } else if i % 2 == 0 {
            format!(
                "  - {{ name: r{i}, match: {{ path_prefix: /svc{i}/items, methods: [GET] }}, upstream: {{ name: new, rewrite: {{ strip_prefix: /svc{i} }} }} }}\n"
            )
        } else {
            format!(
                "  - {{ name: r{i}, match: {{ path_regex: '^/svc{i}/orders/[0-9]+$' }}, upstream: new }}\n"
            )
        };
        text.push_str(&route);
    }
    text
}

fn table(routes: usize) -> RouteTable {
    let loaded =
        parse(SourceFile::new("bench.yaml", config_text(routes))).expect("bench config parses");
    RouteTable::compile_loaded(loaded, 1).expect("bench config compiles")
}

fn request(path: &str) -> RequestHeader {
    let mut request = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
    request.insert_header("host", "shop.example.com").unwrap();
    request.insert_header("user-agent", "bench").unwrap();
    request
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for routes in [10usize, 1_000, 10_000] {
        let table = table(routes);
        // The last prefix route and the last regex route: worst case for a linear scan.
        let last_prefix = (0..routes)
            .rev()
            .find(|i| i % 2 == 0 && i % 50 != 49)
            .unwrap();
        let last_regex = (0..routes)
            .rev()
            .find(|i| i % 2 == 1 && i % 50 != 49)
            .unwrap();
        let cases = [
            (
                "last_prefix",
                request(&format!("/svc{last_prefix}/items/42")),
            ),
            (
                "last_regex",
                request(&format!("/svc{last_regex}/orders/42")),
            ),
            ("miss", request("/nothing/here/at/all")),
        ];
        for (name, request) in &cases {
            group.bench_with_input(BenchmarkId::new(*name, routes), request, |b, request| {
                b.iter(|| black_box(table.find(black_box(request))))
            });
        }
    }
    group.finish();
}

fn compile_and_swap(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile_and_swap");
    group.sample_size(10);
    for routes in [10usize, 1_000, 10_000] {
        let text = config_text(routes);
        let live = ArcSwap::from_pointee(table(routes));
        group.bench_with_input(BenchmarkId::from_parameter(routes), &text, |b, text| {
            b.iter(|| {
                let loaded = parse(SourceFile::new("bench.yaml", text.clone())).unwrap();
                live.store(Arc::new(RouteTable::compile_loaded(loaded, 2).unwrap()));
            })
        });
    }
    group.finish();

    // What of compile + swap is reading the YAML (config::parse, outside routing).
    let mut group = c.benchmark_group("parse_only");
    group.sample_size(10);
    for routes in [1_000usize, 10_000] {
        let text = config_text(routes);
        group.bench_with_input(BenchmarkId::from_parameter(routes), &text, |b, text| {
            b.iter(|| black_box(parse(SourceFile::new("bench.yaml", text.clone())).unwrap()))
        });
    }
    group.finish();

    // The first request to the last regex route of a table compiled a moment before: its
    // regex is not built yet (the warm-up thread starts at the first route), so this lookup
    // builds it.
    let mut group = c.benchmark_group("first_lookup_after_compile");
    group.sample_size(10);
    let routes = 1_000usize;
    let last_regex = (0..routes)
        .rev()
        .find(|i| i % 2 == 1 && i % 50 != 49)
        .unwrap();
    let probe = request(&format!("/svc{last_regex}/orders/42"));
    group.bench_function(BenchmarkId::new("last_regex", routes), |b| {
        // By reference: dropping the table is not part of the lookup.
        b.iter_batched_ref(
            || table(routes),
            |table| black_box(table.find(&probe)),
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn rewriting(c: &mut Criterion) {
    let table = table(10);
    let route = &table.routes()[0];
    let rewrite = route
        .target(route.primary)
        .edits
        .path
        .as_ref()
        .expect("route 0 strips a prefix");
    let actions = strangler::config::parse(SourceFile::new(
        "actions.yaml",
        "upstreams:\n  a: { backends: [127.0.0.1:1] }\ndefault_upstream: a\nroutes:\n  - name: h\n    upstream: { name: a, request_headers: { remove: [x-legacy-session], set: { x-env: prod }, add: { x-migrated: 'true' } } }\n",
    ))
    .map(|loaded| RouteTable::compile_loaded(loaded, 1).unwrap())
    .unwrap();
    let edited = &actions.routes()[0];
    let header_actions = &edited.target(edited.primary).edits.headers;
    let base = request("/svc0/items/42?page=2");

    c.bench_function("rewrite/strip_prefix_and_set_uri", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |request| {
                if let Some(path) = rewrite.apply(request.uri.path()).map(|p| p.into_owned()) {
                    strangler::edits::set_path(request, &path).unwrap();
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("rewrite/header_actions", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |request| header_actions.apply(request).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
}

/// Counting one finished request in `strangler_requests_total` and
/// `strangler_request_duration_seconds`: the labels hashed and looked up per request, against
/// the per-generation children the proxy caches (`proxy/meters.rs`).
fn request_metrics(c: &mut Criterion) {
    use strangler::proxy::meters::{Meters, RouteSlot, record_uncached};
    let metrics = strangler::metrics::Metrics::new();
    let table = Arc::new(table(1_000));
    let meters = Meters::new(table.clone());
    let route = 998;
    let name = table.routes()[route].name.clone();
    let upstream = table.upstream_id("new").unwrap();
    let elapsed = std::time::Duration::from_micros(1_500);
    let mut group = c.benchmark_group("request_metrics");
    group.bench_function("with_label_values", |b| {
        b.iter(|| record_uncached(black_box(&name), "new", black_box(200), elapsed, &metrics))
    });
    group.bench_function("cached_children", |b| {
        b.iter(|| {
            meters.record(
                RouteSlot::Route(black_box(route)),
                upstream,
                black_box(200),
                elapsed,
                &metrics,
            )
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    route_lookup,
    compile_and_swap,
    rewriting,
    request_metrics
);
criterion_main!(benches);
