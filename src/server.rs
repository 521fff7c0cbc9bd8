//! Process assembly: load and validate the config, then build and run the Pingora server with
//! the proxy and admin services. How the process stops and hands over its sockets is
//! `lifecycle/`'s; this module wires it in (the listeners, Pingora's signal hook).
//!
//! Nothing binds before the config is known to be valid, so an invalid file never leaves a
//! half-started process listening. A config with shadows also needs its diff store: it is opened
//! before anything serves, and a store that cannot be opened stops the start.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::server::Server;
use pingora_core::server::ShutdownWatch;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::services::background::{BackgroundService, background_service};
use pingora_core::services::listening::Service;

use crate::admin::AdminApp;
use crate::connection::GuardedProxy;
use crate::diff::{DiffSink, StoreSettings};
use crate::lifecycle::{Lifecycle, Listener};
use crate::metrics::Metrics;
use crate::proxy::StranglerProxy;
use crate::reload::Reloader;
use crate::routing::{RouteTable, SharedRouteTable, load_route_table_for_run};
use crate::shadow::ShadowDispatcher;

/// What `strangler run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config_path: PathBuf,
    /// Take the listening sockets over from a running instance (Pingora's socket hand-over):
    /// start the new binary with this flag, then send SIGQUIT to the old one, which stops
    /// accepting once this one answers `/readyz`, then drains.
    pub upgrade: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error(
        "the admin listener {0} is not on loopback and has no token: set server.admin_token or STRANGLER_ADMIN_TOKEN"
    )]
    UnprotectedAdmin(SocketAddr),
    #[error("cannot take over the listening sockets (--upgrade): {0}")]
    Upgrade(std::io::Error),
    #[error("cannot start the diff worker: {0}")]
    Worker(std::io::Error),
    #[error("cannot open the diff store (server.diff_store): {0}")]
    DiffStore(#[from] crate::store::StoreError),
    #[error("cannot serve TLS (server.listen): {0}")]
    Tls(#[from] crate::tls::CertError),
    #[error("cannot listen on {address} ({role}): {source}")]
    Bind {
        address: SocketAddr,
        role: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Loads the config and serves until the process is told to stop. Returns only on a start-up
/// error; the process exits once drained (see [`crate::lifecycle`]).
pub fn run(options: &RunOptions) -> Result<(), StartError> {
    let table = load_route_table_for_run(&options.config_path, 1)?;
    serve(table, Some(&options.config_path), options.upgrade)
}

/// Serves an already compiled table. With a `config_path`, the file is watched and reloaded on
/// change, SIGHUP and `POST /reload`; without one (the demo's built-in config) it never changes.
/// With `upgrade`, the listening sockets are taken over from a running instance instead.
pub fn serve(
    table: RouteTable,
    config_path: Option<&Path>,
    upgrade: bool,
) -> Result<(), StartError> {
    let server_config = table.config().server.clone();
    let admin_token = server_config
        .admin_token
        .clone()
        .or_else(|| std::env::var("STRANGLER_ADMIN_TOKEN").ok())
        .filter(|token| !token.is_empty());
    if admin_token.is_none() && !server_config.admin.ip().is_loopback() {
        return Err(StartError::UnprotectedAdmin(server_config.admin));
    }
    // Pingora reports a bind failure from deep inside a service thread; check up front so the
    // user gets one clear line and a non-zero exit instead. (An upgrade inherits the sockets.)
    let addresses = server_config
        .listen
        .iter()
        .map(|listener| (listener.address, "proxy"))
        .chain([(server_config.admin, "admin")]);
    for (address, role) in addresses.filter(|_| !upgrade) {
        TcpListener::bind(address).map_err(|source| StartError::Bind {
            address,
            role,
            source,
        })?;
    }

    // A config that shadows opens its store now: a store that cannot be opened stops the start
    // with one clear line, instead of every comparison being lost later to a log line.
    // (A Postgres store is connected in the background: see `crate::store::postgres`.)
    let store_settings = StoreSettings::of(&server_config);
    let store = if table.routes().iter().any(|route| route.shadow.is_some()) {
        store_settings.open_sqlite()?
    } else {
        None
    };

    let threads = server_config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let pingora_conf = ServerConf {
        threads,
        work_stealing: server_config.work_stealing,
        // Pingora's defaults are shared /tmp paths; parallel instances must not collide.
        pid_file: format!(
            "/tmp/strangler-{}.pid",
            server_config.listen.primary().port()
        ),
        upgrade_sock: format!(
            "/tmp/strangler-{}-upgrade.sock",
            server_config.listen.primary().port()
        ),
        // The drain happens before Pingora hears of the signal (`lifecycle::Signals` returns
        // only once it is over), so Pingora's grace period, which it would sleep out whole,
        // is none; the runtimes' teardown then gets a second for blocking tasks.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    // The sockets of an upgrade are received by `lifecycle::receive_listeners`, not by
    // Pingora's bootstrap (which polls for them once a second).
    let opt = Opt::default();
    let upgrade_sock = pingora_conf.upgrade_sock.clone();
    let mut server = Server::new_with_opt_and_conf(opt, pingora_conf);
    server.bootstrap();

    let lifecycle = Lifecycle::new(crate::lifecycle::Settings {
        drain_timeout: server_config.drain_timeout,
        upgrade_sock: upgrade_sock.clone(),
        admin: server_config.admin,
        listen: server_config.listen.iter().map(|l| l.address).collect(),
    });
    let routes: SharedRouteTable = Arc::new(ArcSwap::from_pointee(table));
    let metrics = Arc::new(Metrics::new());
    let diffs =
        DiffSink::start(store_settings, store, metrics.clone()).map_err(StartError::Worker)?;
    let shadows = Arc::new(ShadowDispatcher::new(
        server_config.shadow_max_inflight,
        usize::try_from(server_config.shadow_max_memory.as_u64()).unwrap_or(usize::MAX),
        metrics.clone(),
        diffs,
    ));
    let reloader = config_path.map(|path| {
        Arc::new(Reloader::new(
            path.to_owned(),
            routes.clone(),
            metrics.clone(),
        ))
    });

    let tracer = server_config
        .otlp
        .as_ref()
        .map(crate::telemetry::RequestTracer::new)
        .transpose()?;
    let mut proxy_app = pingora_proxy::http_proxy(
        &server.configuration,
        StranglerProxy::new(routes.clone(), shadows, metrics.clone()).with_tracer(tracer.clone()),
    );
    proxy_app.h2_options = Some(crate::tls::h2_options(&server_config.limits));
    // TLS listeners are plain TCP to Pingora: the edge runs the handshakes (see `tls.rs`).
    let (edge, tls_listeners) = crate::edge::Edge::new(
        GuardedProxy::new(
            proxy_app,
            routes.clone(),
            metrics.clone(),
            lifecycle.clone(),
        ),
        &server_config.listen,
        routes.clone(),
        metrics.clone(),
    )?;
    let mut proxy = Service::new("strangler proxy".to_owned(), edge);
    for listener in server_config.listen.iter() {
        proxy.add_tcp(&listener.address.to_string());
    }

    let admin_app = AdminApp::new(
        routes.clone(),
        metrics.clone(),
        reloader.clone(),
        admin_token,
    )
    .with_lifecycle(lifecycle.clone());
    let mut admin = Service::new("strangler admin".to_owned(), admin_app);
    admin.add_tcp(&server_config.admin.to_string());

    server.add_service(lifecycle.listening(Listener::Proxy, proxy));
    server.add_service(lifecycle.listening(Listener::Admin, admin));
    server.add_service(background_service(
        "health checks",
        HealthChecks {
            routes: routes.clone(),
        },
    ));
    if !tls_listeners.is_empty() {
        server.add_service(background_service(
            "certificate watch",
            crate::edge::CertificateWatch {
                routes: routes.clone(),
                listeners: tls_listeners,
            },
        ));
    }
    if let Some(reloader) = reloader {
        server.add_service(background_service(
            "dns refresh",
            DnsRefresh {
                reloader: reloader.clone(),
            },
        ));
        server.add_service(background_service("config watch", ConfigWatch { reloader }));
    }

    if upgrade {
        // Last, so that the new process serves at once when the old one hands over.
        tracing::info!(
            socket = upgrade_sock,
            "waiting for the running strangler's sockets (send it SIGQUIT)"
        );
        let sockets =
            crate::lifecycle::receive_listeners(&upgrade_sock, crate::lifecycle::HANDOVER_TIMEOUT)
                .map_err(StartError::Upgrade)?;
        let mut expected: Vec<String> = server_config
            .listen
            .iter()
            .map(|listener| listener.address.to_string())
            .collect();
        expected.push(server_config.admin.to_string());
        lifecycle.inherit(sockets, &expected);
    }
    let table = routes.load();
    tracing::info!(
        config = %config_path.map_or("(built in)".into(), |path| path.display().to_string()),
        generation = table.generation(),
        sha256 = table.sha256(),
        routes = table.routes().len(),
        listen = %server_config.listen,
        admin = %server_config.admin,
        threads,
        "strangler is serving"
    );
    // `run` returns once the drain is over and the runtimes are down, so the last spans are
    // queued; flush them (at most 2 s), then exit as `run_forever` would.
    server.run(pingora_core::server::RunArgs {
        shutdown_signal: Box::new(lifecycle.signals()),
    });
    if let Some(tracer) = tracer {
        tracer.shutdown();
    }
    std::process::exit(0)
}

/// Runs [`crate::health::run`] inside Pingora's lifecycle.
struct HealthChecks {
    routes: SharedRouteTable,
}

#[async_trait::async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, shutdown: ShutdownWatch) {
        crate::health::run(self.routes.clone(), shutdown).await;
    }
}

/// Runs [`crate::reload::refresh_dns`] inside Pingora's lifecycle.
struct DnsRefresh {
    reloader: Arc<Reloader>,
}

#[async_trait::async_trait]
impl BackgroundService for DnsRefresh {
    async fn start(&self, shutdown: ShutdownWatch) {
        crate::reload::refresh_dns(self.reloader.clone(), shutdown).await;
    }
}

/// Runs [`crate::reload::watch`] inside Pingora's lifecycle, so it stops with the server.
struct ConfigWatch {
    reloader: Arc<Reloader>,
}

#[async_trait::async_trait]
impl BackgroundService for ConfigWatch {
    async fn start(&self, shutdown: ShutdownWatch) {
        crate::reload::watch(self.reloader.clone(), shutdown).await;
    }
}
