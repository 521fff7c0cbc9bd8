//! Guards against the real binary: a new service that goes bad is taken out of traffic by the
//! proxy itself, within the minimum number of samples, and legacy gets its own paths back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;

use crate::support;
use support::{Backend, ClientRequest, Proxy, Recorded, run_cli};

/// A new service that answers 500 while `failing` is set.
async fn flaky_new_service(failing: Arc<AtomicBool>) -> Backend {
    Backend::start_with(
        "orders-v2",
        Arc::new(move |_: &Recorded| {
            let status = if failing.load(Ordering::Relaxed) {
                500
            } else {
                200
            };
            hyper::Response::builder()
                .status(status)
                .header("x-backend", "orders-v2")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap()
        }),
    )
    .await
}

/// `orders` serves from the new service, which expects paths without `/api`; legacy (the
/// fallback) gets the client's paths.
fn config(legacy: &Backend, new: &Backend, guard: &str) -> String {
    format!(
        r#"upstreams:
  legacy: {{ backends: [{}] }}
  orders-v2: {{ backends: [{}] }}
default_upstream: legacy
routes:
  - name: orders
    match: {{ path_prefix: /api/orders }}
    stage: new
    upstream: {{ name: orders-v2, rewrite: {{ strip_prefix: /api }} }}
    fallback: legacy
    guard: {guard}
"#,
        legacy.address, new.address
    )
}

/// Sends `/api/orders/{first}`, `{first+1}`… until legacy serves one; returns how many the
/// new service still answered. A request is counted once its answer is on its way, so the one
/// request that races the tripping one may still reach the new service: at most one.
async fn until_legacy_serves(proxy: &Proxy, first: usize) -> usize {
    for late in 0..=1 {
        let (_, by) = served_by(proxy, &format!("/api/orders/{}", first + late)).await;
        if by == "legacy" {
            return late;
        }
    }
    panic!("the guard did not hold the route on legacy");
}

async fn served_by(proxy: &Proxy, path: &str) -> (u16, String) {
    let response = proxy.get(path).await;
    (
        response.status,
        response.header("x-backend").unwrap_or("?").to_owned(),
    )
}

async fn reset(proxy: &Proxy, route: &str, with_header: bool) -> support::ClientResponse {
    let mut request = ClientRequest::new("POST", &format!("/routes/{route}/reset"));
    if with_header {
        request = request.header("x-strangler-admin", "1");
    }
    support::send(proxy.admin, request).await.unwrap()
}

fn guard_of(routes: &serde_json::Value, route: &str) -> serde_json::Value {
    routes["effective"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == route)
        .unwrap()["guard"]
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_service_answering_500s_is_taken_out_after_the_minimum_and_stays_out_until_reset() {
    let legacy = Backend::start("legacy").await;
    let failing = Arc::new(AtomicBool::new(false));
    let new = flaky_new_service(failing.clone()).await;
    let proxy = Proxy::start(&config(
        &legacy,
        &new,
        "{ max_error_rate: 0.2, min_requests: 10 }",
    ))
    .await;

    for i in 0..5 {
        assert_eq!(
            served_by(&proxy, &format!("/api/orders/{i}")).await,
            (200, "orders-v2".into())
        );
    }
    assert_eq!(
        new.last().target,
        "/orders/4",
        "the new service gets its own paths"
    );

    // The new service goes bad: five 500s reach clients (10 samples, half failed), then the
    // guard holds the route on legacy.
    failing.store(true, Ordering::Relaxed);
    for i in 5..10 {
        assert_eq!(
            served_by(&proxy, &format!("/api/orders/{i}")).await,
            (500, "orders-v2".into())
        );
    }
    let late = until_legacy_serves(&proxy, 10).await;
    for i in 11 + late..15 {
        assert_eq!(
            served_by(&proxy, &format!("/api/orders/{i}")).await,
            (200, "legacy".into()),
            "request {i} after the trip"
        );
    }
    assert_eq!(
        legacy.last().target,
        "/api/orders/14",
        "legacy gets legacy's paths"
    );
    assert_eq!(new.count(), 10 + late);

    let tripped = proxy
        .metric("strangler_route_guard_tripped{mode=\"enforce\",reason=\"error_rate\",route=\"orders\"}")
        .await;
    assert_eq!(tripped, Some(1.0));
    assert_eq!(
        proxy
            .metric("strangler_route_guard_trips_total{mode=\"enforce\",reason=\"error_rate\",route=\"orders\"}")
            .await,
        Some(1.0)
    );
    proxy
        .wait_for_metric(
            "strangler_fallbacks_total{from=\"orders-v2\",reason=\"guard\",route=\"orders\",to=\"legacy\"}",
            5.0,
        )
        .await;
    let guard = guard_of(&proxy.routes().await, "orders");
    assert_eq!(guard["holding"], true);
    assert_eq!(guard["trip"]["reason"], "error_rate");
    assert_eq!(guard["trip"]["samples"], 10);
    assert!(proxy.stderr().contains("guard tripped"), "a WARN says so");
    let (code, text, stderr) = run_cli(
        &["routes", "--admin", &proxy.admin.to_string()],
        &support::repo_root(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        text.contains("orders: GUARD TRIPPED, serving from legacy") && text.contains("5 of 10"),
        "{text}"
    );

    // The new service recovers: a latch, not a thermostat — it stays out until reset.
    failing.store(false, Ordering::Relaxed);
    for i in 15..40 {
        assert_eq!(
            served_by(&proxy, &format!("/api/orders/{i}")).await.1,
            "legacy"
        );
    }
    assert_eq!(
        reset(&proxy, "orders", false).await.status,
        403,
        "a mutation needs the header"
    );
    assert_eq!(reset(&proxy, "nope", true).await.status, 404);
    let cleared = reset(&proxy, "orders", true).await;
    assert_eq!(cleared.status, 200, "{}", cleared.text());
    assert_eq!(cleared.json()["cleared"]["reason"], "error_rate");
    assert_eq!(
        served_by(&proxy, "/api/orders/40").await,
        (200, "orders-v2".into())
    );
    assert_eq!(
        proxy
            .metric("strangler_route_guard_tripped{mode=\"enforce\",reason=\"error_rate\",route=\"orders\"}")
            .await,
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn below_the_minimum_nothing_trips_and_a_config_change_clears_a_trip() {
    let legacy = Backend::start("legacy").await;
    let failing = Arc::new(AtomicBool::new(true));
    let new = flaky_new_service(failing.clone()).await;
    let proxy = Proxy::start(&config(
        &legacy,
        &new,
        "{ max_error_rate: 0.2, min_requests: 8 }",
    ))
    .await;
    for i in 0..7 {
        assert_eq!(
            served_by(&proxy, &format!("/api/orders/{i}")).await.1,
            "orders-v2",
            "{i}"
        );
    }
    assert_eq!(
        guard_of(&proxy.routes().await, "orders")["trip"],
        serde_json::Value::Null
    );
    // The eighth sample trips it.
    assert_eq!(served_by(&proxy, "/api/orders/7").await.1, "orders-v2");
    until_legacy_serves(&proxy, 8).await;

    // An unrelated reload keeps the trip...
    let unrelated = format!(
        "{}  - name: other\n    match: {{ path_prefix: /other }}\n",
        config(&legacy, &new, "{ max_error_rate: 0.2, min_requests: 8 }")
    );
    std::fs::write(proxy.config_path(), unrelated).unwrap();
    let reloaded = reload(&proxy).await;
    assert_eq!(reloaded["result"], "applied", "{reloaded}");
    assert_eq!(
        served_by(&proxy, "/api/orders/9").await.1,
        "legacy",
        "kept across the reload"
    );
    // ...an edit of the route clears it: the team changed something, judge afresh.
    failing.store(false, Ordering::Relaxed);
    std::fs::write(
        proxy.config_path(),
        config(&legacy, &new, "{ max_error_rate: 0.25, min_requests: 8 }"),
    )
    .unwrap();
    let reloaded = reload(&proxy).await;
    assert_eq!(reloaded["result"], "applied", "{reloaded}");
    assert_eq!(
        served_by(&proxy, "/api/orders/10").await,
        (200, "orders-v2".into())
    );
}

async fn reload(proxy: &Proxy) -> serde_json::Value {
    proxy.reload().await.json()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_new_service_trips_the_latency_guard() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("orders-v2").await;
    // The new target asks the test backend to answer 150 ms late.
    let config = config(&legacy, &new, "{ max_p99: 100ms, min_requests: 5 }").replace(
        "rewrite: { strip_prefix: /api } }",
        "rewrite: { strip_prefix: /api }, request_headers: { set: { x-test-delay-ms: \"150\" } } }",
    );
    let proxy = Proxy::start(&config).await;
    for i in 0..5 {
        assert_eq!(
            served_by(&proxy, &format!("/api/orders/{i}")).await.1,
            "orders-v2"
        );
    }
    assert_eq!(served_by(&proxy, "/api/orders/5").await.1, "legacy");
    let guard = guard_of(&proxy.routes().await, "orders");
    assert_eq!(guard["trip"]["reason"], "latency", "{guard}");
    assert!(
        guard["trip"]["observed"].as_f64().unwrap() > 100.0,
        "{guard}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn observe_mode_reports_the_trip_and_changes_no_routing() {
    let legacy = Backend::start("legacy").await;
    let failing = Arc::new(AtomicBool::new(true));
    let new = flaky_new_service(failing).await;
    let proxy = Proxy::start(&config(
        &legacy,
        &new,
        "{ mode: observe, max_error_rate: 0.2, min_requests: 5 }",
    ))
    .await;
    for i in 0..20 {
        assert_eq!(
            served_by(&proxy, &format!("/api/orders/{i}")).await,
            (500, "orders-v2".into())
        );
    }
    assert_eq!(legacy.count(), 0);
    let guard = guard_of(&proxy.routes().await, "orders");
    assert_eq!(
        (guard["holding"].as_bool(), guard["trip"]["reason"].as_str()),
        (Some(false), Some("error_rate"))
    );
    assert_eq!(
        proxy
            .metric("strangler_route_guard_trips_total{mode=\"observe\",reason=\"error_rate\",route=\"orders\"}")
            .await,
        Some(1.0),
        "counted once: a latch in observe mode too"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mismatching_shadow_trips_the_diff_guard_and_copies_keep_flowing() {
    // Legacy serves and the new service gets copies, whose bodies differ from legacy's.
    let candidate = Backend::start_with(
        "orders-v2",
        Arc::new(|request: &Recorded| {
            hyper::Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!(
                    "{{\"path\":\"{}x\"}}",
                    request.target
                ))))
                .unwrap()
        }),
    )
    .await;
    let primary = Backend::start_with(
        "legacy",
        Arc::new(|request: &Recorded| {
            hyper::Response::builder()
                .header("content-type", "application/json")
                .header("x-backend", "legacy")
                .body(Full::new(Bytes::from(format!(
                    "{{\"path\":\"{}\"}}",
                    request.target
                ))))
                .unwrap()
        }),
    )
    .await;
    let proxy = Proxy::start(&format!(
        r#"upstreams:
  legacy: {{ backends: [{}] }}
  orders-v2: {{ backends: [{}] }}
default_upstream: legacy
routes:
  - name: orders
    match: {{ path_prefix: /api/orders }}
    stage: shadow
    upstream: legacy
    shadow: {{ upstream: orders-v2 }}
    guard: {{ max_mismatch_rate: 0.5, min_requests: 5 }}
"#,
        primary.address, candidate.address
    ))
    .await;
    for i in 0..5 {
        assert_eq!(proxy.get(&format!("/api/orders/{i}")).await.status, 200);
    }
    let guard = support::eventually("the diff guard tripping", || async {
        let guard = guard_of(&proxy.routes().await, "orders");
        if guard["trip"]["reason"] == "mismatch" {
            Ok(guard)
        } else {
            Err(guard)
        }
    })
    .await;
    assert_eq!(guard["trip"]["samples"], 5);
    assert_eq!(guard["holding"], true);
    // Held on legacy, the route keeps shadowing: the team sees when the new side is right again.
    let sent = proxy
        .metric("strangler_shadow_requests_total{outcome=\"sent\",route=\"orders\"}")
        .await
        .unwrap();
    assert_eq!(
        proxy.get("/api/orders/9").await.header("x-backend"),
        Some("legacy")
    );
    proxy
        .wait_for_metric(
            "strangler_shadow_requests_total{outcome=\"sent\",route=\"orders\"}",
            sent + 1.0,
        )
        .await;
}
