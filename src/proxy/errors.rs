//! The error taxonomy: what a client sees (status and [`Reason`]) when Pingora reports a
//! failure, by where it came from (upstream, downstream, internal) and what it was.
//!
//! A refusal the proxy decided itself (a limit, a deadline, no healthy backend) is kept on the
//! request's context and wins over this classification; rendering the answer is
//! [`crate::response`]'s.

use pingora_error::{Error, ErrorSource, ErrorType};

use crate::vocabulary::Reason;

/// The status a client sees for a failed request (0: nobody to answer), and a short
/// machine-readable reason.
pub fn classify(error: &Error) -> (u16, Reason) {
    use ErrorType::*;
    match (error.esource(), error.etype()) {
        (_, HTTPStatus(code)) => (*code, Reason::HttpStatus),
        (ErrorSource::Upstream, ConnectTimedout) => (504, Reason::ConnectTimeout),
        (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => (504, Reason::UpstreamTimeout),
        (ErrorSource::Upstream, ConnectRefused) => (502, Reason::ConnectRefused),
        (ErrorSource::Upstream, ConnectNoRoute | ConnectError | SocketError) => {
            (502, Reason::ConnectError)
        }
        // The backend's certificate did not verify (unknown CA, wrong name), or TLS failed.
        (ErrorSource::Upstream, TLSHandshakeFailure | InvalidCert | TLSHandshakeTimedout) => {
            (502, Reason::UpstreamTls)
        }
        (ErrorSource::Upstream, ConnectionClosed) => (502, Reason::UpstreamClosed),
        // The backend's answer did not parse (garbage, conflicting lengths): Pingora refused it.
        (ErrorSource::Upstream, InvalidHTTPHeader) => (502, Reason::UpstreamBadResponse),
        (ErrorSource::Upstream, _) => (502, Reason::UpstreamError),
        // The client is gone: nobody to answer.
        (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => {
            (0, Reason::ClientGone)
        }
        (ErrorSource::Downstream, ReadTimedout) => (408, Reason::ClientTimeout),
        (ErrorSource::Downstream, _) => (400, Reason::BadRequest),
        (ErrorSource::Internal | ErrorSource::Unset, _) => (500, Reason::InternalError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorType::*;

    #[test]
    fn upstream_failures_are_502_or_504_by_what_failed() {
        for (etype, expected) in [
            (ConnectTimedout, (504, Reason::ConnectTimeout)),
            (ReadTimedout, (504, Reason::UpstreamTimeout)),
            (WriteTimedout, (504, Reason::UpstreamTimeout)),
            (ConnectRefused, (502, Reason::ConnectRefused)),
            (ConnectNoRoute, (502, Reason::ConnectError)),
            (TLSHandshakeFailure, (502, Reason::UpstreamTls)),
            (InvalidCert, (502, Reason::UpstreamTls)),
            (ConnectionClosed, (502, Reason::UpstreamClosed)),
            (InvalidHTTPHeader, (502, Reason::UpstreamBadResponse)),
            (H2Error, (502, Reason::UpstreamError)),
        ] {
            assert_eq!(
                classify(&Error::new_up(etype.clone())),
                expected,
                "{etype:?}"
            );
        }
    }

    #[test]
    fn every_fixed_status_agrees_with_its_reason() {
        for etype in [
            ConnectTimedout,
            ReadTimedout,
            ConnectRefused,
            ConnectionClosed,
        ] {
            let (status, reason) = classify(&Error::new_up(etype));
            assert_eq!(reason.status(), Some(status));
        }
    }

    #[test]
    fn a_client_gone_gets_no_answer_and_a_slow_one_a_408() {
        assert_eq!(
            classify(&Error::new_down(ConnectionClosed)),
            (0, Reason::ClientGone)
        );
        assert_eq!(
            classify(&Error::new_down(ReadTimedout)),
            (408, Reason::ClientTimeout)
        );
        assert_eq!(
            classify(&Error::new_down(InvalidHTTPHeader)),
            (400, Reason::BadRequest)
        );
    }

    #[test]
    fn a_failure_with_its_own_status_keeps_it_wherever_it_came_from() {
        assert_eq!(
            classify(&Error::new_in(HTTPStatus(413))),
            (413, Reason::HttpStatus)
        );
        assert_eq!(
            classify(&Error::new_up(HTTPStatus(503))),
            (503, Reason::HttpStatus)
        );
        assert_eq!(
            classify(&Error::new_in(InternalError)),
            (500, Reason::InternalError)
        );
    }
}
