//! `GET /routes` and `GET /upstreams`: the live generation as the typed documents of
//! [`crate::admin_api`]. Each backend's health is read once, into a [`BackendState`], from which
//! both documents take what they show, so they agree on a backend.

use std::sync::atomic::Ordering;

use crate::admin_api::{
    BackendCondition, BackendState, CheckKind, EffectiveRoute, GuardState, GuardTrip,
    HealthCheckState, PassiveHealthState, ResolvedUpstream, RoutesDocument, UpstreamState,
    UpstreamsDocument,
};
use crate::reload::Reloader;
use crate::routing::RouteTable;
use crate::upstream::Backend;

/// `GET /routes`: the live config, its generation, SHA-256 and last reload, what each route
/// serves now, and each upstream's resolved addresses and backends.
pub fn routes(table: &RouteTable, reloader: Option<&Reloader>) -> RoutesDocument {
    let upstreams = table
        .upstreams()
        .iter()
        .map(|pool| {
            let upstream = ResolvedUpstream {
                resolved: pool.addresses().map(|a| a.to_string()).collect(),
                backends: pool
                    .backends()
                    .iter()
                    .map(|backend| backend_state(backend).brief())
                    .collect(),
            };
            (pool.name().to_owned(), upstream)
        })
        .collect();
    RoutesDocument {
        generation: table.generation(),
        kill_switch: table.kill_switch.load(Ordering::Relaxed),
        stages: table
            .routes()
            .iter()
            .map(|route| (route.name.clone(), route.stage))
            .collect(),
        effective: table
            .effective_routing()
            .into_iter()
            .map(effective_route)
            .collect(),
        sha256: table.sha256().to_owned(),
        loaded_at: humantime::format_rfc3339_seconds(table.loaded_at()).to_string(),
        config_path: reloader.map(|r| r.path().display().to_string()),
        last_reload: reloader
            .and_then(Reloader::last_report)
            .map(|report| serde_json::to_value(report).expect("reports serialize")),
        config: serde_json::to_value(table.config()).expect("the config serializes"),
        upstreams,
    }
}

fn effective_route(route: crate::routing::EffectiveRoute) -> EffectiveRoute {
    EffectiveRoute {
        route: route.route,
        stage: route.stage,
        serves: route.serves,
        fallback: route.fallback,
        shadow: route.shadow,
        kill_switch: route.kill_switch,
        guard: route.guard.map(|guard| GuardState {
            mode: guard.mode,
            holding: guard.holding,
            trip: guard.trip.map(|trip| GuardTrip {
                reason: trip.reason.to_owned(),
                mode: trip.mode,
                at: trip.at,
                observed: trip.observed,
                threshold: trip.threshold,
                samples: trip.samples,
                detail: trip.detail,
            }),
        }),
    }
}

/// `GET /upstreams`: each pool of the live generation, its health settings and every
/// backend's state. `healthy_backends` is what `strangler_upstream_healthy` exports.
pub fn upstreams(table: &RouteTable) -> UpstreamsDocument {
    let upstreams = table
        .upstreams()
        .iter()
        .map(|pool| {
            let backends: Vec<BackendState> = pool.backends().iter().map(backend_state).collect();
            let passive = pool.passive();
            UpstreamState {
                name: pool.name().to_owned(),
                healthy_backends: pool.backends().iter().filter(|b| b.available()).count(),
                total_backends: backends.len(),
                retries: pool.retries(),
                health_check: pool.health_check().map(|check| HealthCheckState {
                    kind: if check.path.is_some() {
                        CheckKind::Http
                    } else {
                        CheckKind::Tcp
                    },
                    path: check.path.clone(),
                    interval: humantime::format_duration(check.interval).to_string(),
                    timeout: humantime::format_duration(check.timeout).to_string(),
                    unhealthy_threshold: check.unhealthy_threshold,
                    healthy_threshold: check.healthy_threshold,
                }),
                passive: PassiveHealthState {
                    consecutive_failures: passive.consecutive_failures,
                    ejection: humantime::format_duration(passive.ejection).to_string(),
                },
                backends,
            }
        })
        .collect();
    UpstreamsDocument {
        generation: table.generation(),
        upstreams,
    }
}

/// A backend's health, each flag read once so the fields agree with each other (`healthy` is
/// what `available()` says).
fn backend_state(backend: &Backend) -> BackendState {
    let probed_down = backend.probed_down();
    let ejected_until = backend.ejected_until();
    let (check_failures, check_passes) = backend.probe_streak();
    let state = if probed_down {
        BackendCondition::Unhealthy
    } else if ejected_until.is_some() {
        BackendCondition::Ejected
    } else {
        BackendCondition::Healthy
    };
    BackendState {
        address: backend.address().to_string(),
        healthy: !probed_down && ejected_until.is_none(),
        state,
        probed_down,
        ejected: ejected_until.is_some(),
        ejected_until: ejected_until
            .map(|until| humantime::format_rfc3339_millis(until).to_string()),
        consecutive_request_failures: backend.consecutive_request_failures(),
        consecutive_check_failures: check_failures,
        consecutive_check_passes: check_passes,
    }
}
