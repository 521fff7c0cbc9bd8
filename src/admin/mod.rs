//! The admin listener: health, readiness and a read-only view of the live config.
//!
//! It runs as its own Pingora service on its own address (loopback by default), so it can be
//! firewalled separately and never competes with client traffic for a port. Endpoints:
//!
//! | method | path           | answer                                                        |
//! |--------|----------------|---------------------------------------------------------------|
//! | GET    | `/healthz`     | 200 while the process runs                                    |
//! | GET    | `/readyz`      | 200 with the config generation and pid while the proxy serves; |
//! |        |                | 503 `draining` once it stops (the pid tells an upgrade's two  |
//! |        |                | processes apart: they share this socket for a moment)         |
//! | GET    | `/routes`      | the live config as JSON, its generation, SHA-256, last reload |
//! | GET    | `/upstreams`   | every upstream's backends, their health and health settings   |
//! | GET    | `/metrics`     | Prometheus text exposition                                    |
//! | POST   | `/reload`      | re-read the config file now; 200 applied/unchanged, 422 not   |
//! | GET    | `/diffs`       | stored diffs, newest first; `?route&verdict&since&generation&limit&before` |
//! | GET    | `/diffs/summary`, `/diffs/{id}`, `/ui` | the diff viewer: see [`crate::viewer`] |
//! | GET    | `/coverage`    | traffic share of new services, uncovered templates; `?top=`   |
//! | POST   | `/routes/{name}/reset` | clears the route's tripped guard (see [`crate::guard`])  |
//! | POST   | `/kill-switch` | `?state=on`: every route to legacy, kept across reloads until  |
//! |        |                | `off` or a reload that changes `kill_switch` in the file      |
//!
//! Mutations are POST only, so a stray GET (a crawler, a browser prefetch) changes nothing; any
//! other method gets 405 with `Allow`. With a token configured, everything but `/healthz`,
//! `/readyz`, `/metrics` and the viewer page's assets (which hold no data) requires
//! `Authorization: Bearer <token>` (401 otherwise).
//!
//! A browser on the operator's machine reaches a loopback admin too, so everything but the
//! three open endpoints is also guarded against cross-site requests (see `gate.rs`): the
//! `Host` must be an IP address, `localhost` or a name in `server.admin_hosts` (a DNS-rebinding
//! page sends its own name), an `Origin` must be that same host, and a mutation must carry
//! something a cross-site form cannot send: the bearer token, or `X-Strangler-Admin: 1` when no
//! token is configured (a custom header needs a CORS preflight, which this listener never
//! grants).
//!
//! Query parameters are validated: a bad value or an unknown name is a 400 naming the parameter,
//! never silently ignored (a typo in a filter must not return everything).

//! One small file per endpoint group: `gate.rs` (the token and the cross-site gate),
//! `documents.rs` (`/routes`, `/upstreams`, typed in [`crate::admin_api`]), `changes.rs`
//! (`/reload`, `/kill-switch`, guard resets), `coverage.rs`; this file holds the dispatch and
//! the probes (`/healthz`, `/readyz`, `/metrics`).

mod changes;
mod coverage;
mod documents;
mod gate;

use async_trait::async_trait;
use http::{Method, Response, StatusCode, header};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;

use std::sync::Arc;

pub use self::gate::ADMIN_HEADER;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::routing::SharedRouteTable;

pub struct AdminApp {
    routes: SharedRouteTable,
    /// Host names, besides IP addresses and `localhost`, the admin answers to.
    hosts: Vec<String>,
    /// Required as `Authorization: Bearer <token>` on everything but health and metrics.
    token: Option<String>,
    metrics: Arc<Metrics>,
    /// `None` when the config did not come from a file (the demo's built-in copy).
    reloader: Option<Arc<Reloader>>,
    /// Whether the process drains, for `/readyz`; `None`: never says so.
    lifecycle: Option<Arc<crate::lifecycle::Lifecycle>>,
}

const ENDPOINTS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/routes",
    "/upstreams",
    "/metrics",
    "/reload",
    "/diffs",
    "/coverage",
    "/diffs/summary",
    "/diffs/{id}",
    "/ui",
    "/kill-switch",
];

impl AdminApp {
    pub fn new(
        routes: SharedRouteTable,
        metrics: Arc<Metrics>,
        reloader: Option<Arc<Reloader>>,
        token: Option<String>,
    ) -> Self {
        let hosts = routes
            .load()
            .config()
            .server
            .admin_hosts
            .iter()
            .map(|host| host.to_ascii_lowercase())
            .collect();
        Self {
            routes,
            hosts,
            token,
            metrics,
            reloader,
            lifecycle: None,
        }
    }

    /// `/readyz` says 503 `draining` once `lifecycle` drains.
    pub fn with_lifecycle(mut self, lifecycle: Arc<crate::lifecycle::Lifecycle>) -> Self {
        self.lifecycle = Some(lifecycle);
        self
    }

    /// `GET /readyz`: 200 `ready` while the proxy serves, 503 `draining` once it stops; with the
    /// generation and the pid (an upgrade's two processes share the socket for a moment).
    fn readiness(&self) -> Response<Vec<u8>> {
        let generation = self.routes.load().generation();
        let pid = std::process::id();
        let draining = self
            .lifecycle
            .as_ref()
            .is_some_and(|lifecycle| lifecycle.phase() == crate::lifecycle::Phase::Draining);
        if draining {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "status": "draining", "generation": generation, "pid": pid }),
            )
        } else {
            json_response(
                StatusCode::OK,
                &json!({ "status": "ready", "generation": generation, "pid": pid }),
            )
        }
    }

    /// `GET /metrics`: Prometheus text exposition, gauges refreshed from the live table.
    fn metrics(&self) -> Response<Vec<u8>> {
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .header(header::CACHE_CONTROL, "no-store")
            .body(
                self.metrics
                    .render(|m| self.routes.load().refresh_gauges(m)),
            )
            .expect("static response parts are valid")
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let request = session.req_header();
        let method = request.method.clone();
        let path = request.uri.path().to_owned();
        let query = request.uri.query().unwrap_or("").to_owned();
        let open = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
        if !open && let Some(refusal) = gate::cross_site(request, &self.hosts, self.token.is_some())
        {
            return json_response(StatusCode::FORBIDDEN, &json!({ "error": refusal }));
        }
        // The viewer's page holds no data: a browser navigating to it cannot send the token.
        if !open
            && !crate::viewer::is_asset(&path)
            && !gate::authorized(session, self.token.as_deref())
        {
            let mut response = json_response(
                StatusCode::UNAUTHORIZED,
                &json!({ "error": "a valid bearer token is required" }),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        match (method, path.as_str()) {
            (Method::GET | Method::HEAD, "/healthz") => {
                json_response(StatusCode::OK, &json!({ "status": "ok" }))
            }
            (Method::GET | Method::HEAD, "/readyz") => self.readiness(),
            (Method::GET | Method::HEAD, "/routes") => {
                let document = documents::routes(&self.routes.load(), self.reloader.as_deref());
                json_response(StatusCode::OK, &to_json(&document))
            }
            (Method::GET | Method::HEAD, "/upstreams") => {
                let document = documents::upstreams(&self.routes.load());
                json_response(StatusCode::OK, &to_json(&document))
            }
            (Method::GET | Method::HEAD, "/metrics") => self.metrics(),
            (Method::POST, "/reload") => changes::reload(self.reloader.clone()).await,
            (Method::POST, "/kill-switch") => {
                changes::kill_switch(&self.routes.load(), &self.metrics, &query)
            }
            (_, "/kill-switch") => method_not_allowed("POST"),
            (method, path) if path.starts_with("/routes/") && path.ends_with("/reset") => {
                if method != Method::POST {
                    return method_not_allowed("POST");
                }
                let name = &path["/routes/".len()..path.len() - "/reset".len()];
                changes::reset_guard(&self.routes.load(), name)
            }
            (Method::GET | Method::HEAD, "/coverage") => {
                coverage::coverage(&self.routes.load(), &self.metrics, &query)
            }
            (Method::GET | Method::HEAD, path) if crate::viewer::serves(path) => {
                crate::viewer::respond(&self.routes, &self.metrics, path, &query).await
            }
            (_, "/reload") => method_not_allowed("POST"),
            (_, "/healthz" | "/readyz" | "/routes" | "/upstreams" | "/metrics" | "/coverage") => {
                method_not_allowed("GET, HEAD")
            }
            (_, path) if crate::viewer::serves(path) => method_not_allowed("GET, HEAD"),
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({ "error": "not found", "endpoints": ENDPOINTS }),
            ),
        }
    }
}

/// A typed document as the JSON value the admin writes (its maps' keys sorted).
fn to_json(document: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(document).expect("admin documents serialize")
}

fn method_not_allowed(allow: &'static str) -> Response<Vec<u8>> {
    let mut response = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({ "error": "method not allowed", "allow": allow }),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(body).expect("JSON values always serialize");
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CACHE_CONTROL, "no-store")
        .body(body)
        .expect("static response parts are valid")
}
