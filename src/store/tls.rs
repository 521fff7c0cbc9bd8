//! TLS to a Postgres diff store: libpq's `sslmode` and `sslrootcert` URL parameters, honoured
//! with rustls (ring), so no system OpenSSL is needed.
//!
//! | `sslmode`            | encrypted                         | the server's certificate                     |
//! |----------------------|-----------------------------------|----------------------------------------------|
//! | `disable`            | never                             | not asked for                                |
//! | `prefer` (default)   | when the server offers TLS        | not checked                                  |
//! | `require`            | always (refused if not offered)   | not checked; as `verify-ca` with `sslrootcert` (libpq's rule) |
//! | `verify-ca`          | always                            | signed by `sslrootcert` (else the system roots) |
//! | `verify-full`        | always                            | that, and issued for the host in the URL     |
//!
//! Owns taking those two parameters out of a URL (the client library knows `disable`, `prefer`
//! and `require` only, and refuses `sslrootcert`) and the connector that applies them. It does not
//! connect: see [`super::postgres::connect`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How a connection is encrypted and what is checked: libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.as_str() == text)
    }

    /// What the client library is told: it encrypts, or not; the checking is ours.
    fn for_client(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
        }
    }
}

/// The TLS settings of one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// PEM file of the certificate authorities to trust (`sslrootcert`).
    pub root_cert: Option<PathBuf>,
}

/// Why TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslrootcert {path}: {message}")]
    RootCert { path: String, message: String },
}

/// Splits libpq's TLS parameters out of `url`: the URL to give the client library (with an
/// `sslmode` it understands, without `sslrootcert`) and the settings. Unknown modes are an
/// error naming the parameter (the URL is not repeated: it may hold a password).
pub fn split(url: &str) -> Result<(String, TlsSettings), String> {
    let mut settings = TlsSettings {
        mode: SslMode::Prefer,
        root_cert: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), settings));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| format!("`{name}` is not valid UTF-8"))?;
        match name {
            "sslmode" => {
                settings.mode = SslMode::parse(&value).ok_or_else(|| {
                    format!(
                        "sslmode `{value}` is not one of disable, prefer, require, verify-ca, verify-full"
                    )
                })?;
            }
            "sslrootcert" => settings.root_cert = Some(PathBuf::from(value.as_ref())),
            _ => kept.push(pair),
        }
    }
    if settings.mode == SslMode::Require && settings.root_cert.is_some() {
        // libpq: "if a root CA file exists, the behavior of sslmode=require will be the same
        // as that of verify-ca".
        settings.mode = SslMode::VerifyCa;
    }
    kept.push(match settings.mode.for_client() {
        "disable" => "sslmode=disable",
        "prefer" => "sslmode=prefer",
        _ => "sslmode=require",
    });
    Ok((format!("{base}?{}", kept.join("&")), settings))
}

/// The connector for `settings`: reads `sslrootcert` (at every connection, so a renewed CA
/// file is picked up).
pub fn connector(settings: &TlsSettings) -> Result<MakeRustlsConnect, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous();
    let verifier: Arc<dyn ServerCertVerifier> = match settings.mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            // Encryption without authentication, as libpq does it.
            Arc::new(crate::unverified::NoVerification(provider.clone()))
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(settings.root_cert.as_deref())?);
            let chain = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|error| TlsError::RootCert {
                    path: shown(settings.root_cert.as_deref()),
                    message: error.to_string(),
                })?;
            let checked: Arc<dyn ServerCertVerifier> = if settings.mode == SslMode::VerifyFull {
                chain
            } else {
                Arc::new(AnyName(chain))
            };
            checked
        }
    };
    let config = builder
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn shown(path: Option<&Path>) -> String {
    path.map_or_else(
        || "(the system's roots)".to_owned(),
        |path| path.display().to_string(),
    )
}

/// The authorities to trust: those of `file`, else the system's.
fn roots(file: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(file) = file else {
        for cert in rustls_native_certs::load_native_certs().unwrap_or_default() {
            let _ = roots.add(cert);
        }
        return Ok(roots);
    };
    let error = |message: String| TlsError::RootCert {
        path: file.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("holds no PEM certificate".into()));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| error(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// `verify-ca`: the chain must lead to a trusted authority; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_library_is_told_to_encrypt_and_the_checking_stays_here() {
        let (url, settings) =
            split("postgres://u@db/x?application_name=a&sslmode=verify-full&sslrootcert=%2Fca.pem")
                .unwrap();
        assert_eq!(url, "postgres://u@db/x?application_name=a&sslmode=require");
        assert_eq!(settings.mode, SslMode::VerifyFull);
        assert_eq!(settings.root_cert.as_deref(), Some(Path::new("/ca.pem")));
        url.parse::<postgres::Config>()
            .expect("the library takes it");

        let (url, settings) = split("postgres://u@db/x?sslmode=verify-ca").unwrap();
        assert_eq!(url, "postgres://u@db/x?sslmode=require");
        assert_eq!(
            (settings.mode, settings.root_cert),
            (SslMode::VerifyCa, None)
        );
    }

    #[test]
    fn without_sslmode_tls_is_preferred_as_libpq_does() {
        let (url, settings) = split("postgres://u@db/x").unwrap();
        assert_eq!(url, "postgres://u@db/x");
        assert_eq!(settings.mode, SslMode::Prefer);
        let (url, settings) = split("postgres://u@db/x?sslmode=disable").unwrap();
        assert_eq!(url, "postgres://u@db/x?sslmode=disable");
        assert_eq!(settings.mode, SslMode::Disable);
    }

    #[test]
    fn require_with_a_root_certificate_checks_the_chain_like_libpq() {
        let (_, settings) = split("postgres://u@db/x?sslmode=require&sslrootcert=ca.pem").unwrap();
        assert_eq!(settings.mode, SslMode::VerifyCa);
    }

    #[test]
    fn an_unknown_sslmode_is_named() {
        let error = split("postgres://u:secret@db/x?sslmode=allow-ish").unwrap_err();
        assert!(error.contains("sslmode `allow-ish`"), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn a_missing_or_empty_root_certificate_file_is_named() {
        let missing = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
        };
        let error = connector(&missing).err().expect("no file").to_string();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = connector(&TlsSettings {
            mode: SslMode::VerifyCa,
            root_cert: Some(empty),
        })
        .err()
        .expect("no certificate")
        .to_string();
        assert!(error.contains("no PEM certificate"), "{error}");
        assert!(
            connector(&TlsSettings {
                mode: SslMode::Require,
                root_cert: None
            })
            .is_ok()
        );
    }
}
