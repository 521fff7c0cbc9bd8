//! The queries of the diff viewer (`/ui`, `/diffs/summary`, `/diffs/{id}`) over the SQLite
//! store: per route and direction, how many exchanges each verdict had and how that moved over
//! time; pages of exchanges with their row ids (the viewer links to one by id); one exchange by
//! id, with its neighbours on the same route.
//!
//! The types here ([`Counts`], [`StoredExchange`], [`ExchangeWithNeighbours`]) and the fold of
//! counted buckets into groups are shared with the Postgres store, whose queries for the same
//! views are in [`super::postgres`] (counting from its per-minute aggregates), so both answer
//! the viewer the same JSON.
//!
//! Counting happens in SQL, grouped by time bucket, so an overview never reads rows out. What
//! differed per path (ranking, examples, suggested ignore rules) is the report's business
//! ([`crate::report`]); this module only counts and fetches.

use std::path::Path;

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{Filter, RECORD_COLUMNS, Reader, StoreError};
use crate::record::DiffRecord;

/// The exchanges of one route in one direction, counted per verdict and over time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupCounts {
    pub route: String,
    /// The upstream that answered clients; `None` for rows stored before provenance.
    pub primary_upstream: Option<String>,
    pub candidate_upstream: Option<String>,
    pub exchanges: u64,
    pub matches: u64,
    pub mismatches: u64,
    pub noise: u64,
    pub shadow_errors: u64,
    /// Config generations and stages these exchanges were decided under, ascending.
    pub generations: Vec<u64>,
    pub stages: Vec<String>,
    /// Oldest and newest exchange, Unix milliseconds.
    pub first_ms: i64,
    pub last_ms: i64,
    /// One point per time bucket of [`Counts::bucket_ms`] from [`Counts::from_ms`], oldest
    /// first; every bucket is present (empty ones count 0), so a chart's x axis is time.
    pub trend: Vec<TrendPoint>,
}

/// The exchanges of one time bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TrendPoint {
    pub exchanges: u64,
    /// Mismatches and shadow errors: what fails a report.
    pub differing: u64,
    pub noise: u64,
}

/// What [`count`] found: every group, on one time axis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Counts {
    /// Start of the first bucket, Unix milliseconds.
    pub from_ms: i64,
    /// Width of a bucket in milliseconds (at least 1).
    pub bucket_ms: i64,
    pub buckets: usize,
    pub groups: Vec<GroupCounts>,
}

type GroupKey = (String, Option<String>, Option<String>);

/// Counts what `filter` selects of the store at `path` per route and direction, with a trend of
/// `buckets` points spanning the selected exchanges (from `filter.since_ms` when it is set),
/// in one read transaction.
pub fn count(path: &Path, filter: &Filter, buckets: usize) -> Result<Counts, StoreError> {
    let buckets = buckets.max(1);
    let reader = Reader::open(path)?;
    let error = |source| reader.error(source);
    reader
        .connection
        .execute_batch("BEGIN DEFERRED")
        .map_err(error)?;
    let empty = Counts {
        from_ms: filter.since_ms,
        bucket_ms: 1,
        buckets,
        groups: Vec::new(),
    };
    let Some((conditions, values)) = reader.selection(filter).map_err(error)? else {
        return Ok(empty);
    };
    let span: Option<(i64, i64)> = reader
        .connection
        .query_row(
            &format!("SELECT MIN(at_ms), MAX(at_ms) FROM diffs WHERE {conditions}"),
            rusqlite::params_from_iter(values.iter()),
            |row| {
                Ok(row
                    .get::<_, Option<i64>>(0)?
                    .zip(row.get::<_, Option<i64>>(1)?))
            },
        )
        .map_err(error)?;
    let Some((first, last)) = span else {
        return Ok(empty);
    };
    // A `since` filter fixes the left edge, so "the last hour" reads as an hour.
    let from_ms = if filter.since_ms > 0 {
        filter.since_ms.min(first)
    } else {
        first
    };
    let width = ((last - from_ms) / buckets as i64 + 1).max(1);
    let provenance = if reader.provenance {
        "primary_upstream, candidate_upstream, generation, stage"
    } else {
        "NULL, NULL, NULL, NULL"
    };
    let mut groups = Grouping::new(buckets);
    {
        let mut statement = reader
            .connection
            .prepare(&format!(
                "SELECT route, {provenance}, verdict, (at_ms - {from_ms}) / {width},
                        COUNT(*), MIN(at_ms), MAX(at_ms)
                 FROM diffs WHERE {conditions}
                 GROUP BY route, 2, 3, 4, 5, verdict, 7"
            ))
            .map_err(error)?;
        let mut rows = statement
            .query(rusqlite::params_from_iter(values.iter()))
            .map_err(error)?;
        while let Some(row) = rows.next().map_err(error)? {
            let verdict: String = row.get(5).map_err(error)?;
            groups.add(CountedBucket {
                route: row.get(0).map_err(error)?,
                primary_upstream: row.get(1).map_err(error)?,
                candidate_upstream: row.get(2).map_err(error)?,
                generation: row.get(3).map_err(error)?,
                stage: row.get(4).map_err(error)?,
                verdict: &verdict,
                bucket: row.get(6).map_err(error)?,
                exchanges: u64::try_from(row.get::<_, i64>(7).map_err(error)?).unwrap_or(0),
                oldest: row.get(8).map_err(error)?,
                newest: row.get(9).map_err(error)?,
            });
        }
    }
    Ok(Counts {
        from_ms,
        bucket_ms: width,
        buckets,
        groups: groups.finish(),
    })
}

/// The exchanges of one group, verdict and time bucket, as a count query returns them.
pub(super) struct CountedBucket<'a> {
    pub route: String,
    pub primary_upstream: Option<String>,
    pub candidate_upstream: Option<String>,
    pub generation: Option<i64>,
    pub stage: Option<String>,
    pub verdict: &'a str,
    /// Index of the time bucket (clamped to the axis).
    pub bucket: i64,
    pub exchanges: u64,
    pub oldest: i64,
    pub newest: i64,
}

/// Folds [`CountedBucket`]s into [`GroupCounts`], the same for both stores.
pub(super) struct Grouping {
    buckets: usize,
    groups: std::collections::BTreeMap<GroupKey, GroupCounts>,
}

impl Grouping {
    pub(super) fn new(buckets: usize) -> Self {
        Self {
            buckets: buckets.max(1),
            groups: Default::default(),
        }
    }

    pub(super) fn add(&mut self, counted: CountedBucket<'_>) {
        let buckets = self.buckets;
        let key: GroupKey = (
            counted.route,
            counted.primary_upstream,
            counted.candidate_upstream,
        );
        let exchanges = counted.exchanges;
        let group = self
            .groups
            .entry(key.clone())
            .or_insert_with(|| GroupCounts {
                route: key.0,
                primary_upstream: key.1,
                candidate_upstream: key.2,
                exchanges: 0,
                matches: 0,
                mismatches: 0,
                noise: 0,
                shadow_errors: 0,
                generations: Vec::new(),
                stages: Vec::new(),
                first_ms: counted.oldest,
                last_ms: counted.newest,
                trend: vec![TrendPoint::default(); buckets],
            });
        group.exchanges += exchanges;
        group.first_ms = group.first_ms.min(counted.oldest);
        group.last_ms = group.last_ms.max(counted.newest);
        let point = &mut group.trend[usize::try_from(counted.bucket)
            .unwrap_or(0)
            .min(buckets - 1)];
        point.exchanges += exchanges;
        match counted.verdict {
            "match" => group.matches += exchanges,
            "mismatch" => {
                group.mismatches += exchanges;
                point.differing += exchanges;
            }
            "shadow_error" => {
                group.shadow_errors += exchanges;
                point.differing += exchanges;
            }
            "noise" => {
                group.noise += exchanges;
                point.noise += exchanges;
            }
            _ => {}
        }
        if let Some(generation) = counted.generation.and_then(|g| u64::try_from(g).ok())
            && !group.generations.contains(&generation)
        {
            group.generations.push(generation);
        }
        if let Some(stage) = counted.stage
            && !group.stages.contains(&stage)
        {
            group.stages.push(stage);
        }
    }

    pub(super) fn finish(self) -> Vec<GroupCounts> {
        self.groups
            .into_values()
            .map(|mut group| {
                group.generations.sort_unstable();
                group.stages.sort();
                group
            })
            .collect()
    }
}

/// A stored exchange and its row id, which `/diffs/{id}` and the viewer's links use.
#[derive(Debug, Clone, Serialize)]
pub struct StoredExchange {
    pub id: i64,
    #[serde(flatten)]
    pub record: DiffRecord,
}

/// Up to `limit` exchanges `filter` selects, newest first, older than row `before` when given
/// (the `next_before` of the previous page).
pub fn page(
    path: &Path,
    filter: &Filter,
    limit: usize,
    before: Option<i64>,
) -> Result<Vec<StoredExchange>, StoreError> {
    let reader = Reader::open(path)?;
    let error = |source| reader.error(source);
    reader
        .connection
        .execute_batch("BEGIN DEFERRED")
        .map_err(error)?;
    let Some((conditions, mut values)) = reader.selection(filter).map_err(error)? else {
        return Ok(Vec::new());
    };
    let mut sql = format!(
        "SELECT id, {RECORD_COLUMNS}, {} FROM diffs WHERE {conditions}",
        reader.provenance_columns()
    );
    // One route's rows come newest first straight from the (route, at_ms) index (whose entries
    // end in the rowid), so a page reads its rows only; ordering them by id instead would read
    // and sort every row of the route. Ids and times grow together (one writer, in time order).
    // Without a route, walking rowids backwards is the cheap order.
    let by_time = filter.route.is_some();
    if let Some(before) = before {
        if by_time {
            // Older than row `before` in that order; nothing when it is gone (retention
            // deletes the oldest rows, so everything older went with it).
            sql.push_str(
                " AND (at_ms < COALESCE((SELECT at_ms FROM diffs WHERE id = ?), -1)
                   OR (at_ms = (SELECT at_ms FROM diffs WHERE id = ?) AND id < ?))",
            );
            values.push(Box::new(before));
            values.push(Box::new(before));
        } else {
            sql.push_str(" AND id < ?");
        }
        values.push(Box::new(before));
    }
    sql.push_str(if by_time {
        " ORDER BY at_ms DESC, id DESC LIMIT ?"
    } else {
        " ORDER BY id DESC LIMIT ?"
    });
    values.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
    let mut statement = reader.connection.prepare(&sql).map_err(error)?;
    let rows = statement
        .query_map(rusqlite::params_from_iter(values.iter()), stored_exchange)
        .map_err(error)?;
    rows.collect::<Result<_, _>>().map_err(error)
}

/// One exchange by row id, with the ids of the differing exchanges (any verdict but `match`)
/// of the same route just older and just newer, for "previous" and "next" links.
#[derive(Debug, Clone, Serialize)]
pub struct ExchangeWithNeighbours {
    #[serde(flatten)]
    pub exchange: StoredExchange,
    pub older: Option<i64>,
    pub newer: Option<i64>,
}

/// The exchange with row id `id`, if the store still holds it.
pub fn exchange(path: &Path, id: i64) -> Result<Option<ExchangeWithNeighbours>, StoreError> {
    let reader = Reader::open(path)?;
    let error = |source| reader.error(source);
    reader
        .connection
        .execute_batch("BEGIN DEFERRED")
        .map_err(error)?;
    let found = reader
        .connection
        .query_row(
            &format!(
                "SELECT id, {RECORD_COLUMNS}, {} FROM diffs WHERE id = ?1",
                reader.provenance_columns()
            ),
            params![id],
            stored_exchange,
        )
        .optional()
        .map_err(error)?;
    let Some(exchange) = found else {
        return Ok(None);
    };
    let neighbour = |sql: &str| -> Result<Option<i64>, StoreError> {
        reader
            .connection
            .query_row(
                sql,
                params![exchange.record.route, exchange.record.at_ms, id],
                |row| row.get(0),
            )
            .optional()
            .map_err(error)
    };
    // In the order of the (route, at_ms) index, whose entries end in the rowid: the walk stops
    // at the first differing row instead of sorting the route's rows by id.
    let older = neighbour(
        "SELECT id FROM diffs WHERE route = ?1 AND (at_ms < ?2 OR (at_ms = ?2 AND id < ?3))
         AND verdict <> 'match' ORDER BY at_ms DESC, id DESC LIMIT 1",
    )?;
    let newer = neighbour(
        "SELECT id FROM diffs WHERE route = ?1 AND (at_ms > ?2 OR (at_ms = ?2 AND id > ?3))
         AND verdict <> 'match' ORDER BY at_ms, id LIMIT 1",
    )?;
    Ok(Some(ExchangeWithNeighbours {
        exchange,
        older,
        newer,
    }))
}

/// The ids of the newest stored exchanges with these request ids (a report's examples name
/// their exchange by request id), in the order asked; unknown ones are left out. There is no
/// index on request ids, so all are looked up in one pass over the table, not one per id.
pub fn ids_of_requests(
    path: &Path,
    request_ids: &[&str],
) -> Result<Vec<(String, i64)>, StoreError> {
    let reader = Reader::open(path)?;
    let error = |source| reader.error(source);
    let mut newest = std::collections::HashMap::new();
    // SQLite takes at most 32,766 parameters in one statement.
    for chunk in request_ids.chunks(1000) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let mut statement = reader
            .connection
            .prepare(&format!(
                "SELECT request_id, MAX(id) FROM diffs WHERE request_id IN ({marks})
                 GROUP BY request_id"
            ))
            .map_err(error)?;
        let mut rows = statement
            .query(rusqlite::params_from_iter(chunk.iter()))
            .map_err(error)?;
        while let Some(row) = rows.next().map_err(error)? {
            let request_id: String = row.get(0).map_err(error)?;
            newest.insert(request_id, row.get::<_, i64>(1).map_err(error)?);
        }
    }
    Ok(request_ids
        .iter()
        .filter_map(|id| Some(((*id).to_owned(), *newest.get(*id)?)))
        .collect())
}

/// A row selecting `id`, then [`RECORD_COLUMNS`] and the provenance columns.
fn stored_exchange(row: &Row<'_>) -> rusqlite::Result<StoredExchange> {
    Ok(StoredExchange {
        id: row.get(0)?,
        record: super::record_from_row(row, 1)?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{DiffStore, GenerationFilter};
    use crate::vocabulary::Verdict;

    /// The store tests' record, at `at_ms` in `generation`, with an id of its own.
    fn record(route: &str, verdict: &str, at_ms: i64, generation: u64) -> DiffRecord {
        DiffRecord {
            at_ms,
            request_id: format!("{route}-{at_ms}"),
            generation: Some(generation),
            ..crate::store::testing::record(route, verdict)
        }
    }

    fn store(records: &[DiffRecord]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffs.db");
        let mut store = DiffStore::open(&path, 10_000, Duration::from_secs(1 << 40)).unwrap();
        store.insert(records).unwrap();
        (dir, path)
    }

    #[test]
    fn counts_are_per_route_and_direction_with_every_time_bucket_present() {
        let mut records = vec![
            record("orders", "match", 1_000, 1),
            record("orders", "mismatch", 1_100, 1),
            record("orders", "noise", 5_000, 2),
            record("orders", "shadow_error", 9_999, 2),
            record("users", "match", 9_000, 2),
        ];
        let mut reverse = record("orders", "match", 2_000, 2);
        reverse.primary_upstream = Some("new".into());
        reverse.candidate_upstream = Some("legacy".into());
        records.push(reverse);
        let (_dir, path) = store(&records);
        let counts = count(&path, &Filter::default(), 3).unwrap();
        assert_eq!((counts.from_ms, counts.buckets), (1_000, 3));
        assert_eq!(counts.bucket_ms, 8_999 / 3 + 1);
        let summary: Vec<(&str, Option<&str>, u64)> = counts
            .groups
            .iter()
            .map(|g| (g.route.as_str(), g.primary_upstream.as_deref(), g.exchanges))
            .collect();
        assert_eq!(
            summary,
            [
                ("orders", Some("legacy"), 4),
                ("orders", Some("new"), 1),
                ("users", Some("legacy"), 1)
            ]
        );
        let orders = &counts.groups[0];
        assert_eq!(
            (
                orders.matches,
                orders.mismatches,
                orders.noise,
                orders.shadow_errors
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(orders.generations, [1, 2]);
        assert_eq!(orders.stages, ["shadow"]);
        assert_eq!((orders.first_ms, orders.last_ms), (1_000, 9_999));
        let trend: Vec<(u64, u64, u64)> = orders
            .trend
            .iter()
            .map(|p| (p.exchanges, p.differing, p.noise))
            .collect();
        assert_eq!(trend, [(2, 1, 0), (1, 0, 1), (1, 1, 0)]);
        assert_eq!(counts.groups[1].trend.len(), 3, "empty buckets are there");
    }

    #[test]
    fn counts_follow_the_filter_and_an_empty_selection_counts_nothing() {
        let (_dir, path) = store(&[
            record("orders", "match", 1_000, 1),
            record("orders", "mismatch", 2_000, 2),
        ]);
        let latest = Filter {
            generation: Some(GenerationFilter::Latest),
            ..Filter::default()
        };
        let counts = count(&path, &latest, 10).unwrap();
        assert_eq!(counts.groups.len(), 1);
        assert_eq!(counts.groups[0].exchanges, 1);
        assert_eq!(counts.groups[0].mismatches, 1);
        let since = Filter {
            since_ms: 500,
            ..Filter::default()
        };
        assert_eq!(count(&path, &since, 10).unwrap().from_ms, 500);
        let nothing = Filter {
            route: Some("nope".into()),
            ..Filter::default()
        };
        assert!(count(&path, &nothing, 10).unwrap().groups.is_empty());
    }

    #[test]
    fn pages_go_back_in_time_by_row_id_and_an_exchange_links_its_differing_neighbours() {
        let (_dir, path) = store(&[
            record("orders", "mismatch", 1_000, 1),
            record("orders", "match", 1_001, 1),
            record("users", "mismatch", 1_002, 1),
            record("orders", "noise", 1_003, 1),
            record("orders", "mismatch", 1_004, 1),
        ]);
        let orders = Filter {
            route: Some("orders".into()),
            ..Filter::default()
        };
        let everything = page(&path, &Filter::default(), 3, Some(5)).unwrap();
        let ids: Vec<i64> = everything.iter().map(|e| e.id).collect();
        assert_eq!(ids, [4, 3, 2], "without a route, by id");
        let first = page(&path, &orders, 2, None).unwrap();
        let ids: Vec<i64> = first.iter().map(|e| e.id).collect();
        assert_eq!(ids, [5, 4]);
        let second = page(&path, &orders, 2, Some(4)).unwrap();
        let ids: Vec<i64> = second.iter().map(|e| e.id).collect();
        assert_eq!(ids, [2, 1]);
        let json = serde_json::to_value(&second[0]).unwrap();
        assert_eq!(json["id"], 2, "the id sits beside the record's fields");
        assert_eq!(json["route"], "orders");

        let middle = exchange(&path, 4).unwrap().unwrap();
        assert_eq!(middle.exchange.record.verdict, Verdict::Noise);
        assert_eq!(
            (middle.older, middle.newer),
            (Some(1), Some(5)),
            "matches and other routes are skipped"
        );
        assert!(exchange(&path, 99).unwrap().is_none());
        assert_eq!(
            ids_of_requests(&path, &["orders-1004", "gone", "users-1002"]).unwrap(),
            [("orders-1004".to_owned(), 5), ("users-1002".to_owned(), 3)]
        );
    }
}
