//! The comparison engine: two captured responses in, a list of differences out. Pure and
//! synchronous; it runs on the diff worker thread, never on the proxy's I/O threads (see
//! [`super::DiffSink`]).
//!
//! Bodies are compared as their content, not their bytes on the wire: `Content-Encoding` is
//! undone first ([`super::decode`]), `Content-Type` is compared by meaning ([`super::media`]),
//! JSON structurally (arrays aligned element by element, or matched by key), text as line
//! hunks. Two JSON bodies are first walked token by token in lockstep ([`super::scan`]): when
//! that shows them equal under the rule (most shadowed answers), no tree is built. Otherwise the
//! primary's is, and the candidate's body is read against it ([`super::against`]): equal keys
//! in another order are shown equal without the candidate's tree. Otherwise both are parsed
//! ([`super::json`]) and the trees compared, as if neither walk had run.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::cmp::Ordering;
use std::collections::{BTreeSet, VecDeque};
use std::hash::{BuildHasher, Hasher};

use ahash::AHashMap as HashMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use super::json::{Json, key_order};
use bumpalo::Bump;
use http::{HeaderMap, HeaderName};
use similar::{Algorithm, DiffOp};

use super::decode::{DECODED_LIMIT, DecodeError, Decoded, decode};
use super::media::{self, BodyKind};
use super::path::{Cursor, PathPattern, Step, render};
use crate::exchange::CapturedResponse;
use crate::record::{Difference, Kind};

/// Headers that differ between any two servers and say nothing about the answer: transport
/// (framing, connection, content coding, caching negotiation) and server identity.
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "server",
    "x-request-id",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "trailer",
    "upgrade",
    "vary",
    "alt-svc",
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
/// Longest key value shown in the name of an element matched by key.
const MAX_KEY_LEN: usize = 60;
/// Most element pairs scored when matching leftover elements by similarity; beyond, leftovers
/// are missing and extra.
const MAX_SCORED_PAIRS: usize = 2048;
/// Most work (items x edits) an alignment is tried for; beyond, items are compared in place.
const MAX_ALIGNMENT_WORK: usize = 100_000_000;
/// How long one alignment (of an array, or of a text's lines) may search for the best one
/// before it settles for a good one.
const ALIGNMENT_TIMEOUT: Duration = Duration::from_millis(100);

/// Where a body's content-coding problem is reported.
pub const ENCODING_PATH: &str = "body:encoding";

/// An `unordered_arrays` entry compiled: the array's path and the members that key elements
/// (none: elements are matched by similarity).
#[derive(Debug, Clone)]
pub struct UnorderedArray {
    pub path: PathPattern,
    pub by: Vec<String>,
}

impl From<PathPattern> for UnorderedArray {
    fn from(path: PathPattern) -> Self {
        Self {
            path,
            by: Vec::new(),
        }
    }
}

/// How one route compares responses.
#[derive(Debug, Clone)]
pub struct CompareRule {
    pub ignore_headers: BTreeSet<String>,
    pub ignore_json: Vec<PathPattern>,
    pub unordered_arrays: Vec<UnorderedArray>,
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

impl CompareRule {
    /// A walk's cursor at the root of a document: ignored paths cover, unordered arrays are
    /// exact (in this order, so [`Cursor::exact`] indexes `unordered_arrays`).
    fn cursor<'a>(&self) -> Cursor<'_, 'a> {
        Cursor::new(
            &self.ignore_json,
            self.unordered_arrays.iter().map(|u| &u.path),
        )
    }

    fn unordered(&self, at: &Cursor<'_, '_>) -> Option<&UnorderedArray> {
        at.exact().map(|i| &self.unordered_arrays[i])
    }
}

impl super::scan::Paths for CompareRule {
    fn cursor<'a>(&self) -> Cursor<'_, 'a> {
        CompareRule::cursor(self)
    }

    /// Elements matched by key are named `[id=7]`, not by index; with a numeric tolerance,
    /// unordered elements are paired by fingerprint before any walk in place.
    fn pairs_elements(&self, at: &Cursor<'_, '_>) -> bool {
        self.unordered(at)
            .is_some_and(|u| !u.by.is_empty() || self.numeric_tolerance != 0.0)
    }
}

/// A captured response made ready to compare: what its media type says of its body, and the
/// body decoded and its JSON parsed on first use, once however many comparisons use them (the
/// primary meets the candidate and, with noise mode, its own second answer). Byte-identical
/// bodies are never decoded. The JSON tree lives in the caller's arena, freed with it at once.
pub struct Prepared<'a> {
    pub response: &'a CapturedResponse,
    body: OnceCell<Result<Decoded<'a>, DecodeError>>,
    kind: BodyKind,
    json: OnceCell<Result<Json<'a>, String>>,
    arena: &'a Bump,
}

impl<'a> Prepared<'a> {
    pub fn new(response: &'a CapturedResponse, arena: &'a Bump) -> Self {
        Self {
            arena,
            body: OnceCell::new(),
            kind: response
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map_or(BodyKind::default(), BodyKind::of),
            json: OnceCell::new(),
            response,
        }
    }

    /// The body with its content codings undone (at most 1 MiB of it), or why it cannot be.
    pub fn body(&self) -> &Result<Decoded<'a>, DecodeError> {
        self.body.get_or_init(|| {
            let response = self.response;
            decode(
                &response.headers,
                &response.body,
                response.truncated,
                DECODED_LIMIT,
            )
        })
    }

    pub fn is_json(&self) -> bool {
        self.kind.json
    }

    fn is_text(&self) -> bool {
        self.kind.text
    }

    /// The decoded body as JSON (parsed on first use), or why it is not JSON. The tree
    /// borrows its text from the body when the body was not content-coded.
    pub fn json(&self) -> Result<&Json<'a>, &str> {
        self.json
            .get_or_init(|| match self.body() {
                Ok(Decoded {
                    bytes: Cow::Borrowed(bytes),
                    ..
                }) => Json::parse(bytes, self.arena).map_err(invalid_json),
                // Decoded into a buffer this struct owns: the tree borrows a copy in the arena.
                Ok(decoded) => Json::parse(self.arena.alloc_slice_copy(&decoded.bytes), self.arena)
                    .map_err(invalid_json),
                Err(error) => Err(error.to_string()),
            })
            .as_ref()
            .map_err(String::as_str)
    }

    /// The decoded body as a `serde_json::Value` of its own (parsed anew on each call), for
    /// what must change the document (redacting a stored sample).
    pub fn json_value(&self) -> Result<serde_json::Value, String> {
        match self.body() {
            Ok(decoded) => serde_json::from_slice(&decoded.bytes).map_err(invalid_json),
            Err(error) => Err(error.to_string()),
        }
    }
}

fn invalid_json(error: serde_json::Error) -> String {
    format!("invalid JSON: {error}")
}

/// Every difference between `primary` and `shadow` under `rule`, at most 100.
pub fn compare(
    rule: &CompareRule,
    primary: &CapturedResponse,
    shadow: &CapturedResponse,
) -> Vec<Difference> {
    let arena = Bump::new();
    compare_prepared(
        rule,
        &Prepared::new(primary, &arena),
        &Prepared::new(shadow, &arena),
    )
}

/// [`compare`] on responses already prepared.
pub fn compare_prepared(
    rule: &CompareRule,
    primary: &Prepared<'_>,
    shadow: &Prepared<'_>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    let (a, b) = (primary.response, shadow.response);
    if a.status != b.status {
        out.push(Difference {
            path: "status".into(),
            kind: Kind::Changed,
            primary: Some(a.status.as_u16().to_string()),
            shadow: Some(b.status.as_u16().to_string()),
        });
    }
    compare_headers(rule, &a.headers, &b.headers, &mut out);
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
    // Every name either side has, once. Most are ignored or carry the same values byte for
    // byte, and those are equal however they would be shown: no text is made for them, and
    // only the rest are sorted (differences are listed by name).
    let mut differing: Vec<&str> = primary
        .keys()
        .chain(shadow.keys().filter(|name| !primary.contains_key(*name)))
        .map(HeaderName::as_str)
        .filter(|name| {
            !rule.ignore_headers.contains(*name)
                && !primary
                    .get_all(*name)
                    .iter()
                    .eq(shadow.get_all(*name).iter())
        })
        .collect();
    differing.sort_unstable();
    for name in differing {
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
        if name == "content-type"
            && let (Some(a), Some(b)) = (&a, &b)
            && media::same_meaning(a, b)
        {
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

fn compare_bodies(
    rule: &CompareRule,
    primary: &Prepared<'_>,
    shadow: &Prepared<'_>,
    out: &mut Vec<Difference>,
) {
    let (raw_a, raw_b) = (primary.response, shadow.response);
    let same_bytes = raw_a.body == raw_b.body
        && raw_a.truncated == raw_b.truncated
        && super::decode::codings(&raw_a.headers) == super::decode::codings(&raw_b.headers);
    if same_bytes {
        return;
    }
    let (a, b) = match (primary.body(), shadow.body()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            // Without the content, nothing more can be compared: say why.
            out.push(Difference {
                path: ENCODING_PATH.into(),
                kind: Kind::Changed,
                primary: Some(describe_coding(primary)),
                shadow: Some(describe_coding(shadow)),
            });
            return;
        }
    };
    if a.bytes == b.bytes && a.truncated == b.truncated {
        return;
    }
    if a.truncated || b.truncated {
        out.push(Difference {
            path: "body".into(),
            kind: Kind::Changed,
            primary: Some(describe_bytes(&a.bytes, a.truncated)),
            shadow: Some(describe_bytes(&b.bytes, b.truncated)),
        });
        return;
    }
    if primary.is_json() || shadow.is_json() {
        // Most answers match: shown equal token by token, neither body is parsed into a tree.
        if super::scan::same(rule, &a.bytes, &b.bytes) {
            return;
        }
        // Keys in another order (another serializer): the candidate read against the primary's
        // tree, which is built once for every comparison of the exchange anyway.
        if let Ok(tree) = primary.json()
            && super::against::same(rule, tree, &b.bytes)
        {
            return;
        }
        compare_trees(rule, primary, shadow, out);
        return;
    }
    if primary.is_text() || shadow.is_text() {
        compare_text(
            &String::from_utf8_lossy(&a.bytes),
            &String::from_utf8_lossy(&b.bytes),
            out,
        );
        return;
    }
    out.push(Difference {
        path: "body".into(),
        kind: Kind::Changed,
        primary: Some(describe_bytes(&a.bytes, false)),
        shadow: Some(describe_bytes(&b.bytes, false)),
    });
}

/// Two JSON bodies parsed into trees and walked: every difference, or why one is not JSON.
fn compare_trees(
    rule: &CompareRule,
    primary: &Prepared<'_>,
    shadow: &Prepared<'_>,
    out: &mut Vec<Difference>,
) {
    match (primary.json(), shadow.json()) {
        (Ok(x), Ok(y)) => compare_json(rule, x, y, &mut rule.cursor(), out),
        (x, y) => out.push(Difference {
            path: "$".into(),
            kind: Kind::Type,
            primary: Some(x.map_or_else(str::to_owned, |v| truncate(v.to_string()))),
            shadow: Some(y.map_or_else(str::to_owned, |v| truncate(v.to_string()))),
        }),
    }
}

/// A body's content coding as a difference shows it: what it decodes to, or why it does not.
fn describe_coding(prepared: &Prepared<'_>) -> String {
    let wire = prepared.response.body.len();
    match prepared.body() {
        Ok(decoded) if decoded.codings.is_empty() => format!("identity, {wire} bytes"),
        Ok(decoded) => format!(
            "{}, {wire} bytes, decodes to {}{} bytes",
            decoded.codings.join(", "),
            if decoded.truncated { "over " } else { "" },
            decoded.bytes.len()
        ),
        Err(error) => truncate(format!("{error} ({wire} bytes)")),
    }
}

pub(super) fn describe_bytes(body: &[u8], truncated: bool) -> String {
    format!(
        "{}{} bytes, xxh3 {:016x}",
        if truncated { "over " } else { "" },
        body.len(),
        xxhash_rust::xxh3::xxh3_64(body)
    )
}

/// Text bodies as line hunks: what was inserted, deleted or replaced, aligned so that one
/// inserted line is one difference, not a shift of every line after it. Within a replaced hunk,
/// lines are paired with their most alike counterpart (in order), so each changed line is a
/// difference of its own. Lines are numbered as the primary's, except extra lines, numbered as
/// the candidate's.
fn compare_text(a: &str, b: &str, out: &mut Vec<Difference>) {
    let x: Vec<&str> = a.split_inclusive('\n').collect();
    let y: Vec<&str> = b.split_inclusive('\n').collect();
    let hash = |lines: &[&str]| -> Vec<u64> {
        lines
            .iter()
            .map(|line| xxhash_rust::xxh3::xxh3_64(line.as_bytes()))
            .collect()
    };
    for op in align(&hash(&x), &hash(&y)) {
        let (_, old, new) = op.as_tag_tuple();
        match op {
            DiffOp::Equal { .. } => {}
            DiffOp::Delete { .. } => push_lines(Kind::Missing, &x, old, &y, 0..0, out),
            DiffOp::Insert { .. } => push_lines(Kind::Extra, &x, 0..0, &y, new, out),
            DiffOp::Replace { .. } => {
                let (mut i, mut j) = (old.start, new.start);
                for (pi, pj) in pair_lines(&x[old.clone()], &y[new.clone()]) {
                    let (pi, pj) = (old.start + pi, new.start + pj);
                    push_lines(Kind::Missing, &x, i..pi, &y, 0..0, out);
                    push_lines(Kind::Extra, &x, 0..0, &y, j..pj, out);
                    push_lines(Kind::Changed, &x, pi..pi + 1, &y, pj..pj + 1, out);
                    (i, j) = (pi + 1, pj + 1);
                }
                push_lines(Kind::Missing, &x, i..old.end, &y, 0..0, out);
                push_lines(Kind::Extra, &x, 0..0, &y, j..new.end, out);
            }
        }
    }
}

/// One text difference over lines `old` of `x` and `new` of `y` (nothing when both are empty).
fn push_lines(
    kind: Kind,
    x: &[&str],
    old: Range<usize>,
    y: &[&str],
    new: Range<usize>,
    out: &mut Vec<Difference>,
) {
    if (old.is_empty() && new.is_empty()) || out.len() >= MAX_DIFFERENCES {
        return;
    }
    let (mut shown_a, mut shown_b) = (lines(&x[old.clone()]), lines(&y[new.clone()]));
    if kind == Kind::Changed && shown_a == shown_b {
        // Only line endings differ: show them.
        shown_a = format!("{:?}", x[old.clone()].concat());
        shown_b = format!("{:?}", y[new.clone()].concat());
    }
    out.push(Difference {
        path: line_path(if kind == Kind::Extra { &new } else { &old }),
        kind,
        primary: (kind != Kind::Extra).then(|| truncate(shown_a)),
        shadow: (kind != Kind::Missing).then(|| truncate(shown_b)),
    });
}

/// Lines of a replaced hunk paired in order: each with its most alike counterpart (at least
/// half alike, by characters), the pairing that is most alike overall. A hunk too big to score
/// pairs by position.
fn pair_lines(x: &[&str], y: &[&str]) -> Vec<(usize, usize)> {
    if x.len() == y.len() || x.len() * y.len() > 400 {
        return (0..x.len().min(y.len())).map(|i| (i, i)).collect();
    }
    let alike = |a: &str, b: &str| {
        let ratio = similar::TextDiff::configure()
            .timeout(ALIGNMENT_TIMEOUT / 10)
            .diff_chars(a, b)
            .ratio();
        if ratio >= 0.5 { ratio } else { 0.0 }
    };
    // best[i][j]: the most alike in-order pairing of x[i..] and y[j..].
    let mut best = vec![vec![0.0f32; y.len() + 1]; x.len() + 1];
    let mut score = vec![vec![0.0f32; y.len()]; x.len()];
    for i in (0..x.len()).rev() {
        for j in (0..y.len()).rev() {
            score[i][j] = alike(x[i], y[j]);
            let paired = if score[i][j] > 0.0 {
                score[i][j] + best[i + 1][j + 1]
            } else {
                0.0
            };
            best[i][j] = paired.max(best[i + 1][j]).max(best[i][j + 1]);
        }
    }
    let (mut pairs, mut i, mut j) = (Vec::new(), 0, 0);
    while i < x.len() && j < y.len() {
        if score[i][j] > 0.0 && best[i][j] == score[i][j] + best[i + 1][j + 1] {
            pairs.push((i, j));
            (i, j) = (i + 1, j + 1);
        } else if best[i][j] == best[i + 1][j] {
            i += 1;
        } else {
            j += 1;
        }
    }
    pairs
}

/// How `old` becomes `new`, by items' hashes: the longest common subsequence (Myers, with
/// `similar`) when there is one worth finding. Myers costs about (n + m) x edits; when few
/// items are in common (edits are many) no alignment can help much, and one replacement of
/// everything (paired in place by the caller) is the answer, found in linear time.
fn align(old: &[u64], new: &[u64]) -> Vec<DiffOp> {
    let mut waiting: HashMap<u64, usize> = HashMap::with_capacity(new.len());
    for item in new {
        *waiting.entry(*item).or_default() += 1;
    }
    let mut common = 0;
    for item in old {
        if let Some(count) = waiting.get_mut(item).filter(|count| **count > 0) {
            *count -= 1;
            common += 1;
        }
    }
    let total = old.len() + new.len();
    let fewest_edits = total - 2 * common;
    if common == 0 || total.saturating_mul(fewest_edits) > MAX_ALIGNMENT_WORK {
        return vec![DiffOp::Replace {
            old_index: 0,
            old_len: old.len(),
            new_index: 0,
            new_len: new.len(),
        }];
    }
    similar::capture_diff_slices_deadline(
        Algorithm::Myers,
        old,
        new,
        Some(Instant::now() + ALIGNMENT_TIMEOUT),
    )
}

/// Lines as shown in a difference: joined by newlines, without their line endings.
fn lines(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|line| line.trim_end_matches('\n').trim_end_matches('\r'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `body:line 4` or `body:lines 4-6` for the 0-based `lines`.
fn line_path(lines: &Range<usize>) -> String {
    match lines.len() {
        0 | 1 => format!("body:line {}", lines.start + 1),
        _ => format!("body:lines {}-{}", lines.start + 1, lines.end),
    }
}

/// The 0-based line range a `body:line(s)` path names.
fn parse_line_path(path: &str) -> Option<Range<usize>> {
    if let Some(line) = path.strip_prefix("body:line ") {
        let line: usize = line.parse().ok()?;
        return Some(line.checked_sub(1)?..line);
    }
    let (first, last) = path.strip_prefix("body:lines ")?.split_once('-')?;
    let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
    Some(first.checked_sub(1)?..last)
}

/// Where differences go: collected, or only counted (to score how alike two elements are).
trait Sink {
    /// Whether differences are named by their path (a tally only counts them, and its walk
    /// need not follow the path where the rule does not reach).
    const NAMED: bool;
    fn full(&self) -> bool;
    fn push(&mut self, difference: impl FnOnce() -> Difference);
}

impl Sink for Vec<Difference> {
    const NAMED: bool = true;

    fn full(&self) -> bool {
        self.len() >= MAX_DIFFERENCES
    }

    fn push(&mut self, difference: impl FnOnce() -> Difference) {
        Vec::push(self, difference());
    }
}

/// Counts differences up to a limit, building none of them.
struct Tally {
    count: usize,
    limit: usize,
}

impl Sink for Tally {
    const NAMED: bool = false;

    fn full(&self) -> bool {
        self.count >= self.limit
    }

    fn push(&mut self, _: impl FnOnce() -> Difference) {
        self.count += 1;
    }
}

fn compare_json<'v, S: Sink>(
    rule: &CompareRule,
    a: &'v Json<'v>,
    b: &'v Json<'v>,
    path: &mut Cursor<'_, 'v>,
    out: &mut S,
) {
    if out.full() || path.covered() {
        return;
    }
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            // Both maps iterate in key order: walk them side by side, borrowing the keys.
            let members = |map: &'v [(&'v str, Json<'v>)]| {
                map.iter().map(|(key, value)| (*key, value)).peekable()
            };
            let (mut xs, mut ys) = (members(x), members(y));
            loop {
                let order = match (xs.peek(), ys.peek()) {
                    (None, None) => break,
                    (Some((kx, _)), Some((ky, _))) => key_order(kx, ky),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                };
                let (key, va, vb) = match order {
                    Ordering::Equal => {
                        let (key, va) = xs.next().expect("peeked");
                        let (_, vb) = ys.next().expect("peeked");
                        (key, Some(va), Some(vb))
                    }
                    Ordering::Less => {
                        let (key, va) = xs.next().expect("peeked");
                        (key, Some(va), None)
                    }
                    Ordering::Greater => {
                        let (key, vb) = ys.next().expect("peeked");
                        (key, None, Some(vb))
                    }
                };
                path.descend(Step::Key(Cow::Borrowed(key)), S::NAMED);
                compare_slot(rule, va, vb, path, out);
                path.pop();
            }
        }
        (Json::Array(x), Json::Array(y)) => match rule.unordered(path) {
            Some(UnorderedArray { by, .. }) if !by.is_empty() => {
                compare_keyed(rule, by, x, y, path, out);
            }
            Some(_) => compare_unordered(rule, x, y, path, out),
            None => compare_ordered(rule, x, y, path, out),
        },
        (Json::Number(x), Json::Number(y)) if !numbers_equal(x, y, rule.numeric_tolerance) => {
            out.push(|| changed(rule, path.steps(), a, b, Kind::Changed));
        }
        (Json::Number(_), Json::Number(_)) => {}
        _ if std::mem::discriminant(a) != std::mem::discriminant(b) => {
            out.push(|| changed(rule, path.steps(), a, b, Kind::Type));
        }
        _ if a != b => out.push(|| changed(rule, path.steps(), a, b, Kind::Changed)),
        _ => {}
    }
}

/// One member or element, present on one side or both.
fn compare_slot<'v, S: Sink>(
    rule: &CompareRule,
    primary: Option<&'v Json<'v>>,
    shadow: Option<&'v Json<'v>>,
    path: &mut Cursor<'_, 'v>,
    out: &mut S,
) {
    match (primary, shadow) {
        (Some(a), Some(b)) => compare_json(rule, a, b, path, out),
        (None, None) => {}
        (a, b) if !path.covered() && !out.full() => out.push(|| Difference {
            path: render(path.steps()),
            kind: if a.is_some() {
                Kind::Missing
            } else {
                Kind::Extra
            },
            primary: a.map(|value| shown(rule, path.steps(), value)),
            shadow: b.map(|value| shown(rule, path.steps(), value)),
        }),
        _ => {}
    }
}

/// An element only one side has, named by `step`.
fn compare_lone<'v, S: Sink>(
    rule: &CompareRule,
    step: Step<'v>,
    primary: Option<&'v Json<'v>>,
    shadow: Option<&'v Json<'v>>,
    path: &mut Cursor<'_, 'v>,
    out: &mut S,
) {
    path.descend(step, S::NAMED);
    compare_slot(rule, primary, shadow, path, out);
    path.pop();
}

/// An array whose order matters, aligned on its elements' fingerprints (longest common
/// subsequence): equal elements line up wherever they moved, so one inserted element is one
/// `extra`, not a change of every element after it. Elements replaced in place are compared
/// member by member, named by their index in the primary's array (an extra element by its
/// index in the candidate's).
fn compare_ordered<'v, S: Sink>(
    rule: &CompareRule,
    x: &'v [Json<'v>],
    y: &'v [Json<'v>],
    path: &mut Cursor<'_, 'v>,
    out: &mut S,
) {
    // Elements equal in place at the start, and at the end where both arrays are as long (so
    // an element has one index on both sides, as a rule names it), take no part in the
    // alignment, as a diff of lines leaves out the lines both texts start and end with. An
    // array that differs mostly differs in a few elements, and hashing every element of both
    // cost a third of comparing a list whose one record differs.
    let head = equal_run(rule, x, y, 0, path, End::Head);
    if head == x.len() && head == y.len() {
        return;
    }
    let tail = if x.len() == y.len() {
        equal_run(rule, x, y, head, path, End::Tail)
    } else {
        0
    };
    let (middle_x, middle_y) = (head..x.len() - tail, head..y.len() - tail);
    let fx = fingerprints(rule, x, middle_x, path);
    let fy = fingerprints(rule, y, middle_y, path);
    if fx == fy {
        return;
    }
    for op in align(&fx, &fy) {
        if out.full() {
            return;
        }
        let (_, old, new) = op.as_tag_tuple();
        let (old, new) = (
            old.start + head..old.end + head,
            new.start + head..new.end + head,
        );
        match op {
            DiffOp::Equal { .. } => {}
            DiffOp::Delete { .. } => {
                for i in old {
                    compare_lone(rule, Step::Index(i), Some(&x[i]), None, path, out);
                }
            }
            DiffOp::Insert { .. } => {
                for j in new {
                    compare_lone(rule, Step::Index(j), None, Some(&y[j]), path, out);
                }
            }
            DiffOp::Replace { .. } if old.len() == new.len() => {
                for (i, j) in old.zip(new) {
                    path.descend(Step::Index(i), S::NAMED);
                    compare_json(rule, &x[i], &y[j], path, out);
                    path.pop();
                }
            }
            DiffOp::Replace { .. } => {
                let old: Vec<usize> = old.collect();
                let new: Vec<usize> = new.collect();
                let mut pairs = best_pairs(rule, x, y, &old, &new, path);
                // What similarity left unpaired, paired in order when alike in shape.
                let (mut left_x, mut left_y) = unpaired(&old, &new, &pairs);
                while let (Some(&i), Some(&j)) = (left_x.front(), left_y.front()) {
                    if !same_shape(&x[i], &y[j]) {
                        break;
                    }
                    pairs.push((i, j));
                    left_x.pop_front();
                    left_y.pop_front();
                }
                report_pairs(rule, x, y, pairs, &old, &new, path, out);
            }
        }
    }
}

/// Whether each element of `x` equals the one at its index in `y` under the rule: one walk of
/// both arrays that stops at the first difference, hashing nothing. Most arrays of a matching
/// answer are; the others are aligned on fingerprints. (Elements equal only within
/// `numeric_tolerance` hash apart, so for those this is the finer test.)
fn equal_in_place<'v>(
    rule: &CompareRule,
    x: &'v [Json<'v>],
    y: &'v [Json<'v>],
    path: &mut Cursor<'_, 'v>,
) -> bool {
    x.len() == y.len() && equal_run(rule, x, y, 0, path, End::Head) == x.len()
}

/// Which end of two arrays [`equal_run`] starts from.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Head,
    /// Pairs counted from the last elements; each is named by its index in `x`, so only for
    /// arrays as long as each other.
    Tail,
}

/// How many elements in a row from `end`, leaving out the first `skip` pairs, are equal in place
/// under the rule, stopping at the first that is not.
fn equal_run<'v>(
    rule: &CompareRule,
    x: &'v [Json<'v>],
    y: &'v [Json<'v>],
    skip: usize,
    path: &mut Cursor<'_, 'v>,
    end: End,
) -> usize {
    let pairs = x.len().min(y.len()) - skip;
    let mut tally = Tally { count: 0, limit: 1 };
    for run in 0..pairs {
        let (i, j) = match end {
            End::Head => (skip + run, skip + run),
            End::Tail => (x.len() - 1 - run, y.len() - 1 - run),
        };
        path.descend(Step::Index(i), Tally::NAMED);
        compare_json(rule, &x[i], &y[j], path, &mut tally);
        path.pop();
        if tally.full() {
            return run;
        }
    }
    pairs
}

/// An array whose order does not matter and whose elements have no key: equal elements pair
/// off, then each remaining element is matched with its most alike counterpart.
fn compare_unordered<'v, S: Sink>(
    rule: &CompareRule,
    x: &'v [Json<'v>],
    y: &'v [Json<'v>],
    path: &mut Cursor<'_, 'v>,
    out: &mut S,
) {
    // Most unordered arrays of a matching answer are even in the same order: one walk that
    // stops at the first difference, no fingerprints, maps or queues. Only without a numeric
    // tolerance, where "equal" is transitive and the multiset pairing below could not find a
    // difference this walk did not.
    if rule.numeric_tolerance == 0.0 && x.len() == y.len() && equal_in_place(rule, x, y, path) {
        return;
    }
    let all_x: Vec<usize> = (0..x.len()).collect();
    let all_y: Vec<usize> = (0..y.len()).collect();
    let (old, new) = pair_equal(rule, x, y, &all_x, &all_y, path);
    let pairs = best_pairs(rule, x, y, &old, &new, path);
    report_pairs(rule, x, y, pairs, &old, &new, path, out);
}

/// An array whose elements are matched by the value of their `by` members: `$.orders[id=7]`.
/// Elements without the key (or not objects) are matched as in [`compare_unordered`].
fn compare_keyed<'v, S: Sink>(
    rule: &CompareRule,
    by: &[String],
    x: &'v [Json<'v>],
    y: &'v [Json<'v>],
    path: &mut Cursor<'_, 'v>,
    out: &mut S,
) {
    let keys = |values: &'v [Json<'v>]| -> Vec<Option<Vec<&'v Json<'v>>>> {
        values
            .iter()
            .map(|value| by.iter().map(|member| value.get(member)).collect())
            .collect()
    };
    let (kx, ky) = (keys(x), keys(y));
    let canonical = |key: &[&Json<'_>]| -> String {
        key.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\u{0}")
    };
    let mut by_key: HashMap<String, VecDeque<usize>> = HashMap::new();
    for (j, key) in ky.iter().enumerate() {
        if let Some(key) = key {
            by_key.entry(canonical(key)).or_default().push_back(j);
        }
    }
    // Whether each key member is under `redact_json`: the same for every element.
    let mut member_path = path.steps().to_vec();
    member_path.push(Step::Element(Cow::Borrowed("")));
    let hidden: Vec<bool> = by
        .iter()
        .map(|member| {
            member_path.push(Step::Key(Cow::Borrowed(member.as_str())));
            let hidden = redacted(rule, &member_path);
            member_path.pop();
            hidden
        })
        .collect();
    let label = |key: &[&Json<'_>]| Step::Element(Cow::Owned(element_label(by, &hidden, key)));
    let mut paired_y = vec![false; y.len()];
    let mut loose_x = Vec::new();
    for (i, key) in kx.iter().enumerate() {
        if out.full() {
            return;
        }
        let Some(key) = key else {
            loose_x.push(i);
            continue;
        };
        match by_key
            .get_mut(&canonical(key))
            .and_then(VecDeque::pop_front)
        {
            Some(j) => {
                paired_y[j] = true;
                // Most matched elements are equal: one hash walk each, no name built.
                if fingerprint_at(rule, &x[i], i, Some(&mut *path))
                    != fingerprint_at(rule, &y[j], i, Some(&mut *path))
                {
                    path.descend(label(key), S::NAMED);
                    compare_json(rule, &x[i], &y[j], path, out);
                    path.pop();
                }
            }
            None => compare_lone(rule, label(key), Some(&x[i]), None, path, out),
        }
    }
    let mut loose_y = Vec::new();
    for (j, key) in ky.iter().enumerate() {
        match key {
            _ if paired_y[j] => {}
            None => loose_y.push(j),
            Some(key) => compare_lone(rule, label(key), None, Some(&y[j]), path, out),
        }
    }
    if !loose_x.is_empty() || !loose_y.is_empty() {
        let (old, new) = pair_equal(rule, x, y, &loose_x, &loose_y, path);
        let pairs = best_pairs(rule, x, y, &old, &new, path);
        report_pairs(rule, x, y, pairs, &old, &new, path, out);
    }
}

/// `id=7`, `region="eu",id=7`: an element named by its key. A member under `redact_json`
/// (`hidden`) is named by a hash of its value instead (`email=~1f2e3d4c`), stable across
/// exchanges but not the value.
fn element_label(by: &[String], hidden: &[bool], key: &[&Json<'_>]) -> String {
    by.iter()
        .zip(hidden)
        .zip(key)
        .map(|((member, hidden), value)| {
            let shown = if *hidden {
                format!(
                    "~{:08x}",
                    xxhash_rust::xxh3::xxh3_64(value.to_string().as_bytes()) as u32
                )
            } else {
                truncate_to(value.to_string(), MAX_KEY_LEN)
            };
            format!("{member}={shown}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Pairs off the elements of `old` (in `x`) and `new` (in `y`) that are equal under the rule;
/// returns those left over.
fn pair_equal<'v>(
    rule: &CompareRule,
    x: &'v [Json<'v>],
    y: &'v [Json<'v>],
    old: &[usize],
    new: &[usize],
    path: &mut Cursor<'_, 'v>,
) -> (Vec<usize>, Vec<usize>) {
    let mut waiting: HashMap<u64, VecDeque<usize>> = HashMap::new();
    for &j in new {
        waiting
            .entry(fingerprint_at(rule, &y[j], j, Some(&mut *path)))
            .or_default()
            .push_back(j);
    }
    let mut paired = BTreeSet::new();
    let mut left_x = Vec::new();
    for &i in old {
        let print = fingerprint_at(rule, &x[i], i, Some(&mut *path));
        match waiting.get_mut(&print).and_then(VecDeque::pop_front) {
            Some(j) => {
                paired.insert(j);
            }
            None => left_x.push(i),
        }
    }
    let left_y = new
        .iter()
        .copied()
        .filter(|j| !paired.contains(j))
        .collect();
    (left_x, left_y)
}

/// Pairs elements of `old` and `new` by similarity: every pair is scored by how many of its
/// leaves differ, and the most alike pairs are taken first, as long as at most half their
/// leaves differ (one for the smallest records; scalars never). Beyond [`MAX_SCORED_PAIRS`] candidates nothing is paired.
fn best_pairs<'v>(
    rule: &CompareRule,
    x: &'v [Json<'v>],
    y: &'v [Json<'v>],
    old: &[usize],
    new: &[usize],
    path: &mut Cursor<'_, 'v>,
) -> Vec<(usize, usize)> {
    if old.is_empty() || new.is_empty() || old.len() * new.len() > MAX_SCORED_PAIRS {
        return Vec::new();
    }
    let leaves_y: Vec<usize> = new.iter().map(|&j| leaves(&y[j])).collect();
    let mut scored = Vec::new();
    for &i in old {
        let leaves_x = leaves(&x[i]);
        for (&j, &leaves_y) in new.iter().zip(&leaves_y) {
            if !same_shape(&x[i], &y[j]) {
                continue;
            }
            // Scalars pair only when equal (then they were paired already); records when at
            // most half their leaves differ (one, for the smallest).
            let allowed = match &x[i] {
                Json::Object(_) | Json::Array(_) => (leaves_x.max(leaves_y) / 2).max(1),
                _ => 0,
            };
            let mut tally = Tally {
                count: 0,
                limit: allowed + 1,
            };
            path.descend(Step::Index(i), Tally::NAMED);
            compare_json(rule, &x[i], &y[j], path, &mut tally);
            path.pop();
            if tally.count <= allowed {
                scored.push((tally.count, i, j));
            }
        }
    }
    scored.sort_unstable();
    let (mut used_x, mut used_y) = (BTreeSet::new(), BTreeSet::new());
    let mut pairs = Vec::new();
    for (_, i, j) in scored {
        if !used_x.contains(&i) && !used_y.contains(&j) {
            used_x.insert(i);
            used_y.insert(j);
            pairs.push((i, j));
        }
    }
    pairs
}

fn unpaired(
    old: &[usize],
    new: &[usize],
    pairs: &[(usize, usize)],
) -> (VecDeque<usize>, VecDeque<usize>) {
    let (px, py): (BTreeSet<usize>, BTreeSet<usize>) = pairs.iter().copied().unzip();
    (
        old.iter().copied().filter(|i| !px.contains(i)).collect(),
        new.iter().copied().filter(|j| !py.contains(j)).collect(),
    )
}

/// Differences of paired elements (named by the primary's index), then the elements of `old`
/// without a pair (missing) and of `new` without one (extra, by the candidate's index).
#[allow(clippy::too_many_arguments)]
fn report_pairs<'v, S: Sink>(
    rule: &CompareRule,
    x: &'v [Json<'v>],
    y: &'v [Json<'v>],
    mut pairs: Vec<(usize, usize)>,
    old: &[usize],
    new: &[usize],
    path: &mut Cursor<'_, 'v>,
    out: &mut S,
) {
    pairs.sort_unstable();
    let (left_x, left_y) = unpaired(old, new, &pairs);
    for (i, j) in pairs {
        path.descend(Step::Index(i), S::NAMED);
        compare_json(rule, &x[i], &y[j], path, out);
        path.pop();
    }
    for i in left_x {
        compare_lone(rule, Step::Index(i), Some(&x[i]), None, path, out);
    }
    for j in left_y {
        compare_lone(rule, Step::Index(j), None, Some(&y[j]), path, out);
    }
}

/// Both objects, both arrays, or both scalars.
fn same_shape(a: &Json<'_>, b: &Json<'_>) -> bool {
    matches!(
        (a, b),
        (Json::Object(_), Json::Object(_)) | (Json::Array(_), Json::Array(_))
    ) || !(a.is_object() || a.is_array() || b.is_object() || b.is_array())
}

/// How many scalars (and empty containers) a value holds.
fn leaves(value: &Json<'_>) -> usize {
    match value {
        Json::Object(map) if !map.is_empty() => map.iter().map(|(_, value)| leaves(value)).sum(),
        Json::Array(items) if !items.is_empty() => items.iter().map(leaves).sum(),
        _ => 1,
    }
}

/// The fingerprint of each element in `range`, in order.
fn fingerprints<'v>(
    rule: &CompareRule,
    values: &'v [Json<'v>],
    range: Range<usize>,
    path: &mut Cursor<'_, 'v>,
) -> Vec<u64> {
    values[range.clone()]
        .iter()
        .zip(range)
        .map(|(value, index)| fingerprint_at(rule, value, index, Some(&mut *path)))
        .collect()
}

fn fingerprint_at<'v>(
    rule: &CompareRule,
    value: &'v Json<'v>,
    index: usize,
    path: Option<&mut Cursor<'_, 'v>>,
) -> u64 {
    let mut hasher = FINGERPRINTS.build_hasher();
    element(rule, value, index, path, &mut hasher);
    hasher.finish()
}

/// The element at `index` hashed into `hasher`, or a mark if the rule ignores it.
fn element<'v>(
    rule: &CompareRule,
    value: &'v Json<'v>,
    index: usize,
    path: Option<&mut Cursor<'_, 'v>>,
    hasher: &mut ahash::AHasher,
) {
    match path.and_then(|path| path.enter(Step::Index(index)).then_some(path)) {
        Some(path) => {
            if path.covered() {
                hasher.write(b"i");
            } else {
                fingerprint(rule, value, Some(&mut *path), hasher);
            }
            path.pop();
        }
        None => fingerprint(rule, value, None, hasher),
    }
}

/// The fingerprints' hasher: one is started per element of every array aligned, so it must be
/// cheap to start (an xxh3 state copies its 192-byte secret each time). Fixed seeds, so one
/// build gives the same fingerprints in every run; they are never stored (ahash promises no
/// stability across versions or CPU features).
static FINGERPRINTS: ahash::RandomState = ahash::RandomState::with_seeds(
    0x5368_6164_6f77_2d31,
    0x4469_6666_2d46_7031,
    0x5374_7261_6e67_6c65,
    0x7246_6967_2d32_3032,
);

/// Hashes `value` so that values equal under the rule hash alike: ignored members left out,
/// numbers by value (`1` and `1.0` alike), unordered arrays as multisets. Numbers within
/// the tolerance of each other hash apart; the comparison then finds them equal. The caller has
/// checked that `path` is not ignored (each member and element is checked once, not twice).
/// Where no rule reaches ([`Cursor::enter`]) `path` is `None` and nothing is asked of the rule:
/// the same bytes are hashed as the rule would have them, without following the path. (Not
/// [`Cursor::descend`], as the comparing walks do: stepping and asking at every node of a
/// detached subtree cost 4 % more on a list whose every record differs.)
fn fingerprint<'v>(
    rule: &CompareRule,
    value: &'v Json<'v>,
    mut path: Option<&mut Cursor<'_, 'v>>,
    hasher: &mut ahash::AHasher,
) {
    match value {
        Json::Null => hasher.write_u8(b'n'),
        Json::Bool(b) => hasher.write_u8(if *b { b't' } else { b'f' }),
        Json::Number(n) => {
            let integer = n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from))
                .or_else(|| {
                    let f = n.as_f64()?;
                    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i128)
                });
            match integer {
                Some(integer) => {
                    hasher.write_u8(b'I');
                    hasher.write_i128(integer);
                }
                None => {
                    hasher.write_u8(b'F');
                    hasher.write_u64(n.as_f64().unwrap_or(f64::NAN).to_bits());
                }
            }
        }
        Json::String(s) => {
            hasher.write_u8(b's');
            // `write` mixes the length in itself (ahash, both of its builds): a string ends
            // unambiguously without writing its length apart.
            hasher.write(s.as_bytes());
        }
        Json::Array(items) => {
            // On the stack for most arrays: one is made for every array in every element.
            let unordered = path
                .as_deref()
                .is_some_and(|at| rule.unordered(at).is_some());
            hasher.write_u8(b'[');
            hasher.write_usize(items.len());
            if unordered {
                // A multiset: the elements' own prints summed, in whatever order they come.
                // (A sum is a weaker hash than a sorted list of prints, but 64 bits still make
                // two unequal sets of elements an accident, not a pattern.)
                let mut sum = 0u64;
                for (index, item) in items.iter().enumerate() {
                    let print = fingerprint_at(rule, item, index, path.as_deref_mut());
                    sum = sum.wrapping_add(print);
                }
                hasher.write_u64(sum);
            } else {
                // In order, into this hasher: each value's bytes say where it ends (a tag, and
                // for strings and keys the length `write` mixes in), so one after another is
                // unambiguous.
                for (index, item) in items.iter().enumerate() {
                    element(rule, item, index, path.as_deref_mut(), hasher);
                }
            }
        }
        Json::Object(map) => {
            hasher.write_u8(b'{');
            for (key, child) in *map {
                let step = Step::Key(Cow::Borrowed(*key));
                let mut at =
                    (path.as_deref_mut()).and_then(|path| path.enter(step).then_some(path));
                if !at.as_deref().is_some_and(Cursor::covered) {
                    hasher.write(key.as_bytes());
                    fingerprint(rule, child, at.as_deref_mut(), hasher);
                }
                if let Some(at) = at {
                    at.pop();
                }
            }
            hasher.write_u8(b'}');
        }
    }
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

fn changed(
    rule: &CompareRule,
    path: &[Step<'_>],
    a: &Json<'_>,
    b: &Json<'_>,
    kind: Kind,
) -> Difference {
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
fn shown(rule: &CompareRule, path: &[Step<'_>], value: &Json<'_>) -> String {
    if redacted(rule, path) {
        REDACTED.to_owned()
    } else {
        // Serialized straight into the `String` (`to_string` would go through `Display`, which
        // serializes into another one first).
        truncate(serde_json::to_string(value).unwrap_or_default())
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

/// Splits `differences` into those that count and those that are noise. A difference is noise
/// when both sides have a value there (`changed` or `type`) and the primary disagreed with
/// itself at the same place or above it. Whatever one side lacks (`missing`, `extra`) counts,
/// however noisy the other side's value is, and so does a different status.
pub fn discount_noise(
    differences: Vec<Difference>,
    noise: &[Difference],
) -> (Vec<Difference>, Vec<Difference>) {
    differences
        .into_iter()
        .partition(|difference| !is_noise(difference, noise))
}

fn is_noise(difference: &Difference, noise: &[Difference]) -> bool {
    if !difference.kind.is_value() || difference.path == "status" {
        return false;
    }
    let lines = parse_line_path(&difference.path);
    noise.iter().any(|noisy| {
        let path = &noisy.path;
        let under = difference.path == *path
            || difference
                .path
                .strip_prefix(path.as_str())
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['));
        // Text lines are numbered as the primary's, except in an extra hunk (the other
        // answer's numbers), which says nothing about the primary's lines.
        let overlapping = || match (&lines, parse_line_path(path)) {
            (Some(ours), Some(theirs)) if noisy.kind != Kind::Extra => {
                ours.start < theirs.end.max(theirs.start + 1)
                    && theirs.start < ours.end.max(ours.start + 1)
            }
            _ => false,
        };
        under || overlapping()
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
            body: Bytes::from(body.to_owned()).into(),
            truncated: false,
        }
    }

    fn text(body: &str) -> CapturedResponse {
        let mut response = json(body);
        response
            .headers
            .insert("content-type", "text/plain".parse().unwrap());
        response
    }

    fn rule(ignore: &[&str], unordered: &[&str], tolerance: f64) -> CompareRule {
        CompareRule {
            ignore_json: ignore
                .iter()
                .map(|p| PathPattern::parse(p).unwrap())
                .collect(),
            unordered_arrays: unordered
                .iter()
                .map(|p| PathPattern::parse(p).unwrap().into())
                .collect(),
            numeric_tolerance: tolerance,
            ..CompareRule::default()
        }
    }

    fn keyed(mut rule: CompareRule, path: &str, by: &[&str]) -> CompareRule {
        rule.unordered_arrays.push(UnorderedArray {
            path: PathPattern::parse(path).unwrap(),
            by: by.iter().map(|s| (*s).to_owned()).collect(),
        });
        rule
    }

    fn paths(a: &str, b: &str, rule: &CompareRule) -> Vec<(String, Kind)> {
        compare(rule, &json(a), &json(b))
            .into_iter()
            .map(|d| (d.path, d.kind))
            .collect()
    }

    fn found(paths: &[(&str, Kind)]) -> Vec<(String, Kind)> {
        paths.iter().map(|(p, k)| ((*p).to_owned(), *k)).collect()
    }

    #[test]
    fn differences_under_a_redacted_path_keep_no_values() {
        let rule = CompareRule {
            redact_json: vec![PathPattern::parse("$.user").unwrap()],
            unordered_arrays: vec![PathPattern::parse("$.user.roles").unwrap().into()],
            ..CompareRule::default()
        };
        let found = compare(
            &rule,
            &json(r#"{"user":{"token":"secret-a","roles":["x"],"extra":1},"n":1}"#),
            &json(r#"{"user":{"token":"secret-b","roles":["y"]},"n":2}"#),
        );
        // token, roles: "x" missing and "y" extra, extra, n.
        assert_eq!(found.len(), 5, "{found:?}");
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
    fn a_redacted_key_names_its_element_by_a_hash() {
        let rule = CompareRule {
            redact_json: vec![PathPattern::parse("$.users[*].email").unwrap()],
            ..keyed(CompareRule::default(), "$.users", &["email"])
        };
        let found = compare(
            &rule,
            &json(r#"{"users":[{"email":"ada@example.com","n":1}]}"#),
            &json(r#"{"users":[{"email":"ada@example.com","n":2}]}"#),
        );
        assert_eq!(found.len(), 1);
        assert!(found[0].path.starts_with("$.users[email=~"), "{found:?}");
        assert!(!found[0].path.contains("ada"), "{found:?}");
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
    fn one_inserted_element_is_one_extra_not_a_shift_of_every_element() {
        let orders = |ids: &[u32]| {
            let items: Vec<String> = ids
                .iter()
                .map(|id| format!(r#"{{"id":{id},"total":{id}0,"status":"open"}}"#))
                .collect();
            format!(r#"{{"orders":[{}]}}"#, items.join(","))
        };
        let rule = CompareRule::default();
        assert_eq!(
            paths(&orders(&[1, 2, 3, 4]), &orders(&[1, 9, 2, 3, 4]), &rule),
            found(&[("$.orders[1]", Kind::Extra)])
        );
        assert_eq!(
            paths(&orders(&[1, 2, 3, 4]), &orders(&[1, 3, 4]), &rule),
            found(&[("$.orders[1]", Kind::Missing)])
        );
        // An element changed in place is compared member by member.
        let changed = orders(&[1, 2, 3]).replace(r#""total":20"#, r#""total":21"#);
        assert_eq!(
            paths(&orders(&[1, 2, 3]), &changed, &rule),
            found(&[("$.orders[1].total", Kind::Changed)])
        );
        // Inserted before a changed element: the changed one is still paired with its twin.
        let both = orders(&[1, 9, 2, 3]).replace(r#""total":20"#, r#""total":21"#);
        assert_eq!(
            paths(&orders(&[1, 2, 3]), &both, &rule),
            found(&[
                ("$.orders[1].total", Kind::Changed),
                ("$.orders[1]", Kind::Extra)
            ])
        );
        // Ignored members do not make elements differ.
        let ignoring = CompareRule {
            ignore_json: vec![PathPattern::parse("$.orders[*].status").unwrap()],
            ..CompareRule::default()
        };
        let closed = orders(&[1, 9, 2]).replace("open", "closed");
        assert_eq!(
            paths(&orders(&[1, 2]), &closed, &ignoring),
            found(&[("$.orders[1]", Kind::Extra)])
        );
    }

    #[test]
    fn lists_with_nothing_in_common_are_compared_in_place() {
        assert_eq!(
            paths(r#"[1,2,3]"#, r#"[4,5,6,7]"#, &CompareRule::default()),
            found(&[
                ("$[0]", Kind::Changed),
                ("$[1]", Kind::Changed),
                ("$[2]", Kind::Changed),
                ("$[3]", Kind::Extra)
            ])
        );
        // Thousands of records, each different: no quadratic search for an alignment.
        let records = |variant: u32| {
            let items: Vec<String> = (0..5000)
                .map(|id| format!(r#"{{"id":{id},"total":{}}}"#, id * 10 + variant))
                .collect();
            format!("[{}]", items.join(","))
        };
        let started = Instant::now();
        let found = compare(
            &CompareRule::default(),
            &json(&records(0)),
            &json(&records(1)),
        );
        assert_eq!(found.len(), MAX_DIFFERENCES);
        assert_eq!(found[0].path, "$[0].total");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let lines = |variant: u32| -> String {
            (0..5000).map(|n| format!("line {n}.{variant}\n")).collect()
        };
        let found = compare(&CompareRule::default(), &text(&lines(0)), &text(&lines(1)));
        assert_eq!(found[0].path, "body:line 1");
        assert_eq!(found[0].kind, Kind::Changed);
    }

    #[test]
    fn unordered_arrays_match_elements_by_similarity() {
        let rule = rule(&[], &["$.tags", "$.items[*].ids", "$.lines"], 0.0);
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
            found(&[("$.tags[2]", Kind::Missing)])
        );
        assert_eq!(
            paths(r#"{"tags":["a","b"]}"#, r#"{"tags":["c","a"]}"#, &rule),
            found(&[("$.tags[1]", Kind::Missing), ("$.tags[0]", Kind::Extra)])
        );
        assert!(
            paths(
                r#"{"items":[{"ids":[1,2]}]}"#,
                r#"{"items":[{"ids":[2,1]}]}"#,
                &rule
            )
            .is_empty()
        );
        // Reordered records, one of them changed: the change is found in its own record.
        assert_eq!(
            paths(
                r#"{"lines":[{"sku":"a","qty":1,"price":5},{"sku":"b","qty":2,"price":7}]}"#,
                r#"{"lines":[{"sku":"b","qty":3,"price":7},{"sku":"a","qty":1,"price":5}]}"#,
                &rule
            ),
            found(&[("$.lines[1].qty", Kind::Changed)])
        );
        // Not listed: order matters.
        assert_eq!(
            paths(r#"{"other":[1,2]}"#, r#"{"other":[2,1]}"#, &rule).len(),
            2
        );
    }

    #[test]
    fn keyed_arrays_match_elements_by_key_with_rules_inside() {
        let rule = keyed(
            rule(&["$.orders[*].updated_at"], &[], 0.01),
            "$.orders",
            &["id"],
        );
        let primary = r#"{"orders":[
            {"id":7,"total":100,"updated_at":"t1","status":"open"},
            {"id":8,"total":50,"updated_at":"t1"},
            {"id":9,"total":5}]}"#;
        let shadow = r#"{"orders":[
            {"id":10,"total":1},
            {"id":8,"total":50.2,"updated_at":"t2"},
            {"id":7,"total":100.5,"updated_at":"t3","status":"shipped"}]}"#;
        assert_eq!(
            paths(primary, shadow, &rule),
            found(&[
                ("$.orders[id=7].status", Kind::Changed),
                ("$.orders[id=9]", Kind::Missing),
                ("$.orders[id=10]", Kind::Extra),
            ])
        );
        let composite = keyed(CompareRule::default(), "$.rows", &["region", "id"]);
        assert_eq!(
            paths(
                r#"{"rows":[{"region":"eu","id":1,"n":1},{"region":"us","id":1,"n":2}]}"#,
                r#"{"rows":[{"region":"us","id":1,"n":3},{"region":"eu","id":1,"n":1}]}"#,
                &composite
            ),
            found(&[(r#"$.rows[region="us",id=1].n"#, Kind::Changed)])
        );
        // Elements without the key are matched by similarity.
        assert_eq!(
            paths(
                r#"{"orders":[{"id":1},{"note":"x"}]}"#,
                r#"{"orders":[{"note":"y"},{"id":1}]}"#,
                &keyed(CompareRule::default(), "$.orders", &["id"])
            ),
            found(&[("$.orders[1].note", Kind::Changed)])
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
        assert!(
            paths(
                r#"{"x":[1,2.0]}"#,
                r#"{"x":[1.0,2]}"#,
                &CompareRule::default()
            )
            .is_empty(),
            "fingerprints agree with the comparison"
        );
        assert!(paths(r#"{"x":[1000.0]}"#, r#"{"x":[1000.9]}"#, &tolerant).is_empty());
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
        assert_eq!(
            paths(
                r#"[9007199254740993]"#,
                r#"[9007199254740992]"#,
                &CompareRule::default()
            ),
            [("$[0]".into(), Kind::Changed)]
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

    fn encoded(body: &[u8], coding: &str) -> CapturedResponse {
        let mut response = json("");
        response.body = Bytes::from(body.to_vec()).into();
        response
            .headers
            .insert("content-encoding", coding.parse().unwrap());
        response
    }

    #[test]
    fn bodies_compare_decoded_and_content_codings_are_transport() {
        use super::super::decode::tests::{brotli, gzip};
        let body = br#"{"id":1,"total":10.5}"#;
        let plain = json(std::str::from_utf8(body).unwrap());
        let rule = CompareRule::default();
        assert_eq!(compare(&rule, &encoded(&gzip(body), "gzip"), &plain), []);
        assert_eq!(compare(&rule, &plain, &encoded(&brotli(body), "br")), []);
        let other = encoded(&gzip(br#"{"id":1,"total":11}"#), "gzip");
        assert_eq!(
            compare(&rule, &plain, &other)
                .into_iter()
                .map(|d| d.path)
                .collect::<Vec<_>>(),
            ["$.total"]
        );
    }

    #[test]
    fn a_body_that_does_not_decode_is_an_encoding_difference() {
        let plain = json(r#"{"id":1}"#);
        let rule = CompareRule::default();
        let broken = compare(&rule, &plain, &encoded(b"not gzip at all", "gzip"));
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert_eq!(broken[0].path, ENCODING_PATH);
        assert_eq!(broken[0].primary.as_deref(), Some("identity, 8 bytes"));
        assert!(
            broken[0]
                .shadow
                .as_deref()
                .unwrap()
                .starts_with("gzip body does not decode"),
            "{broken:?}"
        );
        let unknown = compare(&rule, &plain, &encoded(b"\x1f\x9d", "compress"));
        assert_eq!(
            unknown[0].shadow.as_deref(),
            Some("unknown content-encoding `compress` (2 bytes)")
        );
        // The same undecodable bytes on both sides are no difference.
        let same = encoded(b"???", "x-custom");
        assert_eq!(compare(&rule, &same, &same.clone()), []);
    }

    #[test]
    fn content_type_is_compared_by_meaning() {
        let mut a = json("{}");
        let mut b = json("{}");
        a.headers.insert(
            "content-type",
            "application/json; charset=UTF-8".parse().unwrap(),
        );
        assert_eq!(compare(&CompareRule::default(), &a, &b), []);
        b.headers
            .insert("content-type", "text/json".parse().unwrap());
        assert_eq!(
            compare(&CompareRule::default(), &a, &b)[0].path,
            "headers.content-type"
        );
    }

    #[test]
    fn text_bodies_differ_by_hunks() {
        let a = "title\none\ntwo\nthree\nfour\n";
        let b = "title\nzero\none\ntwo\nTHREE\nfour\n";
        let found = compare(&CompareRule::default(), &text(a), &text(b));
        let shown: Vec<(&str, Kind, Option<&str>, Option<&str>)> = found
            .iter()
            .map(|d| {
                (
                    d.path.as_str(),
                    d.kind,
                    d.primary.as_deref(),
                    d.shadow.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("body:line 2", Kind::Extra, None, Some("zero")),
                ("body:line 4", Kind::Changed, Some("three"), Some("THREE")),
            ]
        );
        let found = compare(
            &CompareRule::default(),
            &text("a\nb\nc\nd\n"),
            &text("a\nd\n"),
        );
        assert_eq!(
            (
                found[0].path.as_str(),
                found[0].kind,
                found[0].primary.as_deref()
            ),
            ("body:lines 2-3", Kind::Missing, Some("b\nc"))
        );
        let endings = compare(&CompareRule::default(), &text("a\n"), &text("a\r\n"));
        assert_eq!(endings[0].primary.as_deref(), Some(r#""a\n""#));
    }

    #[test]
    fn status_and_headers_with_default_ignores_and_redaction() {
        let mut a = json("{}");
        let mut b = json("{}");
        b.status = StatusCode::NOT_FOUND;
        a.headers.insert("date", "x".parse().unwrap());
        b.headers.insert("date", "y".parse().unwrap());
        a.headers.insert("vary", "accept-encoding".parse().unwrap());
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
    fn repeated_headers_are_compared_as_their_whole_list_in_order() {
        let (mut a, mut b) = (json("{}"), json("{}"));
        for map in [&mut a.headers, &mut b.headers] {
            map.append("x-tags", "accept".parse().unwrap());
            map.append("x-tags", "origin".parse().unwrap());
            map.insert("x-empty", "".parse().unwrap());
        }
        assert_eq!(compare(&CompareRule::default(), &a, &b), []);
        // The same values in another order, or one more, are another list.
        let mut swapped = json("{}");
        swapped.headers.append("x-tags", "origin".parse().unwrap());
        swapped.headers.append("x-tags", "accept".parse().unwrap());
        swapped.headers.insert("x-empty", "".parse().unwrap());
        let found = compare(&CompareRule::default(), &a, &swapped);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].primary.as_deref(), found[0].shadow.as_deref()),
            (Some("accept, origin"), Some("origin, accept"))
        );
        b.headers.append("x-tags", "origin".parse().unwrap());
        assert_eq!(
            compare(&CompareRule::default(), &a, &b)[0].kind,
            Kind::Changed
        );
    }

    fn differences(a: &str, b: &str) -> Vec<Difference> {
        compare(&CompareRule::default(), &json(a), &json(b))
    }

    fn counted_and_noisy(
        primary: &str,
        candidate: &str,
        second: &str,
    ) -> (Vec<String>, Vec<String>) {
        let (counted, noisy) = discount_noise(
            differences(primary, candidate),
            &differences(primary, second),
        );
        let paths = |list: Vec<Difference>| list.into_iter().map(|d| d.path).collect();
        (paths(counted), paths(noisy))
    }

    #[test]
    fn noise_discounts_differences_at_or_under_noisy_paths() {
        let (counted, noisy) = counted_and_noisy(
            r#"{"t":1,"req":{"id":1},"x":1}"#,
            r#"{"t":2,"req":{"id":2},"x":2}"#,
            r#"{"t":3,"req":{"id":3},"x":1}"#,
        );
        assert_eq!(counted, ["$.x"]);
        assert_eq!(noisy, ["$.req.id", "$.t"]);
        let (counted, noisy) = counted_and_noisy(
            r#"{"req":{"id":1}}"#,
            r#"{"req":{"id":2}}"#,
            r#"{"req":"gone"}"#,
        );
        assert!(counted.is_empty());
        assert_eq!(noisy, ["$.req.id"], "under a noisy path");
    }

    #[test]
    fn a_field_one_side_lacks_counts_however_noisy_the_other_side_is() {
        // The candidate lacks the ever-changing timestamp: that is a missing field, not noise.
        let (counted, noisy) = counted_and_noisy(
            r#"{"id":1,"generated_at":"t1"}"#,
            r#"{"id":1}"#,
            r#"{"id":1,"generated_at":"t2"}"#,
        );
        assert_eq!(counted, ["$.generated_at"]);
        assert!(noisy.is_empty());
        // And a field only the candidate has, where the primary's value comes and goes.
        let (counted, _) = counted_and_noisy(
            r#"{"id":1}"#,
            r#"{"id":1,"debug":"x"}"#,
            r#"{"id":1,"debug":"y"}"#,
        );
        assert_eq!(counted, ["$.debug"]);
        // Nor is a missing element of a noisy list.
        let (counted, _) = counted_and_noisy(
            r#"{"items":[{"t":1},{"t":2}]}"#,
            r#"{"items":[{"t":5}]}"#,
            r#"{"items":[{"t":3},{"t":4}]}"#,
        );
        assert_eq!(counted, ["$.items[1]"]);
    }

    #[test]
    fn a_status_difference_is_never_noise() {
        let status = |code: u16| Difference {
            path: "status".into(),
            kind: Kind::Changed,
            primary: Some("200".into()),
            shadow: Some(code.to_string()),
        };
        let (counted, noisy) = discount_noise(vec![status(500)], &[status(503)]);
        assert_eq!((counted.len(), noisy.len()), (1, 0));
    }

    #[test]
    fn noisy_text_lines_discount_changes_on_the_same_lines() {
        let primary = text("report\ngenerated 10:00:01\ntotal 5\n");
        let candidate = text("report\ngenerated 10:00:02\ntotal 6\nfooter\n");
        let second = text("report\ngenerated 10:00:03\ntotal 5\n");
        let rule = CompareRule::default();
        let (counted, noisy) = discount_noise(
            compare(&rule, &primary, &candidate),
            &compare(&rule, &primary, &second),
        );
        assert_eq!(
            noisy.iter().map(|d| d.path.as_str()).collect::<Vec<_>>(),
            ["body:line 2"]
        );
        let counted: Vec<(&str, Kind)> =
            counted.iter().map(|d| (d.path.as_str(), d.kind)).collect();
        assert_eq!(
            counted,
            [("body:line 3", Kind::Changed), ("body:line 4", Kind::Extra)]
        );
        // In a hunk of another length, lines pair with their most alike counterpart.
        let found = compare(
            &rule,
            &text("a\nthe total is 5\nz\n"),
            &text("a\nnew line\nthe total is 6\nz\n"),
        );
        let found: Vec<(&str, Kind)> = found.iter().map(|d| (d.path.as_str(), d.kind)).collect();
        assert_eq!(
            found,
            [("body:line 2", Kind::Extra), ("body:line 2", Kind::Changed)]
        );
    }

    // The comparison walks a tree borrowed from the bodies (`super::json`), not
    // `serde_json::Value`: these pin that it finds what `Value` found.

    #[test]
    fn equal_documents_in_other_bytes_have_no_differences() {
        let rule = rule(&[], &[], 0.0);
        for (a, b) in [
            (r#"{"a":1,"b":[1,2]}"#, r#"{ "b" : [1, 2], "a" : 1 }"#),
            (r#"{"name":"\u00e9t\u00e9"}"#, r#"{"name":"été"}"#),
            (r#"{"n":1,"m":[2.0]}"#, r#"{"n":1.0,"m":[2]}"#),
            (r#"{"k":"\/"}"#, r#"{"k":"/"}"#),
            (r#"{"d":1,"d":2}"#, r#"{"d":2}"#),
        ] {
            assert_eq!(paths(a, b, &rule), found(&[]), "{a} vs {b}");
        }
    }

    #[test]
    fn arrays_equal_in_place_skip_alignment_and_a_late_difference_is_still_found() {
        let tolerant = rule(&[], &[], 0.01);
        assert_eq!(
            paths("[1.0, 2.0, 3.0]", "[1.001, 2.0, 2.999]", &tolerant),
            found(&[])
        );
        let rule = rule(&["$[*].at"], &[], 0.0);
        let a = r#"[{"v":1,"at":1},{"v":2,"at":2},{"v":3,"at":3}]"#;
        let b = r#"[{"v":1,"at":9},{"v":2,"at":9},{"v":4,"at":9}]"#;
        assert_eq!(paths(a, b, &rule), found(&[("$[2].v", Kind::Changed)]));
    }

    #[test]
    fn equal_ends_are_left_out_of_the_alignment_and_the_middle_is_still_aligned() {
        let plain = CompareRule::default();
        let list = |items: &[u32]| format!("{items:?}");
        let long: Vec<u32> = (0..40).collect();
        let mut inserted = long.clone();
        inserted.insert(20, 99);
        assert_eq!(
            paths(&list(&long), &list(&inserted), &plain),
            found(&[("$[20]", Kind::Extra)])
        );
        let mut changed = long.clone();
        changed[20] = 99;
        changed[30] = 98;
        assert_eq!(
            paths(&list(&long), &list(&changed), &plain),
            found(&[("$[20]", Kind::Changed), ("$[30]", Kind::Changed)])
        );
        assert_eq!(
            paths(&list(&long), &list(&long[..39]), &plain),
            found(&[("$[39]", Kind::Missing)])
        );
        // The ends are equal in place as the rule has it: within the tolerance, or ignored by
        // their index.
        let tolerant = rule(&[], &[], 0.01);
        assert_eq!(
            paths(
                "[1.0, 2.0, 3.0, 4.0]",
                "[1.001, 5.0, 3.0, 3.999]",
                &tolerant
            ),
            found(&[("$[1]", Kind::Changed)])
        );
        let fourth = rule(&["$[3]"], &[], 0.0);
        assert_eq!(
            paths("[1,2,3,4,5]", "[1,2,9,7,5]", &fourth),
            found(&[("$[2]", Kind::Changed)])
        );
    }

    #[test]
    fn escaped_and_plain_text_that_differ_are_shown_decoded() {
        let found = compare(
            &rule(&[], &[], 0.0),
            &json(r#"{"name":"caf\u00e9"}"#),
            &json(r#"{"name":"cafe"}"#),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "$.name");
        assert_eq!(found[0].primary.as_deref(), Some(r#""café""#));
        assert_eq!(found[0].shadow.as_deref(), Some(r#""cafe""#));
    }

    #[test]
    fn ignored_ids_leave_records_equal_and_other_fields_still_differ() {
        let rule = rule(&["$.items[*].id", "$.at"], &[], 0.0);
        let a = r#"{"at":"t1","items":[{"id":"a1","v":1},{"id":"a2","v":2}]}"#;
        let b = r#"{"at":"t2","items":[{"id":"b1","v":1},{"id":"b2","v":2}]}"#;
        assert_eq!(paths(a, b, &rule), found(&[]));
        let c = r#"{"at":"t2","items":[{"id":"b1","v":1},{"id":"b2","v":3}]}"#;
        assert_eq!(
            paths(a, c, &rule),
            found(&[("$.items[1].v", Kind::Changed)])
        );
    }

    #[test]
    fn noise_is_found_in_content_coded_bodies_too() {
        use super::super::decode::tests::gzip;
        let primary = encoded(&gzip(br#"{"t":1,"x":1}"#), "gzip");
        let candidate = json(r#"{"t":2,"x":2}"#);
        let second = encoded(&gzip(br#"{"t":3,"x":1}"#), "gzip");
        let rule = rule(&[], &[], 0.0);
        let arena = Bump::new();
        let (prepared, candidate, second) = (
            Prepared::new(&primary, &arena),
            Prepared::new(&candidate, &arena),
            Prepared::new(&second, &arena),
        );
        let (counted, noisy) = discount_noise(
            compare_prepared(&rule, &prepared, &candidate),
            &compare_prepared(&rule, &prepared, &second),
        );
        let paths = |list: Vec<Difference>| list.into_iter().map(|d| d.path).collect::<Vec<_>>();
        assert_eq!(paths(counted), ["$.x"]);
        assert_eq!(paths(noisy), ["$.t"]);
    }

    /// What the comparison finds without its fast path: both bodies parsed and walked as trees
    /// (byte-identical bodies, as before any parse, have none).
    fn by_trees(rule: &CompareRule, a: &str, b: &str) -> Vec<Difference> {
        let (a, b) = (json(a), json(b));
        let mut out = Vec::new();
        if a.body != b.body {
            let arena = Bump::new();
            let (a, b) = (Prepared::new(&a, &arena), Prepared::new(&b, &arena));
            compare_trees(rule, &a, &b, &mut out);
        }
        out.truncate(MAX_DIFFERENCES);
        out
    }

    /// The fast path (`scan`) changes no result: `compare` finds what the tree walk finds.
    fn same_as_trees(rule: &CompareRule, a: &str, b: &str) -> Vec<Difference> {
        let fast = compare(rule, &json(a), &json(b));
        assert_eq!(fast, by_trees(rule, a, b), "{a} vs {b}");
        fast
    }

    #[test]
    fn the_fast_path_finds_what_the_trees_find_at_its_edges() {
        let plain = rule(&[], &[], 0.0);
        let ids = rule(&["$.items[*].id", "$.*.at", "$.list[1]"], &["$.tags"], 0.0);
        let keyed_ids = keyed(rule(&["$.items[0].at"], &[], 0.0), "$.items", &["id"]);
        let loose = rule(&["$.items[*].at"], &["$.items"], 0.5);
        for (rule, a, b, differences) in [
            // Whitespace only.
            (
                &plain,
                r#"{"a":[1,"x"]}"#,
                " {\"a\" : [ 1 ,\n\"x\" ] }\n",
                0,
            ),
            // Numbers spelled otherwise are equal; other numbers are not.
            (&plain, r#"{"n":1}"#, r#"{"n":1.0}"#, 0),
            (&plain, r#"{"n":1}"#, r#"{"n":1e0}"#, 0),
            (&plain, r#"{"n":1}"#, r#"{"n":10}"#, 1),
            (&plain, r#"[1e400]"#, r#"[1e400]"#, 0),
            (&plain, r#"[1e400]"#, r#"[1e400 ]"#, 1),
            (&plain, r#"[100000000000000000000]"#, r#"[1e20]"#, 0),
            // Escapes: the same text written two ways, and two texts.
            (&plain, r#"["a\u00e9"]"#, r#"["aé"]"#, 0),
            (&plain, r#"["\ud83d\ude00"]"#, r#"["😀"]"#, 0),
            (&plain, r#"["\n"]"#, r#"["\t"]"#, 1),
            (&plain, r#"{"\u0061":1}"#, r#"{"a":1}"#, 0),
            // Keys in another order; the same key twice (the last wins).
            (&plain, r#"{"a":1,"b":2}"#, r#"{"b":2,"a":1}"#, 0),
            (&plain, r#"{"k":1,"k":2}"#, r#"{"k":3,"k":2}"#, 0),
            (&plain, r#"{"k":1,"k":2}"#, r#"{"k":2,"k":1}"#, 1),
            (&plain, r#"{"k":1,"k":2}"#, r#"{"k":1,"k":2}"#, 0),
            // Ignored paths, with wildcards and indexes.
            (
                &ids,
                r#"{"items":[{"id":1,"n":"a"},{"id":2}],"x":{"at":1},"list":[0,1,2]}"#,
                r#"{"items":[{"id":"p","n":"a"},{"id":[]}],"x":{"at":{}},"list":[0,9,2]}"#,
                0,
            ),
            (&ids, r#"{"list":[0,1,2]}"#, r#"{"list":[9,1,2]}"#, 1),
            (&ids, r#"{"tags":["a","b"]}"#, r#"{"tags":["b","a"]}"#, 0),
            // Under elements matched by key, an ignored value stops the walk: the trees decide
            // (their element fingerprints, taken by index, leave `[0].at` out).
            (
                &keyed_ids,
                r#"{"items":[{"id":1,"at":1}]}"#,
                r#"{"items":[{"id":1,"at":2}]}"#,
                0,
            ),
            (
                &loose,
                r#"{"items":[{"at":1},2]}"#,
                r#"{"items":[{"at":2},2.5]}"#,
                0,
            ),
            // Invalid JSON, against itself or not: the same error as before.
            (&plain, "[1,]", "[1,] ", 1),
            (&plain, "[1]", "[1] x", 1),
            (&plain, "\"\\ud800\"", "\"\\ud800\" ", 1),
            (&plain, "\"a\u{1}\"", "\"a\u{1}\" ", 1),
        ] {
            let found = same_as_trees(rule, a, b);
            assert_eq!(found.len(), differences, "{a} vs {b}: {found:?}");
        }
        let nested = |depth: usize| "[".repeat(depth) + &"]".repeat(depth);
        for depth in [100, 101, 127, 128, 129, 200] {
            same_as_trees(&plain, &nested(depth), &format!(" {}", nested(depth)));
        }
    }

    /// A seeded xorshift: a failing case is found again from its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'t>(&mut self, items: &[&'t str]) -> &'t str {
            items[self.below(items.len())]
        }
    }

    /// A generated document: scalars kept as their JSON text, so they can be respelled.
    #[derive(Clone, Debug)]
    enum Doc {
        Scalar(String),
        Array(Vec<Doc>),
        Object(Vec<(String, Doc)>),
    }

    const KEYS: &[&str] = &["id", "n", "items", "tags", "a", "at"];
    const SCALARS: &[&str] = &[
        "0",
        "1",
        "1.0",
        "1e0",
        "-2",
        "2.5",
        "2.50",
        "100000000000000000000",
        "true",
        "false",
        "null",
        r#""x""#,
        r#""\u0078""#,
        r#""é""#,
        r#""\n""#,
        r#""""#,
        r#""q\"""#,
    ];

    impl Doc {
        fn generate(rng: &mut Rng, depth: usize) -> Doc {
            let children = |rng: &mut Rng| rng.below(4);
            match rng.below(if depth >= 3 { 1 } else { 4 }) {
                0 => Doc::Scalar(rng.pick(SCALARS).to_owned()),
                1 => Doc::Array(
                    (0..children(rng))
                        .map(|_| Doc::generate(rng, depth + 1))
                        .collect(),
                ),
                _ => Doc::Object(
                    (0..children(rng))
                        .map(|_| (rng.pick(KEYS).to_owned(), Doc::generate(rng, depth + 1)))
                        .collect(),
                ),
            }
        }

        fn print(&self, rng: &mut Rng, out: &mut String) {
            let space = |rng: &mut Rng, out: &mut String| {
                if rng.below(6) == 0 {
                    out.push_str(rng.pick(&[" ", "\n  ", "\t", "\r\n"]));
                }
            };
            space(rng, out);
            match self {
                Doc::Scalar(text) => out.push_str(text),
                Doc::Array(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        item.print(rng, out);
                    }
                    space(rng, out);
                    out.push(']');
                }
                Doc::Object(members) => {
                    out.push('{');
                    for (i, (key, value)) in members.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        space(rng, out);
                        out.push_str(&format!("\"{key}\""));
                        space(rng, out);
                        out.push(':');
                        value.print(rng, out);
                    }
                    space(rng, out);
                    out.push('}');
                }
            }
            space(rng, out);
        }

        /// Every object's members in another order, as another serializer writes them: the
        /// same tree unless a key is given twice.
        fn reorder(&mut self, rng: &mut Rng) {
            match self {
                Doc::Array(items) => items.iter_mut().for_each(|item| item.reorder(rng)),
                Doc::Object(members) => {
                    if !members.is_empty() {
                        let by = rng.below(members.len());
                        members.rotate_left(by);
                    }
                    members.iter_mut().for_each(|(_, value)| value.reorder(rng));
                }
                Doc::Scalar(_) => {}
            }
        }

        /// One random change somewhere in the document (or none).
        fn mutate(&mut self, rng: &mut Rng) {
            let children = match self {
                Doc::Array(items) => items.len(),
                Doc::Object(members) => members.len(),
                Doc::Scalar(_) => 0,
            };
            if children > 0 && rng.below(3) != 0 {
                let at = rng.below(children);
                match self {
                    Doc::Array(items) => items[at].mutate(rng),
                    Doc::Object(members) => members[at].1.mutate(rng),
                    Doc::Scalar(_) => {}
                }
                return;
            }
            match (rng.below(6), self) {
                (0, doc) => *doc = Doc::generate(rng, 2),
                (1, Doc::Scalar(text)) => {
                    *text = match text.as_str() {
                        "1" => "1.0",
                        "1.0" => "1e0",
                        "2.5" => "2.50",
                        r#""x""# => r#""\u0078""#,
                        _ => "1",
                    }
                    .to_owned()
                }
                (2, Doc::Array(items)) if items.len() > 1 => {
                    let last = items.len() - 1;
                    items.swap(0, last);
                }
                (2, Doc::Object(members)) if members.len() > 1 => members.swap(0, 1),
                (3, Doc::Object(members)) if !members.is_empty() => {
                    let (key, _) = members[rng.below(members.len())].clone();
                    members.push((key, Doc::generate(rng, 2)));
                }
                (4, Doc::Array(items)) if !items.is_empty() => {
                    items.remove(rng.below(items.len()));
                }
                (4, Doc::Object(members)) if !members.is_empty() => {
                    members.remove(rng.below(members.len()));
                }
                _ => {}
            }
        }
    }

    /// Thousands of generated pairs, mutated at random (values, spellings, key order, every
    /// object reordered, keys given twice, removals, a broken byte), under rules of ignored paths
    /// and unordered arrays: the comparison with its fast paths finds exactly what the tree walk
    /// finds. More for a one-off
    /// run: `GENERATED_PAIRS=60000 cargo test --release --lib generated_document_pairs`.
    #[test]
    fn generated_document_pairs_compare_as_the_trees_do() {
        let rules = [
            rule(&[], &[], 0.0),
            rule(&["$.id", "$.*.at", "$.items[*].id"], &["$.tags"], 0.0),
            rule(&["$[0]", "$[*].n", "$.items[1]"], &["$.items", "$"], 0.0),
            rule(&["$.a.*", "$.items[*].at"], &["$.items"], 0.5),
            keyed(
                rule(&["$.items[0].n", "$.at"], &[], 0.0),
                "$.items",
                &["id"],
            ),
            keyed(rule(&["$[*].at"], &[], 0.0), "$", &["id", "n"]),
        ];
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let (mut shown_equal, mut shown_equal_against) = (0, 0);
        let cases: usize = std::env::var("GENERATED_PAIRS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(3000);
        for case in 0..cases {
            let rule = &rules[case % rules.len()];
            let primary = Doc::generate(&mut rng, 0);
            let mut shadow = primary.clone();
            if rng.below(3) == 0 {
                shadow.reorder(&mut rng);
            }
            for _ in 0..rng.below(3) {
                shadow.mutate(&mut rng);
            }
            let (mut a, mut b) = (String::new(), String::new());
            primary.print(&mut rng, &mut a);
            shadow.print(&mut rng, &mut b);
            if rng.below(20) == 0 && !b.is_empty() {
                let mut at = rng.below(b.len());
                while !b.is_char_boundary(at) {
                    at -= 1;
                }
                b.remove(at);
            }
            if super::super::scan::same(rule, a.as_bytes(), b.as_bytes()) {
                shown_equal += 1;
            } else if let Ok(tree) = Json::parse(a.as_bytes(), &Bump::new())
                && super::super::against::same(rule, &tree, b.as_bytes())
            {
                shown_equal_against += 1;
            }
            same_as_trees(rule, &a, &b);
        }
        // Each walk must have been taken often enough for this to test it.
        assert!(
            shown_equal > cases / 5,
            "{shown_equal} of {cases} shown equal"
        );
        assert!(
            shown_equal_against > cases / 40,
            "{shown_equal_against} of {cases} shown equal against the primary's tree"
        );
    }
}
