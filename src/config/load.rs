//! Reading routes.yaml: YAML syntax, then each section and each list item on its own, so that one
//! bad route does not hide the problems of the next one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml::Value;
use sha2::{Digest, Sha256};

use super::diagnostic::{ConfigError, Diagnostic, Location, did_you_mean};
use super::model::{Config, RouteConfig, ServerConfig, TOP_LEVEL_KEYS, UpstreamConfig};
use super::positions::{Positions, join_key};

/// A config file as read from disk: its text (for error quotes) and its hash.
#[derive(Debug)]
pub struct SourceFile {
    /// The name to show in messages, normally the path as the user gave it.
    pub name: String,
    pub text: String,
    /// Hex SHA-256 of `text`, so a user can match a running config with `sha256sum`.
    pub sha256: String,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        let text = text.into();
        let sha256 = sha256_hex(&text);
        Self {
            name: name.into(),
            sha256,
            text,
        }
    }

    /// Turns path-only diagnostics into an error that points at lines in this file, in file
    /// order.
    pub fn invalid(&self, mut diagnostics: Vec<Diagnostic>) -> ConfigError {
        // The second, position-mapping parse is only needed when there is something to point at.
        let positions = Positions::index(&self.text);
        for diagnostic in &mut diagnostics {
            if diagnostic.location.is_none() {
                diagnostic.location = positions.locate(&diagnostic.path);
            }
        }
        diagnostics.sort_by_key(|d| d.location.map(|l| (l.line, l.column)));
        ConfigError::Invalid {
            file: self.name.clone(),
            text: self.text.clone(),
            diagnostics,
        }
    }
}

/// Hex SHA-256 of config text: how a file is identified in `/routes`, logs and reloads.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A parsed config and the file it came from.
///
/// When some sections did not parse, `config` holds the ones that did (and defaults for the
/// rest) and `problems` says what is wrong, so the compiler can still check the remainder and
/// the user sees every error in one pass. Such a config must never be served.
#[derive(Debug)]
pub struct LoadedConfig {
    pub config: Config,
    pub source: SourceFile,
    /// Errors found while parsing; non-empty means the file is invalid.
    pub problems: Vec<Diagnostic>,
    /// Upstreams that exist in the file but did not parse; references to them are not errors
    /// of their own.
    pub unparsed_upstreams: BTreeSet<String>,
    /// For each entry of `config.routes`, its position in the file's `routes` list.
    pub route_numbers: Vec<usize>,
}

/// Reads and parses the file at `path`.
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(SourceFile::new(path.display().to_string(), text))
}

/// Parses config text. YAML syntax errors end parsing; every other problem is collected in
/// [`LoadedConfig::problems`].
pub fn parse(source: SourceFile) -> Result<LoadedConfig, ConfigError> {
    let mut document: Value = match serde_yaml::from_str(&source.text) {
        Ok(document) => document,
        Err(error) => {
            let location = error.location().map(|l| Location {
                line: l.line(),
                column: l.column(),
            });
            let mut diagnostic = Diagnostic::new("", format!("invalid YAML: {error}"))
                .with_hint("check indentation and quoting around this line");
            diagnostic.location = location;
            return Err(source.invalid(vec![diagnostic]));
        }
    };
    if let Err(error) = document.apply_merge() {
        return Err(source.invalid(vec![Diagnostic::new(
            "",
            format!("invalid YAML merge: {error}"),
        )]));
    }

    let mut top = match document {
        Value::Mapping(top) => top,
        Value::Null => {
            return Err(source.invalid(vec![
                Diagnostic::new("", "the file is empty").with_hint(SKELETON_HINT),
            ]));
        }
        _ => {
            return Err(source.invalid(vec![
                Diagnostic::new("", "the file must be a mapping of sections")
                    .with_hint(SKELETON_HINT),
            ]));
        }
    };

    let mut diagnostics = Vec::new();
    for key in top.keys() {
        match key.as_str() {
            Some(name) if TOP_LEVEL_KEYS.contains(&name) => {}
            Some(name) => {
                diagnostics.push(Diagnostic::new(name, "unknown top-level key").with_hint(
                    did_you_mean(name, TOP_LEVEL_KEYS.iter().copied()).unwrap_or_else(|| {
                        format!("top-level keys are {}", TOP_LEVEL_KEYS.join(", "))
                    }),
                ))
            }
            None => diagnostics.push(Diagnostic::new("", "top-level keys must be strings")),
        }
    }

    let server = match top.remove("server") {
        None | Some(Value::Null) => None,
        Some(value) => section::<ServerConfig>(value, "server", &mut diagnostics),
    };

    /// Shown wherever the `upstreams` section is missing or malformed.
    const UPSTREAMS_EXAMPLE: &str = "upstreams:\n      legacy:\n        backends: [127.0.0.1:9001]";
    let mut upstreams = BTreeMap::new();
    let mut unparsed_upstreams = BTreeSet::new();
    match top.remove("upstreams") {
        Some(Value::Mapping(entries)) if !entries.is_empty() => {
            for (name, value) in entries {
                let Some(name) = name.as_str().map(str::to_owned) else {
                    diagnostics.push(Diagnostic::new(
                        "upstreams",
                        "upstream names must be strings",
                    ));
                    continue;
                };
                let path = join_key("upstreams", &name);
                match section::<UpstreamConfig>(value, &path, &mut diagnostics) {
                    Some(upstream) => {
                        upstreams.insert(name, upstream);
                    }
                    None => {
                        unparsed_upstreams.insert(name);
                    }
                }
            }
        }
        None | Some(Value::Null) | Some(Value::Mapping(_)) => diagnostics.push(
            Diagnostic::new("upstreams", "missing: at least one upstream is required")
                .with_hint(UPSTREAMS_EXAMPLE),
        ),
        Some(_) => diagnostics.push(
            Diagnostic::new(
                "upstreams",
                "must be a mapping of upstream name to settings",
            )
            .with_hint(UPSTREAMS_EXAMPLE),
        ),
    }

    let default_upstream = match top.remove("default_upstream") {
        Some(Value::String(name)) if !name.trim().is_empty() => Some(name),
        None | Some(Value::Null) => {
            diagnostics.push(
                Diagnostic::new(
                    "default_upstream",
                    "missing: name the upstream that serves unmatched requests",
                )
                .with_hint("default_upstream: legacy"),
            );
            None
        }
        Some(_) => {
            diagnostics.push(Diagnostic::new(
                "default_upstream",
                "must be an upstream name",
            ));
            None
        }
    };

    let kill_switch = match top.remove("kill_switch") {
        None | Some(Value::Null) => false,
        Some(value) => section::<bool>(value, "kill_switch", &mut diagnostics).unwrap_or(false),
    };
    let tester_override = match top.remove("tester_override") {
        None | Some(Value::Null) => None,
        Some(value) => section(value, "tester_override", &mut diagnostics),
    };

    let mut routes = Vec::new();
    let mut route_numbers = Vec::new();
    match top.remove("routes") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) => {
            for (index, value) in items.into_iter().enumerate() {
                let path = format!("routes[{index}]");
                if let Some(route) = section::<RouteConfig>(value, &path, &mut diagnostics) {
                    routes.push(route);
                    route_numbers.push(index);
                }
            }
        }
        Some(_) => diagnostics.push(
            Diagnostic::new("routes", "must be a list of routes").with_hint(
                "routes:\n      - name: orders\n        match: { path_prefix: /api/orders }",
            ),
        ),
    }

    Ok(LoadedConfig {
        config: Config {
            server: server.unwrap_or_default(),
            upstreams,
            // Empty only when already reported above; the compiler skips an empty name.
            default_upstream: default_upstream.unwrap_or_default(),
            routes,
            kill_switch,
            tester_override,
        },
        source,
        problems: diagnostics,
        unparsed_upstreams,
        route_numbers,
    })
}

const SKELETON_HINT: &str = "a minimal config is:\n      upstreams:\n        legacy: { backends: [127.0.0.1:9001] }\n      default_upstream: legacy";

/// Deserializes one section; on failure records where and why and returns `None`.
fn section<T: DeserializeOwned>(
    value: Value,
    base: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            let mut path = base.to_owned();
            for segment in error.path().iter() {
                use serde_path_to_error::Segment;
                match segment {
                    Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                    Segment::Map { key } => path = join_key(&path, key),
                    Segment::Enum { variant } => path = join_key(&path, variant),
                    Segment::Unknown => {}
                }
            }
            let message = error.into_inner().to_string();
            let hint = hint_for(&message);
            diagnostics.push(Diagnostic::new(path, message).with_hint_opt(hint));
            None
        }
    }
}

/// Suggestions for serde's standard messages.
fn hint_for(message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (given, expected) = rest.split_once('`')?;
        let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return Some(
            did_you_mean(given, candidates.iter().copied()).unwrap_or_else(|| {
                if candidates.is_empty() {
                    "this section takes no keys".to_owned()
                } else {
                    format!("valid keys here: {}", candidates.join(", "))
                }
            }),
        );
    }
    if message.contains("missing field") {
        return Some("add the field; docs/configuration.md lists every key".to_owned());
    }
    if message.contains("time unit")
        || message.contains("expected number")
        || message.contains("expected a duration")
    {
        return Some("durations look like 250ms, 5s, 1m30s".to_owned());
    }
    if message.contains("socket address") {
        return Some("write an IP and a port, like 127.0.0.1:9901".to_owned());
    }
    if message.contains("expected a string") {
        return Some("quote the value, like \"true\" or \"8080\"".to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    //! Parsing problems, located: each names its field and line, with a hint where one helps.

    use super::*;

    const BASE: &str =
        "upstreams:\n  legacy: { backends: [127.0.0.1:9001] }\ndefault_upstream: legacy\n";

    /// Every problem as `path: message @line`, and the hints.
    fn problems(text: &str) -> (Vec<String>, Vec<String>) {
        // Parse problems travel with the loaded file, so that the compiler's join them in one
        // report; located as that report locates them.
        let error = match parse(SourceFile::new("routes.yaml", text)) {
            Err(error) => error,
            Ok(loaded) => {
                assert!(!loaded.problems.is_empty(), "no problem found in {text}");
                loaded.source.invalid(loaded.problems)
            }
        };
        let diagnostics = error.diagnostics();
        (
            diagnostics
                .iter()
                .map(|d| {
                    format!(
                        "{}: {} @{}",
                        d.path,
                        d.message,
                        d.location.map_or(0, |l| l.line)
                    )
                })
                .collect(),
            diagnostics.iter().filter_map(|d| d.hint.clone()).collect(),
        )
    }

    #[test]
    fn a_minimal_file_parses_with_its_defaults() {
        let loaded = parse(SourceFile::new("routes.yaml", BASE)).expect("parses");
        assert_eq!(loaded.config.default_upstream, "legacy");
        assert!(loaded.config.routes.is_empty());
        assert!(!loaded.config.kill_switch);
        assert_eq!(loaded.source.sha256, sha256_hex(BASE));
    }

    #[test]
    fn a_misspelled_top_level_key_is_named_with_a_suggestion() {
        let (found, hints) = problems(&format!("{BASE}rotues: []\n"));
        assert_eq!(found, ["rotues: unknown top-level key @4"]);
        assert!(hints[0].contains("routes"), "{hints:?}");
    }

    #[test]
    fn a_misspelled_route_key_is_located_at_its_line_with_the_keys_it_could_be() {
        let (found, hints) = problems(&format!(
            "{BASE}routes:\n  - name: r\n    upstream: legacy\n    mtach: {{ path_prefix: / }}\n"
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("routes[0].mtach: unknown field `mtach`"),
            "{found:?}"
        );
        assert!(found[0].ends_with("@7"), "{found:?}");
        assert!(hints[0].contains("match"), "{hints:?}");
    }

    #[test]
    fn a_bad_duration_gets_the_duration_hint() {
        let (found, hints) = problems(&format!("{BASE}server: {{ request_timeout: soon }}\n"));
        assert!(found[0].starts_with("server.request_timeout"), "{found:?}");
        assert!(hints.iter().any(|h| h.contains("250ms")), "{hints:?}");
    }

    #[test]
    fn broken_yaml_is_located_at_the_line_the_parser_stopped() {
        let (found, _) = problems("upstreams:\n  legacy: { backends: [127.0.0.1:9001]\n");
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with(": invalid YAML"), "{found:?}");
        assert!(!found[0].ends_with("@0"), "{found:?}");
    }

    #[test]
    fn an_empty_file_or_a_list_is_refused_with_a_skeleton() {
        for text in ["", "- a\n- b\n"] {
            let (found, hints) = problems(text);
            assert_eq!(found.len(), 1, "{text:?}: {found:?}");
            assert!(hints[0].contains("default_upstream"), "{hints:?}");
        }
    }

    #[test]
    fn problems_in_several_sections_are_all_reported() {
        let (found, _) = problems(
            "upstreams:\n  legacy: { backends: [127.0.0.1:9001], wat: 1 }\ndefault_upstream: legacy\nserver: { listen: nowhere }\n",
        );
        assert!(
            found.iter().any(|p| p.starts_with("upstreams.legacy")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.starts_with("server.listen")),
            "{found:?}"
        );
    }
}
