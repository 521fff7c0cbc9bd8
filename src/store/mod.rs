//! The diff store: one SQLite row per compared exchange, bounded by row count and age, and the
//! queries the report runs.
//!
//! Only the diff worker thread writes, in batches, so the proxy never waits on disk. Everything
//! stored is already redacted: sensitive headers never reach it and body samples are bounded.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, params};
use serde::{Deserialize, Serialize};

use crate::diff::Difference;

/// One compared exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffRecord {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    pub route: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub request_id: String,
    pub primary_status: Option<u16>,
    pub shadow_status: Option<u16>,
    /// `match`, `mismatch`, `noise` or `shadow_error`.
    pub verdict: String,
    pub differences: Vec<Difference>,
    /// Differences discounted as noise.
    pub noise: Vec<Difference>,
    pub primary_sample: Option<String>,
    pub shadow_sample: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("diff store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
}

/// Writes compared exchanges; owned by the diff worker.
pub struct DiffStore {
    connection: Connection,
    path: String,
    max_rows: u64,
    max_age: Duration,
    inserts_since_trim: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS diffs (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    route TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT,
    request_id TEXT NOT NULL,
    primary_status INTEGER,
    shadow_status INTEGER,
    verdict TEXT NOT NULL,
    differences TEXT NOT NULL,
    noise TEXT NOT NULL,
    primary_sample TEXT,
    shadow_sample TEXT
);
CREATE INDEX IF NOT EXISTS diffs_route_time ON diffs (route, at_ms);
";

/// Rows written between two retention passes.
const TRIM_EVERY: u64 = 500;

impl DiffStore {
    pub fn open(path: &Path, max_rows: u64, max_age: Duration) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let error = |source| StoreError::Sqlite {
            path: shown.clone(),
            source,
        };
        let connection = Connection::open(path).map_err(error)?;
        // WAL lets `strangler report` read while the proxy writes.
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(error)?;
        connection.execute_batch(SCHEMA).map_err(error)?;
        Ok(Self {
            connection,
            path: shown,
            max_rows,
            max_age,
            inserts_since_trim: 0,
        })
    }

    /// Stores a batch in one transaction, then applies retention now and then.
    pub fn insert(&mut self, records: &[DiffRecord]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let error = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let transaction = self.connection.transaction().map_err(error)?;
        {
            let mut statement = transaction
                .prepare_cached(
                    "INSERT INTO diffs (at_ms, route, method, path, query, request_id, primary_status,
                     shadow_status, verdict, differences, noise, primary_sample, shadow_sample)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )
                .map_err(error)?;
            for record in records {
                statement
                    .execute(params![
                        record.at_ms,
                        record.route,
                        record.method,
                        record.path,
                        record.query,
                        record.request_id,
                        record.primary_status,
                        record.shadow_status,
                        record.verdict,
                        serde_json::to_string(&record.differences).expect("differences serialize"),
                        serde_json::to_string(&record.noise).expect("differences serialize"),
                        record.primary_sample,
                        record.shadow_sample,
                    ])
                    .map_err(error)?;
            }
        }
        transaction.commit().map_err(error)?;
        self.inserts_since_trim += records.len() as u64;
        if self.inserts_since_trim >= TRIM_EVERY {
            self.inserts_since_trim = 0;
            self.trim()?;
        }
        Ok(())
    }

    /// Deletes rows past the age limit, then the oldest beyond the row limit.
    pub fn trim(&mut self) -> Result<(), StoreError> {
        let oldest = now_ms() - self.max_age.as_millis() as i64;
        let max_rows = i64::try_from(self.max_rows).unwrap_or(i64::MAX);
        // Rows are written in time order, so the old ones are a prefix of the rowid order: walk
        // the rowids up to the first row young enough instead of scanning the whole table for
        // `at_ms` (which has no index of its own), as a plain `WHERE at_ms < ?` would.
        self.connection
            .execute(
                "DELETE FROM diffs WHERE id < COALESCE(
                     (SELECT id FROM diffs WHERE at_ms >= ?1 ORDER BY id LIMIT 1),
                     (SELECT MAX(id) FROM diffs) + 1)",
                params![oldest],
            )
            .and_then(|_| {
                self.connection.execute(
                    "DELETE FROM diffs WHERE id <= (SELECT MAX(id) FROM diffs) - ?1",
                    params![max_rows],
                )
            })
            .map(|_| ())
            .map_err(|source| StoreError::Sqlite {
                path: self.path.clone(),
                source,
            })
    }
}

/// Reads every record of `path` (read-only) newer than `since_ms`, optionally for one route.
pub fn read_records(
    path: &Path,
    route: Option<&str>,
    since_ms: i64,
) -> Result<Vec<DiffRecord>, StoreError> {
    query_records(path, route, since_ms, None)
}

/// The `limit` newest records of `path`, newest first, optionally for one route.
pub fn read_latest(
    path: &Path,
    route: Option<&str>,
    limit: usize,
) -> Result<Vec<DiffRecord>, StoreError> {
    query_records(path, route, 0, Some(limit))
}

fn query_records(
    path: &Path,
    route: Option<&str>,
    since_ms: i64,
    newest: Option<usize>,
) -> Result<Vec<DiffRecord>, StoreError> {
    let shown = path.display().to_string();
    let error = |source| StoreError::Sqlite {
        path: shown.clone(),
        source,
    };
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(error)?;
    // Separate statements for with and without a route, so that SQLite can use the
    // (route, at_ms) index for one and walk rowids backwards (stopping at `limit`) for the other;
    // a catch-all `(?2 IS NULL OR route = ?2) ORDER BY id * ?3` can do neither.
    let mut sql = String::from(
        "SELECT at_ms, route, method, path, query, request_id, primary_status, shadow_status,
                verdict, differences, noise, primary_sample, shadow_sample
         FROM diffs WHERE at_ms >= ?",
    );
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&since_ms];
    if let Some(route) = &route {
        sql.push_str(" AND route = ?");
        values.push(route);
    }
    let limit = newest.map(|limit| i64::try_from(limit).unwrap_or(i64::MAX));
    match &limit {
        Some(limit) => {
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            values.push(limit);
        }
        None => sql.push_str(" ORDER BY id"),
    }
    let mut statement = connection.prepare(&sql).map_err(error)?;
    let rows = statement
        .query_map(values.as_slice(), |row| {
            let differences: String = row.get(9)?;
            let noise: String = row.get(10)?;
            Ok(DiffRecord {
                at_ms: row.get(0)?,
                route: row.get(1)?,
                method: row.get(2)?,
                path: row.get(3)?,
                query: row.get(4)?,
                request_id: row.get(5)?,
                primary_status: row.get(6)?,
                shadow_status: row.get(7)?,
                verdict: row.get(8)?,
                differences: serde_json::from_str(&differences).unwrap_or_default(),
                noise: serde_json::from_str(&noise).unwrap_or_default(),
                primary_sample: row.get(11)?,
                shadow_sample: row.get(12)?,
            })
        })
        .map_err(error)?;
    rows.collect::<Result<_, _>>().map_err(error)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(route: &str, verdict: &str) -> DiffRecord {
        DiffRecord {
            at_ms: now_ms(),
            route: route.into(),
            method: "GET".into(),
            path: "/x".into(),
            query: None,
            request_id: "r".into(),
            primary_status: Some(200),
            shadow_status: Some(200),
            verdict: verdict.into(),
            differences: Vec::new(),
            noise: Vec::new(),
            primary_sample: None,
            shadow_sample: None,
        }
    }

    #[test]
    fn stores_reads_and_trims_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffs.db");
        let mut store = DiffStore::open(&path, 3, Duration::from_secs(3600)).unwrap();
        let records: Vec<_> = (0..5)
            .map(|i| record(if i < 4 { "a" } else { "b" }, "match"))
            .collect();
        store.insert(&records).unwrap();
        assert_eq!(read_records(&path, None, 0).unwrap().len(), 5);
        assert_eq!(read_records(&path, Some("b"), 0).unwrap().len(), 1);
        let newest = read_latest(&path, None, 1).unwrap();
        assert_eq!(newest[0].route, "b", "newest first");
        let latest_a = read_latest(&path, Some("a"), 2).unwrap();
        assert_eq!(latest_a.len(), 2);
        assert!(latest_a.iter().all(|record| record.route == "a"));
        store.trim().unwrap();
        let left = read_records(&path, None, 0).unwrap();
        assert_eq!(left.len(), 3);
        assert_eq!(left.last().unwrap().route, "b", "the newest survive");
    }

    #[test]
    fn rows_past_the_age_limit_are_trimmed_even_when_all_are_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffs.db");
        let mut store = DiffStore::open(&path, 1000, Duration::from_secs(3600)).unwrap();
        let two_hours_ago = now_ms() - 2 * 3600 * 1000;
        let mut records: Vec<_> = (0..4).map(|_| record("old", "match")).collect();
        for record in &mut records {
            record.at_ms = two_hours_ago;
        }
        records.push(record("new", "mismatch"));
        store.insert(&records).unwrap();
        store.trim().unwrap();
        let left = read_records(&path, None, 0).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].route, "new");

        let path = dir.path().join("all-old.db");
        let mut store = DiffStore::open(&path, 1000, Duration::from_secs(3600)).unwrap();
        let mut old = record("old", "match");
        old.at_ms = two_hours_ago;
        store.insert(&[old.clone(), old]).unwrap();
        store.trim().unwrap();
        assert!(read_records(&path, None, 0).unwrap().is_empty());
    }
}
