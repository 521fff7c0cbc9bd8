//! `strangler report`: per-route summary of stored diffs, with a verdict CI can gate on.
//!
//! Reads one or more diff stores (one per replica; they are merged), counts per route how many
//! exchanges matched, differed or were noise, lists the JSON paths that differ most with an
//! example, suggests `ignore_json` rules for paths that are noise most of the time, and decides
//! pass/fail from `--max-diff-rate` and `--min-samples`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::diff::path::generalize;
use crate::store::{DiffRecord, StoreError, read_records};

/// What the report covers and how it judges.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub databases: Vec<PathBuf>,
    pub route: Option<String>,
    /// Only exchanges newer than this many milliseconds ago.
    pub since_ms: Option<i64>,
    pub max_diff_rate: f64,
    pub min_samples: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub passed: bool,
    pub max_diff_rate: f64,
    pub min_samples: u64,
    pub routes: Vec<RouteSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteSummary {
    pub route: String,
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
    pub count: u64,
    /// One occurrence: `GET /api/orders/1: "10.50" -> 10.5`.
    pub example: String,
}

/// Most paths listed per route.
const TOP_PATHS: usize = 10;

pub fn build(options: &ReportOptions) -> Result<Report, StoreError> {
    let since = options
        .since_ms
        .map_or(0, |age| crate::store::now_ms() - age);
    let mut records = Vec::new();
    for database in &options.databases {
        records.extend(read_records(database, options.route.as_deref(), since)?);
    }
    let mut by_route: BTreeMap<String, Vec<DiffRecord>> = BTreeMap::new();
    for record in records {
        by_route
            .entry(record.route.clone())
            .or_default()
            .push(record);
    }
    let routes: Vec<RouteSummary> = by_route
        .into_iter()
        .map(|(route, records)| summarize(route, &records, options))
        .collect();
    let passed = !routes.is_empty() && routes.iter().all(|r| r.passed);
    Ok(Report {
        passed,
        max_diff_rate: options.max_diff_rate,
        min_samples: options.min_samples,
        routes,
    })
}

fn summarize(route: String, records: &[DiffRecord], options: &ReportOptions) -> RouteSummary {
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
    } else if mismatch_rate > options.max_diff_rate {
        Some(format!(
            "mismatch rate {:.2}% over the allowed {:.2}%",
            mismatch_rate * 100.0,
            options.max_diff_rate * 100.0
        ))
    } else {
        None
    };

    let mut top: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut noisy: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for record in records {
        let request = format!("{} {}", record.method, record.path);
        for (differences, into) in [(&record.differences, &mut top), (&record.noise, &mut noisy)] {
            // Count each path once per exchange.
            let mut seen = std::collections::BTreeSet::new();
            for difference in differences {
                let path = generalize(&difference.path);
                if !seen.insert(path.clone()) {
                    continue;
                }
                let entry = into.entry(path).or_insert_with(|| {
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
    }
    let rank = |map: BTreeMap<String, (u64, String)>| {
        let mut paths: Vec<PathSummary> = map
            .into_iter()
            .map(|(path, (count, example))| PathSummary {
                path,
                count,
                example,
            })
            .collect();
        paths.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.path.cmp(&b.path)));
        paths.truncate(TOP_PATHS);
        paths
    };
    let noisy_paths = rank(noisy);
    let suggested_ignores = noisy_paths
        .iter()
        .filter(|p| p.path.starts_with('$') && p.count * 2 >= samples.max(1))
        .map(|p| p.path.clone())
        .collect();
    RouteSummary {
        route,
        samples,
        matches: count("match"),
        mismatches,
        shadow_errors,
        noise: count("noise"),
        mismatch_rate,
        passed: failure.is_none(),
        failure,
        top_paths: rank(top),
        noisy_paths,
        suggested_ignores,
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
    if report.routes.is_empty() {
        out.push_str("no compared exchanges found\n");
    }
    for route in &report.routes {
        let _ = writeln!(
            out,
            "{} {}: {} samples, {} match, {} mismatch ({} shadow errors), {} noise, mismatch rate {:.2}%",
            if route.passed { "PASS" } else { "FAIL" },
            route.route,
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
        for path in &route.top_paths {
            let _ = writeln!(
                out,
                "  differs  {:5}x {}  e.g. {}",
                path.count, path.path, path.example
            );
        }
        for path in &route.noisy_paths {
            let _ = writeln!(out, "  noise    {:5}x {}", path.count, path.path);
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
        "{}: max diff rate {:.2}%, min samples {}",
        if report.passed { "PASSED" } else { "FAILED" },
        report.max_diff_rate * 100.0,
        report.min_samples
    );
    out
}

fn markdown(report: &Report) -> String {
    let mut out = String::from(
        "| route | result | samples | match | mismatch | noise | mismatch rate | top differing path |\n|---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for route in &report.routes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.2}% | {} |",
            route.route,
            if route.passed { "✅ pass" } else { "❌ fail" },
            route.samples,
            route.matches,
            route.mismatches,
            route.noise,
            route.mismatch_rate * 100.0,
            route
                .top_paths
                .first()
                .map_or(String::new(), |p| format!("`{}` ({}x)", p.path, p.count)),
        );
    }
    let _ = writeln!(
        out,
        "\n**{}** (max diff rate {:.2}%, min samples {})",
        if report.passed { "Passed" } else { "Failed" },
        report.max_diff_rate * 100.0,
        report.min_samples
    );
    out
}

fn junit(report: &Report) -> String {
    let failures = report.routes.iter().filter(|r| !r.passed).count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"strangler\" tests=\"{}\" failures=\"{failures}\">\n  <testsuite name=\"shadow diffs\" tests=\"{}\" failures=\"{failures}\">\n",
        report.routes.len(),
        report.routes.len()
    );
    for route in &report.routes {
        let _ = write!(
            out,
            "    <testcase classname=\"strangler.routes\" name=\"{}\">",
            xml(&route.route)
        );
        if let Some(failure) = &route.failure {
            let details: Vec<String> = route
                .top_paths
                .iter()
                .map(|p| format!("{}x {}: {}", p.count, p.path, p.example))
                .collect();
            let _ = write!(
                out,
                "\n      <failure message=\"{}\">{}</failure>\n    ",
                xml(failure),
                xml(&details.join("\n"))
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
