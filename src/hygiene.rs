//! What HTTP the proxy accepts from clients and passes on from backends, beyond what Pingora's
//! parser already enforces: request targets, `Host` values, path dot-segments, header names that
//! a CGI-style backend would read as another header, and response framing.
//!
//! strangler sits in front of legacy servers of unknown vintage, and routes by path and host, so
//! anything two parsers could read differently is refused rather than passed on: a request that
//! matches one route here and means another path to the backend is a route bypass, and a
//! response whose framing the client reads differently from the proxy is response smuggling.
//! Each rule returns a reason (the `x-strangler-error` value) and the proxy answers with its
//! status; docs/security.md lists them.
//!
//! This module owns the rules; [`crate::proxy`] decides when they run.

use http::{HeaderName, HeaderValue, StatusCode};
use pingora_http::{RequestHeader, ResponseHeader};

use crate::vocabulary::Reason;

/// Why a request was refused before routing, and with which status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: Reason,
}

fn refuse(reason: Reason) -> Option<Refusal> {
    let status = reason
        .status()
        .expect("a refusal's reason has a status of its own");
    Some(Refusal { status, reason })
}

/// Checks the request target: origin-form (`/path?query`) or absolute-form
/// (`http://host/path`, whose authority must agree with `Host`). Everything else (`legacy/a`,
/// `*`, authority-form) is refused: routing matches paths that start with `/`, and a target
/// without one means something else to every backend.
pub fn check_request_target(request: &RequestHeader) -> Option<Refusal> {
    let raw = request.raw_path();
    if raw.first() == Some(&b'/') {
        return None;
    }
    let Some((authority, _)) = split_absolute_form(raw) else {
        return refuse(Reason::InvalidRequestTarget);
    };
    let agrees = request
        .headers
        .get(http::header::HOST)
        .is_none_or(|host| host.as_bytes().eq_ignore_ascii_case(authority));
    if !is_valid_host(authority) {
        refuse(Reason::InvalidRequestTarget)
    } else if agrees {
        None
    } else {
        refuse(Reason::HostMismatch)
    }
}

/// `http://authority/path?query` as (authority, path-and-query); the path is `/` when the
/// target has none. `None` for anything else.
pub fn split_absolute_form(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let scheme_end = raw.windows(3).position(|w| w == b"://")?;
    let scheme = &raw[..scheme_end];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return None;
    }
    let rest = &raw[scheme_end + 3..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?'))
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    (!authority.is_empty()).then_some((authority, path))
}

/// Checks `Host`: at most one, and a plain `host[:port]` (a DNS name, IPv4 address or bracketed
/// IPv6 literal). `a/b`, `a b`, `x, y`, `user@host` or an empty port are refused: backends that
/// build URLs or pick virtual hosts from `Host` read such values in surprising ways.
pub fn check_host(request: &RequestHeader) -> Option<Refusal> {
    let mut hosts = request.headers.get_all(http::header::HOST).iter();
    let host = hosts.next()?;
    if hosts.next().is_some() {
        return refuse(Reason::MultipleHosts);
    }
    if is_valid_host(host.as_bytes()) {
        None
    } else {
        refuse(Reason::InvalidHost)
    }
}

/// `host[:port]`, strictly.
pub fn is_valid_host(value: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        let valid_literal = !literal.is_empty()
            && std::str::from_utf8(literal)
                .ok()
                .and_then(|text| text.parse::<std::net::Ipv6Addr>().ok())
                .is_some();
        if !valid_literal {
            return false;
        }
        (&rest[..0], &rest[end + 1..])
    } else {
        match value.iter().rposition(|b| *b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &value[value.len()..]),
        }
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            !digits.is_empty() && digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    let host_ok = value.starts_with(b"[")
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    port_ok && host_ok
}

/// Refuses paths with dot-segments (`/new/../legacy`, `/a/./b`), raw or percent-encoded
/// (`%2e%2e`), a NUL (`%00`) or a backslash. Browsers and HTTP libraries remove dot-segments
/// before sending, so only a crafted request has them; matching the raw path while the backend
/// resolves the segments would route `/new/../admin` by the `/new` route and serve `/admin`.
/// Refusing, rather than normalising, keeps what is matched and what is forwarded identical.
pub fn check_path(request: &RequestHeader) -> Option<Refusal> {
    let raw = request.raw_path();
    let path = match raw.iter().position(|b| *b == b'?') {
        Some(query) => &raw[..query],
        None => raw,
    };
    if path.contains(&b'\\')
        || contains_ignore_case(path, b"%00")
        || contains_ignore_case(path, b"%5c")
    {
        return refuse(Reason::InvalidPath);
    }
    let dot_segment = path.split(|b| *b == b'/').any(|segment| {
        let decoded = decode_dots(segment);
        decoded.as_slice() == b"." || decoded.as_slice() == b".."
    });
    if dot_segment {
        refuse(Reason::DotSegmentInPath)
    } else {
        None
    }
}

/// The segment's dots when it consists of (at most three) `.` or `%2e`/`%2E`, else nothing:
/// only dot-only segments matter.
fn decode_dots(segment: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2);
    let mut rest = segment;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            out.push(b'.');
            rest = &rest[1..];
        } else if rest.len() >= 3
            && rest[0] == b'%'
            && rest[1] == b'2'
            && rest[2].eq_ignore_ascii_case(&b'e')
        {
            out.push(b'.');
            rest = &rest[3..];
        } else {
            return Vec::new();
        }
        if out.len() > 2 {
            return Vec::new();
        }
    }
    out
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

/// Headers whose meaning the proxy owns: framing, connection management, and the ones it sets
/// for backends. A CGI-style backend (PHP, Perl, Python WSGI) maps `-` to `_` in header names,
/// so `Transfer_Encoding` or `X_Forwarded_For` from a client would reach it as the real thing.
const OWNED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
];

/// What to do with a request header whose name has an underscore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderscoreHeader {
    /// An ordinary header: passed on.
    Keep,
    /// Spells a header the proxy sets (`X_Forwarded_For`): dropped, so it cannot pose as it.
    Drop,
    /// Spells a framing header (`Transfer_Encoding`, `Content_Length`): the request is refused.
    Refuse,
}

/// The policy for one header name.
pub fn underscore_header(name: &HeaderName) -> UnderscoreHeader {
    let name = name.as_str();
    if !name.contains('_') {
        return UnderscoreHeader::Keep;
    }
    let dashed: String = name
        .chars()
        .map(|c| if c == '_' { '-' } else { c })
        .collect();
    match dashed.as_str() {
        "content-length" | "transfer-encoding" => UnderscoreHeader::Refuse,
        owned if OWNED_HEADERS.contains(&owned) || owned.starts_with("x-strangler-") => {
            UnderscoreHeader::Drop
        }
        _ => UnderscoreHeader::Keep,
    }
}

/// Applies [`underscore_header`] to every header: drops the impostors, or refuses the request.
pub fn check_underscore_headers(request: &mut RequestHeader) -> Option<Refusal> {
    let mut dropped: Vec<HeaderName> = Vec::new();
    for name in request.headers.keys() {
        match underscore_header(name) {
            UnderscoreHeader::Keep => {}
            UnderscoreHeader::Drop => dropped.push(name.clone()),
            UnderscoreHeader::Refuse => return refuse(Reason::AmbiguousFraming),
        }
    }
    for name in &dropped {
        request.remove_header(name);
    }
    None
}

/// Whether the request asks to switch protocols (WebSocket).
pub fn is_upgrade_request(request: &RequestHeader) -> bool {
    request.headers.contains_key(http::header::UPGRADE)
        && request
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|value| value.as_bytes().split(|b| *b == b','))
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
}

/// Response framing a client could read differently from the proxy: a `Transfer-Encoding` other
/// than exactly `chunked` (`chunked, gzip` ends with a coding the client cannot see through;
/// `gzip, chunked` would hand the client gzip bytes with no header saying so), one beside a
/// `Content-Length`, or `Content-Length` values that are not all the same number. The answer is
/// a 502.
pub fn check_response_framing(response: &ResponseHeader) -> Option<Refusal> {
    let mut encodings = response
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter();
    let has_length = response.headers.contains_key(http::header::CONTENT_LENGTH);
    if let Some(encoding) = encodings.next()
        && (encodings.next().is_some()
            || has_length
            || !encoding
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked"))
    {
        return refuse(Reason::UpstreamBadFraming);
    }
    let mut first: Option<&[u8]> = None;
    let lengths = response
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii);
    for length in lengths {
        if length.is_empty() || !length.iter().all(u8::is_ascii_digit) {
            return refuse(Reason::UpstreamBadFraming);
        }
        match first {
            None => first = Some(length),
            Some(first) if first != length => return refuse(Reason::UpstreamBadFraming),
            Some(_) => {}
        }
    }
    None
}

/// A 1xx, 204 or 304 never has a body, so it never carries body framing downstream: a
/// `Content-Length: 5` on a 204 would make the client wait for (or read into the next response)
/// bytes that never come.
pub fn strip_bodyless_framing(response: &mut ResponseHeader) {
    let status = response.status;
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        response.remove_header(&http::header::CONTENT_LENGTH);
        response.remove_header(&http::header::TRANSFER_ENCODING);
    }
}

/// On a `101 Switching Protocols` the upgrade headers are the point: `Upgrade` names the new
/// protocol and `Connection: upgrade` must reach the client, or its handshake fails.
pub fn keep_upgrade_headers(response: &mut ResponseHeader) -> pingora_error::Result<()> {
    if response.status == StatusCode::SWITCHING_PROTOCOLS
        && response.headers.contains_key(http::header::UPGRADE)
    {
        response.insert_header(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str) -> RequestHeader {
        let mut request = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        request.insert_header("host", "shop.example.com").unwrap();
        request
    }

    #[test]
    fn only_origin_form_and_agreeing_absolute_form_targets_pass() {
        assert_eq!(check_request_target(&request("/a?b=1")), None);
        assert_eq!(
            check_request_target(&request("http://shop.example.com/a")),
            None
        );
        assert_eq!(
            split_absolute_form(b"HTTP://h:80?x=1"),
            Some((&b"h:80"[..], &b"?x=1"[..]))
        );
        assert_eq!(split_absolute_form(b"ftp://h/a"), None);
        assert_eq!(
            check_request_target(&request("http://evil.example/a")).map(|r| r.reason),
            Some(Reason::HostMismatch)
        );
        for target in [
            "legacy/a",
            "*",
            "http://user@shop.example.com/a",
            "http:///a",
        ] {
            assert_eq!(
                check_request_target(&request(target)).map(|r| r.reason),
                Some(Reason::InvalidRequestTarget),
                "{target}"
            );
        }
    }

    #[test]
    fn hosts_are_plain_names_with_an_optional_port() {
        for good in [
            "a.example.com",
            "a.example.com:8080",
            "127.0.0.1:80",
            "[::1]:8080",
            "[::1]",
            "localhost",
        ] {
            assert!(is_valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "a/b",
            "a b",
            "x, y",
            "user@host",
            "host:",
            "host:x",
            "",
            "[::1",
            "[zz]",
            "a:1:2",
            "h\tx",
        ] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn dot_segments_raw_or_encoded_are_refused() {
        for bad in [
            "/new/../legacy/x",
            "/new/./x",
            "/new/%2e%2e/legacy",
            "/new/.%2E/legacy",
            "/..",
            "/a/%2E",
            "/a%00b",
            "/a%5cb",
        ] {
            assert!(check_path(&request(bad)).is_some(), "{bad}");
        }
        for good in [
            "/",
            "/a/b.c/d",
            "/a/...",
            "/a/..b",
            "/v1.2/x?q=../x",
            "/a%2fb",
        ] {
            assert_eq!(check_path(&request(good)), None, "{good}");
        }
    }

    #[test]
    fn underscored_spellings_of_owned_headers_are_refused_or_dropped() {
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).unwrap();
        assert_eq!(
            underscore_header(&name("transfer_encoding")),
            UnderscoreHeader::Refuse
        );
        assert_eq!(
            underscore_header(&name("content_length")),
            UnderscoreHeader::Refuse
        );
        assert_eq!(
            underscore_header(&name("x_forwarded_for")),
            UnderscoreHeader::Drop
        );
        assert_eq!(
            underscore_header(&name("x_strangler_upstream")),
            UnderscoreHeader::Drop
        );
        assert_eq!(underscore_header(&name("x_tenant")), UnderscoreHeader::Keep);
        assert_eq!(underscore_header(&name("x-tenant")), UnderscoreHeader::Keep);
    }

    #[test]
    fn response_framing_must_be_plain_chunked_or_one_length() {
        let response = |headers: &[(&str, &str)]| {
            let mut response = ResponseHeader::build(200, None).unwrap();
            for (name, value) in headers {
                response.append_header(name.to_string(), *value).unwrap();
            }
            response
        };
        assert_eq!(
            check_response_framing(&response(&[("transfer-encoding", "chunked")])),
            None
        );
        assert_eq!(
            check_response_framing(&response(&[("content-length", "5")])),
            None
        );
        assert_eq!(
            check_response_framing(&response(&[
                ("content-length", "5"),
                ("content-length", "5")
            ])),
            None
        );
        for bad in [
            vec![("transfer-encoding", "chunked, gzip")],
            vec![("transfer-encoding", "gzip, chunked")],
            vec![("transfer-encoding", "gzip")],
            vec![
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            vec![("content-length", "5"), ("content-length", "6")],
            vec![("content-length", "5, 6")],
            vec![("content-length", "-1")],
            vec![("content-length", "5"), ("transfer-encoding", "chunked")],
        ] {
            assert!(check_response_framing(&response(&bad)).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn bodyless_statuses_lose_their_framing_and_upgrades_keep_theirs() {
        let mut no_content = ResponseHeader::build(204, None).unwrap();
        no_content.insert_header("content-length", "5").unwrap();
        strip_bodyless_framing(&mut no_content);
        assert!(no_content.headers.get("content-length").is_none());

        let mut ok = ResponseHeader::build(200, None).unwrap();
        ok.insert_header("content-length", "5").unwrap();
        strip_bodyless_framing(&mut ok);
        assert!(ok.headers.get("content-length").is_some());

        let mut switching = ResponseHeader::build(101, None).unwrap();
        switching.insert_header("upgrade", "websocket").unwrap();
        keep_upgrade_headers(&mut switching).unwrap();
        assert_eq!(switching.headers["connection"], "upgrade");
    }
}
