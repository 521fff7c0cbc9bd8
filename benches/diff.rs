//! The comparison engine on JSON bodies of 1 KiB, 100 KiB and 1 MiB: byte-identical bodies (the
//! shortcut), equal bodies with keys in another order (a full parse and walk), a primary laid
//! out on lines against the same tokens compact (the lockstep scan), bodies whose
//! records differ only in an ignored `id` (what a shadow of a mostly-matching service sees), and
//! bodies with a difference in every record. `cargo bench --bench diff`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::HeaderMap;
use strangler::diff::{CompareRule, compare, decode};

#[path = "support/diff_documents.rs"]
mod documents;
use documents::{
    document, document_with_ids, ids_ignored, many_ignores, reordered, reordered_late, response,
    rule,
};

// The binary's allocator (src/main.rs): the diff worker allocates and frees a tree node per
// object and array, and glibc's malloc would be measured instead of the binary's.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn comparison(c: &mut Criterion) {
    let (rule, ids_ignored, many_ignores) = (rule(), ids_ignored(), many_ignores());
    let mut group = c.benchmark_group("compare_json");
    for (label, size) in [("1KiB", 1 << 10), ("100KiB", 100 << 10), ("1MiB", 1 << 20)] {
        let primary = response(document(size, 0));
        let same = response(document(size, 0));
        let records = std::str::from_utf8(&same.body)
            .unwrap()
            .matches("\"id\"")
            .count() as u32;
        let reordered = response(reordered(records));
        let reordered_late = response(reordered_late(records));
        let different = response(document(size, 1));
        let other_ids = response(document_with_ids(size, 0, 1_000_000));
        // The primary laid out on lines (as many legacy services answer), same tokens.
        let text = std::str::from_utf8(&primary.body).unwrap();
        let pretty = response(Bytes::from(
            text.replace('{', "{\n  ").replace(',', ",\n  "),
        ));
        // What each case stands for, checked: a bench of the wrong case measures nothing useful.
        assert!(compare(&rule, &primary, &reordered).is_empty());
        assert!(compare(&ids_ignored, &primary, &other_ids).is_empty());
        assert!(compare(&many_ignores, &primary, &other_ids).is_empty());
        assert!(!compare(&rule, &primary, &different).is_empty());
        assert_eq!(compare(&rule, &primary, &reordered_late).len(), 1);
        assert!(compare(&rule, &pretty, &same).is_empty());
        group.throughput(Throughput::Bytes(primary.body.len() as u64));
        group.bench_with_input(BenchmarkId::new("equal", label), &same, |b, shadow| {
            b.iter(|| black_box(compare(&rule, &primary, shadow)))
        });
        group.bench_with_input(
            BenchmarkId::new("equal_reordered", label),
            &reordered,
            |b, shadow| b.iter(|| black_box(compare(&rule, &primary, shadow))),
        );
        group.bench_with_input(
            BenchmarkId::new("reordered_last_record_differs", label),
            &reordered_late,
            |b, shadow| b.iter(|| black_box(compare(&rule, &primary, shadow))),
        );
        // The floor of the engine before it parsed into its own tree: both bodies parsed into
        // `serde_json::Value` and dropped, nothing compared.
        group.bench_with_input(
            BenchmarkId::new("serde_json_value_parse_only", label),
            &reordered,
            |b, shadow| {
                b.iter(|| {
                    let a: serde_json::Value = serde_json::from_slice(&primary.body).unwrap();
                    let b: serde_json::Value = serde_json::from_slice(&shadow.body).unwrap();
                    black_box((a, b))
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("pretty_primary", label),
            &same,
            |b, shadow| b.iter(|| black_box(compare(&rule, &pretty, shadow))),
        );
        group.bench_with_input(
            BenchmarkId::new("ids_ignored", label),
            &other_ids,
            |b, shadow| b.iter(|| black_box(compare(&ids_ignored, &primary, shadow))),
        );
        group.bench_with_input(
            BenchmarkId::new("many_ignores", label),
            &other_ids,
            |b, shadow| b.iter(|| black_box(compare(&many_ignores, &primary, shadow))),
        );
        group.bench_with_input(
            BenchmarkId::new("every_record_differs", label),
            &different,
            |b, shadow| b.iter(|| black_box(compare(&rule, &primary, shadow))),
        );
    }
    group.finish();
}

/// Undoing each content coding of a 100 KiB JSON body (what the diff worker does to each side
/// before comparing), and a comparison of a gzipped primary with a plain candidate.
fn decoding(c: &mut Criterion) {
    use std::io::Write;
    let body = document(100 << 10, 0);
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&body).unwrap();
    let mut br = Vec::new();
    {
        let mut writer = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
        writer.write_all(&body).unwrap();
    }
    let encoded = [
        ("gzip", gzip.finish().unwrap()),
        ("br", br),
        ("zstd", zstd::encode_all(&body[..], 3).unwrap()),
    ];
    let mut group = c.benchmark_group("decode_100KiB");
    group.throughput(Throughput::Bytes(body.len() as u64));
    for (coding, bytes) in &encoded {
        let mut headers = HeaderMap::new();
        headers.insert("content-encoding", coding.parse().unwrap());
        group.bench_function(*coding, |b| {
            b.iter(|| {
                black_box(decode::decode(&headers, bytes, false, decode::DECODED_LIMIT).unwrap())
            })
        });
    }
    let mut gzipped = response(Bytes::from(encoded[0].1.clone()));
    gzipped
        .headers
        .insert("content-encoding", "gzip".parse().unwrap());
    let plain = response(body.clone());
    let rule = CompareRule::default();
    group.bench_function("compare_gzip_with_plain", |b| {
        b.iter(|| black_box(compare(&rule, &gzipped, &plain)))
    });
    group.finish();
}

criterion_group!(benches, comparison, decoding);
criterion_main!(benches);
