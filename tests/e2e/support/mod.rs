//! Test harness: real HTTP backends that record what they receive, the real `strangler` binary
//! started on a config written to a temp dir, and a client that sends exactly the headers a test
//! gives it. Everything binds to 127.0.0.1 on ephemeral ports; readiness is polled with deadlines.

#![allow(dead_code)] // each test binary uses its own subset

pub mod postgres;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// One request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Whether the whole body arrived (false: the sender aborted mid-body).
    pub complete: bool,
}

impl Recorded {
    /// All values of header `name` (lower-case), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).first().copied()
    }
}

pub type Responder = Arc<dyn Fn(&Recorded) -> Response<Full<Bytes>> + Send + Sync>;

/// A loopback HTTP/1.1 server that records every request and answers with `x-backend: <name>`.
pub struct Backend {
    pub name: String,
    pub address: SocketAddr,
    received: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let label = name.to_owned();
        Self::start_with(
            name,
            Arc::new(move |request: &Recorded| {
                Response::builder()
                    .header("content-type", "application/json")
                    .header("x-backend", label.as_str())
                    .body(Full::new(Bytes::from(format!(
                        "{{\"backend\":\"{label}\",\"target\":\"{}\"}}",
                        request.target
                    ))))
                    .unwrap()
            }),
        )
        .await
    }

    pub async fn start_with(name: &str, respond: Responder) -> Backend {
        Self::start_at(name, SocketAddr::from(([127, 0, 0, 1], 0)), respond).await
    }

    /// [`Self::start_with`] on a given address (another loopback address, a fixed port).
    pub async fn start_at(name: &str, address: SocketAddr, respond: Responder) -> Backend {
        let listener = TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                let respond = respond.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let log = log.clone();
                        let respond = respond.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            // `x-test-delay-ms: N` makes this backend answer N ms late (the
                            // request is recorded on arrival, before the delay).
                            let delay = parts
                                .headers
                                .get("x-test-delay-ms")
                                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                            let collected = body.collect().await.map(|b| b.to_bytes());
                            let complete = collected.is_ok();
                            let body = collected.unwrap_or_default();
                            let recorded = Recorded {
                                method: parts.method.to_string(),
                                target: parts.uri.to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(n, v)| {
                                        (
                                            n.as_str().to_owned(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect(),
                                body,
                                complete,
                            };
                            let response = respond(&recorded);
                            log.lock().unwrap().push(recorded);
                            if let Some(delay) = delay {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            name: name.to_owned(),
            address,
            received,
            task,
        }
    }

    /// A backend named `name` that answers every request 503.
    pub async fn busy(name: &'static str) -> Backend {
        Backend::start_with(
            name,
            Arc::new(move |_: &Recorded| {
                Response::builder()
                    .status(503)
                    .header("x-backend", name)
                    .body(Full::new(Bytes::from_static(b"busy")))
                    .unwrap()
            }),
        )
        .await
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.received.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .unwrap_or_else(|| panic!("backend {} received nothing", self.name))
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits (bounded by [`DEADLINE`]) until this backend has received `count` requests.
    pub async fn wait_for_requests(&self, count: usize) {
        let what = format!("{} receiving {count} requests", self.name);
        eventually(&what, || async move {
            match self.count() {
                received if received >= count => Ok(()),
                received => Err(format!("{received} received")),
            }
        })
        .await
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` every 10 ms until it returns `Ok`, and returns that value. `Err` says what
/// was seen instead; at [`DEADLINE`] the test fails naming `what` and the last thing seen.
/// The one polling loop of the suite: readiness is waited for, never slept for.
pub async fn eventually<T, E, Fut>(what: &str, mut check: impl FnMut() -> Fut) -> T
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                started.elapsed() < DEADLINE,
                "{what}: not within {DEADLINE:?}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port that was free a moment ago, for a server a test starts.
///
/// Picked below the kernel's ephemeral range (32768–60999 by default), where every outgoing
/// connection of the suite takes its source port: a port freed there can be taken by some
/// test's client before the proxy binds it (seen as a proxy exiting "address in use"). A
/// counter keeps this process's picks apart; its start is random, so parallel runs rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        fastrand::u32(0..SPAN),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An address nothing listens on (bound, then released).
pub fn dead_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_strangler")
}

/// Listen and admin addresses for one proxy.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Ports {
    pub fn reserve() -> Ports {
        let ports = Ports {
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
        };
        // A store left by an earlier run on the same port must not leak into this one.
        let store = ports.diff_store();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", store.display()));
        }
        ports
    }

    /// `config` with a `server` section for these ports prepended.
    pub fn with_server(&self, config: &str) -> String {
        self.with_server_settings(config, "")
    }

    /// [`Ports::with_server`] with more `server` settings: YAML lines indented two spaces.
    pub fn with_server_settings(&self, config: &str, settings: &str) -> String {
        format!(
            "server:\n  listen: {}\n  admin: {}\n  threads: 1\n  diff_store: {}\n{settings}{config}",
            self.listen,
            self.admin,
            self.diff_store().display()
        )
    }

    /// Where this proxy stores diffs: a file in the system temp dir named after its port.
    pub fn diff_store(&self) -> PathBuf {
        std::env::temp_dir().join(format!("strangler-test-diffs-{}.db", self.listen.port()))
    }
}

/// A running `strangler run` process. Killed on drop.
pub struct Proxy {
    pub address: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Proxy {
    /// Starts the proxy on `config`, which holds everything but the `server` section (the
    /// harness adds one with fresh ports), and waits until it serves.
    pub async fn start(config: &str) -> Proxy {
        Proxy::start_with_settings(config, "", &[], &[("RUST_LOG", "warn")]).await
    }

    /// [`Proxy::start`] with more `server` settings (YAML lines indented two spaces), extra
    /// command-line arguments and environment.
    pub async fn start_with_settings(
        config: &str,
        server_settings: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let ports = Ports::reserve();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, ports.with_server_settings(config, server_settings)).unwrap();
        Proxy::start_with(dir, &path, ports, args, env).await
    }

    /// Starts the proxy on a config file the test laid out itself in `dir` (with
    /// [`Ports::with_server`]), and waits until it serves.
    pub async fn start_on(dir: tempfile::TempDir, config: &Path, ports: Ports) -> Proxy {
        Proxy::start_with(dir, config, ports, &[], &[("RUST_LOG", "warn")]).await
    }

    /// [`Proxy::start_on`] with extra command-line arguments and environment.
    /// Starts the proxy in a mount namespace of its own where `hosts` is its `/etc/hosts`, so a
    /// test controls what backend names resolve to (and can change it while the proxy runs).
    pub async fn start_with_hosts(
        dir: tempfile::TempDir,
        config: &Path,
        ports: Ports,
        hosts: &Path,
    ) -> Proxy {
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/hosts && exec "$2" run -c "$3""#)
            .arg("sh")
            .arg(hosts)
            .arg(binary())
            .arg(config)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut proxy = Proxy {
            address: ports.listen,
            admin: ports.admin,
            dir,
            child,
        };
        proxy.wait_ready().await;
        proxy
    }

    pub async fn start_with(
        dir: tempfile::TempDir,
        config: &Path,
        ports: Ports,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proxy {
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(binary())
            .args(args)
            .args(["run", "-c"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut proxy = Proxy {
            address: ports.listen,
            admin: ports.admin,
            dir,
            child,
        };
        proxy.wait_ready().await;
        proxy
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin API's `GET /routes` document.
    pub async fn routes(&self) -> serde_json::Value {
        get(self.admin, "/routes").await.unwrap().json()
    }

    /// Polls `/metrics` until `sample` reaches at least `value`; its value then.
    pub async fn wait_for_metric(&self, sample: &str, value: f64) -> f64 {
        let what = format!("{sample} reaching {value}");
        eventually(&what, || async move {
            match self.metric(sample).await.unwrap_or(0.0) {
                current if current >= value => Ok(current),
                current => Err(current),
            }
        })
        .await
    }

    /// The value of metric sample `sample` (name and labels, as exposed), if present.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = get(self.admin, "/metrics").await.unwrap().text();
        text.lines().find_map(|line| {
            line.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "strangler exited with {status} before it was ready:\n{}",
                    self.stderr()
                );
            }
            let admin_ready = get(self.admin, "/readyz")
                .await
                .is_ok_and(|r| r.status == 200);
            if admin_ready && TcpStream::connect(self.address).await.is_ok() {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "strangler was not ready within {DEADLINE:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("routes.yaml")
    }

    /// Sends a request through the proxy.
    pub async fn send(&self, request: ClientRequest) -> ClientResponse {
        send(self.address, request).await.unwrap_or_else(|error| {
            panic!("request failed: {error}\nproxy stderr:\n{}", self.stderr())
        })
    }

    pub async fn get(&self, target: &str) -> ClientResponse {
        self.send(ClientRequest::get(target)).await
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request with exactly the headers given (plus `Host: localhost` unless one is given).
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl ClientRequest {
    pub fn new(method: &str, target: &str) -> Self {
        Self {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn get(target: &str) -> Self {
        Self::new("GET", target)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
}

#[derive(Debug)]
pub struct ClientResponse {
    pub status: u16,
    pub headers: HashMap<String, Vec<String>>,
    pub body: Bytes,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.text()))
    }
}

/// One request on a fresh connection, bounded by [`DEADLINE`].
pub async fn send(address: SocketAddr, request: ClientRequest) -> Result<ClientResponse, String> {
    tokio::time::timeout(DEADLINE, send_unbounded(address, request))
        .await
        .map_err(|_| format!("no response within {DEADLINE:?}"))?
}

async fn send_unbounded(
    address: SocketAddr,
    request: ClientRequest,
) -> Result<ClientResponse, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(request.method.as_str())
        .uri(request.target.as_str());
    if !request
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("host"))
    {
        builder = builder.header("host", "localhost");
    }
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let response = sender
        .send_request(
            builder
                .body(Full::new(request.body))
                .map_err(|e| e.to_string())?,
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for (name, value) in response.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(ClientResponse {
        status,
        headers,
        body,
    })
}

pub async fn get(address: SocketAddr, target: &str) -> Result<ClientResponse, String> {
    send(address, ClientRequest::get(target)).await
}

/// Runs `strangler` with `args` to completion (bounded), returning (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let mut child = Command::new(binary())
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("strangler {args:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A client that sends every request over one kept-alive connection.
pub struct KeepAliveClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl KeepAliveClient {
    pub async fn connect(address: SocketAddr) -> KeepAliveClient {
        let stream = TcpStream::connect(address).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        KeepAliveClient { sender }
    }

    /// GET `target`; returns (status, value of `header`), or an error for a failed exchange.
    pub async fn get(
        &mut self,
        target: &str,
        header: &str,
    ) -> Result<(u16, Option<String>), String> {
        let exchange = async {
            self.sender.ready().await.map_err(|e| e.to_string())?;
            let request = Request::get(target)
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let value = response
                .headers()
                .get(header)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok((status, value))
        };
        tokio::time::timeout(DEADLINE, exchange)
            .await
            .map_err(|_| format!("no response within {DEADLINE:?}"))?
    }
}

/// How a [`Misbehaving`] server treats each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Accepts and never answers, keeping the connection open.
    Blackhole,
    /// Accepts, then resets the connection.
    Reset,
    /// Answers with bytes that are not HTTP, then closes.
    Garbage,
    /// Announces a 100-byte body, sends 10 bytes, closes.
    CutShort,
    /// Reads the request, counts it, then resets the connection without answering.
    ResetAfterRequest,
    /// Announces a 100-byte body and sends it one byte every 100 ms.
    Trickle,
    /// Answers after 400 ms with headers and 10 of 100 body bytes, then holds the connection.
    LateStall,
}

/// A loopback server that accepts connections and then misbehaves.
pub struct Misbehaving {
    pub address: SocketAddr,
    /// Requests read (for `ResetAfterRequest`).
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Misbehaving {
    pub async fn start(kind: Misbehaviour) -> Misbehaving {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                match kind {
                    Misbehaviour::Blackhole => held.push(stream),
                    Misbehaviour::Reset => {
                        // Linger 0 makes the close a reset; it does not block on drop.
                        #[allow(deprecated)]
                        let _ = stream.set_linger(Some(Duration::ZERO));
                        drop(stream);
                    }
                    Misbehaviour::CutShort => {
                        tokio::spawn(async move {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let mut stream = stream;
                            let mut buffer = [0u8; 4096];
                            let _ = stream.read(&mut buffer).await;
                            let _ = stream
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
                                )
                                .await;
                        });
                    }
                    Misbehaviour::Trickle | Misbehaviour::LateStall => {
                        tokio::spawn(async move {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let mut stream = stream;
                            let mut buffer = [0u8; 4096];
                            let _ = stream.read(&mut buffer).await;
                            if kind == Misbehaviour::LateStall {
                                tokio::time::sleep(Duration::from_millis(400)).await;
                            }
                            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
                            if stream.write_all(head).await.is_err() {
                                return;
                            }
                            if kind == Misbehaviour::LateStall {
                                let _ = stream.write_all(b"0123456789").await;
                                // Hold the connection until the proxy gives up on it.
                                let _ = stream.read(&mut buffer).await;
                                return;
                            }
                            for _ in 0..100 {
                                if stream.write_all(b"x").await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        });
                    }
                    Misbehaviour::ResetAfterRequest => {
                        let counter = counter.clone();
                        tokio::spawn(async move {
                            use tokio::io::AsyncReadExt;
                            let mut stream = stream;
                            let mut buffer = [0u8; 65536];
                            let mut seen = Vec::new();
                            while let Ok(read) = stream.read(&mut buffer).await {
                                if read == 0 {
                                    return;
                                }
                                seen.extend_from_slice(&buffer[..read]);
                                if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                                    break;
                                }
                            }
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            #[allow(deprecated)]
                            let _ = stream.set_linger(Some(Duration::ZERO));
                        });
                    }
                    Misbehaviour::Garbage => {
                        tokio::spawn(async move {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let mut stream = stream;
                            let mut buffer = [0u8; 1024];
                            let _ = stream.read(&mut buffer).await;
                            let _ = stream
                                .write_all(b"\x00\x01garbage that is not HTTP\r\n\r\n")
                                .await;
                        });
                    }
                }
            }
        });
        Misbehaving {
            address,
            requests,
            task,
        }
    }
}

impl Drop for Misbehaving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address whose connects hang: a listener that never accepts, with a backlog of 0
/// and its one queued connection taken, so the kernel drops further SYNs (the accept queue is
/// full) and a connect to it ends only by its own timeout. A connect timeout, on loopback.
pub struct UnansweredConnect {
    pub address: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl UnansweredConnect {
    pub async fn start() -> UnansweredConnect {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let listener = socket.listen(0).unwrap();
        let address = listener.local_addr().unwrap();
        // Fill the accept queue until a connect no longer completes.
        let mut queued = Vec::new();
        loop {
            let attempt =
                tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(address)).await;
            match attempt {
                Ok(Ok(stream)) => queued.push(stream),
                Ok(Err(error)) => panic!("connect to the unaccepting listener failed: {error}"),
                Err(_) => break,
            }
            assert!(queued.len() < 16, "the accept queue never filled");
        }
        UnansweredConnect {
            address,
            _listener: listener,
            _queued: queued,
        }
    }
}

/// A raw chunked POST to `target`: `chunks` chunks of `chunk_size` bytes each, then the last
/// chunk; the connection closes after the answer.
pub fn chunked_post(target: &str, chunks: usize, chunk_size: usize) -> Vec<u8> {
    let mut request = format!(
        "POST {target} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..chunks {
        request.extend_from_slice(format!("{chunk_size:x}\r\n").as_bytes());
        request.extend(std::iter::repeat_n(b'y', chunk_size));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

/// Sends a raw HTTP/1.1 request (for framing a client library would not produce) and returns the
/// status code of the answer.
pub async fn send_raw(address: SocketAddr, request: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let read = stream.read(&mut buffer).await.unwrap();
            if read == 0 {
                break;
            }
            response.extend_from_slice(&buffer[..read]);
            if response.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&response);
        text.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("raw request timed out")
}

/// A loopback origin that answers every request with the same raw bytes (framing an HTTP
/// library would never produce) and records the raw request heads it read.
pub struct RawOrigin {
    pub address: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawOrigin {
    pub async fn start(response: &'static [u8]) -> RawOrigin {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let log = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buffer = [0u8; 8192];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => seen.extend_from_slice(&buffer[..read]),
                        }
                    }
                    log.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&seen).into_owned());
                    let _ = stream.write_all(response).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        RawOrigin {
            address,
            heads,
            task,
        }
    }

    /// The request heads received so far, as text.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes `request` raw and reads everything the proxy answers until it closes the connection
/// (or `DEADLINE` passes), as text.
pub async fn exchange_raw(address: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let read = async {
        let mut buffer = [0u8; 8192];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => response.extend_from_slice(&buffer[..read]),
            }
        }
    };
    let _ = tokio::time::timeout(DEADLINE, read).await;
    String::from_utf8_lossy(&response).into_owned()
}
