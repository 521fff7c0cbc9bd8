//! Metrics, access logs, request ids, trace context and the admin API (auth, methods, `/upstreams`,
//! readiness, the loopback default), end to end.

use crate::support;

use std::time::Duration;

use support::{Backend, ClientRequest, Proxy, run_cli};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_durations_errors_and_health() {
    let backend = Backend::start("b").await;
    let dead = support::dead_address();
    let proxy = Proxy::with(format!(
            "upstreams:\n  u: {{ backends: [{}] }}\n  gone: {{ backends: [{dead}], retries: 0 }}\ndefault_upstream: u\nroutes:\n  - {{ name: api, match: {{ path_prefix: /api }} }}\n  - {{ name: broken, match: {{ path_prefix: /broken }}, upstream: gone }}\n",
            backend.address
        ))
        .start()
    .await;
    for _ in 0..5 {
        assert_eq!(proxy.get("/api/x").await.status, 200);
    }
    assert_eq!(proxy.get("/other").await.status, 200);
    assert_eq!(proxy.get("/broken").await.status, 502);

    // A request is counted in its logging phase, which runs just after the client has its
    // answer: wait until all seven are in.
    let text = support::eventually("all 7 requests counted", || async {
        let text = support::get(proxy.admin, "/metrics").await.unwrap().text();
        let counted: f64 = text
            .lines()
            .filter(|line| line.starts_with("strangler_requests_total{"))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        // The failed request's error sample comes with it (counted just before it).
        if counted >= 7.0
            && text.contains("strangler_upstream_errors_total{kind=\"connect_refused\"")
        {
            Ok(text)
        } else {
            Err(format!("{counted} counted in\n{text}"))
        }
    })
    .await;
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
    assert_eq!(value("strangler_config_last_reload_success"), 1.0);
    // Reload results exist at 0 before the first reload, so rate() and alerts work at once.
    for result in ["applied", "unchanged", "invalid", "unreadable"] {
        assert_eq!(
            value(&format!(
                "strangler_config_reloads_total{{result=\"{result}\"}}"
            )),
            0.0
        );
    }
    assert_eq!(
        value("strangler_route_stage{route=\"api\",stage=\"legacy\"}"),
        1.0
    );
    assert_eq!(value("strangler_kill_switch"), 0.0);
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
    let proxy = Proxy::with(format!(
        "upstreams:\n  u: {{ backends: [{}] }}\ndefault_upstream: u\n",
        backend.address
    ))
    .arg("--log-format")
    .arg("json")
    .env("RUST_LOG", "info")
    .start()
    .await;
    proxy.get("/logged?x=1").await;
    let id = backend.last().header("x-request-id").unwrap().to_owned();

    let (event, stderr) = support::eventually(&format!("the access log of {id}"), || async {
        let stderr = proxy.stderr();
        let access = stderr
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|event| {
                event["target"] == "strangler::access"
                    && event["fields"]["request_id"] == id.as_str()
            });
        match access {
            Some(event) => Ok((event, stderr)),
            None => Err(stderr),
        }
    })
    .await;
    let fields = &event["fields"];
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["path"], "/logged");
    assert_eq!(fields["route"], "default");
    assert_eq!(fields["upstream"], "u");
    assert_eq!(fields["shadowed"], false);
    assert!(fields["duration_ms"].as_f64().is_some());
    assert_eq!(event["level"], "INFO");
    assert!(event["timestamp"].is_string());
    // Every line on stderr is one JSON event, the proxy's and Pingora's alike (a last line
    // still being written is left out).
    let complete = &stderr[..stderr.rfind('\n').map_or(0, |end| end + 1)];
    for line in complete.lines().filter(|line| !line.trim().is_empty()) {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        assert!(event["target"].is_string(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn traceparent_reaches_the_backend_and_the_shadow() {
    let backend = Backend::start("b").await;
    let shadow = Backend::start("s").await;
    let proxy = Proxy::with(format!(
            "upstreams:\n  u: {{ backends: [{}] }}\n  s: {{ backends: [{}] }}\ndefault_upstream: u\nroutes:\n  - {{ name: r, match: {{ path: /t }}, shadow: {{ upstream: s }} }}\n",
            backend.address, shadow.address
        ))
        .start()
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
    let id = backend.last().header("x-request-id").unwrap().to_owned();
    assert_eq!(
        copy.header("x-request-id"),
        Some(id.as_str()),
        "the copy carries the request's id"
    );

    // The copy is counted once sent, once completed, and its comparison once (the two backends
    // answer different bodies: a mismatch).
    for sample in [
        "strangler_shadow_requests_total{outcome=\"sent\",route=\"r\"}",
        "strangler_shadow_requests_total{outcome=\"completed\",route=\"r\"}",
        "strangler_diffs_total{result=\"mismatch\",route=\"r\"}",
    ] {
        support::eventually(&format!("{sample} at 1"), || async {
            match proxy.metric(sample).await {
                Some(1.0) => Ok(()),
                seen => Err(format!("{seen:?}")),
            }
        })
        .await;
    }
}

/// A proxy (with one backend, returned to keep it alive) whose admin API needs
/// `Bearer s3cret-token`.
async fn with_admin_token() -> (Proxy, Backend) {
    let backend = Backend::start("b").await;
    let proxy = Proxy::with(format!(
        "upstreams:\n  u: {{ backends: [{}] }}\ndefault_upstream: u\n",
        backend.address
    ))
    .server("  admin_token: s3cret-token\n")
    .start()
    .await;
    (proxy, backend)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_requires_its_token_except_for_health_and_metrics() {
    let (proxy, _backend) = with_admin_token().await;
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
    assert_eq!(admin("/upstreams", "GET", None).await.unwrap().status, 401);
    assert_eq!(
        admin("/upstreams", "GET", Some("wrong"))
            .await
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        admin("/kill-switch?state=on", "POST", None)
            .await
            .unwrap()
            .status,
        401
    );
    let refused = admin("/upstreams", "GET", Some("s3cret-token-but-longer"))
        .await
        .unwrap();
    assert_eq!(
        refused.status, 401,
        "a token with the right prefix is wrong"
    );
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    for path in ["/routes", "/upstreams"] {
        let shown = admin(path, "GET", Some("s3cret-token")).await.unwrap();
        assert_eq!(shown.status, 200, "{path}");
        assert!(
            !shown.text().contains("s3cret-token"),
            "the token is never shown by {path}"
        );
    }
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

/// GET `path` on the admin API (no token).
async fn admin_json(proxy: &Proxy, path: &str) -> serde_json::Value {
    let response = support::get(proxy.admin, path).await.unwrap();
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    response.json()
}

/// The entry for backend `address` of upstream `name` in a `GET /upstreams` document.
fn backend_entry<'a>(
    document: &'a serde_json::Value,
    name: &str,
    address: std::net::SocketAddr,
) -> &'a serde_json::Value {
    let upstream = document["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|upstream| upstream["name"] == name)
        .unwrap_or_else(|| panic!("no upstream {name} in {document:#}"));
    upstream["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|backend| backend["address"] == address.to_string().as_str())
        .unwrap_or_else(|| panic!("no backend {address} under {name} in {document:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn upstreams_lists_every_backend_with_the_health_checks_verdict() {
    let live = Backend::start("live").await;
    let dead = support::dead_address();
    let proxy = Proxy::with(format!(
            "upstreams:\n  checked:\n    backends: [{live}, {dead}]\n    health_check: {{ path: /health, interval: 100ms, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 1 }}\n  plain: {{ backends: [{live}] }}\ndefault_upstream: plain\n",
            live = live.address
        ))
        .start()
    .await;

    let document = admin_json(&proxy, "/upstreams").await;
    assert_eq!(document["generation"], 1);
    let names: Vec<&str> = document["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|upstream| upstream["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["checked", "plain"]);
    let checked = &document["upstreams"][0];
    assert_eq!(checked["total_backends"], 2);
    assert_eq!(checked["retries"], 1);
    assert_eq!(
        checked["health_check"],
        serde_json::json!({
            "kind": "http",
            "path": "/health",
            "interval": "100ms",
            "timeout": "500ms",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
        })
    );
    assert_eq!(
        checked["passive"],
        serde_json::json!({ "consecutive_failures": 5, "ejection": "30s" })
    );
    let plain = &document["upstreams"][1];
    assert!(plain["health_check"].is_null(), "{plain:#}");
    assert_eq!(plain["backends"][0]["address"], live.address.to_string());
    assert_eq!(plain["backends"][0]["healthy"], true);

    // The checks run every 100 ms: the dead backend goes out after two failures, the live one
    // keeps passing.
    let document = support::eventually("the health checks settling", || async {
        let document = admin_json(&proxy, "/upstreams").await;
        let down = backend_entry(&document, "checked", dead);
        let up = backend_entry(&document, "checked", live.address);
        if down["healthy"] == false && up["consecutive_check_passes"].as_u64() >= Some(1) {
            Ok(document)
        } else {
            Err(format!("{document:#}"))
        }
    })
    .await;
    let down = backend_entry(&document, "checked", dead);
    assert_eq!(down["state"], "unhealthy");
    assert_eq!(down["probed_down"], true);
    assert_eq!(down["ejected"], false);
    assert!(down["ejected_until"].is_null());
    assert!(down["consecutive_check_failures"].as_u64().unwrap() >= 2);
    assert_eq!(down["consecutive_check_passes"], 0);
    let up = backend_entry(&document, "checked", live.address);
    assert_eq!(up["healthy"], true);
    assert_eq!(up["state"], "healthy");
    assert_eq!(up["probed_down"], false);
    assert_eq!(up["consecutive_check_failures"], 0);
    assert_eq!(document["upstreams"][0]["healthy_backends"], 1);
    assert!(
        live.requests()
            .iter()
            .any(|r| r.target == "/health"
                && r.header("user-agent") == Some("strangler-health-check")),
        "the live backend was probed on its path"
    );

    // The metric says the same.
    let healthy = |upstream: &str, backend: std::net::SocketAddr| {
        format!("strangler_upstream_healthy{{backend=\"{backend}\",upstream=\"{upstream}\"}}")
    };
    assert_eq!(proxy.metric(&healthy("checked", dead)).await, Some(0.0));
    assert_eq!(
        proxy.metric(&healthy("checked", live.address)).await,
        Some(1.0)
    );
    assert_eq!(
        proxy.metric(&healthy("plain", live.address)).await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstreams_shows_a_passive_ejection_and_when_it_ends() {
    let live = Backend::start("live").await;
    let dead = support::dead_address();
    let proxy = Proxy::with(format!(
            "upstreams:\n  u:\n    backends: [{}, {dead}]\n    passive: {{ consecutive_failures: 1, ejection: 1m }}\ndefault_upstream: u\n",
            live.address
        ))
        .env("RUST_LOG", "error")
        .start()
    .await;
    // Round robin sends one of the first requests to the dead backend; the retry answers.
    let document = support::eventually("the dead backend ejected", || async {
        assert_eq!(proxy.get("/").await.status, 200);
        let document = admin_json(&proxy, "/upstreams").await;
        if backend_entry(&document, "u", dead)["ejected"] == true {
            Ok(document)
        } else {
            Err(format!("{document:#}"))
        }
    })
    .await;
    let down = backend_entry(&document, "u", dead);
    assert_eq!(down["healthy"], false);
    assert_eq!(down["state"], "ejected");
    assert_eq!(down["probed_down"], false);
    let until = humantime::parse_rfc3339(down["ejected_until"].as_str().unwrap()).unwrap();
    let left = until
        .duration_since(std::time::SystemTime::now())
        .expect("the ejection ends in the future");
    assert!(
        left > Duration::from_secs(45) && left <= Duration::from_secs(60),
        "{left:?}"
    );
    assert_eq!(backend_entry(&document, "u", live.address)["healthy"], true);
    assert_eq!(
        proxy
            .metric(&format!(
                "strangler_upstream_healthy{{backend=\"{dead}\",upstream=\"u\"}}"
            ))
            .await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_answer_the_wrong_method_with_405_and_allow() {
    let (proxy, _backend) = with_admin_token().await;
    for (method, path, allow) in [
        ("POST", "/upstreams", "GET, HEAD"),
        ("DELETE", "/upstreams", "GET, HEAD"),
        ("POST", "/routes", "GET, HEAD"),
        ("PUT", "/metrics", "GET, HEAD"),
        ("GET", "/reload", "POST"),
        ("GET", "/kill-switch?state=on", "POST"),
    ] {
        let response = support::send(
            proxy.admin,
            ClientRequest::new(method, path).header("authorization", "Bearer s3cret-token"),
        )
        .await
        .unwrap();
        assert_eq!(response.status, 405, "{method} {path}");
        assert_eq!(response.header("allow"), Some(allow), "{method} {path}");
    }
    // The GETs changed nothing.
    let routes = support::send(
        proxy.admin,
        ClientRequest::get("/routes").header("authorization", "Bearer s3cret-token"),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(routes["kill_switch"], false);
    assert_eq!(routes["generation"], 1);
    assert!(routes["last_reload"].is_null(), "{routes:#}");
}

#[test]
fn the_admin_listener_defaults_to_loopback_port_9901() {
    // Hold the default admin address: a config without `admin` must then fail to bind exactly
    // there. (If something else holds it already, that serves the same purpose.)
    let _held = std::net::TcpListener::bind("127.0.0.1:9901");
    let dir = tempfile::tempdir().unwrap();
    let listen = support::free_port();
    std::fs::write(
        dir.path().join("routes.yaml"),
        format!(
            "server: {{ listen: 127.0.0.1:{listen} }}\nupstreams:\n  u: {{ backends: [127.0.0.1:9] }}\ndefault_upstream: u\n"
        ),
    )
    .unwrap();
    let (code, _, stderr) = run_cli(&["run", "-c", "routes.yaml"], dir.path());
    assert_ne!(code, 0);
    assert!(
        stderr.contains("cannot listen on 127.0.0.1:9901 (admin)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_never_ready_without_a_loaded_config() {
    // Valid YAML, invalid config: the default upstream does not exist.
    let proxy =
        Proxy::with("upstreams:\n  u: { backends: [127.0.0.1:9] }\ndefault_upstream: nope\n");
    let ports = proxy.ports;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, proxy.rendered()).unwrap();
    let mut child = std::process::Command::new(support::binary())
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Ask /readyz as fast as possible for as long as the process lives: no answer may be 200.
    let status = support::eventually("strangler exiting on an invalid config", || {
        let exited = child.try_wait().unwrap();
        async move {
            if let Some(status) = exited {
                return Ok(status);
            }
            if let Ok(response) = support::get(ports.admin, "/readyz").await {
                assert_ne!(response.status, 200, "ready on an invalid config");
            }
            Err("still running")
        }
    })
    .await;
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("not started"), "{stderr}");
    assert!(
        std::net::TcpStream::connect(ports.admin).is_err(),
        "the admin listener was never bound"
    );

    // The same file made valid: the first 200 carries generation 1.
    std::fs::write(
        &path,
        proxy
            .rendered()
            .replace("default_upstream: nope", "default_upstream: u"),
    )
    .unwrap();
    let proxy = proxy.in_dir(dir).on_file(&path).start().await;
    let ready = admin_json(&proxy, "/readyz").await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["generation"], 1);
}

/// A shadowed route `orders` served by `new` with `legacy` as fallback; `legacy` is default.
fn fallback_config(legacy: std::net::SocketAddr, new: std::net::SocketAddr) -> String {
    format!(
        r#"upstreams:
  legacy: {{ backends: [{legacy}] }}
  new: {{ backends: [{new}], retries: 0 }}
default_upstream: legacy
routes:
  - name: orders
    stage: new
    match: {{ path_prefix: /orders }}
    upstream: new
    fallback: legacy
    shadow: {{ upstream: legacy }}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn fallbacks_are_counted_by_reason_and_every_shadowed_request_has_one_outcome() {
    let legacy = Backend::start("legacy").await;
    let busy = Backend::busy("new").await;
    let proxy = Proxy::with(fallback_config(legacy.address, busy.address))
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(
            proxy.get("/orders/1").await.header("x-backend"),
            Some("legacy")
        );
    }
    let sample = |reason: &str| {
        format!(
            "strangler_fallbacks_total{{from=\"new\",reason=\"{reason}\",route=\"orders\",to=\"legacy\"}}"
        )
    };
    proxy.wait_for_metric(&sample("status"), 3.0).await;

    let dead = Proxy::with(fallback_config(legacy.address, support::dead_address()))
        .start()
        .await;
    assert_eq!(
        dead.get("/orders/1").await.header("x-backend"),
        Some("legacy")
    );
    dead.wait_for_metric(&sample("unreachable"), 1.0).await;

    let on = dead.admin_post("/kill-switch?state=on").await;
    assert_eq!(on.status, 200);
    for _ in 0..2 {
        assert_eq!(dead.get("/orders/2").await.status, 200);
    }
    dead.wait_for_metric(&sample("kill_switch"), 2.0).await;
    dead.wait_for_metric(
        "strangler_shadow_requests_total{outcome=\"skipped_kill_switch\",route=\"orders\"}",
        2.0,
    )
    .await;

    // Requests on a shadowed route = the outcomes of their copies.
    let text = support::get(dead.admin, "/metrics").await.unwrap().text();
    let sum = |prefix: &str, exclude: &[&str]| -> f64 {
        text.lines()
            .filter(|line| line.starts_with(prefix) && line.contains("route=\"orders\""))
            .filter(|line| !exclude.iter().any(|word| line.contains(word)))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let requests = sum("strangler_requests_total{", &[]);
    // `sent` is followed by `completed`/`error`/`timeout`: count the end of each copy once.
    let outcomes = sum("strangler_shadow_requests_total{", &["outcome=\"sent\""]);
    assert_eq!(requests, 3.0, "{text}");
    assert_eq!(outcomes, requests, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_removed_by_a_reload_leaves_metrics_and_one_edit_counts_once() {
    let backend = Backend::start("b").await;
    let config = |routes: &str| {
        format!(
            "upstreams:\n  u: {{ backends: [{}] }}\ndefault_upstream: u\nroutes:\n{routes}",
            backend.address
        )
    };
    let proxy = Proxy::start(&config(
        "  - { name: old, match: { path_prefix: /old } }\n  - { name: kept, match: { path_prefix: /kept } }\n",
    ))
    .await;
    assert_eq!(proxy.get("/old").await.status, 200);
    assert_eq!(proxy.get("/kept").await.status, 200);
    proxy
        .wait_for_metric(
            "strangler_requests_total{code=\"200\",route=\"old\",upstream=\"u\"}",
            1.0,
        )
        .await;
    assert!(proxy.metric("process_resident_memory_bytes").await.unwrap() > 0.0);
    let version = format!(
        "strangler_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(proxy.metric(&version).await, Some(1.0));

    // Written in place (no rename): the watch may see the write more than once.
    let path = proxy.config_path();
    std::fs::write(
        &path,
        proxy.full_config(&config(
            "  - { name: kept, match: { path_prefix: /kept } }\n",
        )),
    )
    .unwrap();
    proxy
        .wait_for_metric("strangler_config_reloads_total{result=\"applied\"}", 1.0)
        .await;
    // The watch applied it; the same content through the API is the same edit.
    let again = proxy.reload().await;
    assert_eq!(again.json()["result"], "unchanged");
    let text = support::get(proxy.admin, "/metrics").await.unwrap().text();
    assert!(!text.contains("route=\"old\""), "{text}");
    assert!(text.contains("route=\"kept\""), "{text}");
    assert_eq!(
        proxy
            .metric("strangler_config_reloads_total{result=\"applied\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        proxy
            .metric("strangler_config_reloads_total{result=\"unchanged\"}")
            .await,
        Some(0.0)
    );

    // A bad edit is one rejection, however often it is read.
    std::fs::write(&path, "routes: [").unwrap();
    proxy
        .wait_for_metric("strangler_config_reloads_total{result=\"invalid\"}", 1.0)
        .await;
    let rejected = proxy.reload().await;
    assert_eq!(rejected.status, 422);
    assert_eq!(
        proxy
            .metric("strangler_config_reloads_total{result=\"invalid\"}")
            .await,
        Some(1.0)
    );
}
