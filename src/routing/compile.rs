//! Config -> [`RouteTable`]: every cross-reference resolved and every pattern compiled, or the
//! complete list of what is wrong, each with its field path.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue};
use regex::Regex;

use super::canary::{RetiredAnswer, TesterOverride, check_stage, compile_split};
use super::index::{PathCondition, RouteIndex};
use super::matcher::{HostPattern, RequestMatcher, ValueMatcher};
use super::path_regex::Reuse;
use super::{Route, RouteTable, Target, UpstreamId};
use crate::config::{
    Config, ConfigError, Diagnostic, HeaderActionsConfig, LoadedConfig, MatchConfig, RewriteConfig,
    RouteConfig, TargetConfig, ValueMatchConfig, did_you_mean,
};
use crate::edits::{HeaderActions, PathRewrite, RequestEdits};
use crate::redact::Redaction;
use crate::shadow::compile_shadow;
use crate::upstream::{AddressResolution, UpstreamPool};

/// Headers whose meaning is the proxy's business (framing, connection management); routes may
/// not edit them. `host` is changed with `rewrite.host`.
const RESERVED_REQUEST_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];
/// Header lines Pingora's HTTP/1 parser reads at most.
const MAX_PARSED_HEADERS: usize = 256;

const RESERVED_RESPONSE_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// What checking a config found, for `strangler validate`: it is valid, and this is its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedConfig {
    pub routes: usize,
    pub upstreams: usize,
    /// Hex SHA-256 of the config text, as `GET /routes` will show it once served.
    pub sha256: String,
}

impl RouteTable {
    /// Compiles a loaded file, reporting parse and compile problems together, in file order.
    pub fn compile_loaded(
        loaded: LoadedConfig,
        generation: u64,
    ) -> Result<RouteTable, ConfigError> {
        Self::compile_live(loaded, generation, &Reuse::none())
    }

    /// [`Self::compile_loaded`] for a table that will replace `serving`: a path regex whose
    /// pattern `serving` has already is taken from it (checked, usually built) instead of being
    /// parsed and built again. A reload mostly keeps most patterns.
    pub fn compile_replacing(
        loaded: LoadedConfig,
        generation: u64,
        serving: &RouteTable,
    ) -> Result<RouteTable, ConfigError> {
        Self::compile_live(loaded, generation, &serving.regex_reuse())
    }

    /// This table's path regexes, for the table that replaces it.
    fn regex_reuse(&self) -> Reuse<'_> {
        Reuse::from_regexes(
            self.routes
                .iter()
                .filter_map(|route| route.path_regex.as_ref()),
        )
    }

    fn compile_live(
        loaded: LoadedConfig,
        generation: u64,
        reuse: &Reuse<'_>,
    ) -> Result<RouteTable, ConfigError> {
        let table = Self::compile_resolving(loaded, generation, AddressResolution::Dns, reuse)?;
        // The table goes live with its path regexes checked, not built: build them now, off
        // the reload's path (see `path_regex`).
        super::path_regex::warm(
            table
                .routes
                .iter()
                .filter_map(|route| route.path_regex.clone())
                .collect(),
        );
        Ok(table)
    }

    /// Runs every check [`Self::compile_loaded`] runs, with backend names resolved as
    /// `resolution` says. Only a summary comes back: with [`AddressResolution::SyntaxOnly`] the
    /// table's backend addresses are placeholders, so the table itself must not escape.
    pub fn check(
        loaded: LoadedConfig,
        resolution: AddressResolution,
    ) -> Result<CheckedConfig, ConfigError> {
        let table = Self::compile_resolving(loaded, 1, resolution, &Reuse::none())?;
        Ok(CheckedConfig {
            routes: table.routes.len(),
            upstreams: table.upstreams.len(),
            sha256: table.sha256.clone(),
        })
    }

    fn compile_resolving(
        loaded: LoadedConfig,
        generation: u64,
        resolution: AddressResolution,
        reuse: &Reuse<'_>,
    ) -> Result<RouteTable, ConfigError> {
        let LoadedConfig {
            config,
            source,
            mut problems,
            unparsed_upstreams,
            route_numbers,
        } = loaded;
        let sha256 = source.sha256.clone();
        match Self::compile_with(
            config,
            generation,
            sha256,
            &unparsed_upstreams,
            &route_numbers,
            resolution,
            reuse,
        ) {
            Ok(table) if problems.is_empty() => Ok(table),
            Ok(_) => Err(source.invalid(problems)),
            Err(diagnostics) => {
                problems.extend(diagnostics);
                Err(source.invalid(problems))
            }
        }
    }

    /// `unparsed_upstreams` exist in the file but failed to parse (already reported): references
    /// to them are not reported again. `route_numbers[i]` is the position in the file of
    /// `config.routes[i]`, for field paths.
    fn compile_with(
        config: Config,
        generation: u64,
        sha256: String,
        unparsed_upstreams: &BTreeSet<String>,
        route_numbers: &[usize],
        resolution: AddressResolution,
        reuse: &Reuse<'_>,
    ) -> Result<RouteTable, Vec<Diagnostic>> {
        let mut diagnostics = Vec::new();

        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        let mut upstream_ids = HashMap::new();
        for (name, upstream) in &config.upstreams {
            let path = format!("upstreams.{name}");
            if let Some(pool) =
                UpstreamPool::compile_resolving(name, upstream, &path, resolution, &mut diagnostics)
            {
                upstream_ids.insert(name.as_str(), upstreams.len());
                upstreams.push(Arc::new(pool));
            }
        }
        let resolver = UpstreamResolver {
            ids: &upstream_ids,
            pools: &upstreams,
            config: &config,
            unparsed: unparsed_upstreams,
        };

        let default_upstream = resolver.resolve(
            &config.default_upstream,
            "default_upstream",
            &mut diagnostics,
        );
        let limits = &config.server.limits;
        for (field, value) in [
            ("server.threads", config.server.threads),
            (
                "server.shadow_max_inflight",
                Some(config.server.shadow_max_inflight),
            ),
            (
                "server.limits.max_connections",
                Some(limits.max_connections),
            ),
            (
                "server.limits.max_header_count",
                Some(limits.max_header_count),
            ),
        ] {
            if value == Some(0) {
                diagnostics.push(
                    Diagnostic::new(field, "must be at least 1")
                        .with_hint("leave it out to use the default"),
                );
            }
        }
        if limits.max_header_count > MAX_PARSED_HEADERS {
            diagnostics.push(
                Diagnostic::new(
                    "server.limits.max_header_count",
                    format!("must be at most {MAX_PARSED_HEADERS}"),
                )
                .with_hint("the HTTP parser reads at most 256 header lines"),
            );
        }
        if config.server.diff_max_sample > bytesize::ByteSize::kib(64) {
            diagnostics.push(
                Diagnostic::new("server.diff_max_sample", "must be at most 64 KiB").with_hint(
                    "samples explain differences; the store keeps one per side per exchange",
                ),
            );
        }
        if let Some(otlp) = &config.server.otlp
            && let Err(crate::telemetry::TelemetryError::Invalid { field, message }) =
                crate::telemetry::validate(otlp)
        {
            diagnostics.push(Diagnostic::new(field, message));
        }
        for (field, value) in [
            ("server.request_timeout", config.server.request_timeout),
            ("server.limits.header_timeout", limits.header_timeout),
            ("server.limits.body_idle_timeout", limits.body_idle_timeout),
        ] {
            if value.is_zero() {
                diagnostics.push(
                    Diagnostic::new(field, "must be greater than zero")
                        .with_hint("a duration like 30s or 500ms"),
                );
            }
        }

        let tester_override = config.tester_override.as_ref().and_then(|tester| {
            let before = diagnostics.len();
            let header = HeaderName::from_bytes(tester.header.as_bytes());
            let token_header = HeaderName::from_bytes(tester.token_header.as_bytes());
            if header.is_err() || token_header.is_err() {
                diagnostics.push(Diagnostic::new(
                    "tester_override",
                    "header names must be valid",
                ));
            }
            let token = match &tester.token {
                Some(token) if token.len() >= 16 => {
                    let value = HeaderValue::from_str(token);
                    if value.is_err() {
                        diagnostics.push(
                            Diagnostic::new(
                                "tester_override.token",
                                "has characters a header cannot carry",
                            )
                            .with_hint("printable ASCII only; no line break at the end"),
                        );
                    }
                    value.ok()
                }
                Some(_) => {
                    diagnostics.push(
                        Diagnostic::new("tester_override.token", "must be at least 16 characters")
                            .with_hint("use 32 random characters"),
                    );
                    None
                }
                None => None,
            };
            let mut allow = Vec::new();
            for (number, cidr) in tester.allow_cidrs.iter().enumerate() {
                match cidr.parse::<ipnet::IpNet>() {
                    Ok(net) => allow.push(net),
                    Err(_) => diagnostics.push(
                        Diagnostic::new(
                            format!("tester_override.allow_cidrs[{number}]"),
                            format!("`{cidr}` is not a network"),
                        )
                        .with_hint("like 10.0.0.0/8 or fd00::/8"),
                    ),
                }
            }
            if token.is_none() && allow.is_empty() && diagnostics.len() == before {
                diagnostics.push(
                    Diagnostic::new("tester_override", "needs a `token`, `allow_cidrs`, or both")
                        .with_hint("tester_override: { token: <32 random characters> }"),
                );
            }
            (diagnostics.len() == before).then(|| TesterOverride {
                header: header.expect("checked above"),
                token_header: token_header.expect("checked above"),
                token,
                allow,
            })
        });

        crate::tls::check_listeners(
            &config.server.listen,
            resolution == AddressResolution::Dns,
            &mut diagnostics,
        );
        let redaction = Arc::new(Redaction::compile(&config.server.redact));
        let mut trusted = Vec::new();
        for (number, cidr) in config.server.trusted_proxies.iter().enumerate() {
            match cidr.parse::<ipnet::IpNet>() {
                Ok(net) => trusted.push(net),
                Err(_) => match cidr.parse::<std::net::IpAddr>() {
                    Ok(address) => trusted.push(ipnet::IpNet::from(address)),
                    Err(_) => diagnostics.push(
                        Diagnostic::new(
                            format!("server.trusted_proxies[{number}]"),
                            format!("`{cidr}` is not a network or an address"),
                        )
                        .with_hint("like 10.0.0.0/8, 192.0.2.10 or fd00::/8"),
                    ),
                },
            }
        }
        // Routes compile independently (most of it is each path regex's syntax check): a big
        // file compiles on several cores, each route's problems kept with it, in file order.
        let threads = crate::parallel::threads_for(config.routes.len());
        let compiled = crate::parallel::map_in_order(&config.routes, threads, |index, route| {
            let mut problems = Vec::new();
            let compiled = compile_route(
                route,
                &format!("routes[{}]", route_numbers[index]),
                default_upstream,
                &resolver,
                &redaction,
                reuse,
                &mut problems,
            );
            (compiled, problems)
        });
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut conditions = Vec::with_capacity(config.routes.len());
        let mut first_use: HashMap<&str, usize> = HashMap::new();
        for ((route, &number), (compiled, problems)) in
            config.routes.iter().zip(route_numbers).zip(compiled)
        {
            if route.name.trim().is_empty() {
                diagnostics.push(Diagnostic::new(
                    format!("routes[{number}].name"),
                    "is empty",
                ));
            } else if let Some(first) = first_use.insert(&route.name, number) {
                first_use.insert(&route.name, first);
                diagnostics.push(
                    Diagnostic::new(
                        format!("routes[{number}].name"),
                        format!(
                            "duplicate route name `{}`, first used by routes[{first}]",
                            route.name
                        ),
                    )
                    .with_hint("route names must be unique: they label metrics and diffs"),
                );
            }
            diagnostics.extend(problems);
            if let Some((route, condition)) = compiled {
                routes.push(route);
                conditions.push(condition);
            }
        }

        match default_upstream {
            Some(default_upstream) if diagnostics.is_empty() => {
                let indexed: Vec<_> = conditions
                    .iter()
                    .zip(&routes)
                    .map(|(condition, route): (_, &Route)| {
                        (condition, route.matcher.hosts.as_slice())
                    })
                    .collect();
                let index = RouteIndex::build(&indexed);
                let upstream_names = config
                    .upstreams
                    .keys()
                    .filter_map(|name| {
                        upstream_ids
                            .get(name.as_str())
                            .map(|id| (name.clone(), *id))
                    })
                    .collect();
                Ok(RouteTable {
                    generation,
                    sha256,
                    loaded_at: SystemTime::now(),
                    kill_switch: std::sync::atomic::AtomicBool::new(config.kill_switch),
                    tester_override,
                    trusted_proxies: crate::forwarded::TrustedProxies::new(trusted),
                    upstream_names,
                    config,
                    routes,
                    index,
                    upstreams,
                    default_upstream,
                })
            }
            _ => Err(diagnostics),
        }
    }
}

struct UpstreamResolver<'a> {
    ids: &'a HashMap<&'a str, UpstreamId>,
    pools: &'a [Arc<UpstreamPool>],
    config: &'a Config,
    unparsed: &'a BTreeSet<String>,
}

impl UpstreamResolver<'_> {
    fn resolve(
        &self,
        name: &str,
        path: &str,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Option<UpstreamId> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        // Defined but broken, or missing where the parser already said so: reported elsewhere.
        if self.config.upstreams.contains_key(name)
            || self.unparsed.contains(name)
            || name.is_empty()
            || (self.config.upstreams.is_empty() && self.unparsed.is_empty())
        {
            return None;
        }
        let defined: Vec<&str> = self.config.upstreams.keys().map(String::as_str).collect();
        let hint = did_you_mean(name, defined.iter().copied())
            .unwrap_or_else(|| format!("defined upstreams: {}", defined.join(", ")));
        diagnostics
            .push(Diagnostic::new(path, format!("unknown upstream `{name}`")).with_hint(hint));
        None
    }
}

fn compile_route(
    route: &RouteConfig,
    path: &str,
    default_upstream: Option<UpstreamId>,
    resolver: &UpstreamResolver,
    redaction: &Arc<Redaction>,
    reuse: &Reuse<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<(Route, PathCondition)> {
    let before = diagnostics.len();
    let match_path = format!("{path}.match");
    let condition = compile_path_condition(&route.matcher, &match_path, reuse, diagnostics);
    let matcher = compile_matcher(&route.matcher, &match_path, diagnostics);
    reject_route_wide_edits(route, path, diagnostics);

    // Every upstream the route can reach, each with its own edits; the fields of `Route` index
    // into this list.
    let mut targets = Vec::new();
    let mut add = |target: &TargetConfig, field: &str, diagnostics: &mut Vec<Diagnostic>| {
        let compiled = compile_target(target, field, resolver, diagnostics)?;
        targets.push(compiled);
        Some(targets.len() - 1)
    };
    let primary = match &route.upstream {
        Some(target) => add(target, &format!("{path}.upstream"), diagnostics),
        None => None,
    };
    if !route.split.is_empty() && route.upstream.is_some() {
        diagnostics.push(
            Diagnostic::new(
                format!("{path}.split"),
                "use either `upstream` or `split`, not both",
            )
            .with_hint("a split lists every upstream with its weight"),
        );
    }
    let split = compile_split(
        &route.split,
        route.sticky.as_ref(),
        path,
        &mut add,
        diagnostics,
    );
    let fallback = route
        .fallback
        .as_ref()
        .and_then(|target| add(target, &format!("{path}.fallback"), diagnostics));
    let shadow_target = route.shadow.as_ref().and_then(|shadow| {
        add(
            &shadow.upstream,
            &format!("{path}.shadow.upstream"),
            diagnostics,
        )
    });
    // Without an `upstream` or a split the route serves from the default upstream, unedited;
    // without a fallback, the kill switch sends it there too.
    let mut bare_default = || {
        default_upstream.map(|upstream| {
            targets.push(Target {
                upstream,
                edits: RequestEdits::default(),
            });
            targets.len() - 1
        })
    };
    let primary = match (primary, &split) {
        (Some(primary), _) => Some(primary),
        (None, Some(split)) => split.targets().next(),
        (None, None) if route.upstream.is_none() => bare_default(),
        (None, None) => None,
    };
    let legacy = match fallback {
        Some(fallback) => Some(fallback),
        None => bare_default(),
    };

    if route.timeout.is_some_and(|timeout| timeout.is_zero()) {
        diagnostics.push(
            Diagnostic::new(format!("{path}.timeout"), "must be greater than zero")
                .with_hint("leave it out to use server.request_timeout"),
        );
    }
    check_stage(
        route.stage,
        !route.split.is_empty(),
        route.shadow.is_some(),
        route.upstream.is_some(),
        route.retired.as_ref(),
        path,
        diagnostics,
    );
    let response_headers = compile_header_actions(
        &route.response_headers,
        &format!("{path}.response_headers"),
        RESERVED_RESPONSE_HEADERS,
        diagnostics,
    );
    let shadow = route.shadow.as_ref().and_then(|shadow| {
        let target = shadow_target.map(|id| {
            let target = &targets[id];
            (
                resolver.pools[target.upstream].clone(),
                target.edits.clone(),
            )
        });
        compile_shadow(
            shadow,
            &format!("{path}.shadow"),
            target,
            redaction,
            diagnostics,
        )
        .map(Arc::new)
    });

    let record = route.record.as_ref().and_then(|record| {
        crate::corpus::compile_record(record, &format!("{path}.record"), redaction, diagnostics)
            .map(Arc::new)
    });

    // Guards watch what the route sends anywhere but its legacy target.
    let legacy_upstream = legacy.map(|id| targets[id].upstream);
    let new_side = primary
        .into_iter()
        .chain(split.iter().flat_map(|split| split.targets()))
        .any(|id| Some(targets[id].upstream) != legacy_upstream);
    if let Some(guard) = &route.guard {
        crate::guard::check(
            guard,
            &format!("{path}.guard"),
            new_side,
            route.shadow.is_some(),
            diagnostics,
        );
    }

    if diagnostics.len() != before {
        return None;
    }
    let condition = condition?;
    let path_regex = match &condition {
        PathCondition::Regex { regex, .. } => Some(regex.clone()),
        _ => None,
    };
    Some((
        Route {
            name: route.name.clone(),
            matcher,
            path_regex,
            primary: primary?,
            fallback,
            fallback_on: route.fallback_on.clone(),
            timeout: route.timeout,
            stage: route.stage,
            split,
            legacy: legacy?,
            retired: (route.stage == crate::config::Stage::Retired)
                .then(|| RetiredAnswer::from_config(route.retired.as_ref())),
            targets,
            response_headers,
            shadow,
            guard: route
                .guard
                .as_ref()
                .map(|guard| Arc::new(crate::guard::Guard::new(guard))),
            record,
        },
        condition,
    ))
}

/// Compiles one target: its upstream resolved, its edits checked. `path` is the field that
/// names it (`routes[2].fallback`, `routes[0].split[1].upstream`).
fn compile_target(
    target: &TargetConfig,
    path: &str,
    resolver: &UpstreamResolver,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Target> {
    let name_path = if target.has_edits() {
        format!("{path}.name")
    } else {
        path.to_owned()
    };
    let upstream = resolver.resolve(&target.name, &name_path, diagnostics);
    let (path_rewrite, host) = match &target.rewrite {
        Some(rewrite) => compile_rewrite(rewrite, &format!("{path}.rewrite"), diagnostics),
        None => (None, None),
    };
    let headers = compile_header_actions(
        &target.request_headers,
        &format!("{path}.request_headers"),
        RESERVED_REQUEST_HEADERS,
        diagnostics,
    );
    Some(Target {
        upstream: upstream?,
        edits: RequestEdits {
            path: path_rewrite,
            host,
            headers,
        },
    })
}

/// The route-wide `rewrite` and `request_headers` of earlier versions applied to whichever
/// upstream served, so every way back to legacy got the new service's paths. They are refused,
/// with the spelling that replaces them. (The shadow's own old fields are refused with the rest
/// of `shadow:`, by `compile_shadow`.)
fn reject_route_wide_edits(route: &RouteConfig, path: &str, diagnostics: &mut Vec<Diagnostic>) {
    let owner = match (&route.upstream, route.split.first()) {
        (Some(target), _) => Some(("upstream", target.name.as_str())),
        (None, Some(side)) => Some(("each split side's upstream", side.upstream.name.as_str())),
        (None, None) => None,
    };
    for (field, value) in [
        ("rewrite", &route.rewrite),
        ("request_headers", &route.request_headers),
    ] {
        let Some(value) = value else { continue };
        let example = match owner {
            Some(("upstream", name)) => {
                format!("upstream: {{ name: {name}, {field}: {} }}", flow(value))
            }
            Some((owner, name)) => format!(
                "move it into {owner}, e.g. split: [{{ upstream: {{ name: {name}, {field}: {} }}, weight: .. }}, ..]",
                flow(value)
            ),
            None => format!("upstream: {{ name: <upstream>, {field}: {} }}", flow(value)),
        };
        diagnostics.push(
            Diagnostic::new(
                format!("{path}.{field}"),
                format!(
                    "a route-wide `{field}` is no longer accepted: edits belong to the upstream they are for, so legacy keeps its own paths on fallback, kill switch and rollback"
                ),
            )
            .with_hint(example),
        );
    }
}

/// A YAML value on one line (JSON is YAML's flow style), for hints.
fn flow(value: &serde_yaml::Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{..}".to_owned())
}

fn compile_path_condition(
    matcher: &MatchConfig,
    path: &str,
    reuse: &Reuse<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<PathCondition> {
    let given: Vec<&str> = [
        ("path", matcher.path.is_some()),
        ("path_prefix", matcher.path_prefix.is_some()),
        ("path_regex", matcher.path_regex.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if given.len() > 1 {
        diagnostics.push(
            Diagnostic::new(path, format!("{} are exclusive", given.join(" and ")))
                .with_hint("use one path condition per route; split the route in two if needed"),
        );
        return None;
    }
    if let Some(exact) = &matcher.path {
        return check_absolute(exact, &format!("{path}.path"), diagnostics)
            .then(|| PathCondition::Exact(exact.clone()));
    }
    if let Some(prefix) = &matcher.path_prefix {
        let prefix_path = format!("{path}.path_prefix");
        return check_absolute(prefix, &prefix_path, diagnostics)
            .then(|| PathCondition::Prefix(normalize_prefix(prefix)));
    }
    if let Some(pattern) = &matcher.path_regex {
        return match PathCondition::regex(pattern, reuse) {
            Ok(condition) => Some(condition),
            Err(error) => {
                regex_diagnostic(pattern, &error, &format!("{path}.path_regex"), diagnostics);
                None
            }
        };
    }
    Some(PathCondition::Any)
}

fn compile_matcher(
    matcher: &MatchConfig,
    path: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> RequestMatcher {
    let mut compiled = RequestMatcher::default();
    for (number, host) in matcher.host.iter().enumerate() {
        let host_path = if matcher.host.len() == 1 {
            format!("{path}.host")
        } else {
            format!("{path}.host[{number}]")
        };
        match HostPattern::parse(host) {
            Ok(pattern) => compiled.hosts.push(pattern),
            Err(message) => diagnostics.push(Diagnostic::new(host_path, message)),
        }
    }
    compiled.methods = crate::config::methods(&matcher.methods, path, diagnostics);
    for (name, condition) in &matcher.headers {
        let field = format!("{path}.headers.{name}");
        let header = match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => Some(header),
            Err(_) => {
                diagnostics.push(Diagnostic::new(
                    &field,
                    format!("`{name}` is not a valid header name"),
                ));
                None
            }
        };
        let condition = compile_value_match(condition, &field, diagnostics);
        if let (Some(header), Some(condition)) = (header, condition) {
            compiled.headers.push((header, condition));
        }
    }
    for (name, condition) in &matcher.query {
        if let Some(condition) =
            compile_value_match(condition, &format!("{path}.query.{name}"), diagnostics)
        {
            compiled.query.push((name.clone(), condition));
        }
    }
    for (name, condition) in &matcher.cookies {
        if let Some(condition) =
            compile_value_match(condition, &format!("{path}.cookies.{name}"), diagnostics)
        {
            compiled.cookies.push((name.clone(), condition));
        }
    }
    compiled
}

fn compile_value_match(
    condition: &ValueMatchConfig,
    path: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<ValueMatcher> {
    Some(match condition {
        ValueMatchConfig::Exact(value) => ValueMatcher::Exact(value.clone()),
        ValueMatchConfig::Present(present) => ValueMatcher::Present(*present),
        ValueMatchConfig::Regex(pattern) => ValueMatcher::Regex(compile_regex(
            pattern,
            &format!("{path}.regex"),
            diagnostics,
        )?),
    })
}

fn compile_rewrite(
    rewrite: &RewriteConfig,
    path: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> (Option<PathRewrite>, Option<HeaderValue>) {
    let given: Vec<&str> = [
        ("strip_prefix", rewrite.strip_prefix.is_some()),
        ("replace_prefix", rewrite.replace_prefix.is_some()),
        ("regex", rewrite.regex.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    let mut path_rewrite = None;
    if given.len() > 1 {
        diagnostics.push(
            Diagnostic::new(path, format!("{} are exclusive", given.join(" and ")))
                .with_hint("a route rewrites its path one way; a regex can express the rest"),
        );
    } else if let Some(prefix) = &rewrite.strip_prefix {
        if check_absolute(prefix, &format!("{path}.strip_prefix"), diagnostics) {
            path_rewrite = Some(PathRewrite::StripPrefix(normalize_prefix(prefix)));
        }
    } else if let Some(replace) = &rewrite.replace_prefix {
        let from_ok = check_absolute(
            &replace.from,
            &format!("{path}.replace_prefix.from"),
            diagnostics,
        );
        let to_ok = check_absolute(
            &replace.to,
            &format!("{path}.replace_prefix.to"),
            diagnostics,
        );
        if from_ok && to_ok {
            path_rewrite = Some(PathRewrite::replace_prefix(&replace.from, &replace.to));
        }
    } else if let Some(regex) = &rewrite.regex
        && let Some(compiled) = compile_regex(
            &regex.pattern,
            &format!("{path}.regex.pattern"),
            diagnostics,
        )
    {
        path_rewrite = Some(PathRewrite::Regex {
            regex: compiled,
            replacement: regex.replacement.clone(),
        });
    }

    let host_rewrite = rewrite.host.as_ref().and_then(|host| {
        let valid = !host.is_empty()
            && !host.contains('@')
            && http::uri::Authority::try_from(host.as_str()).is_ok();
        match HeaderValue::from_str(host) {
            Ok(value) if valid => Some(value),
            _ => {
                diagnostics.push(
                    Diagnostic::new(
                        format!("{path}.host"),
                        format!("`{host}` is not a valid host"),
                    )
                    .with_hint("like orders.internal or orders.internal:8080"),
                );
                None
            }
        }
    });
    (path_rewrite, host_rewrite)
}

fn compile_header_actions(
    actions: &HeaderActionsConfig,
    path: &str,
    reserved: &[&str],
    diagnostics: &mut Vec<Diagnostic>,
) -> HeaderActions {
    let mut compiled = HeaderActions::default();
    let header_name = |name: &str, field: String, diagnostics: &mut Vec<Diagnostic>| {
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            diagnostics.push(Diagnostic::new(
                field,
                format!("`{name}` is not a valid header name"),
            ));
            return None;
        };
        if reserved.contains(&header.as_str()) {
            let hint = if header == http::header::HOST {
                "use rewrite.host to change the Host header"
            } else {
                "the proxy manages framing and connection headers itself"
            };
            diagnostics.push(
                Diagnostic::new(field, format!("`{name}` cannot be edited by a route"))
                    .with_hint(hint),
            );
            return None;
        }
        Some(header)
    };
    for (number, name) in actions.remove.iter().enumerate() {
        if let Some(header) = header_name(name, format!("{path}.remove[{number}]"), diagnostics) {
            compiled.remove.push(header);
        }
    }
    for (kind, entries, out) in [
        ("set", &actions.set, &mut compiled.set),
        ("add", &actions.add, &mut compiled.add),
    ] {
        for (name, value) in entries {
            let field = format!("{path}.{kind}.{name}");
            let header = header_name(name, field.clone(), diagnostics);
            let value = match HeaderValue::from_str(value) {
                Ok(value) => Some(value),
                Err(_) => {
                    diagnostics.push(Diagnostic::new(
                        field,
                        "the value has characters a header cannot carry",
                    ));
                    None
                }
            };
            if let (Some(header), Some(value)) = (header, value) {
                out.push((header, value));
            }
        }
    }
    compiled
}

fn compile_regex(pattern: &str, path: &str, diagnostics: &mut Vec<Diagnostic>) -> Option<Regex> {
    match Regex::new(pattern) {
        Ok(regex) => Some(regex),
        Err(error) => {
            regex_diagnostic(pattern, &error, path, diagnostics);
            None
        }
    }
}

fn regex_diagnostic(
    pattern: &str,
    error: &regex::Error,
    path: &str,
    diagnostics: &mut Vec<Diagnostic>,
) {
    diagnostics.push(
        Diagnostic::new(
            path,
            format!("invalid regex `{pattern}`: {}", regex_problem(error)),
        )
        .with_hint(
            "regex syntax: https://docs.rs/regex/latest/regex/#syntax (single-quote it in YAML)",
        ),
    );
}

/// regex errors span several lines (pattern, caret, `error: ...`); keep the `error:` part.
fn regex_problem(error: &regex::Error) -> String {
    let message = error.to_string();
    message
        .lines()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .unwrap_or(message.lines().last().unwrap_or_default())
        .to_owned()
}

fn check_absolute(value: &str, path: &str, diagnostics: &mut Vec<Diagnostic>) -> bool {
    if value.starts_with('/') {
        return true;
    }
    diagnostics.push(
        Diagnostic::new(path, format!("`{value}` must start with `/`"))
            .with_hint(format!("write /{value}")),
    );
    false
}

/// `/api/` -> `/api`, so prefixes compare on segment boundaries; `/` stays `/`.
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    //! The compiler in-process: a routes.yaml text in, a table or located diagnostics out.

    use pingora_http::RequestHeader;

    use super::*;
    use crate::config::{SourceFile, parse};
    use crate::routing::TargetId;

    const UPSTREAMS: &str = "upstreams:
  legacy: { backends: [127.0.0.1:9001] }
  new: { backends: [127.0.0.1:9002] }
default_upstream: legacy
";

    fn loaded(yaml: &str) -> LoadedConfig {
        parse(SourceFile::new("routes.yaml", format!("{UPSTREAMS}{yaml}")))
            .unwrap_or_else(|error| panic!("does not parse: {error}"))
    }

    /// Compiled without resolving backend names, reusing `reuse`'s regexes.
    fn syntax_only(
        loaded: LoadedConfig,
        generation: u64,
        reuse: &Reuse<'_>,
    ) -> Result<RouteTable, ConfigError> {
        RouteTable::compile_resolving(loaded, generation, AddressResolution::SyntaxOnly, reuse)
    }

    fn table(yaml: &str) -> RouteTable {
        syntax_only(loaded(yaml), 1, &Reuse::none())
            .unwrap_or_else(|error| panic!("does not compile: {error}"))
    }

    #[test]
    fn a_reload_keeps_the_built_regex_of_an_unchanged_pattern_and_checks_a_changed_one_afresh() {
        let routes = |second: &str| {
            format!(
                "routes:\n  - {{ name: a, match: {{ path_regex: '^/a/[0-9]+$' }}, upstream: new }}\n  - {{ name: b, match: {{ path_regex: '{second}' }}, upstream: new }}\n"
            )
        };
        let serving = table(&routes("^/b/[0-9]+$"));
        assert!(serving.routes.iter().all(|route| {
            let regex = route.path_regex.as_ref().expect("a regex route");
            regex.is_match(&format!("/{}/1", route.name))
        }));
        let next = syntax_only(
            loaded(&routes("(?i)^/B/[0-9]+$")),
            2,
            &serving.regex_reuse(),
        )
        .unwrap();
        let [a, b] =
            [&next.routes[0], &next.routes[1]].map(|route| route.path_regex.as_ref().unwrap());
        assert!(a.is_built(), "taken from the serving table, not rebuilt");
        assert!(
            !b.is_built(),
            "a new pattern is checked now and built later"
        );
        assert_eq!(b.as_str(), "(?i)^/B/[0-9]+$");
        // Reuse changes nothing a request sees: the same routes match the same paths.
        let path = |p: &str| {
            let request = pingora_http::RequestHeader::build("GET", p.as_bytes(), None).unwrap();
            next.find(&request)
                .map(|number| next.routes[number].name.clone())
        };
        assert_eq!(path("/a/7").as_deref(), Some("a"));
        assert_eq!(path("/b/7").as_deref(), Some("b"));
        assert_eq!(path("/a/x"), None);
    }

    /// Every problem as `path: message @line`, in the order reported.
    fn problems(yaml: &str) -> Vec<String> {
        let error = match parse(SourceFile::new("routes.yaml", format!("{UPSTREAMS}{yaml}"))) {
            Err(error) => error,
            Ok(loaded) => {
                syntax_only(loaded, 1, &Reuse::none()).expect_err("the config should be refused")
            }
        };
        error
            .diagnostics()
            .iter()
            .map(|d| {
                let line = d.location.map_or(0, |l| l.line);
                format!("{}: {} @{line}", d.path, d.message)
            })
            .collect()
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    /// The name of the route that takes the request, or `default`.
    fn routed(table: &RouteTable, request: &RequestHeader) -> String {
        table
            .find(request)
            .map_or("default".into(), |at| table.routes()[at].name.clone())
    }

    fn upstream_of(table: &RouteTable, route: &Route, target: TargetId) -> String {
        table
            .upstream(route.target(target).upstream)
            .name()
            .to_owned()
    }

    /// A file big enough to be compiled on several threads: alternating prefixes and regexes.
    fn big_file(routes: usize, route: impl Fn(usize) -> Option<String>) -> String {
        let mut yaml = String::from("routes:\n");
        for i in 0..routes {
            yaml.push_str(&route(i).unwrap_or_else(|| {
                if i % 2 == 0 {
                    format!("  - {{ name: r{i}, match: {{ path_prefix: /svc{i} }}, upstream: new }}\n")
                } else {
                    format!(
                        "  - {{ name: r{i}, match: {{ path_regex: '^/svc{i}/[0-9]+$' }}, upstream: new }}\n"
                    )
                }
            }));
        }
        yaml
    }

    /// A file this big really is compiled on several threads, where the machine has them.
    fn assert_split(routes: usize) {
        if std::thread::available_parallelism().map_or(1, usize::from) > 1 {
            assert!(crate::parallel::threads_for(routes) > 1);
        }
    }

    #[test]
    fn a_big_file_compiled_on_several_threads_routes_every_request_as_file_order_says() {
        let routes = 4 * crate::parallel::MIN_ITEMS_PER_THREAD + 3;
        assert_split(routes);
        let (early_twin, late_twin, everything) = (1_000, 3_500, routes - 1);
        let table = table(&big_file(routes, |i| {
            // Overlapping routes in other runs of the split: the earlier must still win.
            if i == late_twin {
                Some(format!(
                    "  - {{ name: r{i}, match: {{ path_prefix: /svc{early_twin} }}, upstream: legacy }}\n"
                ))
            } else if i == everything {
                Some(
                    "  - { name: everything, match: { path_prefix: / }, upstream: legacy }\n"
                        .into(),
                )
            } else {
                None
            }
        }));
        assert_eq!(table.routes().len(), routes);
        let get = |path: &str| routed(&table, &request("GET", path, &[]));
        for i in (0..routes - 1).step_by(97).chain([routes - 3, routes - 2]) {
            if i == late_twin {
                continue;
            }
            let path = if i % 2 == 0 {
                format!("/svc{i}/x")
            } else {
                format!("/svc{i}/42")
            };
            assert_eq!(get(&path), format!("r{i}"), "{path}");
        }
        assert_eq!(
            get(&format!("/svc{early_twin}/x")),
            format!("r{early_twin}")
        );
        assert_eq!(get("/nowhere"), "everything");
    }

    #[test]
    fn a_replaced_small_table_is_freed_at_once_and_a_big_one_still_freed_in_the_background() {
        let shadowed = |routes: usize| {
            table(&big_file(routes, |i| {
                (i == 0).then(|| {
                    "  - { name: r0, match: { path_prefix: /svc0 }, upstream: legacy, shadow: { upstream: new } }\n".into()
                })
            }))
        };
        // A small table is freed where it is dropped.
        let small = shadowed(10);
        let rule = Arc::downgrade(small.routes()[0].shadow.as_ref().unwrap());
        drop(small);
        assert!(rule.upgrade().is_none());
        // A big one on a thread of its own: its routes are freed all the same.
        let big = shadowed(crate::routing::FREE_IN_BACKGROUND_FROM);
        let rule = Arc::downgrade(big.routes()[0].shadow.as_ref().unwrap());
        drop(big);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while rule.upgrade().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the big table's routes were never freed"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_big_file_compiled_on_several_threads_reports_every_problem_of_every_route_once() {
        // (The order within the compiler is `parallel::map_in_order`'s, tested there; the report
        // is sorted by line anyway.)
        let routes = 4 * crate::parallel::MIN_ITEMS_PER_THREAD;
        assert_split(routes);
        let yaml = big_file(routes, |i| match i {
            5 | 1_505 | 3_999 => Some(format!(
                "  - {{ name: r{i}, match: {{ path_regex: '^/svc{i}/(' }}, upstream: new }}\n"
            )),
            2_222 => Some("  - { name: r7, match: { path_prefix: /dup }, upstream: new }\n".into()),
            // Refused while reading the file, before the compiler sees the route.
            777 | 2_999 => Some(format!(
                "  - {{ name: r{i}, match: {{ path_prefix: /x }}, upstreams: new }}\n"
            )),
            3_001 => Some(format!(
                "  - {{ name: r{i}, match: {{ path_prefix: /x }}, upstream: nowhere }}\n"
            )),
            _ => None,
        });
        let found: Vec<String> = problems(&yaml)
            .into_iter()
            .map(|problem| problem.split(':').next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            found,
            [
                "routes[5].match.path_regex",
                "routes[777].upstreams",
                "routes[1505].match.path_regex",
                "routes[2222].name",
                "routes[2999].upstreams",
                "routes[3001].upstream",
                "routes[3999].match.path_regex",
            ]
        );
    }

    #[test]
    fn the_first_matching_route_in_file_order_wins() {
        let table = table(
            "routes:
  - { name: one-order, match: { path: /api/orders/1 }, upstream: new }
  - { name: orders, match: { path_prefix: /api/orders }, upstream: new }
  - { name: everything, match: { path_prefix: / }, upstream: legacy }
",
        );
        let get = |path| routed(&table, &request("GET", path, &[]));
        assert_eq!(get("/api/orders/1"), "one-order");
        assert_eq!(get("/api/orders/2"), "orders");
        assert_eq!(get("/api/orders"), "orders");
        assert_eq!(get("/api/ordersX"), "everything");
        assert_eq!(get("/other"), "everything");
    }

    #[test]
    fn a_prefix_matches_whole_segments_only() {
        let table = table(
            "routes:\n  - { name: r, match: { path_prefix: /api/orders/ }, upstream: new }\n",
        );
        let get = |path| routed(&table, &request("GET", path, &[]));
        assert_eq!(get("/api/orders"), "r");
        assert_eq!(get("/api/orders/7"), "r");
        assert_eq!(get("/api/ordersX"), "default");
    }

    #[test]
    fn methods_headers_and_regexes_must_all_hold() {
        let table = table(
            r#"routes:
  - name: r
    match:
      path_regex: '^/v[0-9]+/items$'
      methods: [post]
      headers: { x-beta: "1" }
    upstream: new
"#,
        );
        let beta = [("x-beta", "1")];
        assert_eq!(routed(&table, &request("POST", "/v2/items", &beta)), "r");
        assert_eq!(
            routed(&table, &request("GET", "/v2/items", &beta)),
            "default"
        );
        assert_eq!(
            routed(&table, &request("POST", "/v2/items", &[])),
            "default"
        );
        assert_eq!(
            routed(&table, &request("POST", "/vx/items", &beta)),
            "default"
        );
        assert_eq!(
            routed(&table, &request("POST", "/v2/items/x", &beta)),
            "default"
        );
    }

    #[test]
    fn hosts_match_without_case_and_with_a_leading_wildcard() {
        let table = table(
            "routes:
  - { name: api, match: { host: API.example.com }, upstream: new }
  - { name: shops, match: { host: '*.shops.example' }, upstream: new }
",
        );
        let host = |host| routed(&table, &request("GET", "/", &[("host", host)]));
        assert_eq!(host("api.example.com"), "api");
        assert_eq!(host("Api.Example.Com:8080"), "api");
        assert_eq!(host("a.shops.example"), "shops");
        assert_eq!(host("shops.example"), "default");
        assert_eq!(host("other.example"), "default");
    }

    #[test]
    fn a_split_sends_each_side_its_weight_and_a_sticky_key_always_the_same_side() {
        let table = table(
            "routes:
  - name: r
    stage: canary
    match: { path_prefix: / }
    split:
      - { upstream: new, weight: 20 }
      - { upstream: legacy, weight: 80 }
    sticky: { header: x-user }
",
        );
        let route = &table.routes()[0];
        let split = route.split.as_ref().expect("a split");
        let mut to_new = 0;
        for user in 0..10_000 {
            let user = user.to_string();
            let request = request("GET", "/", &[("x-user", user.as_str())]);
            let side = split.pick(&request, None);
            // The same key lands on the same side every time.
            assert_eq!(split.pick(&request, None), side);
            if upstream_of(&table, route, side) == "new" {
                to_new += 1;
            }
        }
        // 20 % of 10,000 keys, within a few standard deviations (40).
        assert!((1850..=2150).contains(&to_new), "{to_new} of 10000 to new");
    }

    #[test]
    fn a_split_without_a_key_spreads_requests_by_weight_at_random() {
        let table = table(
            "routes:
  - name: r
    stage: canary
    match: { path_prefix: / }
    split: [{ upstream: new, weight: 50 }, { upstream: legacy, weight: 50 }]
",
        );
        let route = &table.routes()[0];
        let split = route.split.as_ref().expect("a split");
        let request = request("GET", "/", &[]);
        let to_new = (0..10_000)
            .filter(|_| upstream_of(&table, route, split.pick(&request, None)) == "new")
            .count();
        assert!((4800..=5200).contains(&to_new), "{to_new} of 10000 to new");
    }

    #[test]
    fn split_weights_that_do_not_sum_to_100_are_refused_at_their_line() {
        let found = problems(
            "routes:
  - name: r
    stage: canary
    match: { path_prefix: / }
    split: [{ upstream: new, weight: 30 }, { upstream: legacy, weight: 30 }]
",
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("routes[0].split") && p.ends_with("@9")),
            "{found:?}"
        );
    }

    #[test]
    fn a_target_rewrite_edits_the_path_for_its_upstream_only() {
        let table = table(
            "routes:
  - name: r
    match: { path_prefix: /api/orders }
    upstream: { name: new, rewrite: { strip_prefix: /api } }
    fallback: legacy
",
        );
        let route = &table.routes()[0];
        let mut primary = request("GET", "/api/orders/7?x=1", &[]);
        route
            .target(route.primary)
            .edits
            .apply(&mut primary)
            .unwrap();
        assert_eq!(primary.uri.to_string(), "/orders/7?x=1");
        let mut fallback = request("GET", "/api/orders/7?x=1", &[]);
        let legacy = route.fallback.expect("a fallback");
        route.target(legacy).edits.apply(&mut fallback).unwrap();
        assert_eq!(fallback.uri.to_string(), "/api/orders/7?x=1");
    }

    #[test]
    fn a_regex_rewrite_uses_its_capture_groups() {
        let table = table(
            r#"routes:
  - name: r
    match: { path_prefix: /users }
    upstream:
      name: new
      rewrite: { regex: { pattern: '^/users/([0-9]+)$', replacement: '/v2/people/$1' } }
"#,
        );
        let route = &table.routes()[0];
        let mut request = request("GET", "/users/42", &[]);
        route
            .target(route.primary)
            .edits
            .apply(&mut request)
            .unwrap();
        assert_eq!(request.uri.path(), "/v2/people/42");
    }

    #[test]
    fn request_header_edits_set_add_and_remove() {
        let table = table(
            r#"routes:
  - name: r
    match: { path_prefix: / }
    upstream:
      name: new
      request_headers: { set: { x-set: "1" }, add: { x-add: "2" }, remove: [x-gone] }
"#,
        );
        let route = &table.routes()[0];
        let mut request = request(
            "GET",
            "/",
            &[("x-gone", "a"), ("x-set", "old"), ("x-add", "0")],
        );
        route
            .target(route.primary)
            .edits
            .apply(&mut request)
            .unwrap();
        assert!(request.headers.get("x-gone").is_none());
        assert_eq!(request.headers.get_all("x-set").iter().count(), 1);
        assert_eq!(request.headers["x-set"], "1");
        assert_eq!(request.headers.get_all("x-add").iter().count(), 2);
    }

    #[test]
    fn an_unknown_upstream_is_named_with_a_suggestion_at_its_line() {
        let found =
            problems("routes:\n  - { name: r, match: { path_prefix: / }, upstream: nwe }\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("routes[0].upstream"), "{found:?}");
        assert!(found[0].contains("unknown upstream `nwe`"), "{found:?}");
        assert!(found[0].ends_with("@6"), "{found:?}");
    }

    #[test]
    fn a_broken_regex_is_reported_at_its_field() {
        let found = problems(
            "routes:\n  - name: r\n    match: { path_regex: '^/(a' }\n    upstream: new\n",
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("routes[0].match.path_regex") && p.ends_with("@7")),
            "{found:?}"
        );
    }

    #[test]
    fn duplicate_route_names_are_refused_and_the_first_one_named() {
        let found = problems(
            "routes:
  - { name: same, match: { path_prefix: /a }, upstream: new }
  - { name: same, match: { path_prefix: /b }, upstream: new }
",
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("routes[1].name") && p.contains("routes[0]")),
            "{found:?}"
        );
    }

    #[test]
    fn every_problem_of_a_file_is_reported_in_one_pass() {
        let found = problems(
            "routes:
  - { name: a, match: { path_prefix: / }, upstream: nope }
  - { name: b, match: { path_regex: '(' }, upstream: new }
  - { name: c, match: { path_prefix: / }, upstream: new, timeout: 0s }
",
        );
        assert!(found.len() >= 3, "{found:?}");
        for route in ["routes[0]", "routes[1]", "routes[2]"] {
            assert!(
                found.iter().any(|p| p.starts_with(route)),
                "{route}: {found:?}"
            );
        }
    }

    #[test]
    fn editing_a_reserved_header_is_refused() {
        let found = problems(
            "routes:
  - name: r
    match: { path_prefix: / }
    upstream: { name: new, request_headers: { set: { content-length: '1' } } }
",
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("routes[0].upstream.request_headers")),
            "{found:?}"
        );
    }

    #[test]
    fn server_counts_of_zero_are_refused_by_name() {
        let found = problems("server: { shadow_max_inflight: 0 }\nroutes: []\n");
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("server.shadow_max_inflight: must be at least 1")),
            "{found:?}"
        );
    }

    #[test]
    fn a_shadow_to_the_routes_own_upstream_is_compiled_with_its_sampling() {
        let table = table(
            "routes:
  - name: r
    stage: shadow
    match: { path_prefix: / }
    upstream: legacy
    shadow: { upstream: new, sample: 0.25 }
",
        );
        let route = &table.routes()[0];
        let shadow = route.shadow.as_ref().expect("a shadow rule");
        assert_eq!(shadow.upstream_name(), "new");
    }

    #[test]
    fn shadow_settings_out_of_range_are_all_reported_under_the_shadow() {
        let found = problems(
            "routes:
  - name: r
    stage: shadow
    match: { path_prefix: / }
    upstream: legacy
    shadow:
      upstream: new
      sample: 1.5
      methods: ['NOT A METHOD']
      max_inflight: 0
      sample_key: { header: x-a, cookie: b }
",
        );
        for field in ["sample", "methods[0]", "max_inflight", "sample_key"] {
            let path = format!("routes[0].shadow.{field}");
            assert!(
                found.iter().any(|p| p.starts_with(&path)),
                "{path}: {found:?}"
            );
        }
    }
}
