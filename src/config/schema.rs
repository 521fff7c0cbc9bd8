//! The JSON Schema of routes.yaml, generated from the serde model in [`super::model`].
//!
//! This module owns the schema's entry point ([`json_schema`], what `strangler schema` prints
//! and `docs/routes.schema.json` holds) and the schemas of the value types whose serde form is
//! not their Rust type: human-readable durations and sizes, a host given as one name or a list,
//! and keys that were removed but are still recognised to give a hint. Everything else is
//! derived from the model's own attributes, so the schema follows the model without a second
//! copy to keep in step.
//!
//! Draft-07 is used because it is what editors (yaml-language-server, VS Code) support fully.
//! The schema is a guide for editors and CI, never the loader: it checks shapes and ranges;
//! cross-references (does an upstream exist, does a regex compile) are `strangler validate`'s.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use super::model::Config;

/// Where the committed copy of the schema lives, relative to the repository root; editors find
/// it through the `# yaml-language-server: $schema=` line at the top of a routes file.
pub const SCHEMA_PATH: &str = "docs/routes.schema.json";

/// The schema of a whole routes file, as a JSON value.
pub fn json_schema() -> serde_json::Value {
    let schema = SchemaSettings::draft07()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<Config>();
    let mut schema = schema.to_value();
    unwrap_descriptions(&mut schema);
    schema
}

/// Descriptions come from doc comments, wrapped at 100 columns; editors show them in hovers
/// that wrap by themselves, so only paragraph breaks are kept.
fn unwrap_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|paragraph| paragraph.replace('\n', " "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(value),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// [`json_schema`] as pretty-printed text ending in a newline: byte for byte what
/// `strangler schema` prints and [`SCHEMA_PATH`] holds.
pub fn json_schema_text() -> String {
    let mut text =
        serde_json::to_string_pretty(&json_schema()).expect("a JSON value always serializes");
    text.push('\n');
    text
}

/// humantime's duration syntax (`250ms`, `5s`, `1m30s`, `1.5h`, `2h 37min`, or `0`), unit for
/// unit as `humantime::parse_duration` accepts it; a unit test holds the two together.
const DURATION_PATTERN: &str = r"^(0|\s*([0-9]+(\.[0-9]+)?\s*(nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)\s*)+)$";

/// Schema of a `Duration` read with `humantime_serde`: a string such as `5s`.
pub(super) struct HumanDuration;

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit (ms, s, m, h, d), such as 250ms, 5s or 1m30s.",
            "pattern": DURATION_PATTERN,
            "examples": ["250ms", "5s", "1m30s"]
        })
    }
}

/// Schema of a `bytesize::ByteSize`: a number of bytes, or a string with a unit.
pub(super) struct ByteSize;

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: a number of bytes, or a number and a unit such as 8KiB, 64KiB or 100MiB.",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "examples": ["8KiB", "1MiB", "100MiB"] }
            ]
        })
    }
}

/// Schema of a list that may be written as its only item (`host: a.example.com`).
pub(super) struct OneOrMany;

impl JsonSchema for OneOrMany {
    fn schema_name() -> Cow<'static, str> {
        "OneOrMany".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" } }
            ]
        })
    }
}

/// A key the model still reads only to reject it with a hint (an old spelling): no value is
/// valid, so an editor flags it where it is written; the description says where it went.
pub(super) fn removed_key(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "deprecated": true,
        "not": {}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TOP_LEVEL_KEYS;

    #[test]
    fn the_duration_pattern_accepts_what_humantime_parses() {
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        for text in [
            "0",
            "250ms",
            "5s",
            "1m30s",
            "1.5h",
            "2h 37min",
            "7days",
            "1w",
            "10 sec",
            "3M",
            "1y",
            "100us",
            "5µs",
            "1m 30s",
            // Rejected by both:
            "",
            "5",
            "s",
            "1.s",
            "5x",
            "-5s",
            "1h30",
            "five seconds",
        ] {
            assert_eq!(
                pattern.is_match(text),
                humantime::parse_duration(text).is_ok(),
                "`{text}`"
            );
        }
    }

    #[test]
    fn the_schema_lists_exactly_the_top_level_keys_and_denies_others() {
        let schema = json_schema();
        let mut properties: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        properties.sort_unstable();
        let mut expected = TOP_LEVEL_KEYS.to_vec();
        expected.sort_unstable();
        assert_eq!(properties, expected);
        assert_eq!(schema["additionalProperties"], false);
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        required.sort_unstable();
        assert_eq!(required, ["default_upstream", "upstreams"]);
    }

    #[test]
    fn targets_and_value_matches_are_a_string_or_a_map() {
        let schema = json_schema();
        let definitions = &schema["definitions"];
        let target = &definitions["Target"]["anyOf"];
        assert_eq!(target[0]["type"], "string");
        assert_eq!(
            target[1]["$ref"], "#/definitions/TargetWithEdits",
            "{target}"
        );
        assert_eq!(
            definitions["TargetWithEdits"]["additionalProperties"],
            false
        );
        let value = &definitions["ValueMatch"]["anyOf"];
        assert_eq!(value[0]["type"], "string");
        assert_eq!(value[2]["maxProperties"], 1);
    }

    #[test]
    fn every_struct_serde_closes_is_closed_in_the_schema() {
        // Every model struct denies unknown fields; an object schema with named properties
        // that allows others would let an editor accept a typo the loader rejects.
        let schema = json_schema();
        for (name, definition) in schema["definitions"].as_object().unwrap() {
            if definition.get("properties").is_some() {
                assert_eq!(
                    definition["additionalProperties"], false,
                    "definitions.{name} allows unknown keys"
                );
            }
        }
    }
}
