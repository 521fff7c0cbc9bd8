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
