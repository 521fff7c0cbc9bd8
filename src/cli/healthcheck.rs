//! `strangler healthcheck`: asks a running proxy's admin API whether it is ready, for container
//! HEALTHCHECKs (the image has no curl). Exit 0 when `GET /readyz` answers 200, 1 otherwise.
//!
//! A plain blocking HTTP/1.1 request on one connection, bounded by a timeout: a health check
//! must answer quickly even when the proxy hangs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// Runs the check against `admin` (`HOST:PORT`), waiting `timeout` at most per step.
pub fn healthcheck(admin: &str, path: &str, timeout: Duration) -> ExitCode {
    match ready(admin, path, timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("strangler healthcheck: {admin}{path}: {problem}");
            ExitCode::FAILURE
        }
    }
}

fn ready(admin: &str, path: &str, timeout: Duration) -> Result<(), String> {
    let address: SocketAddr = admin
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve: {error}"))?
        .next()
        .ok_or("resolves to no address")?;
    let mut stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|error| error.to_string())?;
    // An IP address as Host: the admin API refuses unknown host names (DNS rebinding).
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|error| error.to_string())?;
    let mut head = [0u8; 64];
    let read = stream.read(&mut head).map_err(|error| error.to_string())?;
    let status_line = String::from_utf8_lossy(&head[..read]);
    let status = status_line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| format!("not an HTTP answer: {status_line:?}"))?;
    if status == "200" {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_listening_is_unhealthy() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        assert!(ready(&address, "/readyz", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_200_is_healthy_and_a_503_is_not() {
        for (answer, healthy) in [("HTTP/1.1 200 OK", true), ("HTTP/1.1 503 No", false)] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let server = std::thread::spawn(move || {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request).unwrap();
                write!(stream, "{answer}\r\ncontent-length: 0\r\n\r\n").unwrap();
            });
            assert_eq!(
                ready(&address, "/readyz", Duration::from_secs(2)).is_ok(),
                healthy
            );
            server.join().unwrap();
        }
    }
}
