//! A spike (issue 20): the cheapest forwarder pingora-core's lower layers allow, beside
//! [`bare_pingora`](bare_pingora.rs) (pingora-proxy's `ProxyHttp` state machine doing the same
//! job). One `HttpServerApp` reads each request, takes a pooled upstream connection from
//! pingora-core's HTTP connector, forwards the header and body, streams the answer back and
//! returns both connections for reuse. No modules, no filters, no retries, no error pages
//! beyond a bare 502: if this is not clearly cheaper than bare Pingora, moving strangler's data
//! plane off pingora-proxy would not pay. bench/run.sh measures it as `core-forwarder`.
//!
//! `cargo run --release --example core_forwarder -- 127.0.0.1:19578 127.0.0.1:19001`

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::listening::Service;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::ResponseHeader;

/// The same allocator as the binary (src/main.rs), so the floor differs from strangler only in
/// what strangler does per request.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Forwarder {
    peer: HttpPeer,
    connector: Connector,
}

impl Forwarder {
    /// Forwards one request; `Err` when the exchange failed and the client connection must
    /// close.
    async fn forward(&self, downstream: &mut ServerSession) -> pingora_error::Result<()> {
        let (mut upstream, _reused) = self.connector.get_http_session(&self.peer).await?;
        let request = Box::new(downstream.req_header().clone());
        upstream.write_request_header(request).await?;
        while let Some(chunk) = downstream.read_request_body().await? {
            upstream.write_request_body(chunk, false).await?;
        }
        upstream.finish_request_body().await?;
        upstream.read_response_header().await?;
        let header = upstream
            .response_header()
            .expect("a response header was read")
            .clone();
        downstream.write_response_header(Box::new(header)).await?;
        loop {
            match upstream.read_response_body().await? {
                Some(chunk) => downstream.write_response_body(chunk, false).await?,
                None => break,
            }
            if upstream.response_done() {
                break;
            }
        }
        downstream.write_response_body(Bytes::new(), true).await?;
        self.connector
            .release_http_session(upstream, &self.peer, Some(Duration::from_secs(60)))
            .await;
        Ok(())
    }
}

#[async_trait]
impl HttpServerApp for Forwarder {
    async fn process_new_http(
        self: &Arc<Self>,
        mut downstream: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !downstream.read_request().await.ok()? {
            return None;
        }
        downstream.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        if let Err(error) = self.forward(&mut downstream).await {
            eprintln!("core_forwarder: {error}");
            let mut bad = ResponseHeader::build(502, Some(1)).ok()?;
            bad.insert_header("content-length", "0").ok()?;
            downstream.set_keepalive(None);
            let _ = downstream.write_response_header(Box::new(bad)).await;
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&downstream);
        downstream
            .finish()
            .await
            .ok()?
            .map(|stream| ReusedHttpStream::from_reusable_stream(stream, settings))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:19578".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:19001".into());
    let conf = ServerConf {
        threads: 1,
        pid_file: "/tmp/core-forwarder.pid".into(),
        upgrade_sock: "/tmp/core-forwarder-upgrade.sock".into(),
        // A benchmark floor stops at once on SIGTERM (Pingora's default grace is 60 s + 5 s),
        // so the harness need not kill it.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let forwarder = Forwarder {
        peer: HttpPeer::new(upstream.as_str(), false, String::new()),
        connector: Connector::new(None),
    };
    let mut service = Service::new("core forwarder".into(), forwarder);
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
