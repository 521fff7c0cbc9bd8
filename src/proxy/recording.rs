//! Whether this request is recorded for replay: its route has `record:` and the rule selects
//! it (method, sample, size). Capture, redaction and writing belong to [`crate::corpus`]; the
//! phases only begin a recording here and feed it the body in `request_body_filter`.

use pingora_http::RequestHeader;

use super::context::RequestContext;

/// Begins recording a routed request, when its route records and the rule selects it.
pub fn begin(request: &RequestHeader, ctx: &mut RequestContext) {
    let Some(route) = ctx.route() else { return };
    let Some(rule) = route.record.as_ref() else {
        return;
    };
    let recording = crate::corpus::begin(&route.name, rule, request, &ctx.table.config().server);
    ctx.recording = recording;
}
