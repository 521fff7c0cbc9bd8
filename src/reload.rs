//! Config reloads: a file watch, SIGHUP and `POST /reload`, all funnelled into one
//! validate-then-swap.
//!
//! A reload reads the file, compiles a whole new [`RouteTable`] and publishes it with a single
//! `ArcSwap` store, or changes nothing: an invalid file is logged with its diagnostics, counted,
//! and shown by the admin API while the previous generation keeps serving. Requests in flight
//! keep the table they loaded when they started, so a swap never changes a request midway.
//!
//! The watch covers the file's *directory*, not its inode, so it follows every way a file is
//! replaced: editors' write-to-temp-then-rename, `cp` over the file, delete and re-create, and the
//! Kubernetes ConfigMap layout (`routes.yaml -> ..data/routes.yaml`, `..data` swapped
//! atomically). Events are debounced ([`DEBOUNCE`]) and the file must read the same twice in a
//! row ([`SETTLE`]) before it is parsed, so a half-written file is never applied.
//!
//! This module owns when and how a new table replaces the old one. What a table contains is
//! [`crate::routing`]'s business.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{Diagnostic, ServerConfig, SourceFile, parse};
use crate::metrics::Metrics;
use crate::routing::{RouteTable, SharedRouteTable};

/// Quiet time after the last file event before the file is read.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Gap between the two reads that must agree before a changed file is parsed.
pub const SETTLE: Duration = Duration::from_millis(25);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    FileWatch,
    Signal,
    Admin,
}

/// The result of one reload attempt.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// A new generation is serving.
    Applied {
        generation: u64,
        /// Process-level settings that changed in the file but apply only after a restart.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        restart_required: Vec<String>,
    },
    /// The file is byte-for-byte what is already serving.
    Unchanged { generation: u64 },
    /// The file is invalid; the previous generation keeps serving.
    Invalid {
        generation: u64,
        errors: Vec<Diagnostic>,
    },
    /// The file could not be read (missing, permissions); the previous generation keeps serving.
    Unreadable { generation: u64, error: String },
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Applied { .. } => "applied",
            Outcome::Unchanged { .. } => "unchanged",
            Outcome::Invalid { .. } => "invalid",
            Outcome::Unreadable { .. } => "unreadable",
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Applied { .. } | Outcome::Unchanged { .. })
    }
}

/// The last reload attempt, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub trigger: Trigger,
    /// RFC 3339 time the attempt finished.
    pub at: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Performs reloads for one config file. Shared by the watcher, the signal handler and admin.
pub struct Reloader {
    path: PathBuf,
    routes: SharedRouteTable,
    metrics: Arc<Metrics>,
    /// The `server` section the process started with: listeners cannot move without a restart.
    running_server: ServerConfig,
    /// Serializes reloads, so generations are assigned one at a time.
    in_progress: Mutex<()>,
    last: Mutex<Option<ReloadReport>>,
    /// SHA-256 of the last content rejected as invalid, and the report that rejected it: the
    /// same content read again (the watch saw it, then `POST /reload`) is the same attempt.
    last_rejected: Mutex<Option<(String, ReloadReport)>>,
}

impl Reloader {
    pub fn new(path: PathBuf, routes: SharedRouteTable, metrics: Arc<Metrics>) -> Self {
        let table = routes.load();
        let running_server = table.config().server.clone();
        metrics.config_generation.set(table.generation() as i64);
        drop(table);
        Self {
            path,
            routes,
            metrics,
            running_server,
            in_progress: Mutex::new(()),
            last: Mutex::new(None),
            last_rejected: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last_report(&self) -> Option<ReloadReport> {
        self.last.lock().expect("reload report lock").clone()
    }

    /// Reads the file and, if it changed and is valid, swaps the new table in.
    pub fn reload(&self, trigger: Trigger) -> ReloadReport {
        let text = std::fs::read_to_string(&self.path);
        self.reload_text(trigger, text)
    }

    fn reload_text(&self, trigger: Trigger, text: std::io::Result<String>) -> ReloadReport {
        let _one_at_a_time = self.in_progress.lock().expect("reload lock");
        let current = self.routes.load_full();
        let generation = current.generation();
        let outcome = match text {
            Err(error) => Outcome::Unreadable {
                generation,
                error: format!("cannot read {}: {error}", self.path.display()),
            },
            Ok(text) => {
                let source = SourceFile::new(self.path.display().to_string(), text);
                if source.sha256 == current.sha256() {
                    // Nothing to do, and nothing to count: an edit is counted once, by whoever
                    // applied it (typically the file watch before a `POST /reload`).
                    return self.note(trigger, Outcome::Unchanged { generation });
                }
                let rejected = self.last_rejected.lock().expect("reload lock").clone();
                if let Some((sha, report)) = rejected
                    && sha == source.sha256
                {
                    // The same invalid content again: the same answer, counted once.
                    return self.note(trigger, report.outcome);
                }
                let sha = source.sha256.clone();
                let outcome = self.compile_and_swap(source, &current);
                let report = self.record(trigger, outcome);
                // Remembered until something else is applied: after that, the same bad content
                // is a new edit again.
                *self.last_rejected.lock().expect("reload lock") = match report.outcome {
                    Outcome::Invalid { .. } => Some((sha, report.clone())),
                    _ => None,
                };
                return report;
            }
        };
        self.record(trigger, outcome)
    }

    /// A report for an attempt that changed nothing and is not counted again.
    fn note(&self, trigger: Trigger, outcome: Outcome) -> ReloadReport {
        tracing::debug!(
            ?trigger,
            result = outcome.label(),
            "config content already handled"
        );
        let report = ReloadReport {
            trigger,
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            outcome,
        };
        *self.last.lock().expect("reload report lock") = Some(report.clone());
        report
    }

    fn compile_and_swap(&self, source: SourceFile, current: &RouteTable) -> Outcome {
        let previous = current.generation();
        let next_generation = previous + 1;
        let compiled = parse(source)
            .and_then(|loaded| RouteTable::compile_replacing(loaded, next_generation, current));
        match compiled {
            Ok(table) => {
                let restart_required = server_changes(&self.running_server, &table.config().server);
                self.swap_in(current, table);
                Outcome::Applied {
                    generation: next_generation,
                    restart_required,
                }
            }
            Err(error) => {
                tracing::error!(
                    config = %self.path.display(),
                    serving_generation = previous,
                    "config rejected, previous generation keeps serving:\n{error}"
                );
                Outcome::Invalid {
                    generation: previous,
                    errors: error.diagnostics().to_vec(),
                }
            }
        }
    }

    /// The one way a compiled generation goes live, for an edited file and for new backend
    /// addresses alike: it inherits what the running generation learned (backend health, the
    /// operator's kill switch, the guards of unchanged routes), the series of removed routes and upstreams are dropped, then
    /// one atomic store. Requests already running keep the generation they loaded.
    fn swap_in(&self, current: &RouteTable, mut next: RouteTable) {
        next.inherit_health(current);
        next.inherit_guards(current);
        self.carry_kill_switch(current, &next);
        self.forget_removed(current, &next);
        self.routes.store(Arc::new(next));
    }

    /// The kill switch set through the admin API is an operator's decision mid-incident: a
    /// reload that does not touch `kill_switch` in the file keeps it as it is. A file that
    /// changes `kill_switch` wins, and a release is logged loudly.
    fn carry_kill_switch(&self, current: &RouteTable, next: &RouteTable) {
        use std::sync::atomic::Ordering::Relaxed;
        let live = current.kill_switch.load(Relaxed);
        let (was_in_file, in_file) = (current.config().kill_switch, next.config().kill_switch);
        if was_in_file == in_file {
            if live != in_file {
                next.kill_switch.store(live, Relaxed);
                tracing::warn!(
                    kill_switch = live,
                    "kill switch kept as set from the admin API (the reload did not change `kill_switch`)"
                );
            }
            return;
        }
        if in_file != live {
            let state = if in_file { "on" } else { "off" };
            self.metrics
                .kill_switch_changes
                .with_label_values(&[state, "config"])
                .inc();
            if in_file {
                tracing::warn!(
                    "kill switch turned on by the config file: every route goes to legacy"
                );
            } else {
                tracing::warn!(
                    "kill switch released by the config file: routes serve as configured again"
                );
            }
        }
    }

    /// Resolves every backend host name again; when an upstream's addresses changed (and every
    /// name of it resolved), compiles the serving file again so a new generation serves them,
    /// health carried per address. A failed lookup changes nothing: the last good addresses
    /// keep serving. Does nothing while the file holds an edit not applied yet (the file watch
    /// owns that).
    pub fn refresh_dns(&self) {
        let changed = self.resolve_again();
        if changed.is_empty() {
            return;
        }
        let _one_at_a_time = self.in_progress.lock().expect("reload lock");
        let current = self.routes.load_full();
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return;
        };
        let source = SourceFile::new(self.path.display().to_string(), text);
        if source.sha256 != current.sha256() {
            return;
        }
        let next = current.generation() + 1;
        match parse(source).and_then(|loaded| RouteTable::compile_replacing(loaded, next, &current))
        {
            Ok(table) => {
                self.swap_in(&current, table);
                self.metrics.config_generation.set(next as i64);
                tracing::info!(generation = next, upstreams = ?changed, "new backend addresses serving");
            }
            Err(error) => {
                tracing::warn!(%error, "recompiling for new backend addresses failed; the last good addresses keep serving");
                for name in &changed {
                    self.metrics
                        .dns_refreshes
                        .with_label_values(&[name, "failed"])
                        .inc();
                }
            }
        }
    }

    /// Looks every upstream's host names up again, counts each outcome, and names the
    /// upstreams whose complete set of addresses differs from what serves now.
    fn resolve_again(&self) -> Vec<String> {
        let current = self.routes.load_full();
        let mut changed = Vec::new();
        for (name, config) in &current.config().upstreams {
            let names: Vec<&String> = config
                .backends
                .iter()
                .filter(|backend| crate::upstream::is_host_name(backend))
                .collect();
            if names.is_empty() {
                continue;
            }
            let mut resolved = Vec::new();
            let mut failed = false;
            for backend in &config.backends {
                match crate::upstream::resolve_all(backend, Default::default()) {
                    Ok(addresses) => resolved.extend(addresses),
                    Err(problem) => {
                        tracing::warn!(upstream = %name, backend = %backend, error = %problem.message, "DNS refresh failed; the last good addresses keep serving");
                        failed = true;
                    }
                }
            }
            let result = if failed {
                "failed"
            } else {
                resolved.sort();
                resolved.dedup();
                let mut serving: Vec<std::net::SocketAddr> = current
                    .upstream_id(name)
                    .map(|id| current.upstream(id).addresses().collect())
                    .unwrap_or_default();
                serving.sort();
                if serving == resolved {
                    "unchanged"
                } else {
                    tracing::info!(upstream = %name, before = ?serving, after = ?resolved, "backend addresses changed");
                    changed.push(name.clone());
                    "changed"
                }
            };
            self.metrics
                .dns_refreshes
                .with_label_values(&[name, result])
                .inc();
        }
        changed
    }

    /// Drops the metric series of routes and upstreams the new generation no longer has.
    fn forget_removed(&self, current: &RouteTable, next: &RouteTable) {
        // A set, not a scan of `next` per route: 10,000 routes replacing 10,000 made that
        // 10^8 name comparisons on the reload's path.
        let kept: std::collections::HashSet<&str> = next
            .routes()
            .iter()
            .map(|route| route.name.as_str())
            .collect();
        let routes: Vec<&str> = current
            .routes()
            .iter()
            .map(|route| route.name.as_str())
            .filter(|name| !kept.contains(name))
            .collect();
        let upstreams: Vec<&str> = current
            .upstreams()
            .iter()
            .map(|pool| pool.name())
            .filter(|name| next.upstream_id(name).is_none())
            .collect();
        self.metrics.forget(&routes, &upstreams);
    }

    fn record(&self, trigger: Trigger, outcome: Outcome) -> ReloadReport {
        let now = SystemTime::now();
        let metrics = &self.metrics;
        metrics
            .config_reloads
            .with_label_values(&[outcome.label()])
            .inc();
        metrics
            .config_last_reload_success
            .set(i64::from(outcome.is_success()));
        metrics.config_last_reload_timestamp.set(
            now.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        match &outcome {
            Outcome::Applied {
                generation,
                restart_required,
            } => {
                metrics.config_generation.set(*generation as i64);
                tracing::info!(?trigger, generation, "config reloaded");
                for setting in restart_required {
                    tracing::warn!(setting = %setting, "changed in the file; takes effect after a restart");
                }
            }
            Outcome::Unchanged { generation } => {
                tracing::debug!(?trigger, generation, "config unchanged")
            }
            Outcome::Unreadable { error, generation } => {
                tracing::error!(?trigger, serving_generation = generation, "{error}")
            }
            Outcome::Invalid { .. } => {}
        }
        let report = ReloadReport {
            trigger,
            at: humantime::format_rfc3339_seconds(now).to_string(),
            outcome,
        };
        *self.last.lock().expect("reload report lock") = Some(report.clone());
        report
    }
}

/// The `server.*` settings that differ; they need a restart.
fn server_changes(running: &ServerConfig, new: &ServerConfig) -> Vec<String> {
    let mut changed = Vec::new();
    if running.listen.restart_key() != new.listen.restart_key() {
        changed.push(format!(
            "server.listen ({} -> {})",
            running.listen, new.listen
        ));
    }
    if running.admin != new.admin {
        changed.push(format!("server.admin ({} -> {})", running.admin, new.admin));
    }
    if running.threads != new.threads {
        changed.push("server.threads".to_owned());
    }
    if running.work_stealing != new.work_stealing {
        changed.push("server.work_stealing".to_owned());
    }
    let read_at_start = [
        (
            "server.drain_timeout",
            running.drain_timeout != new.drain_timeout,
        ),
        ("server.admin_token", running.admin_token != new.admin_token),
        ("server.admin_hosts", running.admin_hosts != new.admin_hosts),
        (
            "server.shadow_max_inflight",
            running.shadow_max_inflight != new.shadow_max_inflight,
        ),
        (
            "server.shadow_max_memory",
            running.shadow_max_memory != new.shadow_max_memory,
        ),
        ("server.diff_store", running.diff_store != new.diff_store),
        (
            "server.diff_store_password_file",
            running.diff_store_password_file != new.diff_store_password_file,
        ),
        (
            "server.diff_match_sample",
            running.diff_match_sample != new.diff_match_sample,
        ),
        ("server.replica", running.replica != new.replica),
        (
            "server.diff_max_rows",
            running.diff_max_rows != new.diff_max_rows,
        ),
        (
            "server.diff_max_age",
            running.diff_max_age != new.diff_max_age,
        ),
        (
            "server.diff_max_sample",
            running.diff_max_sample != new.diff_max_sample,
        ),
        ("server.otlp", running.otlp != new.otlp),
    ];
    for (field, differs) in read_at_start {
        if differs {
            changed.push(field.to_owned());
        }
    }
    changed
}

/// Re-resolves backend host names every `server.dns_refresh` (read from the serving
/// generation, so a reload can change it) until shutdown; see [`Reloader::refresh_dns`].
pub async fn refresh_dns(
    reloader: Arc<Reloader>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let every = reloader.routes.load().config().server.dns_refresh;
        // Off (`0s`): look again now and then, in case a reload turns it on.
        let wait = if every.is_zero() {
            Duration::from_secs(30)
        } else {
            every
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if every.is_zero() {
            continue;
        }
        let reloader = reloader.clone();
        // Lookups block (getaddrinfo); keep them off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || reloader.refresh_dns()).await;
    }
}

/// Runs the file watch and the SIGHUP handler until `shutdown` fires. Meant to run as a Pingora
/// background service.
pub async fn watch(reloader: Arc<Reloader>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<()>();
    let _watcher = match start_file_watch(reloader.path(), events_tx) {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::error!(
                config = %reloader.path().display(),
                %error,
                "cannot watch the config file; reload with SIGHUP or POST /reload"
            );
            None
        }
    };
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::error!(%error, "cannot handle SIGHUP");
            None
        }
    };

    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(()) = async { match hangups.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                let reloader = reloader.clone();
                let _ = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Signal)).await;
            }
            Some(()) = events.recv() => {
                // Debounce: wait until the directory has been quiet for DEBOUNCE.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, events.recv()).await {}
                let text = read_settled(reloader.path()).await;
                let reloader = reloader.clone();
                let _ = tokio::task::spawn_blocking(move || reloader.reload_text(Trigger::FileWatch, text)).await;
            }
        }
    }
}

/// Reads the file until two reads [`SETTLE`] apart agree (at most a few tries), so a file still
/// being written is not taken for its final content.
async fn read_settled(path: &Path) -> std::io::Result<String> {
    let mut previous = tokio::fs::read_to_string(path).await;
    for _ in 0..10 {
        tokio::time::sleep(SETTLE).await;
        let current = tokio::fs::read_to_string(path).await;
        let same = match (&previous, &current) {
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) => a.kind() == b.kind(),
            _ => false,
        };
        if same {
            return current;
        }
        previous = current;
    }
    previous
}

/// Watches the directory holding `path` (and, if `path` is a symlink, the directory of its
/// target), sending a unit on every event there.
fn start_file_watch(
    path: &Path,
    events: tokio::sync::mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};

    let absolute = std::path::absolute(path)?;
    // Only events about the config file (under its name or its symlink target's) or about
    // Kubernetes' `..data` swap matter; a busy directory such as /tmp must not keep the
    // reloader awake.
    let mut names: Vec<std::ffi::OsString> = absolute
        .file_name()
        .map(|n| n.to_owned())
        .into_iter()
        .collect();
    if let Some(target_name) = std::fs::canonicalize(&absolute)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_owned()))
    {
        names.push(target_name);
    }
    let relevant = move |event: &notify::Event| {
        event.paths.iter().any(|changed| {
            changed.file_name().is_some_and(|name| {
                names.iter().any(|wanted| wanted == name)
                    || name.to_string_lossy().starts_with("..")
            })
        })
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| !event.kind.is_access() && relevant(&event)) {
            let _ = events.send(());
        }
    })?;
    let directory = absolute.parent().unwrap_or(Path::new("/")).to_owned();
    watcher.watch(&directory, RecursiveMode::NonRecursive)?;
    if let Ok(target) = std::fs::canonicalize(&absolute)
        && let Some(target_directory) = target.parent()
        && target_directory != directory
    {
        // A symlinked file changes where its target lives, not next to the link. For the
        // ConfigMap layout (`..data/routes.yaml`), the `..data` swap is seen in `directory`.
        watcher.watch(target_directory, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_runtime_shape_is_named_as_waiting_for_a_restart() {
        let running = ServerConfig::default();
        assert!(server_changes(&running, &running.clone()).is_empty());
        let new = ServerConfig {
            threads: Some(3),
            work_stealing: false,
            ..running.clone()
        };
        let changed = server_changes(&running, &new);
        assert_eq!(changed, ["server.threads", "server.work_stealing"]);
    }
}
