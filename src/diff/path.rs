//! JSON paths for ignore rules and unordered arrays: `$`, `.key`, `.*`, `[3]`, `[*]`; and the
//! concrete locations differences are reported at, where an element of an array matched by key
//! is named by its key: `$.orders[id=7].total`.

use std::borrow::Cow;
use std::fmt::Write;

/// One step of a concrete location in a document; keys borrow from the document when they can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    Key(Cow<'a, str>),
    Index(usize),
    /// An element of an array matched by key, named by it: `id=7`, `sku="A-1"`. Patterns reach
    /// it with `[*]`, never with an index.
    Element(Cow<'a, str>),
}

/// A parsed pattern such as `$.items[*].updated_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    steps: Vec<PatternStep>,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternStep {
    Key(String),
    AnyKey,
    Index(usize),
    AnyIndex,
}

impl PathPattern {
    pub fn parse(source: &str) -> Result<Self, String> {
        let rest = source
            .strip_prefix('$')
            .ok_or_else(|| format!("`{source}` must start with `$`, like $.items[*].id"))?;
        let mut steps = Vec::new();
        let mut chars = rest.char_indices().peekable();
        while let Some((start, c)) = chars.next() {
            match c {
                '.' => {
                    let mut end = rest.len();
                    while let Some(&(i, next)) = chars.peek() {
                        if next == '.' || next == '[' {
                            end = i;
                            break;
                        }
                        chars.next();
                    }
                    let key = &rest[start + 1..end];
                    match key {
                        "" => return Err(format!("`{source}`: empty key after `.`")),
                        "*" => steps.push(PatternStep::AnyKey),
                        key => steps.push(PatternStep::Key(key.to_owned())),
                    }
                }
                '[' => {
                    let close = rest[start..]
                        .find(']')
                        .map(|i| start + i)
                        .ok_or_else(|| format!("`{source}`: unclosed `[`"))?;
                    let inner = &rest[start + 1..close];
                    let step = match inner {
                        "*" => PatternStep::AnyIndex,
                        number => PatternStep::Index(number.parse().map_err(|_| {
                            format!("`{source}`: `[{inner}]` is not an index or `*`")
                        })?),
                    };
                    steps.push(step);
                    while chars.peek().is_some_and(|&(i, _)| i <= close) {
                        chars.next();
                    }
                }
                other => return Err(format!("`{source}`: unexpected `{other}`")),
            }
        }
        Ok(Self {
            steps,
            source: source.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `path` is this location or lies under it.
    pub fn covers(&self, path: &[Step<'_>]) -> bool {
        self.steps.len() <= path.len() && self.matches_steps(&path[..self.steps.len()])
    }

    /// Whether `path` is exactly this location.
    pub fn matches(&self, path: &[Step<'_>]) -> bool {
        self.steps.len() == path.len() && self.matches_steps(path)
    }

    fn matches_steps(&self, path: &[Step<'_>]) -> bool {
        self.steps
            .iter()
            .zip(path)
            .all(|(pattern, step)| match (pattern, step) {
                (PatternStep::AnyKey, Step::Key(_))
                | (PatternStep::AnyIndex, Step::Index(_) | Step::Element(_)) => true,
                (PatternStep::Key(a), Step::Key(b)) => a == b,
                (PatternStep::Index(a), Step::Index(b)) => a == b,
                _ => false,
            })
    }
}

/// `$.items[3].id`
pub fn render(path: &[Step<'_>]) -> String {
    let mut out = String::from("$");
    for step in path {
        match step {
            Step::Key(key) if is_plain(key) => {
                let _ = write!(out, ".{key}");
            }
            Step::Key(key) => {
                let _ = write!(out, "[{key:?}]");
            }
            Step::Index(index) => {
                let _ = write!(out, "[{index}]");
            }
            Step::Element(label) => {
                let _ = write!(out, "[{label}]");
            }
        }
    }
    out
}

/// The path with every index or element key replaced by `[*]`: the shape an ignore rule needs.
/// Quoted member names (`["a b"]`) stay.
pub fn generalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let inner = &rest[open + 1..];
        let Some(close) = closing_bracket(inner) else {
            out.push_str(&rest[open..]);
            return out;
        };
        if inner.starts_with('"') {
            out.push_str(&rest[open..open + close + 2]);
        } else {
            out.push_str("[*]");
        }
        rest = &inner[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Where the `]` closing a bracket whose content is `inner` is, skipping quoted strings.
fn closing_bracket(inner: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (index, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ']' if !quoted => return Some(index),
            _ => {}
        }
    }
    None
}

fn is_plain(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(steps: &[&'static str]) -> Vec<Step<'static>> {
        steps
            .iter()
            .map(|s| match s.parse() {
                Ok(i) => Step::Index(i),
                Err(_) => Step::Key((*s).into()),
            })
            .collect()
    }

    #[test]
    fn patterns_match_and_cover() {
        let pattern = PathPattern::parse("$.items[*].updated_at").unwrap();
        assert!(pattern.matches(&path(&["items", "3", "updated_at"])));
        assert!(!pattern.matches(&path(&["items", "3", "id"])));
        assert!(pattern.covers(&path(&["items", "0", "updated_at", "nested"])));
        let any = PathPattern::parse("$.*.etag").unwrap();
        assert!(any.matches(&path(&["order", "etag"])));
        assert!(PathPattern::parse("$").unwrap().covers(&path(&["a"])));
        assert!(PathPattern::parse("items").is_err());
        assert!(PathPattern::parse("$.a[x]").is_err());
    }

    #[test]
    fn render_and_generalize() {
        assert_eq!(render(&path(&["items", "3", "id"])), "$.items[3].id");
        assert_eq!(render(&[Step::Key("a b".into())]), "$[\"a b\"]");
        assert_eq!(generalize("$.items[3].tags[10]"), "$.items[*].tags[*]");
        assert_eq!(
            generalize(r#"$.orders[id=7].lines[sku="a]b"].qty"#),
            "$.orders[*].lines[*].qty"
        );
        assert_eq!(generalize(r#"$["a b"][2]"#), r#"$["a b"][*]"#);
        assert_eq!(
            render(&[Step::Key("orders".into()), Step::Element("id=7".into())]),
            "$.orders[id=7]"
        );
        let any = PathPattern::parse("$.orders[*].updated_at").unwrap();
        assert!(any.matches(&[
            Step::Key("orders".into()),
            Step::Element("id=7".into()),
            Step::Key("updated_at".into())
        ]));
        let third = PathPattern::parse("$.orders[2]").unwrap();
        assert!(!third.covers(&[Step::Key("orders".into()), Step::Element("id=2".into())]));
    }
}
