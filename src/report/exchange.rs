//! One stored exchange laid out for reading: both bodies side by side, JSON pretty-printed line
//! by line with each line's path so the differing ones can be highlighted, and text bodies as
//! unified diff hunks (the `similar` crate, as the comparison itself uses).
//!
//! The layout is computed here, once, and rendered by both the live viewer (as JSON, by
//! `assets/ui/app.js`) and the HTML report ([`crate::report::html`]), so the two never disagree
//! about what is highlighted.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Value;

use crate::diff::path::{Step, render};
use crate::record::Difference;
use crate::store::summary::ExchangeWithNeighbours;

/// Why a line is highlighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    /// Under a path that differed and counted.
    Difference,
    /// Under a path that differed but was discounted as noise (`noise: legacy`).
    Noise,
}

/// One line of a pretty-printed JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub text: String,
    /// The JSON path of the value the line shows (`$.items[0].total`).
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mark: Option<Mark>,
}

/// One line of a text diff hunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HunkLine {
    /// `-` only the primary has it, `+` only the candidate, ` ` both.
    pub tag: char,
    /// 1-based line numbers in the primary's and the candidate's body.
    pub primary_line: Option<usize>,
    pub candidate_line: Option<usize>,
    pub text: String,
}

/// A unified diff hunk: `@@ -a,b +c,d @@` and its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hunk {
    pub header: String,
    pub lines: Vec<HunkLine>,
}

/// The two bodies, laid out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BodyView {
    /// Both samples parse as JSON: each pretty-printed, with its differing lines marked.
    Json {
        primary: Vec<Line>,
        candidate: Vec<Line>,
    },
    /// Otherwise (text, a sample cut at the cap, a body on one side only): a line diff.
    Text { hunks: Vec<Hunk>, identical: bool },
    /// Neither side kept a sample (a match, an error, an empty body).
    Absent,
}

/// What the viewer shows of one exchange.
#[derive(Debug, Clone, Serialize)]
pub struct ExchangeView {
    #[serde(flatten)]
    pub exchange: ExchangeWithNeighbours,
    /// `GET /orders/7?coupon=…` (the query as stored, already redacted).
    pub request_line: String,
    /// Header differences: `headers.<name>` with both values.
    pub header_differences: Vec<Difference>,
    pub body: BodyView,
}

/// Longest text diffed line by line; the rest of a longer sample is left out of the hunks.
const MAX_DIFF_BYTES: usize = 64 * 1024;
/// Alternative paths kept per JSON value (an element of an array matched by key is named by
/// its key in differences, `$.orders[id=7]`, and by its index here).
const MAX_ALIASES: usize = 8;

impl ExchangeView {
    pub fn new(exchange: ExchangeWithNeighbours) -> Self {
        let record = &exchange.exchange.record;
        let request_line = match &record.query {
            Some(query) => format!("{} {}?{query}", record.method, record.path),
            None => format!("{} {}", record.method, record.path),
        };
        let header_differences = record
            .differences
            .iter()
            .chain(&record.noise)
            .filter(|d| d.path.starts_with("headers."))
            .cloned()
            .collect();
        let body = body_view(
            record.primary_sample.as_deref(),
            record.shadow_sample.as_deref(),
            &record.differences,
            &record.noise,
        );
        Self {
            exchange,
            request_line,
            header_differences,
            body,
        }
    }
}

/// Lays out two body samples against the differences found between them.
pub fn body_view(
    primary: Option<&str>,
    candidate: Option<&str>,
    differences: &[Difference],
    noise: &[Difference],
) -> BodyView {
    if primary.is_none() && candidate.is_none() {
        return BodyView::Absent;
    }
    let parsed = |text: Option<&str>| text.and_then(|t| serde_json::from_str::<Value>(t).ok());
    if let (Some(a), Some(b)) = (parsed(primary), parsed(candidate)) {
        let marks = Marks::new(differences, noise);
        return BodyView::Json {
            primary: pretty_lines(&a, &marks),
            candidate: pretty_lines(&b, &marks),
        };
    }
    let (hunks, identical) = hunks(primary.unwrap_or(""), candidate.unwrap_or(""));
    BodyView::Text { hunks, identical }
}

/// The JSON paths of the differences, by kind of mark.
struct Marks<'a> {
    differences: Vec<&'a str>,
    noise: Vec<&'a str>,
}

impl<'a> Marks<'a> {
    fn new(differences: &'a [Difference], noise: &'a [Difference]) -> Self {
        let json = |list: &'a [Difference]| {
            list.iter()
                .map(|d| d.path.as_str())
                .filter(|p| p.starts_with('$'))
                .collect()
        };
        Self {
            differences: json(differences),
            noise: json(noise),
        }
    }

    fn of(&self, aliases: &[String]) -> Option<Mark> {
        let hit = |rules: &[&str]| {
            aliases
                .iter()
                .any(|path| rules.iter().any(|rule| covers(rule, path)))
        };
        if hit(&self.differences) {
            Some(Mark::Difference)
        } else if hit(&self.noise) {
            Some(Mark::Noise)
        } else {
            None
        }
    }
}

/// Whether the difference at `rule` is at `path` or holds it.
fn covers(rule: &str, path: &str) -> bool {
    rule == "$"
        || path
            .strip_prefix(rule)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// `value` pretty-printed (two-space indent, like `serde_json::to_string_pretty`), one entry
/// per line with the path of the value it shows.
fn pretty_lines(value: &Value, marks: &Marks<'_>) -> Vec<Line> {
    let mut out = Vec::new();
    let root = vec![Vec::new()];
    emit(value, None, &root, 0, false, marks, &mut out);
    out
}

/// Emits `value` at `depth`; `key` is the member name it is under; `paths` are the locations
/// it can be named by (the first is by index).
fn emit(
    value: &Value,
    key: Option<&str>,
    paths: &[Vec<Step<'_>>],
    depth: usize,
    comma: bool,
    marks: &Marks<'_>,
    out: &mut Vec<Line>,
) {
    let indent = "  ".repeat(depth);
    let prefix = match key {
        Some(key) => format!("{}: ", Value::String(key.to_owned())),
        None => String::new(),
    };
    let comma = if comma { "," } else { "" };
    let rendered: Vec<String> = paths.iter().map(|steps| render(steps)).collect();
    let mark = marks.of(&rendered);
    let path = rendered[0].clone();
    let mut line = |text: String| {
        out.push(Line {
            text,
            path: path.clone(),
            mark,
        })
    };
    match value {
        Value::Object(members) if !members.is_empty() => {
            line(format!("{indent}{prefix}{{"));
            let count = members.len();
            for (index, (name, member)) in members.iter().enumerate() {
                let child: Vec<Vec<Step<'_>>> = paths
                    .iter()
                    .map(|steps| {
                        let mut steps = steps.clone();
                        steps.push(Step::Key(Cow::Owned(name.clone())));
                        steps
                    })
                    .collect();
                emit(
                    member,
                    Some(name),
                    &child,
                    depth + 1,
                    index + 1 < count,
                    marks,
                    out,
                );
            }
            out.push(Line {
                text: format!("{indent}}}{comma}"),
                path: rendered[0].clone(),
                mark,
            });
        }
        Value::Array(elements) if !elements.is_empty() => {
            line(format!("{indent}{prefix}["));
            let count = elements.len();
            for (index, element) in elements.iter().enumerate() {
                let mut child = Vec::new();
                for steps in paths {
                    let mut by_index = steps.clone();
                    by_index.push(Step::Index(index));
                    child.push(by_index);
                    // An element matched by key is named by its key: `[id=7]`.
                    if let Value::Object(members) = element {
                        for (name, member) in members {
                            if child.len() >= MAX_ALIASES {
                                break;
                            }
                            if member.is_string() || member.is_number() || member.is_boolean() {
                                let mut by_key = steps.clone();
                                by_key.push(Step::Element(Cow::Owned(format!("{name}={member}"))));
                                child.push(by_key);
                            }
                        }
                    }
                }
                emit(
                    element,
                    None,
                    &child,
                    depth + 1,
                    index + 1 < count,
                    marks,
                    out,
                );
            }
            out.push(Line {
                text: format!("{indent}]{comma}"),
                path: rendered[0].clone(),
                mark,
            });
        }
        scalar => line(format!("{indent}{prefix}{scalar}{comma}")),
    }
}

/// Unified diff hunks (three lines of context) from the primary's text to the candidate's, and
/// whether the two are the same.
pub fn hunks(primary: &str, candidate: &str) -> (Vec<Hunk>, bool) {
    let cut = |text: &str| {
        let mut end = text.len().min(MAX_DIFF_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
    };
    let (primary, candidate) = (cut(primary), cut(candidate));
    let diff = similar::TextDiff::from_lines(&primary, &candidate);
    let mut hunks = Vec::new();
    for group in diff.grouped_ops(3) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let old = first.old_range().start..last.old_range().end;
        let new = first.new_range().start..last.new_range().end;
        let mut lines = Vec::new();
        for op in &group {
            for change in diff.iter_changes(op) {
                lines.push(HunkLine {
                    tag: match change.tag() {
                        similar::ChangeTag::Delete => '-',
                        similar::ChangeTag::Insert => '+',
                        similar::ChangeTag::Equal => ' ',
                    },
                    primary_line: change.old_index().map(|i| i + 1),
                    candidate_line: change.new_index().map(|i| i + 1),
                    text: change.value().trim_end_matches(['\n', '\r']).to_owned(),
                });
            }
        }
        hunks.push(Hunk {
            header: format!(
                "@@ -{},{} +{},{} @@",
                old.start + 1,
                old.len(),
                new.start + 1,
                new.len()
            ),
            lines,
        });
    }
    let identical = primary == candidate;
    (hunks, identical)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Kind;

    fn difference(path: &str) -> Difference {
        Difference {
            path: path.into(),
            kind: Kind::Changed,
            primary: Some("1".into()),
            shadow: Some("2".into()),
        }
    }

    fn marked(lines: &[Line]) -> Vec<(&str, Option<Mark>)> {
        lines
            .iter()
            .filter(|l| l.mark.is_some())
            .map(|l| (l.text.trim(), l.mark))
            .collect()
    }

    #[test]
    fn json_bodies_are_pretty_printed_with_the_differing_paths_marked() {
        let view = body_view(
            Some(r#"{"id":7,"total":90,"items":[{"sku":"a","qty":1}],"at":"x"}"#),
            Some(r#"{"id":7,"total":100,"items":[{"sku":"a","qty":2}],"at":"y"}"#),
            &[difference("$.total"), difference("$.items[0].qty")],
            &[difference("$.at")],
        );
        let BodyView::Json { primary, candidate } = view else {
            panic!("{view:?}")
        };
        let text: Vec<&str> = primary.iter().map(|l| l.text.as_str()).collect();
        let expected = serde_json::to_string_pretty(
            &serde_json::from_str::<Value>(
                r#"{"id":7,"total":90,"items":[{"sku":"a","qty":1}],"at":"x"}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(text.join("\n"), expected, "the same layout as serde_json");
        assert_eq!(
            marked(&candidate),
            [
                ("\"at\": \"y\",", Some(Mark::Noise)),
                ("\"qty\": 2,", Some(Mark::Difference)),
                ("\"total\": 100", Some(Mark::Difference)),
            ],
            "members in key order, as serde_json prints them"
        );
        assert_eq!(primary[9].path, "$.total");
        assert_eq!(primary[5].path, "$.items[0].qty");
    }

    #[test]
    fn a_difference_on_a_container_marks_all_of_it_and_keyed_elements_are_found_by_key() {
        let view = body_view(
            Some(r#"{"orders":[{"id":3,"n":1},{"id":7,"n":1}],"meta":{"a":1}}"#),
            Some(r#"{"orders":[{"id":3,"n":1},{"id":7,"n":2}],"meta":{"a":2}}"#),
            &[difference("$.orders[id=7].n"), difference("$.meta")],
            &[],
        );
        let BodyView::Json { candidate, .. } = view else {
            panic!()
        };
        let texts: Vec<&str> = marked(&candidate).iter().map(|(t, _)| *t).collect();
        assert_eq!(texts, ["\"meta\": {", "\"a\": 2", "},", "\"n\": 2"]);
    }

    #[test]
    fn text_bodies_become_unified_hunks_and_a_cut_json_sample_is_text() {
        let primary = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let candidate = "a\nb\nc\nD\ne\nf\ng\nh\n";
        let BodyView::Text { hunks, identical } =
            body_view(Some(primary), Some(candidate), &[], &[])
        else {
            panic!()
        };
        assert!(!identical);
        assert_eq!(hunks.len(), 1);
        assert_eq!(hunks[0].header, "@@ -1,7 +1,7 @@");
        let changed: Vec<(char, Option<usize>, Option<usize>, &str)> = hunks[0]
            .lines
            .iter()
            .filter(|l| l.tag != ' ')
            .map(|l| (l.tag, l.primary_line, l.candidate_line, l.text.as_str()))
            .collect();
        assert_eq!(
            changed,
            [('-', Some(4), None, "d"), ('+', None, Some(4), "D")]
        );
        assert!(matches!(
            body_view(Some(r#"{"a":1"#), Some(r#"{"a":2}"#), &[], &[]),
            BodyView::Text { .. }
        ));
        assert_eq!(body_view(None, None, &[], &[]), BodyView::Absent);
        let BodyView::Text { hunks, .. } = body_view(Some("x"), None, &[], &[]) else {
            panic!()
        };
        assert_eq!(hunks[0].lines[0].tag, '-', "a body on one side only");
    }
}
