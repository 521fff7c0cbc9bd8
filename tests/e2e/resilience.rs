//! Upstream failures and client abuse, end to end: each misbehaving backend gets its status code
//! within its bound; health checks, passive ejection, retries and fallback; request limits; and
//! ambiguous framing refused before anything reaches a backend.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use support::{Backend, ClientRequest, DEADLINE, Misbehaving, Misbehaviour, Proxy, Recorded};

/// One upstream `u` on `backends`, with extra upstream settings (YAML flow entries).
async fn proxy_to(backends: &[SocketAddr], settings: &str) -> Proxy {
    let list: Vec<String> = backends.iter().map(|a| a.to_string()).collect();
    Proxy::start(&format!(
        "upstreams:\n  u: {{ backends: [{}]{settings} }}\ndefault_upstream: u\n",
        list.join(", ")
    ))
    .await
}

/// Sends GET `/` and checks status, reason and that the answer came within `bound`.
async fn expect_error(proxy: &Proxy, status: u16, reason: &str, bound: Duration) {
    let started = Instant::now();
    let response = proxy.get("/").await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, status, "{reason}: {}", response.text());
    assert_eq!(response.header("x-strangler-error"), Some(reason));
    assert!(response.header("x-request-id").is_some());
    assert!(
        elapsed < bound,
        "{reason} took {elapsed:?}, bound {bound:?}"
    );
}

const FAST: &str = ", retries: 0, timeouts: { connect: 500ms, read: 500ms }";

#[tokio::test(flavor = "multi_thread")]
async fn each_failing_upstream_gets_its_status_in_time() {
    let refused = support::dead_address();
    let proxy = proxy_to(&[refused], FAST).await;
    expect_error(&proxy, 502, "connect_refused", Duration::from_secs(1)).await;

    let blackhole = Misbehaving::start(Misbehaviour::Blackhole).await;
    let proxy = proxy_to(&[blackhole.address], FAST).await;
    expect_error(&proxy, 504, "upstream_timeout", Duration::from_millis(1500)).await;

    let slow = Backend::start("slow").await;
    let proxy = proxy_to(&[slow.address], FAST).await;
    let started = Instant::now();
    let response = proxy
        .send(ClientRequest::get("/").header("x-test-delay-ms", "2000"))
        .await;
    assert_eq!(response.status, 504);
    assert_eq!(
        response.header("x-strangler-error"),
        Some("upstream_timeout")
    );
    assert!(started.elapsed() < Duration::from_millis(1500));

    let reset = Misbehaving::start(Misbehaviour::Reset).await;
    let proxy = proxy_to(&[reset.address], FAST).await;
    let response = proxy.get("/").await;
    assert_eq!(response.status, 502, "{}", response.text());

    let garbage = Misbehaving::start(Misbehaviour::Garbage).await;
    let proxy = proxy_to(&[garbage.address], FAST).await;
    let response = proxy.get("/").await;
    assert_eq!(response.status, 502, "{}", response.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_cut_short_by_the_upstream_looks_cut_short() {
    let cut = Misbehaving::start(Misbehaviour::CutShort).await;
    let proxy = proxy_to(&[cut.address], FAST).await;
    let outcome = support::send(proxy.address, ClientRequest::get("/")).await;
    match outcome {
        Err(error) => assert!(!error.is_empty()),
        Ok(response) => panic!(
            "a truncated body arrived as complete: {} bytes",
            response.body.len()
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_healthy_backend_is_an_immediate_503_with_retry_after() {
    let proxy = proxy_to(
        &[support::dead_address()],
        ", retries: 0, health_check: { interval: 50ms, timeout: 100ms, unhealthy_threshold: 1 }",
    )
    .await;
    // The TCP check takes the dead backend out of rotation.
    support::eventually("the dead backend taken out", || async {
        match &proxy.routes().await["upstreams"]["u"]["backends"][0]["available"] {
            serde_json::Value::Bool(false) => Ok(()),
            available => Err(available.clone()),
        }
    })
    .await;
    let started = Instant::now();
    let response = proxy.get("/").await;
    assert_eq!(response.status, 503);
    assert_eq!(
        response.header("x-strangler-error"),
        Some("no_healthy_backend")
    );
    assert_eq!(response.header("retry-after"), Some("5"));
    assert!(started.elapsed() < Duration::from_millis(500));
}

/// A backend whose `/healthz` answers 503 while `down` is set.
fn flapping(down: Arc<AtomicBool>) -> support::Responder {
    Arc::new(move |request: &Recorded| {
        let status = if request.target == "/healthz" && down.load(Ordering::Relaxed) {
            503
        } else {
            200
        };
        hyper::Response::builder()
            .status(status)
            .header("x-backend", "flappy")
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_take_a_backend_out_and_bring_it_back() {
    let steady = Backend::start("steady").await;
    let down = Arc::new(AtomicBool::new(false));
    let flappy = Backend::start_with("flappy", flapping(down.clone())).await;
    let proxy = proxy_to(
        &[steady.address, flappy.address],
        ", health_check: { path: /healthz, interval: 100ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 2 }",
    )
    .await;

    let served = |proxy: &Proxy| {
        let proxy_address = proxy.address;
        async move {
            let mut backends = Vec::new();
            for _ in 0..10 {
                let response = support::send(proxy_address, ClientRequest::get("/work"))
                    .await
                    .unwrap();
                assert_eq!(response.status, 200);
                backends.push(response.header("x-backend").unwrap().to_owned());
            }
            backends
        }
    };
    assert!(served(&proxy).await.contains(&"flappy".to_owned()));

    down.store(true, Ordering::Relaxed);
    support::eventually("the failing backend taken out", || async {
        let upstreams = proxy.routes().await["upstreams"].clone();
        if upstreams["u"]["backends"][1]["available"] == false {
            Ok(())
        } else {
            Err(upstreams)
        }
    })
    .await;
    assert!(
        served(&proxy).await.iter().all(|b| b == "steady"),
        "no traffic to a failing backend"
    );

    // A reload (here: one more route) keeps what the checks learned; the failing backend does
    // not get traffic again just because the config changed.
    let path = proxy.config_path();
    let mut config = std::fs::read_to_string(&path).unwrap();
    config.push_str("routes:\n  - { name: extra, match: { path: /extra } }\n");
    std::fs::write(&path, config).unwrap();
    let reload = proxy.reload().await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    assert_eq!(proxy.routes().await["generation"], 2);
    assert_eq!(
        proxy.routes().await["upstreams"]["u"]["backends"][1]["available"],
        false
    );
    assert!(
        served(&proxy).await.iter().all(|b| b == "steady"),
        "a reload re-admitted a failing backend"
    );

    down.store(false, Ordering::Relaxed);
    support::eventually("flappy re-admitted", || async {
        match served(&proxy).await {
            sides if sides.contains(&"flappy".to_owned()) => Ok(()),
            sides => Err(format!("{sides:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_hanging_up_never_eject_a_backend() {
    let backend = Backend::start("b").await;
    let proxy = proxy_to(
        &[backend.address],
        ", passive: { consecutive_failures: 1, ejection: 60s }",
    )
    .await;
    for _ in 0..3 {
        let abandoned = support::send(
            proxy.address,
            ClientRequest::get("/").header("x-test-delay-ms", "300"),
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), abandoned)
                .await
                .is_err()
        );
    }
    // Wait until the proxy has finished (and counted) the three abandoned exchanges.
    proxy
        .wait_for_metric(
            "strangler_requests_total{code=\"0\",route=\"default\",upstream=\"u\"}",
            3.0,
        )
        .await;
    let response = proxy.get("/").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        proxy.routes().await["upstreams"]["u"]["backends"][0]["ejected"],
        false
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_failures_are_retried_on_another_backend_and_ejected() {
    let good = Backend::start("good").await;
    let proxy = proxy_to(
        &[support::dead_address(), good.address],
        ", retries: 1, passive: { consecutive_failures: 2, ejection: 30s }",
    )
    .await;
    for _ in 0..10 {
        let response = proxy
            .send(ClientRequest::new("POST", "/orders").body("one"))
            .await;
        assert_eq!(response.status, 200, "the retry lands on the live backend");
        assert_eq!(response.header("x-backend"), Some("good"));
    }
    assert_eq!(good.count(), 10, "each POST reached a backend exactly once");
    let document = proxy.routes().await;
    assert_eq!(document["upstreams"]["u"]["backends"][0]["ejected"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_that_reached_a_backend_is_never_sent_twice() {
    let resetting = Misbehaving::start(Misbehaviour::ResetAfterRequest).await;
    let good = Backend::start("good").await;
    let proxy = proxy_to(&[resetting.address, good.address], ", retries: 3").await;
    let response = proxy
        .send(ClientRequest::new("POST", "/pay").body("charge"))
        .await;
    assert_eq!(response.status, 502, "{}", response.text());
    assert_eq!(resetting.requests.load(Ordering::SeqCst), 1);
    assert_eq!(good.count(), 0, "not replayed elsewhere either");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connect_timeout_is_not_waited_out_twice_on_the_same_backend() {
    let unanswered = support::UnansweredConnect::start().await;
    // `retries: 1` (the default) with one backend: there is no other backend to retry on, and
    // the same one would only double the wait.
    let proxy = proxy_to(
        &[unanswered.address],
        ", retries: 1, timeouts: { connect: 1s }",
    )
    .await;
    let started = Instant::now();
    let response = proxy.get("/").await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, 504, "{}", response.text());
    assert_eq!(
        response.header("x-strangler-error"),
        Some("connect_timeout")
    );
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_millis(1800),
        "one connect timeout, not two: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_get_whose_fresh_connection_was_reset_is_answered_by_the_next_backend_and_a_post_is_not()
{
    let resetting = Misbehaving::start(Misbehaviour::ResetAfterRequest).await;
    let good = Backend::start("good").await;
    let proxy = proxy_to(&[resetting.address, good.address], "").await;

    // Round robin starts at the resetting backend, so the POST reaches it first: it may have had
    // effects there, so it is answered 502 and sent nowhere else.
    let response = proxy
        .send(ClientRequest::new("POST", "/pay").body("charge"))
        .await;
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(response.header("x-strangler-error").is_some());
    assert_eq!(resetting.requests.load(Ordering::SeqCst), 1);
    assert_eq!(good.count(), 0, "a POST is never replayed elsewhere");

    // GETs: every one is answered by the good backend, including those that went to the
    // resetting one first.
    for number in 0..4 {
        let response = proxy.get(&format!("/item/{number}")).await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.header("x-backend"), Some("good"));
    }
    let reset_gets = resetting.requests.load(Ordering::SeqCst) - 1;
    assert!(
        reset_gets >= 1,
        "no GET went to the resetting backend first"
    );
    assert_eq!(good.count(), 4, "each GET reached the good backend once");
    assert!(good.requests().iter().all(|r| r.method == "GET"));
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_at_the_routes_deadline() {
    let first = support::UnansweredConnect::start().await;
    let second = support::UnansweredConnect::start().await;
    let third = support::UnansweredConnect::start().await;
    // Three backends whose connects hang, a 1 s connect timeout and 3 retries would take 3 s;
    // the route's 1.5 s deadline cuts the second attempt to the 0.5 s left, and there is no
    // third.
    let proxy = Proxy::start(&format!(
        "upstreams:
  u: {{ backends: [{}, {}, {}], retries: 3, timeouts: {{ connect: 1s }} }}
default_upstream: u
routes:
  - {{ name: bounded, match: {{ path_prefix: /bounded }}, upstream: u, timeout: 1500ms }}
",
        first.address, second.address, third.address
    ))
    .await;
    let started = Instant::now();
    let response = proxy.get("/bounded").await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, 504, "{}", response.text());
    assert_eq!(
        response.header("x-strangler-error"),
        Some("request_timeout")
    );
    assert!(
        elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_millis(2300),
        "the deadline, not three connect timeouts: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fallback_serves_when_the_new_service_is_down() {
    let legacy = Backend::start("legacy").await;
    let proxy = Proxy::start(&format!(
        r#"upstreams:
  legacy: {{ backends: [{}] }}
  orders-v2: {{ backends: [{}], retries: 0, timeouts: {{ connect: 300ms }} }}
default_upstream: legacy
routes:
  - {{ name: orders, match: {{ path_prefix: /orders }}, upstream: orders-v2, fallback: legacy }}
"#,
        legacy.address,
        support::dead_address()
    ))
    .await;
    let response = proxy.get("/orders/1").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-backend"), Some("legacy"));
    assert_eq!(response.header("x-strangler-fallback"), Some("legacy"));
    assert_eq!(legacy.last().target, "/orders/1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listed_5xx_sends_idempotent_requests_to_the_fallback() {
    let legacy = Backend::start("legacy").await;
    let failing = Backend::busy("orders-v2").await;
    let proxy = Proxy::start(&format!(
        r#"upstreams:
  legacy: {{ backends: [{}] }}
  orders-v2: {{ backends: [{}], passive: {{ consecutive_failures: 0 }} }}
default_upstream: legacy
routes:
  - {{ name: orders, match: {{ path_prefix: /orders }}, upstream: orders-v2, fallback: legacy }}
"#,
        legacy.address, failing.address
    ))
    .await;
    let response = proxy.get("/orders/7").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-backend"), Some("legacy"));
    assert_eq!(response.header("x-strangler-fallback"), Some("legacy"));
    assert_eq!(failing.count(), 1);

    // A POST may have had effects: its 503 goes to the client as it is.
    let response = proxy
        .send(ClientRequest::new("POST", "/orders").body("x"))
        .await;
    assert_eq!(response.status, 503);
    assert_eq!(response.header("x-backend"), Some("orders-v2"));
    assert_eq!(legacy.count(), 1, "the POST was not replayed on legacy");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_already_on_the_fallback_is_not_sent_to_it_again() {
    let busy_legacy = Backend::busy("legacy").await;
    let orders = Backend::start("orders-v2").await;
    // The kill switch (like a canary split that picked legacy) sends the request to the
    // route's fallback in the first place.
    let proxy = Proxy::start(&format!(
        r#"kill_switch: true
upstreams:
  legacy: {{ backends: [{}], passive: {{ consecutive_failures: 0 }} }}
  orders-v2: {{ backends: [{}] }}
default_upstream: legacy
routes:
  - {{ name: orders, match: {{ path_prefix: /orders }}, upstream: orders-v2, fallback: legacy }}
"#,
        busy_legacy.address, orders.address
    ))
    .await;
    let response = proxy.get("/orders/7").await;
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.header("x-backend"), Some("legacy"));
    assert_eq!(response.header("x-strangler-fallback"), None);
    assert_eq!(
        busy_legacy.count(),
        1,
        "legacy's 503 was not replayed on legacy"
    );
    assert_eq!(orders.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_limit_has_its_status_and_nothing_reaches_the_backend() {
    let backend = Backend::start("b").await;
    // Limits are process settings in the `server` section.
    let proxy = Proxy::with(format!("upstreams:\n  u: {{ backends: [{}] }}\ndefault_upstream: u\n", backend.address))
        .server("  limits: { max_uri_length: 100B, max_header_count: 10, max_header_bytes: 1KiB, max_body: 1KiB, body_idle_timeout: 300ms }\n")
        .start()
    .await;

    let long_uri = format!("/{}", "a".repeat(200));
    assert_eq!(proxy.get(&long_uri).await.status, 414);
    let mut many = ClientRequest::get("/");
    for i in 0..20 {
        many = many.header(&format!("x-h{i}"), "1");
    }
    assert_eq!(proxy.send(many).await.status, 431);
    assert_eq!(
        proxy
            .send(ClientRequest::get("/").header("x-big", &"b".repeat(2000)))
            .await
            .status,
        431
    );
    let response = proxy
        .send(ClientRequest::new("POST", "/").body(vec![b'x'; 4096]))
        .await;
    assert_eq!(response.status, 413);
    assert_eq!(response.header("x-strangler-error"), Some("body_too_large"));
    assert_eq!(backend.count(), 0, "nothing over a limit was forwarded");

    let chunked = support::chunked_post("/", 4, 1024);
    assert_eq!(support::send_raw(proxy.address, &chunked).await, 413);

    assert_eq!(proxy.get("/fine").await.status, 200);

    // A body that stalls half-way: 408 within the idle timeout (plus slack), no complete request
    // upstream.
    let started = Instant::now();
    let stalled = support::send_raw(
        proxy.address,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part of it",
    )
    .await;
    assert_eq!(stalled, 408);
    assert!(
        started.elapsed() < Duration::from_millis(1300),
        "{:?}",
        started.elapsed()
    );
    assert!(
        backend
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .all(|r| !r.complete),
        "no POST over a limit or stalled reached the backend whole"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_framing_is_refused_and_never_forwarded() {
    let backend = Backend::start("b").await;
    let proxy = proxy_to(&[backend.address], "").await;
    let cases: [(&str, &[u8]); 8] = [
        ("CL and TE", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("differing CLs", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ("signed CL", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello"),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n"),
        ("NUL in a value", b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n"),
        ("bare CR in a value", b"GET / HTTP/1.1\r\nHost: x\r\nX-Cr: a\rb\r\n\r\n"),
        ("no Host on HTTP/1.1", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n"),
    ];
    for (name, request) in cases {
        let status = support::send_raw(proxy.address, request).await;
        assert_eq!(status, 400, "{name}");
    }
    // A bad chunk size is found while the body streams, after the header went upstream: the
    // upstream exchange is aborted, so the backend never gets a complete request.
    assert!(
        backend.requests().iter().all(|r| !r.complete),
        "no ambiguous request was forwarded whole: {:?}",
        backend.requests()
    );
}

/// Reads from `stream` until the peer closes it (or `DEADLINE`); returns what arrived and
/// whether the close was seen.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_timeout_bounds_the_whole_request() {
    let slow = Backend::start("slow").await;
    let trickle = Misbehaving::start(Misbehaviour::Trickle).await;
    let stall = Misbehaving::start(Misbehaviour::LateStall).await;
    // Each upstream's own read timeout (10 s) is far longer than the routes' 800 ms.
    let config = format!(
        "upstreams:
  slow: {{ backends: [{}], retries: 0, timeouts: {{ read: 10s }} }}
  trickle: {{ backends: [{}], retries: 0, timeouts: {{ read: 10s }} }}
  stall: {{ backends: [{}], retries: 0, timeouts: {{ read: 10s }} }}
default_upstream: slow
routes:
  - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: slow, timeout: 800ms }}
  - {{ name: trickle, match: {{ path_prefix: /trickle }}, upstream: trickle, timeout: 800ms }}
  - {{ name: stall, match: {{ path_prefix: /stall }}, upstream: stall, timeout: 800ms }}
",
        slow.address, trickle.address, stall.address
    );
    let proxy = Proxy::start(&config).await;
    let bound = Duration::from_millis(1800);

    // Nothing back before the deadline: 504 at the deadline.
    let started = Instant::now();
    let response = proxy
        .send(ClientRequest::get("/slow").header("x-test-delay-ms", "5000"))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, 504, "{}", response.text());
    assert_eq!(
        response.header("x-strangler-error"),
        Some("request_timeout")
    );
    assert!(response.header("x-request-id").is_some());
    assert!(
        elapsed >= Duration::from_millis(750) && elapsed < bound,
        "{elapsed:?}"
    );
    // Within the deadline: served.
    let response = proxy
        .send(ClientRequest::get("/slow").header("x-test-delay-ms", "100"))
        .await;
    assert_eq!(response.status, 200);

    // A body still trickling at the deadline, and one that stalls after a late start: both are
    // cut short (the connection closes) instead of completing or hanging.
    for target in ["/trickle", "/stall"] {
        let started = Instant::now();
        let outcome = support::send(proxy.address, ClientRequest::get(target)).await;
        let elapsed = started.elapsed();
        assert!(outcome.is_err(), "{target}: a cut response arrived whole");
        assert!(elapsed < bound, "{target}: cut after {elapsed:?}");
    }
    let timeouts = |route: &'static str| {
        format!(
            "strangler_upstream_errors_total{{kind=\"request_timeout\",route=\"{route}\",upstream=\"{route}\"}}"
        )
    };
    assert_eq!(proxy.metric(&timeouts("slow")).await, Some(1.0));
    assert_eq!(proxy.metric(&timeouts("trickle")).await, Some(1.0));
    // The stalled response is cut by the connection's deadline watch, beside Pingora's loop.
    let closed = proxy
        .metric("strangler_connections_closed_total{reason=\"request_timeout\"}")
        .await;
    assert_eq!(closed, Some(1.0));
    let log = proxy.stderr();
    let line = log
        .lines()
        .find(|line| line.contains("request deadline passed"))
        .unwrap_or_else(|| panic!("the watch's close is logged: {log}"));
    assert!(line.contains("request_id="), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_request_headers_get_408_but_idle_keep_alive_does_not() {
    use tokio::io::AsyncWriteExt;
    let backend = Backend::start("b").await;
    let proxy = Proxy::with(format!(
        "upstreams:\n  u: {{ backends: [{}] }}\ndefault_upstream: u\n",
        backend.address
    ))
    .server("  limits: { header_timeout: 600ms }\n")
    .start()
    .await;
    let bound = Duration::from_millis(1600);

    // Slowloris: a header line every 100 ms, never the end of the headers.
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        let _ = writer.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
        for number in 0..100 {
            let line = format!("x-slow-{number}: 1\r\n");
            if writer.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        use tokio::io::AsyncReadExt;
        let mut buffer = [0u8; 1024];
        while let Ok(read @ 1..) = reader.read(&mut buffer).await {
            answer.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .is_ok();
    let elapsed = started.elapsed();
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        answer.contains("x-strangler-error: header_timeout"),
        "{answer:?}"
    );
    assert!(answer.contains("x-request-id: "), "{answer:?}");
    assert!(
        closed && elapsed < bound,
        "closed: {closed}, after {elapsed:?}"
    );

    // A connection that sends nothing at all is closed the same way.
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    let (answer, closed) = read_until_closed(&mut silent).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(closed && started.elapsed() < bound);
    assert_eq!(backend.count(), 0, "no partial request reached the backend");

    // An idle kept-alive connection is not a slow request: it stays usable past the header
    // timeout (Pingora's keep-alive timeout governs it).
    let mut client = support::KeepAliveClient::connect(proxy.address).await;
    assert_eq!(client.get("/", "x-request-id").await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(client.get("/", "x-request-id").await.unwrap().0, 200);
    assert_eq!(
        proxy
            .metric("strangler_connections_closed_total{reason=\"header_timeout\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_limit_get_503_until_a_slot_frees() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::with(format!(
        "upstreams:\n  u: {{ backends: [{}] }}\ndefault_upstream: u\n",
        backend.address
    ))
    .server("  limits: { max_connections: 2 }\n")
    .start()
    .await;
    let mut first = support::KeepAliveClient::connect(proxy.address).await;
    let mut second = support::KeepAliveClient::connect(proxy.address).await;
    assert_eq!(first.get("/", "x-request-id").await.unwrap().0, 200);
    assert_eq!(second.get("/", "x-request-id").await.unwrap().0, 200);

    let mut third = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        third
            .write_all(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
    }
    let (answer, closed) = read_until_closed(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("retry-after: 1"), "{answer:?}");
    assert!(answer.contains("x-strangler-error: too_many_connections"));
    assert!(closed);
    assert!(backend.requests().iter().all(|r| r.target != "/third"));

    // Closing a connection frees its slot.
    drop(first);
    support::eventually("the closed connection's slot freed", || async {
        match support::send(proxy.address, ClientRequest::get("/again")).await {
            Ok(response) if response.status == 200 => Ok(()),
            Ok(response) => Err(format!("status {}", response.status)),
            Err(error) => Err(error),
        }
    })
    .await;
    assert!(
        proxy
            .metric("strangler_connections_closed_total{reason=\"too_many_connections\"}")
            .await
            >= Some(1.0)
    );
}

/// Answers every request 200 with `x-backend: <name>`.
fn answer_as(name: &'static str) -> support::Responder {
    Arc::new(move |_: &Recorded| {
        hyper::Response::builder()
            .header("x-backend", name)
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap()
    })
}

/// Writes a hosts file where `name` resolves to `address` (on top of the machine's own entries).
fn write_hosts(path: &std::path::Path, name: &str, address: &str) {
    let base = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    // Rewritten in place (same inode): the proxy's bind mount sees the new content.
    std::fs::write(path, format!("{address} {name}\n{base}")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_name_that_moves_is_followed_and_a_failed_lookup_keeps_the_last_good_address() {
    let port = support::free_port();
    let first = Backend::start_at(
        "first",
        SocketAddr::from(([127, 0, 0, 2], port)),
        answer_as("first"),
    )
    .await;
    let second = Backend::start_at(
        "second",
        SocketAddr::from(([127, 0, 0, 3], port)),
        answer_as("second"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    write_hosts(&hosts, "orders.test.internal", "127.0.0.2");
    let proxy = Proxy::with(format!(
        "upstreams:\n  orders: {{ backends: ['orders.test.internal:{port}'] }}\ndefault_upstream: orders\n"
    ))
    .server("  dns_refresh: 200ms\n")
    .hosts(&hosts)
    .in_dir(dir)
    .start()
    .await;
    assert_eq!(proxy.get("/a").await.header("x-backend"), Some("first"));

    write_hosts(&hosts, "orders.test.internal", "127.0.0.3");
    support::eventually("the new address used", || async {
        match proxy.get("/a").await.header("x-backend") {
            Some("second") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    proxy
        .wait_for_metric(
            "strangler_dns_refreshes_total{result=\"changed\",upstream=\"orders\"}",
            1.0,
        )
        .await;

    // The name stops resolving: the last good address keeps serving.
    std::fs::write(
        &hosts,
        std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
    )
    .unwrap();
    proxy
        .wait_for_metric(
            "strangler_dns_refreshes_total{result=\"failed\",upstream=\"orders\"}",
            1.0,
        )
        .await;
    for _ in 0..5 {
        assert_eq!(proxy.get("/a").await.header("x-backend"), Some("second"));
    }
    drop((first, second));
}
