//! The comparison's second fast path: a JSON body read token by token against a tree already
//! built, to prove that the body's own tree would be equal to it under a rule, without building
//! that tree.
//!
//! The lockstep scan ([`super::scan`]) stops at the first key given in another order, which is
//! what a candidate written with another serializer does in every object: then both bodies were
//! parsed into trees, and building the candidate's was half the work of the comparison. The
//! primary's tree is built anyway (it is kept for every comparison of that exchange, and its
//! noise answer's), so here the candidate's body is read against it: each key is looked up among
//! the tree's sorted members, each value checked against the tree's value at that key.
//!
//! Like the lockstep scan, this walk only answers "equal" or "not sure", and "equal" only where
//! the tree walk ([`super::compare`]) would report nothing: the body is JSON that serde_json
//! would accept, and its tree would be the given tree except at paths the rule ignores. Anything
//! else (a value that differs, a key only one side has and the rule does not ignore, a key the
//! body gives twice, an array of another length, an ignored value beneath an array whose
//! elements the rule pairs otherwise than by index, deeper nesting than the scanner follows)
//! stops the walk, and the caller compares the trees as if this walk had not run.
//!
//! Why the tree's value is the body's: keys are compared by their decoded text and strings too,
//! numbers as the tree holds them (read by the tree's own reader, [`super::json::read_number`]),
//! literals as literals; each member of the tree is given exactly once by the body (a bit per
//! member), so the body's object has the same members, and the tree sorted them as the body's
//! tree would be sorted.
//!
//! This module owns that walk, not the scanner ([`super::scan`]), the tree ([`super::json`]) or
//! the rule ([`super::compare`]).

use std::borrow::Cow;

use super::json::{Json, decode_into, key_order, literal, read_number, same_key};
use super::path::{Cursor, Step};
use super::scan::{Paths, Scanner, deeper};

/// Whether the JSON body `text`, read against `tree`, has a tree equal to it under `rule`, as far
/// as this walk can tell. `false` means "not shown equal", never "different".
pub fn same<'a>(rule: &impl Paths, tree: &'a Json<'a>, text: &'a [u8]) -> bool {
    let Ok(text) = std::str::from_utf8(text) else {
        return false;
    };
    let mut walk = Against {
        rule,
        text: Scanner::new(text),
        path: rule.cursor(),
        pairing: 0,
        given: Vec::new(),
        decoded: String::new(),
        hints: [[0; HINTED]; HINTED + 1],
    };
    walk.value(tree, 0).is_some() && walk.text.peek().is_none()
}

/// `Some(())`: so far equal and valid; `None`: stop, not sure.
type Flow = Option<()>;

struct Against<'a, 'r, P> {
    rule: &'r P,
    text: Scanner<'a>,
    /// Where the walk is, named as the tree walk names it (see [`super::scan`]).
    path: Cursor<'r, 'a>,
    /// How many of the enclosing arrays pair their elements otherwise than by index.
    pairing: usize,
    /// The marks of the objects open in the walk that have more than 64 members ([`Marks`]).
    given: Vec<u64>,
    /// The text of the last string with escapes, decoded (reused).
    decoded: String,
    /// By member count (up to [`HINTED`]), where the `k`-th key the body gave in the last
    /// object of that size was among the tree's sorted members: the records of a list give
    /// their keys in one order, and one check of that guess costs less than a search.
    hints: [[u8; HINTED]; HINTED + 1],
}

/// Objects of at most this many members have their keys' places guessed.
const HINTED: usize = 16;

impl<'a, P: Paths> Against<'a, '_, P> {
    fn value(&mut self, tree: &'a Json<'a>, depth: usize) -> Flow {
        if self.path.covered() {
            return self.skip_value(depth);
        }
        match (self.text.peek()?, tree) {
            (b'{', Json::Object(members)) => self.object(members, deeper(depth)?),
            (b'[', Json::Array(items)) => self.array(items, deeper(depth)?),
            (b'"', Json::String(expected)) => {
                let raw = self.text.string()?;
                same_key(text_of(&mut self.decoded, raw), expected).then_some(())
            }
            (b'-' | b'0'..=b'9', Json::Number(expected)) => {
                (read_number(&mut self.text)? == *expected).then_some(())
            }
            (b'n' | b't' | b'f', Json::Null | Json::Bool(_)) => {
                (literal(self.text.scalar()?)? == *tree).then_some(())
            }
            _ => None,
        }
    }

    /// An ignored value: checked to be valid JSON and skipped, unless an enclosing array pairs
    /// its elements otherwise than by index (the tree walk may name it otherwise).
    fn skip_value(&mut self, depth: usize) -> Flow {
        if self.pairing > 0 {
            return None;
        }
        self.text.skip_value(depth)
    }

    /// The body's object against the tree's `members` (sorted by key, each key once): each
    /// member the body gives is looked up and checked, and each must be given once; a member
    /// only one side has is equal only where the rule ignores it.
    fn object(&mut self, members: &'a [(&'a str, Json<'a>)], depth: usize) -> Flow {
        self.text.eat(b'{')?;
        let mut marks = Marks::new(&mut self.given, members.len());
        let (mut given, mut k) = (0, 0);
        if self.text.eat(b'}').is_none() {
            loop {
                let raw = self.text.string()?;
                self.text.eat(b':')?;
                let key = text_of(&mut self.decoded, raw);
                let found = match self.hints.get_mut(members.len()).and_then(|h| h.get_mut(k)) {
                    // The member the same key of the last object of this size was.
                    Some(hint)
                        if members
                            .get(usize::from(*hint))
                            .is_some_and(|(member, _)| same_key(member, key)) =>
                    {
                        Ok(usize::from(*hint))
                    }
                    hint => {
                        let found = members.binary_search_by(|(member, _)| key_order(member, key));
                        if let (Some(hint), Ok(at)) = (hint, found) {
                            *hint = at as u8;
                        }
                        found
                    }
                };
                k += 1;
                match found {
                    Ok(at) => {
                        let twice = marks.mark(&mut self.given, at);
                        given += usize::from(!twice);
                        let (key, value) = &members[at];
                        self.path.descend(Step::Key(Cow::Borrowed(key)), false);
                        if twice && !self.path.covered() {
                            // A key given twice: its last value counts. Let the trees decide.
                            return None;
                        }
                        self.value(value, depth)?;
                    }
                    Err(_) => {
                        // Only the body has it: equal only if the rule ignores it here.
                        let key = match raw {
                            (raw, false) => Cow::Borrowed(raw),
                            (_, true) => Cow::Owned(self.decoded.clone()),
                        };
                        self.path.descend(Step::Key(key), false);
                        if !self.path.covered() {
                            return None;
                        }
                        self.skip_value(depth)?;
                    }
                }
                self.path.pop();
                if !self.text.more(b'}')? {
                    break;
                }
            }
        }
        if given < members.len() {
            // Members only the tree has: equal only if the rule ignores each.
            for (at, (key, _)) in members.iter().enumerate() {
                if !marks.marked(&self.given, at) {
                    self.path.descend(Step::Key(Cow::Borrowed(key)), false);
                    let ignored = self.path.covered() && self.pairing == 0;
                    self.path.pop();
                    if !ignored {
                        return None;
                    }
                }
            }
        }
        marks.close(&mut self.given);
        Some(())
    }

    /// The body's array against the tree's `items`, element by element: the same length, each
    /// element equal to the one at its index (or ignored there).
    fn array(&mut self, items: &'a [Json<'a>], depth: usize) -> Flow {
        self.text.eat(b'[')?;
        if self.text.eat(b']').is_some() {
            return items.is_empty().then_some(());
        }
        let pairing = self.rule.pairs_elements(&self.path);
        self.pairing += usize::from(pairing);
        let mut index = 0;
        loop {
            let item = items.get(index)?;
            self.path.descend(Step::Index(index), false);
            self.value(item, depth)?;
            self.path.pop();
            index += 1;
            if !self.text.more(b']')? {
                break;
            }
        }
        self.pairing -= usize::from(pairing);
        (index == items.len()).then_some(())
    }
}

/// Which members of one of the tree's objects the body has given so far, a bit each: in one
/// word for up to 64 members (records, on the stack), in words pushed on the walk's `stack`
/// beyond (a map of many keys).
struct Marks {
    word: u64,
    /// Where this object's words start on the stack, if it has any.
    open: Option<usize>,
}

impl Marks {
    fn new(stack: &mut Vec<u64>, members: usize) -> Self {
        let open = (members > 64).then(|| {
            let open = stack.len();
            stack.resize(open + members.div_ceil(64), 0);
            open
        });
        Self { word: 0, open }
    }

    /// Marks member `at`; returns whether it was marked already.
    #[inline(always)]
    fn mark(&mut self, stack: &mut [u64], at: usize) -> bool {
        let (word, bit) = match self.open {
            None => (&mut self.word, 1 << at),
            Some(open) => (&mut stack[open + at / 64], 1 << (at % 64)),
        };
        let marked = *word & bit != 0;
        *word |= bit;
        marked
    }

    fn marked(&self, stack: &[u64], at: usize) -> bool {
        match self.open {
            None => self.word & (1 << at) != 0,
            Some(open) => stack[open + at / 64] & (1 << (at % 64)) != 0,
        }
    }

    fn close(self, stack: &mut Vec<u64>) {
        if let Some(open) = self.open {
            stack.truncate(open);
        }
    }
}

/// A string's text: borrowed without escapes, decoded into `decoded` with them.
fn text_of<'s>(decoded: &'s mut String, (raw, escaped): (&'s str, bool)) -> &'s str {
    if !escaped {
        return raw;
    }
    decoded.clear();
    decode_into(raw, decoded);
    decoded
}

#[cfg(test)]
mod tests {
    use bumpalo::Bump;

    use super::super::scan::test_rule::{Rule, rule};
    use super::*;

    /// `b` read against the tree of `a`.
    fn same_text(rule: &Rule, a: &str, b: &str) -> bool {
        let arena = Bump::new();
        let tree = Json::parse(a.as_bytes(), &arena).unwrap();
        same(rule, &tree, b.as_bytes())
    }

    /// An object of the members `"k<i>":<i>`, in the order given.
    fn numbered(order: impl Iterator<Item = usize>) -> String {
        let members: Vec<String> = order.map(|i| format!("\"k{i}\":{i}")).collect();
        format!("{{{}}}", members.join(","))
    }

    #[test]
    fn keys_in_another_order_and_text_written_otherwise_are_equal() {
        let none = rule(&[], &[]);
        for (a, b) in [
            (
                r#"{"id":1,"customer":{"name":"Ada","country":"FR"},"tags":["a","b"]}"#,
                r#"{"tags":["a","b"],"customer":{"country":"FR","name":"Ada"},"id":1}"#,
            ),
            (r#"{"a":1,"b":2}"#, " { \"b\" : 2 ,\n\"a\":1 } \n"),
            // Keys and strings with escapes, on either side.
            (
                r#"{"é":"a\nb","x":"\/"}"#,
                r#"{"x":"/","\u00e9":"a\u000ab"}"#,
            ),
            (r#"{"\u00e9":"😀"}"#, r#"{"é":"\ud83d\ude00"}"#),
            (
                r#"[1,-2,2.5,1e3,true,false,null,"",{},[]]"#,
                r#"[1,-2,2.50,1000.0,true,false,null,"",{},[]]"#,
            ),
            // The primary gives a key twice; its tree keeps the last value.
            (r#"{"k":1,"k":2,"j":0}"#, r#"{"j":0,"k":2}"#),
        ] {
            assert!(same_text(&none, a, b), "{a} vs {b}");
        }
        // More members than one word of bits.
        assert!(same_text(
            &none,
            &numbered(0..100),
            &numbered((0..100).rev())
        ));
        assert!(!same_text(&none, &numbered(0..100), &numbered(1..100)));
    }

    #[test]
    fn a_body_whose_tree_is_not_the_tree_is_never_shown_equal() {
        let none = rule(&[], &[]);
        for (a, b) in [
            (r#"{"a":1}"#, r#"{"a":2}"#),
            (r#"{"a":1}"#, r#"{"a":1,"b":2}"#),
            (r#"{"a":1,"b":2}"#, r#"{"b":2}"#),
            (r#"{"a":1}"#, r#"{"b":1}"#),
            (r#"[1,2]"#, r#"[2,1]"#),
            (r#"[1,2]"#, r#"[1]"#),
            (r#"[1]"#, r#"[1,2]"#),
            (r#"[1]"#, r#"[]"#),
            (r#"[]"#, r#"[1]"#),
            (r#"{}"#, r#"[]"#),
            (r#""a""#, r#""b""#),
            (r#""a""#, r#""\u0062""#),
            ("null", "false"),
            ("true", "false"),
            ("1", "true"),
            ("\"1\"", "1"),
            (
                r#"{"a":{"b":[1,{"c":null}]}}"#,
                r#"{"a":{"b":[1,{"c":0}]}}"#,
            ),
            // Equal values as the tree walk sees them, but not as this walk does: left to it.
            ("1", "1.0"),
            // The body gives a key twice: its last value counts, whatever the first.
            (r#"{"k":2}"#, r#"{"k":1,"k":2}"#),
            (r#"{"k":2}"#, r#"{"k":2,"k":2}"#),
        ] {
            assert!(!same_text(&none, a, b), "{a} vs {b}");
        }
    }

    #[test]
    fn an_invalid_body_is_never_shown_equal() {
        let none = rule(&[], &[]);
        for (a, b) in [
            (r#"{"a":1}"#, r#"{"a":1"#),
            (r#"{"a":1}"#, r#"{"a":1,}"#),
            (r#"{"a":1}"#, r#"{"a":1} x"#),
            (r#"{"a":1}"#, r#"{"a" 1}"#),
            (r#"[1]"#, r#"[01]"#),
            (r#"[1]"#, r#"[1 1]"#),
            (r#"["a"]"#, "[\"a\u{1}\"]"),
            (r#"["\ud83d\ude00"]"#, r#"["\ud83d"]"#),
            (r#"{"a":null}"#, r#"{"a":nul}"#),
        ] {
            assert!(!same_text(&none, a, b), "{a} vs {b}");
        }
        assert!(!same(&none, &Json::Null, b"\xff"));
        // Ignored or not, a value must be valid.
        let a = rule(&["$.a"], &[]);
        assert!(same_text(&a, r#"{"a":1}"#, r#"{"a":[{}]}"#));
        assert!(!same_text(&a, r#"{"a":1}"#, r#"{"a":[{]}"#));
    }

    #[test]
    fn a_member_only_one_side_has_is_equal_only_where_ignored() {
        let ids = rule(&["$.items[*].id", "$.meta"], &[]);
        let a = r#"{"items":[{"id":1,"n":"a"},{"id":2,"n":"b"}],"meta":{"at":1}}"#;
        for b in [
            r#"{"meta":null,"items":[{"n":"a","id":7},{"n":"b","id":[8]}]}"#,
            // Missing from the body, or only in it.
            r#"{"items":[{"n":"a"},{"n":"b","id":2}]}"#,
            r#"{"items":[{"n":"a","id":1},{"n":"b","id":2}],"meta":1,"meta":2}"#,
        ] {
            assert!(same_text(&ids, a, b), "{b}");
        }
        for b in [
            r#"{"items":[{"id":1},{"id":2,"n":"b"}],"meta":{}}"#,
            r#"{"items":[{"id":1,"n":"a","x":0},{"id":2,"n":"b"}],"meta":{}}"#,
            r#"{"items":[{"id":1,"n":"a"},{"id":2,"n":"b"},{"id":3}],"meta":{}}"#,
        ] {
            assert!(!same_text(&ids, a, b), "{b}");
        }
    }

    #[test]
    fn an_ignored_value_under_paired_elements_stops_the_walk() {
        let keyed = rule(&["$.orders[0].at"], &["$.orders"]);
        let a = r#"{"orders":[{"id":1,"at":1}]}"#;
        assert!(!same_text(&keyed, a, r#"{"orders":[{"at":2,"id":1}]}"#));
        assert!(!same_text(&keyed, a, r#"{"orders":[{"at":1,"id":1}]}"#));
        assert!(!same_text(&keyed, a, r#"{"orders":[{"id":1}]}"#));
        // Without an ignored value beneath, equal elements are equal however they pair.
        let a = r#"{"orders":[{"id":1,"n":1}],"x":1}"#;
        assert!(same_text(&keyed, a, r#"{"x":1,"orders":[{"n":1,"id":1}]}"#));
    }

    #[test]
    fn nesting_deeper_than_the_scanner_follows_is_left_to_the_trees() {
        let none = rule(&[], &[]);
        let nested = |depth: usize| "[".repeat(depth) + &"]".repeat(depth);
        let deep = nested(super::super::scan::MAX_DEPTH);
        assert!(same_text(&none, &deep, &deep));
        let deeper = nested(super::super::scan::MAX_DEPTH + 1);
        assert!(!same_text(&none, &deeper, &deeper));
    }
}
