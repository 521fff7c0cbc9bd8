//! `strangler report`: a summary of stored diffs per route and direction, with a verdict CI can
//! gate on.
//!
//! Reads one or more diff stores (one per replica; they are merged), groups the exchanges by
//! route and direction (which upstream was primary, which the candidate: `legacy → orders-v2` is
//! judged apart from `orders-v2 → legacy`), counts how many matched, differed or were noise,
//! lists the JSON paths that differ most with the kind of difference and an example, suggests
//! `ignore_json` rules for paths that are noise most of the time, and decides pass/fail from
//! `--max-diff-rate` ([`DiffRate`]) and `--min-samples`. Every output format renders the same
//! verdicts, so a JUnit file never disagrees with the exit status.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write};
use std::path::PathBuf;
use std::str::FromStr;

use serde::Serialize;

use crate::diff::Kind;
use crate::diff::path::generalize;
use crate::store::{DiffRecord, Filter, GenerationFilter, StoreError, read_records};

/// What the report covers and how it judges.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub databases: Vec<PathBuf>,
    pub route: Option<String>,
    /// Only exchanges newer than this many milliseconds ago.
    pub since_ms: Option<i64>,
    /// Only exchanges of one config generation (of each store).
    pub generation: Option<GenerationFilter>,
    pub max_diff_rate: DiffRate,
    pub min_samples: u64,
}

/// The largest share of mismatching exchanges a group may have: a fraction from 0 to 1, written
/// as one (`0.05`) or as a percentage (`5%`). Anything else is refused, so that `5` is never
/// read as 500 %.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct DiffRate(f64);

impl DiffRate {
    /// `fraction` must be in 0..=1.
    pub fn new(fraction: f64) -> Option<Self> {
        ((0.0..=1.0).contains(&fraction)).then_some(Self(fraction))
    }

    pub fn fraction(self) -> f64 {
        self.0
    }

    /// Whether `mismatches` of `samples` is over this rate: the one threshold test every output
    /// format and the exit status share. A rate equal to the limit passes; `1 / 20` passes
    /// `5%` even though the two are rounded apart in binary.
    pub fn exceeded_by(self, mismatches: u64, samples: u64) -> bool {
        samples > 0 && mismatches as f64 / samples as f64 - self.0 > 1e-12
    }
}

impl Default for DiffRate {
    fn default() -> Self {
        Self(0.01)
    }
}

impl fmt::Display for DiffRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}%", self.0 * 100.0)
    }
}

impl FromStr for DiffRate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        const FORMS: &str = "write a fraction from 0 to 1 (0.05) or a percentage (5%)";
        let (number, percent) = match text.trim().strip_suffix('%') {
            Some(number) => (number.trim(), true),
            None => (text.trim(), false),
        };
        let value: f64 = number
            .parse()
            .ok()
            .filter(|value: &f64| value.is_finite())
            .ok_or_else(|| format!("`{text}` is not a number: {FORMS}"))?;
        if value < 0.0 {
            return Err(format!("`{text}` is negative: {FORMS}"));
        }
        let fraction = if percent { value / 100.0 } else { value };
        Self::new(fraction).ok_or_else(|| {
            if percent {
                format!("`{text}` is over 100%: {FORMS}")
            } else {
                format!(
                    "`{text}` is over 1, which would allow {}% of exchanges to differ: {FORMS}",
                    value * 100.0
                )
            }
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub passed: bool,
    /// Why the report as a whole failed when no group did (nothing was found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub max_diff_rate: DiffRate,
    pub min_samples: u64,
    /// `--generation N`, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// `--since-reload`: only the newest generation of each store.
    pub since_reload: bool,
    /// One entry per route and direction.
    pub routes: Vec<RouteSummary>,
}

/// What `--since-reload` and `--generation` found nothing in, or a store that was empty.
const NOTHING_FOUND: &str = "no compared exchanges found";

/// Shown for exchanges stored before provenance was.
const UNRECORDED: &str = "direction not recorded";

/// The exchanges of one route in one direction.
#[derive(Debug, Clone, Serialize)]
pub struct RouteSummary {
    pub route: String,
    /// `primary → candidate`, like `legacy → orders-v2`; `direction not recorded` for exchanges
    /// stored by a strangler that did not record it.
    pub direction: String,
    /// The upstream that answered clients.
    pub primary: Option<String>,
    /// The upstream that got the copies.
    pub candidate: Option<String>,
    /// The config generations, stages and config files (SHA-256) these exchanges were decided
    /// under.
    pub generations: Vec<u64>,
    pub stages: Vec<String>,
    pub config_sha256: Vec<String>,
    pub samples: u64,
    pub matches: u64,
    /// Differing answers, shadow errors included.
    pub mismatches: u64,
    pub shadow_errors: u64,
    pub noise: u64,
    pub mismatch_rate: f64,
    pub passed: bool,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub top_paths: Vec<PathSummary>,
    pub noisy_paths: Vec<PathSummary>,
    /// `ignore_json` rules for paths that were noise in most samples.
    pub suggested_ignores: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathSummary {
    /// With indices generalized: `$.items[*].total`.
    pub path: String,
    /// `changed`, `missing` (the candidate lacks it), `extra` (only the candidate has it) or
    /// `type`; a path that differs in two ways is listed once per kind.
    pub kind: Kind,
    pub count: u64,
    /// One occurrence: `GET /api/orders/1: "10.50" -> 10.5`.
    pub example: String,
}

/// Most paths listed per route.
const TOP_PATHS: usize = 10;

pub fn build(options: &ReportOptions) -> Result<Report, StoreError> {
    let filter = Filter {
        route: options.route.clone(),
        since_ms: options
            .since_ms
            .map_or(0, |age| crate::store::now_ms().saturating_sub(age)),
        verdict: None,
        generation: options.generation,
    };
    let mut records = Vec::new();
    for database in &options.databases {
        records.extend(read_records(database, &filter)?);
    }
    let mut groups: BTreeMap<(String, Option<String>, Option<String>), Vec<DiffRecord>> =
        BTreeMap::new();
    for record in records {
        groups
            .entry((
                record.route.clone(),
                record.primary_upstream.clone(),
                record.candidate_upstream.clone(),
            ))
            .or_default()
            .push(record);
    }
    let routes: Vec<RouteSummary> = groups
        .into_iter()
        .map(|((route, primary, candidate), records)| {
            summarize(route, primary, candidate, &records, options)
        })
        .collect();
    let failure = routes.is_empty().then(|| NOTHING_FOUND.to_owned());
    let passed = failure.is_none() && routes.iter().all(|r| r.passed);
    Ok(Report {
        passed,
        failure,
        max_diff_rate: options.max_diff_rate,
        min_samples: options.min_samples,
        generation: match options.generation {
            Some(GenerationFilter::Number(number)) => Some(number),
            _ => None,
        },
        since_reload: options.generation == Some(GenerationFilter::Latest),
        routes,
    })
}

fn summarize(
    route: String,
    primary: Option<String>,
    candidate: Option<String>,
    records: &[DiffRecord],
    options: &ReportOptions,
) -> RouteSummary {
    let samples = records.len() as u64;
    let count = |verdict: &str| records.iter().filter(|r| r.verdict == verdict).count() as u64;
    let shadow_errors = count("shadow_error");
    let mismatches = count("mismatch") + shadow_errors;
    let mismatch_rate = if samples == 0 {
        0.0
    } else {
        mismatches as f64 / samples as f64
    };
    let failure = if samples < options.min_samples {
        Some(format!(
            "{samples} samples, at least {} required",
            options.min_samples
        ))
    } else if options.max_diff_rate.exceeded_by(mismatches, samples) {
        Some(format!(
            "mismatch rate {:.2}% over the allowed {}",
            mismatch_rate * 100.0,
            options.max_diff_rate
        ))
    } else {
        None
    };
    let direction = match (&primary, &candidate) {
        (Some(primary), Some(candidate)) => format!("{primary} → {candidate}"),
        _ => UNRECORDED.to_owned(),
    };
    let generations: BTreeSet<u64> = records.iter().filter_map(|r| r.generation).collect();
    let stages: BTreeSet<&str> = records.iter().filter_map(|r| r.stage.as_deref()).collect();
    let configs: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r.config_sha256.as_deref())
        .collect();

    let mut top: BTreeMap<(String, Kind), (u64, String)> = BTreeMap::new();
    let mut noisy: BTreeMap<(String, Kind), (u64, String)> = BTreeMap::new();
    // Per path, whatever the kind: what the ignore suggestions count.
    let mut noisy_exchanges: BTreeMap<String, u64> = BTreeMap::new();
    for record in records {
        let request = format!("{} {}", record.method, record.path);
        for (differences, into) in [(&record.differences, &mut top), (&record.noise, &mut noisy)] {
            // Count each path and kind once per exchange.
            let mut seen = BTreeSet::new();
            for difference in differences {
                let path = generalize(&difference.path);
                if !seen.insert((path.clone(), difference.kind)) {
                    continue;
                }
                let entry = into.entry((path, difference.kind)).or_insert_with(|| {
                    let example = format!(
                        "{request}: {} -> {}",
                        difference.primary.as_deref().unwrap_or("(absent)"),
                        difference.shadow.as_deref().unwrap_or("(absent)")
                    );
                    (0, example)
                });
                entry.0 += 1;
            }
        }
        let noisy_paths: BTreeSet<String> = record
            .noise
            .iter()
            .map(|difference| generalize(&difference.path))
            .collect();
        for path in noisy_paths {
            *noisy_exchanges.entry(path).or_default() += 1;
        }
    }
    let rank = |map: BTreeMap<(String, Kind), (u64, String)>| {
        let mut paths: Vec<PathSummary> = map
            .into_iter()
            .map(|((path, kind), (count, example))| PathSummary {
                path,
                kind,
                count,
                example,
            })
            .collect();
        paths.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.path.cmp(&b.path)));
        paths.truncate(TOP_PATHS);
        paths
    };
    let mut suggested: Vec<(String, u64)> = noisy_exchanges
        .into_iter()
        .filter(|(path, count)| path.starts_with('$') && count * 2 >= samples.max(1))
        .collect();
    suggested.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    RouteSummary {
        route,
        direction,
        primary,
        candidate,
        generations: generations.into_iter().collect(),
        stages: stages.into_iter().map(str::to_owned).collect(),
        config_sha256: configs.into_iter().map(str::to_owned).collect(),
        samples,
        matches: count("match"),
        mismatches,
        shadow_errors,
        noise: count("noise"),
        mismatch_rate,
        passed: failure.is_none(),
        failure,
        top_paths: rank(top),
        noisy_paths: rank(noisy),
        suggested_ignores: suggested
            .into_iter()
            .take(TOP_PATHS)
            .map(|(path, _)| path)
            .collect(),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Changed => "changed",
        Kind::Missing => "missing",
        Kind::Extra => "extra",
        Kind::Type => "type",
    }
}

/// `orders [primary legacy → candidate orders-v2]`: names which side answered clients.
fn heading(route: &RouteSummary) -> String {
    match (&route.primary, &route.candidate) {
        (Some(primary), Some(candidate)) => {
            format!(
                "{} [primary {primary} → candidate {candidate}]",
                route.route
            )
        }
        _ => format!("{} [{UNRECORDED}]", route.route),
    }
}

/// Output formats of `strangler report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Junit,
    Markdown,
}

pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Text => text(report),
        Format::Json => serde_json::to_string_pretty(report).expect("reports serialize") + "\n",
        Format::Junit => junit(report),
        Format::Markdown => markdown(report),
    }
}

fn text(report: &Report) -> String {
    let mut out = String::new();
    if let Some(failure) = &report.failure {
        let _ = writeln!(out, "{failure}");
    }
    for route in &report.routes {
        let _ = writeln!(
            out,
            "{} {}: {} samples, {} match, {} mismatch ({} shadow errors), {} noise, mismatch rate {:.2}%",
            if route.passed { "PASS" } else { "FAIL" },
            heading(route),
            route.samples,
            route.matches,
            route.mismatches,
            route.shadow_errors,
            route.noise,
            route.mismatch_rate * 100.0
        );
        if let Some(failure) = &route.failure {
            let _ = writeln!(out, "  failed: {failure}");
        }
        if !route.generations.is_empty() {
            let _ = writeln!(
                out,
                "  config generation {}, stage {}",
                join(&route.generations),
                route.stages.join(", ")
            );
        }
        for path in &route.top_paths {
            let _ = writeln!(
                out,
                "  differs  {:7} {:5}x {}  e.g. {}",
                kind_name(path.kind),
                path.count,
                path.path,
                path.example
            );
        }
        for path in &route.noisy_paths {
            let _ = writeln!(
                out,
                "  noise    {:7} {:5}x {}",
                kind_name(path.kind),
                path.count,
                path.path
            );
        }
        if !route.suggested_ignores.is_empty() {
            let _ = writeln!(
                out,
                "  suggestion: compare: {{ ignore_json: [{}] }}",
                route
                    .suggested_ignores
                    .iter()
                    .map(|p| format!("'{p}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let _ = writeln!(
        out,
        "{}: max diff rate {}, min samples {}{}",
        if report.passed { "PASSED" } else { "FAILED" },
        report.max_diff_rate,
        report.min_samples,
        selection(report)
    );
    out
}

/// `, generation 3` or `, since the last reload`: which exchanges were judged.
fn selection(report: &Report) -> String {
    match (report.generation, report.since_reload) {
        (Some(generation), _) => format!(", generation {generation}"),
        (None, true) => ", since the last reload".to_owned(),
        (None, false) => String::new(),
    }
}

fn join(numbers: &[u64]) -> String {
    numbers
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn markdown(report: &Report) -> String {
    let mut out = String::from(
        "| route | primary → candidate | result | samples | match | mismatch | noise | mismatch rate | top differing path |\n|---|---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for route in &report.routes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2}% | {} |",
            route.route,
            route.direction,
            if route.passed { "✅ pass" } else { "❌ fail" },
            route.samples,
            route.matches,
            route.mismatches,
            route.noise,
            route.mismatch_rate * 100.0,
            route.top_paths.first().map_or(String::new(), |p| format!(
                "`{}` {} ({}x)",
                p.path,
                kind_name(p.kind),
                p.count
            )),
        );
    }
    if let Some(failure) = &report.failure {
        let _ = writeln!(out, "\n{failure}");
    }
    let _ = writeln!(
        out,
        "\n**{}** (max diff rate {}, min samples {}{}; the primary answered clients, the candidate got copies)",
        if report.passed { "Passed" } else { "Failed" },
        report.max_diff_rate,
        report.min_samples,
        selection(report)
    );
    out
}

/// One test case per route and direction; with nothing found, one failing case saying so, so
/// the file fails exactly when the exit status does.
fn junit(report: &Report) -> String {
    let mut cases: Vec<(String, Option<String>, String)> = report
        .routes
        .iter()
        .map(|route| {
            let details: Vec<String> = route
                .top_paths
                .iter()
                .map(|p| {
                    format!(
                        "{}x {} {}: {}",
                        p.count,
                        kind_name(p.kind),
                        p.path,
                        p.example
                    )
                })
                .collect();
            (
                format!("{}: {}", route.route, route.direction),
                route.failure.clone(),
                details.join("\n"),
            )
        })
        .collect();
    if let Some(failure) = &report.failure {
        cases.push(("report".to_owned(), Some(failure.clone()), String::new()));
    }
    let failures = cases
        .iter()
        .filter(|(_, failure, _)| failure.is_some())
        .count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"strangler\" tests=\"{}\" failures=\"{failures}\">\n  <testsuite name=\"shadow diffs\" tests=\"{}\" failures=\"{failures}\">\n",
        cases.len(),
        cases.len()
    );
    for (name, failure, details) in &cases {
        let _ = write!(
            out,
            "    <testcase classname=\"strangler.routes\" name=\"{}\">",
            xml(name)
        );
        if let Some(failure) = failure {
            let _ = write!(
                out,
                "\n      <failure message=\"{}\">{}</failure>\n    ",
                xml(failure),
                xml(details)
            );
        }
        out.push_str("</testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::Difference;

    #[test]
    fn a_diff_rate_is_a_fraction_or_a_percentage_and_nothing_else() {
        let rate = |text: &str| text.parse::<DiffRate>().map(DiffRate::fraction);
        assert_eq!(rate("0.05"), Ok(0.05));
        assert_eq!(rate("5%"), Ok(0.05));
        assert_eq!(rate(" 5 % "), Ok(0.05));
        assert_eq!(rate("0"), Ok(0.0));
        assert_eq!(rate("1"), Ok(1.0));
        assert_eq!(rate("100%"), Ok(1.0));
        assert_eq!(rate("0.5%"), Ok(0.005));
        for (text, why) in [
            ("5", "over 1, which would allow 500%"),
            ("1.01", "over 1"),
            ("150%", "over 100%"),
            ("-0.1", "negative"),
            ("-5%", "negative"),
            ("abc", "not a number"),
            ("", "not a number"),
            ("%", "not a number"),
            ("5%%", "not a number"),
            ("NaN", "not a number"),
            ("inf", "not a number"),
        ] {
            let error = rate(text).unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
            assert!(error.contains("(0.05) or a percentage (5%)"), "{error}");
        }
    }

    #[test]
    fn a_rate_at_the_limit_passes_and_one_above_fails() {
        let five: DiffRate = "5%".parse().unwrap();
        assert!(!five.exceeded_by(1, 20), "exactly 5 % passes");
        assert!(!five.exceeded_by(3, 60));
        assert!(five.exceeded_by(2, 20));
        assert!(
            !five.exceeded_by(0, 0),
            "no samples is the sample gate's business"
        );
        let small: DiffRate = "0.3%".parse().unwrap();
        assert!(
            !small.exceeded_by(3, 1000),
            "0.3 % of 1000, rounded apart in binary"
        );
        assert!(small.exceeded_by(4, 1000));
    }

    fn record(route: &str, direction: (&str, &str), generation: u64, verdict: &str) -> DiffRecord {
        let differences = if verdict == "mismatch" {
            vec![
                Difference {
                    path: "$.items[0].total".into(),
                    kind: Kind::Type,
                    primary: Some("\"10.50\"".into()),
                    shadow: Some("10.5".into()),
                },
                Difference {
                    path: "$.items[1].total".into(),
                    kind: Kind::Missing,
                    primary: Some("1".into()),
                    shadow: None,
                },
            ]
        } else {
            Vec::new()
        };
        DiffRecord {
            at_ms: 1,
            route: route.into(),
            method: "GET".into(),
            path: "/orders/1".into(),
            query: None,
            request_id: "r".into(),
            primary_status: Some(200),
            shadow_status: Some(200),
            verdict: verdict.into(),
            differences,
            noise: Vec::new(),
            primary_sample: None,
            shadow_sample: None,
            primary_upstream: Some(direction.0.into()),
            candidate_upstream: Some(direction.1.into()),
            stage: Some("shadow".into()),
            generation: Some(generation),
            config_sha256: Some("abc".into()),
        }
    }

    fn options(database: PathBuf) -> ReportOptions {
        ReportOptions {
            databases: vec![database],
            route: None,
            since_ms: None,
            generation: None,
            max_diff_rate: DiffRate::default(),
            min_samples: 1,
        }
    }

    #[test]
    fn directions_are_judged_apart_with_the_kind_of_each_difference() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffs.db");
        let mut store =
            crate::store::DiffStore::open(&path, 100, std::time::Duration::from_secs(3600))
                .unwrap();
        store
            .insert(&[
                record("orders", ("legacy", "v2"), 1, "mismatch"),
                record("orders", ("legacy", "v2"), 1, "match"),
                record("orders", ("v2", "legacy"), 2, "match"),
            ])
            .unwrap();
        let report = build(&options(path)).unwrap();
        assert!(!report.passed);
        let [forward, backward] = &report.routes[..] else {
            panic!("two directions: {report:?}");
        };
        assert_eq!(forward.direction, "legacy → v2");
        assert_eq!((forward.samples, forward.passed), (2, false));
        assert_eq!(forward.generations, [1]);
        let kinds: Vec<_> = forward
            .top_paths
            .iter()
            .map(|p| (p.path.as_str(), p.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("$.items[*].total", Kind::Missing),
                ("$.items[*].total", Kind::Type)
            ]
        );
        assert_eq!(backward.direction, "v2 → legacy");
        assert!(backward.passed);

        let text = render(&report, Format::Text);
        assert!(
            text.contains("FAIL orders [primary legacy → candidate v2]: 2 samples"),
            "{text}"
        );
        assert!(
            text.contains("PASS orders [primary v2 → candidate legacy]"),
            "{text}"
        );
        assert!(
            text.contains("differs  type        1x $.items[*].total"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&report, Format::Json)).unwrap();
        assert_eq!(json["routes"][0]["primary"], "legacy");
        assert_eq!(json["routes"][0]["top_paths"][0]["kind"], "missing");
        assert_eq!(json["max_diff_rate"], 0.01);
        let junit = render(&report, Format::Junit);
        assert!(junit.contains("name=\"orders: legacy → v2\""), "{junit}");
        assert!(junit.contains("tests=\"2\" failures=\"1\""), "{junit}");
    }

    #[test]
    fn junit_fails_when_the_exit_status_does_even_with_nothing_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.db");
        drop(
            crate::store::DiffStore::open(&path, 100, std::time::Duration::from_secs(3600))
                .unwrap(),
        );
        let report = build(&options(path)).unwrap();
        assert!(!report.passed);
        let junit = render(&report, Format::Junit);
        assert!(junit.contains("tests=\"1\" failures=\"1\""), "{junit}");
        assert!(junit.contains("no compared exchanges found"), "{junit}");
        assert!(render(&report, Format::Text).starts_with("no compared exchanges found\n"));
    }
}
