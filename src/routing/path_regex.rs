//! A route's `path_regex`, checked when the config is compiled and built into a matcher later.
//!
//! Building a `regex::Regex` (its automata and literal prefilters) costs ~100 µs; a 10,000-route
//! file with 5,000 path regexes spent most of its reload there. Checking a pattern's syntax
//! costs a small part of that, and is all a reload needs to refuse a bad file: the table goes
//! live with each regex [checked](PathRegex::check) only, and a background thread
//! ([`warm`]) builds them in file order right after. A request that reaches a route before the
//! thread did builds that one regex itself, once (measured in docs/performance.md).
//!
//! The one error a syntax check cannot see is a pattern whose automaton exceeds the regex
//! crate's size limit; it comes only from counted repetitions of big classes (`\w{5000}`), so a
//! pattern with a large counted repetition is built eagerly, at compile time, as before.
//!
//! A reload mostly replaces a table with one that has the same patterns: [`Reuse`] hands the
//! serving table's regexes (checked, usually built) to the new one by pattern text, so an
//! unchanged pattern is neither parsed again nor rebuilt, and its route answers its first
//! request after the swap as fast as before it.
//!
//! This module owns that deferral and reuse; which routes have which regex is
//! [`super::compile`]'s.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use regex::Regex;
use regex_syntax::hir::{Hir, HirKind};

/// Counted repetitions up to this many keep a pattern lazy: far below the size limit even for
/// Unicode classes.
const LAZY_MAX_REPEAT: u32 = 100;

/// A checked path regex, built on first use (or by [`warm`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct PathRegex(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    pattern: Box<str>,
    built: OnceLock<Regex>,
}

impl PathRegex {
    /// Checks `pattern`; returns it with its syntax tree (for the route index), or the regex
    /// crate's own error message.
    pub fn check(pattern: &str) -> Result<(PathRegex, Hir), regex::Error> {
        let hir = match regex_syntax::Parser::new().parse(pattern) {
            Ok(hir) => hir,
            // The regex crate's error for this pattern, word for word.
            Err(_) => return Err(Regex::new(pattern).expect_err("the pattern does not parse")),
        };
        let built = OnceLock::new();
        if has_large_repetition(&hir) {
            built
                .set(Regex::new(pattern)?)
                .expect("a new cell is empty");
        }
        Ok((
            PathRegex(Arc::new(Inner {
                pattern: pattern.into(),
                built,
            })),
            hir,
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0.pattern
    }

    pub fn is_match(&self, path: &str) -> bool {
        self.regex().is_some_and(|regex| regex.is_match(path))
    }

    /// The built regex; `None` only if building a checked pattern failed, which the size
    /// check above rules out in practice (logged, and the route never matches by path).
    fn regex(&self) -> Option<&Regex> {
        if let Some(regex) = self.0.built.get() {
            return Some(regex);
        }
        match Regex::new(&self.0.pattern) {
            Ok(regex) => Some(self.0.built.get_or_init(|| regex)),
            Err(error) => {
                tracing::error!(pattern = %self.0.pattern, %error, "path_regex does not build");
                None
            }
        }
    }

    /// Whether the regex is built already.
    pub fn is_built(&self) -> bool {
        self.0.built.get().is_some()
    }
}

/// The serving table's path regexes by pattern, for the table that replaces it. A regex is
/// immutable once built, so two generations can share one.
#[derive(Debug, Default)]
pub struct Reuse<'a> {
    by_pattern: HashMap<&'a str, &'a PathRegex>,
}

impl<'a> Reuse<'a> {
    /// Nothing to reuse: a first load, or a check that must not share anything.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn from_regexes(regexes: impl Iterator<Item = &'a PathRegex>) -> Self {
        Reuse {
            by_pattern: regexes.map(|regex| (regex.as_str(), regex)).collect(),
        }
    }

    /// The serving table's regex for exactly this pattern text, if it has one.
    pub fn get(&self, pattern: &str) -> Option<PathRegex> {
        self.by_pattern.get(pattern).map(|regex| (*regex).clone())
    }
}

/// Builds `regexes` in order on a thread of their own, so that requests rarely build one. A
/// regex only this thread still holds (its table was replaced meanwhile) is skipped.
pub fn warm(regexes: Vec<PathRegex>) {
    if regexes.iter().all(PathRegex::is_built) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("regex-warm".into())
        .spawn(move || {
            for regex in regexes {
                if Arc::strong_count(&regex.0) > 1 {
                    regex.regex();
                }
            }
        });
    if let Err(error) = spawned {
        // Requests build what they need themselves.
        tracing::warn!(%error, "cannot start the regex warm-up thread");
    }
}

/// Whether `hir` repeats something more than [`LAZY_MAX_REPEAT`] times.
fn has_large_repetition(hir: &Hir) -> bool {
    match hir.kind() {
        HirKind::Repetition(repetition) => {
            repetition.min > LAZY_MAX_REPEAT
                || repetition.max.is_some_and(|max| max > LAZY_MAX_REPEAT)
                || has_large_repetition(&repetition.sub)
        }
        HirKind::Capture(capture) => has_large_repetition(&capture.sub),
        HirKind::Concat(parts) | HirKind::Alternation(parts) => {
            parts.iter().any(has_large_repetition)
        }
        HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) | HirKind::Look(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checked_regex_is_built_on_first_use_and_matches() {
        let (regex, _) = PathRegex::check(r"^/orders/[0-9]+$").unwrap();
        assert!(!regex.is_built());
        assert!(regex.is_match("/orders/42"));
        assert!(regex.is_built());
        assert!(!regex.is_match("/orders/x"));
        assert_eq!(regex.as_str(), r"^/orders/[0-9]+$");
    }

    #[test]
    fn a_bad_pattern_gets_the_regex_crates_own_error() {
        // Built at run time, so that no lint checks the broken pattern at compile time.
        let broken = ["^/orders/", "(unclosed$"].concat();
        let ours = PathRegex::check(&broken).unwrap_err();
        let theirs = Regex::new(&broken).unwrap_err();
        assert_eq!(ours.to_string(), theirs.to_string());
    }

    #[test]
    fn a_pattern_too_big_to_build_is_refused_when_checked() {
        let error = PathRegex::check(r"^/\w{50000}$").unwrap_err();
        assert!(matches!(error, regex::Error::CompiledTooBig(_)), "{error}");
        let (small, _) = PathRegex::check(r"^/[0-9]{4}/(a|b){2,}$").unwrap();
        assert!(!small.is_built());
        let (big_but_fine, _) = PathRegex::check(r"^/[0-9]{1,200}$").unwrap();
        assert!(big_but_fine.is_built(), "built eagerly");
    }

    #[test]
    fn a_reused_pattern_is_the_same_regex_already_built_and_only_the_same_text_matches() {
        let (serving, _) = PathRegex::check(r"^/a/[0-9]+$").unwrap();
        assert!(serving.is_match("/a/1"));
        let reuse = Reuse::from_regexes([&serving].into_iter());
        let reused = reuse.get(r"^/a/[0-9]+$").expect("same text");
        assert!(Arc::ptr_eq(&reused.0, &serving.0) && reused.is_built());
        // Equivalent is not enough: the text is what the config says and what is shown.
        assert!(reuse.get(r"^/a/\d+$").is_none());
        assert!(Reuse::none().get(r"^/a/[0-9]+$").is_none());
    }

    #[test]
    fn warming_builds_every_regex_in_the_background() {
        let (regex, _) = PathRegex::check(r"^/a/[0-9]+$").unwrap();
        warm(vec![regex.clone()]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !regex.is_built() {
            assert!(std::time::Instant::now() < deadline, "not built in 10 s");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
