//! `strangler validate`: check config files (or stdin, or the routes inside a Kubernetes
//! ConfigMap manifest) exactly as `strangler run` would load them, and report for people
//! (`text`), tools (`json`) or GitHub Actions (`github`).
//!
//! This module owns reading the inputs and the three report formats; the checks themselves are
//! the library's ([`strangler::config::parse`], [`RouteTable::check`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::ValueEnum;
use strangler::config::{ConfigError, Diagnostic, SourceFile, configmap_entries, parse};
use strangler::routing::{CheckedConfig, RouteTable};
use strangler::upstream::AddressResolution;

use super::github::Annotation;

/// The argument that means "read standard input".
pub const STDIN_ARGUMENT: &str = "-";
/// What standard input is called in messages.
pub const STDIN_NAME: &str = "<stdin>";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// rustc-style errors on stderr, one OK line per valid file on stdout.
    Text,
    /// One JSON array on stdout, an object per checked config.
    Json,
    /// GitHub Actions `::error` workflow commands on stdout, one per problem.
    Github,
}

/// One routes config checked: a file, stdin, or one entry of a ConfigMap manifest.
struct Checked {
    /// The input as the user named it (`<stdin>` for `-`).
    file: String,
    /// For a ConfigMap entry, its field path in the manifest (`data.routes.yaml`).
    entry: Option<String>,
    outcome: Result<CheckedConfig, ConfigError>,
}

/// Checks every input and prints the report; exit status 0 when every config is valid, else 1.
pub fn run(inputs: &[PathBuf], format: Format, resolution: AddressResolution) -> ExitCode {
    let checked: Vec<Checked> = inputs
        .iter()
        .flat_map(|input| check_input(input, resolution))
        .collect();
    match format {
        Format::Text => report_text(&checked),
        Format::Json => println!("{}", report_json(&checked)),
        Format::Github => {
            for line in report_github(&checked) {
                println!("{line}");
            }
        }
    }
    if checked.iter().all(|c| c.outcome.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Reads `input` and checks the routes config it holds, or each one, for a ConfigMap manifest.
fn check_input(input: &Path, resolution: AddressResolution) -> Vec<Checked> {
    let (file, text) = match read(input) {
        Ok(read) => read,
        Err((file, error)) => {
            return vec![Checked {
                file,
                entry: None,
                outcome: Err(error),
            }];
        }
    };
    let check = |text: String| {
        parse(SourceFile::new(&file, text)).and_then(|mut loaded| {
            // What `run` needs from this machine (the diff store's directory) is checked with
            // DNS, i.e. when validating for this machine; `--no-resolve` checks the file alone.
            if resolution == AddressResolution::Dns {
                loaded
                    .problems
                    .extend(strangler::diff::check_store(&loaded.config));
            }
            RouteTable::check(loaded, resolution)
        })
    };
    let Some(entries) = configmap_entries(&text) else {
        let outcome = check(text);
        return vec![Checked {
            file,
            entry: None,
            outcome,
        }];
    };
    if entries.is_empty() {
        let error = SourceFile::new(&file, text.clone()).invalid(vec![
            Diagnostic::new(
                "data",
                "this ConfigMap has no entry ending in .yaml or .yml: there is no routes file to check",
            )
            .with_hint("strangler's routes go in an entry like `routes.yaml: |`"),
        ]);
        return vec![Checked {
            file,
            entry: None,
            outcome: Err(error),
        }];
    }
    entries
        .iter()
        .map(|entry| Checked {
            file: file.clone(),
            entry: Some(entry.label()),
            outcome: check(entry.text.clone()).map_err(|error| entry.relocate(error, &file, &text)),
        })
        .collect()
}

/// The input's name for messages and its text.
fn read(input: &Path) -> Result<(String, String), (String, ConfigError)> {
    if input == Path::new(STDIN_ARGUMENT) {
        let mut text = String::new();
        return match std::io::stdin().read_to_string(&mut text) {
            Ok(_) => Ok((STDIN_NAME.to_owned(), text)),
            Err(source) => Err((
                STDIN_NAME.to_owned(),
                ConfigError::Read {
                    path: PathBuf::from(STDIN_NAME),
                    source,
                },
            )),
        };
    }
    let file = input.display().to_string();
    match std::fs::read_to_string(input) {
        Ok(text) => Ok((file, text)),
        Err(source) => Err((
            file,
            ConfigError::Read {
                path: input.to_owned(),
                source,
            },
        )),
    }
}

/// `routes.yaml` or, for a ConfigMap entry, `configmap.yaml: data.routes.yaml`.
fn display_name(checked: &Checked) -> String {
    match &checked.entry {
        Some(entry) => format!("{}: {entry}", checked.file),
        None => checked.file.clone(),
    }
}

fn summary(config: &CheckedConfig) -> String {
    format!(
        "OK ({} routes, {} upstreams, sha256 {})",
        config.routes, config.upstreams, config.sha256
    )
}

fn report_text(checked: &[Checked]) {
    for checked in checked {
        match &checked.outcome {
            Ok(config) => println!("{}: {}", display_name(checked), summary(config)),
            Err(error) => eprintln!("{error}"),
        }
    }
}

fn report_json(checked: &[Checked]) -> String {
    let reports = checked
        .iter()
        .map(|checked| {
            let mut report = match &checked.outcome {
                Ok(config) => serde_json::json!({
                    "file": checked.file,
                    "valid": true,
                    "routes": config.routes,
                    "upstreams": config.upstreams,
                    "sha256": config.sha256,
                }),
                Err(error @ ConfigError::Read { .. }) => serde_json::json!({
                    "file": checked.file,
                    "valid": false,
                    "errors": [{ "path": "", "message": error.to_string() }],
                }),
                Err(error) => serde_json::json!({
                    "file": checked.file,
                    "valid": false,
                    "errors": error.diagnostics(),
                }),
            };
            if let Some(entry) = &checked.entry {
                report["entry"] = entry.as_str().into();
            }
            report
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::Value::Array(reports)).expect("JSON values serialize")
}

/// One `::error` line per problem, and a plain line per config saying how it went, for the
/// log. Standard input has no file in the repository to annotate.
fn report_github(checked: &[Checked]) -> Vec<String> {
    let mut lines = Vec::new();
    for checked in checked {
        let file = (checked.file != STDIN_NAME).then_some(checked.file.as_str());
        let in_entry = checked
            .entry
            .as_ref()
            .map(|entry| format!(" ({entry})"))
            .unwrap_or_default();
        match &checked.outcome {
            Ok(config) => lines.push(format!("{}: {}", display_name(checked), summary(config))),
            Err(error @ ConfigError::Read { .. }) => lines.push(
                Annotation {
                    file,
                    title: "strangler validate",
                    message: &error.to_string(),
                    ..Annotation::default()
                }
                .error(),
            ),
            Err(error) => {
                let diagnostics = error.diagnostics();
                for diagnostic in diagnostics {
                    let title = if diagnostic.path.is_empty() {
                        format!("strangler validate{in_entry}")
                    } else {
                        format!("strangler validate: {}{in_entry}", diagnostic.path)
                    };
                    let message = match &diagnostic.hint {
                        Some(hint) => format!("{}\nhint: {hint}", diagnostic.message),
                        None => diagnostic.message.clone(),
                    };
                    lines.push(
                        Annotation {
                            file,
                            line: diagnostic.location.map(|l| l.line),
                            column: diagnostic.location.map(|l| l.column),
                            title: &title,
                            message: &message,
                        }
                        .error(),
                    );
                }
                let count = diagnostics.len();
                lines.push(format!(
                    "{}: {count} error{} found; nothing was applied",
                    display_name(checked),
                    if count == 1 { "" } else { "s" }
                ));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use strangler::config::Location;

    fn invalid(file: &str, entry: Option<&str>) -> Checked {
        let mut located = Diagnostic::new("routes[0].upstream", "unknown upstream `x`")
            .with_hint("did you mean `y`?");
        located.location = Some(Location { line: 7, column: 5 });
        Checked {
            file: file.to_owned(),
            entry: entry.map(str::to_owned),
            outcome: Err(ConfigError::Invalid {
                file: file.to_owned(),
                text: String::new(),
                diagnostics: vec![
                    located,
                    Diagnostic::new("default_upstream", "missing: name the upstream"),
                ],
            }),
        }
    }

    #[test]
    fn github_annotations_carry_file_line_column_title_and_hint() {
        let lines = report_github(&[invalid("deploy/routes.yaml", None)]);
        assert_eq!(
            lines,
            [
                "::error file=deploy/routes.yaml,line=7,col=5,title=strangler validate%3A routes[0].upstream::unknown upstream `x`%0Ahint: did you mean `y`?",
                "::error file=deploy/routes.yaml,title=strangler validate%3A default_upstream::missing: name the upstream",
                "deploy/routes.yaml: 2 errors found; nothing was applied",
            ]
        );
    }

    #[test]
    fn github_annotations_name_the_configmap_entry_and_skip_stdin_as_a_file() {
        let lines = report_github(&[invalid("k8s/cm.yaml", Some("data.routes.yaml"))]);
        assert!(
            lines[0].starts_with("::error file=k8s/cm.yaml,line=7,col=5,title=strangler validate%3A routes[0].upstream (data.routes.yaml)::"),
            "{}",
            lines[0]
        );
        assert_eq!(
            lines[2],
            "k8s/cm.yaml: data.routes.yaml: 2 errors found; nothing was applied"
        );

        let lines = report_github(&[invalid(STDIN_NAME, None)]);
        assert!(
            lines[0].starts_with("::error line=7,col=5,title="),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn json_reports_name_the_entry() {
        let report: serde_json::Value = serde_json::from_str(&report_json(&[invalid(
            "cm.yaml",
            Some("data.routes.yaml"),
        )]))
        .unwrap();
        assert_eq!(report[0]["file"], "cm.yaml");
        assert_eq!(report[0]["entry"], "data.routes.yaml");
        assert_eq!(report[0]["errors"][0]["location"]["line"], 7);
    }
}
