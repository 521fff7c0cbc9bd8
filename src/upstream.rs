//! Upstream pools: the backends of one named upstream and how a request picks one.
//!
//! A pool is built once per config generation from [`UpstreamConfig`]: addresses are resolved and
//! a ready-made Pingora [`HttpPeer`] (with the upstream's timeouts) is kept per backend, so picking
//! a backend on the hot path is an atomic increment and a clone.
//!
//! Each backend carries its health: taken out by active checks ([`crate::health`]) after
//! `unhealthy_threshold` failed probes, or ejected passively for `passive.ejection` after
//! `passive.consecutive_failures` failed requests. Selection skips backends that are out; when
//! none is left the caller answers 503. Retries and fallbacks are the proxy's decisions.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pingora_core::upstreams::peer::HttpPeer;

use crate::config::{
    Diagnostic, HealthCheckConfig, PassiveHealthConfig, TimeoutsConfig, UpstreamConfig,
};

/// One named upstream, ready to serve.
#[derive(Debug)]
pub struct UpstreamPool {
    name: String,
    backends: Vec<Backend>,
    next: AtomicUsize,
    retries: u32,
    passive: PassiveHealthConfig,
    health_check: Option<HealthCheckConfig>,
    /// `https` for TLS upstreams: the scheme of the URIs the health checks build.
    scheme: &'static str,
    /// For TLS and h2c upstreams: the client of the health checks (plain HTTP/1.1 upstreams
    /// use theirs). Shadow copies go through the backends' peers, like requests.
    probe_client: Option<ProbeClient>,
}

/// See [`UpstreamPool::probe_client`].
#[derive(Clone)]
struct ProbeClient(crate::tls::BackendClient);

impl std::fmt::Debug for ProbeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeClient")
    }
}

#[derive(Debug)]
pub struct Backend {
    address: SocketAddr,
    peer: HttpPeer,
    health: BackendHealth,
}

/// A backend's health, updated from any thread without locks.
#[derive(Debug, Default)]
pub struct BackendHealth {
    /// Active checks' verdict; starts healthy.
    probed_down: AtomicBool,
    probe_failures: AtomicU32,
    probe_successes: AtomicU32,
    request_failures: AtomicU32,
    /// Unix ms until which passive ejection keeps the backend out.
    ejected_until_ms: AtomicU64,
    /// Unix ms of the next active check.
    next_probe_ms: AtomicU64,
}

impl BackendHealth {
    fn copy_from(&self, other: &BackendHealth, with_probes: bool) {
        let copy = |to: &AtomicU32, from: &AtomicU32| {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed)
        };
        copy(&self.request_failures, &other.request_failures);
        self.ejected_until_ms.store(
            other.ejected_until_ms.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        if with_probes {
            copy(&self.probe_failures, &other.probe_failures);
            copy(&self.probe_successes, &other.probe_successes);
            self.probed_down
                .store(other.probed_down.load(Ordering::Relaxed), Ordering::Relaxed);
            self.next_probe_ms.store(
                other.next_probe_ms.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Backend {
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// How this backend is spoken to (address, timeouts, TLS, ALPN), for Pingora's connectors.
    pub fn peer(&self) -> &HttpPeer {
        &self.peer
    }

    /// Whether requests may go here now.
    pub fn available(&self) -> bool {
        if self.health.probed_down.load(Ordering::Relaxed) {
            return false;
        }
        // Most backends were never ejected: no clock read for them.
        let ejected_until = self.health.ejected_until_ms.load(Ordering::Relaxed);
        ejected_until == 0 || ejected_until <= now_ms()
    }

    pub fn probed_down(&self) -> bool {
        self.health.probed_down.load(Ordering::Relaxed)
    }

    pub fn ejected(&self) -> bool {
        self.health.ejected_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    /// When a passive ejection in force ends; `None` when the backend is not ejected.
    pub fn ejected_until(&self) -> Option<SystemTime> {
        let until = self.health.ejected_until_ms.load(Ordering::Relaxed);
        (until > now_ms()).then(|| UNIX_EPOCH + Duration::from_millis(until))
    }

    /// Real requests failed in a row (reset by a success or an ejection).
    pub fn consecutive_request_failures(&self) -> u32 {
        self.health.request_failures.load(Ordering::Relaxed)
    }

    /// Active checks in a row as (failed, passed); a result of the other kind resets each.
    pub fn probe_streak(&self) -> (u32, u32) {
        (
            self.health.probe_failures.load(Ordering::Relaxed),
            self.health.probe_successes.load(Ordering::Relaxed),
        )
    }

    /// Records an active check's result; returns true when it changed the backend's state.
    pub fn record_probe(&self, passed: bool, check: &HealthCheckConfig) -> bool {
        let health = &self.health;
        if passed {
            health.probe_failures.store(0, Ordering::Relaxed);
            let successes = health.probe_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if successes >= check.healthy_threshold
                && health.probed_down.swap(false, Ordering::Relaxed)
            {
                // Back in service: forget old request failures too.
                health.request_failures.store(0, Ordering::Relaxed);
                health.ejected_until_ms.store(0, Ordering::Relaxed);
                return true;
            }
        } else {
            health.probe_successes.store(0, Ordering::Relaxed);
            let failures = health.probe_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if failures >= check.unhealthy_threshold
                && !health.probed_down.swap(true, Ordering::Relaxed)
            {
                return true;
            }
        }
        false
    }

    /// Whether an active check is due now; if so, schedules the next one.
    pub fn probe_due(&self, interval: Duration) -> bool {
        let now = now_ms();
        let due = self.health.next_probe_ms.load(Ordering::Relaxed);
        now >= due
            && self
                .health
                .next_probe_ms
                .compare_exchange(
                    due,
                    now + interval.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

/// The backends (by index in their pool) one request has tried; indexes past 63 are never
/// marked, so such a backend may be tried twice, which only costs a retry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub const NONE: Tried = Tried(0);

    pub fn mark(&mut self, index: usize) {
        if index < 64 {
            self.0 |= 1 << index;
        }
    }

    pub fn contains(self, index: usize) -> bool {
        index < 64 && self.0 & (1 << index) != 0
    }
}

/// How backend addresses become socket addresses when a config is compiled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AddressResolution {
    /// Host names are resolved with the system resolver, as serving needs.
    #[default]
    Dns,
    /// Only the `host:port` syntax is checked, for CI machines that cannot resolve the names
    /// a cluster's DNS serves. Host names get the placeholder address `0.0.0.0:<port>`, so a
    /// pool compiled this way must never serve.
    SyntaxOnly,
}

impl UpstreamPool {
    /// Resolves and checks `config`; every problem is appended to `diagnostics` under `path`.
    pub fn compile(
        name: &str,
        config: &UpstreamConfig,
        path: &str,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Option<Self> {
        Self::compile_resolving(name, config, path, AddressResolution::Dns, diagnostics)
    }

    /// [`Self::compile`], with backend names resolved as `resolution` says.
    pub fn compile_resolving(
        name: &str,
        config: &UpstreamConfig,
        path: &str,
        resolution: AddressResolution,
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
        crate::tls::check_upstream(
            config,
            path,
            resolution == AddressResolution::Dns,
            diagnostics,
        );
        let transport = (diagnostics.len() == before).then(|| Transport::new(config));

        let mut backends = Vec::with_capacity(config.backends.len());
        for (index, address) in config.backends.iter().enumerate() {
            // A name stands for every address it resolves to (a cloud load balancer's, say),
            // each a backend with health of its own; `server.dns_refresh` follows changes.
            match resolve_all(address, resolution) {
                Ok(addresses) => {
                    for address in addresses {
                        if backends.iter().any(|known: &Backend| known.address == address) {
                            continue;
                        }
                        backends.push(Backend {
                            address,
                            peer: peer_for(address, &config.timeouts, transport.as_ref()),
                            health: BackendHealth::default(),
                        });
                    }
                }
                Err(problem) => diagnostics.push(
                    Diagnostic::new(format!("{path}.backends[{index}]"), problem.message)
                        .with_hint(if problem.lookup_failed {
                            "the name must resolve where this runs; to check a config on a machine \
                             that cannot see its network's DNS (CI), use strangler validate --no-resolve"
                        } else {
                            "backends are host:port, like 127.0.0.1:9001 or legacy.internal:80"
                        }),
                ),
            }
        }

        if let Some(check) = &config.health_check {
            let check_path = format!("{path}.health_check");
            if check.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
                diagnostics.push(Diagnostic::new(
                    format!("{check_path}.path"),
                    "must start with `/`",
                ));
            }
            if check.interval.is_zero() || check.timeout.is_zero() {
                diagnostics.push(Diagnostic::new(
                    &check_path,
                    "interval and timeout must be greater than zero",
                ));
            }
            if check.unhealthy_threshold == 0 || check.healthy_threshold == 0 {
                diagnostics.push(Diagnostic::new(
                    &check_path,
                    "thresholds must be at least 1",
                ));
            }
        }

        let probe_client = if diagnostics.len() == before {
            match crate::tls::backend_client(config) {
                Ok(client) => client.map(ProbeClient),
                Err(error) => {
                    diagnostics.push(Diagnostic::new(format!("{path}.tls"), error.to_string()));
                    None
                }
            }
        } else {
            None
        };
        (diagnostics.len() == before).then(|| Self {
            scheme: if config.tls.is_some() {
                "https"
            } else {
                "http"
            },
            probe_client,
            name: name.to_owned(),
            backends,
            next: AtomicUsize::new(0),
            retries: config.retries,
            passive: config.passive.clone(),
            health_check: config.health_check.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// The client of this upstream's HTTP health checks, when it is not plain HTTP/1.1.
    pub fn probe_client(&self) -> Option<&crate::tls::BackendClient> {
        self.probe_client.as_ref().map(|client| &client.0)
    }

    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.backends.iter().map(|backend| backend.address)
    }

    /// The next available backend for a shadow copy, by index; when none is available, the
    /// next one anyway (a copy may fail, a request must not be refused for it).
    pub fn select_for_copy(&self) -> usize {
        match self.select() {
            Some((index, _)) => index,
            None => self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len(),
        }
    }

    /// The next available backend in round-robin order, as (index, peer); `None` when every
    /// backend is out.
    pub fn select(&self) -> Option<(usize, &HttpPeer)> {
        self.select_untried(Tried::NONE)
    }

    /// Like [`Self::select`], skipping the backends a request already tried: a retry goes to
    /// another backend, never back to the one that just failed.
    pub fn select_untried(&self, tried: Tried) -> Option<(usize, &HttpPeer)> {
        let count = self.backends.len();
        // Relaxed is enough: the counter only spreads load, it orders nothing.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|index| !tried.contains(*index) && self.backends[*index].available())
            .map(|index| (index, &self.backends[index].peer))
    }

    /// Whether a backend in rotation is left that the request has not tried.
    pub fn has_untried(&self, tried: Tried) -> bool {
        self.backends
            .iter()
            .enumerate()
            .any(|(index, backend)| !tried.contains(index) && backend.available())
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    pub fn health_check(&self) -> Option<&HealthCheckConfig> {
        self.health_check.as_ref()
    }

    pub fn passive(&self) -> &PassiveHealthConfig {
        &self.passive
    }

    /// Further attempts allowed when connecting fails.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Takes over the health of the backends `previous` (the same upstream in the generation
    /// being replaced) also had, matched by address: a reload must neither re-admit a backend
    /// the checks took out nor forget an ejection. Without an active check in this generation
    /// nothing would ever bring a probed-down backend back, so that verdict is not carried.
    pub fn inherit_health(&self, previous: &UpstreamPool) {
        let checked = self.health_check.is_some();
        for backend in &self.backends {
            if let Some(old) = previous
                .backends
                .iter()
                .find(|old| old.address == backend.address)
            {
                backend.health.copy_from(&old.health, checked);
            }
        }
    }

    /// A real request to backend `index` failed (connect error, 502/503/504).
    pub fn report_failure(&self, index: usize) {
        let Some(backend) = self.backends.get(index) else {
            return;
        };
        let limit = self.passive.consecutive_failures;
        let failures = backend
            .health
            .request_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        // Passive ejection never takes out the last backend in rotation: a blip on a lone
        // backend would otherwise turn into a 503 for everyone for the whole ejection period.
        // (Active health checks can; they prove the backend is down.)
        let others_available = || {
            self.backends
                .iter()
                .enumerate()
                .any(|(other, candidate)| other != index && candidate.available())
        };
        if limit > 0 && failures >= limit && others_available() {
            backend.health.request_failures.store(0, Ordering::Relaxed);
            let until = now_ms() + self.passive.ejection.as_millis() as u64;
            backend
                .health
                .ejected_until_ms
                .store(until, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, backend = %backend.address, ejection = ?self.passive.ejection, "backend ejected after {failures} consecutive failures");
        }
    }

    /// A real request to backend `index` succeeded.
    pub fn report_success(&self, index: usize) {
        // Only write when there is something to reset: every core reads this cache line.
        if let Some(backend) = self.backends.get(index)
            && backend.health.request_failures.load(Ordering::Relaxed) != 0
        {
            backend.health.request_failures.store(0, Ordering::Relaxed);
        }
    }
}

/// Why a backend address is unusable.
#[derive(Debug, PartialEq)]
pub struct AddressProblem {
    pub message: String,
    /// The syntax is fine; the name did not resolve (here, now).
    pub lookup_failed: bool,
}

impl From<String> for AddressProblem {
    fn from(message: String) -> Self {
        Self {
            message,
            lookup_failed: false,
        }
    }
}

#[cfg(test)]
fn resolve(address: &str, resolution: AddressResolution) -> Result<SocketAddr, AddressProblem> {
    resolve_all(address, resolution).map(|addresses| addresses[0])
}

/// Whether a configured backend is a host name (resolved, and re-resolved by
/// `server.dns_refresh`) rather than an address.
pub fn is_host_name(backend: &str) -> bool {
    backend.parse::<SocketAddr>().is_err()
}

/// Every address `address` (`host:port`) resolves to, sorted and without duplicates; never
/// empty.
pub fn resolve_all(
    address: &str,
    resolution: AddressResolution,
) -> Result<Vec<SocketAddr>, AddressProblem> {
    if let Ok(address) = address.parse::<SocketAddr>() {
        return Ok(vec![address]);
    }
    // `[2001:db8::1]` has colons but no port.
    let Some((host, port)) = address.rsplit_once(':').filter(|_| !address.ends_with(']')) else {
        return Err(format!("`{address}` has no port").into());
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(if port.is_empty() {
            format!("`{address}` has no port")
        } else {
            format!("`{address}`: the port `{port}` is not a number from 0 to 65535")
        }
        .into());
    };
    match resolution {
        AddressResolution::Dns => {
            let lookup_failed = |message| AddressProblem {
                message,
                lookup_failed: true,
            };
            let mut all: Vec<SocketAddr> = address
                .to_socket_addrs()
                .map_err(|error| lookup_failed(format!("cannot resolve `{address}`: {error}")))?
                .collect();
            all.sort();
            all.dedup();
            if all.is_empty() {
                return Err(lookup_failed(format!("`{address}` resolves to no address")));
            }
            Ok(all)
        }
        AddressResolution::SyntaxOnly => {
            check_host(host).map_err(|problem| format!("`{address}`: {problem}"))?;
            Ok(vec![SocketAddr::from(([0, 0, 0, 0], port))])
        }
    }
}

/// Whether `host` (an address's part before `:port`, already known not to be an IP address
/// with a port) could be resolved at all: a DNS name, or a dotted IPv4 address. Underscores are
/// let through, as resolvers accept them in practice (SRV-style and some internal names).
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is missing".to_owned());
    }
    if host.starts_with('[') || host.contains(':') {
        return Err("not a valid IPv6 address and port; write them as [2001:db8::1]:80".to_owned());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host
            .parse::<std::net::Ipv4Addr>()
            .map(drop)
            .map_err(|_| format!("`{host}` is not a valid IPv4 address"));
    }
    // One trailing dot marks a fully qualified name.
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 {
        return Err("the host name is longer than 253 characters".to_owned());
    }
    for label in name.split('.') {
        let valid = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "`{host}` is not a valid host name (labels of letters, digits and `-`, separated by dots)"
            ));
        }
    }
    Ok(())
}

/// How an upstream's backends are spoken to: TLS settings loaded once per pool, shared by
/// every backend's peer.
struct Transport {
    tls: Option<(String, bool)>,
    protocol: crate::config::UpstreamProtocol,
    ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
    client_cert: Option<Arc<pingora_core::utils::tls::CertKey>>,
    /// Pingora pools connections by address, SNI and client certificate, not by protocol or
    /// trusted CA: without this key, an upstream that trusts another CA (or speaks h2) would
    /// be handed a connection another upstream of the same backend opened and verified.
    group_key: u64,
}

impl Transport {
    /// Files were checked by [`crate::tls::check_upstream`]; one that changed since is
    /// skipped here (and the handshake fails visibly) rather than panicking.
    fn new(config: &UpstreamConfig) -> Self {
        let tls = config.tls.as_ref();
        let ca = tls.and_then(|tls| tls.ca_file.as_ref()).and_then(|file| {
            let chain = crate::tls::read_chain(file).ok()?;
            let wrapped: Vec<_> = chain
                .into_iter()
                .map(|der| {
                    pingora_core::utils::tls::WrappedX509::new(
                        der.to_vec(),
                        pingora_core::utils::tls::parse_x509,
                    )
                })
                .collect();
            Some(Arc::from(wrapped.into_boxed_slice()))
        });
        let client_cert = tls.and_then(|tls| {
            let chain = crate::tls::read_chain(tls.client_cert.as_ref()?).ok()?;
            let key = crate::tls::read_key(tls.client_key.as_ref()?).ok()?;
            Some(Arc::new(pingora_core::utils::tls::CertKey::new(
                chain.into_iter().map(|der| der.to_vec()).collect(),
                key.secret_der().to_vec(),
            )))
        });
        let group_key = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            format!("{:?}{:?}", config.protocol, config.tls).hash(&mut hasher);
            hasher.finish()
        };
        Self {
            group_key,
            tls: tls.map(|tls| (crate::tls::upstream_sni(config), tls.verify)),
            protocol: config.protocol,
            ca,
            client_cert,
        }
    }
}

fn peer_for(
    address: SocketAddr,
    timeouts: &TimeoutsConfig,
    transport: Option<&Transport>,
) -> HttpPeer {
    use crate::config::UpstreamProtocol;
    use pingora_core::protocols::ALPN;

    let tls = transport.and_then(|t| t.tls.clone());
    let mut peer = HttpPeer::new(
        address,
        tls.is_some(),
        tls.as_ref().map(|(sni, _)| sni.clone()).unwrap_or_default(),
    );
    let options = &mut peer.options;
    options.connection_timeout = Some(timeouts.connect);
    options.read_timeout = Some(timeouts.read);
    options.write_timeout = Some(timeouts.write);
    options.idle_timeout = Some(timeouts.idle);
    if let Some(transport) = transport {
        options.alpn = match transport.protocol {
            UpstreamProtocol::H1 => ALPN::H1,
            // Offered with ALPN; a backend that does not pick h2 gets HTTP/1.1.
            UpstreamProtocol::H2 => ALPN::H2H1,
            // No negotiation without TLS: HTTP/2 with prior knowledge.
            UpstreamProtocol::H2c => ALPN::H2,
        };
        if let Some((_, verify)) = &tls {
            options.verify_cert = *verify;
            options.verify_hostname = *verify;
            options.ca = transport.ca.clone();
        }
        peer.client_cert_key = transport.client_cert.clone();
        peer.group_key = transport.group_key;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax(address: &str) -> Result<SocketAddr, String> {
        resolve(address, AddressResolution::SyntaxOnly).map_err(|problem| problem.message)
    }

    #[test]
    fn syntax_only_accepts_names_it_does_not_resolve() {
        assert_eq!(
            syntax("legacy.shop.svc.cluster.local:80"),
            Ok(SocketAddr::from(([0, 0, 0, 0], 80)))
        );
        for address in [
            "orders-v2:8080",
            "fully.qualified.example.:443",
            "_grpc.internal:9000",
            "10.0.0.5:8080",
            "[2001:db8::1]:80",
        ] {
            assert!(syntax(address).is_ok(), "{address}: {:?}", syntax(address));
        }
        // Addresses that need no resolver keep their real value.
        assert_eq!(
            syntax("10.0.0.5:8080"),
            Ok(SocketAddr::from(([10, 0, 0, 5], 8080)))
        );
    }

    #[test]
    fn syntax_only_still_rejects_what_could_never_resolve() {
        for (address, problem) in [
            ("legacy.internal", "has no port"),
            ("legacy.internal:", "has no port"),
            ("[2001:db8::1]", "has no port"),
            ("legacy.internal:http", "the port `http` is not a number"),
            ("legacy.internal:70000", "the port `70000` is not a number"),
            (":80", "the host is missing"),
            ("2001:db8::1:80", "not a valid IPv6 address"),
            ("[2001:db8::zz]:80", "not a valid IPv6 address"),
            ("300.1.1.1:80", "not a valid IPv4 address"),
            ("bad host:80", "not a valid host name"),
            ("-legacy:80", "not a valid host name"),
            ("legacy..internal:80", "not a valid host name"),
        ] {
            let error = syntax(address).expect_err(address);
            assert!(error.contains(problem), "{address}: {error}");
        }
        let long = format!("{}:80", "a.".repeat(130));
        assert!(syntax(&long).unwrap_err().contains("longer than 253"));
    }

    #[test]
    fn dns_resolution_reports_the_same_syntax_errors() {
        let error = resolve("legacy.internal:http", AddressResolution::Dns).unwrap_err();
        assert!(
            error.message.contains("the port `http` is not a number"),
            "{error:?}"
        );
        assert!(!error.lookup_failed);
        assert!(
            resolve("127.0.0.1", AddressResolution::Dns)
                .unwrap_err()
                .message
                .contains("has no port")
        );
    }
}
