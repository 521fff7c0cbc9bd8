//! `strangler corpus export`: the recorded requests of one or more diff stores (one per replica,
//! or a fleet's shared Postgres) as a corpus file on stdout, oldest first
//! ([`strangler::corpus::format`]).

use std::io::Write;
use std::process::ExitCode;

use strangler::corpus::format::CorpusLine;
use strangler::store::StoreLocation;
use strangler::store::corpus::{CorpusFilter, read_recorded};

pub struct ExportOptions {
    pub databases: Vec<StoreLocation>,
    pub route: Option<String>,
    pub since: Option<std::time::Duration>,
    pub limit: Option<u64>,
}

pub fn export(options: &ExportOptions) -> ExitCode {
    let filter = CorpusFilter {
        route: options.route.clone(),
        since_ms: options.since.map_or(0, |since| {
            strangler::store::now_ms() - i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        }),
        limit: options.limit,
    };
    let mut recorded = Vec::new();
    for location in &options.databases {
        match read_recorded(location, None, &filter) {
            Ok(found) => recorded.extend(found),
            Err(error) => {
                eprintln!("strangler corpus export: {error}");
                return ExitCode::from(2);
            }
        }
    }
    // Several stores merge by time; the limit keeps the newest overall.
    recorded.sort_by_key(|request| request.at_ms);
    if let Some(limit) = options.limit.and_then(|limit| usize::try_from(limit).ok()) {
        let extra = recorded.len().saturating_sub(limit);
        recorded.drain(..extra);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for request in &recorded {
        if let Err(error) = writeln!(out, "{}", CorpusLine::from_recorded(request).to_json()) {
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("strangler corpus export: cannot write to stdout: {error}");
            return ExitCode::from(2);
        }
    }
    if let Err(error) = out.flush()
        && error.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("strangler corpus export: cannot write to stdout: {error}");
        return ExitCode::from(2);
    }
    eprintln!(
        "strangler corpus export: {} request(s){}",
        recorded.len(),
        if recorded.is_empty() {
            " (does a route have `record:`, and has it seen traffic?)"
        } else {
            ""
        }
    );
    ExitCode::SUCCESS
}
