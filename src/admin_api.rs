//! The admin API's JSON documents, typed: `GET /routes` ([`RoutesDocument`]) and
//! `GET /upstreams` ([`UpstreamsDocument`]). The admin listener ([`crate::admin`]) builds and
//! writes them; `strangler routes` ([`crate::routes_cli`]) reads them back with the same types,
//! so a renamed field breaks the build, not the command.
//!
//! On the wire the documents go through [`serde_json::Value`], whose maps keep keys sorted: the
//! field order here does not show. `config` stays a JSON value: it is the file's model as it
//! serializes (which `strangler routes` also renders from a file), and the model is not meant to
//! be read back from JSON; `last_reload` is the reload report as [`crate::reload`] writes it.
//!
//! This module only describes documents; what goes in them is the admin's business. It uses
//! only [`crate::config`]'s vocabulary (stages, guard modes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{GuardMode, Stage};

/// `GET /routes`: the live config, its generation and what each route serves now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutesDocument {
    pub generation: u64,
    pub kill_switch: bool,
    /// Each route's stage, by route name.
    pub stages: BTreeMap<String, Stage>,
    /// Where each route sends requests right now, kill switch and guards included.
    pub effective: Vec<EffectiveRoute>,
    /// SHA-256 (hex) of the file this generation was read from.
    pub sha256: String,
    /// RFC 3339, whole seconds.
    pub loaded_at: String,
    /// `None` when the config did not come from a file (the demo's built-in copy).
    pub config_path: Option<String>,
    /// The last reload attempt, as [`crate::reload`] reports it.
    pub last_reload: Option<serde_json::Value>,
    /// The file's model, as it serializes.
    pub config: serde_json::Value,
    /// Each upstream's resolved addresses and backends, by upstream name.
    pub upstreams: BTreeMap<String, ResolvedUpstream>,
}

/// What one route does with requests at this moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffectiveRoute {
    pub route: String,
    pub stage: Stage,
    /// Upstreams that serve the route's requests now (a split's sides, in order).
    pub serves: Vec<String>,
    pub fallback: Option<String>,
    /// Where copies go now; `None` while the kill switch stops them.
    pub shadow: Option<String>,
    pub kill_switch: bool,
    /// The route's guard, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardState>,
}

/// A route's guard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    pub mode: GuardMode,
    /// Tripped in enforce mode: the route serves from legacy.
    pub holding: bool,
    /// What tripped it (in observe mode: what would have).
    pub trip: Option<GuardTrip>,
}

/// What tripped a guard, with the numbers that did it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardTrip {
    pub reason: String,
    pub mode: GuardMode,
    /// RFC 3339.
    pub at: String,
    /// The measured value: a rate (0–1) or a p99 in milliseconds.
    pub observed: f64,
    /// The threshold it crossed, in the same unit.
    pub threshold: f64,
    pub samples: u64,
    /// The same, as a sentence.
    pub detail: String,
}

/// An upstream in `/routes`: its resolved addresses and its backends' health in brief.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedUpstream {
    pub resolved: Vec<String>,
    pub backends: Vec<BackendBrief>,
}

/// A backend in `/routes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendBrief {
    pub address: String,
    /// In rotation: not failing health checks, not ejected.
    pub available: bool,
    pub failing_health_checks: bool,
    pub ejected: bool,
}

/// `GET /upstreams`: each pool of the live generation, its health settings and every backend's
/// state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamsDocument {
    pub generation: u64,
    pub upstreams: Vec<UpstreamState>,
}

/// One upstream in `/upstreams`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamState {
    pub name: String,
    /// Backends in rotation; what `strangler_upstream_healthy` exports.
    pub healthy_backends: usize,
    pub total_backends: usize,
    pub retries: u32,
    /// `None` without active checks.
    pub health_check: Option<HealthCheckState>,
    pub passive: PassiveHealthState,
    pub backends: Vec<BackendState>,
}

/// Whether an active check opens a connection or asks a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Tcp,
    Http,
}

/// An upstream's active health check settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckState {
    pub kind: CheckKind,
    pub path: Option<String>,
    /// A duration as written in the config (`5s`).
    pub interval: String,
    pub timeout: String,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

/// An upstream's passive health settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassiveHealthState {
    pub consecutive_failures: u32,
    pub ejection: String,
}

/// Where a backend stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendCondition {
    Healthy,
    /// Failing active health checks.
    Unhealthy,
    /// Taken out by passive health for a while.
    Ejected,
}

/// A backend in `/upstreams`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendState {
    pub address: String,
    pub healthy: bool,
    pub state: BackendCondition,
    pub probed_down: bool,
    pub ejected: bool,
    /// RFC 3339 with milliseconds; `None` when not ejected.
    pub ejected_until: Option<String>,
    pub consecutive_request_failures: u32,
    pub consecutive_check_failures: u32,
    pub consecutive_check_passes: u32,
}

impl BackendState {
    /// The same backend as `/routes` shows it, so both documents agree on a backend's health.
    pub fn brief(&self) -> BackendBrief {
        BackendBrief {
            address: self.address.clone(),
            available: self.healthy,
            failing_health_checks: self.probed_down,
            ejected: self.ejected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(state: BackendCondition) -> BackendState {
        BackendState {
            address: "127.0.0.1:9001".into(),
            healthy: state == BackendCondition::Healthy,
            state,
            probed_down: state == BackendCondition::Unhealthy,
            ejected: state == BackendCondition::Ejected,
            ejected_until: None,
            consecutive_request_failures: 0,
            consecutive_check_failures: 0,
            consecutive_check_passes: 0,
        }
    }

    #[test]
    fn the_routes_brief_of_a_backend_agrees_with_its_full_state() {
        let brief = backend(BackendCondition::Ejected).brief();
        assert!(!brief.available && brief.ejected && !brief.failing_health_checks);
        let brief = backend(BackendCondition::Unhealthy).brief();
        assert!(!brief.available && !brief.ejected && brief.failing_health_checks);
        assert!(backend(BackendCondition::Healthy).brief().available);
    }

    #[test]
    fn a_route_without_a_guard_has_no_guard_key_and_reads_back() {
        let route = EffectiveRoute {
            route: "orders".into(),
            stage: Stage::Canary,
            serves: vec!["legacy".into(), "new".into()],
            fallback: Some("legacy".into()),
            shadow: None,
            kill_switch: false,
            guard: None,
        };
        let json = serde_json::to_value(&route).unwrap();
        assert!(json.get("guard").is_none());
        assert_eq!(json["stage"], "canary");
        assert_eq!(
            serde_json::from_value::<EffectiveRoute>(json).unwrap(),
            route
        );
    }
}
