//! Canary migration end to end: weighted splits, stickiness across a reload that raises the
//! weight, the tester override, the kill switch, retired routes and stage validation.

use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use support::{Backend, ClientRequest, Proxy, run_cli};

fn config(legacy: &Backend, new: &Backend, new_weight: u32, extra: &str) -> String {
    format!(
        r#"upstreams:
  legacy: {{ backends: [{}] }}
  invoices-v2: {{ backends: [{}] }}
default_upstream: legacy
{extra}routes:
  - name: invoices
    stage: canary
    match: {{ path_prefix: /invoices }}
    split:
      - {{ upstream: invoices-v2, weight: {new_weight} }}
      - {{ upstream: legacy, weight: {} }}
    sticky: {{ cookie: session_id }}
    shadow: {{ upstream: invoices-v2, sample: 1.0 }}
  - name: old-reports
    stage: retired
    match: {{ path_prefix: /reports }}
    retired: {{ status: 410, body: "reports moved to /analytics" }}
"#,
        legacy.address,
        new.address,
        100 - new_weight
    )
}

async fn start(legacy: &Backend, new: &Backend, new_weight: u32, extra: &str) -> Proxy {
    Proxy::start(&config(legacy, new, new_weight, extra)).await
}

async fn side(proxy: &Proxy, request: ClientRequest) -> String {
    let response = proxy.send(request).await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.header("x-backend").unwrap().to_owned()
}

fn user(id: usize) -> ClientRequest {
    ClientRequest::get("/invoices/1").header("cookie", &format!("session_id=user-{id}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_split_without_a_key_follows_the_weights() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("invoices-v2").await;
    let proxy = start(&legacy, &new, 20, "").await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..1000 {
        *counts
            .entry(side(&proxy, ClientRequest::get("/invoices/1")).await)
            .or_default() += 1;
    }
    let to_new = counts.get("invoices-v2").copied().unwrap_or(0);
    assert!(
        (140..=260).contains(&to_new),
        "{to_new} of 1000 at weight 20: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sticky_users_stay_put_and_raising_the_weight_only_moves_users_to_the_new_side() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("invoices-v2").await;
    let proxy = start(&legacy, &new, 10, "").await;

    let mut before = Vec::new();
    for id in 0..300 {
        let first = side(&proxy, user(id)).await;
        for _ in 0..2 {
            assert_eq!(
                side(&proxy, user(id)).await,
                first,
                "user {id} switched sides"
            );
        }
        before.push(first);
    }
    let new_before = before.iter().filter(|s| *s == "invoices-v2").count();
    assert!(
        (10..=60).contains(&new_before),
        "{new_before} of 300 users at weight 10"
    );

    proxy.rewrite(&config(&legacy, &new, 50, ""));
    proxy.wait_for_generation(2).await;

    let mut moved = 0;
    for (id, was) in before.iter().enumerate() {
        let now = side(&proxy, user(id)).await;
        if was == "invoices-v2" {
            assert_eq!(now, "invoices-v2", "user {id} moved back to legacy");
        } else if now == "invoices-v2" {
            moved += 1;
        }
    }
    let new_after = new_before + moved;
    assert!(
        (110..=190).contains(&new_after),
        "{new_after} of 300 users at weight 50"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tester_override_needs_the_token() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("invoices-v2").await;
    let token = "t0k3n-t0k3n-t0k3n-t0k3n";
    let proxy = start(
        &legacy,
        &new,
        0,
        &format!("tester_override: {{ token: {token} }}\n"),
    )
    .await;
    let forced = |token: Option<&str>| {
        let mut request =
            ClientRequest::get("/invoices/1").header("x-strangler-upstream", "invoices-v2");
        if let Some(token) = token {
            request = request.header("x-strangler-token", token);
        }
        request
    };
    for _ in 0..5 {
        assert_eq!(
            side(&proxy, forced(None)).await,
            "legacy",
            "no token: weight 0 rules"
        );
        assert_eq!(
            side(&proxy, forced(Some("wrong-wrong-wrong-wrong"))).await,
            "legacy"
        );
        assert_eq!(side(&proxy, forced(Some(token))).await, "invoices-v2");
    }
    assert_eq!(
        new.last().header("x-strangler-token"),
        None,
        "the token stops at the proxy"
    );
    let document = proxy.routes().await;
    assert!(
        !document.to_string().contains(token),
        "the token is never shown"
    );

    // From an allowed network (loopback here), no token is needed.
    let proxy = start(
        &legacy,
        &new,
        0,
        "tester_override: { allow_cidrs: [127.0.0.0/8] }\n",
    )
    .await;
    assert_eq!(side(&proxy, forced(None)).await, "invoices-v2");
    let proxy = start(
        &legacy,
        &new,
        0,
        "tester_override: { allow_cidrs: [10.0.0.0/8] }\n",
    )
    .await;
    assert_eq!(
        side(&proxy, forced(None)).await,
        "legacy",
        "not from an allowed network"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kill_switch_sends_everything_to_legacy_and_stops_shadows() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("invoices-v2").await;
    let proxy = start(&legacy, &new, 100, "").await;
    assert_eq!(
        side(&proxy, ClientRequest::get("/invoices/1")).await,
        "invoices-v2"
    );

    let on = proxy.admin_post("/kill-switch?state=on").await;
    assert_eq!(on.status, 200);
    let new_before = new.count();
    for _ in 0..10 {
        assert_eq!(
            side(&proxy, ClientRequest::get("/invoices/1")).await,
            "legacy"
        );
    }
    assert_eq!(
        new.count(),
        new_before,
        "no traffic and no shadow copies to the new service"
    );
    assert_eq!(proxy.metric("strangler_kill_switch").await, Some(1.0));
    assert_eq!(proxy.routes().await["kill_switch"], true);

    let off = proxy.admin_post("/kill-switch?state=off").await;
    assert_eq!(off.status, 200);
    assert_eq!(
        side(&proxy, ClientRequest::get("/invoices/1")).await,
        "invoices-v2"
    );
    assert_eq!(proxy.metric("strangler_kill_switch").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn retired_routes_answer_by_themselves_and_stages_show_in_metrics() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("invoices-v2").await;
    let proxy = start(&legacy, &new, 10, "").await;
    let response = proxy.get("/reports/2024").await;
    assert_eq!(response.status, 410);
    assert_eq!(response.text(), "reports moved to /analytics");
    assert_eq!(response.header("x-strangler-stage"), Some("retired"));
    assert!(
        legacy
            .requests()
            .iter()
            .all(|r| !r.target.starts_with("/reports"))
    );
    assert_eq!(
        proxy
            .metric("strangler_route_stage{route=\"invoices\",stage=\"canary\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        proxy
            .metric("strangler_route_stage{route=\"old-reports\",stage=\"retired\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(proxy.routes().await["stages"]["invoices"], "canary");
}

#[tokio::test(flavor = "multi_thread")]
async fn strangler_routes_prints_the_table_from_a_file_and_from_a_running_proxy() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("invoices-v2").await;
    let proxy = start(&legacy, &new, 10, "").await;
    let path = proxy.config_path();
    let (code, from_file, stderr) =
        run_cli(&["routes", "-c", path.to_str().unwrap()], Path::new("/tmp"));
    assert_eq!(code, 0, "{stderr}");
    assert!(from_file.contains("invoices"), "{from_file}");
    assert!(from_file.contains("canary"), "{from_file}");
    assert!(
        from_file.contains("invoices-v2 10% / legacy 90% sticky by cookie session_id"),
        "{from_file}"
    );
    assert!(
        from_file.contains("shadow -> invoices-v2 (100%)"),
        "{from_file}"
    );
    assert!(from_file.contains("answers 410 itself"), "{from_file}");

    let admin = proxy.admin.to_string();
    let (code, from_admin, stderr) = run_cli(&["routes", "--admin", &admin], Path::new("/tmp"));
    assert_eq!(code, 0, "{stderr}");
    assert!(from_admin.starts_with("generation 1"), "{from_admin}");
    assert!(
        from_admin.contains("invoices-v2 10% / legacy 90%"),
        "{from_admin}"
    );
}

#[test]
fn stages_are_checked_against_the_route() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        r#"upstreams:
  legacy: { backends: [127.0.0.1:9001] }
  new: { backends: [127.0.0.1:9002] }
default_upstream: legacy
routes:
  - { name: a, stage: canary, upstream: new }
  - name: b
    stage: legacy
    split: [{ upstream: new, weight: 10 }, { upstream: legacy, weight: 80 }]
  - { name: c, stage: shadow, upstream: legacy }
  - { name: d, stage: retired, upstream: legacy }
  - { name: e, upstream: new, sticky: { cookie: s } }
"#,
    )
    .unwrap();
    let (code, _, stderr) = run_cli(&["validate", "routes.yaml"], Path::new(dir.path()));
    assert_eq!(code, 1);
    for expected in [
        "routes[0].stage: stage: canary needs a `split:`",
        "routes[1].split: weights sum to 90, not 100",
        "routes[1].stage: a legacy route has no split",
        "routes[2].stage: stage: shadow needs a `shadow:` section",
        "routes[3].stage: a retired route answers by itself",
        "routes[4].sticky: only applies to a route with a split",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
}

// Every way back to legacy sends legacy the request it expects: the new service's rewrite and
// header edits belong to its target and never leak into legacy's.

const TESTER_TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// A migrated orders route: the new service gets `/orders/..` and `x-migrated`, legacy (as
/// fallback, kill switch target and shadow) gets the client's own request.
fn migrated(legacy: SocketAddr, new: SocketAddr, serving: &str) -> String {
    format!(
        r#"upstreams:
  legacy: {{ backends: [{legacy}] }}
  orders-v2: {{ backends: [{new}], timeouts: {{ connect: 500ms }}, retries: 0 }}
default_upstream: legacy
tester_override: {{ token: {TESTER_TOKEN} }}
routes:
  - name: orders
    stage: new
    match: {{ path_prefix: /api/orders }}
    upstream: {serving}
    fallback: legacy
    shadow: {{ upstream: legacy }}
"#
    )
}

const NEW_TARGET: &str = "{ name: orders-v2, rewrite: { strip_prefix: /api }, request_headers: { set: { x-migrated: \"true\" } } }";

async fn start_migrated(legacy: SocketAddr, new: SocketAddr) -> Proxy {
    Proxy::start(&migrated(legacy, new, NEW_TARGET)).await
}

/// Asserts legacy's last primary (not shadow) request was the client's own.
fn assert_legacy_saw_the_client_request(legacy: &Backend, target: &str) {
    let served: Vec<_> = legacy
        .requests()
        .into_iter()
        .filter(|r| r.header("x-strangler-shadow").is_none())
        .collect();
    let last = served.last().expect("legacy served a request");
    assert_eq!(last.target, target, "legacy must see the client's path");
    assert_eq!(
        last.header("x-migrated"),
        None,
        "no edits of the new target"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kill_switch_sends_legacy_its_own_paths_and_survives_an_unrelated_reload() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("orders-v2").await;
    let proxy = start_migrated(legacy.address, new.address).await;

    assert_eq!(
        side(&proxy, ClientRequest::get("/api/orders/2?x=1")).await,
        "orders-v2"
    );
    assert_eq!(new.last().target, "/orders/2?x=1");
    assert_eq!(new.last().header("x-migrated"), Some("true"));

    assert_eq!(proxy.admin_post("/kill-switch?state=on").await.status, 200);
    assert_eq!(
        side(&proxy, ClientRequest::get("/api/orders/2?x=1")).await,
        "legacy"
    );
    assert_legacy_saw_the_client_request(&legacy, "/api/orders/2?x=1");
    let effective = &proxy.routes().await["effective"][0];
    assert_eq!(effective["serves"], serde_json::json!(["legacy"]));
    assert_eq!(effective["shadow"], serde_json::Value::Null);

    // An edit that does not touch `kill_switch` keeps the operator's decision.
    let edited = migrated(legacy.address, new.address, NEW_TARGET)
        .replace("name: orders\n", "name: orders # edited\n");
    proxy.rewrite(&edited);
    let reloaded = proxy.reload().await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let routes = proxy.routes().await;
    assert!(routes["generation"].as_u64().unwrap() >= 2, "{routes}");
    assert_eq!(
        routes["kill_switch"], true,
        "the reload released the kill switch"
    );
    assert_eq!(
        side(&proxy, ClientRequest::get("/api/orders/3")).await,
        "legacy"
    );
    assert_legacy_saw_the_client_request(&legacy, "/api/orders/3");

    assert_eq!(proxy.admin_post("/kill-switch?state=off").await.status, 200);
    assert_eq!(
        side(&proxy, ClientRequest::get("/api/orders/4")).await,
        "orders-v2"
    );
    assert_eq!(new.last().target, "/orders/4");
    assert_eq!(
        proxy
            .metric("strangler_kill_switch_changes_total{source=\"admin\",state=\"off\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fallback_from_a_dead_or_busy_new_service_reaches_legacy_with_the_clients_path() {
    let legacy = Backend::start("legacy").await;
    let dead = start_migrated(legacy.address, support::dead_address()).await;
    let response = dead.get("/api/orders/5?expand=lines").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-backend"), Some("legacy"));
    assert_eq!(response.header("x-strangler-fallback"), Some("legacy"));
    assert_legacy_saw_the_client_request(&legacy, "/api/orders/5?expand=lines");

    let busy = Backend::busy("orders-v2").await;
    let proxy = start_migrated(legacy.address, busy.address).await;
    let response = proxy.get("/api/orders/6").await;
    assert_eq!(response.header("x-backend"), Some("legacy"));
    assert_eq!(
        busy.last().target,
        "/orders/6",
        "the new service got its rewrite"
    );
    assert_legacy_saw_the_client_request(&legacy, "/api/orders/6");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_side_of_a_split_gets_its_own_edits() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("orders-v2").await;
    let split = format!(
        "upstream: orders-v2\n    split: [{{ upstream: {NEW_TARGET}, weight: 50 }}, {{ upstream: legacy, weight: 50 }}]"
    );
    let config = migrated(legacy.address, new.address, "x")
        .replace("stage: new", "stage: canary")
        .replace("upstream: x\n    fallback: legacy", &split)
        .replace("upstream: orders-v2\n    split", "split");
    let proxy = Proxy::start(&config).await;
    let mut sides = HashMap::<String, usize>::new();
    for n in 0..40 {
        *sides
            .entry(side(&proxy, ClientRequest::get(&format!("/api/orders/{n}"))).await)
            .or_default() += 1;
    }
    assert!(sides.len() == 2, "both sides served: {sides:?}");
    for request in legacy.requests() {
        if request.header("x-strangler-shadow").is_none() {
            assert!(
                request.target.starts_with("/api/orders/"),
                "{}",
                request.target
            );
            assert_eq!(request.header("x-migrated"), None);
        }
    }
    for request in new.requests() {
        assert!(request.target.starts_with("/orders/"), "{}", request.target);
        assert_eq!(request.header("x-migrated"), Some("true"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tester_forcing_either_upstream_gets_that_upstreams_edits() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("orders-v2").await;
    let proxy = start_migrated(legacy.address, new.address).await;
    let forced = |upstream: &str| {
        ClientRequest::get("/api/orders/7")
            .header("x-strangler-upstream", upstream)
            .header("x-strangler-token", TESTER_TOKEN)
    };
    assert_eq!(side(&proxy, forced("legacy")).await, "legacy");
    assert_legacy_saw_the_client_request(&legacy, "/api/orders/7");
    assert_eq!(side(&proxy, forced("orders-v2")).await, "orders-v2");
    assert_eq!(new.last().target, "/orders/7");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_one_line_rollback_sends_legacy_its_own_paths() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("orders-v2").await;
    let proxy = start_migrated(legacy.address, new.address).await;
    assert_eq!(
        side(&proxy, ClientRequest::get("/api/orders/8")).await,
        "orders-v2"
    );

    let rolled_back = migrated(legacy.address, new.address, "legacy").replace(
        "shadow: { upstream: legacy }",
        &format!("shadow: {{ upstream: {NEW_TARGET} }}"),
    );
    proxy.rewrite(&rolled_back);
    let reloaded = proxy.reload().await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(
        side(&proxy, ClientRequest::get("/api/orders/9")).await,
        "legacy"
    );
    assert_legacy_saw_the_client_request(&legacy, "/api/orders/9");
    // The new service keeps getting copies, with its own edits.
    new.wait_for_requests(2).await;
    assert_eq!(new.last().target, "/orders/9");
    assert_eq!(new.last().header("x-strangler-shadow"), Some("1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn shadowing_legacy_from_stage_new_copies_the_clients_request() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("orders-v2").await;
    let proxy = start_migrated(legacy.address, new.address).await;
    assert_eq!(
        side(&proxy, ClientRequest::get("/api/orders/10?v=2")).await,
        "orders-v2"
    );
    legacy.wait_for_requests(1).await;
    let copy = legacy.last();
    assert_eq!(copy.header("x-strangler-shadow"), Some("1"));
    assert_eq!(copy.target, "/api/orders/10?v=2");
    assert_eq!(copy.header("x-migrated"), None);
    assert_eq!(new.last().target, "/orders/10?v=2");
}
