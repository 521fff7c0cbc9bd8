//! JSON documents as the comparison walks them: a tree that borrows its strings and keys from
//! the body it was parsed from, with each object's members in a sorted `Vec`.
//!
//! `serde_json::Value` allocates a `String` per key and per string and a B-tree per object, and
//! frees them all again: for a 100 KiB document of small records that was most of a
//! comparison's time. This tree allocates one `Vec` per object and per array and nothing for a
//! string without escapes. It compares, prints and orders like `Value` (without serde_json's
//! `preserve_order`): members sorted by key, a key given twice keeps its last value, strings by
//! their decoded text (`"\u00e9"` is `"é"`), numbers as `serde_json::Number`. Parsing is
//! serde_json's own parser (same errors, same recursion limit); only the tree it builds differs.
//!
//! This module owns the tree, not what is compared in it ([`super::compare`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Number;

/// One JSON value; strings and keys borrow from the parsed text when they have no escapes.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Members sorted by key, each key once.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses `bytes` as one JSON document (trailing whitespace only), borrowing from it.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        // One UTF-8 check of the whole body, then serde_json's `str` reader, which checks no
        // string again: the slice reader validates every string and key on its own (a fifth of
        // a parse's instructions). A body that is not UTF-8 goes through the slice reader for
        // its exact error.
        match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(bytes),
        }
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(members) => members
                .binary_search_by(|(member, _)| member.as_ref().cmp(key))
                .ok()
                .map(|at| &members[at].1),
            _ => None,
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    pub fn is_array(&self) -> bool {
        matches!(self, Json::Array(_))
    }

    /// The same tree owning all its text, so it outlives the bytes it was parsed from.
    pub fn into_owned(self) -> Json<'static> {
        let owned = |text: Cow<'a, str>| Cow::Owned(text.into_owned());
        match self {
            Json::Null => Json::Null,
            Json::Bool(b) => Json::Bool(b),
            Json::Number(n) => Json::Number(n),
            Json::String(s) => Json::String(owned(s)),
            Json::Array(items) => Json::Array(items.into_iter().map(Json::into_owned).collect()),
            Json::Object(members) => Json::Object(
                members
                    .into_iter()
                    .map(|(key, value)| (owned(key), value.into_owned()))
                    .collect(),
            ),
        }
    }
}

/// Compact JSON, as `serde_json::Value` prints it (keys in order).
impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(members) => {
                let mut map = serializer.serialize_map(Some(members.len()))?;
                for (key, value) in members {
                    map.serialize_entry(key.as_ref(), value)?;
                }
                map.end()
            }
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Json<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

/// Members an object's `Vec` starts with room for.
const OBJECT_CAPACITY: usize = 8;

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Json::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Json::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Self::Value, E> {
        // As `Value` does: a float JSON cannot hold is null.
        Ok(Number::from_f64(value).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Borrowed(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Owned(value)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        Deserialize::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // serde_json gives no size hint: room for a typical record's members up front is one
        // allocation instead of a doubling per few members.
        let mut members: Vec<(Cow<'de, str>, Json<'de>)> =
            Vec::with_capacity(map.size_hint().unwrap_or(OBJECT_CAPACITY));
        while let Some(Key(key)) = map.next_key()? {
            let value = map.next_value()?;
            members.push((key, value));
        }
        if !members.is_sorted_by(|a, b| a.0 < b.0) {
            // Stable: of a key given twice, the later stays after the earlier…
            members.sort_by(|a, b| a.0.cmp(&b.0));
            // …and wins, as in a map that overwrites.
            members.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    std::mem::swap(&mut later.1, &mut kept.1);
                }
                same
            });
        }
        Ok(Json::Object(members))
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }

            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(value)))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(value.to_owned())))
            }

            fn visit_string<E: de::Error>(self, value: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(value)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every document prints as `serde_json::Value` prints it: same order, same numbers, same
    /// escapes.
    #[test]
    fn a_document_prints_as_serde_json_prints_it() {
        for text in [
            r#"{"b":1,"a":[1,2.5,-3,1e3,null,true,"x"],"c":{"z":"\u00e9\n\"q\"","y":{}}}"#,
            r#"[18446744073709551615,-9223372036854775808,0.1,1.0]"#,
            r#""é \ud83d\ude00 \t""#,
            r#"{"k":1,"k":2,"a":0,"k":3}"#,
            "  null ",
        ] {
            let ours = Json::parse(text.as_bytes()).unwrap();
            let theirs: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours.to_string(), theirs.to_string(), "{text}");
        }
    }

    #[test]
    fn strings_without_escapes_borrow_and_escaped_ones_decode() {
        let json = Json::parse(br#"{"plain":"abc","esc\u0061ped":"\u00e9"}"#).unwrap();
        let Json::Object(members) = &json else {
            panic!("{json:?}")
        };
        assert!(matches!(members[0].0, Cow::Owned(_)), "{members:?}");
        assert_eq!(members[0].0, "escaped");
        assert_eq!(members[0].1, Json::String(Cow::Borrowed("é")));
        assert!(matches!(members[1].0, Cow::Borrowed("plain")));
        assert!(matches!(&members[1].1, Json::String(Cow::Borrowed("abc"))));
    }

    #[test]
    fn a_key_given_twice_keeps_its_last_value_and_get_finds_members() {
        let json = Json::parse(br#"{"k":1,"b":true,"k":2}"#).unwrap();
        assert_eq!(json.get("k"), Some(&Json::Number(2.into())));
        assert_eq!(json.get("b"), Some(&Json::Bool(true)));
        assert_eq!(json.get("a"), None);
        assert_eq!(Json::Null.get("k"), None);
    }

    #[test]
    fn bad_documents_fail_as_serde_json_fails() {
        for text in ["{", "[1,]", "{\"a\":1} x", "\"\\ud800\"", "nul"] {
            let ours = Json::parse(text.as_bytes()).map(|_| ()).unwrap_err();
            let theirs = serde_json::from_str::<serde_json::Value>(text).unwrap_err();
            assert_eq!(ours.to_string(), theirs.to_string(), "{text}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(Json::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn an_owned_copy_is_equal() {
        let text = String::from(r#"{"a":["x",{"b":"y"}]}"#);
        let owned = Json::parse(text.as_bytes()).unwrap().into_owned();
        drop(text);
        assert_eq!(owned.get("a").map(Json::is_array), Some(true));
        assert_eq!(owned.to_string(), r#"{"a":["x",{"b":"y"}]}"#);
    }
}
