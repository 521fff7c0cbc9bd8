//! The demo's new orders service: the orders endpoints, rewritten. Its paths have no `/api`
//! prefix (the proxy strips it), and it mostly agrees with legacy, but not everywhere: totals are
//! numbers, order 3 has a different status, and every order carries a currency. Exactly the
//! kind of drift shadow traffic and diffs exist to catch.
//!
//! Compiled into `strangler demo` and runnable alone with `cargo run --example new_app`.

use serde_json::{Value, json};

use super::Reply;

pub fn handle(method: &str, path: &str, body: &[u8]) -> Reply {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (_, ["healthz"]) => Reply::ok(json!({ "status": "ok" })),
        ("GET" | "HEAD", ["orders"]) => Reply::ok(json!({
            "orders": (1..=3).map(order).collect::<Vec<_>>(),
            "generated_at": now(),
        })),
        ("GET" | "HEAD", ["orders", id]) => match id.parse::<u32>() {
            Ok(id @ 1..=3) => Reply::ok(order(id)),
            _ => Reply::new(404, json!({ "error": "order not found" })),
        },
        ("POST", ["orders"]) => Reply::new(
            201,
            json!({ "id": 4, "status": "created", "received_bytes": body.len() }),
        ),
        ("GET" | "HEAD", ["invoices", id]) => match id.parse::<u32>() {
            Ok(id) => Reply::ok(json!({ "invoice": id, "amount": "120.00", "paid": id % 2 == 0 })),
            Err(_) => Reply::new(400, json!({ "error": "invoice ids are numbers" })),
        },
        _ => Reply::new(
            404,
            json!({ "error": "not found", "app": "orders-v2", "path": path }),
        ),
    }
}

fn order(id: u32) -> Value {
    json!({
        "id": id,
        "status": match id { 2 => "shipped", 3 => "pending", _ => "open" },
        "total": f64::from(id * 10) + 0.5,
        "currency": "EUR",
        "items": id,
        "updated_at": now(),
    })
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
