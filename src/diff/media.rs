//! `Content-Type` by meaning (RFC 9110 §8.3): `application/json` and
//! `Application/JSON; Charset="UTF-8"` say the same thing, so they are not a difference.

use std::collections::BTreeMap;

/// A parsed media type: lowercase type and subtype, parameters by lowercase name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    pub essence: String,
    parameters: BTreeMap<String, String>,
}

impl MediaType {
    /// `None` when `value` has no `type/subtype`.
    pub fn parse(value: &str) -> Option<Self> {
        let (essence, parts) = essence_and_parameters(value)?;
        let essence = essence.to_ascii_lowercase();
        let mut parameters = BTreeMap::new();
        for parameter in parts {
            let Some((name, value)) = parameter.split_once('=') else {
                continue;
            };
            let name = name.trim().to_ascii_lowercase();
            let mut value = unquote(value.trim());
            if name == "charset" {
                value = value.to_ascii_lowercase();
            }
            parameters.insert(name, value);
        }
        let mut media = Self {
            essence,
            parameters,
        };
        // JSON is UTF-8 (RFC 8259 §8.1): saying so changes nothing.
        if media.is_json() && media.parameters.get("charset").map(String::as_str) == Some("utf-8") {
            media.parameters.remove("charset");
        }
        // A multipart boundary is chosen per message; it says nothing about the content.
        media.parameters.remove("boundary");
        Some(media)
    }

    /// `application/json`, `application/problem+json`, `text/json`.
    pub fn is_json(&self) -> bool {
        BodyKind::of_essence(&self.essence).json
    }

    pub fn is_text(&self) -> bool {
        BodyKind::of_essence(&self.essence).text
    }
}

/// Whether two `Content-Type` values mean the same (both unparseable: equal bytes).
pub fn same_meaning(a: &str, b: &str) -> bool {
    match (MediaType::parse(a), MediaType::parse(b)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => a.trim() == b.trim(),
        _ => false,
    }
}

/// What a `Content-Type` value says of the body it heads: whether it is JSON and whether it is
/// text, as [`MediaType::parse`]'s `is_json` and `is_text` would answer (`false` for a value
/// without a `type/subtype`). Read from the value in place, nothing allocated: it is asked of
/// every answer compared, while the parameters matter only to a `Content-Type` that differs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyKind {
    pub json: bool,
    pub text: bool,
}

impl BodyKind {
    pub fn of(content_type: &str) -> Self {
        essence_and_parameters(content_type)
            .map_or(Self::default(), |(essence, _)| Self::of_essence(essence))
    }

    /// Of a valid `type/subtype`, in any case: ASCII case folding keeps every byte where it is,
    /// so the lowercase essence's prefix and suffix are these bytes, folded.
    fn of_essence(essence: &str) -> Self {
        let bytes = essence.as_bytes();
        let ends_with = |suffix: &[u8]| {
            bytes.len() >= suffix.len()
                && bytes[bytes.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        };
        Self {
            json: ends_with(b"/json") || ends_with(b"+json"),
            text: bytes.len() >= 5 && bytes[..5].eq_ignore_ascii_case(b"text/"),
        }
    }
}

/// A `Content-Type` value's `type/subtype` as written (trimmed, not case-folded: folding moves
/// no `/`), and the text of its parameters; `None` without a valid `type/subtype`.
fn essence_and_parameters(value: &str) -> Option<(&str, impl Iterator<Item = &str>)> {
    let mut parts = split_unquoted(value, b';');
    let essence = parts.next()?.trim();
    let (kind, subtype) = essence.split_once('/')?;
    let valid = !kind.is_empty() && !subtype.is_empty() && !subtype.contains('/');
    valid.then_some((essence, parts))
}

/// The parts of `value` between the `separator`s that stand outside double quotes.
fn split_unquoted(value: &str, separator: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let current = rest?;
        match unquoted(current, separator) {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// Where the first `separator` outside double quotes is (a backslash escapes the next
/// character inside them). At such a separator no quote is open, so the next part starts
/// afresh. Read by bytes: the separator, the quote and the backslash are ASCII, and no byte of
/// a longer character is (an escaped one's other bytes pass as ordinary ones).
fn unquoted(value: &str, separator: u8) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (index, &byte) in value.as_bytes().iter().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if byte == separator && !quoted => return Some(index),
            _ => {}
        }
    }
    None
}

fn unquote(value: &str) -> String {
    match value
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
    {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' {
                    chars.next().unwrap_or(c)
                } else {
                    c
                });
            }
            out
        }
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_compare_by_meaning() {
        for (a, b) in [
            ("application/json", "application/json; charset=utf-8"),
            ("application/json", "Application/JSON;Charset=\"UTF-8\""),
            ("text/html; charset=UTF-8", "text/html;charset=utf-8"),
            (
                "text/plain; format=flowed; charset=utf-8",
                "text/plain; charset=utf-8; format=flowed",
            ),
            (
                "multipart/mixed; boundary=a",
                "multipart/mixed; boundary=\"b\"",
            ),
            (
                "application/problem+json; charset=utf-8",
                "application/problem+json",
            ),
        ] {
            assert!(same_meaning(a, b), "{a} == {b}");
        }
        for (a, b) in [
            ("application/json", "text/json"),
            ("text/html", "text/html; charset=utf-8"),
            ("text/html; charset=iso-8859-1", "text/html; charset=utf-8"),
            ("application/json; charset=utf-16", "application/json"),
            ("text/plain; format=flowed", "text/plain; format=fixed"),
            ("text/plain", "garbage"),
        ] {
            assert!(!same_meaning(a, b), "{a} != {b}");
        }
        assert!(same_meaning("garbage", " garbage"));
    }

    #[test]
    fn a_body_kind_is_what_the_parsed_media_type_says() {
        for value in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
            "application/vnd.api+JSON;x=\"a;b\"",
            "text/json",
            "TEXT/Plain ; charset=x",
            " text/html",
            "text/",
            "/json",
            "json",
            "a/b/json",
            "text/\"x;y\"",
            "application/\"a;b/json\"",
            "text\\/x;a=\"\\\";/json\"",
            "",
            ";",
            "application/octet-stream",
            "täxt/json",
            "application/jsön",
            "multipart/form-data; boundary=\"--;--\"",
            "text/\"\\é;\";/json",
        ] {
            let parsed = MediaType::parse(value).map_or(BodyKind::default(), |media| BodyKind {
                json: media.is_json(),
                text: media.is_text(),
            });
            assert_eq!(BodyKind::of(value), parsed, "{value:?}");
        }
    }

    #[test]
    fn json_and_text_are_recognised() {
        let json = MediaType::parse("application/vnd.api+json; charset=utf-8").unwrap();
        assert!(json.is_json() && !json.is_text());
        assert!(MediaType::parse("TEXT/Plain").unwrap().is_text());
        assert!(MediaType::parse("application/octet-stream").is_some_and(|m| !m.is_json()));
        assert_eq!(MediaType::parse("json"), None);
    }
}
