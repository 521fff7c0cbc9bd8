//! Recorded requests: the `recorded_requests` table beside the diffs, in SQLite and Postgres,
//! its per-route retention (rows, bytes, age) and the read `strangler corpus export` runs.
//!
//! What a row holds is already redacted ([`crate::corpus`] redacts before anything is queued);
//! this module only persists and trims. The table is created `IF NOT EXISTS` when a writer opens
//! the store, outside the diffs' versioned migrations ([`super::MIGRATIONS`]): it has no column
//! another table depends on, so it needs no ordering with their steps, and a strangler that
//! predates recording reads and migrates the same file without noticing it.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};

use super::{PostgresUrl, StoreError, StoreLocation, now_ms};

const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS recorded_requests (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        replica TEXT NOT NULL,
        route TEXT NOT NULL,
        method TEXT NOT NULL,
        target TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BLOB NOT NULL,
        size INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS recorded_requests_route_time ON recorded_requests (route, at_ms);";

const POSTGRES_SCHEMA: &str = "SELECT pg_advisory_xact_lock(7307206108372467303);
    CREATE TABLE IF NOT EXISTS recorded_requests (
        id BIGSERIAL PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        replica TEXT NOT NULL,
        route TEXT NOT NULL,
        method TEXT NOT NULL,
        target TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BYTEA NOT NULL,
        size BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS recorded_requests_route_time ON recorded_requests (route, at_ms);";

/// One recorded request, redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    pub route: String,
    pub method: String,
    /// Path and query, as the client sent them (secrets redacted).
    pub target: String,
    /// In the client's order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// What the row counts against its route's `max_bytes`.
    pub fn size(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum();
        (self.method.len() + self.target.len() + headers + self.body.len()) as u64
    }
}

/// How much of a route's recording a store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_rows: u64,
    pub max_bytes: u64,
    pub max_age: Duration,
}

/// Which recorded requests a read returns, oldest first.
#[derive(Debug, Clone, Default)]
pub struct CorpusFilter {
    pub route: Option<String>,
    pub since_ms: i64,
    pub limit: Option<u64>,
}

/// Writes recorded requests; owned by the recording worker.
pub enum CorpusWriter {
    Sqlite {
        connection: Connection,
        path: String,
    },
    Postgres {
        client: ::postgres::Client,
        store: String,
    },
}

fn sqlite_error(path: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

fn pg_error(store: &str) -> impl Fn(::postgres::Error) -> StoreError + '_ {
    move |source| StoreError::Postgres {
        store: store.to_owned(),
        source,
    }
}

impl CorpusWriter {
    /// Opens `location` for writing and creates the table if it is not there.
    pub fn open(
        location: &StoreLocation,
        password_file: Option<&Path>,
    ) -> Result<Self, StoreError> {
        match location {
            StoreLocation::Sqlite(path) => {
                let shown = path.display().to_string();
                let error = sqlite_error(&shown);
                let connection = Connection::open(path).map_err(&error)?;
                // The diff worker writes the same file: wait for its transactions.
                connection
                    .busy_timeout(Duration::from_secs(5))
                    .map_err(&error)?;
                connection
                    .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
                    .map_err(&error)?;
                connection.execute_batch(SQLITE_SCHEMA).map_err(&error)?;
                Ok(Self::Sqlite {
                    connection,
                    path: shown.clone(),
                })
            }
            StoreLocation::Postgres(url) => {
                let store = url.redacted();
                let mut client = super::postgres::connect(url, password_file)?;
                let mut transaction = client.transaction().map_err(pg_error(&store))?;
                transaction
                    .batch_execute(POSTGRES_SCHEMA)
                    .map_err(pg_error(&store))?;
                transaction.commit().map_err(pg_error(&store))?;
                Ok(Self::Postgres { client, store })
            }
        }
    }

    /// Stores a batch in one transaction as `replica`, then trims each route it touched to its
    /// retention (each request carries its route's, as configured when it was recorded).
    pub fn insert(
        &mut self,
        replica: &str,
        batch: &[(RecordedRequest, Retention)],
    ) -> Result<(), StoreError> {
        let mut routes: Vec<(&str, Retention)> = Vec::new();
        for (request, retention) in batch {
            match routes.iter_mut().find(|(route, _)| *route == request.route) {
                Some(entry) => entry.1 = *retention,
                None => routes.push((&request.route, *retention)),
            }
        }
        let now = now_ms();
        match self {
            Self::Sqlite { connection, path } => {
                let error = sqlite_error(path);
                let transaction = connection.transaction().map_err(&error)?;
                {
                    let mut insert = transaction
                        .prepare_cached(
                            "INSERT INTO recorded_requests
                             (at_ms, replica, route, method, target, headers, body, size)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        )
                        .map_err(&error)?;
                    for (request, _) in batch {
                        insert
                            .execute(params![
                                request.at_ms,
                                replica,
                                request.route,
                                request.method,
                                request.target,
                                headers_json(&request.headers),
                                request.body,
                                request.size() as i64,
                            ])
                            .map_err(&error)?;
                    }
                    for (route, retention) in &routes {
                        let oldest = now - retention.max_age.as_millis() as i64;
                        transaction
                            .execute(
                                "DELETE FROM recorded_requests WHERE route = ?1 AND at_ms < ?2",
                                params![route, oldest],
                            )
                            .map_err(&error)?;
                        // Newest first, the rows past the row cap or past the byte cap go.
                        transaction
                            .execute(
                                "DELETE FROM recorded_requests WHERE id IN (
                                   SELECT id FROM (
                                     SELECT id, ROW_NUMBER() OVER (ORDER BY id DESC) AS n,
                                            SUM(size) OVER (ORDER BY id DESC) AS total
                                     FROM recorded_requests WHERE route = ?1)
                                   WHERE n > ?2 OR total > ?3)",
                                params![
                                    route,
                                    i64::try_from(retention.max_rows).unwrap_or(i64::MAX),
                                    i64::try_from(retention.max_bytes).unwrap_or(i64::MAX)
                                ],
                            )
                            .map_err(&error)?;
                    }
                }
                transaction.commit().map_err(&error)
            }
            Self::Postgres { client, store } => {
                let error = pg_error(store);
                let mut transaction = client.transaction().map_err(&error)?;
                let insert = transaction
                    .prepare(
                        "INSERT INTO recorded_requests
                         (at_ms, replica, route, method, target, headers, body, size)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .map_err(&error)?;
                for (request, _) in batch {
                    transaction
                        .execute(
                            &insert,
                            &[
                                &request.at_ms,
                                &replica,
                                &request.route,
                                &request.method,
                                &request.target,
                                &headers_json(&request.headers),
                                &request.body,
                                &(request.size() as i64),
                            ],
                        )
                        .map_err(&error)?;
                }
                for (route, retention) in &routes {
                    let oldest = now - retention.max_age.as_millis() as i64;
                    transaction
                        .execute(
                            "DELETE FROM recorded_requests WHERE route = $1 AND at_ms < $2",
                            &[route, &oldest],
                        )
                        .map_err(&error)?;
                    transaction
                        .execute(
                            "DELETE FROM recorded_requests WHERE id IN (
                               SELECT id FROM (
                                 SELECT id, ROW_NUMBER() OVER (ORDER BY id DESC) AS n,
                                        (SUM(size) OVER (ORDER BY id DESC))::BIGINT AS total
                                 FROM recorded_requests WHERE route = $1) r
                               WHERE n > $2 OR total > $3)",
                            &[
                                route,
                                &i64::try_from(retention.max_rows).unwrap_or(i64::MAX),
                                &i64::try_from(retention.max_bytes).unwrap_or(i64::MAX),
                            ],
                        )
                        .map_err(&error)?;
                }
                transaction.commit().map_err(&error)
            }
        }
    }
}

fn headers_json(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).expect("headers serialize")
}

fn parse_headers(text: &str) -> Vec<(String, String)> {
    serde_json::from_str(text).unwrap_or_default()
}

/// The recorded requests of `location` that `filter` selects, oldest first. A store nothing
/// was recorded in has none (not an error: recording may just not have started).
pub fn read_recorded(
    location: &StoreLocation,
    password_file: Option<&Path>,
    filter: &CorpusFilter,
) -> Result<Vec<RecordedRequest>, StoreError> {
    let limit = filter
        .limit
        .map_or(i64::MAX, |limit| i64::try_from(limit).unwrap_or(i64::MAX));
    match location {
        StoreLocation::Sqlite(path) => read_sqlite(path, filter, limit),
        StoreLocation::Postgres(url) => read_postgres(url, password_file, filter, limit),
    }
}

fn read_sqlite(
    path: &Path,
    filter: &CorpusFilter,
    limit: i64,
) -> Result<Vec<RecordedRequest>, StoreError> {
    let shown = path.display().to_string();
    let error = sqlite_error(&shown);
    if !path.exists() {
        return Err(StoreError::NoStore {
            store: shown.clone(),
        });
    }
    let connection =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(&error)?;
    let exists: bool = connection
        .query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE name = 'recorded_requests'",
            [],
            |row| row.get(0),
        )
        .map_err(&error)?;
    if !exists {
        return Ok(Vec::new());
    }
    // The newest `limit` requests, given back oldest first.
    let mut statement = connection
        .prepare(
            "SELECT at_ms, route, method, target, headers, body FROM (
               SELECT id, at_ms, route, method, target, headers, body FROM recorded_requests
               WHERE (?1 IS NULL OR route = ?1) AND at_ms >= ?2
               ORDER BY id DESC LIMIT ?3)
             ORDER BY id",
        )
        .map_err(&error)?;
    let rows = statement
        .query_map(params![filter.route, filter.since_ms, limit], |row| {
            Ok(RecordedRequest {
                at_ms: row.get(0)?,
                route: row.get(1)?,
                method: row.get(2)?,
                target: row.get(3)?,
                headers: parse_headers(&row.get::<_, String>(4)?),
                body: row.get(5)?,
            })
        })
        .map_err(&error)?;
    rows.collect::<Result<_, _>>().map_err(&error)
}

fn read_postgres(
    url: &PostgresUrl,
    password_file: Option<&Path>,
    filter: &CorpusFilter,
    limit: i64,
) -> Result<Vec<RecordedRequest>, StoreError> {
    let store = url.redacted();
    let error = pg_error(&store);
    let mut client = super::postgres::connect(url, password_file)?;
    let exists: bool = client
        .query_one("SELECT to_regclass('recorded_requests') IS NOT NULL", &[])
        .map_err(&error)?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT at_ms, route, method, target, headers, body FROM (
               SELECT id, at_ms, route, method, target, headers, body FROM recorded_requests
               WHERE ($1::TEXT IS NULL OR route = $1) AND at_ms >= $2
               ORDER BY id DESC LIMIT $3) r
             ORDER BY id",
            &[&filter.route, &filter.since_ms, &limit],
        )
        .map_err(&error)?;
    Ok(rows
        .into_iter()
        .map(|row| RecordedRequest {
            at_ms: row.get(0),
            route: row.get(1),
            method: row.get(2),
            target: row.get(3),
            headers: parse_headers(row.get(4)),
            body: row.get(5),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(route: &str, body: usize) -> RecordedRequest {
        RecordedRequest {
            at_ms: now_ms(),
            route: route.into(),
            method: "GET".into(),
            target: "/a?b=1".into(),
            headers: vec![("accept".into(), "*/*".into())],
            body: vec![b'x'; body],
        }
    }

    const FOREVER: Retention = Retention {
        max_rows: 1000,
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(3600),
    };

    #[test]
    fn recorded_requests_round_trip_oldest_first_and_filtered_by_route() {
        let dir = tempfile::tempdir().unwrap();
        let location = StoreLocation::Sqlite(dir.path().join("s.db"));
        let mut writer = CorpusWriter::open(&location, None).unwrap();
        let mut first = request("a", 3);
        first.target = "/first".into();
        writer
            .insert(
                "r1",
                &[
                    (first.clone(), FOREVER),
                    (request("b", 0), FOREVER),
                    (request("a", 0), FOREVER),
                ],
            )
            .unwrap();
        let filter = CorpusFilter {
            route: Some("a".into()),
            ..CorpusFilter::default()
        };
        let read = read_recorded(&location, None, &filter).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0], first);
        let limited = CorpusFilter {
            limit: Some(1),
            ..CorpusFilter::default()
        };
        let read = read_recorded(&location, None, &limited).unwrap();
        assert_eq!(read.len(), 1, "the newest one");
        assert_eq!(read[0].route, "a");
    }

    #[test]
    fn a_route_keeps_at_most_its_rows_and_bytes_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let location = StoreLocation::Sqlite(dir.path().join("s.db"));
        let mut writer = CorpusWriter::open(&location, None).unwrap();
        let rows = Retention {
            max_rows: 3,
            ..FOREVER
        };
        let batch: Vec<_> = (0..5).map(|_| (request("a", 10), rows)).collect();
        writer.insert("r", &batch).unwrap();
        writer
            .insert("r", &[(request("other", 10), FOREVER)])
            .unwrap();
        let all = CorpusFilter::default();
        let read = read_recorded(&location, None, &all).unwrap();
        assert_eq!(read.iter().filter(|r| r.route == "a").count(), 3);
        assert_eq!(read.iter().filter(|r| r.route == "other").count(), 1);

        let size = request("a", 10).size();
        let bytes = Retention {
            max_bytes: size * 2,
            ..FOREVER
        };
        writer.insert("r", &[(request("a", 10), bytes)]).unwrap();
        let read = read_recorded(&location, None, &all).unwrap();
        assert_eq!(read.iter().filter(|r| r.route == "a").count(), 2);
    }

    #[test]
    fn a_store_without_recordings_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        super::super::DiffStore::open(&path, 10, Duration::from_secs(60)).unwrap();
        let read =
            read_recorded(&StoreLocation::Sqlite(path), None, &CorpusFilter::default()).unwrap();
        assert!(read.is_empty());
    }
}
