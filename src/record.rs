//! What is kept of one compared exchange: the [`DiffRecord`] the diff worker writes, the store
//! keeps, and the report, `GET /diffs` and `strangler report` read, with its [`Difference`]s.
//!
//! These are the store's row and the diff's result at once, so they live below both
//! ([`crate::diff`] produces them, [`crate::store`] persists them); how a difference is found is
//! the diff's business, how a row is written the store's.

use serde::{Deserialize, Serialize};

use crate::vocabulary::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Both have it, with different values.
    Changed,
    /// The primary has it, the shadow does not.
    Missing,
    /// The shadow has it, the primary does not.
    Extra,
    /// Both have it, as different JSON types.
    Type,
}

impl Kind {
    /// `changed`, `missing`, `extra`, `type`: as stored and reported.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Changed => "changed",
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::Type => "type",
        }
    }

    /// Both sides have a value here (that differs): the only kind noise can explain.
    pub fn is_value(self) -> bool {
        matches!(self, Kind::Changed | Kind::Type)
    }
}

/// One difference between the primary's and the shadow's response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    /// `status`, `headers.<name>`, `$.json.path`, `body`, `body:encoding`, `body:line N` or
    /// `body:lines N-M`.
    pub path: String,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
}

/// One compared exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffRecord {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    pub route: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub request_id: String,
    pub primary_status: Option<u16>,
    pub shadow_status: Option<u16>,
    pub verdict: Verdict,
    pub differences: Vec<Difference>,
    /// Differences discounted as noise.
    pub noise: Vec<Difference>,
    pub primary_sample: Option<String>,
    pub shadow_sample: Option<String>,
    /// The upstream that answered the client. `None` in rows stored before schema version 2.
    pub primary_upstream: Option<String>,
    /// The upstream that got the copy.
    pub candidate_upstream: Option<String>,
    /// The route's stage when the copy was decided (`shadow`, `canary`, `new`, ...).
    pub stage: Option<String>,
    /// The config generation that decided the copy. Generations count reloads of one process
    /// and start at 1 again when it restarts; `config_sha256` tells those apart.
    pub generation: Option<u64>,
    /// SHA-256 (hex) of that generation's routes.yaml.
    pub config_sha256: Option<String>,
}

/// `GET /orders/*/lines`: the request with the path segments that identify a resource (holding
/// a digit, or longer than 24 characters) generalized.
pub fn request_shape(method: &str, path: &str) -> String {
    let mut shape = String::with_capacity(method.len() + 1 + path.len());
    shape.push_str(method);
    shape.push(' ');
    for (n, segment) in path.split('/').enumerate() {
        if n > 0 {
            shape.push('/');
        }
        if segment.len() > 24 || segment.bytes().any(|b| b.is_ascii_digit()) {
            shape.push('*');
        } else {
            shape.push_str(segment);
        }
    }
    shape
}
