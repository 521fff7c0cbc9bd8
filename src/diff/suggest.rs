//! Which ignore rules stored exchanges justify: the rule `strangler report` applies to suggest
//! `ignore_json` and `ignore_headers` entries.
//!
//! Three principles:
//!
//! - **Noise is measured against how often a path appears**, not against all of a route's
//!   exchanges: a timestamp only one endpoint of a route returns is noisy every time it appears,
//!   however rare that endpoint is. Stored exchanges do not list the paths that were equal, so a
//!   path is taken to appear in every exchange of the *request shapes* (method and path, with
//!   segments that hold digits or long tokens generalized: `GET /orders/*`) in which it ever
//!   differed or was noise.
//! - **A JSON path is noisy** only by noise mode's evidence (the primary disagreed with itself
//!   there, [`super::discount_noise`]): different values from different resources are not
//!   noise. **A header is noisy** when the primary answered the same request with different
//!   values, or noise mode discounted it.
//! - **Nothing is suggested that would hide a difference seen on stable values**: a JSON path
//!   with a counted difference at or under it (the primary agreed with itself, the candidate did
//!   not), a header the primary answered the same way twice for one request while the
//!   candidate differed, or anything one side lacks (`missing`, `extra`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::path::generalize;
use crate::record::{DiffRecord, Kind};
use crate::vocabulary::Verdict;

/// Fewest exchanges a suggestion rests on.
pub const MIN_EXCHANGES: u64 = 3;
/// A JSON path is suggested when it was noise in at least this share of the exchanges it
/// appears in.
pub const JSON_NOISE_SHARE: f64 = 0.5;
/// A header is suggested when it differed in at least this share of the exchanges it appears in:
/// (nearly) every one.
pub const HEADER_DIFFER_SHARE: f64 = 0.9;

/// One suggested rule and what it rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    /// The `ignore_json` path (`$.items[*].updated_at`) or the `ignore_headers` name.
    pub rule: String,
    /// Exchanges in which it was noise (a JSON path) or differed (a header).
    pub noisy: u64,
    /// Exchanges in which it appears (see the module documentation).
    pub seen: u64,
}

/// Rules to suggest for one set of exchanges (one route and direction), most often noisy first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Suggestions {
    pub ignore_json: Vec<Suggestion>,
    pub ignore_headers: Vec<Suggestion>,
}

/// What `records` (one route and direction) justify ignoring.
pub fn suggest(records: &[DiffRecord]) -> Suggestions {
    let compared: Vec<&DiffRecord> = records
        .iter()
        .filter(|record| record.verdict != Verdict::ShadowError)
        .collect();
    let mut exchanges_per_shape: BTreeMap<String, u64> = BTreeMap::new();
    // Per JSON path or header: the shapes it appeared in, and the tallies below.
    let mut shapes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut json_noise: BTreeMap<String, u64> = BTreeMap::new();
    let mut json_counted: BTreeSet<String> = BTreeSet::new();
    let mut headers: BTreeMap<String, HeaderTally> = BTreeMap::new();

    for record in &compared {
        let shape = request_shape(&record.method, &record.path);
        *exchanges_per_shape.entry(shape.clone()).or_default() += 1;
        let request = format!(
            "{} {}?{}",
            record.method,
            record.path,
            record.query.as_deref().unwrap_or_default()
        );
        let noise_mode = !record.noise.is_empty();
        let mut noisy_here = BTreeSet::new();
        let mut changed_here = BTreeSet::new();
        for (difference, is_noise) in record
            .differences
            .iter()
            .map(|d| (d, false))
            .chain(record.noise.iter().map(|d| (d, true)))
        {
            if difference.path.starts_with('$') {
                let path = generalize(&difference.path);
                shapes
                    .entry(path.clone())
                    .or_default()
                    .insert(shape.clone());
                if is_noise {
                    noisy_here.insert(path);
                } else {
                    json_counted.insert(path);
                }
            } else if let Some(name) = difference.path.strip_prefix("headers.") {
                shapes
                    .entry(header_key(name))
                    .or_default()
                    .insert(shape.clone());
                let tally = headers.entry(name.to_owned()).or_default();
                if difference.kind != Kind::Changed {
                    tally.absent_on_one_side = true;
                    continue;
                }
                if is_noise {
                    tally.noisy = true;
                } else if noise_mode {
                    // The primary agreed with itself here, the candidate did not.
                    tally.stable = true;
                }
                if changed_here.insert(name) {
                    tally.differed += 1;
                    tally
                        .values
                        .entry(request.clone())
                        .or_default()
                        .push(difference.primary.clone());
                }
            }
        }
        for path in noisy_here {
            *json_noise.entry(path).or_default() += 1;
        }
    }

    let seen = |key: &str| -> u64 {
        shapes.get(key).map_or(0, |shapes| {
            shapes
                .iter()
                .map(|shape| exchanges_per_shape.get(shape).copied().unwrap_or(0))
                .sum()
        })
    };

    let mut ignore_json: Vec<Suggestion> = json_noise
        .iter()
        .filter(|(path, noisy)| {
            **noisy >= MIN_EXCHANGES
                && **noisy as f64 >= JSON_NOISE_SHARE * seen(path) as f64
                && !json_counted
                    .iter()
                    .any(|counted| at_or_under(counted, path))
        })
        .map(|(path, noisy)| Suggestion {
            rule: path.clone(),
            noisy: *noisy,
            seen: seen(path),
        })
        .collect();
    // A rule already covered by a broader one adds nothing.
    let broad: Vec<String> = ignore_json.iter().map(|s| s.rule.clone()).collect();
    ignore_json.retain(|s| {
        !broad
            .iter()
            .any(|other| other != &s.rule && at_or_under(&s.rule, other))
    });

    let mut ignore_headers: Vec<Suggestion> = headers
        .into_iter()
        .filter_map(|(name, mut tally)| {
            tally.judge_repeats();
            let seen = seen(&header_key(&name));
            let suggested = tally.noisy
                && !tally.stable
                && !tally.absent_on_one_side
                && tally.differed >= MIN_EXCHANGES
                && tally.differed as f64 >= HEADER_DIFFER_SHARE * seen as f64;
            suggested.then_some(Suggestion {
                rule: name,
                noisy: tally.differed,
                seen,
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

#[derive(Default)]
struct HeaderTally {
    /// Exchanges in which its values differed.
    differed: u64,
    noisy: bool,
    stable: bool,
    absent_on_one_side: bool,
    /// The primary's values per request, in the exchanges where it differed.
    values: BTreeMap<String, Vec<Option<String>>>,
}

impl HeaderTally {
    /// The same request answered twice or more: different values are noise, the same value
    /// every time is a stable value the candidate did not match.
    fn judge_repeats(&mut self) {
        for values in self.values.values().filter(|values| values.len() > 1) {
            if values.iter().all(|value| value == &values[0]) {
                self.stable = true;
            } else {
                self.noisy = true;
            }
        }
    }
}

fn header_key(name: &str) -> String {
    format!("headers.{name}")
}

/// Whether `path` is `ancestor` or lies under it (`$.a.b` under `$.a`, `$.a[*]` under `$.a`).
fn at_or_under(path: &str, ancestor: &str) -> bool {
    path.strip_prefix(ancestor)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// `GET /orders/*/lines`: the request with the path segments that identify a resource (holding
/// a digit, or longer than 24 characters) generalized.
pub fn request_shape(method: &str, path: &str) -> String {
    let segments: Vec<&str> = path
        .split('/')
        .map(|segment| {
            if segment.len() > 24 || segment.bytes().any(|b| b.is_ascii_digit()) {
                "*"
            } else {
                segment
            }
        })
        .collect();
    format!("{method} {}", segments.join("/"))
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
    fn headers_that_differ_in_nearly_every_exchange_with_varying_values_are_suggested() {
        let mut records = Vec::new();
        for i in 0..10 {
            // Each order fetched twice: x-runtime varies for the same request, cache-control
            // is the same every time (a stable difference), x-trace appears once.
            for repeat in 0..2 {
                let mut differences = vec![
                    changed("headers.x-runtime", &format!("{}ms", 10 + i * 2 + repeat)),
                    changed("headers.cache-control", "max-age=60"),
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
        assert_eq!(headers, [("x-runtime", 20, 20)]);
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
    fn noise_mode_headers_are_noisy_and_a_header_one_side_lacks_is_not() {
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
