//! Where a request goes: its route (in origin form), a retired route's own answer, the route's
//! deadline, and the target — the kill switch, the split side, a tripped guard holding legacy,
//! the tester override — in that order of precedence from the bottom up (the tester wins).
//!
//! What a route matches and how a split picks are [`crate::routing`]'s; this file applies them to
//! one request and records why it left its route's upstream (for `strangler_fallbacks_total`).

use http::header::CONTENT_LENGTH;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::STRANGLER_STAGE;
use super::context::{FallbackReason, RequestContext};
use crate::connection;
use crate::hygiene;
use crate::metrics::Metrics;
use crate::response::REQUEST_ID;
use crate::routing::{RouteTable, UpstreamId};
use crate::vocabulary::ShadowEvent;

/// An absolute-form target (`GET http://host/a`) is routed and forwarded in origin form: its
/// authority agrees with `Host` (checked by the limits), and backends expect a path.
pub fn to_origin_form(session: &mut Session) -> Result<()> {
    let absolute =
        hygiene::split_absolute_form(session.req_header().raw_path()).map(|(_, path)| {
            if path.first() == Some(&b'/') {
                path.to_vec()
            } else {
                [b"/", path].concat()
            }
        });
    if let Some(origin_form) = absolute {
        session.req_header_mut().set_raw_path(&origin_form)?;
    }
    Ok(())
}

/// Finds the request's route; `false` when none matched (the default upstream serves).
pub fn match_route(request: &RequestHeader, ctx: &mut RequestContext) -> bool {
    ctx.route = ctx.table.find(request);
    ctx.routed = true;
    ctx.route.is_some()
}

/// A retired route answers itself (its status and body, `x-strangler-stage: retired`); `true`
/// when it did.
pub async fn answer_retired(session: &mut Session, ctx: &RequestContext) -> Result<bool> {
    let Some(retired) = ctx.route().and_then(|route| route.retired.as_ref()) else {
        return Ok(false);
    };
    let mut response = ResponseHeader::build(retired.status, Some(4))?;
    response.insert_header(CONTENT_LENGTH, retired.body.len())?;
    response.insert_header(STRANGLER_STAGE, "retired")?;
    response.insert_header(REQUEST_ID, ctx.request_id.clone())?;
    session
        .write_response_header(Box::new(response), retired.body.is_empty())
        .await?;
    if !retired.body.is_empty() {
        session
            .write_response_body(Some(retired.body.clone()), true)
            .await?;
    }
    Ok(true)
}

/// A route's own `timeout` replaces the server's deadline, counted from the request's start.
pub fn apply_route_timeout(ctx: &mut RequestContext) {
    if let Some(timeout) = ctx.route().and_then(|route| route.timeout) {
        ctx.deadline = ctx.started + timeout;
        connection::deadline_moved(ctx.deadline);
    }
}

/// With the kill switch on, the route goes to legacy as legacy expects it, and no copies
/// anywhere; `true` when it did.
pub fn kill_switch(ctx: &mut RequestContext, metrics: &Metrics) -> bool {
    if !ctx
        .table
        .kill_switch
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return false;
    }
    let Some(route) = ctx.route() else {
        return false;
    };
    let (legacy, primary) = (route.legacy, route.target(route.primary).upstream);
    if route.shadow.is_some() {
        metrics.shadow_event(&route.name, ShadowEvent::SkippedKillSwitch);
    }
    ctx.use_target(legacy);
    if primary != ctx.upstream {
        ctx.fallback = Some((primary, FallbackReason::KillSwitch));
    }
    true
}

/// The route's target for this request: the split's side (or the primary), held on legacy by
/// a tripped guard, overridden by an authorized tester.
pub fn choose_target(request: &RequestHeader, ctx: &mut RequestContext) {
    let Some(route) = ctx.route() else { return };
    let client = ctx.origin.map(|origin| origin.client);
    let target = match &route.split {
        Some(split) => split.pick(request, client),
        None => route.primary,
    };
    let (held, legacy) = (
        route.guard.as_ref().is_some_and(|guard| guard.holds()),
        route.legacy,
    );
    ctx.use_target(target);
    // A tripped guard holds the route on legacy, as legacy expects it; unlike the kill
    // switch, copies still go out, so the team sees when the new side is healthy again.
    if held {
        let chosen = ctx.upstream;
        ctx.use_target(legacy);
        if chosen != ctx.upstream {
            ctx.fallback = Some((chosen, FallbackReason::Guard));
        }
    }
    if let Some(forced) = tester_choice(&ctx.table, request, client) {
        ctx.target = ctx.route().and_then(|route| route.target_for(forced));
        ctx.upstream = forced;
    }
}

/// The upstream a tester forces with the override header, when the request is authorized.
pub fn tester_choice(
    table: &RouteTable,
    request: &RequestHeader,
    client: Option<std::net::IpAddr>,
) -> Option<UpstreamId> {
    let tester = table.tester_override.as_ref()?;
    let wanted = request.headers.get(&tester.header)?;
    if !tester.authorizes(request, client) {
        return None;
    }
    table.upstream_id(wanted.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::{SourceFile, parse};

    const TOKEN: &str = "a-tester-token-of-16+";

    fn table(routes: &str) -> Arc<RouteTable> {
        let yaml = format!(
            "upstreams:
  legacy: {{ backends: [127.0.0.1:9001] }}
  new: {{ backends: [127.0.0.1:9002] }}
  other: {{ backends: [127.0.0.1:9003] }}
default_upstream: legacy
tester_override: {{ token: \"{TOKEN}\" }}
routes:
{routes}"
        );
        let loaded = parse(SourceFile::new("routes.yaml", yaml)).unwrap();
        Arc::new(RouteTable::compile_loaded(loaded, 1).unwrap())
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/orders/1", None).unwrap();
        request.insert_header("host", "example.com").unwrap();
        for (name, value) in headers {
            request.insert_header(name.to_string(), *value).unwrap();
        }
        request
    }

    /// The upstream and whether the route's target (with its edits) serves `request`.
    fn chosen(table: &Arc<RouteTable>, request: &RequestHeader) -> (String, bool) {
        let mut ctx = RequestContext::new(table.clone());
        assert!(match_route(request, &mut ctx));
        choose_target(request, &mut ctx);
        let upstream = table.upstream(ctx.upstream).name().to_owned();
        (upstream, ctx.target.is_some())
    }

    const ROUTE: &str = "  - name: orders
    match: { path_prefix: /orders }
    stage: new
    upstream: { name: new, rewrite: { strip_prefix: /orders } }
    fallback: legacy
";

    #[test]
    fn a_route_without_a_split_goes_to_its_upstream() {
        let table = table(ROUTE);
        assert_eq!(chosen(&table, &request(&[])), ("new".to_owned(), true));
    }

    #[test]
    fn a_tester_with_the_token_picks_the_upstream_and_gets_the_routes_target_for_it() {
        let table = table(ROUTE);
        let forced = request(&[
            ("x-strangler-upstream", "legacy"),
            ("x-strangler-token", TOKEN),
        ]);
        assert_eq!(chosen(&table, &forced), ("legacy".to_owned(), true));
        // An upstream the route does not name serves without edits.
        let elsewhere = request(&[
            ("x-strangler-upstream", "other"),
            ("x-strangler-token", TOKEN),
        ]);
        assert_eq!(chosen(&table, &elsewhere), ("other".to_owned(), false));
    }

    #[test]
    fn the_override_header_without_the_token_is_ignored() {
        let table = table(ROUTE);
        for headers in [
            vec![("x-strangler-upstream", "legacy")],
            vec![
                ("x-strangler-upstream", "legacy"),
                ("x-strangler-token", "not-the-token-at-all"),
            ],
            vec![
                ("x-strangler-upstream", "no-such-upstream"),
                ("x-strangler-token", TOKEN),
            ],
        ] {
            let request = request(&headers);
            assert_eq!(tester_choice(&table, &request, None), None, "{headers:?}");
            assert_eq!(chosen(&table, &request), ("new".to_owned(), true));
        }
    }

    #[test]
    fn the_kill_switch_sends_the_route_to_legacy_and_records_why() {
        let table = table(ROUTE);
        table
            .kill_switch
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut ctx = RequestContext::new(table.clone());
        assert!(match_route(&request(&[]), &mut ctx));
        assert!(kill_switch(&mut ctx, &Metrics::new()));
        assert_eq!(table.upstream(ctx.upstream).name(), "legacy");
        let (from, why) = ctx.fallback.expect("a fallback is recorded");
        assert_eq!(table.upstream(from).name(), "new");
        assert_eq!(why, FallbackReason::KillSwitch);
    }
}
