//! The OTLP/HTTP export client: a small hyper client on a one-thread Tokio runtime of its own
//! (the SDK's batch thread has none), and an exporter that reports when exports start failing
//! and when they recover. What is exported, and when, is the SDK's batch processor's business.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// A collector's answer is a few bytes; anything past this is refused.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// The OTLP exporter, reporting when exports start failing and when they recover (the SDK's
/// own diagnostics are compiled out).
#[derive(Debug)]
pub(super) struct ReportingExporter {
    pub(super) inner: opentelemetry_otlp::SpanExporter,
    pub(super) endpoint: String,
    pub(super) failing: AtomicBool,
}

impl SpanExporter for ReportingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(error) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                endpoint = %self.endpoint,
                %error,
                spans,
                "OTLP export failed; spans are dropped until the collector answers"
            ),
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = %self.endpoint, "OTLP export works again");
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// An HTTP/1.1 client (hyper, plain TCP) for the OTLP exporter. The SDK's batch processor runs
/// exports on its own thread with a minimal executor, where hyper (which needs a Tokio reactor)
/// cannot run; so each exchange is spawned onto a current-thread Tokio runtime on a dedicated
/// thread, and the exporter awaits its join handle. The thread stops when the client is dropped.
#[derive(Debug)]
pub(super) struct ExportClient {
    runtime: tokio::runtime::Handle,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ExportClient {
    pub(super) fn start(timeout: Duration) -> std::io::Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, handle) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("otlp-http".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let _ = ready.send(Ok(runtime.handle().clone()));
                // Runs spawned exchanges until the client is dropped.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let runtime = handle
            .recv()
            .map_err(|_| std::io::Error::other("the OTLP HTTP thread exited"))??;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Ok(Self {
            runtime,
            client,
            timeout,
            _stop: stop,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let exchange = self.runtime.spawn(async move {
            let exchange = async {
                let response = client.request(request.map(Full::new)).await?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_RESPONSE_BODY)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {timeout:?}").into()),
            }
        });
        exchange.await.map_err(HttpError::from)?
    }
}
