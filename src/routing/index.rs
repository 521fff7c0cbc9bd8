//! Finding the routes whose path condition holds without trying every route.
//!
//! Exact paths and segment prefixes are hash lookups (one per path segment); anchored regexes
//! with a literal first segment (`^/invoices/[0-9]+$`) are bucketed by that segment; only the
//! remaining regexes go through one [`RegexSet`] pass. Routes with no path condition but a host
//! condition are looked up by host (exact names, and `*.` suffixes one per label); only routes
//! with neither are candidates for every request. The result is the candidate route numbers in
//! file order, so the caller keeps first-match-wins semantics by checking the remaining
//! conditions in that order.

use ahash::AHashMap;
use regex::{RegexSet, RegexSetBuilder};
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{Hir, Look};
use smallvec::SmallVec;

use super::matcher::HostPattern;
use super::path_regex::{PathRegex, Reuse};

/// Candidate route numbers for one request; inline up to a size no sane config exceeds often.
pub type Candidates = SmallVec<[u32; 16]>;

/// A route's path condition, as the index needs it.
pub enum PathCondition {
    Any,
    Exact(String),
    /// Stored without trailing slash (except `/`).
    Prefix(String),
    Regex {
        regex: PathRegex,
        /// The literal first path segment every match must have (see [`first_segment_of`]).
        first_segment: Option<String>,
    },
}

impl PathCondition {
    /// A `path_regex` condition: the pattern checked (built later, see [`PathRegex`]) and its
    /// first segment found, from one parse; or, for a pattern the serving table has already,
    /// its regex taken from `reuse` and no parse at all where the first segment is spelled out.
    pub fn regex(pattern: &str, reuse: &Reuse<'_>) -> Result<Self, regex::Error> {
        // Most patterns of big files spell their first segment out (`^/orders/...`): read it
        // off the text; literal extraction was 11 % of a 10,000-route compile.
        let (regex, hir) = match reuse.get(pattern) {
            Some(regex) => (regex, None),
            None => {
                let (regex, hir) = PathRegex::check(pattern)?;
                (regex, Some(hir))
            }
        };
        let first_segment = match literal_first_segment(pattern) {
            Some(segment) => Some(segment.to_owned()),
            // A reused pattern was checked when the serving table was compiled: it parses.
            None => hir
                .or_else(|| regex_syntax::Parser::new().parse(pattern).ok())
                .and_then(|hir| first_segment_of(&hir)),
        };
        Ok(PathCondition::Regex {
            first_segment,
            regex,
        })
    }
}

#[derive(Debug, Default)]
pub struct RouteIndex {
    exact: AHashMap<Box<str>, Vec<u32>>,
    prefix: AHashMap<Box<str>, Vec<u32>>,
    /// Regex routes keyed by the literal first path segment every match must have.
    regex_by_segment: AHashMap<Box<str>, Vec<u32>>,
    regex_set: Option<(RegexSet, Vec<u32>)>,
    /// Routes without a path condition, by lower-case exact host.
    by_host: AHashMap<Box<str>, Vec<u32>>,
    /// Routes without a path condition, by wildcard suffix including the dot (`.example.com`).
    by_host_suffix: AHashMap<Box<str>, Vec<u32>>,
    /// Routes that must be checked on every request: no path condition, or a regex we could
    /// neither bucket nor fit in the set (those carry their own check, see `needs_regex_check`).
    always: Vec<u32>,
    /// Per route: whether the candidate still has to run its own regex.
    needs_regex_check: Vec<bool>,
}

impl RouteIndex {
    /// `routes[i]` is route `i`'s path condition and host patterns (empty: any host).
    pub fn build(routes: &[(&PathCondition, &[HostPattern])]) -> Self {
        let mut index = RouteIndex {
            needs_regex_check: vec![false; routes.len()],
            ..Default::default()
        };
        let mut set_patterns = Vec::new();
        let mut set_routes = Vec::new();
        for (route, (condition, hosts)) in routes.iter().enumerate() {
            let route = route as u32;
            match condition {
                PathCondition::Any if hosts.is_empty() => index.always.push(route),
                PathCondition::Any => {
                    for host in *hosts {
                        let (map, key) = match host {
                            HostPattern::Exact(name) => (&mut index.by_host, name),
                            HostPattern::Subdomain(suffix) => (&mut index.by_host_suffix, suffix),
                        };
                        map.entry(key.as_str().into()).or_default().push(route);
                    }
                }
                PathCondition::Exact(path) => index
                    .exact
                    .entry(path.as_str().into())
                    .or_default()
                    .push(route),
                PathCondition::Prefix(prefix) => index
                    .prefix
                    .entry(prefix.as_str().into())
                    .or_default()
                    .push(route),
                PathCondition::Regex {
                    regex,
                    first_segment,
                } => match first_segment {
                    Some(segment) => {
                        index
                            .regex_by_segment
                            .entry(segment.as_str().into())
                            .or_default()
                            .push(route);
                        index.needs_regex_check[route as usize] = true;
                    }
                    None => {
                        set_patterns.push(regex.as_str());
                        set_routes.push(route);
                    }
                },
            }
        }
        if !set_patterns.is_empty() {
            match RegexSetBuilder::new(&set_patterns)
                .size_limit(64 << 20)
                .build()
            {
                Ok(set) => index.regex_set = Some((set, set_routes)),
                // Too big for one automaton: check these one by one instead.
                Err(_) => {
                    for route in set_routes {
                        index.needs_regex_check[route as usize] = true;
                        index.always.push(route);
                    }
                    index.always.sort_unstable();
                }
            }
        }
        index
    }

    /// Routes whose path condition may hold for `path`, in file order. Those with
    /// [`Self::needs_regex_check`] still have to run their regex. `host` is the request's host,
    /// lower-case, without port.
    pub fn candidates(&self, path: &str, host: Option<&str>) -> Candidates {
        let mut out = Candidates::new();
        if let Some(host) = host {
            self.host_candidates(host, &mut out);
        }
        if let Some(routes) = self.exact.get(path) {
            out.extend_from_slice(routes);
        }
        if !self.prefix.is_empty() {
            self.prefix_candidates(path, &mut out);
        }
        if !self.regex_by_segment.is_empty()
            && let Some(routes) = self.regex_by_segment.get(first_segment(path))
        {
            out.extend_from_slice(routes);
        }
        if let Some((set, routes)) = &self.regex_set {
            out.extend(set.matches(path).iter().map(|pattern| routes[pattern]));
        }
        out.extend_from_slice(&self.always);
        out.sort_unstable();
        // A route listing several matching hosts (`a.example.com` and `*.example.com`) comes twice.
        out.dedup();
        out
    }

    /// Whether any route is indexed by host, i.e. whether `candidates` needs the host at all.
    pub fn uses_host(&self) -> bool {
        !self.by_host.is_empty() || !self.by_host_suffix.is_empty()
    }

    fn host_candidates(&self, host: &str, out: &mut Candidates) {
        if let Some(routes) = self.by_host.get(host) {
            out.extend_from_slice(routes);
        }
        if !self.by_host_suffix.is_empty() {
            for (position, byte) in host.bytes().enumerate() {
                if byte == b'.'
                    && let Some(routes) = self.by_host_suffix.get(&host[position..])
                {
                    out.extend_from_slice(routes);
                }
            }
        }
    }

    pub fn needs_regex_check(&self, route: u32) -> bool {
        self.needs_regex_check[route as usize]
    }

    /// Looks up `path` and every ancestor on a `/` boundary, down to `/`.
    fn prefix_candidates(&self, path: &str, out: &mut Candidates) {
        let mut lookup = |key: &str| {
            if let Some(routes) = self.prefix.get(key) {
                out.extend_from_slice(routes);
            }
        };
        lookup(path);
        for (position, byte) in path.bytes().enumerate().skip(1) {
            if byte == b'/' {
                lookup(&path[..position]);
            }
        }
        if path != "/" {
            lookup("/");
        }
    }
}

/// `/a/b` -> `a`; `/` -> ``.
fn first_segment(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').next().unwrap_or("")
}

/// The literal first path segment every match of `pattern` must start with, when the pattern
/// is anchored at the start and spells that segment out: `^/invoices/[0-9]+$` -> `invoices`.
#[cfg(test)]
fn required_first_segment(pattern: &str) -> Option<String> {
    first_segment_of(&regex_syntax::Parser::new().parse(pattern).ok()?)
}

/// [`first_segment_of`] for the one spelling `^/segment/...` with a segment of letters, digits,
/// `-` and `_` (no metacharacter among them) and a `/` after it that nothing repeats, in a
/// pattern without alternation: read off the text, no extraction. `None` for any other
/// spelling, which the extractor then reads.
fn literal_first_segment(pattern: &str) -> Option<&str> {
    if pattern.contains('|') {
        return None;
    }
    let rest = pattern.strip_prefix("^/")?;
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))?;
    let after = rest[end..].strip_prefix('/')?;
    if end == 0 || after.starts_with(['*', '?', '+', '{']) {
        return None;
    }
    Some(&rest[..end])
}

/// [`required_first_segment`] of a parsed pattern.
pub fn first_segment_of(hir: &Hir) -> Option<String> {
    if !hir.properties().look_set_prefix().contains(Look::Start) {
        return None;
    }
    let prefixes = Extractor::new().kind(ExtractKind::Prefix).extract(hir);
    let literals = prefixes.literals()?;
    let (first, rest) = literals.split_first()?;
    let mut common = first.as_bytes();
    for literal in rest {
        let shared = common
            .iter()
            .zip(literal.as_bytes())
            .take_while(|(a, b)| a == b)
            .count();
        common = &common[..shared];
    }
    let common = std::str::from_utf8(common).ok()?;
    let after_slash = common.strip_prefix('/')?;
    let (segment, _) = after_slash.split_once('/')?;
    (!segment.is_empty()).then(|| segment.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_segments_of_anchored_regexes() {
        assert_eq!(
            required_first_segment(r"^/invoices/[0-9]+$").as_deref(),
            Some("invoices")
        );
        assert_eq!(required_first_segment(r"^/a/(b|c)").as_deref(), Some("a"));
        assert_eq!(
            required_first_segment(r"/invoices/[0-9]+$"),
            None,
            "not anchored"
        );
        assert_eq!(
            required_first_segment(r"^/inv[a-z]+/"),
            None,
            "segment not literal"
        );
        assert_eq!(required_first_segment(r"^/(a|b)/x"), None);
        assert_eq!(required_first_segment(r"^/health$"), None);
    }

    #[test]
    fn a_first_segment_read_off_the_text_is_the_one_extraction_finds() {
        for pattern in [
            r"^/invoices/[0-9]+$",
            r"^/svc12/orders/[0-9]+$",
            r"^/a-b_c/",
            r"^/a/(b|c)",
            r"^/a/x|^/b/y",
            r"^/a/?x",
            r"^/a/*",
            r"^/a/+x",
            r"^/a/{2}",
            r"^/ab?/x",
            r"^/a.b/x",
            r"^/a\.b/x",
            r"^/health$",
            r"^//x",
            r"/invoices/[0-9]+$",
            r"^(?i)/a/b",
            r"^/(a|b)/x",
        ] {
            if let Some(segment) = literal_first_segment(pattern) {
                assert_eq!(
                    Some(segment),
                    required_first_segment(pattern).as_deref(),
                    "{pattern}"
                );
            }
        }
        assert_eq!(
            literal_first_segment(r"^/svc12/orders/[0-9]+$"),
            Some("svc12")
        );
        assert_eq!(literal_first_segment(r"^/a/?x"), None);
        assert_eq!(literal_first_segment(r"^/a/x|^/b/y"), None);
    }

    #[test]
    fn candidates_come_in_file_order() {
        let conditions = [
            PathCondition::Prefix("/api".into()),
            PathCondition::Exact("/api/orders".into()),
            PathCondition::regex(r"^/api/orders$", &Reuse::none()).unwrap(),
            PathCondition::regex(r"orders", &Reuse::none()).unwrap(),
            PathCondition::Any,
            PathCondition::Prefix("/apix".into()),
            PathCondition::Prefix("/".into()),
            PathCondition::Any,
            PathCondition::Any,
        ];
        let hosts = [
            HostPattern::Exact("a.example.com".into()),
            HostPattern::Subdomain(".example.com".into()),
        ];
        let routes: Vec<(&PathCondition, &[HostPattern])> = conditions
            .iter()
            .enumerate()
            .map(|(i, condition)| match i {
                7 => (condition, &hosts[..1]),
                8 => (condition, &hosts[..]),
                _ => (condition, &[][..]),
            })
            .collect();
        let index = RouteIndex::build(&routes);
        let candidates = |path, host| index.candidates(path, host).to_vec();
        assert_eq!(candidates("/api/orders", None), [0, 1, 2, 3, 4, 6]);
        assert_eq!(candidates("/apix", Some("other.org")), [4, 5, 6]);
        assert_eq!(candidates("/apix", Some("a.example.com")), [4, 5, 6, 7, 8]);
        assert_eq!(candidates("/", Some("b.c.example.com")), [4, 6, 8]);
        assert_eq!(candidates("/", Some("example.com")), [4, 6]);
        assert!(index.needs_regex_check(2));
        assert!(!index.needs_regex_check(3));
    }
}
