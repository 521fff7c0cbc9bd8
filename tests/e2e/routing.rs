//! Matching and actions, end to end: the real binary between a real client and real backends.

use crate::support;

use support::{Backend, ClientRequest, Proxy};

/// Three backends named a, b and c, with a config whose default upstream is `a`.
struct Setup {
    a: Backend,
    b: Backend,
    c: Backend,
}

impl Setup {
    async fn new() -> Setup {
        Setup {
            a: Backend::start("a").await,
            b: Backend::start("b").await,
            c: Backend::start("c").await,
        }
    }

    async fn proxy(&self, routes: &str) -> Proxy {
        let config = format!(
            "upstreams:\n  a: {{ backends: [{}] }}\n  b: {{ backends: [{}] }}\n  c: {{ backends: [{}] }}\ndefault_upstream: a\nroutes:\n{routes}",
            self.a.address, self.b.address, self.c.address
        );
        Proxy::start(&config).await
    }
}

async fn served_by(proxy: &Proxy, request: ClientRequest) -> String {
    let response = proxy.send(request).await;
    assert_eq!(response.status, 200, "{}", response.text());
    response
        .header("x-backend")
        .expect("backend header")
        .to_owned()
}

async fn path_served_by(proxy: &Proxy, target: &str) -> String {
    served_by(proxy, ClientRequest::get(target)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn unmatched_requests_go_to_the_default_upstream_unchanged() {
    let setup = Setup::new().await;
    let proxy = setup
        .proxy("  - { name: only-b, match: { path: /b }, upstream: b }\n")
        .await;

    let response = proxy
        .send(
            ClientRequest::new("PUT", "/some/where?x=1&y=%20z")
                .header("content-type", "text/plain")
                .header("x-custom", "kept")
                .body("payload"),
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-backend"), Some("a"));
    let seen = setup.a.last();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.target, "/some/where?x=1&y=%20z");
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(seen.header("content-type"), Some("text/plain"));
    assert_eq!(&seen.body[..], b"payload");
    assert_eq!(setup.b.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_path_matches_only_that_path() {
    let setup = Setup::new().await;
    let proxy = setup
        .proxy("  - { name: exact, match: { path: /health/deep }, upstream: b }\n")
        .await;
    assert_eq!(path_served_by(&proxy, "/health/deep").await, "b");
    assert_eq!(
        path_served_by(&proxy, "/health/deep?verbose=1").await,
        "b",
        "query is not part of the path"
    );
    assert_eq!(path_served_by(&proxy, "/health/deep/x").await, "a");
    assert_eq!(path_served_by(&proxy, "/health").await, "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn path_prefix_matches_on_segment_boundaries() {
    let setup = Setup::new().await;
    let proxy = setup
        .proxy("  - { name: api, match: { path_prefix: /api }, upstream: b }\n")
        .await;
    assert_eq!(path_served_by(&proxy, "/api").await, "b");
    assert_eq!(path_served_by(&proxy, "/api/").await, "b");
    assert_eq!(path_served_by(&proxy, "/api/orders/7").await, "b");
    assert_eq!(path_served_by(&proxy, "/apix").await, "a");
    assert_eq!(path_served_by(&proxy, "/ap").await, "a");
    assert_eq!(path_served_by(&proxy, "/v1/api").await, "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn path_regex_matches_and_misses() {
    let setup = Setup::new().await;
    let proxy = setup
        .proxy(
            "  - { name: invoices, match: { path_regex: '^/invoices/[0-9]+$' }, upstream: b }\n  - { name: anywhere, match: { path_regex: 'legacy-report' }, upstream: c }\n",
        )
        .await;
    assert_eq!(path_served_by(&proxy, "/invoices/42").await, "b");
    assert_eq!(path_served_by(&proxy, "/invoices/42x").await, "a");
    assert_eq!(path_served_by(&proxy, "/invoices/").await, "a");
    assert_eq!(
        path_served_by(&proxy, "/x/legacy-report/y").await,
        "c",
        "unanchored regexes search"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_matches_exact_and_wildcard_names() {
    let setup = Setup::new().await;
    let proxy = setup
        .proxy(
            "  - { name: api-host, match: { host: api.example.com }, upstream: b }\n  - { name: tenants, match: { host: '*.tenants.example.com' }, upstream: c }\n",
        )
        .await;
    let with_host = |host: &str| ClientRequest::get("/").header("host", host);
    assert_eq!(served_by(&proxy, with_host("api.example.com")).await, "b");
    assert_eq!(
        served_by(&proxy, with_host("API.Example.com:8080")).await,
        "b",
        "case and port ignored"
    );
    assert_eq!(served_by(&proxy, with_host("x.api.example.com")).await, "a");
    assert_eq!(
        served_by(&proxy, with_host("acme.tenants.example.com")).await,
        "c"
    );
    assert_eq!(
        served_by(&proxy, with_host("a.b.tenants.example.com")).await,
        "c"
    );
    assert_eq!(
        served_by(&proxy, with_host("tenants.example.com")).await,
        "a",
        "bare domain is not a subdomain"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_restrict_a_route() {
    let setup = Setup::new().await;
    let proxy = setup
        .proxy("  - { name: reads, match: { path_prefix: /orders, methods: [GET, head] }, upstream: b }\n")
        .await;
    assert_eq!(served_by(&proxy, ClientRequest::get("/orders")).await, "b");
    assert_eq!(
        served_by(&proxy, ClientRequest::new("HEAD", "/orders")).await,
        "b"
    );
    assert_eq!(
        served_by(&proxy, ClientRequest::new("POST", "/orders").body("{}")).await,
        "a"
    );
    assert_eq!(
        served_by(&proxy, ClientRequest::new("DELETE", "/orders/1")).await,
        "a"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn header_conditions_exact_regex_present_absent() {
    let setup = Setup::new().await;
    let proxy = setup
        .proxy(
            r#"  - name: exact
    match: { headers: { x-tenant: acme } }
    upstream: b
  - name: regex
    match: { headers: { x-version: { regex: '^2\.[0-9]+$' } } }
    upstream: c
  - name: present
    match: { path: /p, headers: { x-debug: { present: true } } }
    upstream: b
  - name: absent
    match: { path: /q, headers: { authorization: { present: false } } }
    upstream: c
"#,
        )
        .await;
    let get = |path: &str| ClientRequest::get(path);
    assert_eq!(
        served_by(&proxy, get("/").header("x-tenant", "acme")).await,
        "b"
    );
    assert_eq!(
        served_by(&proxy, get("/").header("x-tenant", "acme-corp")).await,
        "a"
    );
    assert_eq!(
        served_by(&proxy, get("/").header("x-version", "2.13")).await,
        "c"
    );
    assert_eq!(
        served_by(&proxy, get("/").header("x-version", "12.1")).await,
        "a"
    );
    assert_eq!(
        served_by(&proxy, get("/p").header("x-debug", "")).await,
        "b"
    );
    assert_eq!(served_by(&proxy, get("/p")).await, "a");
    assert_eq!(served_by(&proxy, get("/q")).await, "c");
    assert_eq!(
        served_by(&proxy, get("/q").header("authorization", "Bearer t")).await,
        "a"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn query_and_cookie_conditions() {
    let setup = Setup::new().await;
    let proxy = setup
        .proxy(
            r#"  - name: beta-query
    match: { query: { beta: "1" } }
    upstream: b
  - name: preview-flag
    match: { query: { preview: { present: true } } }
    upstream: c
  - name: beta-cookie
    match: { cookies: { cohort: { regex: '^(beta|canary)$' } } }
    upstream: b
"#,
        )
        .await;
    assert_eq!(path_served_by(&proxy, "/x?beta=1").await, "b");
    assert_eq!(path_served_by(&proxy, "/x?a=2&beta=1").await, "b");
    assert_eq!(path_served_by(&proxy, "/x?beta=10").await, "a");
    assert_eq!(path_served_by(&proxy, "/x?preview").await, "c");
    assert_eq!(path_served_by(&proxy, "/x?nopreview=1").await, "a");
    let with_cookie = |cookie: &str| ClientRequest::get("/x").header("cookie", cookie);
    assert_eq!(
        served_by(&proxy, with_cookie("session=1; cohort=canary")).await,
        "b"
    );
    assert_eq!(served_by(&proxy, with_cookie("cohort=stable")).await, "a");
    assert_eq!(served_by(&proxy, with_cookie("xcohort=beta")).await, "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn first_matching_route_wins() {
    let setup = Setup::new().await;
    let proxy = setup
        .proxy(
            r#"  - { name: specific, match: { path_prefix: /api/orders, methods: [GET] }, upstream: c }
  - { name: broad, match: { path_prefix: /api }, upstream: b }
  - { name: never, match: { path: /api/orders }, upstream: a }
"#,
        )
        .await;
    assert_eq!(path_served_by(&proxy, "/api/orders").await, "c");
    assert_eq!(
        served_by(&proxy, ClientRequest::new("POST", "/api/orders").body("x")).await,
        "b"
    );
    assert_eq!(path_served_by(&proxy, "/api/users").await, "b");
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrites_change_path_and_host_but_keep_the_query() {
    let setup = Setup::new().await;
    let proxy = setup
        .proxy(
            r#"  - name: strip
    match: { path_prefix: /api }
    upstream: { name: b, rewrite: { strip_prefix: /api } }
  - name: replace
    match: { path_prefix: /v1 }
    upstream: { name: b, rewrite: { replace_prefix: { from: /v1, to: /v2/ } } }
  - name: regex
    match: { path_regex: '^/users/[0-9]+/profile$' }
    upstream:
      name: b
      rewrite: { regex: { pattern: '^/users/([0-9]+)/profile$', replacement: '/profiles/$1' } }
  - name: host
    match: { path: /hosted }
    upstream: { name: b, rewrite: { host: orders.internal } }
"#,
        )
        .await;
    let cases = [
        ("/api/orders/1?x=1", "/orders/1?x=1"),
        ("/api", "/"),
        ("/v1/users?page=2", "/v2/users?page=2"),
        ("/v1", "/v2"),
        ("/users/42/profile", "/profiles/42"),
    ];
    for (sent, expected) in cases {
        assert_eq!(path_served_by(&proxy, sent).await, "b");
        assert_eq!(setup.b.last().target, expected, "{sent}");
    }
    proxy
        .send(ClientRequest::get("/hosted").header("host", "shop.example.com"))
        .await;
    let seen = setup.b.last();
    assert_eq!(seen.header("host"), Some("orders.internal"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some("shop.example.com"),
        "the original host is kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_and_response_header_edits() {
    let backend = Backend::start_with(
        "b",
        std::sync::Arc::new(|_: &support::Recorded| {
            hyper::Response::builder()
                .header("x-backend", "b")
                .header("server", "legacy-iis/6.0")
                .header("x-powered-by", "php")
                .header("x-dup", "from-backend")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
                .unwrap()
        }),
    )
    .await;
    let proxy = Proxy::start(&format!(
        r#"upstreams:
  b: {{ backends: [{}] }}
default_upstream: b
routes:
  - name: edits
    match: {{ path_prefix: / }}
    upstream:
      name: b
      request_headers:
        remove: [x-legacy-session]
        set: {{ x-env: prod }}
        add: {{ x-migrated: "true" }}
    response_headers:
      remove: [x-powered-by]
      set: {{ server: strangler-demo }}
      add: {{ x-dup: from-proxy }}
"#,
        backend.address
    ))
    .await;
    let response = proxy
        .send(
            ClientRequest::get("/")
                .header("x-legacy-session", "secret")
                .header("x-env", "dev")
                .header("x-migrated", "client"),
        )
        .await;
    let seen = backend.last();
    assert!(seen.header("x-legacy-session").is_none());
    assert_eq!(seen.header_values("x-env"), ["prod"]);
    assert_eq!(seen.header_values("x-migrated"), ["client", "true"]);
    assert!(response.header("x-powered-by").is_none());
    assert_eq!(response.header("server"), Some("strangler-demo"));
    assert_eq!(response.headers["x-dup"], ["from-backend", "from-proxy"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_round_robin_across_backends() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  pool: {{ backends: [{}, {}] }}\ndefault_upstream: pool\n",
        one.address, two.address
    ))
    .await;
    let mut served = Vec::new();
    for _ in 0..10 {
        served.push(proxy.get("/").await.header("x-backend").unwrap().to_owned());
    }
    assert_eq!(one.count(), 5, "{served:?}");
    assert_eq!(two.count(), 5, "{served:?}");
    assert!(
        served.windows(2).all(|pair| pair[0] != pair[1]),
        "strict alternation: {served:?}"
    );
}
