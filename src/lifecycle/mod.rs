//! The process's lifecycle: running → (handing over) → draining → exit.
//!
//! What this module owns:
//! - the stop and upgrade signals: SIGTERM drains and exits, SIGQUIT hands the listening
//!   sockets to a new process (started with `--upgrade`) and then drains, SIGINT exits at once
//!   (SIGHUP is the reload's, see `reload.rs`);
//! - when the listeners stop accepting: on SIGTERM first of all, on an upgrade only once the new
//!   process answers `/readyz` with its own pid (until then both processes accept on the shared
//!   sockets, so no connection attempt is refused or reset);
//! - the drain: from its start every response says `Connection: close`, kept-alive connections
//!   that stay quiet after a request are closed (`connection.rs` does it, on this module's cue),
//!   requests in flight finish, and the process exits as soon as the last client connection is
//!   gone, or at `server.drain_timeout` at the latest.
//!
//! On SIGTERM the proxy listener is closed only once no connection is on its way to it: new
//! handshakes are held off and those under way, and the accept queue, are waited for
//! (`closing.rs`).
//!
//! Pingora's own handling is replaced, not wrapped, because it loses requests: on SIGTERM it
//! aborts idle keep-alive connections at once (a request arriving on one meets a closed socket),
//! then sleeps out the whole grace period even with nothing in flight; on SIGQUIT it keeps both
//! processes accepting for a fixed 5 s whether or not the new one is up, then does the same.
//! Here [`Signals`] is Pingora's `shutdown_signal` and returns to Pingora only once the drain is
//! over; Pingora then just tears the runtimes down.
//!
//! The new process's side of an upgrade is here too ([`receive_listeners`]): Pingora's receiver
//! looks for the old process only once a second.
//!
//! What it does not own: serving or closing connections (`connection.rs`), the sending side of
//! the sockets' transfer (Pingora's `Fds::send_to_sock`, whose wire format the receiver reads).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::{ListenFds, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::Service as PingoraService;
use pingora_core::services::ServiceReadyNotifier;
use pingora_core::services::ServiceWithDependents;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Notify, watch};

mod closing;

/// How long the old process waits for the new one, from SIGQUIT until the new process's
/// `/readyz` answers (the new process loads its config before it takes the sockets); past it,
/// the upgrade is abandoned and the old process keeps serving. Also how long a new process
/// waits for the sockets before it gives up.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stop waits for the accept loop to take one more of the connections on their way
/// (handshakes under way and connections queued) before it gives up on the rest: the wait as a
/// whole scales with the queues (it goes on while they shrink, up to the drain's deadline), and
/// only a loop that takes nothing for this long is deemed stuck (or a client gone mid-handshake
/// is given up on). A fixed bound on the whole wait lost queued connections whenever a
/// starved CPU (2 cores beside a test suite) slowed the loop down rather than stopped it.
const ACCEPT_QUEUE_STALL: Duration = Duration::from_secs(1);
/// How often the old process asks `/readyz` during a hand-over.
const HANDOVER_POLL: Duration = Duration::from_millis(20);

/// Where the process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// SIGQUIT: the sockets are offered to a new process; still accepting and serving.
    HandingOver,
    /// No longer accepting; connections are being closed as their requests finish.
    Draining,
}

/// Which listener a service accepts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Client traffic.
    Proxy,
    /// The admin API.
    Admin,
}

/// Why the process drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// SIGTERM: the process stops; its proxy listener closes for good.
    Stop,
    /// The sockets were handed over: they live on in the new process, admin included.
    HandedOver,
}

/// A listener's accept loop: told to stop, and telling when it has.
struct AcceptLoop {
    stop: watch::Sender<bool>,
    stopped: watch::Sender<bool>,
}

impl AcceptLoop {
    fn new() -> Self {
        Self {
            stop: watch::Sender::new(false),
            stopped: watch::Sender::new(false),
        }
    }
}

/// What the lifecycle needs to know about the process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `server.drain_timeout`: the longest a drain may take.
    pub drain_timeout: Duration,
    /// Where a new process waits for the listening sockets (Pingora's `upgrade_sock`).
    pub upgrade_sock: String,
    /// The admin listener, where the new process's `/readyz` is asked during a hand-over.
    pub admin: SocketAddr,
    /// The proxy listeners (each address is its key in Pingora's socket table).
    pub listen: Vec<SocketAddr>,
}

/// The process's lifecycle, shared by the signal handler, the listeners and every connection.
pub struct Lifecycle {
    settings: Settings,
    phase: watch::Sender<Phase>,
    /// True from the drain's start: connections answer with `Connection: close` and close when
    /// quiet. Handed to Pingora's HTTP code as its shutdown watch.
    draining: watch::Sender<bool>,
    proxy: AcceptLoop,
    admin: AcceptLoop,
    /// Client connections open now, and a wake-up each time one closes.
    connections: AtomicUsize,
    closed: Notify,
    /// The listening sockets Pingora bound or inherited, to hand over on SIGQUIT.
    fds: Mutex<Option<ListenFds>>,
    /// Sockets received from the old process ([`receive_listeners`]), until the first listening
    /// service puts them in Pingora's table.
    inherited: Mutex<Option<Vec<(String, i32)>>>,
}

impl Lifecycle {
    pub fn new(settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            phase: watch::Sender::new(Phase::Running),
            draining: watch::Sender::new(false),
            proxy: AcceptLoop::new(),
            admin: AcceptLoop::new(),
            connections: AtomicUsize::new(0),
            closed: Notify::new(),
            fds: Mutex::new(None),
            inherited: Mutex::new(None),
        })
    }

    /// Keeps the sockets received from the old process for the listeners to take; those on an
    /// address this process does not listen on (`expected`) are closed, or they would keep
    /// accepting connections nobody serves.
    pub fn inherit(&self, sockets: Vec<(String, i32)>, expected: &[String]) {
        let (kept, unclaimed): (Vec<_>, Vec<_>) = sockets
            .into_iter()
            .partition(|(address, _)| expected.contains(address));
        for (address, descriptor) in unclaimed {
            tracing::warn!(
                address,
                "upgrade: the old process listened on an address this config does not: closed"
            );
            // SAFETY: received from the old process, owned by nothing else here.
            drop(unsafe {
                <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(descriptor)
            });
        }
        *self.inherited.lock().unwrap_or_else(|e| e.into_inner()) = Some(kept);
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Resolves to true once the drain has started (a watch, for connections to select on).
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Counts a client connection open until the guard is dropped.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard {
            lifecycle: self.clone(),
        }
    }

    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Pingora's shutdown-signal hook: hand it to `RunArgs::shutdown_signal`.
    pub fn signals(self: &Arc<Self>) -> Signals {
        Signals {
            lifecycle: self.clone(),
        }
    }

    /// Wraps a listening service so that this lifecycle decides when it stops accepting.
    pub fn listening<S>(self: &Arc<Self>, listener: Listener, service: S) -> Listening<S> {
        Listening {
            inner: service,
            listener,
            lifecycle: self.clone(),
        }
    }

    fn accept_loop(&self, listener: Listener) -> &AcceptLoop {
        match listener {
            Listener::Proxy => &self.proxy,
            Listener::Admin => &self.admin,
        }
    }

    /// Stops `listeners` accepting and waits (bounded) until their accept loops have ended and
    /// dropped their sockets: only then may the drain tell clients to reconnect, or a client
    /// told so could land in a backlog about to be closed, and be reset.
    async fn stop_accepting(&self, listeners: &[Listener], deadline: tokio::time::Instant) {
        for &listener in listeners {
            self.accept_loop(listener).stop.send_replace(true);
        }
        for &listener in listeners {
            let mut stopped = self.accept_loop(listener).stopped.subscribe();
            if tokio::time::timeout_at(deadline, stopped.wait_for(|stopped| *stopped))
                .await
                .is_err()
            {
                tracing::warn!(?listener, "a listener did not stop accepting in time");
            }
        }
    }

    /// Stops accepting client connections, then drains them; returns once none is left, or at
    /// the drain deadline (the connections still open then are cut by the runtime's teardown).
    async fn drain(&self, reason: Reason) {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
        let listeners: &[Listener] = match reason {
            Reason::Stop => {
                self.empty_queues(deadline).await;
                // The admin listener stays up while draining: `/readyz` says so, metrics stay
                // readable.
                &[Listener::Proxy]
            }
            // The admin socket is the new process's now too: stop answering on it, or
            // readiness probes would meet this draining process.
            Reason::HandedOver => &[Listener::Proxy, Listener::Admin],
        };
        self.stop_accepting(listeners, deadline).await;
        self.phase.send_replace(Phase::Draining);
        self.draining.send_replace(true);
        let open = self.open_connections();
        tracing::info!(
            open_connections = open,
            drain_timeout = ?self.settings.drain_timeout,
            "draining: no longer accepting; connections close as their requests finish"
        );
        loop {
            // Registered before the count is read, so a close in between is not missed.
            let closed = self.closed.notified();
            if self.open_connections() == 0 {
                tracing::info!(took = ?started.elapsed(), "drained: every connection closed");
                return;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                tracing::warn!(
                    open_connections = self.open_connections(),
                    drain_timeout = ?self.settings.drain_timeout,
                    "drain timeout: the connections still open are cut"
                );
                return;
            }
        }
    }

    /// Before the proxy listener closes: stops the kernel answering new handshakes on it, then
    /// waits until the accept loop has taken every connection on its way (handshakes under way
    /// and connections completed), for as long as it keeps taking them (see
    /// [`ACCEPT_QUEUE_STALL`]) and at most until `deadline`. Closing a listener resets the
    /// connections still in its queues, and their clients may already have written a request;
    /// a client whose SYN goes unanswered instead retries and then finds the port closed,
    /// before it has sent anything (`closing.rs`).
    async fn empty_queues(&self, deadline: tokio::time::Instant) {
        let mut queues = Vec::new();
        for address in &self.settings.listen {
            let key = address.to_string();
            let socket = self
                .fds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(|fds| fds.lock().get(&key).copied());
            let Some(socket) = socket else {
                continue;
            };
            let opened =
                closing::refuse_new_handshakes(socket).and_then(|()| closing::Queues::of(socket));
            match opened {
                Ok(queue) => queues.push(queue),
                Err(error) => {
                    tracing::warn!(%error, %address, "cannot hold new connections off before the listener closes");
                }
            }
        }
        for queue in &mut queues {
            closing::wait_for_empty_queues(queue, deadline, ACCEPT_QUEUE_STALL).await;
        }
    }

    /// SIGQUIT: offers the listening sockets to the new process and waits until it serves.
    /// False when the upgrade failed; the sockets stay served here then.
    async fn hand_over(&self) -> bool {
        self.phase.send_replace(Phase::HandingOver);
        let Some(fds) = self.fds.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            tracing::error!("upgrade: no listening sockets to hand over");
            return false;
        };
        let path = self.settings.upgrade_sock.clone();
        // Pingora's sender retries a missing (or not yet listening) socket only a second later:
        // wait for the new process to listen on it, so `kill -QUIT` right after starting it
        // costs no second.
        let started = Instant::now();
        while !socket_listening(&path) {
            if started.elapsed() > HANDOVER_TIMEOUT {
                tracing::error!(
                    socket = path,
                    "upgrade abandoned: no new process waits on the hand-over socket; still serving"
                );
                return false;
            }
            tokio::time::sleep(HANDOVER_POLL).await;
        }
        let sent = tokio::task::spawn_blocking(move || {
            let fds = fds.lock();
            fds.send_to_sock(path.as_str())
        })
        .await;
        match sent {
            Ok(Ok(_)) => tracing::info!("upgrade: listening sockets sent to the new process"),
            Ok(Err(error)) => {
                tracing::error!(%error, "upgrade abandoned: the sockets could not be sent; still serving");
                return false;
            }
            Err(error) => {
                tracing::error!(%error, "upgrade abandoned: the sockets could not be sent; still serving");
                return false;
            }
        }
        // Both processes accept on the shared sockets now. This one stops only once the new
        // one answers for itself (the admin socket is shared too, hence the pid).
        let started = Instant::now();
        let own = std::process::id();
        loop {
            if let Some(pid) = ready_pid(self.settings.admin).await
                && pid != own
            {
                tracing::info!(new_pid = pid, took = ?started.elapsed(), "upgrade: the new process serves");
                return true;
            }
            if started.elapsed() > HANDOVER_TIMEOUT {
                tracing::error!(
                    timeout = ?HANDOVER_TIMEOUT,
                    "upgrade abandoned: the new process never answered /readyz; still serving \
                     (it holds the sockets too: stop it)"
                );
                return false;
            }
            tokio::time::sleep(HANDOVER_POLL).await;
        }
    }
}

/// The new process's side of an upgrade: waits (up to `timeout`) on `path` for the old process
/// to send its listening sockets; the bind addresses (Pingora's keys) and descriptors.
///
/// Pingora's own receiver polls for the old process once a second, which made every upgrade
/// take a second or more (in whole-second steps); this one answers within milliseconds. The
/// wire format is Pingora's (`Fds::send_to_sock`): the addresses space-separated in the
/// payload, the descriptors as `SCM_RIGHTS`.
pub fn receive_listeners(path: &str, timeout: Duration) -> std::io::Result<Vec<(String, i32)>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::net::UnixListener;

    // A socket file left by an earlier attempt would make the bind fail.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    let started = Instant::now();
    let connection = loop {
        match listener.accept() {
            Ok((connection, _)) => break connection,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                if started.elapsed() > timeout {
                    let _ = std::fs::remove_file(path);
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no running strangler sent its sockets to {path} within {timeout:?} \
                             (send it SIGQUIT)"
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => return Err(error),
        }
    };
    let _ = std::fs::remove_file(path);
    connection.set_nonblocking(false)?;
    connection.set_read_timeout(Some(timeout))?;

    const MAX_FDS: usize = 32;
    let mut payload = [0u8; 2048];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<libc::c_int>()) as u32) };
    let mut control = vec![0u8; space as usize];
    // SAFETY: an all-zero msghdr is a valid empty header; its buffers are set below and outlive
    // the call.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &raw mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = control.len() as _;
    // SAFETY: `message` points at live buffers of the sizes it states. CLOEXEC: a process this
    // one starts must not inherit (and hold open) the listening sockets.
    let read = unsafe {
        libc::recvmsg(
            connection.as_raw_fd(),
            &raw mut message,
            libc::MSG_CMSG_CLOEXEC,
        )
    };
    let Ok(read) = usize::try_from(read) else {
        return Err(std::io::Error::last_os_error());
    };
    let mut descriptors = Vec::new();
    // SAFETY: walking the control messages the kernel just wrote into `control`, within the
    // length it reported, with the libc macros made for it.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&raw const message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header).cast::<libc::c_int>();
                let bytes = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for index in 0..bytes / std::mem::size_of::<libc::c_int>() {
                    descriptors.push(data.add(index).read_unaligned());
                }
            }
            header = libc::CMSG_NXTHDR(&raw const message, header);
        }
    }
    let addresses: Vec<String> = std::str::from_utf8(&payload[..read])
        .unwrap_or_default()
        .split_ascii_whitespace()
        .map(str::to_owned)
        .collect();
    if addresses.len() != descriptors.len() {
        let message = format!(
            "{} addresses for {} sockets",
            addresses.len(),
            descriptors.len()
        );
        for descriptor in descriptors {
            // SAFETY: received just now, owned by nothing else.
            drop(unsafe { OwnedFd::from_raw_fd(descriptor) });
        }
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            message,
        ));
    }
    Ok(addresses.into_iter().zip(descriptors).collect())
}

/// Whether a Unix socket listens at `path`, from `/proc/net/unix` (Linux): the hand-over socket
/// exists from its `bind`, but a connection before its `listen` is refused. Where that table
/// cannot be read, whether the file exists.
fn socket_listening(path: &str) -> bool {
    /// `__SO_ACCEPTCON` in the table's flags: the socket listens.
    const ACCEPTING: u32 = 1 << 16;
    match std::fs::read_to_string("/proc/net/unix") {
        Ok(table) => table.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(7) == Some(&path)
                && fields
                    .get(3)
                    .and_then(|flags| u32::from_str_radix(flags, 16).ok())
                    .is_some_and(|flags| flags & ACCEPTING != 0)
        }),
        Err(_) => std::path::Path::new(path).exists(),
    }
}

/// Asks `/readyz` on `admin` (a loopback address when it listens on all interfaces); the pid
/// of the process that answered ready.
async fn ready_pid(admin: SocketAddr) -> Option<u32> {
    let mut address = admin;
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        // `/readyz` is a few dozen bytes; the bound is for a confused peer.
        (&mut stream)
            .take(64 * 1024)
            .read_to_end(&mut response)
            .await
            .ok()?;
        parse_ready_pid(&response)
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()
        .flatten()
}

/// The pid in a `/readyz` response, if it says ready (200).
fn parse_ready_pid(response: &[u8]) -> Option<u32> {
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&response[..split]).ok()?;
    let status = head.split_whitespace().nth(1)?;
    if status != "200" {
        return None;
    }
    let body: serde_json::Value = serde_json::from_slice(&response[split + 4..]).ok()?;
    u32::try_from(body.get("pid")?.as_u64()?).ok()
}

/// Keeps a client connection counted; dropping it may end the drain.
pub struct ConnectionGuard {
    lifecycle: Arc<Lifecycle>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.lifecycle.connections.fetch_sub(1, Ordering::AcqRel);
        self.lifecycle.closed.notify_waiters();
    }
}

/// The signal handler Pingora waits on ([`ShutdownSignalWatch`]): it returns only once the
/// process is drained, so Pingora's own grace period is set to zero.
pub struct Signals {
    lifecycle: Arc<Lifecycle>,
}

struct SignalSet {
    terminate: Signal,
    interrupt: Signal,
    quit: Signal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    Terminate,
    Interrupt,
    Quit,
}

impl SignalSet {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    async fn next(&mut self) -> Received {
        tokio::select! {
            _ = self.terminate.recv() => Received::Terminate,
            _ = self.interrupt.recv() => Received::Interrupt,
            _ = self.quit.recv() => Received::Quit,
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut signals = match SignalSet::new() {
            Ok(signals) => signals,
            Err(error) => {
                // Without handlers the default actions apply: SIGTERM kills at once.
                tracing::error!(%error, "cannot handle signals; SIGTERM will stop the process abruptly");
                return std::future::pending().await;
            }
        };
        let lifecycle = &self.lifecycle;
        loop {
            match signals.next().await {
                Received::Interrupt => {
                    tracing::info!("SIGINT: exiting now");
                    return ShutdownSignal::FastShutdown;
                }
                Received::Terminate => {
                    tracing::info!("SIGTERM: draining");
                    break;
                }
                Received::Quit => {
                    tracing::info!("SIGQUIT: handing the listening sockets to the new process");
                    let handed_over = tokio::select! {
                        handed_over = lifecycle.hand_over() => handed_over,
                        received = signals.next() => match received {
                            Received::Interrupt => return ShutdownSignal::FastShutdown,
                            // A stop during the hand-over: drain, the new process or not.
                            Received::Terminate | Received::Quit => true,
                        },
                    };
                    if handed_over {
                        tokio::select! {
                            () = lifecycle.drain(Reason::HandedOver) => {}
                            received = signals.next() => if received == Received::Interrupt {
                                return ShutdownSignal::FastShutdown;
                            },
                        }
                        return ShutdownSignal::GracefulTerminate;
                    }
                    lifecycle.phase.send_replace(Phase::Running);
                }
            }
        }
        tokio::select! {
            () = lifecycle.drain(Reason::Stop) => {}
            received = signals.next() => if received == Received::Interrupt {
                return ShutdownSignal::FastShutdown;
            },
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// A listening service whose accept loop stops when the [`Lifecycle`] says (or when Pingora
/// shuts the server down), rather than on Pingora's shutdown alone.
pub struct Listening<S> {
    inner: S,
    listener: Listener,
    lifecycle: Arc<Lifecycle>,
}

#[async_trait]
impl<S> PingoraService for Listening<S>
where
    S: ServiceWithDependents + 'static,
{
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let Some(fds) = &fds {
            // Inherited sockets go in Pingora's table before any listener is built (the lock
            // held throughout makes the other service wait), so it takes them over instead of
            // binding the addresses anew.
            let mut inherited = self
                .lifecycle
                .inherited
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(sockets) = inherited.take() {
                let mut table = fds.lock();
                for (address, descriptor) in sockets {
                    if table.get(&address).is_none() {
                        table.add(address, descriptor);
                    }
                }
            }
            drop(inherited);
            *self.lifecycle.fds.lock().unwrap_or_else(|e| e.into_inner()) = Some(fds.clone());
        }
        let accept_loop = self.lifecycle.accept_loop(self.listener);
        // Pingora's own shutdown (after the drain, or SIGINT) stops this loop too.
        let stop = accept_loop.stop.clone();
        let mut server_shutdown = shutdown;
        tokio::spawn(async move {
            if server_shutdown.wait_for(|stop| *stop).await.is_ok() {
                stop.send_replace(true);
            }
        });
        let mut stop = accept_loop.stop.subscribe();
        if *stop.borrow() {
            // Told to stop before starting: Pingora's loop waits for a change, so make one.
            stop.mark_changed();
        }
        let (ready, _) = watch::channel(false);
        self.inner
            .start_service(
                fds,
                stop,
                listeners_per_fd,
                ServiceReadyNotifier::new(ready),
            )
            .await;
        accept_loop.stopped.send_replace(true);
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_answer_names_the_process_that_gave_it() {
        let response = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"status\":\"ready\",\"generation\":1,\"pid\":4242}";
        assert_eq!(parse_ready_pid(response), Some(4242));
    }

    #[test]
    fn a_draining_or_pidless_answer_is_not_a_ready_new_process() {
        let draining =
            b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"status\":\"draining\",\"pid\":4242}";
        assert_eq!(parse_ready_pid(draining), None);
        let older = b"HTTP/1.1 200 OK\r\n\r\n{\"status\":\"ready\",\"generation\":1}";
        assert_eq!(parse_ready_pid(older), None);
        assert_eq!(parse_ready_pid(b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[test]
    fn a_hand_over_socket_counts_once_it_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let path = path.to_str().unwrap();
        assert!(!socket_listening(path));
        let _listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        assert!(socket_listening(path));
    }

    #[test]
    fn sockets_sent_the_way_pingora_sends_them_are_received_with_their_addresses() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let path = path.to_str().unwrap().to_owned();
        let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_address = proxy.local_addr().unwrap();
        let mut fds = pingora_core::server::Fds::new();
        fds.add(proxy_address.to_string(), proxy.as_raw_fd());
        fds.add(admin.local_addr().unwrap().to_string(), admin.as_raw_fd());
        let receiver = std::thread::spawn({
            let path = path.clone();
            move || receive_listeners(&path, Duration::from_secs(10))
        });
        while !socket_listening(&path) {
            std::thread::sleep(Duration::from_millis(1));
        }
        fds.send_to_sock(path.as_str()).unwrap();
        let received = receiver.join().unwrap().unwrap();
        assert_eq!(received.len(), 2);
        let (_, descriptor) = received
            .iter()
            .find(|(address, _)| *address == proxy_address.to_string())
            .expect("the proxy's address");
        // The received descriptor is the same listening socket: a connection to the address
        // is accepted through it.
        // SAFETY: received above, owned by nothing else.
        let inherited =
            unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(*descriptor) };
        let _client = std::net::TcpStream::connect(proxy_address).unwrap();
        inherited.accept().unwrap();
        assert!(
            !std::path::Path::new(&path).exists(),
            "the socket file is removed"
        );
    }

    #[test]
    fn a_new_process_gives_up_when_no_sockets_come() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let error = receive_listeners(path.to_str().unwrap(), Duration::from_millis(50))
            .expect_err("nothing was sent");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(error.to_string().contains("SIGQUIT"), "{error}");
    }

    fn lifecycle(drain_timeout: Duration) -> Arc<Lifecycle> {
        Lifecycle::new(Settings {
            drain_timeout,
            upgrade_sock: String::new(),
            admin: SocketAddr::from(([127, 0, 0, 1], 9)),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 9))],
        })
    }

    /// Marks both accept loops stopped, as Pingora's would once told.
    fn no_listeners(lifecycle: &Lifecycle) {
        lifecycle.proxy.stopped.send_replace(true);
        lifecycle.admin.stopped.send_replace(true);
    }

    #[tokio::test]
    async fn the_drain_ends_when_the_last_connection_closes_not_at_the_timeout() {
        let lifecycle = lifecycle(Duration::from_secs(30));
        no_listeners(&lifecycle);
        let first = lifecycle.connection();
        let second = lifecycle.connection();
        let mut draining = lifecycle.draining();
        let drain = tokio::spawn({
            let lifecycle = lifecycle.clone();
            async move { lifecycle.drain(Reason::Stop).await }
        });
        draining.wait_for(|draining| *draining).await.unwrap();
        assert_eq!(lifecycle.phase(), Phase::Draining);
        drop(first);
        assert!(!drain.is_finished());
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .expect("the drain ends with the last connection")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_closes_is_cut_at_the_drain_timeout() {
        let lifecycle = lifecycle(Duration::from_secs(2));
        no_listeners(&lifecycle);
        let _stuck = lifecycle.connection();
        let started = tokio::time::Instant::now();
        lifecycle.drain(Reason::Stop).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn the_drain_starts_only_after_the_listener_has_stopped_accepting() {
        let lifecycle = lifecycle(Duration::from_secs(30));
        let mut stop = lifecycle.proxy.stop.subscribe();
        let drain = tokio::spawn({
            let lifecycle = lifecycle.clone();
            async move { lifecycle.drain(Reason::Stop).await }
        });
        stop.wait_for(|stop| *stop).await.unwrap();
        // Told to stop, not yet stopped: no client may be told to reconnect yet.
        tokio::task::yield_now().await;
        assert!(!*lifecycle.draining().borrow());
        lifecycle.proxy.stopped.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .unwrap()
            .unwrap();
        assert!(*lifecycle.draining().borrow());
    }
}
