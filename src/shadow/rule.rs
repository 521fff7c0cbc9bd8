//! A route's compiled `shadow:` settings and how they shape the copy of a request.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method};
use http_body_util::Full;
use pingora_http::RequestHeader;
use tokio::sync::Semaphore;

use crate::config::{Diagnostic, KeyConfig, ShadowConfig};
use crate::diff::{CompareRule, compile_compare};
use crate::redact::{CREDENTIAL_HEADERS, Redaction};
use crate::routing::RequestEdits;
use crate::upstream::UpstreamPool;

const SHADOW_MARK: HeaderName = HeaderName::from_static("x-strangler-shadow");
const REDACTED: HeaderValue = HeaderValue::from_static("[redacted]");

/// How many bytes of the shadow's response are kept for comparison.
const RESPONSE_LIMIT: usize = 1 << 20;

/// Compiled `shadow:` of one route.
#[derive(Debug)]
pub struct ShadowRule {
    pub(super) upstream: Arc<UpstreamPool>,
    sample: f64,
    sample_key: Option<KeyConfig>,
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
    if !(0.0..=1.0).contains(&config.sample) || config.sample.is_nan() {
        diagnostics.push(
            Diagnostic::new(format!("{path}.sample"), "must be between 0.0 and 1.0")
                .with_hint("0.1 mirrors one request in ten"),
        );
    }
    let mut methods = Vec::new();
    for (number, method) in config.methods.iter().enumerate() {
        match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
            Ok(method) => methods.push(method),
            Err(_) => diagnostics.push(Diagnostic::new(
                format!("{path}.methods[{number}]"),
                format!("`{method}` is not an HTTP method"),
            )),
        }
    }
    if let Some(key) = &config.sample_key
        && key.header.is_some() == key.cookie.is_some()
    {
        diagnostics.push(
            Diagnostic::new(
                format!("{path}.sample_key"),
                "set exactly one of `header` or `cookie`",
            )
            .with_hint("sample_key: { cookie: session_id }"),
        );
    }
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
        sample_key: config.sample_key.clone(),
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

/// Seed of the sampling hash; any value other than the split's (unseeded) one.
const SAMPLE_SEED: u64 = 0x5348_4144_4f57; // "SHADOW"

impl ShadowRule {
    /// The name of the upstream copies go to.
    pub fn upstream_name(&self) -> &str {
        self.upstream.name()
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
    /// with the teed body.
    pub(super) fn build_request(
        &self,
        header: RequestHeader,
        body: Vec<Bytes>,
        pool: Option<&UpstreamPool>,
    ) -> Result<http::Request<Full<Bytes>>, http::Error> {
        let pool = pool.unwrap_or(&self.upstream);
        let address = pool.select_address();
        let path_and_query = header.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let uri = format!("{}://{address}{path_and_query}", pool.scheme());
        let body = match body.len() {
            0 => Bytes::new(),
            1 => body.into_iter().next().expect("one chunk"),
            _ => {
                let mut joined = BytesMut::with_capacity(body.iter().map(Bytes::len).sum());
                for chunk in &body {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        };
        let mut request = http::Request::builder()
            .method(header.method.clone())
            .uri(uri)
            .body(Full::new(body))?;
        *request.headers_mut() = header.headers.clone();
        // A TLS or h2c upstream's own client travels with the request (see `ShadowClient`).
        if let Some(client) = pool.shadow_client() {
            request.extensions_mut().insert(client.clone());
        }
        Ok(request)
    }
}

fn request_key<'a>(request: &'a RequestHeader, key: &'a KeyConfig) -> Option<&'a [u8]> {
    if let Some(name) = &key.header {
        return request
            .headers
            .get(name.as_str())
            .map(HeaderValue::as_bytes);
    }
    let name = key.cookie.as_deref()?;
    crate::routing::cookie_values(request, name).next()
}
