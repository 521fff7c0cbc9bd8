//! Counting instead of copying: per-minute aggregates of compared exchanges, kept by both stores
//! beside the rows, and the store-level summary query answered from them.
//!
//! Every exchange is counted in `diff_counts` (one row per minute, replica, route, direction,
//! stage, generation, verdict and status pair); only exchanges that differed, plus a sample of
//! the matching ones (`server.diff_match_sample`), are stored as rows. A report's totals and
//! [`SummaryRow`]s come from the aggregates, so their cost grows with minutes and routes, not
//! with traffic.
//!
//! The key columns are `NOT NULL` (unknown is `''` or `-1`), so that an upsert finds its row in
//! SQLite and Postgres alike (a `NULL` is distinct from every other in a unique key).

use std::collections::HashMap;

use serde::Serialize;

use super::DiffRecord;

/// One minute, the aggregates' resolution.
pub const BUCKET_MS: i64 = 60_000;

/// The key of one aggregate row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub minute_ms: i64,
    pub route: String,
    pub primary_upstream: String,
    pub candidate_upstream: String,
    pub stage: String,
    pub generation: i64,
    pub config_sha256: String,
    pub verdict: String,
    pub primary_status: i32,
    pub shadow_status: i32,
}

/// What one aggregate row adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketCount {
    pub exchanges: i64,
    /// The newest exchange counted (Unix ms): orders generations for `--since-reload`.
    pub last_at_ms: i64,
}

/// The aggregate rows of `records`, ready to upsert.
pub fn buckets(records: &[DiffRecord]) -> Vec<(BucketKey, BucketCount)> {
    // Grouped by a key that borrows from the records: a batch of a steady stream is a few
    // hundred records of one or two keys, so the owned key is built once per row, not once
    // per record (six string copies each).
    #[derive(PartialEq, Eq, Hash)]
    struct Borrowed<'a> {
        minute_ms: i64,
        route: &'a str,
        primary_upstream: &'a str,
        candidate_upstream: &'a str,
        stage: &'a str,
        generation: i64,
        config_sha256: &'a str,
        verdict: crate::vocabulary::Verdict,
        primary_status: i32,
        shadow_status: i32,
    }
    let mut counts: HashMap<Borrowed<'_>, BucketCount> = HashMap::new();
    for record in records {
        let key = Borrowed {
            minute_ms: record.at_ms - record.at_ms.rem_euclid(BUCKET_MS),
            route: &record.route,
            primary_upstream: record.primary_upstream.as_deref().unwrap_or_default(),
            candidate_upstream: record.candidate_upstream.as_deref().unwrap_or_default(),
            stage: record.stage.as_deref().unwrap_or_default(),
            generation: record
                .generation
                .map_or(-1, |g| i64::try_from(g).unwrap_or(i64::MAX)),
            config_sha256: record.config_sha256.as_deref().unwrap_or_default(),
            verdict: record.verdict,
            primary_status: record.primary_status.map_or(0, i32::from),
            shadow_status: record.shadow_status.map_or(0, i32::from),
        };
        let count = counts.entry(key).or_default();
        count.exchanges += 1;
        count.last_at_ms = count.last_at_ms.max(record.at_ms);
    }
    counts
        .into_iter()
        .map(|(key, count)| {
            let owned = BucketKey {
                minute_ms: key.minute_ms,
                route: key.route.to_owned(),
                primary_upstream: key.primary_upstream.to_owned(),
                candidate_upstream: key.candidate_upstream.to_owned(),
                stage: key.stage.to_owned(),
                generation: key.generation,
                config_sha256: key.config_sha256.to_owned(),
                verdict: key.verdict.as_str().to_owned(),
                primary_status: key.primary_status,
                shadow_status: key.shadow_status,
            };
            (owned, count)
        })
        .collect()
}

/// The key of one per-shape aggregate row (Postgres `diff_shape_counts`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShapeKey {
    pub minute_ms: i64,
    pub route: String,
    pub primary_upstream: String,
    pub candidate_upstream: String,
    pub generation: i64,
    pub config_sha256: String,
    pub verdict: String,
    /// [`crate::record::request_shape`]: `GET /orders/*`.
    pub shape: String,
}

/// The per-shape aggregate rows of `records`: the compared exchanges (shadow errors left out,
/// as the suggestions count them) per request shape, in key order (one order for every
/// writer, so that two upserting the same rows cannot deadlock).
pub fn shape_buckets(records: &[DiffRecord]) -> Vec<(ShapeKey, BucketCount)> {
    let mut counts: std::collections::BTreeMap<ShapeKey, BucketCount> = Default::default();
    for record in records {
        if record.verdict == crate::vocabulary::Verdict::ShadowError {
            continue;
        }
        let key = ShapeKey {
            minute_ms: record.at_ms - record.at_ms.rem_euclid(BUCKET_MS),
            route: record.route.clone(),
            primary_upstream: record.primary_upstream.clone().unwrap_or_default(),
            candidate_upstream: record.candidate_upstream.clone().unwrap_or_default(),
            generation: record
                .generation
                .map_or(-1, |g| i64::try_from(g).unwrap_or(i64::MAX)),
            config_sha256: record.config_sha256.clone().unwrap_or_default(),
            verdict: record.verdict.as_str().to_owned(),
            shape: crate::record::request_shape(&record.method, &record.path),
        };
        let count = counts.entry(key).or_default();
        count.exchanges += 1;
        count.last_at_ms = count.last_at_ms.max(record.at_ms);
    }
    counts.into_iter().collect()
}

/// Whether `record` is stored as a row: every exchange that differed, and a `match_sample`
/// share (0 to 1) of the matching ones. All are counted in the aggregates either way.
pub fn keep_row(record: &DiffRecord, match_sample: f64) -> bool {
    record.verdict != crate::vocabulary::Verdict::Match
        || (match_sample >= 1.0 || fastrand::f64() < match_sample)
}

/// `''`/`-1`/`0` of an aggregate key back to `None`.
pub(crate) fn known(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

pub(crate) fn known_generation(generation: i64) -> Option<u64> {
    u64::try_from(generation).ok()
}

pub(crate) fn known_status(status: i32) -> Option<u16> {
    u16::try_from(status).ok().filter(|status| *status != 0)
}

/// One line of a store's summary: the exchanges of one route, direction and config generation
/// in one time bucket, by verdict. What `GET /diffs/summary` and dashboards read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SummaryRow {
    /// Start of the bucket (Unix ms), a multiple of the requested bucket width.
    pub bucket_ms: i64,
    pub route: String,
    pub primary_upstream: Option<String>,
    pub candidate_upstream: Option<String>,
    pub generation: Option<u64>,
    pub exchanges: u64,
    pub matches: u64,
    pub mismatches: u64,
    pub noise: u64,
    /// The candidate failed to answer (verdict `shadow_error`).
    pub errors: u64,
}

/// What a summary covers: the store filter (route, since, replica; verdict and generation
/// narrow it too) and the width of its time buckets (a multiple of a minute; 0: one bucket).
#[derive(Debug, Clone, Default)]
pub struct SummaryQuery {
    pub filter: super::Filter,
    pub bucket_ms: i64,
}

/// The `SELECT` a summary runs over `diff_counts` (`?` placeholders, in the order of
/// [`summary_values`]), the same in SQLite and Postgres.
pub(crate) fn summary_sql(query: &SummaryQuery) -> String {
    let bucket = if query.bucket_ms > 0 {
        "CAST(minute_ms - (minute_ms % CAST(? AS BIGINT)) AS BIGINT)"
    } else {
        // The placeholder is typed so that Postgres binds it as the bigint it is.
        "CAST(0 * CAST(? AS BIGINT) AS BIGINT)"
    };
    let mut sql = format!(
        "SELECT {bucket} AS bucket, route, primary_upstream, candidate_upstream, generation,
                CAST(SUM(exchanges) AS BIGINT),
                CAST(SUM(CASE WHEN verdict = 'match' THEN exchanges ELSE 0 END) AS BIGINT),
                CAST(SUM(CASE WHEN verdict = 'mismatch' THEN exchanges ELSE 0 END) AS BIGINT),
                CAST(SUM(CASE WHEN verdict = 'noise' THEN exchanges ELSE 0 END) AS BIGINT),
                CAST(SUM(CASE WHEN verdict = 'shadow_error' THEN exchanges ELSE 0 END) AS BIGINT)
         FROM diff_counts WHERE minute_ms > ?"
    );
    let filter = &query.filter;
    if filter.route.is_some() {
        sql.push_str(" AND route = ?");
    }
    if filter.replica.is_some() {
        sql.push_str(" AND replica = ?");
    }
    if filter.verdict.is_some() {
        sql.push_str(" AND verdict = ?");
    }
    if let Some(super::GenerationFilter::Number(_)) = filter.generation {
        sql.push_str(" AND generation = ?");
    }
    sql.push_str(
        " GROUP BY 1, route, primary_upstream, candidate_upstream, generation
          ORDER BY 1, route, primary_upstream, candidate_upstream, generation",
    );
    sql
}

/// A value bound to a summary or count query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Int(i64),
    Text(String),
}

pub(crate) fn summary_values(query: &SummaryQuery) -> Vec<Value> {
    let filter = &query.filter;
    let mut values = vec![
        Value::Int(query.bucket_ms.max(1)),
        // A bucket that ends after `since_ms` holds exchanges from then on.
        Value::Int(filter.since_ms - BUCKET_MS),
    ];
    values.extend(filter.route.clone().map(Value::Text));
    values.extend(filter.replica.clone().map(Value::Text));
    values.extend(
        filter
            .verdict
            .map(|verdict| Value::Text(verdict.as_str().to_owned())),
    );
    if let Some(super::GenerationFilter::Number(number)) = filter.generation {
        values.push(Value::Int(i64::try_from(number).unwrap_or(i64::MAX)));
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store tests' record of orders at `at_ms`; a shadow error has no shadow status.
    fn record(at_ms: i64, verdict: &str) -> DiffRecord {
        let record = crate::store::testing::record("orders", verdict);
        DiffRecord {
            at_ms,
            shadow_status: record.shadow_status.filter(|_| verdict != "shadow_error"),
            ..record
        }
    }

    #[test]
    fn exchanges_are_counted_per_minute_verdict_and_status_pair() {
        let records = [
            record(60_000, "match"),
            record(119_999, "match"),
            record(120_000, "match"),
            record(60_500, "mismatch"),
            record(61_000, "shadow_error"),
        ];
        let mut rows = buckets(&records);
        rows.sort_by_key(|(key, _)| (key.minute_ms, key.verdict.clone()));
        let seen: Vec<(i64, &str, i32, i64, i64)> = rows
            .iter()
            .map(|(key, count)| {
                (
                    key.minute_ms,
                    key.verdict.as_str(),
                    key.shadow_status,
                    count.exchanges,
                    count.last_at_ms,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (60_000, "match", 200, 2, 119_999),
                (60_000, "mismatch", 200, 1, 60_500),
                (60_000, "shadow_error", 0, 1, 61_000),
                (120_000, "match", 200, 1, 120_000),
            ]
        );
    }

    #[test]
    fn shapes_are_counted_per_minute_and_verdict_without_shadow_errors() {
        let mut other = record(60_100, "match");
        other.path = "/orders/42".into();
        let mut same_shape = record(60_200, "match");
        same_shape.path = "/orders/7".into();
        let records = [
            other,
            same_shape,
            record(60_300, "match"),
            record(60_400, "mismatch"),
            record(60_500, "shadow_error"),
        ];
        let seen: Vec<(String, String, i64, i64)> = shape_buckets(&records)
            .into_iter()
            .map(|(key, count)| (key.verdict, key.shape, count.exchanges, count.last_at_ms))
            .collect();
        assert_eq!(
            seen,
            [
                ("match".into(), "GET /orders/*".into(), 2, 60_200),
                ("match".into(), "GET /x".into(), 1, 60_300),
                ("mismatch".into(), "GET /x".into(), 1, 60_400),
            ]
        );
    }

    #[test]
    fn every_differing_exchange_is_kept_and_matches_are_sampled() {
        assert!(keep_row(&record(0, "mismatch"), 0.0));
        assert!(keep_row(&record(0, "noise"), 0.0));
        assert!(keep_row(&record(0, "shadow_error"), 0.0));
        assert!(!keep_row(&record(0, "match"), 0.0));
        assert!(keep_row(&record(0, "match"), 1.0));
        let kept = (0..10_000)
            .filter(|_| keep_row(&record(0, "match"), 0.1))
            .count();
        assert!((700..1300).contains(&kept), "{kept}");
    }

    #[test]
    fn unknowns_round_trip_through_the_key() {
        assert_eq!(known(String::new()), None);
        assert_eq!(known_generation(-1), None);
        assert_eq!(known_status(0), None);
        assert_eq!(known_status(503), Some(503));
    }
}
