//! The corpus file: JSON Lines, one request per line, for people to read, edit and commit.
//!
//! ```json
//! {"version":1,"recorded_at":"2026-12-02T12:00:00.123Z","route":"users","method":"GET","target":"/api/users/7?page=2","headers":[["accept","application/json"]]}
//! {"version":1,"route":"upload","method":"PUT","target":"/files/a","body_base64":"iVBORw0KGgo="}
//! ```
//!
//! `target` is the path and query (origin form: it must start with `/`, so a line can never
//! name a host of its own); `headers` are `[name, value]` pairs in order, duplicates allowed; the
//! body is `body` (text) or `body_base64` (anything else), at most one. A header whose value is
//! still `[redacted]` is not sent by a replay (put a test credential there to send one). Blank
//! lines and lines starting with `#` are skipped. `version` is [`VERSION`]; a reader refuses
//! versions it does not know.
//!
//! [`parse`] checks the whole file before anything is sent and names every bad line.

use std::fmt;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};

use crate::redact::REDACTED;
use crate::store::corpus::RecordedRequest;

/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// Errors listed per file; the rest are counted.
const MAX_LISTED: usize = 20;

/// One line as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusLine {
    pub version: u32,
    /// RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<String>,
    /// The route that recorded it; informative (a replay with `--routes` matches again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    pub method: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

impl CorpusLine {
    /// A stored recording as a line: the body as text when it is UTF-8, else base64.
    pub fn from_recorded(recorded: &RecordedRequest) -> Self {
        let (body, body_base64) = if recorded.body.is_empty() {
            (None, None)
        } else {
            match std::str::from_utf8(&recorded.body) {
                Ok(text) => (Some(text.to_owned()), None),
                Err(_) => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(&recorded.body)),
                ),
            }
        };
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(recorded.at_ms).unwrap_or(0));
        Self {
            version: VERSION,
            recorded_at: Some(humantime::format_rfc3339_millis(at).to_string()),
            route: Some(recorded.route.clone()),
            method: recorded.method.clone(),
            target: recorded.target.clone(),
            headers: recorded.headers.clone(),
            body,
            body_base64,
        }
    }

    /// The line, without its newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("corpus lines serialize")
    }
}

/// A checked request, ready to send.
#[derive(Debug, Clone)]
pub struct CorpusRequest {
    /// Its line in the file (from 1).
    pub line: usize,
    pub route: Option<String>,
    pub method: Method,
    /// Path and query.
    pub target: String,
    /// Without the headers still `[redacted]`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// What is wrong with a corpus: every bad line, with its number.
#[derive(Debug)]
pub struct CorpusError {
    pub file: String,
    /// (line, message), in file order.
    pub lines: Vec<(usize, String)>,
}

impl std::error::Error for CorpusError {}

impl fmt::Display for CorpusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (number, message) in self.lines.iter().take(MAX_LISTED) {
            writeln!(f, "{}:{number}: {message}", self.file)?;
        }
        if self.lines.len() > MAX_LISTED {
            writeln!(
                f,
                "{}: and {} more bad lines",
                self.file,
                self.lines.len() - MAX_LISTED
            )?;
        }
        write!(
            f,
            "{}: {} bad line(s); nothing was sent",
            self.file,
            self.lines.len()
        )
    }
}

/// Checks every line of `text` (named `file` in messages); any bad line fails the whole corpus.
/// Only `methods` may be sent.
pub fn parse(
    file: &str,
    text: &str,
    methods: &[Method],
) -> Result<Vec<CorpusRequest>, CorpusError> {
    let mut requests = Vec::new();
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(trimmed, methods) {
            Ok(mut request) => {
                request.line = number;
                requests.push(request);
            }
            Err(message) => lines.push((number, message)),
        }
    }
    if lines.is_empty() && requests.is_empty() {
        lines.push((0, "no requests in the corpus".to_owned()));
    }
    if lines.is_empty() {
        Ok(requests)
    } else {
        Err(CorpusError {
            file: file.to_owned(),
            lines,
        })
    }
}

fn parse_line(line: &str, methods: &[Method]) -> Result<CorpusRequest, String> {
    let parsed: CorpusLine =
        serde_json::from_str(line).map_err(|error| format!("not a corpus line: {error}"))?;
    if parsed.version != VERSION {
        return Err(format!(
            "version {} is not one this strangler reads ({VERSION})",
            parsed.version
        ));
    }
    let method = Method::from_bytes(parsed.method.as_bytes())
        .map_err(|_| format!("method: `{}` is not an HTTP method", parsed.method))?;
    if !methods.contains(&method) {
        let allowed: Vec<&str> = methods.iter().map(Method::as_str).collect();
        return Err(format!(
            "method: {method} is not allowed (allowed: {}; add it with --methods to send it on purpose)",
            allowed.join(", ")
        ));
    }
    if !parsed.target.starts_with('/') || parsed.target.parse::<http::uri::PathAndQuery>().is_err()
    {
        return Err(format!(
            "target: `{}` is not a path and query starting with `/` (a corpus never names a host)",
            parsed.target
        ));
    }
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for (name, value) in &parsed.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("headers: `{name}` is not a header name"))?;
        if value == REDACTED {
            continue;
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("headers: the value of {name} is not a header value"))?;
        headers.push((name, value));
    }
    let body = match (parsed.body, parsed.body_base64) {
        (Some(_), Some(_)) => {
            return Err("has both `body` and `body_base64`: keep one".to_owned());
        }
        (Some(text), None) => Bytes::from(text),
        (None, Some(encoded)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|error| format!("body_base64: {error}"))?,
        ),
        (None, None) => Bytes::new(),
    };
    Ok(CorpusRequest {
        line: 0,
        route: parsed.route,
        method,
        target: parsed.target,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAFE: [Method; 3] = [Method::GET, Method::HEAD, Method::OPTIONS];

    #[test]
    fn a_recording_round_trips_through_a_line() {
        let recorded = RecordedRequest {
            at_ms: 1_700_000_000_123,
            route: "users".into(),
            method: "GET".into(),
            target: "/u/1?token=[redacted]".into(),
            headers: vec![
                ("accept".into(), "application/json".into()),
                ("authorization".into(), REDACTED.into()),
            ],
            body: vec![0xff, 0x00, 0x10],
        };
        let line = CorpusLine::from_recorded(&recorded).to_json();
        assert!(
            line.contains(r#""recorded_at":"2023-11-14T22:13:20.123Z""#),
            "{line}"
        );
        assert!(line.contains(r#""body_base64":"/wAQ""#), "{line}");
        let parsed = parse("c.jsonl", &line, &SAFE).unwrap();
        assert_eq!(parsed.len(), 1);
        let request = &parsed[0];
        assert_eq!(request.line, 1);
        assert_eq!(request.target, "/u/1?token=[redacted]");
        assert_eq!(&request.body[..], &[0xff, 0x00, 0x10]);
        assert_eq!(
            request.headers.len(),
            1,
            "a header still redacted is not sent"
        );
    }

    #[test]
    fn text_bodies_stay_readable() {
        let recorded = RecordedRequest {
            at_ms: 0,
            route: "r".into(),
            method: "POST".into(),
            target: "/".into(),
            headers: Vec::new(),
            body: br#"{"a":1}"#.to_vec(),
        };
        let line = CorpusLine::from_recorded(&recorded).to_json();
        assert!(line.contains(r#""body":"{\"a\":1}""#), "{line}");
    }

    #[test]
    fn every_bad_line_is_named_with_its_number() {
        let text = [
            r#"{"version":1,"method":"GET","target":"/ok"}"#,
            "",
            "# a comment",
            r#"{"version":1,"method":"GET","target":"/ok""#,
            r#"{"version":2,"method":"GET","target":"/"}"#,
            r#"{"version":1,"method":"POST","target":"/"}"#,
            r#"{"version":1,"method":"GET","target":"http://elsewhere/"}"#,
            r#"{"version":1,"method":"GET","target":"/","body":"a","body_base64":"YQ=="}"#,
            r#"{"version":1,"method":"GET","target":"/","extra":1}"#,
        ]
        .join("\n");
        let error = parse("c.jsonl", &text, &SAFE).unwrap_err();
        let numbers: Vec<usize> = error.lines.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [4, 5, 6, 7, 8, 9]);
        let shown = error.to_string();
        assert!(shown.contains("c.jsonl:4: not a corpus line"), "{shown}");
        assert!(
            shown.contains("c.jsonl:6: method: POST is not allowed"),
            "{shown}"
        );
        assert!(shown.contains("nothing was sent"), "{shown}");
    }

    #[test]
    fn unsafe_methods_are_sent_only_when_allowed() {
        let line = r#"{"version":1,"method":"POST","target":"/","body":"x"}"#;
        assert!(parse("c", line, &SAFE).is_err());
        let parsed = parse("c", line, &[Method::POST]).unwrap();
        assert_eq!(parsed[0].method, Method::POST);
    }

    #[test]
    fn an_empty_corpus_is_an_error() {
        assert!(parse("c", "\n# nothing\n", &SAFE).is_err());
    }
}
