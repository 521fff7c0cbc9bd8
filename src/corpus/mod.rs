//! Recording a route's requests for replay in CI: the compiled `record:` rule, the capture of
//! one request on the proxy's path, its redaction, and the worker that stores it. The corpus
//! file format (`strangler corpus export` writes it, `strangler replay` reads it) is
//! [`format`]; the table is [`crate::store::corpus`]'s.
//!
//! # Where recordings go, and why there
//!
//! Into the diff store (`server.diff_store`), in a `recorded_requests` table of its own. A fleet
//! already shares that store (Postgres) or has one file per replica (SQLite) that
//! `strangler report` reads; `strangler corpus export --db ...` reads recordings the same way,
//! merged across replicas, so getting a corpus out of a running fleet needs no new volume, port
//! or credential. A file per replica would need collecting from every pod.
//!
//! # Never in the way of a request
//!
//! The proxy calls [`begin`] when it routes a request and [`Recording::on_body_chunk`] with each
//! body chunk; the last chunk hands the redacted request to a bounded queue (`try_send`: a full
//! queue drops it) that one worker thread drains into the store in batches. The bodies held,
//! from capture until they are written, count against one process-wide budget
//! ([`MEMORY_BUDGET`]); a request that would exceed it is not recorded. A store that does not
//! open or write is logged and retried, and costs the proxy nothing. This is a queue of its own
//! rather than the diff worker's: a burst of recordings must not crowd comparisons out of their
//! queue (nor the reverse), and recordings need no judging.
//!
//! # Redaction
//!
//! With the diff store's rules ([`crate::redact`]): the credential headers
//! ([`crate::redact::CREDENTIAL_HEADERS`], cookies included) and the route's `redact_headers`
//! read `[redacted]`, query parameters are redacted as `server.redact` says (in the request
//! target and in form bodies), the route's `redact_json` paths of a JSON body read
//! `"[redacted]"` (a body that is not JSON is then not recorded), and every secret value found
//! is scrubbed from the rest of the body. Redaction happens before the request is queued, so no
//! reader of the store can leak what it never received.

pub mod format;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, Method};
use pingora_http::RequestHeader;

use crate::config::{Diagnostic, RecordConfig, ServerConfig};
use crate::diff::path::{PathPattern, Step};
use crate::redact::{CREDENTIAL_HEADERS, REDACTED, Redaction, Secrets};
use crate::store::StoreLocation;
use crate::store::corpus::{CorpusWriter, RecordedRequest, Retention};

/// Bytes of recorded requests held at once, from capture until written.
pub const MEMORY_BUDGET: usize = 32 * 1024 * 1024;
/// Recorded requests waiting for the worker; more are dropped.
const QUEUE_CAPACITY: usize = 1024;
/// How long the worker waits before it tries again to open a store that would not open.
const REOPEN_AFTER: Duration = Duration::from_secs(30);

/// Headers about the connection, not the request: a replay makes its own.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// A route's compiled `record:`.
#[derive(Debug)]
pub struct RecordRule {
    sample: f64,
    methods: Vec<Method>,
    max_body: usize,
    retention: Retention,
    redact_headers: Vec<HeaderName>,
    redact_json: Vec<PathPattern>,
    redaction: Arc<Redaction>,
}

/// Checks and compiles a route's `record:`; problems go to `diagnostics` under `path`
/// (`routes[2].record`).
pub fn compile_record(
    config: &RecordConfig,
    path: &str,
    redaction: &Arc<Redaction>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<RecordRule> {
    let before = diagnostics.len();
    crate::config::sample_share(
        config.sample,
        path,
        "0.01 records one request in a hundred",
        diagnostics,
    );
    let methods = crate::config::methods(&config.methods, path, diagnostics);
    if config.methods.is_empty() {
        diagnostics.push(
            Diagnostic::new(
                format!("{path}.methods"),
                "records nothing: the list is empty",
            )
            .with_hint("leave it out to record GET, HEAD and OPTIONS"),
        );
    }
    for (field, value) in [
        ("max_rows", config.max_rows),
        ("max_bytes", config.max_bytes.as_u64()),
    ] {
        if value == 0 {
            diagnostics.push(
                Diagnostic::new(format!("{path}.{field}"), "must be at least 1")
                    .with_hint("remove `record:` to stop recording"),
            );
        }
    }
    if config.max_age.is_zero() {
        diagnostics.push(Diagnostic::new(
            format!("{path}.max_age"),
            "must be greater than zero",
        ));
    }
    let mut redact_headers = Vec::new();
    for (number, name) in config.redact_headers.iter().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => redact_headers.push(name),
            Err(_) => diagnostics.push(Diagnostic::new(
                format!("{path}.redact_headers[{number}]"),
                format!("`{name}` is not a valid header name"),
            )),
        }
    }
    let mut redact_json = Vec::new();
    for (number, pattern) in config.redact_json.iter().enumerate() {
        match PathPattern::parse(pattern) {
            Ok(pattern) => redact_json.push(pattern),
            Err(message) => diagnostics.push(Diagnostic::new(
                format!("{path}.redact_json[{number}]"),
                message,
            )),
        }
    }
    if diagnostics.len() != before {
        return None;
    }
    Some(RecordRule {
        sample: config.sample,
        methods,
        max_body: usize::try_from(config.max_body.as_u64()).unwrap_or(usize::MAX),
        retention: Retention {
            max_rows: config.max_rows,
            max_bytes: config.max_bytes.as_u64(),
            max_age: config.max_age,
        },
        redact_headers,
        redact_json,
        redaction: redaction.clone(),
    })
}

/// One request being recorded: its head as the client sent it, and its body so far.
pub struct Recording {
    route: Arc<str>,
    rule: Arc<RecordRule>,
    request: RequestHeader,
    body: Vec<u8>,
    /// Bytes held against [`MEMORY_BUDGET`].
    reserved: usize,
    sink: &'static Sink,
    done: bool,
}

/// Starts recording `request` when `rule` selects it (method, sample, declared size, and not a
/// protocol switch). The store is `server.diff_store`; its worker starts with the first
/// recording of the process.
pub fn begin(
    route: &str,
    rule: &Arc<RecordRule>,
    request: &RequestHeader,
    server: &ServerConfig,
) -> Option<Box<Recording>> {
    if !rule.methods.contains(&request.method)
        || crate::hygiene::is_upgrade_request(request)
        || (rule.sample < 1.0 && fastrand::f64() >= rule.sample)
    {
        return None;
    }
    let declared = request
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > rule.max_body) {
        return None;
    }
    let sink = SINK.get_or_init(|| Sink::start(server));
    Some(Box::new(Recording {
        route: route.into(),
        rule: rule.clone(),
        request: request.clone(),
        body: Vec::new(),
        reserved: 0,
        sink,
        done: false,
    }))
}

impl Recording {
    /// Keeps one chunk of the client's body; the last one queues the recorded request. Returns
    /// `false` when the recording was given up (body over `max_body`, memory budget spent, or
    /// the queue full): the caller drops it.
    pub fn on_body_chunk(&mut self, chunk: Option<&Bytes>, end_of_stream: bool) -> bool {
        if self.done {
            // A retry replays the body; the request was recorded already.
            return true;
        }
        if let Some(chunk) = chunk.filter(|chunk| !chunk.is_empty()) {
            if self.body.len() + chunk.len() > self.rule.max_body || !reserve(chunk.len()) {
                return false;
            }
            self.reserved += chunk.len();
            self.body.extend_from_slice(chunk);
        }
        if !end_of_stream {
            return true;
        }
        self.done = true;
        let Some(recorded) = redact_request(
            &self.route,
            &self.rule,
            &self.request,
            std::mem::take(&mut self.body),
        ) else {
            return false;
        };
        // The redacted copy replaces the raw body in the budget until it is written.
        release(std::mem::take(&mut self.reserved));
        let size = recorded.body.len();
        if !reserve(size) {
            return false;
        }
        let queued = Queued {
            request: recorded,
            retention: self.rule.retention,
            reserved: size,
        };
        match self.sink.queue.try_send(queued) {
            Ok(()) => true,
            Err(TrySendError::Full(queued) | TrySendError::Disconnected(queued)) => {
                release(queued.reserved);
                false
            }
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        release(self.reserved);
    }
}

static USED: AtomicUsize = AtomicUsize::new(0);

fn reserve(bytes: usize) -> bool {
    USED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
        used.checked_add(bytes)
            .filter(|&total| total <= MEMORY_BUDGET)
    })
    .is_ok()
}

fn release(bytes: usize) {
    USED.fetch_sub(bytes, Ordering::AcqRel);
}

/// `request` as it is stored: redacted (see the module doc), without connection headers.
/// `None` when its body cannot be redacted (`redact_json` on a body that is not JSON).
pub fn redact_request(
    route: &str,
    rule: &RecordRule,
    request: &RequestHeader,
    body: Vec<u8>,
) -> Option<RecordedRequest> {
    let mut secrets = Secrets::default();
    secrets.add_credentials(request);
    let uri = &request.uri;
    let mut target = uri.path().to_owned();
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(&rule.redaction.query_and_secrets(query, &mut secrets));
    }
    let mut headers = Vec::with_capacity(request.headers.len());
    let mut form = false;
    for (name, value) in &request.headers {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        let secret = CREDENTIAL_HEADERS.contains(name) || rule.redact_headers.contains(name);
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if secret {
            secrets.add(&text);
            headers.push((name.as_str().to_owned(), REDACTED.to_owned()));
            continue;
        }
        if *name == http::header::CONTENT_TYPE {
            form = text
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded");
        }
        headers.push((name.as_str().to_owned(), text));
    }
    let mut body = body;
    if !body.is_empty() && !rule.redact_json.is_empty() {
        let mut value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        redact_json(&mut value, &rule.redact_json, &mut Vec::new());
        body = serde_json::to_vec(&value).expect("JSON serializes");
    } else if form && let Ok(text) = std::str::from_utf8(&body) {
        body = rule
            .redaction
            .query_and_secrets(text, &mut secrets)
            .into_bytes();
    }
    let secrets = secrets.sorted();
    if !secrets.is_empty() {
        secrets.scrub(&mut target);
        if let Ok(text) = String::from_utf8(body.clone()) {
            let mut text = text;
            secrets.scrub(&mut text);
            body = text.into_bytes();
        }
        for (name, value) in &mut headers {
            if value != REDACTED && !name.eq_ignore_ascii_case("host") {
                secrets.scrub(value);
            }
        }
    }
    Some(RecordedRequest {
        at_ms: crate::store::now_ms(),
        route: route.to_owned(),
        method: request.method.as_str().to_owned(),
        target,
        headers,
        body,
    })
}

/// Replaces the values at `patterns` with `"[redacted]"`.
fn redact_json(value: &mut serde_json::Value, patterns: &[PathPattern], path: &mut Vec<Step<'_>>) {
    if patterns.iter().any(|pattern| pattern.matches(path)) {
        *value = serde_json::Value::String(REDACTED.into());
        return;
    }
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                path.push(Step::Key(key.clone().into()));
                redact_json(child, patterns, path);
                path.pop();
            }
        }
        serde_json::Value::Array(items) => {
            for (index, child) in items.iter_mut().enumerate() {
                path.push(Step::Index(index));
                redact_json(child, patterns, path);
                path.pop();
            }
        }
        _ => {}
    }
}

struct Queued {
    request: RecordedRequest,
    retention: Retention,
    reserved: usize,
}

/// The queue to the recording worker. One per process: the store is the process's
/// `server.diff_store`, which a reload does not change.
struct Sink {
    queue: SyncSender<Queued>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

impl Sink {
    fn start(server: &ServerConfig) -> Self {
        let (queue, requests) = sync_channel(QUEUE_CAPACITY);
        let location = server.diff_store.clone();
        let password_file = server.diff_store_password_file.clone();
        let replica = crate::store::replica_name(server.replica.as_deref());
        let spawned = std::thread::Builder::new()
            .name("record".into())
            .spawn(move || run_worker(requests, location, password_file, replica));
        if let Err(error) = spawned {
            // The receiver is gone with the closure: every recording is dropped, none blocks.
            tracing::error!(%error, "cannot start the recording worker; nothing is recorded");
        }
        Self { queue }
    }
}

fn run_worker(
    requests: Receiver<Queued>,
    location: StoreLocation,
    password_file: Option<std::path::PathBuf>,
    replica: String,
) {
    let mut writer: Option<CorpusWriter> = None;
    let mut failed_open_at: Option<Instant> = None;
    while let Ok(first) = requests.recv() {
        let queued: Vec<Queued> = std::iter::once(first)
            .chain(requests.try_iter().take(255))
            .collect();
        let reserved: usize = queued.iter().map(|queued| queued.reserved).sum();
        let batch: Vec<(RecordedRequest, Retention)> = queued
            .into_iter()
            .map(|queued| (queued.request, queued.retention))
            .collect();
        if writer.is_none() && failed_open_at.is_none_or(|at| at.elapsed() >= REOPEN_AFTER) {
            match CorpusWriter::open(&location, password_file.as_deref()) {
                Ok(opened) => {
                    writer = Some(opened);
                    failed_open_at = None;
                }
                Err(error) => {
                    tracing::error!(%error, retry_in = ?REOPEN_AFTER, "cannot open the store for recorded requests; they are dropped");
                    failed_open_at = Some(Instant::now());
                }
            }
        }
        if let Some(open) = writer.as_mut()
            && let Err(error) = open.insert(&replica, &batch)
        {
            tracing::warn!(%error, requests = batch.len(), "cannot store recorded requests");
            // A Postgres connection that failed is opened again for the next batch.
            if location.is_postgres() {
                writer = None;
            }
        }
        drop(batch);
        release(reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedactConfig;

    fn config(yaml: &str) -> RecordConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn compile(yaml: &str) -> Result<RecordRule, Vec<String>> {
        let mut diagnostics = Vec::new();
        let redaction = Arc::new(Redaction::compile(&RedactConfig::default()));
        compile_record(
            &config(yaml),
            "routes[0].record",
            &redaction,
            &mut diagnostics,
        )
        .ok_or_else(|| {
            diagnostics
                .iter()
                .map(|d| format!("{}: {}", d.path, d.message))
                .collect()
        })
    }

    #[test]
    fn defaults_record_safe_methods_of_one_request_in_a_hundred() {
        let rule = compile("{}").unwrap();
        assert_eq!(rule.methods, [Method::GET, Method::HEAD, Method::OPTIONS]);
        assert_eq!(rule.sample, 0.01);
        assert_eq!(rule.max_body, 64 * 1024);
        assert_eq!(rule.retention.max_rows, 10_000);
    }

    #[test]
    fn every_bad_field_is_named() {
        let errors = compile(
            "{ sample: 2, methods: ['G ET'], max_rows: 0, max_bytes: 0, max_age: 0s,
               redact_headers: ['bad header'], redact_json: ['user.name'] }",
        )
        .unwrap_err()
        .join("\n");
        for field in [
            "routes[0].record.sample",
            "routes[0].record.methods[0]",
            "routes[0].record.max_rows",
            "routes[0].record.max_bytes",
            "routes[0].record.max_age",
            "routes[0].record.redact_headers[0]",
            "routes[0].record.redact_json[0]",
        ] {
            assert!(errors.contains(field), "{field} missing from:\n{errors}");
        }
    }

    #[test]
    fn an_empty_method_list_is_refused() {
        let errors = compile("{ methods: [] }").unwrap_err().join("\n");
        assert!(errors.contains("routes[0].record.methods"), "{errors}");
    }

    fn request(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("POST", target.as_bytes(), None).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    #[test]
    fn credentials_cookies_tokens_and_json_paths_are_redacted() {
        let rule = compile(
            "{ methods: [POST], redact_headers: [x-session], redact_json: ['$.card.number'] }",
        )
        .unwrap();
        let request = request(
            "/pay?token=s3cr3t-token&page=2",
            &[
                ("authorization", "Bearer abc.def.ghi"),
                ("cookie", "sid=cookie-secret; theme=dark"),
                ("x-session", "session-value"),
                ("content-type", "application/json"),
                ("content-length", "60"),
                ("accept", "application/json"),
            ],
        );
        let body =
            br#"{"card":{"number":"4111111111111111"},"note":"abc.def.ghi","amount":5}"#.to_vec();
        let recorded = redact_request("pay", &rule, &request, body).unwrap();
        let text = format!("{recorded:?}{}", String::from_utf8_lossy(&recorded.body));
        for secret in [
            "s3cr3t-token",
            "abc.def.ghi",
            "cookie-secret",
            "session-value",
            "4111111111111111",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(recorded.target, "/pay?token=[redacted]&page=2");
        assert!(
            recorded
                .headers
                .contains(&("authorization".into(), REDACTED.into()))
        );
        assert!(
            recorded
                .headers
                .contains(&("accept".into(), "application/json".into()))
        );
        assert!(
            !recorded
                .headers
                .iter()
                .any(|(name, _)| name == "content-length"),
            "a replay frames its own body"
        );
        let body: serde_json::Value = serde_json::from_slice(&recorded.body).unwrap();
        assert_eq!(body["card"]["number"], "[redacted]");
        assert_eq!(body["amount"], 5);
    }

    #[test]
    fn a_body_that_cannot_be_redacted_is_not_recorded() {
        let rule = compile("{ methods: [POST], redact_json: ['$.password'] }").unwrap();
        let request = request("/login", &[("content-type", "text/plain")]);
        assert!(redact_request("r", &rule, &request, b"password=x".to_vec()).is_none());
        assert!(redact_request("r", &rule, &request, Vec::new()).is_some());
    }

    #[test]
    fn form_bodies_lose_their_listed_parameters() {
        let rule = compile("{ methods: [POST] }").unwrap();
        let request = request(
            "/login",
            &[("content-type", "application/x-www-form-urlencoded")],
        );
        let recorded =
            redact_request("r", &rule, &request, b"user=ann&password=hunter2".to_vec()).unwrap();
        assert_eq!(recorded.body, b"user=ann&password=[redacted]");
    }

    #[test]
    fn the_memory_budget_is_given_back() {
        let before = USED.load(Ordering::Acquire);
        assert!(reserve(1000));
        assert!(!reserve(MEMORY_BUDGET), "over the budget");
        release(1000);
        assert_eq!(USED.load(Ordering::Acquire), before);
    }
}
