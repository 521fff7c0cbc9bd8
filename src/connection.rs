//! Client connections: how many may be open at once, how long a client may take to send its
//! request headers, and the hard stop at each request's deadline.
//!
//! Pingora offers no hook before a request's headers are parsed (it bounds each read by 60 s, so
//! a slowloris client trickling one byte a minute holds its connection forever), no cap on open
//! connections, and no total request timeout. [`GuardedProxy`] wraps Pingora's HTTP application
//! (the [`ServerApp`] it builds from our `ProxyHttp`) to add all three:
//!
//! - a connection past `server.limits.max_connections` gets a 503 with `Retry-After` and is closed;
//! - the client's stream is wrapped in a `GuardedStream`, which fails the read of a request's
//!   headers once `server.limits.header_timeout` has passed (answering 408 first);
//! - the request's deadline (set by the proxy once the headers are parsed, see
//!   [`request_started`], and moved by [`deadline_moved`] when the route has its own) is watched beside the connection: the proxy answers 504 itself when the upstream is slow
//!   (its upstream timeouts are cut to the time left), so this watch only fires when a response
//!   already under way stalls, or an upstream trickles its headers; the connection is then
//!   closed, so the client sees the response cut short rather than complete.
//!
//! During a drain (see `lifecycle/`), Pingora's HTTP code is handed the drain as its shutdown
//! watch, so every request read from then on is answered with `Connection: close`, and
//! [`closing_after_response`] tells the proxy to do the same for requests already under way.
//! A kept-alive connection left quiet (no request under way, none arriving) for
//! [`DRAIN_IDLE_QUIET`] after a request is closed
//! (`strangler_connections_closed_total{reason="drain_idle"}`); one that has not carried a
//! request yet is left to send it. Pingora's own shutdown would abort idle keep-alive
//! connections at once, racing requests already on their way.
//!
//! The proxy phases reach their connection's state through a task-local (`CURRENT`), since
//! Pingora drives a whole HTTP/1 connection, request after request, inside one task.
//!
//! What this module does not own: the request limits checked on parsed headers (URI length,
//! header count and size, body size; see `proxy/limits.rs`) and the body idle timeout (Pingora's
//! downstream read timeout, set per request by the proxy).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::HeaderValue;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::response::ErrorResponse;
use crate::routing::SharedRouteTable;
use crate::vocabulary::Reason;

/// How long past a request's deadline the watch waits before it closes the connection, so the
/// proxy's own checks (which answer 504, or cut the response and log it) go first: they see
/// every upstream read, the watch only a stalled one.
const STARTED_RESPONSE_GRACE: Duration = Duration::from_millis(200);
/// The same for a response that has not started: the proxy's 504 is due at the deadline itself.
const UNSTARTED_RESPONSE_GRACE: Duration = Duration::from_millis(500);

/// During a drain, how long a kept-alive connection must have been quiet before it is closed: a
/// client that sends back to back gets its `Connection: close` on its next response instead,
/// and one that sends now and then is unlikely to pick the very moment of the close.
pub const DRAIN_IDLE_QUIET: Duration = Duration::from_millis(500);

/// How long a refused connection is given to send its request before the 503 goes out.
const REFUSAL_READ_WAIT: Duration = Duration::from_millis(50);

/// An answer written straight to the socket, before (or instead of) Pingora parsing a request,
/// with a fresh request id, as every proxy-generated error carries one.
fn raw_error_response(reason: Reason) -> (String, Vec<u8>) {
    let request_id = new_request_id();
    let logged = String::from_utf8_lossy(request_id.as_bytes()).into_owned();
    (logged, ErrorResponse::of(reason, request_id).to_raw_http1())
}

fn peer_address(stream: &Stream) -> Option<String> {
    let digest = stream.get_socket_digest()?;
    Some(digest.peer_addr()?.to_string())
}

/// Whether bytes wait unread on `socket`: a request the kernel has received but the proxy has
/// not read yet, which a close would destroy (closing a socket with unread bytes resets it).
/// A non-blocking peek; an error (the client reset, or not a socket) counts as nothing waiting.
fn bytes_waiting(socket: UniqueIDType) -> bool {
    let mut byte = 0u8;
    // SAFETY: a non-blocking peek of one byte into a local buffer; `socket` is the descriptor
    // of the connection this task owns, open until the task drops its stream.
    let read = unsafe {
        libc::recv(
            socket,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    // 0 is the client's own close: nothing to lose by closing ours.
    read > 0
}

tokio::task_local! {
    /// The state of the connection the current task serves.
    static CURRENT: Arc<ConnectionState>;
}

/// Called by the proxy once a request's headers are parsed: header reading is over, and the
/// request (known by `request_id` in logs) must be done by `deadline`.
pub fn request_started(deadline: Instant, request_id: &HeaderValue) {
    let _ = CURRENT.try_with(|state| {
        *state.request_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(request_id.clone());
        state.set_deadline(deadline);
    });
}

/// `render(peer)`, kept for the connection's later requests (the peer of a connection does not
/// change): the proxy's `X-Forwarded-For` value, formatted once per connection instead of once
/// per request. Outside a connection's task (HTTP/2 streams) it is rendered each time.
pub fn peer_value(
    peer: std::net::IpAddr,
    render: fn(std::net::IpAddr) -> HeaderValue,
) -> HeaderValue {
    CURRENT
        .try_with(|state| {
            let (cached_peer, value) = state.peer_value.get_or_init(|| (peer, render(peer)));
            if *cached_peer == peer {
                value.clone()
            } else {
                render(peer)
            }
        })
        .unwrap_or_else(|_| render(peer))
}

/// Called by the proxy when the route sets its own deadline.
pub fn deadline_moved(deadline: Instant) {
    let _ = CURRENT.try_with(|state| state.set_deadline(deadline));
}

/// Called by the proxy when it starts sending the response: from now on a missed deadline can
/// only be shown by closing the connection.
pub fn response_started() {
    let _ = CURRENT.try_with(|state| state.response_started.store(true, Ordering::Relaxed));
}

/// Whether the response being written must close its connection: the process is draining.
/// The proxy then turns keep-alive off, so the client reconnects (elsewhere) for its next
/// request rather than find this connection closed.
pub fn closing_after_response() -> bool {
    CURRENT
        .try_with(|state| *state.draining.borrow())
        .unwrap_or(false)
}

/// Called by the proxy when a request is over; the connection waits for the next one.
pub fn request_finished() {
    let _ = CURRENT.try_with(|state| state.request_finished());
}

/// Pingora's HTTP application with connection limits around it.
pub struct GuardedProxy<A> {
    proxy: Arc<A>,
    routes: SharedRouteTable,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    open: AtomicUsize,
}

impl<A> GuardedProxy<A> {
    pub fn new(
        proxy: A,
        routes: SharedRouteTable,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        Self {
            proxy: Arc::new(proxy),
            routes,
            metrics,
            lifecycle,
            open: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl<A> ServerApp for GuardedProxy<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        // The accept loop's stop; the drain below is what matters to a connection.
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Counted until the end of this function, when the connection is closed.
        let _counted = self.lifecycle.connection();
        // Limits are read per connection, so a reload applies to the next connections.
        let (max_connections, header_timeout, head_limits) = {
            let table = self.routes.load();
            let limits = &table.config().server.limits;
            (
                limits.max_connections,
                limits.header_timeout,
                HeadLimits::from_config(limits),
            )
        };
        let Some(_slot) = ConnectionSlot::take(self, max_connections) else {
            self.metrics
                .connections_closed
                .with_label_values(&[Reason::TooManyConnections.as_str()])
                .inc();
            refuse(stream, max_connections).await;
            return None;
        };

        if matches!(
            stream.selected_alpn_proto(),
            Some(pingora_core::protocols::ALPN::H2)
        ) {
            // HTTP/2 (ALPN or h2c, see `tls.rs`) carries frames, not HTTP/1 heads, and serves
            // each stream in a task of its own: the head scan and the deadline watch below do
            // not apply. The h2 server's limits (`tls::h2_options`) and the proxy's own checks
            // on parsed headers and deadlines do; the drain is its shutdown signal (GOAWAY).
            self.proxy
                .process_new(stream, &self.lifecycle.draining())
                .await;
            return None;
        }
        let draining = self.lifecycle.draining();
        // The socket, to look for a request arriving before closing a quiet connection (for a
        // TCP stream, TLS or not, the id is its file descriptor).
        let socket = stream.id();
        let state = Arc::new(ConnectionState::new(draining.clone()));
        let guarded: Stream = Box::new(GuardedStream::new(
            stream,
            state.clone(),
            header_timeout,
            head_limits,
            self.metrics.clone(),
        ));
        let serve = CURRENT.scope(state.clone(), self.proxy.process_new(guarded, &draining));
        tokio::select! {
            biased;
            _ = serve => {}
            () = state.quiet_while_draining(socket) => {
                // Dropping `serve` closes the connection; no request was on its way.
                self.metrics
                    .connections_closed
                    // Not a `Reason`: nothing is answered, the connection was idle.
                    .with_label_values(&["drain_idle"])
                    .inc();
            }
            () = state.overdue() => {
                // Dropping `serve` closes the connection (and the upstream's, if any).
                self.metrics
                    .connections_closed
                    .with_label_values(&[Reason::RequestTimeout.as_str()])
                    .inc();
                let request_id = state.request_id.lock().unwrap_or_else(|e| e.into_inner()).take();
                tracing::warn!(
                    request_id = request_id.as_ref().map(|id| String::from_utf8_lossy(id.as_bytes()).into_owned()),
                    response_started = state.response_started.load(Ordering::Relaxed),
                    "request deadline passed: connection closed"
                );
            }
        }
        // Every HTTP/1 request of the connection ran inside `serve`; nothing to hand back.
        None
    }

    async fn cleanup(&self) {
        // Not passed on: Pingora's proxy would abort every idle keep-alive connection at once,
        // racing the requests on their way; the drain closes them when quiet instead.
    }
}

/// Answers a connection over the limit with a 503 and closes it, best effort: the client may not
/// be listening, and nothing more is owed to it.
async fn refuse(mut stream: Stream, max_connections: usize) {
    let (request_id, response) = raw_error_response(Reason::TooManyConnections);
    tracing::warn!(
        request_id,
        client = peer_address(&stream),
        max_connections,
        "connection refused: too many open connections"
    );
    // Read what the client sent first (briefly): closing a socket with unread data resets it,
    // and a reset can destroy the 503 before the client reads it.
    let mut request = [0u8; 4096];
    let _ = tokio::time::timeout(REFUSAL_READ_WAIT, stream.read(&mut request)).await;
    let _ = stream.write_all(&response).await;
    let _ = stream.flush().await;
    Shutdown::shutdown(&mut *stream).await;
}

/// One of `max_connections`; dropping it frees the slot.
struct ConnectionSlot<'a> {
    open: &'a AtomicUsize,
    metrics: &'a Metrics,
}

impl<'a> ConnectionSlot<'a> {
    fn take<A>(app: &'a GuardedProxy<A>, max: usize) -> Option<Self> {
        let taken = app
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .is_ok();
        taken.then(|| {
            app.metrics.open_connections.inc();
            Self {
                open: &app.open,
                metrics: &app.metrics,
            }
        })
    }
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.open_connections.dec();
    }
}

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Reading a request's headers; bounded by the header timeout.
    Headers = 0,
    /// Headers parsed; the proxy is handling the request, bounded by its deadline.
    Request = 1,
    /// Between requests on a kept-alive connection; Pingora's keep-alive timeout applies.
    Idle = 2,
}

/// What the proxy phases, the stream wrapper and the deadline watch share about a connection.
#[derive(Debug)]
struct ConnectionState {
    phase: AtomicU8,
    /// The current request's deadline as nanoseconds since [`EPOCH`]; 0 when none.
    deadline: AtomicU64,
    /// The deadline the watch sleeps until; 0 when it waits for a request.
    watched: AtomicU64,
    response_started: AtomicBool,
    rearm: Notify,
    /// The current request's id, for the log line when the watch closes the connection.
    request_id: Mutex<Option<HeaderValue>>,
    /// The peer and its rendering for `X-Forwarded-For` (see [`peer_value`]).
    peer_value: std::sync::OnceLock<(std::net::IpAddr, HeaderValue)>,
    /// Since when (nanoseconds since [`EPOCH`]) no request has been under way or arriving;
    /// 0 while one is, and on a new connection, whose client connected to send its first.
    quiet_since: AtomicU64,
    /// Woken when a request ends and the connection turns quiet.
    quieted: Notify,
    /// True once the process drains.
    draining: tokio::sync::watch::Receiver<bool>,
}

/// A fixed origin so deadlines fit in an atomic.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn to_nanos(instant: Instant) -> u64 {
    // 0 means "none"; a deadline can never be at the epoch itself.
    (instant.saturating_duration_since(*EPOCH).as_nanos() as u64).max(1)
}

fn from_nanos(nanos: u64) -> Instant {
    *EPOCH + Duration::from_nanos(nanos)
}

impl ConnectionState {
    fn new(draining: tokio::sync::watch::Receiver<bool>) -> Self {
        Self {
            phase: AtomicU8::new(Phase::Headers as u8),
            deadline: AtomicU64::new(0),
            watched: AtomicU64::new(0),
            response_started: AtomicBool::new(false),
            rearm: Notify::new(),
            request_id: Mutex::new(None),
            peer_value: std::sync::OnceLock::new(),
            // Its first request is on its way: never quiet before it (`quiet_while_draining`).
            quiet_since: AtomicU64::new(0),
            quieted: Notify::new(),
            draining,
        }
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Headers,
            1 => Phase::Request,
            _ => Phase::Idle,
        }
    }

    fn set_deadline(&self, deadline: Instant) {
        self.phase.store(Phase::Request as u8, Ordering::Relaxed);
        self.response_started.store(false, Ordering::Relaxed);
        let deadline = to_nanos(deadline);
        self.deadline.store(deadline, Ordering::Release);
        // The watch wakes by itself at the deadline it sleeps until and then looks again; it
        // needs waking only if it sleeps for no deadline or a later one.
        let watched = self.watched.load(Ordering::Acquire);
        if watched == 0 || watched > deadline {
            self.rearm.notify_one();
        }
    }

    fn request_finished(&self) {
        self.deadline.store(0, Ordering::Release);
        self.phase.store(Phase::Idle as u8, Ordering::Relaxed);
        self.quiet_since
            .store(to_nanos(Instant::now()), Ordering::Release);
        self.quieted.notify_one();
    }

    /// Bytes of a request arrived: the connection is not quiet.
    fn request_arriving(&self) {
        self.quiet_since.store(0, Ordering::Release);
    }

    /// Resolves once the process drains and this connection has been quiet for
    /// [`DRAIN_IDLE_QUIET`] since its last request, with nothing waiting on `socket`: it may be
    /// closed without cutting a request off. Pends forever when the process never drains.
    ///
    /// A connection that has not carried a request yet is never quiet in this sense: its client
    /// has just connected in order to send one (a connection accepted during the stop, or a
    /// client starved of CPU for a moment), and a client whose fresh connection closes under
    /// its first request loses it (clients retry a request only on a reused connection). The
    /// header timeout (a 408) and the drain's deadline bound the wait for it.
    async fn quiet_while_draining(&self, socket: UniqueIDType) {
        let mut draining = self.draining.clone();
        if draining.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
        loop {
            // Registered before the state is read, so a request ending in between still wakes.
            let quieted = self.quieted.notified();
            let since = self.quiet_since.load(Ordering::Acquire);
            if since == 0 {
                quieted.await;
                continue;
            }
            let due = from_nanos(since) + DRAIN_IDLE_QUIET;
            if Instant::now() < due {
                tokio::time::sleep_until(due.into()).await;
                continue;
            }
            if bytes_waiting(socket) {
                // A request is arriving that the proxy has not read yet: give it the turn
                // (it reads it, the connection stops being quiet), then look again.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            return;
        }
    }

    /// Resolves when the request under way has run past its deadline by a grace period (longer
    /// while its response has not started, as the proxy answers 504 itself then).
    async fn overdue(&self) {
        loop {
            let deadline = self.deadline.load(Ordering::Acquire);
            if deadline == 0 {
                self.watched.store(0, Ordering::Release);
                self.rearm.notified().await;
                continue;
            }
            let due = from_nanos(deadline) + STARTED_RESPONSE_GRACE;
            self.watched.store(deadline, Ordering::Release);
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {}
                () = self.rearm.notified() => continue,
            }
            if self.deadline.load(Ordering::Acquire) != deadline {
                continue; // that request finished; a later one may be under way
            }
            if !self.response_started.load(Ordering::Relaxed) {
                tokio::select! {
                    () = tokio::time::sleep_until(
                        (from_nanos(deadline) + UNSTARTED_RESPONSE_GRACE).into()
                    ) => {}
                    () = self.rearm.notified() => continue,
                }
                if self.deadline.load(Ordering::Acquire) != deadline {
                    continue;
                }
            }
            return;
        }
    }
}

/// The client's stream, failing the read of request headers that take too long.
///
/// The timer is only set when a read of headers has to wait, so a request whose headers arrive
/// at once (nearly all of them) costs an `Instant::now()` and no timer.
struct GuardedStream {
    inner: Stream,
    state: Arc<ConnectionState>,
    header_timeout: Duration,
    /// When the headers being read must be complete.
    header_deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    /// The request head being read, measured as it arrives.
    head: HeadScan,
    head_limits: HeadLimits,
    metrics: Arc<Metrics>,
}

/// The size limits of a request head that are checked on its raw bytes, before Pingora parses
/// it: Pingora's parser refuses a target over 64 KiB or more than 256 header lines with a bare
/// 400, before any phase of ours runs, so the 414 and 431 the limits promise are answered here.
#[derive(Debug, Clone, Copy)]
struct HeadLimits {
    request_line: usize,
    header_lines: usize,
    head_bytes: usize,
}

impl HeadLimits {
    fn from_config(limits: &crate::config::LimitsConfig) -> Self {
        let uri = usize::try_from(limits.max_uri_length.as_u64()).unwrap_or(usize::MAX);
        let header_bytes = usize::try_from(limits.max_header_bytes.as_u64()).unwrap_or(usize::MAX);
        Self {
            // Method, spaces and version around the target.
            request_line: uri.saturating_add(32),
            header_lines: limits.max_header_count,
            // Header names and values, plus separators and line ends.
            head_bytes: header_bytes
                .saturating_add(uri)
                .saturating_add(4 * limits.max_header_count)
                .saturating_add(64),
        }
    }
}

/// Counts a request head's lines and bytes as they arrive, up to the empty line that ends it.
#[derive(Debug, Default)]
struct HeadScan {
    bytes: usize,
    /// Lines seen so far (the request line and header lines).
    lines: usize,
    /// Bytes of the current line, line end excluded.
    line: usize,
    done: bool,
}

impl HeadScan {
    /// Feeds newly read bytes; the refusal once a limit is passed.
    ///
    /// A line at a time (`memchr` finds its end), not a byte at a time: every count only grows
    /// within a line, so a line that passes no limit at its end passed none on the way. A line
    /// that does pass one is fed again byte by byte ([`Self::feed_bytewise`]), which names the
    /// limit passed first, as before.
    fn feed(&mut self, mut bytes: &[u8], limits: &HeadLimits) -> Option<Reason> {
        while !self.done && !bytes.is_empty() {
            let end = memchr::memchr(b'\n', bytes);
            let segment = &bytes[..end.map_or(bytes.len(), |at| at + 1)];
            let content = &segment[..end.unwrap_or(segment.len())];
            let carriage_returns = content.iter().filter(|&&byte| byte == b'\r').count();
            let line = self.line + content.len() - carriage_returns;
            let total = self.bytes + segment.len();
            let (lines, done) = match end {
                // Empty lines before the request line are tolerated (RFC 9112 §2.2).
                Some(_) if line == 0 => (self.lines, self.lines > 0),
                Some(_) => (self.lines + 1, false),
                None => (self.lines, false),
            };
            if (self.lines == 0 && line > limits.request_line)
                || lines > limits.header_lines + 1
                || total > limits.head_bytes
            {
                return self.feed_bytewise(bytes, limits);
            }
            self.bytes = total;
            self.lines = lines;
            self.line = if end.is_some() { 0 } else { line };
            self.done = done;
            bytes = &bytes[segment.len()..];
        }
        None
    }

    /// [`Self::feed`] a byte at a time: the reference it must agree with, and the way to find
    /// which limit a line passed first.
    fn feed_bytewise(&mut self, bytes: &[u8], limits: &HeadLimits) -> Option<Reason> {
        for &byte in bytes {
            if self.done {
                return None;
            }
            self.bytes += 1;
            match byte {
                b'\n' if self.line == 0 => {
                    // Empty lines before the request line are tolerated (RFC 9112 §2.2).
                    self.done = self.lines > 0;
                }
                b'\n' => {
                    self.lines += 1;
                    self.line = 0;
                }
                b'\r' => {}
                _ => self.line += 1,
            }
            if self.lines == 0 && self.line > limits.request_line {
                return Some(Reason::UriTooLong);
            }
            if self.lines > limits.header_lines + 1 {
                return Some(Reason::TooManyHeaders);
            }
            if self.bytes > limits.head_bytes {
                return Some(Reason::HeadersTooLarge);
            }
        }
        None
    }
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("state", &self.state)
            .field("header_deadline", &self.header_deadline)
            .finish_non_exhaustive()
    }
}

impl GuardedStream {
    fn new(
        inner: Stream,
        state: Arc<ConnectionState>,
        header_timeout: Duration,
        head_limits: HeadLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner,
            state,
            header_timeout,
            // The first request's headers are due `header_timeout` after the accept.
            header_deadline: Instant::now() + header_timeout,
            timer: None,
            head: HeadScan::default(),
            head_limits,
            metrics,
        }
    }

    /// Answers `reason` straight to the client (best effort, once: a socket's send buffer
    /// takes these few bytes whole) and ends the connection: reads see end of stream, which
    /// Pingora takes as a client gone, quietly.
    fn refuse_head(&mut self, cx: &mut Context<'_>, reason: Reason) -> String {
        let (request_id, response) = raw_error_response(reason);
        let _ = Pin::new(&mut self.inner).poll_write(cx, &response);
        // Closing a socket with unread bytes resets it, and a reset can destroy the answer
        // before the client reads it: take in what has already arrived (bounded).
        let mut scratch = [0u8; 16 * 1024];
        for _ in 0..64 {
            let mut discard = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut discard) {
                Poll::Ready(Ok(())) if !discard.filled().is_empty() => continue,
                _ => break,
            }
        }
        self.state.phase.store(Phase::Idle as u8, Ordering::Relaxed);
        self.head.done = true;
        self.metrics
            .connections_closed
            .with_label_values(&[reason.as_str()])
            .inc();
        request_id
    }

    /// Polls the header deadline; `Ready` once it has passed.
    fn poll_header_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.header_deadline.into();
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx)
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let filled = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > filled {
                    this.state.request_arriving();
                }
                // The first bytes after an idle keep-alive period start the next request.
                if buf.filled().len() > filled && this.state.phase() == Phase::Idle {
                    this.state
                        .phase
                        .store(Phase::Headers as u8, Ordering::Relaxed);
                    this.header_deadline = Instant::now() + this.header_timeout;
                    this.head = HeadScan::default();
                }
                if this.state.phase() == Phase::Headers
                    && let Some(reason) = this.head.feed(&buf.filled()[filled..], &this.head_limits)
                {
                    buf.set_filled(filled);
                    let request_id = this.refuse_head(cx, reason);
                    tracing::debug!(
                        request_id,
                        client = peer_address(&this.inner),
                        reason = reason.as_str(),
                        "request head over the limits: refused and closed"
                    );
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if this.state.phase() != Phase::Headers
                    || this.poll_header_deadline(cx).is_pending()
                {
                    return Poll::Pending;
                }
                let request_id = this.refuse_head(cx, Reason::HeaderTimeout);
                // Debug, not warn: a slowloris attack is many connections, and a log line each
                // would be a second attack on the disk. The metric counts them.
                tracing::debug!(
                    request_id,
                    client = peer_address(&this.inner),
                    timeout = ?this.header_timeout,
                    "request headers not received in time: 408 and close"
                );
                // End of stream, not an error: Pingora logs read errors at ERROR.
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// A fresh request id (a UUID v4), for requests that bring none or an unusable one, and for
/// the connection layer's own refusals. Here, below the proxy, so both layers use one.
pub(crate) fn new_request_id() -> http::HeaderValue {
    let mut buffer = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    http::HeaderValue::from_str(id).expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::sync::watch;
    use tokio::task::JoinHandle;

    /// The outcome of scanning `head` read in `chunk`-byte pieces, with `feed` or bytewise.
    fn scan(head: &[u8], chunk: usize, limits: &HeadLimits, bytewise: bool) -> String {
        let mut scan = HeadScan::default();
        for piece in head.chunks(chunk) {
            let refusal = if bytewise {
                scan.feed_bytewise(piece, limits)
            } else {
                scan.feed(piece, limits)
            };
            if let Some(reason) = refusal {
                return format!("refused: {}", reason.as_str());
            }
        }
        format!("{scan:?}")
    }

    #[test]
    fn the_head_scan_a_line_at_a_time_agrees_with_the_scan_a_byte_at_a_time() {
        let limits = HeadLimits {
            request_line: 40,
            header_lines: 4,
            head_bytes: 160,
        };
        let heads: [&[u8]; 9] = [
            b"GET /item HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\n\nGET / HTTP/1.1\nHost: a\n\nGET /next HTTP/1.1\r\n",
            b"GET /a-target-that-is-far-too-long-for-the-limit HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\ne: 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nx: 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789\r\n\r\n",
            b"GET / HT\rTP/1.1\r\r\nHost: \r\ra\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\n\n\n",
            b"\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
            b"",
        ];
        for head in heads {
            for chunk in [1, 2, 3, 7, 16, 1000] {
                assert_eq!(
                    scan(head, chunk, &limits, false),
                    scan(head, chunk, &limits, true),
                    "{:?} in {chunk}-byte reads",
                    String::from_utf8_lossy(head)
                );
            }
        }
        assert_eq!(
            scan(heads[2], 1000, &limits, false),
            "refused: uri_too_long"
        );
    }

    /// A connected loopback pair: (the proxy's side, the client's side).
    async fn socket_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    #[tokio::test]
    async fn a_request_the_proxy_has_not_read_yet_is_seen_waiting() {
        let (server, mut client) = socket_pair().await;
        assert!(!bytes_waiting(server.as_raw_fd()));
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let started = Instant::now();
        while !bytes_waiting(server.as_raw_fd()) {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "bytes never seen"
            );
            tokio::task::yield_now().await;
        }
        // Peeked, not read: still there for the proxy.
        assert!(bytes_waiting(server.as_raw_fd()));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_closed_while_the_process_is_not_draining() {
        let (_draining, watch) = watch::channel(false);
        let state = ConnectionState::new(watch);
        let closed = tokio::time::timeout(Duration::from_secs(60), state.quiet_while_draining(-1));
        assert!(closed.await.is_err());
    }

    #[tokio::test]
    async fn a_quiet_connection_is_closed_after_the_quiet_period_of_a_drain() {
        let (server, _client) = socket_pair().await;
        let (draining, watch) = watch::channel(false);
        let state = ConnectionState::new(watch);
        state.request_arriving();
        state.request_finished();
        draining.send_replace(true);
        let started = Instant::now();
        state.quiet_while_draining(server.as_raw_fd()).await;
        assert!(started.elapsed() >= DRAIN_IDLE_QUIET);
    }

    /// The drain's watch over a connection's quiet, in a task of its own.
    fn watch_quiet(state: &Arc<ConnectionState>, socket: UniqueIDType) -> JoinHandle<()> {
        let state = state.clone();
        tokio::spawn(async move { state.quiet_while_draining(socket).await })
    }

    /// Ends the request under way: the watch must let the connection go a quiet period later,
    /// not sooner.
    async fn closed_a_quiet_period_after_the_request_ends(
        state: &ConnectionState,
        quiet: JoinHandle<()>,
    ) {
        let ended = Instant::now();
        state.request_finished();
        tokio::time::timeout(Duration::from_secs(5), quiet)
            .await
            .expect("closed once quiet after its request")
            .unwrap();
        assert!(ended.elapsed() >= DRAIN_IDLE_QUIET);
    }

    // Real time: the connection state keeps std instants, which paused time does not move.
    #[tokio::test]
    async fn a_connection_that_has_carried_no_request_is_left_to_send_its_first() {
        let (_draining, watch) = watch::channel(true);
        let state = Arc::new(ConnectionState::new(watch));
        let quiet = watch_quiet(&state, -1);
        // Quiet for far longer than the quiet period: a client connected to send a request.
        tokio::time::sleep(DRAIN_IDLE_QUIET * 3).await;
        assert!(!quiet.is_finished(), "closed before its first request");
        // Its request comes and is answered: an idle kept-alive connection from then on.
        state.request_arriving();
        closed_a_quiet_period_after_the_request_ends(&state, quiet).await;
    }

    #[tokio::test]
    async fn a_request_under_way_is_never_cut_by_the_drain() {
        let (server, _client) = socket_pair().await;
        let (draining, watch) = watch::channel(true);
        let state = Arc::new(ConnectionState::new(watch));
        state.request_arriving();
        let quiet = watch_quiet(&state, server.as_raw_fd());
        tokio::time::sleep(DRAIN_IDLE_QUIET * 2).await;
        assert!(!quiet.is_finished(), "closed during a request");
        closed_a_quiet_period_after_the_request_ends(&state, quiet).await;
        drop(draining);
    }

    #[tokio::test]
    async fn bytes_waiting_on_a_quiet_connection_hold_off_its_close() {
        let (server, mut client) = socket_pair().await;
        let (_draining, watch) = watch::channel(true);
        let state = Arc::new(ConnectionState::new(watch));
        state.request_arriving();
        state.request_finished();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let quiet = watch_quiet(&state, server.as_raw_fd());
        tokio::time::sleep(DRAIN_IDLE_QUIET * 2).await;
        assert!(!quiet.is_finished(), "closed with a request waiting");
        quiet.abort();
        drop(server);
    }
}
