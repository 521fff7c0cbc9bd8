//! Response diffing: compare the primary's and the shadow's answers, discount noise, count the
//! verdict in metrics and store the exchange.
//!
//! Shadow tasks hand finished exchanges to [`DiffSink::submit`], which never blocks: a bounded
//! queue feeds one worker thread that compares, judges and writes to the [`crate::store`] in
//! batches (gathered over [`BATCH_WINDOW`], so a steady stream costs one wake-up and one store
//! transaction per window, not per exchange). When the queue is full the exchange is skipped and counted, so big bodies or a slow
//! disk never stall request handling. Each stored exchange carries its provenance (which
//! upstream was primary, which the candidate, the stage and config generation).
//!
//! This module also owns what the store must be for that: [`check_store`] tells `validate` and
//! `run` whether `server.diff_store` can be created, and a store that fails to open or write at
//! runtime is logged and counted in `strangler_diff_store_errors_total` (opening is retried).
//! A Postgres store gets the judged batches through its own bounded writer
//! ([`crate::store::postgres::Writer`]), so a slow database never holds up comparisons.

mod against;
mod compare;
pub mod decode;
pub mod json;
pub mod media;
pub mod path;
mod scan;
mod suggest;

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

pub use compare::{
    CompareRule, DEFAULT_IGNORED_HEADERS, ENCODING_PATH, Prepared, UnorderedArray, compare,
    compare_prepared, discount_noise,
};
use path::PathPattern;
pub use suggest::{Exchange, Reason, Suggester, Suggestion, Suggestions, suggest};

use crate::config::{CompareConfig, Diagnostic, NoiseMode};
use crate::exchange::{CapturedResponse, Reservation, ShadowFailure, ShadowOutcome};
use crate::metrics::Metrics;
use crate::record::{DiffRecord, Difference, Kind};
use crate::store::{DiffStore, now_ms};
use crate::vocabulary::{DiffResult, Verdict};

/// Exchanges waiting for the worker; more are skipped.
const QUEUE_CAPACITY: usize = 1024;
/// Longest body sample stored per side by default (`server.diff_max_sample`).
pub const SAMPLE_LIMIT: usize = 4096;

/// A finished shadow exchange, ready to compare.
pub struct DiffJob {
    pub rule: Arc<CompareRule>,
    pub outcome: ShadowOutcome,
    /// The second primary answer, when noise cancellation is on.
    pub noise: Option<Result<CapturedResponse, ShadowFailure>>,
    /// The bytes this exchange holds against the shadow memory budget; given back when the
    /// job is dropped, after comparison.
    pub memory: Reservation,
    /// The route's guard, which counts the verdict.
    pub guard: Option<Arc<crate::guard::Guard>>,
}

/// Where shadow exchanges go to be compared. Cheap to clone.
#[derive(Clone)]
pub struct DiffSink {
    queue: SyncSender<DiffJob>,
    metrics: Arc<Metrics>,
}

/// Where and how long compared exchanges are kept.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub location: crate::store::StoreLocation,
    /// The Postgres password's file, when the URL has none.
    pub password_file: Option<std::path::PathBuf>,
    /// The name rows are written under.
    pub replica: String,
    /// Share of matching exchanges stored as rows.
    pub match_sample: f64,
    pub max_rows: u64,
    pub max_age: Duration,
    /// Longest body sample stored per side, in bytes (`server.diff_max_sample`).
    pub max_sample: usize,
}

impl StoreSettings {
    /// The settings of `server`, naming the replica now.
    pub fn of(server: &crate::config::ServerConfig) -> Self {
        Self {
            location: server.diff_store.clone(),
            password_file: server.diff_store_password_file.clone(),
            replica: crate::store::replica_name(server.replica.as_deref()),
            match_sample: server.diff_match_sample,
            max_rows: server.diff_max_rows,
            max_age: server.diff_max_age,
            max_sample: usize::try_from(server.diff_max_sample.as_u64()).unwrap_or(usize::MAX),
        }
    }

    /// Opens the SQLite store (`None` for Postgres, which the worker's writer connects to).
    pub fn open_sqlite(&self) -> Result<Option<DiffStore>, crate::store::StoreError> {
        let crate::store::StoreLocation::Sqlite(path) = &self.location else {
            return Ok(None);
        };
        Ok(Some(
            DiffStore::open(path, self.max_rows, self.max_age)?
                .writing_as(&self.replica, self.match_sample),
        ))
    }
}

impl DiffSink {
    /// Starts the worker thread. `store` is the store opened at start (see
    /// [`crate::server::serve`]); without one, the worker opens it when the first exchange
    /// arrives (a reload can add the first shadow).
    pub fn start(
        settings: StoreSettings,
        store: Option<DiffStore>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (queue, jobs) = sync_channel(QUEUE_CAPACITY);
        let worker_metrics = metrics.clone();
        let postgres = match &settings.location {
            crate::store::StoreLocation::Postgres(url) => {
                Some(crate::store::postgres::Writer::start(
                    crate::store::postgres::WriterSettings {
                        url: url.clone(),
                        password_file: settings.password_file.clone(),
                        replica: settings.replica.clone(),
                        max_rows: settings.max_rows,
                        max_age: settings.max_age,
                        match_sample: settings.match_sample,
                    },
                    metrics.clone(),
                )?)
            }
            crate::store::StoreLocation::Sqlite(_) => None,
        };
        std::thread::Builder::new()
            .name("diff".into())
            .spawn(move || run_worker(jobs, settings, store, postgres, worker_metrics))?;
        Ok(Self { queue, metrics })
    }

    /// Queues `job` for comparison; when the queue is full it is skipped and counted.
    pub fn submit(&self, job: DiffJob) {
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.metrics
                    .diff_result(&job.outcome.route, DiffResult::Skipped);
            }
        }
    }
}

/// How long the worker lets exchanges gather after the first of a batch arrives. Without it,
/// a worker that keeps up is woken for every exchange: a futex wake-up on the proxy's thread,
/// a context switch here, and a store transaction (with its upsert of the aggregates) per
/// exchange. With it, a steady stream costs one wake-up and one transaction per window. It is
/// also how late a verdict can be counted. At `QUEUE_CAPACITY` per window the queue fills
/// only past ~100,000 exchanges a second, and a full batch is taken without waiting.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Most exchanges judged and written as one batch.
const BATCH_MAX: usize = 256;

/// How long the worker waits before it tries again to open a store that would not open.
const REOPEN_AFTER: Duration = Duration::from_secs(30);

fn run_worker(
    jobs: Receiver<DiffJob>,
    settings: StoreSettings,
    mut store: Option<DiffStore>,
    postgres: Option<crate::store::postgres::Writer>,
    metrics: Arc<Metrics>,
) {
    let mut failed_open_at: Option<std::time::Instant> = None;
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        batch.extend(jobs.try_iter().take(BATCH_MAX - 1));
        if batch.len() < BATCH_MAX {
            // Let a steady stream gather (see `BATCH_WINDOW`): while the worker sleeps here,
            // `submit` only queues, with no wake-up to pay for.
            std::thread::sleep(BATCH_WINDOW);
            batch.extend(jobs.try_iter().take(BATCH_MAX - batch.len()));
        }
        // Judged in arrival order; the store writes one transaction per batch.
        let mut records = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            if let Some(record) = judge(job, &metrics, settings.max_sample) {
                records.push(record);
            }
        }
        if records.is_empty() {
            continue;
        }
        if let Some(writer) = &postgres {
            writer.submit(records);
            continue;
        }
        if store.is_none() {
            // The verdicts are counted already; only storing waits for the next attempt, so a
            // broken store costs one error line per `REOPEN_AFTER`, not one per exchange.
            if failed_open_at.is_some_and(|at| at.elapsed() < REOPEN_AFTER) {
                continue;
            }
            match settings.open_sqlite() {
                Ok(opened) => {
                    failed_open_at = None;
                    store = opened;
                }
                Err(error) => {
                    metrics.diff_store_errors.with_label_values(&["open"]).inc();
                    tracing::error!(
                        %error,
                        retry_in = ?REOPEN_AFTER,
                        "cannot open the diff store; diffs are counted but not stored"
                    );
                    failed_open_at = Some(std::time::Instant::now());
                    continue;
                }
            }
        }
        if let Some(store) = store.as_mut() {
            match store.insert(&records) {
                // Counted as the Postgres writer counts, so both stores are watched alike.
                Ok(()) => metrics.diff_store_written.inc_by(records.len() as u64),
                Err(error) => {
                    metrics
                        .diff_store_errors
                        .with_label_values(&["write"])
                        .inc();
                    tracing::warn!(%error, records = records.len(), "cannot store diffs");
                }
            }
        }
    }
}

/// Compares one exchange, counts its verdict, and returns what to store. Also how
/// `strangler replay` judges its exchanges, so a replay and production agree.
pub fn judge(job: DiffJob, metrics: &Metrics, max_sample: usize) -> Option<DiffRecord> {
    let DiffJob {
        rule,
        outcome,
        noise,
        memory: _memory,
        guard,
    } = job;
    let Some(primary) = outcome.primary.as_ref() else {
        // The primary failed: nothing to compare the candidate with.
        metrics.diff_result(&outcome.route, DiffResult::Skipped);
        return None;
    };
    // An answer the proxy had no memory to keep says nothing about the candidate (it was
    // counted as `dropped_memory`): judging it would count the proxy's load as the candidate's
    // errors, or (for the noise copy) as differences noise cancellation would have removed.
    let over_budget = |answer: Option<&Result<CapturedResponse, ShadowFailure>>| {
        matches!(answer, Some(Err(ShadowFailure::OverBudget)))
    };
    if over_budget(Some(&outcome.shadow)) || over_budget(noise.as_ref()) {
        metrics.diff_result(&outcome.route, DiffResult::Skipped);
        return None;
    }
    let (verdict, differences, noisy, shadow_status, samples) = match &outcome.shadow {
        Err(failure) => {
            let difference = Difference {
                path: "shadow".into(),
                kind: Kind::Changed,
                primary: Some(primary.status.as_u16().to_string()),
                shadow: Some(failure.to_string()),
            };
            (
                Verdict::ShadowError,
                vec![difference],
                Vec::new(),
                None,
                None,
            )
        }
        Ok(shadow) => {
            // The JSON trees of all three answers, freed at once at the end of the exchange.
            let arena = bumpalo::Bump::new();
            let prepared_primary = Prepared::new(primary, &arena);
            let prepared_shadow = Prepared::new(shadow, &arena);
            let differences = compare_prepared(&rule, &prepared_primary, &prepared_shadow);
            let noise_differences = match &noise {
                // A second answer with another status is not the same answer twice (a failure,
                // a rate limit): it says nothing about which values vary.
                Some(Ok(second)) if second.status == primary.status => {
                    compare_prepared(&rule, &prepared_primary, &Prepared::new(second, &arena))
                }
                _ => Vec::new(),
            };
            let (counted, noisy) = discount_noise(differences, &noise_differences);
            let verdict = match (counted.is_empty(), noisy.is_empty()) {
                (false, _) => Verdict::Mismatch,
                (true, false) => Verdict::Noise,
                (true, true) => Verdict::Match,
            };
            // Samples explain differences; a matching exchange needs none.
            let samples = (verdict != Verdict::Match).then(|| {
                (
                    sample(&rule, &prepared_primary, max_sample),
                    sample(&rule, &prepared_shadow, max_sample),
                )
            });
            (
                verdict,
                counted,
                noisy,
                Some(shadow.status.as_u16()),
                samples,
            )
        }
    };
    if let Some(guard) = &guard
        && let Some(trip) = guard.record_diff(verdict.result() == DiffResult::Mismatch)
    {
        crate::guard::report(&outcome.route, &trip, metrics);
    }
    metrics.diff_result(&outcome.route, verdict.result());
    let request = outcome.request;
    let secrets = request.secrets;
    let provenance = outcome.provenance;
    let mut record = DiffRecord {
        at_ms: now_ms(),
        route: outcome.route,
        method: request.method,
        path: request.path,
        query: request.query,
        request_id: request.request_id,
        primary_status: Some(primary.status.as_u16()),
        shadow_status,
        verdict,
        differences,
        noise: noisy,
        primary_sample: samples.as_ref().and_then(|(primary, _)| primary.clone()),
        shadow_sample: samples.and_then(|(_, shadow)| shadow),
        primary_upstream: Some(provenance.primary.as_ref().to_owned()),
        candidate_upstream: Some(provenance.candidate.as_ref().to_owned()),
        stage: Some(provenance.stage.as_str().to_owned()),
        generation: Some(provenance.generation),
        config_sha256: Some(provenance.config_sha256.as_ref().to_owned()),
    };
    scrub(&mut record, &secrets);
    Some(record)
}

/// Removes the request's secrets from whatever the backends echoed back into samples and
/// differences (a body repeating its URL, a debug page showing the Authorization header).
fn scrub(record: &mut DiffRecord, secrets: &crate::redact::Secrets) {
    if secrets.is_empty() {
        return;
    }
    let samples = [&mut record.primary_sample, &mut record.shadow_sample];
    let values = record
        .differences
        .iter_mut()
        .chain(record.noise.iter_mut())
        .flat_map(|difference| [&mut difference.primary, &mut difference.shadow]);
    for text in samples.into_iter().chain(values).flatten() {
        secrets.scrub(text);
    }
}

/// A bounded, redacted body sample for the store: the decoded body as text. A body that is not
/// text (or does not decode) is described, never stored as bytes.
fn sample(rule: &CompareRule, prepared: &Prepared<'_>, limit: usize) -> Option<String> {
    if prepared.response.body.is_empty() || limit == 0 {
        return None;
    }
    let decoded = match prepared.body() {
        Ok(decoded) => decoded,
        Err(error) => {
            return Some(format!("[{error}; {} bytes]", prepared.response.body.len()));
        }
    };
    let Some(text) = as_text(&decoded.bytes, decoded.truncated) else {
        return Some(format!(
            "[binary body: {}]",
            compare::describe_bytes(&decoded.bytes, decoded.truncated)
        ));
    };
    let text = if rule.redact_json.is_empty() {
        // Only what is kept is copied (and a few bytes more, so a longer body still ends in `…`
        // after `truncate_to`): a sample must not hold its body's size until it is stored.
        let mut end = text.len().min(limit + 4);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
    } else {
        // A body that does not parse (not JSON, or cut at the capture limit) cannot be redacted,
        // so none of it is kept.
        let mut value = prepared.json_value().ok()?;
        redact(&mut value, &rule.redact_json, &mut Vec::new());
        value.to_string()
    };
    Some(compare::truncate_to(text, limit))
}

/// `bytes` as text when they are UTF-8 (a body cut short may end inside a character).
fn as_text(bytes: &[u8], truncated: bool) -> Option<&str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(error) if truncated && error.error_len().is_none() => {
            std::str::from_utf8(&bytes[..error.valid_up_to()]).ok()
        }
        Err(_) => None,
    }
}

fn redact(
    value: &mut serde_json::Value,
    patterns: &[PathPattern],
    path: &mut Vec<path::Step<'static>>,
) {
    if patterns.iter().any(|p| p.matches(path)) {
        *value = serde_json::Value::String(compare::REDACTED.into());
        return;
    }
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                path.push(path::Step::Key(key.clone().into()));
                redact(child, patterns, path);
                path.pop();
            }
        }
        serde_json::Value::Array(items) => {
            for (index, child) in items.iter_mut().enumerate() {
                path.push(path::Step::Index(index));
                redact(child, patterns, path);
                path.pop();
            }
        }
        _ => {}
    }
}

/// `server.diff_store` as `strangler run` will open it: its directory must exist and take new
/// files. Checked only when a route has a `shadow:`, since nothing else opens the store (a store
/// a reload needs later is opened then, and failures count in `strangler_diff_store_errors_total`).
/// A relative path is resolved against the working directory, as `run` does.
///
/// Also checks `server.diff_match_sample`. A Postgres store is not tried here: it is connected
/// in the background, and an unreachable one drops comparisons (counted) without stopping the
/// proxy.
pub fn check_store(config: &crate::config::Config) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let sample = config.server.diff_match_sample;
    if !(0.0..=1.0).contains(&sample) {
        diagnostics.push(
            Diagnostic::new(
                "server.diff_match_sample",
                format!("{sample} is not a share from 0 to 1"),
            )
            .with_hint("0.01 stores one matching exchange in a hundred; all are counted"),
        );
    }
    // Recording (`record:`) writes to the same store.
    if !config
        .routes
        .iter()
        .any(|route| route.shadow.is_some() || route.record.is_some())
    {
        return diagnostics;
    }
    let crate::store::StoreLocation::Sqlite(path) = &config.server.diff_store else {
        return diagnostics;
    };
    let Err(problem) = crate::store::check_writable(path) else {
        return diagnostics;
    };
    diagnostics.push(
        Diagnostic::new(
            "server.diff_store",
            format!(
                "the diff store {} cannot be opened: {problem}",
                path.display()
            ),
        )
        .with_hint(
            "routes with `shadow:` store their comparisons here; point it at a writable directory (a relative path is relative to the working directory)",
        ),
    );
    diagnostics
}

/// Compiles a route's `compare:` settings; problems go to `diagnostics` under `path`.
pub fn compile_compare(
    config: &CompareConfig,
    path: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> CompareRule {
    let mut rule = CompareRule {
        numeric_tolerance: config.numeric_tolerance,
        noise: config.noise == NoiseMode::Legacy,
        ..CompareRule::default()
    };
    if config.numeric_tolerance.is_nan() || config.numeric_tolerance < 0.0 {
        diagnostics.push(
            Diagnostic::new(format!("{path}.numeric_tolerance"), "must be 0 or more")
                .with_hint("a relative tolerance: 0.001 accepts 1000 vs 1000.9"),
        );
    }
    for (number, name) in config.ignore_headers.iter().enumerate() {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => {
                rule.ignore_headers.insert(name.as_str().to_owned());
            }
            Err(_) => diagnostics.push(Diagnostic::new(
                format!("{path}.ignore_headers[{number}]"),
                format!("`{name}` is not a valid header name"),
            )),
        }
    }
    for (number, unordered) in config.unordered_arrays.iter().enumerate() {
        let at = format!("{path}.unordered_arrays[{number}]");
        let pattern = match PathPattern::parse(&unordered.path) {
            Ok(pattern) => pattern,
            Err(message) => {
                diagnostics.push(
                    Diagnostic::new(at, message)
                        .with_hint("JSON paths look like $.orders or $.orders[*].lines"),
                );
                continue;
            }
        };
        if let Some(position) = unordered.by.iter().position(|member| member.is_empty()) {
            diagnostics.push(
                Diagnostic::new(format!("{at}.by[{position}]"), "an empty member name")
                    .with_hint("`by` names the member that identifies an element: by: id"),
            );
            continue;
        }
        rule.unordered_arrays.push(UnorderedArray {
            path: pattern,
            by: unordered.by.clone(),
        });
    }
    for (field, patterns, out) in [
        ("ignore_json", &config.ignore_json, &mut rule.ignore_json),
        ("redact_json", &config.redact_json, &mut rule.redact_json),
    ] {
        for (number, pattern) in patterns.iter().enumerate() {
            match PathPattern::parse(pattern) {
                Ok(pattern) => out.push(pattern),
                Err(message) => diagnostics.push(
                    Diagnostic::new(format!("{path}.{field}[{number}]"), message)
                        .with_hint("JSON paths look like $.items[*].updated_at"),
                ),
            }
        }
    }
    rule
}

/// Turns a finished exchange into a diff job (used by the shadow task).
pub fn job(
    rule: Arc<CompareRule>,
    outcome: ShadowOutcome,
    noise: Option<Result<CapturedResponse, ShadowFailure>>,
    memory: Reservation,
    guard: Option<Arc<crate::guard::Guard>>,
) -> DiffJob {
    DiffJob {
        rule,
        outcome,
        noise,
        memory,
        guard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(body: &str) -> CapturedResponse {
        CapturedResponse {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from(body.to_owned()).into(),
            truncated: false,
        }
    }

    fn sampled(rule: &CompareRule, response: &CapturedResponse) -> Option<String> {
        sample(
            rule,
            &Prepared::new(response, &bumpalo::Bump::new()),
            SAMPLE_LIMIT,
        )
    }

    #[test]
    fn samples_are_redacted_or_not_kept() {
        let rule = CompareRule {
            redact_json: vec![PathPattern::parse("$.token").unwrap()],
            ..CompareRule::default()
        };
        assert_eq!(
            sampled(&rule, &response(r#"{"token":"secret","n":1}"#)).as_deref(),
            Some(r#"{"n":1,"token":"[redacted]"}"#)
        );
        // Cut short (or not JSON at all), it cannot be redacted: nothing is stored.
        assert_eq!(sampled(&rule, &response(r#"{"token":"secr"#)), None);
        // A sample of a big body holds its 4 KiB, not the body's size, until it is stored.
        let big = format!("{{\"pad\":\"{}\",\"token\":\"x\"}}", "é".repeat(100_000));
        for rule in [&rule, &CompareRule::default()] {
            let kept = sampled(rule, &response(&big)).unwrap();
            assert!(kept.ends_with('…'), "{}", &kept[kept.len() - 10..]);
            assert!(kept.len() <= SAMPLE_LIMIT + 3, "{}", kept.len());
            assert!(kept.capacity() < 2 * SAMPLE_LIMIT, "{}", kept.capacity());
        }
        assert_eq!(
            sampled(&CompareRule::default(), &response("plain text")).as_deref(),
            Some("plain text")
        );
        // `server.diff_max_sample` sets the cap; 0 keeps nothing.
        let plain = CompareRule::default();
        let cut = sample(
            &plain,
            &Prepared::new(&response("0123456789"), &bumpalo::Bump::new()),
            4,
        )
        .unwrap();
        assert!(
            cut.starts_with("012") && cut.ends_with('…') && cut.len() <= 7,
            "{cut}"
        );
        assert_eq!(
            sample(
                &plain,
                &Prepared::new(&response("0123"), &bumpalo::Bump::new()),
                0
            ),
            None
        );
    }

    #[test]
    fn samples_are_decoded_text_never_bytes() {
        let mut gzipped = response("");
        gzipped.body = decode::tests::gzip(br#"{"n":1}"#).into();
        gzipped
            .headers
            .insert("content-encoding", "gzip".parse().unwrap());
        gzipped
            .headers
            .insert("content-type", "application/json".parse().unwrap());
        let rule = CompareRule {
            redact_json: vec![PathPattern::parse("$.token").unwrap()],
            ..CompareRule::default()
        };
        assert_eq!(sampled(&rule, &gzipped).as_deref(), Some(r#"{"n":1}"#));
        assert_eq!(
            sampled(&CompareRule::default(), &gzipped).as_deref(),
            Some(r#"{"n":1}"#)
        );

        let mut image = response("");
        image.body = bytes::Bytes::from_static(b"\x89PNG\r\n\x1a\n\xff\xfe").into();
        let shown = sampled(&CompareRule::default(), &image).unwrap();
        assert!(
            shown.starts_with("[binary body: 10 bytes, xxh3 "),
            "{shown}"
        );

        let mut broken = response("not gzip");
        broken
            .headers
            .insert("content-encoding", "gzip".parse().unwrap());
        let shown = sampled(&CompareRule::default(), &broken).unwrap();
        assert!(shown.starts_with("[gzip body does not decode: "), "{shown}");
        assert!(shown.ends_with("; 8 bytes]"), "{shown}");

        // A text cut inside a character keeps what is whole.
        let mut cut = response("");
        cut.body = bytes::Bytes::from("héllo".as_bytes()[..2].to_vec()).into();
        cut.truncated = true;
        assert_eq!(sampled(&CompareRule::default(), &cut).as_deref(), Some("h"));
    }

    #[test]
    fn unordered_arrays_are_a_path_or_a_path_with_a_key() {
        let config: CompareConfig = serde_yaml::from_str(
            "unordered_arrays: ['$.tags', { path: '$.orders', by: id }, { path: '$.rows', by: [region, id] }]",
        )
        .unwrap();
        let mut diagnostics = Vec::new();
        let rule = compile_compare(&config, "routes[0].shadow.compare", &mut diagnostics);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        let compiled: Vec<(&str, Vec<&str>)> = rule
            .unordered_arrays
            .iter()
            .map(|u| (u.path.as_str(), u.by.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            compiled,
            [
                ("$.tags", vec![]),
                ("$.orders", vec!["id"]),
                ("$.rows", vec!["region", "id"])
            ]
        );
        // Written back as it was read.
        assert_eq!(
            serde_json::to_value(&config).unwrap()["unordered_arrays"],
            serde_json::json!(["$.tags", {"path": "$.orders", "by": "id"}, {"path": "$.rows", "by": ["region", "id"]}])
        );

        let bad: CompareConfig = serde_yaml::from_str(
            "unordered_arrays: [{ path: orders, by: id }, { path: '$.x', by: '' }]",
        )
        .unwrap();
        let mut diagnostics = Vec::new();
        compile_compare(&bad, "c", &mut diagnostics);
        let at: Vec<&str> = diagnostics.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(at, ["c.unordered_arrays[0]", "c.unordered_arrays[1].by[0]"]);
        assert!(
            serde_yaml::from_str::<CompareConfig>("unordered_arrays: [{ path: '$.x', key: id }]")
                .is_err(),
            "unknown keys are refused"
        );
    }
}
