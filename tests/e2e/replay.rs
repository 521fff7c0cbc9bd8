//! Record → export → replay, end to end: a proxy with `record:` keeps redacted requests in its
//! diff store, `strangler corpus export` writes them as a corpus, and `strangler replay` sends
//! the corpus to a primary and a candidate started here, gating like `strangler report`.

use crate::support;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use support::{Backend, ClientRequest, Proxy, Recorded, run_cli};

/// A user service: `GET /users/N` answers the user, `POST /users/search` the matches. With
/// `planted`, user 2's name is wrong: the difference a replay must find at `$.name`.
fn users(planted: bool) -> support::Responder {
    Arc::new(move |request: &Recorded| {
        let path = request.target.split('?').next().unwrap_or_default();
        let body = if path == "/users/search" {
            r#"{"matches":[1,2]}"#.to_owned()
        } else {
            let id: u64 = path
                .rsplit('/')
                .next()
                .and_then(|id| id.parse().ok())
                .unwrap_or(0);
            let name = if planted && id == 2 { "Bob" } else { "bob" };
            format!(
                r#"{{"id":{id},"name":"{name}","served_at":"{}"}}"#,
                fastrand::u64(..)
            )
        };
        hyper::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    })
}

const SECRETS: [&str; 5] = [
    "AUTH-SECRET",
    "COOKIE-SECRET",
    "TOKEN-SECRET",
    "PASSWORD-SECRET",
    "KEY-SECRET",
];

fn cli(args: &[&str], cwd: &Path) -> (i32, String, String) {
    run_cli(args, cwd)
}

/// Records three requests (two GETs, one POST with a JSON body) through a proxy and exports
/// them; the corpus text.
async fn record_corpus(legacy: &Backend, dir: &Path) -> String {
    let config = format!(
        r#"upstreams:
  legacy: {{ backends: [{}] }}
default_upstream: legacy
routes:
  - name: users
    match: {{ path_prefix: /users }}
    record:
      sample: 1.0
      methods: [GET, POST]
      redact_headers: [x-api-secret]
      redact_json: ['$.password']
"#,
        legacy.address
    );
    let proxy = Proxy::start(&config).await;
    let first = proxy
        .send(
            ClientRequest::get("/users/1?token=TOKEN-SECRET&page=2")
                .header("authorization", "Bearer AUTH-SECRET")
                .header("cookie", "sid=COOKIE-SECRET; theme=dark")
                .header("x-api-secret", "KEY-SECRET")
                .header("accept", "application/json"),
        )
        .await;
    assert_eq!(first.status, 200);
    assert_eq!(proxy.get("/users/2").await.status, 200);
    let search = proxy
        .send(
            ClientRequest::new("POST", "/users/search")
                .header("content-type", "application/json")
                .body(r#"{"q":"bo","password":"PASSWORD-SECRET"}"#),
        )
        .await;
    assert_eq!(search.status, 200);
    let store = proxy.diff_store();
    let store = store.display().to_string();
    // Recording is off the request path: wait until the worker has written all three.
    let corpus = support::eventually("three recorded requests", || {
        let store = store.clone();
        async move {
            let (code, stdout, stderr) = cli(
                &[
                    "corpus", "export", "--db", &store, "--route", "users", "--since", "1h",
                ],
                dir,
            );
            match (code, stdout.lines().count()) {
                (0, 3) => Ok(stdout),
                _ => Err(format!("exit {code}, {stdout}{stderr}")),
            }
        }
    })
    .await;
    std::fs::write(dir.join("corpus.jsonl"), &corpus).unwrap();
    corpus
}

fn replay(
    dir: &Path,
    primary: &Backend,
    candidate: &Backend,
    extra: &[&str],
) -> (i32, String, String) {
    let primary = format!("http://{}", primary.address);
    let candidate = format!("http://{}", candidate.address);
    let mut args = vec![
        "replay",
        "corpus.jsonl",
        "--primary",
        &primary,
        "--candidate",
        &candidate,
        "--methods",
        "GET,POST",
        "--ignore-json",
        "$.served_at",
    ];
    args.extend_from_slice(extra);
    cli(&args, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_corpus_passes_against_a_twin_and_fails_on_a_planted_difference() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = Backend::start_with("legacy", users(false)).await;
    let corpus = record_corpus(&legacy, dir.path()).await;

    // Secrets never reach the corpus; what is not secret does.
    for secret in SECRETS {
        assert!(
            !corpus.contains(secret),
            "{secret} in the corpus:\n{corpus}"
        );
    }
    let lines: Vec<serde_json::Value> = corpus
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines[0]["version"], 1);
    assert_eq!(lines[0]["route"], "users");
    assert_eq!(lines[0]["target"], "/users/1?token=[redacted]&page=2");
    assert!(
        corpus.contains(r#"["accept","application/json"]"#),
        "{corpus}"
    );
    assert!(
        corpus.contains(r#"["authorization","[redacted]"]"#),
        "{corpus}"
    );
    assert_eq!(lines[2]["method"], "POST");
    let body: serde_json::Value = serde_json::from_str(lines[2]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["password"], "[redacted]");
    assert_eq!(body["q"], "bo");

    let primary = Backend::start_with("primary", users(false)).await;
    let twin = Backend::start_with("twin", users(false)).await;
    let (code, stdout, stderr) = replay(dir.path(), &primary, &twin, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("users: 3 sent, 3 match"), "{stderr}");
    assert_eq!(primary.count(), 3);
    assert_eq!(twin.count(), 3);
    // What was recorded is what is sent, minus what was redacted.
    // (Sent concurrently: in any order.)
    let sent = twin.requests();
    let first = sent
        .iter()
        .find(|request| request.target.starts_with("/users/1"))
        .expect("the first request was replayed");
    assert_eq!(first.target, "/users/1?token=[redacted]&page=2");
    assert_eq!(
        first.header("authorization"),
        None,
        "a redacted header is not sent"
    );
    assert_eq!(first.header("accept"), Some("application/json"));
    let search = sent
        .iter()
        .find(|request| request.method == "POST")
        .expect("the POST was replayed");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&search.body).unwrap()["q"],
        "bo"
    );

    let planted = Backend::start_with("planted", users(true)).await;
    let (code, stdout, stderr) = replay(dir.path(), &primary, &planted, &["--format", "json"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["passed"], false);
    assert!(stdout.contains("$.name"), "{stdout}");
    assert!(!stdout.contains("served_at"), "ignored: {stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corpus_with_a_bad_line_is_refused_by_line_number_and_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("corpus.jsonl"),
        [
            r#"{"version":1,"method":"GET","target":"/users/1"}"#,
            "# edited by hand",
            r#"{"version":1,"method":"GET","target":"/users/2""#,
            r#"{"version":1,"method":"DELETE","target":"/users/2"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let primary = Backend::start_with("primary", users(false)).await;
    let candidate = Backend::start_with("candidate", users(false)).await;
    let (code, stdout, stderr) = replay(dir.path(), &primary, &candidate, &[]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains("corpus.jsonl:3: not a corpus line"),
        "{stderr}"
    );
    assert!(
        stderr.contains("corpus.jsonl:4: method: DELETE is not allowed"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was sent"), "{stderr}");
    assert_eq!(primary.count() + candidate.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_lists_the_requests_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("corpus.jsonl"),
        r#"{"version":1,"route":"users","method":"GET","target":"/users/1?page=2"}"#,
    )
    .unwrap();
    let primary = Backend::start_with("primary", users(false)).await;
    let candidate = Backend::start_with("candidate", users(false)).await;
    let (code, stdout, stderr) = replay(dir.path(), &primary, &candidate, &["--dry-run"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "candidate GET http://{}/users/1?page=2",
            candidate.address
        )),
        "{stdout}"
    );
    assert!(stdout.contains("nothing was sent"), "{stdout}");
    assert_eq!(primary.count() + candidate.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn through_the_route_table_each_target_gets_its_edits_and_no_third_address_is_contacted() {
    let dir = tempfile::tempdir().unwrap();
    let primary = Backend::start_with("primary", users(false)).await;
    let candidate = Backend::start_with("candidate", users(true)).await;
    let third = Backend::start_with("third", users(false)).await;
    // The route names the third address as its upstreams: a replay still only talks to the
    // two targets given, with the route's edits and compare rules.
    std::fs::write(
        dir.path().join("routes.yaml"),
        format!(
            r#"upstreams:
  legacy: {{ backends: [{third}] }}
  users-v2: {{ backends: [{third}] }}
default_upstream: legacy
routes:
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: {{ name: legacy, rewrite: {{ strip_prefix: /api }} }}
    shadow:
      upstream: {{ name: users-v2, rewrite: {{ strip_prefix: /api }}, request_headers: {{ set: {{ x-candidate: "yes" }} }} }}
      compare: {{ ignore_json: ['$.name'] }}
"#,
            third = third.address
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("corpus.jsonl"),
        format!(
            r#"{{"version":1,"method":"GET","target":"/api/users/2","headers":[["host","{}"]]}}"#,
            third.address
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = replay(
        dir.path(),
        &primary,
        &candidate,
        &["--routes", "routes.yaml"],
    );
    // The planted `$.name` is ignored by the route's own compare rules.
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(primary.last().target, "/users/2");
    assert_eq!(primary.last().header("x-candidate"), None);
    assert_eq!(candidate.last().target, "/users/2");
    assert_eq!(candidate.last().header("x-candidate"), Some("yes"));
    assert_eq!(third.count(), 0, "only the two targets are contacted");
}

#[test]
fn a_bad_record_section_is_refused_at_each_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        "upstreams:\n  legacy: { backends: [127.0.0.1:9001] }\ndefault_upstream: legacy\nroutes:\n  - name: users\n    record:\n      sample: 1.5\n      methods: [GET, 'B AD']\n      max_rows: 0\n      redact_json: ['password']\n",
    )
    .unwrap();
    let (code, _, stderr) = cli(&["validate", "routes.yaml"], dir.path());
    assert_eq!(code, 1, "{stderr}");
    for (path, line) in [
        ("routes[0].record.sample", 7),
        ("routes[0].record.methods[1]", 8),
        ("routes[0].record.max_rows", 9),
        ("routes[0].record.redact_json[0]", 10),
    ] {
        let block = stderr
            .split("\n\n")
            .find(|block| block.starts_with(&format!("error: {path}: ")))
            .unwrap_or_else(|| panic!("no error for `{path}` in:\n{stderr}"));
        assert!(
            block.contains(&format!("--> routes.yaml:{line}:")),
            "`{path}`: expected line {line} in:\n{block}"
        );
    }
}

/// A fleet's shared Postgres store: recordings land in it, and an export reads them back.
#[tokio::test(flavor = "multi_thread")]
async fn recordings_go_to_a_shared_postgres_store_and_export_from_it() {
    use support::postgres::{PASSWORD, Postgres};
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let legacy = Backend::start_with("legacy", users(false)).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = postgres.password_file(dir.path());
    let proxy = Proxy::with(format!(
        r#"upstreams:
  legacy: {{ backends: [{legacy}] }}
default_upstream: legacy
routes:
  - name: users
    match: {{ path_prefix: /users }}
    record: {{ sample: 1.0 }}
"#,
        legacy = legacy.address,
    ))
    .diff_store(&postgres.url())
    .server(&format!(
        "  diff_store_password_file: {}\n",
        password_file.display()
    ))
    .in_dir(dir)
    .start()
    .await;
    for id in 1..=2 {
        let response = proxy
            .send(
                ClientRequest::get(&format!("/users/{id}?access_token=TOKEN-SECRET"))
                    .header("cookie", "sid=COOKIE-SECRET"),
            )
            .await;
        assert_eq!(response.status, 200);
    }
    let url = postgres.url();
    let proxy = &proxy;
    let corpus = support::eventually("two requests recorded in Postgres", || {
        let url = url.clone();
        async move {
            let output = std::process::Command::new(support::binary())
                .args(["corpus", "export", "--db", &url, "--route", "users"])
                .env("STRANGLER_DIFF_STORE_PASSWORD", PASSWORD)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            match (output.status.code(), stdout.lines().count()) {
                (Some(0), 2) => Ok(stdout),
                _ => Err(format!(
                    "{stdout}{}\nproxy: {}",
                    String::from_utf8_lossy(&output.stderr),
                    proxy.stderr()
                )),
            }
        }
    })
    .await;
    assert!(
        corpus.contains("/users/1?access_token=[redacted]"),
        "{corpus}"
    );
    assert!(
        corpus.contains("/users/2?access_token=[redacted]"),
        "{corpus}"
    );
    for secret in SECRETS {
        assert!(!corpus.contains(secret), "{secret} in:\n{corpus}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_spaces_the_requests_out() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (1..=6)
        .map(|id| format!(r#"{{"version":1,"method":"GET","target":"/users/{id}"}}"#))
        .collect();
    std::fs::write(dir.path().join("corpus.jsonl"), lines.join("\n")).unwrap();
    let primary = Backend::start_with("primary", users(false)).await;
    let candidate = Backend::start_with("candidate", users(false)).await;
    let started = std::time::Instant::now();
    // 20 pairs a second: the sixth starts 250 ms after the first at the earliest.
    let (code, stdout, stderr) = replay(dir.path(), &primary, &candidate, &["--rate", "20"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(candidate.count(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_bounds_the_pairs_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    // Each answer takes 100 ms (the test backend's `x-test-delay-ms`).
    let lines: Vec<String> = (1..=8)
        .map(|id| {
            format!(
                r#"{{"version":1,"method":"GET","target":"/users/{id}","headers":[["x-test-delay-ms","100"]]}}"#
            )
        })
        .collect();
    std::fs::write(dir.path().join("corpus.jsonl"), lines.join("\n")).unwrap();
    let primary = Backend::start_with("primary", users(false)).await;
    let candidate = Backend::start_with("candidate", users(false)).await;
    let started = std::time::Instant::now();
    // Two pairs at a time: four waves of 100 ms at least.
    let (code, stdout, stderr) = replay(dir.path(), &primary, &candidate, &["--concurrency", "2"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(primary.count(), 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_past_the_timeout_is_a_difference_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("corpus.jsonl"),
        r#"{"version":1,"method":"GET","target":"/users/1"}"#,
    )
    .unwrap();
    let primary = Backend::start_with("primary", users(false)).await;
    let hanging = support::UnansweredConnect::start().await;
    let primary_url = format!("http://{}", primary.address);
    let candidate_url = format!("http://{}", hanging.address);
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = cli(
        &[
            "replay",
            "corpus.jsonl",
            "--primary",
            &primary_url,
            "--candidate",
            &candidate_url,
            "--timeout",
            "300ms",
        ],
        dir.path(),
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("1 candidate errors"), "{stderr}");
    assert!(stdout.contains("shadow timed out"), "{stdout}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_that_answers_nothing_means_the_replay_could_not_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("corpus.jsonl"),
        r#"{"version":1,"method":"GET","target":"/users/1"}"#,
    )
    .unwrap();
    let candidate = Backend::start_with("candidate", users(false)).await;
    let primary_url = format!("http://{}", support::dead_address());
    let candidate_url = format!("http://{}", candidate.address);
    let (code, stdout, stderr) = cli(
        &[
            "replay",
            "corpus.jsonl",
            "--primary",
            &primary_url,
            "--candidate",
            &candidate_url,
        ],
        dir.path(),
    );
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("the primary answered none"), "{stderr}");
}
