//! The Postgres diff store against a real Postgres started by the test (see
//! `support::postgres`): replicas sharing one database, one report over all of them, the
//! aggregates agreeing with the rows, and a database that goes away under load without costing
//! a client request.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;
use support::postgres::{PASSWORD, Postgres, TLS_HOST};
use support::{Backend, DEADLINE, Proxy, Recorded, binary};

/// Orders as legacy or the candidate answers them: the candidate gets the total of every
/// fourth order wrong, so a run mixes matches and mismatches.
fn orders(candidate: bool) -> support::Responder {
    Arc::new(move |request: &Recorded| {
        let id: u64 = request
            .target
            .rsplit('/')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or(0);
        let total = if candidate && id % 4 == 0 { 99 } else { 100 };
        hyper::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"id":{id},"total":{total}}}"#
            ))))
            .unwrap()
    })
}

/// Starts a proxy that shadows `/orders` and stores into `postgres` as `replica`, keeping
/// `match_sample` of the matching exchanges as rows; its password comes from a file.
async fn proxy(
    postgres: &Postgres,
    legacy: &Backend,
    candidate: &Backend,
    replica: &str,
    match_sample: f64,
) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let password_file = postgres.password_file(dir.path());
    let password = format!("  diff_store_password_file: {}\n", password_file.display());
    proxy_storing(
        dir,
        &postgres.url(),
        &password,
        legacy,
        candidate,
        replica,
        match_sample,
    )
    .await
}

/// Starts a proxy that shadows `/orders` and stores into `store` (a SQLite path or a Postgres
/// URL, with `extra` `server:` lines such as its password file), in `dir`.
async fn proxy_storing(
    dir: tempfile::TempDir,
    store: &str,
    extra: &str,
    legacy: &Backend,
    candidate: &Backend,
    replica: &str,
    match_sample: f64,
) -> Proxy {
    Proxy::with(format!(
        r#"upstreams:
  legacy: {{ backends: [{legacy}] }}
  orders-v2: {{ backends: [{candidate}] }}
default_upstream: legacy
routes:
  - name: orders
    match: {{ path_prefix: /orders }}
    shadow: {{ upstream: orders-v2 }}
"#,
        legacy = legacy.address,
        candidate = candidate.address,
    ))
    .diff_store(store)
    .server(&format!(
        "{extra}  diff_match_sample: {match_sample}\n  replica: {replica}\n"
    ))
    .env("RUST_LOG", "info")
    .in_dir(dir)
    .start()
    .await
}

/// Sends `/orders/1..=count` through `proxy`; every answer must be legacy's 200.
async fn traffic(proxy: &Proxy, ids: std::ops::RangeInclusive<u64>) {
    for id in ids {
        let response = proxy.get(&format!("/orders/{id}")).await;
        assert_eq!(response.status, 200, "{}", proxy.stderr());
    }
}

/// `strangler report --format json --db URL args...` with the password from the environment:
/// (exit code, the document, stderr).
fn report(url: &str, args: &[&str]) -> (i32, Option<Value>, String) {
    let mut command = std::process::Command::new(binary());
    command
        .args([
            "report",
            "--format",
            "json",
            "--min-samples",
            "0",
            "--db",
            url,
        ])
        .args(args)
        .env("STRANGLER_DIFF_STORE_PASSWORD", PASSWORD);
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    (
        output.status.code().unwrap_or(-1),
        serde_json::from_str(&stdout).ok(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// (samples, mismatches) of the report's `orders` groups together.
fn totals(document: &Value) -> (u64, u64) {
    document["routes"]
        .as_array()
        .unwrap()
        .iter()
        .fold((0, 0), |(samples, mismatches), group| {
            (
                samples + group["samples"].as_u64().unwrap(),
                mismatches + group["mismatches"].as_u64().unwrap(),
            )
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn two_proxies_write_to_one_database_and_one_report_sees_both() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let legacy = Backend::start_with("legacy", orders(false)).await;
    let candidate = Backend::start_with("orders-v2", orders(true)).await;
    // Replica a keeps no matching rows, replica b all of them: the counts must not care.
    let a = proxy(&postgres, &legacy, &candidate, "replica-a", 0.0).await;
    let b = proxy(&postgres, &legacy, &candidate, "replica-b", 1.0).await;
    traffic(&a, 1..=40).await;
    traffic(&b, 1..=20).await;
    a.wait_for_metric("strangler_diff_store_written_total", 40.0)
        .await;
    b.wait_for_metric("strangler_diff_store_written_total", 20.0)
        .await;

    let (code, document, stderr) = report(&postgres.url(), &[]);
    let document = document.unwrap_or_else(|| panic!("no report ({code}): {stderr}"));
    assert_eq!(totals(&document), (60, 15), "{document:#}");
    assert_eq!(code, 1, "15 of 60 differ: over the default 1%");
    let route = &document["routes"][0];
    assert_eq!(route["route"], "orders");
    assert_eq!(route["paths"][0]["path"], "$.total", "{route:#}");
    assert_eq!(route["paths"][0]["exchanges"], 15);

    let (_, only_a, _) = report(&postgres.url(), &["--replica", "replica-a"]);
    assert_eq!(totals(&only_a.unwrap()), (40, 10));
    let (_, only_b, _) = report(&postgres.url(), &["--replica", "replica-b"]);
    assert_eq!(totals(&only_b.unwrap()), (20, 5));

    // The aggregates agree with the rows: every mismatch is a row, matches only where kept.
    let rows = postgres.query(
        "SELECT replica || ':' || verdict || '=' || COUNT(*) FROM diffs
         GROUP BY replica, verdict ORDER BY 1",
    );
    assert_eq!(
        rows,
        "replica-a:mismatch=10\nreplica-b:match=15\nreplica-b:mismatch=5"
    );
    let counted = postgres.query(
        "SELECT replica || ':' || verdict || '=' || SUM(exchanges) FROM diff_counts
         GROUP BY replica, verdict ORDER BY 1",
    );
    assert_eq!(
        counted,
        "replica-a:match=30\nreplica-a:mismatch=10\nreplica-b:match=15\nreplica-b:mismatch=5"
    );
    assert_eq!(
        postgres.query("SELECT version FROM strangler_schema_version"),
        strangler::store::postgres::SCHEMA_VERSION.to_string()
    );
    // Every compared exchange is counted per request shape, stored as a row or not.
    assert_eq!(
        postgres.query(
            "SELECT replica || ':' || shape || '=' || SUM(exchanges) FROM diff_shape_counts
             GROUP BY replica, shape ORDER BY 1"
        ),
        "replica-a:GET /orders/*=40\nreplica-b:GET /orders/*=20"
    );

    // GET /diffs reads the shared database: rows of both replicas, newest first.
    let diffs = support::get(a.admin, "/diffs?limit=5")
        .await
        .unwrap()
        .json();
    assert_eq!(
        diffs["diffs"].as_array().map(Vec::len),
        Some(5),
        "{diffs:#}"
    );
    let mismatches = support::get(a.admin, "/diffs?verdict=mismatch&limit=100")
        .await
        .unwrap()
        .json();
    assert_eq!(mismatches["diffs"].as_array().unwrap().len(), 15);

    // The store-level summary (what /diffs/summary serves) reads the same counts.
    let location: strangler::store::StoreLocation = postgres.url_with_password().parse().unwrap();
    let summary = tokio::task::spawn_blocking(move || {
        strangler::store::summary(
            &location,
            None,
            &strangler::store::SummaryQuery {
                filter: strangler::store::Filter::default(),
                bucket_ms: 0,
            },
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(summary.len(), 1, "{summary:?}");
    let row = &summary[0];
    assert_eq!(
        (
            row.exchanges,
            row.matches,
            row.mismatches,
            row.noise,
            row.errors
        ),
        (60, 45, 15, 0, 0)
    );
    assert_eq!(
        (
            row.primary_upstream.as_deref(),
            row.candidate_upstream.as_deref()
        ),
        (Some("legacy"), Some("orders-v2"))
    );

    // The password is in no log line and not in the live config.
    let routes = a.routes().await.to_string();
    assert!(routes.contains(&postgres.url()), "{routes}");
    for shown in [routes, a.stderr(), b.stderr()] {
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_under_load_costs_no_client_request_and_writes_resume_when_it_returns() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let legacy = Backend::start_with("legacy", orders(false)).await;
    let candidate = Backend::start_with("orders-v2", orders(true)).await;
    let proxy = proxy(&postgres, &legacy, &candidate, "solo", 0.0).await;
    traffic(&proxy, 1..=20).await;
    proxy
        .wait_for_metric("strangler_diff_store_written_total", 20.0)
        .await;

    postgres.stop_server();
    // Requests keep flowing while the store is gone; every one is answered.
    let mut sent = 0;
    support::eventually("comparisons dropped while the store is down", || {
        sent += 4;
        let sent = sent;
        let proxy = &proxy;
        async move {
            let dropped = proxy
                .metric("strangler_diff_store_dropped_total{reason=\"unavailable\"}")
                .await
                .unwrap_or(0.0)
                + proxy
                    .metric("strangler_diff_store_dropped_total{reason=\"write_failed\"}")
                    .await
                    .unwrap_or(0.0);
            if dropped >= 5.0 {
                return Ok(());
            }
            traffic(proxy, 1..=4).await;
            Err(format!(
                "{dropped} dropped after {sent} requests:\n{}",
                proxy.stderr()
            ))
        }
    })
    .await;
    let errors = proxy
        .metric("strangler_diff_store_errors_total{operation=\"open\"}")
        .await
        .unwrap_or(0.0)
        + proxy
            .metric("strangler_diff_store_errors_total{operation=\"write\"}")
            .await
            .unwrap_or(0.0);
    assert!(errors >= 1.0, "store errors counted: {errors}");
    // A report on a database that is down fails clearly, without the password.
    let (code, _, stderr) = report(&postgres.url_with_password(), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("127.0.0.1"), "{stderr}");
    assert!(
        stderr.contains("Connection refused"),
        "the cause is shown: {stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    postgres.start_server();
    let before = proxy
        .metric("strangler_diff_store_written_total")
        .await
        .unwrap_or(0.0);
    // The writer reconnects after its backoff (10 s at most): traffic until it has.
    support::eventually_within(
        "writes resumed",
        DEADLINE + Duration::from_secs(10),
        || async {
            traffic(&proxy, 1..=4).await;
            let written = proxy
                .metric("strangler_diff_store_written_total")
                .await
                .unwrap_or(0.0);
            if written >= before + 8.0 {
                Ok(())
            } else {
                Err(format!("{written} written:\n{}", proxy.stderr()))
            }
        },
    )
    .await;
    let (_, document, stderr) = report(&postgres.url(), &[]);
    let (samples, _) = totals(&document.unwrap_or_else(|| panic!("{stderr}")));
    assert!(
        samples >= 28,
        "the first 20 and the ones after the restart: {samples}"
    );
    assert!(!proxy.stderr().contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_on_a_database_without_a_store_says_so() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let (code, _, stderr) = report(&postgres.url(), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no strangler diff store here"), "{stderr}");

    // Without a password the server's demand is named, with where to put one.
    let output = std::process::Command::new(binary())
        .args(["report", "--db", &postgres.url()])
        .env_remove("STRANGLER_DIFF_STORE_PASSWORD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("STRANGLER_DIFF_STORE_PASSWORD"), "{stderr}");
}

/// An exchange of `route` as replica-independent test data: generation `generation` of config
/// `sha`, at `at_ms`.
fn exchange(
    at_ms: i64,
    generation: u64,
    sha: &str,
    verdict: &str,
) -> strangler::record::DiffRecord {
    strangler::record::DiffRecord {
        at_ms,
        request_id: format!("{generation}-{at_ms}"),
        generation: Some(generation),
        config_sha256: Some(sha.into()),
        ..support::stored_exchange(
            strangler::vocabulary::Verdict::parse(verdict).expect("a verdict"),
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn since_reload_takes_each_replicas_newest_generation() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let strangler::store::StoreLocation::Postgres(url) =
        postgres.url_with_password().parse().unwrap()
    else {
        panic!("a Postgres URL");
    };
    let now = strangler::store::now_ms();
    tokio::task::spawn_blocking(move || {
        use strangler::store::postgres::{WriterSettings, connect, migrate, write_now};
        let mut client = connect(&url, None).unwrap();
        migrate(&mut client, "test").unwrap();
        let settings = |replica: &str| WriterSettings {
            url: url.clone(),
            password_file: None,
            replica: replica.into(),
            max_rows: 1000,
            max_age: Duration::from_secs(3600),
            match_sample: 1.0,
        };
        // Replica a reloaded (generation 1, then 2); replica b never did, and b's generation 1
        // is newer than a's generation 2.
        let a = [
            exchange(now - 300_000, 1, "x", "mismatch"),
            exchange(now - 299_000, 1, "x", "mismatch"),
            exchange(now - 200_000, 2, "y", "match"),
        ];
        let b = [
            exchange(now - 100_000, 1, "x", "match"),
            exchange(now - 90_000, 1, "x", "match"),
        ];
        write_now(&mut client, &settings("a"), &a).unwrap();
        write_now(&mut client, &settings("b"), &b).unwrap();
    })
    .await
    .unwrap();
    let (_, all, stderr) = report(&postgres.url(), &[]);
    assert_eq!(totals(&all.unwrap_or_else(|| panic!("{stderr}"))), (5, 2));
    let (code, latest, stderr) = report(&postgres.url(), &["--since-reload"]);
    assert_eq!(
        totals(&latest.unwrap_or_else(|| panic!("{stderr}"))),
        (3, 0),
        "a's generation 2 and b's generation 1, not a's generation 1"
    );
    assert_eq!(code, 0);
}

/// Orders of about 64 KiB (a long `note`) that the candidate always answers differently, so
/// every comparison is a row carrying two full samples: each one weighs on the writer's queue,
/// which is bounded by bytes alone.
fn big_orders(candidate: bool) -> support::Responder {
    let note = if candidate { "n" } else { "o" }.repeat(64 * 1024);
    Arc::new(move |request: &Recorded| {
        let id = request.target.rsplit('/').next().unwrap_or("0");
        hyper::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"id":{id},"note":"{note}"}}"#
            ))))
            .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_postgres_fills_the_writer_queue_and_drops_without_slowing_clients() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let legacy = Backend::start_with("legacy", big_orders(false)).await;
    let candidate = Backend::start_with("orders-v2", big_orders(true)).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = postgres.password_file(dir.path());
    let extra = format!(
        "  diff_store_password_file: {}\n  diff_max_sample: 64KiB\n",
        password_file.display()
    );
    let proxy = proxy_storing(
        dir,
        &postgres.url(),
        &extra,
        &legacy,
        &candidate,
        "slow",
        0.0,
    )
    .await;
    traffic(&proxy, 1..=4).await;
    proxy
        .wait_for_metric("strangler_diff_store_written_total", 4.0)
        .await;

    // A session holds the counts table locked: every write waits (up to its lock timeout),
    // until the session is cancelled below.
    let mut locker = postgres.spawn_query(
        "BEGIN; LOCK TABLE diff_counts IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT;",
    );
    let lock_holder = "FROM pg_locks WHERE relation = 'diff_counts'::regclass \
                       AND mode = 'AccessExclusiveLock' AND granted";
    support::eventually("the counts table locked", || async {
        match postgres.query(&format!("SELECT COUNT(*) {lock_holder}")) {
            locks if locks == "1" => Ok(()),
            locks => Err(locks),
        }
    })
    .await;
    // More than the queue's 32 MiB of comparisons (each over 128 KiB) while the writer is
    // stuck; no bound on the number of batches helps to fill it.
    let slowest = std::cell::Cell::new(Duration::ZERO);
    support::eventually("the writer's queue full", || async {
        if proxy
            .metric("strangler_diff_store_dropped_total{reason=\"queue_full\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
        {
            return Ok(());
        }
        // Back to back between checks, each request timed on its own.
        for _ in 0..16 {
            let sent = Instant::now();
            traffic(&proxy, 1..=1).await;
            slowest.set(slowest.get().max(sent.elapsed()));
        }
        Err(proxy.stderr())
    })
    .await;
    let slowest = slowest.get();
    assert!(
        slowest < Duration::from_secs(1),
        "a request waited on the store: {slowest:?}"
    );
    let written = proxy
        .metric("strangler_diff_store_written_total")
        .await
        .unwrap_or(0.0);
    postgres.query(&format!("SELECT pg_cancel_backend(pid) {lock_holder}"));
    locker.wait().unwrap();
    // What was queued gets written once the lock is gone; new comparisons too.
    traffic(&proxy, 1..=4).await;
    proxy
        .wait_for_metric("strangler_diff_store_written_total", written + 4.0)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_runs_in_the_database_by_age_then_by_rows() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let strangler::store::StoreLocation::Postgres(url) =
        postgres.url_with_password().parse().unwrap()
    else {
        panic!("a Postgres URL");
    };
    let now = strangler::store::now_ms();
    tokio::task::spawn_blocking(move || {
        use strangler::store::postgres::{WriterSettings, connect, migrate, trim, write_now};
        let mut client = connect(&url, None).unwrap();
        migrate(&mut client, "test").unwrap();
        let settings = WriterSettings {
            url: url.clone(),
            password_file: None,
            replica: "r".into(),
            max_rows: 3,
            max_age: Duration::from_secs(3600),
            match_sample: 1.0,
        };
        let two_hours_ago = now - 2 * 3600 * 1000;
        let mut records: Vec<_> = (0..4)
            .map(|i| exchange(two_hours_ago + i, 1, "x", "mismatch"))
            .collect();
        records.extend((0..5).map(|i| exchange(now - 1000 + i, 1, "x", "match")));
        write_now(&mut client, &settings, &records).unwrap();
        trim(&mut client, settings.max_rows, settings.max_age).unwrap();
    })
    .await
    .unwrap();
    // The old rows and their counts are gone; of the young rows, the newest 3 are kept.
    assert_eq!(
        postgres.query("SELECT string_agg(verdict, ',' ORDER BY id) FROM diffs"),
        "match,match,match"
    );
    assert_eq!(
        postgres.query("SELECT verdict || '=' || SUM(exchanges) FROM diff_counts GROUP BY verdict"),
        "match=5",
        "counts go by age only: they are what reports total"
    );
}

/// What differs between two answers of the viewer for the same traffic through two proxies:
/// row ids, times, request ids (each proxy mints its own) and the config's hash (the store
/// line differs). The rest must be equal.
fn comparable(mut document: Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for key in [
                    "id",
                    "at_ms",
                    "request_id",
                    "from_ms",
                    "bucket_ms",
                    "first_ms",
                    "last_ms",
                    "trend",
                    "older",
                    "newer",
                    "next_before",
                    "config_sha256",
                ] {
                    map.remove(key);
                }
                if let Some(Value::Object(ids)) = map.get("example_ids") {
                    let examples = ids.len();
                    map.insert("example_ids".into(), examples.into());
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut document);
    document
}

#[tokio::test(flavor = "multi_thread")]
async fn the_viewer_answers_the_same_json_from_postgres_as_from_sqlite() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let legacy = Backend::start_with("legacy", orders(false)).await;
    let candidate = Backend::start_with("orders-v2", orders(true)).await;
    let on_postgres = proxy(&postgres, &legacy, &candidate, "replica-a", 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("diffs.db").display().to_string();
    let on_sqlite = proxy_storing(dir, &store, "", &legacy, &candidate, "replica-a", 1.0).await;

    // Before anything is stored, both answer an empty store, not an error.
    for proxy in [&on_postgres, &on_sqlite] {
        let summary = support::get(proxy.admin, "/diffs/summary").await.unwrap();
        assert_eq!(summary.status, 200, "{}", summary.text());
        assert_eq!(summary.json()["routes"], serde_json::json!([]));
        let missing = support::get(proxy.admin, "/diffs/1").await.unwrap();
        assert_eq!(missing.status, 404, "{}", missing.text());
    }
    for proxy in [&on_postgres, &on_sqlite] {
        traffic(proxy, 1..=24).await;
        // What a client of the viewer sees: the overview counting all 24 as stored.
        support::eventually("24 exchanges stored", || async {
            let summary = support::get(proxy.admin, "/diffs/summary")
                .await
                .map_err(|error| error.to_string())?
                .json();
            match summary["routes"][0]["exchanges"].as_u64() {
                Some(24) => Ok(()),
                _ => Err(summary.to_string()),
            }
        })
        .await;
    }

    for target in [
        "/diffs/summary",
        "/diffs/summary?route=orders",
        "/diffs/summary?route=orders&generation=latest&since=1h",
        "/diffs?limit=5",
        "/diffs?route=orders&verdict=mismatch&limit=3",
    ] {
        let from_postgres = support::get(on_postgres.admin, target).await.unwrap();
        let from_sqlite = support::get(on_sqlite.admin, target).await.unwrap();
        assert_eq!(
            from_postgres.status,
            200,
            "{target}: {}",
            from_postgres.text()
        );
        assert_eq!(from_sqlite.status, 200, "{target}: {}", from_sqlite.text());
        assert_eq!(
            comparable(from_postgres.json()),
            comparable(from_sqlite.json()),
            "{target}"
        );
    }

    // The overview counts every exchange, and its trend adds up to them.
    let summary = support::get(on_postgres.admin, "/diffs/summary?route=orders")
        .await
        .unwrap()
        .json();
    let route = &summary["routes"][0];
    assert_eq!(
        (&route["exchanges"], &route["mismatches"], &route["matches"]),
        (&24.into(), &6.into(), &18.into()),
        "{summary:#}"
    );
    let trend: u64 = route["trend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|point| point["exchanges"].as_u64().unwrap())
        .sum();
    assert_eq!(trend, 24, "{summary:#}");
    assert_eq!(route["paths"][0]["path"], "$.total", "{summary:#}");
    // The example of a path links to a stored exchange by its Postgres row id.
    let example = route["paths"][0]["example"]["request_id"].as_str().unwrap();
    let example_id = route["example_ids"][example].as_i64().unwrap();

    // Pages go back in time without overlap, by `next_before`.
    let first = support::get(on_postgres.admin, "/diffs?limit=4")
        .await
        .unwrap()
        .json();
    let next = first["next_before"]
        .as_i64()
        .expect("a full page has a next");
    let second = support::get(on_postgres.admin, &format!("/diffs?limit=4&before={next}"))
        .await
        .unwrap()
        .json();
    let ids = |page: &Value| -> Vec<i64> {
        page["diffs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect()
    };
    let (first_ids, second_ids) = (ids(&first), ids(&second));
    assert_eq!(second_ids.len(), 4, "{second:#}");
    assert!(
        first_ids.iter().all(|id| !second_ids.contains(id)),
        "{first_ids:?} {second_ids:?}"
    );
    assert!(
        first_ids.last() > second_ids.first(),
        "{first_ids:?} {second_ids:?}"
    );

    // One exchange, side by side, as SQLite shows the same one; its differing neighbours.
    let view = support::get(on_postgres.admin, &format!("/diffs/{example_id}"))
        .await
        .unwrap();
    assert_eq!(view.status, 200, "{}", view.text());
    let view = view.json();
    let path = view["path"].as_str().unwrap().to_owned();
    let sqlite_page = support::get(on_sqlite.admin, "/diffs?limit=100")
        .await
        .unwrap()
        .json();
    let sqlite_id = sqlite_page["diffs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path.as_str())
        .map(|e| e["id"].as_i64().unwrap())
        .unwrap();
    let sqlite_view = support::get(on_sqlite.admin, &format!("/diffs/{sqlite_id}"))
        .await
        .unwrap()
        .json();
    assert_eq!(comparable(view.clone()), comparable(sqlite_view.clone()));
    assert_eq!(
        (view["older"].is_null(), view["newer"].is_null()),
        (
            sqlite_view["older"].is_null(),
            sqlite_view["newer"].is_null()
        )
    );
    if let Some(older) = view["older"].as_i64() {
        let older = support::get(on_postgres.admin, &format!("/diffs/{older}"))
            .await
            .unwrap()
            .json();
        assert_eq!(
            older["verdict"], "mismatch",
            "neighbours are differing exchanges"
        );
    }
    let gone = support::get(on_postgres.admin, "/diffs/99999")
        .await
        .unwrap();
    assert_eq!(gone.status, 404, "{}", gone.text());
}

/// `count` matching exchanges and `differing` mismatches of `GET /orders/N` whose candidate sends
/// another `x-served-by` header, from `start_ms` on.
fn served_by_mismatches(
    start_ms: i64,
    count: i64,
    differing: i64,
) -> Vec<strangler::record::DiffRecord> {
    (0..count + differing)
        .map(|n| {
            let mut record = exchange(
                start_ms + n,
                1,
                "x",
                if n < count { "match" } else { "mismatch" },
            );
            record.path = format!("/orders/{n}");
            record.request_id = format!("r{n}");
            if n >= count {
                record.differences = vec![strangler::record::Difference {
                    path: "headers.x-served-by".into(),
                    kind: strangler::record::Kind::Changed,
                    primary: Some("legacy-1".into()),
                    shadow: Some("v2-1".into()),
                }];
            }
            record
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn suggestions_count_every_exchange_of_a_request_shape_whatever_the_match_sample() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let strangler::store::StoreLocation::Postgres(url) =
        postgres.url_with_password().parse().unwrap()
    else {
        panic!("a Postgres URL");
    };
    let now = strangler::store::now_ms();
    tokio::task::spawn_blocking(move || {
        use strangler::store::postgres::{WriterSettings, connect, migrate, write_now};
        let mut client = connect(&url, None).unwrap();
        migrate(&mut client, "test").unwrap();
        // The same exchanges from two replicas: one keeps no matching rows, one all of them.
        for (replica, match_sample) in [("none-kept", 0.0), ("all-kept", 1.0)] {
            let settings = WriterSettings {
                url: url.clone(),
                password_file: None,
                replica: replica.into(),
                max_rows: 1000,
                max_age: Duration::from_secs(3600),
                match_sample,
            };
            write_now(
                &mut client,
                &settings,
                &served_by_mismatches(now - 10_000, 30, 10),
            )
            .unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(
        postgres.query("SELECT COUNT(*) FROM diffs WHERE replica = 'none-kept'"),
        "10",
        "only the mismatches are rows"
    );
    // `x-served-by` differs in 10 of the 40 exchanges of `GET /orders/*`: not noise. Measured
    // against the rows alone it would differ in all of them where no match is kept.
    for replica in ["none-kept", "all-kept"] {
        let (_, document, stderr) = report(&postgres.url(), &["--replica", replica]);
        let document = document.unwrap_or_else(|| panic!("{stderr}"));
        let route = &document["routes"][0];
        assert_eq!(route["samples"], 40, "{replica}: {route:#}");
        assert_eq!(
            route["suggested_ignore_headers"],
            serde_json::json!([]),
            "{replica}: {route:#}"
        );
        assert_eq!(
            route["noisy_paths"],
            serde_json::json!([]),
            "{replica}: {route:#}"
        );
        assert_eq!(
            route["paths"][0]["path"], "headers.x-served-by",
            "{replica}: {route:#}"
        );
    }
}

/// Connects as the store does to `url` and asks the server whether this session is encrypted.
async fn encrypted(url: String) -> Result<bool, String> {
    tokio::task::spawn_blocking(move || {
        let strangler::store::StoreLocation::Postgres(url) =
            url.parse::<strangler::store::StoreLocation>()?
        else {
            panic!("a Postgres URL");
        };
        let mut client =
            strangler::store::postgres::connect(&url, None).map_err(|e| e.to_string())?;
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sslmode_in_the_url_is_honoured_against_a_postgres_with_its_own_ca() {
    let Some(postgres) = Postgres::start_with_tls() else {
        return;
    };
    let (ca, other) = (postgres.ca_file(), postgres.other_ca_file());
    let (ca, other) = (ca.display(), other.display());
    let by_address = postgres.url_with_password();
    // The certificate names TLS_HOST; the socket goes to 127.0.0.1 all the same.
    let by_name = format!(
        "postgres://{}:{PASSWORD}@{TLS_HOST}:{}/postgres?hostaddr=127.0.0.1",
        support::postgres::USER,
        postgres.port
    );

    assert_eq!(
        encrypted(format!("{by_address}?sslmode=disable")).await,
        Ok(false)
    );
    assert_eq!(
        encrypted(by_address.clone()).await,
        Ok(true),
        "prefer, as libpq"
    );
    assert_eq!(
        encrypted(format!("{by_address}?sslmode=require")).await,
        Ok(true)
    );
    assert_eq!(
        encrypted(format!("{by_name}&sslmode=verify-full&sslrootcert={ca}")).await,
        Ok(true)
    );
    // verify-ca checks the chain, not the name.
    assert_eq!(
        encrypted(format!("{by_address}?sslmode=verify-ca&sslrootcert={ca}")).await,
        Ok(true)
    );
    let wrong_name = encrypted(format!("{by_address}?sslmode=verify-full&sslrootcert={ca}"))
        .await
        .unwrap_err();
    assert!(wrong_name.contains("certificate"), "{wrong_name}");
    let wrong_ca = encrypted(format!("{by_name}&sslmode=verify-full&sslrootcert={other}"))
        .await
        .unwrap_err();
    assert!(wrong_ca.contains("certificate"), "{wrong_ca}");
    assert!(!wrong_ca.contains(PASSWORD), "{wrong_ca}");

    // A proxy stores through verify-full, and `report` reads back through it.
    let legacy = Backend::start_with("legacy", orders(false)).await;
    let candidate = Backend::start_with("orders-v2", orders(true)).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = postgres.password_file(dir.path());
    let url = format!(
        "postgres://{}@{TLS_HOST}:{}/postgres?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}",
        support::postgres::USER,
        postgres.port
    );
    let password = format!("  diff_store_password_file: {}\n", password_file.display());
    let store = format!("'{url}'");
    let proxy = proxy_storing(dir, &store, &password, &legacy, &candidate, "tls", 1.0).await;
    traffic(&proxy, 1..=8).await;
    proxy
        .wait_for_metric("strangler_diff_store_written_total", 8.0)
        .await;
    assert_eq!(
        postgres.query(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'strangler'"
        ),
        "t",
        "the writer's session is encrypted"
    );
    let (code, document, stderr) = report(&url, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(totals(&document.unwrap()), (8, 2));
    let refused = format!(
        "postgres://{}@{TLS_HOST}:{}/postgres?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={other}",
        support::postgres::USER,
        postgres.port
    );
    let (code, _, stderr) = report(&refused, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
}
