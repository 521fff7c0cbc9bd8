//! The JSON documents the diff benchmarks compare, and the rules they compare them under, shared
//! by `benches/diff.rs` (criterion) and `examples/diff_profile.rs` (callgrind), so both measure
//! the same bodies.
#![allow(dead_code)] // each includer uses its own subset

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use strangler::diff::{CompareRule, path::PathPattern};
use strangler::exchange::CapturedResponse;

/// The rule most cases compare under: the timestamp ignored, each record's tags unordered.
pub fn rule() -> CompareRule {
    CompareRule {
        ignore_json: vec![PathPattern::parse("$.generated_at").unwrap()],
        unordered_arrays: vec![PathPattern::parse("$.orders[*].tags").unwrap().into()],
        ..CompareRule::default()
    }
}

/// [`rule`] with each record's `id` ignored too (a shadow of a mostly-matching service).
pub fn ids_ignored() -> CompareRule {
    let mut rule = rule();
    rule.ignore_json
        .push(PathPattern::parse("$.orders[*].id").unwrap());
    rule
}

/// [`ids_ignored`] with 30 more ignored fields these records do not have: what asking the rule
/// costs at every value when it has many patterns.
pub fn many_ignores() -> CompareRule {
    let mut rule = ids_ignored();
    rule.ignore_json.extend(
        (0..15)
            .flat_map(|k| [format!("$.orders[*].field_{k}"), format!("$.meta_{k}")])
            .map(|p| PathPattern::parse(&p).unwrap()),
    );
    rule
}

/// The same records with every object's keys in another order: equal as JSON, not as bytes,
/// so the comparison parses and walks both documents.
pub fn reordered(records: u32) -> Bytes {
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

/// [`reordered`] with the last record's status changed: the walks that prove bodies equal read
/// nearly all of it before they give up, and the trees are compared after all.
pub fn reordered_late(records: u32) -> Bytes {
    let body = reordered(records);
    let text = std::str::from_utf8(&body).expect("UTF-8");
    let at = text.rfind(r#""open""#).expect("a status");
    Bytes::from(format!("{}\"shut\"{}", &text[..at], &text[at + 6..]))
}

/// A JSON document of about `size` bytes: a list of order records.
pub fn document(size: usize, variant: u32) -> Bytes {
    document_with_ids(size, variant, 0)
}

/// [`document`] with every record's `id` offset by `id_offset`. The number of records is the
/// one that fills `size` without an offset, so both sides of an "ids ignored" comparison hold the
/// same records (longer ids would otherwise mean fewer records, arrays of other lengths, and a
/// mismatch instead of the mostly-matching case this stands for).
pub fn document_with_ids(size: usize, variant: u32, id_offset: u32) -> Bytes {
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
pub fn records_filling(size: usize, variant: u32) -> u32 {
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

pub fn push_record(out: &mut String, id: u32, total: u32) {
    out.push_str(&format!(
        r#"{{"id":{id},"status":"open","total":{total}.5,"tags":["a","b","c"],"customer":{{"name":"Ada","country":"FR"}}}}"#
    ));
}

pub fn response(body: Bytes) -> CapturedResponse {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    CapturedResponse {
        status: StatusCode::OK,
        headers,
        body: body.into(),
        truncated: false,
    }
}
