//! The subcommands for writing configs and for the shell: `validate` (CI and editors' checks),
//! `schema` (the JSON Schema editors complete and check routes.yaml with), `completions` and
//! `man`. `main.rs` only parses arguments and dispatches here.

pub mod corpus;
pub mod github;
pub mod healthcheck;
pub mod replay;
pub mod validate;

use std::io::Write;
use std::process::ExitCode;

/// Writes `output` to stdout. A closed pipe (`strangler man | head`) is the reader's choice,
/// not a failure; other write errors are reported.
pub fn print_bytes(command: &str, output: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(output).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("strangler {command}: cannot write to stdout: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `strangler schema`: the JSON Schema of routes.yaml.
pub fn schema() -> ExitCode {
    print_bytes("schema", strangler::config::json_schema_text().as_bytes())
}

/// `strangler completions SHELL`: a completion script for `command`.
pub fn completions(shell: clap_complete::Shell, mut command: clap::Command) -> ExitCode {
    let name = command.get_name().to_owned();
    // Generated into memory first: clap_complete panics on a write error, such as a closed
    // pipe.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    print_bytes("completions", &script)
}

/// `strangler man [SUBCOMMAND]`: the roff man page of `command`, or of one of its subcommands.
pub fn man(mut command: clap::Command, subcommand: Option<&str>) -> ExitCode {
    // Building fills in what pages show of subcommands (their full names, global options).
    command.build();
    let page = match subcommand {
        None => command,
        Some(name) => match command.find_subcommand(name) {
            // Subcommands have no version of their own; the page's header shows strangler's.
            Some(found) => found.clone().version(env!("CARGO_PKG_VERSION")),
            None => {
                let known: Vec<&str> = command
                    .get_subcommands()
                    .map(clap::Command::get_name)
                    .collect();
                eprintln!(
                    "strangler man: no subcommand `{name}`; there are: {}",
                    known.join(", ")
                );
                return ExitCode::from(2);
            }
        },
    };
    let mut roff = Vec::new();
    if let Err(error) = clap_mangen::Man::new(page).render(&mut roff) {
        eprintln!("strangler man: {error}");
        return ExitCode::FAILURE;
    }
    print_bytes("man", &roff)
}
