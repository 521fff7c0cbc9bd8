//! A driver for profiling the JSON comparison under `valgrind --tool=callgrind`, whose
//! instruction counts stay repeatable on a loaded machine where wall time does not:
//!
//! ```sh
//! cargo build --release --example diff_profile
//! valgrind --tool=callgrind ./target/release/examples/diff_profile 100KiB reordered 10
//! ```
//!
//! Arguments: size (`1KiB`, `100KiB`, `1MiB`), case (`reordered`, `ids_ignored`, `differs`,
//! `reformatted` (equal tokens, other whitespace), `parse_only`), iterations. The documents and rules are those of `benches/diff.rs`.

use std::hint::black_box;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use strangler::diff::{CompareRule, compare, path::PathPattern};
use strangler::exchange::CapturedResponse;

fn reordered(records: u32) -> Bytes {
    let mut out = String::from(r#"{"orders":["#);
    for id in 0..records {
        if id > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"customer":{{"country":"FR","name":"Ada"}},"tags":["a","b","c"],"total":{}.5,"status":"open","id":{id}}}"#,
            id * 10
        ));
    }
    out.push_str(r#"],"generated_at":"2026-11-24T10:00:00Z"}"#);
    Bytes::from(out)
}

/// About `size` bytes of order records; the number of records is the one that fills `size`
/// without an id offset, so an "ids ignored" pair holds the same records on both sides (as in
/// `benches/diff.rs`).
fn document(size: usize, variant: u32, id_offset: u32) -> Bytes {
    let records = |id_offset: u32, until: Option<u32>| {
        let mut out = String::from(r#"{"generated_at":"2026-11-24T10:00:00Z","orders":["#);
        let mut id = 0u32;
        while until.map_or(out.len() < size, |until| id < until) {
            if id > 0 {
                out.push(',');
            }
            out.push_str(&format!(
                r#"{{"id":{},"status":"open","total":{}.5,"tags":["a","b","c"],"customer":{{"name":"Ada","country":"FR"}}}}"#,
                id + id_offset,
                id * 10 + variant
            ));
            id += 1;
        }
        out.push_str("]}");
        (out, id)
    };
    let (_, count) = records(0, None);
    Bytes::from(records(id_offset, Some(count)).0)
}

fn response(body: Bytes) -> CapturedResponse {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    CapturedResponse {
        status: StatusCode::OK,
        headers,
        body: body.into(),
        truncated: false,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size = match args.get(1).map(String::as_str).unwrap_or("100KiB") {
        "1KiB" => 1 << 10,
        "100KiB" => 100 << 10,
        "1MiB" => 1 << 20,
        other => panic!("unknown size {other}"),
    };
    let case = args.get(2).map(String::as_str).unwrap_or("reordered");
    let iterations: usize = args.get(3).map_or(1, |n| n.parse().expect("iterations"));
    let rule = CompareRule {
        ignore_json: vec![PathPattern::parse("$.generated_at").unwrap()],
        unordered_arrays: vec![PathPattern::parse("$.orders[*].tags").unwrap().into()],
        ..CompareRule::default()
    };
    let ids_ignored = CompareRule {
        ignore_json: vec![
            PathPattern::parse("$.generated_at").unwrap(),
            PathPattern::parse("$.orders[*].id").unwrap(),
        ],
        ..rule.clone()
    };
    let primary = response(document(size, 0, 0));
    let records = std::str::from_utf8(&primary.body)
        .unwrap()
        .matches("\"id\"")
        .count() as u32;
    let (rule, shadow) = match case {
        "reordered" | "parse_only" => (&rule, response(reordered(records))),
        "ids_ignored" => (&ids_ignored, response(document(size, 0, 1_000_000))),
        "reformatted" => {
            let spaced = std::str::from_utf8(&primary.body)
                .unwrap()
                .replace(',', ", ")
                .replace(':', ": ");
            (&rule, response(Bytes::from(spaced)))
        }
        "differs" => (&rule, response(document(size, 1, 0))),
        other => panic!("unknown case {other}"),
    };
    let mut found = 0;
    for _ in 0..iterations {
        if case == "parse_only" {
            let a: serde_json::Value = serde_json::from_slice(&primary.body).unwrap();
            let b: serde_json::Value = serde_json::from_slice(&shadow.body).unwrap();
            black_box((a, b));
        } else {
            found = black_box(compare(rule, &primary, &shadow)).len();
        }
    }
    println!("{case} {size} bytes: {found} differences");
}
