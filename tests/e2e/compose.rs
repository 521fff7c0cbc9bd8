//! The docker-compose quick start (`deploy/compose/`) holds together without Docker: every file
//! it mounts or builds from exists, every name it refers to is defined, the routes both replicas
//! run validate with the real binary, the password reaches Postgres and the replicas as the same
//! secret file, and Prometheus scrapes every replica's admin port. (Docker may not run where the
//! suite does; this is what can go wrong in the files themselves.)

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_yaml::Value;
use support::{repo_root, run_cli};

fn compose_dir() -> PathBuf {
    repo_root().join("deploy/compose")
}

fn compose() -> Value {
    let path = compose_dir().join("compose.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut document: Value = serde_yaml::from_str(&text).unwrap();
    // `<<: *replica`, as Compose reads it.
    document.apply_merge().unwrap();
    document
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Names a mapping's keys (`depends_on` and `secrets` come as a list or a mapping).
fn names(value: &Value) -> Vec<String> {
    match value {
        Value::Mapping(map) => map
            .keys()
            .filter_map(|key| key.as_str().map(str::to_owned))
            .collect(),
        other => strings(other),
    }
}

/// A bind mount's host path, relative to the compose file; `None` for a named volume.
fn host_path(source: &str) -> Option<PathBuf> {
    (source.starts_with('.') || source.starts_with('/')).then(|| compose_dir().join(source))
}

#[test]
fn the_compose_quick_start_mounts_files_that_exist_and_its_routes_validate() {
    let document = compose();
    let services = document["services"].as_mapping().expect("services");
    let declared = |section: &str| -> BTreeSet<String> {
        document[section]
            .as_mapping()
            .map(|map| {
                map.keys()
                    .filter_map(|key| key.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let service_names: BTreeSet<String> = declared("services");
    for wanted in ["legacy", "orders-v2", "postgres", "prometheus"] {
        assert!(service_names.contains(wanted), "no {wanted} service");
    }
    for secret in declared("secrets") {
        let file = document["secrets"][secret.as_str()]["file"]
            .as_str()
            .unwrap_or_else(|| panic!("secret {secret} is not a file"));
        assert!(
            compose_dir().join(file).is_file(),
            "secret {secret}: {file}"
        );
    }

    let mut replicas = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap().to_owned();
        assert!(
            !service["image"].is_null() || !service["build"].is_null(),
            "{name} has neither image nor build"
        );
        if let Some(context) = service["build"]["context"].as_str() {
            let context = compose_dir().join(context);
            assert!(context.join("Cargo.toml").is_file(), "{name}: {context:?}");
            let dockerfile = service["build"]["dockerfile"]
                .as_str()
                .unwrap_or("Dockerfile");
            assert!(context.join(dockerfile).is_file(), "{name}: {dockerfile}");
        }
        for needed in names(&service["depends_on"]) {
            assert!(
                service_names.contains(&needed),
                "{name} depends on {needed}"
            );
        }
        for secret in names(&service["secrets"]) {
            assert!(
                declared("secrets").contains(&secret),
                "{name}: secret {secret}"
            );
        }
        let mut mounts = Vec::new();
        for volume in strings(&service["volumes"]) {
            let mut parts = volume.split(':');
            let (source, target) = (parts.next().unwrap(), parts.next().unwrap());
            match host_path(source) {
                Some(path) => {
                    assert!(
                        path.exists(),
                        "{name} mounts {source}, which does not exist"
                    );
                    mounts.push((target.to_owned(), path));
                }
                None => assert!(
                    declared("volumes").contains(source),
                    "{name}: volume {source} is not declared"
                ),
            }
        }
        let command = strings(&service["command"]);
        if command.first().map(String::as_str) == Some("run") {
            replicas.push((name, service.clone(), command, mounts));
        }
    }
    assert_eq!(replicas.len(), 2, "two strangler replicas");

    let mut replica_names = BTreeSet::new();
    let mut admin_targets = BTreeSet::new();
    for (name, service, command, mounts) in &replicas {
        replica_names.insert(
            service["environment"]["STRANGLER_REPLICA"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} names no replica"))
                .to_owned(),
        );
        // The config the command runs, through the mount it lives in.
        let config = command
            .iter()
            .skip_while(|arg| *arg != "-c")
            .nth(1)
            .unwrap_or_else(|| panic!("{name}: no -c"));
        let on_host = mounts
            .iter()
            .find_map(|(target, host)| {
                let rest = Path::new(config).strip_prefix(target).ok()?;
                Some(host.join(rest))
            })
            .unwrap_or_else(|| panic!("{name}: {config} is not mounted"));
        let shown = on_host.display().to_string();
        let (code, stdout, stderr) = run_cli(&["validate", "--no-resolve", &shown], &repo_root());
        assert_eq!(code, 0, "{name}: {stdout}{stderr}");

        let routes: Value =
            serde_yaml::from_str(&std::fs::read_to_string(&on_host).unwrap()).unwrap();
        let store = routes["server"]["diff_store"].as_str().unwrap();
        assert!(store.starts_with("postgres://"), "{name}: {store}");
        assert!(
            store.contains("@postgres:5432/"),
            "{name} stores in the compose Postgres: {store}"
        );
        // The password file is the secret Compose mounts at /run/secrets/NAME.
        let password_file = routes["server"]["diff_store_password_file"]
            .as_str()
            .unwrap();
        let secret = password_file
            .strip_prefix("/run/secrets/")
            .unwrap_or_else(|| panic!("{name}: {password_file} is not a secret"));
        assert!(
            names(&service["secrets"]).iter().any(|s| s == secret),
            "{name} does not mount the secret {secret}"
        );
        assert_eq!(
            document["services"]["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"],
            Value::from(password_file),
            "Postgres and the replicas share one password file"
        );
        // The upstreams are services of this file.
        for upstream in routes["upstreams"].as_mapping().unwrap().values() {
            for backend in strings(&upstream["backends"]) {
                let host = backend.split(':').next().unwrap();
                assert!(service_names.contains(host), "{name}: backend {backend}");
            }
        }
        let admin_port = routes["server"]["admin"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        admin_targets.insert(format!("{name}:{admin_port}"));
    }
    assert_eq!(
        replica_names.len(),
        2,
        "each replica stores under its own name"
    );

    let prometheus: Value = serde_yaml::from_str(
        &std::fs::read_to_string(compose_dir().join("prometheus.yml")).unwrap(),
    )
    .unwrap();
    let scraped: BTreeSet<String> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|job| {
            job["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|config| strings(&config["targets"]))
        .collect();
    assert_eq!(scraped, admin_targets, "Prometheus scrapes every replica");
}
