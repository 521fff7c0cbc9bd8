//! The diff store: one SQLite row per compared exchange, bounded by row count and age, its
//! schema and migrations, and the queries the report and `GET /diffs` run. The Postgres store a
//! fleet shares is in [`postgres`]; [`StoreLocation`] says which one a path or URL names, and the
//! functions at the end of this file ([`scan`], [`summary`], [`latest`]) dispatch on it. Both
//! keep per-minute counts of every exchange ([`aggregate`]) beside the rows.
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

use crate::record::{DiffRecord, Difference};
use crate::vocabulary::Verdict;

pub mod aggregate;
pub mod corpus;
mod location;
pub mod postgres;
mod sqlite_counts;
pub mod summary;
#[cfg(test)]
pub(crate) mod testing;
pub mod tls;

pub use aggregate::{SummaryQuery, SummaryRow};
pub use location::{PostgresUrl, StoreLocation, replica_name};

/// Which records a read returns. The default is every record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub route: Option<String>,
    /// Only records stored at or after this Unix time in milliseconds.
    pub since_ms: i64,
    pub verdict: Option<Verdict>,
    pub generation: Option<GenerationFilter>,
    /// Only records written by this replica (`server.replica`).
    pub replica: Option<String>,
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
    #[error("diff store {store}: {}", postgres_message(.source))]
    Postgres {
        /// The URL without its password.
        store: String,
        #[source]
        source: ::postgres::Error,
    },
    #[error("diff store {store}: {source}")]
    Tls {
        store: String,
        #[source]
        source: tls::TlsError,
    },
    #[error(
        "diff store {store}: no strangler diff store here (no schema); a proxy creates it when it first writes"
    )]
    NoStore { store: String },
    #[error(
        "diff store {store}: the server asks for a password and none is set: use STRANGLER_DIFF_STORE_PASSWORD or server.diff_store_password_file"
    )]
    NoPassword { store: String },
    #[error("diff store password file {path}: {source}")]
    PasswordFile {
        path: String,
        #[source]
        source: std::io::Error,
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

/// A Postgres error with the server's message and detail (its `Display` alone says `db error`).
fn postgres_message(error: &::postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        // Its `Display` is the kind alone (`error connecting to server`): add the cause.
        None => match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

/// Writes compared exchanges; owned by the diff worker.
pub struct DiffStore {
    connection: Connection,
    path: String,
    max_rows: u64,
    max_age: Duration,
    inserts_since_trim: u64,
    /// Written into every row and count.
    replica: String,
    /// Share of matching exchanges stored as rows (all are counted).
    match_sample: f64,
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
    // 3: which replica wrote a row, and per-minute counts of every exchange (see
    // `aggregate`), filled from the rows already there.
    "ALTER TABLE diffs ADD COLUMN replica TEXT;
    CREATE TABLE diff_counts (
        minute_ms INTEGER NOT NULL,
        replica TEXT NOT NULL,
        route TEXT NOT NULL,
        primary_upstream TEXT NOT NULL,
        candidate_upstream TEXT NOT NULL,
        stage TEXT NOT NULL,
        generation INTEGER NOT NULL,
        config_sha256 TEXT NOT NULL,
        verdict TEXT NOT NULL,
        primary_status INTEGER NOT NULL,
        shadow_status INTEGER NOT NULL,
        exchanges INTEGER NOT NULL,
        last_at_ms INTEGER NOT NULL,
        PRIMARY KEY (minute_ms, replica, route, primary_upstream, candidate_upstream, stage,
                     generation, config_sha256, verdict, primary_status, shadow_status)
    );
    INSERT INTO diff_counts
    SELECT at_ms - (at_ms % 60000), '', route, COALESCE(primary_upstream, ''),
           COALESCE(candidate_upstream, ''), COALESCE(stage, ''), COALESCE(generation, -1),
           COALESCE(config_sha256, ''), verdict, COALESCE(primary_status, 0),
           COALESCE(shadow_status, 0), COUNT(*), MAX(at_ms)
    FROM diffs GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The first schema version with provenance columns.
const PROVENANCE_VERSION: i64 = 2;

/// The first schema version with a replica column and per-minute counts.
const COUNTS_VERSION: i64 = 3;

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
            replica: String::new(),
            match_sample: 1.0,
        })
    }

    /// Writes as `replica`, keeping `match_sample` (0 to 1) of the matching exchanges as rows.
    pub fn writing_as(mut self, replica: &str, match_sample: f64) -> Self {
        self.replica = replica.to_owned();
        self.match_sample = match_sample.clamp(0.0, 1.0);
        self
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
                     primary_upstream, candidate_upstream, stage, generation, config_sha256,
                     replica)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                     ?16, ?17, ?18, ?19)",
                )
                .map_err(error)?;
            for record in records
                .iter()
                .filter(|record| aggregate::keep_row(record, self.match_sample))
            {
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
                        self.replica,
                    ])
                    .map_err(error)?;
            }
        }
        sqlite_counts::write_counts(&transaction, &self.replica, records).map_err(error)?;
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
            .and_then(|_| {
                self.connection.execute(
                    "DELETE FROM diff_counts WHERE minute_ms < ?1",
                    params![oldest - aggregate::BUCKET_MS],
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
    let reader = Reader::open(path)?;
    let error = |source| reader.error(source);
    let Some((conditions, mut values)) = reader.selection(filter).map_err(error)? else {
        return Ok(Vec::new());
    };
    let mut sql = format!(
        "SELECT {RECORD_COLUMNS}, {} FROM diffs WHERE {conditions}",
        reader.provenance_columns()
    );
    match newest {
        Some(limit) => {
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            values.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
        }
        None => sql.push_str(" ORDER BY id"),
    }
    let mut statement = reader.connection.prepare(&sql).map_err(error)?;
    let rows = statement
        .query_map(rusqlite::params_from_iter(values.iter()), |row| {
            record_from_row(row, 0)
        })
        .map_err(error)?;
    rows.collect::<Result<_, _>>().map_err(error)
}

/// The columns [`record_from_row`] reads, in its order; the provenance columns
/// ([`Reader::provenance_columns`]) follow them.
pub(crate) const RECORD_COLUMNS: &str = "at_ms, route, method, path, query, request_id,
    primary_status, shadow_status, verdict, differences, noise, primary_sample, shadow_sample";

/// A [`DiffRecord`] from a row selecting [`RECORD_COLUMNS`] and the provenance columns, starting
/// at column `first` (a query may select other columns before them).
pub(crate) fn record_from_row(
    row: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<DiffRecord> {
    let column = |n: usize| first + n;
    let differences: String = row.get(column(9))?;
    let noise: String = row.get(column(10))?;
    let generation: Option<i64> = row.get(column(16))?;
    Ok(DiffRecord {
        at_ms: row.get(column(0))?,
        route: row.get(column(1))?,
        method: row.get(column(2))?,
        path: row.get(column(3))?,
        query: row.get(column(4))?,
        request_id: row.get(column(5))?,
        primary_status: row.get(column(6))?,
        shadow_status: row.get(column(7))?,
        verdict: row.get(column(8))?,
        differences: serde_json::from_str(&differences).unwrap_or_default(),
        noise: serde_json::from_str(&noise).unwrap_or_default(),
        primary_sample: row.get(column(11))?,
        shadow_sample: row.get(column(12))?,
        primary_upstream: row.get(column(13))?,
        candidate_upstream: row.get(column(14))?,
        stage: row.get(column(15))?,
        generation: generation.and_then(|g| u64::try_from(g).ok()),
        config_sha256: row.get(column(17))?,
    })
}

/// How many exchanges of a store share a route, direction, verdict, status pair and provenance:
/// what a report needs of every row, counted by SQLite without reading the rows out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeCount {
    pub route: String,
    pub primary_upstream: Option<String>,
    pub candidate_upstream: Option<String>,
    pub verdict: Verdict,
    pub primary_status: Option<u16>,
    pub shadow_status: Option<u16>,
    pub generation: Option<u64>,
    pub stage: Option<String>,
    pub config_sha256: Option<String>,
    pub exchanges: u64,
}

/// How many compared exchanges (shadow errors left out) of a route and direction share a request
/// shape ([`crate::record::request_shape`]: `GET /orders/*`): what suggestions measure a
/// path's noise against, since the store does not list the paths that were equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeCount {
    pub route: String,
    pub primary_upstream: Option<String>,
    pub candidate_upstream: Option<String>,
    pub shape: String,
    pub exchanges: u64,
}

/// What a report scan counted in SQL, beside the differing exchanges it streamed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportCounts {
    pub exchanges: Vec<ExchangeCount>,
    pub shapes: Vec<ShapeCount>,
}

/// An exchange that differed (verdict `mismatch`, `noise` or `shadow_error`) as a report reads
/// it: the request, both statuses and the differences, without the body samples.
#[derive(Debug, Clone)]
pub struct DifferingExchange {
    pub route: String,
    pub primary_upstream: Option<String>,
    pub candidate_upstream: Option<String>,
    pub verdict: Verdict,
    pub method: String,
    pub path: String,
    /// Already redacted, without the `?`.
    pub query: Option<String>,
    pub request_id: String,
    pub primary_status: Option<u16>,
    pub shadow_status: Option<u16>,
    pub differences: Vec<Difference>,
    pub noise: Vec<Difference>,
}

/// Reads what `filter` selects of the store at `path` for a report, in one read transaction
/// (one snapshot, however the proxy writes meanwhile): returns the exchanges counted in SQL
/// ([`ExchangeCount`], and per request shape: [`ShapeCount`]) and hands every exchange that
/// differed to `each`, oldest first, one row at a time, so memory does not grow with the store.
/// Matching exchanges are counted, never read.
pub fn scan_for_report(
    path: &Path,
    filter: &Filter,
    mut each: impl FnMut(DifferingExchange),
) -> Result<ReportCounts, StoreError> {
    let reader = Reader::open(path)?;
    let error = |source| reader.error(source);
    // A deferred transaction takes its snapshot at the first SELECT (the one in `selection`
    // that finds the newest generation) and keeps it for both queries below.
    reader
        .connection
        .execute_batch("BEGIN DEFERRED")
        .map_err(error)?;
    let Some((conditions, values)) = reader.selection(filter).map_err(error)? else {
        return Ok(ReportCounts::default());
    };
    let provenance = reader.provenance_columns();
    let mut counts = Vec::new();
    if reader.counts {
        counts = sqlite_counts::exchange_counts(&reader.connection, filter).map_err(error)?;
    } else {
        let mut statement = reader
            .connection
            .prepare(&format!(
                "SELECT route, verdict, primary_status, shadow_status, {provenance}, COUNT(*)
                 FROM diffs WHERE {conditions}
                 GROUP BY route, verdict, primary_status, shadow_status, 5, 6, 7, 8, 9"
            ))
            .map_err(error)?;
        let mut rows = statement
            .query(rusqlite::params_from_iter(values.iter()))
            .map_err(error)?;
        while let Some(row) = rows.next().map_err(error)? {
            let generation: Option<i64> = row.get(7).map_err(error)?;
            let exchanges: i64 = row.get(9).map_err(error)?;
            counts.push(ExchangeCount {
                route: row.get(0).map_err(error)?,
                verdict: row.get(1).map_err(error)?,
                primary_status: row.get(2).map_err(error)?,
                shadow_status: row.get(3).map_err(error)?,
                primary_upstream: row.get(4).map_err(error)?,
                candidate_upstream: row.get(5).map_err(error)?,
                stage: row.get(6).map_err(error)?,
                generation: generation.and_then(|g| u64::try_from(g).ok()),
                config_sha256: row.get(8).map_err(error)?,
                exchanges: u64::try_from(exchanges).unwrap_or(0),
            });
        }
    }
    // Per distinct request path, generalized here: SQLite groups the rows (without reading
    // them out), Rust folds the paths into shapes, so memory grows with shapes, not rows.
    let mut shapes: std::collections::HashMap<
        (String, Option<String>, Option<String>, String),
        u64,
    > = std::collections::HashMap::new();
    {
        let direction = if reader.provenance {
            "primary_upstream, candidate_upstream"
        } else {
            "NULL, NULL"
        };
        let mut statement = reader
            .connection
            .prepare(&format!(
                "SELECT route, {direction}, method, path, COUNT(*)
                 FROM diffs WHERE {conditions} AND verdict <> 'shadow_error'
                 GROUP BY 1, 2, 3, 4, 5"
            ))
            .map_err(error)?;
        let mut rows = statement
            .query(rusqlite::params_from_iter(values.iter()))
            .map_err(error)?;
        while let Some(row) = rows.next().map_err(error)? {
            let method = row.get_ref(3).map_err(error)?.as_str().unwrap_or_default();
            let request = row.get_ref(4).map_err(error)?.as_str().unwrap_or_default();
            let shape = crate::record::request_shape(method, request);
            let exchanges: i64 = row.get(5).map_err(error)?;
            *shapes
                .entry((
                    row.get(0).map_err(error)?,
                    row.get(1).map_err(error)?,
                    row.get(2).map_err(error)?,
                    shape,
                ))
                .or_default() += u64::try_from(exchanges).unwrap_or(0);
        }
    }
    let mut statement = reader
        .connection
        .prepare(&format!(
            "SELECT route, verdict, method, path, query, request_id, primary_status, shadow_status,
                    differences, noise, {provenance}
             FROM diffs WHERE {conditions} AND verdict <> 'match' ORDER BY id"
        ))
        .map_err(error)?;
    let mut rows = statement
        .query(rusqlite::params_from_iter(values.iter()))
        .map_err(error)?;
    while let Some(row) = rows.next().map_err(error)? {
        let differences = row.get_ref(8).map_err(error)?.as_str().unwrap_or("[]");
        let noise = row.get_ref(9).map_err(error)?.as_str().unwrap_or("[]");
        each(DifferingExchange {
            differences: serde_json::from_str(differences).unwrap_or_default(),
            noise: serde_json::from_str(noise).unwrap_or_default(),
            route: row.get(0).map_err(error)?,
            verdict: row.get(1).map_err(error)?,
            method: row.get(2).map_err(error)?,
            path: row.get(3).map_err(error)?,
            query: row.get(4).map_err(error)?,
            request_id: row.get(5).map_err(error)?,
            primary_status: row.get(6).map_err(error)?,
            shadow_status: row.get(7).map_err(error)?,
            primary_upstream: row.get(10).map_err(error)?,
            candidate_upstream: row.get(11).map_err(error)?,
        });
    }
    let shapes = shapes
        .into_iter()
        .map(
            |((route, primary_upstream, candidate_upstream, shape), exchanges)| ShapeCount {
                route,
                primary_upstream,
                candidate_upstream,
                shape,
                exchanges,
            },
        )
        .collect();
    Ok(ReportCounts {
        exchanges: counts,
        shapes,
    })
}

/// A read-only connection to a store whose schema this build understands.
struct Reader {
    connection: Connection,
    shown: String,
    /// Whether the store has the provenance columns (schema version 2 and later).
    provenance: bool,
    /// Whether it has the replica column and the counts (version 3 and later).
    counts: bool,
}

impl Reader {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sqlite {
            path: shown.clone(),
            source,
        })?;
        let version = user_version(&connection).map_err(|source| StoreError::Sqlite {
            path: shown.clone(),
            source,
        })?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: shown,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(Self {
            connection,
            shown,
            provenance: version >= PROVENANCE_VERSION,
            counts: version >= COUNTS_VERSION,
        })
    }

    fn error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.shown.clone(),
            source,
        }
    }

    /// The five provenance columns, or `NULL`s in a store from before them.
    fn provenance_columns(&self) -> &'static str {
        if self.provenance {
            "primary_upstream, candidate_upstream, stage, generation, config_sha256"
        } else {
            "NULL, NULL, NULL, NULL, NULL"
        }
    }

    /// The `WHERE` conditions and their values that select what `filter` asks for; `None` when
    /// nothing can match (a generation asked of a store without any).
    ///
    /// There are separate conditions for with and without a route, so that SQLite can use the
    /// (route, at_ms) index for one and walk rowids (stopping at a `LIMIT`) for the other; a
    /// catch-all `(?2 IS NULL OR route = ?2)` can do neither.
    #[allow(clippy::type_complexity)]
    fn selection(
        &self,
        filter: &Filter,
    ) -> rusqlite::Result<Option<(String, Vec<Box<dyn rusqlite::ToSql>>)>> {
        if filter.generation.is_some() && !self.provenance {
            // Nothing in a store from before provenance has a generation.
            return Ok(None);
        }
        if filter.replica.is_some() && !self.counts {
            // Nor a replica, before version 3.
            return Ok(None);
        }
        let mut sql = String::from("at_ms >= ?");
        let mut values: Vec<Box<dyn rusqlite::ToSql>> = vec![Box::new(filter.since_ms)];
        if let Some(route) = &filter.route {
            sql.push_str(" AND route = ?");
            values.push(Box::new(route.clone()));
        }
        if let Some(verdict) = filter.verdict {
            sql.push_str(" AND verdict = ?");
            values.push(Box::new(verdict));
        }
        if let Some(replica) = &filter.replica {
            sql.push_str(" AND replica = ?");
            values.push(Box::new(replica.clone()));
        }
        match filter.generation {
            None => {}
            Some(GenerationFilter::Number(number)) => {
                sql.push_str(" AND generation = ?");
                values.push(Box::new(i64::try_from(number).unwrap_or(i64::MAX)));
            }
            Some(GenerationFilter::Latest) => {
                let newest: Option<(i64, Option<String>)> = self
                    .connection
                    .query_row(
                        "SELECT generation, config_sha256 FROM diffs
                         WHERE generation IS NOT NULL ORDER BY id DESC LIMIT 1",
                        [],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                let Some((generation, sha256)) = newest else {
                    return Ok(None);
                };
                let after: i64 = self.connection.query_row(
                    "SELECT COALESCE(MAX(id), 0) FROM diffs WHERE generation > ?1",
                    params![generation],
                    |row| row.get(0),
                )?;
                sql.push_str(" AND id > ? AND generation = ? AND config_sha256 IS ?");
                values.push(Box::new(after));
                values.push(Box::new(generation));
                values.push(Box::new(sha256));
            }
        }
        Ok(Some((sql, values)))
    }
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

/// [`scan_for_report`] of whichever store `location` names.
pub fn scan(
    location: &StoreLocation,
    filter: &Filter,
    each: impl FnMut(DifferingExchange),
) -> Result<ReportCounts, StoreError> {
    match location {
        StoreLocation::Sqlite(path) => scan_for_report(path, filter, each),
        StoreLocation::Postgres(url) => postgres::scan_for_report(url, filter, each),
    }
}

/// [`read_latest`] of whichever store `location` names; a Postgres password (when the URL and
/// `STRANGLER_DIFF_STORE_PASSWORD` have none) from `password_file`.
pub fn latest(
    location: &StoreLocation,
    password_file: Option<&Path>,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<DiffRecord>, StoreError> {
    match location {
        StoreLocation::Sqlite(path) => read_latest(path, filter, limit),
        StoreLocation::Postgres(url) => postgres::read_latest(url, password_file, filter, limit),
    }
}

/// `location` ready to read with no password file: a Postgres URL without a password gets the
/// one from `STRANGLER_DIFF_STORE_PASSWORD` or `password_file` (read now, so a rotated secret is
/// picked up by the next read).
pub fn with_password(
    location: StoreLocation,
    password_file: Option<&Path>,
) -> Result<StoreLocation, StoreError> {
    match location {
        StoreLocation::Postgres(url) if !url.has_password() => Ok(StoreLocation::Postgres(
            url.with_password(postgres::password(password_file)?),
        )),
        other => Ok(other),
    }
}

/// [`summary::page`] of whichever store `location` names (a Postgres password as
/// [`with_password`] gives it).
pub fn page(
    location: &StoreLocation,
    filter: &Filter,
    limit: usize,
    before: Option<i64>,
) -> Result<Vec<summary::StoredExchange>, StoreError> {
    match location {
        StoreLocation::Sqlite(path) => summary::page(path, filter, limit, before),
        StoreLocation::Postgres(url) => postgres::page(url, None, filter, limit, before),
    }
}

/// [`summary::exchange`] of whichever store `location` names.
pub fn exchange(
    location: &StoreLocation,
    id: i64,
) -> Result<Option<summary::ExchangeWithNeighbours>, StoreError> {
    match location {
        StoreLocation::Sqlite(path) => summary::exchange(path, id),
        StoreLocation::Postgres(url) => postgres::exchange(url, None, id),
    }
}

/// [`summary::count`] of whichever store `location` names. Postgres counts from its
/// per-minute aggregates, SQLite from its rows.
pub fn count(
    location: &StoreLocation,
    filter: &Filter,
    buckets: usize,
) -> Result<summary::Counts, StoreError> {
    match location {
        StoreLocation::Sqlite(path) => summary::count(path, filter, buckets),
        StoreLocation::Postgres(url) => postgres::count(url, None, filter, buckets),
    }
}

/// [`summary::ids_of_requests`] of whichever store `location` names.
pub fn ids_of_requests(
    location: &StoreLocation,
    request_ids: &[&str],
) -> Result<Vec<(String, i64)>, StoreError> {
    match location {
        StoreLocation::Sqlite(path) => summary::ids_of_requests(path, request_ids),
        StoreLocation::Postgres(url) => postgres::ids_of_requests(url, None, request_ids),
    }
}

/// The store-level summary of `location`: exchanges by verdict per route, direction,
/// generation and time bucket, from the aggregates (what `GET /diffs/summary` serves). A SQLite
/// store from before the aggregates (schema version 3) has none: it answers an empty summary.
pub fn summary(
    location: &StoreLocation,
    password_file: Option<&Path>,
    query: &SummaryQuery,
) -> Result<Vec<SummaryRow>, StoreError> {
    match location {
        StoreLocation::Sqlite(path) => {
            let reader = Reader::open(path)?;
            if !reader.counts {
                return Ok(Vec::new());
            }
            sqlite_counts::summary(&reader.connection, query).map_err(|source| reader.error(source))
        }
        StoreLocation::Postgres(url) => postgres::summary(url, password_file, query),
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A verdict is stored as its word ([`Verdict::as_str`]).
impl rusqlite::types::ToSql for Verdict {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for Verdict {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let word = value.as_str()?;
        Verdict::parse(word).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(format!("unknown verdict `{word}`").into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::record;
    use super::*;

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
                verdict: Some(Verdict::Mismatch),
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
                verdict: Some(Verdict::Match),
                ..Filter::default()
            },
            5,
        )
        .unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].request_id, "run2-g2-b");
    }

    #[test]
    fn a_report_scan_counts_every_exchange_in_sql_and_streams_only_the_differing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffs.db");
        let mut store = DiffStore::open(&path, 1000, Duration::from_secs(3600)).unwrap();
        let differing = |verdict: &str, id: &str| DiffRecord {
            request_id: id.into(),
            path: format!("/orders/{}", id.len() + 6),
            query: Some("page=2".into()),
            differences: vec![Difference {
                path: "$.total".into(),
                kind: crate::record::Kind::Changed,
                primary: Some("1".into()),
                shadow: Some("2".into()),
            }],
            primary_sample: Some("{\"total\":1}".into()),
            ..record("orders", verdict)
        };
        let mut records: Vec<DiffRecord> = (0..5).map(|_| record("orders", "match")).collect();
        records.push(differing("mismatch", "m1"));
        records.push(differing("mismatch", "m2"));
        records.push(DiffRecord {
            shadow_status: None,
            ..differing("shadow_error", "e1")
        });
        records.push(record("invoices", "match"));
        store.insert(&records).unwrap();

        let mut streamed = Vec::new();
        let ReportCounts {
            exchanges: mut counts,
            mut shapes,
        } = scan_for_report(&path, &Filter::default(), |exchange| {
            streamed.push(exchange)
        })
        .unwrap();
        shapes.sort_by(|a, b| (&a.route, &a.shape).cmp(&(&b.route, &b.shape)));
        let shaped: Vec<(&str, &str, u64)> = shapes
            .iter()
            .map(|s| (s.route.as_str(), s.shape.as_str(), s.exchanges))
            .collect();
        assert_eq!(
            shaped,
            [
                ("invoices", "GET /x", 1),
                ("orders", "GET /orders/*", 2),
                ("orders", "GET /x", 5),
            ],
            "ids generalized, shadow errors left out"
        );
        assert_eq!(shapes[1].candidate_upstream.as_deref(), Some("new"));
        counts.sort_by(|a, b| (&a.route, &a.verdict).cmp(&(&b.route, &b.verdict)));
        let counted: Vec<(&str, &str, Option<u16>, u64)> = counts
            .iter()
            .map(|c| {
                (
                    c.route.as_str(),
                    c.verdict.as_str(),
                    c.shadow_status,
                    c.exchanges,
                )
            })
            .collect();
        assert_eq!(
            counted,
            [
                ("invoices", "match", Some(200), 1),
                ("orders", "match", Some(200), 5),
                ("orders", "mismatch", Some(200), 2),
                ("orders", "shadow_error", None, 1),
            ]
        );
        assert_eq!(counts[1].primary_upstream.as_deref(), Some("legacy"));
        assert_eq!(counts[1].generation, Some(1));
        let ids: Vec<&str> = streamed.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!(ids, ["m1", "m2", "e1"], "matches are counted, never read");
        assert_eq!(streamed[0].query.as_deref(), Some("page=2"));
        assert_eq!(streamed[0].differences[0].path, "$.total");
        assert_eq!(streamed[0].candidate_upstream.as_deref(), Some("new"));

        // The filter applies to both.
        let mut streamed = 0;
        let counts = scan_for_report(&path, &route("invoices"), |_| streamed += 1).unwrap();
        assert_eq!(
            (
                counts.exchanges.len(),
                counts.exchanges[0].exchanges,
                streamed
            ),
            (1, 1, 0)
        );
        assert_eq!(counts.shapes.len(), 1);
        let latest = Filter {
            generation: Some(GenerationFilter::Number(7)),
            ..Filter::default()
        };
        assert_eq!(
            scan_for_report(&path, &latest, |_| ()).unwrap(),
            ReportCounts::default()
        );
    }

    #[test]
    fn a_report_scan_reads_a_store_from_before_provenance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(VERSION_ZERO)
            .unwrap();
        let mut streamed = 0;
        let counts = scan_for_report(&path, &Filter::default(), |exchange| {
            assert_eq!(exchange.primary_upstream, None);
            streamed += 1;
        })
        .unwrap();
        assert_eq!(streamed, 1);
        let counts = counts.exchanges;
        assert_eq!(counts.len(), 1);
        assert_eq!(
            (counts[0].primary_upstream.as_ref(), counts[0].exchanges),
            (None, 1)
        );
        let latest = Filter {
            generation: Some(GenerationFilter::Latest),
            ..Filter::default()
        };
        assert_eq!(
            scan_for_report(&path, &latest, |_| ()).unwrap(),
            ReportCounts::default()
        );
    }

    #[test]
    fn counts_cover_every_exchange_when_only_differing_rows_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffs.db");
        let mut store = DiffStore::open(&path, 1000, Duration::from_secs(3600))
            .unwrap()
            .writing_as("pod-1", 0.0);
        let mut records: Vec<DiffRecord> = (0..30).map(|_| record("orders", "match")).collect();
        records.extend((0..4).map(|_| record("orders", "mismatch")));
        records.push(DiffRecord {
            shadow_status: None,
            ..record("orders", "shadow_error")
        });
        records.push(record("orders", "noise"));
        store.insert(&records).unwrap();

        // Rows: only what differed. Counts: everything.
        let rows = read_records(&path, &Filter::default()).unwrap();
        assert_eq!(rows.len(), 6);
        let mut streamed = 0;
        let counts = scan_for_report(&path, &Filter::default(), |_| streamed += 1)
            .unwrap()
            .exchanges;
        assert_eq!(streamed, 6);
        let total: u64 = counts.iter().map(|count| count.exchanges).sum();
        assert_eq!(total, 36);
        let errors = counts
            .iter()
            .find(|c| c.verdict == Verdict::ShadowError)
            .unwrap();
        assert_eq!((errors.shadow_status, errors.exchanges), (None, 1));
        assert_eq!(errors.primary_upstream.as_deref(), Some("legacy"));

        let location = StoreLocation::Sqlite(path.clone());
        let summary = summary(
            &location,
            None,
            &SummaryQuery {
                filter: Filter::default(),
                bucket_ms: 0,
            },
        )
        .unwrap();
        assert_eq!(summary.len(), 1);
        let row = &summary[0];
        assert_eq!(
            (
                row.exchanges,
                row.matches,
                row.mismatches,
                row.noise,
                row.errors
            ),
            (36, 30, 4, 1, 1)
        );
        assert_eq!(row.candidate_upstream.as_deref(), Some("new"));
        assert_eq!(row.generation, Some(1));
        let hourly = super::summary(
            &location,
            None,
            &SummaryQuery {
                filter: Filter::default(),
                bucket_ms: 3_600_000,
            },
        )
        .unwrap();
        assert_eq!(hourly.len(), 1);
        assert_eq!(hourly[0].bucket_ms % 3_600_000, 0);
        assert_eq!(hourly[0].bucket_ms, now_ms() - now_ms() % 3_600_000);

        // The replica filter applies to rows and counts alike.
        let other = Filter {
            replica: Some("pod-2".into()),
            ..Filter::default()
        };
        assert!(
            scan_for_report(&path, &other, |_| ())
                .unwrap()
                .exchanges
                .is_empty()
        );
        let mine = Filter {
            replica: Some("pod-1".into()),
            ..Filter::default()
        };
        assert_eq!(read_records(&path, &mine).unwrap().len(), 6);
    }

    #[test]
    fn the_migration_to_counts_counts_the_rows_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(VERSION_ZERO)
            .unwrap();
        drop(DiffStore::open(&path, 100, Duration::from_secs(3600)).unwrap());
        let counts = scan_for_report(&path, &Filter::default(), |_| ())
            .unwrap()
            .exchanges;
        assert_eq!(counts.len(), 1);
        assert_eq!(
            (
                counts[0].verdict.as_str(),
                counts[0].exchanges,
                &counts[0].generation
            ),
            ("mismatch", 1, &None)
        );
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
