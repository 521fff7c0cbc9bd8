//! routes.yaml: its serde model, loading with precise diagnostics, its JSON Schema, and finding
//! it inside a Kubernetes ConfigMap manifest; nothing more.
//!
//! This module owns the *shape* of the file: which keys exist, their types and defaults, and
//! errors that point at a line and a field path. It does not judge meaning (unknown upstreams,
//! broken regexes, duplicate names): [`crate::routing`] compiles a [`Config`] into the runtime
//! table and reports those through the same [`Diagnostic`] type.

mod configmap;
mod diagnostic;
mod load;
mod model;
mod positions;
mod schema;
mod tls;

pub use configmap::{ConfigMapEntry, configmap_entries};
pub use diagnostic::{ConfigError, Diagnostic, Location, did_you_mean, methods, sample_share};
pub use load::{LoadedConfig, SourceFile, load_file, parse, sha256_hex};
pub use model::*;
pub use schema::{SCHEMA_PATH, json_schema, json_schema_text};
pub use tls::{
    CertificateConfig, ListenerConfig, ListenerTlsConfig, Listeners, UpstreamProtocol,
    UpstreamTlsConfig,
};
