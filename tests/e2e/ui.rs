//! The diff viewer in a real headless browser: Debian's `chromium`, driven over `chromedriver`
//! (started here on a free port, stopped after) with `fantoccini`, against the real binary with
//! diffs stored by real shadow traffic. Screenshots of each view are saved under
//! `target/tmp/ui/` (the ones in docs/img/ are copies).
//!
//! Without chromium and chromedriver the browser test is skipped with a loud message, unless
//! `CI` is set: CI installs them (`scripts/setup`) and never skips.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::Full;
use serde_json::json;
use support::{Backend, ClientRequest, DEADLINE, Proxy, Recorded, free_port, run_cli, send};

const TOKEN: &str = "viewer-test-token";

/// Orders whose candidate total ignores the coupon's discount.
const BUGGY_ORDERS: [u64; 2] = [3, 5];

/// Legacy (`candidate: false`) or the new service: orders as JSON (the new service forgets the
/// discount on [`BUGGY_ORDERS`] and sends another `x-cache`), notes as text (the new service
/// words the second line differently).
fn service(candidate: bool) -> support::Responder {
    Arc::new(move |request: &Recorded| {
        let path = request.target.split('?').next().unwrap_or_default();
        let id: u64 = path
            .rsplit('/')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or(0);
        let response = hyper::Response::builder().header(
            "x-cache",
            if candidate {
                "MISS from edge-2"
            } else {
                "MISS from edge-1"
            },
        );
        if path.starts_with("/notes/") {
            let second = if candidate {
                "status: shipped"
            } else {
                "status: dispatched"
            };
            return response
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from(format!(
                    "note {id}\n{second}\ncarrier: post\nweight: 2kg\n"
                ))))
                .unwrap();
        }
        let total = if candidate && BUGGY_ORDERS.contains(&id) {
            100
        } else {
            90
        };
        response
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"id":{id},"subtotal":100,"discount":10,"total":{total},"items":[{{"sku":"A-{id}","qty":1}}]}}"#
            ))))
            .unwrap()
    })
}

fn config(legacy: &Backend, candidate: &Backend) -> String {
    format!(
        r#"upstreams:
  legacy: {{ backends: [{}] }}
  orders-v2: {{ backends: [{}] }}
default_upstream: legacy
routes:
  - name: orders
    match: {{ path_prefix: /orders }}
    stage: shadow
    shadow: {{ upstream: orders-v2 }}
  - name: notes
    match: {{ path_prefix: /notes }}
    shadow: {{ upstream: orders-v2 }}
"#,
        legacy.address, candidate.address
    )
}

/// A proxy with an admin token, shadowing orders and notes, and the traffic stored.
struct Scene {
    proxy: Proxy,
    _legacy: Backend,
    _candidate: Backend,
}

impl Scene {
    async fn start() -> Scene {
        let legacy = Backend::start_with("legacy", service(false)).await;
        let candidate = Backend::start_with("orders-v2", service(true)).await;
        let proxy = Proxy::with(config(&legacy, &candidate))
            .server(&format!("  admin_token: {TOKEN}\n"))
            .start()
            .await;
        for _ in 0..2 {
            for id in 1..=6 {
                let response = proxy
                    .get(&format!("/orders/{id}?coupon=SPRING10&token=s3cret"))
                    .await;
                assert_eq!(response.status, 200);
            }
        }
        for id in 1..=2 {
            assert_eq!(proxy.get(&format!("/notes/{id}")).await.status, 200);
        }
        let scene = Scene {
            proxy,
            _legacy: legacy,
            _candidate: candidate,
        };
        scene.wait_for_stored(14).await;
        scene
    }

    async fn admin(&self, target: &str) -> support::ClientResponse {
        send(
            self.proxy.admin,
            ClientRequest::get(target).header("authorization", &format!("Bearer {TOKEN}")),
        )
        .await
        .unwrap()
    }

    /// Polls the summary until `exchanges` are stored.
    async fn wait_for_stored(&self, exchanges: u64) {
        let what = format!("{exchanges} exchanges stored");
        support::eventually(&what, || async move {
            let summary = self.admin("/diffs/summary").await.json();
            let stored: u64 = summary["routes"]
                .as_array()
                .map(|routes| {
                    routes
                        .iter()
                        .map(|r| r["exchanges"].as_u64().unwrap())
                        .sum()
                })
                .unwrap_or(0);
            if stored >= exchanges {
                Ok(())
            } else {
                Err(format!("{stored} stored: {summary:#}"))
            }
        })
        .await
    }

    fn origin(&self) -> String {
        format!("http://{}", self.proxy.admin)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_endpoints_answer_scripts_with_the_token_and_refuse_bad_filters() {
    let scene = Scene::start().await;
    let admin = scene.proxy.admin;

    // The page needs no token (it holds no data); its data does.
    let page = support::get(admin, "/ui").await.unwrap();
    assert_eq!(page.status, 200);
    let policy = page.header("content-security-policy").unwrap();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert!(!page.text().contains(TOKEN));
    for target in ["/diffs/summary", "/diffs", "/diffs/1"] {
        let refused = support::get(admin, target).await.unwrap();
        assert_eq!(refused.status, 401, "{target}");
    }
    // The cross-site checks hold for the page too.
    let rebinding = send(
        admin,
        ClientRequest::get("/ui").header("host", "evil.example"),
    )
    .await
    .unwrap();
    assert_eq!(rebinding.status, 403);
    let cross_site = send(
        admin,
        ClientRequest::get("/diffs/summary")
            .header("authorization", &format!("Bearer {TOKEN}"))
            .header("sec-fetch-site", "cross-site"),
    )
    .await
    .unwrap();
    assert_eq!(cross_site.status, 403);

    let summary = scene.admin("/diffs/summary").await.json();
    let orders = summary["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "orders")
        .unwrap();
    assert_eq!(orders["direction"], "legacy → orders-v2");
    assert_eq!(orders["exchanges"], 12);
    assert_eq!(orders["passed"], false, "every exchange differs in x-cache");
    assert_eq!(
        orders["paths"],
        json!([]),
        "paths are ranked for one route only"
    );
    let route = scene.admin("/diffs/summary?route=orders").await.json();
    let ranked = &route["routes"][0];
    assert_eq!(ranked["paths"][0]["path"], "$.total", "{ranked:#}");
    assert_eq!(ranked["paths"][0]["exchanges"], 4);
    let example = ranked["paths"][0]["example"]["request_id"]
        .as_str()
        .unwrap();
    assert!(ranked["example_ids"][example].is_i64(), "{ranked:#}");
    assert_eq!(
        ranked["suggestion"],
        "# routes: - name: orders → shadow: (merge with an existing compare:)\ncompare: { ignore_headers: [x-cache] }\n"
    );
    assert_eq!(orders["stages"], json!(["shadow"]));
    assert_eq!(orders["generations"], json!([1]));
    assert_eq!(summary["live"]["generation"], 1);
    let trend_total: u64 = orders["trend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["exchanges"].as_u64().unwrap())
        .sum();
    assert_eq!(trend_total, 12, "every exchange is in the trend");
    let traffic = summary["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["route"] == "orders")
        .unwrap();
    assert_eq!(traffic["legacy"], "legacy");
    assert_eq!(traffic["upstreams"]["legacy"], 12);
    assert_eq!(traffic["new_share"], 0.0);

    // Pages of exchanges, with ids that lead to one exchange side by side.
    let first = scene.admin("/diffs?route=orders&limit=5").await.json();
    let ids: Vec<i64> = first["diffs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 5);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let before = first["next_before"].as_i64().unwrap();
    let second = scene
        .admin(&format!("/diffs?route=orders&limit=5&before={before}"))
        .await
        .json();
    assert!(
        second["diffs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["id"].as_i64().unwrap() < before)
    );
    let note = scene
        .admin("/diffs?route=notes&verdict=mismatch&limit=1")
        .await
        .json();
    let id = note["diffs"][0]["id"].as_i64().unwrap();
    let exchange = scene.admin(&format!("/diffs/{id}")).await.json();
    assert_eq!(exchange["body"]["kind"], "text", "{exchange:#}");
    let changed: Vec<&str> = exchange["body"]["hunks"][0]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["tag"] != " ")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["status: dispatched", "status: shipped"]);
    assert!(
        exchange["request_line"]
            .as_str()
            .unwrap()
            .starts_with("GET /notes/")
    );

    for (target, parameter) in [
        ("/diffs?verdict=bogus", "verdict"),
        ("/diffs?generation=newest", "generation"),
        ("/diffs?before=x", "before"),
        ("/diffs/summary?limit=3", "limit"),
        ("/diffs/summary?rout=orders", "rout"),
        ("/diffs/7?x=1", "x"),
    ] {
        let refused = scene.admin(target).await;
        assert_eq!(refused.status, 400, "{target}");
        assert_eq!(refused.json()["parameter"], parameter, "{target}");
    }
    assert_eq!(scene.admin("/diffs/999999").await.status, 404);
    assert_eq!(scene.admin("/diffs/abc").await.status, 404);
    let post = send(
        admin,
        ClientRequest::new("POST", "/diffs/summary")
            .header("authorization", &format!("Bearer {TOKEN}")),
    )
    .await
    .unwrap();
    assert_eq!(post.status, 405);
}

// ---------------------------------------------------------------------------------------------
// The browser.

/// `chromedriver` on a free loopback port; killed on drop.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where chromium and chromedriver are, or `None` (having said why) when the test must skip.
fn browser_binaries() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
    };
    let chromium = std::env::var_os("CHROME_BIN")
        .map(PathBuf::from)
        .or_else(|| find("chromium"))
        .or_else(|| find("chromium-browser"))
        .or_else(|| find("google-chrome"));
    let driver = find("chromedriver");
    match (chromium, driver) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but chromium or chromedriver is missing: run scripts/setup")
        }
        _ => {
            eprintln!(
                "\n!!!!!!!!\n!!! SKIPPED: the browser test needs chromium and chromedriver \
                 (Debian: apt-get install chromium chromium-driver, or scripts/setup)\n!!!!!!!!\n"
            );
            None
        }
    }
}

async fn start_chromedriver(driver: &Path) -> Chromedriver {
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let chromedriver = Chromedriver { child, port };
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    support::eventually("chromedriver ready", || async move {
        match support::get(address, "/status").await {
            Ok(status) if status.json()["value"]["ready"] == true => Ok(()),
            Ok(status) => Err(status.text()),
            Err(error) => Err(error),
        }
    })
    .await;
    chromedriver
}

async fn browser(chromium: &Path, chromedriver: &Chromedriver, profile: &Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                // CI runs as root, where chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--window-size=1400,1000",
                "--no-first-run",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", chromedriver.port))
        .await
        .expect("a chromium session")
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
    std::fs::write(screenshots().join(name), png).unwrap();
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("no {css}: {error}"))
        .text()
        .await
        .unwrap()
}

/// Texts of every element `css` selects, once at least one is there.
async fn texts_of(client: &Client, css: &str) -> Vec<String> {
    client
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("no {css}: {error}"));
    let mut texts = Vec::new();
    for element in client.find_all(Locator::Css(css)).await.unwrap() {
        texts.push(element.text().await.unwrap());
    }
    texts
}

/// Waits until the page has rendered `hash` (the script marks `body[data-loaded]`).
async fn wait_loaded(client: &Client, hash: &str) {
    support::eventually(&format!("the page rendering {hash}"), || async move {
        let loaded = client
            .execute("return document.body.dataset.loaded || ''", vec![])
            .await
            .unwrap();
        assert_ne!(loaded, "error", "the page shows an error");
        match loaded.as_str() {
            Some(rendered) if rendered == hash => Ok(()),
            _ => Err(loaded),
        }
    })
    .await
}

/// Every resource the page fetched, by URL (the browser's performance entries).
async fn fetched(client: &Client) -> Vec<String> {
    let entries = client
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(entries).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_walks_from_the_overview_to_a_route_to_an_exchange_side_by_side() {
    let Some((chromium, driver)) = browser_binaries() else {
        return;
    };
    let scene = Scene::start().await;
    let chromedriver = start_chromedriver(&driver).await;
    let profile = tempfile::tempdir().unwrap();
    let client = browser(&chromium, &chromedriver, profile.path()).await;
    // The walk runs as its own task so that a failed assertion still ends the browser session
    // (chromedriver's chromium would outlive a killed chromedriver otherwise).
    let walk = tokio::spawn(walk(
        client.clone(),
        scene.origin(),
        scene.proxy.diff_store(),
    ));
    let outcome = walk.await;
    let _ = client.close().await;
    drop(chromedriver);
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

async fn walk(client: Client, origin: String, store: PathBuf) {
    // Without the token the page asks for it, and shows no data.
    client.goto(&format!("{origin}/ui")).await.unwrap();
    client
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Css("#token-form:not([hidden])"))
        .await
        .expect("the page asks for the token");
    assert!(
        client.find(Locator::Css("#overview-table")).await.is_err(),
        "no data before the token"
    );
    let field = client.find(Locator::Css("#token")).await.unwrap();
    field.send_keys("wrong").await.unwrap();
    client
        .find(Locator::Css("#token-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        text_of(&client, "#token-error").await,
        "That token was refused."
    );
    client
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    client
        .find(Locator::Css("#token-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The overview: both routes, the orders bug's rate, a trend chart.
    wait_loaded(&client, "#/").await;
    assert!(
        !client
            .find(Locator::Css("#token-form"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap(),
        "the token form is gone once the token works"
    );
    let rows = texts_of(&client, "#overview-table tbody tr").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let orders = rows.iter().find(|r| r.starts_with("orders")).unwrap();
    assert!(orders.contains("legacy → orders-v2"), "{orders}");
    assert!(orders.contains("shadow"), "{orders}");
    assert!(
        client
            .find(Locator::Css("tr[data-route=orders] svg.trend rect.bad"))
            .await
            .is_ok(),
        "a trend chart"
    );
    let traffic = text_of(&client, "#traffic-table tr[data-route=orders]").await;
    assert!(traffic.contains("legacy: 12"), "{traffic}");
    screenshot(&client, "overview.png").await;

    // Sortable: a heading sorts by its column, a second click the other way.
    let route_heading = client
        .find(Locator::Css("#overview-table th:first-child"))
        .await
        .unwrap();
    route_heading.click().await.unwrap();
    assert!(
        text_of(&client, "#overview-table tbody tr:first-child")
            .await
            .starts_with("orders")
    );
    route_heading.click().await.unwrap();
    assert!(
        text_of(&client, "#overview-table tbody tr:first-child")
            .await
            .starts_with("notes")
    );

    // The token is kept in the tab, never in a URL.
    let kept = client
        .execute(
            "return sessionStorage.getItem('strangler-admin-token')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept, TOKEN);
    assert!(!client.current_url().await.unwrap().as_str().contains(TOKEN));

    // A route: the body bug first, with both values, then the headers that differ everywhere.
    client
        .find(Locator::Css("tr[data-route=orders] a.route-link"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_loaded(&client, "#/route/orders").await;
    let first = text_of(&client, "#paths-table tbody tr:first-child").await;
    assert!(first.contains("$.total"), "{first}");
    assert!(first.contains("90") && first.contains("100"), "{first}");
    let suggestion = text_of(&client, "#suggestion").await;
    assert!(
        suggestion.contains("ignore_headers: [x-cache]"),
        "{suggestion}"
    );
    assert!(
        !first.contains("s3cret"),
        "the stored query is redacted: {first}"
    );
    screenshot(&client, "route.png").await;

    // The example exchange, side by side: the differing line highlighted on both sides.
    client
        .find(Locator::Css(
            "#paths-table tbody tr:first-child a.exchange-link",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let hash = support::eventually("the exchange page", || async {
        let url = client.current_url().await.unwrap();
        match url.fragment() {
            Some(fragment) if fragment.starts_with("/exchange/") => Ok(format!("#{fragment}")),
            _ => Err(url.to_string()),
        }
    })
    .await;
    wait_loaded(&client, &hash).await;
    let primary = texts_of(&client, "#primary-body .line.difference").await;
    let candidate = texts_of(&client, "#candidate-body .line.difference").await;
    assert_eq!(primary, ["  \"total\": 90"], "{primary:?}");
    assert_eq!(candidate, ["  \"total\": 100"], "{candidate:?}");
    let highlighted = client
        .find(Locator::Css("#candidate-body .line.difference"))
        .await
        .unwrap()
        .attr("data-path")
        .await
        .unwrap();
    assert_eq!(highlighted.as_deref(), Some("$.total"));
    let difference = text_of(&client, "#differences tr[data-path='$.total']").await;
    assert!(
        difference.contains("90") && difference.contains("100"),
        "{difference}"
    );
    assert_eq!(text_of(&client, "#primary-status").await, "200");
    assert_eq!(text_of(&client, "#candidate-status").await, "200");
    let headers = text_of(&client, "#headers").await;
    assert!(
        headers.contains("MISS from edge-1") && headers.contains("MISS from edge-2"),
        "{headers}"
    );
    client
        .execute(
            "document.querySelector('#candidate-body .line.difference').scrollIntoView({block: 'center'})",
            vec![],
        )
        .await
        .unwrap();
    screenshot(&client, "exchange.png").await;

    // Nothing was fetched from anywhere but this admin listener.
    let resources = fetched(&client).await;
    assert!(
        resources.iter().any(|url| url.ends_with("/ui/app.js")),
        "{resources:?}"
    );
    for url in &resources {
        assert!(
            url.starts_with(&format!("{origin}/")),
            "{url} is another origin"
        );
    }

    // The HTML report of the same store shows the same differences, without a server.
    let (code, html, stderr) = run_cli(
        &[
            "report",
            "--db",
            store.to_str().unwrap(),
            "--format",
            "html",
        ],
        Path::new("/tmp"),
    );
    assert_eq!(code, 1, "the bug fails the report: {stderr}");
    let report = screenshots().join("report.html");
    std::fs::write(&report, &html).unwrap();
    client
        .goto(&format!("file://{}", report.display()))
        .await
        .unwrap();
    let orders = "#route-orders--legacy-orders-v2 table.paths-table tbody tr:first-child";
    let first = text_of(&client, orders).await;
    assert!(first.contains("$.total"), "{first}");
    assert!(first.contains("90") && first.contains("100"), "{first}");
    client
        .find(Locator::Css(&format!("{orders} a.exchange-link")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let highlighted = texts_of(&client, "section.exchange .line.difference").await;
    assert!(
        highlighted.iter().any(|l| l.contains("\"total\": 90"))
            && highlighted.iter().any(|l| l.contains("\"total\": 100")),
        "{highlighted:?}"
    );
    screenshot(&client, "report.png").await;
    let resources = fetched(&client).await;
    assert!(
        resources.is_empty(),
        "the report fetches nothing: {resources:?}"
    );
}
