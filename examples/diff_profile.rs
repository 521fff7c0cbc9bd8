//! A driver for profiling the JSON comparison under `valgrind --tool=callgrind`, whose
//! instruction counts stay repeatable on a loaded machine where wall time does not:
//!
//! ```sh
//! cargo build --release --example diff_profile
//! valgrind --tool=callgrind ./target/release/examples/diff_profile 100KiB reordered 10
//! ```
//!
//! Arguments: size (`1KiB`, `100KiB`, `1MiB`), case (`reordered`, `reordered_late` (and the
//! last record changed), `ids_ignored`,
//! `many_ignores` (ids ignored by a rule of 32 patterns), `differs`,
//! `reformatted` (equal tokens, other whitespace), `pretty_primary` (the primary pretty-printed),
//! `parse_only`), iterations. The documents and rules are those of `benches/diff.rs`.

use std::hint::black_box;

use bytes::Bytes;
use strangler::diff::compare;

#[path = "../benches/support/diff_documents.rs"]
mod documents;
use documents::{
    document_with_ids as document, ids_ignored, many_ignores, reordered, reordered_late, response,
    rule,
};

// The binary's allocator (src/main.rs): the diff worker allocates and frees a tree node per
// object and array, and glibc's malloc would be measured instead of the binary's.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    let (rule, ids_ignored, many_ignores) = (rule(), ids_ignored(), many_ignores());
    let mut primary = response(document(size, 0, 0));
    let records = std::str::from_utf8(&primary.body)
        .unwrap()
        .matches("\"id\"")
        .count() as u32;
    let (rule, shadow) = match case {
        "reordered" | "parse_only" => (&rule, response(reordered(records))),
        "reordered_late" => (&rule, response(reordered_late(records))),
        "ids_ignored" => (&ids_ignored, response(document(size, 0, 1_000_000))),
        "many_ignores" => (&many_ignores, response(document(size, 0, 1_000_000))),
        "reformatted" => {
            let spaced = std::str::from_utf8(&primary.body)
                .unwrap()
                .replace(',', ", ")
                .replace(':', ": ");
            (&rule, response(Bytes::from(spaced)))
        }
        "differs" => (&rule, response(document(size, 1, 0))),
        // A primary laid out on lines (as many legacy services answer), same tokens in the
        // same order, against the compact body.
        "pretty_primary" => {
            let text = std::str::from_utf8(&primary.body).unwrap();
            let pretty = text.replace('{', "{\n  ").replace(',', ",\n  ");
            let compact = response(Bytes::copy_from_slice(&primary.body));
            primary = response(Bytes::from(pretty));
            (&rule, compact)
        }
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
