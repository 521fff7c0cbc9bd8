//! Metrics, access logs, trace context and the admin API's authentication, end to end.

mod support;

use std::time::{Duration, Instant};

use support::{Backend, ClientRequest, DEADLINE, Ports, Proxy, run_cli};

/// Writes `config` (with a server section for fresh ports, plus `server_extra` lines) and starts
/// the proxy with `args` and `env`.
async fn start(config: &str, server_extra: &str, args: &[&str], env: &[(&str, &str)]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::reserve();
    let text = ports.with_server(config).replacen(
        "  threads: 1\n",
        &format!("  threads: 1\n{server_extra}"),
        1,
    );
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, text).unwrap();
    Proxy::start_with(dir, &path, ports, args, env).await
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_durations_errors_and_health() {
    let backend = Backend::start("b").await;
    let dead = support::dead_address();
    let proxy = start(
        &format!(
            "upstreams:\n  u: {{ backends: [{}] }}\n  gone: {{ backends: [{dead}], retries: 0 }}\ndefault_upstream: u\nroutes:\n  - {{ name: api, match: {{ path_prefix: /api }} }}\n  - {{ name: broken, match: {{ path_prefix: /broken }}, upstream: gone }}\n",
            backend.address
        ),
        "",
        &[],
        &[("RUST_LOG", "warn")],
    )
    .await;
    for _ in 0..5 {
        assert_eq!(proxy.get("/api/x").await.status, 200);
    }
    assert_eq!(proxy.get("/other").await.status, 200);
    assert_eq!(proxy.get("/broken").await.status, 502);

    let text = support::get(proxy.admin, "/metrics").await.unwrap().text();
    let value = |sample: &str| -> f64 {
        text.lines()
            .find_map(|line| {
                line.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
    };
    assert_eq!(
        value("strangler_requests_total{code=\"200\",route=\"api\",upstream=\"u\"}"),
        5.0
    );
    assert_eq!(
        value("strangler_requests_total{code=\"200\",route=\"default\",upstream=\"u\"}"),
        1.0
    );
    assert_eq!(
        value("strangler_requests_total{code=\"502\",route=\"broken\",upstream=\"gone\"}"),
        1.0
    );
    assert_eq!(
        value("strangler_request_duration_seconds_count{route=\"api\",upstream=\"u\"}"),
        5.0
    );
    assert_eq!(
        value(
            "strangler_upstream_errors_total{kind=\"connect_refused\",route=\"broken\",upstream=\"gone\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&format!(
            "strangler_upstream_healthy{{backend=\"{}\",upstream=\"u\"}}",
            backend.address
        )),
        1.0
    );
    assert_eq!(value("strangler_config_generation"), 1.0);
    // Every line is Prometheus text: a comment, or `name{labels} value`.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (_, number) = line.rsplit_once(' ').expect("name and value");
        assert!(number.parse::<f64>().is_ok(), "not a sample: {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_access_logs_carry_the_request_id_the_backend_saw() {
    let backend = Backend::start("b").await;
    let proxy = start(
        &format!(
            "upstreams:\n  u: {{ backends: [{}] }}\ndefault_upstream: u\n",
            backend.address
        ),
        "",
        &["--log-format", "json"],
        &[("RUST_LOG", "info")],
    )
    .await;
    proxy.get("/logged?x=1").await;
    let id = backend.last().header("x-request-id").unwrap().to_owned();

    let started = Instant::now();
    loop {
        let stderr = proxy.stderr();
        let access = stderr
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|event| {
                event["target"] == "strangler::access"
                    && event["fields"]["request_id"] == id.as_str()
            });
        if let Some(event) = access {
            let fields = &event["fields"];
            assert_eq!(fields["status"], 200);
            assert_eq!(fields["path"], "/logged");
            assert_eq!(fields["route"], "default");
            assert_eq!(fields["upstream"], "u");
            assert_eq!(fields["shadowed"], false);
            assert!(fields["duration_ms"].as_f64().is_some());
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no access log for {id} in:\n{stderr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn traceparent_reaches_the_backend_and_the_shadow() {
    let backend = Backend::start("b").await;
    let shadow = Backend::start("s").await;
    let proxy = start(
        &format!(
            "upstreams:\n  u: {{ backends: [{}] }}\n  s: {{ backends: [{}] }}\ndefault_upstream: u\nroutes:\n  - {{ name: r, match: {{ path: /t }}, shadow: {{ upstream: s }} }}\n",
            backend.address, shadow.address
        ),
        "",
        &[],
        &[("RUST_LOG", "warn")],
    )
    .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    proxy
        .send(ClientRequest::get("/t").header("traceparent", traceparent))
        .await;
    assert_eq!(backend.last().header("traceparent"), Some(traceparent));
    shadow.wait_for_requests(1).await;
    let copy = shadow.last();
    assert_eq!(copy.header("traceparent"), Some(traceparent));
    assert_eq!(
        copy.header("x-strangler-shadow"),
        Some("1"),
        "the shadow's span context is marked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_requires_its_token_except_for_health_and_metrics() {
    let backend = Backend::start("b").await;
    let proxy = start(
        &format!(
            "upstreams:\n  u: {{ backends: [{}] }}\ndefault_upstream: u\n",
            backend.address
        ),
        "  admin_token: s3cret-token\n",
        &[],
        &[("RUST_LOG", "warn")],
    )
    .await;
    let admin = |path: &str, method: &str, token: Option<&str>| {
        let mut request = ClientRequest::new(method, path);
        if let Some(token) = token {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        support::send(proxy.admin, request)
    };
    assert_eq!(admin("/routes", "GET", None).await.unwrap().status, 401);
    assert_eq!(
        admin("/routes", "GET", Some("wrong")).await.unwrap().status,
        401
    );
    assert_eq!(admin("/reload", "POST", None).await.unwrap().status, 401);
    assert_eq!(admin("/diffs", "GET", None).await.unwrap().status, 401);
    let routes = admin("/routes", "GET", Some("s3cret-token")).await.unwrap();
    assert_eq!(routes.status, 200);
    assert!(
        !routes.text().contains("s3cret-token"),
        "the token is never shown"
    );
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            admin(open, "GET", None).await.unwrap().status,
            200,
            "{open}"
        );
    }
    assert!(
        !proxy.stderr().contains("s3cret-token"),
        "the token is never logged"
    );
}

#[test]
fn an_admin_listener_off_loopback_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let listen = support::free_port();
    let admin = support::free_port();
    std::fs::write(
        dir.path().join("routes.yaml"),
        format!(
            "server: {{ listen: 127.0.0.1:{listen}, admin: 0.0.0.0:{admin} }}\nupstreams:\n  u: {{ backends: [127.0.0.1:9] }}\ndefault_upstream: u\n"
        ),
    )
    .unwrap();
    let (code, _, stderr) = run_cli(&["run", "-c", "routes.yaml"], dir.path());
    assert_ne!(code, 0);
    assert!(
        stderr.contains("is not on loopback and has no token"),
        "{stderr}"
    );
}
