//! The SQLite side of [`super::aggregate`]: writing the per-minute counts in the insert's
//! transaction, and the queries a report and a summary answer from them.
//!
//! A SQLite file has one writer, so `--since-reload` (`Latest`) is the newest generation of the
//! whole file, as it is for its rows; in Postgres it is per replica.

use rusqlite::{Connection, Transaction, params};

use super::aggregate::{
    self, SummaryQuery, SummaryRow, Value, known, known_generation, known_status,
};
use super::{DiffRecord, ExchangeCount, Filter, GenerationFilter};

/// Adds `records` to the counts, as `replica`.
pub(super) fn write_counts(
    transaction: &Transaction<'_>,
    replica: &str,
    records: &[DiffRecord],
) -> rusqlite::Result<()> {
    let mut statement = transaction.prepare_cached(
        "INSERT INTO diff_counts (minute_ms, replica, route, primary_upstream,
            candidate_upstream, stage, generation, config_sha256, verdict, primary_status,
            shadow_status, exchanges, last_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (minute_ms, replica, route, primary_upstream, candidate_upstream, stage,
            generation, config_sha256, verdict, primary_status, shadow_status)
         DO UPDATE SET exchanges = exchanges + excluded.exchanges,
            last_at_ms = MAX(last_at_ms, excluded.last_at_ms)",
    )?;
    for (key, count) in aggregate::buckets(records) {
        statement.execute(params![
            key.minute_ms,
            replica,
            key.route,
            key.primary_upstream,
            key.candidate_upstream,
            key.stage,
            key.generation,
            key.config_sha256,
            key.verdict,
            key.primary_status,
            key.shadow_status,
            count.exchanges,
            count.last_at_ms,
        ])?;
    }
    Ok(())
}

fn boxed(values: Vec<Value>) -> Vec<Box<dyn rusqlite::ToSql>> {
    values
        .into_iter()
        .map(|value| -> Box<dyn rusqlite::ToSql> {
            match value {
                Value::Int(number) => Box::new(number),
                Value::Text(text) => Box::new(text),
            }
        })
        .collect()
}

/// The file's newest generation and the newest exchange of a higher one before it.
const LATEST: &str = "WITH newest AS (
        SELECT generation, config_sha256 FROM diff_counts WHERE generation >= 0
        ORDER BY last_at_ms DESC LIMIT 1),
    latest AS (
        SELECT n.generation, n.config_sha256,
               COALESCE((SELECT MAX(h.last_at_ms) FROM diff_counts h
                         WHERE h.generation > n.generation), -1) AS after_ms
        FROM newest n) ";

/// What a report counts, from the aggregates: one [`ExchangeCount`] per route, verdict, status
/// pair and provenance.
pub(super) fn exchange_counts(
    connection: &Connection,
    filter: &Filter,
) -> rusqlite::Result<Vec<ExchangeCount>> {
    let mut sql = String::from("c.minute_ms > ?");
    let mut values = vec![Value::Int(filter.since_ms - aggregate::BUCKET_MS)];
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
    let mut with = "";
    match filter.generation {
        None => {}
        Some(GenerationFilter::Number(number)) => {
            sql.push_str(" AND c.generation = ?");
            values.push(Value::Int(i64::try_from(number).unwrap_or(i64::MAX)));
        }
        Some(GenerationFilter::Latest) => {
            with = LATEST;
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM latest l WHERE l.generation = c.generation
                   AND l.config_sha256 = c.config_sha256 AND c.last_at_ms > l.after_ms)",
            );
        }
    }
    let mut statement = connection.prepare(&format!(
        "{with}SELECT c.route, c.verdict, c.primary_status, c.shadow_status, c.primary_upstream,
                c.candidate_upstream, c.stage, c.generation, c.config_sha256, SUM(c.exchanges)
         FROM diff_counts c WHERE {sql}
         GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9"
    ))?;
    let values = boxed(values);
    let rows = statement.query_map(rusqlite::params_from_iter(values.iter()), |row| {
        Ok(ExchangeCount {
            route: row.get(0)?,
            verdict: row.get(1)?,
            primary_status: known_status(row.get(2)?),
            shadow_status: known_status(row.get(3)?),
            primary_upstream: known(row.get(4)?),
            candidate_upstream: known(row.get(5)?),
            stage: known(row.get(6)?),
            generation: known_generation(row.get(7)?),
            config_sha256: known(row.get(8)?),
            exchanges: u64::try_from(row.get::<_, i64>(9)?).unwrap_or(0),
        })
    })?;
    rows.collect()
}

/// The store-level summary (see [`SummaryRow`]).
pub(super) fn summary(
    connection: &Connection,
    query: &SummaryQuery,
) -> rusqlite::Result<Vec<SummaryRow>> {
    let mut statement = connection.prepare(&aggregate::summary_sql(query))?;
    let values = boxed(aggregate::summary_values(query));
    let rows = statement.query_map(rusqlite::params_from_iter(values.iter()), |row| {
        let count = |index| -> rusqlite::Result<u64> {
            Ok(u64::try_from(row.get::<_, i64>(index)?).unwrap_or(0))
        };
        Ok(SummaryRow {
            bucket_ms: row.get(0)?,
            route: row.get(1)?,
            primary_upstream: known(row.get(2)?),
            candidate_upstream: known(row.get(3)?),
            generation: known_generation(row.get(4)?),
            exchanges: count(5)?,
            matches: count(6)?,
            mismatches: count(7)?,
            noise: count(8)?,
            errors: count(9)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    //! The per-minute counts of a SQLite store, read back the way a report reads them.

    use std::time::Duration;

    use super::*;
    use crate::record::DiffRecord;
    use crate::store::DiffStore;
    use crate::store::testing::record;
    use crate::vocabulary::Verdict;

    const MINUTE: i64 = aggregate::BUCKET_MS;

    fn at(at_ms: i64, verdict: &str, generation: u64, sha: &str) -> DiffRecord {
        DiffRecord {
            at_ms,
            generation: Some(generation),
            config_sha256: Some(sha.into()),
            ..record("orders", verdict)
        }
    }

    /// A store holding `batches`, each inserted in its own transaction, as `pod-1`.
    fn stored(batches: &[Vec<DiffRecord>]) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffs.db");
        let mut store = DiffStore::open(&path, 1000, Duration::from_secs(1 << 40))
            .unwrap()
            .writing_as("pod-1", 1.0);
        for batch in batches {
            store.insert(batch).unwrap();
        }
        (dir, Connection::open(&path).unwrap())
    }

    fn counted(connection: &Connection, filter: &Filter) -> Vec<(Verdict, Option<u64>, u64)> {
        let mut counts: Vec<_> = exchange_counts(connection, filter)
            .unwrap()
            .into_iter()
            .map(|count| (count.verdict, count.generation, count.exchanges))
            .collect();
        counts.sort_by_key(|(verdict, generation, _)| (verdict.as_str(), *generation));
        counts
    }

    #[test]
    fn batches_of_one_minute_add_up_in_one_row_per_key_keeping_the_newest_time() {
        let (_dir, connection) = stored(&[
            vec![
                at(10 * MINUTE + 5, "match", 1, "x"),
                at(10 * MINUTE + 9, "match", 1, "x"),
            ],
            vec![
                at(10 * MINUTE + 7, "match", 1, "x"),
                at(10 * MINUTE + 8, "mismatch", 1, "x"),
            ],
            vec![at(11 * MINUTE, "match", 1, "x")],
        ]);
        let rows: Vec<(i64, String, i64, i64)> = connection
            .prepare(
                "SELECT minute_ms, verdict, exchanges, last_at_ms FROM diff_counts
                 ORDER BY minute_ms, verdict",
            )
            .unwrap()
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                (10 * MINUTE, "match".to_owned(), 3, 10 * MINUTE + 9),
                (10 * MINUTE, "mismatch".to_owned(), 1, 10 * MINUTE + 8),
                (11 * MINUTE, "match".to_owned(), 1, 11 * MINUTE),
            ]
        );
    }

    #[test]
    fn counts_are_narrowed_by_verdict_replica_generation_and_time() {
        let (_dir, connection) = stored(&[vec![
            at(10 * MINUTE, "match", 1, "x"),
            at(10 * MINUTE, "mismatch", 1, "x"),
            at(20 * MINUTE, "match", 2, "y"),
            at(20 * MINUTE, "match", 2, "y"),
        ]]);
        let all = Filter::default();
        assert_eq!(
            counted(&connection, &all),
            [
                (Verdict::Match, Some(1), 1),
                (Verdict::Match, Some(2), 2),
                (Verdict::Mismatch, Some(1), 1)
            ]
        );
        let mismatches = Filter {
            verdict: Some(Verdict::Mismatch),
            ..Filter::default()
        };
        assert_eq!(
            counted(&connection, &mismatches),
            [(Verdict::Mismatch, Some(1), 1)]
        );
        let second = Filter {
            generation: Some(GenerationFilter::Number(2)),
            ..Filter::default()
        };
        assert_eq!(
            counted(&connection, &second),
            [(Verdict::Match, Some(2), 2)]
        );
        let recent = Filter {
            since_ms: 15 * MINUTE,
            ..Filter::default()
        };
        assert_eq!(
            counted(&connection, &recent),
            [(Verdict::Match, Some(2), 2)]
        );
        let other_pod = Filter {
            replica: Some("pod-2".into()),
            ..Filter::default()
        };
        assert!(counted(&connection, &other_pod).is_empty());
    }

    #[test]
    fn the_latest_generation_is_the_newest_runs_newest_without_an_earlier_runs_higher_one() {
        let (_dir, connection) = stored(&[
            // A first run: generations 1 and 2.
            vec![
                at(10 * MINUTE, "match", 1, "x"),
                at(20 * MINUTE, "mismatch", 2, "y"),
            ],
            // A restart: generation 1 again, of another file.
            vec![
                at(30 * MINUTE, "match", 1, "z"),
                at(31 * MINUTE, "match", 1, "z"),
            ],
        ]);
        let latest = Filter {
            generation: Some(GenerationFilter::Latest),
            ..Filter::default()
        };
        assert_eq!(
            counted(&connection, &latest),
            [(Verdict::Match, Some(1), 2)]
        );
    }
}
