//! TLS at the edge and to backends, and HTTP/2 to clients.
//!
//! This module owns:
//! - loading and judging certificate files (readable PEM, not expired, key matching the
//!   certificate), for `strangler validate`, for every (re)load and for the file watch;
//! - the client-facing listeners: [`Edge`] wraps the proxy application, finds which listener a
//!   connection came in on, and for a TLS listener runs the handshake itself, bounded in time
//!   (`handshake_timeout`) and in how many run at once (`max_handshakes`), with a certificate
//!   chosen by SNI from a table that is swapped without touching open connections;
//! - [`CertificateWatch`], which reads the certificates again when a reload has been applied
//!   and when one of their files changes on disk (cert-manager rewrites a Secret in place);
//! - the HTTP/2 server settings (stream count, header-list size, reset budgets);
//! - TLS client settings for backends: the Pingora peer's (see [`crate::upstream`], which the
//!   proxy and the shadow copies use) and the rustls client config of the health checks.
//!
//! Why the handshake is ours and not Pingora's TLS listener: Pingora bounds every handshake by a
//! fixed 60 s and runs as many at once as clients open, and its listener settings are fixed at
//! start. Accepting plain TCP and handshaking here (with Pingora's own rustls acceptor, so the
//! resulting stream is the one Pingora's HTTP/1 and HTTP/2 servers expect) gives the limits and
//! lets the certificates change at runtime.
//!
//! Not owned here: what happens to requests once the stream is established (the connection
//! guard in [`crate::connection`] for HTTP/1, the proxy phases for both).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use pingora_core::protocols::http::v2::server::H2Options;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{
    CertificateConfig, Diagnostic, LimitsConfig, ListenerConfig, Listeners, UpstreamConfig,
    UpstreamProtocol, UpstreamTlsConfig,
};

/// What is wrong with a certificate, key or CA file. Every variant names its file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} holds no PEM certificate", file.display())]
    NoCertificate { file: PathBuf },
    #[error("{} holds no PEM private key", file.display())]
    NoKey { file: PathBuf },
    #[error("{} is not a certificate strangler can read: {reason}", file.display())]
    Unparsable { file: PathBuf, reason: String },
    #[error("{} expired on {not_after}", file.display())]
    Expired { file: PathBuf, not_after: String },
    #[error("{} is not valid before {not_before}", file.display())]
    NotYetValid { file: PathBuf, not_before: String },
    #[error("the key {} does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the key {} cannot sign: {reason}", file.display())]
    UnusableKey { file: PathBuf, reason: String },
}

impl CertError {
    /// Which of a certificate's two fields the error is about.
    fn field(&self) -> &'static str {
        match self {
            CertError::NoKey { .. }
            | CertError::UnusableKey { .. }
            | CertError::KeyMismatch { .. } => "key",
            _ => "cert",
        }
    }
}

fn read(file: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(file).map_err(|source| CertError::Read {
        file: file.to_owned(),
        source,
    })
}

/// Reads a PEM certificate chain, checking each certificate's validity period.
pub fn read_chain(file: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = read(file)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|error| CertError::Unparsable {
            file: file.to_owned(),
            reason: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            file: file.to_owned(),
        });
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for der in &chain {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|error| CertError::Unparsable {
                file: file.to_owned(),
                reason: error.to_string(),
            })?;
        let validity = cert.validity();
        if validity.not_after.timestamp() < now {
            return Err(CertError::Expired {
                file: file.to_owned(),
                not_after: validity.not_after.to_string(),
            });
        }
        if validity.not_before.timestamp() > now {
            return Err(CertError::NotYetValid {
                file: file.to_owned(),
                not_before: validity.not_before.to_string(),
            });
        }
    }
    Ok(chain)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(file: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let pem = read(file)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| CertError::NoKey {
        file: file.to_owned(),
    })
}

/// A certificate ready to serve, and the names it answers to.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// Lowercase DNS names (`*.example.com` allowed).
    pub names: Vec<String>,
}

/// Loads one `certificates` entry and checks it can serve.
pub fn load_certificate(config: &CertificateConfig) -> Result<LoadedCertificate, CertError> {
    let chain = read_chain(&config.cert)?;
    let key = read_key(&config.key)?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| CertError::UnusableKey {
            file: config.key.clone(),
            reason: error.to_string(),
        })?;
    let names = if config.server_names.is_empty() {
        dns_names(&chain[0])
    } else {
        config.server_names.clone()
    };
    let certified = CertifiedKey::new(chain, signing_key);
    if certified.keys_match().is_err() {
        return Err(CertError::KeyMismatch {
            cert: config.cert.clone(),
            key: config.key.clone(),
        });
    }
    Ok(LoadedCertificate {
        key: Arc::new(certified),
        names: names.into_iter().map(|n| n.to_ascii_lowercase()).collect(),
    })
}

/// The DNS names of a certificate's subjectAltName.
fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect()
}

/// A listener's certificates by name; the first configured answers when no name matches.
#[derive(Debug)]
pub struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `example.com` for `*.example.com`: one label is matched, as browsers do.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertTable {
    pub fn new(certificates: Vec<LoadedCertificate>) -> Option<Self> {
        let default = certificates.first()?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for certificate in certificates {
            for name in certificate.names {
                if let Some(parent) = name.strip_prefix("*.") {
                    wildcard
                        .entry(parent.to_owned())
                        .or_insert_with(|| certificate.key.clone());
                } else {
                    exact.entry(name).or_insert_with(|| certificate.key.clone());
                }
            }
        }
        Some(Self {
            exact,
            wildcard,
            default,
        })
    }

    /// The certificate for `server_name` (as sent in SNI).
    pub fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(key) = self.wildcard.get(parent)
        {
            return key.clone();
        }
        self.default.clone()
    }
}

/// Picks the certificate during the handshake from the table of the moment.
#[derive(Debug)]
pub struct SniResolver {
    pub(crate) table: ArcSwap<CertTable>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.table.load().pick(hello.server_name()))
    }
}

/// Loads every certificate of a TLS listener; all or nothing.
pub(crate) fn load_listener(listener: &ListenerConfig) -> Result<CertTable, (usize, CertError)> {
    let tls = listener.tls.as_ref().expect("a TLS listener");
    let mut loaded = Vec::with_capacity(tls.certificates.len());
    for (index, certificate) in tls.certificates.iter().enumerate() {
        loaded.push(load_certificate(certificate).map_err(|error| (index, error))?);
    }
    Ok(CertTable::new(loaded).expect("validation requires a certificate"))
}

/// Checks `server.listen`: distinct addresses, TLS settings that make sense, and (when
/// `read_files`) certificate files that load. Problems go to `diagnostics`.
pub fn check_listeners(listeners: &Listeners, read_files: bool, diagnostics: &mut Vec<Diagnostic>) {
    let mut seen = HashMap::new();
    for (number, listener) in listeners.iter().enumerate() {
        let path = if listeners.0.len() == 1 {
            "server.listen".to_owned()
        } else {
            format!("server.listen[{number}]")
        };
        if let Some(first) = seen.insert(listener.address, number) {
            diagnostics.push(Diagnostic::new(
                format!("{path}.address"),
                format!("{} is already server.listen[{first}]", listener.address),
            ));
        }
        let Some(tls) = &listener.tls else {
            continue;
        };
        if listener.h2c {
            diagnostics.push(
                Diagnostic::new(format!("{path}.h2c"), "is for plain listeners")
                    .with_hint("a TLS listener offers HTTP/2 with ALPN already"),
            );
        }
        if tls.certificates.is_empty() {
            diagnostics.push(
                Diagnostic::new(format!("{path}.tls.certificates"), "lists no certificate")
                    .with_hint("certificates: [{ cert: /etc/tls/tls.crt, key: /etc/tls/tls.key }]"),
            );
        }
        if tls.handshake_timeout.is_zero() {
            diagnostics.push(Diagnostic::new(
                format!("{path}.tls.handshake_timeout"),
                "must be greater than zero",
            ));
        }
        if tls.max_handshakes == 0 {
            diagnostics.push(Diagnostic::new(
                format!("{path}.tls.max_handshakes"),
                "must be at least 1",
            ));
        }
        if !read_files {
            continue;
        }
        for (index, certificate) in tls.certificates.iter().enumerate() {
            if let Err(error) = load_certificate(certificate) {
                diagnostics.push(Diagnostic::new(
                    format!("{path}.tls.certificates[{index}].{}", error.field()),
                    error.to_string(),
                ));
            }
        }
    }
}

/// Checks an upstream's `tls` and `protocol`; with `read_files`, that its CA and client
/// certificate files load.
pub fn check_upstream(
    config: &UpstreamConfig,
    path: &str,
    read_files: bool,
    diagnostics: &mut Vec<Diagnostic>,
) {
    match (config.protocol, &config.tls) {
        (UpstreamProtocol::H2, None) => diagnostics.push(
            Diagnostic::new(format!("{path}.protocol"), "h2 needs `tls`")
                .with_hint("for HTTP/2 over plain TCP, use protocol: h2c"),
        ),
        (UpstreamProtocol::H2c, Some(_)) => diagnostics.push(
            Diagnostic::new(format!("{path}.protocol"), "h2c is HTTP/2 without TLS")
                .with_hint("with `tls`, use protocol: h2"),
        ),
        _ => {}
    }
    let Some(tls) = &config.tls else {
        return;
    };
    if let Some(sni) = &tls.sni
        && rustls::pki_types::ServerName::try_from(sni.as_str()).is_err()
    {
        diagnostics.push(Diagnostic::new(
            format!("{path}.tls.sni"),
            format!("`{sni}` is not a host name"),
        ));
    }
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        diagnostics.push(Diagnostic::new(
            format!("{path}.tls"),
            "client_cert and client_key go together",
        ));
    }
    if !read_files {
        return;
    }
    if let Some(ca) = &tls.ca_file
        && let Err(error) = read_chain(ca)
    {
        diagnostics.push(Diagnostic::new(
            format!("{path}.tls.ca_file"),
            error.to_string(),
        ));
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        let pair = CertificateConfig {
            cert: cert.clone(),
            key: key.clone(),
            server_names: Vec::new(),
        };
        if let Err(error) = load_certificate(&pair) {
            let field = match error.field() {
                "key" => "client_key",
                _ => "client_cert",
            };
            diagnostics.push(Diagnostic::new(
                format!("{path}.tls.{field}"),
                error.to_string(),
            ));
        }
    }
}

/// The name sent as SNI to an upstream's backends: `tls.sni`, else the first backend's host.
pub fn upstream_sni(config: &UpstreamConfig) -> String {
    if let Some(sni) = config.tls.as_ref().and_then(|tls| tls.sni.clone()) {
        return sni;
    }
    let Some(first) = config.backends.first() else {
        return String::new();
    };
    match first.rsplit_once(':') {
        Some((host, _)) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        None => first.clone(),
    }
}

/// The rustls client settings of the health checks for one upstream.
pub fn client_config(
    tls: &UpstreamTlsConfig,
    _protocol: UpstreamProtocol,
) -> Result<rustls::ClientConfig, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3");
    let builder = if tls.verify {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_file {
            Some(file) => {
                for cert in read_chain(file)? {
                    let _ = roots.add(cert);
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().unwrap_or_default() {
                    let _ = roots.add(cert);
                }
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::unverified::NoVerification(provider)))
    };
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_chain(cert)?, read_key(key)?)
            .map_err(|_| CertError::KeyMismatch {
                cert: cert.clone(),
                key: key.clone(),
            })?,
        _ => builder.with_no_client_auth(),
    };
    // ALPN is set by the connector that uses it (see `backend_client`).
    Ok(config)
}

/// A hyper client for one upstream that is not plain HTTP/1.1 (TLS, or h2c), as the health
/// checks use it.
pub type BackendClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

/// The health checks' client for `config`'s backends; `None` for plain HTTP/1.1 (the checks'
/// own client serves those). It opens a connection per request: a pooled connection would hide
/// a backend that stopped accepting.
pub fn backend_client(config: &UpstreamConfig) -> Result<Option<BackendClient>, CertError> {
    use hyper_util::client::legacy::connect::HttpConnector;

    if config.tls.is_none() && config.protocol != UpstreamProtocol::H2c {
        return Ok(None);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.timeouts.connect));
    let connector = match &config.tls {
        Some(tls) => {
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(client_config(tls, config.protocol)?)
                .https_only();
            // The backend is addressed by IP; the name checked is the configured one.
            let builder = match rustls::pki_types::ServerName::try_from(upstream_sni(config)) {
                Ok(name) => builder
                    .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name)),
                Err(_) => builder,
            };
            match config.protocol {
                UpstreamProtocol::H2 => builder.enable_all_versions().wrap_connector(http),
                _ => builder.enable_http1().wrap_connector(http),
            }
        }
        // h2c: plain connections; the TLS settings are never used.
        None => hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_config(&PLAIN, UpstreamProtocol::H1)?)
            .https_or_http()
            .enable_http2()
            .wrap_connector(http),
    };
    let mut builder =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    builder
        .pool_idle_timeout(config.timeouts.idle)
        .pool_max_idle_per_host(0);
    if config.protocol == UpstreamProtocol::H2c {
        builder.http2_only(true);
    }
    Ok(Some(builder.build(connector)))
}

/// Settings that read no file: the unused TLS side of an h2c client.
const PLAIN: UpstreamTlsConfig = UpstreamTlsConfig {
    sni: None,
    verify: false,
    ca_file: None,
    client_cert: None,
    client_key: None,
};

/// The HTTP/2 server settings: Pingora's bounded defaults, with the header-list size following
/// `limits.max_header_bytes`. The `h2` crate enforces them: a header block (CONTINUATION frames
/// included) past the list size ends the stream (or the connection, if it keeps coming), and
/// streams reset faster than they are served (rapid reset, CVE-2023-44487) past the pending
/// budget end the connection with GOAWAY.
pub fn h2_options(limits: &LimitsConfig) -> H2Options {
    let mut options = pingora_core::protocols::http::v2::server::default_h2_options();
    let header_bytes = u32::try_from(limits.max_header_bytes.as_u64()).unwrap_or(u32::MAX);
    options
        .max_header_list_size(header_bytes)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
    options
}

/// Streams a client may have open at once on one HTTP/2 connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams a client may open and reset before they are served (rapid reset) before GOAWAY.
pub const MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for a client's protocol errors before GOAWAY.
pub const MAX_LOCAL_ERROR_RESETS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str, names: &[&str]) -> CertificateConfig {
        let cert = rcgen::generate_simple_self_signed(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
        CertificateConfig {
            cert: cert_path,
            key: key_path,
            server_names: Vec::new(),
        }
    }

    #[test]
    fn sni_picks_the_certificate_naming_the_host_and_falls_back_to_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_certificate(&write_pair(dir.path(), "a", &["a.test"])).unwrap();
        let b = load_certificate(&write_pair(dir.path(), "b", &["*.b.test"])).unwrap();
        let (key_a, key_b) = (a.key.clone(), b.key.clone());
        let table = CertTable::new(vec![a, b]).unwrap();
        assert!(Arc::ptr_eq(&table.pick(Some("A.test")), &key_a));
        assert!(Arc::ptr_eq(&table.pick(Some("api.b.test")), &key_b));
        assert!(Arc::ptr_eq(&table.pick(Some("x.api.b.test")), &key_a));
        assert!(Arc::ptr_eq(&table.pick(None), &key_a));
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_pair(dir.path(), "a", &["a.test"]);
        let b = write_pair(dir.path(), "b", &["b.test"]);
        let mixed = CertificateConfig {
            cert: a.cert.clone(),
            key: b.key.clone(),
            server_names: Vec::new(),
        };
        let error = load_certificate(&mixed).unwrap_err();
        assert!(matches!(error, CertError::KeyMismatch { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("b.key") && message.contains("a.crt"),
            "{message}"
        );
    }

    #[test]
    fn an_expired_certificate_is_refused_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["old.test".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let config = CertificateConfig {
            cert: dir.path().join("old.crt"),
            key: dir.path().join("old.key"),
            server_names: Vec::new(),
        };
        std::fs::write(&config.cert, cert.pem()).unwrap();
        std::fs::write(&config.key, key.serialize_pem()).unwrap();
        let error = load_certificate(&config).unwrap_err();
        assert!(matches!(error, CertError::Expired { .. }), "{error}");
        assert!(error.to_string().contains("old.crt expired"), "{error}");
    }

    #[test]
    fn the_sni_of_an_upstream_defaults_to_its_first_backend_host() {
        let mut config: UpstreamConfig =
            serde_yaml::from_str("backends: [orders.internal:443, 10.0.0.1:443]").unwrap();
        assert_eq!(upstream_sni(&config), "orders.internal");
        config.tls = Some(serde_yaml::from_str("sni: api.example.com").unwrap());
        assert_eq!(upstream_sni(&config), "api.example.com");
    }
}
