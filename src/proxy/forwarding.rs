//! What the proxy changes on the way through, in both directions.
//!
//! Upstream: the tester's token is removed, `X-Forwarded-*` and `traceparent` are set, then the
//! target's edits (rewrites, header edits) apply. Downstream: the hop-by-hop headers a backend
//! meant for its own hop are removed, the route's response header edits apply, the request id is
//! echoed and a fallback is named.
//!
//! Pingora itself strips the standard hop-by-hop request headers and those the client nominates
//! in `Connection`, and rejects nominations of `Host` or `X-Forwarded-*` (so a client cannot make
//! the proxy drop its own forwarding headers). The edits themselves are [`crate::edits`]'s; the
//! forwarding headers [`crate::forwarded`]'s.

use http::HeaderName;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::STRANGLER_FALLBACK;
use super::context::RequestContext;
use crate::connection;
use crate::forwarded;
use crate::response::REQUEST_ID;
use crate::telemetry::{RequestSpan, TRACEPARENT};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The address of the connection's peer (the client, or the load balancer in front).
pub fn peer_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|address| address.as_inet())
        .map(|address| address.ip())
}

/// The tester's token authorizes at the proxy; no backend (nor a shadow copy, which starts from
/// this request) needs it.
pub fn strip_tester_token(upstream_request: &mut RequestHeader, ctx: &RequestContext) {
    if let Some(tester) = &ctx.table.tester_override {
        upstream_request.remove_header(&tester.token_header);
    }
}

/// `X-Forwarded-*` for the client (behind trusted proxies if any), and `traceparent`, so the
/// backend's spans nest under the proxy's own span.
pub fn add_forwarding_headers(
    session: &Session,
    upstream_request: &mut RequestHeader,
    ctx: &RequestContext,
) -> Result<()> {
    if let (Some(origin), Some(peer)) = (ctx.origin, peer_ip(session)) {
        forwarded::set_forwarding_headers(
            upstream_request,
            &origin,
            &connection::peer_value(peer, forwarded::peer_value),
            session.req_header().headers.get(HOST),
            // TLS terminated here (a TLS listener, see `tls.rs`).
            session
                .digest()
                .is_some_and(|digest| digest.ssl_digest.is_some()),
        )?;
    }
    if let Some(traceparent) = ctx.span.as_ref().and_then(RequestSpan::traceparent) {
        upstream_request.insert_header(TRACEPARENT, traceparent)?;
    }
    Ok(())
}

/// The edits of the request's target (none when no route matched, or a tester forced an
/// upstream the route does not name).
pub fn apply_target_edits(
    upstream_request: &mut RequestHeader,
    ctx: &RequestContext,
) -> Result<()> {
    let target = ctx
        .route()
        .zip(ctx.target)
        .map(|(route, target)| route.target(target));
    match target {
        Some(target) => target.edits.apply(upstream_request),
        None => Ok(()),
    }
}

/// Removes what a backend meant for its hop only. `Transfer-Encoding` stays: Pingora owns
/// response framing and reads it; `Upgrade` stays on a 101, where it is the point.
///
/// One walk over the response's names finds which of them are there (most answers carry
/// `Connection` alone, or nothing): only those are removed, each removal being a hash lookup
/// in two maps (Pingora keeps the names' case beside the headers).
pub fn strip_response_hop_by_hop(response: &mut ResponseHeader) {
    // On a 101 the upgrade headers are the point (see `hygiene::keep_upgrade_headers`).
    let switching = response.status == http::StatusCode::SWITCHING_PROTOCOLS;
    let mut present = [false; HOP_BY_HOP.len()];
    let mut found = false;
    for name in response.headers.keys() {
        if let Some(index) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[index] = true;
            found = true;
        }
    }
    if !found {
        return;
    }
    let nominated: Vec<HeaderName> = response
        .headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        // The usual options, which name no header to remove (`Keep-Alive` is removed below
        // anyway): no name to build for them.
        .filter(|token| {
            !token.eq_ignore_ascii_case(b"keep-alive") && !token.eq_ignore_ascii_case(b"close")
        })
        .filter_map(|token| HeaderName::from_bytes(token).ok())
        .filter(|name| *name != CONTENT_LENGTH && *name != TRANSFER_ENCODING)
        .collect();
    for name in nominated
        .iter()
        .filter(|name| !(switching && **name == UPGRADE))
    {
        response.remove_header(name);
    }
    for (name, _) in HOP_BY_HOP
        .iter()
        .zip(present)
        .filter(|(_, present)| *present)
    {
        if !(switching && *name == UPGRADE) {
            response.remove_header(name);
        }
    }
}

/// The hop-by-hop response headers of RFC 9110 §7.6.1 a backend may send, besides those its
/// `Connection` nominates.
static HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRAILER,
    UPGRADE,
];

/// The request id echoed (unless the backend set its own), the fallback upstream named when one
/// served, then the route's response header edits.
pub fn edit_response(response: &mut ResponseHeader, ctx: &RequestContext) -> Result<()> {
    // An upstream's parsed head has no spare room: what is added grows each map once, and an
    // answer that needs nothing added is left as it is.
    let echo_id = !response.headers.contains_key(REQUEST_ID);
    let adding = usize::from(echo_id) + usize::from(ctx.fell_back);
    if adding > 0 {
        response.reserve(adding);
    }
    if echo_id {
        response.insert_header_cased(
            &REQUEST_ID,
            crate::response::REQUEST_ID_NAME,
            ctx.request_id.clone(),
        );
    }
    if ctx.fell_back {
        let fallback = ctx.table.upstream(ctx.upstream).name().to_owned();
        response.insert_header(STRANGLER_FALLBACK, fallback)?;
    }
    match ctx.route() {
        Some(route) => route.response_headers.apply(response),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(response: &ResponseHeader) -> Vec<&str> {
        response.headers.keys().map(|name| name.as_str()).collect()
    }

    #[test]
    fn response_hop_by_hop_headers_are_stripped() {
        let mut response = ResponseHeader::build(200, None).unwrap();
        response
            .insert_header("connection", "keep-alive, x-hop")
            .unwrap();
        response.insert_header("x-hop", "1").unwrap();
        response.insert_header("keep-alive", "timeout=5").unwrap();
        response.insert_header("upgrade", "h2c").unwrap();
        response.insert_header("x-kept", "1").unwrap();
        strip_response_hop_by_hop(&mut response);
        assert_eq!(names(&response), ["x-kept"]);
    }

    #[test]
    fn a_backend_cannot_nominate_the_framing_headers_away() {
        let mut response = ResponseHeader::build(200, None).unwrap();
        response
            .insert_header("connection", "content-length, transfer-encoding, te")
            .unwrap();
        response.insert_header("content-length", "3").unwrap();
        response.insert_header("te", "trailers").unwrap();
        strip_response_hop_by_hop(&mut response);
        assert_eq!(names(&response), ["content-length"]);
    }

    #[test]
    fn a_protocol_switch_keeps_its_upgrade_header() {
        let mut response = ResponseHeader::build(101, None).unwrap();
        response.insert_header("connection", "upgrade").unwrap();
        response.insert_header("upgrade", "websocket").unwrap();
        response.insert_header("proxy-connection", "x").unwrap();
        strip_response_hop_by_hop(&mut response);
        assert_eq!(names(&response), ["upgrade"]);
    }
}
