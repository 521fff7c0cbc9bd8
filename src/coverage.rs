//! Migration coverage: how much of the monolith is left.
//!
//! Owns three things: the rule that turns a request path into a *template* (ids, UUIDs, hashes
//! and tokens collapsed, so `/orders/17` and `/orders/18` are one line of work; the segment walk
//! under it, [`write_shape`], is shared with the diff's request shape), the bounded
//! tally of requests no route matched (kept per method and template, bounded by bytes, past
//! which requests land in an `other` bucket), and the [`CoverageReport`] document that the admin
//! API's `/coverage` serves and `strangler coverage` prints, with a route stub to paste for
//! each uncovered template.
//!
//! It does not decide what a route matches (routing does; the admin API hides templates the
//! serving table covers now) nor count requests per route and upstream (that is
//! `strangler_requests_total`, which the admin API hands to [`CoverageReport::build`]). It
//! imports nothing else of this crate, so the proxy's metrics can hold a tally.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// What the tally may hold, in bytes of method-and-template keys. A client sending a
/// different path every time (or a scanner) fills it; from then on new templates count as
/// `other` and the memory stays put.
pub const TALLY_BUDGET_BYTES: usize = 256 * 1024;

/// Path segments kept in a template; deeper paths end in `/**`.
const MAX_SEGMENTS: usize = 8;

/// Segments longer than this are never a resource name a person would route on.
const MAX_SEGMENT: usize = 64;

/// The placeholders a template uses for the segments it collapses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    /// Digits only (`17`), or a name carrying a number (`inv-00123`, `2024-05-01`).
    Id,
    /// `8-4-4-4-12` hexadecimal.
    Uuid,
    /// 16 or more hexadecimal digits: a digest or an object id.
    Hash,
    /// A long opaque mix of letters and digits: a slug with a key in it, a session id.
    Token,
    /// Longer than any resource name.
    Long,
}

impl Placeholder {
    fn as_str(self) -> &'static str {
        match self {
            Placeholder::Id => "{id}",
            Placeholder::Uuid => "{uuid}",
            Placeholder::Hash => "{hash}",
            Placeholder::Token => "{token}",
            Placeholder::Long => "{long}",
        }
    }

    /// A segment this placeholder stands for, to ask the route table about a template.
    fn example(self) -> &'static str {
        match self {
            Placeholder::Id => "1",
            Placeholder::Uuid => "00000000-0000-4000-8000-000000000000",
            Placeholder::Hash => "0123456789abcdef0123456789abcdef",
            Placeholder::Token => "t0k3n0t0k3n0t0k3n0t0k3n0",
            Placeholder::Long => "x",
        }
    }

    fn of(text: &str) -> Option<Placeholder> {
        const PLACEHOLDERS: [Placeholder; 5] = [
            Placeholder::Id,
            Placeholder::Uuid,
            Placeholder::Hash,
            Placeholder::Token,
            Placeholder::Long,
        ];
        PLACEHOLDERS.into_iter().find(|p| p.as_str() == text)
    }
}

/// How a path segment is kept in a template: as it is, or collapsed.
fn classify(segment: &str) -> Option<Placeholder> {
    let bytes = segment.as_bytes();
    if bytes.is_empty() {
        return None;
    }
    if bytes.len() > MAX_SEGMENT {
        return Some(Placeholder::Long);
    }
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    if digits == bytes.len() {
        return Some(Placeholder::Id);
    }
    if is_uuid(bytes) {
        return Some(Placeholder::Uuid);
    }
    if bytes.len() >= 16 && bytes.iter().all(u8::is_ascii_hexdigit) && digits > 0 {
        return Some(Placeholder::Hash);
    }
    let opaque = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'%'));
    if opaque && bytes.len() >= 20 && digits > 0 {
        return Some(Placeholder::Token);
    }
    // `v1`, `oauth2`, `html5` name things; three digits or more number them.
    if digits >= 3 {
        return Some(Placeholder::Id);
    }
    None
}

fn is_uuid(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Writes the template of `path` (no query) into `out`.
fn write_template(path: &str, out: &mut SmallVec<[u8; 192]>) {
    let path = path.split('?').next().unwrap_or_default();
    out.push(b'/');
    write_shape(
        path.strip_prefix('/').unwrap_or(path),
        MAX_SEGMENTS,
        |segment| classify(segment).map(Placeholder::as_str),
        out,
    );
}

/// The rule every path shape shares: the segments of `path` joined by `/`, each kept as it is
/// or replaced by what `collapse` says, and past `max_segments` segments one `/**`.
///
/// Two shapes are built on it, on purpose different: a coverage *template* (named placeholders,
/// `/orders/{id}`, a stub to paste into routes.yaml, so `v1` stays a name) and a diff's *request
/// shape* ([`crate::record::request_shape`], `GET /orders/*`, which groups stored diffs for
/// noise suggestions and generalizes any segment holding a digit). Both must stay as they are:
/// templates are compared with the route table, shapes with stored rows.
pub fn write_shape(
    path: &str,
    max_segments: usize,
    collapse: impl Fn(&str) -> Option<&'static str>,
    out: &mut impl Extend<u8>,
) {
    for (index, segment) in path.split('/').enumerate() {
        if index == max_segments {
            out.extend(*b"/**");
            return;
        }
        if index > 0 {
            out.extend(*b"/");
        }
        match collapse(segment) {
            Some(placeholder) => out.extend(placeholder.bytes()),
            None => out.extend(segment.bytes()),
        }
    }
}

/// The template of a request path: `/orders/17/lines/3` is `/orders/{id}/lines/{id}`.
pub fn template(path: &str) -> String {
    let mut out = SmallVec::new();
    write_template(path, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Requests no route matched, per method and template, bounded by [`TALLY_BUDGET_BYTES`].
#[derive(Debug, Default)]
pub struct Unmatched {
    /// `METHOD /template` → requests.
    counts: DashMap<Box<str>, AtomicU64>,
    /// Bytes of the keys above.
    bytes: AtomicUsize,
    /// Requests whose template arrived after the budget was spent.
    other: AtomicU64,
}

impl Unmatched {
    /// Counts one request that fell to the default upstream. Allocates only the first time a
    /// template is seen: the key is built on the stack.
    pub fn record(&self, method: &str, path: &str) {
        let mut key: SmallVec<[u8; 192]> = SmallVec::new();
        key.extend_from_slice(method.as_bytes());
        key.push(b' ');
        write_template(path, &mut key);
        // Request paths are ASCII on the wire (hygiene refuses the rest); stay safe anyway.
        let Ok(key) = std::str::from_utf8(&key) else {
            self.other.fetch_add(1, Relaxed);
            return;
        };
        if let Some(count) = self.counts.get(key) {
            count.fetch_add(1, Relaxed);
            return;
        }
        let size = key.len() + std::mem::size_of::<(Box<str>, AtomicU64)>();
        if self.bytes.fetch_add(size, Relaxed) + size > TALLY_BUDGET_BYTES {
            self.bytes.fetch_sub(size, Relaxed);
            self.other.fetch_add(1, Relaxed);
            return;
        }
        let entry = self.counts.entry(key.into()).or_default();
        entry.fetch_add(1, Relaxed);
    }

    /// The tally as `(method, template, requests)`, most requests first, and `other`.
    pub fn snapshot(&self) -> (Vec<(String, String, u64)>, u64) {
        let mut templates: Vec<(String, String, u64)> = self
            .counts
            .iter()
            .filter_map(|entry| {
                let (method, template) = entry.key().split_once(' ')?;
                Some((
                    method.to_owned(),
                    template.to_owned(),
                    entry.value().load(Relaxed),
                ))
            })
            .collect();
        templates.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
        (templates, self.other.load(Relaxed))
    }
}

/// A path that matches `template`, placeholders filled with examples: how the admin API asks
/// the serving route table whether a template is covered now.
pub fn example_path(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match Placeholder::of(segment) {
            Some(placeholder) => placeholder.example(),
            None if segment == "**" => "x",
            None => segment,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A route to paste under `routes:` that takes `template` over, still served by `upstream`
/// (legacy) until the route is moved along the migration.
pub fn route_stub(method: &str, template: &str, upstream: &str) -> String {
    let mut name = method.to_ascii_lowercase();
    for segment in template.split('/').filter(|s| !s.is_empty()) {
        let word: String = segment
            .trim_matches(|c| c == '{' || c == '}')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let word = word.trim_matches('-');
        if !word.is_empty() {
            name.push('-');
            name.push_str(word);
        }
    }
    let collapsed = template
        .split('/')
        .any(|s| Placeholder::of(s).is_some() || s == "**");
    let matcher = if collapsed {
        let pattern: Vec<String> = template
            .split('/')
            .map(|segment| match segment {
                "**" => ".*".to_owned(),
                _ if Placeholder::of(segment).is_some() => "[^/]+".to_owned(),
                _ => regex_syntax::escape(segment),
            })
            .collect();
        format!(
            "path_regex: {}",
            yaml_quoted(&format!("^{}$", pattern.join("/")))
        )
    } else {
        format!("path: {}", yaml_quoted(template))
    };
    format!(
        "- name: {name}\n  match: {{ methods: [{method}], {matcher} }}\n  upstream: {upstream}\n"
    )
}

/// A YAML single-quoted scalar (quotes doubled).
fn yaml_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The `/coverage` document: what share of traffic new services serve, per route and overall,
/// and which templates no route covers yet. Shared by the admin API and `strangler coverage`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CoverageReport {
    /// The config generation whose routes decided "covered".
    pub generation: u64,
    /// Requests counted since the proxy started (answered, any status).
    pub requests: u64,
    /// Of those, served by a route's legacy target or the default upstream.
    pub legacy: u64,
    /// Of those, served by any other upstream: the part already migrated.
    pub new: u64,
    /// `new / requests`; 0 with no traffic.
    pub new_share: f64,
    /// Requests that no route matched (the default upstream served them).
    pub unmatched: u64,
    /// `unmatched / requests`.
    pub unmatched_share: f64,
    pub routes: Vec<RouteCoverage>,
    /// The most requested templates no route covers now, most first.
    pub templates: Vec<TemplateCoverage>,
    /// Unmatched requests in templates left out: past `top`, past the tally's byte bound, or
    /// covered by a route added since.
    pub templates_left_out: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteCoverage {
    pub route: String,
    pub legacy: u64,
    pub new: u64,
    pub new_share: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TemplateCoverage {
    pub method: String,
    pub template: String,
    pub requests: u64,
    /// Of all requests.
    pub share: f64,
    /// A route to paste under `routes:` to start migrating it.
    pub stub: String,
}

/// One `strangler_requests_total` series, as the admin API reads it.
pub struct Served<'a> {
    pub route: &'a str,
    pub upstream: &'a str,
    pub requests: u64,
}

/// What the serving route table says about traffic, for [`CoverageReport::build`].
pub trait RouteView {
    /// The upstream of `route`'s legacy target, `None` for a route that is not in the table
    /// (removed by a reload) — its traffic is left out of the shares.
    fn legacy_upstream(&self, route: &str) -> Option<&str>;
    /// The default upstream, which serves what no route matched.
    fn default_upstream(&self) -> &str;
    /// Whether some route matches `method` and `path` now.
    fn covers(&self, method: &str, path: &str) -> bool;
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        // Four decimals: a share, not a float's noise.
        (part as f64 / whole as f64 * 10_000.0).round() / 10_000.0
    }
}

impl CoverageReport {
    /// Builds the document from the request counters, the unmatched tally and the table.
    pub fn build(
        generation: u64,
        served: &[Served<'_>],
        unmatched: &Unmatched,
        table: &dyn RouteView,
        top: usize,
    ) -> CoverageReport {
        let mut routes: Vec<RouteCoverage> = Vec::new();
        let (mut legacy, mut new, mut unmatched_requests) = (0, 0, 0);
        for series in served {
            let legacy_upstream = match series.route {
                "default" => {
                    unmatched_requests += series.requests;
                    table.default_upstream()
                }
                route => match table.legacy_upstream(route) {
                    Some(upstream) => upstream,
                    None => continue,
                },
            };
            let is_legacy = series.upstream == legacy_upstream;
            if is_legacy {
                legacy += series.requests;
            } else {
                new += series.requests;
            }
            if series.route == "default" {
                continue;
            }
            let index = match routes.iter().position(|r| r.route == series.route) {
                Some(index) => index,
                None => {
                    routes.push(RouteCoverage {
                        route: series.route.to_owned(),
                        legacy: 0,
                        new: 0,
                        new_share: 0.0,
                    });
                    routes.len() - 1
                }
            };
            let route = &mut routes[index];
            if is_legacy {
                route.legacy += series.requests;
            } else {
                route.new += series.requests;
            }
        }
        for route in &mut routes {
            route.new_share = share(route.new, route.legacy + route.new);
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.legacy + r.new));
        let requests = legacy + new;

        let (tally, other) = unmatched.snapshot();
        let mut left_out = other;
        let mut templates = Vec::new();
        for (method, template, count) in tally {
            if templates.len() == top || table.covers(&method, &example_path(&template)) {
                left_out += count;
                continue;
            }
            templates.push(TemplateCoverage {
                stub: route_stub(&method, &template, table.default_upstream()),
                share: share(count, requests),
                method,
                template,
                requests: count,
            });
        }
        CoverageReport {
            generation,
            requests,
            legacy,
            new,
            new_share: share(new, requests),
            unmatched: unmatched_requests,
            unmatched_share: share(unmatched_requests, requests),
            routes,
            templates,
            templates_left_out: left_out,
        }
    }

    /// The document as a person reads it at a terminal.
    pub fn render(&self) -> String {
        let mut out = format!(
            "generation {}: {} requests; new services serve {:.1} % ({} new, {} legacy); no route covers {:.1} % ({} requests)\n",
            self.generation,
            self.requests,
            self.new_share * 100.0,
            self.new,
            self.legacy,
            self.unmatched_share * 100.0,
            self.unmatched,
        );
        if !self.routes.is_empty() {
            let width = self
                .routes
                .iter()
                .map(|r| r.route.len())
                .max()
                .unwrap_or(5)
                .max(5);
            out.push_str(&format!(
                "\n{:<width$}  {:>10}  {:>10}  {:>7}\n",
                "ROUTE", "LEGACY", "NEW", "NEW %"
            ));
            for route in &self.routes {
                out.push_str(&format!(
                    "{:<width$}  {:>10}  {:>10}  {:>6.1}%\n",
                    route.route,
                    route.legacy,
                    route.new,
                    route.new_share * 100.0
                ));
            }
        }
        if self.templates.is_empty() {
            out.push_str(
                "\nEvery request that reached the default upstream is covered by a route now.\n",
            );
        } else {
            let width = self
                .templates
                .iter()
                .map(|t| t.method.len() + 1 + t.template.len())
                .max()
                .unwrap_or(9)
                .max(9);
            out.push_str(&format!(
                "\n{:<width$}  {:>10}  {:>7}\n",
                "UNCOVERED", "REQUESTS", "SHARE"
            ));
            for template in &self.templates {
                out.push_str(&format!(
                    "{:<width$}  {:>10}  {:>6.1}%\n",
                    format!("{} {}", template.method, template.template),
                    template.requests,
                    template.share * 100.0
                ));
            }
            if self.templates_left_out > 0 {
                out.push_str(&format!(
                    "(and {} unmatched requests in templates not listed)\n",
                    self.templates_left_out
                ));
            }
            out.push_str(
                "\nRoute stubs to paste under `routes:` (served by legacy until you move them):\n",
            );
            for template in &self.templates {
                for line in template.stub.lines() {
                    out.push_str("  ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_uuids_hashes_and_tokens_collapse_but_names_stay() {
        let cases = [
            ("/orders/17", "/orders/{id}"),
            ("/orders/17/lines/3", "/orders/{id}/lines/{id}"),
            (
                "/users/0b4f6c1e-9d7a-4c53-a1f2-3e8d9c0b7a61/cart",
                "/users/{uuid}/cart",
            ),
            ("/blobs/9f86d081884c7d659a2feaa0c55ad015", "/blobs/{hash}"),
            ("/s/aZ3kP9qLm2xV7tR1wY5n", "/s/{token}"),
            ("/invoices/inv-00123", "/invoices/{id}"),
            ("/reports/2024-05-01", "/reports/{id}"),
            ("/api/v1/oauth2/token", "/api/v1/oauth2/token"),
            ("/", "/"),
            ("/orders/", "/orders/"),
            ("/a/b/c/d/e/f/g/h/i/j", "/a/b/c/d/e/f/g/h/**"),
            ("/search?q=17", "/search"),
            ("/deadbeef", "/deadbeef"),
        ];
        for (path, expected) in cases {
            assert_eq!(template(path), expected, "{path}");
        }
        assert_eq!(template(&format!("/x/{}", "a".repeat(100))), "/x/{long}");
    }

    #[test]
    fn a_hundred_thousand_distinct_ids_are_one_template() {
        let tally = Unmatched::default();
        for id in 0..100_000 {
            tally.record("GET", &format!("/customers/{id}/orders"));
        }
        let (templates, other) = tally.snapshot();
        assert_eq!(
            templates,
            vec![("GET".into(), "/customers/{id}/orders".into(), 100_000)]
        );
        assert_eq!(other, 0);
    }

    #[test]
    fn a_scanner_cannot_grow_the_tally_past_its_byte_budget() {
        let tally = Unmatched::default();
        // Distinct words, none of which collapses: every one is a new template.
        for n in 0..100_000u32 {
            let word: String = n
                .to_string()
                .bytes()
                .map(|d| char::from(b'a' + (d - b'0')))
                .collect();
            tally.record("GET", &format!("/probe-{word}"));
        }
        let (templates, other) = tally.snapshot();
        let counted: u64 = templates.iter().map(|t| t.2).sum();
        assert_eq!(
            counted + other,
            100_000,
            "every request is counted somewhere"
        );
        assert!(other > 0, "the budget was reached");
        assert!(
            tally.bytes.load(Relaxed) <= TALLY_BUDGET_BYTES,
            "{} bytes held",
            tally.bytes.load(Relaxed)
        );
        assert!(templates.len() < 10_000, "{} templates", templates.len());
    }

    #[test]
    fn a_stub_matches_what_its_template_stands_for() {
        let stub = route_stub("GET", "/orders/{id}/lines/{uuid}", "legacy");
        assert_eq!(
            stub,
            "- name: get-orders-id-lines-uuid\n  match: { methods: [GET], path_regex: '^/orders/[^/]+/lines/[^/]+$' }\n  upstream: legacy\n"
        );
        let exact = route_stub("POST", "/api/v1/login", "legacy");
        assert!(exact.contains("path: '/api/v1/login'"), "{exact}");
        let regex = regex::Regex::new("^/orders/[^/]+/lines/[^/]+$").unwrap();
        assert!(regex.is_match(&example_path("/orders/{id}/lines/{uuid}")));
        let quoted = route_stub("GET", "/it's/{id}", "legacy");
        assert!(quoted.contains(r"'^/it''s/[^/]+$'"), "{quoted}");
    }

    struct Table;
    impl RouteView for Table {
        fn legacy_upstream(&self, route: &str) -> Option<&str> {
            (route == "orders").then_some("legacy")
        }
        fn default_upstream(&self) -> &str {
            "legacy"
        }
        fn covers(&self, _method: &str, path: &str) -> bool {
            path.starts_with("/orders")
        }
    }

    #[test]
    fn shares_split_legacy_from_new_and_covered_templates_are_left_out() {
        let tally = Unmatched::default();
        for id in 0..30 {
            tally.record("GET", &format!("/customers/{id}"));
        }
        for _ in 0..10 {
            tally.record("GET", "/health");
        }
        // Counted before a route for it was added: covered now.
        tally.record("GET", "/orders/9");
        let served = [
            Served {
                route: "orders",
                upstream: "legacy",
                requests: 20,
            },
            Served {
                route: "orders",
                upstream: "orders-v2",
                requests: 60,
            },
            Served {
                route: "default",
                upstream: "legacy",
                requests: 41,
            },
            Served {
                route: "removed",
                upstream: "x",
                requests: 1000,
            },
        ];
        let report = CoverageReport::build(3, &served, &tally, &Table, 1);
        assert_eq!((report.requests, report.legacy, report.new), (121, 61, 60));
        assert_eq!(report.unmatched, 41);
        assert_eq!(report.new_share, 0.4959);
        assert_eq!(report.routes.len(), 1);
        assert_eq!(report.routes[0].new_share, 0.75);
        assert_eq!(report.templates.len(), 1, "top 1");
        assert_eq!(report.templates[0].template, "/customers/{id}");
        assert_eq!(report.templates[0].requests, 30);
        assert_eq!(
            report.templates_left_out, 11,
            "/health past top, /orders covered"
        );
        let text = report.render();
        assert!(text.contains("GET /customers/{id}"), "{text}");
        assert!(text.contains("  - name: get-customers-id"), "{text}");
    }
}
