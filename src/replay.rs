//! `strangler replay`: sends a recorded corpus ([`crate::corpus::format`]) to two targets, a
//! primary (legacy) and a candidate (the build under test), compares each pair of answers with
//! the diff engine production uses ([`crate::diff::judge`]: the same comparison, noise
//! cancellation, samples and redaction), writes the results to a diff store and leaves the
//! verdict to [`crate::report`], so a replay passes or fails exactly as `strangler report` would
//! on the same exchanges.
//!
//! What it owns: checking the whole corpus and the targets before anything is sent ([`plan`]),
//! and sending ([`run`]) with bounded concurrency, an optional rate and a timeout per request.
//! Only the two targets given are ever contacted: every request is the target's base URL plus
//! the corpus line's path and query (the corpus format cannot name a host, route edits change
//! only paths and headers, and redirects are not followed).
//!
//! With a route table (`--routes`), each request is matched as the proxy would match it: the
//! primary gets it as the route's upstream target gets it (its rewrite and header edits), the
//! candidate as the route's shadow copy gets it (the shadow target's edits), and the route's
//! `shadow.compare` rules apply. Without one, requests go as recorded and are compared with the
//! defaults plus `--ignore-json`.
//!
//! Not owned here: the report and its gate ([`crate::report`]), progress display (the CLI's).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use pingora_http::RequestHeader;

use crate::config::{CompareConfig, ConfigError, Stage};
use crate::corpus::format::{CorpusError, CorpusRequest};
use crate::diff::{CompareRule, DiffJob, compile_compare};
use crate::edits::RequestEdits;
use crate::exchange::{
    CapturedResponse, MemoryBudget, Provenance, RequestSummary, ShadowFailure, ShadowOutcome,
};
use crate::record::DiffRecord;
use crate::store::{DiffStore, StoreError};
use crate::vocabulary::Verdict;

/// The most of each answer kept for comparison, as for shadow copies.
pub const RESPONSE_LIMIT: usize = 1 << 20;
/// Records written to the store per transaction.
const BATCH: usize = 256;

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub corpus: PathBuf,
    pub primary: String,
    pub candidate: String,
    /// Requests (pairs) started per second at most; `None`: as fast as `concurrency` allows.
    pub rate: Option<f64>,
    /// Pairs in flight at once.
    pub concurrency: usize,
    /// Longest wait for one answer, body included.
    pub timeout: Duration,
    pub routes: Option<PathBuf>,
    /// Compare rules for a quick run, on top of the route's (or the defaults).
    pub ignore_json: Vec<String>,
    /// Methods the corpus may send.
    pub methods: Vec<Method>,
    /// Send each request to the primary twice and discount what differs (`compare.noise`).
    pub noise: bool,
    /// Where results go; a temporary file when `None`.
    pub store: Option<PathBuf>,
    /// Longest body sample stored per side.
    pub max_sample: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Corpus(#[from] CorpusError),
    #[error("--{which} {url}: {message}")]
    Target {
        which: &'static str,
        url: String,
        message: String,
    },
    #[error("--routes: {0}")]
    Routes(#[from] ConfigError),
    #[error("--ignore-json: {0}")]
    Compare(String),
    #[error("--concurrency must be at least 1 and --rate more than 0")]
    Pace,
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error(
        "the primary answered none of the {sent} requests (last error: {last}): nothing to compare"
    )]
    PrimaryUnreachable { sent: usize, last: String },
    #[error("cannot start the replay: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A base URL: `http://host:port` with an optional path prefix.
#[derive(Debug, Clone)]
struct Base {
    url: String,
    authority: http::uri::Authority,
    /// Without its trailing `/`; empty for none.
    prefix: String,
}

impl Base {
    fn parse(which: &'static str, url: &str) -> Result<Self, ReplayError> {
        let error = |message: &str| ReplayError::Target {
            which,
            url: url.to_owned(),
            message: message.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| error("not a URL; like http://127.0.0.1:8080"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(error("https is not supported yet; use http")),
            _ => return Err(error("must start with http://")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| error("has no host"))?;
        if uri.query().is_some() {
            return Err(error("must not have a query"));
        }
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    fn uri(&self, target: &str) -> Uri {
        Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(format!("{}{target}", self.prefix))
            .build()
            .expect("a checked base and target make a URI")
    }
}

/// One request as it goes to one target.
#[derive(Debug, Clone)]
struct Outgoing {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// One corpus line, ready to send to both targets.
#[derive(Debug, Clone)]
pub struct Planned {
    pub line: usize,
    /// The route it is reported under.
    pub route: String,
    stage: Stage,
    primary: Outgoing,
    candidate: Outgoing,
    body: Bytes,
    rule: Arc<CompareRule>,
}

/// The checked corpus: what [`run`] will send, and nothing else.
#[derive(Debug)]
pub struct Plan {
    pub requests: Vec<Planned>,
    primary: Base,
    candidate: Base,
    corpus_sha256: String,
}

/// Reads and checks everything (the corpus, the targets, the route table, the compare rules);
/// sends nothing.
pub fn plan(options: &ReplayOptions) -> Result<Plan, ReplayError> {
    let primary = Base::parse("primary", &options.primary)?;
    let candidate = Base::parse("candidate", &options.candidate)?;
    if options.concurrency == 0
        || options
            .rate
            .is_some_and(|rate| rate.is_nan() || rate <= 0.0)
    {
        return Err(ReplayError::Pace);
    }
    let shown = options.corpus.display().to_string();
    let text = std::fs::read_to_string(&options.corpus).map_err(|source| ReplayError::Read {
        path: shown.clone(),
        source,
    })?;
    let requests = crate::corpus::format::parse(&shown, &text, &options.methods)?;
    let table = options
        .routes
        .as_deref()
        .map(|path| crate::routing::load_route_table(path, 1))
        .transpose()?;
    let quick = quick_rule(options, None)?;
    let mut planned = Vec::with_capacity(requests.len());
    for request in requests {
        planned.push(plan_one(
            request,
            table.as_ref(),
            &quick,
            options,
            &primary,
            &candidate,
        )?);
    }
    Ok(Plan {
        requests: planned,
        primary,
        candidate,
        corpus_sha256: crate::config::sha256_hex(&text),
    })
}

/// The defaults (or a route's rule) with `--ignore-json` and `--noise` added.
fn quick_rule(
    options: &ReplayOptions,
    base: Option<&CompareRule>,
) -> Result<Arc<CompareRule>, ReplayError> {
    let mut diagnostics = Vec::new();
    let extra = compile_compare(
        &CompareConfig {
            ignore_json: options.ignore_json.clone(),
            ..CompareConfig::default()
        },
        "compare",
        &mut diagnostics,
    );
    if let Some(problem) = diagnostics.first() {
        return Err(ReplayError::Compare(problem.message.clone()));
    }
    let mut rule = match base {
        Some(base) => {
            let mut rule = base.clone();
            rule.ignore_json.extend(extra.ignore_json);
            rule
        }
        None => extra,
    };
    rule.noise |= options.noise;
    Ok(Arc::new(rule))
}

fn plan_one(
    request: CorpusRequest,
    table: Option<&crate::routing::RouteTable>,
    quick: &Arc<CompareRule>,
    options: &ReplayOptions,
    primary: &Base,
    candidate: &Base,
) -> Result<Planned, ReplayError> {
    let line = request.line;
    let bad = |message: String| {
        ReplayError::Corpus(CorpusError {
            file: options.corpus.display().to_string(),
            lines: vec![(line, message)],
        })
    };
    let mut header = RequestHeader::build(request.method.clone(), request.target.as_bytes(), None)
        .map_err(|error| bad(format!("target: {error}")))?;
    for (name, value) in &request.headers {
        header
            .append_header(name.clone(), value.clone())
            .map_err(|error| bad(format!("headers: {error}")))?;
    }
    let none = RequestEdits::default();
    let (route, stage, primary_edits, candidate_edits, rule) = match table {
        None => (
            request.route.clone().unwrap_or_else(|| "(corpus)".into()),
            Stage::Shadow,
            &none,
            &none,
            quick.clone(),
        ),
        Some(table) => match table.find(&header).map(|index| &table.routes()[index]) {
            Some(route) => {
                let primary_edits = &route.target(route.primary).edits;
                let (candidate_edits, rule) = match &route.shadow {
                    Some(shadow) => (
                        shadow.edits(),
                        quick_rule(options, Some(shadow.compare_rule().as_ref()))?,
                    ),
                    None => (primary_edits, quick.clone()),
                };
                (
                    route.name.clone(),
                    route.stage,
                    primary_edits,
                    candidate_edits,
                    rule,
                )
            }
            None => (
                "(default)".into(),
                Stage::Legacy,
                &none,
                &none,
                quick.clone(),
            ),
        },
    };
    let outgoing = |edits: &RequestEdits, base: &Base| -> Result<Outgoing, ReplayError> {
        let mut edited = header.clone();
        edits
            .apply(&mut edited)
            .map_err(|error| bad(format!("the route's edits failed: {error}")))?;
        let target = edited
            .uri
            .path_and_query()
            .map_or("/", |target| target.as_str())
            .to_owned();
        Ok(Outgoing {
            method: edited.method.clone(),
            uri: base.uri(&target),
            headers: edited.headers.clone(),
        })
    };
    Ok(Planned {
        line,
        route,
        stage,
        primary: outgoing(primary_edits, primary)?,
        candidate: outgoing(candidate_edits, candidate)?,
        body: request.body,
        rule,
    })
}

impl Plan {
    /// What `--dry-run` prints: every request as each target would get it.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for planned in &self.requests {
            out.push_str(&format!(
                "line {}  route {}\n  primary   {} {}\n  candidate {} {}\n",
                planned.line,
                planned.route,
                planned.primary.method,
                planned.primary.uri,
                planned.candidate.method,
                planned.candidate.uri,
            ));
        }
        out.push_str(&format!(
            "{} requests would be sent to {} and to {}; nothing was sent (--dry-run)\n",
            self.requests.len(),
            self.primary.url,
            self.candidate.url,
        ));
        out
    }
}

/// How one route's requests went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTally {
    pub sent: u64,
    /// Match or noise only.
    pub matched: u64,
    pub mismatched: u64,
    /// The candidate failed (timeout, refused): counted as a difference.
    pub candidate_errors: u64,
    /// The primary failed: nothing to compare, not counted in the report.
    pub primary_errors: u64,
}

/// What a finished replay did; the verdict is the report's, read from `store`.
#[derive(Debug)]
pub struct Replayed {
    pub store: PathBuf,
    /// The replica name this run's rows carry in `store`.
    pub replica: String,
    /// Delete `store` when done: it was a temporary file.
    pub temporary: bool,
    pub routes: BTreeMap<String, RouteTally>,
    pub elapsed: Duration,
}

impl Replayed {
    pub fn sent(&self) -> u64 {
        self.routes.values().map(|tally| tally.sent).sum()
    }

    /// One line per route, for a log.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (route, tally) in &self.routes {
            out.push_str(&format!(
                "replay: {route}: {} sent, {} match, {} differ, {} candidate errors, {} primary errors\n",
                tally.sent,
                tally.matched,
                tally.mismatched,
                tally.candidate_errors,
                tally.primary_errors
            ));
        }
        let seconds = self.elapsed.as_secs_f64();
        out.push_str(&format!(
            "replay: {} requests compared in {:.2}s ({:.0}/s)\n",
            self.sent(),
            seconds,
            self.sent() as f64 / seconds.max(1e-9)
        ));
        out
    }

    /// Removes a temporary store (and its WAL files).
    pub fn clean_up(&self) {
        if self.temporary {
            for suffix in ["", "-wal", "-shm"] {
                let mut path = self.store.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Sends `plan` and stores the judged exchanges. `each` is told the route of every finished
/// pair (for progress).
pub fn run(
    plan: Plan,
    options: &ReplayOptions,
    mut each: impl FnMut(&str),
) -> Result<Replayed, ReplayError> {
    let (store_path, temporary) = match &options.store {
        Some(path) => (path.clone(), false),
        None => (
            std::env::temp_dir().join(format!("strangler-replay-{}.db", uuid::Uuid::new_v4())),
            true,
        ),
    };
    let replica = format!(
        "replay {}",
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
    );
    // Rows of earlier runs in the same `--store` stay; the report reads this run's replica.
    let mut store = DiffStore::open(
        &store_path,
        u64::MAX / 2,
        Duration::from_secs(10 * 365 * 86400),
    )?
    .writing_as(&replica, 1.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ReplayError::Runtime)?;
    let started = Instant::now();
    let mut routes: BTreeMap<String, RouteTally> = BTreeMap::new();
    let mut last_primary_error = String::new();
    let metrics = crate::metrics::Metrics::new();
    let budget = MemoryBudget::new(usize::MAX);
    let provenance = |planned: &Planned, plan: &Plan| Provenance {
        primary: plan.primary.url.as_str().into(),
        candidate: plan.candidate.url.as_str().into(),
        stage: planned.stage,
        generation: 1,
        config_sha256: plan.corpus_sha256.as_str().into(),
    };
    let result: Result<(), ReplayError> = runtime.block_on(async {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(options.concurrency)
                .build_http();
        let permits = Arc::new(tokio::sync::Semaphore::new(options.concurrency));
        let mut ticker = options.rate.map(|rate| {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });
        let mut running = tokio::task::JoinSet::new();
        let mut records: Vec<DiffRecord> = Vec::with_capacity(BATCH);
        let mut finish = |planned: Planned,
                          answers: Answers,
                          records: &mut Vec<DiffRecord>|
         -> Result<(), ReplayError> {
            let tally = routes.entry(planned.route.clone()).or_default();
            tally.sent += 1;
            if let Err(error) = &answers.primary {
                tally.primary_errors += 1;
                last_primary_error = error.to_string();
            }
            let outcome = ShadowOutcome {
                route: planned.route.clone(),
                provenance: provenance(&planned, &plan),
                request: RequestSummary {
                    method: planned.primary.method.to_string(),
                    path: planned.primary.uri.path().to_owned(),
                    query: planned.primary.uri.query().map(str::to_owned),
                    request_id: format!("replay-line-{}", planned.line),
                    secrets: crate::redact::Secrets::default(),
                },
                primary: answers.primary.ok(),
                shadow: answers.candidate,
            };
            let job = DiffJob {
                rule: planned.rule.clone(),
                outcome,
                noise: answers.noise,
                memory: budget.reservation(),
                guard: None,
            };
            if let Some(record) = crate::diff::judge(job, &metrics, options.max_sample) {
                match record.verdict {
                    Verdict::Match | Verdict::Noise => tally.matched += 1,
                    Verdict::ShadowError => tally.candidate_errors += 1,
                    _ => tally.mismatched += 1,
                }
                records.push(record);
            }
            each(&planned.route);
            if records.len() >= BATCH {
                store.insert(records)?;
                records.clear();
            }
            Ok(())
        };
        for planned in plan.requests.iter().cloned() {
            if let Some(ticker) = ticker.as_mut() {
                ticker.tick().await;
            }
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let client = client.clone();
            let timeout = options.timeout;
            running.spawn(async move {
                let answers = exchange(&client, &planned, timeout).await;
                drop(permit);
                (planned, answers)
            });
            while let Some(done) = running.try_join_next() {
                let (planned, answers) = done.expect("replay tasks do not panic");
                finish(planned, answers, &mut records)?;
            }
        }
        while let Some(done) = running.join_next().await {
            let (planned, answers) = done.expect("replay tasks do not panic");
            finish(planned, answers, &mut records)?;
        }
        if !records.is_empty() {
            store.insert(&records)?;
        }
        Ok::<(), ReplayError>(())
    });
    let replayed = Replayed {
        store: store_path,
        replica,
        temporary,
        routes,
        elapsed: started.elapsed(),
    };
    if let Err(error) = result {
        replayed.clean_up();
        return Err(error);
    }
    let sent = replayed.sent() as usize;
    let failed: u64 = replayed.routes.values().map(|t| t.primary_errors).sum();
    if sent > 0 && failed as usize == sent {
        replayed.clean_up();
        return Err(ReplayError::PrimaryUnreachable {
            sent,
            last: last_primary_error,
        });
    }
    Ok(replayed)
}

/// Both answers to one corpus request (and the primary's second one, with noise on).
struct Answers {
    primary: Result<CapturedResponse, ShadowFailure>,
    candidate: Result<CapturedResponse, ShadowFailure>,
    noise: Option<Result<CapturedResponse, ShadowFailure>>,
}

async fn exchange(
    client: &Client<HttpConnector, Full<Bytes>>,
    planned: &Planned,
    timeout: Duration,
) -> Answers {
    let (primary, candidate) = tokio::join!(
        send(client, &planned.primary, &planned.body, timeout),
        send(client, &planned.candidate, &planned.body, timeout),
    );
    let noise = if planned.rule.noise {
        Some(send(client, &planned.primary, &planned.body, timeout).await)
    } else {
        None
    };
    Answers {
        primary,
        candidate,
        noise,
    }
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    outgoing: &Outgoing,
    body: &Bytes,
    timeout: Duration,
) -> Result<CapturedResponse, ShadowFailure> {
    let mut request = http::Request::new(Full::new(body.clone()));
    *request.method_mut() = outgoing.method.clone();
    *request.uri_mut() = outgoing.uri.clone();
    *request.headers_mut() = outgoing.headers.clone();
    let answer = async {
        let response = client
            .request(request)
            .await
            .map_err(|error| ShadowFailure::Failed(describe(&error)))?;
        let (parts, mut body) = response.into_parts();
        let mut kept = Vec::new();
        let mut truncated = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| ShadowFailure::Failed(error.to_string()))?;
            if let Ok(data) = frame.into_data() {
                let room = RESPONSE_LIMIT.saturating_sub(kept.len());
                if data.len() > room {
                    truncated = true;
                }
                kept.extend_from_slice(&data[..data.len().min(room)]);
                if truncated {
                    break;
                }
            }
        }
        Ok::<_, ShadowFailure>(CapturedResponse {
            status: parts.status,
            headers: parts.headers,
            body: kept.into(),
            truncated,
        })
    };
    tokio::time::timeout(timeout, answer)
        .await
        .unwrap_or(Err(ShadowFailure::Timeout))
}

/// The client's error with its causes (its `Display` alone says `client error (Connect)`).
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn options(corpus: &Path) -> ReplayOptions {
        ReplayOptions {
            corpus: corpus.to_owned(),
            primary: "http://127.0.0.1:1".into(),
            candidate: "http://127.0.0.1:2/prefix/".into(),
            rate: None,
            concurrency: 4,
            timeout: Duration::from_secs(1),
            routes: None,
            ignore_json: vec!["$.at".into()],
            methods: vec![Method::GET],
            noise: false,
            store: None,
            max_sample: 4096,
        }
    }

    #[test]
    fn a_plan_sends_each_line_to_the_two_bases_only() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("c.jsonl");
        std::fs::write(
            &corpus,
            r#"{"version":1,"route":"users","method":"GET","target":"/u/1?x=2","headers":[["host","elsewhere.example"]]}"#,
        )
        .unwrap();
        let plan = plan(&options(&corpus)).unwrap();
        let planned = &plan.requests[0];
        assert_eq!(planned.route, "users");
        assert_eq!(
            planned.primary.uri.to_string(),
            "http://127.0.0.1:1/u/1?x=2"
        );
        assert_eq!(
            planned.candidate.uri.to_string(),
            "http://127.0.0.1:2/prefix/u/1?x=2"
        );
        assert_eq!(planned.rule.ignore_json.len(), 1);
        assert!(plan.describe().contains("nothing was sent"));
    }

    #[test]
    fn bad_targets_and_pacing_are_refused_before_reading_the_corpus() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("missing.jsonl");
        let mut bad = options(&corpus);
        bad.primary = "ftp://x".into();
        assert!(matches!(
            plan(&bad),
            Err(ReplayError::Target {
                which: "primary",
                ..
            })
        ));
        let mut bad = options(&corpus);
        bad.concurrency = 0;
        assert!(matches!(plan(&bad), Err(ReplayError::Pace)));
        assert!(matches!(
            plan(&options(&corpus)),
            Err(ReplayError::Read { .. })
        ));
    }

    #[test]
    fn a_bad_ignore_path_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("c.jsonl");
        std::fs::write(&corpus, r#"{"version":1,"method":"GET","target":"/"}"#).unwrap();
        let mut bad = options(&corpus);
        bad.ignore_json = vec!["at".into()];
        let error = plan(&bad).unwrap_err().to_string();
        assert!(error.contains("--ignore-json"), "{error}");
    }
}
