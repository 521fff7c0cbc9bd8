//! The request id (`x-request-id`): a client's usable id is kept, anything else replaced by a
//! fresh one (minted in [`crate::connection`], which refuses connections with ids too), so logs,
//! spans, stored diffs and the answer all name the request the same way.

use http::HeaderValue;
use pingora_http::RequestHeader;

use crate::connection;
use crate::response::{REQUEST_ID, REQUEST_ID_NAME};

/// Longest client-supplied request id we pass through; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 200;

/// The request's id: the client's when acceptable, else a new one, written into the request so
/// backends and the copy see the same.
pub fn adopt(request: &mut RequestHeader) -> HeaderValue {
    match request.headers.get(REQUEST_ID) {
        Some(id) if is_acceptable(id) => id.clone(),
        _ => {
            let id = connection::new_request_id();
            request.insert_header_cased(&REQUEST_ID, REQUEST_ID_NAME, id.clone());
            id
        }
    }
}

/// Printable ASCII without spaces, not empty, not too long: safe in a log line and a header.
fn is_acceptable(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID_LEN && bytes.iter().all(u8::is_ascii_graphic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_uuids() {
        let id = connection::new_request_id();
        assert_eq!(id.len(), 36);
        assert!(is_acceptable(&id));
        assert!(!is_acceptable(&HeaderValue::from_static("has space")));
    }

    #[test]
    fn a_usable_client_id_is_kept_and_a_bad_one_replaced() {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        request.insert_header("x-request-id", "abc-123").unwrap();
        assert_eq!(adopt(&mut request), "abc-123");

        let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        request
            .insert_header("x-request-id", long.as_str())
            .unwrap();
        let id = adopt(&mut request);
        assert_eq!(id.len(), 36);
        assert_eq!(request.headers["x-request-id"], id);

        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        let id = adopt(&mut request);
        assert_eq!(request.headers["x-request-id"], id);
    }
}
