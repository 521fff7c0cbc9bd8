//! Gradual migration per route: weighted, sticky splits between upstreams, the migration stage,
//! and the per-request overrides (tester header, kill switch) that the proxy applies on top.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;

use super::TargetId;
use crate::config::{Diagnostic, RetiredConfig, SplitConfig, Stage, StickyConfig, TargetConfig};

/// Buckets a key hashes into; weights are percent, so one percent is 100 buckets.
const BUCKETS: u64 = 10_000;

/// A compiled split: each side's target and the exclusive end of its bucket range, in list order.
#[derive(Debug, Clone)]
pub struct Split {
    ranges: Vec<(TargetId, u64)>,
    sticky: Option<StickyKey>,
}

#[derive(Debug, Clone)]
pub enum StickyKey {
    Cookie(String),
    Header(HeaderName),
    ClientIp,
}

impl Split {
    /// The side for this request: by its sticky key when there is one (the same key always
    /// lands in the same bucket, and ranges only grow or shrink at their edges, so raising the
    /// first entry's weight moves keys to it and never away), else at random.
    pub fn pick(&self, request: &RequestHeader, client_ip: Option<std::net::IpAddr>) -> TargetId {
        let bucket = self
            .sticky
            .as_ref()
            .and_then(|key| key_hash(key, request, client_ip))
            .map_or_else(|| fastrand::u64(..BUCKETS), |hash| hash % BUCKETS);
        self.ranges
            .iter()
            .find(|(_, end)| bucket < *end)
            .or(self.ranges.last())
            .map(|(target, _)| *target)
            .expect("a split has at least one side")
    }

    /// The sides' targets, in list order.
    pub fn targets(&self) -> impl Iterator<Item = TargetId> + '_ {
        self.ranges.iter().map(|(target, _)| *target)
    }
}

/// The hash of this request's sticky key, when it has one; no allocation.
fn key_hash(
    key: &StickyKey,
    request: &RequestHeader,
    client_ip: Option<std::net::IpAddr>,
) -> Option<u64> {
    use xxhash_rust::xxh3::xxh3_64;
    match key {
        StickyKey::Header(name) => request.headers.get(name).map(|v| xxh3_64(v.as_bytes())),
        StickyKey::Cookie(name) => crate::edits::cookie_values(request, name)
            .next()
            .map(xxh3_64),
        StickyKey::ClientIp => client_ip.map(|ip| match ip {
            std::net::IpAddr::V4(v4) => xxh3_64(&v4.octets()),
            std::net::IpAddr::V6(v6) => xxh3_64(&v6.octets()),
        }),
    }
}

/// Compiles `split:` and `sticky:`; `resolve` compiles a side's target into the route's list
/// (reporting unknown upstreams and bad edits) and returns its id.
pub fn compile_split(
    split: &[SplitConfig],
    sticky: Option<&StickyConfig>,
    path: &str,
    mut resolve: impl FnMut(&TargetConfig, &str, &mut Vec<Diagnostic>) -> Option<TargetId>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Split> {
    if split.is_empty() {
        if sticky.is_some() {
            diagnostics.push(Diagnostic::new(
                format!("{path}.sticky"),
                "only applies to a route with a split",
            ));
        }
        return None;
    }
    // Summed wide: weights near u32::MAX must not wrap around to a plausible total.
    let total: u64 = split.iter().map(|side| u64::from(side.weight)).sum();
    if total != 100 {
        diagnostics.push(
            Diagnostic::new(
                format!("{path}.split"),
                format!("weights sum to {total}, not 100"),
            )
            .with_hint("weights are percent: 10 and 90, say"),
        );
    }
    let mut ranges = Vec::with_capacity(split.len());
    let mut end = 0u64;
    for (number, side) in split.iter().enumerate() {
        end += u64::from(side.weight) * (BUCKETS / 100);
        if let Some(target) = resolve(
            &side.upstream,
            &format!("{path}.split[{number}].upstream"),
            diagnostics,
        ) {
            ranges.push((target, end));
        }
    }
    let sticky = match sticky {
        None => None,
        Some(config) => {
            let given = [
                config.cookie.is_some(),
                config.header.is_some(),
                config.client_ip,
            ]
            .into_iter()
            .filter(|set| *set)
            .count();
            if given != 1 {
                diagnostics.push(
                    Diagnostic::new(
                        format!("{path}.sticky"),
                        "set exactly one of `cookie`, `header` or `client_ip`",
                    )
                    .with_hint("sticky: { cookie: session_id }"),
                );
                None
            } else if let Some(cookie) = &config.cookie {
                Some(StickyKey::Cookie(cookie.clone()))
            } else if let Some(header) = &config.header {
                match HeaderName::from_bytes(header.as_bytes()) {
                    Ok(name) => Some(StickyKey::Header(name)),
                    Err(_) => {
                        diagnostics.push(Diagnostic::new(
                            format!("{path}.sticky.header"),
                            format!("`{header}` is not a valid header name"),
                        ));
                        None
                    }
                }
            } else {
                Some(StickyKey::ClientIp)
            }
        }
    };
    (ranges.len() == split.len()).then_some(Split { ranges, sticky })
}

/// Checks a route's `stage` against what it configures.
pub fn check_stage(
    stage: Stage,
    has_split: bool,
    has_shadow: bool,
    has_upstream: bool,
    retired: Option<&RetiredConfig>,
    path: &str,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let problem = match stage {
        Stage::Legacy if has_split => Some("a legacy route has no split; a split is stage: canary"),
        Stage::Shadow if !has_shadow => Some("stage: shadow needs a `shadow:` section"),
        Stage::Shadow if has_split => {
            Some("a shadow-stage route serves from one upstream; a split is stage: canary")
        }
        Stage::Canary if !has_split => Some("stage: canary needs a `split:` of weighted upstreams"),
        Stage::New if has_split => {
            Some("a new-stage route serves from one upstream; a split is stage: canary")
        }
        Stage::Retired if has_split || has_shadow || has_upstream => {
            Some("a retired route answers by itself: remove upstream, split and shadow")
        }
        _ => None,
    };
    if let Some(problem) = problem {
        diagnostics.push(Diagnostic::new(format!("{path}.stage"), problem));
    }
    if retired.is_some() && stage != Stage::Retired {
        diagnostics.push(Diagnostic::new(
            format!("{path}.retired"),
            "only applies with stage: retired",
        ));
    }
    if let Some(retired) = retired
        && !(200..=599).contains(&retired.status)
    {
        diagnostics.push(Diagnostic::new(
            format!("{path}.retired.status"),
            "must be an HTTP status, 200 to 599",
        ));
    }
}

/// The compiled answer of a retired route.
#[derive(Debug, Clone)]
pub struct RetiredAnswer {
    pub status: u16,
    pub body: Bytes,
}

impl RetiredAnswer {
    pub fn from_config(config: Option<&RetiredConfig>) -> Self {
        match config {
            Some(config) => Self {
                status: config.status,
                body: Bytes::from(config.body.clone()),
            },
            None => Self {
                status: 410,
                body: Bytes::new(),
            },
        }
    }
}

/// The tester override, compiled.
#[derive(Debug, Clone)]
pub struct TesterOverride {
    pub header: HeaderName,
    pub token_header: HeaderName,
    pub token: Option<HeaderValue>,
    pub allow: Vec<ipnet::IpNet>,
}

impl TesterOverride {
    /// Whether this request may choose its upstream: right token, or an allowed client address.
    pub fn authorizes(&self, request: &RequestHeader, client: Option<std::net::IpAddr>) -> bool {
        let by_token = self.token.as_ref().is_some_and(|expected| {
            request
                .headers
                .get(&self.token_header)
                .is_some_and(|given| constant_time_eq(given.as_bytes(), expected.as_bytes()))
        });
        by_token || client.is_some_and(|ip| self.allow.iter().any(|net| net.contains(&ip)))
    }
}

/// Compares secrets without an early exit, so timing does not reveal how much of a guess was
/// right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    //! Stages, splits and the tester override, in-process.

    use std::net::IpAddr;

    use super::*;

    /// The messages `check_stage` gives for a route of `stage` with these sections.
    fn stage_problems(
        stage: Stage,
        (split, shadow, upstream): (bool, bool, bool),
        retired: Option<RetiredConfig>,
    ) -> Vec<String> {
        let mut diagnostics = Vec::new();
        check_stage(
            stage,
            split,
            shadow,
            upstream,
            retired.as_ref(),
            "routes[0]",
            &mut diagnostics,
        );
        diagnostics
            .iter()
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect()
    }

    #[test]
    fn each_stage_accepts_what_it_serves_with_and_names_what_it_lacks() {
        let none: Vec<String> = Vec::new();
        assert_eq!(
            stage_problems(Stage::Legacy, (false, false, true), None),
            none
        );
        assert_eq!(
            stage_problems(Stage::Shadow, (false, true, true), None),
            none
        );
        assert_eq!(
            stage_problems(Stage::Canary, (true, true, false), None),
            none
        );
        assert_eq!(stage_problems(Stage::New, (false, true, true), None), none);
        assert_eq!(
            stage_problems(Stage::Retired, (false, false, false), None),
            none
        );
        assert_eq!(
            stage_problems(Stage::Shadow, (false, false, true), None),
            ["routes[0].stage: stage: shadow needs a `shadow:` section"]
        );
        assert_eq!(
            stage_problems(Stage::Canary, (false, false, true), None),
            ["routes[0].stage: stage: canary needs a `split:` of weighted upstreams"]
        );
        for stage in [Stage::Legacy, Stage::Shadow, Stage::New] {
            let found = stage_problems(stage, (true, true, false), None);
            assert_eq!(found.len(), 1, "{stage:?}: {found:?}");
            assert!(found[0].contains("stage: canary"), "{found:?}");
        }
        assert_eq!(
            stage_problems(Stage::Retired, (false, false, true), None),
            [
                "routes[0].stage: a retired route answers by itself: remove upstream, split and shadow"
            ]
        );
    }

    #[test]
    fn a_retired_answer_belongs_to_a_retired_route_and_has_a_real_status() {
        let answer = |status| RetiredConfig {
            status,
            body: "moved".into(),
        };
        assert_eq!(
            stage_problems(Stage::New, (false, false, true), Some(answer(410))),
            ["routes[0].retired: only applies with stage: retired"]
        );
        assert_eq!(
            stage_problems(Stage::Retired, (false, false, false), Some(answer(99))),
            ["routes[0].retired.status: must be an HTTP status, 200 to 599"]
        );
        let compiled = RetiredAnswer::from_config(Some(&answer(301)));
        assert_eq!((compiled.status, &compiled.body[..]), (301, &b"moved"[..]));
        let default = RetiredAnswer::from_config(None);
        assert_eq!((default.status, default.body.len()), (410, 0));
    }

    fn split_of(weights: &[u32], sticky: Option<StickyConfig>) -> (Option<Split>, Vec<String>) {
        let sides: Vec<SplitConfig> = weights
            .iter()
            .enumerate()
            .map(|(number, weight)| {
                serde_yaml::from_str(&format!("{{ upstream: u{number}, weight: {weight} }}"))
                    .expect("a split side")
            })
            .collect();
        let mut diagnostics = Vec::new();
        let mut next = 0;
        let split = compile_split(
            &sides,
            sticky.as_ref(),
            "routes[0]",
            |_, _, _| {
                next += 1;
                Some(next - 1)
            },
            &mut diagnostics,
        );
        let messages = diagnostics
            .iter()
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect();
        (split, messages)
    }

    #[test]
    fn weights_are_summed_without_wrapping_and_must_make_100() {
        let (_, found) = split_of(&[u32::MAX, 101], None);
        assert_eq!(
            found,
            ["routes[0].split: weights sum to 4294967396, not 100"]
        );
        let (split, found) = split_of(&[10, 90], None);
        assert!(found.is_empty() && split.is_some(), "{found:?}");
    }

    #[test]
    fn a_client_ip_key_keeps_one_client_on_one_side() {
        let sticky: StickyConfig = serde_yaml::from_str("{ client_ip: true }").unwrap();
        let (split, _) = split_of(&[50, 50], Some(sticky));
        let split = split.unwrap();
        let request = RequestHeader::build("GET", b"/", None).unwrap();
        let mut sides = [0; 2];
        for last in 0..=255u8 {
            let client: IpAddr = [10, 0, 0, last].into();
            let side = split.pick(&request, Some(client));
            assert_eq!(split.pick(&request, Some(client)), side);
            sides[side] += 1;
        }
        assert!(sides[0] > 80 && sides[1] > 80, "{sides:?}");
    }

    #[test]
    fn a_sticky_key_needs_a_split_and_exactly_one_source() {
        let both: StickyConfig = serde_yaml::from_str("{ cookie: a, header: b }").unwrap();
        let (_, found) = split_of(&[100], Some(both));
        assert_eq!(
            found,
            ["routes[0].sticky: set exactly one of `cookie`, `header` or `client_ip`"]
        );
        let cookie: StickyConfig = serde_yaml::from_str("{ cookie: a }").unwrap();
        let (split, found) = split_of(&[], Some(cookie));
        assert!(split.is_none());
        assert_eq!(
            found,
            ["routes[0].sticky: only applies to a route with a split"]
        );
    }

    #[test]
    fn tokens_compare_in_full() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokeN"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
        assert!(constant_time_eq(b"", b""));
    }
}
