//! Which ignore rules stored exchanges justify: the one rule for `ignore_json` and
//! `ignore_headers` suggestions and for what `strangler report` calls *likely noise*. The report
//! feeds it one differing exchange at a time ([`Suggester::add`]) and the number of exchanges
//! per request shape, counted in SQL ([`Suggester::finish`]); [`suggest`] does both for records
//! in memory.
//!
//! Principles:
//!
//! - **Noise is measured against how often a path appears**, not against all of a route's
//!   exchanges: a timestamp only one endpoint of a route returns is noisy every time it appears,
//!   however rare that endpoint is. Stored exchanges do not list the paths that were equal, so a
//!   path is taken to appear in every exchange of the *request shapes* (method and path, with
//!   segments that hold digits or long tokens generalized: `GET /orders/*`) in which it ever
//!   differed or was noise.
//! - **A header is suggested** when it differed in (nearly) every exchange it appears in
//!   ([`HEADER_DIFFER_SHARE`]): the servers differ (CORS, caching, `vary`, `x-powered-by`), not
//!   the answers. Never one that changes what a client does with the answer
//!   ([`MEANINGFUL_HEADERS`]), however often it differs.
//! - **A JSON path is suggested** on evidence that the primary disagrees with itself there:
//!   noise mode discounted it ([`super::discount_noise`]) in at least half the exchanges it
//!   appears in, or the primary gave different values to the same request (method, path and
//!   query) in at least two repeated requests and half of them. Different values from different
//!   resources are not noise.
//! - **Nothing is suggested that would hide a difference seen on stable values**: no JSON rule
//!   at or over a path where noise mode showed the primary agreeing with itself while the
//!   candidate differed, or where one side lacked the value (`missing`, `extra`: noise explains
//!   values, not absences).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use super::path::generalize;
use crate::record::{DiffRecord, Difference, Kind, request_shape};
use crate::vocabulary::Verdict;

/// Fewest exchanges a suggestion rests on.
pub const MIN_EXCHANGES: u64 = 3;
/// A JSON path is suggested when it was noise in at least this share of the exchanges it
/// appears in.
pub const JSON_NOISE_SHARE: f64 = 0.5;
/// A header is suggested when it differed in at least this share of the exchanges it appears in:
/// (nearly) every one.
pub const HEADER_DIFFER_SHARE: f64 = 0.9;
/// Headers whose difference changes what a client (or a cache) does with the answer: never
/// suggested, however often they differ.
pub const MEANINGFUL_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-disposition",
    "content-language",
    "cache-control",
    "location",
    "www-authenticate",
    "retry-after",
];

/// Why a rule is suggested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "because", rename_all = "snake_case")]
pub enum Reason {
    /// A header that differed in (nearly) every exchange it appears in.
    ServerWide { differed: u64, seen: u64 },
    /// A JSON path noise mode discounted in at least half the exchanges it appears in.
    Noise { noisy: u64, seen: u64 },
    /// A JSON value the primary gave differently to the same request.
    Volatile { varied: u64, repeated: u64 },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::ServerWide { differed, seen } => write!(
                f,
                "differs in {:.2}% of the {seen} exchanges it appears in (the servers differ, not the answers)",
                share(differed, seen) * 100.0
            ),
            Reason::Noise { noisy, seen } => write!(
                f,
                "noise (noise: legacy) in {noisy} of the {seen} exchanges it appears in"
            ),
            Reason::Volatile { varied, repeated } => write!(
                f,
                "the primary gave different values to the same request ({varied} of {repeated} repeated requests)"
            ),
        }
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// One suggested rule and what it rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    /// The `ignore_json` path (`$.items[*].updated_at`) or the `ignore_headers` name.
    pub rule: String,
    /// Exchanges in which it was noise or differed.
    pub noisy: u64,
    /// Exchanges in which it appears (see the module documentation).
    pub seen: u64,
    pub reason: Reason,
}

/// Rules to suggest for one set of exchanges (one route and direction), most often noisy first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Suggestions {
    pub ignore_json: Vec<Suggestion>,
    pub ignore_headers: Vec<Suggestion>,
}

impl Suggestions {
    /// Why `path` (generalized, as a report lists it: `$.items[*].at`, `headers.vary`) is likely
    /// noise: the reason of the suggested rule that covers it, if one does.
    pub fn covering(&self, path: &str) -> Option<&Suggestion> {
        if let Some(name) = path.strip_prefix("headers.") {
            self.ignore_headers.iter().find(|s| s.rule == name)
        } else if path.starts_with('$') {
            self.ignore_json.iter().find(|s| at_or_under(path, &s.rule))
        } else {
            None
        }
    }
}

/// One compared exchange that differed or had noise (a shadow error compares nothing: leave it
/// out), as the report's scan or a stored record has it.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Redacted as stored, without the `?`.
    pub query: Option<&'a str>,
    pub differences: &'a [Difference],
    pub noise: &'a [Difference],
}

impl<'a> From<&'a DiffRecord> for Exchange<'a> {
    fn from(record: &'a DiffRecord) -> Self {
        Self {
            method: &record.method,
            path: &record.path,
            query: record.query.as_deref(),
            differences: &record.differences,
            noise: &record.noise,
        }
    }
}

/// Tallies exchanges one at a time; memory grows with the distinct paths, shapes and requests
/// that differed, not with the exchanges.
#[derive(Debug, Default)]
pub struct Suggester {
    /// Per JSON path or `headers.<name>`: the request shapes it differed or was noise in.
    shapes: HashMap<String, BTreeSet<String>>,
    json: BTreeMap<String, JsonTally>,
    /// JSON paths with a difference no rule may hide (see the module documentation).
    stable: BTreeSet<String>,
    /// Per header name: the exchanges it differed (or was noise) in.
    headers: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct JsonTally {
    /// Exchanges in which noise mode discounted it.
    noisy: u64,
    /// Exchanges in which it was a counted difference.
    differed: u64,
    /// Per request (hash of method, path and query): the hash of the primary's first value,
    /// whether the request was seen again with the path differing, whether the value changed.
    requests: HashMap<u64, (u64, bool, bool)>,
}

impl JsonTally {
    /// Repeated requests, and of those the ones the primary answered with different values.
    fn volatility(&self) -> (u64, u64) {
        self.requests
            .values()
            .filter(|(_, repeated, _)| *repeated)
            .fold((0, 0), |(repeated, varied), (_, _, changed)| {
                (repeated + 1, varied + u64::from(*changed))
            })
    }
}

impl Suggester {
    pub fn add(&mut self, exchange: Exchange<'_>) {
        let shape = request_shape(exchange.method, exchange.path);
        let request = {
            let mut hasher = Xxh3::new();
            for part in [exchange.method, exchange.path] {
                hasher.update(part.as_bytes());
                hasher.update(&[0]);
            }
            hasher.update(exchange.query.unwrap_or_default().as_bytes());
            hasher.digest()
        };
        // With noise mode on (it found noise here), a counted difference is one where the
        // primary agreed with itself: a stable value.
        let noise_mode = !exchange.noise.is_empty();
        let mut noisy_here = BTreeSet::new();
        let mut differed_here = BTreeSet::new();
        let mut headers_here = BTreeSet::new();
        for (difference, is_noise) in exchange
            .differences
            .iter()
            .map(|d| (d, false))
            .chain(exchange.noise.iter().map(|d| (d, true)))
        {
            if difference.path.starts_with('$') {
                let path = generalize(&difference.path);
                self.appears(&path, &shape);
                if matches!(difference.kind, Kind::Missing | Kind::Extra)
                    || (noise_mode && !is_noise)
                {
                    self.stable.insert(path.clone());
                }
                if is_noise {
                    noisy_here.insert(path);
                } else if differed_here.insert(path.clone()) {
                    let value = difference
                        .primary
                        .as_deref()
                        .map_or(0, |value| xxh3_64(value.as_bytes()) | 1);
                    self.json
                        .entry(path)
                        .or_default()
                        .requests
                        .entry(request)
                        .and_modify(|(first, repeated, varied)| {
                            *repeated = true;
                            *varied |= *first != value;
                        })
                        .or_insert((value, false, false));
                }
            } else if let Some(name) = difference.path.strip_prefix("headers.") {
                if MEANINGFUL_HEADERS.contains(&name) {
                    continue;
                }
                self.appears(&difference.path, &shape);
                headers_here.insert(name);
            }
        }
        for path in noisy_here {
            self.json.entry(path).or_default().noisy += 1;
        }
        for path in differed_here {
            self.json.entry(path).or_default().differed += 1;
        }
        for name in headers_here {
            match self.headers.get_mut(name) {
                Some(count) => *count += 1,
                None => {
                    self.headers.insert(name.to_owned(), 1);
                }
            }
        }
    }

    /// Allocates only for a key or shape not seen before: this runs for every difference of
    /// every exchange a report reads.
    fn appears(&mut self, key: &str, shape: &str) {
        match self.shapes.get_mut(key) {
            Some(shapes) if shapes.contains(shape) => {}
            Some(shapes) => {
                shapes.insert(shape.to_owned());
            }
            None => {
                self.shapes
                    .insert(key.to_owned(), BTreeSet::from([shape.to_owned()]));
            }
        }
    }

    /// The rules, given the number of compared exchanges (differing or not, shadow errors left
    /// out) of each request shape.
    pub fn finish(self, exchanges_of_shape: impl Fn(&str) -> u64) -> Suggestions {
        let seen = |key: &str, at_least: u64| -> u64 {
            let counted: u64 = self.shapes.get(key).map_or(0, |shapes| {
                shapes.iter().map(|shape| exchanges_of_shape(shape)).sum()
            });
            // A store written between two queries could count fewer; never below what was seen.
            counted.max(at_least)
        };

        let mut ignore_json: Vec<Suggestion> = self
            .json
            .iter()
            .filter(|(path, _)| !self.stable.iter().any(|stable| at_or_under(stable, path)))
            .filter_map(|(path, tally)| {
                let seen = seen(path, tally.noisy.max(tally.differed));
                let (repeated, varied) = tally.volatility();
                let reason = if tally.noisy >= MIN_EXCHANGES
                    && tally.noisy as f64 >= JSON_NOISE_SHARE * seen as f64
                {
                    Reason::Noise {
                        noisy: tally.noisy,
                        seen,
                    }
                } else if varied >= 2 && varied * 2 >= repeated {
                    Reason::Volatile { varied, repeated }
                } else {
                    return None;
                };
                Some(Suggestion {
                    rule: path.clone(),
                    noisy: tally.noisy.max(tally.differed),
                    seen,
                    reason,
                })
            })
            .collect();
        // A rule already covered by a broader one adds nothing.
        let broad: Vec<String> = ignore_json.iter().map(|s| s.rule.clone()).collect();
        ignore_json.retain(|s| {
            !broad
                .iter()
                .any(|other| other != &s.rule && at_or_under(&s.rule, other))
        });

        let mut ignore_headers: Vec<Suggestion> = self
            .headers
            .iter()
            .filter_map(|(name, &differed)| {
                let seen = seen(&header_key(name), differed);
                (differed >= MIN_EXCHANGES && differed as f64 >= HEADER_DIFFER_SHARE * seen as f64)
                    .then(|| Suggestion {
                        rule: name.clone(),
                        noisy: differed,
                        seen,
                        reason: Reason::ServerWide { differed, seen },
                    })
            })
            .collect();

        for list in [&mut ignore_json, &mut ignore_headers] {
            list.sort_by(|a, b| b.noisy.cmp(&a.noisy).then_with(|| a.rule.cmp(&b.rule)));
        }
        Suggestions {
            ignore_json,
            ignore_headers,
        }
    }
}

/// What `records` (one route and direction, in memory) justify ignoring.
pub fn suggest(records: &[DiffRecord]) -> Suggestions {
    let mut exchanges_of_shape: HashMap<String, u64> = HashMap::new();
    let mut suggester = Suggester::default();
    for record in records.iter().filter(|r| r.verdict != Verdict::ShadowError) {
        *exchanges_of_shape
            .entry(request_shape(&record.method, &record.path))
            .or_default() += 1;
        suggester.add(record.into());
    }
    suggester.finish(|shape| exchanges_of_shape.get(shape).copied().unwrap_or(0))
}

fn header_key(name: &str) -> String {
    format!("headers.{name}")
}

/// Whether `path` is `ancestor` or lies under it (`$.a.b` under `$.a`, `$.a[*]` under `$.a`);
/// everything is under `$`.
fn at_or_under(path: &str, ancestor: &str) -> bool {
    ancestor == "$"
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Difference;

    fn record(path: &str, differences: Vec<Difference>, noise: Vec<Difference>) -> DiffRecord {
        DiffRecord {
            at_ms: 0,
            route: "orders".into(),
            method: "GET".into(),
            path: path.into(),
            query: None,
            request_id: "r".into(),
            primary_status: Some(200),
            shadow_status: Some(200),
            verdict: match (differences.is_empty(), noise.is_empty()) {
                (false, _) => Verdict::Mismatch,
                (true, false) => Verdict::Noise,
                (true, true) => Verdict::Match,
            },
            differences,
            noise,
            primary_sample: None,
            shadow_sample: None,
            primary_upstream: Some("legacy".into()),
            candidate_upstream: Some("new".into()),
            stage: None,
            generation: None,
            config_sha256: None,
        }
    }

    fn changed(path: &str, primary: &str) -> Difference {
        Difference {
            path: path.into(),
            kind: Kind::Changed,
            primary: Some(primary.into()),
            shadow: Some("other".into()),
        }
    }

    fn json_rules(suggestions: &Suggestions) -> Vec<(&str, u64, u64)> {
        suggestions
            .ignore_json
            .iter()
            .map(|s| (s.rule.as_str(), s.noisy, s.seen))
            .collect()
    }

    #[test]
    fn noise_is_measured_against_the_exchanges_a_path_appears_in() {
        let mut records = Vec::new();
        // 4 exchanges of an order, each with a noisy timestamp...
        for id in 0..4 {
            records.push(record(
                &format!("/orders/{id}"),
                Vec::new(),
                vec![changed(&format!("$.lines[{id}].updated_at"), "t")],
            ));
        }
        // ...among 20 health checks that never have one.
        for _ in 0..20 {
            records.push(record("/orders/health", Vec::new(), Vec::new()));
        }
        // A status that was noise once in 4 order exchanges is not suggested.
        records[0].noise.push(changed("$.status", "open"));
        let suggested = suggest(&records);
        assert_eq!(json_rules(&suggested), [("$.lines[*].updated_at", 4, 4)]);
    }

    #[test]
    fn nothing_that_hides_a_difference_on_stable_values_is_suggested() {
        let mut records: Vec<DiffRecord> = (0..6)
            .map(|i| {
                record(
                    &format!("/orders/{i}"),
                    Vec::new(),
                    vec![changed("$.meta.generated_at", "t"), changed("$.total", "1")],
                )
            })
            .collect();
        // Once, the primary's total was stable and the candidate's was not.
        records[5].noise.pop();
        records[5].differences.push(changed("$.total", "1"));
        // Once, the candidate lacked a field under the noisy `$.meta`.
        records[4].differences.push(Difference {
            path: "$.meta.generated_at".into(),
            kind: Kind::Missing,
            primary: Some("t".into()),
            shadow: None,
        });
        let suggested = suggest(&records);
        assert_eq!(json_rules(&suggested), []);
        // Without them both are suggested; a broader rule covers a narrower one.
        let mut records: Vec<DiffRecord> = (0..6)
            .map(|i| {
                record(
                    &format!("/orders/{i}"),
                    Vec::new(),
                    vec![changed("$.meta", "{}"), changed("$.meta.generated_at", "t")],
                )
            })
            .collect();
        records.push(record("/orders/9", vec![changed("$.id", "9")], Vec::new()));
        assert_eq!(json_rules(&suggest(&records)), [("$.meta", 6, 7)]);
    }

    #[test]
    fn headers_that_differ_in_nearly_every_exchange_are_suggested_unless_they_matter_to_clients() {
        let mut records = Vec::new();
        for i in 0..10 {
            // Each order fetched twice: x-runtime varies, x-cache names the other edge every
            // time (the servers differ), cache-control changes what caches do, x-trace appears
            // once.
            for repeat in 0..2 {
                let mut differences = vec![
                    changed("headers.x-runtime", &format!("{}ms", 10 + i * 2 + repeat)),
                    changed("headers.x-cache", "MISS from edge-1"),
                    changed("headers.cache-control", "max-age=60"),
                    changed("headers.content-type", "application/json"),
                ];
                if i == 0 && repeat == 0 {
                    differences.push(changed("headers.x-trace", "abc"));
                }
                records.push(record(&format!("/orders/{i}"), differences, Vec::new()));
            }
        }
        let suggested = suggest(&records);
        let headers: Vec<(&str, u64, u64)> = suggested
            .ignore_headers
            .iter()
            .map(|s| (s.rule.as_str(), s.noisy, s.seen))
            .collect();
        assert_eq!(headers, [("x-cache", 20, 20), ("x-runtime", 20, 20)]);
        assert_eq!(
            suggested.ignore_headers[0].reason.to_string(),
            "differs in 100.00% of the 20 exchanges it appears in (the servers differ, not the answers)"
        );
        assert!(suggested.ignore_json.is_empty());

        // Differing in only half the exchanges is not "nearly every".
        let half: Vec<DiffRecord> = records
            .iter()
            .enumerate()
            .map(|(n, r)| {
                let mut r = r.clone();
                if (n / 2) % 2 == 1 {
                    r.differences.clear();
                }
                r
            })
            .collect();
        assert!(suggest(&half).ignore_headers.is_empty());
    }

    #[test]
    fn a_header_noisy_in_every_exchange_is_suggested_and_one_in_most_is_not() {
        let mut records: Vec<DiffRecord> = (0..5)
            .map(|i| {
                record(
                    &format!("/orders/{i}"),
                    vec![Difference {
                        path: "headers.x-envoy".into(),
                        kind: Kind::Extra,
                        primary: None,
                        shadow: Some("1".into()),
                    }],
                    vec![changed("headers.x-runtime", "3ms")],
                )
            })
            .collect();
        records.push(record(
            "/orders/6",
            vec![changed("headers.x-version", "1")],
            vec![changed("headers.x-runtime", "3ms")],
        ));
        let suggested = suggest(&records);
        let names: Vec<&str> = suggested
            .ignore_headers
            .iter()
            .map(|s| s.rule.as_str())
            .collect();
        assert_eq!(names, ["x-runtime"]);
    }

    #[test]
    fn a_value_the_primary_changes_for_the_same_request_is_suggested_and_a_stable_one_is_not() {
        let mut records = Vec::new();
        for round in 0..3 {
            for id in 0..4 {
                let mut differences = vec![changed("$.total", "90")];
                if id < 2 {
                    // Orders 0 and 1 carry a timestamp the primary renews on every call.
                    differences.push(changed("$.generated_at", &format!("t{round}")));
                }
                records.push(record(&format!("/orders/{id}"), differences, Vec::new()));
            }
        }
        let suggested = suggest(&records);
        assert_eq!(json_rules(&suggested), [("$.generated_at", 6, 12)]);
        assert_eq!(
            suggested.ignore_json[0].reason,
            Reason::Volatile {
                varied: 2,
                repeated: 2
            }
        );
        assert_eq!(
            suggested
                .covering("$.generated_at")
                .map(|s| s.rule.as_str()),
            Some("$.generated_at")
        );
        assert_eq!(
            suggested.covering("$.total"),
            None,
            "the same 90 every time"
        );

        // Once the candidate lacks it, the rule would hide that: not suggested.
        records[0].differences.push(Difference {
            path: "$.generated_at".into(),
            kind: Kind::Missing,
            primary: Some("t0".into()),
            shadow: None,
        });
        assert_eq!(json_rules(&suggest(&records)), []);
    }

    #[test]
    fn shadow_errors_are_not_exchanges_a_path_appears_in() {
        let mut records: Vec<DiffRecord> = (0..3)
            .map(|i| {
                record(
                    &format!("/orders/{i}"),
                    Vec::new(),
                    vec![changed("$.at", "t")],
                )
            })
            .collect();
        for _ in 0..10 {
            records.push(DiffRecord {
                verdict: Verdict::ShadowError,
                ..record("/orders/4", vec![changed("shadow", "")], Vec::new())
            });
        }
        assert_eq!(json_rules(&suggest(&records)), [("$.at", 3, 3)]);
    }

    #[test]
    fn request_shapes_generalize_identifiers() {
        assert_eq!(
            request_shape("GET", "/orders/42/lines"),
            "GET /orders/*/lines"
        );
        assert_eq!(
            request_shape("GET", "/v2/users/3fa85f64-5717-4562-b3fc-2c963f66afa6"),
            "GET /*/users/*"
        );
        assert_eq!(request_shape("POST", "/orders"), "POST /orders");
    }
}
