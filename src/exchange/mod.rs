//! One mirrored exchange as it travels from the shadow task to the diff worker: the two captured
//! answers, the request they are for, where they came from, and the bytes they hold against the
//! shadow memory budget ([`MemoryBudget`]).
//!
//! These types are the contract between [`crate::shadow`] (which fills them) and
//! [`crate::diff`] (which judges them); they live here, below both, so neither imports the
//! other's internals. What is stored of an exchange afterwards is [`crate::record`]'s.

mod memory;

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};

pub use memory::{MemoryBudget, Reservation};

/// A response as captured for comparison: status, headers and at most a capped body.
#[derive(Debug, Clone)]
pub struct CapturedResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
    /// The body was longer than the cap; `body` holds its start.
    pub truncated: bool,
}

/// A captured body as it arrived: its chunks, held by reference. Capturing copies nothing on
/// the proxy's threads; a body of several chunks is joined into one buffer the first time its
/// bytes are read ([`Body::bytes`], or as a slice), which is on the diff worker. Its length is
/// what it holds against the memory budget; once joined it holds that twice, until dropped.
#[derive(Debug, Clone, Default)]
pub struct Body {
    chunks: Vec<Bytes>,
    len: usize,
    joined: OnceLock<Bytes>,
}

impl Body {
    /// Adds a chunk at the end (before the body is read).
    pub fn push(&mut self, chunk: Bytes) {
        debug_assert!(
            self.joined.get().is_none(),
            "a body read is not appended to"
        );
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push(chunk);
        }
    }

    /// The whole body in one buffer: its only chunk, or all of them joined once.
    pub fn bytes(&self) -> &Bytes {
        static EMPTY: Bytes = Bytes::new();
        match self.chunks.as_slice() {
            [] => &EMPTY,
            [only] => only,
            chunks => self.joined.get_or_init(|| {
                let mut joined = BytesMut::with_capacity(self.len);
                for chunk in chunks {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }),
        }
    }

    /// Its length, without joining it.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many chunks it arrived in.
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }
}

impl std::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && **self == **other
    }
}

impl Eq for Body {}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        let mut body = Body::default();
        body.push(bytes);
        body
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes::from(bytes).into()
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Bytes::from_static(text.as_bytes()).into()
    }
}

/// The request both answers are for.
#[derive(Debug, Clone, Default)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_of_one_chunk_is_that_chunk_and_several_are_joined_once() {
        let one = Body::from(Bytes::from_static(b"abc"));
        assert_eq!(one.bytes().as_ptr(), b"abc".as_ptr(), "no copy");
        let mut several = Body::default();
        for chunk in ["ab", "", "c", "de"] {
            several.push(Bytes::from_static(chunk.as_bytes()));
        }
        assert_eq!(several.chunks(), 3, "empty chunks are not kept");
        assert_eq!(several.len(), 5);
        several.push(Bytes::from_static(b"f"));
        assert_eq!(several.len(), 6, "its length is read without joining it");
        several = Body::default();
        for chunk in ["ab", "c", "de"] {
            several.push(Bytes::from_static(chunk.as_bytes()));
        }
        assert_eq!(&*several, b"abcde");
        assert_eq!(
            several.bytes().as_ptr(),
            several.bytes().as_ptr(),
            "joined once"
        );
        assert_eq!(several, Body::from("abcde"));
        assert_ne!(several, Body::from("abcdf"));
        assert!(Body::default().is_empty());
    }
}
