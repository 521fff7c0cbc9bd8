//! The serde model of `routes.yaml`: plain data, exactly as the user wrote it.
//!
//! Every struct rejects unknown keys, durations and sizes are human-readable (`250ms`, `5s`),
//! and defaults live here so that `GET /routes` shows the effective values. Nothing in this file
//! checks cross-references (does an upstream exist, does a regex compile): that is the job of
//! [`crate::routing::RouteTable::compile_loaded`], which turns this model into the runtime table.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::schema::{ByteSize as ByteSizeSchema, HumanDuration, OneOrMany, removed_key};

/// The whole file. Sections that failed to deserialize hold their defaults, so that compiling
/// can still report its own problems; such a file is never served.
///
/// The loader reads this section by section (see `load.rs`), not with serde, so the schema
/// attributes below restate what it accepts: unknown keys are errors, `upstreams` and
/// `default_upstream` are required, and an empty section (`server:` with every key commented
/// out) is the same as an absent one.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(
    deny_unknown_fields,
    title = "strangler routes.yaml",
    description = "strangler's routes file: upstreams, the default upstream, and routes tried in file order. Every key is described in docs/configuration.md; `strangler validate` checks what a schema cannot (references, regexes, stages)."
)]
pub struct Config {
    /// Process-level settings; most take a restart.
    #[schemars(default, with = "Option<ServerConfig>")]
    pub server: ServerConfig,
    /// Named pools of backends; at least one.
    #[schemars(extend("minProperties" = 1))]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// The upstream that serves requests no route matches.
    #[schemars(length(min = 1))]
    pub default_upstream: String,
    /// Routing rules, tried in file order; the first that matches wins.
    #[schemars(default, with = "Option<Vec<RouteConfig>>")]
    pub routes: Vec<RouteConfig>,
    /// Send every route to its legacy upstream and stop all shadows.
    #[schemars(default, with = "Option<bool>")]
    pub kill_switch: bool,
    /// Lets testers force an upstream for one request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tester_override: Option<TesterOverrideConfig>,
}

/// A request header naming the upstream to use, honoured only with the secret token.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TesterOverrideConfig {
    /// The header carrying the upstream name, e.g. `x-strangler-upstream`.
    #[serde(default = "default_override_header")]
    pub header: String,
    /// The header carrying the token.
    #[serde(default = "default_override_token_header")]
    pub token_header: String,
    /// The secret; never shown by the admin API. Either this or `allow_cidrs` (or both).
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// Client networks whose override header is honoured without a token, like 10.0.0.0/8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_cidrs: Vec<String>,
}

fn default_override_header() -> String {
    "x-strangler-upstream".into()
}

fn default_override_token_header() -> String {
    "x-strangler-token".into()
}

/// Where a route is in its migration; checked against its settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    #[default]
    Legacy,
    Shadow,
    Canary,
    New,
    Retired,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Legacy => "legacy",
            Stage::Shadow => "shadow",
            Stage::Canary => "canary",
            Stage::New => "new",
            Stage::Retired => "retired",
        }
    }
}

/// An upstream as a route uses it: the pool, plus what that pool needs done to a request on its
/// way there (path and host rewrite, request header edits).
///
/// Edits belong to the target, not to the route, because a route reaches several upstreams (a
/// split, a fallback, the kill switch, a shadow, a tester's override) and each expects its own
/// paths: legacy must see exactly what it saw before strangler existed while the new service
/// gets `/orders/7` for `/api/orders/7`. Written as the upstream's name alone (no edits) or as
/// `{ name, rewrite, request_headers }`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetConfig {
    /// The upstream's name, a key of `upstreams`.
    pub name: String,
    /// Path and Host rewrite of requests sent to this upstream.
    pub rewrite: Option<RewriteConfig>,
    /// Header edits of requests sent to this upstream.
    pub request_headers: HeaderActionsConfig,
}

impl TargetConfig {
    /// A target with no edits.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Whether requests reach this upstream exactly as the client sent them.
    pub fn has_edits(&self) -> bool {
        self.rewrite.is_some() || !self.request_headers.is_empty()
    }
}

/// The map spelling of a target; also its JSON Schema.
#[derive(Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    rename = "TargetWithEdits",
    description = "An upstream with the edits requests need on their way there."
)]
struct TargetSpelled {
    /// The upstream's name, a key of `upstreams`.
    #[schemars(length(min = 1))]
    name: String,
    /// Path and Host rewrite of requests sent to this upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rewrite: Option<RewriteConfig>,
    /// Header edits of requests sent to this upstream.
    #[serde(default, skip_serializing_if = "HeaderActionsConfig::is_empty")]
    request_headers: HeaderActionsConfig,
}

impl JsonSchema for TargetConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Target".into()
    }

    /// Mirrors the hand-written `Deserialize`: a bare name or the map spelling.
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An upstream as a route uses it: its name alone (requests reach it unedited), or { name, rewrite, request_headers }.",
            "anyOf": [
                {
                    "type": "string",
                    "minLength": 1,
                    "description": "The upstream's name, a key of `upstreams`."
                },
                generator.subschema_for::<TargetSpelled>()
            ]
        })
    }
}

impl Serialize for TargetConfig {
    /// Round-trips: a target without edits is written as its bare name.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !self.has_edits() {
            return serializer.serialize_str(&self.name);
        }
        TargetSpelled {
            name: self.name.clone(),
            rewrite: self.rewrite.clone(),
            request_headers: self.request_headers.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TargetConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TargetVisitor;

        impl<'de> Visitor<'de> for TargetVisitor {
            type Value = TargetConfig;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an upstream name, or { name: <upstream>, rewrite: {..}, request_headers: {..} }",
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(TargetConfig::named(value))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let spelled =
                    TargetSpelled::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(TargetConfig {
                    name: spelled.name,
                    rewrite: spelled.rewrite,
                    request_headers: spelled.request_headers,
                })
            }
        }

        deserializer.deserialize_any(TargetVisitor)
    }
}

/// One side of a weighted split.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// The side's target: a name, or a name with its own edits.
    pub upstream: TargetConfig,
    /// Percent of traffic, 0 to 100; a route's weights sum to 100.
    #[schemars(range(max = 100))]
    pub weight: u32,
}

/// What keeps a user on the same side of a split.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    /// Key on this cookie's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Key on this request header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Key on the client's IP address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_ip: bool,
}

/// The answer of a retired route.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetiredConfig {
    /// The answer's status, 200 to 599.
    #[serde(default = "default_retired_status")]
    #[schemars(range(min = 200, max = 599))]
    pub status: u16,
    /// The answer's body.
    #[serde(default)]
    pub body: String,
}

fn default_retired_status() -> u16 {
    410
}

/// The top-level keys of the file (what unknown keys are checked against).
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "upstreams",
    "default_upstream",
    "routes",
    "kill_switch",
    "tester_override",
];

/// Process-level settings. Most take a restart (a reload names those that changed);
/// `request_timeout` and `limits` apply on reload (`limits` to new connections).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where the proxy accepts client traffic: an address, or a list of listeners, each plain
    /// or TLS (see `ListenerConfig`).
    pub listen: super::tls::Listeners,
    /// Where the admin API (`/healthz`, `/readyz`, `/routes`) listens. Loopback by default.
    pub admin: SocketAddr,
    /// Bearer token required by the admin API (all but /healthz, /readyz, /metrics); falls back
    /// to the `STRANGLER_ADMIN_TOKEN` environment variable. Mandatory when `admin` is not on
    /// loopback. Never shown by the admin API.
    #[serde(skip_serializing)]
    pub admin_token: Option<String>,
    /// Load balancers and proxies in front of strangler (CIDRs, like `10.0.0.0/8`). Only from
    /// these peers are `X-Forwarded-For`, `-Proto` and `-Host` believed: the client is then the
    /// right-most address of `X-Forwarded-For` that is not a trusted proxy. From any other peer
    /// the peer is the client and its forwarding headers are replaced.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Host names the admin API answers to, besides IP addresses and `localhost` (requests
    /// naming another host are refused, against DNS rebinding), e.g. `strangler-admin.internal`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub admin_hosts: Vec<String>,
    /// Worker threads for the proxy. Defaults to the CPUs this process may run on.
    pub threads: Option<usize>,
    /// Whether the proxy's worker threads share one runtime and steal each other's tasks
    /// (Pingora's default), or each runs its own (`false`: a connection stays on the thread
    /// that accepted it).
    pub work_stealing: bool,
    /// The longest a stop may take: after SIGTERM (or an upgrade's hand-over) requests in flight
    /// finish and connections close; the process exits once none is left, or after this.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub drain_timeout: Duration,
    /// Longest a request may take from its headers' arrival to its last response byte, unless
    /// its route sets `timeout`: 504 if the answer has not started by then, else the connection
    /// is closed (the response visibly cut short).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub request_timeout: Duration,
    /// How often backend host names are resolved again (`0s`: never). A name's addresses are
    /// all backends; when they change, the serving config is compiled again with the new ones
    /// (health kept per address). A failed lookup keeps the last good addresses.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub dns_refresh: Duration,
    /// Shadow copies in flight at once across all routes; more are dropped, never queued.
    pub shadow_max_inflight: usize,
    /// Bytes all shadowing may buffer at once: teed request bodies, captured responses and
    /// exchanges waiting for comparison. A copy that would pass it is dropped
    /// (`dropped_memory`); the primary is never affected.
    #[schemars(with = "ByteSizeSchema")]
    pub shadow_max_memory: bytesize::ByteSize,
    /// Where compared exchanges are stored: a SQLite file, opened at start when a route shadows
    /// (`run` refuses to start when it cannot be), or a Postgres database shared by replicas,
    /// `postgres://USER@HOST:PORT/DATABASE` (connected in the background; its password from
    /// `diff_store_password_file` or `STRANGLER_DIFF_STORE_PASSWORD`, and never shown).
    #[schemars(with = "String")]
    pub diff_store: crate::store::StoreLocation,
    /// A file holding the Postgres password (its first line), e.g. a mounted Secret; read at
    /// every connection. Not needed when the URL or `STRANGLER_DIFF_STORE_PASSWORD` has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff_store_password_file: Option<std::path::PathBuf>,
    /// Share of matching exchanges stored as rows, from 0 to 1 (every exchange that differed is
    /// stored, and every exchange is counted in the store's per-minute aggregates, which
    /// `strangler report` reads).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub diff_match_sample: f64,
    /// The name this process's rows are stored under, so a report can tell replicas apart
    /// (`--replica`). Default: `STRANGLER_REPLICA`, else the host name (a pod's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Stored exchanges kept at most; the oldest go first.
    pub diff_max_rows: u64,
    /// Stored exchanges older than this are deleted.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub diff_max_age: Duration,
    /// Longest body sample stored per side of a differing exchange (decoded text, cut with a
    /// `…`), which the viewer and `/diffs` show; `0` stores none. At most 64 KiB: the diff
    /// worker holds two per exchange of a batch.
    #[schemars(with = "ByteSizeSchema")]
    pub diff_max_sample: bytesize::ByteSize,
    /// Limits on what clients may send.
    pub limits: LimitsConfig,
    /// What is redacted in everything strangler stores or shows (diff store, `/diffs`,
    /// reports, logs of shadow exchanges).
    pub redact: RedactConfig,
    /// Export one span per request with OpenTelemetry OTLP; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
}

/// Secrets kept out of everything stored or shown.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RedactConfig {
    /// Query parameters (case-insensitive names) whose values are replaced by `[redacted]` in
    /// stored and shown request lines. The default names the usual credentials; list more
    /// with `extra_query_params`, or replace the list.
    pub query_params: Vec<String>,
    /// Added to `query_params`, so extending the defaults does not mean repeating them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_query_params: Vec<String>,
}

impl Default for RedactConfig {
    fn default() -> Self {
        Self {
            query_params: [
                "token",
                "access_token",
                "refresh_token",
                "id_token",
                "api_key",
                "apikey",
                "key",
                "password",
                "passwd",
                "secret",
                "client_secret",
                "signature",
                "sig",
                "auth",
                "code",
                "session",
                "sessionid",
                "jwt",
                "x-amz-signature",
                "x-amz-credential",
                "x-amz-security-token",
            ]
            .map(str::to_owned)
            .to_vec(),
            extra_query_params: Vec::new(),
        }
    }
}

/// OpenTelemetry span export (OTLP over HTTP).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP base URL; spans are POSTed to `{endpoint}/v1/traces`.
    pub endpoint: String,
    /// `service.name` of the exported spans.
    #[serde(default = "default_otlp_service_name")]
    pub service_name: String,
    /// Share of requests without a sampled parent that get a span (0.0 to 1.0). A request
    /// whose `traceparent` is sampled is always traced.
    #[serde(default = "default_otlp_sample_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_ratio: f64,
}

fn default_otlp_service_name() -> String {
    "strangler".to_owned()
}

fn default_otlp_sample_ratio() -> f64 {
    1.0
}

/// Request limits, checked before a request is routed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest request target (path and query); longer: 414.
    #[schemars(with = "ByteSizeSchema")]
    pub max_uri_length: bytesize::ByteSize,
    /// Most request headers; more: 431.
    pub max_header_count: usize,
    /// Largest request header section (names and values); larger: 431.
    #[schemars(with = "ByteSizeSchema")]
    pub max_header_bytes: bytesize::ByteSize,
    /// Largest request body; larger: 413, before the body is read when Content-Length says so.
    #[schemars(with = "ByteSizeSchema")]
    pub max_body: bytesize::ByteSize,
    /// Longest wait for the next bytes of a request body; then 408.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub body_idle_timeout: Duration,
    /// Longest a client may take to send a request's headers, counted from the connection's
    /// accept (first request) or the request's first byte (later requests); then 408 and close.
    /// Bounds slowloris clients, which Pingora alone lets trickle a byte a minute.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub header_timeout: Duration,
    /// Client connections open at once; past it, new ones get 503 with `Retry-After` and are
    /// closed.
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_uri_length: bytesize::ByteSize::kib(8),
            max_header_count: 100,
            max_header_bytes: bytesize::ByteSize::kib(64),
            max_body: bytesize::ByteSize::mib(100),
            body_idle_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: super::tls::Listeners::plain(SocketAddr::from(([0, 0, 0, 0], 8080))),
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
            admin_token: None,
            admin_hosts: Vec::new(),
            trusted_proxies: Vec::new(),
            threads: None,
            work_stealing: true,
            drain_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            dns_refresh: Duration::from_secs(30),
            shadow_max_inflight: 256,
            shadow_max_memory: bytesize::ByteSize::mib(64),
            diff_store: "strangler-diffs.db".into(),
            diff_store_password_file: None,
            diff_match_sample: 1.0,
            replica: None,
            diff_max_rows: 100_000,
            diff_max_age: Duration::from_secs(7 * 24 * 3600),
            diff_max_sample: bytesize::ByteSize::kib(4),
            limits: LimitsConfig::default(),
            redact: RedactConfig::default(),
            otlp: None,
        }
    }
}

/// A named pool of interchangeable backends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` addresses, used round-robin. Names are resolved when the config is loaded.
    pub backends: Vec<String>,
    /// Connect, read, write and idle timeouts of this pool's connections.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Active health checks; absent: backends are only ejected passively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive ejection of backends that keep failing real requests.
    #[serde(default)]
    pub passive: PassiveHealthConfig,
    /// Further attempts on another backend when connecting fails (nothing was sent yet, so
    /// this is safe for every method).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// TLS to the backends; absent: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::tls::UpstreamTlsConfig>,
    /// `h1` (the default), `h2` (over TLS, by ALPN) or `h2c` (plain, prior knowledge).
    #[serde(
        default,
        skip_serializing_if = "super::tls::UpstreamProtocol::is_default"
    )]
    pub protocol: super::tls::UpstreamProtocol,
}

fn default_retries() -> u32 {
    1
}

/// Probing each backend on a schedule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// HTTP path to GET (healthy: a 2xx or 3xx answer); absent: a TCP connect is the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between two checks of a backend.
    #[serde(with = "humantime_serde", default = "default_check_interval")]
    #[schemars(with = "HumanDuration")]
    pub interval: Duration,
    /// Longest a check may take before it counts as failed.
    #[serde(with = "humantime_serde", default = "default_check_timeout")]
    #[schemars(with = "HumanDuration")]
    pub timeout: Duration,
    /// Consecutive failed checks that take a backend out.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Consecutive passed checks that bring it back.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_healthy_threshold() -> u32 {
    2
}

/// Ejecting a backend after consecutive failures of real requests (connect errors, 502/503/504).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthConfig {
    /// Consecutive failures that eject a backend; 0 turns passive ejection off.
    pub consecutive_failures: u32,
    /// How long an ejected backend gets no traffic before it is tried again.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub ejection: Duration,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection: Duration::from_secs(30),
        }
    }
}

/// Per-upstream timeouts. Pingora leaves all of these unset; we never do.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// TCP connect to a backend.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub connect: Duration,
    /// Longest wait for the next bytes of a backend's response.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub read: Duration,
    /// Longest wait to hand request bytes to a backend.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub write: Duration,
    /// How long an unused keep-alive connection stays in the pool.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub idle: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(30),
            write: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

/// One routing rule. Routes are tried in file order; the first whose `match` holds wins.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique among routes: it labels metrics, logs and stored diffs.
    pub name: String,
    /// Conditions a request must meet, all of them; none: every request matches.
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    /// Where matching requests go (a target: a name, or a name with its edits);
    /// `default_upstream` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<TargetConfig>,
    /// Where requests go when the upstream cannot be reached (no healthy backend, or connecting
    /// failed on every attempt), or answers a `fallback_on` status. Also where the kill switch
    /// sends the route. Answers carry `x-strangler-fallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<TargetConfig>,
    /// Answers from `upstream` that send an idempotent request to `fallback` instead.
    #[serde(default = "default_fallback_on")]
    pub fallback_on: Vec<u16>,
    /// The old, route-wide spelling of a target's rewrite: rejected with a hint, never applied
    /// (it sent the new service's paths to legacy on every way back).
    #[serde(default, skip_serializing)]
    #[schemars(schema_with = "removed_key")]
    pub rewrite: Option<serde_yaml::Value>,
    /// The old, route-wide spelling of a target's header edits: rejected with a hint.
    #[serde(default, skip_serializing)]
    #[schemars(schema_with = "removed_key")]
    pub request_headers: Option<serde_yaml::Value>,
    /// Edits of the response the client gets, whichever upstream answered.
    #[serde(default, skip_serializing_if = "HeaderActionsConfig::is_empty")]
    pub response_headers: HeaderActionsConfig,
    /// Mirror matching requests to a candidate upstream; the client only ever sees the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowConfig>,
    /// Migration stage: legacy, shadow, canary, new or retired.
    #[serde(default)]
    pub stage: Stage,
    /// Weighted upstreams (instead of `upstream`), listed new service first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SplitConfig>,
    /// Keeps a user on one side of the split; without a key the side is random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyConfig>,
    /// What a retired route answers (default 410 with no body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<RetiredConfig>,
    /// Total time for one request on this route (overrides `server.request_timeout`).
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<HumanDuration>")]
    pub timeout: Option<Duration>,
    /// Automatic rollback: thresholds over a sliding window that, once crossed, send the route
    /// to its legacy target until reset. See [`GuardConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardConfig>,
    /// Keep a redacted sample of this route's requests in the diff store, to export as a
    /// corpus (`strangler corpus export`) and replay in CI (`strangler replay`). See
    /// [`RecordConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordConfig>,
}

/// A route's recording: requests kept (redacted) in `server.diff_store`, off the request path,
/// to be exported as a replayable corpus. Credential headers and cookies are always redacted,
/// query parameters as `server.redact` says.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// Fraction of eligible requests recorded, 0.0 to 1.0.
    #[serde(default = "default_record_sample")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample: f64,
    /// Methods recorded. Default: GET, HEAD, OPTIONS. A replayed write runs twice in CI (once
    /// per target): list unsafe methods only on purpose.
    #[serde(default = "default_shadow_methods")]
    pub methods: Vec<String>,
    /// Requests with a larger body are not recorded.
    #[serde(default = "default_record_max_body")]
    #[schemars(with = "ByteSizeSchema")]
    pub max_body: bytesize::ByteSize,
    /// Most recorded requests kept for this route (per store); the oldest go first.
    #[serde(default = "default_record_max_rows")]
    pub max_rows: u64,
    /// Most bytes (request lines, headers and bodies) kept for this route (per store).
    #[serde(default = "default_record_max_bytes")]
    #[schemars(with = "ByteSizeSchema")]
    pub max_bytes: bytesize::ByteSize,
    /// Recorded requests older than this are deleted.
    #[serde(with = "humantime_serde", default = "default_record_max_age")]
    #[schemars(with = "HumanDuration")]
    pub max_age: Duration,
    /// More request headers whose values are replaced by `[redacted]`, on top of the
    /// credential headers (`Authorization`, `Proxy-Authorization`, `Cookie`, `X-Api-Key`,
    /// `X-Auth-Token`), which always are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_headers: Vec<String>,
    /// JSON request body fields replaced by `"[redacted]"`: `$.password`, `$.card.number`. A
    /// body that is not JSON is then not recorded at all, since it cannot be redacted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_json: Vec<String>,
}

fn default_record_sample() -> f64 {
    0.01
}

fn default_record_max_body() -> bytesize::ByteSize {
    bytesize::ByteSize::kib(64)
}

fn default_record_max_rows() -> u64 {
    10_000
}

fn default_record_max_bytes() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(64)
}

fn default_record_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// A route's guard: when the new side misbehaves (errors, latency, shadow mismatches) over a
/// sliding window, with at least `min_requests` samples, the route trips to its legacy target
/// and stays there until `POST /routes/{name}/reset` or a change of the route's config.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// `enforce` (default) trips the route to legacy; `observe` only reports what it would do.
    #[serde(default)]
    pub mode: GuardMode,
    /// The sliding window the thresholds are judged over (1s to 1h).
    #[serde(default = "default_guard_window", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub window: Duration,
    /// Samples the window must hold (new-side requests, or comparisons for the mismatch rule)
    /// before a rule may trip, so a handful of requests cannot.
    #[serde(default = "default_guard_min_requests")]
    pub min_requests: u64,
    /// Trips when more than this share (0.0–1.0) of the new side's requests fail: a 5xx, a
    /// proxy error, or a failure the route fell back from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Trips when the new side's p99 latency is over this.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<HumanDuration>")]
    pub max_p99: Option<Duration>,
    /// Trips when the new side's p99 is over this multiple of legacy's p99 on the same route
    /// (both sides need `min_requests`: a canary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ratio: Option<f64>,
    /// Trips when more than this share (0.0–1.0) of the route's shadow comparisons mismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mismatch_rate: Option<f64>,
}

fn default_guard_window() -> Duration {
    Duration::from_secs(30)
}

fn default_guard_min_requests() -> u64 {
    20
}

/// What a tripped guard does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GuardMode {
    /// Send the route to legacy.
    #[default]
    Enforce,
    /// Report (log, metrics, `/routes`) what it would have done; routing unchanged.
    Observe,
}

impl GuardMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardMode::Enforce => "enforce",
            GuardMode::Observe => "observe",
        }
    }
}

/// A route's shadow traffic: copies of its requests sent to a candidate, off the request path.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// Where copies go: the new service, or legacy when the route already serves from the new.
    /// A target: the copy is the client's request with this target's own edits (none by
    /// default), whatever the primary's target does.
    pub upstream: TargetConfig,
    /// Fraction of eligible requests mirrored, 0.0 to 1.0.
    #[serde(default = "default_sample")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample: f64,
    /// Decide sampling by a request key instead of at random, so a given user is always (or
    /// never) shadowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_key: Option<KeyConfig>,
    /// Methods mirrored. Default: GET, HEAD, OPTIONS. A mirrored write may duplicate data in the
    /// candidate: list unsafe methods only on purpose.
    #[serde(default = "default_shadow_methods")]
    pub methods: Vec<String>,
    /// Requests with a larger body are not mirrored (counted as skipped_body).
    #[serde(default = "default_shadow_max_body")]
    #[schemars(with = "ByteSizeSchema")]
    pub max_body: bytesize::ByteSize,
    /// Total time for one shadow exchange.
    #[serde(with = "humantime_serde", default = "default_shadow_timeout")]
    #[schemars(with = "HumanDuration")]
    pub timeout: Duration,
    /// Copies of this route in flight at once; more are dropped (dropped_full).
    #[serde(default = "default_route_inflight")]
    pub max_inflight: usize,
    /// The old spelling of the copy's rewrite: rejected with a hint (it is `upstream.rewrite`).
    #[serde(default, skip_serializing)]
    #[schemars(schema_with = "removed_key")]
    pub rewrite: Option<serde_yaml::Value>,
    /// The old spelling of the copy's header edits: rejected with a hint.
    #[serde(default, skip_serializing)]
    #[schemars(schema_with = "removed_key")]
    pub headers: Option<serde_yaml::Value>,
    /// Headers whose values are replaced by `[redacted]` on the copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    /// Send the client's credentials (`Authorization`, `Proxy-Authorization`, `Cookie`,
    /// `X-Api-Key`, `X-Auth-Token`) to the candidate too. Off by default: a copy goes to a
    /// service that has not earned the client's trust yet, so they are removed from it. Turn it
    /// on when the candidate needs them to answer (it will act as the client).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_credentials: bool,
    /// How the two responses are compared.
    #[serde(default)]
    pub compare: CompareConfig,
}

/// Comparison of the primary's and the shadow's responses.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CompareConfig {
    /// Headers not compared, on top of the defaults (date, server, x-request-id, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignore_headers: Vec<String>,
    /// JSON paths not compared: `$.generated_at`, `$.items[*].etag`, `$.*.id`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignore_json: Vec<String>,
    /// Relative tolerance for numbers: 0.001 accepts 1000 vs 1000.9.
    pub numeric_tolerance: f64,
    /// JSON arrays whose order does not matter: `'$.tags'` (each element matched with its most
    /// similar counterpart) or `{ path: '$.orders', by: id }` (elements matched by the value of
    /// their member `id`; several members for a composite key). Matched elements are compared
    /// field by field, with the ignore rules and numeric tolerance.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unordered_arrays: Vec<UnorderedArrayConfig>,
    /// `legacy`: also send a second copy to the route's primary upstream; whatever differs
    /// between the two primary answers is noise, not a candidate difference.
    pub noise: NoiseMode,
    /// JSON fields replaced by `"[redacted]"` in stored body samples.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redact_json: Vec<String>,
}

/// One `unordered_arrays` entry: a JSON path, alone or with the member(s) that key elements.
#[derive(Debug, Clone, PartialEq)]
pub struct UnorderedArrayConfig {
    pub path: String,
    /// Members whose values identify an element; empty: best match.
    pub by: Vec<String>,
}

impl From<&str> for UnorderedArrayConfig {
    fn from(path: &str) -> Self {
        Self {
            path: path.to_owned(),
            by: Vec::new(),
        }
    }
}

impl Serialize for UnorderedArrayConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.by.as_slice() {
            [] => serializer.serialize_str(&self.path),
            by => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("path", &self.path)?;
                match by {
                    [one] => map.serialize_entry("by", one)?,
                    many => map.serialize_entry("by", many)?,
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for UnorderedArrayConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Spelled {
            path: String,
            #[serde(default, deserialize_with = "one_or_many")]
            by: Vec<String>,
        }

        struct UnorderedVisitor;

        impl<'de> Visitor<'de> for UnorderedVisitor {
            type Value = UnorderedArrayConfig;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON path ('$.tags') or {path: '$.orders', by: id}")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(value.into())
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let spelled = Spelled::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(UnorderedArrayConfig {
                    path: spelled.path,
                    by: spelled.by,
                })
            }
        }

        deserializer.deserialize_any(UnorderedVisitor)
    }
}

impl JsonSchema for UnorderedArrayConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "UnorderedArray".into()
    }

    /// Mirrors the hand-written `Deserialize` above.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A JSON array whose order does not matter: its path ('$.tags', elements matched with their most similar counterpart) or {path, by} (elements matched by the value of a member, or of several for a composite key).",
            "anyOf": [
                { "type": "string", "description": "The array's JSON path; elements are matched by similarity." },
                {
                    "type": "object",
                    "properties": {
                        "path": { "type": "string", "description": "The array's JSON path: $.orders, $.orders[*].lines." },
                        "by": {
                            "description": "The member (or members) whose value identifies an element: id, or [region, id].",
                            "anyOf": [
                                { "type": "string" },
                                { "type": "array", "items": { "type": "string" } }
                            ]
                        }
                    },
                    "required": ["path"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoiseMode {
    #[default]
    Off,
    Legacy,
}

/// Where a per-request key comes from: exactly one of `header` or `cookie`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key is this request header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The key is this cookie's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

fn default_sample() -> f64 {
    1.0
}

fn default_shadow_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into(), "OPTIONS".into()]
}

fn default_shadow_max_body() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(1)
}

fn default_shadow_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_route_inflight() -> usize {
    64
}

fn default_fallback_on() -> Vec<u16> {
    vec![502, 503, 504]
}

/// Conditions a request must meet, all of them, for the route to apply.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MatchConfig {
    /// `api.example.com` (exact, case-insensitive, port ignored) or `*.example.com` (any
    /// subdomain, not the bare domain). One name or a list.
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(with = "OneOrMany")]
    pub host: Vec<String>,
    /// The exact path, query excluded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A path prefix on segment boundaries: `/api` matches `/api` and `/api/x`, not `/apix`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// A regular expression searched in the path; anchor it with `^...$` to match it whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// The request method must be one of these (`GET` does not imply `HEAD`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Request headers (names case-insensitive) and how their values must look.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ValueMatchConfig>,
    /// Query parameters (compared raw, not percent-decoded) and how their values must look.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, ValueMatchConfig>,
    /// Cookies and how their values must look.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cookies: BTreeMap<String, ValueMatchConfig>,
}

/// How a header, query parameter or cookie value must look.
///
/// Written either as a plain string (exact match) or as a map with exactly one of
/// `exact`, `regex`, `present`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueMatchConfig {
    Exact(String),
    Regex(String),
    /// `true`: the field must be there (any value); `false`: it must be absent.
    Present(bool),
}

impl JsonSchema for ValueMatchConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ValueMatch".into()
    }

    /// Mirrors the hand-written `Deserialize` below: a string or an integer (YAML types `2` as
    /// a number; it means the text "2"), or a map with exactly one key.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "How a header, query parameter or cookie value must look: a plain value (exact match) or exactly one of {exact: ..}, {regex: ..}, {present: true|false}.",
            "anyOf": [
                { "type": "string", "description": "The exact value." },
                { "type": "integer", "description": "The exact value, written as a number." },
                {
                    "type": "object",
                    "properties": {
                        "exact": { "type": "string", "description": "The exact value." },
                        "regex": { "type": "string", "description": "A regular expression searched in the value; anchor it with ^...$ to match it whole." },
                        "present": { "type": "boolean", "description": "true: the field must be there (any value); false: it must be absent." }
                    },
                    "additionalProperties": false,
                    "minProperties": 1,
                    "maxProperties": 1
                }
            ]
        })
    }
}

/// Path and host rewrites applied to the upstream request. At most one path rewrite.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// Remove a leading path prefix on segment boundaries: `/api/orders` -> `/orders`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// Swap a leading path prefix for another: `{from: /api/v1, to: /v2}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix: Option<ReplacePrefixConfig>,
    /// Regex replacement over the path, with `$1` / `${name}` expansion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<RegexRewriteConfig>,
    /// The `Host` header sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplacePrefixConfig {
    /// The prefix to take off, on segment boundaries.
    pub from: String,
    /// What to put in its place.
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegexRewriteConfig {
    /// A regular expression searched in the path.
    pub pattern: String,
    /// Its replacement; `$1` and `${name}` insert capture groups.
    pub replacement: String,
}

/// Header edits, applied in the order remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderActionsConfig {
    /// Headers to delete.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Headers to replace (any existing values are dropped).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers to append (existing values are kept).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
}

impl HeaderActionsConfig {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// Accepts `key: value` as well as `key: [a, b]`.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct OneOrMany;

    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
            Ok(vec![value.to_owned()])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))
        }
    }

    deserializer.deserialize_any(OneOrMany)
}

impl<'de> Deserialize<'de> for ValueMatchConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The map form; exactly one field must be set.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Spelled {
            exact: Option<String>,
            regex: Option<String>,
            present: Option<bool>,
        }

        struct ValueMatchVisitor;

        impl<'de> Visitor<'de> for ValueMatchVisitor {
            type Value = ValueMatchConfig;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string (exact match) or one of {exact: ..}, {regex: ..}, {present: true|false}")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(ValueMatchConfig::Exact(value.to_owned()))
            }

            // `x-api-version: 2` means the text "2"; YAML just typed it as a number.
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(ValueMatchConfig::Exact(value.to_string()))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Ok(ValueMatchConfig::Exact(value.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let spelled = Spelled::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (spelled.exact, spelled.regex, spelled.present) {
                    (Some(exact), None, None) => Ok(ValueMatchConfig::Exact(exact)),
                    (None, Some(regex), None) => Ok(ValueMatchConfig::Regex(regex)),
                    (None, None, Some(present)) => Ok(ValueMatchConfig::Present(present)),
                    _ => Err(de::Error::custom(
                        "set exactly one of `exact`, `regex` or `present`",
                    )),
                }
            }
        }

        deserializer.deserialize_any(ValueMatchVisitor)
    }
}

#[cfg(test)]
mod tests {
    //! The spellings this model accepts, in-process: what each hand-written `Deserialize` takes,
    //! what it refuses, and that `Serialize` writes a value back the way it reads.

    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
        serde_yaml::from_str(text).map_err(|error| error.to_string())
    }

    #[test]
    fn a_target_is_a_bare_name_or_a_map_with_its_edits() {
        let bare: TargetConfig = yaml("orders-v2").unwrap();
        assert_eq!(bare, TargetConfig::named("orders-v2"));
        assert!(!bare.has_edits());

        let edited: TargetConfig = yaml(
            "{ name: orders-v2, rewrite: { strip_prefix: /api }, request_headers: { set: { x-migrated: 'true' } } }",
        )
        .unwrap();
        assert_eq!(edited.name, "orders-v2");
        assert_eq!(
            edited
                .rewrite
                .as_ref()
                .and_then(|r| r.strip_prefix.as_deref()),
            Some("/api")
        );
        assert_eq!(edited.request_headers.set["x-migrated"], "true");
        assert!(edited.has_edits());

        // A map naming no edits is still a target reaching its upstream unedited.
        let plain: TargetConfig = yaml("{ name: legacy }").unwrap();
        assert!(!plain.has_edits());
    }

    #[test]
    fn a_target_round_trips_and_is_written_as_a_bare_name_when_it_has_no_edits() {
        let plain = serde_yaml::to_string(&TargetConfig::named("legacy")).unwrap();
        assert_eq!(plain.trim(), "legacy");
        let edited: TargetConfig = yaml(
            "{ name: new, rewrite: { host: new.internal }, request_headers: { remove: [x-a] } }",
        )
        .unwrap();
        let written = serde_yaml::to_string(&edited).unwrap();
        assert_eq!(yaml::<TargetConfig>(&written).unwrap(), edited, "{written}");
    }

    #[test]
    fn a_target_with_an_unknown_key_or_no_name_is_refused() {
        let typo = yaml::<TargetConfig>("{ name: new, rewrites: { strip_prefix: /api } }")
            .expect_err("a misspelled key");
        assert!(typo.contains("rewrites"), "{typo}");
        let nameless =
            yaml::<TargetConfig>("{ rewrite: { strip_prefix: /api } }").expect_err("no name");
        assert!(nameless.contains("name"), "{nameless}");
        let number = yaml::<TargetConfig>("[legacy]").expect_err("a list is no target");
        assert!(number.contains("an upstream name"), "{number}");
    }

    #[test]
    fn a_value_match_is_a_plain_value_or_exactly_one_of_exact_regex_present() {
        assert_eq!(
            yaml::<ValueMatchConfig>("beta").unwrap(),
            ValueMatchConfig::Exact("beta".into())
        );
        // YAML types `2` as a number; the header's value is the text "2".
        assert_eq!(
            yaml::<ValueMatchConfig>("2").unwrap(),
            ValueMatchConfig::Exact("2".into())
        );
        assert_eq!(
            yaml::<ValueMatchConfig>("-1").unwrap(),
            ValueMatchConfig::Exact("-1".into())
        );
        assert_eq!(
            yaml::<ValueMatchConfig>("{ regex: '^v[0-9]+$' }").unwrap(),
            ValueMatchConfig::Regex("^v[0-9]+$".into())
        );
        assert_eq!(
            yaml::<ValueMatchConfig>("{ present: false }").unwrap(),
            ValueMatchConfig::Present(false)
        );
        for ambiguous in ["{ exact: a, regex: b }", "{}"] {
            let error = yaml::<ValueMatchConfig>(ambiguous).expect_err(ambiguous);
            assert!(error.contains("exactly one of"), "{ambiguous}: {error}");
        }
        let unknown = yaml::<ValueMatchConfig>("{ prefix: a }").expect_err("unknown key");
        assert!(unknown.contains("prefix"), "{unknown}");
    }

    #[test]
    fn unordered_arrays_take_a_path_alone_or_with_one_or_many_keys_and_round_trip() {
        let entries: Vec<UnorderedArrayConfig> =
            yaml("['$.tags', { path: '$.orders', by: id }, { path: '$.lines', by: [sku, size] }]")
                .unwrap();
        assert_eq!(entries[0], UnorderedArrayConfig::from("$.tags"));
        assert_eq!(entries[1].by, ["id"]);
        assert_eq!(entries[2].by, ["sku", "size"]);
        let written = serde_yaml::to_string(&entries).unwrap();
        assert_eq!(
            yaml::<Vec<UnorderedArrayConfig>>(&written).unwrap(),
            entries,
            "{written}"
        );
        let error = yaml::<UnorderedArrayConfig>("{ path: '$.a', key: id }").expect_err("key");
        assert!(error.contains("key"), "{error}");
    }

    #[test]
    fn a_host_match_takes_one_name_or_a_list() {
        let one: MatchConfig = yaml("{ host: api.example.com }").unwrap();
        assert_eq!(one.host, ["api.example.com"]);
        let many: MatchConfig = yaml("{ host: [a.example.com, '*.example.org'] }").unwrap();
        assert_eq!(many.host, ["a.example.com", "*.example.org"]);
        let error = yaml::<MatchConfig>("{ host: { name: a } }").expect_err("a map");
        assert!(error.contains("a string or a list of strings"), "{error}");
    }

    #[test]
    fn timeouts_and_limits_are_read_in_human_units_and_default_when_left_out() {
        let timeouts: TimeoutsConfig = yaml("{ connect: 250ms, read: 1m }").unwrap();
        assert_eq!(timeouts.connect, Duration::from_millis(250));
        assert_eq!(timeouts.read, Duration::from_secs(60));
        assert_eq!(timeouts.write, TimeoutsConfig::default().write);
        let error = yaml::<TimeoutsConfig>("{ connect: 5 parsecs }").expect_err("no unit");
        assert!(error.contains("connect"), "{error}");

        let limits: LimitsConfig = yaml("{ max_body: 1KiB, max_uri_length: 100B }").unwrap();
        assert_eq!(limits.max_body.as_u64(), 1024);
        assert_eq!(limits.max_uri_length.as_u64(), 100);
        assert_eq!(
            limits.max_header_count,
            LimitsConfig::default().max_header_count
        );
    }
}
