//! The shadow's own HTTP client: Pingora's HTTP connector (the one the proxy forwards with),
//! with a connection pool of its own, separate from the primary's, and every exchange bounded in
//! time and in how much of the answer is read.
//!
//! A copy goes to one backend's ready-made [`HttpPeer`](pingora_core::upstreams::peer::HttpPeer)
//! (see [`crate::upstream`]): its timeouts, TLS settings and ALPN are the ones requests use, so
//! plain, TLS and h2c candidates all go the same way. The exchange runs inline in the copy's task
//! with a pooled connection: no connection task, no channel hop (hyper's pooled client cost
//! ~30 µs of CPU per copy in those, see docs/performance.md).
//!
//! The request header is written as the copy's rules made it, fitted to the connection the
//! backend gave: HTTP/1.1 in origin-form with a `Host` (the client's, else the target's
//! authority, else the backend's address), or HTTP/2 with that authority as `:authority` and
//! without HTTP/1-only headers.
//!
//! A connection goes back to the pool only after an answer read to its end; one given up on
//! (truncated at the limit, timed out, failed) is closed, since unread bytes would be the next
//! copy's answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderValue, Version};
use pingora_core::connectors::ConnectorOptions;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_http::RequestHeader;

use crate::exchange::{Body, CapturedResponse, Reservation, ShadowFailure};
use crate::upstream::{Backend, UpstreamPool};

/// One copy ready to leave: its header and whole body, and the backend it goes to.
pub struct ShadowRequest {
    pub(super) header: RequestHeader,
    pub(super) body: Bytes,
    /// Held for the exchange: the backend's peer is borrowed from it, not cloned.
    pub(super) pool: Arc<UpstreamPool>,
    pub(super) backend: usize,
}

#[derive(Clone)]
pub struct ShadowClient {
    connector: Arc<Connector>,
}

impl ShadowClient {
    /// A client keeping at most `idle_connections` idle connections (over all backends).
    pub fn new(idle_connections: usize) -> Self {
        let options = ConnectorOptions::new(idle_connections.max(1));
        Self {
            connector: Arc::new(Connector::new(Some(options))),
        }
    }

    /// Sends `request` and reads at most `limit` bytes of the answer, all within `timeout`,
    /// holding what it keeps against `memory`. Reading stops at the limit: an endless body
    /// costs `limit` bytes, not more.
    pub async fn send(
        &self,
        request: ShadowRequest,
        timeout: Duration,
        limit: usize,
        memory: &mut Reservation,
    ) -> Result<CapturedResponse, ShadowFailure> {
        // A timed-out exchange is dropped whole, its connection with it. The exchange lives
        // on the heap: Pingora's connect and read futures make it ~10 KiB, and held inline
        // they made every copy's task (two of these, joined) ~22 KiB, moved whole several
        // times on the proxy thread per copy; boxing it cut ~6 % of a shadowed request's CPU
        // (docs/performance.md).
        tokio::time::timeout(timeout, Box::pin(self.exchange(request, limit, memory)))
            .await
            .unwrap_or(Err(ShadowFailure::Timeout))
    }

    async fn exchange(
        &self,
        request: ShadowRequest,
        limit: usize,
        memory: &mut Reservation,
    ) -> Result<CapturedResponse, ShadowFailure> {
        let ShadowRequest {
            mut header,
            body,
            pool,
            backend,
        } = request;
        let backend = &pool.backends()[backend];
        let peer = backend.peer();
        let (mut session, _reused) = self
            .connector
            .get_http_session(peer)
            .await
            .map_err(failed)?;

        match &mut session {
            HttpSession::H1(h1) => {
                fit_to_http1(&mut header, backend)?;
                h1.write_request_header(Box::new(header))
                    .await
                    .map_err(failed)?;
                if !body.is_empty() {
                    h1.write_body(&body).await.map_err(failed)?;
                }
                h1.finish_body().await.map_err(failed)?;
                // Interim answers (100 Continue, 103 Early Hints) come before the real one.
                loop {
                    h1.read_response().await.map_err(failed)?;
                    match h1.get_status() {
                        Some(status)
                            if status.is_informational()
                                && status != http::StatusCode::SWITCHING_PROTOCOLS => {}
                        _ => break,
                    }
                }
            }
            HttpSession::H2(h2) => {
                fit_to_http2(&mut header, backend, peer.is_tls())?;
                let end = body.is_empty();
                h2.write_request_header(Box::new(header), end)
                    .map_err(failed)?;
                if !end {
                    h2.write_request_body(body, true).await.map_err(failed)?;
                }
                // The h2 crate passes over interim answers itself.
                h2.read_response_header().await.map_err(failed)?;
            }
            HttpSession::Custom(_) => {
                return Err(ShadowFailure::Failed(
                    "the candidate negotiated a custom protocol".to_owned(),
                ));
            }
        }
        let answer = session
            .response_header()
            .expect("a response header was read");
        let (status, headers) = (answer.status, answer.headers.clone());

        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
        let mut capture = Capture::new(declared, limit, memory)?;
        loop {
            let full = match (&mut session, capture.presized()) {
                // Into the presized buffer straight from the connection's: one copy.
                (HttpSession::H1(h1), true) => match h1.read_body_ref().await.map_err(failed)? {
                    Some(data) => capture.copy(data)?,
                    None => break,
                },
                _ => match session.read_response_body().await.map_err(failed)? {
                    Some(data) => capture.keep(data)?,
                    None => break,
                },
            };
            if full {
                // The rest is never read: the connection is closed with the session.
                return Ok(capture.finish(status, headers, true));
            }
            if session.response_done() {
                break;
            }
        }
        self.connector
            .release_http_session(session, peer, peer.options.idle_timeout)
            .await;
        Ok(capture.finish(status, headers, false))
    }
}

fn failed(error: Box<pingora_error::Error>) -> ShadowFailure {
    ShadowFailure::Failed(error.to_string())
}

/// The copy as an HTTP/1.1 request: origin-form (as the path's own request line would be) and
/// with a `Host`, which HTTP/1.1 requires (a copy of an HTTP/2 request may have only the
/// target's authority).
fn fit_to_http1(header: &mut RequestHeader, backend: &Backend) -> Result<(), ShadowFailure> {
    header.set_version(Version::HTTP_11);
    if !header.headers.contains_key(HOST) {
        let host = authority_or_address(header, backend)?;
        let _ = header.insert_header(HOST, host);
    }
    if header.raw_path().first() != Some(&b'/') {
        // Absolute-form (`http://host/path`): the path alone, as it would go to an origin.
        let path = header
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        header.set_uri(http::Uri::from(path));
    }
    Ok(())
}

/// The copy as an HTTP/2 request: the authority (the `Host`, else the target's, else the
/// backend's address) and scheme in the URI, from which the pseudo-headers are written, and no
/// `Host` or connection-specific headers (HTTP/2 forbids those, and some servers refuse `Host`
/// beside `:authority`), as the proxy sends its own HTTP/2 requests.
fn fit_to_http2(
    header: &mut RequestHeader,
    backend: &Backend,
    tls: bool,
) -> Result<(), ShadowFailure> {
    let authority = match header.remove_header(&HOST) {
        Some(host) => host,
        None => authority_or_address(header, backend)?,
    };
    let path = header
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let uri = http::Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(authority.as_bytes())
        .path_and_query(path)
        .build()
        .map_err(|error| {
            ShadowFailure::Failed(format!("no HTTP/2 target for the copy: {error}"))
        })?;
    header.set_uri(uri);
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        header.remove_header(&name);
    }
    header.remove_header("keep-alive");
    header.remove_header("proxy-connection");
    if header.headers.get(TE).is_some_and(|te| te != "trailers") {
        header.remove_header(&TE);
    }
    Ok(())
}

/// The request target's authority, else the backend's address (as a client would name it).
fn authority_or_address(
    header: &RequestHeader,
    backend: &Backend,
) -> Result<HeaderValue, ShadowFailure> {
    let value = match header.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()),
        None => HeaderValue::from_str(&backend.address().to_string()),
    };
    value.map_err(|error| ShadowFailure::Failed(format!("no host for the copy: {error}")))
}

/// The answer's body as it is read: at most `limit` bytes, held against the memory budget.
///
/// A declared length gets one buffer of that size (up to the limit), counted exactly. Without
/// one (chunked answers), chunks are kept by reference: no buffer grows by doubling, which
/// would hold up to twice the body. (An HTTP/1 chunk is a buffer of its own; an HTTP/2 frame
/// may share the h2 crate's read buffer, which it keeps alive uncounted, see
/// docs/performance.md.)
struct Capture<'a> {
    memory: &'a mut Reservation,
    limit: usize,
    presized: Option<Vec<u8>>,
    chunks: Body,
}

impl<'a> Capture<'a> {
    fn new(
        declared: Option<usize>,
        limit: usize,
        memory: &'a mut Reservation,
    ) -> Result<Self, ShadowFailure> {
        let presized = match declared {
            Some(declared) => {
                let mut buffer = Vec::new();
                if !memory.presize(&mut buffer, declared.min(limit)) {
                    return Err(ShadowFailure::OverBudget);
                }
                Some(buffer)
            }
            None => None,
        };
        Ok(Self {
            memory,
            limit,
            presized,
            chunks: Body::default(),
        })
    }

    fn presized(&self) -> bool {
        self.presized.is_some()
    }

    fn room(&self) -> usize {
        let held = self.presized.as_ref().map_or(0, Vec::len) + self.chunks.len();
        self.limit.saturating_sub(held)
    }

    /// Copies what fits of `data` into the presized buffer; `true` when `data` went past the
    /// limit (the answer is truncated).
    fn copy(&mut self, data: &[u8]) -> Result<bool, ShadowFailure> {
        let room = self.room();
        let kept = &data[..data.len().min(room)];
        let buffer = self.presized.get_or_insert_with(Vec::new);
        if !self.memory.append(buffer, kept, self.limit) {
            return Err(ShadowFailure::OverBudget);
        }
        Ok(data.len() > room)
    }

    /// Keeps what fits of `data`: copied when a length was declared, else by reference.
    fn keep(&mut self, data: Bytes) -> Result<bool, ShadowFailure> {
        if self.presized() {
            return self.copy(&data);
        }
        let room = self.room();
        let kept = data.len().min(room);
        if !self.memory.grow(kept) {
            return Err(ShadowFailure::OverBudget);
        }
        self.chunks.push(data.slice(..kept));
        Ok(data.len() > room)
    }

    fn finish(
        mut self,
        status: http::StatusCode,
        headers: http::HeaderMap,
        truncated: bool,
    ) -> CapturedResponse {
        if let Some(buffer) = self.presized.take().filter(|buffer| !buffer.is_empty()) {
            self.chunks.push(Bytes::from(buffer));
        }
        CapturedResponse {
            status,
            headers,
            body: self.chunks,
            truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The exchange against loopback servers: connection reuse, and how a copy's header is
    //! fitted to the connection.

    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::UpstreamConfig;

    /// An HTTP/1.1 server answering `/small` with 5 bytes and anything else with 2 MiB (both
    /// with a length), keeping connections open; it counts the connections it accepted.
    async fn counting_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut read = [0u8; 4096];
                    loop {
                        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match stream.read(&mut read).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&read[..n]),
                            }
                            continue;
                        };
                        let small = buffer.starts_with(b"GET /small ");
                        buffer.drain(..end + 4);
                        let body = if small {
                            vec![b'x'; 5]
                        } else {
                            vec![b'x'; 2 << 20]
                        };
                        let head =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                        if stream.write_all(head.as_bytes()).await.is_err()
                            || stream.write_all(&body).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    fn candidate(address: SocketAddr) -> Arc<UpstreamPool> {
        let config: UpstreamConfig =
            serde_yaml::from_str(&format!("backends: ['{address}']")).unwrap();
        let pool = UpstreamPool::compile("candidate", &config, "upstreams.candidate", &mut vec![]);
        Arc::new(pool.expect("the upstream compiles"))
    }

    fn get(pool: &Arc<UpstreamPool>, path: &str) -> ShadowRequest {
        ShadowRequest {
            header: RequestHeader::build("GET", path.as_bytes(), None).unwrap(),
            body: Bytes::new(),
            pool: pool.clone(),
            backend: 0,
        }
    }

    #[tokio::test]
    async fn a_complete_answer_returns_its_connection_and_a_truncated_one_closes_it() {
        let (address, connections) = counting_server().await;
        let pool = candidate(address);
        let client = ShadowClient::new(4);
        let limit = 1 << 20;
        let send = |path: &'static str| {
            let (client, request) = (client.clone(), get(&pool, path));
            async move {
                let mut memory = Reservation::default();
                let timeout = Duration::from_secs(10);
                client.send(request, timeout, limit, &mut memory).await
            }
        };

        let small = send("/small").await.expect("an answer");
        assert_eq!((small.body.len(), small.truncated), (5, false));
        send("/small").await.expect("an answer");
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "the connection was reused"
        );

        let big = send("/big").await.expect("an answer");
        assert_eq!((big.body.len(), big.truncated), (limit, true));
        send("/small").await.expect("an answer");
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "a truncated answer's connection is closed, never handed to the next copy"
        );
    }

    #[test]
    fn a_copy_in_flight_is_a_small_future_whatever_pingora_holds_beneath_it() {
        let pool = candidate("127.0.0.1:9".parse().unwrap());
        let client = ShadowClient::new(1);
        let mut memory = Reservation::default();
        let send = client.send(get(&pool, "/"), Duration::from_secs(1), 1024, &mut memory);
        // Every copy's task holds two of these (the copy and the noise copy, joined) and is
        // moved whole when spawned: the exchange itself (~10 KiB) must stay behind a box.
        let size = std::mem::size_of_val(&send);
        assert!(size <= 2048, "a send future of {size} bytes");
    }

    #[test]
    fn a_copy_of_an_http2_request_gets_a_host_and_origin_form_over_http1() {
        let pool = candidate("127.0.0.1:9".parse().unwrap());
        let backend = &pool.backends()[0];
        let mut header = RequestHeader::build("GET", b"/", None).unwrap();
        header.set_uri("https://shop.test/api?q=1".parse().unwrap());
        header.set_version(Version::HTTP_2);
        fit_to_http1(&mut header, backend).unwrap();
        assert_eq!(header.version, Version::HTTP_11);
        assert_eq!(header.raw_path(), b"/api?q=1");
        assert_eq!(header.headers[HOST], "shop.test");

        let mut bare = RequestHeader::build("GET", b"/x", None).unwrap();
        fit_to_http1(&mut bare, backend).unwrap();
        assert_eq!(
            bare.headers[HOST], "127.0.0.1:9",
            "no authority at all: the backend's"
        );
    }

    #[test]
    fn a_copy_over_http2_carries_its_host_as_the_authority_and_no_connection_headers() {
        let pool = candidate("127.0.0.1:9".parse().unwrap());
        let mut header = RequestHeader::build("POST", b"/api?q=1", None).unwrap();
        for (name, value) in [
            ("host", "shop.test"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("x-kept", "1"),
        ] {
            header.append_header(name, value).unwrap();
        }
        fit_to_http2(&mut header, &pool.backends()[0], false).unwrap();
        assert_eq!(header.uri.to_string(), "http://shop.test/api?q=1");
        let names: Vec<&str> = header.headers.keys().map(|name| name.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }
}
