//! `strangler report` on a full store: 100,000 rows (the default `server.diff_max_rows`) of one
//! route that differs in two headers everywhere, a total on 1 % and a 404 on 0.5 % of exchanges,
//! with 1 KiB body samples like the proxy stores. Measures what the command does in-process:
//! the SQL counts, the streaming scan of the differing rows, the suggestion rule and rendering.
//! `cargo bench --bench report` (the store is generated once, ~10 s, in a temporary directory,
//! or kept at `$STRANGLER_REPORT_BENCH_DB`).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use strangler::record::{DiffRecord, Difference, Kind};
use strangler::report::{self, Format, Listing, ReportOptions};
use strangler::store::{DiffStore, now_ms};
use strangler::vocabulary::Verdict;

const ROWS: u64 = 100_000;

fn difference(path: &str, kind: Kind, primary: Option<&str>, shadow: Option<&str>) -> Difference {
    Difference {
        path: path.into(),
        kind,
        primary: primary.map(str::to_owned),
        shadow: shadow.map(str::to_owned),
    }
}

/// A body sample of about 1 KiB, like the ones the proxy stores for differing exchanges.
fn sample(id: u64, total: &str) -> String {
    let items: Vec<String> = (0..8)
        .map(|n| {
            format!(
                r#"{{"sku":"SKU-{n:04}","quantity":{},"price":"12.50"}}"#,
                n + 1
            )
        })
        .collect();
    format!(
        r#"{{"id":{id},"status":"open","total":{total},"currency":"EUR","items":[{}],"customer":{{"name":"Ada Lovelace","country":"FR"}}}}"#,
        items.join(",")
    )
}

/// `rows` exchanges of route `orders` (legacy → orders-v2) over 1,000 orders: every exchange
/// differs in `x-powered-by` and `vary`; 1 in 100 has a wrong `$.total` (orders whose id ends in
/// 7, in one pass over the orders of ten); 1 in 200 is a 404 from the candidate; the rest of the
/// body matches.
fn realistic_store(path: &Path, rows: u64) {
    let mut store = DiffStore::open(path, rows + 1000, Duration::from_secs(86_400)).unwrap();
    let now = now_ms();
    let mut batch = Vec::with_capacity(1000);
    for n in 0..rows {
        let id = n % 1000;
        let mut differences = vec![
            difference("headers.x-powered-by", Kind::Missing, Some("Express"), None),
            difference(
                "headers.vary",
                Kind::Changed,
                Some("Accept-Encoding"),
                Some("Origin, Accept-Encoding"),
            ),
        ];
        let (shadow_status, total) = if n % 200 == 199 {
            differences.insert(
                0,
                difference("status", Kind::Changed, Some("200"), Some("404")),
            );
            differences.push(difference(
                "$",
                Kind::Type,
                Some("{\"id\":...}"),
                Some("\"Not Found\""),
            ));
            (404, "\"90.00\"")
        } else if id % 10 == 7 && (n / 1000) % 10 == 0 {
            differences.push(difference(
                "$.total",
                Kind::Changed,
                Some("\"90.00\""),
                Some("\"100.00\""),
            ));
            (200, "\"100.00\"")
        } else {
            (200, "\"90.00\"")
        };
        batch.push(DiffRecord {
            at_ms: now - (rows - n) as i64,
            route: "orders".into(),
            method: "GET".into(),
            path: format!("/api/orders/{id}"),
            query: (n % 3 == 0).then(|| "expand=items&token=%5Bredacted%5D".to_owned()),
            request_id: format!("req-{n}"),
            primary_status: Some(200),
            shadow_status: Some(shadow_status),
            verdict: Verdict::Mismatch,
            differences,
            noise: Vec::new(),
            primary_sample: Some(sample(id, "\"90.00\"")),
            shadow_sample: Some(sample(id, total)),
            primary_upstream: Some("legacy".into()),
            candidate_upstream: Some("orders-v2".into()),
            stage: Some("shadow".into()),
            generation: Some(1),
            config_sha256: Some("5ca1ab1e".into()),
        });
        if batch.len() == 1000 {
            store.insert(&batch).unwrap();
            batch.clear();
        }
    }
    store.insert(&batch).unwrap();
}

fn full_store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    // STRANGLER_REPORT_BENCH_DB keeps the store (generated once) for timing the command by hand.
    let path = std::env::var_os("STRANGLER_REPORT_BENCH_DB")
        .map_or_else(|| dir.path().join("diffs.db"), std::path::PathBuf::from);
    if !path.exists() {
        realistic_store(&path, ROWS);
    }
    let options = ReportOptions {
        databases: vec![strangler::store::StoreLocation::Sqlite(path)],
        replica: None,
        route: None,
        since_ms: None,
        generation: None,
        max_diff_rate: report::DiffRate::default(),
        min_samples: 1,
        listing: Listing::default(),
    };
    // The store is what it claims: every row counted, the suggestion the headers.
    let built = report::build(&options).unwrap();
    assert_eq!(built.routes[0].samples, ROWS);
    assert_eq!(
        built.routes[0].suggested_ignore_headers,
        ["vary", "x-powered-by"]
    );

    let mut group = c.benchmark_group("report_100k_rows");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for (name, format) in [
        ("text", Format::Text),
        ("json", Format::Json),
        ("markdown", Format::Markdown),
        ("junit", Format::Junit),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let built = report::build(&options).unwrap();
                black_box(report::render(&built, format))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, full_store);
criterion_main!(benches);
