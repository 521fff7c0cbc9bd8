//! What is done to a request on its way to one upstream (path and host rewrites, header edits,
//! together a target's [`RequestEdits`]) and to a response on its way back (a route's response
//! header edits), and how a request's cookies are read ([`cookie_values`]). Compiled once per
//! config generation (by [`crate::routing`], for every target, the shadow's included); applied
//! on the hot path by the proxy and by [`crate::shadow`] to its copies.
//!
//! A leaf: it knows requests and headers, not routes or configs, so routing and shadowing both
//! use it without using each other.

use std::borrow::Cow;

use http::header::COOKIE;
use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use regex::Regex;

/// A path rewrite. Prefixes are matched on segment boundaries, as `path_prefix` is.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    StripPrefix(String),
    ReplacePrefix { from: String, to: String },
    Regex { regex: Regex, replacement: String },
}

impl PathRewrite {
    /// Replaces the whole-segment prefix `from` with `to`; both are stored without a trailing
    /// slash, so joining them with the rest of a path never doubles one.
    pub fn replace_prefix(from: &str, to: &str) -> Self {
        let from = from.trim_end_matches('/');
        PathRewrite::ReplacePrefix {
            from: if from.is_empty() { "/" } else { from }.to_owned(),
            to: to.trim_end_matches('/').to_owned(),
        }
    }

    /// The rewritten path, or `None` when the rule does not apply to `path`.
    pub fn apply<'a>(&self, path: &'a str) -> Option<Cow<'a, str>> {
        match self {
            PathRewrite::StripPrefix(prefix) => {
                let rest = strip_segment_prefix(path, prefix)?;
                Some(if rest.is_empty() {
                    Cow::Borrowed("/")
                } else {
                    Cow::Borrowed(rest)
                })
            }
            PathRewrite::ReplacePrefix { from, to } => {
                let rest = strip_segment_prefix(path, from)?;
                let joined = match (to.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_owned(),
                    (true, false) => rest.to_owned(),
                    (false, _) => format!("{to}{rest}"),
                };
                Some(Cow::Owned(joined))
            }
            PathRewrite::Regex { regex, replacement } => {
                // One pass: `replace` borrows the path back exactly when nothing matched.
                match regex.replace(path, replacement.as_str()) {
                    Cow::Borrowed(_) => None,
                    Cow::Owned(replaced) if replaced.starts_with('/') => Some(Cow::Owned(replaced)),
                    Cow::Owned(replaced) => Some(Cow::Owned(format!("/{replaced}"))),
                }
            }
        }
    }
}

/// `path` minus `prefix` when `prefix` covers whole segments of it: the remainder is empty or
/// starts with `/`. `prefix` is stored without a trailing slash (except for `/` itself).
fn strip_segment_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix == "/" {
        return Some(path);
    }
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Applies a new path to the upstream request, keeping the query string.
pub fn set_path(request: &mut RequestHeader, path: &str) -> pingora_error::Result<()> {
    let path_and_query = match request.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let uri = http::Uri::builder()
        .path_and_query(path_and_query)
        .build()
        .map_err(|error| {
            pingora_error::Error::because(
                pingora_error::ErrorType::InternalError,
                "rewritten path is not a valid URI",
                error,
            )
        })?;
    request.set_uri(uri);
    Ok(())
}

/// What one target does to a request before it reaches its upstream: the path rewrite, the
/// `Host` rewrite and header edits, in that order. Empty for a target named without edits, so
/// the upstream sees the request exactly as the client sent it (plus forwarding headers).
#[derive(Debug, Clone, Default)]
pub struct RequestEdits {
    pub path: Option<PathRewrite>,
    pub host: Option<HeaderValue>,
    pub headers: HeaderActions,
}

impl RequestEdits {
    pub fn is_empty(&self) -> bool {
        self.path.is_none() && self.host.is_none() && self.headers.is_empty()
    }

    /// Applies the edits to `request`, whose path is still the client's.
    pub fn apply(&self, request: &mut RequestHeader) -> pingora_error::Result<()> {
        if let Some(rewrite) = &self.path {
            let rewritten = rewrite
                .apply(request.uri.path())
                .map(|path| path.into_owned());
            if let Some(path) = rewritten {
                set_path(request, &path)?;
            }
        }
        if let Some(host) = &self.host {
            request.insert_header(http::header::HOST, host.clone())?;
        }
        self.headers.apply(request)
    }
}

/// Header edits for one direction; order: remove, set, add.
#[derive(Debug, Clone, Default)]
pub struct HeaderActions {
    pub(super) remove: Vec<HeaderName>,
    pub(super) set: Vec<(HeaderName, HeaderValue)>,
    pub(super) add: Vec<(HeaderName, HeaderValue)>,
}

/// The header operations both pingora header types share.
pub trait HeaderEdit {
    fn remove(&mut self, name: &HeaderName);
    fn set(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora_error::Result<()>;
    fn add(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora_error::Result<()>;
}

macro_rules! impl_header_edit {
    ($ty:ty) => {
        impl HeaderEdit for $ty {
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn set(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora_error::Result<()> {
                self.insert_header(name.clone(), value.clone())
            }
            fn add(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora_error::Result<()> {
                self.append_header(name.clone(), value.clone()).map(|_| ())
            }
        }
    };
}
impl_header_edit!(RequestHeader);
impl_header_edit!(ResponseHeader);

impl HeaderActions {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, headers: &mut impl HeaderEdit) -> pingora_error::Result<()> {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.set(name, value)?;
        }
        for (name, value) in &self.add {
            headers.add(name, value)?;
        }
        Ok(())
    }
}

/// Values of cookie `name` across all `Cookie` headers.
pub fn cookie_values<'a>(
    request: &'a RequestHeader,
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> {
    request
        .headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|header| header.as_bytes().split(|b| *b == b';'))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_respects_segments() {
        let rule = PathRewrite::StripPrefix("/api".into());
        assert_eq!(rule.apply("/api/orders").as_deref(), Some("/orders"));
        assert_eq!(rule.apply("/api").as_deref(), Some("/"));
        assert_eq!(rule.apply("/apix/orders"), None);
    }

    #[test]
    fn replace_prefix_joins_cleanly() {
        let rule = PathRewrite::replace_prefix("/api/v1", "/v2/");
        assert_eq!(
            rule.apply("/api/v1/users/7").as_deref(),
            Some("/v2/users/7")
        );
        assert_eq!(rule.apply("/api/v1").as_deref(), Some("/v2"));
        assert_eq!(rule.apply("/api/v10"), None);
    }

    #[test]
    fn regex_rewrite_expands_groups() {
        let rule = PathRewrite::Regex {
            regex: Regex::new(r"^/users/(\d+)/profile$").unwrap(),
            replacement: "/v2/profiles/$1".into(),
        };
        assert_eq!(
            rule.apply("/users/42/profile").as_deref(),
            Some("/v2/profiles/42")
        );
        assert_eq!(rule.apply("/users/x/profile"), None);
    }
}
