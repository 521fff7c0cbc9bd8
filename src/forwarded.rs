//! Who the client is, and what the backend is told about it: the client address behind trusted
//! load balancers, and the `X-Forwarded-*` headers sent upstream.
//!
//! Only peers in `server.trusted_proxies` are believed. From such a peer the client is the
//! right-most address of `X-Forwarded-For` that is not itself a trusted proxy (every proxy
//! appends the address it saw, so everything left of the first untrusted hop could be made up by
//! the client), and its `X-Forwarded-Proto`/`-Host` are kept. From any other peer the peer is the
//! client, and whatever forwarding headers it sent are replaced, never appended to: otherwise a
//! client could pick its own address for sticky splits, `allow_cidrs` and logs.
//!
//! This module owns the rule; the proxy applies it once per request.

use std::net::IpAddr;

use http::HeaderValue;
use ipnet::IpNet;
use pingora_http::RequestHeader;

// Each name is spelled once: the `&'static str` is what goes on the wire (inserted with
// `insert_header_cased`, nothing is parsed or allocated for it), the `HeaderName` for lookups.
const X_FORWARDED_FOR_NAME: &str = "x-forwarded-for";
const X_FORWARDED_HOST_NAME: &str = "x-forwarded-host";
const X_FORWARDED_PROTO_NAME: &str = "x-forwarded-proto";
pub const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static(X_FORWARDED_FOR_NAME);
pub const X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static(X_FORWARDED_HOST_NAME);
pub const X_FORWARDED_PROTO: http::HeaderName =
    http::HeaderName::from_static(X_FORWARDED_PROTO_NAME);

/// The compiled `server.trusted_proxies`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

/// What the proxy concluded about a request's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The client: the peer, or the address a trusted peer forwarded for.
    pub client: IpAddr,
    /// The peer is a trusted proxy, whose forwarding headers were believed.
    pub via_trusted_proxy: bool,
    /// `https` when a trusted peer said so (or TLS was terminated here).
    pub https: bool,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self { nets }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.nets.iter().any(|net| net.contains(&address))
    }

    /// The origin of `request`, which arrived from `peer`.
    pub fn origin(&self, request: &RequestHeader, peer: IpAddr) -> Origin {
        if !self.trusts(peer) {
            return Origin {
                client: peer,
                via_trusted_proxy: false,
                https: false,
            };
        }
        // Right to left: the first hop no trusted proxy vouches for is the client.
        let hops: Vec<IpAddr> = request
            .headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(parse_hop)
            .collect();
        let client = hops
            .iter()
            .rev()
            .find(|hop| !self.trusts(**hop))
            .or(hops.first())
            .copied()
            .unwrap_or(peer);
        let https = request
            .headers
            .get(X_FORWARDED_PROTO)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
        Origin {
            client,
            via_trusted_proxy: true,
            https,
        }
    }
}

/// One `X-Forwarded-For` entry: an address, possibly bracketed or with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(canonical(address));
    }
    if let Ok(socket) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(socket.ip()));
    }
    hop.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
        .map(canonical)
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack socket reports) as IPv4, so
/// `10.0.0.0/8` matches them.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// `peer` as an `X-Forwarded-For` entry (IPv4-mapped addresses as IPv4). A connection's peer
/// does not change between its requests: the proxy renders it once per connection.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::try_from(canonical(peer).to_string()).expect("an IP address is a header value")
}

/// Sets the forwarding headers of the upstream request: `X-Forwarded-For` extended with the
/// peer when the peer is trusted, replaced by the peer otherwise; `X-Forwarded-Proto` and
/// `-Host` kept from a trusted peer, else set from what this hop saw (`host`, `tls`).
/// `peer_value` is [`peer_value`] of the peer.
pub fn set_forwarding_headers(
    upstream: &mut RequestHeader,
    origin: &Origin,
    peer_value: &HeaderValue,
    host: Option<&HeaderValue>,
    tls: bool,
) -> pingora_error::Result<()> {
    let forwarded_for = if origin.via_trusted_proxy
        && let Some(first) = upstream.headers.get(X_FORWARDED_FOR)
    {
        let mut joined = first.as_bytes().to_vec();
        for earlier in upstream.headers.get_all(X_FORWARDED_FOR).iter().skip(1) {
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(earlier.as_bytes());
        }
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(peer_value.as_bytes());
        HeaderValue::from_bytes(&joined).map_err(|error| {
            pingora_error::Error::because(
                pingora_error::ErrorType::InvalidHTTPHeader,
                "bad X-Forwarded-For",
                error,
            )
        })?
    } else {
        peer_value.clone()
    };
    // Up to three names added to a header Pingora cloned without spare room: each map grows
    // once, not once per insert.
    upstream.reserve(3);
    upstream.insert_header_cased(&X_FORWARDED_FOR, X_FORWARDED_FOR_NAME, forwarded_for);
    let proto = if tls || origin.https { "https" } else { "http" };
    upstream.insert_header_cased(
        &X_FORWARDED_PROTO,
        X_FORWARDED_PROTO_NAME,
        HeaderValue::from_static(proto),
    );
    let keep_host = origin.via_trusted_proxy && upstream.headers.contains_key(X_FORWARDED_HOST);
    if !keep_host {
        match host {
            Some(host) => {
                upstream.insert_header_cased(&X_FORWARDED_HOST, X_FORWARDED_HOST_NAME, host.clone())
            }
            // Never let a client's own value through as if the proxy had set it.
            None => {
                upstream.remove_header(&X_FORWARDED_HOST);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()])
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let spoofed = request(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        let origin = trusted().origin(&spoofed, ip("203.0.113.9"));
        assert_eq!(origin.client, ip("203.0.113.9"));
        assert!(!origin.via_trusted_proxy && !origin.https);
    }

    #[test]
    fn behind_trusted_proxies_the_client_is_the_rightmost_untrusted_hop() {
        let chain = request(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let origin = trusted().origin(&chain, ip("::ffff:10.0.0.2"));
        assert_eq!(
            origin.client,
            ip("198.51.100.7"),
            "6.6.6.6 is the client's own claim"
        );
        assert!(origin.via_trusted_proxy && origin.https);
        let all_trusted = request(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(
            trusted().origin(&all_trusted, ip("10.0.0.2")).client,
            ip("10.9.9.9")
        );
        let none = request(&[]);
        assert_eq!(
            trusted().origin(&none, ip("10.0.0.2")).client,
            ip("10.0.0.2")
        );
        assert_eq!(parse_hop("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop("192.0.2.1:8080"), Some(ip("192.0.2.1")));
        assert_eq!(parse_hop("unknown"), None);
    }

    #[test]
    fn forwarding_headers_are_replaced_for_untrusted_peers_and_extended_for_trusted_ones() {
        let host = HeaderValue::from_static("shop.example.com");
        let mut spoofed = request(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let origin = trusted().origin(&spoofed, ip("203.0.113.9"));
        set_forwarding_headers(
            &mut spoofed,
            &origin,
            &peer_value(ip("203.0.113.9")),
            Some(&host),
            false,
        )
        .unwrap();
        assert_eq!(spoofed.headers["x-forwarded-for"], "203.0.113.9");
        assert_eq!(spoofed.headers["x-forwarded-proto"], "http");
        assert_eq!(spoofed.headers["x-forwarded-host"], "shop.example.com");

        let mut balanced = request(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example.com"),
        ]);
        let origin = trusted().origin(&balanced, ip("10.0.0.2"));
        set_forwarding_headers(
            &mut balanced,
            &origin,
            &peer_value(ip("::ffff:10.0.0.2")),
            Some(&host),
            false,
        )
        .unwrap();
        assert_eq!(
            balanced.headers["x-forwarded-for"],
            "198.51.100.7, 10.0.0.2"
        );
        assert_eq!(balanced.headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn a_spoofed_forwarding_header_leaves_one_line_on_the_wire_and_other_names_keep_their_case() {
        // The client's own spelling must not survive beside ours: a replaced header leaves
        // both of Pingora's maps (values and wire spelling) in step.
        let mut spoofed = RequestHeader::build("GET", b"/", None).unwrap();
        spoofed.append_header("X-Forwarded-For", "1.2.3.4").unwrap();
        spoofed
            .append_header("X-FORWARDED-HOST", "evil.example")
            .unwrap();
        spoofed.append_header("X-Custom-Case", "kept").unwrap();
        let origin = trusted().origin(&spoofed, ip("203.0.113.9"));
        let host = HeaderValue::from_static("shop.example.com");
        let peer = peer_value(ip("203.0.113.9"));
        set_forwarding_headers(&mut spoofed, &origin, &peer, Some(&host), true).unwrap();
        let mut wire = Vec::new();
        spoofed.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        let mut lines: Vec<&str> = wire.split("\r\n").filter(|line| !line.is_empty()).collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                "X-Custom-Case: kept",
                "x-forwarded-for: 203.0.113.9",
                "x-forwarded-host: shop.example.com",
                "x-forwarded-proto: https",
            ],
            "{wire}"
        );
    }
}
