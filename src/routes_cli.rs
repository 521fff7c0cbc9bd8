//! `strangler routes`: the route table as a person reads it, from a file or a running proxy.
//!
//! A running proxy's `GET /routes` is read as the typed [`RoutesDocument`] the admin writes
//! (see [`crate::admin_api`]). Its `config` part is the file's model as it serializes, the same
//! JSON `strangler routes` makes of a file, so both are rendered from a JSON value by [`render`].

use serde_json::Value;

use crate::admin_api::{EffectiveRoute, RoutesDocument};

/// A running proxy's routes: the table, then the guards that tripped.
pub fn render_document(document: &RoutesDocument) -> String {
    let mut text = render(
        &document.config,
        Some(document.generation),
        document.kill_switch,
    );
    text.push_str(&render_guards(&document.effective));
    text
}

/// Renders the `config` part of a `/routes` document (or a config serialized the same way).
pub fn render(config: &Value, generation: Option<u64>, kill_switch: bool) -> String {
    let mut out = String::new();
    if let Some(generation) = generation {
        out.push_str(&format!("generation {generation}"));
    }
    if kill_switch {
        out.push_str(if generation.is_some() { "  " } else { "" });
        out.push_str("KILL SWITCH ON: every route goes to legacy, no shadows");
    }
    if generation.is_some() || kill_switch {
        out.push('\n');
    }
    let default = config["default_upstream"].as_str().unwrap_or("?");
    let empty = Vec::new();
    let routes = config["routes"].as_array().unwrap_or(&empty);
    let width = routes
        .iter()
        .filter_map(|r| r["name"].as_str())
        .map(str::len)
        .max()
        .unwrap_or(4)
        .max(4);
    out.push_str(&format!(
        "{:<width$}  {:<8}  {:<40}  {}\n",
        "ROUTE", "STAGE", "MATCH", "SERVED BY"
    ));
    for route in routes {
        let name = route["name"].as_str().unwrap_or("?");
        let stage = route["stage"].as_str().unwrap_or("legacy");
        let served = if kill_switch && route["stage"] != "retired" {
            // The kill switch sends a route to its fallback, else the default upstream.
            let legacy = route.get("fallback").map_or(default, target_name);
            format!(
                "{legacy} (KILL SWITCH; configured: {})",
                served_by(route, default)
            )
        } else {
            served_by(route, default)
        };
        out.push_str(&format!(
            "{name:<width$}  {stage:<8}  {:<40}  {served}\n",
            describe_match(&route["match"])
        ));
    }
    out.push_str(&format!(
        "{:<width$}  {:<8}  {:<40}  {default}\n",
        "(default)", "", "anything else"
    ));
    out
}

fn describe_match(matcher: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(methods) = matcher["methods"].as_array() {
        parts.push(
            methods
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    if let Some(hosts) = matcher["host"].as_array() {
        parts.push(format!(
            "host={}",
            hosts
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("|")
        ));
    }
    for (key, label) in [("path", "="), ("path_prefix", ""), ("path_regex", "~")] {
        if let Some(value) = matcher[key].as_str() {
            parts.push(match key {
                "path_prefix" => format!("{value}/**"),
                _ => format!("{label}{value}"),
            });
        }
    }
    for key in ["headers", "query", "cookies"] {
        if let Some(map) = matcher[key].as_object() {
            parts.extend(map.keys().map(|name| format!("{key}.{name}")));
        }
    }
    if parts.is_empty() {
        "*".to_owned()
    } else {
        parts.join(" ")
    }
}

/// A target as the config document spells it: a name, or `{ name, rewrite, .. }`.
fn target_name(target: &Value) -> &str {
    target
        .as_str()
        .or_else(|| target["name"].as_str())
        .unwrap_or("?")
}

/// A target with a mark when it edits requests, e.g. `orders-v2 (rewrite)`.
fn target_label(target: &Value) -> String {
    let name = target_name(target);
    let mut edits = Vec::new();
    if target.get("rewrite").is_some() {
        edits.push("rewrite");
    }
    if target.get("request_headers").is_some() {
        edits.push("headers");
    }
    if edits.is_empty() {
        name.to_owned()
    } else {
        format!("{name} ({})", edits.join(", "))
    }
}

fn served_by(route: &Value, default: &str) -> String {
    if route["stage"] == "retired" {
        let status = route["retired"]["status"].as_u64().unwrap_or(410);
        return format!("answers {status} itself");
    }
    let mut served = match route["split"].as_array() {
        Some(split) if !split.is_empty() => {
            let sides: Vec<String> = split
                .iter()
                .map(|side| format!("{} {}%", target_label(&side["upstream"]), side["weight"]))
                .collect();
            let sticky = route["sticky"]
                .as_object()
                .and_then(|s| {
                    s.iter()
                        .next()
                        .map(|(k, v)| format!(" sticky by {k} {}", v.as_str().unwrap_or("")))
                })
                .unwrap_or_default();
            format!("{}{sticky}", sides.join(" / "))
        }
        _ => route
            .get("upstream")
            .map_or_else(|| default.to_owned(), target_label),
    };
    if let Some(fallback) = route.get("fallback") {
        served.push_str(&format!(", fallback {}", target_label(fallback)));
    }
    if let Some(shadow) = route["shadow"].as_object() {
        let sample = shadow.get("sample").and_then(Value::as_f64).unwrap_or(1.0);
        served.push_str(&format!(
            ", shadow -> {} ({}%)",
            shadow.get("upstream").map_or("?".to_owned(), target_label),
            (sample * 100.0).round()
        ));
    }
    served
}

/// The guards that tripped (or, in observe mode, would have), from the `effective` part of a
/// `/routes` document: one line each, with the numbers and how to clear it.
pub fn render_guards(effective: &[EffectiveRoute]) -> String {
    let mut out = String::new();
    for route in effective {
        let Some(guard) = &route.guard else { continue };
        let Some(trip) = &guard.trip else { continue };
        let name = &route.route;
        let what = if guard.holding {
            "GUARD TRIPPED, serving from legacy"
        } else {
            "guard would have tripped (observe)"
        };
        out.push_str(&format!(
            "{name}: {what} since {}: {} (clear: POST /routes/{name}/reset)\n",
            trip.at, trip.detail,
        ));
    }
    out
}
