//! `strangler validate` and `strangler run` on good and broken configs: every error class names
//! the field path and the line, all errors come at once, and nothing starts on a bad file.

use crate::support;

use std::path::Path;

use support::{free_port, repo_root, run_cli};

/// Validates `yaml` (written to a temp file named routes.yaml); returns (exit code, stderr).
fn validate(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.yaml"), yaml).unwrap();
    let (code, _, stderr) = run_cli(&["validate", "routes.yaml"], dir.path());
    (code, stderr)
}

fn assert_error(stderr: &str, path: &str, message: &str, line: usize) {
    let block = stderr
        .split("\n\n")
        .find(|block| block.starts_with(&format!("error: {path}: ")))
        .unwrap_or_else(|| panic!("no error for `{path}` in:\n{stderr}"));
    assert!(
        block.contains(message),
        "`{path}`: expected `{message}` in:\n{block}"
    );
    assert!(
        block.contains(&format!("--> routes.yaml:{line}:")),
        "`{path}`: expected line {line} in:\n{block}"
    );
}

const VALID_BASE: &str = "upstreams:\n  legacy: { backends: [127.0.0.1:9001] }\n  orders-v2: { backends: [127.0.0.1:9002] }\ndefault_upstream: legacy\n";

#[test]
fn the_root_routes_yaml_and_the_examples_are_valid() {
    let root = repo_root();
    let (code, stdout, stderr) = run_cli(&["validate", "routes.yaml"], &root);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("routes.yaml: OK"), "{stdout}");

    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml")
            && path.to_string_lossy().contains("routes")
        {
            let (code, _, stderr) = run_cli(&["validate", path.to_str().unwrap()], &root);
            assert_eq!(code, 0, "{}: {stderr}", path.display());
        }
    }
}

/// The routes a documentation snippet shows, if it shows any: a mapping with `routes:` (and
/// maybe `kill_switch:` or `tester_override:`), or a bare list of routes (items with `name` and
/// `match`). Other YAML (Prometheus, CI, alert rules) is `None`.
fn snippet_routes(block: &str) -> Option<serde_yaml::Mapping> {
    use serde_yaml::Value;
    let value: Value = serde_yaml::from_str(block).ok()?;
    let mut config = serde_yaml::Mapping::new();
    match value {
        Value::Mapping(keys) => {
            config.insert("routes".into(), keys.get("routes")?.clone());
            for key in ["kill_switch", "tester_override"] {
                if let Some(value) = keys.get(key) {
                    config.insert(key.into(), value.clone());
                }
            }
        }
        Value::Sequence(items)
            if items
                .iter()
                .all(|item| item.get("name").is_some() && item.get("match").is_some()) =>
        {
            config.insert("routes".into(), Value::Sequence(items));
        }
        _ => return None,
    }
    Some(config)
}

/// Every upstream a route snippet names (bare or as a target's `name`), and `legacy`.
fn snippet_upstreams(routes: &serde_yaml::Value) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::from(["legacy".to_owned()]);
    let mut add = |target: Option<&serde_yaml::Value>| {
        if let Some(name) = target.and_then(|t| t.as_str().or_else(|| t.get("name")?.as_str())) {
            names.insert(name.to_owned());
        }
    };
    for route in routes.as_sequence().into_iter().flatten() {
        add(route.get("upstream"));
        add(route.get("fallback"));
        add(route
            .get("shadow")
            .and_then(|shadow| shadow.get("upstream")));
        for side in route
            .get("split")
            .and_then(|s| s.as_sequence())
            .into_iter()
            .flatten()
        {
            add(side.get("upstream"));
        }
    }
    names
}

/// Route snippets in the docs are what `strangler validate` accepts (with their upstreams
/// defined), so none shows a spelling the proxy refuses. The one snippet broken on purpose
/// (`# broken.yaml`) is left out.
#[test]
fn every_route_snippet_in_the_docs_is_valid() {
    let root = repo_root();
    let mut sources: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    sources.push(root.join("README.md"));
    sources.sort();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for source in &sources {
        let text = std::fs::read_to_string(source).unwrap();
        let mut lines = text.lines().enumerate();
        while let Some((number, line)) = lines.next() {
            if line.trim() != "```yaml" {
                continue;
            }
            let block: Vec<&str> = lines
                .by_ref()
                .map(|(_, line)| line)
                .take_while(|line| line.trim() != "```")
                .collect();
            if block
                .first()
                .is_some_and(|first| first.starts_with("# broken.yaml"))
            {
                continue;
            }
            let Some(mut config) = snippet_routes(&block.join("\n")) else {
                continue;
            };
            let mut upstreams = serde_yaml::Mapping::new();
            for name in snippet_upstreams(&config["routes"]) {
                upstreams.insert(
                    name.into(),
                    serde_yaml::from_str("{ backends: [127.0.0.1:9] }").unwrap(),
                );
            }
            config.insert("upstreams".into(), upstreams.into());
            config.insert("default_upstream".into(), "legacy".into());
            let name = format!(
                "{}-line-{}.yaml",
                source.file_name().unwrap().to_string_lossy(),
                number + 2
            );
            std::fs::write(
                dir.path().join(&name),
                serde_yaml::to_string(&config).unwrap(),
            )
            .unwrap();
            files.push(name);
        }
    }
    assert!(files.len() >= 20, "found only {files:?}");
    let mut args = vec!["validate", "--format", "json"];
    args.extend(files.iter().map(String::as_str));
    let (_, stdout, stderr) = run_cli(&args, dir.path());
    let report: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{stderr}"));
    let invalid: Vec<_> = report
        .as_array()
        .unwrap()
        .iter()
        .filter(|file| file["valid"] != true)
        .collect();
    assert!(
        invalid.is_empty(),
        "doc snippets `strangler validate` refuses (file name: document and line of the block):\n{invalid:#?}"
    );
}

#[test]
fn a_broken_copy_of_the_root_file_fails_with_its_line() {
    let original = std::fs::read_to_string(repo_root().join("routes.yaml")).unwrap();
    let line = original
        .lines()
        .position(|l| l.contains("path_regex:"))
        .expect("the example has a regex route")
        + 1;
    let broken = original.replacen(
        "path_regex: '^/invoices/[0-9]+$'",
        "path_regex: '^/invoices/([0-9]+$'",
        1,
    );
    assert_ne!(broken, original);
    let (code, stderr) = validate(&broken);
    assert_eq!(code, 1, "{stderr}");
    assert_error(
        &stderr,
        "routes[2].match.path_regex",
        "unclosed group",
        line,
    );
    assert!(
        stderr.contains("1 error found; nothing was applied"),
        "{stderr}"
    );
}

#[test]
fn yaml_syntax_errors_name_the_line() {
    let (code, stderr) = validate(
        "upstreams:\n  legacy:\n    backends: [127.0.0.1:9001\ndefault_upstream: legacy\n",
    );
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: invalid YAML"), "{stderr}");
    assert!(stderr.contains("--> routes.yaml:"), "{stderr}");
}

#[test]
fn unknown_keys_are_errors_with_a_suggestion() {
    let (code, stderr) = validate(&format!(
        "{VALID_BASE}routes:\n  - name: a\n    match:\n      pathprefix: /x\n  - name: b\n    upstreem: legacy\n"
    ));
    assert_eq!(code, 1);
    assert_error(
        &stderr,
        "routes[0].match.pathprefix",
        "unknown field `pathprefix`",
        8,
    );
    assert!(stderr.contains("did you mean `path_prefix`?"), "{stderr}");
    assert_error(
        &stderr,
        "routes[1].upstreem",
        "unknown field `upstreem`",
        10,
    );

    let (code, stderr) = validate(&format!("{VALID_BASE}rootes: []\n"));
    assert_eq!(code, 1);
    assert_error(&stderr, "rootes", "unknown top-level key", 5);
    assert!(stderr.contains("did you mean `routes`?"), "{stderr}");
}

#[test]
fn bad_regexes_are_reported_where_they_are() {
    let (code, stderr) = validate(&format!(
        "{VALID_BASE}routes:\n  - name: a\n    match:\n      path_regex: '^/orders/(\\d+'\n  - name: b\n    match: {{ headers: {{ x-v: {{ regex: '[' }} }} }}\n"
    ));
    assert_eq!(code, 1);
    assert_error(&stderr, "routes[0].match.path_regex", "unclosed group", 8);
    assert_error(
        &stderr,
        "routes[1].match.headers.x-v.regex",
        "unclosed character class",
        10,
    );
}

#[test]
fn undefined_upstreams_are_named_with_the_defined_ones() {
    let (code, stderr) = validate(&format!(
        "{VALID_BASE}routes:\n  - name: a\n    upstream: orders-v3\n"
    ));
    assert_eq!(code, 1);
    assert_error(
        &stderr,
        "routes[0].upstream",
        "unknown upstream `orders-v3`",
        7,
    );
    assert!(stderr.contains("did you mean `orders-v2`?"), "{stderr}");

    let (code, stderr) = validate(
        "upstreams:\n  legacy: { backends: [127.0.0.1:9001] }\ndefault_upstream: nowhere\n",
    );
    assert_eq!(code, 1);
    assert_error(&stderr, "default_upstream", "unknown upstream `nowhere`", 3);
    assert!(stderr.contains("defined upstreams: legacy"), "{stderr}");
}

#[test]
fn duplicate_route_names_point_at_the_first_use() {
    let (code, stderr) = validate(&format!(
        "{VALID_BASE}routes:\n  - name: orders\n  - name: users\n  - name: orders\n"
    ));
    assert_eq!(code, 1);
    assert_error(
        &stderr,
        "routes[2].name",
        "duplicate route name `orders`, first used by routes[0]",
        8,
    );
}

#[test]
fn empty_or_unusable_backends_are_errors() {
    let (code, stderr) = validate(
        "upstreams:\n  legacy:\n    backends: []\n  other:\n    backends: [127.0.0.1]\ndefault_upstream: legacy\n",
    );
    assert_eq!(code, 1);
    assert_error(&stderr, "upstreams.legacy.backends", "has no backends", 3);
    assert_error(
        &stderr,
        "upstreams.other.backends[0]",
        "`127.0.0.1` has no port",
        5,
    );
}

#[test]
fn bad_durations_are_errors_with_the_expected_format() {
    let (code, stderr) = validate(
        "upstreams:\n  legacy:\n    backends: [127.0.0.1:9001]\n    timeouts:\n      connect: 5 parsecs\n      read: 0s\ndefault_upstream: legacy\n",
    );
    assert_eq!(code, 1);
    assert_error(
        &stderr,
        "upstreams.legacy.timeouts.connect",
        "expected a duration",
        5,
    );
    assert!(
        stderr.contains("durations look like 250ms, 5s, 1m30s"),
        "{stderr}"
    );

    let (code, stderr) = validate(
        "upstreams:\n  legacy:\n    backends: [127.0.0.1:9001]\n    timeouts: { read: 0s }\ndefault_upstream: legacy\n",
    );
    assert_eq!(code, 1);
    assert_error(
        &stderr,
        "upstreams.legacy.timeouts.read",
        "must be greater than zero",
        4,
    );
}

#[test]
fn rule_conflicts_and_reserved_headers_are_errors() {
    let (code, stderr) = validate(&format!(
        r#"{VALID_BASE}routes:
  - name: a
    match: {{ path: /a, path_prefix: /a }}
  - name: b
    upstream: {{ name: legacy, rewrite: {{ strip_prefix: /b, replace_prefix: {{ from: /b, to: /c }} }} }}
  - name: c
    upstream: {{ name: legacy, request_headers: {{ set: {{ content-length: "1" }} }} }}
  - name: d
    match: {{ host: 'a.*.com', methods: ["GET POST"] }}
"#
    ));
    assert_eq!(code, 1);
    assert_error(
        &stderr,
        "routes[0].match",
        "path and path_prefix are exclusive",
        7,
    );
    assert_error(
        &stderr,
        "routes[1].upstream.rewrite",
        "strip_prefix and replace_prefix are exclusive",
        9,
    );
    assert_error(
        &stderr,
        "routes[2].upstream.request_headers.set.content-length",
        "cannot be edited by a route",
        11,
    );
    assert_error(
        &stderr,
        "routes[3].match.host",
        "wildcard is only allowed as a leading",
        13,
    );
    assert_error(
        &stderr,
        "routes[3].match.methods[0]",
        "is not an HTTP method",
        13,
    );
}

#[test]
fn zero_threads_or_shadow_slots_are_errors() {
    let (code, stderr) = validate(&format!(
        "server:\n  threads: 0\n  shadow_max_inflight: 0\n{VALID_BASE}"
    ));
    assert_eq!(code, 1);
    assert_error(&stderr, "server.threads", "must be at least 1", 2);
    assert_error(
        &stderr,
        "server.shadow_max_inflight",
        "must be at least 1",
        3,
    );
}

#[test]
fn shadow_settings_are_validated() {
    let (code, stderr) = validate(&format!(
        r#"{VALID_BASE}routes:
  - name: a
    shadow:
      upstream: orders-v3
      sample: 1.5
      sample_key: {{ header: x-user, cookie: session }}
      max_body: 12 parsecs
  - name: b
    shadow: {{ upstream: orders-v2, max_inflight: 0, methods: ["GET POST"] }}
"#
    ));
    assert_eq!(code, 1);
    assert_error(&stderr, "routes[0].shadow.max_body", "", 11);
    assert_error(
        &stderr,
        "routes[1].shadow.max_inflight",
        "must be at least 1",
        13,
    );
    assert_error(
        &stderr,
        "routes[1].shadow.methods[0]",
        "is not an HTTP method",
        13,
    );

    let (code, stderr) = validate(&format!(
        r#"{VALID_BASE}routes:
  - name: a
    shadow:
      upstream: orders-v3
      sample: 1.5
      sample_key: {{ header: x-user, cookie: session }}
"#
    ));
    assert_eq!(code, 1);
    assert_error(
        &stderr,
        "routes[0].shadow.upstream",
        "unknown upstream `orders-v3`",
        8,
    );
    assert!(stderr.contains("did you mean `orders-v2`?"), "{stderr}");
    assert_error(&stderr, "routes[0].shadow.sample", "between 0.0 and 1.0", 9);
    assert_error(
        &stderr,
        "routes[0].shadow.sample_key",
        "exactly one of `header` or `cookie`",
        10,
    );
}

#[test]
fn every_error_in_the_file_is_reported_at_once() {
    let (code, stderr) = validate(
        r#"server:
  admn: 127.0.0.1:9901
upstreams:
  legacy:
    backends: []
  orders-v2:
    backends: [127.0.0.1:9002]
    timeouts: { connect: soon }
default_upstream: legacy
routes:
  - name: a
    match: { path_regex: '(' }
    upstream: orders-v3
  - name: b
    match: { pathprefix: /x }
    upstream: orders-v2
  - name: a
"#,
    );
    assert_eq!(code, 1);
    assert_error(&stderr, "server.admn", "unknown field", 2);
    assert_error(&stderr, "upstreams.legacy.backends", "has no backends", 5);
    assert_error(
        &stderr,
        "upstreams.orders-v2.timeouts.connect",
        "expected a duration",
        8,
    );
    assert_error(&stderr, "routes[0].match.path_regex", "invalid regex", 12);
    assert_error(
        &stderr,
        "routes[0].upstream",
        "unknown upstream `orders-v3`",
        13,
    );
    assert_error(&stderr, "routes[1].match.pathprefix", "unknown field", 15);
    assert_error(&stderr, "routes[2].name", "duplicate route name `a`", 17);
    assert!(
        stderr.contains("7 errors found; nothing was applied"),
        "{stderr}"
    );
}

#[test]
fn validate_speaks_json_for_tools() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.yaml"), VALID_BASE).unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        format!("{VALID_BASE}routes:\n  - name: a\n    upstream: x\n"),
    )
    .unwrap();
    let (code, stdout, _) = run_cli(
        &["validate", "--format", "json", "good.yaml", "bad.yaml"],
        dir.path(),
    );
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report[0]["valid"], true);
    assert_eq!(report[1]["valid"], false);
    assert_eq!(report[1]["errors"][0]["path"], "routes[0].upstream");
    assert_eq!(report[1]["errors"][0]["location"]["line"], 7);
}

#[test]
fn validate_reports_a_missing_file() {
    let (code, _, stderr) = run_cli(&["validate", "does-not-exist.yaml"], Path::new("/tmp"));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot read does-not-exist.yaml"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_an_invalid_config_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let admin = free_port();
    std::fs::write(
        dir.path().join("routes.yaml"),
        format!(
            "server: {{ listen: 127.0.0.1:{listen}, admin: 127.0.0.1:{admin} }}\nupstreams:\n  legacy: {{ backends: [127.0.0.1:9001] }}\ndefault_upstream: legacy\nroutes:\n  - name: a\n    match: {{ path_regex: '(' }}\n"
        ),
    )
    .unwrap();
    let (code, _, stderr) = run_cli(&["run", "-c", "routes.yaml"], dir.path());
    assert_ne!(code, 0);
    assert!(stderr.contains("routes[0].match.path_regex"), "{stderr}");
    assert!(stderr.contains("not started"), "{stderr}");
    for port in [listen, admin] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "something listens on {port}"
        );
    }
}

#[test]
fn run_reports_a_busy_port_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    std::fs::write(
        dir.path().join("routes.yaml"),
        format!(
            "server: {{ listen: 127.0.0.1:{port}, admin: 127.0.0.1:{} }}\nupstreams:\n  legacy: {{ backends: [127.0.0.1:9001] }}\ndefault_upstream: legacy\n",
            free_port()
        ),
    )
    .unwrap();
    let (code, _, stderr) = run_cli(&["run", "-c", "routes.yaml"], dir.path());
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port} (proxy)")),
        "{stderr}"
    );
}

#[test]
fn unusable_tester_tokens_and_overflowing_split_weights_are_errors() {
    let (code, stderr) = validate(&format!(
        "{VALID_BASE}tester_override: {{ token: \"abcdefghijklmnop\\n\" }}\nroutes:\n  - {{ name: r, stage: canary, match: {{ path_prefix: /r }}, split: [{{ upstream: legacy, weight: 4294967196 }}, {{ upstream: orders-v2, weight: 200 }}] }}\n"
    ));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("tester_override.token: has characters a header cannot carry"),
        "{stderr}"
    );
    assert!(
        stderr.contains("weights sum to 4294967396, not 100"),
        "{stderr}"
    );

    let (code, stderr) = validate("upstreams: {}\ndefault_upstream: u\n");
    assert_eq!(code, 1);
    assert_eq!(
        stderr.matches("error:").count(),
        1,
        "one error, not one per symptom: {stderr}"
    );
}

#[test]
fn a_diff_store_nobody_can_create_is_flagged_by_validate_and_refused_by_run() {
    let shadowed = "routes:\n  - name: orders\n    match: { path_prefix: /orders }\n    shadow: { upstream: orders-v2 }\n";
    // A directory that does not exist, and one that is a file: unwritable even for root.
    for (store, why) in [
        ("missing/diffs.db", "missing"),
        ("routes.yaml/diffs.db", "routes.yaml is not a directory"),
    ] {
        let (code, stderr) = validate(&format!(
            "server:\n  diff_store: {store}\n{VALID_BASE}{shadowed}"
        ));
        assert_eq!(code, 1, "{store}: {stderr}");
        assert_error(
            &stderr,
            "server.diff_store",
            &format!("the diff store {store} cannot be opened"),
            2,
        );
        assert!(stderr.contains(why), "{store}: {stderr}");
    }

    // Without a shadow nothing ever opens the store, so its path is not a problem.
    let (code, stderr) = validate(&format!(
        "server:\n  diff_store: missing/diffs.db\n{VALID_BASE}routes:\n  - {{ name: orders, match: {{ path_prefix: /orders }} }}\n"
    ));
    assert_eq!(code, 0, "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("routes.yaml"),
        format!(
            "server:\n  listen: 127.0.0.1:{listen}\n  admin: 127.0.0.1:{admin}\n  diff_store: missing/diffs.db\n{VALID_BASE}{shadowed}"
        ),
    )
    .unwrap();
    let (code, _, stderr) = run_cli(&["run", "-c", "routes.yaml"], dir.path());
    assert_ne!(code, 0);
    assert!(
        stderr.contains("server.diff_store: the diff store missing/diffs.db cannot be opened"),
        "{stderr}"
    );
    assert!(stderr.contains("not started"), "{stderr}");
    for port in [listen, admin] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "something listens on {port}"
        );
    }
}
