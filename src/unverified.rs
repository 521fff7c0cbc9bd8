//! The one certificate verifier that authenticates nothing, shared by the two TLS clients that
//! need it: a backend with `verify: false` ([`crate::tls`]) and the diff store's Postgres
//! connection at `sslmode` `prefer`/`require` ([`crate::store`]). A leaf: it imports only rustls,
//! so both can use it without an import cycle (`config` depends on `store`, `tls` on `config`).

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

/// Accepts any certificate (the handshake's signatures are still checked): a backend's
/// `verify: false`, and the diff store's Postgres `sslmode` `prefer`/`require`
/// ([`crate::store`]), which ask for encryption without authentication.
#[derive(Debug)]
pub struct NoVerification(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
