//! docs/migration-guide.md, executed. Each stage's YAML is read from the guide itself (the
//! blocks after a `<!-- stage: NAME -->` comment), completed with the `upstreams` of the root
//! routes.yaml pointed at the real demo apps, and applied to one running proxy by hot reload,
//! stage after stage, as a reader would. Each stage is then checked for what the guide says it
//! does: which app answered (`x-served-by`), which path it was sent (`x-seen-path`), the diffs,
//! the kill switch, the fallback and the retired answer. Editing a block of the guide so that it
//! no longer does what the page says fails here.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;

use serde_yaml::{Mapping, Value};
use strangler::demo::App;
use support::{ClientRequest, ClientResponse, Proxy, repo_root, run_cli};

const GUIDE: &str = "docs/migration-guide.md";

/// The stages the guide walks through, in order.
const STAGES: [&str; 6] = ["legacy", "shadow", "canary", "new", "rollback", "retired"];

/// The YAML blocks of `markdown`, each with the stage its marker names, in file order. Every
/// YAML block must be marked: an unmarked one would be a snippet nothing checks.
fn stage_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines().enumerate();
    let mut marker: Option<(usize, String)> = None;
    while let Some((number, line)) = lines.next() {
        let trimmed = line.trim();
        if let Some(stage) = trimmed
            .strip_prefix("<!-- stage:")
            .and_then(|rest| rest.strip_suffix("-->"))
        {
            marker = Some((number, stage.trim().to_owned()));
            continue;
        }
        if trimmed == "```yaml" {
            let Some((marked_at, stage)) = marker.take() else {
                panic!(
                    "{GUIDE}:{}: a YAML block without a `<!-- stage: NAME -->` line before it",
                    number + 1
                );
            };
            assert_eq!(
                marked_at + 1,
                number,
                "{GUIDE}:{}: the stage marker must be the line right before the block",
                marked_at + 1
            );
            let mut yaml = String::new();
            for (_, line) in lines.by_ref() {
                if line.trim() == "```" {
                    break;
                }
                yaml.push_str(line);
                yaml.push('\n');
            }
            blocks.push((stage, yaml));
        } else if !trimmed.is_empty() {
            if let Some((marked_at, _)) = &marker {
                panic!(
                    "{GUIDE}:{}: a stage marker not followed by a ```yaml block",
                    marked_at + 1
                );
            }
        }
    }
    assert!(marker.is_none(), "{GUIDE}: a stage marker at the end");
    blocks
}

/// The guide's blocks, grouped by stage in order of first appearance.
fn guide_stages() -> Vec<(String, Vec<String>)> {
    let markdown = std::fs::read_to_string(repo_root().join(GUIDE)).unwrap();
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    for (stage, yaml) in stage_blocks(&markdown) {
        match stages.iter_mut().find(|(name, _)| *name == stage) {
            Some((_, blocks)) => blocks.push(yaml),
            None => stages.push((stage, vec![yaml])),
        }
    }
    stages
}

/// A whole config for one stage: the root routes.yaml's `upstreams` (backends replaced by the
/// demo apps' addresses) and `default_upstream`, plus the stage's blocks. A block is a list of
/// routes, or a mapping of top-level keys (`routes:` among them, or `tester_override:`).
fn stage_config(blocks: &[String], legacy: SocketAddr, orders_v2: SocketAddr) -> Value {
    let root: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo_root().join("routes.yaml")).unwrap())
            .unwrap();
    let mut upstreams = root["upstreams"].clone();
    for (name, address) in [("legacy", legacy), ("orders-v2", orders_v2)] {
        let upstream = upstreams
            .get_mut(name)
            .unwrap_or_else(|| panic!("the root routes.yaml has no upstream `{name}`"));
        upstream["backends"] = Value::Sequence(vec![Value::String(address.to_string())]);
    }
    let mut config = Mapping::new();
    config.insert("upstreams".into(), upstreams);
    config.insert("default_upstream".into(), root["default_upstream"].clone());
    let mut routes = Vec::new();
    for block in blocks {
        let value: Value = serde_yaml::from_str(block)
            .unwrap_or_else(|error| panic!("{GUIDE}: a block is not YAML ({error}):\n{block}"));
        match value {
            Value::Sequence(items) => routes.extend(items),
            Value::Mapping(keys) => {
                for (key, value) in keys {
                    if key.as_str() == Some("routes") {
                        routes.extend(value.as_sequence().cloned().unwrap_or_default());
                    } else {
                        assert!(
                            config.insert(key.clone(), value).is_none(),
                            "{GUIDE}: `{key:?}` given twice in one stage"
                        );
                    }
                }
            }
            other => panic!("{GUIDE}: a block is neither routes nor top-level keys: {other:?}"),
        }
    }
    config.insert("routes".into(), Value::Sequence(routes));
    Value::Mapping(config)
}

/// One demo app (the real `strangler demo` handlers and HTTP plumbing) on an ephemeral port, on
/// a runtime of its own so that it can be stopped with every connection it holds.
struct DemoApp {
    address: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl DemoApp {
    fn start(app: App) -> DemoApp {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            strangler::demo::serve(listener, app).await;
        });
        DemoApp {
            address,
            runtime: Some(runtime),
        }
    }

    /// Stops the app: its listener and the connections it serves close.
    async fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        let address = self.address;
        support::eventually("the app closed", || async move {
            match tokio::net::TcpStream::connect(address).await {
                Ok(_) => Err("still accepting"),
                Err(_) => Ok(()),
            }
        })
        .await;
    }
}

impl Drop for DemoApp {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The guide's stages applied to one proxy, by rewriting its config file.
struct Walk {
    proxy: Proxy,
    stages: Vec<(String, Vec<String>)>,
    legacy: SocketAddr,
    orders_v2: SocketAddr,
}

impl Walk {
    fn config(&self, stage: &str) -> Value {
        let (_, blocks) = self
            .stages
            .iter()
            .find(|(name, _)| name == stage)
            .unwrap_or_else(|| panic!("{GUIDE} has no `{stage}` stage"));
        stage_config(blocks, self.legacy, self.orders_v2)
    }

    /// The `orders-read` route of `stage`, as the guide writes it.
    fn route(&self, stage: &str) -> Value {
        let config = self.config(stage);
        config["routes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|route| route["name"] == "orders-read")
            .unwrap_or_else(|| panic!("{GUIDE}: stage `{stage}` has no orders-read route"))
            .clone()
    }

    /// Writes `stage`'s config over the live file and waits until the proxy serves it.
    async fn apply(&self, stage: &str) {
        let text = self
            .proxy
            .full_config(&serde_yaml::to_string(&self.config(stage)).unwrap());
        let sha256 = strangler::config::SourceFile::new("routes.yaml", text.clone()).sha256;
        // Written whole and renamed into place: the file watch never reads it half written (a
        // truncated read is an invalid reload, which `eventually` below reports at once).
        self.proxy.replace_config(&text);
        let what = format!("stage `{stage}` applied");
        let routes = support::eventually(&what, || async {
            let routes = self.proxy.routes().await;
            if routes["sha256"] == sha256.as_str() {
                return Ok(routes);
            }
            // The guide's YAML no longer loads: say why now rather than at the deadline.
            assert!(
                routes["last_reload"]["result"] != "invalid",
                "stage `{stage}` was not applied; last reload: {:#}\n{text}",
                routes["last_reload"]
            );
            Err(routes["last_reload"].clone())
        })
        .await;
        assert_eq!(
            routes["stages"]["orders-read"],
            stage_of(&self.route(stage)).as_str()
        );
    }

    async fn get(&self, target: &str, headers: &[(&str, &str)]) -> ClientResponse {
        let mut request = ClientRequest::get(target);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        self.proxy.send(request).await
    }

    async fn kill_switch(&self, state: &str) {
        let response = self
            .proxy
            .admin_post(&format!("/kill-switch?state={state}"))
            .await;
        assert_eq!(response.status, 200, "{}", response.text());
    }

    /// Waits until metric sample `sample` reaches `at_least`.
    async fn wait_metric(&self, sample: &str, at_least: f64) {
        self.proxy.wait_for_metric(sample, at_least).await;
    }
}

/// A route's `stage`, as the admin API names it.
fn stage_of(route: &Value) -> String {
    route
        .get("stage")
        .and_then(Value::as_str)
        .unwrap_or("legacy")
        .to_owned()
}

/// Which app answered and which path it was sent.
fn served(response: &ClientResponse) -> (&str, &str) {
    assert_eq!(response.status, 200, "{}", response.text());
    (
        response.header("x-served-by").unwrap_or("(none)"),
        response.header("x-seen-path").unwrap_or("(none)"),
    )
}

#[test]
fn every_yaml_block_of_the_guide_is_a_marked_stage_in_order() {
    let stages: Vec<String> = guide_stages().into_iter().map(|(name, _)| name).collect();
    assert_eq!(stages, STAGES, "{GUIDE}: the stages, in order");
    // One endpoint throughout: every stage moves the same route, matched the same way.
    let address = SocketAddr::from(([127, 0, 0, 1], 1));
    let walk_match = |stage: &str| {
        let (_, blocks) = guide_stages()
            .into_iter()
            .find(|(name, _)| name == stage)
            .unwrap();
        let config = stage_config(&blocks, address, address);
        let routes = config["routes"].as_sequence().unwrap().clone();
        assert_eq!(routes.len(), 1, "{GUIDE}: stage `{stage}` shows one route");
        (routes[0]["name"].clone(), routes[0]["match"].clone())
    };
    let first = walk_match(STAGES[0]);
    assert_eq!(first.0, "orders-read");
    for stage in &STAGES[1..] {
        assert_eq!(
            walk_match(stage),
            first,
            "{GUIDE}: stage `{stage}` moved another endpoint"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_migration_guide_does_what_it_says_stage_by_stage() {
    let legacy_app = DemoApp::start(App::Legacy);
    let mut orders_app = DemoApp::start(App::OrdersV2);
    let stages = guide_stages();

    // 1. legacy: the first stage is the config the proxy starts on.
    let first = stage_config(&stages[0].1, legacy_app.address, orders_app.address);
    let proxy = Proxy::start(&serde_yaml::to_string(&first).unwrap()).await;
    let walk = Walk {
        proxy,
        stages,
        legacy: legacy_app.address,
        orders_v2: orders_app.address,
    };
    walk.apply("legacy").await;
    let response = walk.get("/api/orders/1", &[]).await;
    assert_eq!(served(&response), ("legacy", "/api/orders/1"));
    walk.wait_metric(
        r#"strangler_requests_total{code="200",route="orders-read",upstream="legacy"}"#,
        1.0,
    )
    .await;

    // 2. shadow: clients get legacy with their paths; orders-v2 gets a rewritten copy; the diffs
    // name what the guide says they name.
    walk.apply("shadow").await;
    for id in 1..=3 {
        let response = walk.get(&format!("/api/orders/{id}"), &[]).await;
        assert_eq!(
            served(&response),
            ("legacy", format!("/api/orders/{id}").as_str())
        );
    }
    walk.wait_metric(
        r#"strangler_shadow_requests_total{outcome="completed",route="orders-read"}"#,
        3.0,
    )
    .await;
    walk.wait_metric(
        r#"strangler_diffs_total{result="mismatch",route="orders-read"}"#,
        3.0,
    )
    .await;
    let report = wait_for_report(&walk.proxy.diff_store(), 3).await;
    let mut paths: Vec<&str> = report["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|path| path["path"].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        ["$.currency", "$.status", "$.total"],
        "the fields the guide says the report names: {report:#}"
    );
    let diffs = support::get(walk.proxy.admin, "/diffs?route=orders-read")
        .await
        .unwrap()
        .json();
    let diffs = diffs["diffs"].as_array().unwrap();
    assert!(diffs.len() >= 3, "{diffs:?}");
    for diff in diffs {
        // orders-v2 answers 404 for /api/orders/..., so a 200 shows the copy was rewritten;
        // the stored path is the client's.
        assert_eq!(diff["shadow_status"], 200, "{diff:#}");
        assert!(
            diff["path"].as_str().unwrap().starts_with("/api/orders/"),
            "{diff:#}"
        );
    }

    // 3. canary: each side of the split gets its own paths, the same users every time.
    walk.apply("canary").await;
    let mut sessions: Vec<(String, String)> = Vec::new();
    let mut new_user = None;
    let mut legacy_user = None;
    for n in 0..3000 {
        let cookie = format!("session_id=user-{n}");
        let response = walk.get("/api/orders/1", &[("cookie", &cookie)]).await;
        match served(&response) {
            ("orders-v2", seen) => {
                assert_eq!(seen, "/orders/1", "the new side has its rewrite");
                new_user.get_or_insert(cookie.clone());
            }
            ("legacy", seen) => {
                assert_eq!(seen, "/api/orders/1", "the legacy side has none");
                legacy_user.get_or_insert(cookie.clone());
            }
            other => panic!("unexpected answer {other:?}"),
        }
        sessions.push((cookie, response.header("x-served-by").unwrap().to_owned()));
        if new_user.is_some() && legacy_user.is_some() && sessions.len() >= 40 {
            break;
        }
    }
    let new_user = new_user.expect("a 5 % side gets some of 3000 users");
    legacy_user.expect("the 95 % side gets users");
    for (cookie, app) in &sessions {
        let again = walk.get("/api/orders/1", &[("cookie", cookie)]).await;
        assert_eq!(served(&again).0, app.as_str(), "{cookie} moved sides");
    }
    let config = walk.config("canary");
    let token = config["tester_override"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for (upstream, seen) in [("orders-v2", "/orders/1"), ("legacy", "/api/orders/1")] {
        let forced = walk
            .get(
                "/api/orders/1",
                &[
                    ("x-strangler-upstream", upstream),
                    ("x-strangler-token", &token),
                ],
            )
            .await;
        assert_eq!(
            served(&forced),
            (upstream, seen),
            "a tester forcing {upstream} gets the route's target for it"
        );
    }

    // The kill switch: the new side's users go back to legacy, with their own paths, and stay
    // there across the reload of the next stage.
    walk.kill_switch("on").await;
    let killed = walk.get("/api/orders/1", &[("cookie", &new_user)]).await;
    assert_eq!(served(&killed), ("legacy", "/api/orders/1"));

    // 4. new (applied while the kill switch is on: it holds).
    walk.apply("new").await;
    let killed = walk.get("/api/orders/1", &[]).await;
    assert_eq!(served(&killed), ("legacy", "/api/orders/1"));
    assert!(killed.header("x-strangler-fallback").is_none());
    let routes = walk.proxy.routes().await;
    assert_eq!(routes["kill_switch"], true);
    let effective = &routes["effective"][0];
    assert_eq!(effective["route"], "orders-read");
    assert_eq!(effective["serves"], serde_json::json!(["legacy"]));
    assert_eq!(effective["kill_switch"], true);
    assert!(effective["shadow"].is_null(), "{effective}");
    assert_eq!(walk.proxy.metric("strangler_kill_switch").await, Some(1.0));
    walk.kill_switch("off").await;
    let response = walk.get("/api/orders/1", &[]).await;
    assert_eq!(served(&response), ("orders-v2", "/orders/1"));
    assert_eq!(
        walk.proxy
            .metric(r#"strangler_kill_switch_changes_total{source="admin",state="on"}"#)
            .await,
        Some(1.0)
    );

    // The fallback: orders-v2 gone, legacy answers with the client's path.
    orders_app.stop().await;
    let fell_back = walk.get("/api/orders/2", &[]).await;
    assert_eq!(served(&fell_back), ("legacy", "/api/orders/2"));
    assert_eq!(fell_back.header("x-strangler-fallback"), Some("legacy"));

    // Rollback: one line, and the rewrite leaves with the orders-v2 target.
    walk.apply("rollback").await;
    let response = walk.get("/api/orders/3", &[]).await;
    assert_eq!(served(&response), ("legacy", "/api/orders/3"));
    assert!(response.header("x-strangler-fallback").is_none());

    // 5. retired: strangler answers by itself, with the configured status and body.
    walk.apply("retired").await;
    let retired = walk.route("retired")["retired"].clone();
    let status = retired["status"].as_u64().unwrap_or(410);
    let body = retired["body"].as_str().unwrap_or_default().to_owned();
    let response = walk.get("/api/orders/1", &[]).await;
    assert_eq!(u64::from(response.status), status, "{}", response.text());
    assert_eq!(response.text(), body);
    assert_eq!(response.header("x-strangler-stage"), Some("retired"));
    assert!(response.header("x-served-by").is_none(), "no app saw it");
}

/// `strangler report --format json` for orders-read once the store holds `samples` exchanges.
async fn wait_for_report(store: &Path, samples: u64) -> serde_json::Value {
    let what = format!("{samples} samples of orders-read stored");
    support::eventually(&what, || async {
        let (_, stdout, stderr) = run_cli(
            &[
                "report",
                "--db",
                store.to_str().unwrap(),
                "--route",
                "orders-read",
                "--format",
                "json",
            ],
            &repo_root(),
        );
        let route = serde_json::from_str::<serde_json::Value>(&stdout)
            .ok()
            .and_then(|report| report["routes"].get(0).cloned());
        match route {
            Some(route) if route["samples"].as_u64().unwrap_or(0) >= samples => Ok(route),
            _ => Err(format!("{stdout}\n{stderr}")),
        }
    })
    .await
}
