//! `strangler report`: a summary of stored diffs per route and direction, with a verdict CI can
//! gate on.
//!
//! Reads one or more diff stores (one per replica; they are merged), groups the exchanges by
//! route and direction (which upstream was primary, which the candidate: `legacy → orders-v2` is
//! judged apart from `orders-v2 → legacy`), counts how many matched, differed or were noise, and
//! decides pass/fail from `--max-diff-rate` ([`DiffRate`]) and `--min-samples`.
//!
//! The differences are listed so that a real bug is not buried under noise: separated into body,
//! status, candidate errors and headers; per JSON path and kind, with the number of exchanges,
//! of distinct records (request paths, ids kept) and endpoints (ids generalized), the status
//! pairs they came with and an example request line with both values; every path above a
//! threshold ([`Listing`]), not a fixed few; body differences first, and what is likely noise
//! last, with ready-to-paste `ignore_headers` / `ignore_json` suggestions and what the mismatch
//! rate would be with them. What is likely noise and what is suggested is one rule, owned by
//! [`crate::diff::suggest`]: this module feeds it each differing exchange and the exchanges per
//! request shape, and lists a path as likely noise when a suggested rule covers it. Every output format renders the
//! same content and the same verdicts, so a JUnit file never disagrees with the exit status.
//!
//! Counting is done in SQL ([`crate::store::scan_for_report`]), per request shape too; only the
//! exchanges that differed are read, one row at a time and without their body samples, and distinct records are kept as
//! 64-bit hashes, so memory does not grow with the rows of a store.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::{self, Write};
use std::str::FromStr;

use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;

use crate::diff::path::generalize;
use crate::record::Kind;
pub mod exchange;
pub mod html;
use crate::diff::{Exchange, Suggester, Suggestions};
use crate::store::{
    DifferingExchange, ExchangeCount, Filter, GenerationFilter, StoreError, StoreLocation, scan,
};
use crate::vocabulary::Verdict;

/// What the report covers and how it judges.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// SQLite files and Postgres databases; their exchanges are merged.
    pub databases: Vec<StoreLocation>,
    pub route: Option<String>,
    /// Only exchanges written by this replica (`server.replica`).
    pub replica: Option<String>,
    /// Only exchanges newer than this many milliseconds ago.
    pub since_ms: Option<i64>,
    /// Only exchanges of one config generation (of each store).
    pub generation: Option<GenerationFilter>,
    pub max_diff_rate: DiffRate,
    pub min_samples: u64,
    /// Which differing paths are listed.
    pub listing: Listing,
}

/// The largest share of mismatching exchanges a group may have: a fraction from 0 to 1, written
/// as one (`0.05`) or as a percentage (`5%`). Anything else is refused, so that `5` is never
/// read as 500 %.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct DiffRate(f64);

impl DiffRate {
    /// `fraction` must be in 0..=1.
    pub fn new(fraction: f64) -> Option<Self> {
        ((0.0..=1.0).contains(&fraction)).then_some(Self(fraction))
    }

    pub fn fraction(self) -> f64 {
        self.0
    }

    /// Whether `mismatches` of `samples` is over this rate: the one threshold test every output
    /// format and the exit status share. A rate equal to the limit passes; `1 / 20` passes
    /// `5%` even though the two are rounded apart in binary.
    pub fn exceeded_by(self, mismatches: u64, samples: u64) -> bool {
        samples > 0 && mismatches as f64 / samples as f64 - self.0 > 1e-12
    }

    /// Whether `count` of `samples` reaches this share (rounding as [`DiffRate::exceeded_by`]).
    fn reached_by(self, count: u64, samples: u64) -> bool {
        samples > 0 && count as f64 / samples as f64 - self.0 > -1e-12
    }
}

impl Default for DiffRate {
    fn default() -> Self {
        Self(0.01)
    }
}

impl fmt::Display for DiffRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}%", self.0 * 100.0)
    }
}

impl FromStr for DiffRate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_share(text, |value| {
            format!(
                "which would allow {}% of exchanges to differ",
                value * 100.0
            )
        })
    }
}

/// A fraction from 0 to 1 or a percentage; `over_one` explains what a number over 1 would mean.
fn parse_share(text: &str, over_one: impl Fn(f64) -> String) -> Result<DiffRate, String> {
    const FORMS: &str = "write a fraction from 0 to 1 (0.05) or a percentage (5%)";
    let (number, percent) = match text.trim().strip_suffix('%') {
        Some(number) => (number.trim(), true),
        None => (text.trim(), false),
    };
    let value: f64 = number
        .parse()
        .ok()
        .filter(|value: &f64| value.is_finite())
        .ok_or_else(|| format!("`{text}` is not a number: {FORMS}"))?;
    if value < 0.0 {
        return Err(format!("`{text}` is negative: {FORMS}"));
    }
    let fraction = if percent { value / 100.0 } else { value };
    DiffRate::new(fraction).ok_or_else(|| {
        if percent {
            format!("`{text}` is over 100%: {FORMS}")
        } else {
            format!("`{text}` is over 1, {}: {FORMS}", over_one(value))
        }
    })
}

/// Which differing paths a report lists: those in at least `min_share` of their group's
/// exchanges **or** in at least `min_exchanges` exchanges. The others are counted (`hidden`),
/// never silently dropped; `min_exchanges: 1` lists every path.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Listing {
    pub min_share: DiffRate,
    pub min_exchanges: u64,
}

impl Listing {
    /// `--min-path-share`: a fraction or a percentage, like [`DiffRate`].
    pub fn parse_share(text: &str) -> Result<DiffRate, String> {
        parse_share(text, |value| format!("that is {}%", value * 100.0))
    }

    fn lists(&self, exchanges: u64, samples: u64) -> bool {
        exchanges >= self.min_exchanges || self.min_share.reached_by(exchanges, samples)
    }
}

impl Default for Listing {
    /// 1 % of a group's exchanges or 2 exchanges: a difference seen once in a big group is
    /// usually a race (the record changed between the two calls); twice is a pattern.
    fn default() -> Self {
        Self {
            min_share: DiffRate(0.01),
            min_exchanges: 2,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub passed: bool,
    /// Why the report as a whole failed when no group did (nothing was found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub max_diff_rate: DiffRate,
    pub min_samples: u64,
    /// Which paths are listed.
    pub listing: Listing,
    /// `--generation N`, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// `--since-reload`: only the newest generation of each store.
    pub since_reload: bool,
    /// One entry per route and direction.
    pub routes: Vec<RouteSummary>,
}

/// What `--since-reload` and `--generation` found nothing in, or a store that was empty.
const NOTHING_FOUND: &str = "no compared exchanges found";

/// Shown for exchanges stored before provenance was.
const UNRECORDED: &str = "direction not recorded";

/// The exchanges of one route in one direction.
#[derive(Debug, Clone, Serialize)]
pub struct RouteSummary {
    pub route: String,
    /// `primary → candidate`, like `legacy → orders-v2`; `direction not recorded` for exchanges
    /// stored by a strangler that did not record it.
    pub direction: String,
    /// The upstream that answered clients.
    pub primary: Option<String>,
    /// The upstream that got the copies.
    pub candidate: Option<String>,
    /// The config generations, stages and config files (SHA-256) these exchanges were decided
    /// under.
    pub generations: Vec<u64>,
    pub stages: Vec<String>,
    pub config_sha256: Vec<String>,
    pub samples: u64,
    pub matches: u64,
    /// Differing answers, shadow errors included.
    pub mismatches: u64,
    pub shadow_errors: u64,
    pub noise: u64,
    pub mismatch_rate: f64,
    pub passed: bool,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Every exchange by its pair of statuses (primary, candidate), most frequent first.
    pub status_pairs: Vec<StatusPair>,
    /// How many mismatching exchanges had a difference in each section.
    pub sections: SectionCounts,
    /// The differing paths above the [`Listing`] threshold: body differences first, then
    /// status, candidate errors and headers, then what is likely noise; most exchanges first
    /// within each.
    pub paths: Vec<PathSummary>,
    /// Paths discounted as noise (`noise: legacy`), above the same threshold.
    pub noisy_paths: Vec<PathSummary>,
    /// What the threshold left out.
    pub hidden: Hidden,
    /// Headers to add to `compare.ignore_headers` ([`crate::diff::suggest`]): those that
    /// differ in (nearly) every exchange they appear in.
    pub suggested_ignore_headers: Vec<String>,
    /// JSON paths to add to `compare.ignore_json` ([`crate::diff::suggest`]): noise
    /// (`noise: legacy`) in at least half of the exchanges they appear in, or values the
    /// primary itself changed between answers to one request; never over a difference seen on
    /// stable values.
    pub suggested_ignore_json: Vec<String>,
    /// The suggested rules with their evidence, for `--suggest`.
    #[serde(skip)]
    pub suggestions: Suggestions,
    /// The suggestions as a line to paste under the route's `shadow:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
    /// Mismatches (shadow errors included) that would be left with the suggested rules in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatches_with_suggestion: Option<u64>,
}

/// Exchanges with a pair of statuses. `candidate` is `None` when the candidate did not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusPair {
    pub primary: Option<u16>,
    pub candidate: Option<u16>,
    pub exchanges: u64,
}

/// Where in an answer a difference is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// `$…` (JSON), `body:line N` (text) or `body` (anything else).
    Body,
    /// `status`
    Status,
    /// `shadow`: the candidate did not answer.
    Error,
    /// `headers.<name>`
    Headers,
}

impl Section {
    pub fn of(path: &str) -> Self {
        if path == "status" {
            Self::Status
        } else if path == "shadow" {
            Self::Error
        } else if path.starts_with("headers.") {
            Self::Headers
        } else {
            Self::Body
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Status => "status",
            Self::Error => "candidate errors",
            Self::Headers => "headers",
        }
    }
}

/// Mismatching exchanges (shadow errors included) with at least one difference in each section;
/// an exchange can count in several.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SectionCounts {
    pub body: u64,
    pub status: u64,
    pub error: u64,
    pub headers: u64,
    /// Exchanges whose only differences are headers.
    pub headers_only: u64,
}

/// Paths below the listing threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Hidden {
    pub paths: u64,
    /// Of which in the body.
    pub body_paths: u64,
    pub noisy_paths: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathSummary {
    pub section: Section,
    /// With indices generalized: `$.items[*].total`, `headers.vary`, `status`.
    pub path: String,
    /// `changed`, `missing` (the candidate lacks it), `extra` (only the candidate has it) or
    /// `type`; a path that differs in two ways is listed once per kind.
    pub kind: Kind,
    /// Exchanges with this difference (each counted once, however many array elements differ).
    pub exchanges: u64,
    /// `exchanges` over the group's samples.
    pub share: f64,
    /// Distinct request paths (ids kept: `/orders/7` and `/orders/8` are two records).
    pub records: u64,
    /// Distinct request paths with numeric, UUID and long hex segments taken as ids
    /// (`/orders/{id}`).
    pub endpoints: u64,
    /// The exchanges by status pair, most frequent first.
    pub status_pairs: Vec<StatusPair>,
    /// Why this is likely noise, when it is: it is then listed last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub likely_noise: Option<String>,
    /// The first exchange with this difference.
    pub example: Example,
}

/// One exchange with a difference, values written primary then candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    /// Method, path and query (redacted as stored): `GET /orders/7?expand=items`.
    pub request: String,
    pub request_id: String,
    pub primary_status: Option<u16>,
    pub candidate_status: Option<u16>,
    /// The primary's value; `None` when it has none (`extra`).
    pub primary: Option<String>,
    /// The candidate's value; `None` when it has none (`missing`).
    pub candidate: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Records and endpoints.

/// The request path with id-like segments (numbers, UUIDs, long hex strings) replaced by `{id}`:
/// `/orders/7/items` → `/orders/{id}/items`.
pub fn endpoint(path: &str) -> String {
    path.split('/')
        .map(|segment| if is_id(segment) { "{id}" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

fn is_id(segment: &str) -> bool {
    let hex = |c: char| c.is_ascii_hexdigit();
    let digits = segment.bytes().filter(u8::is_ascii_digit).count();
    let uuid = segment.len() == 36
        && segment.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => hex(c),
        });
    (!segment.is_empty() && digits == segment.len())
        || uuid
        || (segment.len() >= 16 && digits > 0 && segment.chars().all(hex))
}

// ---------------------------------------------------------------------------------------------
// Aggregation.

type GroupKey = (String, Option<String>, Option<String>);
type StatusKey = (Option<u16>, Option<u16>);

/// What one route and direction counted, merged over the stores.
#[derive(Default)]
struct Group {
    verdicts: BTreeMap<Verdict, u64>,
    status_pairs: HashMap<StatusKey, u64>,
    generations: BTreeSet<u64>,
    stages: BTreeSet<String>,
    configs: BTreeSet<String>,
    differing: BTreeMap<(String, Kind), PathTally>,
    noisy: BTreeMap<(String, Kind), PathTally>,
    /// The suggestion rule's tallies, and the compared exchanges per request shape it measures
    /// paths against.
    suggester: Suggester,
    shapes: HashMap<String, u64>,
    sections: SectionCounts,
    /// Mismatching exchanges by the set of paths that differed in them (as indices into
    /// `path_names`): what is left of them once suggested ignores are in.
    combinations: HashMap<Vec<u32>, u64>,
    path_names: Vec<String>,
    path_ids: HashMap<String, u32>,
}

#[derive(Default)]
struct PathTally {
    exchanges: u64,
    /// Hashes of the distinct request paths and endpoints.
    records: HashSet<u64>,
    endpoints: HashSet<u64>,
    status_pairs: HashMap<StatusKey, u64>,
    example: Option<Example>,
}

impl PathTally {
    fn add(&mut self, exchange: &Seen<'_>, primary: Option<&str>, candidate: Option<&str>) {
        self.exchanges += 1;
        self.records.insert(exchange.record);
        self.endpoints.insert(exchange.endpoint);
        *self.status_pairs.entry(exchange.statuses).or_default() += 1;
        if self.example.is_none() {
            let differing = exchange.exchange;
            let mut request = format!("{} {}", differing.method, differing.path);
            if let Some(query) = differing.query.as_deref().filter(|q| !q.is_empty()) {
                request.push('?');
                request.push_str(query);
            }
            self.example = Some(Example {
                request,
                request_id: differing.request_id.clone(),
                primary_status: differing.primary_status,
                candidate_status: differing.shadow_status,
                primary: primary.map(str::to_owned),
                candidate: candidate.map(str::to_owned),
            });
        }
    }
}

/// One exchange being tallied, with its hashes computed once.
struct Seen<'a> {
    exchange: &'a DifferingExchange,
    record: u64,
    endpoint: u64,
    statuses: StatusKey,
}

impl Group {
    fn count(&mut self, count: ExchangeCount) {
        *self.verdicts.entry(count.verdict).or_default() += count.exchanges;
        *self
            .status_pairs
            .entry((count.primary_status, count.shadow_status))
            .or_default() += count.exchanges;
        self.generations.extend(count.generation);
        self.stages.extend(count.stage);
        self.configs.extend(count.config_sha256);
    }

    fn tally(&mut self, exchange: &DifferingExchange) {
        if exchange.verdict != Verdict::ShadowError {
            self.suggester.add(Exchange {
                method: &exchange.method,
                path: &exchange.path,
                query: exchange.query.as_deref(),
                differences: &exchange.differences,
                noise: &exchange.noise,
            });
        }
        let seen = Seen {
            exchange,
            record: xxh3_64(exchange.path.as_bytes()),
            endpoint: xxh3_64(endpoint(&exchange.path).as_bytes()),
            statuses: (exchange.primary_status, exchange.shadow_status),
        };
        // Each path and kind counts once per exchange.
        let mut counted = BTreeSet::new();
        let mut combination = Vec::new();
        let mut sections = BTreeSet::new();
        for difference in &exchange.differences {
            let path = generalize(&difference.path);
            sections.insert(Section::of(&path));
            combination.push(self.path_id(&path));
            if counted.insert((path.clone(), difference.kind)) {
                self.differing
                    .entry((path, difference.kind))
                    .or_default()
                    .add(
                        &seen,
                        difference.primary.as_deref(),
                        difference.shadow.as_deref(),
                    );
            }
        }
        if matches!(exchange.verdict, Verdict::Mismatch | Verdict::ShadowError) {
            combination.sort_unstable();
            combination.dedup();
            *self.combinations.entry(combination).or_default() += 1;
            let has = |section| u64::from(sections.contains(&section));
            self.sections.body += has(Section::Body);
            self.sections.status += has(Section::Status);
            self.sections.error += has(Section::Error);
            self.sections.headers += has(Section::Headers);
            self.sections.headers_only +=
                u64::from(sections.len() == 1 && sections.contains(&Section::Headers));
        }
        counted.clear();
        for difference in &exchange.noise {
            let path = generalize(&difference.path);
            if counted.insert((path.clone(), difference.kind)) {
                self.noisy.entry((path, difference.kind)).or_default().add(
                    &seen,
                    difference.primary.as_deref(),
                    difference.shadow.as_deref(),
                );
            }
        }
    }

    fn path_id(&mut self, path: &str) -> u32 {
        if let Some(&id) = self.path_ids.get(path) {
            return id;
        }
        let id = u32::try_from(self.path_names.len()).unwrap_or(u32::MAX);
        self.path_names.push(path.to_owned());
        self.path_ids.insert(path.to_owned(), id);
        id
    }
}

pub fn build(options: &ReportOptions) -> Result<Report, StoreError> {
    let filter = Filter {
        route: options.route.clone(),
        since_ms: options
            .since_ms
            .map_or(0, |age| crate::store::now_ms().saturating_sub(age)),
        verdict: None,
        generation: options.generation,
        replica: options.replica.clone(),
    };
    let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
    for database in &options.databases {
        let counts = scan(database, &filter, |exchange| {
            groups
                .entry((
                    exchange.route.clone(),
                    exchange.primary_upstream.clone(),
                    exchange.candidate_upstream.clone(),
                ))
                .or_default()
                .tally(&exchange);
        })?;
        for shape in counts.shapes {
            *groups
                .entry((
                    shape.route,
                    shape.primary_upstream,
                    shape.candidate_upstream,
                ))
                .or_default()
                .shapes
                .entry(shape.shape)
                .or_default() += shape.exchanges;
        }
        for count in counts.exchanges {
            groups
                .entry((
                    count.route.clone(),
                    count.primary_upstream.clone(),
                    count.candidate_upstream.clone(),
                ))
                .or_default()
                .count(count);
        }
    }
    let routes: Vec<RouteSummary> = groups
        .into_iter()
        .map(|((route, primary, candidate), group)| {
            summarize(route, primary, candidate, group, options)
        })
        .collect();
    let failure = routes.is_empty().then(|| NOTHING_FOUND.to_owned());
    let passed = failure.is_none() && routes.iter().all(|r| r.passed);
    Ok(Report {
        passed,
        failure,
        max_diff_rate: options.max_diff_rate,
        min_samples: options.min_samples,
        listing: options.listing,
        generation: match options.generation {
            Some(GenerationFilter::Number(number)) => Some(number),
            _ => None,
        },
        since_reload: options.generation == Some(GenerationFilter::Latest),
        routes,
    })
}

fn status_pairs(pairs: HashMap<StatusKey, u64>) -> Vec<StatusPair> {
    let mut pairs: Vec<StatusPair> = pairs
        .into_iter()
        .map(|((primary, candidate), exchanges)| StatusPair {
            primary,
            candidate,
            exchanges,
        })
        .collect();
    pairs.sort_by_key(|pair| (Reverse(pair.exchanges), pair.primary, pair.candidate));
    pairs
}

/// The order paths are listed in: body, status, candidate errors, headers, then likely noise
/// (body before headers); most exchanges first within each.
fn listing_order(path: &PathSummary) -> (bool, Section, Reverse<u64>, String, Kind) {
    (
        path.likely_noise.is_some(),
        path.section,
        Reverse(path.exchanges),
        path.path.clone(),
        path.kind,
    )
}

fn summarize(
    route: String,
    primary: Option<String>,
    candidate: Option<String>,
    mut group: Group,
    options: &ReportOptions,
) -> RouteSummary {
    let shapes = std::mem::take(&mut group.shapes);
    let suggestions: Suggestions = std::mem::take(&mut group.suggester)
        .finish(|shape| shapes.get(shape).copied().unwrap_or(0));
    let samples: u64 = group.verdicts.values().sum();
    let count = |verdict| group.verdicts.get(&verdict).copied().unwrap_or(0);
    let shadow_errors = count(Verdict::ShadowError);
    let mismatches = count(Verdict::Mismatch) + shadow_errors;
    let mismatch_rate = if samples == 0 {
        0.0
    } else {
        mismatches as f64 / samples as f64
    };
    let failure = if samples < options.min_samples {
        Some(format!(
            "{samples} samples, at least {} required",
            options.min_samples
        ))
    } else if options.max_diff_rate.exceeded_by(mismatches, samples) {
        Some(format!(
            "mismatch rate {:.2}% over the allowed {}",
            mismatch_rate * 100.0,
            options.max_diff_rate
        ))
    } else {
        None
    };
    let direction = match (&primary, &candidate) {
        (Some(primary), Some(candidate)) => format!("{primary} → {candidate}"),
        _ => UNRECORDED.to_owned(),
    };

    let share = |exchanges: u64| {
        if samples == 0 {
            0.0
        } else {
            exchanges as f64 / samples as f64
        }
    };
    let summaries = |tallies: BTreeMap<(String, Kind), PathTally>, judge: bool| {
        let mut paths: Vec<PathSummary> = tallies
            .into_iter()
            .map(|((path, kind), tally)| {
                let section = Section::of(&path);
                let likely_noise = if judge {
                    suggestions
                        .covering(&path)
                        .map(|suggestion| suggestion.reason.to_string())
                } else {
                    None
                };
                PathSummary {
                    section,
                    kind,
                    exchanges: tally.exchanges,
                    share: share(tally.exchanges),
                    records: tally.records.len() as u64,
                    endpoints: tally.endpoints.len() as u64,
                    status_pairs: status_pairs(tally.status_pairs),
                    likely_noise,
                    example: tally.example.expect("a tallied path has an example"),
                    path,
                }
            })
            .collect();
        paths.sort_by_cached_key(listing_order);
        paths
    };
    let all_paths = summaries(group.differing, true);
    let noisy_paths = summaries(group.noisy, false);

    let rules = |list: &[crate::diff::Suggestion]| -> Vec<String> {
        list.iter().map(|s| s.rule.clone()).collect()
    };
    let suggested_ignore_headers = rules(&suggestions.ignore_headers);
    let suggested_ignore_json = rules(&suggestions.ignore_json);
    let suggestion = suggestion(&suggested_ignore_headers, &suggested_ignore_json);
    let mismatches_with_suggestion = suggestion.as_ref().map(|_| {
        let covered = |id: &u32| {
            let path = &group.path_names[*id as usize];
            match path.strip_prefix("headers.") {
                Some(name) => suggested_ignore_headers.iter().any(|h| h == name),
                None => suggested_ignore_json.iter().any(|rule| covers(rule, path)),
            }
        };
        group
            .combinations
            .iter()
            .filter(|(paths, _)| paths.is_empty() || !paths.iter().all(covered))
            .map(|(_, count)| count)
            .sum()
    });

    let mut hidden = Hidden::default();
    let listing = options.listing;
    let paths: Vec<PathSummary> = all_paths
        .into_iter()
        .filter(|path| {
            let listed = listing.lists(path.exchanges, samples);
            if !listed {
                hidden.paths += 1;
                hidden.body_paths += u64::from(path.section == Section::Body);
            }
            listed
        })
        .collect();
    let noisy_paths: Vec<PathSummary> = noisy_paths
        .into_iter()
        .filter(|path| {
            let listed = listing.lists(path.exchanges, samples);
            hidden.noisy_paths += u64::from(!listed);
            listed
        })
        .collect();

    RouteSummary {
        route,
        direction,
        primary,
        candidate,
        generations: group.generations.into_iter().collect(),
        stages: group.stages.into_iter().collect(),
        config_sha256: group.configs.into_iter().collect(),
        samples,
        matches: count(Verdict::Match),
        mismatches,
        shadow_errors,
        noise: count(Verdict::Noise),
        mismatch_rate,
        passed: failure.is_none(),
        failure,
        status_pairs: status_pairs(group.status_pairs),
        sections: group.sections,
        paths,
        noisy_paths,
        hidden,
        suggested_ignore_headers,
        suggested_ignore_json,
        suggestion,
        mismatches_with_suggestion,
        suggestions,
    }
}

/// Whether the `ignore_json` rule `rule` (a generalized path) covers `path`: it is the same
/// location or one under it.
fn covers(rule: &str, path: &str) -> bool {
    path.strip_prefix(rule)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
        || rule == "$"
}

/// `compare: { ignore_headers: [vary, x-powered-by], ignore_json: ['$.generated_at'] }`
fn suggestion(headers: &[String], json: &[String]) -> Option<String> {
    let mut parts = Vec::new();
    if !headers.is_empty() {
        parts.push(format!("ignore_headers: [{}]", headers.join(", ")));
    }
    if !json.is_empty() {
        let quoted: Vec<String> = json.iter().map(|p| format!("'{p}'")).collect();
        parts.push(format!("ignore_json: [{}]", quoted.join(", ")));
    }
    (!parts.is_empty()).then(|| format!("compare: {{ {} }}", parts.join(", ")))
}

// ---------------------------------------------------------------------------------------------
// Rendering.

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Changed => "changed",
        Kind::Missing => "missing",
        Kind::Extra => "extra",
        Kind::Type => "type",
    }
}

/// `orders [primary legacy → candidate orders-v2]`: names which side answered clients.
fn heading(route: &RouteSummary) -> String {
    match (&route.primary, &route.candidate) {
        (Some(primary), Some(candidate)) => {
            format!(
                "{} [primary {primary} → candidate {candidate}]",
                route.route
            )
        }
        _ => format!("{} [{UNRECORDED}]", route.route),
    }
}

/// `200→404`; a candidate that did not answer shows as `failed`.
fn status_pair(pair: &StatusPair) -> String {
    let status =
        |status: Option<u16>, none: &str| status.map_or(none.to_owned(), |s| s.to_string());
    format!(
        "{}→{}",
        status(pair.primary, "?"),
        status(pair.candidate, "failed")
    )
}

/// `200→200: 950, 200→404: 12`
fn status_pairs_line(pairs: &[StatusPair]) -> String {
    pairs
        .iter()
        .map(|pair| format!("{}: {}", status_pair(pair), pair.exchanges))
        .collect::<Vec<_>>()
        .join(", ")
}

fn plural(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// `12 exchanges (1.20%), 3 records, 1 endpoint`
fn counts_line(path: &PathSummary) -> String {
    format!(
        "{} ({:.2}%), {}, {}",
        plural(path.exchanges, "exchange", "exchanges"),
        path.share * 100.0,
        plural(path.records, "record", "records"),
        plural(path.endpoints, "endpoint", "endpoints"),
    )
}

/// `GET /orders/7?expand=items: "90.00" -> "100.00"`
fn example_line(example: &Example) -> String {
    format!(
        "{}: {} -> {}",
        example.request,
        example.primary.as_deref().unwrap_or("(absent)"),
        example.candidate.as_deref().unwrap_or("(absent)")
    )
}

/// The sections paths are listed under, in order, with their paths.
fn sections(paths: &[PathSummary]) -> Vec<(&'static str, Vec<&PathSummary>)> {
    let mut out: Vec<(&'static str, Vec<&PathSummary>)> = Vec::new();
    for path in paths {
        let title = if path.likely_noise.is_some() {
            "likely noise (listed last)"
        } else {
            path.section.title()
        };
        match out.last_mut() {
            Some((last, paths)) if *last == title => paths.push(path),
            _ => out.push((title, vec![path])),
        }
    }
    out
}

/// Why some paths are not listed, and how to list them.
fn hidden_line(route: &RouteSummary, listing: &Listing) -> Option<String> {
    let hidden = route.hidden.paths + route.hidden.noisy_paths;
    (hidden > 0).then(|| {
        let mut which = vec![format!("{} in the body", route.hidden.body_paths)];
        if route.hidden.noisy_paths > 0 {
            which.push(format!("{} discounted as noise", route.hidden.noisy_paths));
        }
        format!(
            "not listed: {} ({}), each in fewer than {} exchanges and under {} of them; --min-path-exchanges 1 lists them all",
            plural(hidden, "path", "paths"),
            which.join(", "),
            listing.min_exchanges,
            listing.min_share
        )
    })
}

/// What the suggestion would leave: `with it: 12 mismatches (1.20%), over the allowed 1.00%`.
fn with_suggestion_line(route: &RouteSummary, max_diff_rate: DiffRate) -> Option<String> {
    let left = route.mismatches_with_suggestion?;
    let rate = if route.samples == 0 {
        0.0
    } else {
        left as f64 / route.samples as f64
    };
    Some(format!(
        "with it: {} ({:.2}%), {} the allowed {max_diff_rate}",
        plural(left, "mismatch", "mismatches"),
        rate * 100.0,
        if max_diff_rate.exceeded_by(left, route.samples) {
            "still over"
        } else {
            "within"
        }
    ))
}

/// The detail of one route as indented lines: what text and JUnit show.
fn details(route: &RouteSummary, report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(failure) = &route.failure {
        out.push(format!("failed: {failure}"));
    }
    if !route.generations.is_empty() {
        out.push(format!(
            "config generation {}, stage {}",
            join(&route.generations),
            route.stages.join(", ")
        ));
    }
    if !route.status_pairs.is_empty() {
        out.push(format!(
            "statuses: {}",
            status_pairs_line(&route.status_pairs)
        ));
    }
    for (title, paths) in sections(&route.paths) {
        out.push(format!("{title}:"));
        for path in paths {
            out.push(format!(
                "  {} {}: {}; {}",
                path.path,
                kind_name(path.kind),
                counts_line(path),
                status_pairs_line(&path.status_pairs)
            ));
            if let Some(why) = &path.likely_noise {
                out.push(format!("    likely noise: {why}"));
            }
            out.push(format!("    e.g. {}", example_line(&path.example)));
        }
    }
    if !route.noisy_paths.is_empty() {
        out.push("discounted as noise (noise: legacy):".to_owned());
        for path in &route.noisy_paths {
            out.push(format!(
                "  {} {}: {}",
                path.path,
                kind_name(path.kind),
                plural(path.exchanges, "exchange", "exchanges")
            ));
        }
    }
    if let Some(suggestion) = &route.suggestion {
        out.push(format!("suggestion: {suggestion}"));
    }
    if let Some(line) = with_suggestion_line(route, report.max_diff_rate) {
        out.push(line);
    }
    if let Some(line) = hidden_line(route, &report.listing) {
        out.push(line);
    }
    out
}

/// Output formats of `strangler report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Junit,
    Markdown,
}

pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Text => text(report),
        Format::Json => serde_json::to_string_pretty(report).expect("reports serialize") + "\n",
        Format::Junit => junit(report),
        Format::Markdown => markdown(report),
    }
}

fn text(report: &Report) -> String {
    let mut out = String::new();
    if let Some(failure) = &report.failure {
        let _ = writeln!(out, "{failure}");
    }
    for route in &report.routes {
        let _ = writeln!(
            out,
            "{} {}: {} samples, {} match, {} mismatch ({} shadow errors), {} noise, mismatch rate {:.2}%",
            if route.passed { "PASS" } else { "FAIL" },
            heading(route),
            route.samples,
            route.matches,
            route.mismatches,
            route.shadow_errors,
            route.noise,
            route.mismatch_rate * 100.0
        );
        for line in details(route, report) {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(
        out,
        "{}: max diff rate {}, min samples {}{}",
        if report.passed { "PASSED" } else { "FAILED" },
        report.max_diff_rate,
        report.min_samples,
        selection(report)
    );
    out
}

/// `, generation 3` or `, since the last reload`: which exchanges were judged.
fn selection(report: &Report) -> String {
    match (report.generation, report.since_reload) {
        (Some(generation), _) => format!(", generation {generation}"),
        (None, true) => ", since the last reload".to_owned(),
        (None, false) => String::new(),
    }
}

fn join(numbers: &[u64]) -> String {
    numbers
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Text as a Markdown code span that survives a table cell: `|` escaped, backticks fenced.
fn code(text: &str) -> String {
    let text = text.replace('|', "\\|").replace(['\n', '\r'], " ");
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

fn markdown(report: &Report) -> String {
    let mut out = String::from(
        "| route | primary → candidate | result | samples | match | mismatch | noise | mismatch rate | first differing path |\n|---|---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for route in &report.routes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2}% | {} |",
            route.route,
            route.direction,
            if route.passed { "✅ pass" } else { "❌ fail" },
            route.samples,
            route.matches,
            route.mismatches,
            route.noise,
            route.mismatch_rate * 100.0,
            route.paths.first().map_or(String::new(), |p| format!(
                "{} {} ({} exchanges, {})",
                code(&p.path),
                kind_name(p.kind),
                p.exchanges,
                plural(p.records, "record", "records")
            )),
        );
    }
    if let Some(failure) = &report.failure {
        let _ = writeln!(out, "\n{failure}");
    }
    let _ = writeln!(
        out,
        "\n**{}** (max diff rate {}, min samples {}{}; the primary answered clients, the candidate got copies)",
        if report.passed { "Passed" } else { "Failed" },
        report.max_diff_rate,
        report.min_samples,
        selection(report)
    );
    for route in &report.routes {
        markdown_route(&mut out, route, report);
    }
    out
}

fn markdown_route(out: &mut String, route: &RouteSummary, report: &Report) {
    let _ = writeln!(
        out,
        "\n### {} {}: {}\n",
        if route.passed { "✅" } else { "❌" },
        route.route,
        route.direction
    );
    let _ = writeln!(
        out,
        "{} samples, {} match, {} mismatch ({} shadow errors), {} noise, mismatch rate {:.2}%.",
        route.samples,
        route.matches,
        route.mismatches,
        route.shadow_errors,
        route.noise,
        route.mismatch_rate * 100.0
    );
    if let Some(failure) = &route.failure {
        let _ = writeln!(out, "Failed: {failure}.");
    }
    if !route.generations.is_empty() {
        let _ = writeln!(
            out,
            "Config generation {}, stage {}.",
            join(&route.generations),
            route.stages.join(", ")
        );
    }
    if !route.status_pairs.is_empty() {
        let _ = writeln!(out, "Statuses: {}.", status_pairs_line(&route.status_pairs));
    }
    for (title, paths) in sections(&route.paths) {
        let noise = paths.iter().any(|p| p.likely_noise.is_some());
        let _ = writeln!(
            out,
            "\n**{}{}**\n\n| path | kind | exchanges | records | endpoints | statuses | example (primary → candidate) |{}\n|---|---|---:|---:|---:|---|---|{}",
            title[..1].to_uppercase(),
            &title[1..],
            if noise { " why |" } else { "" },
            if noise { "---|" } else { "" },
        );
        for path in paths {
            let _ = writeln!(
                out,
                "| {} | {} | {} ({:.2}%) | {} | {} | {} | {}: {} → {} |{}",
                code(&path.path),
                kind_name(path.kind),
                path.exchanges,
                path.share * 100.0,
                path.records,
                path.endpoints,
                status_pairs_line(&path.status_pairs),
                code(&path.example.request),
                code(path.example.primary.as_deref().unwrap_or("(absent)")),
                code(path.example.candidate.as_deref().unwrap_or("(absent)")),
                path.likely_noise
                    .as_deref()
                    .map_or(String::new(), |why| format!(
                        " {} |",
                        why.replace('|', "\\|")
                    )),
            );
        }
    }
    if !route.noisy_paths.is_empty() {
        let listed: Vec<String> = route
            .noisy_paths
            .iter()
            .map(|p| format!("{} {} ({})", code(&p.path), kind_name(p.kind), p.exchanges))
            .collect();
        let _ = writeln!(
            out,
            "\nDiscounted as noise (`noise: legacy`): {}.",
            listed.join(", ")
        );
    }
    if let Some(suggestion) = &route.suggestion {
        let _ = writeln!(
            out,
            "\nSuggestion, under the route's `shadow:`:\n\n```yaml\n{suggestion}\n```"
        );
        if let Some(line) = with_suggestion_line(route, report.max_diff_rate) {
            let _ = writeln!(out, "\n{}{}.", line[..1].to_uppercase(), &line[1..]);
        }
    }
    if let Some(line) = hidden_line(route, &report.listing) {
        let line = line.replace("--min-path-exchanges 1", "`--min-path-exchanges 1`");
        let _ = writeln!(out, "\n{}{}.", line[..1].to_uppercase(), &line[1..]);
    }
}

/// The first listed paths of a route for a one-line message: body ones if there are any.
fn top_paths(route: &RouteSummary) -> String {
    let body: Vec<&PathSummary> = route
        .paths
        .iter()
        .filter(|p| p.section == Section::Body && p.likely_noise.is_none())
        .collect();
    let (label, paths) = if body.is_empty() {
        ("first differences", route.paths.iter().collect())
    } else {
        ("body", body)
    };
    if paths.is_empty() {
        return String::new();
    }
    let listed: Vec<String> = paths
        .iter()
        .take(3)
        .map(|p| {
            format!(
                "{} {} in {} ({}), e.g. {}",
                p.path,
                kind_name(p.kind),
                plural(p.exchanges, "exchange", "exchanges"),
                plural(p.records, "record", "records"),
                p.example.request
            )
        })
        .collect();
    format!("; {label}: {}", listed.join("; "))
}

/// One test case per route and direction; with nothing found, one failing case saying so, so
/// the file fails exactly when the exit status does. A failure's message names the failure and
/// the first body paths; its text (or a passing case's output) is the route's detail.
fn junit(report: &Report) -> String {
    struct Case {
        name: String,
        failure: Option<String>,
        details: String,
    }
    let mut cases: Vec<Case> = report
        .routes
        .iter()
        .map(|route| Case {
            name: format!("{}: {}", route.route, route.direction),
            failure: route
                .failure
                .as_ref()
                .map(|failure| format!("{failure}{}", top_paths(route))),
            details: details(route, report).join("\n"),
        })
        .collect();
    if let Some(failure) = &report.failure {
        cases.push(Case {
            name: "report".to_owned(),
            failure: Some(failure.clone()),
            details: String::new(),
        });
    }
    let failures = cases.iter().filter(|case| case.failure.is_some()).count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"strangler\" tests=\"{}\" failures=\"{failures}\">\n  <testsuite name=\"shadow diffs\" tests=\"{}\" failures=\"{failures}\">\n",
        cases.len(),
        cases.len()
    );
    for case in &cases {
        let _ = write!(
            out,
            "    <testcase classname=\"strangler.routes\" name=\"{}\">",
            xml(&case.name)
        );
        match &case.failure {
            Some(failure) => {
                let _ = write!(
                    out,
                    "\n      <failure message=\"{}\">{}</failure>\n    ",
                    xml(failure),
                    xml(&case.details)
                );
            }
            None if !case.details.is_empty() => {
                let _ = write!(
                    out,
                    "\n      <system-out>{}</system-out>\n    ",
                    xml(&case.details)
                );
            }
            None => {}
        }
        out.push_str("</testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `strangler report --suggest`: per route and direction, the `compare:` block to paste under
/// the route's `shadow:`, each rule with the evidence that justifies it (see
/// [`crate::diff::suggest`] for the rule: never a path that differed on stable values).
pub fn render_suggestions(report: &Report) -> String {
    let mut out = String::new();
    for route in &report.routes {
        let suggestions = &route.suggestions;
        if suggestions.ignore_headers.is_empty() && suggestions.ignore_json.is_empty() {
            continue;
        }
        out.push_str(&format!("# {} ({})", route.route, route.direction));
        if let Some(left) = route.mismatches_with_suggestion {
            out.push_str(&format!(": with these rules, {left} mismatches are left"));
        }
        out.push_str(&format!(
            "\nroutes:\n  - name: {}\n    shadow:\n      compare:\n",
            route.route
        ));
        for (key, list) in [
            ("ignore_headers", &suggestions.ignore_headers),
            ("ignore_json", &suggestions.ignore_json),
        ] {
            if list.is_empty() {
                continue;
            }
            out.push_str(&format!("        {key}:\n"));
            for suggestion in list {
                out.push_str(&format!(
                    "          - '{}'   # {}\n",
                    suggestion.rule.replace('\'', "''"),
                    suggestion.reason
                ));
            }
        }
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str(
            "# no ignore rule to suggest: nothing differs in (nearly) every exchange or as noise\n",
        );
    }
    out
}

/// The report's suggested rules as YAML to paste under the route's `shadow:`.
pub fn suggestion_yaml(route: &str, summary: &RouteSummary) -> Option<String> {
    let line = summary.suggestion.as_ref()?;
    Some(format!(
        "# routes: - name: {route} → shadow: (merge with an existing compare:)\n{line}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DiffRecord, Difference};
    use crate::store::DiffStore;
    use std::path::PathBuf;

    #[test]
    fn a_diff_rate_is_a_fraction_or_a_percentage_and_nothing_else() {
        let rate = |text: &str| text.parse::<DiffRate>().map(DiffRate::fraction);
        assert_eq!(rate("0.05"), Ok(0.05));
        assert_eq!(rate("5%"), Ok(0.05));
        assert_eq!(rate(" 5 % "), Ok(0.05));
        assert_eq!(rate("0"), Ok(0.0));
        assert_eq!(rate("1"), Ok(1.0));
        assert_eq!(rate("100%"), Ok(1.0));
        assert_eq!(rate("0.5%"), Ok(0.005));
        for (text, why) in [
            ("5", "over 1, which would allow 500%"),
            ("1.01", "over 1"),
            ("150%", "over 100%"),
            ("-0.1", "negative"),
            ("-5%", "negative"),
            ("abc", "not a number"),
            ("", "not a number"),
            ("%", "not a number"),
            ("5%%", "not a number"),
            ("NaN", "not a number"),
            ("inf", "not a number"),
        ] {
            let error = rate(text).unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
            assert!(error.contains("(0.05) or a percentage (5%)"), "{error}");
        }
        let share = |text: &str| Listing::parse_share(text).map(DiffRate::fraction);
        assert_eq!(share("2%"), Ok(0.02));
        assert!(share("2").unwrap_err().contains("over 1, that is 200%"));
    }

    #[test]
    fn a_rate_at_the_limit_passes_and_one_above_fails() {
        let five: DiffRate = "5%".parse().unwrap();
        assert!(!five.exceeded_by(1, 20), "exactly 5 % passes");
        assert!(!five.exceeded_by(3, 60));
        assert!(five.exceeded_by(2, 20));
        assert!(
            !five.exceeded_by(0, 0),
            "no samples is the sample gate's business"
        );
        let small: DiffRate = "0.3%".parse().unwrap();
        assert!(
            !small.exceeded_by(3, 1000),
            "0.3 % of 1000, rounded apart in binary"
        );
        assert!(small.exceeded_by(4, 1000));
    }

    #[test]
    fn a_path_is_listed_from_a_share_or_a_count_of_exchanges() {
        let listing = Listing::default();
        assert!(
            listing.lists(2, 100_000),
            "two exchanges, however many samples"
        );
        assert!(!listing.lists(1, 101), "once, under 1 %");
        assert!(listing.lists(1, 100), "exactly 1 %");
        assert!(listing.lists(1, 3));
        let everything = Listing {
            min_exchanges: 1,
            ..listing
        };
        assert!(everything.lists(1, 1_000_000));
        let share_only = Listing {
            min_share: "10%".parse().unwrap(),
            min_exchanges: u64::MAX,
        };
        assert!(!share_only.lists(9, 100));
        assert!(share_only.lists(10, 100));
    }

    #[test]
    fn differences_fall_in_sections_and_requests_in_endpoints() {
        assert_eq!(Section::of("status"), Section::Status);
        assert_eq!(Section::of("shadow"), Section::Error);
        assert_eq!(Section::of("headers.vary"), Section::Headers);
        for body in ["$", "$.total", "$.items[*].sku", "body", "body:line 3"] {
            assert_eq!(Section::of(body), Section::Body, "{body}");
        }
        assert_eq!(endpoint("/api/orders/7"), "/api/orders/{id}");
        assert_eq!(
            endpoint("/v2/users/3f2c1a9e-5b7d-4c1e-9a0b-1234567890ab/orders/12"),
            "/v2/users/{id}/orders/{id}"
        );
        assert_eq!(endpoint("/blobs/0123456789abcdef0"), "/blobs/{id}");
        assert_eq!(
            endpoint("/api/v2/orders/"),
            "/api/v2/orders/",
            "v2 is no id"
        );
        assert_eq!(
            endpoint("/cafe/facade"),
            "/cafe/facade",
            "hex words are no ids"
        );
        assert_eq!(endpoint("/"), "/");
    }

    #[test]
    fn a_suggested_rule_covers_its_path_and_the_paths_under_it() {
        assert!(covers("$.generated_at", "$.generated_at"));
        assert!(covers("$.items[*]", "$.items[*].sku"));
        assert!(!covers("$.total", "$.totals"));
        assert!(covers("$", "$.anything"));
    }

    fn record(route: &str, direction: (&str, &str), generation: u64, verdict: &str) -> DiffRecord {
        let verdict = Verdict::parse(verdict).expect("a verdict");
        let differences = if verdict == Verdict::Mismatch {
            vec![
                Difference {
                    path: "$.items[0].total".into(),
                    kind: Kind::Type,
                    primary: Some("\"10.50\"".into()),
                    shadow: Some("10.5".into()),
                },
                Difference {
                    path: "$.items[1].total".into(),
                    kind: Kind::Missing,
                    primary: Some("1".into()),
                    shadow: None,
                },
            ]
        } else {
            Vec::new()
        };
        DiffRecord {
            at_ms: 1,
            path: "/orders/1".into(),
            differences,
            primary_upstream: Some(direction.0.into()),
            candidate_upstream: Some(direction.1.into()),
            generation: Some(generation),
            config_sha256: Some("abc".into()),
            ..crate::store::testing::record(route, verdict.as_str())
        }
    }

    fn options(database: PathBuf) -> ReportOptions {
        ReportOptions {
            databases: vec![StoreLocation::Sqlite(database)],
            route: None,
            replica: None,
            since_ms: None,
            generation: None,
            max_diff_rate: DiffRate::default(),
            min_samples: 1,
            listing: Listing::default(),
        }
    }

    fn store(path: &std::path::Path, records: &[DiffRecord]) {
        let mut store =
            DiffStore::open(path, 100_000, std::time::Duration::from_secs(3600)).unwrap();
        store.insert(records).unwrap();
    }

    #[test]
    fn directions_are_judged_apart_with_the_kind_of_each_difference() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffs.db");
        store(
            &path,
            &[
                record("orders", ("legacy", "v2"), 1, "mismatch"),
                record("orders", ("legacy", "v2"), 1, "match"),
                record("orders", ("v2", "legacy"), 2, "match"),
            ],
        );
        let report = build(&options(path)).unwrap();
        assert!(!report.passed);
        let [forward, backward] = &report.routes[..] else {
            panic!("two directions: {report:?}");
        };
        assert_eq!(forward.direction, "legacy → v2");
        assert_eq!((forward.samples, forward.passed), (2, false));
        assert_eq!(forward.generations, [1]);
        let kinds: Vec<_> = forward
            .paths
            .iter()
            .map(|p| (p.path.as_str(), p.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("$.items[*].total", Kind::Missing),
                ("$.items[*].total", Kind::Type)
            ]
        );
        assert_eq!(backward.direction, "v2 → legacy");
        assert!(backward.passed);

        let text = render(&report, Format::Text);
        assert!(
            text.contains("FAIL orders [primary legacy → candidate v2]: 2 samples"),
            "{text}"
        );
        assert!(
            text.contains("PASS orders [primary v2 → candidate legacy]"),
            "{text}"
        );
        assert!(
            text.contains(
                "    $.items[*].total type: 1 exchange (50.00%), 1 record, 1 endpoint; 200→200: 1\n      e.g. GET /orders/1: \"10.50\" -> 10.5\n"
            ),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&report, Format::Json)).unwrap();
        assert_eq!(json["routes"][0]["primary"], "legacy");
        assert_eq!(json["routes"][0]["paths"][0]["kind"], "missing");
        assert_eq!(json["routes"][0]["paths"][0]["section"], "body");
        assert_eq!(json["max_diff_rate"], 0.01);
        assert_eq!(json["listing"]["min_exchanges"], 2);
        let junit = render(&report, Format::Junit);
        assert!(junit.contains("name=\"orders: legacy → v2\""), "{junit}");
        assert!(junit.contains("tests=\"2\" failures=\"1\""), "{junit}");
    }

    #[test]
    fn junit_fails_when_the_exit_status_does_even_with_nothing_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.db");
        store(&path, &[]);
        let report = build(&options(path)).unwrap();
        assert!(!report.passed);
        let junit = render(&report, Format::Junit);
        assert!(junit.contains("tests=\"1\" failures=\"1\""), "{junit}");
        assert!(junit.contains("no compared exchanges found"), "{junit}");
        assert!(render(&report, Format::Text).starts_with("no compared exchanges found\n"));
    }

    fn difference(
        path: &str,
        kind: Kind,
        primary: Option<&str>,
        shadow: Option<&str>,
    ) -> Difference {
        Difference {
            path: path.into(),
            kind,
            primary: primary.map(str::to_owned),
            shadow: shadow.map(str::to_owned),
        }
    }

    /// 200 exchanges of orders 0..20 (ten each): `x-powered-by` and `vary` differ in every
    /// one, `$.total` on orders 3, 5 and 9, a 404 on order 13, a timestamp on every call of
    /// orders 0 and 10 and a `$.note` once.
    fn noisy_store(path: &std::path::Path) {
        let records: Vec<DiffRecord> = (0..200u64)
            .map(|n| {
                let id = n % 20;
                let mut differences = vec![
                    difference("headers.x-powered-by", Kind::Missing, Some("Express"), None),
                    difference(
                        "headers.vary",
                        Kind::Changed,
                        Some("Accept"),
                        Some("Origin"),
                    ),
                ];
                let mut shadow_status = 200;
                match id {
                    3 | 5 | 9 => differences.push(difference(
                        "$.total",
                        Kind::Changed,
                        Some("90"),
                        Some("100"),
                    )),
                    13 => {
                        shadow_status = 404;
                        differences.insert(
                            0,
                            difference("status", Kind::Changed, Some("200"), Some("404")),
                        );
                    }
                    0 | 10 => differences.push(difference(
                        "$.generated_at",
                        Kind::Changed,
                        Some(&format!("t{n}")),
                        Some("t"),
                    )),
                    _ => {}
                }
                if n == 51 {
                    differences.push(difference("$.note", Kind::Extra, None, Some("\"hi\"")));
                }
                DiffRecord {
                    path: format!("/orders/{id}"),
                    query: Some(format!("coupon=SAVE{id}&token=%5Bredacted%5D")),
                    request_id: format!("req-{n}"),
                    shadow_status: Some(shadow_status),
                    differences,
                    ..record("orders", ("legacy", "v2"), 1, "mismatch")
                }
            })
            .collect();
        store(path, &records);
    }

    #[test]
    fn a_body_bug_on_three_records_is_listed_before_headers_that_differ_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffs.db");
        noisy_store(&path);
        let report = build(&options(path.clone())).unwrap();
        let route = &report.routes[0];
        let listed: Vec<(&str, Section, bool)> = route
            .paths
            .iter()
            .map(|p| (p.path.as_str(), p.section, p.likely_noise.is_some()))
            .collect();
        assert_eq!(
            listed,
            [
                ("$.total", Section::Body, false),
                ("status", Section::Status, false),
                ("$.generated_at", Section::Body, true),
                ("headers.vary", Section::Headers, true),
                ("headers.x-powered-by", Section::Headers, true),
            ],
            "$.note (once, under 1 %) is not listed"
        );
        let total = &route.paths[0];
        assert_eq!(
            (total.exchanges, total.records, total.endpoints),
            (30, 3, 1)
        );
        assert_eq!(
            total.example.request,
            "GET /orders/3?coupon=SAVE3&token=%5Bredacted%5D"
        );
        assert_eq!(total.example.request_id, "req-3");
        assert_eq!(
            (
                total.example.primary.as_deref(),
                total.example.candidate.as_deref()
            ),
            (Some("90"), Some("100"))
        );
        let status = &route.paths[1];
        assert_eq!(
            status.status_pairs,
            [StatusPair {
                primary: Some(200),
                candidate: Some(404),
                exchanges: 10
            }]
        );
        assert_eq!(
            route
                .status_pairs
                .iter()
                .map(status_pair)
                .collect::<Vec<_>>(),
            ["200→200", "200→404"]
        );
        assert_eq!(route.status_pairs[0].exchanges, 190);
        assert_eq!(route.suggested_ignore_headers, ["vary", "x-powered-by"]);
        assert_eq!(route.suggested_ignore_json, ["$.generated_at"]);
        assert_eq!(
            route.suggestion.as_deref(),
            Some(
                "compare: { ignore_headers: [vary, x-powered-by], ignore_json: ['$.generated_at'] }"
            )
        );
        assert_eq!(
            route.mismatches_with_suggestion,
            Some(41),
            "the totals, the 404s and the one $.note remain"
        );
        assert_eq!(
            route.sections,
            SectionCounts {
                body: 51,
                status: 10,
                error: 0,
                headers: 200,
                headers_only: 139
            }
        );
        assert_eq!(
            route.hidden,
            Hidden {
                paths: 1,
                body_paths: 1,
                noisy_paths: 0
            }
        );

        let text = render(&report, Format::Text);
        let total_line = text
            .find("$.total changed: 30 exchanges (15.00%), 3 records")
            .unwrap();
        let header_line = text.find("headers.x-powered-by missing").unwrap();
        assert!(total_line < header_line, "{text}");
        for line in [
            "  statuses: 200→200: 190, 200→404: 10\n  body:\n    $.total changed",
            "      e.g. GET /orders/3?coupon=SAVE3&token=%5Bredacted%5D: 90 -> 100\n",
            "  status:\n    status changed: 10 exchanges (5.00%), 1 record, 1 endpoint; 200→404: 10\n",
            "  likely noise (listed last):\n    $.generated_at changed",
            "      likely noise: the primary gave different values to the same request (2 of 2 repeated requests)\n",
            "      likely noise: differs in 100.00% of the 200 exchanges it appears in (the servers differ, not the answers)\n",
            "  suggestion: compare: { ignore_headers: [vary, x-powered-by], ignore_json: ['$.generated_at'] }\n",
            "  with it: 41 mismatches (20.50%), still over the allowed 1.00%\n",
            "  not listed: 1 path (1 in the body), each in fewer than 2 exchanges and under 1.00% of them; --min-path-exchanges 1 lists them all\n",
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }

        // Listing everything shows $.note too.
        let everything = ReportOptions {
            listing: Listing {
                min_exchanges: 1,
                ..Listing::default()
            },
            ..options(path)
        };
        let report = build(&everything).unwrap();
        assert!(report.routes[0].paths.iter().any(|p| p.path == "$.note"));
        assert_eq!(report.routes[0].hidden, Hidden::default());
    }

    #[test]
    fn the_markdown_and_junit_carry_the_same_detail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffs.db");
        noisy_store(&path);
        let report = build(&options(path)).unwrap();
        let markdown = render(&report, Format::Markdown);
        for line in [
            "| orders | legacy → v2 | ❌ fail | 200 | 0 | 200 | 0 | 100.00% | `$.total` changed (30 exchanges, 3 records) |",
            "### ❌ orders: legacy → v2",
            "Statuses: 200→200: 190, 200→404: 10.",
            "**Body**\n\n| path | kind | exchanges | records | endpoints | statuses | example (primary → candidate) |",
            "| `$.total` | changed | 30 (15.00%) | 3 | 1 | 200→200: 30 | `GET /orders/3?coupon=SAVE3&token=%5Bredacted%5D`: `90` → `100` |",
            "**Likely noise (listed last)**",
            "| `headers.vary` | changed | 200 (100.00%) | 20 | 1 | 200→200: 190, 200→404: 10 | `GET /orders/0?coupon=SAVE0&token=%5Bredacted%5D`: `Accept` → `Origin` | differs in 100.00% of the 200 exchanges it appears in",
            "```yaml\ncompare: { ignore_headers: [vary, x-powered-by], ignore_json: ['$.generated_at'] }\n```",
            "With it: 41 mismatches (20.50%), still over the allowed 1.00%.",
            "Not listed: 1 path",
        ] {
            assert!(markdown.contains(line), "no `{line}` in:\n{markdown}");
        }
        let markdown_body = markdown.find("**Body**").unwrap();
        let markdown_noise = markdown.find("**Likely noise").unwrap();
        assert!(markdown_body < markdown_noise);

        let junit = render(&report, Format::Junit);
        assert!(
            junit.contains(
                "<failure message=\"mismatch rate 100.00% over the allowed 1.00%; body: $.total changed in 30 exchanges (3 records), e.g. GET /orders/3?coupon=SAVE3&amp;token=%5Bredacted%5D\">"
            ),
            "{junit}"
        );
        assert!(junit.contains("with it: 41 mismatches"), "{junit}");
    }

    #[test]
    fn stores_are_merged_with_records_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let bug = |id: u64| DiffRecord {
            path: format!("/orders/{id}"),
            differences: vec![difference("$.total", Kind::Changed, Some("1"), Some("2"))],
            ..record("orders", ("legacy", "v2"), 1, "mismatch")
        };
        store(
            &a,
            &[
                bug(1),
                bug(2),
                record("orders", ("legacy", "v2"), 1, "match"),
            ],
        );
        store(&b, &[bug(2), bug(3)]);
        let report = build(&ReportOptions {
            databases: vec![StoreLocation::Sqlite(a), StoreLocation::Sqlite(b)],
            ..options(PathBuf::new())
        })
        .unwrap();
        let route = &report.routes[0];
        assert_eq!((route.samples, route.mismatches), (5, 4));
        assert_eq!(
            (route.paths[0].exchanges, route.paths[0].records),
            (4, 3),
            "/orders/2 in both replicas is one record"
        );
    }
}
