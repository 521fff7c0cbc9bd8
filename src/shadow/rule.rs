//! A route's compiled `shadow:` settings and how they shape the copy of a request.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method};
use pingora_http::RequestHeader;
use tokio::sync::Semaphore;

use crate::config::{Diagnostic, KeyConfig, ShadowConfig};
use crate::diff::{CompareRule, compile_compare};
use crate::edits::{RequestEdits, cookie_values};
use crate::redact::{CREDENTIAL_HEADERS, Redaction};
use crate::upstream::UpstreamPool;

use super::client::ShadowRequest;

const SHADOW_MARK: HeaderName = HeaderName::from_static("x-strangler-shadow");
const REDACTED: HeaderValue = HeaderValue::from_static("[redacted]");

/// How many bytes of the shadow's response are kept for comparison.
const RESPONSE_LIMIT: usize = 1 << 20;

/// Compiled `shadow:` of one route.
#[derive(Debug)]
pub struct ShadowRule {
    pub(super) upstream: Arc<UpstreamPool>,
    sample: f64,
    sample_key: Option<SampleKey>,
    methods: Vec<Method>,
    pub(super) max_body: usize,
    pub(super) timeout: Duration,
    pub(super) inflight: Arc<Semaphore>,
    /// The shadow target's own edits of the client's request (none by default): the copy
    /// never inherits the primary target's rewrite.
    edits: RequestEdits,
    redact: Vec<HeaderName>,
    /// Keep the client's credentials on the copy (`shadow.forward_credentials`).
    forward_credentials: bool,
    /// What is redacted in the exchange's stored request line.
    pub(super) redaction: Arc<Redaction>,
    pub(super) response_limit: usize,
    pub(super) compare: Arc<CompareRule>,
}

/// Builds a [`ShadowRule`] for copies sent to `target`: the shadow's upstream and its edits, as
/// the route compiler resolved and checked them like every other target of the route (`None`
/// when that failed; the other settings are still checked).
pub fn compile_shadow(
    config: &ShadowConfig,
    path: &str,
    target: Option<(Arc<UpstreamPool>, RequestEdits)>,
    redaction: &Arc<Redaction>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<ShadowRule> {
    let before = diagnostics.len();
    reject_moved_edits(config, path, diagnostics);
    crate::config::sample_share(
        config.sample,
        path,
        "0.1 mirrors one request in ten",
        diagnostics,
    );
    let methods = crate::config::methods(&config.methods, path, diagnostics);
    let sample_key = config
        .sample_key
        .as_ref()
        .and_then(|key| compile_sample_key(key, &format!("{path}.sample_key"), diagnostics));
    if config.max_inflight == 0 {
        diagnostics.push(Diagnostic::new(
            format!("{path}.max_inflight"),
            "must be at least 1",
        ));
    }
    if config.timeout.is_zero() {
        diagnostics.push(Diagnostic::new(
            format!("{path}.timeout"),
            "must be greater than zero",
        ));
    }
    let mut redact = Vec::new();
    for (number, name) in config.redact.iter().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => redact.push(name),
            Err(_) => diagnostics.push(Diagnostic::new(
                format!("{path}.redact[{number}]"),
                format!("`{name}` is not a valid header name"),
            )),
        }
    }
    let compare = compile_compare(&config.compare, &format!("{path}.compare"), diagnostics);
    if diagnostics.len() != before {
        return None;
    }
    let (upstream, edits) = target?;
    Some(ShadowRule {
        compare: Arc::new(compare),
        upstream,
        sample: config.sample,
        sample_key,
        methods,
        max_body: usize::try_from(config.max_body.as_u64()).unwrap_or(usize::MAX),
        timeout: config.timeout,
        inflight: Arc::new(Semaphore::new(config.max_inflight)),
        edits,
        redact,
        forward_credentials: config.forward_credentials,
        redaction: redaction.clone(),
        response_limit: RESPONSE_LIMIT,
    })
}

/// The shadow's own `rewrite` and `headers` of earlier versions: refused, with the spelling that
/// replaces them (edits belong to the shadow's upstream, a target like any other).
fn reject_moved_edits(config: &ShadowConfig, path: &str, diagnostics: &mut Vec<Diagnostic>) {
    for (field, new_field, value) in [
        ("rewrite", "rewrite", &config.rewrite),
        ("headers", "request_headers", &config.headers),
    ] {
        let Some(value) = value else { continue };
        let hint = if value.as_mapping().is_some_and(|map| map.is_empty()) {
            "remove it: a copy is the client's request as sent unless its upstream has edits"
                .to_owned()
        } else {
            // A YAML value on one line (JSON is YAML's flow style).
            let flow = serde_json::to_string(value).unwrap_or_else(|_| "{..}".to_owned());
            format!(
                "shadow: {{ upstream: {{ name: {}, {new_field}: {flow} }} }}",
                config.upstream.name
            )
        };
        diagnostics.push(
            Diagnostic::new(
                format!("{path}.{field}"),
                format!("`shadow.{field}` moved into the shadow's upstream"),
            )
            .with_hint(hint),
        );
    }
}

/// Seed of the sampling hash; any value other than the split's (unseeded) one.
const SAMPLE_SEED: u64 = 0x5348_4144_4f57; // "SHADOW"

impl ShadowRule {
    /// The name of the upstream copies go to.
    pub fn upstream_name(&self) -> &str {
        self.upstream.name()
    }

    /// The copy's own edits (its target's): what `strangler replay --routes` applies to the
    /// candidate's request.
    pub fn edits(&self) -> &RequestEdits {
        &self.edits
    }

    /// How the copy's answer is compared with the primary's.
    pub fn compare_rule(&self) -> &Arc<CompareRule> {
        &self.compare
    }

    pub(super) fn allows_method(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }

    /// Whether this request is in the sample: by its key when one is configured and present
    /// (the same key always gets the same answer), else at random.
    pub(super) fn sampled(&self, request: &RequestHeader) -> bool {
        if self.sample >= 1.0 {
            return true;
        }
        if self.sample <= 0.0 {
            return false;
        }
        let key = self
            .sample_key
            .as_ref()
            .and_then(|key| request_key(request, key));
        let point = match key {
            // Seeded apart from the canary split's hash of the same key: otherwise, with one
            // cookie for both, the sampled users would be exactly one side of the split.
            Some(key) => {
                (xxhash_rust::xxh3::xxh3_64_with_seed(key, SAMPLE_SEED) % 10_000) as f64 / 10_000.0
            }
            None => fastrand::f64(),
        };
        point < self.sample
    }

    /// The copy's request header: the request as it left the client side of the proxy (with
    /// forwarding headers, before any target's edits), edited as the shadow target says, with
    /// redactions and the shadow mark.
    pub(super) fn shadow_header(&self, forwarded: &RequestHeader) -> RequestHeader {
        let mut header = forwarded.clone();
        let _ = self.edits.apply(&mut header);
        if !self.forward_credentials {
            for name in &CREDENTIAL_HEADERS {
                header.remove_header(name);
            }
        }
        for name in &self.redact {
            if header.headers.contains_key(name) {
                let _ = header.insert_header(name.clone(), REDACTED);
            }
        }
        let _ = header.insert_header(SHADOW_MARK, HeaderValue::from_static("1"));
        // The body is sent whole, so the client sets its own length.
        header.remove_header(&http::header::CONTENT_LENGTH);
        header.remove_header(&http::header::TRANSFER_ENCODING);
        header
    }

    /// The noise copy's header: the primary upstream's request, marked as a copy.
    pub(super) fn noise_header(&self, upstream: &RequestHeader) -> RequestHeader {
        let mut header = upstream.clone();
        let _ = header.insert_header(SHADOW_MARK, HeaderValue::from_static("1"));
        header.remove_header(&http::header::CONTENT_LENGTH);
        header.remove_header(&http::header::TRANSFER_ENCODING);
        header
    }

    /// The request to send: to the next backend of `pool` (the shadow upstream unless given),
    /// with the teed body, framed by its length (an empty body gets no `Content-Length`, as a
    /// bodiless request has none). How it is written depends on the connection the backend
    /// gives (see [`super::client`]).
    pub(super) fn build_request(
        &self,
        mut header: RequestHeader,
        body: Bytes,
        pool: Option<Arc<UpstreamPool>>,
    ) -> ShadowRequest {
        let pool = pool.unwrap_or_else(|| self.upstream.clone());
        let backend = pool.select_for_copy();
        if !body.is_empty() {
            let _ = header.insert_header(http::header::CONTENT_LENGTH, body.len());
        }
        ShadowRequest {
            header,
            body,
            pool,
            backend,
        }
    }
}

/// A teed body in one buffer: its only chunk, or its chunks joined.
pub(super) fn join(chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.into_iter().next().expect("one chunk"),
        _ => {
            let mut joined = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for chunk in &chunks {
                joined.extend_from_slice(chunk);
            }
            joined.freeze()
        }
    }
}

/// Where a request's sampling key comes from, compiled from `shadow.sample_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SampleKey {
    Header(HeaderName),
    Cookie(String),
}

/// Compiles `sample_key:`: exactly one of `header` (a valid header name) or `cookie`.
fn compile_sample_key(
    key: &KeyConfig,
    path: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<SampleKey> {
    match (&key.header, &key.cookie) {
        (Some(header), None) => match HeaderName::from_bytes(header.as_bytes()) {
            Ok(name) => Some(SampleKey::Header(name)),
            Err(_) => {
                diagnostics.push(Diagnostic::new(
                    format!("{path}.header"),
                    format!("`{header}` is not a valid header name"),
                ));
                None
            }
        },
        (None, Some(cookie)) => Some(SampleKey::Cookie(cookie.clone())),
        _ => {
            diagnostics.push(
                Diagnostic::new(path, "set exactly one of `header` or `cookie`")
                    .with_hint("sample_key: { cookie: session_id }"),
            );
            None
        }
    }
}

fn request_key<'a>(request: &'a RequestHeader, key: &'a SampleKey) -> Option<&'a [u8]> {
    match key {
        SampleKey::Header(name) => request.headers.get(name).map(HeaderValue::as_bytes),
        SampleKey::Cookie(name) => cookie_values(request, name).next(),
    }
}

#[cfg(test)]
mod tests {
    //! Compiling `shadow:` and sampling, in-process.

    use super::*;
    use crate::config::UpstreamConfig;

    fn compiled(yaml: &str) -> Result<ShadowRule, Vec<String>> {
        let config: ShadowConfig = serde_yaml::from_str(yaml).expect("a shadow section");
        let upstream: UpstreamConfig =
            serde_yaml::from_str("backends: [127.0.0.1:9]").expect("an upstream");
        let mut diagnostics = Vec::new();
        let pool = UpstreamPool::compile(
            "candidate",
            &upstream,
            "upstreams.candidate",
            &mut diagnostics,
        )
        .expect("the upstream compiles");
        let rule = compile_shadow(
            &config,
            "routes[0].shadow",
            Some((Arc::new(pool), RequestEdits::default())),
            &Arc::new(Redaction::default()),
            &mut diagnostics,
        );
        rule.ok_or_else(|| {
            diagnostics
                .iter()
                .map(|d| format!("{}: {}", d.path, d.message))
                .collect()
        })
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    #[test]
    fn a_sample_without_a_key_mirrors_that_share_of_requests_at_random() {
        let rule = compiled("upstream: candidate\nsample: 0.25").unwrap();
        let request = request(&[]);
        let sampled = (0..20_000).filter(|_| rule.sampled(&request)).count();
        // 25 % of 20,000, within about four standard deviations (61).
        assert!((4750..=5250).contains(&sampled), "{sampled} of 20000");
    }

    #[test]
    fn a_keyed_sample_gives_one_key_one_answer_and_the_share_across_keys() {
        let rule =
            compiled("upstream: candidate\nsample: 0.1\nsample_key: { cookie: sid }").unwrap();
        let mut sampled = 0;
        for user in 0..10_000 {
            let cookie = format!("a=1; sid={user}");
            let request = request(&[("cookie", cookie.as_str())]);
            let first = rule.sampled(&request);
            assert!((0..5).all(|_| rule.sampled(&request) == first));
            sampled += usize::from(first);
        }
        assert!((850..=1150).contains(&sampled), "{sampled} of 10000");
    }

    #[test]
    fn a_header_key_is_read_without_regard_to_case() {
        let rule =
            compiled("upstream: candidate\nsample: 0.5\nsample_key: { header: X-User }").unwrap();
        let answers: Vec<bool> = (0..200)
            .map(|user| {
                let user = user.to_string();
                let upper = rule.sampled(&request(&[("X-USER", user.as_str())]));
                let lower = rule.sampled(&request(&[("x-user", user.as_str())]));
                assert_eq!(upper, lower);
                upper
            })
            .collect();
        assert!(answers.contains(&true) && answers.contains(&false));
    }

    #[test]
    fn everything_or_nothing_is_sampled_at_the_ends_of_the_range() {
        let all = compiled("upstream: candidate\nsample: 1.0").unwrap();
        let none = compiled("upstream: candidate\nsample: 0.0").unwrap();
        assert!((0..100).all(|_| all.sampled(&request(&[]))));
        assert!((0..100).all(|_| !none.sampled(&request(&[]))));
    }

    #[test]
    fn a_sample_key_needs_exactly_one_source_and_a_valid_header_name() {
        let both = compiled("upstream: candidate\nsample_key: { header: x-a, cookie: b }");
        assert_eq!(
            both.unwrap_err(),
            ["routes[0].shadow.sample_key: set exactly one of `header` or `cookie`"]
        );
        let neither = compiled("upstream: candidate\nsample_key: {}");
        assert!(neither.is_err());
        let bad = compiled("upstream: candidate\nsample_key: { header: 'x a' }");
        assert_eq!(
            bad.unwrap_err(),
            ["routes[0].shadow.sample_key.header: `x a` is not a valid header name"]
        );
    }

    #[test]
    fn methods_are_read_in_any_case_and_only_those_are_mirrored() {
        let rule = compiled("upstream: candidate\nmethods: [get, Post]").unwrap();
        assert!(rule.allows_method(&Method::GET));
        assert!(rule.allows_method(&Method::POST));
        assert!(!rule.allows_method(&Method::DELETE));
    }

    #[test]
    fn the_copy_loses_credentials_and_redacted_headers_and_carries_the_shadow_mark() {
        let rule = compiled("upstream: candidate\nredact: [x-secret]").unwrap();
        let forwarded = request(&[
            ("authorization", "Bearer t"),
            ("cookie", "sid=1"),
            ("x-secret", "s"),
            ("content-length", "3"),
            ("x-kept", "k"),
        ]);
        let copy = rule.shadow_header(&forwarded);
        assert!(copy.headers.get("authorization").is_none());
        assert!(copy.headers.get("cookie").is_none());
        assert!(copy.headers.get("content-length").is_none());
        assert_eq!(copy.headers["x-secret"], "[redacted]");
        assert_eq!(copy.headers["x-kept"], "k");
        assert_eq!(copy.headers["x-strangler-shadow"], "1");
    }

    #[test]
    fn the_old_shadow_edits_are_refused_with_their_new_spelling() {
        let problems =
            compiled("upstream: candidate\nrewrite: { strip_prefix: /api }\nheaders: {}")
                .unwrap_err();
        assert_eq!(
            problems,
            [
                "routes[0].shadow.rewrite: `shadow.rewrite` moved into the shadow's upstream",
                "routes[0].shadow.headers: `shadow.headers` moved into the shadow's upstream",
            ]
        );
    }

    #[test]
    fn every_bad_setting_is_reported_at_its_field() {
        let problems = compiled(
            "upstream: candidate\nsample: -1\nmax_inflight: 0\ntimeout: 0s\nredact: ['bad name']\nmethods: ['A B']",
        )
        .unwrap_err();
        for field in [
            "sample",
            "max_inflight",
            "timeout",
            "redact[0]",
            "methods[0]",
        ] {
            let path = format!("routes[0].shadow.{field}:");
            assert!(
                problems.iter().any(|p| p.starts_with(&path)),
                "{path} {problems:?}"
            );
        }
    }
}
