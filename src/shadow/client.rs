//! The shadow's own HTTP client: a connection pool separate from the primary's, every exchange
//! bounded in time and in how much of the answer is read. Plain HTTP/1.1 candidates share one
//! pool here; a TLS or h2c candidate's request carries its upstream's client (built with the
//! upstream's `tls` settings, see [`crate::tls::backend_client`]) in its extensions.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::exchange::{Body, CapturedResponse, Reservation, ShadowFailure};

#[derive(Clone)]
pub struct ShadowClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for ShadowClient {
    fn default() -> Self {
        Self::new()
    }
}

impl ShadowClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector);
        Self { client }
    }

    /// Sends `request` and reads at most `limit` bytes of the answer, all within `timeout`,
    /// holding what it keeps against `memory`. Reading stops at the limit: an endless body
    /// costs `limit` bytes, not more.
    pub async fn send(
        &self,
        mut request: http::Request<Full<Bytes>>,
        timeout: Duration,
        limit: usize,
        memory: &mut Reservation,
    ) -> Result<CapturedResponse, ShadowFailure> {
        let exchange = async {
            // TLS and h2c upstreams bring their client (see `ShadowRule::build_request`).
            let own = request
                .extensions_mut()
                .remove::<crate::tls::BackendClient>();
            let response = match own {
                Some(client) => client.request(request).await,
                None => self.client.request(request).await,
            }
            .map_err(|error| ShadowFailure::Failed(error.to_string()))?;
            let (parts, mut body) = response.into_parts();
            // A declared length: one buffer of that size, counted exactly. Without one (chunked
            // answers), the frames are kept by reference: no buffer grows by doubling, which
            // would hold up to twice the body. (A frame shares hyper's read buffer: what it
            // keeps alive past its own length is not counted, see docs/performance.md.)
            let declared = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
            let mut collected = Vec::new();
            let mut chunks = Body::default();
            if let Some(declared) = declared
                && !memory.presize(&mut collected, declared.min(limit))
            {
                return Err(ShadowFailure::OverBudget);
            }
            let mut truncated = false;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|error| ShadowFailure::Failed(error.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    let room = limit.saturating_sub(collected.len() + chunks.len());
                    let kept = data.len().min(room);
                    let fits = if declared.is_some() {
                        memory.append(&mut collected, &data[..kept], limit)
                    } else if memory.grow(kept) {
                        chunks.push(data.slice(..kept));
                        true
                    } else {
                        false
                    };
                    if !fits {
                        return Err(ShadowFailure::OverBudget);
                    }
                    if data.len() > room {
                        truncated = true;
                        break;
                    }
                }
            }
            if !collected.is_empty() {
                chunks.push(Bytes::from(collected));
            }
            Ok(CapturedResponse {
                status: parts.status,
                headers: parts.headers,
                body: chunks,
                truncated,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(ShadowFailure::Timeout))
    }
}
