//! Every answer strangler writes itself for a refusal or a failure, rendered one way for the two
//! layers that write them: the request phases ([`crate::proxy`], on a parsed request, through
//! Pingora) and the connection layer ([`crate::connection`], straight to the socket, before or
//! instead of Pingora parsing a request).
//!
//! An [`ErrorResponse`] is a status, a [`Reason`] and the request id. Both renderings carry the
//! same head: the status, `x-strangler-error: <reason>`, `x-request-id`, and `Retry-After` where
//! trying again makes sense (see [`ErrorResponse::retry_after`]). The proxy's answer also has a
//! JSON body (`{"error","status","request_id"}`) and `Cache-Control: private, no-store`; the
//! connection layer's is head-only with `connection: close`, as it has always been: its clients
//! (a slowloris, a connection over the cap) are turned away before they are served at all.
//!
//! This module owns the header names of those answers and their layout; which reason and status a
//! failure gets is decided by the callers (see `proxy/errors.rs` and [`Reason::status`]). It
//! uses only [`crate::vocabulary`], so both layers can share it without a cycle.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, StatusCode};
use pingora_http::ResponseHeader;

use crate::vocabulary::Reason;

/// How `x-request-id` is spelled on the wire: given to `insert_header_cased` on every forwarded
/// exchange, a prepared name costs Pingora no parsing and no allocation (see
/// vendor/pingora-http/PATCHES.md).
pub const REQUEST_ID_NAME: &str = "x-request-id";
/// The request id: kept from the client when usable, made otherwise, echoed on every answer.
pub const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_NAME);
/// Why strangler answered itself: [`Reason::as_str`].
pub const STRANGLER_ERROR: HeaderName = HeaderName::from_static("x-strangler-error");

/// One answer strangler writes itself instead of a backend's.
#[derive(Debug, Clone)]
pub struct ErrorResponse {
    status: u16,
    reason: Reason,
    request_id: HeaderValue,
}

impl ErrorResponse {
    /// An answer with `status` (a failure may carry a status of its own, see
    /// [`Reason::HttpStatus`]).
    pub fn new(status: u16, reason: Reason, request_id: HeaderValue) -> Self {
        Self {
            status,
            reason,
            request_id,
        }
    }

    /// An answer with the status `reason` always has.
    ///
    /// # Panics
    /// When `reason` has no status of its own ([`Reason::HttpStatus`], [`Reason::ClientGone`]):
    /// a caller's bug.
    pub fn of(reason: Reason, request_id: HeaderValue) -> Self {
        let status = reason
            .status()
            .expect("a refusal's reason has a status of its own");
        Self::new(status, reason, request_id)
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// `Retry-After`, when trying again makes sense: a connection slot frees as soon as any
    /// connection closes (1 s); no backend up (503) may take a health check or two (5 s).
    pub fn retry_after(&self) -> Option<&'static str> {
        match (self.reason, self.status) {
            (Reason::TooManyConnections, _) => Some("1"),
            (_, 503) => Some("5"),
            _ => None,
        }
    }

    /// The JSON body of the proxy's answer.
    pub fn body(&self) -> Bytes {
        Bytes::from(format!(
            "{{\"error\":\"{}\",\"status\":{},\"request_id\":\"{}\"}}\n",
            self.reason.as_str(),
            self.status,
            String::from_utf8_lossy(self.request_id.as_bytes())
        ))
    }

    /// The proxy's answer on a parsed request: its head, and the body it announces.
    pub fn to_pingora(&self) -> pingora_error::Result<(ResponseHeader, Bytes)> {
        let body = self.body();
        let mut response = ResponseHeader::build(self.status, Some(5))?;
        response.insert_header(CONTENT_TYPE, "application/json")?;
        response.insert_header(CONTENT_LENGTH, body.len())?;
        response.insert_header(http::header::CACHE_CONTROL, "private, no-store")?;
        response.insert_header(STRANGLER_ERROR, self.reason.as_str())?;
        response.insert_header(REQUEST_ID, self.request_id.clone())?;
        if let Some(seconds) = self.retry_after() {
            response.insert_header(http::header::RETRY_AFTER, seconds)?;
        }
        Ok((response, body))
    }

    /// The connection layer's answer, written straight to the socket as HTTP/1.1: head only,
    /// and the connection closes after it.
    pub fn to_raw_http1(&self) -> Vec<u8> {
        let status = StatusCode::from_u16(self.status).ok();
        let phrase = status
            .and_then(|status| status.canonical_reason())
            .unwrap_or("Error");
        let retry_after = self
            .retry_after()
            .map(|seconds| format!("retry-after: {seconds}\r\n"))
            .unwrap_or_default();
        format!(
            "HTTP/1.1 {} {phrase}\r\ncontent-length: 0\r\n{retry_after}\
             x-strangler-error: {}\r\nx-request-id: {}\r\nconnection: close\r\n\r\n",
            self.status,
            self.reason.as_str(),
            String::from_utf8_lossy(self.request_id.as_bytes())
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> HeaderValue {
        HeaderValue::from_static("req-1")
    }

    #[test]
    fn the_proxy_answer_has_the_reason_in_its_header_and_json_body() {
        let answer = ErrorResponse::of(Reason::BodyTooLarge, id());
        let (head, body) = answer.to_pingora().unwrap();
        assert_eq!(head.status, 413);
        assert_eq!(head.headers["x-strangler-error"], "body_too_large");
        assert_eq!(head.headers["x-request-id"], "req-1");
        assert_eq!(head.headers["content-type"], "application/json");
        assert_eq!(head.headers["cache-control"], "private, no-store");
        assert_eq!(head.headers["content-length"], body.len().to_string());
        assert!(!head.headers.contains_key("retry-after"));
        assert_eq!(
            &body[..],
            b"{\"error\":\"body_too_large\",\"status\":413,\"request_id\":\"req-1\"}\n"
        );
    }

    #[test]
    fn a_503_tells_the_client_when_to_try_again() {
        let (head, _) = ErrorResponse::of(Reason::NoHealthyBackend, id())
            .to_pingora()
            .unwrap();
        assert_eq!(head.headers["retry-after"], "5");
        let (head, _) = ErrorResponse::new(503, Reason::HttpStatus, id())
            .to_pingora()
            .unwrap();
        assert_eq!(head.headers["retry-after"], "5");
    }

    #[test]
    fn the_connection_answers_are_head_only_and_close() {
        let answer = ErrorResponse::of(Reason::TooManyConnections, id()).to_raw_http1();
        assert_eq!(
            String::from_utf8(answer).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\n\
             x-strangler-error: too_many_connections\r\nx-request-id: req-1\r\n\
             connection: close\r\n\r\n"
        );
        for (reason, line) in [
            (Reason::HeaderTimeout, "HTTP/1.1 408 Request Timeout\r\n"),
            (Reason::UriTooLong, "HTTP/1.1 414 URI Too Long\r\n"),
            (
                Reason::TooManyHeaders,
                "HTTP/1.1 431 Request Header Fields Too Large\r\n",
            ),
            (
                Reason::HeadersTooLarge,
                "HTTP/1.1 431 Request Header Fields Too Large\r\n",
            ),
        ] {
            let answer = String::from_utf8(ErrorResponse::of(reason, id()).to_raw_http1()).unwrap();
            assert!(answer.starts_with(line), "{answer}");
            assert!(!answer.contains("retry-after"), "{answer}");
        }
    }
}
