//! Packaging for a fleet: the kustomize base's routes validate, and `strangler healthcheck`
//! (the image's HEALTHCHECK) tells a ready proxy from one that is not there.

use crate::support;

use support::{Backend, Proxy, dead_address, repo_root, run_cli};

#[test]
fn the_fleet_configmap_validates() {
    let (code, stdout, stderr) = run_cli(
        &["validate", "--no-resolve", "deploy/base/configmap.yaml"],
        &repo_root(),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("deploy/base/configmap.yaml: data.routes.yaml: OK"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_passes_on_a_ready_proxy_and_fails_where_none_listens() {
    let legacy = Backend::start("legacy").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  legacy: {{ backends: [{}] }}\ndefault_upstream: legacy\n",
        legacy.address
    ))
    .await;
    let admin = proxy.admin.to_string();
    let (code, _, stderr) = run_cli(&["healthcheck", "--admin", &admin], &repo_root());
    assert_eq!(code, 0, "{stderr}");

    let nobody = dead_address().to_string();
    let (code, _, stderr) = run_cli(
        &["healthcheck", "--admin", &nobody, "--timeout", "1s"],
        &repo_root(),
    );
    assert_eq!(code, 1);
    assert!(stderr.contains(&nobody), "{stderr}");
}
