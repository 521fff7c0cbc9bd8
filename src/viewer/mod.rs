//! The diff viewer on the admin listener: a read-only web UI at `/ui` and the JSON endpoints
//! it reads, which scripts can call too.
//!
//! | path                | answer                                                                |
//! |---------------------|-----------------------------------------------------------------------|
//! | `/ui`, `/ui/*`      | the page, its script and style, embedded in the binary                |
//! | `/diffs`            | a page of stored exchanges, newest first, with ids; `?route&verdict&since&generation&limit&before` |
//! | `/diffs/summary`    | per route and direction: verdict counts, a trend, the differing paths ranked, suggested ignore rules, and each route's traffic per upstream; `?route&since&generation` |
//! | `/diffs/{id}`       | one exchange laid out side by side ([`report::exchange::ExchangeView`])       |
//!
//! This module owns those answers and the page's assets. It does not own who may ask: the
//! admin listener ([`crate::admin`]) applies its cross-site checks to all of them and its
//! bearer token to everything but the assets (a browser cannot send a header when it navigates;
//! the page holds no data, asks for the token once, keeps it in the tab's `sessionStorage` and
//! sends it as `Authorization` on every data request, never in a URL). It does not rank paths
//! or suggest ignore rules either: that is [`crate::report`]'s, reused as is.
//!
//! Every view reads either store, SQLite or a fleet's shared Postgres ([`crate::store`]
//! dispatches); with Postgres, row ids are the database's and the counts come from its
//! per-minute aggregates (times in the overview are then by the minute).
//!
//! The page loads nothing from anywhere else: its Content-Security-Policy allows only its own
//! origin (`default-src 'self'`, no inline script, `frame-ancestors 'none'`), so it works
//! offline and a stored body can never run script in it (bodies are inserted as text).

pub mod query;

use http::{Response, StatusCode, header};
use serde_json::{Value, json};

use crate::metrics::Metrics;
use crate::report::{self, ReportOptions, RouteSummary};
use crate::routing::{RouteTable, SharedRouteTable};
use crate::store::summary::GroupCounts;
use crate::store::{Filter, StoreError, StoreLocation};
use query::{DiffsQuery, QueryError};

/// The policy of every page asset: nothing but this origin, no inline script, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../../assets/ui/index.html");
const APP_JS: &str = include_str!("../../assets/ui/app.js");
const APP_CSS: &str = include_str!("../../assets/ui/app.css");

/// Time buckets of an overview's trend.
const TREND_BUCKETS: usize = 24;

/// Whether `path` is one of the page's assets, which hold no data and need no token.
pub fn is_asset(path: &str) -> bool {
    asset(path).is_some()
}

fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/ui" | "/ui/" => Some((INDEX_HTML, "text/html; charset=utf-8")),
        "/ui/app.js" => Some((APP_JS, "text/javascript; charset=utf-8")),
        "/ui/app.css" => Some((APP_CSS, "text/css; charset=utf-8")),
        _ => None,
    }
}

/// Whether this module answers `path` (a GET or HEAD of it).
pub fn serves(path: &str) -> bool {
    is_asset(path) || path == "/diffs" || path.starts_with("/diffs/")
}

/// Answers a GET of `path` (one that [`serves`]) with `query` (without the `?`).
pub async fn respond(
    routes: &SharedRouteTable,
    metrics: &Metrics,
    path: &str,
    query: &str,
) -> Response<Vec<u8>> {
    if let Some((body, content_type)) = asset(path) {
        return page(body, content_type);
    }
    let table = routes.load_full();
    let now = crate::store::now_ms();
    let location = table.config().server.diff_store.clone();
    let password_file = table.config().server.diff_store_password_file.clone();
    // Where the store is to be read, or `None` while there is none yet (a SQLite file no
    // proxy has written; a Postgres database gets its schema on the first write).
    let store = move || -> Result<Option<StoreLocation>, StoreError> {
        if let StoreLocation::Sqlite(path) = &location
            && !path.exists()
        {
            return Ok(None);
        }
        crate::store::with_password(location, password_file.as_deref()).map(Some)
    };
    match path {
        "/diffs" => {
            let parsed = match DiffsQuery::parse(query, now, "/diffs", query::LIST) {
                Ok(parsed) => parsed,
                Err(error) => return refused(error),
            };
            blocking(move || {
                let empty = json!({ "diffs": [], "next_before": null });
                let Some(store) = store()? else {
                    return Ok(empty);
                };
                let page =
                    match crate::store::page(&store, &parsed.filter, parsed.limit, parsed.before) {
                        Err(StoreError::NoStore { .. }) => return Ok(empty),
                        page => page?,
                    };
                let next_before = (page.len() == parsed.limit)
                    .then(|| page.last().map(|e| e.id))
                    .flatten();
                Ok(json!({ "diffs": page, "next_before": next_before }))
            })
            .await
        }
        "/diffs/summary" => {
            let parsed = match DiffsQuery::parse(query, now, "/diffs/summary", query::SUMMARY) {
                Ok(parsed) => parsed,
                Err(error) => return refused(error),
            };
            let traffic = traffic(&table, metrics);
            let live = live_routes(&table);
            blocking(move || {
                let mut document = match store()? {
                    Some(store) => overview(&store, &parsed.filter, now)?,
                    None => empty_overview(now),
                };
                document["traffic"] = traffic;
                document["live"] = live;
                Ok(document)
            })
            .await
        }
        _ => {
            let text = path.trim_start_matches("/diffs/");
            let Some(id) = text.parse::<i64>().ok().filter(|id| *id > 0) else {
                return json_response(
                    StatusCode::NOT_FOUND,
                    &json!({
                        "error": format!("no such diff endpoint `{path}`: /diffs/summary, or /diffs/ID with a numeric exchange id"),
                    }),
                );
            };
            if !query.is_empty() {
                return refused(QueryError {
                    parameter: query.split(['=', '&']).next().unwrap_or(query).to_owned(),
                    message: format!("/diffs/{id} takes no parameters"),
                });
            }
            let found = tokio::task::spawn_blocking(move || {
                let Some(store) = store()? else {
                    return Ok(None);
                };
                match crate::store::exchange(&store, id) {
                    Err(StoreError::NoStore { .. }) => Ok(None),
                    found => found.map(|found| found.map(report::exchange::ExchangeView::new)),
                }
            })
            .await;
            match found {
                Ok(Ok(Some(view))) => json_response(
                    StatusCode::OK,
                    &serde_json::to_value(view).expect("views serialize"),
                ),
                Ok(Ok(None)) => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({ "error": format!("no exchange {id} in the store (retention may have removed it)") }),
                ),
                Ok(Err(error)) => failed(error.to_string()),
                Err(error) => failed(format!("diff query failed: {error}")),
            }
        }
    }
}

/// The overview of a store that holds nothing yet.
fn empty_overview(now_ms: i64) -> Value {
    json!({ "routes": [], "from_ms": now_ms, "bucket_ms": 1, "buckets": 0 })
}

/// The overview of what `filter` selects: [`summary::count`]'s groups; for one route, each
/// with the report's ranking of its differing paths and its suggested ignore rules. A Postgres
/// `store` must carry its password ([`crate::store::with_password`]).
pub fn overview(store: &StoreLocation, filter: &Filter, now_ms: i64) -> Result<Value, StoreError> {
    if let StoreLocation::Sqlite(path) = store
        && !path.exists()
    {
        return Ok(empty_overview(now_ms));
    }
    let counts = match crate::store::count(store, filter, TREND_BUCKETS) {
        Err(StoreError::NoStore { .. }) => return Ok(empty_overview(now_ms)),
        counts => counts?,
    };
    // Ranking paths reads every differing row: only for one route, not for the overview.
    if filter.route.is_none() {
        let routes: Vec<Value> = counts
            .groups
            .iter()
            .map(|group| route_document(group, None))
            .collect();
        return Ok(json!({
            "from_ms": counts.from_ms,
            "bucket_ms": counts.bucket_ms,
            "buckets": counts.buckets,
            "max_diff_rate": report::DiffRate::default(),
            "routes": routes,
        }));
    }
    let report = report::build(&ReportOptions {
        databases: vec![store.clone()],
        replica: None,
        route: filter.route.clone(),
        since_ms: (filter.since_ms > 0).then(|| now_ms.saturating_sub(filter.since_ms)),
        generation: filter.generation,
        max_diff_rate: report::DiffRate::default(),
        min_samples: 1,
        listing: report::Listing::default(),
    })?;
    // The report names an example by request id; the viewer links to it by row id.
    let examples: Vec<&str> = report
        .routes
        .iter()
        .flat_map(|r| r.paths.iter().chain(&r.noisy_paths))
        .map(|p| p.example.request_id.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let example_ids: std::collections::HashMap<String, i64> =
        crate::store::ids_of_requests(store, &examples)?
            .into_iter()
            .collect();
    let routes: Vec<Value> = counts
        .groups
        .iter()
        .map(|group| {
            let detail = report.routes.iter().find(|r| {
                r.route == group.route
                    && r.primary == group.primary_upstream
                    && r.candidate == group.candidate_upstream
            });
            let mut document = route_document(group, detail);
            let ids: serde_json::Map<String, Value> = detail
                .into_iter()
                .flat_map(|d| d.paths.iter().chain(&d.noisy_paths))
                .filter_map(|p| {
                    let id = example_ids.get(&p.example.request_id)?;
                    Some((p.example.request_id.clone(), json!(id)))
                })
                .collect();
            document["example_ids"] = Value::Object(ids);
            document
        })
        .collect();
    Ok(json!({
        "from_ms": counts.from_ms,
        "bucket_ms": counts.bucket_ms,
        "buckets": counts.buckets,
        "max_diff_rate": report.max_diff_rate,
        "routes": routes,
    }))
}

fn route_document(group: &GroupCounts, detail: Option<&RouteSummary>) -> Value {
    let differing = group.mismatches + group.shadow_errors;
    let share = |count: u64| {
        if group.exchanges == 0 {
            0.0
        } else {
            count as f64 / group.exchanges as f64
        }
    };
    json!({
        "route": group.route,
        "direction": direction(group),
        "primary": group.primary_upstream,
        "candidate": group.candidate_upstream,
        "exchanges": group.exchanges,
        "matches": group.matches,
        "mismatches": group.mismatches,
        "noise": group.noise,
        "shadow_errors": group.shadow_errors,
        "mismatch_rate": share(differing),
        "noise_rate": share(group.noise),
        "generations": group.generations,
        "stages": group.stages,
        "first_ms": group.first_ms,
        "last_ms": group.last_ms,
        "trend": group.trend,
        // The report's verdict; the same rule (default rate, at least one exchange) without it.
        "passed": detail.map_or_else(
            || group.exchanges > 0
                && !report::DiffRate::default().exceeded_by(differing, group.exchanges),
            |d| d.passed,
        ),
        "paths": detail.map(|d| d.paths.as_slice()).unwrap_or_default(),
        "noisy_paths": detail.map(|d| d.noisy_paths.as_slice()).unwrap_or_default(),
        "hidden": detail.map(|d| d.hidden),
        "suggestion": detail.and_then(|d| report::suggestion_yaml(&group.route, d)),
        "mismatches_with_suggestion": detail.and_then(|d| d.mismatches_with_suggestion),
    })
}

/// `legacy → orders-v2`, as the report writes it.
pub fn direction(group: &GroupCounts) -> String {
    match (&group.primary_upstream, &group.candidate_upstream) {
        (Some(primary), Some(candidate)) => format!("{primary} → {candidate}"),
        _ => "direction not recorded".to_owned(),
    }
}

/// Each route's requests per upstream since the process started, from
/// `strangler_requests_total`: how much of its traffic the new service already serves.
fn traffic(table: &RouteTable, metrics: &Metrics) -> Value {
    let mut per_route: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> =
        Default::default();
    for ((route, upstream), requests) in metrics.requests_by_route_and_upstream() {
        *per_route
            .entry(route)
            .or_default()
            .entry(upstream)
            .or_default() += requests;
    }
    let legacy_of = |route: &str| {
        table.routes().iter().find(|r| r.name == route).map(|r| {
            table.upstreams()[r.target(r.legacy).upstream]
                .name()
                .to_owned()
        })
    };
    let rows: Vec<Value> = per_route
        .into_iter()
        .map(|(route, upstreams)| {
            let total: u64 = upstreams.values().sum();
            let legacy = legacy_of(&route);
            let on_legacy = legacy
                .as_ref()
                .and_then(|name| upstreams.get(name))
                .copied()
                .unwrap_or(0);
            json!({
                "route": route,
                "legacy": legacy,
                "requests": total,
                "new_share": if total == 0 { 0.0 } else { (total - on_legacy) as f64 / total as f64 },
                "upstreams": upstreams,
            })
        })
        .collect();
    Value::Array(rows)
}

/// Each live route's stage, and the generation now serving.
fn live_routes(table: &RouteTable) -> Value {
    let stages: serde_json::Map<String, Value> = table
        .routes()
        .iter()
        .map(|route| (route.name.clone(), json!(route.stage.as_str())))
        .collect();
    json!({ "generation": table.generation(), "stages": stages })
}

async fn blocking(
    work: impl FnOnce() -> Result<Value, StoreError> + Send + 'static,
) -> Response<Vec<u8>> {
    // SQLite reads block; keep them off the admin's I/O thread.
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(document)) => json_response(StatusCode::OK, &document),
        Ok(Err(error)) => failed(error.to_string()),
        Err(error) => failed(format!("diff query failed: {error}")),
    }
}

fn refused(error: QueryError) -> Response<Vec<u8>> {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({ "error": error.message, "parameter": error.parameter }),
    )
}

fn failed(message: String) -> Response<Vec<u8>> {
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({ "error": message }),
    )
}

fn page(body: &'static str, content_type: &'static str) -> Response<Vec<u8>> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header(header::REFERRER_POLICY, "no-referrer")
        .body(body.as_bytes().to_vec())
        .expect("static response parts are valid")
}

fn json_response(status: StatusCode, body: &Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(body).expect("JSON values always serialize");
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(body)
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pages_assets_are_assets() {
        for path in ["/ui", "/ui/", "/ui/app.js", "/ui/app.css"] {
            assert!(is_asset(path) && serves(path), "{path}");
        }
        for path in ["/ui/../diffs", "/ui/x", "/uix", "/diffs"] {
            assert!(!is_asset(path), "{path}");
        }
        assert!(serves("/diffs/summary") && serves("/diffs/7") && !serves("/diffsx"));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_runs_no_inline_script() {
        for (name, text) in [("index", INDEX_HTML), ("js", APP_JS), ("css", APP_CSS)] {
            // The SVG namespace is a name, not a request.
            let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
            for banned in [
                "http://",
                "https://",
                "//cdn",
                "@import",
                "innerHTML",
                "eval(",
            ] {
                assert!(!text.contains(banned), "{name} contains {banned}");
            }
        }
        assert!(!INDEX_HTML.contains("<script>"), "no inline script");
        assert!(!INDEX_HTML.contains("style="), "no inline style");
        assert!(CONTENT_SECURITY_POLICY.contains("default-src 'self'"));
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
    }
}
