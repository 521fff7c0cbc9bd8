//! The words strangler says to the outside, each a closed set with one spelling: metric label
//! values, stored columns, response headers. Every vocabulary that crosses modules lives here
//! as an enum with one `as_str`, so the header, the metric label, the span, the store and the
//! docs cannot drift apart.
//!
//! This module imports nothing of the crate: it is the leaf every layer may use, [`crate::metrics`]
//! included. What each word means is documented on its variant; when it is counted or sent is
//! the business of the module that uses it.

/// Why a request got no copy, or what became of it; the `outcome` label of
/// `strangler_shadow_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowEvent {
    Sent,
    Completed,
    DroppedFull,
    /// The copy would have buffered past `server.shadow_max_memory`.
    DroppedMemory,
    SkippedSample,
    SkippedMethod,
    SkippedBody,
    /// The request was served by the shadow's own upstream (a canary split or the tester
    /// override chose it): comparing it with itself would only count fake matches.
    SkippedSameUpstream,
    /// The kill switch was on: no copies anywhere.
    SkippedKillSwitch,
    /// A protocol upgrade (WebSocket) is a conversation, not a request to replay.
    SkippedUpgrade,
    /// The copy was begun but never sent: the request failed or was refused before its body
    /// was complete (413, a client that went away, a fallback before the copy left).
    Abandoned,
    Error,
    Timeout,
}

impl ShadowEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowEvent::Sent => "sent",
            ShadowEvent::Completed => "completed",
            ShadowEvent::DroppedFull => "dropped_full",
            ShadowEvent::DroppedMemory => "dropped_memory",
            ShadowEvent::SkippedSample => "skipped_sample",
            ShadowEvent::SkippedMethod => "skipped_method",
            ShadowEvent::SkippedBody => "skipped_body",
            ShadowEvent::SkippedSameUpstream => "skipped_same_upstream",
            ShadowEvent::SkippedKillSwitch => "skipped_kill_switch",
            ShadowEvent::SkippedUpgrade => "skipped_upgrade",
            ShadowEvent::Abandoned => "abandoned",
            ShadowEvent::Error => "error",
            ShadowEvent::Timeout => "timeout",
        }
    }
}

/// How a compared exchange was counted: the `result` label of `strangler_diffs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffResult {
    Match,
    Mismatch,
    /// Every difference was discounted as noise.
    Noise,
    /// Nothing to compare: the primary failed, the queue was full, or an answer did not fit the
    /// shadow memory budget.
    Skipped,
}

impl DiffResult {
    pub const ALL: [DiffResult; 4] = [
        DiffResult::Match,
        DiffResult::Mismatch,
        DiffResult::Noise,
        DiffResult::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DiffResult::Match => "match",
            DiffResult::Mismatch => "mismatch",
            DiffResult::Noise => "noise",
            DiffResult::Skipped => "skipped",
        }
    }
}

/// Why strangler answered a request itself (or gave up on it): the `x-strangler-error` header,
/// the `error` of the JSON body, the `kind` label of `strangler_upstream_errors_total`, the
/// span's `error.type` and the reason table of docs/security.md, all from [`Reason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // The connection layer.
    TooManyConnections,
    HeaderTimeout,
    // Request checks, before anything is routed.
    UriTooLong,
    TooManyHeaders,
    HeadersTooLarge,
    MissingHost,
    InvalidRequestTarget,
    HostMismatch,
    MultipleHosts,
    InvalidHost,
    InvalidPath,
    DotSegmentInPath,
    AmbiguousFraming,
    UnsupportedTransferEncoding,
    InvalidContentLength,
    ConflictingContentLength,
    BodyTooLarge,
    // The client.
    ClientTimeout,
    BadRequest,
    ClientGone,
    // The upstream.
    NoHealthyBackend,
    ConnectRefused,
    ConnectError,
    ConnectTimeout,
    UpstreamTimeout,
    UpstreamClosed,
    /// The backend's certificate did not verify, or its TLS handshake failed.
    UpstreamTls,
    UpstreamBadResponse,
    UpstreamBadFraming,
    UpstreamError,
    // The proxy.
    RequestTimeout,
    InternalError,
    /// A failure that carries its own HTTP status.
    HttpStatus,
}

impl Reason {
    /// Every reason, in the order of docs/security.md's table.
    pub const ALL: [Reason; 33] = [
        Reason::TooManyConnections,
        Reason::HeaderTimeout,
        Reason::UriTooLong,
        Reason::TooManyHeaders,
        Reason::HeadersTooLarge,
        Reason::MissingHost,
        Reason::InvalidRequestTarget,
        Reason::HostMismatch,
        Reason::MultipleHosts,
        Reason::InvalidHost,
        Reason::InvalidPath,
        Reason::DotSegmentInPath,
        Reason::AmbiguousFraming,
        Reason::UnsupportedTransferEncoding,
        Reason::InvalidContentLength,
        Reason::ConflictingContentLength,
        Reason::BodyTooLarge,
        Reason::ClientTimeout,
        Reason::BadRequest,
        Reason::NoHealthyBackend,
        Reason::ConnectRefused,
        Reason::ConnectError,
        Reason::ConnectTimeout,
        Reason::UpstreamTimeout,
        Reason::UpstreamClosed,
        Reason::UpstreamTls,
        Reason::UpstreamBadResponse,
        Reason::UpstreamBadFraming,
        Reason::UpstreamError,
        Reason::RequestTimeout,
        Reason::InternalError,
        Reason::HttpStatus,
        Reason::ClientGone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooManyConnections => "too_many_connections",
            Reason::HeaderTimeout => "header_timeout",
            Reason::UriTooLong => "uri_too_long",
            Reason::TooManyHeaders => "too_many_headers",
            Reason::HeadersTooLarge => "headers_too_large",
            Reason::MissingHost => "missing_host",
            Reason::InvalidRequestTarget => "invalid_request_target",
            Reason::HostMismatch => "host_mismatch",
            Reason::MultipleHosts => "multiple_hosts",
            Reason::InvalidHost => "invalid_host",
            Reason::InvalidPath => "invalid_path",
            Reason::DotSegmentInPath => "dot_segment_in_path",
            Reason::AmbiguousFraming => "ambiguous_framing",
            Reason::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            Reason::InvalidContentLength => "invalid_content_length",
            Reason::ConflictingContentLength => "conflicting_content_length",
            Reason::BodyTooLarge => "body_too_large",
            Reason::ClientTimeout => "client_timeout",
            Reason::BadRequest => "bad_request",
            Reason::ClientGone => "client_gone",
            Reason::NoHealthyBackend => "no_healthy_backend",
            Reason::ConnectRefused => "connect_refused",
            Reason::ConnectError => "connect_error",
            Reason::ConnectTimeout => "connect_timeout",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamClosed => "upstream_closed",
            Reason::UpstreamTls => "upstream_tls",
            Reason::UpstreamBadResponse => "upstream_bad_response",
            Reason::UpstreamBadFraming => "upstream_bad_framing",
            Reason::UpstreamError => "upstream_error",
            Reason::RequestTimeout => "request_timeout",
            Reason::InternalError => "internal_error",
            Reason::HttpStatus => "http_status",
        }
    }

    /// The status this reason is always answered with; `None` for [`Reason::HttpStatus`] (the
    /// failure's own) and [`Reason::ClientGone`] (nobody to answer).
    pub fn status(self) -> Option<u16> {
        Some(match self {
            Reason::TooManyConnections | Reason::NoHealthyBackend => 503,
            Reason::HeaderTimeout | Reason::ClientTimeout => 408,
            Reason::UriTooLong => 414,
            Reason::TooManyHeaders | Reason::HeadersTooLarge => 431,
            Reason::MissingHost
            | Reason::InvalidRequestTarget
            | Reason::HostMismatch
            | Reason::MultipleHosts
            | Reason::InvalidHost
            | Reason::InvalidPath
            | Reason::DotSegmentInPath
            | Reason::AmbiguousFraming
            | Reason::UnsupportedTransferEncoding
            | Reason::InvalidContentLength
            | Reason::ConflictingContentLength
            | Reason::BadRequest => 400,
            Reason::BodyTooLarge => 413,
            Reason::ConnectRefused
            | Reason::ConnectError
            | Reason::UpstreamClosed
            | Reason::UpstreamTls
            | Reason::UpstreamBadResponse
            | Reason::UpstreamBadFraming
            | Reason::UpstreamError => 502,
            Reason::ConnectTimeout | Reason::UpstreamTimeout | Reason::RequestTimeout => 504,
            Reason::InternalError => 500,
            Reason::HttpStatus | Reason::ClientGone => return None,
        })
    }
}

/// What the diff worker concluded about one compared exchange: the stored `verdict` column, the
/// `verdict=` filter of `GET /diffs` and the report's sections.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No difference.
    Match,
    /// At least one difference that noise does not explain.
    Mismatch,
    /// Differences, all explained by noise.
    Noise,
    /// The candidate failed (timeout, connection error): nothing to compare.
    ShadowError,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Match,
        Verdict::Mismatch,
        Verdict::Noise,
        Verdict::ShadowError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Match => "match",
            Verdict::Mismatch => "mismatch",
            Verdict::Noise => "noise",
            Verdict::ShadowError => "shadow_error",
        }
    }

    /// The verdict spelled `word`, as stored or asked for.
    pub fn parse(word: &str) -> Option<Verdict> {
        Verdict::ALL
            .into_iter()
            .find(|verdict| verdict.as_str() == word)
    }

    /// How it is counted in `strangler_diffs_total`: a candidate that failed is a mismatch.
    pub fn result(self) -> DiffResult {
        match self {
            Verdict::Match => DiffResult::Match,
            Verdict::Noise => DiffResult::Noise,
            Verdict::Mismatch | Verdict::ShadowError => DiffResult::Mismatch,
        }
    }
}

/// Why a batch was not stored (the `reason` of `strangler_diff_store_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The writer's queue was full (Postgres slower than the traffic).
    QueueFull,
    /// Postgres could not be reached; the writer waits before it tries again.
    Unavailable,
    /// The write failed.
    WriteFailed,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [Self::QueueFull, Self::Unavailable, Self::WriteFailed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Unavailable => "unavailable",
            Self::WriteFailed => "write_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_reason_is_spelled_once_and_listed_once() {
        let words: HashSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(words.len(), Reason::ALL.len());
        let listed: HashSet<Reason> = Reason::ALL.into_iter().collect();
        assert_eq!(listed.len(), Reason::ALL.len());
    }

    #[test]
    fn only_the_failures_own_status_and_a_gone_client_have_no_status_of_their_own() {
        let without: Vec<&str> = Reason::ALL
            .iter()
            .filter(|r| r.status().is_none())
            .map(|r| r.as_str())
            .collect();
        assert_eq!(without, ["http_status", "client_gone"]);
        assert_eq!(Reason::UriTooLong.status(), Some(414));
        assert_eq!(Reason::NoHealthyBackend.status(), Some(503));
    }

    #[test]
    fn a_verdict_reads_back_from_its_word_and_nothing_else() {
        for verdict in Verdict::ALL {
            assert_eq!(Verdict::parse(verdict.as_str()), Some(verdict));
            let json = serde_json::to_string(&verdict).unwrap();
            assert_eq!(json, format!("\"{}\"", verdict.as_str()));
        }
        assert_eq!(Verdict::parse("MATCH"), None);
        assert_eq!(Verdict::parse(""), None);
    }

    #[test]
    fn a_failed_candidate_counts_as_a_mismatch() {
        assert_eq!(Verdict::ShadowError.result(), DiffResult::Mismatch);
        assert_eq!(Verdict::Noise.result(), DiffResult::Noise);
        assert_eq!(Verdict::Match.result(), DiffResult::Match);
    }

    #[test]
    fn shadow_outcomes_and_diff_results_are_spelled_as_the_metrics_docs_say() {
        assert_eq!(
            ShadowEvent::SkippedSameUpstream.as_str(),
            "skipped_same_upstream"
        );
        let results: Vec<&str> = DiffResult::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(results, ["match", "mismatch", "noise", "skipped"]);
    }
}
