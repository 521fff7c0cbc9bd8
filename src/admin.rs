//! The admin listener: health, readiness and a read-only view of the live config.
//!
//! It runs as its own Pingora service on its own address (loopback by default), so it can be
//! firewalled separately and never competes with client traffic for a port. Endpoints:
//!
//! | method | path       | answer                                                        |
//! |--------|------------|---------------------------------------------------------------|
//! | GET    | `/healthz` | 200 while the process runs                                    |
//! | GET    | `/readyz`  | 200 with the config generation once the proxy can serve       |
//! | GET    | `/routes`  | the live config as JSON, with its generation and SHA-256      |
//!
//! Mutating endpoints (reload, kill switch) arrive with later features and use POST only.

use async_trait::async_trait;
use http::{Method, Response, StatusCode, header};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;

use crate::routing::SharedRouteTable;

pub struct AdminApp {
    routes: SharedRouteTable,
}

impl AdminApp {
    pub fn new(routes: SharedRouteTable) -> Self {
        Self { routes }
    }

    fn routes_document(&self) -> serde_json::Value {
        let table = self.routes.load();
        let upstreams: serde_json::Map<String, serde_json::Value> = table
            .upstreams()
            .iter()
            .map(|pool| {
                let addresses: Vec<String> = pool.addresses().map(|a| a.to_string()).collect();
                (pool.name().to_owned(), json!({ "resolved": addresses }))
            })
            .collect();
        json!({
            "generation": table.generation(),
            "sha256": table.sha256(),
            "loaded_at": humantime::format_rfc3339_seconds(table.loaded_at()).to_string(),
            "config": table.config(),
            "upstreams": upstreams,
        })
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let request = session.req_header();
        let method = request.method.clone();
        let path = request.uri.path().to_owned();
        match (method, path.as_str()) {
            (Method::GET | Method::HEAD, "/healthz") => {
                json_response(StatusCode::OK, &json!({ "status": "ok" }))
            }
            (Method::GET | Method::HEAD, "/readyz") => {
                let generation = self.routes.load().generation();
                json_response(
                    StatusCode::OK,
                    &json!({ "status": "ready", "generation": generation }),
                )
            }
            (Method::GET | Method::HEAD, "/routes") => {
                json_response(StatusCode::OK, &self.routes_document())
            }
            (_, "/healthz" | "/readyz" | "/routes") => {
                let mut response = json_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &json!({ "error": "method not allowed" }),
                );
                response
                    .headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
                response
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({ "error": "not found", "endpoints": ["/healthz", "/readyz", "/routes"] }),
            ),
        }
    }
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
