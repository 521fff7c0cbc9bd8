//! Who may ask: the bearer token, and the cross-site gate a loopback admin needs because a
//! browser on the operator's machine reaches it too. A DNS-rebinding page sends its own name as
//! `Host`; a cross-site page sends its `Origin` or `Sec-Fetch-Site`; a cross-site form cannot
//! send a custom header, so a mutation without a token must carry `X-Strangler-Admin`.
//!
//! Which endpoints are open (health, metrics, the viewer's assets) is the dispatcher's call in
//! `mod.rs`; this file answers only whether one request passes.

use http::{Method, header};
use pingora_core::protocols::http::ServerSession;

/// The header that marks a mutation as sent on purpose when no token is configured.
pub const ADMIN_HEADER: &str = "x-strangler-admin";

/// Whether the request carries the configured token (always, when none is configured).
pub fn authorized(session: &ServerSession, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let presented = session
        .req_header()
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    presented.is_some_and(|presented| crate::routing::constant_time_eq(presented, token.as_bytes()))
}

/// Why a request may have come from a page the operator's browser was visiting, not from the
/// operator: `None` when it is fine.
pub fn cross_site(
    request: &pingora_http::RequestHeader,
    hosts: &[String],
    token_configured: bool,
) -> Option<&'static str> {
    let host = request
        .headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or_default();
    if !admin_host_allowed(host, hosts) {
        return Some(
            "the Host must be an IP address, localhost or a name in server.admin_hosts (DNS rebinding)",
        );
    }
    if let Some(origin) = request.headers.get(header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|origin| {
                origin
                    .strip_prefix("http://")
                    .or(origin.strip_prefix("https://"))
            })
            .is_some_and(|origin_host| origin_host.eq_ignore_ascii_case(host));
        if !same {
            return Some("cross-origin requests are refused");
        }
    }
    if request
        .headers
        .get("sec-fetch-site")
        .is_some_and(|site| !matches!(site.as_bytes(), b"same-origin" | b"none"))
    {
        return Some("cross-site requests are refused");
    }
    if request.method == Method::POST
        && is_mutation(request.uri.path())
        && !token_configured
        && !request.headers.contains_key(ADMIN_HEADER)
    {
        return Some("a change needs the header `X-Strangler-Admin: 1` (or the bearer token)");
    }
    None
}

/// The endpoints that change something (POST only; any other POST is a 405).
fn is_mutation(path: &str) -> bool {
    matches!(path, "/reload" | "/kill-switch")
        || (path.starts_with("/routes/") && path.ends_with("/reset"))
}

/// `host[:port]` names this listener: an IP address, `localhost`, or a configured name.
fn admin_host_allowed(host: &str, hosts: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => {
            return rest
                .split_once(']')
                .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::RequestHeader;

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (name, value) in headers {
            request.insert_header(name.to_string(), *value).unwrap();
        }
        request
    }

    #[test]
    fn the_admin_answers_to_ip_addresses_localhost_and_configured_names_only() {
        let hosts = ["proxy-admin.internal".to_owned()];
        for allowed in [
            "127.0.0.1:9901",
            "10.0.0.7",
            "[::1]:9901",
            "localhost:9901",
            "LOCALHOST",
            "proxy-admin.internal:9901",
        ] {
            assert!(admin_host_allowed(allowed, &hosts), "{allowed}");
        }
        for refused in [
            "evil.example:9901",
            "",
            "[evil]:1",
            "127.0.0.1.evil.example",
        ] {
            assert!(!admin_host_allowed(refused, &hosts), "{refused}");
        }
    }

    #[test]
    fn only_reload_kill_switch_and_guard_resets_are_mutations() {
        assert!(is_mutation("/reload"));
        assert!(is_mutation("/kill-switch"));
        assert!(is_mutation("/routes/orders/reset"));
        assert!(!is_mutation("/routes"));
        assert!(!is_mutation("/diffs"));
    }

    #[test]
    fn a_cross_site_page_is_refused_and_the_operator_is_not() {
        let host = ("host", "127.0.0.1:9901");
        assert_eq!(
            cross_site(&request("GET", "/routes", &[host]), &[], false),
            None
        );
        let rebinding = request("GET", "/routes", &[("host", "evil.example")]);
        assert!(cross_site(&rebinding, &[], false).is_some());
        let other_origin = request("GET", "/routes", &[host, ("origin", "http://evil.example")]);
        assert!(cross_site(&other_origin, &[], false).is_some());
        let same_origin = request(
            "GET",
            "/routes",
            &[host, ("origin", "http://127.0.0.1:9901")],
        );
        assert_eq!(cross_site(&same_origin, &[], false), None);
        let fetched = request("GET", "/routes", &[host, ("sec-fetch-site", "cross-site")]);
        assert!(cross_site(&fetched, &[], false).is_some());
    }

    #[test]
    fn a_mutation_without_a_token_needs_the_admin_header() {
        let host = ("host", "127.0.0.1:9901");
        let bare = request("POST", "/kill-switch", &[host]);
        assert!(cross_site(&bare, &[], false).is_some());
        assert_eq!(
            cross_site(&bare, &[], true),
            None,
            "the token is checked instead"
        );
        let marked = request("POST", "/kill-switch", &[host, (ADMIN_HEADER, "1")]);
        assert_eq!(cross_site(&marked, &[], false), None);
    }
}
