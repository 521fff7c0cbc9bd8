//! The admin's mutations: `POST /reload` (re-read the file now), `POST /kill-switch?state=`
//! (every route to legacy, or back) and `POST /routes/{name}/reset` (clear a tripped guard).
//! Each is logged at WARN and answered with the generation it acted on. Reloading itself is
//! [`crate::reload`]'s, a guard's latch [`crate::guard`]'s.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Response, StatusCode};
use serde_json::json;

use super::json_response;
use crate::metrics::Metrics;
use crate::reload::{Reloader, Trigger};
use crate::routing::RouteTable;

/// `POST /reload`: 200 applied or unchanged, 422 when the file is not valid (the old config
/// keeps serving), 409 for a config that did not come from a file.
pub async fn reload(reloader: Option<Arc<Reloader>>) -> Response<Vec<u8>> {
    let Some(reloader) = reloader else {
        return json_response(
            StatusCode::CONFLICT,
            &json!({ "error": "this config is built in, not read from a file; nothing to reload" }),
        );
    };
    // Compiling a large config takes a while; keep it off the admin's I/O thread.
    let report = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Admin)).await;
    match report {
        Ok(report) => {
            let status = if report.outcome.is_success() {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            json_response(
                status,
                &serde_json::to_value(&report).expect("reports serialize"),
            )
        }
        Err(error) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({ "error": format!("reload task failed: {error}") }),
        ),
    }
}

/// `POST /kill-switch?state=on|off`: kept across reloads until set again, or a reload that
/// changes `kill_switch` in the file.
pub fn kill_switch(table: &RouteTable, metrics: &Metrics, query: &str) -> Response<Vec<u8>> {
    let state = form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "state")
        .map(|(_, value)| value.into_owned());
    let on = match state.as_deref() {
        Some("on") => true,
        Some("off") => false,
        _ => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "error": "POST /kill-switch?state=on or ?state=off" }),
            );
        }
    };
    let was = table.kill_switch.swap(on, Ordering::Relaxed);
    if was != on {
        metrics
            .kill_switch_changes
            .with_label_values(&[if on { "on" } else { "off" }, "admin"])
            .inc();
    }
    if on {
        tracing::warn!(
            generation = table.generation(),
            "kill switch turned on from the admin API: every route goes to legacy"
        );
    } else {
        tracing::warn!(
            generation = table.generation(),
            was_on = was,
            "kill switch released from the admin API: routes serve as configured again"
        );
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kill_switch": on,
            "generation": table.generation(),
            "until": "set again, or a reload that changes `kill_switch` in the file",
        }),
    )
}

/// `POST /routes/{name}/reset`: clears a tripped guard; the route serves as configured.
pub fn reset_guard(table: &RouteTable, name: &str) -> Response<Vec<u8>> {
    let Some(route) = table.routes().iter().find(|route| route.name == name) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no route named `{name}`") }),
        );
    };
    let Some(guard) = &route.guard else {
        return json_response(
            StatusCode::CONFLICT,
            &json!({ "error": format!("route `{name}` has no guard") }),
        );
    };
    let cleared = guard.reset();
    if let Some(trip) = &cleared {
        tracing::warn!(route = %name, reason = trip.reason, "guard reset from the admin API: the route serves as configured again");
    }
    json_response(
        StatusCode::OK,
        &json!({ "route": name, "cleared": cleared, "generation": table.generation() }),
    )
}
