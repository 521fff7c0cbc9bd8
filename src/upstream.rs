//! Upstream pools: the backends of one named upstream and how a request picks one.
//!
//! A pool is built once per config generation from [`UpstreamConfig`]: addresses are resolved and
//! a ready-made Pingora [`HttpPeer`] (with the upstream's timeouts) is kept per backend, so picking
//! a backend on the hot path is an atomic increment and a clone. Health checks and passive ejection
//! will live here too; retries and fallbacks are routing decisions and do not.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};

use pingora_core::upstreams::peer::HttpPeer;

use crate::config::{Diagnostic, TimeoutsConfig, UpstreamConfig};

/// One named upstream, ready to serve.
#[derive(Debug)]
pub struct UpstreamPool {
    name: String,
    backends: Vec<Backend>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Backend {
    address: SocketAddr,
    peer: HttpPeer,
}

impl UpstreamPool {
    /// Resolves and checks `config`; every problem is appended to `diagnostics` under `path`.
    pub fn compile(
        name: &str,
        config: &UpstreamConfig,
        path: &str,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Option<Self> {
        let before = diagnostics.len();
        if config.backends.is_empty() {
            diagnostics.push(
                Diagnostic::new(format!("{path}.backends"), "has no backends")
                    .with_hint("list at least one host:port, like backends: [127.0.0.1:9001]"),
            );
        }
        check_timeouts(&config.timeouts, &format!("{path}.timeouts"), diagnostics);

        let mut backends = Vec::with_capacity(config.backends.len());
        for (index, address) in config.backends.iter().enumerate() {
            match resolve(address) {
                Ok(address) => backends.push(Backend {
                    address,
                    peer: peer_for(address, &config.timeouts),
                }),
                Err(message) => diagnostics.push(
                    Diagnostic::new(format!("{path}.backends[{index}]"), message).with_hint(
                        "backends are host:port, like 127.0.0.1:9001 or legacy.internal:80",
                    ),
                ),
            }
        }

        (diagnostics.len() == before).then(|| Self {
            name: name.to_owned(),
            backends,
            next: AtomicUsize::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.backends.iter().map(|backend| backend.address)
    }

    /// The address of the next backend in round-robin order (for clients other than Pingora's).
    pub fn select_address(&self) -> SocketAddr {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        self.backends[turn % self.backends.len()].address
    }

    /// The next backend in round-robin order.
    pub fn select(&self) -> &HttpPeer {
        // Relaxed is enough: the counter only spreads load, it orders nothing.
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        &self.backends[turn % self.backends.len()].peer
    }
}

fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = address.parse::<SocketAddr>() {
        return Ok(address);
    }
    if address
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(format!("`{address}` has no port"));
    }
    address
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve `{address}`: {error}"))?
        .next()
        .ok_or_else(|| format!("`{address}` resolves to no address"))
}

fn peer_for(address: SocketAddr, timeouts: &TimeoutsConfig) -> HttpPeer {
    let mut peer = HttpPeer::new(address, false, String::new());
    let options = &mut peer.options;
    options.connection_timeout = Some(timeouts.connect);
    options.read_timeout = Some(timeouts.read);
    options.write_timeout = Some(timeouts.write);
    options.idle_timeout = Some(timeouts.idle);
    peer
}

fn check_timeouts(timeouts: &TimeoutsConfig, path: &str, diagnostics: &mut Vec<Diagnostic>) {
    for (field, value) in [
        ("connect", timeouts.connect),
        ("read", timeouts.read),
        ("write", timeouts.write),
        ("idle", timeouts.idle),
    ] {
        if value.is_zero() {
            diagnostics.push(
                Diagnostic::new(format!("{path}.{field}"), "must be greater than zero")
                    .with_hint("durations look like 250ms, 5s, 1m30s"),
            );
        }
    }
}
