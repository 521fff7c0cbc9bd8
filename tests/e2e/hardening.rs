//! What an attacker, a broken backend and a bad day throw at the proxy: protocol upgrades,
//! response framing a client could misread, request targets, `Host` values and paths that mean
//! one thing to the router and another to the backend. Every case runs against the real binary.

use crate::support;

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use strangler::vocabulary::Reason;
use support::{Backend, ClientRequest, Proxy, RawOrigin, exchange_raw, send_raw};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A proxy whose `/new` route serves from `new` and whose default is `legacy`.
async fn two_routes(legacy: SocketAddr, new: SocketAddr, extra: &str) -> Proxy {
    Proxy::start(&format!(
        r#"upstreams:
  legacy: {{ backends: [{legacy}] }}
  new: {{ backends: [{new}] }}
default_upstream: legacy
routes:
  - name: new
    match: {{ path_prefix: /new }}
    upstream: new
{extra}"#
    ))
    .await
}

/// A WebSocket echo server.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() || message.is_binary() {
                        let _ = socket.send(message).await;
                    }
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_handshake_and_its_frames_pass_both_ways_and_are_never_shadowed() {
    let echo = websocket_echo().await;
    let candidate = Backend::start("candidate").await;
    let proxy = two_routes(
        echo,
        candidate.address,
        "  - name: ws\n    match: { path_prefix: /ws }\n    upstream: legacy\n    shadow: { upstream: new, methods: [GET] }\n",
    )
    .await;
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws/chat", proxy.address))
            .await
            .expect("the handshake succeeds through the proxy");
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["upgrade"], "websocket");
    for text in ["hello", "second frame"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(support::DEADLINE, socket.next())
            .await
            .expect("an echo in time")
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    socket.close(None).await.unwrap();
    assert_eq!(candidate.count(), 0, "an upgrade is never mirrored");
}

/// An upgrade origin that answers `101` the moment it accepts a connection, before it has even
/// read the request, then echoes every byte after the request head. Its `101` is therefore always
/// waiting on the socket when the proxy starts reading the answer, ahead of the end of the
/// upgrade request's own (empty) body: the ordering of cloudflare/pingora#946.
async fn instant_upgrade_echo() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
                if stream.write_all(switch).await.is_err() {
                    return;
                }
                let mut seen = Vec::new();
                let mut buffer = [0u8; 4096];
                let head_end = loop {
                    if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => seen.extend_from_slice(&buffer[..read]),
                    }
                };
                if stream.write_all(&seen[head_end..]).await.is_err() {
                    return;
                }
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => {
                            if stream.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    address
}

/// Opens an upgrade through `proxy`, then sends `message` into the tunnel and returns what comes
/// back: the echo, or how the tunnel failed.
async fn one_upgrade(proxy: SocketAddr, message: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
        stream
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: shop.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return Err(format!("closed during the handshake after {head:?}")),
            }
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err(format!("not switched: {}", String::from_utf8_lossy(&head)));
        }
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        stream
            .read_exact(&mut echoed)
            .await
            .map_err(|error| format!("the tunnel closed right after the 101: {error}"))?;
        Ok(String::from_utf8_lossy(&echoed).into_owned())
    };
    tokio::time::timeout(support::DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| Err("no echo in time".into()))
}

/// cloudflare/pingora#946: when the upstream's `101` is read before the end of the upgrade
/// request's empty body, Pingora 0.9 takes that end for the end of the tunnel and closes it.
/// Each attempt loses a coin toss (tokio's `select!` picks the ready branch at random), so
/// twenty attempts fail before the fix with a chance of 1 - 2^-20.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_whose_101_comes_before_the_request_is_read_stays_open_both_ways() {
    let origin = instant_upgrade_echo().await;
    let proxy = two_routes(origin, origin, "").await;
    for attempt in 0..20 {
        let message = format!("frame {attempt}");
        let answer = one_upgrade(proxy.address, &message).await;
        assert_eq!(answer, Ok(message), "attempt {attempt}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_conversation_ends_at_its_routes_deadline() {
    let echo = websocket_echo().await;
    let proxy = two_routes(
        echo,
        echo,
        "  - name: ws\n    match: { path_prefix: /ws }\n    upstream: legacy\n    timeout: 1s\n",
    )
    .await;
    let started = std::time::Instant::now();
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.address))
        .await
        .unwrap();
    // Frames pass while the deadline is ahead...
    socket.send(Message::text("early")).await.unwrap();
    let echoed = tokio::time::timeout(support::DEADLINE, socket.next())
        .await
        .expect("an echo in time");
    assert_eq!(
        echoed.unwrap().unwrap().into_text().unwrap().as_str(),
        "early"
    );
    // ...and the conversation is closed once it has passed.
    let end = tokio::time::timeout(support::DEADLINE, async {
        loop {
            match socket.next().await {
                Some(Ok(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the conversation outlived its deadline");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(900)
            && elapsed < std::time::Duration::from_millis(2500),
        "closed after {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bodyless_answers_lose_their_body_framing() {
    for head in [
        &b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"[..],
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\n",
    ] {
        let origin = RawOrigin::start(head).await;
        let proxy = two_routes(origin.address, origin.address, "").await;
        let answer = exchange_raw(
            proxy.address,
            b"GET /a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        let status = String::from_utf8_lossy(&head[9..12]).into_owned();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        let lower = answer.to_ascii_lowercase();
        assert!(!lower.contains("content-length"), "{answer}");
        assert!(!lower.contains("transfer-encoding"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn response_framing_a_client_could_misread_is_a_502() {
    let corpus: [&'static [u8]; 5] = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
    ];
    for response in corpus {
        let origin = RawOrigin::start(response).await;
        let proxy = two_routes(origin.address, origin.address, "").await;
        let answer = proxy.get("/a").await;
        assert_eq!(
            answer.status,
            502,
            "{}: {}",
            String::from_utf8_lossy(response),
            answer.text()
        );
        // Ours, or Pingora's own refusal of lengths that disagree.
        let reason = answer.header("x-strangler-error").unwrap_or_default();
        assert!(
            ["upstream_bad_framing", "upstream_bad_response"].contains(&reason),
            "{reason}: {}",
            String::from_utf8_lossy(response)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_length_beside_chunked_is_dropped_and_the_chunked_body_wins() {
    let origin = RawOrigin::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let proxy = two_routes(origin.address, origin.address, "").await;
    let answer = proxy.get("/a").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "hello");
    assert_eq!(answer.header("content-length"), None);
}

/// Raw requests that must be refused before anything reaches a backend, with their status.
const REFUSED: &[(&str, u16)] = &[
    ("GET legacy/a HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    ("GET * HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    (
        "GET http://evil.example/new/a HTTP/1.1\r\nHost: localhost\r\n\r\n",
        400,
    ),
    ("GET /a HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    ("GET /a HTTP/1.1\r\nHost: x, y\r\n\r\n", 400),
    ("GET /a HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("GET /a HTTP/1.1\r\nHost: user@localhost\r\n\r\n", 400),
    (
        "GET /a HTTP/1.1\r\nHost: localhost\r\nHost: other\r\n\r\n",
        400,
    ),
    ("GET /a HTTP/1.1\r\n\r\n", 400),
    (
        "GET /new/../legacy/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        400,
    ),
    (
        "GET /new/%2e%2e/legacy/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        400,
    ),
    (
        "GET /new/%2E./legacy/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        400,
    ),
    ("GET /new/./x HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    ("GET /new/x%00 HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    (
        "GET /new\\..\\legacy HTTP/1.1\r\nHost: localhost\r\n\r\n",
        400,
    ),
    (
        "POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer_Encoding: chunked\r\n\r\nhello",
        400,
    ),
    (
        "POST /a HTTP/1.1\r\nHost: localhost\r\nContent_Length: 5\r\n\r\n",
        400,
    ),
    (
        "POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: +5\r\n\r\nhello",
        400,
    ),
    (
        "POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    ("GET /a HTTP/1.1\r\nHost : localhost\r\n\r\n", 400),
    (
        "GET /a HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n b\r\n\r\n",
        400,
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn requests_that_two_parsers_could_read_differently_never_reach_a_backend() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("new").await;
    let proxy = two_routes(legacy.address, new.address, "").await;
    for (request, status) in REFUSED {
        assert_eq!(
            send_raw(proxy.address, request.as_bytes()).await,
            *status,
            "{request:?}"
        );
    }
    assert_eq!(legacy.count() + new.count(), 0, "{:?}", legacy.requests());
    // Still serving, and refusals are labelled apart from the default route.
    assert_eq!(proxy.get("/a").await.status, 200);
    let refused = proxy
        .metric("strangler_requests_total{code=\"400\",route=\"(refused)\",upstream=\"legacy\"}")
        .await
        .unwrap_or(0.0);
    assert!(refused >= 12.0, "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absolute_form_target_is_forwarded_in_origin_form_and_impostor_headers_are_dropped() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("new").await;
    let proxy = two_routes(legacy.address, new.address, "").await;
    let request = "GET http://localhost/new/a?b=1 HTTP/1.1\r\nHost: localhost\r\nX_Forwarded_For: 6.6.6.6\r\nX_Tenant: acme\r\n\r\n";
    assert_eq!(send_raw(proxy.address, request.as_bytes()).await, 200);
    let seen = new.last();
    assert_eq!(seen.target, "/new/a?b=1");
    assert_eq!(
        seen.header("x_forwarded_for"),
        None,
        "an impostor of X-Forwarded-For"
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x_tenant"), Some("acme"), "ordinary names pass");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pipelined_requests_are_both_answered_in_order() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("new").await;
    let proxy = two_routes(legacy.address, new.address, "").await;
    let answer = exchange_raw(
        proxy.address,
        b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\nGET /new/second HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let first = answer.find("\"target\":\"/first\"");
    let second = answer.find("\"target\":\"/new/second\"");
    let closed_early = answer.matches("HTTP/1.1 ").count() == 1
        && answer.to_ascii_lowercase().contains("connection: close");
    assert!(
        (first.is_some() && second.is_some() && first < second) || closed_early,
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_heads_get_their_own_status_not_a_bare_400() {
    let legacy = Backend::start("legacy").await;
    let proxy = two_routes(legacy.address, legacy.address, "").await;
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    assert_eq!(send_raw(proxy.address, long_uri.as_bytes()).await, 414);
    let mut many = String::from("GET /a HTTP/1.1\r\nHost: localhost\r\n");
    for n in 0..300 {
        many.push_str(&format!("X-H{n}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(send_raw(proxy.address, many.as_bytes()).await, 431);
    assert_eq!(proxy.send(ClientRequest::get("/a")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_web_page_cannot_flip_the_kill_switch_or_read_diffs_through_the_admin_api() {
    let legacy = Backend::start("legacy").await;
    let proxy = two_routes(legacy.address, legacy.address, "").await;
    let admin = |request: ClientRequest| support::send(proxy.admin, request);
    // A cross-site form post: no custom header, a foreign Origin.
    let form = ClientRequest::new("POST", "/kill-switch?state=on")
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded");
    assert_eq!(admin(form).await.unwrap().status, 403);
    // The same without an Origin (an old browser): still no custom header.
    let bare = ClientRequest::new("POST", "/kill-switch?state=on");
    assert_eq!(admin(bare).await.unwrap().status, 403);
    // DNS rebinding: the page's own name in Host, even with the header a script can add.
    for target in ["/kill-switch?state=on", "/diffs"] {
        let method = if target == "/diffs" { "GET" } else { "POST" };
        let rebound = ClientRequest::new(method, target)
            .header("host", "evil.example:9901")
            .header("x-strangler-admin", "1");
        assert_eq!(admin(rebound).await.unwrap().status, 403, "{target}");
    }
    assert_eq!(proxy.routes().await["kill_switch"], false);
    // The operator's curl: loopback Host, the header.
    let operator =
        ClientRequest::new("POST", "/kill-switch?state=on").header("x-strangler-admin", "1");
    assert_eq!(admin(operator).await.unwrap().status, 200);
    assert_eq!(proxy.routes().await["kill_switch"], true);
    // Probes and scrapes stay open whatever the Host.
    let probe = ClientRequest::get("/healthz").header("host", "pod.internal:9901");
    assert_eq!(admin(probe).await.unwrap().status, 200);
}

/// The `x-strangler-error` reasons the connection layer spells out itself, each with its status:
/// none since it answers through `response::ErrorResponse` with a [`Reason`], as the proxy does.
fn reasons_in_the_connection_layer() -> Vec<(String, String)> {
    // `("414 URI Too Long", "uri_too_long")`,
    // `raw_error_response("503 Service Unavailable", "too_many_connections", …)`.
    let pattern = regex::Regex::new(r#""(\d{3}) [A-Za-z ]+",\s*"([a-z_]+)""#).unwrap();
    let source = std::fs::read_to_string(support::repo_root().join("src/connection.rs")).unwrap();
    let code = source.split("#[cfg(test)]").next().unwrap();
    pattern
        .captures_iter(code)
        .map(|found| (found[1].to_owned(), found[2].to_owned()))
        .collect()
}

#[test]
fn every_reason_the_proxy_answers_with_is_in_the_security_docs_table_and_no_other() {
    // Every reason is a `Reason`; its status, where it has one of its own, is `Reason::status`.
    let reasons: Vec<(Option<String>, String)> = Reason::ALL
        .iter()
        .map(|reason| {
            (
                reason.status().map(|status| status.to_string()),
                reason.as_str().to_owned(),
            )
        })
        .collect();
    let names: Vec<&str> = reasons.iter().map(|(_, reason)| reason.as_str()).collect();
    // The connection layer spells no reason itself: every answer is a `Reason`.
    let connection = reasons_in_the_connection_layer();
    assert!(
        connection.is_empty(),
        "src/connection.rs spells reasons itself: {connection:?}; use `vocabulary::Reason`"
    );

    let doc = std::fs::read_to_string(support::repo_root().join("docs/security.md")).unwrap();
    // The table of every refusal and failure: from its header row to the first non-table line.
    let table: Vec<&str> = doc
        .lines()
        .skip_while(|line| !line.starts_with("| status | `x-strangler-error` |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .collect();
    assert!(!table.is_empty(), "docs/security.md has no reason table");
    for (status, reason) in &reasons {
        let row = table
            .iter()
            .find(|row| row.split('|').nth(2).map(str::trim) == Some(&format!("`{reason}`")))
            .unwrap_or_else(|| panic!("docs/security.md has no row for `{reason}`"));
        if let Some(status) = status {
            assert_eq!(
                row.split('|').nth(1).map(str::trim),
                Some(status.as_str()),
                "`{reason}` is answered with {status}: {row}"
            );
        }
    }
    for row in &table {
        let reason = row.split('|').nth(2).unwrap().trim().trim_matches('`');
        assert!(
            names.contains(&reason),
            "docs/security.md lists `{reason}`, which no source answers with"
        );
    }
}
