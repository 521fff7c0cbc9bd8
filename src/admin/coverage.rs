//! `GET /coverage?top=N`: the traffic share of new services and the uncovered templates, as
//! [`crate::coverage`] builds the document, with the serving table hiding templates a route
//! covers now.

use http::{Response, StatusCode};
use serde_json::json;

use super::json_response;
use crate::coverage::{CoverageReport, RouteView, Served};
use crate::metrics::Metrics;
use crate::routing::RouteTable;

pub fn coverage(table: &RouteTable, metrics: &Metrics, query: &str) -> Response<Vec<u8>> {
    let mut top = 20;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let parsed = match name.as_ref() {
            "top" => value.parse().ok().filter(|n| (1..=1000).contains(n)),
            _ => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": "unknown parameter; known: top", "parameter": name }),
                );
            }
        };
        match parsed {
            Some(n) => top = n,
            None => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": "top must be a whole number from 1 to 1000", "parameter": "top" }),
                );
            }
        }
    }
    let totals = metrics.requests_by_route_and_upstream();
    let served: Vec<Served<'_>> = totals
        .iter()
        .map(|((route, upstream), requests)| Served {
            route,
            upstream,
            requests: *requests,
        })
        .collect();
    let report = CoverageReport::build(
        table.generation(),
        &served,
        &metrics.unmatched,
        &CoverageView(table),
        top,
    );
    json_response(
        StatusCode::OK,
        &serde_json::to_value(report).expect("coverage serializes"),
    )
}

/// The serving route table, as [`crate::coverage`] asks about it.
struct CoverageView<'a>(&'a RouteTable);

impl RouteView for CoverageView<'_> {
    fn legacy_upstream(&self, route: &str) -> Option<&str> {
        let route = self.0.routes().iter().find(|r| r.name == route)?;
        Some(self.0.upstream(route.target(route.legacy).upstream).name())
    }

    fn default_upstream(&self) -> &str {
        self.0.upstream(self.0.default_upstream()).name()
    }

    fn covers(&self, method: &str, path: &str) -> bool {
        pingora_http::RequestHeader::build(method, path.as_bytes(), None)
            .is_ok_and(|request| self.0.find(&request).is_some())
    }
}
