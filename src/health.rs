//! Active health checks: every backend of an upstream with `health_check:` is probed on its
//! interval (a TCP connect, or an HTTP GET of `path` expecting 2xx/3xx; over TLS or h2c with the
//! upstream's own `tls`/`protocol` settings when it has them), and taken out of or brought back
//! into rotation after the configured number of consecutive results.
//!
//! Checks follow the live route table, so a reload changes what is probed at the next tick. The
//! health state itself lives on the backends ([`crate::upstream`]); this module only probes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;

use crate::config::HealthCheckConfig;
use crate::routing::SharedRouteTable;
use crate::upstream::UpstreamPool;

/// How often the schedule is looked at; each backend is probed on its own interval.
const TICK: Duration = Duration::from_millis(100);

/// Probes until `shutdown` fires. Meant to run as a Pingora background service.
pub async fn run(routes: SharedRouteTable, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // Probes use fresh connections: a pooled one would hide a backend that stopped accepting.
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let mut ticks = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticks.tick() => {}
        }
        let table = routes.load_full();
        for pool in table.upstreams() {
            let Some(check) = pool.health_check() else {
                continue;
            };
            for index in 0..pool.backends().len() {
                if pool.backends()[index].probe_due(check.interval) {
                    tokio::spawn(probe(pool.clone(), index, check.clone(), client.clone()));
                }
            }
        }
    }
}

async fn probe(
    pool: Arc<UpstreamPool>,
    index: usize,
    check: HealthCheckConfig,
    client: Client<HttpConnector, Empty<Bytes>>,
) {
    let backend = &pool.backends()[index];
    let address = backend.address();
    let attempt = async {
        match &check.path {
            None => TcpStream::connect(address).await.is_ok(),
            Some(path) if pool.probe_client().is_some() => {
                // TLS or h2c: the upstream's own client, with its `tls` settings.
                let client = pool.probe_client().expect("checked");
                let Ok(uri) = format!("{}://{address}{path}", pool.scheme()).parse::<http::Uri>()
                else {
                    return false;
                };
                let request = http::Request::get(uri)
                    .header(http::header::USER_AGENT, "strangler-health-check")
                    .body(http_body_util::Full::new(Bytes::new()));
                match request {
                    Ok(request) => client.request(request).await.is_ok_and(|response| {
                        response.status().is_success() || response.status().is_redirection()
                    }),
                    Err(_) => false,
                }
            }
            Some(path) => {
                let Ok(uri) = format!("http://{address}{path}").parse::<http::Uri>() else {
                    return false;
                };
                let request = http::Request::get(uri)
                    .header(http::header::USER_AGENT, "strangler-health-check")
                    .body(Empty::new());
                match request {
                    Ok(request) => client.request(request).await.is_ok_and(|response| {
                        response.status().is_success() || response.status().is_redirection()
                    }),
                    Err(_) => false,
                }
            }
        }
    };
    let passed = tokio::time::timeout(check.timeout, attempt)
        .await
        .unwrap_or(false);
    if backend.record_probe(passed, &check) {
        if passed {
            tracing::info!(upstream = pool.name(), backend = %address, "backend healthy again");
        } else {
            tracing::warn!(upstream = pool.name(), backend = %address, "backend failed its health checks; out of rotation");
        }
    }
}
