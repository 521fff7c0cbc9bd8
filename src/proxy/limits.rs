//! The request checks made before anything is routed or read: the size limits of
//! `server.limits` (URI, header count and bytes, declared body), a `Host` on HTTP/1.1, the
//! [`hygiene`] rules on the target, host and path, and framing two parsers could read
//! differently. Each refusal is a [`Reason`] whose status it carries.
//!
//! The limits checked on the raw head before Pingora parses it (and the header timeout) are the
//! connection layer's ([`crate::connection`]); the body limit on a streamed body is checked as
//! it arrives (`request_body_filter`).

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use crate::config::LimitsConfig;
use crate::hygiene;
use crate::vocabulary::Reason;

/// The refusal a parsed request earns, if any: impostor underscore headers are dropped (or the
/// request refused), then [`check_request`].
pub fn check(session: &mut Session, limits: &LimitsConfig) -> Option<Reason> {
    if let Some(refusal) = hygiene::check_underscore_headers(session.req_header_mut()) {
        return Some(refusal.reason);
    }
    // Only a request with `Transfer-Encoding` needs its raw head (see [`ambiguous_framing`]).
    let raw_head = session
        .req_header()
        .headers
        .contains_key(TRANSFER_ENCODING)
        .then(|| session.as_downstream().as_http1())
        .flatten()
        .map(|h1| h1.get_headers_raw_bytes());
    check_request(session.req_header(), raw_head.as_deref(), limits)
}

/// The limit `request` breaks (its reason carries the status). `raw_head` is the request's
/// head as received, when there is one (HTTP/1), for what parsing hides.
pub fn check_request(
    request: &RequestHeader,
    raw_head: Option<&[u8]>,
    limits: &LimitsConfig,
) -> Option<Reason> {
    if request.raw_path().len() as u64 > limits.max_uri_length.as_u64() {
        return Some(Reason::UriTooLong);
    }
    if request.headers.len() > limits.max_header_count {
        return Some(Reason::TooManyHeaders);
    }
    let header_bytes: usize = request
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes as u64 > limits.max_header_bytes.as_u64() {
        return Some(Reason::HeadersTooLarge);
    }
    if request.version == http::Version::HTTP_11 && !request.headers.contains_key(HOST) {
        return Some(Reason::MissingHost);
    }
    let refusal = hygiene::check_request_target(request)
        .or_else(|| hygiene::check_host(request))
        .or_else(|| hygiene::check_path(request));
    if let Some(refusal) = refusal {
        return Some(refusal.reason);
    }
    if let Some(reason) = ambiguous_framing(request, raw_head) {
        return Some(reason);
    }
    let declared = request
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_body.as_u64()) {
        return Some(Reason::BodyTooLarge);
    }
    None
}

/// Request framing that two parsers could read differently (the stuff of request smuggling).
/// Pingora tolerates some of it; a proxy in front of legacy servers of unknown vintage refuses
/// all of it.
pub fn ambiguous_framing(request: &RequestHeader, raw_head: Option<&[u8]>) -> Option<Reason> {
    let mut encodings = request.headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(encoding) = encodings.next() {
        // Pingora drops `Content-Length` when `Transfer-Encoding` is also present (reading the
        // body as chunked, as RFC 9112 allows); only the raw header still shows both.
        if raw_head.is_some_and(|raw| {
            raw.split(|b| *b == b'\n')
                .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
        }) {
            return Some(Reason::AmbiguousFraming);
        }
        if encodings.next().is_some()
            || !encoding
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        {
            return Some(Reason::UnsupportedTransferEncoding);
        }
        return None;
    }
    // Every Content-Length value (repeated headers, or a comma-separated list) must be plain
    // digits and all must agree; compared in place, without collecting them.
    let mut first: Option<&[u8]> = None;
    let lengths = request
        .headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii);
    for length in lengths {
        if length.is_empty() || !length.iter().all(u8::is_ascii_digit) {
            return Some(Reason::InvalidContentLength);
        }
        match first {
            None => first = Some(length),
            Some(first) if first != length => return Some(Reason::ConflictingContentLength),
            Some(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig::default()
    }

    fn request(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        request.insert_header("host", "example.com").unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    #[test]
    fn a_plain_request_passes() {
        assert_eq!(check_request(&request("/a", &[]), None, &limits()), None);
    }

    #[test]
    fn a_uri_over_the_limit_is_414() {
        let long = format!("/{}", "a".repeat(limits().max_uri_length.as_u64() as usize));
        let reason = check_request(&request(&long, &[]), None, &limits());
        assert_eq!(reason, Some(Reason::UriTooLong));
        assert_eq!(reason.and_then(Reason::status), Some(414));
    }

    #[test]
    fn too_many_headers_or_header_bytes_are_431() {
        let count = limits().max_header_count;
        let names: Vec<String> = (0..=count).map(|n| format!("x-h{n}")).collect();
        let many: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "1")).collect();
        assert_eq!(
            check_request(&request("/", &many), None, &limits()),
            Some(Reason::TooManyHeaders)
        );
        let big = "v".repeat(limits().max_header_bytes.as_u64() as usize);
        assert_eq!(
            check_request(&request("/", &[("x-big", &big)]), None, &limits()),
            Some(Reason::HeadersTooLarge)
        );
    }

    #[test]
    fn an_http11_request_without_host_is_refused() {
        let request = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(
            check_request(&request, None, &limits()),
            Some(Reason::MissingHost)
        );
    }

    #[test]
    fn a_declared_body_over_the_limit_is_413_before_it_is_read() {
        let too_big = (limits().max_body.as_u64() + 1).to_string();
        assert_eq!(
            check_request(
                &request("/", &[("content-length", &too_big)]),
                None,
                &limits()
            ),
            Some(Reason::BodyTooLarge)
        );
    }

    #[test]
    fn content_lengths_must_be_digits_and_agree() {
        let framing = |values: &[&str]| {
            let headers: Vec<(&str, &str)> = values
                .iter()
                .map(|value| ("content-length", *value))
                .collect();
            ambiguous_framing(&request("/", &headers), None)
        };
        assert_eq!(framing(&["5"]), None);
        assert_eq!(framing(&["5", "5"]), None);
        assert_eq!(framing(&["5, 5"]), None);
        assert_eq!(framing(&["5", "6"]), Some(Reason::ConflictingContentLength));
        assert_eq!(framing(&["5, 6"]), Some(Reason::ConflictingContentLength));
        assert_eq!(framing(&["-5"]), Some(Reason::InvalidContentLength));
        assert_eq!(framing(&["5,"]), Some(Reason::InvalidContentLength));
    }

    #[test]
    fn only_a_single_chunked_transfer_encoding_is_accepted() {
        let chunked = request("/", &[("transfer-encoding", "chunked")]);
        assert_eq!(ambiguous_framing(&chunked, None), None);
        let gzip = request("/", &[("transfer-encoding", "gzip, chunked")]);
        assert_eq!(
            ambiguous_framing(&gzip, None),
            Some(Reason::UnsupportedTransferEncoding)
        );
        let twice = request(
            "/",
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
        );
        assert_eq!(
            ambiguous_framing(&twice, None),
            Some(Reason::UnsupportedTransferEncoding)
        );
    }

    #[test]
    fn transfer_encoding_with_a_content_length_in_the_raw_head_is_ambiguous() {
        // Pingora has already dropped the Content-Length from the parsed headers.
        let parsed = request("/", &[("transfer-encoding", "chunked")]);
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            ambiguous_framing(&parsed, Some(raw)),
            Some(Reason::AmbiguousFraming)
        );
    }
}
