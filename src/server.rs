//! Process assembly: load and validate the config, then build and run the Pingora server with
//! the proxy and admin services.
//!
//! Nothing binds before the config is known to be valid, so an invalid file never leaves a
//! half-started process listening.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::server::Server;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::services::listening::Service;

use crate::admin::AdminApp;
use crate::proxy::StranglerProxy;
use crate::routing::{RouteTable, SharedRouteTable, load_route_table};

/// What `strangler run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {address} ({role}): {source}")]
    Bind {
        address: SocketAddr,
        role: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Loads the config and serves until the process is told to stop. Returns only on a start-up
/// error; Pingora exits the process itself on shutdown.
pub fn run(options: &RunOptions) -> Result<(), StartError> {
    let table = load_route_table(&options.config_path, 1)?;
    serve(table, &options.config_path)
}

/// Serves an already compiled table.
pub fn serve(table: RouteTable, config_path: &Path) -> Result<(), StartError> {
    let server_config = table.config().server.clone();
    // Pingora reports a bind failure from deep inside a service thread; check up front so the
    // user gets one clear line and a non-zero exit instead.
    for (address, role) in [
        (server_config.listen, "proxy"),
        (server_config.admin, "admin"),
    ] {
        TcpListener::bind(address).map_err(|source| StartError::Bind {
            address,
            role,
            source,
        })?;
    }

    let threads = server_config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let pingora_conf = ServerConf {
        threads,
        // Pingora's defaults are shared /tmp paths; parallel instances must not collide.
        pid_file: format!("/tmp/strangler-{}.pid", server_config.listen.port()),
        upgrade_sock: format!(
            "/tmp/strangler-{}-upgrade.sock",
            server_config.listen.port()
        ),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), pingora_conf);
    server.bootstrap();

    let routes: SharedRouteTable = Arc::new(ArcSwap::from_pointee(table));

    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        StranglerProxy::new(routes.clone()),
        "strangler proxy",
    );
    proxy.add_tcp(&server_config.listen.to_string());

    let mut admin = Service::new("strangler admin".to_owned(), AdminApp::new(routes.clone()));
    admin.add_tcp(&server_config.admin.to_string());

    server.add_service(proxy);
    server.add_service(admin);

    let table = routes.load();
    tracing::info!(
        config = %config_path.display(),
        generation = table.generation(),
        sha256 = table.sha256(),
        routes = table.routes().len(),
        listen = %server_config.listen,
        admin = %server_config.admin,
        threads,
        "strangler is serving"
    );
    server.run_forever()
}
