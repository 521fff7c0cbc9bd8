//! Closing the proxy's listening socket on a stop without resetting a connection a client has
//! already opened.
//!
//! What this module owns: the three steps between "stop accepting" and the socket's close.
//! 1. [`refuse_new_handshakes`]: the kernel answers no new SYN on the socket from now on (a
//!    client connecting now retries its SYN a second later and is refused then, before it has
//!    sent a byte), while handshakes already under way still complete.
//! 2. [`Queues`]: how many connections are still on their way to the accept loop: handshakes
//!    under way (half-open, `SYN_RECV`) and connections completed but not yet accepted.
//! 3. [`wait_for_empty_queues`]: waits until both are empty, for as long as the accept loop keeps
//!    taking connections.
//!
//! Why: closing a listener resets the connections still in its queues, and their clients may
//! already have written a request. A handshake under way is one of them: the client counts it
//! complete as soon as the SYN-ACK arrives and writes its request at once, and the server's side
//! completes only when the client's ACK is read, a moment later (longer on a starved CPU, where
//! softirqs wait for `ksoftirqd`). An earlier filter that dropped every packet dropped those
//! ACKs too, so those connections never completed and were reset at the close: up to 2 requests
//! per 5 stops with a new connection per request, beside the test suite on 2 cores.
//!
//! What it does not own: telling the accept loop to stop, or the drain (`lifecycle/mod.rs`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use socket2::{SockFilter, SockRef};

/// The socket filter [`refuse_new_handshakes`] attaches, in classic BPF. A TCP socket's filter
/// sees the segment from its TCP header on; byte 13 holds the flags.
const REFUSE_SYN: [SockFilter; 5] = [
    // A = the flags byte.
    SockFilter::new(BPF_LD | BPF_B | BPF_ABS, 0, 0, 13),
    // A &= SYN | ACK.
    SockFilter::new(BPF_ALU | BPF_AND | BPF_K, 0, 0, (TCP_SYN | TCP_ACK) as u32),
    // A SYN without ACK opens a new handshake: to the drop; anything else to the keep.
    SockFilter::new(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, TCP_SYN as u32),
    // Drop: keep 0 bytes.
    SockFilter::new(BPF_RET | BPF_K, 0, 0, 0),
    // Keep: the whole segment (the ACK of a handshake under way, data, FIN, RST).
    SockFilter::new(BPF_RET | BPF_K, 0, 0, u32::MAX),
];

// Classic BPF opcodes (`linux/bpf_common.h`).
const BPF_LD: u16 = 0x00;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_AND: u16 = 0x50;
const BPF_JEQ: u16 = 0x10;
const BPF_K: u16 = 0x00;
// TCP header flags (RFC 9293).
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Attaches a socket filter to the listening socket `socket` that drops every segment opening a
/// new handshake (SYN without ACK): the kernel answers no new client, while the handshakes it
/// has already answered complete and land in the accept queue, and the connections there stay
/// to be accepted.
pub(super) fn refuse_new_handshakes(socket: RawFd) -> io::Result<()> {
    // SAFETY: `socket` is a listening socket this process holds open for the whole call.
    let socket = unsafe { BorrowedFd::borrow_raw(socket) };
    SockRef::from(&socket).attach_filter(&REFUSE_SYN)
}

/// The connections on their way to a listening socket's accept loop.
pub(super) struct Queues {
    socket: RawFd,
    /// The address the socket is bound to (an unspecified address matches every local one).
    local: SocketAddr,
    /// Where handshakes under way are counted; `None` when it cannot be opened (then only the
    /// accept queue is waited for, as it was before the count).
    diag: Option<netlink_sys::Socket>,
}

impl Queues {
    /// The queues of the listening socket `socket`.
    pub(super) fn of(socket: RawFd) -> io::Result<Self> {
        // SAFETY: as in `refuse_new_handshakes`.
        let borrowed = unsafe { BorrowedFd::borrow_raw(socket) };
        let local = SockRef::from(&borrowed)
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))?;
        let diag = match diag_socket() {
            Ok(diag) => Some(diag),
            Err(error) => {
                tracing::warn!(%error, "cannot count handshakes under way (sock_diag): a client whose handshake completes as the listener closes may be reset");
                None
            }
        };
        Ok(Self {
            socket,
            local,
            diag,
        })
    }

    /// Connections still to be accepted: handshakes under way, then completed connections.
    /// Read in that order, so a handshake completing between the two reads is counted by the
    /// second: with new handshakes refused, a zero from both means nothing can arrive later.
    pub(super) fn len(&mut self) -> io::Result<u32> {
        let half_open = match &self.diag {
            Some(diag) => match half_open(diag, self.local) {
                Ok(count) => count,
                Err(error) => {
                    tracing::warn!(%error, "cannot count handshakes under way (sock_diag)");
                    self.diag = None;
                    0
                }
            },
            None => 0,
        };
        Ok(half_open + accept_queue_length(self.socket)?)
    }
}

/// How a wait for the queues to empty ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QueueWait {
    /// Every queued connection was taken (or the queues could not be read).
    Emptied,
    /// The accept loop took nothing for the stall bound.
    Stalled,
    /// The drain's deadline came first.
    Deadline,
}

/// Waits for the accept loop to take every connection on its way to `queues`: while they
/// shrink, however long that takes, up to `deadline`; it gives up once they have not shrunk
/// for `stall` (nothing takes the connections, or a handshake's client has gone: waiting longer
/// saves none).
pub(super) async fn wait_for_empty_queues(
    queues: &mut Queues,
    deadline: tokio::time::Instant,
    stall: Duration,
) -> QueueWait {
    let started = tokio::time::Instant::now();
    let mut fewest = u32::MAX;
    let mut last_taken = started;
    loop {
        let queued = match queues.len() {
            Ok(0) | Err(_) => return QueueWait::Emptied,
            Ok(queued) => queued,
        };
        let now = tokio::time::Instant::now();
        if queued < fewest {
            fewest = queued;
            last_taken = now;
        }
        if now >= deadline {
            tracing::warn!(queued, waited = ?now - started, "connections still queued at the drain deadline when the listener closes");
            return QueueWait::Deadline;
        }
        if now - last_taken >= stall {
            tracing::warn!(queued, waited = ?now - started, "connections still queued when the listener closes: the accept loop took none for {stall:?}");
            return QueueWait::Stalled;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How many completed connections wait in the accept queue of the listening TCP socket
/// `socket` (Linux reports it as `tcpi_unacked` of a listener's `TCP_INFO`).
pub(super) fn accept_queue_length(socket: RawFd) -> io::Result<u32> {
    // SAFETY: an all-zero tcp_info is valid; the kernel fills at most `length` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a live buffer of `length` bytes.
    let result = unsafe {
        libc::getsockopt(
            socket,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut length,
        )
    };
    if result == 0 {
        Ok(info.tcpi_unacked)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A `NETLINK_SOCK_DIAG` socket, what `ss` asks. Its reads time out: they block the stop's
/// task, and a kernel that never finished a dump must not hold the stop past its deadline (the
/// count then fails, and the stop waits on the accept queue alone).
fn diag_socket() -> io::Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_SOCK_DIAG)?;
    SockRef::from(&socket).set_read_timeout(Some(Duration::from_millis(500)))?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// How many handshakes under way (`SYN_RECV`) have `local` as their local address: the SYN was
/// answered, the client's ACK not yet read. Both families are asked: an IPv6 socket listening
/// on every address takes IPv4 handshakes as IPv4 ones.
fn half_open(diag: &netlink_sys::Socket, local: SocketAddr) -> io::Result<u32> {
    let mut count = 0;
    for family in [AF_INET, AF_INET6] {
        if family == AF_INET6 && local.is_ipv4() {
            continue;
        }
        dump_syn_recv(diag, family, |id| {
            if id.source_port == local.port() && same_host(local.ip(), id.source_address) {
                count += 1;
            }
        })?;
    }
    Ok(count)
}

/// Whether a connection's local address `connection` is one the listener bound to `listener`
/// takes (an unspecified address takes every one; an IPv4 address may be seen v4-mapped).
fn same_host(listener: IpAddr, connection: IpAddr) -> bool {
    listener.is_unspecified() || listener.to_canonical() == connection.to_canonical()
}

/// Asks the kernel for every TCP socket of `family` in `SYN_RECV` and hands each one's id to
/// `each`.
fn dump_syn_recv(
    diag: &netlink_sys::Socket,
    family: u8,
    mut each: impl FnMut(&SocketId),
) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::SYN_RECV,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    diag.send(&bytes, 0)?;
    loop {
        let (datagram, _) = diag.recv_from_full()?;
        let mut rest = &datagram[..];
        while !rest.is_empty() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(rest)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    each(&response.header.socket_id);
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(error) => return Err(error.to_io()),
                _ => {}
            }
            if length == 0 || length > rest.len() {
                break;
            }
            // Messages in a datagram are aligned to 4 bytes.
            rest = &rest[length.next_multiple_of(4).min(rest.len())..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    /// The raw descriptor of a listener (the tests hold std listeners).
    fn raw(listener: &impl AsRawFd) -> RawFd {
        listener.as_raw_fd()
    }

    /// Polls `condition` until it holds, for at most 5 s.
    fn until(what: &str, mut condition: impl FnMut() -> bool) {
        let started = Instant::now();
        while !condition() {
            assert!(started.elapsed() < Duration::from_secs(5), "never: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_closing_listener_keeps_its_queued_connections_and_completes_no_new_one() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let queued: Vec<_> = (0..3)
            .map(|_| TcpStream::connect(address).unwrap())
            .collect();
        until("3 queued", || {
            accept_queue_length(raw(&listener)).unwrap() == 3
        });
        refuse_new_handshakes(raw(&listener)).unwrap();
        // A new client gets no handshake (its SYN goes unanswered)...
        let late = TcpStream::connect_timeout(&address, Duration::from_millis(300));
        assert!(late.is_err(), "a handshake completed after the door closed");
        // ...while the queued ones are still there to be accepted, and counted down.
        for _ in &queued {
            listener.accept().unwrap();
        }
        assert_eq!(accept_queue_length(raw(&listener)).unwrap(), 0);
    }

    /// A listener that leaves a handshake half open until the client's first data arrives
    /// (`TCP_DEFER_ACCEPT`): the moment between the server's SYN-ACK and its reading of the
    /// client's ACK, held still.
    fn deferring_listener() -> TcpListener {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let seconds: libc::c_int = 30;
        // SAFETY: a live socket, and a c_int option of its size.
        let result = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&raw const seconds).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(result, 0, "{}", io::Error::last_os_error());
        listener
    }

    #[test]
    fn a_handshake_under_way_when_the_door_closes_completes_and_is_counted_until_accepted() {
        let listener = deferring_listener();
        let address = listener.local_addr().unwrap();
        let mut queues = Queues::of(raw(&listener)).unwrap();
        assert_eq!(queues.len().unwrap(), 0);
        // The client's connect returns at the SYN-ACK; the server has not completed it.
        let mut client = TcpStream::connect(address).unwrap();
        until("the handshake is counted", || queues.len().unwrap() == 1);
        assert_eq!(accept_queue_length(raw(&listener)).unwrap(), 0);

        refuse_new_handshakes(raw(&listener)).unwrap();
        // The client writes its request, as a client does right after connecting: the segment
        // completes the handshake (a filter dropping everything dropped it, and the close
        // reset the connection with its request).
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut accepted = None;
        until("the handshake completes", || {
            accepted = listener.accept().ok();
            accepted.is_some()
        });
        let (mut accepted, _) = accepted.unwrap();
        accepted.set_nonblocking(false).unwrap();
        let mut request = [0; 18];
        accepted.read_exact(&mut request).unwrap();
        assert_eq!(&request, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(queues.len().unwrap(), 0);
    }

    #[test]
    fn handshakes_are_counted_for_their_own_listener_only() {
        let listener = deferring_listener();
        let other = deferring_listener();
        let _one = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _two = TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let _three = TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let mut queues = Queues::of(raw(&listener)).unwrap();
        let mut others = Queues::of(raw(&other)).unwrap();
        until("both counted", || {
            queues.len().unwrap() == 1 && others.len().unwrap() == 2
        });
    }

    #[test]
    fn an_unspecified_listener_takes_every_local_address_and_a_mapped_one_is_the_same_host() {
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(same_host(any, loopback));
        assert!(same_host("::".parse().unwrap(), loopback));
        assert!(same_host(loopback, mapped));
        assert!(!same_host(loopback, "127.0.0.2".parse().unwrap()));
    }

    /// A listener with `count` completed connections waiting in its accept queue (and the
    /// clients, kept open).
    fn queued_listener(count: usize) -> (TcpListener, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let clients: Vec<_> = (0..count)
            .map(|_| TcpStream::connect(address).unwrap())
            .collect();
        until("queued", || {
            accept_queue_length(raw(&listener)).unwrap() == count as u32
        });
        (listener, clients)
    }

    #[tokio::test]
    async fn a_queue_taken_slowly_is_waited_for_past_the_stall_bound_while_it_shrinks() {
        let (listener, _clients) = queued_listener(20);
        let mut queues = Queues::of(raw(&listener)).unwrap();
        // A slow accept loop: one connection every 25 ms, 500 ms in all, past the stall bound;
        // a fixed bound of that length would have left the rest of the queue to be reset. Each
        // step is a tenth of the bound, so a loaded machine's scheduling does not fake a stall.
        let stall = Duration::from_millis(300);
        let accepting = std::thread::spawn(move || {
            let mut accepted = Vec::new();
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(25));
                accepted.push(listener.accept().unwrap());
            }
            accepted.len()
        });
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let ended = wait_for_empty_queues(&mut queues, deadline, stall).await;
        assert_eq!(ended, QueueWait::Emptied);
        assert!(started.elapsed() > stall, "{:?}", started.elapsed());
        assert_eq!(accepting.join().unwrap(), 20);
    }

    #[tokio::test]
    async fn a_queue_nobody_takes_is_given_up_after_the_stall_bound() {
        let (listener, _clients) = queued_listener(3);
        let mut queues = Queues::of(raw(&listener)).unwrap();
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let stall = Duration::from_millis(100);
        let ended = wait_for_empty_queues(&mut queues, deadline, stall).await;
        assert_eq!(ended, QueueWait::Stalled);
        let waited = started.elapsed();
        assert!(
            waited >= stall && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        assert_eq!(accept_queue_length(raw(&listener)).unwrap(), 3);
    }

    #[tokio::test]
    async fn a_half_open_handshake_whose_client_never_acks_is_given_up_after_the_stall_bound() {
        let listener = deferring_listener();
        let _silent = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut queues = Queues::of(raw(&listener)).unwrap();
        until("counted", || queues.len().unwrap() == 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let ended = wait_for_empty_queues(&mut queues, deadline, Duration::from_millis(100)).await;
        assert_eq!(ended, QueueWait::Stalled);
    }

    #[tokio::test]
    async fn a_queue_still_shrinking_at_the_drain_deadline_is_left_then() {
        let (listener, _clients) = queued_listener(2);
        let mut queues = Queues::of(raw(&listener)).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        let ended = wait_for_empty_queues(&mut queues, deadline, Duration::from_secs(30)).await;
        assert_eq!(ended, QueueWait::Deadline);
    }
}
