//! routes.yaml carried inside a Kubernetes ConfigMap manifest, as deployments ship it.
//!
//! This module owns recognising such a manifest (a YAML document with `kind: ConfigMap`; a file
//! may hold several documents), finding its `data` entries that are YAML files, and moving the
//! positions of problems found in an entry back into the manifest, so `strangler validate` can
//! check what is deployed and point at the manifest's own lines.
//!
//! A `|` literal block keeps every line of the entry as it is, only indented, so its lines map
//! one to one. Any other spelling (a quoted string with `\n` escapes, as `kubectl get -o yaml`
//! writes text with trailing spaces) has no such mapping: problems then point at the entry's
//! key, with the position inside the entry in the message.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::diagnostic::{ConfigError, Location};

/// One `data` entry of a ConfigMap whose key ends in `.yaml` or `.yml`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigMapEntry {
    /// The entry's key, like `routes.yaml`: the file name it is mounted as.
    pub key: String,
    /// The entry's value: the routes file itself.
    pub text: String,
    /// Where the key stands in the manifest.
    key_location: Location,
    /// Where the entry's lines stand in the manifest, when they can be mapped.
    lines: Option<LineMap>,
}

/// Entry line `n` (1-based) is manifest line `n + offset`, indented by `indent` more columns.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LineMap {
    offset: usize,
    indent: usize,
}

impl ConfigMapEntry {
    /// The field path of the entry in the manifest, for messages: `data.routes.yaml`.
    pub fn label(&self) -> String {
        format!("data.{}", self.key)
    }

    /// Rewrites an error found in this entry's text so that it is about the manifest:
    /// `manifest_name` and `manifest_text` become the file and quoted text, and every position
    /// moves to the manifest's line and column.
    pub fn relocate(
        &self,
        error: ConfigError,
        manifest_name: &str,
        manifest_text: &str,
    ) -> ConfigError {
        let ConfigError::Invalid {
            mut diagnostics, ..
        } = error
        else {
            return error;
        };
        for diagnostic in &mut diagnostics {
            match (diagnostic.location, self.lines) {
                (Some(inner), Some(map)) => {
                    diagnostic.location = Some(Location {
                        line: inner.line + map.offset,
                        column: inner.column + map.indent,
                    });
                }
                (Some(inner), None) => {
                    diagnostic.message = format!(
                        "{} (at line {}, column {} of {})",
                        diagnostic.message,
                        inner.line,
                        inner.column,
                        self.label()
                    );
                    diagnostic.location = Some(self.key_location);
                }
                // About the whole entry (something missing from it): its key is the place.
                (None, _) => diagnostic.location = Some(self.key_location),
            }
        }
        ConfigError::Invalid {
            file: manifest_name.to_owned(),
            text: manifest_text.to_owned(),
            diagnostics,
        }
    }
}

/// The YAML entries of every ConfigMap in `text`, in file order; `None` when `text` holds no
/// ConfigMap (or is not YAML the event parser can read, in which case the routes-file loader
/// reports why). A ConfigMap without YAML entries yields `Some` of an empty list.
pub fn configmap_entries(text: &str) -> Option<Vec<ConfigMapEntry>> {
    let mut walker = Walker::default();
    Parser::new_from_str(text).load(&mut walker, true).ok()?;
    walker.found_configmap.then(|| {
        walker
            .entries
            .into_iter()
            .map(|raw| ConfigMapEntry {
                lines: map_lines(text, &raw),
                key: raw.key,
                text: raw.text,
                key_location: raw.key_location,
            })
            .collect()
    })
}

/// An entry as the event walk saw it.
struct RawEntry {
    key: String,
    text: String,
    key_location: Location,
    /// The value's marker and style: for a literal block, the marker is the first non-blank
    /// content line, at the block's indentation.
    value_mark: Marker,
    style: TScalarStyle,
}

/// Checks that every line of a literal block stands in the manifest, indented, where the
/// marker says; any doubt (another style, an unexpected line) means no mapping.
fn map_lines(manifest: &str, entry: &RawEntry) -> Option<LineMap> {
    if entry.style != TScalarStyle::Literal {
        return None;
    }
    let lines: Vec<&str> = entry.text.lines().collect();
    let first = lines.iter().position(|line| !line.is_empty())?;
    // The marker's line is 1-based and belongs to entry line `first + 1`.
    let offset = entry.value_mark.line().checked_sub(first + 1)?;
    let indent = entry.value_mark.col();
    let manifest_lines: Vec<&str> = manifest.lines().collect();
    for (index, line) in lines.iter().enumerate() {
        let outer = manifest_lines.get(offset + index)?;
        let matches = if line.is_empty() {
            outer.trim().is_empty()
        } else {
            outer.len() == indent + line.len()
                && outer[..indent].bytes().all(|b| b == b' ')
                && outer.ends_with(line)
        };
        if !matches {
            return None;
        }
    }
    Some(LineMap { offset, indent })
}

/// Walks the events of every document, remembering the top-level `kind` and the scalars of the
/// top-level `data` mapping.
#[derive(Default)]
struct Walker {
    /// Nesting of collections in the current document: 1 inside the top-level mapping.
    depth: usize,
    /// The last top-level key read, while its value is expected.
    top_key: Option<String>,
    /// Inside the top-level `data` mapping: the entry key read, while its value is expected.
    data_key: Option<(String, Location)>,
    in_data: bool,
    /// The current document's `kind` is ConfigMap.
    is_configmap: bool,
    /// Entries of the current document.
    document_entries: Vec<RawEntry>,
    found_configmap: bool,
    entries: Vec<RawEntry>,
}

impl Walker {
    fn end_document(&mut self) {
        if self.is_configmap {
            self.found_configmap = true;
            self.entries.append(&mut self.document_entries);
        }
        self.document_entries.clear();
        self.is_configmap = false;
        self.top_key = None;
        self.in_data = false;
        self.depth = 0;
    }

    /// A value at depth 1 (the top-level mapping's) starts; `top_key` was its key.
    fn top_level_value(&mut self, scalar: Option<&str>, starts_collection: bool) {
        match self.top_key.take().as_deref() {
            Some("kind") => self.is_configmap = scalar == Some("ConfigMap"),
            Some("data") if starts_collection => self.in_data = true,
            _ => {}
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::DocumentStart => self.end_document(),
            Event::DocumentEnd | Event::StreamEnd => self.end_document(),
            Event::Scalar(value, style, ..) => match self.depth {
                1 if self.top_key.is_none() => self.top_key = Some(value),
                1 => self.top_level_value(Some(&value), false),
                2 if self.in_data => match self.data_key.take() {
                    None => {
                        let location = Location {
                            line: mark.line(),
                            column: mark.col() + 1,
                        };
                        self.data_key = Some((value, location));
                    }
                    Some((key, key_location)) => {
                        if key.ends_with(".yaml") || key.ends_with(".yml") {
                            self.document_entries.push(RawEntry {
                                key,
                                text: value,
                                key_location,
                                value_mark: mark,
                                style,
                            });
                        }
                    }
                },
                _ => {}
            },
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                match self.depth {
                    1 if self.top_key.is_some() => {
                        let is_mapping = matches!(event, Event::MappingStart(..));
                        self.top_level_value(None, is_mapping);
                    }
                    // A collection as a data value is not a file; the API server rejects it.
                    2 if self.in_data => self.data_key = None,
                    _ => {}
                }
                self.depth += 1;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 1 {
                    self.in_data = false;
                }
            }
            Event::Alias(_) => {
                if self.depth == 1 && self.top_key.is_some() {
                    self.top_level_value(None, false);
                } else if self.depth == 2 && self.in_data {
                    self.data_key = None;
                }
            }
            Event::Nothing | Event::StreamStart => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Diagnostic;

    const MANIFEST: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: strangler-routes
data:
  README.md: not yaml
  routes.yaml: |
    upstreams:
      legacy: { backends: [legacy:80] }

    default_upstream: legacy
";

    fn error_at(line: usize, column: usize) -> ConfigError {
        let mut diagnostic = Diagnostic::new("default_upstream", "broken");
        diagnostic.location = Some(Location { line, column });
        ConfigError::Invalid {
            file: "routes.yaml".into(),
            text: String::new(),
            diagnostics: vec![diagnostic, Diagnostic::new("", "about the whole file")],
        }
    }

    #[test]
    fn finds_the_yaml_entries_and_maps_their_lines() {
        let entries = configmap_entries(MANIFEST).expect("a ConfigMap");
        assert_eq!(entries.len(), 1);
        let entry = &entries[0];
        assert_eq!(entry.key, "routes.yaml");
        assert_eq!(entry.label(), "data.routes.yaml");
        assert!(entry.text.starts_with("upstreams:\n  legacy:"));
        assert_eq!(
            entry.lines,
            Some(LineMap {
                offset: 7,
                indent: 4
            })
        );

        // Entry line 4, column 1 is `default_upstream` at manifest line 11, column 5.
        let ConfigError::Invalid {
            file,
            text,
            diagnostics,
        } = entry.relocate(error_at(4, 1), "configmap.yaml", MANIFEST)
        else {
            panic!("stays invalid")
        };
        assert_eq!(file, "configmap.yaml");
        assert_eq!(text, MANIFEST);
        assert_eq!(
            diagnostics[0].location,
            Some(Location {
                line: 11,
                column: 5
            })
        );
        assert!(
            MANIFEST
                .lines()
                .nth(10)
                .unwrap()
                .starts_with("    default_upstream")
        );
        // Not about a line: pointed at the entry's key.
        assert_eq!(
            diagnostics[1].location,
            Some(Location { line: 7, column: 3 })
        );
    }

    #[test]
    fn a_quoted_entry_points_at_its_key_and_names_the_inner_position() {
        let manifest =
            "kind: ConfigMap\ndata:\n  routes.yml: \"upstreams: {}\\ndefault_upstream: x\\n\"\n";
        let entries = configmap_entries(manifest).unwrap();
        assert_eq!(entries[0].lines, None);
        assert_eq!(entries[0].text, "upstreams: {}\ndefault_upstream: x\n");
        let relocated = entries[0].relocate(error_at(2, 1), "cm.yaml", manifest);
        let diagnostic = &relocated.diagnostics()[0];
        assert_eq!(diagnostic.location, Some(Location { line: 3, column: 3 }));
        assert_eq!(
            diagnostic.message,
            "broken (at line 2, column 1 of data.routes.yml)"
        );
    }

    #[test]
    fn only_configmaps_are_recognised_in_any_document() {
        assert_eq!(
            configmap_entries("upstreams: {}\ndefault_upstream: x\n"),
            None
        );
        assert_eq!(
            configmap_entries("kind: Deployment\ndata: {a.yaml: x}\n"),
            None
        );
        assert_eq!(configmap_entries("{ not yaml"), None);
        // A ConfigMap without YAML entries is still a ConfigMap, with nothing to check.
        assert_eq!(
            configmap_entries("kind: ConfigMap\ndata: {a.txt: x}\n"),
            Some(vec![])
        );

        let bundle = "kind: Service\ndata:\n  x.yaml: a\n---\nkind: ConfigMap\ndata:\n  first.yaml: |\n    a: 1\n  nested: {b.yaml: no}\n  second.yml: b\n";
        let entries = configmap_entries(bundle).unwrap();
        let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["first.yaml", "second.yml"]);
        assert_eq!(
            entries[0].lines,
            Some(LineMap {
                offset: 7,
                indent: 4
            })
        );
    }
}
