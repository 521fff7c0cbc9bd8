//! strangler: a reverse proxy for strangler-fig migrations, built on Pingora.
//!
//! Reading order for newcomers: [`config`] (the file) → [`routing`] (the compiled table) →
//! [`upstream`] and [`health`] (backend pools and their health) → [`proxy`] (the Pingora
//! phases) → [`shadow`] → [`diff`] → [`store`] (mirroring, comparing, keeping the results) →
//! [`server`] (process assembly) → [`reload`] (hot reload) → [`admin`] (the admin listener) →
//! [`metrics`]. [`report`] and [`routes_cli`] are CLI commands; [`demo`] is the embedded demo.

pub mod admin;
pub mod config;
pub mod connection;
pub mod demo;
pub mod diff;
pub mod forwarded;
pub mod health;
pub mod hygiene;
pub mod metrics;
pub mod proxy;
pub mod redact;
pub mod reload;
pub mod report;
pub mod routes_cli;
pub mod routing;
pub mod server;
pub mod shadow;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;
