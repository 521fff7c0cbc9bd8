//! The diff store: one SQLite row per compared exchange, bounded by row count and age, its
//! schema and migrations, and the queries the report and `GET /diffs` run.
//!
//! Only the diff worker thread writes, in batches, so the proxy never waits on disk. Everything
//! stored is already redacted: sensitive headers never reach it and body samples are bounded.
//!
//! The schema is versioned with `PRAGMA user_version` (see [`MIGRATIONS`]): opening a store for
//! writing brings an older file up to date in place; readers never write, and read older files
//! as they are (the columns they lack read as `NULL`).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
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
    /// The upstream that answered the client. `None` in rows stored before schema version 2.
    pub primary_upstream: Option<String>,
    /// The upstream that got the copy.
    pub candidate_upstream: Option<String>,
    /// The route's stage when the copy was decided (`shadow`, `canary`, `new`, ...).
    pub stage: Option<String>,
    /// The config generation that decided the copy. Generations count reloads of one process
    /// and start at 1 again when it restarts; `config_sha256` tells those apart.
    pub generation: Option<u64>,
    /// SHA-256 (hex) of that generation's routes.yaml.
    pub config_sha256: Option<String>,
}

/// The verdicts a record can have.
pub const VERDICTS: &[&str] = &["match", "mismatch", "noise", "shadow_error"];

/// Which records a read returns. The default is every record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub route: Option<String>,
    /// Only records stored at or after this Unix time in milliseconds.
    pub since_ms: i64,
    /// One of [`VERDICTS`].
    pub verdict: Option<String>,
    pub generation: Option<GenerationFilter>,
}

/// Which config generation's records a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationFilter {
    /// Exactly this generation number (of whichever process runs of the store had it).
    Number(u64),
    /// The generation of the store's newest record with provenance: the records with its
    /// generation and config SHA-256, after the last record of a higher generation (which can
    /// only come from an earlier run of the process, since generations only grow within a run).
    /// Records of older generations finished late, after the reload, do not count.
    Latest,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("diff store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "diff store {path}: schema version {found} is newer than this strangler knows ({supported}); use a newer strangler or another file"
    )]
    NewerSchema {
        path: String,
        found: i64,
        supported: i64,
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

/// Schema migrations, in order: `MIGRATIONS[n]` takes a store from `PRAGMA user_version` n to
/// n + 1. Stores written before the schema was versioned have user_version 0 and already hold
/// the version-1 table, which the first step creates only `IF NOT EXISTS`. Append new steps;
/// never edit one that has shipped.
pub const MIGRATIONS: &[&str] = &[
    // 1: the exchange, its verdict and differences.
    "CREATE TABLE IF NOT EXISTS diffs (
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
    CREATE INDEX IF NOT EXISTS diffs_route_time ON diffs (route, at_ms);",
    // 2: provenance, so a report can tell directions and reloads apart. Older rows keep NULLs.
    "ALTER TABLE diffs ADD COLUMN primary_upstream TEXT;
    ALTER TABLE diffs ADD COLUMN candidate_upstream TEXT;
    ALTER TABLE diffs ADD COLUMN stage TEXT;
    ALTER TABLE diffs ADD COLUMN generation INTEGER;
    ALTER TABLE diffs ADD COLUMN config_sha256 TEXT;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The first schema version with provenance columns.
const PROVENANCE_VERSION: i64 = 2;

/// Rows written between two retention passes.
const TRIM_EVERY: u64 = 500;

impl DiffStore {
    pub fn open(path: &Path, max_rows: u64, max_age: Duration) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let error = |source| StoreError::Sqlite {
            path: shown.clone(),
            source,
        };
        let mut connection = Connection::open(path).map_err(error)?;
        // WAL lets `strangler report` read while the proxy writes.
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(error)?;
        migrate(&mut connection, &shown)?;
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
                     shadow_status, verdict, differences, noise, primary_sample, shadow_sample,
                     primary_upstream, candidate_upstream, stage, generation, config_sha256)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                     ?16, ?17, ?18)",
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
                        record.primary_upstream,
                        record.candidate_upstream,
                        record.stage,
                        record
                            .generation
                            .map(|g| i64::try_from(g).unwrap_or(i64::MAX)),
                        record.config_sha256,
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

/// Brings the store up to [`SCHEMA_VERSION`], one step per transaction. `BEGIN IMMEDIATE` takes
/// the write lock before the version is read, so two processes opening one file at once (an
/// upgrade hands over while the old process still writes) never run a step twice.
fn migrate(connection: &mut Connection, path: &str) -> Result<(), StoreError> {
    let error = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    loop {
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(error)?;
        let version = user_version(&transaction).map_err(error)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        let Some(step) = usize::try_from(version)
            .ok()
            .and_then(|version| MIGRATIONS.get(version))
        else {
            return Ok(());
        };
        transaction.execute_batch(step).map_err(error)?;
        // The version lives in the file header and changes with the transaction.
        transaction
            .pragma_update(None, "user_version", version + 1)
            .map_err(error)?;
        transaction.commit().map_err(error)?;
    }
}

fn user_version(connection: &Connection) -> rusqlite::Result<i64> {
    connection.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Reads every record of `path` (read-only) that `filter` selects, oldest first.
pub fn read_records(path: &Path, filter: &Filter) -> Result<Vec<DiffRecord>, StoreError> {
    query_records(path, filter, None)
}

/// The `limit` newest records of `path` that `filter` selects, newest first.
pub fn read_latest(
    path: &Path,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<DiffRecord>, StoreError> {
    query_records(path, filter, Some(limit))
}

fn query_records(
    path: &Path,
    filter: &Filter,
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
    let version = user_version(&connection).map_err(error)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: shown,
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let provenance = version >= PROVENANCE_VERSION;
    if filter.generation.is_some() && !provenance {
        // Nothing in a store from before provenance has a generation.
        return Ok(Vec::new());
    }
    // Separate statements for with and without a route, so that SQLite can use the
    // (route, at_ms) index for one and walk rowids backwards (stopping at `limit`) for the other;
    // a catch-all `(?2 IS NULL OR route = ?2) ORDER BY id * ?3` can do neither.
    let mut sql = format!(
        "SELECT at_ms, route, method, path, query, request_id, primary_status, shadow_status,
                verdict, differences, noise, primary_sample, shadow_sample, {}
         FROM diffs WHERE at_ms >= ?",
        if provenance {
            "primary_upstream, candidate_upstream, stage, generation, config_sha256"
        } else {
            "NULL, NULL, NULL, NULL, NULL"
        }
    );
    let mut values: Vec<Box<dyn rusqlite::ToSql>> = vec![Box::new(filter.since_ms)];
    if let Some(route) = &filter.route {
        sql.push_str(" AND route = ?");
        values.push(Box::new(route.clone()));
    }
    if let Some(verdict) = &filter.verdict {
        sql.push_str(" AND verdict = ?");
        values.push(Box::new(verdict.clone()));
    }
    match filter.generation {
        None => {}
        Some(GenerationFilter::Number(number)) => {
            sql.push_str(" AND generation = ?");
            values.push(Box::new(i64::try_from(number).unwrap_or(i64::MAX)));
        }
        Some(GenerationFilter::Latest) => {
            let newest: Option<(i64, Option<String>)> = connection
                .query_row(
                    "SELECT generation, config_sha256 FROM diffs
                     WHERE generation IS NOT NULL ORDER BY id DESC LIMIT 1",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(error)?;
            let Some((generation, sha256)) = newest else {
                return Ok(Vec::new());
            };
            let after: i64 = connection
                .query_row(
                    "SELECT COALESCE(MAX(id), 0) FROM diffs WHERE generation > ?1",
                    params![generation],
                    |row| row.get(0),
                )
                .map_err(error)?;
            sql.push_str(" AND id > ? AND generation = ? AND config_sha256 IS ?");
            values.push(Box::new(after));
            values.push(Box::new(generation));
            values.push(Box::new(sha256));
        }
    }
    match newest {
        Some(limit) => {
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            values.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
        }
        None => sql.push_str(" ORDER BY id"),
    }
    let mut statement = connection.prepare(&sql).map_err(error)?;
    let rows = statement
        .query_map(rusqlite::params_from_iter(values.iter()), |row| {
            let differences: String = row.get(9)?;
            let noise: String = row.get(10)?;
            let generation: Option<i64> = row.get(16)?;
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
                primary_upstream: row.get(13)?,
                candidate_upstream: row.get(14)?,
                stage: row.get(15)?,
                generation: generation.and_then(|g| u64::try_from(g).ok()),
                config_sha256: row.get(17)?,
            })
        })
        .map_err(error)?;
    rows.collect::<Result<_, _>>().map_err(error)
}

/// Whether `path` can hold a diff store: its directory exists and takes new files (SQLite
/// creates the `-wal` and `-shm` files beside the store), and the store itself, if it exists, is
/// a file this process can write. Answers why not. Creates and removes a probe file, since
/// only trying tells (permission bits say nothing of read-only mounts, ACLs or root).
pub fn check_writable(path: &Path) -> Result<(), String> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    match std::fs::metadata(directory) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", directory.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "the directory {} does not exist",
                directory.display()
            ));
        }
        Err(error) => return Err(format!("directory {}: {error}", directory.display())),
    }
    let probe = directory.join(format!(
        ".strangler-write-check-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
        }
        Err(error) => {
            return Err(format!(
                "cannot create files in {}: {error}",
                directory.display()
            ));
        }
    }
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => Err(format!("{} is a directory", path.display())),
        Ok(_) => std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(|_| ())
            .map_err(|error| format!("cannot write {}: {error}", path.display())),
        Err(_) => Ok(()),
    }
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
            primary_upstream: Some("legacy".into()),
            candidate_upstream: Some("new".into()),
            stage: Some("shadow".into()),
            generation: Some(1),
            config_sha256: Some("aaaa".into()),
        }
    }

    fn route(route: &str) -> Filter {
        Filter {
            route: Some(route.into()),
            ..Filter::default()
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
        assert_eq!(read_records(&path, &Filter::default()).unwrap().len(), 5);
        assert_eq!(read_records(&path, &route("b")).unwrap().len(), 1);
        let newest = read_latest(&path, &Filter::default(), 1).unwrap();
        assert_eq!(newest[0].route, "b", "newest first");
        let latest_a = read_latest(&path, &route("a"), 2).unwrap();
        assert_eq!(latest_a.len(), 2);
        assert!(latest_a.iter().all(|record| record.route == "a"));
        store.trim().unwrap();
        let left = read_records(&path, &Filter::default()).unwrap();
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
        let left = read_records(&path, &Filter::default()).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].route, "new");

        let path = dir.path().join("all-old.db");
        let mut store = DiffStore::open(&path, 1000, Duration::from_secs(3600)).unwrap();
        let mut old = record("old", "match");
        old.at_ms = two_hours_ago;
        store.insert(&[old.clone(), old]).unwrap();
        store.trim().unwrap();
        assert!(read_records(&path, &Filter::default()).unwrap().is_empty());
    }

    /// The table exactly as strangler created it before the schema was versioned.
    const VERSION_ZERO: &str = "
        CREATE TABLE diffs (
            id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, route TEXT NOT NULL,
            method TEXT NOT NULL, path TEXT NOT NULL, query TEXT, request_id TEXT NOT NULL,
            primary_status INTEGER, shadow_status INTEGER, verdict TEXT NOT NULL,
            differences TEXT NOT NULL, noise TEXT NOT NULL, primary_sample TEXT,
            shadow_sample TEXT);
        CREATE INDEX diffs_route_time ON diffs (route, at_ms);
        INSERT INTO diffs (at_ms, route, method, path, request_id, verdict, differences, noise)
        VALUES (1, 'orders', 'GET', '/orders/1', 'old', 'mismatch', '[]', '[]');";

    #[test]
    fn a_store_from_before_provenance_is_read_as_is_and_migrated_when_opened_for_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(VERSION_ZERO)
            .unwrap();

        // Readers never write: the old file reads with empty provenance.
        let old = read_records(&path, &Filter::default()).unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].primary_upstream, None);
        let latest = Filter {
            generation: Some(GenerationFilter::Latest),
            ..Filter::default()
        };
        assert!(read_records(&path, &latest).unwrap().is_empty());

        let mut store = DiffStore::open(&path, 100, Duration::from_secs(3600)).unwrap();
        store.insert(&[record("orders", "match")]).unwrap();
        let version: i64 = user_version(&Connection::open(&path).unwrap()).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let all = read_records(&path, &Filter::default()).unwrap();
        assert_eq!(all.len(), 2, "the old row survives the migration");
        assert_eq!(all[0].request_id, "old");
        assert_eq!(all[0].generation, None);
        assert_eq!(all[1].primary_upstream.as_deref(), Some("legacy"));
        assert_eq!(all[1].generation, Some(1));

        // Opening again finds nothing to do.
        drop(store);
        DiffStore::open(&path, 100, Duration::from_secs(3600)).unwrap();
        assert_eq!(read_records(&path, &Filter::default()).unwrap().len(), 2);
    }

    #[test]
    fn a_store_from_a_newer_strangler_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        drop(DiffStore::open(&path, 100, Duration::from_secs(3600)).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let error = DiffStore::open(&path, 100, Duration::from_secs(3600))
            .err()
            .unwrap();
        assert!(matches!(error, StoreError::NewerSchema { .. }), "{error}");
        assert!(read_records(&path, &Filter::default()).is_err());
    }

    #[test]
    fn reads_filter_by_verdict_generation_and_the_latest_generation_of_the_newest_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffs.db");
        let mut store = DiffStore::open(&path, 1000, Duration::from_secs(3600)).unwrap();
        let at = |generation: u64, sha: &str, verdict: &str, id: &str| DiffRecord {
            generation: Some(generation),
            config_sha256: Some(sha.into()),
            request_id: id.into(),
            ..record("orders", verdict)
        };
        store
            .insert(&[
                // A first run of the process: generations 1 and 2.
                at(1, "x", "match", "run1-g1"),
                at(2, "y", "mismatch", "run1-g2"),
                // A restart: generation 1 again, of another file.
                at(1, "z", "match", "run2-g1"),
                at(2, "w", "mismatch", "run2-g2"),
                // A straggler of generation 1 that finished after the reload.
                at(1, "z", "match", "run2-g1-late"),
                at(2, "w", "match", "run2-g2-b"),
            ])
            .unwrap();
        let ids = |filter: Filter| -> Vec<String> {
            read_records(&path, &filter)
                .unwrap()
                .into_iter()
                .map(|r| r.request_id)
                .collect()
        };
        assert_eq!(
            ids(Filter {
                verdict: Some("mismatch".into()),
                ..Filter::default()
            }),
            ["run1-g2", "run2-g2"]
        );
        assert_eq!(
            ids(Filter {
                generation: Some(GenerationFilter::Number(1)),
                ..Filter::default()
            }),
            ["run1-g1", "run2-g1", "run2-g1-late"]
        );
        assert_eq!(
            ids(Filter {
                generation: Some(GenerationFilter::Latest),
                ..Filter::default()
            }),
            ["run2-g2", "run2-g2-b"],
            "the newest generation of the newest run, without the first run's generation 2"
        );
        let newest = read_latest(
            &path,
            &Filter {
                generation: Some(GenerationFilter::Latest),
                verdict: Some("match".into()),
                ..Filter::default()
            },
            5,
        )
        .unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].request_id, "run2-g2-b");
    }

    #[test]
    fn a_store_path_is_checked_by_trying() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_writable(&dir.path().join("diffs.db")), Ok(()));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the probe is gone"
        );
        let missing = check_writable(&dir.path().join("nope/diffs.db")).unwrap_err();
        assert!(missing.contains("nope"), "{missing}");
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let under_a_file = check_writable(&file.join("diffs.db")).unwrap_err();
        assert!(under_a_file.contains("not a directory"), "{under_a_file}");
        let a_directory = check_writable(dir.path()).unwrap_err();
        assert!(a_directory.contains("is a directory"), "{a_directory}");
    }
}
