//! One mirrored exchange as it travels from the shadow task to the diff worker: the two captured
//! answers, the request they are for, where they came from, and the bytes they hold against the
//! shadow memory budget ([`MemoryBudget`]).
//!
//! These types are the contract between [`crate::shadow`] (which fills them) and
//! [`crate::diff`] (which judges them); they live here, below both, so neither imports the
//! other's internals. What is stored of an exchange afterwards is [`crate::record`]'s.

mod memory;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

pub use memory::{MemoryBudget, Reservation};

/// A response as captured for comparison: status, headers and at most a capped body.
#[derive(Debug, Clone)]
pub struct CapturedResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body was longer than the cap; `body` holds its start.
    pub truncated: bool,
}

/// The request both answers are for.
#[derive(Debug, Clone)]
pub struct RequestSummary {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub request_id: String,
    /// Secret values of this request (redacted query values, credentials), scrubbed from
    /// everything stored about the exchange.
    pub secrets: crate::redact::Secrets,
}

/// Where a mirrored exchange came from: which upstream answered the client, which one got the
/// copy, and the config generation that decided both. Stored with every compared exchange, so a
/// report can tell legacy→new comparisons from new→legacy ones and one reload from the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// The upstream that served the client (the primary).
    pub primary: Arc<str>,
    /// The upstream that got the copy (the candidate).
    pub candidate: Arc<str>,
    pub stage: crate::config::Stage,
    pub generation: u64,
    /// SHA-256 (hex) of the routes.yaml of that generation.
    pub config_sha256: Arc<str>,
}

/// Everything known about one mirrored exchange: counted by the shadow task, then judged by the
/// diff worker.
#[derive(Debug)]
pub struct ShadowOutcome {
    pub route: String,
    pub provenance: Provenance,
    pub request: RequestSummary,
    /// `None` when the primary failed before it answered.
    pub primary: Option<CapturedResponse>,
    pub shadow: Result<CapturedResponse, ShadowFailure>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ShadowFailure {
    #[error("shadow timed out")]
    Timeout,
    #[error("shadow request failed: {0}")]
    Failed(String),
    /// Its answer would have buffered past the shadow memory budget.
    #[error("shadow memory budget exhausted")]
    OverBudget,
}
