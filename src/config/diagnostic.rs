//! Config errors that point at the exact place in routes.yaml, rustc-style.
//!
//! A [`Diagnostic`] names the field path (`routes[3].match.path_regex`), the line and column where
//! the YAML parser knows them, what is wrong and, where we can guess, how to fix it. A
//! [`ConfigError::Invalid`] carries every diagnostic found, so a user fixes the file in one pass.
//!
//! Also the two field checks every compiler of a section shares (routes' `match.methods`,
//! `shadow` and `record`): [`methods`] and [`sample_share`], so the same mistake reads the same
//! wherever it is made.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// The HTTP methods of a `methods` list (any case), one diagnostic per entry that is not one.
pub fn methods(
    listed: &[String],
    path: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<http::Method> {
    let mut methods = Vec::with_capacity(listed.len());
    for (number, method) in listed.iter().enumerate() {
        match http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
            Ok(method) => methods.push(method),
            Err(_) => diagnostics.push(
                Diagnostic::new(
                    format!("{path}.methods[{number}]"),
                    format!("`{method}` is not an HTTP method"),
                )
                .with_hint("like GET, POST, PUT, DELETE"),
            ),
        }
    }
    methods
}

/// Checks that a `sample` share is within 0.0..=1.0; `hint` says what a value means there.
pub fn sample_share(value: f64, path: &str, hint: &str, diagnostics: &mut Vec<Diagnostic>) {
    if !(0.0..=1.0).contains(&value) || value.is_nan() {
        diagnostics.push(
            Diagnostic::new(format!("{path}.sample"), "must be between 0.0 and 1.0")
                .with_hint(hint),
        );
    }
}

/// A 1-based position in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// The field path, like `routes[3].match.path_regex`; empty for the document itself.
    pub path: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

impl Diagnostic {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            hint: None,
            location: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_hint_opt(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

/// Why a config could not be loaded. Nothing is applied when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(file, text, diagnostics))]
    Invalid {
        /// The file name as given by the user, for messages.
        file: String,
        /// The file's text, to quote the offending line.
        text: String,
        diagnostics: Vec<Diagnostic>,
    },
}

impl ConfigError {
    /// The individual problems; empty for I/O errors.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { diagnostics, .. } => diagnostics,
        }
    }
}

fn render(file: &str, text: &str, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for diagnostic in diagnostics {
        render_one(&mut out, file, text, diagnostic).expect("writing to a String cannot fail");
        out.push('\n');
    }
    let count = diagnostics.len();
    out.push_str(&format!(
        "{file}: {count} error{} found; nothing was applied",
        if count == 1 { "" } else { "s" }
    ));
    out
}

fn render_one(
    out: &mut String,
    file: &str,
    text: &str,
    diagnostic: &Diagnostic,
) -> Result<(), fmt::Error> {
    use fmt::Write;

    if diagnostic.path.is_empty() {
        writeln!(out, "error: {}", diagnostic.message)?;
    } else {
        writeln!(out, "error: {}: {}", diagnostic.path, diagnostic.message)?;
    }
    let gutter = diagnostic.location.map_or(1, |l| l.line.to_string().len());
    match diagnostic.location {
        Some(Location { line, column }) => {
            writeln!(out, "{:gutter$}--> {file}:{line}:{column}", "")?;
            if let Some(source_line) = text.lines().nth(line.saturating_sub(1)) {
                writeln!(out, "{:gutter$} |", "")?;
                writeln!(out, "{line} | {source_line}")?;
                writeln!(
                    out,
                    "{:gutter$} | {:pad$}^",
                    "",
                    "",
                    pad = column.saturating_sub(1)
                )?;
            }
        }
        None => writeln!(out, "{:gutter$}--> {file}", "")?,
    }
    if let Some(hint) = &diagnostic.hint {
        writeln!(out, "{:gutter$} = hint: {hint}", "")?;
    }
    Ok(())
}

/// "did you mean `x`?" for a misspelled name, when one candidate is close enough.
pub fn did_you_mean<'a>(
    given: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(given, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| format!("did you mean `{candidate}`?"))
}

#[cfg(test)]
mod tests {
    //! How a refused config reads at a terminal: rustc-style, every problem, one pass.

    use super::*;

    const TEXT: &str =
        "upstreams:\n  legacy: { backends: [127.0.0.1:9001] }\ndefault_upstream: legasy\n";

    fn invalid(diagnostics: Vec<Diagnostic>) -> String {
        ConfigError::Invalid {
            file: "routes.yaml".into(),
            text: TEXT.into(),
            diagnostics,
        }
        .to_string()
    }

    #[test]
    fn a_located_problem_quotes_its_line_with_a_caret_under_the_column_and_its_hint() {
        let mut diagnostic = Diagnostic::new("default_upstream", "unknown upstream `legasy`")
            .with_hint("did you mean `legacy`?");
        diagnostic.location = Some(Location {
            line: 3,
            column: 19,
        });
        assert_eq!(
            invalid(vec![diagnostic]),
            "error: default_upstream: unknown upstream `legasy`
 --> routes.yaml:3:19
  |
3 | default_upstream: legasy
  |                   ^
  = hint: did you mean `legacy`?

routes.yaml: 1 error found; nothing was applied"
        );
    }

    #[test]
    fn every_problem_is_rendered_and_counted_located_or_not() {
        let mut far = Diagnostic::new("routes[12].name", "duplicate route name");
        // A line past the end of the text (a stale position) is named, not quoted.
        far.location = Some(Location {
            line: 120,
            column: 3,
        });
        let rendered = invalid(vec![Diagnostic::new("", "the file is empty"), far]);
        assert!(
            rendered.starts_with("error: the file is empty\n --> routes.yaml\n"),
            "{rendered}"
        );
        assert!(
            rendered.contains(
                "error: routes[12].name: duplicate route name\n   --> routes.yaml:120:3\n"
            ),
            "{rendered}"
        );
        assert!(!rendered.contains("120 |"), "{rendered}");
        assert!(
            rendered.ends_with("routes.yaml: 2 errors found; nothing was applied"),
            "{rendered}"
        );
    }

    #[test]
    fn a_read_error_names_the_file_and_has_no_diagnostics() {
        let error = ConfigError::Read {
            path: PathBuf::from("/etc/strangler/routes.yaml"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(error.diagnostics().is_empty());
        assert!(
            error
                .to_string()
                .starts_with("cannot read /etc/strangler/routes.yaml: "),
            "{error}"
        );
    }

    #[test]
    fn did_you_mean_offers_the_closest_name_only_when_it_is_close() {
        let upstreams = ["legacy", "orders-v2", "invoices-v2"];
        assert_eq!(
            did_you_mean("legasy", upstreams).as_deref(),
            Some("did you mean `legacy`?")
        );
        assert_eq!(
            did_you_mean("orders-v3", upstreams).as_deref(),
            Some("did you mean `orders-v2`?")
        );
        assert_eq!(did_you_mean("payments", upstreams), None);
        assert_eq!(did_you_mean("legacy", []), None);
    }
}
