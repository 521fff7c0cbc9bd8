//! Config authoring for CI and editors, through the real binary: `validate --no-resolve`, a
//! ConfigMap manifest, stdin and GitHub annotations; `schema` (against every shipped config and
//! the committed copy); `completions` and `man`.

use crate::support;

use support::{repo_root, run_cli, run_cli_with_stdin};

/// Runs `strangler` with `args` and no input.
fn run(args: &[&str]) -> (i32, String, String) {
    run_cli(args, &repo_root())
}

#[test]
fn validate_no_resolve_accepts_the_shipped_configmap() {
    let (code, stdout, stderr) = run_cli(
        &[
            "validate",
            "--no-resolve",
            "examples/kubernetes/configmap.yaml",
        ],
        &repo_root(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("examples/kubernetes/configmap.yaml: data.routes.yaml: OK ("),
        "{stdout}"
    );
}

#[test]
fn without_no_resolve_unresolvable_backends_fail_with_a_hint_to_use_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        "upstreams:\n  legacy: { backends: [legacy.invalid:80] }\ndefault_upstream: legacy\n",
    )
    .unwrap();
    let (code, _, stderr) = run_cli(&["validate", "routes.yaml"], dir.path());
    assert_eq!(code, 1);
    assert!(
        stderr.contains("error: upstreams.legacy.backends[0]: cannot resolve `legacy.invalid:80`"),
        "{stderr}"
    );
    assert!(stderr.contains("--> routes.yaml:2:24"), "{stderr}");
    assert!(
        stderr.contains("use strangler validate --no-resolve"),
        "{stderr}"
    );

    let (code, stdout, stderr) = run_cli(&["validate", "--no-resolve", "routes.yaml"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("routes.yaml: OK (0 routes, 1 upstreams"),
        "{stdout}"
    );
}

#[test]
fn no_resolve_still_checks_the_host_port_syntax() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        "\
upstreams:
  legacy:
    backends:
      - legacy.invalid:80
      - legacy.invalid
      - legacy.invalid:http
      - ':80'
      - bad host:80
      - '[2001:db8::1]:8080'
default_upstream: legacy
",
    )
    .unwrap();
    let (code, _, stderr) = run_cli(&["validate", "--no-resolve", "routes.yaml"], dir.path());
    assert_eq!(code, 1);
    for (index, line, problem) in [
        (1, 5, "`legacy.invalid` has no port"),
        (2, 6, "the port `http` is not a number"),
        (3, 7, "the host is missing"),
        (4, 8, "`bad host` is not a valid host name"),
    ] {
        let block = stderr
            .split("\n\n")
            .find(|block| {
                block.starts_with(&format!("error: upstreams.legacy.backends[{index}]: "))
            })
            .unwrap_or_else(|| panic!("no error for backends[{index}] in:\n{stderr}"));
        assert!(block.contains(problem), "{block}");
        assert!(
            block.contains(&format!("--> routes.yaml:{line}:")),
            "{block}"
        );
    }
    assert!(stderr.contains("4 errors found"), "{stderr}");
}

const MANIFEST: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: strangler-routes
data:
  notes.txt: not a routes file
  routes.yaml: |
    upstreams:
      legacy: { backends: [legacy.shop.svc.cluster.local:80] }
    default_upstream: legacy
    routes:
      - name: orders
        match: { path_prefix: /api/orders }
        upstream: orders-v3
";

#[test]
fn configmap_errors_point_at_the_manifest_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cm.yaml"), MANIFEST).unwrap();
    let (code, _, stderr) = run_cli(&["validate", "--no-resolve", "cm.yaml"], dir.path());
    assert_eq!(code, 1);
    // `upstream: orders-v3` is line 7 of the entry and line 14 of the manifest.
    assert!(
        stderr.contains("error: routes[0].upstream: unknown upstream `orders-v3`"),
        "{stderr}"
    );
    assert!(stderr.contains("--> cm.yaml:14:9"), "{stderr}");
    assert!(
        stderr.contains("14 |         upstream: orders-v3"),
        "{stderr}"
    );

    let (code, stdout, _) = run_cli(
        &["validate", "--no-resolve", "--format", "json", "cm.yaml"],
        dir.path(),
    );
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report.as_array().unwrap().len(), 1, "only the .yaml entry");
    assert_eq!(report[0]["file"], "cm.yaml");
    assert_eq!(report[0]["entry"], "data.routes.yaml");
    assert_eq!(report[0]["errors"][0]["location"]["line"], 14);
}

#[test]
fn a_configmap_without_a_yaml_entry_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cm.yaml"),
        "kind: ConfigMap\ndata:\n  routes: |\n    upstreams: {}\n",
    )
    .unwrap();
    let (code, _, stderr) = run_cli(&["validate", "--no-resolve", "cm.yaml"], dir.path());
    assert_eq!(code, 1);
    assert!(
        stderr.contains("error: data: this ConfigMap has no entry ending in .yaml or .yml"),
        "{stderr}"
    );
    assert!(stderr.contains("--> cm.yaml:2:1"), "{stderr}");
}

#[test]
fn a_dash_reads_the_config_from_stdin() {
    let root = repo_root();
    let routes = std::fs::read_to_string(root.join("routes.yaml")).unwrap();
    let (code, stdout, stderr) = run_cli_with_stdin(&["validate", "-"], &root, Some(&routes));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("<stdin>: OK (3 routes"), "{stdout}");

    let (code, _, stderr) = run_cli_with_stdin(
        &["validate", "-"],
        &root,
        Some(
            "upstreams:\n  legacy: { backends: [127.0.0.1:9001] }\ndefault_upstream: legacy\nroutes:\n  - name: a\n    upstream: nowhere\n",
        ),
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("--> <stdin>:6:5"), "{stderr}");
    assert!(
        stderr.contains("<stdin>: 1 error found; nothing was applied"),
        "{stderr}"
    );

    // A ConfigMap piped from kubectl is recognised too.
    let (code, _, stderr) =
        run_cli_with_stdin(&["validate", "--no-resolve", "-"], &root, Some(MANIFEST));
    assert_eq!(code, 1);
    assert!(stderr.contains("--> <stdin>:14:9"), "{stderr}");
}

#[test]
fn github_format_prints_one_escaped_annotation_per_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("deploy")).unwrap();
    std::fs::write(
        dir.path().join("deploy/routes.yaml"),
        "upstreams:\n  legacy: { backends: [127.0.0.1:9001] }\n  orders-v2: { backends: [127.0.0.1:9002] }\ndefault_upstream: legacy\nroutes:\n  - name: a\n    upstream: orders-v3\n  - name: b\n    match: { path_regex: '(' }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("deploy/good.yaml"),
        "upstreams:\n  legacy: { backends: [127.0.0.1:9001] }\ndefault_upstream: legacy\n",
    )
    .unwrap();
    let (code, stdout, _) = run_cli(
        &[
            "validate",
            "--format",
            "github",
            "deploy/routes.yaml",
            "deploy/good.yaml",
        ],
        dir.path(),
    );
    assert_eq!(code, 1);
    let annotations: Vec<&str> = stdout.lines().filter(|l| l.starts_with("::")).collect();
    assert_eq!(annotations.len(), 2, "{stdout}");
    assert_eq!(
        annotations[0],
        "::error file=deploy/routes.yaml,line=7,col=5,title=strangler validate%3A routes[0].upstream::unknown upstream `orders-v3`%0Ahint: did you mean `orders-v2`?"
    );
    assert!(
        annotations[1].starts_with(
            "::error file=deploy/routes.yaml,line=9,col=14,title=strangler validate%3A routes[1].match.path_regex::"
        ),
        "{}",
        annotations[1]
    );
    // Each annotation is one line: line breaks in messages are escaped.
    assert!(annotations.iter().all(|a| !a.contains('\r')));
    assert!(
        stdout.contains("deploy/routes.yaml: 2 errors found; nothing was applied"),
        "{stdout}"
    );
    assert!(stdout.contains("deploy/good.yaml: OK ("), "{stdout}");
}

/// routes.yaml and examples/routes.minimal.yaml as JSON, merge keys applied as the loader does,
/// plus the routes inside the Kubernetes ConfigMap.
fn shipped_configs() -> Vec<(String, serde_json::Value)> {
    let root = repo_root();
    let as_json = |text: &str| {
        let mut value: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
        value.apply_merge().unwrap();
        serde_json::to_value(value).unwrap()
    };
    let mut configs: Vec<(String, serde_json::Value)> =
        ["routes.yaml", "examples/routes.minimal.yaml"]
            .into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(root.join(path)).unwrap();
                (path.to_owned(), as_json(&text))
            })
            .collect();
    let manifest: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("examples/kubernetes/configmap.yaml")).unwrap(),
    )
    .unwrap();
    let entry = manifest["data"]["routes.yaml"].as_str().unwrap();
    configs.push(("configmap.yaml data.routes.yaml".to_owned(), as_json(entry)));
    configs
}

fn schema_validator() -> jsonschema::Validator {
    let (code, stdout, stderr) = run(&["schema"]);
    assert_eq!(code, 0, "{stderr}");
    let schema: serde_json::Value = serde_json::from_str(&stdout).expect("the schema is JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    jsonschema::draft7::new(&schema).expect("the schema is a valid draft-07 schema")
}

#[test]
fn every_shipped_config_validates_against_the_schema() {
    let validator = schema_validator();
    for (name, config) in shipped_configs() {
        let errors: Vec<String> = validator
            .iter_errors(&config)
            .map(|error| format!("{} at {}", error, error.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}:\n{}", errors.join("\n"));
    }
}

#[test]
fn the_schema_rejects_what_the_loader_rejects_and_accepts_every_spelling() {
    let validator = schema_validator();
    let base = serde_json::json!({
        "upstreams": { "legacy": { "backends": ["127.0.0.1:9001"] } },
        "default_upstream": "legacy",
    });
    let with = |patch: serde_json::Value| {
        let mut config = base.clone();
        for (key, value) in patch.as_object().unwrap() {
            config[key] = value.clone();
        }
        config
    };

    for (why, config) in [
        (
            "a section left empty",
            with(serde_json::json!({ "server": null, "routes": null })),
        ),
        (
            "targets as a name or a map, hosts as one or many, value matches as text, number or map",
            with(serde_json::json!({ "routes": [
                {
                    "name": "a",
                    "match": {
                        "host": "api.example.com",
                        "headers": { "x-api-version": 2, "x-a": "b", "x-t": { "present": true } },
                    },
                    "upstream": { "name": "legacy", "rewrite": { "strip_prefix": "/api" } },
                    "fallback": "legacy",
                    "timeout": "1m30s",
                },
                { "name": "b", "match": { "host": ["a.example.com", "*.example.com"] } },
            ] })),
        ),
    ] {
        let errors: Vec<String> = validator
            .iter_errors(&config)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{why}: {errors:?}");
    }

    for (why, config) in [
        (
            "a misspelled top-level key",
            with(serde_json::json!({ "rotes": [] })),
        ),
        (
            "no default_upstream",
            serde_json::json!({ "upstreams": base["upstreams"] }),
        ),
        ("no upstream", with(serde_json::json!({ "upstreams": {} }))),
        (
            "an unknown key in an upstream",
            with(serde_json::json!({ "upstreams": { "legacy": { "backends": [], "retry": 1 } } })),
        ),
        (
            "an unknown key in a route",
            with(serde_json::json!({ "routes": [{ "name": "a", "upstrem": "legacy" }] })),
        ),
        (
            "an unknown key in a target",
            with(
                serde_json::json!({ "routes": [{ "name": "a", "upstream": { "name": "legacy", "rewrites": {} } }] }),
            ),
        ),
        (
            "a value match with two forms",
            with(
                serde_json::json!({ "routes": [{ "name": "a", "match": { "headers": { "x": { "exact": "1", "regex": "1" } } } }] }),
            ),
        ),
        (
            "a duration without a unit",
            with(serde_json::json!({ "server": { "request_timeout": "30" } })),
        ),
        (
            "a route-wide rewrite (the old spelling)",
            with(
                serde_json::json!({ "routes": [{ "name": "a", "rewrite": { "strip_prefix": "/api" } }] }),
            ),
        ),
        (
            "a stage that does not exist",
            with(serde_json::json!({ "routes": [{ "name": "a", "stage": "beta" }] })),
        ),
        (
            "a shadow sample above 1",
            with(
                serde_json::json!({ "routes": [{ "name": "a", "shadow": { "upstream": "legacy", "sample": 1.5 } }] }),
            ),
        ),
    ] {
        assert!(
            !validator.is_valid(&config),
            "{why} should be rejected: {config}"
        );
    }
}

#[test]
fn the_committed_schema_is_what_strangler_schema_prints() {
    let (code, stdout, stderr) = run(&["schema"]);
    assert_eq!(code, 0, "{stderr}");
    let committed = std::fs::read_to_string(repo_root().join("docs/routes.schema.json")).unwrap();
    assert!(
        committed == stdout,
        "docs/routes.schema.json is out of date: run `cargo run -- schema > docs/routes.schema.json`"
    );
}

#[test]
fn shipped_configs_point_editors_at_the_committed_schema() {
    let root = repo_root();
    for path in ["routes.yaml", "examples/routes.minimal.yaml"] {
        let text = std::fs::read_to_string(root.join(path)).unwrap();
        let first = text.lines().next().unwrap();
        let schema = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| panic!("{path} starts with `{first}`"));
        let target = root.join(path).parent().unwrap().join(schema);
        assert_eq!(
            target.canonicalize().unwrap(),
            root.join("docs/routes.schema.json").canonicalize().unwrap(),
            "{path}"
        );
    }
}

#[test]
fn completions_cover_every_subcommand_and_option() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, stdout, stderr) = run(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {stderr}");
        assert!(stdout.len() > 500, "{shell}: {stdout}");
        for word in [
            "validate",
            "schema",
            "completions",
            "man",
            "routes",
            "no-resolve",
            "github",
        ] {
            assert!(stdout.contains(word), "{shell} completions lack `{word}`");
        }
    }
    let (code, _, stderr) = run(&["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid value 'tcsh'"), "{stderr}");
}

#[test]
fn man_pages_describe_strangler_and_each_subcommand() {
    let (code, page, stderr) = run(&["man"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(page.contains(".TH strangler 1"), "{page}");
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for subcommand in [
        "run",
        "validate",
        "schema",
        "completions",
        "man",
        "routes",
        "report",
    ] {
        assert!(
            page.contains(&format!("strangler\\-{subcommand}(1)")),
            "`{subcommand}` missing from:\n{page}"
        );
    }

    let (code, page, stderr) = run(&["man", "validate"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(page.contains(".TH strangler-validate 1"), "{page}");
    assert!(page.contains("\\-\\-no\\-resolve"), "{page}");

    let (code, _, stderr) = run(&["man", "nope"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no subcommand `nope`"), "{stderr}");
}
