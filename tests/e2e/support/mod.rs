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
pub async fn eventually<T, E, Fut>(what: &str, check: impl FnMut() -> Fut) -> T
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    eventually_within(what, DEADLINE, check).await
}

/// [`eventually`] with a bound of its own, for a wait that a documented delay of the proxy's
/// makes longer than [`DEADLINE`] (a reconnect backoff, say).
pub async fn eventually_within<T, E, Fut>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Fut,
) -> T
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                started.elapsed() < limit,
                "{what}: not within {limit:?}; last seen: {seen}"
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

    /// Where this proxy stores diffs: a file in the system temp dir named after its port.
    pub fn diff_store(&self) -> PathBuf {
        std::env::temp_dir().join(format!("strangler-test-diffs-{}.db", self.listen.port()))
    }
}

/// How a test starts a proxy: `Proxy::with(config)`, then what this test needs beyond the
/// defaults, then [`ProxyBuilder::start`]. `config` holds everything but the `server` section;
/// the builder writes that (fresh loopback ports, one thread, a diff store of its own) into a
/// temp dir, starts `strangler run` on the file and waits until it serves.
#[must_use = "a proxy starts only with .start()"]
pub struct ProxyBuilder {
    /// The ports the proxy will listen on (reserved when the builder is made, so a test can
    /// write them into files before the start).
    pub ports: Ports,
    config: String,
    server: String,
    listeners: Option<String>,
    threads: usize,
    diff_store: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    hosts: Option<PathBuf>,
    dir: Option<tempfile::TempDir>,
    file: Option<PathBuf>,
}

impl ProxyBuilder {
    /// More `server` settings: YAML lines indented two spaces (`"  drain_timeout: 2s\n"`).
    pub fn server(mut self, settings: &str) -> Self {
        self.server.push_str(settings);
        self
    }

    /// The `listen` setting's YAML value in place of the plain listener on [`Ports::listen`]
    /// (a list of listeners, indented for the `server` section); `ports.listen` should be
    /// among them, as readiness is checked there.
    pub fn listeners(mut self, yaml: &str) -> Self {
        self.listeners = Some(yaml.to_owned());
        self
    }

    /// `server.threads` (1 unless set).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// `server.diff_store` in place of the harness's store (see [`Ports::diff_store`]).
    pub fn diff_store(mut self, store: &str) -> Self {
        self.diff_store = Some(PathBuf::from(store));
        self
    }

    /// A command-line argument before `run`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// An environment variable for the process (`RUST_LOG` is `warn` unless set).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Runs the proxy in a mount namespace of its own where `hosts` is its `/etc/hosts`, so a
    /// test controls what backend names resolve to (and can change it while the proxy runs).
    pub fn hosts(mut self, hosts: &Path) -> Self {
        self.hosts = Some(hosts.to_owned());
        self
    }

    /// The proxy's directory (its config, its log) is `dir`, where the test keeps files the
    /// config refers to; a fresh temp dir otherwise.
    pub fn in_dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Starts on `file`, which the test has laid out itself (with [`Self::rendered`]) instead
    /// of the builder writing `routes.yaml` into the proxy's directory.
    pub fn on_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_owned());
        self
    }

    /// The `server` section this proxy runs with, ending in a newline.
    fn server_section(&self) -> String {
        let listen = match &self.listeners {
            Some(yaml) => format!("\n{}", yaml.trim_end()),
            None => format!(" {}", self.ports.listen),
        };
        let store = self.store();
        format!(
            "server:\n  listen:{listen}\n  admin: {}\n  threads: {}\n  diff_store: {}\n{}",
            self.ports.admin,
            self.threads,
            store.display(),
            self.server
        )
    }

    /// The diff store this proxy will write.
    pub fn store(&self) -> PathBuf {
        match &self.diff_store {
            Some(store) => store.clone(),
            None => self.ports.diff_store(),
        }
    }

    /// The whole config file this proxy starts on.
    pub fn rendered(&self) -> String {
        format!("{}{}", self.server_section(), self.config)
    }

    /// Writes the config, starts `strangler run` on it and waits until it serves.
    pub async fn start(mut self) -> Proxy {
        let server = self.server_section();
        let dir = match self.dir.take() {
            Some(dir) => dir,
            None => tempfile::tempdir().unwrap(),
        };
        let file = match self.file.take() {
            Some(file) => file,
            None => {
                let file = dir.path().join("routes.yaml");
                std::fs::write(&file, format!("{server}{}", self.config)).unwrap();
                file
            }
        };
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut command = match &self.hosts {
            Some(hosts) => {
                let mut command = Command::new("unshare");
                command
                    .args(["--mount", "sh", "-c"])
                    .arg(r#"hosts="$1"; shift; mount --bind "$hosts" /etc/hosts && exec "$@""#)
                    .arg("sh")
                    .arg(hosts)
                    .arg(binary());
                command
            }
            None => Command::new(binary()),
        };
        if !self.env.iter().any(|(name, _)| name == "RUST_LOG") {
            command.env("RUST_LOG", "warn");
        }
        let child = command
            .args(&self.args)
            .args(["run", "-c"])
            .arg(&file)
            .envs(self.env.iter().map(|(n, v)| (n, v)))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut proxy = Proxy {
            address: self.ports.listen,
            admin: self.ports.admin,
            ports: self.ports,
            store: self.store(),
            server,
            file,
            dir,
            child,
        };
        proxy.wait_ready().await;
        proxy
    }
}

/// A running `strangler run` process. Killed on drop.
pub struct Proxy {
    pub address: SocketAddr,
    pub admin: SocketAddr,
    pub ports: Ports,
    pub dir: tempfile::TempDir,
    /// The `server` section it started with, for [`Proxy::rewrite`].
    server: String,
    store: PathBuf,
    file: PathBuf,
    child: Child,
}

impl Proxy {
    /// A proxy on `config`, everything but the `server` section: see [`ProxyBuilder`].
    pub fn with(config: impl Into<String>) -> ProxyBuilder {
        ProxyBuilder {
            ports: Ports::reserve(),
            config: config.into(),
            server: String::new(),
            listeners: None,
            threads: 1,
            diff_store: None,
            args: Vec::new(),
            env: Vec::new(),
            hosts: None,
            dir: None,
            file: None,
        }
    }

    /// `Proxy::with(config).start()`: the defaults.
    pub async fn start(config: &str) -> Proxy {
        Proxy::with(config).start().await
    }

    /// Replaces the config file with `config` under the same `server` section: written beside
    /// and renamed over, as editors do, so the config watch never reads half a file.
    pub fn rewrite(&self, config: &str) {
        self.replace_config(&self.full_config(config));
    }

    /// `config` under the `server` section this proxy started with: a whole config file.
    pub fn full_config(&self, config: &str) -> String {
        format!("{}{config}", self.server)
    }

    /// Replaces the whole config file with `content` (written beside, renamed over).
    pub fn replace_config(&self, content: &str) {
        let temporary = self.file.with_extension("next");
        std::fs::write(&temporary, content).unwrap();
        std::fs::rename(&temporary, &self.file).unwrap();
    }

    /// Where this proxy stores diffs (`server.diff_store`).
    pub fn diff_store(&self) -> PathBuf {
        self.store.clone()
    }

    /// `POST /reload` on the admin API.
    pub async fn reload(&self) -> ClientResponse {
        self.admin_post("/reload").await
    }

    /// `POST target` on the admin API, as an operator's curl sends it.
    pub async fn admin_post(&self, target: &str) -> ClientResponse {
        send(
            self.admin,
            ClientRequest::new("POST", target).header("x-strangler-admin", "1"),
        )
        .await
        .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin API's `GET /routes` document.
    pub async fn routes(&self) -> serde_json::Value {
        get(self.admin, "/routes").await.unwrap().json()
    }

    /// Polls `/routes` until config generation `generation` serves; the document then.
    pub async fn wait_for_generation(&self, generation: u64) -> serde_json::Value {
        let what = format!("generation {generation} serving");
        eventually(&what, || async move {
            let routes = self.routes().await;
            if routes["generation"] == generation {
                Ok(routes)
            } else {
                Err(format!(
                    "generation {}, last reload {}",
                    routes["generation"], routes["last_reload"]
                ))
            }
        })
        .await
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
        let (admin, address) = (self.admin, self.address);
        eventually("strangler ready", || {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "strangler exited with {status} before it was ready:\n{}",
                    self.stderr()
                );
            }
            let log = self.stderr();
            async move {
                let admin_ready = get(admin, "/readyz").await.is_ok_and(|r| r.status == 200);
                if admin_ready && TcpStream::connect(address).await.is_ok() {
                    Ok(())
                } else {
                    Err(format!("not ready yet; stderr:\n{log}"))
                }
            }
        })
        .await
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn config_path(&self) -> PathBuf {
        self.file.clone()
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
    run_cli_with_stdin(args, cwd, None)
}

/// [`run_cli`] with `input` on the process's stdin (none: stdin is empty). Output is read while
/// the process runs, so a large output cannot fill a pipe and stall it.
pub fn run_cli_with_stdin(args: &[&str], cwd: &Path, input: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(binary())
        .args(args)
        .current_dir(cwd)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let writer = child.stdin.take().map(|mut stdin| {
        let input = input.unwrap_or_default().to_owned();
        std::thread::spawn(move || stdin.write_all(input.as_bytes()))
    });
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done.send(());
        output
    });
    if finished.recv_timeout(DEADLINE).is_err() {
        // The child is ours alone: end it by its id.
        let _ = Command::new("kill").arg(pid.to_string()).status();
        panic!("strangler {args:?} did not finish within {DEADLINE:?}");
    }
    if let Some(writer) = writer {
        writer.join().unwrap().unwrap();
    }
    let output = waiter.join().unwrap().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `strangler report --db store args...`: exit code and stdout; any exit but 0 (pass) and 1
/// (a gate failed) fails the test.
pub fn report(store: &Path, args: &[&str]) -> (i32, String) {
    let store = store.display().to_string();
    let mut all = vec!["report", "--db", store.as_str()];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = run_cli(&all, Path::new("/tmp"));
    assert!(code == 0 || code == 1, "report failed ({code}): {stderr}");
    (code, stdout)
}

/// Polls the JSON report on `store` (narrowed by `args`, e.g. `["--route", "orders"]`) until
/// the exchanges it counts, in all groups, number at least `samples`; the report then.
pub async fn wait_for_samples(store: &Path, args: &[&str], samples: u64) -> serde_json::Value {
    let what = format!("{samples} stored samples ({args:?}) in {}", store.display());
    eventually(&what, || async move {
        if !store.exists() {
            return Err("no store yet".to_owned());
        }
        let mut all = vec!["--format", "json", "--min-samples", "0"];
        all.extend_from_slice(args);
        let (_, json) = report(store, &all);
        let document: serde_json::Value = serde_json::from_str(&json).unwrap();
        let stored: u64 = document["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|group| group["samples"].as_u64().unwrap())
            .sum();
        if stored >= samples {
            Ok(document)
        } else {
            Err(format!("{stored} stored"))
        }
    })
    .await
}

/// One compared exchange as the store keeps it, for tests that fill a store through the
/// library: `GET /orders/1` on route `orders`, judged `verdict` now, legacy against orders-v2 at
/// stage shadow, generation 1 of config `sha`. A test changes what it is about with struct
/// update syntax.
pub fn stored_exchange(verdict: strangler::vocabulary::Verdict) -> strangler::record::DiffRecord {
    strangler::record::DiffRecord {
        at_ms: strangler::store::now_ms(),
        route: "orders".into(),
        method: "GET".into(),
        path: "/orders/1".into(),
        query: None,
        request_id: "r".into(),
        primary_status: Some(200),
        shadow_status: Some(200),
        verdict,
        differences: Vec::new(),
        noise: Vec::new(),
        primary_sample: None,
        shadow_sample: None,
        primary_upstream: Some("legacy".into()),
        candidate_upstream: Some("orders-v2".into()),
        stage: Some("shadow".into()),
        generation: Some(1),
        config_sha256: Some("sha".into()),
    }
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
