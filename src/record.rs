//! What is kept of one compared exchange: the [`DiffRecord`] the diff worker writes, the store
//! keeps, and the report, `GET /diffs` and `strangler report` read, with its [`Difference`]s.
//!
//! Also the request *shape* a diff is grouped by ([`request_shape`]).
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
///
/// The segment walk is [`crate::coverage::write_shape`]'s, shared with coverage templates; the
/// rule differs from a template's on purpose: a shape groups stored diffs (coarse, `*` for any
/// segment with a digit, `v1` included), a template names a route to write (`{id}`, `{uuid}`,
/// `v1` kept), and shapes already stored must keep matching.
pub fn request_shape(method: &str, path: &str) -> String {
    let mut shape = Vec::with_capacity(method.len() + 1 + path.len());
    shape.extend_from_slice(method.as_bytes());
    shape.push(b' ');
    crate::coverage::write_shape(
        path,
        usize::MAX,
        |segment| {
            (segment.len() > 24 || segment.bytes().any(|b| b.is_ascii_digit())).then_some("*")
        },
        &mut shape,
    );
    // Only whole segments or ASCII placeholders were written: valid UTF-8.
    String::from_utf8(shape).expect("segments of a str joined by ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_shape_stars_segments_holding_a_digit_or_too_long_for_a_name() {
        assert_eq!(
            request_shape("GET", "/orders/42/lines"),
            "GET /orders/*/lines"
        );
        assert_eq!(request_shape("GET", "/v1/x"), "GET /*/x");
        let long = format!("/{}/x", "a".repeat(25));
        assert_eq!(request_shape("GET", &long), "GET /*/x");
        assert_eq!(request_shape("GET", "/"), "GET /");
        assert_eq!(request_shape("OPTIONS", "*"), "OPTIONS *");
    }

    #[test]
    fn a_shape_and_a_coverage_template_of_one_path_differ_on_purpose() {
        assert_eq!(
            crate::coverage::template("/v1/orders/42"),
            "/v1/orders/{id}"
        );
        assert_eq!(request_shape("GET", "/v1/orders/42"), "GET /*/orders/*");
    }
}
