//! The query strings of `GET /diffs` and `GET /diffs/summary`: validated, never ignored. A bad
//! value or a name the endpoint does not take is a 400 naming the parameter (a typo in a filter
//! must not return everything).

use crate::store::{Filter, GenerationFilter};
use crate::vocabulary::Verdict;

/// A query parameter of the diff endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Param {
    /// `route=NAME`
    Route,
    /// `verdict=` one of [`Verdict::ALL`]
    Verdict,
    /// `since=DURATION` (like `strangler report --since`: `30m`, `2h`)
    Since,
    /// `generation=N` or `generation=latest` (the newest generation, like `--since-reload`)
    Generation,
    /// `limit=1..=1000`, default 50
    Limit,
    /// `before=ID`: only exchanges stored before row `ID` (the previous page's `next_before`)
    Before,
}

impl Param {
    fn name(self) -> &'static str {
        match self {
            Param::Route => "route",
            Param::Verdict => "verdict",
            Param::Since => "since",
            Param::Generation => "generation",
            Param::Limit => "limit",
            Param::Before => "before",
        }
    }

    fn named(name: &str) -> Option<Self> {
        [
            Param::Route,
            Param::Verdict,
            Param::Since,
            Param::Generation,
            Param::Limit,
            Param::Before,
        ]
        .into_iter()
        .find(|param| param.name() == name)
    }
}

/// What `GET /diffs` takes.
pub const LIST: &[Param] = &[
    Param::Route,
    Param::Verdict,
    Param::Since,
    Param::Generation,
    Param::Limit,
    Param::Before,
];
/// What `GET /diffs/summary` takes.
pub const SUMMARY: &[Param] = &[Param::Route, Param::Since, Param::Generation];

/// Most records one `GET /diffs` returns.
pub const MAX_LIMIT: usize = 1000;

/// A parsed query.
#[derive(Debug, PartialEq)]
pub struct DiffsQuery {
    pub filter: Filter,
    pub limit: usize,
    pub before: Option<i64>,
}

/// A parameter of a query that was refused, and why.
#[derive(Debug, PartialEq)]
pub struct QueryError {
    pub parameter: String,
    pub message: String,
}

impl DiffsQuery {
    /// Parses `query` for an endpoint (`endpoint`, as shown in errors) that takes `allowed`.
    /// Each parameter at most once.
    pub fn parse(
        query: &str,
        now_ms: i64,
        endpoint: &str,
        allowed: &[Param],
    ) -> Result<Self, QueryError> {
        let mut parsed = DiffsQuery {
            filter: Filter::default(),
            limit: 50,
            before: None,
        };
        let mut seen = std::collections::HashSet::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let refuse = |message: String| QueryError {
                parameter: key.clone().into_owned(),
                message,
            };
            let Some(param) = Param::named(&key).filter(|param| allowed.contains(param)) else {
                let names: Vec<&str> = allowed.iter().map(|p| p.name()).collect();
                return Err(refuse(format!(
                    "unknown parameter `{key}`; {endpoint} takes {}",
                    names.join(", ")
                )));
            };
            if !seen.insert(param) {
                return Err(refuse(format!("`{key}` is given more than once")));
            }
            match param {
                Param::Route if value.is_empty() => {
                    return Err(refuse("`route` needs a route name".into()));
                }
                Param::Route => parsed.filter.route = Some(value.into_owned()),
                Param::Verdict => match Verdict::parse(&value) {
                    Some(verdict) => parsed.filter.verdict = Some(verdict),
                    None => {
                        let known: Vec<&str> = Verdict::ALL.iter().map(|v| v.as_str()).collect();
                        return Err(refuse(format!(
                            "`verdict` must be one of {}, not `{value}`",
                            known.join(", ")
                        )));
                    }
                },
                Param::Limit => {
                    parsed.limit = value
                        .parse()
                        .ok()
                        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                        .ok_or_else(|| {
                            refuse(format!(
                                "`limit` must be a whole number from 1 to {MAX_LIMIT}, not `{value}`"
                            ))
                        })?;
                }
                Param::Since => {
                    let age = humantime::parse_duration(&value).map_err(|error| {
                        refuse(format!(
                            "`since` must be a duration like 30m or 2h, not `{value}`: {error}"
                        ))
                    })?;
                    let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                    parsed.filter.since_ms = now_ms.saturating_sub(age).max(0);
                }
                Param::Generation => {
                    parsed.filter.generation = Some(if value == "latest" {
                        GenerationFilter::Latest
                    } else {
                        GenerationFilter::Number(value.parse().map_err(|_| {
                            refuse(format!(
                                "`generation` must be a generation number or `latest`, not `{value}`"
                            ))
                        })?)
                    });
                }
                Param::Before => {
                    parsed.before = Some(value.parse().ok().filter(|id| *id > 0).ok_or_else(
                        || {
                            refuse(format!(
                                "`before` must be an exchange id (a whole number from 1), not `{value}`"
                            ))
                        },
                    )?);
                }
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(query: &str) -> Result<DiffsQuery, QueryError> {
        DiffsQuery::parse(query, 10_000, "/diffs", LIST)
    }

    #[test]
    fn diffs_queries_are_parsed_with_defaults() {
        assert_eq!(
            list(""),
            Ok(DiffsQuery {
                filter: Filter::default(),
                limit: 50,
                before: None,
            })
        );
        assert_eq!(
            list(
                "route=orders%20read&verdict=shadow_error&since=2s&limit=1000&generation=3&before=17"
            ),
            Ok(DiffsQuery {
                filter: Filter {
                    route: Some("orders read".into()),
                    since_ms: 8_000,
                    verdict: Some(Verdict::ShadowError),
                    generation: Some(GenerationFilter::Number(3)),
                    replica: None,
                },
                limit: 1000,
                before: Some(17),
            })
        );
        assert_eq!(
            list("generation=latest").unwrap().filter.generation,
            Some(GenerationFilter::Latest)
        );
        // Older than the epoch is everything, not an overflow.
        assert_eq!(list("since=100years").unwrap().filter.since_ms, 0);
    }

    #[test]
    fn a_bad_or_unknown_diffs_parameter_is_named_not_ignored() {
        for (query, parameter) in [
            ("verdict=bogus", "verdict"),
            ("verdict=", "verdict"),
            ("verdict=MATCH", "verdict"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=ten", "limit"),
            ("limit=-1", "limit"),
            ("since=yesterday", "since"),
            ("since=", "since"),
            ("route=", "route"),
            ("route=a&route=b", "route"),
            ("rout=orders", "rout"),
            ("verdict=match&foo", "foo"),
            ("generation=newest", "generation"),
            ("generation=-2", "generation"),
            ("before=0", "before"),
            ("before=x", "before"),
        ] {
            let error = list(query).unwrap_err();
            assert_eq!(error.parameter, parameter, "{query}: {}", error.message);
            assert!(
                error.message.contains(parameter),
                "{query}: {}",
                error.message
            );
        }
    }

    #[test]
    fn the_summary_refuses_what_only_a_listing_takes() {
        let error = DiffsQuery::parse("limit=5", 0, "/diffs/summary", SUMMARY).unwrap_err();
        assert_eq!(error.parameter, "limit");
        assert!(
            error
                .message
                .contains("/diffs/summary takes route, since, generation"),
            "{}",
            error.message
        );
        assert!(
            DiffsQuery::parse(
                "route=a&since=1h&generation=latest",
                0,
                "/diffs/summary",
                SUMMARY
            )
            .is_ok()
        );
    }
}
