//! The comparison's fast path: two JSON bodies walked token by token in lockstep, without
//! building a tree, to prove them equal under a rule. Most shadowed answers match, and for those
//! parsing both bodies into trees (allocating, decoding strings) was nearly all the work.
//!
//! The walk only ever answers "equal" or "not sure": it says equal when both bodies are JSON that
//! serde_json would accept and every value is the same token on both sides (whitespace aside),
//! except values at paths the rule ignores, which are checked to be valid JSON and skipped on
//! each side. Anything else — keys in another order, `1` against `1.0`, a string escaped
//! differently, a changed value, a key with escapes, nesting deeper than [`MAX_DEPTH`], a number
//! serde_json might refuse, invalid JSON — stops the walk, and the caller compares the trees
//! ([`super::compare`]), which find the same differences and errors as if this walk had not run.
//!
//! Why equal tokens mean no difference: equal tokens parse to equal trees (duplicate keys keep
//! the same last value on both sides), and the tree walk reports nothing for equal trees
//! whatever the rule. Skipping an ignored value is sound where the tree walk names it by the
//! same path this walk does (keys, array indexes); under an array whose elements the rule pairs
//! off by key or by fingerprint ([`Paths::pairs_elements`]) it may not, so an ignored value
//! there stops the walk.
//!
//! This module owns the scanner and the lockstep walk, not the rule ([`super::compare`] says
//! which paths are ignored) nor any difference.

use std::borrow::Cow;

use super::path::{Cursor, Step};

/// Deepest nesting the walk follows; serde_json's own limit is 128, and a deeper document is
/// left to it (to fail as it fails).
pub const MAX_DEPTH: usize = 100;

/// What the walk needs to know of a comparison rule, by path.
pub trait Paths {
    /// A cursor at the root whose covering patterns are the ignored paths.
    fn cursor<'a>(&self) -> Cursor<'_, 'a>;
    /// Whether the array at the cursor has its elements paired otherwise than index by index
    /// (by a key, or by fingerprint with a numeric tolerance): an ignore rule beneath it may
    /// name them otherwise than by index.
    fn pairs_elements(&self, at: &Cursor<'_, '_>) -> bool;
}

/// Whether `a` and `b` are JSON documents equal under `rule`, as far as a lockstep walk of their
/// tokens can tell. `false` means "not shown equal", never "different".
pub fn same(rule: &impl Paths, a: &[u8], b: &[u8]) -> bool {
    let (Ok(a), Ok(b)) = (std::str::from_utf8(a), std::str::from_utf8(b)) else {
        return false;
    };
    let mut walk = Walk {
        rule,
        a: Scanner::new(a),
        b: Scanner::new(b),
        path: rule.cursor(),
        pairing: 0,
    };
    walk.document().is_some()
}

/// `Some(())`: so far equal and valid; `None`: stop, not sure.
type Flow = Option<()>;

/// One side of the walk: a position in a body already checked to be UTF-8. The tree builder
/// ([`super::json`]) reads a body with it too, so both accept exactly the same tokens.
pub(super) struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

/// Bytes a string stops at: its end, an escape, or a control character serde_json refuses.
static STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        table[c] = true;
        c += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// The code unit of the `\uXXXX` escape at `at` in `text` (at its backslash), if there is one.
pub(super) fn hex_escape(text: &str, at: usize) -> Option<u16> {
    let hex = text.get(at + 2..at + 6)?;
    // `from_str_radix` takes a sign; JSON does not.
    if text.as_bytes().get(at..at + 2) != Some(b"\\u")
        || !hex.bytes().all(|h| h.is_ascii_hexdigit())
    {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// Where in `bytes` a string stops (see [`STRING_STOP`]), if it does: eight bytes at a time,
/// then the tail byte by byte. Strings are most of a JSON body's bytes.
#[inline(always)]
fn string_stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    // A byte of `x` is zero where the lowest set high bit of `(x - ONES) & !x & HIGH` says
    // (bits above it may be false), and below `n` likewise for `(x - n * ONES) & !x & HIGH`:
    // of the three tests or'ed, the lowest bit is still a true stop.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let stops = (zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x))
            & HIGH;
        if stops != 0 {
            // Little-endian: the lowest bits are the first byte.
            return Some(at + (stops.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = bytes[at..].iter().position(|&c| STRING_STOP[c as usize])?;
    Some(at + tail)
}

impl<'a> Scanner<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Self {
            text,
            bytes: text.as_bytes(),
            at: 0,
        }
    }

    /// Skips JSON whitespace; returns the next byte, if any.
    #[inline(always)]
    pub(super) fn peek(&mut self) -> Option<u8> {
        // Every whitespace byte is at most a space; most of the time there is none.
        match self.bytes.get(self.at) {
            Some(&c) if c > b' ' => return Some(c),
            None => return None,
            Some(_) => {}
        }
        while let Some(&c) = self.bytes.get(self.at) {
            if !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(c);
            }
            self.at += 1;
        }
        None
    }

    /// The bytes from the cursor on, whitespace not skipped.
    #[inline(always)]
    pub(super) fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.at..).unwrap_or_default()
    }

    /// Moves the cursor `length` bytes on: a reader of its own has checked them.
    #[inline(always)]
    pub(super) fn advance(&mut self, length: usize) {
        self.at += length;
    }

    /// Consumes `byte` (after whitespace) or stops.
    #[inline]
    pub(super) fn eat(&mut self, byte: u8) -> Flow {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// After a member or an element: `,` (`Some(true)`) or `close` (`Some(false)`), consumed;
    /// anything else stops.
    #[inline(always)]
    pub(super) fn more(&mut self, close: u8) -> Option<bool> {
        let next = self.peek()?;
        self.at += 1;
        match next {
            b',' => Some(true),
            c if c == close => Some(false),
            _ => None,
        }
    }

    /// Consumes exactly `token` (no whitespace skipped) or stops.
    #[inline]
    fn expect(&mut self, token: &[u8]) -> Flow {
        let end = self.at + token.len();
        (self.bytes.get(self.at..end)? == token).then(|| self.at = end)
    }

    /// A string at the cursor (after whitespace), consumed; returns its raw content and whether
    /// it has escapes. Stops on what serde_json refuses (a lone surrogate escape among it).
    #[inline(always)]
    pub(super) fn string(&mut self) -> Option<(&'a str, bool)> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at + 1;
        // Most strings (every key, most values) are plain: one stop, at the closing quote.
        let at = start + string_stop(self.bytes.get(start..)?)?;
        if self.bytes[at] != b'"' {
            return self.string_rest(start, at);
        }
        self.at = at + 1;
        debug_assert!(self.text.is_char_boundary(start) && self.text.is_char_boundary(at));
        // SAFETY: `start` is just past a `"` and `at` is at one (`string_stop` found it, within
        // `bytes`); an ASCII byte in UTF-8 text is a whole `char`, so both are `char`
        // boundaries. (The checked `get` cost ~17 instructions a string, 4 % of a comparison.)
        Some((unsafe { self.text.get_unchecked(start..at) }, false))
    }

    /// The rest of a string from its first stop that is not its end (`at`): escapes checked,
    /// or a control character refused.
    #[inline(never)]
    fn string_rest(&mut self, start: usize, mut at: usize) -> Option<(&'a str, bool)> {
        loop {
            match self.bytes[at] {
                b'"' => break,
                b'\\' => {
                    match *self.bytes.get(at + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 2,
                        b'u' => {
                            match hex_escape(self.text, at)? {
                                // A leading surrogate counts only with a trailing one after
                                // it (as Python's `json.dumps` writes every emoji); alone,
                                // either is left to serde_json, which refuses it.
                                0xD800..0xDC00 => {
                                    let trailing = hex_escape(self.text, at + 6)?;
                                    if !(0xDC00..0xE000).contains(&trailing) {
                                        return None;
                                    }
                                    at += 12;
                                }
                                0xDC00..0xE000 => return None,
                                _ => at += 6,
                            }
                        }
                        _ => return None,
                    }
                }
                // A control character: serde_json refuses it unescaped.
                _ => return None,
            }
            // Past an escape: the next stop (none: the string never ends).
            at += string_stop(self.bytes.get(at..)?)?;
        }
        self.at = at + 1;
        Some((&self.text[start..at], true))
    }

    /// A number at the cursor, consumed, if it has JSON's grammar and serde_json surely reads it.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.at;
        let bytes = self.bytes;
        let mut at = start;
        let digits = |at: &mut usize| {
            let from = *at;
            while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at > from
        };
        if bytes.get(at) == Some(&b'-') {
            at += 1;
        }
        match bytes.get(at)? {
            b'0' => at += 1,
            b'1'..=b'9' => {
                digits(&mut at);
            }
            _ => return None,
        }
        let mut plain = true;
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            if !digits(&mut at) {
                return None;
            }
        }
        if matches!(bytes.get(at), Some(b'e' | b'E')) {
            plain = false;
            at += 1;
            if matches!(bytes.get(at), Some(b'+' | b'-')) {
                at += 1;
            }
            if !digits(&mut at) {
                return None;
            }
        }
        let token = &self.text[start..at];
        // serde_json refuses a number beyond f64's range ("number out of range"); well short
        // of it, every reading agrees. Near it, let serde_json decide.
        if (!plain || token.len() > 17) && !token.parse::<f64>().is_ok_and(|f| f.abs() < 1e300) {
            return None;
        }
        self.at = at;
        Some(token)
    }

    /// One whole value at the cursor (after whitespace), checked and consumed.
    pub(super) fn skip_value(&mut self, depth: usize) -> Flow {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => {
                let depth = deeper(depth)?;
                self.at += 1;
                if self.peek()? == b'}' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.string()?;
                    self.eat(b':')?;
                    self.skip_value(depth)?;
                    if !self.more(b'}')? {
                        return Some(());
                    }
                }
            }
            b'[' => {
                let depth = deeper(depth)?;
                self.at += 1;
                if self.peek()? == b']' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.skip_value(depth)?;
                    if !self.more(b']')? {
                        return Some(());
                    }
                }
            }
            _ => self.scalar().map(drop),
        }
    }

    /// A literal or number at the cursor (after whitespace), consumed; returns its text.
    pub(super) fn scalar(&mut self) -> Option<&'a str> {
        let start = self.at;
        match self.bytes.get(self.at)? {
            b't' => self.expect(b"true")?,
            b'f' => self.expect(b"false")?,
            b'n' => self.expect(b"null")?,
            b'-' | b'0'..=b'9' => return self.number(),
            _ => return None,
        }
        Some(&self.text[start..self.at])
    }
}

pub(super) fn deeper(depth: usize) -> Option<usize> {
    (depth < MAX_DEPTH).then_some(depth + 1)
}

/// Both sides walked together.
struct Walk<'a, 'r, P> {
    rule: &'r P,
    a: Scanner<'a>,
    b: Scanner<'a>,
    /// Where the walk is, named as the tree walk names it; not followed where no rule reaches
    /// (the walk only asks, never names: [`Cursor::descend`]).
    path: Cursor<'r, 'a>,
    /// How many of the enclosing arrays pair their elements otherwise than by index.
    pairing: usize,
}

impl<'a, P: Paths> Walk<'a, '_, P> {
    fn document(&mut self) -> Flow {
        self.value(0)?;
        // Only whitespace may follow, on both sides.
        (self.a.peek().is_none() && self.b.peek().is_none()).then_some(())
    }

    fn value(&mut self, depth: usize) -> Flow {
        if self.path.covered() {
            if self.pairing > 0 {
                return None;
            }
            self.a.skip_value(depth)?;
            return self.b.skip_value(depth);
        }
        let first = self.a.peek()?;
        if self.b.peek()? != first {
            return None;
        }
        match first {
            b'{' => self.object(deeper(depth)?),
            b'[' => self.array(deeper(depth)?),
            b'"' => {
                let start = self.a.at;
                self.a.string()?;
                self.b.expect(&self.a.bytes[start..self.a.at])
            }
            _ => {
                let token = self.a.scalar()?;
                self.b.expect(token.as_bytes())?;
                // `1` against `12`: the candidate's token must end where the primary's does.
                match self.b.bytes.get(self.b.at) {
                    Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-') => None,
                    _ => Some(()),
                }
            }
        }
    }

    fn object(&mut self, depth: usize) -> Flow {
        self.a.at += 1;
        self.b.at += 1;
        if self.a.peek()? == b'}' {
            self.b.eat(b'}')?;
            self.a.at += 1;
            return Some(());
        }
        loop {
            // The key's bytes on this side, from its quote: the whitespace before it may differ.
            self.a.peek()?;
            let start = self.a.at;
            let (key, escaped) = self.a.string()?;
            // A key with escapes is named by its decoded text: let the tree walk do that.
            if escaped {
                return None;
            }
            self.b.peek()?;
            self.b.expect(&self.a.bytes[start..self.a.at])?;
            self.a.eat(b':')?;
            self.b.eat(b':')?;
            self.path.descend(Step::Key(Cow::Borrowed(key)), false);
            self.value(depth)?;
            self.path.pop();
            if !self.next_or_end(b'}')? {
                return Some(());
            }
        }
    }

    fn array(&mut self, depth: usize) -> Flow {
        self.a.at += 1;
        self.b.at += 1;
        if self.a.peek()? == b']' {
            self.b.eat(b']')?;
            self.a.at += 1;
            return Some(());
        }
        let pairing = self.rule.pairs_elements(&self.path);
        self.pairing += usize::from(pairing);
        let mut index = 0;
        loop {
            self.path.descend(Step::Index(index), false);
            self.value(depth)?;
            self.path.pop();
            index += 1;
            if !self.next_or_end(b']')? {
                break;
            }
        }
        self.pairing -= usize::from(pairing);
        Some(())
    }

    /// After a member or element: `,` on both sides (`Some(true)`) or `close` on both
    /// (`Some(false)`), consumed.
    fn next_or_end(&mut self, close: u8) -> Option<bool> {
        let next = self.a.peek()?;
        if self.b.peek()? != next {
            return None;
        }
        self.a.at += 1;
        self.b.at += 1;
        match next {
            b',' => Some(true),
            c if c == close => Some(false),
            _ => None,
        }
    }
}

/// A rule for the walks' tests: ignored paths, and arrays whose elements are paired (by key,
/// say).
#[cfg(test)]
pub(super) mod test_rule {
    use super::super::path::{Cursor, PathPattern};
    use super::Paths;

    pub struct Rule {
        ignore: Vec<PathPattern>,
        paired: Vec<PathPattern>,
    }

    impl Paths for Rule {
        fn cursor<'a>(&self) -> Cursor<'_, 'a> {
            Cursor::new(&self.ignore, &self.paired)
        }
        fn pairs_elements(&self, at: &Cursor<'_, '_>) -> bool {
            at.exact().is_some()
        }
    }

    pub fn rule(ignore: &[&str], paired: &[&str]) -> Rule {
        let parse = |all: &[&str]| all.iter().map(|p| PathPattern::parse(p).unwrap()).collect();
        Rule {
            ignore: parse(ignore),
            paired: parse(paired),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_rule::{Rule, rule};
    use super::*;

    #[test]
    fn strings_stop_where_byte_by_byte_they_would() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = [
            b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x7f, 0x80, 0xc3, 0xa9, 0xff,
        ];
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.usize(0..4) {
                    0 => alphabet[rng.usize(0..alphabet.len())],
                    _ => rng.u8(0x20..=0x7e).max(0x23),
                })
                .collect();
            let naive = bytes.iter().position(|&c| STRING_STOP[c as usize]);
            assert_eq!(string_stop(&bytes), naive, "{bytes:?}");
        }
    }

    fn same_text(rule: &Rule, a: &str, b: &str) -> bool {
        same(rule, a.as_bytes(), b.as_bytes())
    }

    #[test]
    fn equal_tokens_are_equal_whatever_the_whitespace() {
        let none = rule(&[], &[]);
        let a = r#"{"a":[1,2.5,-3e2,true,false,null,"x\n\u00e9"],"b":{},"c":[]}"#;
        let b = " {\n  \"a\" : [ 1 , 2.5 ,-3e2,true,\tfalse,null,\"x\\n\\u00e9\"],\r\n\"b\":{ },\"c\":[ ] } \n";
        assert!(same_text(&none, a, b));
        assert!(same_text(&none, "0", " 0 "));
        // Whitespace before a key, on either side.
        assert!(same_text(&none, r#"{"a":1, "b":2}"#, r#"{"a":1,"b":2}"#));
        assert!(same_text(
            &none,
            r#"{"a":1,"b":2}"#,
            "{\"a\":1,\n  \"b\":2}"
        ));
        assert!(same_text(&none, r#""""#, r#""""#));
    }

    #[test]
    fn anything_but_equal_tokens_is_not_shown_equal() {
        let none = rule(&[], &[]);
        for (a, b) in [
            ("1", "1.0"),
            ("1", "1e0"),
            ("1", "12"),
            ("12", "1"),
            ("[1]", "[1,2]"),
            ("[1,2]", "[1]"),
            (r#"{"a":1,"b":2}"#, r#"{"b":2,"a":1}"#),
            (r#"{"a":1}"#, r#"{"a":1,"b":2}"#),
            (r#""a""#, r#""\u0061""#),
            (r#""a""#, r#""ab""#),
            ("true", "false"),
            ("null", "nul"),
            ("{}", "[]"),
            // The same key twice: equal trees, but the walk does not know it.
            (r#"{"k":1,"k":2}"#, r#"{"k":3,"k":2}"#),
        ] {
            assert!(!same_text(&none, a, b), "{a} vs {b}");
            assert!(!same_text(&none, b, a), "{b} vs {a}");
        }
    }

    #[test]
    fn invalid_json_is_never_shown_equal_even_against_itself() {
        let none = rule(&[], &[]);
        for bad in [
            "",
            " ",
            "{",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{\"a\":1} x",
            "01",
            "1.",
            ".5",
            "-",
            "+1",
            "1e",
            "1e400",
            "\"\\ud800\"",
            "\"\\x\"",
            "\"\\u12G4\"",
            "\"\\u+123\"",
            "\"a\u{1}b\"",
            "\"open",
            "tru",
            "nulll",
            "[1 2]",
            "{1:2}",
            "\u{feff}{}",
        ] {
            assert!(!same_text(&none, bad, bad), "{bad:?}");
        }
        assert!(!same(&none, b"\"\xff\"", b"\"\xff\""));
        // Surrogate escapes count in pairs only (serde_json refuses one alone).
        assert!(same_text(&none, r#""\ud83d\ude00""#, r#""\ud83d\ude00""#));
        for lone in [
            r#""\ud83d""#,
            r#""\ude00""#,
            r#""\ud83d\u0041""#,
            r#""\ud83dx""#,
        ] {
            assert!(!same_text(&none, lone, lone), "{lone}");
        }
        // Ignored or not, a value must be valid.
        let everything = rule(&["$"], &[]);
        assert!(same_text(&everything, "[1]", "{}"));
        assert!(!same_text(&everything, "[1,]", "{}"));
        let id = rule(&["$.id"], &[]);
        assert!(!same_text(&id, r#"{"id":[1,]}"#, r#"{"id":1}"#));
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_left_to_serde_json() {
        let none = rule(&[], &[]);
        let nested = |depth: usize| "[".repeat(depth) + &"]".repeat(depth);
        assert!(same_text(&none, &nested(MAX_DEPTH), &nested(MAX_DEPTH)));
        assert!(!same_text(
            &none,
            &nested(MAX_DEPTH + 1),
            &nested(MAX_DEPTH + 1)
        ));
        // An ignored value is held to the same limit.
        let all = rule(&["$[0]"], &[]);
        let wrapped = |depth: usize| format!("[{}]", nested(depth));
        assert!(same_text(&all, &wrapped(MAX_DEPTH - 1), "[1]"));
        assert!(!same_text(&all, &wrapped(MAX_DEPTH), "[1]"));
    }

    #[test]
    fn ignored_values_are_skipped_on_both_sides() {
        let ids = rule(&["$.items[*].id", "$.meta"], &[]);
        assert!(same_text(
            &ids,
            r#"{"items":[{"id":1,"n":"a"},{"id":[2,{"x":"\""}],"n":"b"}],"meta":{"at":1}}"#,
            r#"{"items":[{"id":"one","n":"a"},{"id":{},"n":"b"}],"meta":null}"#
        ));
        assert!(!same_text(
            &ids,
            r#"{"items":[{"id":1,"n":"a"}]}"#,
            r#"{"items":[{"id":1,"n":"b"}]}"#
        ));
        let second = rule(&["$[1]", "$.*.x"], &[]);
        assert!(same_text(&second, "[1,2,3]", "[1,9,3]"));
        assert!(!same_text(&second, "[1,2,3]", "[9,2,3]"));
        assert!(same_text(
            &second,
            r#"{"a":{"x":1,"y":2}}"#,
            r#"{"a":{"x":5,"y":2}}"#
        ));
        // A key with escapes is named by its decoded text: not decided here.
        assert!(!same_text(&second, r#"{"\u0061":1}"#, r#"{"\u0061":1}"#));
    }

    #[test]
    fn an_ignored_value_under_paired_elements_stops_the_walk() {
        let keyed = rule(&["$.orders[0].at"], &["$.orders"]);
        assert!(!same_text(
            &keyed,
            r#"{"orders":[{"id":1,"at":1}]}"#,
            r#"{"orders":[{"id":1,"at":2}]}"#
        ));
        // Without an ignored value beneath, equal tokens are equal however elements pair.
        assert!(same_text(
            &keyed,
            r#"{"orders":[{"id":1,"n":1}],"x":1}"#,
            r#"{"orders":[{"id":1,"n":1}],"x":1}"#
        ));
        let after = rule(&["$.x"], &["$.orders"]);
        assert!(same_text(
            &after,
            r#"{"orders":[{"id":1}],"x":1}"#,
            r#"{"orders":[{"id":1}],"x":2}"#
        ));
    }
}
