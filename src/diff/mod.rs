//! Response diffing: compare the primary's and the shadow's answers, discount noise, count the
//! verdict in metrics and store the exchange.
//!
//! Shadow tasks hand finished exchanges to [`DiffSink::submit`], which never blocks: a bounded
//! queue feeds one worker thread that compares, judges and writes to the [`crate::store`] in
//! batches. When the queue is full the exchange is skipped and counted, so big bodies or a slow
//! disk never stall request handling.

mod compare;
pub mod path;

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

pub use compare::{
    CompareRule, DEFAULT_IGNORED_HEADERS, Difference, Kind, compare, discount_noise,
};
use path::PathPattern;

use crate::config::{CompareConfig, Diagnostic, NoiseMode};
use crate::metrics::Metrics;
use crate::shadow::{CapturedResponse, ShadowFailure, ShadowOutcome};
use crate::store::{DiffRecord, DiffStore, now_ms};

/// Exchanges waiting for the worker; more are skipped.
const QUEUE_CAPACITY: usize = 1024;
/// Longest body sample stored per side.
const SAMPLE_LIMIT: usize = 4096;

/// A finished shadow exchange, ready to compare.
pub struct DiffJob {
    pub rule: Arc<CompareRule>,
    pub outcome: ShadowOutcome,
    /// The second primary answer, when noise cancellation is on.
    pub noise: Option<Result<CapturedResponse, ShadowFailure>>,
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
    pub path: std::path::PathBuf,
    pub max_rows: u64,
    pub max_age: Duration,
}

impl DiffSink {
    /// Starts the worker thread.
    pub fn start(store: StoreSettings, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let (queue, jobs) = sync_channel(QUEUE_CAPACITY);
        let worker_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("diff".into())
            .spawn(move || run_worker(jobs, store, worker_metrics))?;
        Ok(Self { queue, metrics })
    }

    /// Queues `job` for comparison; when the queue is full it is skipped and counted.
    pub fn submit(&self, job: DiffJob) {
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.metrics.diff_result(&job.outcome.route, "skipped");
            }
        }
    }
}

fn run_worker(jobs: Receiver<DiffJob>, settings: StoreSettings, metrics: Arc<Metrics>) {
    let mut store: Option<DiffStore> = None;
    let mut store_failed = false;
    while let Ok(first) = jobs.recv() {
        // Drain what is waiting so the store writes one transaction per batch.
        let mut records = Vec::new();
        for job in std::iter::once(first).chain(jobs.try_iter().take(256)) {
            if let Some(record) = judge(job, &metrics) {
                records.push(record);
            }
        }
        if records.is_empty() || store_failed {
            continue;
        }
        if store.is_none() {
            match DiffStore::open(&settings.path, settings.max_rows, settings.max_age) {
                Ok(opened) => store = Some(opened),
                Err(error) => {
                    tracing::error!(%error, "cannot open the diff store; diffs are counted but not stored");
                    metrics.diff_store_errors.with_label_values(&["open"]).inc();
                    store_failed = true;
                    continue;
                }
            }
        }
        if let Some(store) = store.as_mut()
            && let Err(error) = store.insert(&records)
        {
            tracing::warn!(%error, "cannot store diffs");
            metrics
                .diff_store_errors
                .with_label_values(&["write"])
                .inc();
        }
    }
}

/// Compares one exchange, counts its verdict, and returns what to store.
fn judge(job: DiffJob, metrics: &Metrics) -> Option<DiffRecord> {
    let DiffJob {
        rule,
        outcome,
        noise,
    } = job;
    let Some(primary) = outcome.primary.as_ref() else {
        // The primary failed: nothing to compare the candidate with.
        metrics.diff_result(&outcome.route, "skipped");
        return None;
    };
    let (verdict, differences, noisy, shadow_status, shadow_sample) = match &outcome.shadow {
        Err(failure) => {
            let difference = Difference {
                path: "shadow".into(),
                kind: Kind::Changed,
                primary: Some(primary.status.as_u16().to_string()),
                shadow: Some(failure.to_string()),
            };
            ("shadow_error", vec![difference], Vec::new(), None, None)
        }
        Ok(shadow) => {
            let differences = compare(&rule, primary, shadow);
            let noise_differences = match &noise {
                Some(Ok(second)) => compare(&rule, primary, second),
                _ => Vec::new(),
            };
            let (counted, noisy) = discount_noise(differences, &noise_differences);
            let verdict = match (counted.is_empty(), noisy.is_empty()) {
                (false, _) => "mismatch",
                (true, false) => "noise",
                (true, true) => "match",
            };
            // Samples explain differences; a matching exchange needs none.
            let sample = if verdict == "match" {
                None
            } else {
                sample(&rule, shadow)
            };
            (
                verdict,
                counted,
                noisy,
                Some(shadow.status.as_u16()),
                sample,
            )
        }
    };
    metrics.diff_result(
        &outcome.route,
        if verdict == "shadow_error" {
            "mismatch"
        } else {
            verdict
        },
    );
    let request = outcome.request;
    Some(DiffRecord {
        at_ms: now_ms(),
        route: outcome.route,
        method: request.method,
        path: request.path,
        query: request.query,
        request_id: request.request_id,
        primary_status: Some(primary.status.as_u16()),
        shadow_status,
        verdict: verdict.to_owned(),
        differences,
        noise: noisy,
        primary_sample: if verdict == "match" {
            None
        } else {
            sample(&rule, primary)
        },
        shadow_sample,
    })
}

/// A bounded, redacted body sample for the store.
fn sample(rule: &CompareRule, response: &CapturedResponse) -> Option<String> {
    if response.body.is_empty() {
        return None;
    }
    let text = if rule.redact_json.is_empty() {
        String::from_utf8_lossy(&response.body).into_owned()
    } else {
        // A body that does not parse (not JSON, or cut at the capture limit) cannot be redacted,
        // so none of it is kept.
        let mut value = serde_json::from_slice::<serde_json::Value>(&response.body).ok()?;
        redact(&mut value, &rule.redact_json, &mut Vec::new());
        value.to_string()
    };
    Some(compare::truncate_to(text, SAMPLE_LIMIT))
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
    for (field, patterns, out) in [
        ("ignore_json", &config.ignore_json, &mut rule.ignore_json),
        (
            "unordered_arrays",
            &config.unordered_arrays,
            &mut rule.unordered_arrays,
        ),
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
) -> DiffJob {
    DiffJob {
        rule,
        outcome,
        noise,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(body: &str) -> CapturedResponse {
        CapturedResponse {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from(body.to_owned()),
            truncated: false,
        }
    }

    #[test]
    fn samples_are_redacted_or_not_kept() {
        let rule = CompareRule {
            redact_json: vec![PathPattern::parse("$.token").unwrap()],
            ..CompareRule::default()
        };
        assert_eq!(
            sample(&rule, &response(r#"{"token":"secret","n":1}"#)).as_deref(),
            Some(r#"{"n":1,"token":"[redacted]"}"#)
        );
        // Cut short (or not JSON at all), it cannot be redacted: nothing is stored.
        assert_eq!(sample(&rule, &response(r#"{"token":"secr"#)), None);
        assert_eq!(
            sample(&CompareRule::default(), &response("plain text")).as_deref(),
            Some("plain text")
        );
    }
}
