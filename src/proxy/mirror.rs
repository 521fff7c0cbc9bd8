//! Whether this request gets a shadow copy: its route mirrors, it is not a protocol switch, and
//! the [`ShadowDispatcher`] selects it (method, sample, declared size, in-flight caps). Teeing
//! the body and capturing the primary's answer are one call each in the phases; sending,
//! comparing and storing happen off the request path ([`crate::shadow`], [`crate::diff`]).

use pingora_http::RequestHeader;

use super::context::RequestContext;
use crate::hygiene;
use crate::metrics::Metrics;
use crate::shadow::{Origin, ShadowDispatcher};
use crate::vocabulary::ShadowEvent;

/// Begins the copy of a routed request, when its route has a shadow and it is selected.
pub fn begin(
    shadows: &ShadowDispatcher,
    metrics: &Metrics,
    request: &RequestHeader,
    ctx: &mut RequestContext,
) {
    let Some(route) = ctx.route() else { return };
    // A protocol switch (WebSocket) is a conversation, not a request to replay.
    let upgrade = hygiene::is_upgrade_request(request);
    if upgrade && route.shadow.is_some() {
        metrics.shadow_event(&route.name, ShadowEvent::SkippedUpgrade);
    }
    let Some(rule) = route.shadow.as_ref().filter(|_| !upgrade) else {
        return;
    };
    let copy = shadows.begin(
        &route.name,
        rule,
        request,
        &ctx.request_id,
        &ctx.table.upstreams()[ctx.upstream],
        Origin {
            stage: route.stage,
            generation: ctx.table.generation(),
            config_sha256: ctx.table.sha256(),
            guard: route.guard.as_ref(),
        },
    );
    ctx.shadow = copy;
}
