//! Maps field paths (`routes[3].match.path_regex`) to where they stand in the YAML text.
//!
//! serde tells us *which* field is wrong but, once the document is a `serde_yaml::Value`, no
//! longer *where*. A second, event-level pass over the text with yaml-rust2 records the position
//! of every mapping key and sequence item, so any diagnostic with a path gets a line and column.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::diagnostic::Location;

/// Field path -> position of its key (for map entries) or of the item (for list entries).
#[derive(Debug, Default)]
pub struct Positions {
    by_path: HashMap<String, Location>,
}

impl Positions {
    /// Indexes `text`. A document yaml-rust2 cannot read yields an empty index (serde_yaml has
    /// already reported the syntax error by then).
    pub fn index(text: &str) -> Self {
        let mut walker = Walker::default();
        if Parser::new_from_str(text).load(&mut walker, false).is_err() {
            return Self::default();
        }
        Self {
            by_path: walker.by_path,
        }
    }

    /// The position of `path`, or of its nearest ancestor the index knows.
    pub fn locate(&self, path: &str) -> Option<Location> {
        let mut path = path;
        loop {
            if let Some(location) = self.by_path.get(path) {
                return Some(*location);
            }
            path = parent(path)?;
        }
    }
}

/// `a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> None.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

pub(crate) fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

enum Frame {
    /// `key` is the key whose value comes next; `None` while waiting for a key.
    Mapping {
        path: String,
        key: Option<String>,
    },
    Sequence {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    by_path: HashMap<String, Location>,
}

impl Walker {
    /// Called when any node starts; returns the path of that node if it is a value (a key
    /// returns `None`, since keys are recorded under the path they introduce).
    fn node_start(&mut self, mark: Marker, scalar: Option<&str>) -> Option<String> {
        // yaml-rust2 counts lines from 1 but columns from 0.
        let location = Location {
            line: mark.line(),
            column: mark.col() + 1,
        };
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Mapping { path, key }) => match key.take() {
                Some(key) => Some(join_key(path, &key)),
                None => {
                    let name = scalar.unwrap_or("?").to_owned();
                    self.by_path
                        .entry(join_key(path, &name))
                        .or_insert(location);
                    *key = Some(name);
                    None
                }
            },
            Some(Frame::Sequence { path, next }) => {
                let item = format!("{path}[{next}]");
                *next += 1;
                self.by_path.entry(item.clone()).or_insert(location);
                Some(item)
            }
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(value, ..) => {
                self.node_start(mark, Some(&value));
            }
            Event::Alias(_) => {
                self.node_start(mark, None);
            }
            Event::MappingStart(..) => {
                let path = self.node_start(mark, None).unwrap_or_else(|| "?".into());
                self.stack.push(Frame::Mapping { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.node_start(mark, None).unwrap_or_else(|| "?".into());
                self.stack.push(Frame::Sequence { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
server:
  listen: 127.0.0.1:8080
routes:
  - name: a
    match:
      path_regex: '^/x'
  - name: b
    match: { path: /y }
";

    #[test]
    fn locates_keys_and_items() {
        let positions = Positions::index(DOC);
        assert_eq!(
            positions.locate("server.listen"),
            Some(Location { line: 2, column: 3 })
        );
        assert_eq!(
            positions.locate("routes[0].match.path_regex"),
            Some(Location { line: 6, column: 7 })
        );
        assert_eq!(
            positions.locate("routes[1].match.path").map(|l| l.line),
            Some(8)
        );
    }

    #[test]
    fn falls_back_to_the_nearest_known_ancestor() {
        let positions = Positions::index(DOC);
        assert_eq!(
            positions
                .locate("routes[1].match.headers.x-a")
                .map(|l| l.line),
            Some(8)
        );
    }
}
