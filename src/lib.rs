//! strangler: a reverse proxy for strangler-fig migrations, built on Pingora.
//!
//! Reading order for newcomers: [`config`] (the file) → [`routing`] (the compiled table) →
//! [`upstream`] (backend pools) → [`proxy`] (the Pingora phases) → [`server`] (process
//! assembly) → [`reload`] (hot reload) → [`admin`] (the admin listener) → [`metrics`].
//! [`demo`] is the embedded demo.

pub mod admin;
pub mod config;
pub mod demo;
pub mod diff;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod report;
pub mod routes_cli;
pub mod routing;
pub mod server;
pub mod shadow;
pub mod store;
pub mod upstream;
