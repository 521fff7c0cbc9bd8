//! strangler: a reverse proxy for strangler-fig migrations, built on Pingora.
//!
//! Reading order for newcomers: [`config`] (the file) → [`routing`] (the compiled table) →
//! [`upstream`] and [`health`] (backend pools and their health) → [`proxy`] (the Pingora
//! phases) → [`shadow`] → [`diff`] → [`store`] (mirroring, comparing, keeping the results) →
//! [`server`] (process assembly) → [`lifecycle`] (stop and upgrade) → [`reload`] (hot reload)
//! → [`admin`] (the admin listener) → [`metrics`]. [`report`] and [`routes_cli`] are CLI
//! commands; [`demo`] is the embedded demo.
//!
//! # Layers
//!
//! Each module uses only modules of the layers below it (never one that uses it back), so each
//! shared type has one home, in the lowest module that needs it. From the bottom:
//!
//! 1. Leaves, which use nothing of the crate: [`config`] (the file's model and its loading),
//!    [`vocabulary`] (every word said to the outside: reasons, verdicts, metric labels),
//!    [`edits`] (what is done to a request on its way), [`forwarded`], [`parallel`] (a map
//!    split over cores, results in input order), [`coverage`] (path templates and the segment walk
//!    path shapes share) and [`unverified`] (the TLS verifier that authenticates nothing, for
//!    backends and the Postgres store alike).
//! 2. Modules that use only leaves: [`metrics`], [`hygiene`] and [`response`] (every answer
//!    strangler writes itself; only [`vocabulary`]), [`admin_api`] (the admin's JSON documents,
//!    typed; only [`config`]), [`record`] (a stored comparison and the request shape diffs are
//!    grouped by), [`redact`], [`upstream`], [`telemetry`], then
//!    [`store`] (persists [`record`]s) and [`exchange`] (one mirrored exchange in flight).
//! 3. [`diff`]: judges exchanges, writes records.
//! 4. [`shadow`]: sends copies, hands exchanges to [`diff`].
//!    [`corpus`]: records requests for replay (`record:`) into the [`store`].
//! 5. [`routing`]: compiles a config into the table, the shadow rules and compare rules
//!    included.
//! 6. [`health`], [`reload`], [`report`], [`routes_cli`], [`replay`]: work on a table or a
//!    store.
//! 7. [`proxy`] (the Pingora phases, read top-down in Pingora's call order, each a few steps
//!    in the files beside it) and [`connection`] (the request path), [`edge`] (PROXY protocol,
//!    TLS handshakes, certificate watch), [`admin`] (one file per endpoint group), [`guard`]'s
//!    users; [`tls`] (certificates and backend clients) sits with [`upstream`] below.
//! 8. [`lifecycle`] (stop and upgrade), [`server`] and [`demo`]: the process.
//!
//! There is no exception: request ids are minted in `connection`, which `proxy` uses. A unit
//! test reads the `crate::` references of `src/` and fails naming
//! any cycle: `cargo test --lib module_graph`.

pub mod admin;
pub mod admin_api;
pub mod config;
pub mod connection;
pub mod corpus;
pub mod coverage;
pub mod demo;
pub mod diff;
pub mod edge;
pub mod edits;
pub mod exchange;
pub mod forwarded;
pub mod guard;
pub mod health;
pub mod hygiene;
pub mod lifecycle;
pub mod metrics;
#[cfg(test)]
mod module_graph;
pub mod parallel;
pub mod proxy;
pub mod record;
pub mod redact;
pub mod reload;
pub mod replay;
pub mod report;
pub mod response;
pub mod routes_cli;
pub mod routing;
pub mod server;
pub mod shadow;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod unverified;
pub mod upstream;
pub mod viewer;
pub mod vocabulary;
