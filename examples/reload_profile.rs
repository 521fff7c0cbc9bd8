//! A driver for profiling a big reload's CPU work (read the file's text, parse it, compile the
//! route table) under `valgrind --tool=callgrind`, whose instruction counts stay repeatable on a
//! loaded machine where wall time does not:
//!
//! ```sh
//! cargo build --release --example reload_profile
//! valgrind --tool=callgrind --toggle-collect='*load_and_compile*' \
//!     ./target/release/examples/reload_profile 10000 1
//! callgrind_annotate --inclusive=yes callgrind.out.*
//! ```
//!
//! Arguments: routes (default 10,000), iterations (default 1), and a mode: `compile` (default:
//! parse and compile), `parse` (only `config::parse`), or `reload`: a table of the file serves,
//! and each iteration is a whole [`Reloader::reload`] (what `POST /reload` runs, without HTTP)
//! of the file with one route edited, 10,000 routes replacing 10,000 (measured with
//! `--toggle-collect='*Reloader*reload*'`). The file is the one `bench/reload.py` writes (alternating segment prefixes
//! and anchored regexes), plus a host-and-header route and a prefix rewrite every 50 routes, as
//! in `benches/routing.rs`. Without valgrind it prints the wall time of each step.

use std::hint::black_box;
use std::time::Instant;

use std::sync::Arc;

use arc_swap::ArcSwap;
use strangler::config::{SourceFile, parse};
use strangler::metrics::Metrics;
use strangler::reload::{Outcome, Reloader, Trigger};
use strangler::routing::RouteTable;

/// The same allocator as the binary (src/main.rs): a reload's parse and compile allocate a
/// great deal, and glibc malloc would make them look slower than they are in strangler.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn config_text(routes: usize) -> String {
    let mut text = String::from(
        "server: { listen: 127.0.0.1:8080, admin: 127.0.0.1:9090, threads: 1 }\nupstreams:\n  origin: { backends: [127.0.0.1:9001] }\n  new: { backends: [127.0.0.1:9002] }\ndefault_upstream: origin\nroutes:\n",
    );
    for i in 0..routes {
        let route = if i % 50 == 49 {
            format!(
                "  - {{ name: r{i}, match: {{ host: 'svc{i}.example.com', headers: {{ x-tenant: t{i} }} }}, upstream: new }}\n"
            )
        } else if i % 50 == 48 {
            format!(
                "  - {{ name: r{i}, match: {{ path_prefix: /svc{i}/items, methods: [GET] }}, upstream: {{ name: new, rewrite: {{ strip_prefix: /svc{i} }} }} }}\n"
            )
        } else if i % 2 == 0 {
            format!(
                "  - {{ name: r{i}, match: {{ path_prefix: /svc{i}/items }}, upstream: origin }}\n"
            )
        } else {
            format!(
                "  - {{ name: r{i}, match: {{ path_regex: '^/svc{i}/orders/[0-9]+$' }}, upstream: origin }}\n"
            )
        };
        text.push_str(&route);
    }
    text
}

/// The measured work: what `POST /reload` does with the file's text before the swap.
#[inline(never)]
fn load_and_compile(text: &str, parse_only: bool) -> usize {
    let loaded = parse(SourceFile::new("routes.yaml", text.to_owned())).expect("parses");
    if parse_only {
        return loaded.config.routes.len();
    }
    let table = RouteTable::compile_loaded(loaded, 2).expect("compiles");
    let routes = table.routes().len();
    // Dropping the old table is off the reload's path too, but it is CPU the reload causes.
    drop(black_box(table));
    routes
}

fn main() {
    let mut args = std::env::args().skip(1);
    let routes: usize = args.next().map_or(10_000, |a| a.parse().expect("routes"));
    let iterations: usize = args.next().map_or(1, |a| a.parse().expect("iterations"));
    let mode = args.next().unwrap_or_else(|| "compile".to_owned());
    let text = config_text(routes);
    if mode == "reload" {
        return reload(&text, iterations);
    }
    let parse_only = match mode.as_str() {
        "parse" => true,
        "compile" => false,
        other => panic!("unknown mode {other}: compile, parse or reload"),
    };
    for _ in 0..iterations {
        let start = Instant::now();
        let compiled = load_and_compile(black_box(&text), parse_only);
        eprintln!(
            "{compiled} routes {mode}: {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// Reloads of the file with its first route edited and back, onto a table of the file.
fn reload(text: &str, iterations: usize) {
    let edited = text.replacen(
        "path_prefix: /svc0/items }",
        "path_prefix: /svc0/things }",
        1,
    );
    assert_ne!(edited, text);
    let dir = std::env::temp_dir().join(format!("reload_profile.{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("routes.yaml");
    let serving = parse(SourceFile::new("routes.yaml", text.to_owned())).expect("parses");
    let table = RouteTable::compile_loaded(serving, 1).expect("compiles");
    let routes = Arc::new(ArcSwap::from_pointee(table));
    let reloader = Reloader::new(path.clone(), routes, Arc::new(Metrics::new()));
    for iteration in 0..iterations {
        let next = if iteration % 2 == 0 { &edited } else { text };
        std::fs::write(&path, next).expect("write");
        let start = Instant::now();
        let report = reloader.reload(Trigger::Admin);
        assert!(
            matches!(report.outcome, Outcome::Applied { .. }),
            "{report:?}"
        );
        eprintln!("reload: {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
    }
    let _ = std::fs::remove_dir_all(dir);
}
