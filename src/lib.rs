//! strangler: a reverse proxy for strangler-fig migrations, built on Pingora.
//!
//! Reading order for newcomers: [`config`] (the file) → [`routing`] (the compiled table) →
//! [`upstream`] (backend pools) → [`proxy`] (the Pingora phases) → [`server`] (process
//! assembly) → [`admin`] (the admin listener). [`demo`] is the embedded demo.

pub mod admin;
pub mod config;
pub mod demo;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod upstream;
