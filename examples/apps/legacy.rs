//! The demo's legacy monolith: every endpoint of the shop, in the old shapes.
//!
//! Compiled into `strangler demo` and runnable alone with `cargo run --example legacy_app`.

use serde_json::{Value, json};

use super::Reply;

/// Answers one request. The legacy system knows every path, so nothing here is a 404 except
/// unknown order/invoice ids.
pub fn handle(method: &str, path: &str, body: &[u8]) -> Reply {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (_, ["healthz"]) => Reply::ok(json!({ "status": "ok" })),
        ("GET" | "HEAD", ["api", "orders"]) => Reply::ok(json!({
            "orders": (1..=3).map(order).collect::<Vec<_>>(),
            "generated_at": now(),
        })),
        ("GET" | "HEAD", ["api", "orders", id]) => match id.parse::<u32>() {
            Ok(id @ 1..=3) => Reply::ok(order(id)),
            _ => Reply::new(404, json!({ "error": "order not found" })),
        },
        ("POST", ["api", "orders"]) => Reply::new(
            201,
            json!({ "id": 4, "status": "created", "received_bytes": body.len() }),
        ),
        ("GET" | "HEAD", ["invoices", id]) => match id.parse::<u32>() {
            Ok(id) => Reply::ok(json!({ "invoice": id, "amount": "120.00", "paid": id % 2 == 0 })),
            Err(_) => Reply::new(400, json!({ "error": "invoice ids are numbers" })),
        },
        _ => Reply::ok(json!({ "app": "legacy", "method": method, "path": path })),
    }
}

fn order(id: u32) -> Value {
    // Totals are strings in the legacy API; the new service will send numbers.
    json!({
        "id": id,
        "status": if id == 2 { "shipped" } else { "open" },
        "total": format!("{}.50", id * 10),
        "items": id,
        "updated_at": now(),
    })
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
