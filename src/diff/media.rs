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
        let mut parts = split_unquoted(value, ';').into_iter();
        let essence = parts.next()?.trim().to_ascii_lowercase();
        let (kind, subtype) = essence.split_once('/')?;
        if kind.is_empty() || subtype.is_empty() || subtype.contains('/') {
            return None;
        }
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
        self.essence.ends_with("/json") || self.essence.ends_with("+json")
    }

    pub fn is_text(&self) -> bool {
        self.essence.starts_with("text/")
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

fn split_unquoted(value: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (index, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&value[start..index]);
                start = index + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
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
    fn json_and_text_are_recognised() {
        let json = MediaType::parse("application/vnd.api+json; charset=utf-8").unwrap();
        assert!(json.is_json() && !json.is_text());
        assert!(MediaType::parse("TEXT/Plain").unwrap().is_text());
        assert!(MediaType::parse("application/octet-stream").is_some_and(|m| !m.is_json()));
        assert_eq!(MediaType::parse("json"), None);
    }
}
