//! `strangler replay`: runs [`strangler::replay`] and reports like `strangler report`: the
//! report on stdout, exit 0 when it passes, 1 when it does not, 2 when the replay could not run.
//! A progress bar on a terminal (stderr), a summary per route otherwise.

use std::io::IsTerminal;
use std::process::ExitCode;

use strangler::replay::{ReplayOptions, plan, run};
use strangler::report::{DiffRate, Listing, ReportOptions};
use strangler::store::StoreLocation;

pub struct Gate {
    pub format: crate::ReportFormat,
    pub max_diff_rate: DiffRate,
    pub min_samples: u64,
    pub listing: Listing,
}

pub fn replay(options: &ReplayOptions, dry_run: bool, gate: &Gate) -> ExitCode {
    let fail = |error: &dyn std::fmt::Display| {
        eprintln!("strangler replay: {error}");
        ExitCode::from(2)
    };
    let plan = match plan(options) {
        Ok(plan) => plan,
        Err(error) => return fail(&error),
    };
    if dry_run {
        return super::print_bytes("replay", plan.describe().as_bytes());
    }
    let progress = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(plan.requests.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}) {msg}",
            )
            .expect("the template is valid"),
        );
        bar
    });
    let replayed = run(plan, options, |route| {
        if let Some(bar) = &progress {
            bar.set_message(route.to_owned());
            bar.inc(1);
        }
    });
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    let replayed = match replayed {
        Ok(replayed) => replayed,
        Err(error) => return fail(&error),
    };
    eprint!("{}", replayed.summary());
    let report_options = ReportOptions {
        databases: vec![StoreLocation::Sqlite(replayed.store.clone())],
        route: None,
        replica: Some(replayed.replica.clone()),
        since_ms: None,
        generation: None,
        max_diff_rate: gate.max_diff_rate,
        min_samples: gate.min_samples,
        listing: gate.listing,
    };
    let rendered = strangler::report::build(&report_options).and_then(|report| {
        let text = match crate::report_format(gate.format) {
            Some(format) => strangler::report::render(&report, format),
            None => {
                let html = strangler::report::html::examples(&report, &report_options.databases)?;
                strangler::report::html::render(&report, &html)
            }
        };
        Ok((report.passed, text))
    });
    replayed.clean_up();
    match rendered {
        Ok((passed, text)) => {
            let printed = super::print_bytes("replay", text.as_bytes());
            if printed != ExitCode::SUCCESS {
                return ExitCode::from(2);
            }
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => fail(&error),
    }
}
