//! Migration coverage through the real proxy: what no route covers yet, by path template, the
//! share new services serve, and route stubs that really cover what they are offered for.

use crate::support;

use support::{Backend, ClientRequest, Proxy, run_cli};

fn config(legacy: &Backend, new: &Backend, extra_routes: &str) -> String {
    format!(
        r#"upstreams:
  legacy: {{ backends: [{}] }}
  orders-v2: {{ backends: [{}] }}
default_upstream: legacy
routes:
  - name: orders
    match: {{ path_prefix: /orders }}
    upstream: orders-v2
  - name: invoices
    match: {{ path_prefix: /invoices }}
    upstream: legacy
{extra_routes}"#,
        legacy.address, new.address
    )
}

async fn coverage(proxy: &Proxy, query: &str) -> support::ClientResponse {
    support::get(proxy.admin, &format!("/coverage{query}"))
        .await
        .unwrap()
}

/// Waits until `/coverage` has counted `requests` answered requests.
async fn coverage_after(proxy: &Proxy, requests: u64) -> serde_json::Value {
    support::eventually("every request counted by /coverage", || async {
        let document = coverage(proxy, "").await.json();
        if document["requests"] == requests {
            Ok(document)
        } else {
            Err(document["requests"].clone())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn uncovered_traffic_is_listed_by_template_with_shares_and_a_stub_that_covers_it() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("orders-v2").await;
    let proxy = Proxy::start(&config(&legacy, &new, "")).await;

    for id in 0..10 {
        assert_eq!(proxy.get(&format!("/orders/{id}")).await.status, 200);
    }
    for id in 0..5 {
        assert_eq!(proxy.get(&format!("/invoices/{id}")).await.status, 200);
    }
    // A thousand distinct product ids are one line of work, not a thousand.
    for id in 0..1000 {
        let path = format!("/products/{}", 100_000 + id * 7);
        assert_eq!(proxy.get(&path).await.status, 200);
    }
    for _ in 0..20 {
        let uuid = uuid::Uuid::new_v4();
        assert_eq!(
            proxy
                .get(&format!("/customers/{uuid}/cart?x=1"))
                .await
                .status,
            200
        );
    }
    for _ in 0..3 {
        let response = proxy
            .send(ClientRequest::new("POST", "/customers").body("{}"))
            .await;
        assert_eq!(response.status, 200);
    }

    let document = coverage_after(&proxy, 1038).await;
    assert_eq!(document["new"], 10);
    assert_eq!(document["legacy"], 1028);
    assert_eq!(document["unmatched"], 1023);
    let routes = document["routes"].as_array().unwrap();
    let orders = routes.iter().find(|r| r["route"] == "orders").unwrap();
    assert_eq!(
        (orders["new"].as_u64(), orders["new_share"].as_f64()),
        (Some(10), Some(1.0))
    );
    let invoices = routes.iter().find(|r| r["route"] == "invoices").unwrap();
    assert_eq!(
        (invoices["legacy"].as_u64(), invoices["new"].as_u64()),
        (Some(5), Some(0))
    );

    let templates: Vec<(String, String, u64)> = document["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["method"].as_str().unwrap().to_owned(),
                t["template"].as_str().unwrap().to_owned(),
                t["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        templates,
        vec![
            ("GET".into(), "/products/{id}".into(), 1000),
            ("GET".into(), "/customers/{uuid}/cart".into(), 20),
            ("POST".into(), "/customers".into(), 3),
        ]
    );

    // The stub offered for the top template is valid config, and once pasted the template is
    // covered: it leaves the list, and its requests are the route's.
    let stub = document["templates"][0]["stub"].as_str().unwrap();
    let with_stub = config(&legacy, &new, &indent(stub));
    std::fs::write(proxy.config_path(), &with_stub).unwrap();
    let (code, _, stderr) = run_cli(
        &["validate", proxy.config_path().to_str().unwrap()],
        &support::repo_root(),
    );
    assert_eq!(code, 0, "the stub is valid config: {stderr}\n{with_stub}");
    let reloaded = proxy.reload().await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let after = coverage(&proxy, "").await.json();
    assert!(
        after["templates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["template"] != "/products/{id}"),
        "covered now: {after:#}"
    );
    assert_eq!(after["templates_left_out"], 1000);
    assert_eq!(proxy.get("/products/5").await.status, 200);
    let stubbed = proxy.wait_for_metric(
        "strangler_requests_total{code=\"200\",route=\"get-products-id\",upstream=\"legacy\"}",
        1.0,
    );
    assert_eq!(stubbed.await, 1.0, "the stub's route serves the template");

    // The CLI prints the same, for a person and for a tool.
    let admin = proxy.admin.to_string();
    let (code, text, stderr) = run_cli(
        &["coverage", "--admin", &admin, "--top", "5"],
        &support::repo_root(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(text.contains("GET /customers/{uuid}/cart"), "{text}");
    assert!(text.contains("- name: get-customers-uuid-cart"), "{text}");
    assert!(text.contains("orders"), "{text}");
    let (code, json, _) = run_cli(
        &["coverage", "--admin", &admin, "--format", "json"],
        &support::repo_root(),
    );
    assert_eq!(code, 0);
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["templates"][0]["template"], "/customers/{uuid}/cart");
}

#[tokio::test(flavor = "multi_thread")]
async fn coverage_parameters_are_validated_not_ignored() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("orders-v2").await;
    let proxy = Proxy::start(&config(&legacy, &new, "")).await;
    for query in ["?top=0", "?top=many", "?top=1001", "?limit=5"] {
        let response = coverage(&proxy, query).await;
        assert_eq!(response.status, 400, "{query}: {}", response.text());
    }
    assert_eq!(coverage(&proxy, "?top=3").await.status, 200);
}

/// A route stub indented as an item of `routes:`.
fn indent(stub: &str) -> String {
    stub.lines().map(|line| format!("  {line}\n")).collect()
}
