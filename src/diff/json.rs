//! JSON documents as the comparison walks them: a tree in an arena, with each object's members
//! sorted by key, borrowing its strings and keys from the body where it can.
//!
//! `serde_json::Value` allocates a `String` per key and per string and a B-tree per object, and
//! frees them all again: for a 100 KiB document of small records that was most of a
//! comparison's time. This tree lives in a [`Bump`] arena the caller owns: one slice per object
//! and per array, nothing for a string without escapes, and no walk to free it (the arena goes
//! at once). It compares, prints and orders like `Value` (without serde_json's
//! `preserve_order`): members sorted by key, a key given twice keeps its last value, strings by
//! their decoded text (`"\u00e9"` is `"é"`), numbers as `serde_json::Number`.
//!
//! Reading: the comparison's own scanner ([`super::scan`]) reads what it is sure serde_json
//! reads the same way; anything else (a lone surrogate escape, numbers near f64's limits,
//! nesting deeper than the scanner follows, invalid JSON) is read again by serde_json, for its
//! value or its exact error, and copied into the arena whole (no string borrowed then).
//!
//! This module owns the tree and its reading, not what is compared in it ([`super::compare`]).

use std::cmp::Ordering;
use std::fmt;

use bumpalo::Bump;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Number;

use super::scan::{Scanner, deeper, hex_escape};

/// One JSON value; strings and keys borrow from the parsed text when the scanner read it and
/// they have no escapes, and from the arena otherwise.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(&'a str),
    Array(&'a [Json<'a>]),
    /// Members sorted by key, each key once.
    Object(&'a [(&'a str, Json<'a>)]),
}

impl<'a> Json<'a> {
    /// Parses `bytes` as one JSON document (trailing whitespace only) into `arena`, borrowing
    /// from both.
    pub fn parse(bytes: &'a [u8], arena: &'a Bump) -> Result<Self, serde_json::Error> {
        let mut builder = Builder::new(arena);
        let value: serde_json::Value = match std::str::from_utf8(bytes) {
            Ok(text) => match builder.document(text) {
                Some(tree) => return Ok(tree),
                None => serde_json::from_str(text)?,
            },
            // serde_json's own error for a body that is not UTF-8.
            Err(_) => serde_json::from_slice(bytes)?,
        };
        Ok(builder.copy(&value))
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(members) => members
                .binary_search_by(|(member, _)| (*member).cmp(key))
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
                for item in *items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(members) => {
                let mut map = serializer.serialize_map(Some(members.len()))?;
                for (key, value) in *members {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

/// Keys in the order of `str`'s `Ord` (bytes), told apart by their first byte where it differs
/// without a call to `memcmp`: sorting a record's members and walking two objects side by side
/// compare keys more than anything else.
#[inline]
pub(super) fn key_order(a: &str, b: &str) -> Ordering {
    match (a.as_bytes().first(), b.as_bytes().first()) {
        (Some(x), Some(y)) if x != y => x.cmp(y),
        // Walking two objects side by side mostly meets the same key on both sides.
        _ if same_key(a, b) => Ordering::Equal,
        _ => a.cmp(b),
    }
}

/// Builds trees into an arena. The elements and members of the arrays and objects still open
/// wait on two stacks; each array or object, once closed, is moved off them into one slice of
/// the arena (no `Vec` per node grown by doubling, none to free).
struct Builder<'a> {
    arena: &'a Bump,
    items: Vec<Json<'a>>,
    members: Vec<(&'a str, Json<'a>)>,
    /// By member count, the last small object's keys as given and the order that sorts them:
    /// the records of a list mostly give the same keys in the same order, and checking that
    /// costs less than sorting again. (By count, so that a record and the object nested in it
    /// do not evict each other.)
    shapes: Vec<Shape<'a>>,
}

/// Keys in the order an object gave them, and `order[i]`: which of them comes `i`-th by key.
#[derive(Default)]
struct Shape<'a> {
    keys: Vec<&'a str>,
    order: Vec<u8>,
}

/// Objects of at most this many members are sorted by an insertion sort of their indexes, and
/// their order remembered.
const SMALL_OBJECT: usize = 16;

impl<'a> Builder<'a> {
    fn new(arena: &'a Bump) -> Self {
        Self {
            arena,
            items: Vec::new(),
            members: Vec::new(),
            shapes: (0..=SMALL_OBJECT).map(|_| Shape::default()).collect(),
        }
    }

    /// The tree of `text` as the scanner reads it, which accepts only tokens serde_json surely
    /// reads and reads them as it does; `None` where it is not sure. The numbers are read as
    /// serde_json reads them: an integer as `u64`, or `i64` if negative, else (beyond 64 bits,
    /// or `-0`) as the nearest `f64`, and anything with a fraction or an exponent as the nearest
    /// `f64` (serde_json with `float_roundtrip`, which Cargo.toml asks for).
    fn document(&mut self, text: &'a str) -> Option<Json<'a>> {
        let mut scanner = Scanner::new(text);
        let tree = self.value(&mut scanner, 0)?;
        // Only whitespace may follow.
        scanner.peek().is_none().then_some(tree)
    }

    fn value(&mut self, scanner: &mut Scanner<'a>, depth: usize) -> Option<Json<'a>> {
        Some(match scanner.peek()? {
            b'"' => Json::String(self.text(scanner.string()?)),
            b'{' => {
                let depth = deeper(depth)?;
                scanner.eat(b'{')?;
                let open = self.members.len();
                if scanner.eat(b'}').is_none() {
                    loop {
                        let key = self.text(scanner.string()?);
                        scanner.eat(b':')?;
                        let value = self.member(scanner, depth)?;
                        self.members.push((key, value));
                        if !scanner.more(b'}')? {
                            break;
                        }
                    }
                }
                self.object(open)
            }
            b'[' => {
                let depth = deeper(depth)?;
                scanner.eat(b'[')?;
                let open = self.items.len();
                if scanner.eat(b']').is_none() {
                    loop {
                        let item = self.member(scanner, depth)?;
                        self.items.push(item);
                        if !scanner.more(b']')? {
                            break;
                        }
                    }
                }
                self.array(open)
            }
            b'-' | b'0'..=b'9' => Json::Number(read_number(scanner)?),
            _ => literal(scanner.scalar()?)?,
        })
    }

    /// A member's value or an array's element: a scalar read here, in the loop that asked, and
    /// only a nested object or array by a call to [`Builder::value`] (a call for every value
    /// cost 0.2 M instructions of the 9 M a 100 KiB list of records takes to compare).
    #[inline(always)]
    fn member(&mut self, scanner: &mut Scanner<'a>, depth: usize) -> Option<Json<'a>> {
        match scanner.peek()? {
            b'"' => Some(Json::String(self.text(scanner.string()?))),
            b'{' | b'[' => self.value(scanner, depth),
            b'-' | b'0'..=b'9' => Some(Json::Number(read_number(scanner)?)),
            _ => literal(scanner.scalar()?),
        }
    }

    /// The array whose elements are on the stack from `open`, moved into the arena.
    fn array(&mut self, open: usize) -> Json<'a> {
        Json::Array(self.arena.alloc_slice_fill_iter(self.items.drain(open..)))
    }

    /// The object whose members are on the stack from `open`, in the order the text gives
    /// them: sorted by key, a key given twice keeping its last value (as in a map that
    /// overwrites), and moved into the arena.
    fn object(&mut self, open: usize) -> Json<'a> {
        let members = &mut self.members[open..];
        if (2..=SMALL_OBJECT).contains(&members.len()) {
            let shape = &mut self.shapes[members.len()];
            let known = shape.keys.len() == members.len()
                && shape
                    .keys
                    .iter()
                    .zip(&*members)
                    .all(|(key, (given, _))| same_key(key, given));
            if !known {
                shape.keys.clear();
                shape.keys.extend(members.iter().map(|(key, _)| *key));
                shape.order.clear();
                shape.order.extend(0..members.len() as u8);
                if sort_order(&shape.keys, &mut shape.order) {
                    // A key given twice: sorted and kept as larger objects are (below). Not
                    // remembered, so `known` always means "no key twice".
                    shape.keys.clear();
                    return self.large_object(open);
                }
            }
            let order = &shape.order;
            // Each member is moved out once, in sorted order; the placeholders left behind are
            // dropped with the stack's tail.
            let sorted = self.arena.alloc_slice_fill_with(members.len(), |i| {
                std::mem::replace(&mut members[usize::from(order[i])], ("", Json::Null))
            });
            self.members.truncate(open);
            return Json::Object(sorted);
        }
        self.large_object(open)
    }

    /// An object sorted in place, a key given twice keeping its last value.
    fn large_object(&mut self, open: usize) -> Json<'a> {
        let members = &mut self.members[open..];
        if sort_members(members) {
            // A key given twice: of each run of one key, its last member is kept.
            let mut kept = 0;
            for at in 0..members.len() {
                if kept > 0 && members[kept - 1].0 == members[at].0 {
                    members.swap(kept - 1, at);
                } else {
                    members.swap(kept, at);
                    kept += 1;
                }
            }
            self.members.truncate(open + kept);
        }
        Json::Object(self.arena.alloc_slice_fill_iter(self.members.drain(open..)))
    }

    /// A string's text from its raw content: borrowed without escapes, decoded into the arena
    /// with them ([`decode_into`]).
    #[inline]
    fn text(&self, (raw, escaped): (&'a str, bool)) -> &'a str {
        if escaped { self.decoded(raw) } else { raw }
    }

    #[inline(never)]
    fn decoded(&self, raw: &'a str) -> &'a str {
        let mut out = String::with_capacity(raw.len());
        decode_into(raw, &mut out);
        self.arena.alloc_str(&out)
    }

    /// A document serde_json read (what the scanner was not sure of), copied into the arena.
    fn copy(&mut self, value: &serde_json::Value) -> Json<'a> {
        use serde_json::Value;
        match value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(n.clone()),
            Value::String(s) => Json::String(self.arena.alloc_str(s)),
            Value::Array(items) => {
                let open = self.items.len();
                for item in items {
                    let item = self.copy(item);
                    self.items.push(item);
                }
                self.array(open)
            }
            Value::Object(map) => {
                let open = self.members.len();
                for (key, value) in map {
                    let key = &*self.arena.alloc_str(key);
                    let value = self.copy(value);
                    self.members.push((key, value));
                }
                self.object(open)
            }
        }
    }
}

/// Appends the text of a string's raw content with escapes (checked by the scanner, which
/// lets surrogates through only in pairs, so each `\u` is one `char` or the first half of one).
pub(super) fn decode_into(raw: &str, out: &mut String) {
    let mut from = 0;
    while let Some(found) = raw[from..].find('\\') {
        let at = from + found;
        out.push_str(&raw[from..at]);
        from = at + 2;
        out.push(match raw.as_bytes()[at + 1] {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = |at| u32::from(hex_escape(raw, at).expect("checked by the scanner"));
                let mut code = unit(at);
                from = at + 6;
                if (0xD800..0xDC00).contains(&code) {
                    // A surrogate pair, `\uD83D\uDE00`: the scanner checked the second.
                    code = 0x10000 + ((code - 0xD800) << 10) + (unit(at + 6) - 0xDC00);
                    from = at + 12;
                }
                char::from_u32(code).expect("lone surrogates refused by the scanner")
            }
            other => char::from(other), // `"`, `\\`, `/`
        });
    }
    out.push_str(&raw[from..]);
}

/// Sorts an object's members by key, stably (of a key given twice, the later stays after the
/// earlier); returns whether a key is given twice.
fn sort_members(members: &mut [(&str, Json<'_>)]) -> bool {
    members.sort_by(|a, b| key_order(a.0, b.0));
    members.windows(2).any(|pair| pair[0].0 == pair[1].0)
}

/// `a == b`, inline for the short keys of records: each of a list's records checks its keys
/// against the shape remembered from the one before, and two objects walked side by side
/// meet the same keys; a call to `memcmp` per key cost 1-3 % of comparing two lists of records.
/// (The walk against a tree, [`super::against`], checks short string values with it too.) Up to
/// 16 bytes, two overlapping loads per side.
#[inline(always)]
pub(super) fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let length = a.len();
    if length != b.len() {
        return false;
    }
    let word = |bytes: &[u8], at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap());
    let half = |bytes: &[u8], at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
    match length {
        0 => true,
        1..=3 => a[0] == b[0] && a[length / 2] == b[length / 2] && a[length - 1] == b[length - 1],
        4..=8 => half(a, 0) == half(b, 0) && half(a, length - 4) == half(b, length - 4),
        9..=16 => word(a, 0) == word(b, 0) && word(a, length - 8) == word(b, length - 8),
        _ => a == b,
    }
}

/// Sorts `order`, indexes into `keys`, by key with an insertion sort (on keys already in order,
/// one comparison each), stably; returns whether a key is given twice.
fn sort_order(keys: &[&str], order: &mut [u8]) -> bool {
    let mut twice = false;
    for end in 1..order.len() {
        let mut at = end;
        while at > 0 {
            let (earlier, later) = (
                keys[usize::from(order[at - 1])],
                keys[usize::from(order[at])],
            );
            match key_order(earlier, later) {
                Ordering::Greater => order.swap(at - 1, at),
                Ordering::Equal => {
                    twice = true;
                    break;
                }
                Ordering::Less => break,
            }
            at -= 1;
        }
    }
    twice
}

/// A literal's token as a value (numbers are read by [`read_number`]).
#[inline(always)]
pub(super) fn literal(token: &str) -> Option<Json<'_>> {
    match token {
        "null" => Some(Json::Null),
        "true" => Some(Json::Bool(true)),
        "false" => Some(Json::Bool(false)),
        _ => None,
    }
}

/// A number at the scanner's cursor (after whitespace), consumed and read as [`number`] reads
/// it, in the same pass that checks its grammar, for the common tokens: an integer of at most 19
/// digits, and a decimal of at most 15 digits without an exponent. Anything else is checked by
/// the scanner and read by [`number`]. (Checking the token, then reading it again, cost ~220
/// instructions per number.)
#[inline(always)]
pub(super) fn read_number(scanner: &mut Scanner<'_>) -> Option<Number> {
    let bytes = scanner.rest();
    let negative = bytes.first() == Some(&b'-');
    let first = usize::from(negative);
    let mut at = first;
    // The digits as one integer, the point aside: 19 digits never overflow a u64, and more
    // are left to the slow reading.
    let mut mantissa = 0u64;
    let mut digits = |at: &mut usize| {
        let from = *at;
        while let Some(&c) = bytes.get(*at)
            && c.is_ascii_digit()
        {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            *at += 1;
        }
        *at - from
    };
    let whole = digits(&mut at);
    // JSON's grammar: a digit at least, and no zero leading another digit.
    let fast = (1..=19).contains(&whole) && !(bytes[first] == b'0' && whole > 1);
    let value = match bytes.get(at) {
        Some(b'.') if fast => {
            at += 1;
            let decimals = digits(&mut at);
            if decimals == 0 || whole + decimals > 15 || matches!(bytes.get(at), Some(b'e' | b'E'))
            {
                None
            } else {
                decimal(negative, mantissa, whole + decimals, decimals)
            }
        }
        Some(b'.' | b'e' | b'E') => None,
        _ if fast => Some(integer(negative, mantissa)),
        _ => None,
    };
    match value {
        Some(value) => {
            scanner.advance(at);
            Some(value)
        }
        None => number(scanner.scalar()?),
    }
}

/// A number token (JSON's grammar, checked by the scanner) as serde_json reads it: an integer
/// as `u64`, or `i64` if negative (see [`integer`]), and anything beyond those, or with a
/// fraction or an exponent, as the nearest `f64` (the standard library's reading is correctly
/// rounded, as serde_json's with `float_roundtrip`). What [`read_number`] leaves to it, the rare
/// tokens: integers of 20 digits and more, long decimals, exponents.
pub(super) fn number(token: &str) -> Option<Number> {
    let float = || token.parse::<f64>().ok().and_then(Number::from_f64);
    if token.bytes().any(|c| matches!(c, b'.' | b'e' | b'E')) {
        return float();
    }
    let (negative, magnitude) = match token.strip_prefix('-') {
        Some(magnitude) => (true, magnitude),
        None => (false, token),
    };
    match magnitude.parse::<u64>() {
        Ok(magnitude) => Some(integer(negative, magnitude)),
        Err(_) => float(),
    }
}

/// An integer token's value: serde_json's own rule makes `-0` and magnitudes beyond i64 f64s.
fn integer(negative: bool, magnitude: u64) -> Number {
    if !negative {
        return magnitude.into();
    }
    let value = (magnitude as i64).wrapping_neg();
    if value >= 0 {
        Number::from_f64(-(magnitude as f64)).expect("finite")
    } else {
        value.into()
    }
}

/// A decimal without an exponent, of `digits` digits of which `decimals` follow the point, that
/// make the integer `mantissa` when the point is left out: with at most 15 digits, `mantissa`
/// is below 10^15 < 2^53, and `mantissa / 10^decimals` is the nearest `f64`, since both are
/// exact in `f64` and IEEE division rounds correctly (Clinger's fast path, which the standard
/// library also takes, after a slower general reading of the text). `None` for more digits.
fn decimal(negative: bool, mantissa: u64, digits: usize, decimals: usize) -> Option<Number> {
    const POWERS: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    if digits > 15 {
        return None;
    }
    let value = mantissa as f64 / POWERS[decimals];
    Number::from_f64(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compared_inline_are_equal_exactly_when_their_bytes_are() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..200_000 {
            let length = (next() % 24) as usize;
            // Two letters only, so that equal keys and keys one byte apart both come often.
            let a: String = (0..length)
                .map(|_| if next() % 2 == 0 { 'a' } else { 'b' })
                .collect();
            let mut b = a.clone().into_bytes();
            match next() % 3 {
                0 => {}
                1 if length > 0 => {
                    let at = (next() % length as u64) as usize;
                    b[at] = if b[at] == b'a' { b'b' } else { b'a' };
                }
                _ => b.push(b'a'),
            }
            let b = String::from_utf8(b).unwrap();
            assert_eq!(same_key(&a, &b), a == b, "{a:?} {b:?}");
        }
    }

    fn parse(text: &str) -> Result<Json<'static>, serde_json::Error> {
        // Leaked: a test's few documents outlive the test, not the process.
        let text: &'static str = Box::leak(text.to_owned().into_boxed_str());
        Json::parse(text.as_bytes(), Box::leak(Box::new(Bump::new())))
    }

    /// The tree the scanner builds, if it is sure of the text.
    fn scanned(text: &str) -> Option<Json<'static>> {
        let arena = Box::leak(Box::new(Bump::new()));
        let mut builder = Builder::new(arena);
        builder.document(Box::leak(text.to_owned().into_boxed_str()))
    }

    /// Every document prints as `serde_json::Value` prints it: same order, same numbers, same
    /// escapes.
    #[test]
    fn a_document_prints_as_serde_json_prints_it() {
        for text in [
            r#"{"b":1,"a":[1,2.5,-3,1e3,null,true,"x"],"c":{"z":"\u00e9\n\"q\"","y":{}}}"#,
            r#"[18446744073709551615,-9223372036854775808,0.1,1.0]"#,
            r#""é \ud83d\ude00 \t""#,
            r#"{"k":1,"k":2,"a":0,"k":3}"#,
            // Records of one shape, then the same count of keys in another order, a key given
            // twice, other keys: each sorted as if read alone.
            r#"[{"b":1,"a":2},{"b":3,"a":4},{"a":5,"b":6},{"b":7,"b":8},{"b":7,"a":8},{"c":9,"a":0},{"b":1,"a":{"y":1,"x":2}}]"#,
            // More members than the insertion sort takes, a key given twice among them.
            r#"{"t":1,"s":2,"r":3,"q":4,"p":5,"o":6,"n":7,"m":8,"l":9,"k":10,"j":11,"i":12,"h":13,"g":14,"f":15,"e":16,"d":17,"q":18,"c":19}"#,
            "  null ",
        ] {
            let ours = parse(text).unwrap();
            let theirs: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours.to_string(), theirs.to_string(), "{text}");
        }
    }

    #[test]
    fn strings_without_escapes_borrow_and_escaped_ones_decode() {
        let text = br#"{"plain":"abc","esc\u0061ped":"\u00e9"}"#;
        let arena = Bump::new();
        let json = Json::parse(text, &arena).unwrap();
        let Json::Object(members) = &json else {
            panic!("{json:?}")
        };
        let within = |s: &str| text.as_ptr_range().contains(&s.as_ptr());
        assert_eq!(members[0].0, "escaped");
        assert!(!within(members[0].0), "{members:?}");
        assert_eq!(members[0].1, Json::String("é"));
        assert_eq!(members[1].0, "plain");
        assert!(within(members[1].0));
        let Json::String(abc) = members[1].1 else {
            panic!("{members:?}")
        };
        assert!(within(abc));
    }

    #[test]
    fn a_key_given_twice_keeps_its_last_value_and_get_finds_members() {
        let json = parse(r#"{"k":1,"b":true,"k":2}"#).unwrap();
        assert_eq!(json.get("k"), Some(&Json::Number(2.into())));
        assert_eq!(json.get("b"), Some(&Json::Bool(true)));
        assert_eq!(json.get("a"), None);
        assert_eq!(Json::Null.get("k"), None);
    }

    #[test]
    fn bad_documents_fail_as_serde_json_fails() {
        for text in ["{", "[1,]", "{\"a\":1} x", "\"\\ud800\"", "nul"] {
            let ours = parse(text).map(|_| ()).unwrap_err();
            let theirs = serde_json::from_str::<serde_json::Value>(text).unwrap_err();
            assert_eq!(ours.to_string(), theirs.to_string(), "{text}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(&deep).is_err());
    }

    /// Decimals read by the fast path are the `f64` serde_json reads, bit for bit, and those it
    /// cannot read exactly are left to the general reading; integers (within 64 bits and
    /// beyond) and exponents too.
    #[test]
    fn numbers_read_as_serde_json_reads_them() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut tokens: Vec<String> = [
            "0.1",
            "-0.0",
            "0.0",
            "9007199254740.993",
            "123456789012345.6",
            "0.3",
            "2.675",
            "0.0000000000000000000001",
            "99999999999999.9",
            "-1.5",
            "5e-324",
            "0",
            "-0",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
        ]
        .map(str::to_owned)
        .to_vec();
        for _ in 0..20_000 {
            let digits = |rng: &mut fastrand::Rng, n: usize| -> String {
                (0..n).map(|_| char::from(b'0' + rng.u8(0..10))).collect()
            };
            let whole = match rng.usize(0..9) {
                0 => "0".to_owned(),
                n => format!("{}{}", rng.u8(1..10), digits(&mut rng, n - 1)),
            };
            let length = rng.usize(1..12);
            let fraction = digits(&mut rng, length);
            let sign = if rng.bool() { "-" } else { "" };
            tokens.push(format!("{sign}{whole}.{fraction}"));
            // An integer of up to 22 digits: within u64, within i64 when negative, or beyond.
            let length = rng.usize(0..22);
            let whole = format!("{}{}", rng.u8(1..10), digits(&mut rng, length));
            tokens.push(format!("{sign}{whole}"));
            let exponent = rng.i32(-30..30);
            tokens.push(format!("{sign}{whole}e{exponent}"));
            tokens.push(format!("{sign}{whole}.{fraction}E+{}", exponent.abs()));
        }
        for token in tokens {
            let theirs: serde_json::Number = serde_json::from_str(&token).unwrap();
            let ours = number(&token).unwrap();
            assert_eq!(format!("{ours:?}"), format!("{theirs:?}"), "{token}");
            let (bits, theirs) = (ours.as_f64().unwrap(), theirs.as_f64().unwrap());
            assert_eq!(bits.to_bits(), theirs.to_bits(), "{token}");
            // Read from a body in one pass: the same number, the token consumed to its end.
            let text = format!("{token},");
            let mut scanner = Scanner::new(&text);
            assert_eq!(read_number(&mut scanner), Some(ours), "{token}");
            assert_eq!(scanner.rest(), b",", "{token}");
        }
        // Tokens JSON's grammar refuses or ends early: read as the scanner's check reads them.
        for text in [
            "01", "-", "1.", "1.e5", "00", "-01.5", "1.5e", "--1", "1x", "-a", "0.5.5", "7",
        ] {
            let (mut fast, mut slow) = (Scanner::new(text), Scanner::new(text));
            let expected = slow.scalar().and_then(number);
            assert_eq!(read_number(&mut fast), expected, "{text}");
            if expected.is_some() {
                assert_eq!(fast.rest(), slow.rest(), "{text}");
            }
        }
    }

    #[test]
    fn keys_order_as_strings_do() {
        let keys = ["", "a", "ab", "b", "B", "é", "e", "aa", "a\u{0}", "ä", "z"];
        for a in keys {
            for b in keys {
                assert_eq!(key_order(a, b), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }

    /// What the scanner leaves to serde_json is copied into the arena as it reads it.
    #[test]
    fn what_serde_json_reads_is_copied_whole() {
        let text = r#"{"z":"\ud83d\ude00","a":[1e400000000000000000,{"k":1,"k":2}]}"#;
        assert!(scanned(text).is_none());
        assert!(parse(text).is_err());
        // A number near f64's limit is left to serde_json, and the whole document with it.
        let text = r#"{"z":"\u00e9\ud83d\ude00","a":[1e305,{"k":1,"k":2,"b":null}]}"#;
        assert!(scanned(text).is_none());
        let json = parse(text).unwrap();
        assert_eq!(
            json.to_string(),
            r#"{"a":[1e+305,{"b":null,"k":2}],"z":"é😀"}"#
        );
        assert_eq!(json.get("z"), Some(&Json::String("é😀")));
    }

    /// The tree serde_json's parser builds (copied into an arena), for comparison with the
    /// scanner's.
    fn by_serde_json(text: &str) -> Result<String, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let arena = Bump::new();
        let mut builder = Builder::new(&arena);
        Ok(format!("{:?}", builder.copy(&value)))
    }

    /// `Debug` tells `-0.0` from `0.0` and `1.0` from `1`, which `==` does not.
    fn same_tree(text: &str) {
        let theirs = by_serde_json(text);
        if let Some(ours) = scanned(text) {
            assert_eq!(Ok(format!("{ours:?}")), theirs, "{text}");
        }
        let parsed = parse(text).map(|t| format!("{t:?}"));
        assert_eq!(parsed.map_err(|e| e.to_string()), theirs, "{text}");
    }

    const NUMBERS: &[&str] = &[
        "0",
        "-0",
        "7",
        "-7",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "-18446744073709551615",
        "-18446744073709551616",
        "99999999999999999999999",
        "9007199254740993",
        "1.0",
        "-0.0",
        "0.1",
        "1e3",
        "1E+3",
        "1e-3",
        "-2.5E-2",
        "0.1e1",
        "0.30000000000000000000000000000001",
        "2.2250738585072011e-308",
        "4.9e-324",
        "2.4703282292062328e-324",
        "1e-400",
        "-1e-400",
        "1.7976931348623157e299",
        "123456789012345678901234567890e-10",
        "1e299",
        "1e309",
        "-1e309",
        "1.7976931348623157e308",
        "01",
        "1.",
        ".5",
        "-",
        "+1",
        "1e",
        "0x10",
    ];

    const STRINGS: &[&str] = &[
        r#""""#,
        r#""plain""#,
        r#""é ünïcode""#,
        r#""\u00e9""#,
        r#""\n\t\"\\\/\b\f\r""#,
        r#""a\\b""#,
        r#""\u0000 \u001f \uFFFF \u20AC""#,
        r#""\ud83d\ude00""#,
        r#""\ud800""#,
        r#""a\uD83D\uDE00b\ud83c\udf89""#,
        r#""\ude00""#,
        r#""\ud83d""#,
        r#""\ud83dx""#,
        r#""\ud83d\u0041""#,
        r#""\ud83d\ud83d""#,
        r#""\ud83d\n""#,
        r#""\udbff\udfff\ud800\udc00""#,
        r#""\x""#,
        r#""\u12""#,
        "\"tab\there\"",
        "\"line\nbreak\"",
        "\"\u{7f}\"",
    ];

    #[test]
    fn the_scanner_builds_the_tree_serde_json_builds() {
        for token in NUMBERS.iter().chain(STRINGS) {
            same_tree(token);
            same_tree(&format!("[{token}]"));
            same_tree(&format!(" {{ {} : {token} }} ", STRINGS[3]));
        }
        for text in [
            "null",
            " true ",
            "false",
            "nul",
            "[]",
            "{}",
            "[ ]",
            "{ }",
            "[1,]",
            "[,1]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "[1 2]",
            "{\"k\":1,\"b\":true,\"k\":2,\"a\":{\"z\":[],\"y\":{}}}",
            "{\"b\\u0061\":1,\"ba\":2}",
            "[1]x",
            "[1] [2]",
            "\u{feff}[1]",
            " \n\r\t[\n1\r,\t2 ] \n",
            "",
            "   ",
        ] {
            same_tree(text);
        }
        // Nesting at and beyond each reader's limit (the scanner's 100, serde_json's 128).
        for depth in [99, 100, 101, 127, 128, 129, 200] {
            same_tree(&("[".repeat(depth) + &"]".repeat(depth)));
            same_tree(&("{\"a\":".repeat(depth) + "1" + &"}".repeat(depth)));
        }
    }

    /// Random documents built from the tokens above, with random whitespace, duplicate keys
    /// and nesting: whatever the scanner reads, it reads as serde_json does, and it reads
    /// most of them (those without a token it leaves to serde_json).
    #[test]
    fn generated_documents_read_as_serde_json_reads_them() {
        fn value(rng: &mut fastrand::Rng, depth: usize, out: &mut String) {
            let space = |rng: &mut fastrand::Rng, out: &mut String| {
                for _ in 0..rng.usize(0..3) {
                    out.push([' ', '\n', '\t', '\r'][rng.usize(0..4)]);
                }
            };
            space(rng, out);
            match rng.usize(0..if depth > 4 { 3 } else { 6 }) {
                0 => out.push_str(NUMBERS[rng.usize(0..29)]),
                1 => out.push_str(STRINGS[rng.usize(0..8)]),
                2 => out.push_str(["null", "true", "false"][rng.usize(0..3)]),
                3 => {
                    out.push('[');
                    for i in 0..rng.usize(0..5) {
                        if i > 0 {
                            out.push(',');
                        }
                        value(rng, depth + 1, out);
                    }
                    space(rng, out);
                    out.push(']');
                }
                _ => {
                    out.push('{');
                    for i in 0..rng.usize(0..6) {
                        if i > 0 {
                            out.push(',');
                        }
                        space(rng, out);
                        let keys = ["\"a\"", "\"b\"", "\"\\u0061\"", "\"é\"", "\"a b\""];
                        out.push_str(keys[rng.usize(0..keys.len())]);
                        space(rng, out);
                        out.push(':');
                        value(rng, depth + 1, out);
                    }
                    space(rng, out);
                    out.push('}');
                }
            }
            space(rng, out);
        }
        let mut rng = fastrand::Rng::with_seed(20261203);
        let mut read = 0;
        for _ in 0..3_000 {
            let mut text = String::new();
            value(&mut rng, 0, &mut text);
            same_tree(&text);
            read += usize::from(scanned(&text).is_some());
        }
        assert!(
            read > 2_000,
            "the scanner read only {read} of 3,000 documents"
        );
    }
}
