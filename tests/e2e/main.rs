//! The end-to-end suite: every test here starts the real `strangler` binary and real servers on
//! loopback and asserts what a client (or an operator at the CLI) sees.
//!
//! One test binary, a module per area (as ripgrep keeps its integration tests): the suite links
//! once instead of once per file, and `cargo test` runs every area in parallel. Rules that need
//! no process are tested beside their code in `src/`, not here. Shared harness: [`support`].

mod support;

mod authoring;
mod canary;
mod compose;
mod coverage;
mod diff;
mod fleet;
mod forwarding;
mod guard;
mod guide;
mod hardening;
mod lifecycle;
mod observability;
mod otlp;
mod postgres;
mod reload;
mod replay;
mod report;
mod resilience;
mod routing;
mod shadow;
mod tls;
mod ui;
mod validate;
