//! Fills a diff store with synthetic exchanges through the real write path, for measuring
//! `strangler report` on a big store (see `bench/report-store.sh`).
//!
//!   cargo run --release --example fill_store -- STORE [EXCHANGES] [REPLICAS]
//!
//! STORE is a SQLite path or a postgres:// URL (password from STRANGLER_DIFF_STORE_PASSWORD).
//! The exchanges are spread over the last 24 hours, 5 routes and REPLICAS replicas (default
//! 1,000,000 and 10); 1% of them differ (one body path, some a header too), and 1% of the
//! matches are stored as rows (`diff_match_sample: 0.01`), as a fleet would run.

use std::time::{Duration, Instant};

use strangler::record::{DiffRecord, Difference, Kind};
use strangler::store::{DiffStore, StoreLocation, now_ms, postgres};
use strangler::vocabulary::Verdict;

const BATCH: usize = 1000;
const ROUTES: [&str; 5] = ["orders", "invoices", "users", "search", "cart"];

fn record(index: u64, at_ms: i64) -> DiffRecord {
    let route = ROUTES[(index % ROUTES.len() as u64) as usize];
    let differs = index % 100 == 7;
    let mut differences = Vec::new();
    if differs {
        differences.push(Difference {
            path: "$.total".into(),
            kind: Kind::Changed,
            primary: Some("90".into()),
            shadow: Some("100".into()),
        });
        if index % 300 == 7 {
            differences.push(Difference {
                path: "headers.x-cache".into(),
                kind: Kind::Changed,
                primary: Some("MISS from edge-1".into()),
                shadow: Some("MISS from edge-2".into()),
            });
        }
    }
    DiffRecord {
        at_ms,
        route: route.into(),
        method: "GET".into(),
        path: format!("/{route}/{}", index % 5000),
        query: None,
        request_id: format!("req-{index}"),
        primary_status: Some(200),
        shadow_status: Some(200),
        verdict: if differs {
            Verdict::Mismatch
        } else {
            Verdict::Match
        },
        differences,
        noise: Vec::new(),
        primary_sample: differs.then(|| r#"{"total":90}"#.into()),
        shadow_sample: differs.then(|| r#"{"total":100}"#.into()),
        primary_upstream: Some("legacy".into()),
        candidate_upstream: Some(format!("{route}-v2")),
        stage: Some("shadow".into()),
        generation: Some(1),
        config_sha256: Some("0".repeat(64)),
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let location: StoreLocation = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: fill_store STORE [EXCHANGES] [REPLICAS]"))?
        .parse()
        .map_err(anyhow::Error::msg)?;
    let exchanges: u64 = args.next().map_or(Ok(1_000_000), |n| n.parse())?;
    let replicas: u64 = args.next().map_or(Ok(10), |n| n.parse())?;
    let day_ms = 24 * 3600 * 1000;
    let start = now_ms() - day_ms;
    let step = day_ms as f64 / exchanges as f64;
    let max_age = Duration::from_secs(2 * 24 * 3600);
    let started = Instant::now();
    for replica in 0..replicas {
        let name = format!("replica-{replica}");
        let mut sqlite = None;
        let mut pg = None;
        match &location {
            StoreLocation::Sqlite(path) => {
                sqlite =
                    Some(DiffStore::open(path, u64::MAX / 2, max_age)?.writing_as(&name, 0.01));
            }
            StoreLocation::Postgres(url) => {
                let mut client = postgres::connect(url, None)?;
                postgres::migrate(&mut client, &url.redacted())?;
                let settings = postgres::WriterSettings {
                    url: url.clone(),
                    password_file: None,
                    replica: name.clone(),
                    max_rows: u64::MAX / 2,
                    max_age,
                    match_sample: 0.01,
                };
                pg = Some((client, settings));
            }
        }
        // This replica's share, interleaved in time with the others'.
        let mine: Vec<u64> = (replica..exchanges).step_by(replicas as usize).collect();
        for chunk in mine.chunks(BATCH) {
            let batch: Vec<DiffRecord> = chunk
                .iter()
                .map(|&index| record(index, start + (index as f64 * step) as i64))
                .collect();
            if let Some(store) = sqlite.as_mut() {
                store.insert(&batch)?;
            }
            if let Some((client, settings)) = pg.as_mut() {
                postgres::write_now(client, settings, &batch)?;
            }
        }
        eprintln!("{name}: {} exchanges", mine.len());
    }
    eprintln!(
        "{exchanges} exchanges from {replicas} replicas written in {:.1?}",
        started.elapsed()
    );
    Ok(())
}
