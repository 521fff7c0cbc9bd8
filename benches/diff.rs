//! The comparison engine on JSON bodies of 1 KiB, 100 KiB and 1 MiB: byte-identical bodies (the
//! shortcut), equal bodies with keys in another order (a full parse and walk), bodies whose
//! records differ only in an ignored `id` (what a shadow of a mostly-matching service sees), and
//! bodies with a difference in every record. `cargo bench --bench diff`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, StatusCode};
use strangler::diff::{CompareRule, compare, decode, path::PathPattern};
use strangler::exchange::CapturedResponse;

/// The same records with every object's keys in another order: equal as JSON, not as bytes,
/// so the comparison parses and walks both documents.
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

/// A JSON document of about `size` bytes: a list of order records.
fn document(size: usize, variant: u32) -> Bytes {
    document_with_ids(size, variant, 0)
}

/// [`document`] with every record's `id` offset by `id_offset`. The number of records is the
/// one that fills `size` without an offset, so both sides of an "ids ignored" comparison hold the
/// same records (longer ids would otherwise mean fewer records, arrays of other lengths, and a
/// mismatch instead of the mostly-matching case this stands for).
fn document_with_ids(size: usize, variant: u32, id_offset: u32) -> Bytes {
    let records = records_filling(size, variant);
    let mut out = String::from(r#"{"generated_at":"2026-11-24T10:00:00Z","orders":["#);
    for id in 0..records {
        if id > 0 {
            out.push(',');
        }
        push_record(&mut out, id + id_offset, id * 10 + variant);
    }
    out.push_str("]}");
    Bytes::from(out)
}

/// How many records (ids from 0) make a document of at least `size` bytes.
fn records_filling(size: usize, variant: u32) -> u32 {
    let mut out = String::from(r#"{"generated_at":"2026-11-24T10:00:00Z","orders":["#);
    let mut id = 0u32;
    while out.len() < size {
        if id > 0 {
            out.push(',');
        }
        push_record(&mut out, id, id * 10 + variant);
        id += 1;
    }
    id
}

fn push_record(out: &mut String, id: u32, total: u32) {
    out.push_str(&format!(
        r#"{{"id":{id},"status":"open","total":{total}.5,"tags":["a","b","c"],"customer":{{"name":"Ada","country":"FR"}}}}"#
    ));
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

fn comparison(c: &mut Criterion) {
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
    let mut group = c.benchmark_group("compare_json");
    for (label, size) in [("1KiB", 1 << 10), ("100KiB", 100 << 10), ("1MiB", 1 << 20)] {
        let primary = response(document(size, 0));
        let same = response(document(size, 0));
        let records = std::str::from_utf8(&same.body)
            .unwrap()
            .matches("\"id\"")
            .count() as u32;
        let reordered = response(reordered(records));
        let different = response(document(size, 1));
        let other_ids = response(document_with_ids(size, 0, 1_000_000));
        // What each case stands for, checked: a bench of the wrong case measures nothing useful.
        assert!(compare(&rule, &primary, &reordered).is_empty());
        assert!(compare(&ids_ignored, &primary, &other_ids).is_empty());
        assert!(!compare(&rule, &primary, &different).is_empty());
        group.throughput(Throughput::Bytes(primary.body.len() as u64));
        group.bench_with_input(BenchmarkId::new("equal", label), &same, |b, shadow| {
            b.iter(|| black_box(compare(&rule, &primary, shadow)))
        });
        group.bench_with_input(
            BenchmarkId::new("equal_reordered", label),
            &reordered,
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
            BenchmarkId::new("ids_ignored", label),
            &other_ids,
            |b, shadow| b.iter(|| black_box(compare(&ids_ignored, &primary, shadow))),
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
