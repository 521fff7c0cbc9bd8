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
//! three open endpoints is also guarded against cross-site requests (see [`cross_site`]): the
//! `Host` must be an IP address, `localhost` or a name in `server.admin_hosts` (a DNS-rebinding
//! page sends its own name), an `Origin` must be that same host, and a mutation must carry
//! something a cross-site form cannot send: the bearer token, or `X-Strangler-Admin: 1` when no
//! token is configured (a custom header needs a CORS preflight, which this listener never
//! grants).
//!
//! Query parameters are validated: a bad value or an unknown name is a 400 naming the parameter,
//! never silently ignored (a typo in a filter must not return everything).

use async_trait::async_trait;
use http::{Method, Response, StatusCode, header};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::reload::{Reloader, Trigger};
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

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
        presented
            .is_some_and(|presented| crate::routing::constant_time_eq(presented, token.as_bytes()))
    }

    /// `/coverage?top=N`: see [`crate::coverage`].
    fn coverage(&self, query: &str) -> Response<Vec<u8>> {
        let mut top = 20;
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let parsed = match name.as_ref() {
                "top" => value.parse().ok().filter(|n| (1..=1000).contains(n)),
                _ => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({ "error": "unknown parameter; known: top", "parameter": name }),
                    );
                }
            };
            match parsed {
                Some(n) => top = n,
                None => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({ "error": "top must be a whole number from 1 to 1000", "parameter": "top" }),
                    );
                }
            }
        }
        let table = self.routes.load();
        let totals = self.metrics.requests_by_route_and_upstream();
        let served: Vec<crate::coverage::Served<'_>> = totals
            .iter()
            .map(|((route, upstream), requests)| crate::coverage::Served {
                route,
                upstream,
                requests: *requests,
            })
            .collect();
        let report = crate::coverage::CoverageReport::build(
            table.generation(),
            &served,
            &self.metrics.unmatched,
            &CoverageView(&table),
            top,
        );
        json_response(
            StatusCode::OK,
            &serde_json::to_value(report).expect("coverage serializes"),
        )
    }

    /// `POST /routes/{name}/reset`: clears a tripped guard; the route serves as configured.
    fn reset_guard(&self, name: &str) -> Response<Vec<u8>> {
        let table = self.routes.load();
        let Some(route) = table.routes().iter().find(|route| route.name == name) else {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({ "error": format!("no route named `{name}`") }),
            );
        };
        let Some(guard) = &route.guard else {
            return json_response(
                StatusCode::CONFLICT,
                &json!({ "error": format!("route `{name}` has no guard") }),
            );
        };
        let cleared = guard.reset();
        if let Some(trip) = &cleared {
            tracing::warn!(route = %name, reason = trip.reason, "guard reset from the admin API: the route serves as configured again");
        }
        json_response(
            StatusCode::OK,
            &json!({ "route": name, "cleared": cleared, "generation": table.generation() }),
        )
    }

    async fn reload(&self) -> Response<Vec<u8>> {
        let Some(reloader) = self.reloader.clone() else {
            return json_response(
                StatusCode::CONFLICT,
                &json!({ "error": "this config is built in, not read from a file; nothing to reload" }),
            );
        };
        // Compiling a large config takes a while; keep it off the admin's I/O thread.
        let report = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Admin)).await;
        match report {
            Ok(report) => {
                let status = if report.outcome.is_success() {
                    StatusCode::OK
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                };
                json_response(
                    status,
                    &serde_json::to_value(&report).expect("reports serialize"),
                )
            }
            Err(error) => json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({ "error": format!("reload task failed: {error}") }),
            ),
        }
    }

    fn routes_document(&self) -> serde_json::Value {
        let table = self.routes.load();
        let upstreams: serde_json::Map<String, serde_json::Value> = table
            .upstreams()
            .iter()
            .map(|pool| {
                let addresses: Vec<String> = pool.addresses().map(|a| a.to_string()).collect();
                let backends: Vec<serde_json::Value> = pool
                    .backends()
                    .iter()
                    .map(|backend| {
                        json!({
                            "address": backend.address().to_string(),
                            "available": backend.available(),
                            "failing_health_checks": backend.probed_down(),
                            "ejected": backend.ejected(),
                        })
                    })
                    .collect();
                (
                    pool.name().to_owned(),
                    json!({ "resolved": addresses, "backends": backends }),
                )
            })
            .collect();
        let reload = self.reloader.as_ref();
        let stages: serde_json::Map<String, serde_json::Value> = table
            .routes()
            .iter()
            .map(|route| (route.name.clone(), json!(route.stage.as_str())))
            .collect();
        json!({
            "generation": table.generation(),
            "kill_switch": table.kill_switch.load(std::sync::atomic::Ordering::Relaxed),
            "stages": stages,
            "effective": table.effective_routing(),
            "sha256": table.sha256(),
            "loaded_at": humantime::format_rfc3339_seconds(table.loaded_at()).to_string(),
            "config_path": reload.map(|r| r.path().display().to_string()),
            "last_reload": reload.and_then(|r| r.last_report()),
            "config": table.config(),
            "upstreams": upstreams,
        })
    }

    /// `GET /upstreams`: each pool of the live generation, its health settings and every
    /// backend's state. `healthy` is what `strangler_upstream_healthy` exports.
    fn upstreams_document(&self) -> serde_json::Value {
        let table = self.routes.load();
        let upstreams: Vec<serde_json::Value> = table
            .upstreams()
            .iter()
            .map(|pool| {
                let backends: Vec<serde_json::Value> =
                    pool.backends().iter().map(backend_document).collect();
                let healthy = pool.backends().iter().filter(|b| b.available()).count();
                let passive = pool.passive();
                json!({
                    "name": pool.name(),
                    "healthy_backends": healthy,
                    "total_backends": backends.len(),
                    "retries": pool.retries(),
                    "health_check": pool.health_check().map(|check| json!({
                        "kind": if check.path.is_some() { "http" } else { "tcp" },
                        "path": check.path,
                        "interval": humantime::format_duration(check.interval).to_string(),
                        "timeout": humantime::format_duration(check.timeout).to_string(),
                        "unhealthy_threshold": check.unhealthy_threshold,
                        "healthy_threshold": check.healthy_threshold,
                    })),
                    "passive": {
                        "consecutive_failures": passive.consecutive_failures,
                        "ejection": humantime::format_duration(passive.ejection).to_string(),
                    },
                    "backends": backends,
                })
            })
            .collect();
        json!({
            "generation": table.generation(),
            "upstreams": upstreams,
        })
    }
}

fn backend_document(backend: &crate::upstream::Backend) -> serde_json::Value {
    // One read of each flag, so the fields agree with each other (`healthy` is `available()`).
    let probed_down = backend.probed_down();
    let ejected_until = backend.ejected_until();
    let (check_failures, check_passes) = backend.probe_streak();
    let state = if probed_down {
        "unhealthy"
    } else if ejected_until.is_some() {
        "ejected"
    } else {
        "healthy"
    };
    json!({
        "address": backend.address().to_string(),
        "healthy": !probed_down && ejected_until.is_none(),
        "state": state,
        "probed_down": probed_down,
        "ejected": ejected_until.is_some(),
        "ejected_until": ejected_until
            .map(|until| humantime::format_rfc3339_millis(until).to_string()),
        "consecutive_request_failures": backend.consecutive_request_failures(),
        "consecutive_check_failures": check_failures,
        "consecutive_check_passes": check_passes,
    })
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let request = session.req_header();
        let method = request.method.clone();
        let path = request.uri.path().to_owned();
        let open = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
        if !open && let Some(refusal) = cross_site(session, &self.hosts, self.token.is_some()) {
            return json_response(StatusCode::FORBIDDEN, &json!({ "error": refusal }));
        }
        // The viewer's page holds no data: a browser navigating to it cannot send the token.
        if !open && !crate::viewer::is_asset(&path) && !self.authorized(session) {
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
            (Method::GET | Method::HEAD, "/readyz") => {
                let generation = self.routes.load().generation();
                let pid = std::process::id();
                let draining = self.lifecycle.as_ref().is_some_and(|lifecycle| {
                    lifecycle.phase() == crate::lifecycle::Phase::Draining
                });
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
            (Method::GET | Method::HEAD, "/routes") => {
                json_response(StatusCode::OK, &self.routes_document())
            }
            (Method::GET | Method::HEAD, "/upstreams") => {
                json_response(StatusCode::OK, &self.upstreams_document())
            }
            (Method::GET | Method::HEAD, "/metrics") => Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .header(header::CACHE_CONTROL, "no-store")
                .body(
                    self.metrics
                        .render(|m| self.routes.load().refresh_gauges(m)),
                )
                .expect("static response parts are valid"),
            (Method::POST, "/reload") => self.reload().await,
            (Method::POST, "/kill-switch") => {
                let query = session.req_header().uri.query().unwrap_or("").to_owned();
                let state = form_urlencoded::parse(query.as_bytes())
                    .find(|(key, _)| key == "state")
                    .map(|(_, value)| value.into_owned());
                let on = match state.as_deref() {
                    Some("on") => true,
                    Some("off") => false,
                    _ => {
                        return json_response(
                            StatusCode::BAD_REQUEST,
                            &json!({ "error": "POST /kill-switch?state=on or ?state=off" }),
                        );
                    }
                };
                let table = self.routes.load();
                let was = table
                    .kill_switch
                    .swap(on, std::sync::atomic::Ordering::Relaxed);
                if was != on {
                    self.metrics
                        .kill_switch_changes
                        .with_label_values(&[if on { "on" } else { "off" }, "admin"])
                        .inc();
                }
                if on {
                    tracing::warn!(
                        generation = table.generation(),
                        "kill switch turned on from the admin API: every route goes to legacy"
                    );
                } else {
                    tracing::warn!(
                        generation = table.generation(),
                        was_on = was,
                        "kill switch released from the admin API: routes serve as configured again"
                    );
                }
                json_response(
                    StatusCode::OK,
                    &json!({
                        "kill_switch": on,
                        "generation": table.generation(),
                        "until": "set again, or a reload that changes `kill_switch` in the file",
                    }),
                )
            }
            (_, "/kill-switch") => method_not_allowed("POST"),
            (method, path) if path.starts_with("/routes/") && path.ends_with("/reset") => {
                if method != Method::POST {
                    return method_not_allowed("POST");
                }
                let name = &path["/routes/".len()..path.len() - "/reset".len()];
                self.reset_guard(name)
            }
            (Method::GET | Method::HEAD, "/coverage") => {
                self.coverage(session.req_header().uri.query().unwrap_or(""))
            }
            (Method::GET | Method::HEAD, path) if crate::viewer::serves(path) => {
                let query = session.req_header().uri.query().unwrap_or("").to_owned();
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

/// The serving route table, as [`crate::coverage`] asks about it.
struct CoverageView<'a>(&'a crate::routing::RouteTable);

impl crate::coverage::RouteView for CoverageView<'_> {
    fn legacy_upstream(&self, route: &str) -> Option<&str> {
        let route = self.0.routes().iter().find(|r| r.name == route)?;
        Some(self.0.upstream(route.target(route.legacy).upstream).name())
    }

    fn default_upstream(&self) -> &str {
        self.0.upstream(self.0.default_upstream()).name()
    }

    fn covers(&self, method: &str, path: &str) -> bool {
        pingora_http::RequestHeader::build(method, path.as_bytes(), None)
            .is_ok_and(|request| self.0.find(&request).is_some())
    }
}

/// The header that marks a mutation as sent on purpose when no token is configured.
pub const ADMIN_HEADER: &str = "x-strangler-admin";

/// Why a request may have come from a page the operator's browser was visiting, not from the
/// operator: `None` when it is fine.
fn cross_site(
    session: &ServerSession,
    hosts: &[String],
    token_configured: bool,
) -> Option<&'static str> {
    let request = session.req_header();
    let host = request
        .headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or_default();
    if !admin_host_allowed(host, hosts) {
        return Some(
            "the Host must be an IP address, localhost or a name in server.admin_hosts (DNS rebinding)",
        );
    }
    if let Some(origin) = request.headers.get(header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|origin| {
                origin
                    .strip_prefix("http://")
                    .or(origin.strip_prefix("https://"))
            })
            .is_some_and(|origin_host| origin_host.eq_ignore_ascii_case(host));
        if !same {
            return Some("cross-origin requests are refused");
        }
    }
    if request
        .headers
        .get("sec-fetch-site")
        .is_some_and(|site| !matches!(site.as_bytes(), b"same-origin" | b"none"))
    {
        return Some("cross-site requests are refused");
    }
    if request.method == Method::POST
        && is_mutation(request.uri.path())
        && !token_configured
        && !request.headers.contains_key(ADMIN_HEADER)
    {
        return Some("a change needs the header `X-Strangler-Admin: 1` (or the bearer token)");
    }
    None
}

/// The endpoints that change something (POST only; any other POST is a 405).
fn is_mutation(path: &str) -> bool {
    matches!(path, "/reload" | "/kill-switch")
        || (path.starts_with("/routes/") && path.ends_with("/reset"))
}

/// `host[:port]` names this listener: an IP address, `localhost`, or a configured name.
fn admin_host_allowed(host: &str, hosts: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => {
            return rest
                .split_once(']')
                .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
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
