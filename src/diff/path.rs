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
            .all(|(pattern, step)| pattern.matches(step))
    }
}

impl PatternStep {
    #[inline(always)]
    fn matches(&self, step: &Step<'_>) -> bool {
        match (self, step) {
            (PatternStep::AnyKey, Step::Key(_))
            | (PatternStep::AnyIndex, Step::Index(_) | Step::Element(_)) => true,
            (PatternStep::Key(a), Step::Key(b)) => a == b,
            (PatternStep::Index(a), Step::Index(b)) => a == b,
            _ => false,
        }
    }
}

/// A walk's place in a document, descending one step at a time, with the patterns of a rule
/// matched as it goes: each step is matched once, against only the patterns that can still
/// match, instead of every pattern against the whole path at every value. What is asked of a
/// location (is it ignored? is it an unordered array? can any rule apply beneath?) is then a
/// few bit operations.
///
/// Patterns come in two groups. *Covering* ones (ignored paths) name a location and everything
/// under it; *exact* ones (unordered arrays) name one location. A walk must not descend under a
/// location a covering pattern names (it skips ignored values), so a covering pattern is only
/// ever asked about where it matches exactly: [`Cursor::covered`] relies on that.
pub struct Cursor<'p, 'a> {
    /// The patterns followed by bits (the first 64); covering ones first.
    patterns: Vec<&'p PathPattern>,
    /// Beyond the 64th: matched against the whole path when asked, the slow way.
    rest: Vec<&'p PathPattern>,
    /// Bits of the covering patterns.
    covering: u64,
    /// How many covering patterns there are, including any in `rest`.
    covering_count: usize,
    /// `ending[d]`: the patterns of exactly `d` steps; `longer[d]`: of more than `d`.
    ending: Vec<u64>,
    longer: Vec<u64>,
    steps: Vec<Step<'a>>,
    /// Steps taken without following them ([`Cursor::descend`]): nothing reaches beneath.
    detached: usize,
    /// For the root and after each step: bit `i` set while the steps of `patterns[i]` so far
    /// all match the path. Not pushed past the depth where none is left (most of a record):
    /// beyond its end, none is.
    alive: Vec<u64>,
}

impl<'p, 'a> Cursor<'p, 'a> {
    /// At the root, with `covering` patterns (ignored paths) and `exact` ones.
    pub fn new(
        covering: impl IntoIterator<Item = &'p PathPattern>,
        exact: impl IntoIterator<Item = &'p PathPattern>,
    ) -> Self {
        let mut all: Vec<&PathPattern> = covering.into_iter().collect();
        let covering_count = all.len();
        all.extend(exact);
        let rest = all.split_off(all.len().min(u64::BITS as usize));
        let patterns = all;
        let deepest = patterns.iter().map(|p| p.steps.len()).max().unwrap_or(0);
        let (mut ending, mut longer) = (vec![0u64; deepest + 1], vec![0u64; deepest + 1]);
        for (i, pattern) in patterns.iter().enumerate() {
            ending[pattern.steps.len()] |= 1 << i;
            for bits in &mut longer[..pattern.steps.len()] {
                *bits |= 1 << i;
            }
        }
        let covering = match covering_count.min(patterns.len()) {
            64 => u64::MAX,
            n => (1 << n) - 1,
        };
        let mut alive = Vec::with_capacity(16);
        alive.push(ending.iter().fold(0, |all, bits| all | bits));
        Self {
            patterns,
            rest,
            covering,
            covering_count,
            ending,
            longer,
            steps: Vec::with_capacity(16),
            detached: 0,
            alive,
        }
    }

    #[inline(always)]
    pub fn push(&mut self, step: Step<'a>) {
        if self.detached > 0 {
            self.detached += 1;
            return;
        }
        let next = self.next(&step);
        self.push_with(step, next);
    }

    /// Steps into `step`; a walk that will not name a location by its path (it only counts
    /// differences) passes `named: false`, and the step is then only counted where no pattern
    /// reaches: every question beneath has the answer "no", and [`Cursor::steps`] is not asked.
    #[inline(always)]
    pub fn descend(&mut self, step: Step<'a>, named: bool) {
        if named {
            return self.push(step);
        }
        if self.detached > 0 {
            self.detached += 1;
            return;
        }
        let next = self.next(&step);
        if next == 0 && self.rest.is_empty() {
            self.detached = 1;
        } else {
            self.push_with(step, next);
        }
    }

    /// Steps into `step` only if some pattern still reaches there (returns whether it did): a
    /// walk that needs the path only to ask the rule goes on without it where nothing will be
    /// asked, and pops only what it entered.
    #[inline(always)]
    pub fn enter(&mut self, step: Step<'a>) -> bool {
        let next = self.next(&step);
        if next == 0 && self.rest.is_empty() {
            return false;
        }
        self.push_with(step, next);
        true
    }

    /// The patterns alive past `step` from here.
    #[inline(always)]
    fn next(&self, step: &Step<'_>) -> u64 {
        let depth = self.steps.len();
        // Only patterns with a step at this depth can match beneath it.
        let mut bits = self.alive_at(depth) & self.longer.get(depth).copied().unwrap_or(0);
        let mut next = 0;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if self.patterns[i].steps[depth].matches(step) {
                next |= 1 << i;
            }
        }
        next
    }

    #[inline(always)]
    fn push_with(&mut self, step: Step<'a>, next: u64) {
        if next != 0 {
            self.alive.push(next);
        }
        self.steps.push(step);
    }

    #[inline(always)]
    pub fn pop(&mut self) {
        if self.detached > 0 {
            self.detached -= 1;
            return;
        }
        self.steps.pop();
        self.alive.truncate(self.steps.len() + 1);
    }

    #[inline(always)]
    fn alive_at(&self, depth: usize) -> u64 {
        if self.detached > 0 {
            return 0;
        }
        self.alive.get(depth).copied().unwrap_or(0)
    }

    /// The path so far, as differences name it.
    pub fn steps(&self) -> &[Step<'a>] {
        debug_assert_eq!(self.detached, 0, "a path taken without naming it");
        &self.steps
    }

    /// The tracked patterns that match exactly here.
    #[inline(always)]
    fn here(&self) -> u64 {
        let depth = self.steps.len();
        self.alive_at(depth) & self.ending.get(depth).copied().unwrap_or(0)
    }

    /// Whether a covering pattern names this location (and so everything under it).
    #[inline(always)]
    pub fn covered(&self) -> bool {
        self.here() & self.covering != 0
            || self.rest[..self.covering_count.saturating_sub(self.patterns.len())]
                .iter()
                .any(|p| p.matches(&self.steps))
    }

    /// The first exact pattern that names this location, by its index among the exact ones.
    #[inline(always)]
    pub fn exact(&self) -> Option<usize> {
        let here = self.here() & !self.covering;
        if here != 0 {
            return Some(here.trailing_zeros() as usize - self.covering_count);
        }
        let first_rest = self.covering_count.saturating_sub(self.patterns.len());
        self.rest[first_rest..]
            .iter()
            .position(|p| p.matches(&self.steps))
            .map(|i| self.patterns.len() + first_rest + i - self.covering_count)
    }
}

/// `$.items[3].id`
pub fn render(path: &[Step<'_>]) -> String {
    let mut out = String::from("$");
    for step in path {
        match step {
            Step::Key(key) if is_plain(key) => {
                out.push('.');
                out.push_str(key);
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

    /// The cursor answers as matching every pattern against the whole path would, for up to
    /// 80 patterns (beyond 64, matched the slow way), at every depth of random walks, whether
    /// or not the walk follows the path where no pattern reaches.
    #[test]
    fn a_cursor_answers_as_whole_paths_matched_against_every_pattern_do() {
        let mut rng = fastrand::Rng::with_seed(11);
        let keys = ["a", "b", "id", "tags"];
        let pattern = |rng: &mut fastrand::Rng| {
            let mut source = String::from("$");
            for _ in 0..rng.usize(0..4) {
                match rng.usize(0..4) {
                    0 => source.push_str(".*"),
                    1 => source.push_str("[*]"),
                    2 => source.push_str(&format!("[{}]", rng.usize(0..2))),
                    _ => source.push_str(&format!(".{}", keys[rng.usize(0..keys.len())])),
                }
            }
            PathPattern::parse(&source).unwrap()
        };
        for round in 0..400 {
            let count = [1, 3, 20, 80][round % 4];
            let all: Vec<PathPattern> = (0..count).map(|_| pattern(&mut rng)).collect();
            let (covering, exact) = all.split_at(rng.usize(0..=count));
            let mut cursor = Cursor::new(covering, exact);
            let mut steps: Vec<Step<'static>> = Vec::new();
            // Half the walks count only: where no pattern reaches, they do not follow the path.
            let named = round % 2 == 0;
            for _ in 0..40 {
                if steps.is_empty() || (steps.len() < 5 && rng.bool()) {
                    let step = match rng.usize(0..3) {
                        0 => Step::Index(rng.usize(0..2)),
                        1 => Step::Element("id=7".into()),
                        _ => Step::Key(keys[rng.usize(0..keys.len())].into()),
                    };
                    cursor.descend(step.clone(), named);
                    steps.push(step);
                } else {
                    cursor.pop();
                    steps.pop();
                }
                if named {
                    assert_eq!(cursor.steps(), &steps[..]);
                }
                let covered = covering.iter().any(|p| p.matches(&steps));
                let exact_here = exact.iter().position(|p| p.matches(&steps));
                let shown = format!("{} at {}", all.len(), render(&steps));
                assert_eq!(cursor.covered(), covered, "{shown}");
                assert_eq!(cursor.exact(), exact_here, "{shown}");
            }
        }
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
