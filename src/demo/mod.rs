//! `strangler demo`: a legacy app and a new service on loopback with the proxy in front.
//!
//! The two apps' handlers live in `examples/apps/` (they are example code users read), compiled
//! in here so the demo is one command. This module owns only the HTTP plumbing around them and
//! the demo's start-up; it is not used by `strangler run`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::config::{SourceFile, parse};
use crate::routing::RouteTable;

#[path = "../../examples/apps/legacy.rs"]
pub mod legacy;
#[path = "../../examples/apps/orders_v2.rs"]
pub mod orders_v2;

/// The root routes.yaml, used when the working directory has none.
const EMBEDDED_ROUTES: &str = include_str!("../../routes.yaml");

pub const LEGACY_ADDRESS: &str = "127.0.0.1:9001";
pub const ORDERS_V2_ADDRESS: &str = "127.0.0.1:9002";

/// A demo app's answer.
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn new(status: u16, body: Value) -> Self {
        Self { status, body }
    }

    pub fn ok(body: Value) -> Self {
        Self::new(200, body)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum App {
    Legacy,
    OrdersV2,
}

impl App {
    fn name(self) -> &'static str {
        match self {
            App::Legacy => "legacy",
            App::OrdersV2 => "orders-v2",
        }
    }

    fn handle(self, method: &str, path: &str, body: &[u8]) -> Reply {
        match self {
            App::Legacy => legacy::handle(method, path, body),
            App::OrdersV2 => orders_v2::handle(method, path, body),
        }
    }
}

/// Serves `app` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, app: App) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(app, request));
            // Clients hanging up mid-request are normal for a demo; nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(app: App, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let reply = app.handle(&method, &path, &body);
    let mut bytes = serde_json::to_vec_pretty(&reply.body).expect("JSON values always serialize");
    bytes.push(b'\n');
    Ok(Response::builder()
        .status(reply.status)
        .header("content-type", "application/json")
        .header("x-served-by", app.name())
        // The path as this app received it, after any rewrite by the proxy: shows which edits
        // each upstream got (the migration guide's test reads it too).
        .header("x-seen-path", path.as_str())
        .body(Full::new(Bytes::from(bytes)))
        .expect("a status, a JSON type and a received URI path are valid response parts"))
}

/// Starts both apps, then the proxy with `config` (default: ./routes.yaml, else the built-in
/// copy of it). Does not return while the proxy runs.
pub fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    let (table, shown_path) = load_demo_config(config)?;

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("demo-apps".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime starts");
            runtime.block_on(async move {
                let bound = async {
                    let legacy = TcpListener::bind(LEGACY_ADDRESS).await?;
                    let orders = TcpListener::bind(ORDERS_V2_ADDRESS).await?;
                    Ok::<_, std::io::Error>((legacy, orders))
                }
                .await;
                match bound {
                    Ok((legacy, orders)) => {
                        let _ = ready_tx.send(Ok(()));
                        tokio::join!(serve(legacy, App::Legacy), serve(orders, App::OrdersV2));
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                    }
                }
            });
        })?;
    ready_rx.recv()?.map_err(|error| {
        anyhow::anyhow!(
            "cannot start the demo apps on {LEGACY_ADDRESS} and {ORDERS_V2_ADDRESS}: {error}"
        )
    })?;

    print_tour(&table, shown_path.as_deref());
    crate::server::serve(table, shown_path.as_deref(), false)?;
    Ok(())
}

/// The demo's table, and the file it came from (`None`: the built-in copy, never reloaded).
fn load_demo_config(config: Option<PathBuf>) -> anyhow::Result<(RouteTable, Option<PathBuf>)> {
    let path = config.unwrap_or_else(|| PathBuf::from("routes.yaml"));
    if path.exists() {
        return Ok((crate::routing::load_route_table(&path, 1)?, Some(path)));
    }
    let loaded = parse(SourceFile::new("routes.yaml (built in)", EMBEDDED_ROUTES))?;
    Ok((RouteTable::compile_loaded(loaded, 1)?, None))
}

fn print_tour(table: &RouteTable, config: Option<&Path>) {
    let server = &table.config().server;
    let listen = server.listen.primary();
    let proxy: SocketAddr = if listen.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], listen.port()))
    } else {
        listen
    };
    let admin = server.admin;
    println!(
        "\nstrangler demo: legacy app on {LEGACY_ADDRESS}, orders-v2 on {ORDERS_V2_ADDRESS}, proxy on {proxy}, admin on {admin}\n"
    );
    println!("Try (the x-served-by header says who answered, x-seen-path which path it was sent):");
    println!(
        "  curl -si http://{proxy}/api/orders/1          # GET orders -> orders-v2 (prefix /api stripped)"
    );
    println!(
        "  curl -si -X POST -d '{{\"sku\":1}}' http://{proxy}/api/orders   # writes stay on legacy"
    );
    println!("  curl -si http://{proxy}/invoices/42           # regex route");
    println!("  curl -si http://{proxy}/anything/else         # default upstream: legacy");
    println!(
        "  curl -s  http://{admin}/routes                # the live config and its generation"
    );
    println!(
        "  curl -s  http://{admin}/metrics | grep -E 'shadow|diffs'  # /invoices and /api/orders reads are mirrored and compared"
    );
    // Shown as it can be run from here: `target/release/strangler` after `cargo run`.
    let binary = std::env::current_exe()
        .ok()
        .and_then(|path| {
            let cwd = std::env::current_dir().ok()?;
            Some(
                path.strip_prefix(&cwd)
                    .map(|p| p.to_path_buf())
                    .unwrap_or(path),
            )
        })
        .map_or_else(|| "strangler".to_owned(), |path| path.display().to_string());
    println!("  {binary} report --db strangler-diffs.db   # how the candidates compare, per route");
    if let Some(config) = config {
        println!(
            "\nEdit {} and save: the change is live within a second; invalid edits are refused and logged.",
            config.display()
        );
    }
    println!("\nCtrl-C stops everything.\n");
}
