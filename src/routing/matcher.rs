//! The per-route conditions other than the path: host, method, headers, query and cookies.
//!
//! The path is not here because the route index ([`super::index`]) decides it for all routes at
//! once. Everything in this file runs on the hot path and reads the request without allocating.

use http::header::HOST;
use http::{HeaderName, Method};
use pingora_http::RequestHeader;
use regex::Regex;

use crate::edits::cookie_values;

/// Compiled `match:` conditions of a route, minus the path.
#[derive(Debug, Default)]
pub struct RequestMatcher {
    pub(super) hosts: Vec<HostPattern>,
    pub(super) methods: Vec<Method>,
    pub(super) headers: Vec<(HeaderName, ValueMatcher)>,
    pub(super) query: Vec<(String, ValueMatcher)>,
    pub(super) cookies: Vec<(String, ValueMatcher)>,
}

impl RequestMatcher {
    pub fn matches(&self, request: &RequestHeader) -> bool {
        (self.methods.is_empty() || self.methods.contains(&request.method))
            && (self.hosts.is_empty() || self.matches_host(request))
            && self.headers.iter().all(|(name, matcher)| {
                matcher.matches_any(request.headers.get_all(name).iter().map(|v| v.as_bytes()))
            })
            && self.query.iter().all(|(name, matcher)| {
                let query = request.uri.query().unwrap_or("");
                matcher.matches_any(query_values(query, name))
            })
            && self
                .cookies
                .iter()
                .all(|(name, matcher)| matcher.matches_any(cookie_values(request, name)))
    }

    fn matches_host(&self, request: &RequestHeader) -> bool {
        let Some(host) = request_host(request) else {
            return false;
        };
        self.hosts.iter().any(|pattern| pattern.matches(host))
    }
}

/// The host the client asked for, without port: the `Host` header, else the URI authority.
pub fn request_host(request: &RequestHeader) -> Option<&str> {
    let raw = match request.headers.get(HOST) {
        Some(value) => value.to_str().ok()?,
        None => request.uri.authority()?.as_str(),
    };
    Some(strip_port(raw))
}

fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        return rest.split_once(']').map_or(authority, |(ip, _)| ip);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// `api.example.com` or `*.example.com`, stored lower-case.
#[derive(Debug, Clone, PartialEq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix including its dot (`.example.com`); matches any subdomain, not the bare domain.
    Subdomain(String),
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let lower = pattern.to_ascii_lowercase();
        if lower.is_empty() {
            return Err("is empty".into());
        }
        if lower.contains(':') && !lower.starts_with('[') {
            return Err(format!(
                "`{pattern}`: host patterns match the name only, the port is ignored; drop `:port`"
            ));
        }
        if let Some(suffix) = lower.strip_prefix('*') {
            if !suffix.starts_with('.') || suffix.len() < 2 || suffix.contains('*') {
                return Err(format!(
                    "`{pattern}`: a wildcard is only allowed as a leading `*.`, like *.example.com"
                ));
            }
            return Ok(HostPattern::Subdomain(suffix.to_owned()));
        }
        if lower.contains('*') {
            return Err(format!(
                "`{pattern}`: a wildcard is only allowed as a leading `*.`, like *.example.com"
            ));
        }
        if lower.contains(['/', ' ', '@']) {
            return Err(format!("`{pattern}` is not a host name"));
        }
        if let Some(bracketed) = lower.strip_prefix('[') {
            // An IPv6 literal, written as in a URL.
            let (ip, _) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("`{pattern}`: unclosed `[`"))?;
            return Ok(HostPattern::Exact(ip.to_owned()));
        }
        Ok(HostPattern::Exact(lower))
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(expected) => host.eq_ignore_ascii_case(expected),
            HostPattern::Subdomain(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// A condition on a header, query parameter or cookie.
#[derive(Debug, Clone)]
pub enum ValueMatcher {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

impl ValueMatcher {
    /// Whether the field's values (it may occur several times) satisfy the condition: for exact
    /// and regex, any one value; for `present`, whether there is one at all.
    fn matches_any<'a>(&self, mut values: impl Iterator<Item = &'a [u8]>) -> bool {
        match self {
            ValueMatcher::Present(expected) => values.next().is_some() == *expected,
            ValueMatcher::Exact(expected) => values.any(|value| value == expected.as_bytes()),
            ValueMatcher::Regex(regex) => values
                .any(|value| std::str::from_utf8(value).is_ok_and(|value| regex.is_match(value))),
        }
    }
}

/// Values of query parameter `name` (raw, not percent-decoded: compare what was sent).
fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    query.split('&').filter_map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        for (name, value) in headers {
            request.append_header(*name, *value).unwrap();
        }
        request
    }

    #[test]
    fn host_patterns() {
        let exact = HostPattern::parse("API.example.com").unwrap();
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("x.api.example.com"));
        let wildcard = HostPattern::parse("*.example.com").unwrap();
        assert!(wildcard.matches("a.example.com"));
        assert!(wildcard.matches("a.b.EXAMPLE.com"));
        assert!(!wildcard.matches("example.com"));
        assert!(!wildcard.matches("badexample.com"));
        assert!(HostPattern::parse("a.*.com").is_err());
        assert!(
            HostPattern::parse("*.example.com:8080").is_err(),
            "ports are never compared"
        );
        assert_eq!(
            HostPattern::parse("[::1]").unwrap(),
            HostPattern::Exact("::1".into())
        );
    }

    #[test]
    fn host_comes_without_port() {
        let req = request("/", &[("host", "api.example.com:8080")]);
        assert_eq!(request_host(&req), Some("api.example.com"));
        let req = request("/", &[("host", "[::1]:8080")]);
        assert_eq!(request_host(&req), Some("::1"));
    }

    #[test]
    fn query_and_cookie_values() {
        let values: Vec<_> = query_values("a=1&b=2&a=3&flag", "a").collect();
        assert_eq!(values, [b"1".as_slice(), b"3"]);
        assert_eq!(query_values("flag", "flag").count(), 1);
        let req = request("/", &[("cookie", "x=1; session_id=abc"), ("cookie", "y=2")]);
        assert_eq!(
            cookie_values(&req, "session_id").collect::<Vec<_>>(),
            [b"abc".as_slice()]
        );
        assert_eq!(cookie_values(&req, "y").count(), 1);
        assert_eq!(cookie_values(&req, "z").count(), 0);
    }
}
