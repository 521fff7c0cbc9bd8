//! What the proxy adds, strips and preserves on the way through, its errors, and the admin API.

use crate::support;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use support::{Backend, ClientRequest, Proxy, Recorded};

async fn single_backend_proxy(backend: &Backend) -> Proxy {
    Proxy::start(&format!(
        "upstreams:\n  legacy: {{ backends: [{}] }}\ndefault_upstream: legacy\n",
        backend.address
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_are_added() {
    let backend = Backend::start("legacy").await;
    let proxy = single_backend_proxy(&backend).await;

    proxy
        .send(ClientRequest::get("/").header("host", "shop.example.com"))
        .await;
    let seen = backend.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example.com"));
    assert_eq!(seen.header("host"), Some("shop.example.com"));

    proxy
        .send(
            ClientRequest::get("/")
                .header("x-forwarded-for", "203.0.113.7")
                .header("x-forwarded-proto", "https-spoofed"),
        )
        .await;
    let seen = backend.last();
    assert_eq!(
        seen.header_values("x-forwarded-for"),
        ["127.0.0.1"],
        "an untrusted peer's claim is replaced, never appended to"
    );
    assert_eq!(
        seen.header_values("x-forwarded-proto"),
        ["http"],
        "the proxy's own value replaces the client's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_request_headers_are_stripped() {
    let backend = Backend::start("legacy").await;
    let proxy = single_backend_proxy(&backend).await;

    proxy
        .send(
            ClientRequest::get("/")
                .header("connection", "keep-alive, x-hop-secret")
                .header("x-hop-secret", "do-not-forward")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .header("te", "trailers")
                .header("x-end-to-end", "kept"),
        )
        .await;
    let seen = backend.last();
    for name in ["x-hop-secret", "keep-alive", "proxy-connection", "te"] {
        assert!(
            seen.header(name).is_none(),
            "{name} reached the backend: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
}

/// `Connection: close, X-Forwarded-For` asks every hop to drop X-Forwarded-For. A proxy that
/// strips nominated headers *after* adding its own would lose it; ours refuses the request.
#[tokio::test(flavor = "multi_thread")]
async fn connection_header_cannot_remove_the_proxys_own_headers() {
    let backend = Backend::start("legacy").await;
    let proxy = single_backend_proxy(&backend).await;

    for nominated in ["X-Forwarded-For", "x-forwarded-host", "host"] {
        let response = proxy
            .send(
                ClientRequest::get("/")
                    .header("connection", &format!("close, {nominated}"))
                    .header("x-forwarded-for", "10.9.9.9"),
            )
            .await;
        assert_eq!(response.status, 400, "{nominated}: {}", response.text());
        assert_eq!(response.header("x-strangler-error"), Some("bad_request"));
    }
    assert_eq!(backend.count(), 0, "nothing ambiguous was forwarded");

    // A harmless nomination is simply honoured.
    proxy
        .send(
            ClientRequest::get("/")
                .header("connection", "close, x-trace")
                .header("x-trace", "1"),
        )
        .await;
    let seen = backend.last();
    assert!(seen.header("x-trace").is_none());
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_response_headers_are_stripped() {
    let backend = Backend::start_with(
        "legacy",
        Arc::new(|_: &Recorded| {
            hyper::Response::builder()
                .header("connection", "x-internal-hop")
                .header("x-internal-hop", "secret")
                .header("keep-alive", "timeout=99")
                .header("x-end-to-end", "kept")
                .body(Full::new(Bytes::from_static(b"ok")))
                .unwrap()
        }),
    )
    .await;
    let proxy = single_backend_proxy(&backend).await;
    let response = proxy.get("/").await;
    assert_eq!(response.status, 200);
    assert!(
        response.header("x-internal-hop").is_none(),
        "{:?}",
        response.headers
    );
    assert!(
        response.header("keep-alive").is_none(),
        "{:?}",
        response.headers
    );
    assert_eq!(response.header("x-end-to-end"), Some("kept"));
    assert_eq!(&response.body[..], b"ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_generated_or_passed_through() {
    let backend = Backend::start("legacy").await;
    let proxy = single_backend_proxy(&backend).await;

    let response = proxy.get("/").await;
    let generated = response
        .header("x-request-id")
        .expect("a request id on the response")
        .to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    assert_eq!(
        backend.last().header_values("x-request-id"),
        [generated.as_str()]
    );

    let second = proxy.get("/").await;
    assert_ne!(
        second.header("x-request-id"),
        Some(generated.as_str()),
        "ids are unique"
    );

    let response = proxy
        .send(ClientRequest::get("/").header("x-request-id", "client-chosen-42"))
        .await;
    assert_eq!(response.header("x-request-id"), Some("client-chosen-42"));
    assert_eq!(
        backend.last().header_values("x-request-id"),
        ["client-chosen-42"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_mebibyte_post_body_arrives_intact() {
    let backend = Backend::start("legacy").await;
    let proxy = single_backend_proxy(&backend).await;
    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();

    let response = proxy
        .send(
            ClientRequest::new("POST", "/upload?name=blob")
                .header("content-type", "application/octet-stream")
                .body(body.clone()),
        )
        .await;
    assert_eq!(response.status, 200);
    let seen = backend.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/upload?name=blob");
    assert_eq!(seen.body.len(), body.len());
    assert!(seen.body == body, "body bytes differ");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_upstream_gets_a_502_with_a_reason() {
    let dead = support::dead_address();
    let proxy = Proxy::start(&format!(
        "upstreams:\n  legacy: {{ backends: [{dead}] }}\ndefault_upstream: legacy\n"
    ))
    .await;
    let response = proxy
        .send(ClientRequest::get("/").header("x-request-id", "dead-1"))
        .await;
    assert_eq!(response.status, 502, "{}", response.text());
    assert_eq!(
        response.header("x-strangler-error"),
        Some("connect_refused")
    );
    assert_eq!(response.header("x-request-id"), Some("dead-1"));
    let body = response.json();
    assert_eq!(body["error"], "connect_refused");
    assert_eq!(body["request_id"], "dead-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_reports_health_readiness_and_the_live_config() {
    let backend = Backend::start("legacy").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  legacy: {{ backends: [{}] }}\ndefault_upstream: legacy\nroutes:\n  - {{ name: orders, match: {{ path_prefix: /orders }} }}\n",
        backend.address
    ))
    .await;

    let health = support::get(proxy.admin, "/healthz").await.unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");

    let ready = support::get(proxy.admin, "/readyz").await.unwrap();
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["generation"], 1);

    let routes = support::get(proxy.admin, "/routes").await.unwrap();
    assert_eq!(routes.status, 200);
    let document = routes.json();
    assert_eq!(document["generation"], 1);
    assert_eq!(document["config"]["default_upstream"], "legacy");
    assert_eq!(document["config"]["routes"][0]["name"], "orders");
    assert_eq!(
        document["config"]["routes"][0]["match"]["path_prefix"],
        "/orders"
    );
    assert_eq!(
        document["config"]["upstreams"]["legacy"]["timeouts"]["connect"],
        "2s"
    );
    assert_eq!(
        document["upstreams"]["legacy"]["resolved"][0],
        backend.address.to_string()
    );
    let file = std::fs::read(proxy.config_path()).unwrap();
    assert_eq!(document["sha256"].as_str().unwrap().len(), 64);
    assert!(!file.is_empty());

    let missing = support::get(proxy.admin, "/nope").await.unwrap();
    assert_eq!(missing.status, 404);
    let post = support::send(proxy.admin, ClientRequest::new("POST", "/routes").body("x"))
        .await
        .unwrap();
    assert_eq!(post.status, 405);
}

/// A proxy behind a "load balancer" at 127.0.0.0/8 when `trusted`, with a split by client IP
/// and a tester override for 192.0.2.0/24.
async fn balanced_proxy(legacy: &Backend, new: &Backend, trusted: bool) -> Proxy {
    let server = if trusted {
        "  trusted_proxies: [127.0.0.0/8]\n"
    } else {
        ""
    };
    Proxy::with(format!(
        r#"upstreams:
  legacy: {{ backends: [{}] }}
  new: {{ backends: [{}] }}
default_upstream: legacy
tester_override: {{ allow_cidrs: [192.0.2.0/24] }}
routes:
  - name: split
    stage: canary
    match: {{ path_prefix: /split }}
    split: [{{ upstream: new, weight: 50 }}, {{ upstream: legacy, weight: 50 }}]
    sticky: {{ client_ip: true }}
  - {{ name: plain, match: {{ path_prefix: /plain }}, upstream: legacy }}
"#,
        legacy.address, new.address
    ))
    .server(server)
    .start()
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_peer_cannot_spoof_its_address_its_scheme_or_the_tester_override() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("new").await;
    let proxy = balanced_proxy(&legacy, &new, false).await;
    let spoofed = |target: &str| {
        ClientRequest::get(target)
            .header("x-forwarded-for", "192.0.2.5")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
    };
    proxy.send(spoofed("/other")).await;
    let seen = legacy.last();
    assert_eq!(seen.header_values("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("localhost"));
    let forced = proxy
        .send(spoofed("/plain").header("x-strangler-upstream", "new"))
        .await;
    assert_eq!(
        forced.header("x-backend"),
        Some("legacy"),
        "192.0.2.5 was a lie"
    );
    // Sticky by client IP: the claimed address changes nothing, the side stays the peer's.
    let sides: std::collections::HashSet<String> =
        futures_util::future::join_all((0..20).map(|n| {
            proxy.send(
                ClientRequest::get("/split/1")
                    .header("x-forwarded-for", &format!("198.51.100.{n}")),
            )
        }))
        .await
        .into_iter()
        .map(|response| response.header("x-backend").unwrap().to_owned())
        .collect();
    assert_eq!(sides.len(), 1, "{sides:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_balancer_the_real_client_counts_and_outsiders_stay_outside() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("new").await;
    let proxy = balanced_proxy(&legacy, &new, true).await;
    let via_balancer = |client: &str, target: &str| {
        ClientRequest::get(target)
            .header("x-forwarded-for", client)
            .header("x-forwarded-proto", "https")
    };
    proxy.send(via_balancer("198.51.100.7", "/other")).await;
    let seen = legacy.last();
    assert_eq!(
        seen.header_values("x-forwarded-for"),
        ["198.51.100.7, 127.0.0.1"]
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    // The tester override follows the real client, not the balancer's subnet.
    let outsider = proxy
        .send(via_balancer("198.51.100.7", "/plain").header("x-strangler-upstream", "new"))
        .await;
    assert_eq!(outsider.header("x-backend"), Some("legacy"));
    let tester = proxy
        .send(via_balancer("192.0.2.5", "/plain").header("x-strangler-upstream", "new"))
        .await;
    assert_eq!(tester.header("x-backend"), Some("new"));
    // Sticky by client IP: different real clients behind one balancer land on both sides.
    let sides: std::collections::HashSet<String> = futures_util::future::join_all(
        (0..40).map(|n| proxy.send(via_balancer(&format!("198.51.100.{n}"), "/split/1"))),
    )
    .await
    .into_iter()
    .map(|response| response.header("x-backend").unwrap().to_owned())
    .collect();
    assert_eq!(sides.len(), 2, "{sides:?}");
}
