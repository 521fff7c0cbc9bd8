//! The comparison engine: two captured responses in, a list of differences out. Pure and
//! synchronous; it runs on the diff worker thread, never on the proxy's I/O threads (see
//! [`super::DiffSink`]).

use std::collections::{BTreeMap, BTreeSet};

use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::path::{PathPattern, Step, render};
use crate::shadow::CapturedResponse;

/// Headers that differ between any two servers and say nothing about the answer.
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "server",
    "x-request-id",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "age",
    "expires",
    "last-modified",
    "etag",
    "via",
    "x-served-by",
];

/// Header values never shown in differences.
const SENSITIVE_HEADERS: &[&str] = &[
    "set-cookie",
    "authorization",
    "cookie",
    "proxy-authorization",
];

/// Most differences kept per comparison.
const MAX_DIFFERENCES: usize = 100;
/// Longest value shown in a difference.
const MAX_VALUE_LEN: usize = 120;

/// How one route compares responses.
#[derive(Debug, Clone)]
pub struct CompareRule {
    pub ignore_headers: BTreeSet<String>,
    pub ignore_json: Vec<PathPattern>,
    pub unordered_arrays: Vec<PathPattern>,
    /// Relative: numbers `a`, `b` are equal when `|a - b| <= tolerance * max(|a|, |b|)`.
    pub numeric_tolerance: f64,
    /// Send a second copy to the primary's upstream and discount what differs between the two.
    pub noise: bool,
    /// JSON fields replaced by `"[redacted]"` in stored body samples.
    pub redact_json: Vec<PathPattern>,
}

impl Default for CompareRule {
    fn default() -> Self {
        Self {
            ignore_headers: DEFAULT_IGNORED_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
            ignore_json: Vec::new(),
            unordered_arrays: Vec::new(),
            numeric_tolerance: 0.0,
            noise: false,
            redact_json: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Both have it, with different values.
    Changed,
    /// The primary has it, the shadow does not.
    Missing,
    /// The shadow has it, the primary does not.
    Extra,
    /// Both have it, as different JSON types.
    Type,
}

/// One difference between the primary's and the shadow's response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    /// `status`, `headers.<name>`, `$.json.path`, `body` or `body:line N`.
    pub path: String,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
}

/// Every difference between `primary` and `shadow` under `rule`, at most 100.
pub fn compare(
    rule: &CompareRule,
    primary: &CapturedResponse,
    shadow: &CapturedResponse,
) -> Vec<Difference> {
    let mut out = Vec::new();
    if primary.status != shadow.status {
        out.push(Difference {
            path: "status".into(),
            kind: Kind::Changed,
            primary: Some(primary.status.as_u16().to_string()),
            shadow: Some(shadow.status.as_u16().to_string()),
        });
    }
    compare_headers(rule, &primary.headers, &shadow.headers, &mut out);
    compare_bodies(rule, primary, shadow, &mut out);
    out.truncate(MAX_DIFFERENCES);
    out
}

fn compare_headers(
    rule: &CompareRule,
    primary: &HeaderMap,
    shadow: &HeaderMap,
    out: &mut Vec<Difference>,
) {
    let names: BTreeSet<&str> = primary
        .keys()
        .chain(shadow.keys())
        .map(|n| n.as_str())
        .collect();
    for name in names {
        if rule.ignore_headers.contains(name) {
            continue;
        }
        let sensitive = SENSITIVE_HEADERS.contains(&name);
        let values = |map: &HeaderMap| -> Option<String> {
            let all: Vec<String> = map
                .get_all(name)
                .iter()
                .map(|v| {
                    let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    // Cookie values are per-session; compare which cookies are set.
                    if name == "set-cookie" {
                        text.split('=').next().unwrap_or_default().trim().to_owned()
                    } else {
                        text
                    }
                })
                .collect();
            (!all.is_empty()).then(|| all.join(", "))
        };
        let (a, b) = (values(primary), values(shadow));
        if a == b {
            continue;
        }
        let shown = |v: Option<String>| {
            if sensitive {
                v.map(|_| REDACTED.to_owned())
            } else {
                v.map(truncate)
            }
        };
        let kind = match (&a, &b) {
            (Some(_), None) => Kind::Missing,
            (None, Some(_)) => Kind::Extra,
            _ => Kind::Changed,
        };
        out.push(Difference {
            path: format!("headers.{name}"),
            kind,
            primary: shown(a),
            shadow: shown(b),
        });
    }
}

fn is_json(response: &CapturedResponse) -> bool {
    response
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.to_ascii_lowercase();
            ct.contains("/json") || ct.contains("+json")
        })
}

fn is_text(response: &CapturedResponse) -> bool {
    response
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("text/"))
}

fn compare_bodies(
    rule: &CompareRule,
    primary: &CapturedResponse,
    shadow: &CapturedResponse,
    out: &mut Vec<Difference>,
) {
    if primary.body == shadow.body {
        return;
    }
    if primary.truncated || shadow.truncated {
        out.push(Difference {
            path: "body".into(),
            kind: Kind::Changed,
            primary: Some(describe_bytes(&primary.body, primary.truncated)),
            shadow: Some(describe_bytes(&shadow.body, shadow.truncated)),
        });
        return;
    }
    if is_json(primary) || is_json(shadow) {
        let parsed = (
            serde_json::from_slice::<Value>(&primary.body),
            serde_json::from_slice::<Value>(&shadow.body),
        );
        match parsed {
            (Ok(a), Ok(b)) => {
                let mut path = Vec::new();
                compare_json(rule, &a, &b, &mut path, out);
            }
            (a, b) => out.push(Difference {
                path: "$".into(),
                kind: Kind::Type,
                primary: Some(a.map_or_else(
                    |e| format!("invalid JSON: {e}"),
                    |v| truncate(v.to_string()),
                )),
                shadow: Some(b.map_or_else(
                    |e| format!("invalid JSON: {e}"),
                    |v| truncate(v.to_string()),
                )),
            }),
        }
        return;
    }
    if is_text(primary) || is_text(shadow) {
        let a = String::from_utf8_lossy(&primary.body);
        let b = String::from_utf8_lossy(&shadow.body);
        let (lines_a, lines_b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
        for line in 0..lines_a.len().max(lines_b.len()) {
            let (x, y) = (lines_a.get(line), lines_b.get(line));
            if x != y {
                out.push(Difference {
                    path: format!("body:line {}", line + 1),
                    kind: match (x, y) {
                        (Some(_), None) => Kind::Missing,
                        (None, Some(_)) => Kind::Extra,
                        _ => Kind::Changed,
                    },
                    primary: x.map(|s| truncate((*s).to_owned())),
                    shadow: y.map(|s| truncate((*s).to_owned())),
                });
                if out.len() >= MAX_DIFFERENCES {
                    return;
                }
            }
        }
        return;
    }
    out.push(Difference {
        path: "body".into(),
        kind: Kind::Changed,
        primary: Some(describe_bytes(&primary.body, false)),
        shadow: Some(describe_bytes(&shadow.body, false)),
    });
}

fn describe_bytes(body: &[u8], truncated: bool) -> String {
    format!(
        "{}{} bytes, xxh3 {:016x}",
        if truncated { "over " } else { "" },
        body.len(),
        xxhash_rust::xxh3::xxh3_64(body)
    )
}

fn compare_json<'v>(
    rule: &CompareRule,
    a: &'v Value,
    b: &'v Value,
    path: &mut Vec<Step<'v>>,
    out: &mut Vec<Difference>,
) {
    if out.len() >= MAX_DIFFERENCES || rule.ignore_json.iter().any(|p| p.covers(path)) {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            // Both maps iterate in key order: walk them side by side, borrowing the keys.
            let (mut xs, mut ys) = (x.iter().peekable(), y.iter().peekable());
            loop {
                let (key, va, vb) = match (xs.peek(), ys.peek()) {
                    (None, None) => break,
                    (Some((kx, _)), Some((ky, _))) if kx == ky => {
                        let (key, va) = xs.next().expect("peeked");
                        let (_, vb) = ys.next().expect("peeked");
                        (key, Some(va), Some(vb))
                    }
                    (Some((kx, _)), Some((ky, _))) if kx > ky => {
                        let (key, vb) = ys.next().expect("peeked");
                        (key, None, Some(vb))
                    }
                    (Some(_), _) => {
                        let (key, va) = xs.next().expect("peeked");
                        (key, Some(va), None)
                    }
                    (None, Some(_)) => {
                        let (key, vb) = ys.next().expect("peeked");
                        (key, None, Some(vb))
                    }
                };
                path.push(Step::Key(std::borrow::Cow::Borrowed(key.as_str())));
                compare_slot(rule, va, vb, path, out);
                path.pop();
            }
        }
        (Value::Array(x), Value::Array(y))
            if rule.unordered_arrays.iter().any(|p| p.matches(path)) =>
        {
            compare_multiset(rule, x, y, path, out);
        }
        (Value::Array(x), Value::Array(y)) => {
            for index in 0..x.len().max(y.len()) {
                path.push(Step::Index(index));
                compare_slot(rule, x.get(index), y.get(index), path, out);
                path.pop();
            }
        }
        (Value::Number(x), Value::Number(y)) if !numbers_equal(x, y, rule.numeric_tolerance) => {
            out.push(changed(rule, path, a, b, Kind::Changed));
        }
        (Value::Number(_), Value::Number(_)) => {}
        _ if std::mem::discriminant(a) != std::mem::discriminant(b) => {
            out.push(changed(rule, path, a, b, Kind::Type));
        }
        _ if a != b => out.push(changed(rule, path, a, b, Kind::Changed)),
        _ => {}
    }
}

/// One member or element, present on one side or both.
fn compare_slot<'v>(
    rule: &CompareRule,
    primary: Option<&'v Value>,
    shadow: Option<&'v Value>,
    path: &mut Vec<Step<'v>>,
    out: &mut Vec<Difference>,
) {
    match (primary, shadow) {
        (Some(a), Some(b)) => compare_json(rule, a, b, path, out),
        (a, b) if !rule.ignore_json.iter().any(|p| p.covers(path)) => out.push(Difference {
            path: render(path),
            kind: if a.is_some() {
                Kind::Missing
            } else {
                Kind::Extra
            },
            primary: a.map(|value| shown(rule, path, value)),
            shadow: b.map(|value| shown(rule, path, value)),
        }),
        _ => {}
    }
}

/// Elements compared as a multiset: order is irrelevant, counts are not.
fn compare_multiset(
    rule: &CompareRule,
    x: &[Value],
    y: &[Value],
    path: &[Step<'_>],
    out: &mut Vec<Difference>,
) {
    let count = |values: &[Value]| {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for value in values {
            *counts.entry(value.to_string()).or_default() += 1;
        }
        counts
    };
    let (a, b) = (count(x), count(y));
    let only_a: Vec<&String> = a
        .iter()
        .filter(|(k, n)| b.get(*k) < Some(n))
        .map(|(k, _)| k)
        .collect();
    let only_b: Vec<&String> = b
        .iter()
        .filter(|(k, n)| a.get(*k) < Some(n))
        .map(|(k, _)| k)
        .collect();
    if !only_a.is_empty() || !only_b.is_empty() {
        let redacted = redacted(rule, path);
        let shown = |only: &[&String]| {
            if redacted {
                REDACTED.to_owned()
            } else {
                truncate(format!("only here: [{}]", join(only)))
            }
        };
        out.push(Difference {
            path: render(path),
            kind: Kind::Changed,
            primary: Some(shown(&only_a)),
            shadow: Some(shown(&only_b)),
        });
    }
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn numbers_equal(x: &serde_json::Number, y: &serde_json::Number, tolerance: f64) -> bool {
    if x == y {
        return true;
    }
    let integer = |n: &serde_json::Number| n.is_i64() || n.is_u64();
    // Integers beyond 2^53 lose precision as f64: compare them exactly unless told otherwise.
    if integer(x) && integer(y) && tolerance == 0.0 {
        return false;
    }
    match (x.as_f64(), y.as_f64()) {
        (Some(a), Some(b)) => {
            a == b || (tolerance > 0.0 && (a - b).abs() <= tolerance * a.abs().max(b.abs()))
        }
        _ => false,
    }
}

fn changed(rule: &CompareRule, path: &[Step<'_>], a: &Value, b: &Value, kind: Kind) -> Difference {
    Difference {
        path: render(path),
        kind,
        primary: Some(shown(rule, path, a)),
        shadow: Some(shown(rule, path, b)),
    }
}

/// What replaces a value that must not be stored.
pub(super) const REDACTED: &str = "[redacted]";

/// Whether `path` is at or under a `redact_json` path.
fn redacted(rule: &CompareRule, path: &[Step<'_>]) -> bool {
    rule.redact_json.iter().any(|pattern| pattern.covers(path))
}

/// A JSON value as a difference stores it: shortened, or `[redacted]` under `redact_json`.
fn shown(rule: &CompareRule, path: &[Step<'_>], value: &Value) -> String {
    if redacted(rule, path) {
        REDACTED.to_owned()
    } else {
        truncate(value.to_string())
    }
}

fn truncate(text: String) -> String {
    truncate_to(text, MAX_VALUE_LEN)
}

/// `text` cut to at most `limit` bytes (on a character boundary), with `…` when cut.
pub(super) fn truncate_to(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut cut = limit;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
        // What is kept may be stored much later (a batch of records): it must not hold on to
        // the whole text it was cut from.
        text.shrink_to_fit();
    }
    text
}

/// Splits `differences` into those that count and those that are noise: a difference is noise
/// when the primary disagreed with itself at the same place (or above it).
pub fn discount_noise(
    differences: Vec<Difference>,
    noise: &[Difference],
) -> (Vec<Difference>, Vec<Difference>) {
    differences.into_iter().partition(|difference| {
        !noise.iter().any(|noisy| {
            difference.path == noisy.path
                || difference.path.starts_with(&format!("{}.", noisy.path))
                || difference.path.starts_with(&format!("{}[", noisy.path))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::StatusCode;

    fn json(body: &str) -> CapturedResponse {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        CapturedResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::from(body.to_owned()),
            truncated: false,
        }
    }

    fn rule(ignore: &[&str], unordered: &[&str], tolerance: f64) -> CompareRule {
        CompareRule {
            ignore_json: ignore
                .iter()
                .map(|p| PathPattern::parse(p).unwrap())
                .collect(),
            unordered_arrays: unordered
                .iter()
                .map(|p| PathPattern::parse(p).unwrap())
                .collect(),
            numeric_tolerance: tolerance,
            ..CompareRule::default()
        }
    }

    fn paths(a: &str, b: &str, rule: &CompareRule) -> Vec<(String, Kind)> {
        compare(rule, &json(a), &json(b))
            .into_iter()
            .map(|d| (d.path, d.kind))
            .collect()
    }

    #[test]
    fn differences_under_a_redacted_path_keep_no_values() {
        let rule = CompareRule {
            redact_json: vec![PathPattern::parse("$.user").unwrap()],
            unordered_arrays: vec![PathPattern::parse("$.user.roles").unwrap()],
            ..CompareRule::default()
        };
        let found = compare(
            &rule,
            &json(r#"{"user":{"token":"secret-a","roles":["x"],"extra":1},"n":1}"#),
            &json(r#"{"user":{"token":"secret-b","roles":["y"]},"n":2}"#),
        );
        assert_eq!(found.len(), 4, "{found:?}");
        for difference in &found {
            let values = [&difference.primary, &difference.shadow];
            if difference.path.starts_with("$.user") {
                assert!(
                    values
                        .iter()
                        .all(|v| v.as_deref().is_none_or(|v| v == REDACTED)),
                    "{difference:?}"
                );
            } else {
                assert_eq!(difference.primary.as_deref(), Some("1"));
            }
        }
    }

    #[test]
    fn key_order_is_irrelevant() {
        assert!(
            paths(
                r#"{"a":1,"b":{"c":2,"d":3}}"#,
                r#"{"b":{"d":3,"c":2},"a":1}"#,
                &CompareRule::default()
            )
            .is_empty()
        );
    }

    #[test]
    fn nested_arrays_are_compared_by_position() {
        let found = paths(
            r#"{"a":[[1,2],[3]]}"#,
            r#"{"a":[[1,2],[4],[5]]}"#,
            &CompareRule::default(),
        );
        assert_eq!(
            found,
            [
                ("$.a[1][0]".into(), Kind::Changed),
                ("$.a[2]".into(), Kind::Extra)
            ]
        );
    }

    #[test]
    fn unordered_arrays_compare_as_multisets() {
        let rule = rule(&[], &["$.tags", "$.items[*].ids"], 0.0);
        assert!(
            paths(
                r#"{"tags":["a","b","b"]}"#,
                r#"{"tags":["b","a","b"]}"#,
                &rule
            )
            .is_empty()
        );
        assert_eq!(
            paths(r#"{"tags":["a","b","b"]}"#, r#"{"tags":["a","b"]}"#, &rule),
            [("$.tags".into(), Kind::Changed)]
        );
        assert!(
            paths(
                r#"{"items":[{"ids":[1,2]}]}"#,
                r#"{"items":[{"ids":[2,1]}]}"#,
                &rule
            )
            .is_empty()
        );
        // Not listed: order matters.
        assert_eq!(
            paths(r#"{"other":[1,2]}"#, r#"{"other":[2,1]}"#, &rule).len(),
            2
        );
    }

    #[test]
    fn numeric_tolerance_is_relative() {
        let tolerant = rule(&[], &[], 0.001);
        assert!(paths(r#"{"x":1000.0}"#, r#"{"x":1000.9}"#, &tolerant).is_empty());
        assert_eq!(
            paths(r#"{"x":1000.0}"#, r#"{"x":1002}"#, &tolerant).len(),
            1
        );
        assert_eq!(
            paths(r#"{"x":1.0}"#, r#"{"x":1.0001}"#, &CompareRule::default()).len(),
            1
        );
        assert!(
            paths(r#"{"x":1}"#, r#"{"x":1.0}"#, &CompareRule::default()).is_empty(),
            "1 and 1.0 are one number"
        );
    }

    #[test]
    fn ignores_with_wildcards() {
        let rule = rule(
            &["$.generated_at", "$.items[*].updated_at", "$.*.etag"],
            &[],
            0.0,
        );
        let a = r#"{"generated_at":"t1","items":[{"id":1,"updated_at":"x"}],"meta":{"etag":"1"}}"#;
        let b = r#"{"generated_at":"t2","items":[{"id":1,"updated_at":"y"}],"meta":{"etag":"2"}}"#;
        assert!(paths(a, b, &rule).is_empty());
        let c = r#"{"generated_at":"t2","items":[{"id":2,"updated_at":"y"}],"meta":{"etag":"2"}}"#;
        assert_eq!(
            paths(a, c, &rule),
            [("$.items[0].id".into(), Kind::Changed)]
        );
    }

    #[test]
    fn type_changes_and_null_versus_missing() {
        let found = paths(
            r#"{"total":"10.50","n":null,"gone":1}"#,
            r#"{"total":10.5,"new":true}"#,
            &CompareRule::default(),
        );
        assert_eq!(
            found,
            [
                ("$.gone".into(), Kind::Missing),
                ("$.n".into(), Kind::Missing),
                ("$.new".into(), Kind::Extra),
                ("$.total".into(), Kind::Type),
            ]
        );
        assert_eq!(
            paths(r#"{"a":null}"#, r#"{"a":0}"#, &CompareRule::default()),
            [("$.a".into(), Kind::Type)]
        );
    }

    #[test]
    fn big_numbers_are_compared_exactly() {
        assert!(
            paths(
                r#"{"id":18446744073709551615}"#,
                r#"{"id":18446744073709551615}"#,
                &CompareRule::default()
            )
            .is_empty()
        );
        assert_eq!(
            paths(
                r#"{"id":9007199254740993}"#,
                r#"{"id":9007199254740992}"#,
                &CompareRule::default()
            )
            .len(),
            1
        );
    }

    #[test]
    fn invalid_json_is_a_type_difference() {
        let found = compare(
            &CompareRule::default(),
            &json(r#"{"a":1}"#),
            &json("<html>oops"),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, "$");
        assert!(
            found[0]
                .shadow
                .as_deref()
                .unwrap()
                .starts_with("invalid JSON")
        );
    }

    #[test]
    fn status_and_headers_with_default_ignores_and_redaction() {
        let mut a = json("{}");
        let mut b = json("{}");
        b.status = StatusCode::NOT_FOUND;
        a.headers.insert("date", "x".parse().unwrap());
        b.headers.insert("date", "y".parse().unwrap());
        a.headers
            .insert("set-cookie", "sid=abc; Path=/".parse().unwrap());
        b.headers
            .insert("set-cookie", "sid=def; Path=/".parse().unwrap());
        a.headers.insert("x-api-version", "1".parse().unwrap());
        b.headers.insert("authorization", "secret".parse().unwrap());
        let found = compare(&CompareRule::default(), &a, &b);
        let paths: Vec<&str> = found.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            ["status", "headers.authorization", "headers.x-api-version"]
        );
        assert_eq!(found[1].shadow.as_deref(), Some("[redacted]"));
    }

    #[test]
    fn noise_discounts_differences_at_or_under_noisy_paths() {
        let found = paths(
            r#"{"t":1,"req":{"id":1},"x":1}"#,
            r#"{"t":2,"req":{"id":2},"x":2}"#,
            &CompareRule::default(),
        );
        assert_eq!(found.len(), 3);
        let diffs = compare(
            &CompareRule::default(),
            &json(r#"{"t":1,"req":{"id":1},"x":1}"#),
            &json(r#"{"t":2,"req":{"id":2},"x":2}"#),
        );
        let noise = compare(
            &CompareRule::default(),
            &json(r#"{"t":1,"req":{"id":1}}"#),
            &json(r#"{"t":3,"req":{"id":3}}"#),
        );
        let (counted, noisy) = discount_noise(diffs, &noise);
        assert_eq!(
            counted.iter().map(|d| d.path.as_str()).collect::<Vec<_>>(),
            ["$.x"]
        );
        assert_eq!(noisy.len(), 2);
    }
}
