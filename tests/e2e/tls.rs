//! TLS and HTTP/2 at the edge and to backends, through the real binary: certificates are
//! generated here (rcgen), clients are rustls (tokio-rustls, hyper, h2) and curl when installed.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::{Backend, DEADLINE, Proxy};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::Message;

/// A certificate authority that signs leaf certificates for the test.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `names` (DNS names, or IP addresses), signed by this CA: (cert PEM, key PEM).
    fn leaf(&self, names: &[&str], client: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write_leaf(&self, dir: &Path, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(names, false);
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        (cert_path, key_path)
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.pem()).unwrap();
        path
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(ca: &Ca, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `address`, asking for `sni`, offering `alpn`.
async fn tls_connect(
    address: SocketAddr,
    ca: &Ca,
    sni: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(address).await.unwrap();
    TlsConnector::from(client_config(ca, alpn))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .expect("the TLS handshake succeeds")
}

/// The DNS names of the certificate the server presented.
fn presented_names(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<String> {
    let (_, connection) = stream.get_ref();
    let leaf = &connection.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect()
}

/// GET `path` over HTTP/2 (ALPN h2) on a fresh TLS connection: (status, body, x-backend).
async fn h2_get(address: SocketAddr, ca: &Ca, sni: &str, path: &str) -> (u16, String) {
    let stream = tls_connect(address, ca, sni, &[b"h2"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("https://{sni}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// GET `path` over HTTP/1.1 on a fresh TLS connection: (status, body, x-strangler-error).
async fn h1_get(
    address: SocketAddr,
    ca: &Ca,
    sni: &str,
    path: &str,
) -> (u16, String, Option<String>) {
    let stream = tls_connect(address, ca, sni, &[b"http/1.1"]).await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", sni)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    let error = response
        .headers()
        .get("x-strangler-error")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), error)
}

/// A proxy with a plain listener (`Ports::listen`) and a TLS one (returned), serving
/// `certificates` (YAML flow list) on it; `rest` is everything after `server`.
async fn start_tls_proxy(
    dir: tempfile::TempDir,
    certificates: &str,
    rest: &str,
) -> (Proxy, SocketAddr) {
    let tls = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let proxy = Proxy::with(rest);
    let listeners = format!(
        "    - {plain}\n    - address: {tls}\n      tls:\n        certificates: {certificates}\n",
        plain = proxy.ports.listen,
    );
    let proxy = proxy
        .listeners(&listeners)
        .threads(2)
        .in_dir(dir)
        .start()
        .await;
    (proxy, tls)
}

/// Polls TLS handshakes with `shop.test` on `tls` until the certificate presented names `names`.
async fn wait_for_names(tls: SocketAddr, ca: &Ca, names: &[&str]) {
    let what = format!("a certificate for {names:?} served");
    support::eventually(&what, || async {
        let stream = tls_connect(tls, ca, "shop.test", &[b"http/1.1"]).await;
        match presented_names(&stream) {
            presented if presented == names => Ok(()),
            presented => Err(format!("{presented:?}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn https_and_h2_clients_reach_an_http1_backend_through_a_tls_listener() {
    let backend = Backend::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("edge ca");
    let (cert, key) = ca.write_leaf(dir.path(), "shop", &["shop.test"]);
    let (proxy, tls) = start_tls_proxy(
        dir,
        &format!("[{{ cert: {}, key: {} }}]", cert.display(), key.display()),
        &format!(
            "upstreams:\n  legacy: {{ backends: ['{}'] }}\ndefault_upstream: legacy\n",
            backend.address
        ),
    )
    .await;

    let (status, body) = h2_get(tls, &ca, "shop.test", "/api/items?page=2").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"target\":\"/api/items?page=2\""), "{body}");
    let seen = backend.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    let (status, body, _) = h1_get(tls, &ca, "shop.test", "/plain-h1").await;
    assert_eq!(status, 200);
    assert!(body.contains("/plain-h1"), "{body}");

    // The plain listener still serves beside the TLS one.
    assert_eq!(proxy.get("/still-plain").await.status, 200);

    // curl, when installed, negotiates h2 with ALPN as browsers do.
    let ca_file = proxy.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    if let Ok(output) = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg("--cacert")
        .arg(&ca_file)
        .arg("--resolve")
        .arg(format!("shop.test:{}:127.0.0.1", tls.port()))
        .arg(format!("https://shop.test:{}/from-curl", tls.port()))
        .output()
        .await
    {
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "2 200",
            "curl: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_picks_the_certificate_naming_the_host_and_the_first_answers_the_rest() {
    let backend = Backend::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("edge ca");
    let (a_cert, a_key) = ca.write_leaf(dir.path(), "a", &["a.test"]);
    let (b_cert, b_key) = ca.write_leaf(dir.path(), "b", &["*.b.test"]);
    let (_proxy, tls) = start_tls_proxy(
        dir,
        &format!(
            "[{{ cert: {}, key: {} }}, {{ cert: {}, key: {} }}]",
            a_cert.display(),
            a_key.display(),
            b_cert.display(),
            b_key.display()
        ),
        &format!(
            "upstreams:\n  legacy: {{ backends: ['{}'] }}\ndefault_upstream: legacy\n",
            backend.address
        ),
    )
    .await;
    let b = tls_connect(tls, &ca, "api.b.test", &[b"http/1.1"]).await;
    assert_eq!(presented_names(&b), ["*.b.test"]);
    let a = tls_connect(tls, &ca, "a.test", &[b"http/1.1"]).await;
    assert_eq!(presented_names(&a), ["a.test"]);
    // A name no certificate lists gets the first one (the client then refuses it).
    let tcp = TcpStream::connect(tls).await.unwrap();
    let refused = TlsConnector::from(client_config(&ca, &[]))
        .connect(ServerName::try_from("other.test").unwrap(), tcp)
        .await;
    assert!(
        refused.is_err(),
        "a.test's certificate does not name other.test"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_is_served_after_its_files_change_without_a_restart() {
    let backend = Backend::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("edge ca");
    let (cert, key) = ca.write_leaf(dir.path(), "tls", &["old.test", "shop.test"]);
    let (proxy, tls) = start_tls_proxy(
        dir,
        &format!("[{{ cert: {}, key: {} }}]", cert.display(), key.display()),
        &format!(
            "upstreams:\n  legacy: {{ backends: ['{}'] }}\ndefault_upstream: legacy\n",
            backend.address
        ),
    )
    .await;
    // A connection opened before the rotation keeps working through it.
    let before = tls_connect(tls, &ca, "shop.test", &[b"http/1.1"]).await;
    assert_eq!(presented_names(&before), ["old.test", "shop.test"]);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(before))
        .await
        .unwrap();
    tokio::spawn(connection);

    // A half-done rotation (a new certificate, the old key) is refused; the old pair serves on.
    let (new_cert, new_key) = ca.leaf(&["new.test", "shop.test"], false);
    std::fs::write(&cert, &new_cert).unwrap();
    support::eventually("the mismatched pair looked at", || async {
        match proxy.stderr() {
            log if log.contains("certificates not reloaded") => Ok(()),
            log => Err(log),
        }
    })
    .await;
    let still = tls_connect(tls, &ca, "shop.test", &[b"http/1.1"]).await;
    assert_eq!(presented_names(&still), ["old.test", "shop.test"]);

    std::fs::write(&key, &new_key).unwrap();
    wait_for_names(tls, &ca, &["new.test", "shop.test"]).await;
    let request = http::Request::get("/after-rotation")
        .header("host", "shop.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200, "the old connection was not dropped");
}

/// An HTTPS backend (HTTP/1.1 and h2 by ALPN) answering with the protocol it spoke; with
/// `client_ca`, it requires a client certificate that CA signed.
async fn https_backend(ca: &Ca, client_ca: Option<&Ca>) -> SocketAddr {
    let (cert, key) = ca.leaf(&["backend.test", "127.0.0.1"], false);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(client_ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(client_ca.roots()),
                provider(),
            )
            .build()
            .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let client_cert = stream.get_ref().1.peer_certificates().is_some();
                let service = service_fn(move |request: http::Request<Incoming>| async move {
                    let body = format!(
                        "{{\"version\":\"{:?}\",\"path\":\"{}\",\"client_cert\":{client_cert}}}",
                        request.version(),
                        request.uri().path()
                    );
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                });
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_backend_is_verified_with_its_ca_and_a_wrong_ca_is_a_502_upstream_tls() {
    let backend_ca = Ca::new("backend ca");
    let other_ca = Ca::new("some other ca");
    // One backend for the three upstreams: each must get connections of its own (Pingora's
    // pool keys on address and name; the upstream's protocol and CA are added to it).
    let backend = https_backend(&backend_ca, None).await;
    let dir = tempfile::tempdir().unwrap();
    let good = backend_ca.write(dir.path(), "backend-ca");
    let bad = other_ca.write(dir.path(), "other-ca");
    let proxy = Proxy::start(&format!(
        r#"upstreams:
  legacy:
    backends: ['{backend}']
    tls: {{ sni: backend.test, ca_file: {good} }}
  legacy-h2:
    backends: ['{backend}']
    protocol: h2
    tls: {{ sni: backend.test, ca_file: {good} }}
  wrong-ca:
    backends: ['{backend}']
    tls: {{ sni: backend.test, ca_file: {bad} }}
    retries: 0
    passive: {{ consecutive_failures: 0 }}
default_upstream: legacy
routes:
  - {{ name: h2, match: {{ path_prefix: /h2 }}, upstream: legacy-h2 }}
  - {{ name: wrong, match: {{ path_prefix: /wrong }}, upstream: wrong-ca }}
"#,
        good = good.display(),
        bad = bad.display(),
    ))
    .await;

    let response = proxy.get("/verified").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response.text().contains("\"version\":\"HTTP/1.1\""),
        "{}",
        response.text()
    );

    let response = proxy.get("/h2/stream").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response.text().contains("\"version\":\"HTTP/2.0\""),
        "{}",
        response.text()
    );

    let response = proxy.get("/wrong/ca").await;
    assert_eq!(response.status, 502);
    assert_eq!(response.header("x-strangler-error"), Some("upstream_tls"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_that_requires_mtls_gets_the_upstreams_client_certificate() {
    let backend_ca = Ca::new("backend ca");
    let client_ca = Ca::new("client ca");
    let backend = https_backend(&backend_ca, Some(&client_ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = backend_ca.write(dir.path(), "backend-ca");
    let (client_cert, client_key) = client_ca.leaf(&["strangler.test"], true);
    let cert_path = dir.path().join("client.crt");
    let key_path = dir.path().join("client.key");
    std::fs::write(&cert_path, client_cert).unwrap();
    std::fs::write(&key_path, client_key).unwrap();
    let proxy = Proxy::start(&format!(
        r#"upstreams:
  legacy:
    backends: ['{backend}']
    tls: {{ sni: backend.test, ca_file: {ca}, client_cert: {cert}, client_key: {key} }}
  anonymous:
    backends: ['{backend}']
    tls: {{ sni: backend.test, ca_file: {ca} }}
    retries: 0
    passive: {{ consecutive_failures: 0 }}
default_upstream: legacy
routes:
  - {{ name: anonymous, match: {{ path_prefix: /anonymous }}, upstream: anonymous }}
"#,
        ca = ca.display(),
        cert = cert_path.display(),
        key = key_path.display(),
    ))
    .await;
    let response = proxy.get("/with-cert").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response.text().contains("\"client_cert\":true"),
        "{}",
        response.text()
    );
    let response = proxy.get("/anonymous").await;
    assert_eq!(response.status, 502, "{}", response.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_and_http1_requests_are_shadowed_to_an_https_candidate_and_diffed_the_same_way() {
    let legacy = Backend::start("legacy").await;
    let candidate_ca = Ca::new("candidate ca");
    let candidate = https_backend(&candidate_ca, None).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("edge ca");
    let (cert, key) = ca.write_leaf(dir.path(), "shop", &["shop.test"]);
    let candidate_ca_file = candidate_ca.write(dir.path(), "candidate-ca");
    let (proxy, tls) = start_tls_proxy(
        dir,
        &format!("[{{ cert: {}, key: {} }}]", cert.display(), key.display()),
        &format!(
            r#"upstreams:
  legacy: {{ backends: ['{}'] }}
  candidate:
    backends: ['{candidate}']
    tls: {{ sni: backend.test, ca_file: {} }}
default_upstream: legacy
routes:
  - name: mirrored
    stage: shadow
    match: {{ path_prefix: /api }}
    upstream: legacy
    shadow: {{ upstream: candidate }}
"#,
            legacy.address,
            candidate_ca_file.display()
        ),
    )
    .await;
    let (status, _) = h2_get(tls, &ca, "shop.test", "/api/over-h2").await;
    assert_eq!(status, 200);
    let (status, _, _) = h1_get(tls, &ca, "shop.test", "/api/over-h1").await;
    assert_eq!(status, 200);
    // Both copies reached the HTTPS candidate and were compared (they differ: other bodies).
    proxy
        .wait_for_metric(
            "strangler_diffs_total{result=\"mismatch\",route=\"mirrored\"}",
            2.0,
        )
        .await;
}

/// A WebSocket echo server.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() {
                        let _ = socket.send(message).await;
                    }
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_passes_through_a_tls_listener_over_http1_and_is_never_shadowed() {
    let echo = websocket_echo().await;
    let candidate = Backend::start("candidate").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("edge ca");
    let (cert, key) = ca.write_leaf(dir.path(), "shop", &["shop.test"]);
    let (_proxy, tls) = start_tls_proxy(
        dir,
        &format!("[{{ cert: {}, key: {} }}]", cert.display(), key.display()),
        &format!(
            "upstreams:\n  legacy: {{ backends: ['{echo}'] }}\n  candidate: {{ backends: ['{}'] }}\ndefault_upstream: legacy\nroutes:\n  - name: ws\n    match: {{ path_prefix: /ws }}\n    upstream: legacy\n    shadow: {{ upstream: candidate, methods: [GET] }}\n",
            candidate.address
        ),
    )
    .await;
    // Browsers open WebSockets over HTTP/1.1: the client offers only http/1.1.
    let stream = tls_connect(tls, &ca, "shop.test", &[b"http/1.1"]).await;
    let (mut socket, response) = tokio_tungstenite::client_async("wss://shop.test/ws/chat", stream)
        .await
        .expect("the upgrade succeeds through the TLS listener");
    assert_eq!(response.status(), 101);
    socket.send(Message::text("over tls")).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, socket.next())
        .await
        .expect("an echo in time")
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "over tls");
    socket.close(None).await.unwrap();
    assert_eq!(candidate.count(), 0, "an upgrade is never mirrored");
}

/// A proxy whose plain listener also takes HTTP/2 with prior knowledge (h2c), in front of
/// `backend`; for the HTTP/2 abuse tests, which speak raw h2.
async fn start_h2c_proxy(backend: SocketAddr) -> Proxy {
    let proxy = Proxy::with(format!(
        "upstreams:\n  legacy: {{ backends: ['{backend}'] }}\ndefault_upstream: legacy\n"
    ));
    let listeners = format!("    - address: {}\n      h2c: true\n", proxy.ports.listen);
    proxy.listeners(&listeners).threads(2).start().await
}

/// An h2 client connection over h2c; the connection is driven in the background and its end
/// (the error it ended with, if any) is sent on the returned channel.
async fn h2c_client(
    address: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::sync::oneshot::Receiver<Result<(), h2::Error>>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let tcp = TcpStream::connect(address).await.unwrap();
    let (sender, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    let limit = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = limit.clone();
    tokio::spawn(async move {
        let result = std::future::poll_fn(|cx| {
            // Read after the poll: the one that processes the server's SETTINGS may be the
            // last for a while (a read before it saw the value of the poll before).
            let polled = std::pin::Pin::new(&mut connection).poll(cx);
            seen.store(
                connection.max_concurrent_send_streams(),
                std::sync::atomic::Ordering::Relaxed,
            );
            polled
        })
        .await;
        let _ = ended_tx.send(result);
    });
    (sender, ended, limit)
}

fn h2_request(path: &str) -> http::Request<()> {
    http::Request::get(format!("http://strangler.test{path}"))
        .body(())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_client_is_served_and_told_the_concurrent_stream_limit() {
    let backend = Backend::start("legacy").await;
    let proxy = start_h2c_proxy(backend.address).await;
    let (sender, _ended, limit) = h2c_client(proxy.address).await;
    let mut sender = sender.ready().await.unwrap();
    let (response, _) = sender.send_request(h2_request("/over-h2c"), true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(backend.last().target, "/over-h2c");
    // The connection task notes the limit just after the poll that woke this response.
    support::eventually("SETTINGS_MAX_CONCURRENT_STREAMS of 100", || async {
        match limit.load(std::sync::atomic::Ordering::Relaxed) {
            100 => Ok(()),
            other => Err(other),
        }
    })
    .await;
    // HTTP/1.1 still works on the same listener.
    assert_eq!(proxy.get("/over-h1").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2_header_list_over_max_header_bytes_is_refused_before_the_backend() {
    let backend = Backend::start("legacy").await;
    let proxy = start_h2c_proxy(backend.address).await;
    let (sender, _ended, _) = h2c_client(proxy.address).await;
    let mut sender = sender.ready().await.unwrap();
    // 80 KiB of headers; the default limit is 64 KiB.
    let mut request = h2_request("/huge-headers");
    for index in 0..20 {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-filler-{index}").as_bytes()).unwrap(),
            http::HeaderValue::from_str(&"a".repeat(4096)).unwrap(),
        );
    }
    let (response, _) = sender.send_request(request, true).unwrap();
    match tokio::time::timeout(DEADLINE, response).await.unwrap() {
        Ok(response) => assert_eq!(response.status(), 431),
        Err(error) => assert!(
            error.is_remote(),
            "refused by the server, not the client: {error}"
        ),
    }
    assert_eq!(backend.count(), 0);
    // The proxy is fine, and so are other clients.
    assert_eq!(proxy.get("/after").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn rapidly_reset_h2_streams_end_the_connection_and_others_are_served() {
    let backend = Backend::start("legacy").await;
    let proxy = start_h2c_proxy(backend.address).await;
    let (sender, ended, _) = h2c_client(proxy.address).await;
    let mut sender = sender;
    let started = Instant::now();
    // CVE-2023-44487: open a stream, reset it at once, again and again.
    let mut sent = 0;
    for _ in 0..5000 {
        let Ok(ready) = sender.clone().ready().await else {
            break;
        };
        sender = ready;
        let Ok((_response, mut stream)) = sender.send_request(h2_request("/reset"), false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let ended = tokio::time::timeout(DEADLINE, ended)
        .await
        .expect("the server ends the connection")
        .unwrap();
    let error = ended.expect_err("ended by the server");
    // The server sends GOAWAY and closes; a client still writing its next reset may see the
    // closed socket (broken pipe, reset) before it reads the GOAWAY.
    assert!(
        error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
            || error.is_go_away()
            || error.is_io(),
        "{error} after {sent} resets in {:?}",
        started.elapsed()
    );
    assert!(sent < 5000, "the connection outlived 5000 resets");
    eprintln!("GOAWAY after {sent} reset streams ({error})");
    // Others are served as before.
    assert_eq!(proxy.get("/after-the-flood").await.status, 200);
}

/// An HPACK "literal without indexing, new name" field: `name: value`.
fn hpack_literal(name: &str, value_len: usize) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, prefix_bits: u8, value: usize) {
        let max = (1usize << prefix_bits) - 1;
        if value < max {
            out.push(value as u8);
            return;
        }
        out.push(max as u8);
        let mut rest = value - max;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }
    let mut out = vec![0x00];
    integer(&mut out, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    integer(&mut out, 7, value_len);
    out.extend(std::iter::repeat_n(b'a', value_len));
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_continuation_flood_is_cut_off_long_before_it_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let backend = Backend::start("legacy").await;
    let proxy = start_h2c_proxy(backend.address).await;
    let mut tcp = TcpStream::connect(proxy.address).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&frame(0x4, 0, 0, &[])).await.unwrap(); // SETTINGS
    // A request's HEADERS without END_HEADERS, then CONTINUATION frames that never end it:
    // 4 KiB each, up to 40 MiB in all if nobody stops it.
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/flood"),
        (":authority", "strangler.test"),
    ] {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    tcp.write_all(&frame(0x1, 0x1, 1, &block)).await.unwrap(); // HEADERS, END_STREAM
    let continuation = frame(0x9, 0, 1, &hpack_literal("x-flood", 4000));
    let (mut reader, mut writer) = tcp.into_split();
    let flood = tokio::spawn(async move {
        let mut written = 0usize;
        for _ in 0..10_000 {
            if writer.write_all(&continuation).await.is_err() {
                break;
            }
            written += continuation.len();
        }
        written
    });
    // The server answers with GOAWAY (frame type 7) or closes the connection.
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let verdict = tokio::time::timeout(DEADLINE, async {
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return "closed",
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
            // Walk the frames received so far for a GOAWAY.
            let mut at = 0;
            while at + 9 <= received.len() {
                let len = (usize::from(received[at]) << 16)
                    | (usize::from(received[at + 1]) << 8)
                    | usize::from(received[at + 2]);
                if received[at + 3] == 0x7 {
                    return "goaway";
                }
                at += 9 + len;
            }
        }
    })
    .await
    .expect("the server stops the flood");
    let written = tokio::time::timeout(DEADLINE, flood)
        .await
        .unwrap()
        .unwrap();
    assert!(
        written < 40_000_000,
        "the whole flood was taken in ({written} bytes; {verdict})"
    );
    assert_eq!(backend.count(), 0, "no request reached the backend");
    eprintln!("CONTINUATION flood: {verdict} after {written} bytes written");
    assert_eq!(proxy.get("/after-the-flood").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mismatched_or_expired_certificate_is_a_located_error_and_a_reload_to_it_is_refused() {
    let backend = Backend::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("edge ca");
    let (cert, key) = ca.write_leaf(dir.path(), "good", &["shop.test"]);
    let (_, other_key) = ca.write_leaf(dir.path(), "other", &["other.test"]);
    let expired_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["shop.test".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = params.self_signed(&expired_key).unwrap();
    let expired_cert = dir.path().join("expired.crt");
    let expired_key_path = dir.path().join("expired.key");
    std::fs::write(&expired_cert, expired.pem()).unwrap();
    std::fs::write(&expired_key_path, expired_key.serialize_pem()).unwrap();

    // `strangler validate` names the field, its line and the file.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        format!(
            "server:\n  listen:\n    - 127.0.0.1:0\n    - address: 127.0.0.1:1\n      tls:\n        certificates:\n          - {{ cert: {}, key: {} }}\n          - cert: {}\n            key: {}\nupstreams:\n  legacy: {{ backends: ['{}'] }}\ndefault_upstream: legacy\n",
            cert.display(),
            other_key.display(),
            expired_cert.display(),
            expired_key_path.display(),
            backend.address
        ),
    )
    .unwrap();
    let (code, stdout, stderr) =
        support::run_cli(&["validate", broken.to_str().unwrap()], dir.path());
    let output = format!("{stdout}{stderr}");
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(":7:")
            && output.contains("server.listen[1].tls.certificates[0].key")
            && output.contains("other.key")
            && output.contains("does not match"),
        "{output}"
    );
    assert!(
        output.contains("server.listen[1].tls.certificates[1].cert")
            && output.contains("expired.crt expired"),
        "{output}"
    );
    // CI machines without the files: --no-resolve skips reading them.
    let (code, _, stderr) = support::run_cli(
        &["validate", "--no-resolve", broken.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code, 0, "{stderr}");

    // A running proxy refuses a reload to a mismatched pair and keeps serving its certificate.
    let (proxy, tls) = start_tls_proxy(
        dir,
        &format!("[{{ cert: {}, key: {} }}]", cert.display(), key.display()),
        &format!(
            "upstreams:\n  legacy: {{ backends: ['{}'] }}\ndefault_upstream: legacy\n",
            backend.address
        ),
    )
    .await;
    let config = std::fs::read_to_string(proxy.config_path()).unwrap();
    std::fs::write(
        proxy.config_path(),
        config.replace(
            &format!("key: {}", key.display()),
            &format!("key: {}", other_key.display()),
        ),
    )
    .unwrap();
    let response = support::send(
        proxy.admin,
        support::ClientRequest::new("POST", "/reload").header("x-strangler-admin", "1"),
    )
    .await
    .unwrap();
    assert_eq!(response.json()["result"], "invalid", "{}", response.text());
    assert!(
        response.text().contains("does not match"),
        "{}",
        response.text()
    );
    let stream = tls_connect(tls, &ca, "shop.test", &[b"http/1.1"]).await;
    assert_eq!(presented_names(&stream), ["shop.test"]);
    let (status, _, _) = h1_get(tls, &ca, "shop.test", "/still-serving").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_probe_an_https_backend_with_the_upstreams_tls_settings() {
    let backend_ca = Ca::new("backend ca");
    let other_ca = Ca::new("other ca");
    let backend = https_backend(&backend_ca, None).await;
    let dir = tempfile::tempdir().unwrap();
    let good = backend_ca.write(dir.path(), "backend-ca");
    let bad = other_ca.write(dir.path(), "other-ca");
    let check = "{ path: /health, interval: 100ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1 }";
    let proxy = Proxy::start(&format!(
        r#"upstreams:
  legacy:
    backends: ['{backend}']
    tls: {{ sni: backend.test, ca_file: {good} }}
    health_check: {check}
  distrusted:
    backends: ['{backend}']
    tls: {{ sni: backend.test, ca_file: {bad} }}
    health_check: {check}
default_upstream: legacy
routes:
  - {{ name: distrusted, match: {{ path_prefix: /distrusted }}, upstream: distrusted }}
"#,
        good = good.display(),
        bad = bad.display(),
    ))
    .await;
    // The probe that cannot verify takes its backend out: 503, not a 502 per request.
    let response = support::eventually("the distrusted backend taken out", || async {
        match proxy.get("/distrusted").await {
            response if response.status == 503 => Ok(response),
            response => Err(response.status),
        }
    })
    .await;
    assert_eq!(
        response.header("x-strangler-error"),
        Some("no_healthy_backend")
    );
    // The verified one stays in and serves.
    assert_eq!(proxy.get("/served").await.status, 200);
}

/// A plain HTTP/2 (prior knowledge) backend answering with the protocol it spoke.
async fn h2c_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|request: http::Request<Incoming>| async move {
                    let body = format!("{{\"version\":\"{:?}\"}}", request.version());
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        body,
                    ))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_upstream_is_spoken_to_in_http2_by_the_proxy_and_the_shadow() {
    let legacy = Backend::start("legacy").await;
    let backend = h2c_backend().await;
    let candidate = h2c_backend().await;
    let proxy = Proxy::start(&format!(
        r#"upstreams:
  legacy: {{ backends: ['{}'] }}
  grpc-gateway: {{ backends: ['{backend}'], protocol: h2c }}
  candidate: {{ backends: ['{candidate}'], protocol: h2c }}
default_upstream: legacy
routes:
  - {{ name: gateway, match: {{ path_prefix: /gw }}, upstream: grpc-gateway }}
  - name: mirrored
    stage: shadow
    match: {{ path_prefix: /api }}
    upstream: legacy
    shadow: {{ upstream: candidate }}
"#,
        legacy.address
    ))
    .await;
    let response = proxy.get("/gw/x").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "{\"version\":\"HTTP/2.0\"}");
    assert_eq!(proxy.get("/api/y").await.status, 200);
    proxy
        .wait_for_metric(
            "strangler_diffs_total{result=\"mismatch\",route=\"mirrored\"}",
            1.0,
        )
        .await;
}

/// A PROXY protocol v2 header for a TCP/IPv4 connection from `client` to `server`.
fn proxy_v2_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(client), SocketAddr::V4(server)) = (client, server) else {
        panic!("IPv4 only");
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&client.ip().octets());
    header.extend_from_slice(&server.ip().octets());
    header.extend_from_slice(&client.port().to_be_bytes());
    header.extend_from_slice(&server.port().to_be_bytes());
    header
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_protocol_header_from_a_trusted_balancer_names_the_client_before_tls() {
    use tokio::io::AsyncWriteExt;

    let backend = Backend::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("edge ca");
    let (cert, key) = ca.write_leaf(dir.path(), "shop", &["shop.test"]);
    let tls = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let proxy = Proxy::with(format!(
        "upstreams:\n  legacy: {{ backends: ['{}'] }}\ndefault_upstream: legacy\n",
        backend.address
    ));
    let listeners = format!(
        "    - {{ address: {plain}, proxy_protocol: true }}\n    - address: {tls}\n      proxy_protocol: true\n      tls: {{ certificates: [{{ cert: {cert}, key: {key} }}] }}\n",
        plain = proxy.ports.listen,
        cert = cert.display(),
        key = key.display(),
    );
    let proxy = proxy
        .server("  trusted_proxies: [127.0.0.1]\n")
        .listeners(&listeners)
        .in_dir(dir)
        .start()
        .await;
    let client: SocketAddr = "203.0.113.7:40000".parse().unwrap();

    // Plain: the header, then the request.
    let mut tcp = TcpStream::connect(proxy.address).await.unwrap();
    tcp.write_all(&proxy_v2_header(client, proxy.address))
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/plain")
        .header("host", "shop.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        backend.last().header("x-forwarded-for"),
        Some("203.0.113.7")
    );

    // TLS: the header comes before the handshake.
    let mut tcp = TcpStream::connect(tls).await.unwrap();
    tcp.write_all(&proxy_v2_header(client, tls)).await.unwrap();
    let stream = TlsConnector::from(client_config(&ca, &[b"h2"]))
        .connect(ServerName::try_from("shop.test").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("https://shop.test/over-tls")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = backend.last();
    assert_eq!(seen.target, "/over-tls");
    assert_eq!(seen.header("x-forwarded-for"), Some("203.0.113.7"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    // Without a header, a trusted peer's connection is refused, not misread.
    let status = support::send_raw(proxy.address, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_ne!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_rotated_the_way_kubernetes_swaps_a_secret_is_served() {
    use std::os::unix::fs::symlink;

    let backend = Backend::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("edge ca");
    // The kubelet's layout: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>/
    let secret = dir.path().join("secret");
    let first = secret.join("..2026_12_02_first");
    std::fs::create_dir_all(&first).unwrap();
    let (cert, key) = ca.leaf(&["first.test", "shop.test"], false);
    std::fs::write(first.join("tls.crt"), cert).unwrap();
    std::fs::write(first.join("tls.key"), key).unwrap();
    symlink("..2026_12_02_first", secret.join("..data")).unwrap();
    symlink("..data/tls.crt", secret.join("tls.crt")).unwrap();
    symlink("..data/tls.key", secret.join("tls.key")).unwrap();
    let (_proxy, tls) = start_tls_proxy(
        dir,
        &format!(
            "[{{ cert: {}, key: {} }}]",
            secret.join("tls.crt").display(),
            secret.join("tls.key").display()
        ),
        &format!(
            "upstreams:\n  legacy: {{ backends: ['{}'] }}\ndefault_upstream: legacy\n",
            backend.address
        ),
    )
    .await;
    let stream = tls_connect(tls, &ca, "shop.test", &[b"http/1.1"]).await;
    assert_eq!(presented_names(&stream), ["first.test", "shop.test"]);

    // The renewal: a new timestamped directory, then `..data` swapped to it in one rename.
    let second = secret.join("..2026_12_02_second");
    std::fs::create_dir_all(&second).unwrap();
    let (cert, key) = ca.leaf(&["second.test", "shop.test"], false);
    std::fs::write(second.join("tls.crt"), cert).unwrap();
    std::fs::write(second.join("tls.key"), key).unwrap();
    symlink("..2026_12_02_second", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    wait_for_names(tls, &ca, &["second.test", "shop.test"]).await;
}
