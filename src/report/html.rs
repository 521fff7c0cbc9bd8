//! `strangler report --format html`: the viewer's three views in one self-contained file a CI
//! job can attach as an artifact: an overview of every route and direction, each route's
//! differing paths ranked with examples and suggested ignore rules, and the example exchanges
//! side by side with their differing lines highlighted.
//!
//! It renders the report's own [`Report`] (the same ranking, verdicts and suggestions as every
//! other format) and, for the examples, the exchanges laid out by [`super::exchange`],
//! as the live viewer shows them. The file has no script and loads nothing: its style is inline
//! and its Content-Security-Policy allows nothing else, so it opens offline, from a CI artifact
//! store or a mail attachment alike.

use std::fmt::Write;

use super::exchange::{BodyView, ExchangeView, Line, Mark};
use super::{Example, PathSummary, Report, RouteSummary, Section};
use crate::store::StoreError;
use crate::store::summary;

/// The page's style: the live viewer's, so both look alike.
const STYLE: &str = include_str!("../../assets/ui/app.css");

/// Most example exchanges shown in full per route and direction.
const EXAMPLES_PER_ROUTE: usize = 5;

/// The example exchanges of `report` (the first [`EXAMPLES_PER_ROUTE`] listed paths' examples
/// of each route and direction), read from whichever of `databases` holds them.
/// Example exchanges are read from SQLite stores; a Postgres store contributes none (its rows
/// have no ids the layout reads yet), and the page says so by showing the paths alone.
pub fn examples(
    report: &Report,
    databases: &[crate::store::StoreLocation],
) -> Result<Vec<ExchangeView>, StoreError> {
    let mut wanted: Vec<&str> = Vec::new();
    for route in &report.routes {
        for path in route
            .paths
            .iter()
            .chain(&route.noisy_paths)
            .take(EXAMPLES_PER_ROUTE)
        {
            if !wanted.contains(&path.example.request_id.as_str()) {
                wanted.push(&path.example.request_id);
            }
        }
    }
    let mut views = Vec::new();
    for location in databases {
        let crate::store::StoreLocation::Sqlite(database) = location else {
            continue;
        };
        let left: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|id| {
                !views
                    .iter()
                    .any(|v: &ExchangeView| v.exchange.exchange.record.request_id == *id)
            })
            .collect();
        if left.is_empty() {
            break;
        }
        for (_, id) in summary::ids_of_requests(database, &left)? {
            if let Some(found) = summary::exchange(database, id)? {
                views.push(ExchangeView::new(found));
            }
        }
    }
    Ok(views)
}

/// The report as one HTML document, with `examples` (see [`examples`]) shown in full.
pub fn render(report: &Report, examples: &[ExchangeView]) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let verdict = if report.passed { "passed" } else { "failed" };
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>strangler report: {verdict}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n\
         <header><a class=\"brand\" href=\"#overview\">strangler · diff report</a>\
         <span id=\"live\" class=\"{}\">{verdict}</span></header>\n<main>\n",
        if report.passed { "pass" } else { "fail" }
    );
    overview(&mut out, report);
    for route in &report.routes {
        route_section(&mut out, route, examples);
    }
    if !examples.is_empty() {
        out.push_str("<h1>Example exchanges</h1>\n");
        for example in examples {
            exchange_section(&mut out, example);
        }
    }
    out.push_str(
        "</main>\n<footer class=\"muted\">Bodies are samples as stored (capped and redacted); \
         headers other than the differing ones are not stored.</footer>\n</body>\n</html>\n",
    );
    out
}

fn overview(out: &mut String, report: &Report) {
    out.push_str("<h1 id=\"overview\">Routes and directions</h1>\n");
    if let Some(failure) = &report.failure {
        let _ = writeln!(out, "<p class=\"fail\">{}</p>", escape(failure));
    }
    let _ = writeln!(
        out,
        "<p class=\"muted\">A route fails above a mismatch rate of {} (shadow errors count) or \
         under {} compared exchanges.</p>",
        escape(&report.max_diff_rate.to_string()),
        report.min_samples
    );
    if report.routes.is_empty() {
        return;
    }
    out.push_str(
        "<table id=\"overview-table\"><thead><tr><th>Route</th><th>Direction</th><th>Stages</th>\
         <th>Generations</th><th class=\"num\">Exchanges</th><th class=\"num\">Mismatch rate</th>\
         <th class=\"num\">Noise</th><th class=\"num\">Errors</th><th>Verdict</th></tr></thead><tbody>\n",
    );
    for route in &report.routes {
        let _ = writeln!(
            out,
            "<tr data-route=\"{name}\"><td><a class=\"route-link\" href=\"#{anchor}\">{name}</a></td>\
             <td>{direction}</td><td>{stages}</td><td>{generations}</td><td class=\"num\">{samples}</td>\
             <td class=\"num\"><span class=\"{class}\">{rate}</span></td><td class=\"num\">{noise}</td>\
             <td class=\"num\">{errors}</td><td><span class=\"{class}\">{verdict}</span>{why}</td></tr>",
            name = escape(&route.route),
            anchor = route_anchor(route),
            direction = escape(&route.direction),
            stages = escape(&route.stages.join(", ")),
            generations = join(&route.generations),
            samples = route.samples,
            rate = percent(route.mismatch_rate),
            noise = route.noise,
            errors = route.shadow_errors,
            class = if route.passed { "pass" } else { "fail" },
            verdict = if route.passed { "pass" } else { "fail" },
            why = route
                .failure
                .as_ref()
                .map(|f| format!("<div class=\"muted\">{}</div>", escape(f)))
                .unwrap_or_default(),
        );
    }
    out.push_str("</tbody></table>\n");
}

fn route_section(out: &mut String, route: &RouteSummary, examples: &[ExchangeView]) {
    let _ = writeln!(
        out,
        "<section id=\"{}\"><h1>Route <code>{}</code></h1>\n<h2 class=\"direction\">{}</h2>\n\
         <p>{} exchanges · <span class=\"{}\">mismatch rate {}</span> · {} mismatches · {} candidate errors · {} noise · generations {} · stages {}</p>",
        route_anchor(route),
        escape(&route.route),
        escape(&route.direction),
        route.samples,
        if route.passed { "pass" } else { "fail" },
        percent(route.mismatch_rate),
        route.mismatches,
        route.shadow_errors,
        route.noise,
        join(&route.generations),
        escape(&route.stages.join(", ")),
    );
    out.push_str("<h3>Differing paths, most frequent first</h3>\n");
    if route.paths.is_empty() {
        out.push_str("<p class=\"muted\">No differing path above the listing threshold.</p>\n");
    } else {
        paths_table(out, &route.paths, examples, "paths-table");
    }
    if route.hidden.paths > 0 {
        let _ = writeln!(
            out,
            "<p class=\"muted\">{} rarer paths not listed (--min-path-exchanges 1 lists all).</p>",
            route.hidden.paths
        );
    }
    if !route.noisy_paths.is_empty() {
        out.push_str("<h3>Discounted as noise</h3>\n");
        paths_table(out, &route.noisy_paths, examples, "noisy-paths-table");
    }
    out.push_str("<h3>Suggested ignore rules</h3>\n");
    match super::suggestion_yaml(&route.route, route) {
        Some(yaml) => {
            let _ = writeln!(out, "<pre class=\"yaml\">{}</pre>", escape(&yaml));
            if let Some(left) = route.mismatches_with_suggestion {
                let _ = writeln!(
                    out,
                    "<p class=\"muted\">With them, {left} of {} exchanges would still mismatch.</p>",
                    route.samples
                );
            }
        }
        None => out.push_str("<p class=\"muted\">None: nothing here looks like noise.</p>\n"),
    }
    out.push_str("</section>\n");
}

fn paths_table(out: &mut String, paths: &[PathSummary], examples: &[ExchangeView], id: &str) {
    let _ = writeln!(
        out,
        "<table class=\"{id}\"><thead><tr><th>Section</th><th>Path</th><th>Kind</th>\
         <th class=\"num\">Exchanges</th><th class=\"num\">Share</th><th>Primary (example)</th>\
         <th>Candidate (example)</th><th>Example exchange</th></tr></thead><tbody>"
    );
    for path in paths {
        let noise = path
            .likely_noise
            .as_ref()
            .map(|why| format!("<div class=\"muted\">likely noise: {}</div>", escape(why)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<tr data-path=\"{p}\"><td>{section}</td><td><code>{p}</code>{noise}</td><td>{kind}</td>\
             <td class=\"num\">{exchanges}</td><td class=\"num\">{share}</td>\
             <td class=\"value mono\">{primary}</td><td class=\"value mono\">{candidate}</td><td>{link}</td></tr>",
            p = escape(&path.path),
            section = section_title(path.section),
            kind = path.kind.as_str(),
            exchanges = path.exchanges,
            share = percent(path.share),
            primary = escape(path.example.primary.as_deref().unwrap_or("(absent)")),
            candidate = escape(path.example.candidate.as_deref().unwrap_or("(absent)")),
            link = example_link(&path.example, examples),
        );
    }
    out.push_str("</tbody></table>\n");
}

fn example_link(example: &Example, examples: &[ExchangeView]) -> String {
    let request = escape(&example.request);
    match examples
        .iter()
        .find(|view| view.exchange.exchange.record.request_id == example.request_id)
    {
        Some(view) => format!(
            "<a class=\"exchange-link\" href=\"#exchange-{}\">{request}</a>",
            view.exchange.exchange.id
        ),
        None => format!("<span class=\"muted\">{request}</span>"),
    }
}

fn exchange_section(out: &mut String, view: &ExchangeView) {
    let record = &view.exchange.exchange.record;
    let status = |s: Option<u16>| s.map_or("no answer".to_owned(), |s| s.to_string());
    let _ = writeln!(
        out,
        "<section class=\"exchange\" id=\"exchange-{id}\"><h2><code>{request}</code></h2>\n\
         <p><span class=\"badge {verdict}\">{verdict}</span> route {route} · {primary} → {candidate} · \
         generation {generation} · request id <code>{request_id}</code></p>\n\
         <div class=\"sides\"><div class=\"side\"><h3>Primary ({primary})</h3><div class=\"status\">{primary_status}</div></div>\
         <div class=\"side\"><h3>Candidate ({candidate})</h3><div class=\"status\">{candidate_status}</div></div></div>",
        id = view.exchange.exchange.id,
        request = escape(&view.request_line),
        verdict = escape(record.verdict.as_str()),
        route = escape(&record.route),
        primary = escape(record.primary_upstream.as_deref().unwrap_or("primary")),
        candidate = escape(record.candidate_upstream.as_deref().unwrap_or("candidate")),
        generation = record.generation.map_or("–".to_owned(), |g| g.to_string()),
        request_id = escape(&record.request_id),
        primary_status = status(record.primary_status),
        candidate_status = status(record.shadow_status),
    );
    out.push_str("<h3>Differences</h3>\n<table class=\"differences\"><thead><tr><th>Path</th><th>Kind</th><th>Primary</th><th>Candidate</th></tr></thead><tbody>\n");
    for (difference, noise) in record
        .differences
        .iter()
        .map(|d| (d, false))
        .chain(record.noise.iter().map(|d| (d, true)))
    {
        let _ = writeln!(
            out,
            "<tr data-path=\"{p}\"><td><code>{p}</code>{noise}</td><td>{}</td><td class=\"value mono\">{}</td><td class=\"value mono\">{}</td></tr>",
            difference.kind.as_str(),
            escape(difference.primary.as_deref().unwrap_or("(absent)")),
            escape(difference.shadow.as_deref().unwrap_or("(absent)")),
            p = escape(&difference.path),
            noise = if noise {
                " <span class=\"badge noise\">noise</span>"
            } else {
                ""
            },
        );
    }
    out.push_str("</tbody></table>\n<h3>Bodies</h3>\n");
    match &view.body {
        BodyView::Json { primary, candidate } => {
            out.push_str("<div class=\"sides\"><div class=\"side\"><h3>Primary</h3>");
            json_side(out, primary);
            out.push_str("</div><div class=\"side\"><h3>Candidate</h3>");
            json_side(out, candidate);
            out.push_str("</div></div>\n");
        }
        BodyView::Text {
            identical: true, ..
        } => {
            out.push_str("<p class=\"muted\">The stored samples are the same.</p>\n");
        }
        BodyView::Text { hunks, .. } => {
            out.push_str("<div class=\"body\">");
            for hunk in hunks {
                let _ = write!(
                    out,
                    "<div class=\"line hunk-header\">{}</div>",
                    escape(&hunk.header)
                );
                for line in &hunk.lines {
                    let class = match line.tag {
                        '-' => " del",
                        '+' => " add",
                        _ => "",
                    };
                    let number = |n: Option<usize>| n.map_or(String::new(), |n| n.to_string());
                    let _ = write!(
                        out,
                        "<div class=\"line{class}\"><span class=\"no\">{}</span><span class=\"no\">{}</span>{} {}</div>",
                        number(line.primary_line),
                        number(line.candidate_line),
                        line.tag,
                        escape(&line.text)
                    );
                }
            }
            out.push_str("</div>\n");
        }
        BodyView::Absent => out.push_str("<p class=\"muted\">No body sample stored.</p>\n"),
    }
    out.push_str("<p><a href=\"#overview\">↑ overview</a></p></section>\n");
}

fn json_side(out: &mut String, lines: &[Line]) {
    out.push_str("<div class=\"body\">");
    for line in lines {
        let class = match line.mark {
            Some(Mark::Difference) => " difference",
            Some(Mark::Noise) => " noise",
            None => "",
        };
        let _ = write!(
            out,
            "<div class=\"line{class}\" title=\"{p}\" data-path=\"{p}\">{}</div>",
            escape(&line.text),
            p = escape(&line.path),
        );
    }
    out.push_str("</div>");
}

fn route_anchor(route: &RouteSummary) -> String {
    let mut anchor = String::from("route-");
    for c in route.route.chars().chain("--".chars()).chain(
        route
            .primary
            .as_deref()
            .unwrap_or("")
            .chars()
            .chain("-".chars())
            .chain(route.candidate.as_deref().unwrap_or("").chars()),
    ) {
        anchor.push(if c.is_ascii_alphanumeric() { c } else { '-' });
    }
    anchor
}

fn section_title(section: Section) -> &'static str {
    section.title()
}

fn percent(fraction: f64) -> String {
    format!("{:.1} %", fraction * 100.0)
}

fn join(numbers: &[u64]) -> String {
    if numbers.is_empty() {
        return "–".to_owned();
    }
    numbers
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Text as HTML text or attribute value.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_is_escaped_never_markup() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn an_empty_report_is_a_whole_page_without_script() {
        let report = Report {
            passed: false,
            failure: Some("no compared exchanges found".into()),
            max_diff_rate: super::super::DiffRate::default(),
            min_samples: 1,
            listing: super::super::Listing::default(),
            generation: None,
            since_reload: false,
            routes: Vec::new(),
        };
        let page = render(&report, &[]);
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.trim_end().ends_with("</html>"));
        assert!(page.contains("no compared exchanges found"));
        assert!(!page.contains("<script"));
        assert!(page.contains("default-src 'none'"));
    }
}
