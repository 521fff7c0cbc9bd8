//! GitHub Actions workflow commands: `::error file=…,line=…::message` lines that the runner turns
//! into annotations on the pull request's diff.
//!
//! This module owns their syntax and escaping only: which problems to report is
//! [`super::validate`]'s business. The runner splits a command at `::` and its properties at `,`,
//! and reads `%XX` escapes, so a message may span lines only as `%0A` and a property value must
//! also escape `:` and `,`.

/// One annotation; `None` leaves a property out (a problem with no line is shown on the file, one
/// with no file on the run).
#[derive(Debug, Default)]
pub struct Annotation<'a> {
    pub file: Option<&'a str>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub title: &'a str,
    pub message: &'a str,
}

impl Annotation<'_> {
    /// The `::error` command line for this annotation, without a line break.
    pub fn error(&self) -> String {
        let mut properties = Vec::new();
        if let Some(file) = self.file {
            properties.push(format!("file={}", escape_property(file)));
        }
        if let Some(line) = self.line {
            properties.push(format!("line={line}"));
        }
        if let Some(column) = self.column {
            properties.push(format!("col={column}"));
        }
        if !self.title.is_empty() {
            properties.push(format!("title={}", escape_property(self.title)));
        }
        let separator = if properties.is_empty() { "" } else { " " };
        format!(
            "::error{separator}{}::{}",
            properties.join(","),
            escape_data(self.message)
        )
    }
}

/// Escapes a command's message: `%`, carriage returns and line feeds.
pub fn escape_data(text: &str) -> String {
    // `%` first, or the escapes added after it would be escaped again.
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a property value: what [`escape_data`] escapes, plus the `:` and `,` that would end
/// the value early.
pub fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_annotation_has_every_property_in_order() {
        let annotation = Annotation {
            file: Some("deploy/routes.yaml"),
            line: Some(14),
            column: Some(5),
            title: "strangler validate: routes[0].upstream",
            message: "unknown upstream `orders-v3`\nhint: did you mean `orders-v2`?",
        };
        assert_eq!(
            annotation.error(),
            "::error file=deploy/routes.yaml,line=14,col=5,title=strangler validate%3A routes[0].upstream::unknown upstream `orders-v3`%0Ahint: did you mean `orders-v2`?"
        );
    }

    #[test]
    fn missing_properties_are_left_out() {
        let annotation = Annotation {
            title: "t",
            message: "m",
            ..Annotation::default()
        };
        assert_eq!(annotation.error(), "::error title=t::m");
        assert_eq!(
            Annotation {
                message: "m",
                ..Annotation::default()
            }
            .error(),
            "::error::m"
        );
    }

    #[test]
    fn percent_line_breaks_colons_and_commas_are_escaped() {
        assert_eq!(escape_data("100%\r\nok: a, b"), "100%25%0D%0Aok: a, b");
        assert_eq!(escape_property("a:b,c%\n"), "a%3Ab%2Cc%25%0A");
        // An already escaped-looking message is not unescaped by the runner.
        assert_eq!(escape_data("%0A"), "%250A");
    }
}
