//! The floor for strangler's forwarding cost: a bare Pingora proxy with the same build settings
//! that forwards everything to one upstream and does nothing else. bench/run.sh measures it
//! beside strangler, so the difference between the two is exactly what strangler adds.
//!
//! `cargo run --release --example bare_pingora -- 127.0.0.1:19579 127.0.0.1:19001`

use async_trait::async_trait;
use pingora_core::server::Server;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

/// The same allocator as the binary (src/main.rs), so the floor differs from strangler only in
/// what strangler does per request.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Bare {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _: &mut Session,
        _: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:19579".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:19001".into());
    let conf = ServerConf {
        threads: 1,
        pid_file: "/tmp/bare-pingora.pid".into(),
        upgrade_sock: "/tmp/bare-pingora-upgrade.sock".into(),
        // A benchmark floor stops at once on SIGTERM (Pingora's default grace is 60 s + 5 s),
        // so the harness need not kill it.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let peer = HttpPeer::new(upstream.as_str(), false, String::new());
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Bare { peer });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
