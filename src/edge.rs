//! The proxy's listening edge: what runs on an accepted connection before HTTP — the PROXY
//! protocol header from trusted balancers, TLS handshakes (bounded in time and number, run
//! here rather than by Pingora's listener), h2c detection — and the watch that re-reads
//! listener certificates when their files change.
//!
//! Certificates, keys and TLS client settings themselves (loading, checks, SNI resolution,
//! backend clients) are [`crate::tls`]'s; this module serves with them.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;

use crate::config::{ListenerConfig, Listeners};
use crate::metrics::Metrics;
use crate::routing::SharedRouteTable;
use crate::tls::*;

/// One TLS listener at runtime.
pub struct TlsListener {
    address: SocketAddr,
    resolver: Arc<SniResolver>,
    acceptor: Acceptor,
    handshake_timeout: Duration,
    handshakes: Semaphore,
    max_handshakes: usize,
}

impl TlsListener {
    fn new(listener: &ListenerConfig) -> Result<Self, CertError> {
        let tls = listener.tls.as_ref().expect("a TLS listener");
        let table = load_listener(listener).map_err(|(_, error)| error)?;
        let resolver = Arc::new(SniResolver {
            table: ArcSwap::from_pointee(table),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            address: listener.address,
            resolver,
            acceptor: Acceptor::from_server_config(Arc::new(config)),
            handshake_timeout: tls.handshake_timeout,
            handshakes: Semaphore::new(tls.max_handshakes),
            max_handshakes: tls.max_handshakes,
        })
    }

    /// Reads this listener's certificate files again as `listeners` describes them; the new
    /// table serves the next handshakes only if every file loads.
    fn refresh(&self, listeners: &Listeners) -> Result<bool, CertError> {
        let Some(listener) = listeners
            .iter()
            .find(|l| l.address == self.address && l.tls.is_some())
        else {
            return Ok(false);
        };
        let table = load_listener(listener).map_err(|(_, error)| error)?;
        self.resolver.table.store(Arc::new(table));
        Ok(true)
    }
}

enum Kind {
    Plain { h2c: bool },
    Tls(Arc<TlsListener>),
}

struct EdgeListener {
    address: SocketAddr,
    kind: Kind,
    proxy_protocol: bool,
}

/// The proxy application behind every client listener: PROXY protocol headers, TLS
/// handshakes, h2c detection, then the wrapped application.
pub struct Edge<A> {
    inner: Arc<A>,
    listeners: Vec<EdgeListener>,
    routes: SharedRouteTable,
    metrics: Arc<Metrics>,
}

/// The TLS listeners of a running process, shared with [`CertificateWatch`].
pub type TlsListeners = Arc<Vec<Arc<TlsListener>>>;

impl<A> Edge<A> {
    /// Loads the certificates of every TLS listener of `listeners`.
    pub fn new(
        inner: A,
        listeners: &Listeners,
        routes: SharedRouteTable,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, TlsListeners), CertError> {
        let mut kinds = Vec::new();
        let mut tls = Vec::new();
        for listener in listeners.iter() {
            let kind = if listener.tls.is_some() {
                let runtime = Arc::new(TlsListener::new(listener)?);
                tls.push(runtime.clone());
                Kind::Tls(runtime)
            } else {
                Kind::Plain { h2c: listener.h2c }
            };
            kinds.push(EdgeListener {
                address: listener.address,
                kind,
                proxy_protocol: listener.proxy_protocol,
            });
        }
        Ok((
            Self {
                inner: Arc::new(inner),
                listeners: kinds,
                routes,
                metrics,
            },
            Arc::new(tls),
        ))
    }

    fn listener_of(&self, local: Option<SocketAddr>) -> Option<&EdgeListener> {
        let local = local?;
        // An exact address first, then a wildcard one on the same port.
        self.listeners
            .iter()
            .find(|listener| listener.address == local)
            .or_else(|| {
                self.listeners.iter().find(|listener| {
                    listener.address.port() == local.port()
                        && listener.address.ip().is_unspecified()
                })
            })
    }

    fn closed(&self, reason: &str) {
        self.metrics
            .connections_closed
            .with_label_values(&[reason])
            .inc();
    }
}

fn local_address(stream: &Stream) -> Option<SocketAddr> {
    let digest = stream.get_socket_digest()?;
    digest.local_addr()?.as_inet().copied()
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first 12 bytes of every PROXY protocol v2 header.
pub(crate) const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Why a PROXY protocol header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol v2 signature")]
    Signature,
    #[error("unsupported PROXY protocol version or command {0:#04x}")]
    VersionCommand(u8),
    #[error("address block too short for its family")]
    Truncated,
    #[error("connection ended inside the header")]
    Io,
}

/// Reads a PROXY protocol v2 header off `stream` (exactly its bytes); the client's address, or
/// `None` for a LOCAL connection or an address family other than TCP over IPv4/IPv6.
async fn read_proxy_header(stream: &mut Stream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 16];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|_| ProxyHeaderError::Io)?;
    let length = usize::from(u16::from_be_bytes([head[14], head[15]]));
    // Read the signature's verdict before trusting the length.
    parse_proxy_head(&head)?;
    let mut body = vec![0u8; length];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|_| ProxyHeaderError::Io)?;
    parse_proxy_v2(&head, &body)
}

fn parse_proxy_head(head: &[u8; 16]) -> Result<(), ProxyHeaderError> {
    if head[..12] != PROXY_V2_SIGNATURE {
        return Err(ProxyHeaderError::Signature);
    }
    match head[12] {
        0x20 | 0x21 => Ok(()),
        other => Err(ProxyHeaderError::VersionCommand(other)),
    }
}

/// Parses a PROXY protocol v2 header: its fixed 16 bytes and the `length` bytes after them.
pub fn parse_proxy_v2(
    head: &[u8; 16],
    body: &[u8],
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    parse_proxy_head(head)?;
    if head[12] == 0x20 {
        return Ok(None); // LOCAL
    }
    let port = |bytes: &[u8]| u16::from_be_bytes([bytes[0], bytes[1]]);
    match head[13] {
        0x11 => {
            let b = body.get(..12).ok_or(ProxyHeaderError::Truncated)?;
            let ip = std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Ok(Some(SocketAddr::from((ip, port(&b[8..10])))))
        }
        0x21 => {
            let b = body.get(..36).ok_or(ProxyHeaderError::Truncated)?;
            let ip = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).expect("16 bytes"));
            Ok(Some(SocketAddr::from((ip, port(&b[32..34])))))
        }
        // UNSPEC, UDP, unix sockets: nothing usable; the peer stays the client.
        _ => Ok(None),
    }
}

#[async_trait]
impl<A> ServerApp for Edge<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let listener = self.listener_of(local_address(&stream));
        if listener.is_some_and(|l| l.proxy_protocol)
            && let Some(peer) = stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr()?.as_inet().copied())
        {
            let (trusted, wait) = {
                let table = self.routes.load();
                (
                    table.trusted_proxies.trusts(peer.ip()),
                    table.config().server.limits.header_timeout,
                )
            };
            if trusted {
                match tokio::time::timeout(wait, read_proxy_header(&mut stream)).await {
                    Ok(Ok(Some(client))) => {
                        if let Some(fd) = stream
                            .as_any()
                            .downcast_ref::<L4Stream>()
                            .map(std::os::fd::AsRawFd::as_raw_fd)
                        {
                            let digest = pingora_core::protocols::SocketDigest::from_raw_fd(fd);
                            let _ = digest.peer_addr.set(Some(client.into()));
                            stream.set_socket_digest(digest);
                        }
                    }
                    // LOCAL (the balancer's own health check): the peer is the client.
                    Ok(Ok(None)) => {}
                    Ok(Err(error)) => {
                        self.closed("proxy_protocol_invalid");
                        tracing::debug!(%peer, %error, "bad PROXY protocol header: connection closed");
                        return None;
                    }
                    Err(_) => {
                        self.closed("proxy_protocol_timeout");
                        return None;
                    }
                }
            }
        }
        let stream: Stream = match listener.map(|l| &l.kind) {
            None | Some(Kind::Plain { h2c: false }) => stream,
            Some(Kind::Plain { h2c: true }) => {
                let mut preface = [0u8; H2_PREFACE.len()];
                match stream.try_peek(&mut preface).await {
                    Ok(true) if preface == H2_PREFACE => Box::new(H2cStream(stream)),
                    Ok(_) => stream,
                    Err(_) => return None,
                }
            }
            Some(Kind::Tls(listener)) => {
                let Ok(_permit) = listener.handshakes.try_acquire() else {
                    self.closed("tls_too_many_handshakes");
                    tracing::debug!(
                        listener = %listener.address,
                        max_handshakes = listener.max_handshakes,
                        "TLS handshakes at their limit: connection closed"
                    );
                    return None;
                };
                let Ok(l4) = stream.into_any().downcast::<L4Stream>() else {
                    tracing::error!("a TLS listener accepted a stream that is not TCP");
                    return None;
                };
                match tokio::time::timeout(
                    listener.handshake_timeout,
                    listener.acceptor.tls_handshake(*l4),
                )
                .await
                {
                    Ok(Ok(tls)) => Box::new(tls),
                    Ok(Err(error)) => {
                        // Scanners and clients that reject the certificate: common, so debug.
                        self.closed("tls_handshake_failed");
                        tracing::debug!(listener = %listener.address, %error, "TLS handshake failed");
                        return None;
                    }
                    Err(_) => {
                        self.closed("tls_handshake_timeout");
                        tracing::debug!(listener = %listener.address, "TLS handshake timed out");
                        return None;
                    }
                }
            }
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// A plain stream that opened with the HTTP/2 preface: it reports `h2` as if negotiated, so the
/// HTTP/2 server takes it (and the HTTP/1 guard lets it through).
#[derive(Debug)]
struct H2cStream(Stream);

impl AsyncRead for H2cStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for H2cStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for H2cStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.0).await;
    }
}

impl UniqueID for H2cStream {
    fn id(&self) -> UniqueIDType {
        self.0.id()
    }
}

impl Ssl for H2cStream {
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        Some(ALPN::H2)
    }
}

impl GetTimingDigest for H2cStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.0.get_timing_digest()
    }
}

impl GetProxyDigest for H2cStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.0.get_proxy_digest()
    }
}

impl GetSocketDigest for H2cStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.0.get_socket_digest()
    }
}

#[async_trait]
impl Peek for H2cStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.0.try_peek(buf).await
    }
}

/// How long the directories must be quiet after a change before the files are read, so a
/// certificate and its key written one after the other are read together.
const CERT_DEBOUNCE: Duration = Duration::from_millis(200);
/// How often the watch looks for a newly applied config generation.
const GENERATION_POLL: Duration = Duration::from_millis(250);

/// Reads the TLS listeners' certificates again after a reload and when their files change.
pub struct CertificateWatch {
    pub routes: SharedRouteTable,
    pub listeners: TlsListeners,
}

impl CertificateWatch {
    fn refresh(&self, why: &str) {
        let table = self.routes.load();
        for listener in self.listeners.iter() {
            match listener.refresh(&table.config().server.listen) {
                Ok(true) => {
                    tracing::info!(listener = %listener.address, why, "certificates loaded")
                }
                Ok(false) => {}
                Err(error) => tracing::error!(
                    listener = %listener.address,
                    %error,
                    "certificates not reloaded; the previous ones keep serving"
                ),
            }
        }
    }

    /// The directories holding the current certificate files (and their symlink targets'),
    /// and the file names that matter in them.
    fn directories(&self) -> (Vec<PathBuf>, Vec<std::ffi::OsString>) {
        let table = self.routes.load();
        let mut directories = Vec::new();
        let mut names = Vec::new();
        for listener in table.config().server.listen.iter() {
            for certificate in listener.tls.iter().flat_map(|tls| &tls.certificates) {
                for file in [&certificate.cert, &certificate.key] {
                    let Ok(absolute) = std::path::absolute(file) else {
                        continue;
                    };
                    let mut candidates = vec![absolute.parent().map(Path::to_owned)];
                    names.extend(absolute.file_name().map(ToOwned::to_owned));
                    if let Ok(target) = std::fs::canonicalize(&absolute) {
                        candidates.push(target.parent().map(Path::to_owned));
                        names.extend(target.file_name().map(ToOwned::to_owned));
                    }
                    for directory in candidates.into_iter().flatten() {
                        if !directories.contains(&directory) {
                            directories.push(directory);
                        }
                    }
                }
            }
        }
        (directories, names)
    }
}

#[async_trait]
impl BackgroundService for CertificateWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use notify::Watcher;
        if self.listeners.is_empty() {
            return;
        }
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<()>();
        // Only the certificate files (under their names or their symlink targets') and
        // Kubernetes' `..data` swaps matter: a busy directory must not keep re-reading them.
        let wanted_names = Arc::new(std::sync::Mutex::new(Vec::<std::ffi::OsString>::new()));
        let names = wanted_names.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = event.is_ok_and(|event| {
                !event.kind.is_access()
                    && event.paths.iter().any(|path| {
                        path.file_name().is_some_and(|name| {
                            name.to_string_lossy().starts_with("..")
                                || names
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .iter()
                                    .any(|wanted| wanted == name)
                        })
                    })
            });
            if relevant {
                let _ = events_tx.send(());
            }
        })
        .map_err(|error| tracing::error!(%error, "cannot watch certificate files; they are read again on reload"))
        .ok();
        let mut watched: Vec<PathBuf> = Vec::new();
        let mut generation = self.routes.load().generation();
        let mut ticks = tokio::time::interval(GENERATION_POLL);
        loop {
            // Follow the directories the current config names.
            if let Some(watcher) = watcher.as_mut() {
                let (wanted, names) = self.directories();
                *wanted_names.lock().unwrap_or_else(|e| e.into_inner()) = names;
                if wanted != watched {
                    for directory in &watched {
                        let _ = watcher.unwatch(directory);
                    }
                    for directory in &wanted {
                        if let Err(error) =
                            watcher.watch(directory, notify::RecursiveMode::NonRecursive)
                        {
                            tracing::warn!(directory = %directory.display(), %error, "cannot watch a certificate directory");
                        }
                    }
                    watched = wanted;
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticks.tick() => {
                    let now = self.routes.load().generation();
                    if now != generation {
                        generation = now;
                        self.refresh("config reloaded");
                    }
                }
                Some(()) = events.recv() => {
                    while let Ok(Some(())) = tokio::time::timeout(CERT_DEBOUNCE, events.recv()).await {}
                    self.refresh("certificate files changed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_v2_header_names_the_client_and_local_or_garbage_do_not() {
        let mut head = [0u8; 16];
        head[..12].copy_from_slice(&PROXY_V2_SIGNATURE);
        head[12] = 0x21;
        head[13] = 0x11;
        head[15] = 12;
        let body = [203, 0, 113, 7, 10, 0, 0, 1, 0x30, 0x39, 0x1f, 0x90];
        assert_eq!(
            parse_proxy_v2(&head, &body),
            Ok(Some("203.0.113.7:12345".parse().unwrap()))
        );
        assert_eq!(
            parse_proxy_v2(&head, &body[..8]),
            Err(ProxyHeaderError::Truncated)
        );
        head[12] = 0x20;
        assert_eq!(parse_proxy_v2(&head, &[]), Ok(None));
        head[12] = 0x11;
        assert_eq!(
            parse_proxy_v2(&head, &body),
            Err(ProxyHeaderError::VersionCommand(0x11))
        );
        let mut http = [0u8; 16];
        http.copy_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(parse_proxy_v2(&http, &[]), Err(ProxyHeaderError::Signature));
    }
}
