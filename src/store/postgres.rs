//! The Postgres diff store: one database shared by every replica, so that one `strangler report`
//! sees all the exchanges of a fleet.
//!
//! Owns the Postgres schema and its versioned migrations, the store writer (a thread of its own
//! behind a queue bounded by bytes, see [`Writer`]), retention, and the queries a report and a summary
//! run. Rows carry the replica that wrote them. What is counted and what is stored as a row is
//! decided in [`super::aggregate`], the same for SQLite.
//!
//! The proxy never waits on Postgres: the diff worker hands each batch to [`Writer::submit`],
//! which never blocks. A batch that finds the queue full, or Postgres unreachable, is dropped and
//! counted (`strangler_diff_store_dropped_total`), and the writer reconnects with backoff. TLS
//! follows the URL's `sslmode` (see [`super::tls`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, IsolationLevel};

use super::aggregate::{
    self, SummaryQuery, SummaryRow, Value, known, known_generation, known_status,
};
use super::location::PostgresUrl;
use super::summary::{CountedBucket, Counts, ExchangeWithNeighbours, Grouping, StoredExchange};
use super::{
    DiffRecord, DifferingExchange, ExchangeCount, Filter, GenerationFilter, ReportCounts,
    ShapeCount, StoreError, now_ms,
};
use crate::metrics::Metrics;
use crate::vocabulary::DropReason;

/// Schema migrations, in order: `MIGRATIONS[n]` takes a database from version n to n + 1 (the
/// version is the row of `strangler_schema_version`). Append new steps; never edit one that has
/// shipped.
pub const MIGRATIONS: &[&str] = &[
    // 1: exchanges (mismatches and sampled matches) and the per-minute counts of all of them.
    "CREATE TABLE diffs (
        id BIGSERIAL PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        replica TEXT NOT NULL,
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
        shadow_sample TEXT,
        primary_upstream TEXT,
        candidate_upstream TEXT,
        stage TEXT,
        generation BIGINT,
        config_sha256 TEXT
    );
    CREATE INDEX diffs_at ON diffs (at_ms);
    CREATE INDEX diffs_route_at ON diffs (route, at_ms);
    -- A report reads only the exchanges that differed, in order.
    CREATE INDEX diffs_differing ON diffs (id) WHERE verdict <> 'match';
    CREATE TABLE diff_counts (
        minute_ms BIGINT NOT NULL,
        replica TEXT NOT NULL,
        route TEXT NOT NULL,
        primary_upstream TEXT NOT NULL,
        candidate_upstream TEXT NOT NULL,
        stage TEXT NOT NULL,
        generation BIGINT NOT NULL,
        config_sha256 TEXT NOT NULL,
        verdict TEXT NOT NULL,
        primary_status INTEGER NOT NULL,
        shadow_status INTEGER NOT NULL,
        exchanges BIGINT NOT NULL,
        last_at_ms BIGINT NOT NULL,
        PRIMARY KEY (minute_ms, replica, route, primary_upstream, candidate_upstream, stage,
                     generation, config_sha256, verdict, primary_status, shadow_status)
    );",
    // 2: per-minute counts of the compared exchanges (shadow errors left out) per request shape
    // (`GET /orders/*`), which the suggestions measure a path's noise against: counted for
    // every exchange, since the rows hold only a sample of the matching ones.
    "CREATE TABLE diff_shape_counts (
        minute_ms BIGINT NOT NULL,
        replica TEXT NOT NULL,
        route TEXT NOT NULL,
        primary_upstream TEXT NOT NULL,
        candidate_upstream TEXT NOT NULL,
        generation BIGINT NOT NULL,
        config_sha256 TEXT NOT NULL,
        verdict TEXT NOT NULL,
        shape TEXT NOT NULL,
        exchanges BIGINT NOT NULL,
        last_at_ms BIGINT NOT NULL,
        PRIMARY KEY (minute_ms, replica, route, primary_upstream, candidate_upstream,
                     generation, config_sha256, verdict, shape)
    );",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The first schema version with per-shape counts (`diff_shape_counts`).
const SHAPES_VERSION: i64 = 2;

/// Bytes the waiting batches may hold (estimated from their text); more are dropped. The only
/// bound on the queue: the diff worker hands over whatever it judged since its last hand-over,
/// often one or two exchanges, so a bound on the number of batches filled up at a few thousand
/// exchanges a second while Postgres kept up (every batch is at least a record's fixed
/// estimate, so the count stays bounded too).
const QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// Most exchanges written in one transaction (queued batches are merged up to it).
const MAX_WRITE: usize = 4096;
/// First and longest wait between two connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Longest a statement may run: a stuck database must not hold the writer forever.
const STATEMENT_TIMEOUT: &str = "15s";
/// How often retention runs.
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Where and how the writer stores.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub url: PostgresUrl,
    pub password_file: Option<PathBuf>,
    pub replica: String,
    pub max_rows: u64,
    pub max_age: Duration,
    pub match_sample: f64,
}

/// The handle the diff worker writes through. Cheap; the thread ends when it is dropped.
pub struct Writer {
    queue: Sender<Vec<DiffRecord>>,
    queued_bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// Starts the writer thread. It connects (and migrates) when the first batch arrives, so an
    /// unreachable database never stops the proxy from starting.
    pub fn start(settings: WriterSettings, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let (queue, batches) = channel();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let thread_bytes = queued_bytes.clone();
        let thread_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("diff-store".into())
            .spawn(move || run(batches, settings, thread_bytes, thread_metrics))?;
        Ok(Self {
            queue,
            queued_bytes,
            metrics,
        })
    }

    /// Queues `records` for writing; never blocks. When the queue holds its budget of bytes
    /// they are dropped and counted.
    pub fn submit(&self, records: Vec<DiffRecord>) {
        let bytes = estimated_bytes(&records);
        if !reserve(&self.queued_bytes, bytes, QUEUE_BYTES) {
            dropped(&self.metrics, DropReason::QueueFull, records.len());
            return;
        }
        if let Err(unsent) = self.queue.send(records) {
            // The writer thread is gone (it only ends with this handle, or by panicking).
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            dropped(&self.metrics, DropReason::QueueFull, unsent.0.len());
        }
    }
}

/// Counts `bytes` into `queued` when they fit under `limit`; `false` (and nothing counted)
/// when they do not.
fn reserve(queued: &AtomicUsize, bytes: usize, limit: usize) -> bool {
    if queued.fetch_add(bytes, Ordering::Relaxed) + bytes > limit {
        queued.fetch_sub(bytes, Ordering::Relaxed);
        return false;
    }
    true
}

fn dropped(metrics: &Metrics, reason: DropReason, exchanges: usize) {
    metrics
        .diff_store_dropped
        .with_label_values(&[reason.as_str()])
        .inc_by(exchanges as u64);
}

/// What a batch holds in memory, near enough to bound the queue by bytes.
fn estimated_bytes(records: &[DiffRecord]) -> usize {
    let text = |text: &Option<String>| text.as_ref().map_or(0, String::len);
    records
        .iter()
        .map(|record| {
            let differences: usize = record
                .differences
                .iter()
                .chain(&record.noise)
                .map(|d| d.path.len() + text(&d.primary) + text(&d.shadow) + 64)
                .sum();
            256 + record.route.len()
                + record.path.len()
                + text(&record.query)
                + record.request_id.len()
                + text(&record.primary_sample)
                + text(&record.shadow_sample)
                + differences
        })
        .sum()
}

fn run(
    batches: Receiver<Vec<DiffRecord>>,
    settings: WriterSettings,
    queued_bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    let shown = settings.url.redacted();
    let mut client: Option<Client> = None;
    let mut backoff = BACKOFF_MIN;
    let mut retry_at = Instant::now();
    let mut trimmed_at = Instant::now();
    while let Ok(mut batch) = batches.recv() {
        queued_bytes.fetch_sub(estimated_bytes(&batch), Ordering::Relaxed);
        // Batches that queued up while the last write ran go into this one: one transaction
        // and one commit for all of them, so a slow commit makes writes bigger, not the queue
        // longer.
        while batch.len() < MAX_WRITE {
            let Ok(more) = batches.try_recv() else {
                break;
            };
            queued_bytes.fetch_sub(estimated_bytes(&more), Ordering::Relaxed);
            batch.extend(more);
        }
        if client.is_none() {
            if Instant::now() < retry_at {
                dropped(&metrics, DropReason::Unavailable, batch.len());
                continue;
            }
            match connect(&settings.url, settings.password_file.as_deref())
                .and_then(|mut connected| migrate(&mut connected, &shown).map(|()| connected))
            {
                Ok(connected) => {
                    if backoff > BACKOFF_MIN {
                        tracing::info!(store = %shown, "diff store reachable again");
                    }
                    backoff = BACKOFF_MIN;
                    client = Some(connected);
                }
                Err(error) => {
                    metrics.diff_store_errors.with_label_values(&["open"]).inc();
                    tracing::warn!(
                        %error,
                        retry_in = ?backoff,
                        "cannot reach the diff store; diffs are counted in metrics but dropped"
                    );
                    dropped(&metrics, DropReason::Unavailable, batch.len());
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        let connected = client.as_mut().expect("connected above");
        match write(connected, &settings, &batch) {
            Ok(()) => {
                metrics.diff_store_written.inc_by(batch.len() as u64);
            }
            Err(error) => {
                metrics
                    .diff_store_errors
                    .with_label_values(&["write"])
                    .inc();
                dropped(&metrics, DropReason::WriteFailed, batch.len());
                tracing::warn!(
                    store = %shown,
                    %error,
                    exchanges = batch.len(),
                    "cannot store diffs"
                );
                if connected.is_closed() || connected.is_valid(Duration::from_secs(2)).is_err() {
                    client = None;
                    retry_at = Instant::now() + backoff;
                }
                continue;
            }
        }
        if trimmed_at.elapsed() >= TRIM_EVERY {
            trimmed_at = Instant::now();
            if let Err(error) = trim(connected, settings.max_rows, settings.max_age) {
                metrics.diff_store_errors.with_label_values(&["trim"]).inc();
                tracing::warn!(store = %shown, %error, "diff store retention failed");
            }
        }
    }
}

/// The password when the URL has none: `STRANGLER_DIFF_STORE_PASSWORD`, else the first line
/// of `file` (read at every connection, so a rotated secret is picked up).
pub fn password(file: Option<&Path>) -> Result<Option<String>, StoreError> {
    if let Some(password) = std::env::var("STRANGLER_DIFF_STORE_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
    {
        return Ok(Some(password));
    }
    let Some(file) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file).map_err(|source| StoreError::PasswordFile {
        path: file.display().to_string(),
        source,
    })?;
    Ok(Some(text.lines().next().unwrap_or_default().to_owned()))
}

/// Opens a connection. The URL's password, if any, wins over `password_file`.
pub fn connect(url: &PostgresUrl, password_file: Option<&Path>) -> Result<Client, StoreError> {
    let password = if url.has_password() {
        None
    } else {
        password(password_file)?
    };
    let tls = super::tls::connector(url.tls()).map_err(|source| StoreError::Tls {
        store: url.redacted(),
        source,
    })?;
    let mut client = url
        .config(password.as_deref())
        .connect(tls)
        .map_err(|source| {
            // The client's own word for "the server asked for a password and there is none".
            let cause = std::error::Error::source(&source).map(ToString::to_string);
            if password.is_none()
                && !url.has_password()
                && cause.is_some_and(|cause| cause.contains("password missing"))
            {
                StoreError::NoPassword {
                    store: url.redacted(),
                }
            } else {
                StoreError::Postgres {
                    store: url.redacted(),
                    source,
                }
            }
        })?;
    client
        .batch_execute(&format!(
            "SET statement_timeout = '{STATEMENT_TIMEOUT}'; SET lock_timeout = '{STATEMENT_TIMEOUT}'"
        ))
        .map_err(|source| StoreError::Postgres {
            store: url.redacted(),
            source,
        })?;
    Ok(client)
}

fn pg_error(store: &str) -> impl Fn(postgres::Error) -> StoreError + '_ {
    move |source| StoreError::Postgres {
        store: store.to_owned(),
        source,
    }
}

/// Brings the database up to [`SCHEMA_VERSION`], one step per transaction. A transaction-level
/// advisory lock serializes replicas starting together, so no step runs twice.
pub fn migrate(client: &mut Client, store: &str) -> Result<(), StoreError> {
    let error = pg_error(store);
    loop {
        let mut transaction = client.transaction().map_err(&error)?;
        transaction
            .batch_execute(
                "SELECT pg_advisory_xact_lock(7307206108372467302);
                 CREATE TABLE IF NOT EXISTS strangler_schema_version (version BIGINT NOT NULL);",
            )
            .map_err(&error)?;
        let version: i64 = transaction
            .query_opt("SELECT version FROM strangler_schema_version", &[])
            .map_err(&error)?
            .map_or(0, |row| row.get(0));
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: store.to_owned(),
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
        transaction.batch_execute(step).map_err(&error)?;
        transaction
            .execute("DELETE FROM strangler_schema_version", &[])
            .map_err(&error)?;
        transaction
            .execute(
                "INSERT INTO strangler_schema_version (version) VALUES ($1)",
                &[&(version + 1)],
            )
            .map_err(&error)?;
        transaction.commit().map_err(&error)?;
    }
}

/// Writes one batch in one transaction: the counts of every exchange, and the rows to keep.
/// Both statements take arrays (`UNNEST`), so a batch is two round trips whatever its size.
fn write(
    client: &mut Client,
    settings: &WriterSettings,
    batch: &[DiffRecord],
) -> Result<(), postgres::Error> {
    let mut buckets = aggregate::buckets(batch);
    // One order for every writer, so that two processes sharing a replica name cannot deadlock.
    buckets.sort_by(|(a, _), (b, _)| {
        (a.minute_ms, &a.route, &a.verdict, a.generation).cmp(&(
            b.minute_ms,
            &b.route,
            &b.verdict,
            b.generation,
        ))
    });
    let rows: Vec<&DiffRecord> = batch
        .iter()
        .filter(|record| aggregate::keep_row(record, settings.match_sample))
        .collect();
    let mut transaction = client.transaction()?;
    if !rows.is_empty() {
        let column = |f: fn(&DiffRecord) -> Option<String>| -> Vec<Option<String>> {
            rows.iter().map(|r| f(r)).collect()
        };
        let at: Vec<i64> = rows.iter().map(|r| r.at_ms).collect();
        let route = column(|r| Some(r.route.clone()));
        let method = column(|r| Some(r.method.clone()));
        let path = column(|r| Some(r.path.clone()));
        let query = column(|r| r.query.clone());
        let request_id = column(|r| Some(r.request_id.clone()));
        let primary_status: Vec<Option<i32>> = rows
            .iter()
            .map(|r| r.primary_status.map(i32::from))
            .collect();
        let shadow_status: Vec<Option<i32>> = rows
            .iter()
            .map(|r| r.shadow_status.map(i32::from))
            .collect();
        let verdict = column(|r| Some(r.verdict.as_str().to_owned()));
        let differences = column(|r| serde_json::to_string(&r.differences).ok());
        let noise = column(|r| serde_json::to_string(&r.noise).ok());
        let primary_sample = column(|r| r.primary_sample.clone());
        let shadow_sample = column(|r| r.shadow_sample.clone());
        let primary_upstream = column(|r| r.primary_upstream.clone());
        let candidate_upstream = column(|r| r.candidate_upstream.clone());
        let stage = column(|r| r.stage.clone());
        let generation: Vec<Option<i64>> = rows
            .iter()
            .map(|r| r.generation.map(|g| i64::try_from(g).unwrap_or(i64::MAX)))
            .collect();
        let sha = column(|r| r.config_sha256.clone());
        transaction.execute(
            "INSERT INTO diffs (at_ms, replica, route, method, path, query, request_id,
                primary_status, shadow_status, verdict, differences, noise, primary_sample,
                shadow_sample, primary_upstream, candidate_upstream, stage, generation,
                config_sha256)
             SELECT t.at_ms, $2, t.route, t.method, t.path, t.query, t.request_id,
                t.primary_status, t.shadow_status, t.verdict, t.differences, t.noise,
                t.primary_sample, t.shadow_sample, t.primary_upstream, t.candidate_upstream,
                t.stage, t.generation, t.config_sha256
             FROM UNNEST($1::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::int[], $9::int[], $10::text[], $11::text[], $12::text[],
                $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::bigint[],
                $19::text[])
             AS t(at_ms, route, method, path, query, request_id, primary_status, shadow_status,
                verdict, differences, noise, primary_sample, shadow_sample, primary_upstream,
                candidate_upstream, stage, generation, config_sha256)",
            &[
                &at,
                &settings.replica,
                &route,
                &method,
                &path,
                &query,
                &request_id,
                &primary_status,
                &shadow_status,
                &verdict,
                &differences,
                &noise,
                &primary_sample,
                &shadow_sample,
                &primary_upstream,
                &candidate_upstream,
                &stage,
                &generation,
                &sha,
            ],
        )?;
    }
    let minute: Vec<i64> = buckets.iter().map(|(k, _)| k.minute_ms).collect();
    let text = |f: fn(&aggregate::BucketKey) -> &String| -> Vec<&str> {
        buckets.iter().map(|(k, _)| f(k).as_str()).collect()
    };
    let route = text(|k| &k.route);
    let primary = text(|k| &k.primary_upstream);
    let candidate = text(|k| &k.candidate_upstream);
    let stage = text(|k| &k.stage);
    let generation: Vec<i64> = buckets.iter().map(|(k, _)| k.generation).collect();
    let sha = text(|k| &k.config_sha256);
    let verdict = text(|k| &k.verdict);
    let primary_status: Vec<i32> = buckets.iter().map(|(k, _)| k.primary_status).collect();
    let shadow_status: Vec<i32> = buckets.iter().map(|(k, _)| k.shadow_status).collect();
    let exchanges: Vec<i64> = buckets.iter().map(|(_, c)| c.exchanges).collect();
    let last: Vec<i64> = buckets.iter().map(|(_, c)| c.last_at_ms).collect();
    transaction.execute(
        "INSERT INTO diff_counts (minute_ms, replica, route, primary_upstream, candidate_upstream,
            stage, generation, config_sha256, verdict, primary_status, shadow_status, exchanges,
            last_at_ms)
         SELECT t.minute_ms, $2, t.route, t.primary_upstream, t.candidate_upstream, t.stage,
            t.generation, t.config_sha256, t.verdict, t.primary_status, t.shadow_status,
            t.exchanges, t.last_at_ms
         FROM UNNEST($1::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[],
            $8::text[], $9::text[], $10::int[], $11::int[], $12::bigint[], $13::bigint[])
         AS t(minute_ms, route, primary_upstream, candidate_upstream, stage, generation,
            config_sha256, verdict, primary_status, shadow_status, exchanges, last_at_ms)
         ON CONFLICT (minute_ms, replica, route, primary_upstream, candidate_upstream, stage,
            generation, config_sha256, verdict, primary_status, shadow_status)
         DO UPDATE SET exchanges = diff_counts.exchanges + EXCLUDED.exchanges,
            last_at_ms = GREATEST(diff_counts.last_at_ms, EXCLUDED.last_at_ms)",
        &[
            &minute,
            &settings.replica,
            &route,
            &primary,
            &candidate,
            &stage,
            &generation,
            &sha,
            &verdict,
            &primary_status,
            &shadow_status,
            &exchanges,
            &last,
        ],
    )?;
    let shapes = aggregate::shape_buckets(batch);
    if !shapes.is_empty() {
        let minute: Vec<i64> = shapes.iter().map(|(k, _)| k.minute_ms).collect();
        let text = |f: fn(&aggregate::ShapeKey) -> &String| -> Vec<&str> {
            shapes.iter().map(|(k, _)| f(k).as_str()).collect()
        };
        let route = text(|k| &k.route);
        let primary = text(|k| &k.primary_upstream);
        let candidate = text(|k| &k.candidate_upstream);
        let generation: Vec<i64> = shapes.iter().map(|(k, _)| k.generation).collect();
        let sha = text(|k| &k.config_sha256);
        let verdict = text(|k| &k.verdict);
        let shape = text(|k| &k.shape);
        let exchanges: Vec<i64> = shapes.iter().map(|(_, c)| c.exchanges).collect();
        let last: Vec<i64> = shapes.iter().map(|(_, c)| c.last_at_ms).collect();
        transaction.execute(
            "INSERT INTO diff_shape_counts (minute_ms, replica, route, primary_upstream,
                candidate_upstream, generation, config_sha256, verdict, shape, exchanges,
                last_at_ms)
             SELECT t.minute_ms, $2, t.route, t.primary_upstream, t.candidate_upstream,
                t.generation, t.config_sha256, t.verdict, t.shape, t.exchanges, t.last_at_ms
             FROM UNNEST($1::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bigint[])
             AS t(minute_ms, route, primary_upstream, candidate_upstream, generation,
                config_sha256, verdict, shape, exchanges, last_at_ms)
             ON CONFLICT (minute_ms, replica, route, primary_upstream, candidate_upstream,
                generation, config_sha256, verdict, shape)
             DO UPDATE SET exchanges = diff_shape_counts.exchanges + EXCLUDED.exchanges,
                last_at_ms = GREATEST(diff_shape_counts.last_at_ms, EXCLUDED.last_at_ms)",
            &[
                &minute,
                &settings.replica,
                &route,
                &primary,
                &candidate,
                &generation,
                &sha,
                &verdict,
                &shape,
                &exchanges,
                &last,
            ],
        )?;
    }
    transaction.commit()
}

/// Retention, in the database: rows and counts past `max_age`, then the oldest rows beyond
/// `max_rows` (of all replicas together).
pub fn trim(client: &mut Client, max_rows: u64, max_age: Duration) -> Result<(), postgres::Error> {
    let oldest = now_ms() - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX / 2);
    let max_rows = i64::try_from(max_rows).unwrap_or(i64::MAX);
    client.execute("DELETE FROM diffs WHERE at_ms < $1", &[&oldest])?;
    client.execute(
        "DELETE FROM diff_counts WHERE minute_ms < $1",
        &[&(oldest - aggregate::BUCKET_MS)],
    )?;
    client.execute(
        "DELETE FROM diff_shape_counts WHERE minute_ms < $1",
        &[&(oldest - aggregate::BUCKET_MS)],
    )?;
    client.execute(
        "DELETE FROM diffs WHERE id <= (SELECT MAX(id) FROM diffs) - $1",
        &[&max_rows],
    )?;
    Ok(())
}

/// `?` placeholders numbered for Postgres (`$1`, `$2`, ...). The SQL here has no `?` elsewhere.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

fn boxed(values: Vec<Value>) -> Vec<Box<dyn ToSql + Sync>> {
    values
        .into_iter()
        .map(|value| -> Box<dyn ToSql + Sync> {
            match value {
                Value::Int(number) => Box::new(number),
                Value::Text(text) => Box::new(text),
            }
        })
        .collect()
}

fn refs(values: &[Box<dyn ToSql + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|value| value.as_ref()).collect()
}

/// A read-only connection to a database whose schema this build understands.
fn open_reader(url: &PostgresUrl, password_file: Option<&Path>) -> Result<Client, StoreError> {
    open_reader_versioned(url, password_file).map(|(client, _)| client)
}

/// [`open_reader`], with the database's schema version.
fn open_reader_versioned(
    url: &PostgresUrl,
    password_file: Option<&Path>,
) -> Result<(Client, i64), StoreError> {
    let shown = url.redacted();
    let mut client = connect(url, password_file)?;
    // Two queries: a missing table fails a query that names it, whatever branch it is in.
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('strangler_schema_version') IS NOT NULL",
            &[],
        )
        .map_err(pg_error(&shown))?
        .get(0);
    let version: Option<i64> = if exists {
        client
            .query_one("SELECT MAX(version) FROM strangler_schema_version", &[])
            .map_err(pg_error(&shown))?
            .get(0)
    } else {
        None
    };
    match version {
        None | Some(0) => Err(StoreError::NoStore { store: shown }),
        Some(found) if found > SCHEMA_VERSION => Err(StoreError::NewerSchema {
            path: shown,
            found,
            supported: SCHEMA_VERSION,
        }),
        Some(version) => Ok((client, version)),
    }
}

/// The conditions on `diffs` (alias `d`) or `diff_counts` (alias `c`) that `filter` asks for,
/// with their values. `--since-reload` (`Latest`) is per replica: each replica's newest
/// generation, after the last exchange of a higher one (an earlier run of that replica).
fn conditions(filter: &Filter, counts: bool) -> (String, Vec<Value>) {
    let mut sql;
    let mut values = Vec::new();
    if counts {
        sql = String::from("c.minute_ms > ?");
        values.push(Value::Int(filter.since_ms - aggregate::BUCKET_MS));
    } else {
        sql = String::from("c.at_ms >= ?");
        values.push(Value::Int(filter.since_ms));
    }
    if let Some(route) = &filter.route {
        sql.push_str(" AND c.route = ?");
        values.push(Value::Text(route.clone()));
    }
    if let Some(replica) = &filter.replica {
        sql.push_str(" AND c.replica = ?");
        values.push(Value::Text(replica.clone()));
    }
    if let Some(verdict) = &filter.verdict {
        sql.push_str(" AND c.verdict = ?");
        values.push(Value::Text(verdict.as_str().to_owned()));
    }
    match filter.generation {
        None => {}
        Some(GenerationFilter::Number(number)) => {
            sql.push_str(" AND c.generation = ?");
            values.push(Value::Int(i64::try_from(number).unwrap_or(i64::MAX)));
        }
        Some(GenerationFilter::Latest) => {
            let at = if counts { "c.last_at_ms" } else { "c.at_ms" };
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM latest l WHERE l.replica = c.replica
                   AND l.generation = c.generation AND l.config_sha256 = c.config_sha256
                   AND {at} > l.after_ms)"
            ));
        }
    }
    (sql, values)
}

/// Each replica's newest generation and when the last exchange of a higher one was.
const LATEST: &str = "WITH newest AS (
        SELECT DISTINCT ON (replica) replica, generation, config_sha256
        FROM diff_counts WHERE generation >= 0 ORDER BY replica, last_at_ms DESC),
    latest AS (
        SELECT n.replica, n.generation, n.config_sha256,
               COALESCE((SELECT MAX(h.last_at_ms) FROM diff_counts h
                         WHERE h.replica = n.replica AND h.generation > n.generation), -1)
               AS after_ms
        FROM newest n) ";

/// [`super::scan_for_report`] for Postgres: the exchange counts from the aggregates, and every
/// exchange that differed handed to `each`, oldest first, in one snapshot.
pub fn scan_for_report(
    url: &PostgresUrl,
    filter: &Filter,
    mut each: impl FnMut(DifferingExchange),
) -> Result<ReportCounts, StoreError> {
    let shown = url.redacted();
    let error = pg_error(&shown);
    let (mut client, version) = open_reader_versioned(url, None)?;
    let mut transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(&error)?;
    let with = if filter.generation == Some(GenerationFilter::Latest) {
        LATEST
    } else {
        ""
    };
    let (conditions_sql, values) = conditions(filter, true);
    let values = boxed(values);
    let rows = transaction
        .query(
            &numbered(&format!(
                "{with}SELECT c.route, c.verdict, c.primary_status, c.shadow_status,
                        c.primary_upstream, c.candidate_upstream, c.stage, c.generation,
                        c.config_sha256, SUM(c.exchanges)::BIGINT
                 FROM diff_counts c WHERE {conditions_sql}
                 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9"
            )),
            &refs(&values),
        )
        .map_err(&error)?;
    let counts = rows
        .into_iter()
        .map(|row| ExchangeCount {
            route: row.get(0),
            // A word this build does not know counts against the candidate.
            verdict: crate::vocabulary::Verdict::parse(row.get(1))
                .unwrap_or(crate::vocabulary::Verdict::Mismatch),
            primary_status: known_status(row.get(2)),
            shadow_status: known_status(row.get(3)),
            primary_upstream: known(row.get(4)),
            candidate_upstream: known(row.get(5)),
            stage: known(row.get(6)),
            generation: known_generation(row.get(7)),
            config_sha256: known(row.get(8)),
            exchanges: u64::try_from(row.get::<_, i64>(9)).unwrap_or(0),
        })
        .collect();
    let (conditions_sql, values) = conditions(filter, true);
    let values = boxed(values);
    // A database from before the per-shape counts has none: suggestions there measure a path
    // against the differing exchanges only.
    let shapes = if version >= SHAPES_VERSION {
        transaction
            .query(
                &numbered(&format!(
                    "{with}SELECT c.route, c.primary_upstream, c.candidate_upstream, c.shape,
                            SUM(c.exchanges)::BIGINT
                     FROM diff_shape_counts c WHERE {conditions_sql}
                     GROUP BY 1, 2, 3, 4"
                )),
                &refs(&values),
            )
            .map_err(&error)?
            .into_iter()
            .map(|row| ShapeCount {
                route: row.get(0),
                primary_upstream: known(row.get(1)),
                candidate_upstream: known(row.get(2)),
                shape: row.get(3),
                exchanges: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
            })
            .collect()
    } else {
        Vec::new()
    };
    let (conditions_sql, values) = conditions(filter, false);
    let values = boxed(values);
    let mut rows = transaction
        .query_raw(
            &numbered(&format!(
                "{with}SELECT c.route, c.verdict, c.method, c.path, c.query, c.request_id,
                        c.primary_status, c.shadow_status, c.differences, c.noise,
                        c.primary_upstream, c.candidate_upstream
                 FROM diffs c WHERE {conditions_sql} AND c.verdict <> 'match' ORDER BY c.id"
            )),
            values.iter().map(|value| value.as_ref()),
        )
        .map_err(&error)?;
    while let Some(row) = rows.next().map_err(&error)? {
        let status = |index| {
            row.get::<_, Option<i32>>(index)
                .and_then(|s| u16::try_from(s).ok())
        };
        each(DifferingExchange {
            route: row.get(0),
            // A word this build does not know counts against the candidate.
            verdict: crate::vocabulary::Verdict::parse(row.get(1))
                .unwrap_or(crate::vocabulary::Verdict::Mismatch),
            method: row.get(2),
            path: row.get(3),
            query: row.get(4),
            request_id: row.get(5),
            primary_status: status(6),
            shadow_status: status(7),
            differences: serde_json::from_str(row.get(8)).unwrap_or_default(),
            noise: serde_json::from_str(row.get(9)).unwrap_or_default(),
            primary_upstream: row.get(10),
            candidate_upstream: row.get(11),
        });
    }
    drop(rows);
    transaction.commit().map_err(&error)?;
    Ok(ReportCounts {
        exchanges: counts,
        shapes,
    })
}

/// The store-level summary (see [`SummaryRow`]), from the aggregates.
pub fn summary(
    url: &PostgresUrl,
    password_file: Option<&Path>,
    query: &SummaryQuery,
) -> Result<Vec<SummaryRow>, StoreError> {
    let shown = url.redacted();
    let mut client = open_reader(url, password_file)?;
    let values = boxed(aggregate::summary_values(query));
    let rows = client
        .query(&numbered(&aggregate::summary_sql(query)), &refs(&values))
        .map_err(pg_error(&shown))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let count = |index| u64::try_from(row.get::<_, i64>(index)).unwrap_or(0);
            SummaryRow {
                bucket_ms: row.get(0),
                route: row.get(1),
                primary_upstream: known(row.get(2)),
                candidate_upstream: known(row.get(3)),
                generation: known_generation(row.get(4)),
                exchanges: count(5),
                matches: count(6),
                mismatches: count(7),
                noise: count(8),
                errors: count(9),
            }
        })
        .collect())
}

/// The `limit` newest stored exchanges that `filter` selects, newest first.
pub fn read_latest(
    url: &PostgresUrl,
    password_file: Option<&Path>,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<DiffRecord>, StoreError> {
    Ok(page(url, password_file, filter, limit, None)?
        .into_iter()
        .map(|stored| stored.record)
        .collect())
}

/// The `WITH` a filter's conditions need (`--since-reload`), or nothing.
fn with_for(filter: &Filter) -> &'static str {
    if filter.generation == Some(GenerationFilter::Latest) {
        LATEST
    } else {
        ""
    }
}

/// The columns [`stored_exchange`] reads, of `diffs c`.
const COLUMNS: &str = "c.id, c.at_ms, c.route, c.method, c.path, c.query, c.request_id,
    c.primary_status, c.shadow_status, c.verdict, c.differences, c.noise, c.primary_sample,
    c.shadow_sample, c.primary_upstream, c.candidate_upstream, c.stage, c.generation,
    c.config_sha256";

fn stored_exchange(row: &postgres::Row) -> StoredExchange {
    let status = |index| {
        row.get::<_, Option<i32>>(index)
            .and_then(|s| u16::try_from(s).ok())
    };
    StoredExchange {
        id: row.get(0),
        record: DiffRecord {
            at_ms: row.get(1),
            route: row.get(2),
            method: row.get(3),
            path: row.get(4),
            query: row.get(5),
            request_id: row.get(6),
            primary_status: status(7),
            shadow_status: status(8),
            // A word this build does not know counts against the candidate.
            verdict: crate::vocabulary::Verdict::parse(row.get(9))
                .unwrap_or(crate::vocabulary::Verdict::Mismatch),
            differences: serde_json::from_str(row.get(10)).unwrap_or_default(),
            noise: serde_json::from_str(row.get(11)).unwrap_or_default(),
            primary_sample: row.get(12),
            shadow_sample: row.get(13),
            primary_upstream: row.get(14),
            candidate_upstream: row.get(15),
            stage: row.get(16),
            generation: row
                .get::<_, Option<i64>>(17)
                .and_then(|g| u64::try_from(g).ok()),
            config_sha256: row.get(18),
        },
    }
}

/// [`super::summary::page`] for Postgres: up to `limit` stored exchanges `filter` selects,
/// newest first, older than row `before` when given. Ordered by time, then id: the replicas'
/// ids interleave by when their batches were written, not by when the exchanges happened.
pub fn page(
    url: &PostgresUrl,
    password_file: Option<&Path>,
    filter: &Filter,
    limit: usize,
    before: Option<i64>,
) -> Result<Vec<StoredExchange>, StoreError> {
    let shown = url.redacted();
    let mut client = open_reader(url, password_file)?;
    let (mut conditions_sql, mut values) = conditions(filter, false);
    if let Some(before) = before {
        // Nothing when row `before` is gone: retention took it and everything older.
        conditions_sql
            .push_str(" AND (c.at_ms, c.id) < (SELECT b.at_ms, b.id FROM diffs b WHERE b.id = ?)");
        values.push(Value::Int(before));
    }
    values.push(Value::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
    let values = boxed(values);
    let rows = client
        .query(
            &numbered(&format!(
                "{}SELECT {COLUMNS} FROM diffs c WHERE {conditions_sql}
                 ORDER BY c.at_ms DESC, c.id DESC LIMIT ?",
                with_for(filter)
            )),
            &refs(&values),
        )
        .map_err(pg_error(&shown))?;
    Ok(rows.iter().map(stored_exchange).collect())
}

/// [`super::summary::exchange`] for Postgres: the exchange with row id `id`, and the differing
/// exchanges of its route just before and after it in time (of any replica).
pub fn exchange(
    url: &PostgresUrl,
    password_file: Option<&Path>,
    id: i64,
) -> Result<Option<ExchangeWithNeighbours>, StoreError> {
    let shown = url.redacted();
    let error = pg_error(&shown);
    let mut client = open_reader(url, password_file)?;
    let mut transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(&error)?;
    let Some(row) = transaction
        .query_opt(
            &format!("SELECT {COLUMNS} FROM diffs c WHERE c.id = $1"),
            &[&id],
        )
        .map_err(&error)?
    else {
        return Ok(None);
    };
    let exchange = stored_exchange(&row);
    let route = &exchange.record.route;
    let at = exchange.record.at_ms;
    let older = transaction
        .query_opt(
            "SELECT id FROM diffs WHERE route = $1 AND (at_ms, id) < ($2, $3)
             AND verdict <> 'match' ORDER BY at_ms DESC, id DESC LIMIT 1",
            &[route, &at, &id],
        )
        .map_err(&error)?
        .map(|row| row.get(0));
    let newer = transaction
        .query_opt(
            "SELECT id FROM diffs WHERE route = $1 AND (at_ms, id) > ($2, $3)
             AND verdict <> 'match' ORDER BY at_ms, id LIMIT 1",
            &[route, &at, &id],
        )
        .map_err(&error)?
        .map(|row| row.get(0));
    transaction.commit().map_err(&error)?;
    Ok(Some(ExchangeWithNeighbours {
        exchange,
        older,
        newer,
    }))
}

/// [`super::summary::ids_of_requests`] for Postgres: the newest row id of each request id
/// (in the order asked; unknown ones are left out).
pub fn ids_of_requests(
    url: &PostgresUrl,
    password_file: Option<&Path>,
    request_ids: &[&str],
) -> Result<Vec<(String, i64)>, StoreError> {
    let shown = url.redacted();
    let mut client = open_reader(url, password_file)?;
    let rows = client
        .query(
            "SELECT request_id, MAX(id) FROM diffs WHERE request_id = ANY($1)
             GROUP BY request_id",
            &[&request_ids],
        )
        .map_err(pg_error(&shown))?;
    let newest: std::collections::HashMap<String, i64> = rows
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(request_ids
        .iter()
        .filter_map(|id| Some(((*id).to_owned(), *newest.get(*id)?)))
        .collect())
}

/// [`super::summary::count`] for Postgres, from the per-minute aggregates (so it counts every
/// exchange, stored as a row or not): per route and direction, the exchanges by verdict and a
/// trend of `buckets` points. Times are those of the aggregates: a group's first exchange is
/// the start of its first minute (or `since`), and an exchange falls in the bucket of its
/// minute's start.
pub fn count(
    url: &PostgresUrl,
    password_file: Option<&Path>,
    filter: &Filter,
    buckets: usize,
) -> Result<Counts, StoreError> {
    let buckets = buckets.max(1);
    let shown = url.redacted();
    let error = pg_error(&shown);
    let mut client = open_reader(url, password_file)?;
    let mut transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(&error)?;
    let with = with_for(filter);
    let (conditions_sql, values) = conditions(filter, true);
    let values = boxed(values);
    let span = transaction
        .query_one(
            &numbered(&format!(
                "{with}SELECT MIN(c.minute_ms), MAX(c.last_at_ms) FROM diff_counts c
                 WHERE {conditions_sql}"
            )),
            &refs(&values),
        )
        .map_err(&error)?;
    let empty = Counts {
        from_ms: filter.since_ms,
        bucket_ms: 1,
        buckets,
        groups: Vec::new(),
    };
    let (Some(first), Some(last)) = (span.get::<_, Option<i64>>(0), span.get::<_, Option<i64>>(1))
    else {
        return Ok(empty);
    };
    let first = first.max(filter.since_ms).min(last);
    // A `since` filter fixes the left edge, so "the last hour" reads as an hour.
    let from_ms = if filter.since_ms > 0 {
        filter.since_ms.min(first)
    } else {
        first
    };
    let width = ((last - from_ms) / buckets as i64 + 1).max(1);
    let rows = transaction
        .query(
            &numbered(&format!(
                "{with}SELECT c.route, c.primary_upstream, c.candidate_upstream, c.generation,
                        c.stage, c.verdict,
                        GREATEST((c.minute_ms - {from_ms}) / {width}, 0)::BIGINT,
                        SUM(c.exchanges)::BIGINT, MIN(c.minute_ms), MAX(c.last_at_ms)
                 FROM diff_counts c WHERE {conditions_sql}
                 GROUP BY 1, 2, 3, 4, 5, 6, 7"
            )),
            &refs(&values),
        )
        .map_err(&error)?;
    transaction.commit().map_err(&error)?;
    let mut groups = Grouping::new(buckets);
    for row in &rows {
        let newest: i64 = row.get(9);
        let verdict: String = row.get(5);
        groups.add(CountedBucket {
            route: row.get(0),
            primary_upstream: known(row.get(1)),
            candidate_upstream: known(row.get(2)),
            generation: Some(row.get::<_, i64>(3)).filter(|g| *g >= 0),
            stage: known(row.get(4)),
            verdict: &verdict,
            bucket: row.get(6),
            exchanges: u64::try_from(row.get::<_, i64>(7)).unwrap_or(0),
            oldest: row.get::<_, i64>(8).max(filter.since_ms).min(newest),
            newest,
        });
    }
    Ok(Counts {
        from_ms,
        bucket_ms: width,
        buckets,
        groups: groups.finish(),
    })
}

/// Writes `records` as replica `settings.replica` would, on the caller's thread: for tools and
/// benchmarks that fill a database (see `bench/report-postgres`).
pub fn write_now(
    client: &mut Client,
    settings: &WriterSettings,
    records: &[DiffRecord],
) -> Result<(), StoreError> {
    write(client, settings, records).map_err(pg_error(&settings.url.redacted()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose thread never reads: what `submit` keeps and drops while Postgres is stuck.
    fn stuck_writer() -> (Writer, Receiver<Vec<DiffRecord>>) {
        let (queue, batches) = channel();
        let writer = Writer {
            queue,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            metrics: Arc::new(Metrics::new()),
        };
        (writer, batches)
    }

    fn queue_full(writer: &Writer) -> u64 {
        writer
            .metrics
            .diff_store_dropped
            .with_label_values(&[DropReason::QueueFull.as_str()])
            .get()
    }

    #[test]
    fn thousands_of_one_exchange_batches_queue_while_their_bytes_fit() {
        let (writer, batches) = stuck_writer();
        for _ in 0..10_000 {
            writer.submit(vec![super::super::testing::record("orders", "match")]);
        }
        assert_eq!(queue_full(&writer), 0, "no bound on the number of batches");
        assert_eq!(batches.try_iter().count(), 10_000);
    }

    #[test]
    fn batches_past_the_byte_budget_are_dropped_and_counted() {
        let (writer, batches) = stuck_writer();
        let big = DiffRecord {
            primary_sample: Some("x".repeat(1024 * 1024)),
            ..super::super::testing::record("orders", "mismatch")
        };
        let fit = QUEUE_BYTES / estimated_bytes(std::slice::from_ref(&big));
        for _ in 0..fit + 3 {
            writer.submit(vec![big.clone(), big.clone()]);
        }
        let queued = batches.try_iter().map(|batch| batch.len()).sum::<usize>();
        assert!(queued <= fit, "{queued} exchanges queued past the budget");
        assert_eq!(queue_full(&writer) as usize + queued, 2 * (fit + 3));
        assert!(writer.queued_bytes.load(Ordering::Relaxed) <= QUEUE_BYTES);
    }

    #[test]
    fn a_reservation_that_does_not_fit_takes_nothing() {
        let queued = AtomicUsize::new(90);
        assert!(!reserve(&queued, 11, 100));
        assert_eq!(queued.load(Ordering::Relaxed), 90);
        assert!(reserve(&queued, 10, 100));
        assert_eq!(queued.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(
            numbered("a = ? AND b IN (?, ?)"),
            "a = $1 AND b IN ($2, $3)"
        );
    }

    #[test]
    fn a_filter_becomes_conditions_with_their_values_in_order() {
        let filter = Filter {
            route: Some("orders".into()),
            since_ms: 120_000,
            replica: Some("pod-2".into()),
            verdict: None,
            generation: Some(GenerationFilter::Number(3)),
        };
        let (rows, values) = conditions(&filter, false);
        assert_eq!(
            rows,
            "c.at_ms >= ? AND c.route = ? AND c.replica = ? AND c.generation = ?"
        );
        assert_eq!(
            values,
            [
                Value::Int(120_000),
                Value::Text("orders".into()),
                Value::Text("pod-2".into()),
                Value::Int(3)
            ]
        );
        let (counts, values) = conditions(&filter, true);
        assert!(counts.starts_with("c.minute_ms > ?"), "{counts}");
        assert_eq!(
            values[0],
            Value::Int(60_000),
            "the bucket that ends after since"
        );
    }

    #[test]
    fn migrations_are_versioned_in_order() {
        assert_eq!(SCHEMA_VERSION, MIGRATIONS.len() as i64);
        assert!(MIGRATIONS[0].contains("CREATE TABLE diff_counts"));
    }
}
