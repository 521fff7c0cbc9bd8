//! Stopping and upgrading under load: SIGTERM and `--upgrade` (socket hand-over) while 16
//! keep-alive clients send requests back to back, 20 times each, with zero lost requests.
//!
//! A client counts every request it writes and every response it reads. A request written whose
//! connection then resets or ends without a response is a loss; so is a write that fails on a
//! kept-alive connection (the proxy closed a connection the client had every right to reuse).
//! A response with `Connection: close` is the proxy's way of saying "come back on a new
//! connection": the client reconnects. After SIGTERM, a refused reconnection is the expected end
//! (the listener is closed); during an upgrade, nothing may ever be refused.
//!
//! Measured before `lifecycle.rs` (Pingora's own handling; 5 cycles each): SIGTERM lost 6 to 14
//! requests a cycle (56 in all, nearly all resets of idle keep-alive connections aborted
//! under a request on its way) and exited only after the whole drain_timeout; an upgrade lost
//! 8 to 16 a cycle (55 in all) and the old process lived 7 s (5 s fixed + the drain).
//! `STRANGLER_LIFECYCLE_BINARY=<older build> STRANGLER_LIFECYCLE_CYCLES=5` reproduces that.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use support::{Backend, DEADLINE, Proxy, ProxyBuilder};

const CLIENTS: usize = 16;
/// Stop or upgrade cycles per test (`STRANGLER_LIFECYCLE_CYCLES` overrides it, to measure).
fn cycles() -> usize {
    std::env::var("STRANGLER_LIFECYCLE_CYCLES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20)
}
/// `server.drain_timeout` in these tests; the old process must be gone within it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// What a process may need beyond the drain, as this test sees it: the runtimes' teardown (at
/// most 1 s), the exit, and a machine starved of CPU (on a 2-core box at load 17, a process that
/// logged its exit 190 ms after the new one was ready was seen gone by this test 2.9 s later).
/// The drain itself is checked exactly, from the process's own log ([`Process::drained`]).
const EXIT_SLACK: Duration = Duration::from_secs(3);

/// A proxy in front of `backend` that drains for [`DRAIN_TIMEOUT`]; this test starts and
/// signals its processes itself ([`Process`]), on the builder's file and ports.
fn config(backend: &Backend) -> ProxyBuilder {
    Proxy::with(format!(
        "upstreams:\n  app: {{ backends: [{}] }}\ndefault_upstream: app\n",
        backend.address
    ))
    .server(&format!("  drain_timeout: {}s\n", DRAIN_TIMEOUT.as_secs()))
}

/// [`config`] written to `name` in `dir`: the ports it listens on and the file.
fn written_config(backend: &Backend, dir: &Path, name: &str) -> (support::Ports, PathBuf) {
    let config = config(backend);
    let path = dir.join(name);
    std::fs::write(&path, config.rendered()).unwrap();
    (config.ports, path)
}

/// A `strangler run` process this test signals and waits for itself.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(config: &Path, upgrade: bool, log: PathBuf) -> Process {
        let stderr = std::fs::File::create(&log).unwrap();
        // `STRANGLER_LIFECYCLE_BINARY` runs another build (an older one, to compare).
        let binary = std::env::var("STRANGLER_LIFECYCLE_BINARY")
            .unwrap_or_else(|_| support::binary().to_owned());
        let mut command = Command::new(binary);
        command.args(["run", "-c"]).arg(config);
        if upgrade {
            command.arg("--upgrade");
        }
        let child = command
            .env(
                "RUST_LOG",
                std::env::var("STRANGLER_LIFECYCLE_LOG")
                    .unwrap_or_else(|_| "warn,strangler::lifecycle=info".into()),
            )
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Process { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Whether the process says it drained completely (every connection closed before the
    /// drain timeout, none cut).
    fn drained(&self) -> bool {
        let log = self.stderr();
        log.contains("drained: every connection closed") && !log.contains("drain timeout")
    }

    /// Polls until the process has exited; how long that took from `since`.
    async fn wait_for_exit(&mut self, since: Instant) -> Duration {
        let status = support::eventually("the process exiting after the signal", || {
            let exited = self.child.try_wait().unwrap();
            let log = self.stderr();
            async move { exited.ok_or(log) }
        })
        .await;
        assert!(status.success(), "exited with {status}:\n{}", self.stderr());
        since.elapsed()
    }

    /// Polls until this process (not another one on the same sockets) answers `/readyz` on
    /// `admin` and accepts on `listen`.
    async fn wait_ready(&mut self, admin: SocketAddr, listen: SocketAddr) {
        let pid = u64::from(self.pid());
        support::eventually("the process ready", || {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "exited with {status} before it was ready:\n{}",
                    self.stderr()
                );
            }
            let log = self.stderr();
            async move {
                // Builds from before the lifecycle sent no pid (STRANGLER_LIFECYCLE_BINARY):
                // any ready answer counts for them.
                if let Ok(response) = support::get(admin, "/readyz").await
                    && response.status == 200
                    && response.json()["pid"]
                        .as_u64()
                        .is_none_or(|answered| answered == pid)
                    && TcpStream::connect(listen).await.is_ok()
                {
                    Ok(())
                } else {
                    Err(log)
                }
            }
        })
        .await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    /// Requests written in full.
    sent: u64,
    /// Complete responses read.
    answered: u64,
    /// Responses that carried `Connection: close`.
    closes: u64,
    /// Connection attempts refused.
    refused: u64,
    /// Requests written and never answered, each with what the client saw.
    lost: Vec<String>,
    /// Writes that failed on a kept-alive connection.
    failed_writes: Vec<String>,
    /// Answers other than 200 (the proxy must not answer 502/503 because it is stopping).
    bad_status: Vec<u16>,
}

/// `CLIENTS` tasks sending GETs back to back, each over a kept-alive connection.
struct Load {
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// With `end_on_refusal`, a client stops once a connection attempt is refused (after
    /// SIGTERM); without, a refusal is recorded and the client stops too (it is a failure).
    fn start(address: SocketAddr) -> Load {
        Load::start_with(address, Connections::KeptAlive)
    }

    fn start_with(address: SocketAddr, connections: Connections) -> Load {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..CLIENTS)
            .map(|id| {
                tokio::spawn(client(
                    address,
                    id,
                    connections,
                    tally.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Load { tally, stop, tasks }
    }

    fn answered(&self) -> u64 {
        self.tally.lock().unwrap().answered
    }

    /// Polls until `count` more responses than `since` have been read.
    async fn wait_for_answers(&self, since: u64, count: u64) {
        let what = format!("{count} answers");
        support::eventually(&what, || async move {
            if self.answered() >= since + count {
                Ok(())
            } else {
                Err(format!(
                    "{} answers:\n{:?}",
                    self.answered() - since,
                    self.tally.lock().unwrap()
                ))
            }
        })
        .await;
    }

    /// Waits (bounded) for every client to end by itself: after SIGTERM, once refused.
    async fn finish(self) -> Tally {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        for task in self.tasks {
            tokio::time::timeout_at(deadline, task)
                .await
                .expect("every client ends once the proxy refuses it")
                .unwrap();
        }
        Arc::try_unwrap(self.tally).unwrap().into_inner().unwrap()
    }

    /// Stops the clients after their current request.
    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.finish().await
    }
}

/// How a client uses connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connections {
    /// One connection for as long as the proxy keeps it.
    KeptAlive,
    /// A new connection for every request (`Connection: close`): many are being opened at
    /// any moment, some waiting in the listener's accept queue.
    OnePerRequest,
}

async fn client(
    address: SocketAddr,
    id: usize,
    connections: Connections,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
) {
    let mut connection: Option<BufReader<TcpStream>> = None;
    let mut number = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let reused = connection.is_some();
        let mut stream = match connection.take() {
            Some(stream) => stream,
            None => match TcpStream::connect(address).await {
                Ok(stream) => BufReader::new(stream),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tally.lock().unwrap().refused += 1;
                    return;
                }
                Err(error) => panic!("client {id}: connect: {error}"),
            },
        };
        number += 1;
        let close = match connections {
            Connections::KeptAlive => "",
            Connections::OnePerRequest => "connection: close\r\n",
        };
        let request = format!("GET /load/{id}/{number} HTTP/1.1\r\nhost: localhost\r\n{close}\r\n");
        if let Err(error) = stream.get_mut().write_all(request.as_bytes()).await {
            let mut tally = tally.lock().unwrap();
            if reused {
                tally.failed_writes.push(format!("client {id}: {error}"));
            }
            continue;
        }
        tally.lock().unwrap().sent += 1;
        match tokio::time::timeout(DEADLINE, read_response(&mut stream)).await {
            Ok(Ok((status, close))) => {
                let mut tally = tally.lock().unwrap();
                tally.answered += 1;
                if status != 200 {
                    tally.bad_status.push(status);
                }
                if close {
                    tally.closes += 1;
                } else {
                    connection = Some(stream);
                }
            }
            Ok(Err(error)) => tally
                .lock()
                .unwrap()
                .lost
                .push(format!("client {id} request {number}: {error}")),
            Err(_) => tally
                .lock()
                .unwrap()
                .lost
                .push(format!("client {id} request {number}: no answer")),
        }
    }
}

/// Reads one response (Content-Length framed): its status and whether it closes the connection.
async fn read_response(stream: &mut BufReader<TcpStream>) -> std::io::Result<(u16, bool)> {
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without a response",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {line:?}"));
    let mut length = None;
    let mut close = false;
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed inside the response head",
            ));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').expect("a header line");
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().expect("a length"));
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let mut body = vec![0; length.expect("responses here carry Content-Length")];
    stream.read_exact(&mut body).await?;
    Ok((status, close))
}

fn report(tally: &Tally) -> String {
    format!(
        "sent {}, answered {}, with Connection: close {}, refused {}, lost {} {:?}, failed writes {} {:?}, non-200 {:?}",
        tally.sent,
        tally.answered,
        tally.closes,
        tally.refused,
        tally.lost.len(),
        tally.lost.iter().take(5).collect::<Vec<_>>(),
        tally.failed_writes.len(),
        tally.failed_writes.iter().take(5).collect::<Vec<_>>(),
        tally.bad_status
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_loses_no_request_in_twenty_cycles() {
    let backend = Backend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let mut lost = 0;
    let mut failed_writes = 0;
    let mut slowest = Duration::ZERO;
    for cycle in 0..cycles() {
        let (ports, path) = written_config(&backend, dir.path(), &format!("routes-{cycle}.yaml"));
        let mut process = Process::spawn(&path, false, dir.path().join(format!("{cycle}.log")));
        process.wait_ready(ports.admin, ports.listen).await;

        let load = Load::start(ports.listen);
        load.wait_for_answers(0, 8 * CLIENTS as u64).await;
        let signalled = Instant::now();
        process.signal("TERM");
        let exit = process.wait_for_exit(signalled).await;
        let tally = load.finish().await;
        eprintln!("cycle {cycle}: exit after {exit:?}; {}", report(&tally));
        assert!(
            process.drained(),
            "cycle {cycle}: not drained:\n{}",
            process.stderr()
        );
        lost += tally.lost.len();
        failed_writes += tally.failed_writes.len();
        slowest = slowest.max(exit);
        assert!(
            tally.bad_status.is_empty(),
            "cycle {cycle}: {}",
            report(&tally)
        );
        assert_eq!(tally.sent, tally.answered + tally.lost.len() as u64);
    }
    eprintln!(
        "SIGTERM x{}: {lost} lost, {failed_writes} failed writes, slowest exit {slowest:?}",
        cycles()
    );
    assert_eq!((lost, failed_writes), (0, 0), "requests lost to SIGTERM");
    assert!(
        slowest <= DRAIN_TIMEOUT + EXIT_SLACK,
        "the slowest exit took {slowest:?}, past the drain limit of {DRAIN_TIMEOUT:?}"
    );
}

/// Connections arriving at the moment of the stop are served, not reset by the listener's
/// close: those completed but not yet accepted, and those whose handshake is under way (the
/// client has its SYN-ACK and writes its request at once; the proxy's side completes a moment
/// later, much later on a starved CPU).
///
/// Beside the whole suite on 2 cores the accept loop is starved: the stop waits for it as long
/// as it keeps taking the queued connections (`lifecycle/closing.rs`), where a fixed 1 s bound
/// used to reset a few. A socket filter that dropped every packet, not only new SYNs, left the
/// handshakes under way to be reset: 0 to 2 lost per 5 stops beside the suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_connections_arriving_loses_no_request() {
    let backend = Backend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let mut lost = Vec::new();
    // Fewer cycles: a client whose handshake is held off at the stop retries it a second later.
    for cycle in 0..cycles().div_ceil(4) {
        let (ports, path) = written_config(&backend, dir.path(), &format!("routes-{cycle}.yaml"));
        let mut process = Process::spawn(&path, false, dir.path().join(format!("{cycle}.log")));
        process.wait_ready(ports.admin, ports.listen).await;

        let load = Load::start_with(ports.listen, Connections::OnePerRequest);
        load.wait_for_answers(0, 8 * CLIENTS as u64).await;
        let signalled = Instant::now();
        process.signal("TERM");
        let exit = process.wait_for_exit(signalled).await;
        let tally = load.finish().await;
        eprintln!("arriving {cycle}: exit after {exit:?}; {}", report(&tally));
        if !tally.lost.is_empty() || !tally.failed_writes.is_empty() {
            eprintln!("arriving {cycle}: the proxy's log:\n{}", process.stderr());
        }
        assert!(
            process.drained(),
            "cycle {cycle}: not drained:\n{}",
            process.stderr()
        );
        assert!(
            tally.bad_status.is_empty(),
            "cycle {cycle}: {}",
            report(&tally)
        );
        assert!(
            exit <= DRAIN_TIMEOUT + EXIT_SLACK,
            "cycle {cycle}: exit after {exit:?}"
        );
        lost.extend(tally.lost);
        lost.extend(tally.failed_writes);
    }
    assert!(lost.is_empty(), "requests lost to SIGTERM: {lost:?}");
}

/// A connection accepted just before the stop whose request comes late (a client starved of
/// CPU, a slow network) is served: a connection that has carried no request is not idle, and a
/// client whose fresh connection closes under its first request loses it (clients retry only on
/// a reused connection). The drain closed it after 500 ms of quiet.
#[tokio::test]
async fn a_connection_accepted_before_the_stop_whose_request_comes_late_is_served() {
    let backend = Backend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let (ports, path) = written_config(&backend, dir.path(), "routes.yaml");
    let mut process = Process::spawn(&path, false, dir.path().join("0.log"));
    process.wait_ready(ports.admin, ports.listen).await;

    let mut late = BufReader::new(TcpStream::connect(ports.listen).await.unwrap());
    let signalled = Instant::now();
    process.signal("TERM");
    support::eventually("the drain", || async {
        match support::get(ports.admin, "/readyz").await {
            Ok(response) if response.status == 503 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // The client's lateness is the case itself, not a wait for readiness: past the quiet
    // period after which the drain closes an idle kept-alive connection (500 ms).
    tokio::time::sleep(Duration::from_millis(800)).await;
    late.get_mut()
        .write_all(b"GET /late HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (status, close) = read_response(&mut late)
        .await
        .expect("the late request is answered");
    assert_eq!((status, close), (200, true));
    let exit = process.wait_for_exit(signalled).await;
    assert!(process.drained(), "not drained:\n{}", process.stderr());
    assert!(exit <= DRAIN_TIMEOUT + EXIT_SLACK, "exit after {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrades_under_load_lose_no_request_in_twenty_cycles() {
    let backend = Backend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let (ports, path) = written_config(&backend, dir.path(), "routes.yaml");
    let upgrade_sock = format!("/tmp/strangler-{}-upgrade.sock", ports.listen.port());

    let mut current = Process::spawn(&path, false, dir.path().join("0.log"));
    current.wait_ready(ports.admin, ports.listen).await;
    let load = Load::start(ports.listen);
    let mut slowest = Duration::ZERO;
    let mut slowest_handover = Duration::ZERO;
    let mut handovers = Vec::new();
    for cycle in 1..=cycles() {
        let before = load.answered();
        load.wait_for_answers(before, 8 * CLIENTS as u64).await;

        let _ = std::fs::remove_file(&upgrade_sock);
        let mut next = Process::spawn(&path, true, dir.path().join(format!("{cycle}.log")));
        // The new process waits for the sockets on the hand-over socket: signal the old one
        // once it is there.
        support::eventually("the hand-over socket", || {
            let log = next.stderr();
            let socket = Path::new(&upgrade_sock);
            async move { if socket.exists() { Ok(()) } else { Err(log) } }
        })
        .await;
        let signalled = Instant::now();
        current.signal("QUIT");
        next.wait_ready(ports.admin, ports.listen).await;
        // The hand-over (SIGQUIT until the new process answers) is Pingora's transfer and the
        // new process's start; the drain limit counts from there, when the old one stops.
        let handed_over = signalled.elapsed();
        let drained = current.wait_for_exit(Instant::now()).await;
        assert!(
            current.drained(),
            "upgrade {cycle}: not drained:\n{}",
            current.stderr()
        );
        eprintln!(
            "upgrade {cycle}: hand-over {handed_over:?}, old exit {drained:?} later; so far {}",
            report(&load.tally.lock().unwrap())
        );
        slowest_handover = slowest_handover.max(handed_over);
        handovers.push(handed_over);
        slowest = slowest.max(drained);
        current = next;
    }
    let before = load.answered();
    load.wait_for_answers(before, 8 * CLIENTS as u64).await;
    let tally = load.stop().await;
    eprintln!(
        "--upgrade x{}: {}, slowest hand-over {slowest_handover:?}, slowest old exit after it {slowest:?}",
        cycles(),
        report(&tally)
    );
    assert!(
        tally.lost.is_empty() && tally.failed_writes.is_empty() && tally.refused == 0,
        "requests lost to upgrades: {}",
        report(&tally)
    );
    assert!(tally.bad_status.is_empty(), "{}", report(&tally));
    assert!(
        slowest <= DRAIN_TIMEOUT + EXIT_SLACK,
        "the slowest old process took {slowest:?} to exit, past the drain limit of {DRAIN_TIMEOUT:?}"
    );
    // Pingora's receiver looked for the sockets once a second: every hand-over took a second
    // or more, in whole seconds. Ours takes a few dozen milliseconds (the median, as a machine
    // starved of CPU can stretch any one of them).
    handovers.sort();
    let median = handovers[handovers.len() / 2];
    assert!(
        median < Duration::from_secs(1),
        "the median hand-over took {median:?}"
    );
}
