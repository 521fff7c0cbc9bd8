//! `strangler report` on stores that look like real services: header noise in every exchange
//! and one body bug on a few records, which every format must put first.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;
use strangler::record::{DiffRecord, Difference, Kind};
use strangler::store::DiffStore;
use strangler::vocabulary::Verdict;
use support::{Backend, Proxy, Recorded, report, run_cli, wait_for_samples};

/// Orders whose candidate total ignores the coupon's discount.
const BUGGY_ORDERS: [u64; 3] = [3, 5, 9];

/// An order as legacy (`candidate: false`) or the new service answers it: legacy sends
/// `x-powered-by` and `x-cache: MISS from edge-1`, the new service `x-cache: MISS from edge-2`,
/// a CORS header and no `x-powered-by`, and forgets the discount on [`BUGGY_ORDERS`].
fn orders(candidate: bool) -> support::Responder {
    Arc::new(move |request: &Recorded| {
        let path = request.target.split('?').next().unwrap_or_default();
        let id: u64 = path
            .rsplit('/')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or(0);
        let discount = if request.target.contains("coupon=") {
            10
        } else {
            0
        };
        let total = if candidate && BUGGY_ORDERS.contains(&id) {
            100
        } else {
            100 - discount
        };
        let mut response = hyper::Response::builder()
            .header("content-type", "application/json")
            .header("cache-control", "no-store");
        response = if candidate {
            response
                .header("x-cache", "MISS from edge-2")
                .header("access-control-allow-origin", "*")
        } else {
            response
                .header("x-cache", "MISS from edge-1")
                .header("x-powered-by", "Express")
        };
        response
            .body(Full::new(Bytes::from(format!(
                r#"{{"id":{id},"subtotal":100,"discount":{discount},"total":{total},"currency":"EUR"}}"#
            ))))
            .unwrap()
    })
}

fn orders_config(legacy: &Backend, candidate: &Backend, compare: &str) -> String {
    format!(
        r#"upstreams:
  legacy: {{ backends: [{}] }}
  orders-v2: {{ backends: [{}] }}
default_upstream: legacy
routes:
  - name: orders
    match: {{ path_prefix: /orders }}
    shadow: {{ upstream: orders-v2, compare: {compare} }}
"#,
        legacy.address, candidate.address
    )
}

/// Sends every order 1..=12 three times, with a coupon and a token the store must redact.
async fn order_traffic(proxy: &Proxy) {
    for _ in 0..3 {
        for id in 1..=12 {
            let response = proxy
                .get(&format!("/orders/{id}?coupon=SPRING10&token=s3cret"))
                .await;
            assert_eq!(response.status, 200);
            assert!(response.text().contains("\"total\":90"), "legacy answers");
        }
    }
}

/// The example request of a listed path: one of the buggy orders, with its query redacted.
fn assert_buggy_example(request: &str) {
    assert!(
        BUGGY_ORDERS
            .iter()
            .any(|id| request.starts_with(&format!("GET /orders/{id}?coupon=SPRING10&token="))),
        "{request}"
    );
    assert!(!request.contains("s3cret"), "{request}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_format_puts_a_body_bug_on_three_records_before_headers_that_differ_everywhere() {
    let legacy = Backend::start_with("legacy", orders(false)).await;
    let candidate = Backend::start_with("orders-v2", orders(true)).await;
    let proxy = Proxy::start(&orders_config(&legacy, &candidate, "{}")).await;
    // Written beside and renamed over, so the config watch never reads half a file.
    let write = |compare: &str| proxy.rewrite(&orders_config(&legacy, &candidate, compare));
    order_traffic(&proxy).await;
    let store = proxy.diff_store();
    let document = wait_for_samples(&store, &[], 36).await;

    // JSON carries everything: the body bug first, on 3 records of 1 endpoint.
    let route = &document["routes"][0];
    assert_eq!(route["mismatches"], 36, "headers differ in every exchange");
    assert_eq!(
        route["status_pairs"],
        serde_json::json!([{"primary": 200, "candidate": 200, "exchanges": 36}])
    );
    let first = &route["paths"][0];
    assert_eq!(
        (&first["section"], &first["path"], &first["kind"]),
        (&"body".into(), &"$.total".into(), &"changed".into()),
        "{document:#}"
    );
    assert_eq!(
        (&first["exchanges"], &first["records"], &first["endpoints"]),
        (&9.into(), &3.into(), &1.into())
    );
    assert_eq!(
        (&first["example"]["primary"], &first["example"]["candidate"]),
        (&"90".into(), &"100".into())
    );
    assert_buggy_example(first["example"]["request"].as_str().unwrap());
    let listed: Vec<(&str, bool)> = route["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["path"].as_str().unwrap(), p["likely_noise"].is_string()))
        .collect();
    assert_eq!(
        listed,
        [
            ("$.total", false),
            ("headers.access-control-allow-origin", true),
            ("headers.x-cache", true),
            ("headers.x-powered-by", true),
        ],
        "headers that differ everywhere come last, as likely noise"
    );
    assert_eq!(
        route["suggestion"],
        "compare: { ignore_headers: [access-control-allow-origin, x-cache, x-powered-by] }"
    );
    assert_eq!(route["mismatches_with_suggestion"], 9);
    assert_eq!(
        document["listing"],
        serde_json::json!({"min_share": 0.01, "min_exchanges": 2})
    );

    // Text: the same, in the same order.
    let (code, text) = report(&store, &[]);
    assert_eq!(code, 1, "{text}");
    let body = text
        .find("  body:\n    $.total changed: 9 exchanges (25.00%), 3 records, 1 endpoint; 200→200: 9\n      e.g. GET /orders/")
        .unwrap_or_else(|| panic!("{text}"));
    let noise = text
        .find("  likely noise (listed last):\n    headers.access-control-allow-origin extra: 36 exchanges")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(body < noise, "{text}");
    let example = text[body..]
        .lines()
        .nth(2)
        .unwrap()
        .trim_start()
        .trim_start_matches("e.g. ");
    assert_buggy_example(example);
    assert!(example.ends_with(": 90 -> 100"), "{example}");
    for line in [
        "  statuses: 200→200: 36\n",
        "  suggestion: compare: { ignore_headers: [access-control-allow-origin, x-cache, x-powered-by] }\n",
        "  with it: 9 mismatches (25.00%), still over the allowed 1.00%\n",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }

    // --suggest: the block to paste, each rule with its evidence; the body bug is never in it.
    let (code, block) = report(&store, &["--suggest"]);
    assert_eq!(code, 0, "{block}");
    assert!(
        block.contains("routes:\n  - name: orders\n    shadow:\n      compare:\n        ignore_headers:\n          - 'access-control-allow-origin'   # differs in 100.00% of the 36 exchanges it appears in"),
        "{block}"
    );
    assert!(
        block.contains(": with these rules, 9 mismatches are left"),
        "{block}"
    );
    assert!(!block.contains("total"), "{block}");
    let pasted: serde_yaml::Value = serde_yaml::from_str(&block).unwrap();
    assert_eq!(
        pasted["routes"][0]["shadow"]["compare"]["ignore_headers"][2],
        "x-powered-by"
    );

    // Markdown: the same detail, the body bug in the summary and first in the route's section.
    let (_, markdown) = report(&store, &["--format", "markdown"]);
    assert!(
        markdown.contains("| orders | legacy → orders-v2 | ❌ fail | 36 | 0 | 36 | 0 | 100.00% | `$.total` changed (9 exchanges, 3 records) |"),
        "{markdown}"
    );
    let body = markdown
        .find("**Body**")
        .unwrap_or_else(|| panic!("{markdown}"));
    let row = markdown[body..]
        .lines()
        .find(|line| line.starts_with("| `$.total` |"))
        .unwrap_or_else(|| panic!("{markdown}"));
    assert!(
        row.starts_with("| `$.total` | changed | 9 (25.00%) | 3 | 1 | 200→200: 9 | `GET /orders/"),
        "{row}"
    );
    assert_buggy_example(row.split('`').nth(3).unwrap());
    assert!(row.ends_with("`90` → `100` |"), "{row}");
    assert!(
        body < markdown.find("**Likely noise (listed last)**").unwrap(),
        "{markdown}"
    );
    assert!(
        markdown
            .contains("```yaml\ncompare: { ignore_headers: [access-control-allow-origin, x-cache, x-powered-by] }\n```"),
        "{markdown}"
    );

    // JUnit: one case for the route and direction; the message names the body bug.
    let (_, junit) = report(&store, &["--format", "junit"]);
    assert!(junit.contains("tests=\"1\" failures=\"1\""), "{junit}");
    let message = junit
        .split("<failure message=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("{junit}"));
    assert!(
        message.starts_with("mismatch rate 100.00% over the allowed 1.00%; body: $.total changed in 9 exchanges (3 records), e.g. GET /orders/"),
        "{message}"
    );
    assert_buggy_example(
        &message
            .rsplit("e.g. ")
            .next()
            .unwrap()
            .replace("&amp;", "&"),
    );

    // Promote the suggestion: after the reload, exactly what the report predicted is left.
    write("{ ignore_headers: [access-control-allow-origin, x-cache, x-powered-by] }");
    let reload = proxy.reload().await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    proxy.wait_for_generation(2).await;
    order_traffic(&proxy).await;
    let document = wait_for_samples(&store, &["--since-reload"], 36).await;
    let route = &document["routes"][0];
    assert_eq!(
        (&route["mismatches"], &route["matches"]),
        (&9.into(), &27.into()),
        "{document:#}"
    );
    assert_eq!(
        route["paths"].as_array().unwrap().len(),
        1,
        "only the bug is left: {document:#}"
    );
    assert_eq!(route["paths"][0]["path"], "$.total");
    assert_eq!(route["suggestion"], Value::Null);
}

/// 1,000 exchanges with `vary` differing in each, `$.total` on orders 3, 5 and 9 once each and
/// `$.note` once.
fn store_with_a_rare_bug(path: &Path) {
    let records: Vec<DiffRecord> = (0..1000u64)
        .map(|n| {
            let mut differences = vec![difference(
                "headers.vary",
                Kind::Changed,
                Some("Accept-Encoding"),
                Some("Origin"),
            )];
            if BUGGY_ORDERS.contains(&n) {
                differences.push(difference(
                    "$.total",
                    Kind::Changed,
                    Some("90"),
                    Some("100"),
                ));
            }
            if n == 500 {
                differences.push(difference("$.note", Kind::Extra, None, Some("\"hi\"")));
            }
            DiffRecord {
                path: format!("/orders/{n}"),
                query: Some("coupon=SPRING10".into()),
                request_id: format!("r{n}"),
                differences,
                ..support::stored_exchange(Verdict::Mismatch)
            }
        })
        .collect();
    let mut store = DiffStore::open(path, 10_000, Duration::from_secs(3600)).unwrap();
    store.insert(&records).unwrap();
}

#[test]
fn the_listing_threshold_is_a_share_or_a_count_and_says_what_it_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("diffs.db");
    store_with_a_rare_bug(&store);
    let paths = |args: &[&str]| -> (Vec<String>, Value) {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        let (_, json) = report(&store, &all);
        let document: Value = serde_json::from_str(&json).unwrap();
        let route = document["routes"][0].clone();
        let paths = route["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["path"].as_str().unwrap().to_owned())
            .collect();
        (paths, route["hidden"].clone())
    };
    // 3 of 1,000 exchanges is 0.3 %, but more than 2: listed, first; $.note (once) is not.
    let (listed, hidden) = paths(&[]);
    assert_eq!(listed, ["$.total", "headers.vary"]);
    assert_eq!(
        hidden,
        serde_json::json!({"paths": 1, "body_paths": 1, "noisy_paths": 0})
    );
    let (_, text) = report(&store, &[]);
    assert!(
        text.contains("  not listed: 1 path (1 in the body), each in fewer than 2 exchanges and under 1.00% of them; --min-path-exchanges 1 lists them all\n"),
        "{text}"
    );
    assert_eq!(
        paths(&["--min-path-exchanges", "1"]).0,
        ["$.total", "$.note", "headers.vary"]
    );
    assert_eq!(
        paths(&["--min-path-exchanges", "5", "--min-path-share", "50%"]).0,
        ["headers.vary"]
    );
    assert_eq!(
        paths(&[
            "--min-path-exchanges",
            "1000000",
            "--min-path-share",
            "0.003"
        ])
        .0,
        ["$.total", "headers.vary"],
        "0.3 % reaches a share of 0.003"
    );
    let db = store.display().to_string();
    let (code, stdout, stderr) = run_cli(
        &["report", "--db", &db, "--min-path-share", "5"],
        Path::new("/tmp"),
    );
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("`5` is over 1, that is 500%"), "{stderr}");
}

fn difference(path: &str, kind: Kind, primary: Option<&str>, shadow: Option<&str>) -> Difference {
    Difference {
        path: path.into(),
        kind,
        primary: primary.map(str::to_owned),
        shadow: shadow.map(str::to_owned),
    }
}

/// An exchange of route `orders` (legacy → orders-v2) with these differences and noise.
fn exchange(path: &str, differences: Vec<Difference>, noise: Vec<Difference>) -> DiffRecord {
    let verdict = match (differences.is_empty(), noise.is_empty()) {
        (false, _) => Verdict::Mismatch,
        (true, false) => Verdict::Noise,
        (true, true) => Verdict::Match,
    };
    DiffRecord {
        path: path.into(),
        request_id: format!("r-{path}"),
        differences,
        noise,
        ..support::stored_exchange(verdict)
    }
}

#[test]
fn noise_is_measured_against_the_exchanges_where_a_path_appears_and_stable_differences_are_never_suggested()
 {
    // With `noise: legacy`: 27 calls of an order's history, whose `$.events[*].at` timestamps the
    // primary changed between its two answers in 24 (89 %); 54 calls of the orders themselves,
    // which match and have no events at all. So the field is noise in 24 of the route's 81
    // exchanges (30 %), and in 89 % of those where it appears.
    let changed =
        |path: &str, primary: &str| difference(path, Kind::Changed, Some(primary), Some("other"));
    let mut records = Vec::new();
    for n in 0..27u64 {
        let mut noise = Vec::new();
        if n % 9 != 0 {
            noise.push(changed(&format!("$.events[{}].at", n % 4), "t"));
        }
        // `$.total` is noise in most history calls too, but in one the primary answered the
        // same total twice and the candidate another: a difference on a stable value.
        let mut differences = Vec::new();
        if n == 13 {
            differences.push(changed("$.total", "90"));
        } else if n % 3 != 0 {
            noise.push(changed("$.total", "90"));
        }
        records.push(exchange(
            &format!("/orders/{n}/history"),
            differences,
            noise,
        ));
    }
    for n in 0..54u64 {
        records.push(exchange(&format!("/orders/{n}"), Vec::new(), Vec::new()));
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("diffs.db");
    DiffStore::open(&store, 10_000, Duration::from_secs(3600))
        .unwrap()
        .insert(&records)
        .unwrap();

    let (code, json) = report(&store, &["--format", "json"]);
    assert_eq!(
        code, 1,
        "the one stable $.total difference fails the gate: {json}"
    );
    let document: Value = serde_json::from_str(&json).unwrap();
    let route = &document["routes"][0];
    assert_eq!(route["samples"], 81, "{document:#}");
    assert_eq!(
        route["suggested_ignore_json"],
        serde_json::json!(["$.events[*].at"]),
        "{document:#}"
    );
    assert_eq!(route["suggested_ignore_headers"], serde_json::json!([]));
    assert_eq!(
        route["suggestion"],
        "compare: { ignore_json: ['$.events[*].at'] }"
    );
    let listed: Vec<(&str, bool)> = route["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["path"].as_str().unwrap(), p["likely_noise"].is_string()))
        .collect();
    assert_eq!(listed, [("$.total", false)], "{document:#}");

    let (_, text) = report(&store, &[]);
    assert!(
        text.contains("  suggestion: compare: { ignore_json: ['$.events[*].at'] }\n"),
        "{text}"
    );
}
