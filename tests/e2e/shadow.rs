//! Shadow traffic end to end: what reaches the candidate, what does not, and proof that a
//! misbehaving candidate never changes what the client gets.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{Backend, ClientRequest, Misbehaving, Misbehaviour, Proxy};

/// A proxy whose `/r` route is served by `primary` and mirrored to `shadow` with the given
/// extra `shadow:` settings (YAML flow-mapping entries).
async fn shadowing_proxy(primary: SocketAddr, shadow: SocketAddr, settings: &str) -> Proxy {
    shadowing_proxy_to(primary, shadow, "candidate", settings).await
}

/// Like [`shadowing_proxy`], with the shadow target spelled out (`{ name: candidate, .. }`).
async fn shadowing_proxy_to(
    primary: SocketAddr,
    shadow: SocketAddr,
    target: &str,
    settings: &str,
) -> Proxy {
    Proxy::start(&format!(
        r#"upstreams:
  primary: {{ backends: [{primary}] }}
  candidate: {{ backends: [{shadow}] }}
default_upstream: primary
routes:
  - name: r
    match: {{ path_prefix: /r }}
    shadow: {{ upstream: {target}{settings} }}
"#
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_get_without_a_body_is_mirrored_with_the_shadow_mark() {
    let primary = Backend::start("primary").await;
    let candidate = Backend::start("candidate").await;
    let proxy = shadowing_proxy_to(
        primary.address,
        candidate.address,
        "{ name: candidate, request_headers: { set: { x-env: shadow } } }",
        ", redact: [x-user-email]",
    )
    .await;

    let response = proxy
        .send(
            ClientRequest::get("/r/items?page=2")
                .header("authorization", "Bearer secret")
                .header("cookie", "session=s3cr3t")
                .header("x-user-email", "a@example.com")
                .header("x-request-id", "shadow-1"),
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("x-backend"),
        Some("primary"),
        "the client sees the primary"
    );

    candidate.wait_for_requests(1).await;
    let copy = candidate.last();
    assert_eq!(copy.method, "GET");
    assert_eq!(copy.target, "/r/items?page=2");
    assert_eq!(copy.header("x-strangler-shadow"), Some("1"));
    assert_eq!(copy.header("x-env"), Some("shadow"));
    assert_eq!(copy.header("x-user-email"), Some("[redacted]"));
    assert_eq!(
        copy.header("authorization"),
        None,
        "credentials stay with the primary unless forward_credentials is set"
    );
    assert_eq!(copy.header("cookie"), None);
    assert_eq!(
        copy.header("x-request-id"),
        Some("shadow-1"),
        "both copies share the request id"
    );
    assert!(copy.body.is_empty());
    assert!(primary.last().header("x-strangler-shadow").is_none());
    assert_eq!(
        primary.last().header("authorization"),
        Some("Bearer secret")
    );
    proxy
        .wait_for_metric(
            "strangler_shadow_requests_total{outcome=\"completed\",route=\"r\"}",
            1.0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn post_bodies_fixed_and_chunked_reach_the_shadow_intact_when_opted_in() {
    let primary = Backend::start("primary").await;
    let candidate = Backend::start("candidate").await;
    let proxy = shadowing_proxy(primary.address, candidate.address, ", methods: [POST]").await;

    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let response = proxy
        .send(ClientRequest::new("POST", "/r/upload").body(body.clone()))
        .await;
    assert_eq!(response.status, 200);
    candidate.wait_for_requests(1).await;
    assert!(
        candidate.last().body == body,
        "fixed-length body differs on the shadow"
    );
    assert!(
        primary.last().body == body,
        "fixed-length body differs on the primary"
    );

    let chunked = b"POST /r/chunked HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
    assert_eq!(support::send_raw(proxy.address, chunked).await, 200);
    candidate.wait_for_requests(2).await;
    assert_eq!(&candidate.last().body[..], b"hello, world");
    assert_eq!(&primary.last().body[..], b"hello, world");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsafe_methods_are_not_mirrored_by_default() {
    let primary = Backend::start("primary").await;
    let candidate = Backend::start("candidate").await;
    let proxy = shadowing_proxy(primary.address, candidate.address, "").await;

    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let response = proxy
            .send(ClientRequest::new(method, "/r").body("write"))
            .await;
        assert_eq!(response.status, 200);
    }
    proxy.get("/r").await;
    candidate.wait_for_requests(1).await;
    proxy
        .wait_for_metric(
            "strangler_shadow_requests_total{outcome=\"skipped_method\",route=\"r\"}",
            4.0,
        )
        .await;
    assert_eq!(candidate.count(), 1, "only the GET was mirrored");
    assert_eq!(candidate.last().method, "GET");
    assert_eq!(primary.count(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_at_zero_one_and_a_keyed_fraction() {
    let primary = Backend::start("primary").await;
    let never = Backend::start("never").await;
    let always = Backend::start("always").await;
    let keyed = Backend::start("keyed").await;
    let proxy = Proxy::start(&format!(
        r#"upstreams:
  primary: {{ backends: [{}] }}
  never: {{ backends: [{}] }}
  always: {{ backends: [{}] }}
  keyed: {{ backends: [{}] }}
default_upstream: primary
routes:
  - {{ name: zero, match: {{ path: /zero }}, shadow: {{ upstream: never, sample: 0.0 }} }}
  - {{ name: one, match: {{ path: /one }}, shadow: {{ upstream: always, sample: 1.0 }} }}
  - name: half
    match: {{ path: /half }}
    shadow: {{ upstream: keyed, sample: 0.5, sample_key: {{ header: x-user }} }}
"#,
        primary.address, never.address, always.address, keyed.address
    ))
    .await;

    for _ in 0..20 {
        proxy.get("/zero").await;
        proxy.get("/one").await;
    }
    always.wait_for_requests(20).await;
    proxy
        .wait_for_metric(
            "strangler_shadow_requests_total{outcome=\"skipped_sample\",route=\"zero\"}",
            20.0,
        )
        .await;
    assert_eq!(never.count(), 0);

    // 200 users, each sending 3 requests: about half the users are shadowed, always all or
    // none of their requests.
    for user in 0..200 {
        for _ in 0..3 {
            proxy
                .send(ClientRequest::get("/half").header("x-user", &format!("user-{user}")))
                .await;
        }
    }
    proxy
        .wait_for_metric(
            "strangler_shadow_requests_total{outcome=\"skipped_sample\",route=\"half\"}",
            1.0,
        )
        .await;
    let sent = proxy
        .metric("strangler_shadow_requests_total{outcome=\"sent\",route=\"half\"}")
        .await
        .unwrap_or(0.0) as usize;
    keyed.wait_for_requests(sent).await;
    let mut per_user = std::collections::HashMap::<String, usize>::new();
    for request in keyed.requests() {
        *per_user
            .entry(request.header("x-user").unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(
        per_user.values().all(|count| *count == 3),
        "a user is shadowed always or never: {per_user:?}"
    );
    let users = per_user.len();
    assert!(
        (70..=130).contains(&users),
        "{users} of 200 users shadowed at sample 0.5"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_max_body_skips_the_shadow_and_the_primary_succeeds() {
    let primary = Backend::start("primary").await;
    let candidate = Backend::start("candidate").await;
    let proxy = shadowing_proxy(
        primary.address,
        candidate.address,
        ", methods: [POST], max_body: 1KiB",
    )
    .await;

    let big = vec![b'x'; 4096];
    let response = proxy
        .send(ClientRequest::new("POST", "/r").body(big.clone()))
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(
        primary.last().body.len(),
        4096,
        "the primary got the whole body"
    );

    // Chunked, so the size is only known while streaming: abandoned on the way.
    let chunked = support::chunked_post("/r", 4, 1024);
    assert_eq!(support::send_raw(proxy.address, &chunked).await, 200);
    assert_eq!(primary.last().body.len(), 4096);

    proxy
        .send(ClientRequest::new("POST", "/r").body("small"))
        .await;
    candidate.wait_for_requests(1).await;
    proxy
        .wait_for_metric(
            "strangler_shadow_requests_total{outcome=\"skipped_body\",route=\"r\"}",
            2.0,
        )
        .await;
    assert_eq!(candidate.count(), 1);
    assert_eq!(&candidate.last().body[..], b"small");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_inflight_cap_drops_copies_when_the_shadow_blackholes() {
    let primary = Backend::start("primary").await;
    let blackhole = Misbehaving::start(Misbehaviour::Blackhole).await;
    let proxy = shadowing_proxy(
        primary.address,
        blackhole.address,
        ", max_inflight: 2, timeout: 3s",
    )
    .await;

    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(proxy.get("/r").await.status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "primaries are not held by the shadow"
    );
    assert_eq!(
        proxy
            .metric("strangler_shadow_requests_total{outcome=\"sent\",route=\"r\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        proxy
            .metric("strangler_shadow_requests_total{outcome=\"dropped_full\",route=\"r\"}")
            .await,
        Some(8.0)
    );
    assert_eq!(proxy.metric("strangler_shadow_inflight").await, Some(2.0));
    // The stuck copies time out and free their slots.
    proxy
        .wait_for_metric(
            "strangler_shadow_requests_total{outcome=\"timeout\",route=\"r\"}",
            2.0,
        )
        .await;
    assert_eq!(proxy.metric("strangler_shadow_inflight").await, Some(0.0));
}

/// The client-visible result of a request: status, body and which backend answered.
async fn observe(proxy: &Proxy, i: usize) -> (u16, String, Option<String>) {
    let response = proxy.get(&format!("/r/{i}?q={i}")).await;
    (
        response.status,
        response.text(),
        response.header("x-backend").map(str::to_owned),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misbehaving_shadow_never_changes_the_primary_response_or_its_latency() {
    const BATCH: usize = 20;
    let primary = Backend::start("primary").await;

    // Baseline: no shadow at all.
    let plain = Proxy::start(&format!(
        "upstreams:\n  primary: {{ backends: [{}] }}\ndefault_upstream: primary\n",
        primary.address
    ))
    .await;
    let started = Instant::now();
    let mut expected = Vec::new();
    for i in 0..BATCH {
        expected.push(observe(&plain, i).await);
    }
    let baseline = started.elapsed();

    let slow = Backend::start("slow").await;
    let refusing = support::dead_address();
    let blackhole = Misbehaving::start(Misbehaviour::Blackhole).await;
    let reset = Misbehaving::start(Misbehaviour::Reset).await;
    let garbage = Misbehaving::start(Misbehaviour::Garbage).await;
    let slow_target =
        "{ name: candidate, request_headers: { set: { x-test-delay-ms: \"2000\" } } }";
    let candidates = [
        ("refusing", refusing, "candidate", ""),
        (
            "blackholed",
            blackhole.address,
            "candidate",
            ", timeout: 5s",
        ),
        ("2 s slow", slow.address, slow_target, ", timeout: 5s"),
        ("resetting", reset.address, "candidate", ""),
        ("garbage", garbage.address, "candidate", ""),
    ];
    for (name, address, target, settings) in candidates {
        let proxy = shadowing_proxy_to(primary.address, address, target, settings).await;
        let started = Instant::now();
        for (i, expected) in expected.iter().enumerate() {
            assert_eq!(
                &observe(&proxy, i).await,
                expected,
                "{name}: request {i} differs"
            );
        }
        let elapsed = started.elapsed();
        // The primary's answers prove nothing unless the copies really went out to the
        // misbehaving candidate.
        proxy
            .wait_for_metric(
                "strangler_shadow_requests_total{outcome=\"sent\",route=\"r\"}",
                BATCH as f64,
            )
            .await;
        assert!(
            elapsed < baseline * 3 + Duration::from_secs(1),
            "{name}: {BATCH} requests took {elapsed:?}, {baseline:?} without a shadow"
        );
        eprintln!("{name}: {elapsed:?} (no shadow: {baseline:?})");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_served_by_the_shadow_upstream_is_not_mirrored_to_it() {
    let primary = Backend::start("primary").await;
    let candidate = Backend::start("candidate").await;
    // A tester (allowed by address) forces the candidate: it serves the request, so a copy
    // would compare the candidate with itself.
    let proxy = Proxy::start(&format!(
        r#"tester_override: {{ allow_cidrs: [127.0.0.0/8] }}
upstreams:
  primary: {{ backends: [{}] }}
  candidate: {{ backends: [{}] }}
default_upstream: primary
routes:
  - name: r
    match: {{ path_prefix: /r }}
    shadow: {{ upstream: candidate }}
"#,
        primary.address, candidate.address
    ))
    .await;
    let forced = proxy
        .send(ClientRequest::get("/r/1").header("x-strangler-upstream", "candidate"))
        .await;
    assert_eq!(forced.status, 200);
    proxy
        .wait_for_metric(
            "strangler_shadow_requests_total{outcome=\"skipped_same_upstream\",route=\"r\"}",
            1.0,
        )
        .await;
    assert_eq!(candidate.count(), 1, "served once, mirrored never");
    assert_eq!(primary.count(), 0);

    // Served by the primary, it is mirrored as usual.
    assert_eq!(proxy.get("/r/2").await.status, 200);
    candidate.wait_for_requests(2).await;
    assert_eq!(primary.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_reach_a_candidate_only_on_purpose_and_secret_query_values_are_never_stored() {
    let primary = Backend::start("primary").await;
    let candidate = Backend::start("candidate").await;
    let proxy = shadowing_proxy(
        primary.address,
        candidate.address,
        ", forward_credentials: true",
    )
    .await;
    let response = proxy
        .send(
            ClientRequest::get("/r/items?page=2&access_token=s3cr3t&Signature=abc")
                .header("authorization", "Bearer secret"),
        )
        .await;
    assert_eq!(response.status, 200);
    candidate.wait_for_requests(1).await;
    let copy = candidate.last();
    assert_eq!(copy.header("authorization"), Some("Bearer secret"));
    assert_eq!(
        copy.target, "/r/items?page=2&access_token=s3cr3t&Signature=abc",
        "the copy is the request; only what is stored is redacted"
    );

    // The two backends answer differently, so the exchange is stored as a mismatch.
    let stored = support::eventually("a diff stored", || async {
        let diffs = support::get(proxy.admin, "/diffs").await.unwrap().json();
        match diffs["diffs"].as_array().and_then(|d| d.first()) {
            Some(first) => Ok(first.clone()),
            None => Err(diffs),
        }
    })
    .await;
    assert_eq!(
        stored["query"],
        "page=2&access_token=[redacted]&Signature=[redacted]"
    );
    assert!(!stored.to_string().contains("s3cr3t"), "{stored}");
}

/// A backend answering every request with `size` bytes of JSON that differ per backend.
async fn big_answers(name: &'static str, size: usize) -> Backend {
    let body = bytes::Bytes::from(format!(
        "{{\"backend\":\"{name}\",\"pad\":\"{}\"}}",
        "x".repeat(size)
    ));
    Backend::start_with(
        name,
        std::sync::Arc::new(move |_: &support::Recorded| {
            hyper::Response::builder()
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(body.clone()))
                .unwrap()
        }),
    )
    .await
}

/// A proxy serving `/r` from `primary` and shadowing it to `candidate`, with
/// `server.shadow_max_memory: memory`.
async fn shadowing_with_memory(primary: &Backend, candidate: &Backend, memory: &str) -> Proxy {
    Proxy::with(format!(
        r#"upstreams:
  primary: {{ backends: [{}] }}
  candidate: {{ backends: [{}] }}
default_upstream: primary
routes:
  - name: r
    match: {{ path_prefix: /r }}
    shadow: {{ upstream: candidate }}
"#,
        primary.address, candidate.address
    ))
    .server(&format!("  shadow_max_memory: {memory}\n"))
    .start()
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn shadowing_big_answers_is_bounded_by_bytes_and_the_primary_never_notices() {
    let primary = big_answers("primary", 256 * 1024).await;
    let candidate = big_answers("candidate", 256 * 1024).await;
    let proxy = shadowing_with_memory(&primary, &candidate, "1MiB").await;
    let requests = (0..24).map(|n| {
        let proxy = &proxy;
        async move { proxy.get(&format!("/r/{n}")).await }
    });
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.status, 200);
        assert_eq!(response.body.len(), 256 * 1024 + 30);
    }
    proxy
        .wait_for_metric(
            "strangler_shadow_requests_total{outcome=\"dropped_memory\",route=\"r\"}",
            1.0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_dropped_for_memory_is_skipped_not_judged_as_the_candidates_error() {
    let primary = big_answers("primary", 1024).await;
    let candidate = big_answers("candidate", 128 * 1024).await;
    let proxy = shadowing_with_memory(&primary, &candidate, "64KiB").await;
    for n in 0..3 {
        assert_eq!(proxy.get(&format!("/r/{n}")).await.status, 200);
    }
    proxy
        .wait_for_metric(
            "strangler_shadow_requests_total{outcome=\"dropped_memory\",route=\"r\"}",
            3.0,
        )
        .await;
    proxy
        .wait_for_metric("strangler_diffs_total{result=\"skipped\",route=\"r\"}", 3.0)
        .await;
    assert_eq!(
        proxy
            .metric("strangler_diffs_total{result=\"mismatch\",route=\"r\"}")
            .await,
        None,
        "the proxy's memory is not the candidate's error"
    );
    let stored = support::get(proxy.admin, "/diffs").await.unwrap().json();
    assert_eq!(stored["diffs"], serde_json::json!([]), "{stored}");
}
