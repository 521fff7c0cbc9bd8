//! Test-only: the one [`DiffRecord`] every store test starts from. A test changes what it is
//! about with struct update syntax (`DiffRecord { at_ms: 5, ..record("orders", "match") }`),
//! so each test shows only the fields that matter to it.

use crate::record::DiffRecord;
use crate::vocabulary::Verdict;

/// An exchange of `route` judged `verdict` (its stored name, e.g. `"shadow_error"`), stored now:
/// `GET /x` answered 200 by both sides, legacy against new, at stage shadow, generation 1.
pub(crate) fn record(route: &str, verdict: &str) -> DiffRecord {
    DiffRecord {
        at_ms: super::now_ms(),
        route: route.into(),
        method: "GET".into(),
        path: "/x".into(),
        query: None,
        request_id: "r".into(),
        primary_status: Some(200),
        shadow_status: Some(200),
        verdict: Verdict::parse(verdict).expect("a verdict"),
        differences: Vec::new(),
        noise: Vec::new(),
        primary_sample: None,
        shadow_sample: None,
        primary_upstream: Some("legacy".into()),
        candidate_upstream: Some("new".into()),
        stage: Some("shadow".into()),
        generation: Some(1),
        config_sha256: Some("aaaa".into()),
    }
}
