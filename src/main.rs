//! The `strangler` command line: run the proxy, validate a config, start the demo.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use strangler::report::DiffRate;
use strangler::routing::load_route_table;
use strangler::server::{RunOptions, StartError};
use tracing_subscriber::EnvFilter;

/// jemalloc, not glibc malloc: after a load of large bodies or many connections glibc kept the
/// peak (its per-thread arenas rarely give memory back), jemalloc returns most of it to the OS
/// within seconds of the load stopping, through its background thread (the `background_threads`
/// feature; override with `_RJEM_MALLOC_CONF`). Measured in docs/performance.md, "Memory"
/// (bench/memory.sh); `--no-default-features` builds with glibc malloc to compare.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "strangler",
    version,
    about = "A reverse proxy for strangler-fig migrations"
)]
struct Cli {
    /// Log format on stderr. Filter with RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum CoverageFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy. Refuses to start on an invalid config.
    Run {
        /// The routes file.
        #[arg(short, long, default_value = "routes.yaml")]
        config: PathBuf,
        /// Take over the listening sockets of a running strangler (zero-downtime binary
        /// upgrade): start the new process with this flag, then send SIGQUIT to the old one.
        #[arg(long)]
        upgrade: bool,
    },
    /// Check config files without starting anything. Exit status 0 when all are valid, 1 if not.
    ///
    /// A Kubernetes ConfigMap manifest (`kind: ConfigMap`) is checked entry by entry: each
    /// `data` entry ending in .yaml or .yml, with errors at the manifest's lines.
    Validate {
        /// Files to check; `-` reads standard input (called `<stdin>` in messages).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format: `text` for people, `json` for tools, `github` for GitHub Actions
        /// annotations.
        #[arg(long, value_enum, default_value_t = cli::validate::Format::Text)]
        format: cli::validate::Format,
        /// Check backend addresses' `host:port` syntax without resolving host names (for CI,
        /// which cannot see the cluster's DNS).
        #[arg(long)]
        no_resolve: bool,
    },
    /// Print the JSON Schema of routes.yaml, for editors and CI (docs/routes.schema.json).
    Schema,
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), of strangler or of one subcommand.
    Man {
        /// A subcommand whose page to print, like `validate`.
        subcommand: Option<String>,
    },
    /// Print the route table: stage, match, upstream or split, shadow. From a file, or from a
    /// running proxy's admin API.
    Routes {
        /// The routes file.
        #[arg(short, long, default_value = "routes.yaml", conflicts_with = "admin")]
        config: PathBuf,
        /// A running proxy's admin address, like 127.0.0.1:9901.
        #[arg(long)]
        admin: Option<String>,
        /// Admin token (default: $STRANGLER_ADMIN_TOKEN).
        #[arg(long)]
        token: Option<String>,
    },
    /// How much of the monolith is left: the share of traffic new services serve, per route and
    /// overall, and the most requested paths no route covers yet, each with a route stub to
    /// paste. From a running proxy's admin API (counted since it started).
    Coverage {
        /// The proxy's admin address, like 127.0.0.1:9901.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Admin token (default: $STRANGLER_ADMIN_TOKEN).
        #[arg(long)]
        token: Option<String>,
        /// How many uncovered templates to list.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
        top: u16,
        /// `text` for people, `json` for tools (the `/coverage` document).
        #[arg(long, value_enum, default_value_t = CoverageFormat::Text)]
        format: CoverageFormat,
    },
    /// Summarise stored shadow diffs per route and direction; exit 1 when one fails the gate
    /// (for CI), 2 on a usage error or an unreadable store.
    Report {
        /// Diff store(s) to read, SQLite files or postgres:// URLs (password from the URL or
        /// $STRANGLER_DIFF_STORE_PASSWORD); several (one per replica) are merged.
        #[arg(long = "db", required = true)]
        databases: Vec<strangler::store::StoreLocation>,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// Only exchanges written by this replica (its `server.replica` or host name).
        #[arg(long)]
        replica: Option<String>,
        /// Only exchanges newer than this (e.g. 1h, 30m).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Only exchanges decided by this config generation (generations count reloads and
        /// restart at 1 with the process; each store is filtered on its own).
        #[arg(long, conflicts_with = "since_reload")]
        generation: Option<u64>,
        /// Only exchanges of each store's newest generation: those under the config of its
        /// newest exchange, since the last reload (or restart) that brought it in.
        #[arg(long)]
        since_reload: bool,
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        /// Largest acceptable share of mismatching exchanges per route and direction: a
        /// fraction from 0 to 1 (0.05) or a percentage (5%).
        #[arg(long, default_value = "0.01", value_parser = clap::value_parser!(DiffRate))]
        max_diff_rate: DiffRate,
        /// Fewest compared exchanges a route needs to pass.
        #[arg(long, default_value_t = 1)]
        min_samples: u64,
        /// List a differing path when it is in at least this share of its route's exchanges
        /// (or in --min-path-exchanges of them): a fraction (0.01) or a percentage (1%).
        #[arg(long, default_value = "1%", value_parser = strangler::report::Listing::parse_share)]
        min_path_share: DiffRate,
        /// List a differing path when it is in at least this many exchanges (or in
        /// --min-path-share of them); 1 lists every path. The others are counted, not listed.
        #[arg(long, default_value_t = 2)]
        min_path_exchanges: u64,
        /// Print only the `compare:` block to paste per route, each rule with its evidence
        /// (exit 0 unless the store cannot be read).
        #[arg(long)]
        suggest: bool,
    },
    /// Recorded requests (routes with `record:`) as a replayable corpus.
    Corpus {
        #[command(subcommand)]
        command: CorpusCommand,
    },
    /// Send a corpus to a primary (legacy) and a candidate, compare each pair of answers as
    /// shadow copies are compared, and report like `strangler report`: exit 0 when it passes,
    /// 1 over the threshold, 2 when the replay could not run (a bad corpus line: nothing sent).
    Replay {
        /// The corpus file (JSON Lines, from `strangler corpus export`).
        corpus: PathBuf,
        /// The primary's base URL, like http://127.0.0.1:8080 (a path is a prefix).
        #[arg(long)]
        primary: String,
        /// The candidate's base URL, like http://127.0.0.1:8081.
        #[arg(long)]
        candidate: String,
        /// Requests (pairs) started per second at most (default: as fast as --concurrency
        /// allows).
        #[arg(long)]
        rate: Option<f64>,
        /// Pairs in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Longest wait for one answer, body included.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Send requests through this route table: the primary gets a request as the route's
        /// upstream does, the candidate as its shadow copy does, compared by `shadow.compare`.
        #[arg(long)]
        routes: Option<PathBuf>,
        /// A JSON path not compared (repeatable), on top of the route's rules.
        #[arg(long = "ignore-json")]
        ignore_json: Vec<String>,
        /// Methods the corpus may send; a line with another is an error.
        #[arg(long, value_delimiter = ',', default_value = "GET,HEAD,OPTIONS")]
        methods: Vec<String>,
        /// Ask the primary twice and discount what differs between its own answers.
        #[arg(long)]
        noise: bool,
        /// List what would be sent, send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep the compared exchanges in this SQLite diff store (default: a temporary file),
        /// for `strangler report` or the viewer.
        #[arg(long)]
        store: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        /// Largest acceptable share of mismatching exchanges per route, as for `report`.
        #[arg(long, default_value = "0", value_parser = clap::value_parser!(DiffRate))]
        max_diff_rate: DiffRate,
        /// Fewest compared exchanges a route needs to pass.
        #[arg(long, default_value_t = 1)]
        min_samples: u64,
        /// List a differing path when it is in at least this share of its route's exchanges.
        #[arg(long, default_value = "0%", value_parser = strangler::report::Listing::parse_share)]
        min_path_share: DiffRate,
        /// List a differing path when it is in at least this many exchanges.
        #[arg(long, default_value_t = 1)]
        min_path_exchanges: u64,
    },
    /// Exit 0 when a running proxy's admin API says it is ready (`GET /readyz`), 1 otherwise:
    /// a container HEALTHCHECK.
    Healthcheck {
        /// The admin address (`server.admin`).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Longest wait for the answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Start a legacy app, a new service and the proxy on loopback, and print what to try.
    Demo {
        /// The routes file (default: ./routes.yaml, else the built-in copy).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CorpusCommand {
    /// Write recorded requests as JSON Lines on stdout, oldest first.
    Export {
        /// Diff store(s) to read, SQLite files or postgres:// URLs (password from the URL or
        /// $STRANGLER_DIFF_STORE_PASSWORD); several (one per replica) are merged.
        #[arg(long = "db", required = true)]
        databases: Vec<strangler::store::StoreLocation>,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// Only requests recorded in this last while (e.g. 1h, 30m).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// At most this many requests, the newest.
        #[arg(long)]
        limit: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
    Junit,
    Markdown,
    /// One self-contained page: overview, routes and example exchanges side by side.
    Html,
}

/// The report module's format; `None` for HTML, which also reads example exchanges.
fn report_format(format: ReportFormat) -> Option<strangler::report::Format> {
    match format {
        ReportFormat::Text => Some(strangler::report::Format::Text),
        ReportFormat::Json => Some(strangler::report::Format::Json),
        ReportFormat::Junit => Some(strangler::report::Format::Junit),
        ReportFormat::Markdown => Some(strangler::report::Format::Markdown),
        ReportFormat::Html => None,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run { config, upgrade } => match strangler::server::run(&RunOptions {
            config_path: config,
            upgrade,
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(StartError::Config(error)) => {
                eprintln!("{error}");
                eprintln!("strangler: not started: the config is invalid");
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("strangler: not started: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Validate {
            files,
            format,
            no_resolve,
        } => cli::validate::run(
            &files,
            format,
            if no_resolve {
                strangler::upstream::AddressResolution::SyntaxOnly
            } else {
                strangler::upstream::AddressResolution::Dns
            },
        ),
        Command::Schema => cli::schema(),
        Command::Completions { shell } => cli::completions(shell, Cli::command()),
        Command::Man { subcommand } => cli::man(Cli::command(), subcommand.as_deref()),
        Command::Routes {
            config,
            admin,
            token,
        } => match show_routes(&config, admin.as_deref(), token) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("strangler routes: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Coverage {
            admin,
            token,
            top,
            format,
        } => {
            let document =
                admin_get(&admin, &format!("/coverage?top={top}"), token).and_then(|document| {
                    Ok(serde_json::from_value::<strangler::coverage::CoverageReport>(document)?)
                });
            match document {
                Ok(report) => {
                    match format {
                        CoverageFormat::Text => print!("{}", report.render()),
                        CoverageFormat::Json => println!(
                            "{}",
                            serde_json::to_string_pretty(&report).expect("serializes")
                        ),
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("strangler coverage: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Report {
            databases,
            route,
            replica,
            since,
            generation,
            since_reload,
            format,
            max_diff_rate,
            min_samples,
            min_path_share,
            min_path_exchanges,
            suggest,
        } => {
            let options = strangler::report::ReportOptions {
                databases,
                route,
                replica,
                since_ms: since.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                generation: match (generation, since_reload) {
                    (Some(number), _) => Some(strangler::store::GenerationFilter::Number(number)),
                    (None, true) => Some(strangler::store::GenerationFilter::Latest),
                    (None, false) => None,
                },
                max_diff_rate,
                min_samples,
                listing: strangler::report::Listing {
                    min_share: min_path_share,
                    min_exchanges: min_path_exchanges,
                },
            };
            let format = match format {
                ReportFormat::Text => Some(strangler::report::Format::Text),
                ReportFormat::Json => Some(strangler::report::Format::Json),
                ReportFormat::Junit => Some(strangler::report::Format::Junit),
                ReportFormat::Markdown => Some(strangler::report::Format::Markdown),
                // HTML also shows example exchanges in full, read from the stores.
                ReportFormat::Html => None,
            };
            let rendered = strangler::report::build(&options).and_then(|report| {
                if suggest {
                    let text = strangler::report::render_suggestions(&report);
                    return Ok((None, text));
                }
                let text = match format {
                    Some(format) => strangler::report::render(&report, format),
                    None => {
                        let html = strangler::report::html::examples(&report, &options.databases)?;
                        strangler::report::html::render(&report, &html)
                    }
                };
                Ok((Some(report), text))
            });
            match rendered {
                Ok((report, text)) => {
                    print!("{text}");
                    if report.is_none_or(|report| report.passed) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error) => {
                    eprintln!("strangler report: {error}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Corpus {
            command:
                CorpusCommand::Export {
                    databases,
                    route,
                    since,
                    limit,
                },
        } => cli::corpus::export(&cli::corpus::ExportOptions {
            databases,
            route,
            since,
            limit,
        }),
        Command::Replay {
            corpus,
            primary,
            candidate,
            rate,
            concurrency,
            timeout,
            routes,
            ignore_json,
            methods,
            noise,
            dry_run,
            store,
            format,
            max_diff_rate,
            min_samples,
            min_path_share,
            min_path_exchanges,
        } => {
            let mut parsed = Vec::new();
            for method in &methods {
                match http::Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes()) {
                    Ok(method) => parsed.push(method),
                    Err(_) => {
                        eprintln!("strangler replay: --methods: `{method}` is not an HTTP method");
                        return ExitCode::from(2);
                    }
                }
            }
            cli::replay::replay(
                &strangler::replay::ReplayOptions {
                    corpus,
                    primary,
                    candidate,
                    rate,
                    concurrency,
                    timeout,
                    routes,
                    ignore_json,
                    methods: parsed,
                    noise,
                    store,
                    max_sample: strangler::diff::SAMPLE_LIMIT,
                },
                dry_run,
                &cli::replay::Gate {
                    format,
                    max_diff_rate,
                    min_samples,
                    listing: strangler::report::Listing {
                        min_share: min_path_share,
                        min_exchanges: min_path_exchanges,
                    },
                },
            )
        }
        Command::Healthcheck { admin, timeout } => {
            cli::healthcheck::healthcheck(&admin, "/readyz", timeout)
        }
        Command::Demo { config } => match strangler::demo::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("strangler demo: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn show_routes(
    config: &std::path::Path,
    admin: Option<&str>,
    token: Option<String>,
) -> anyhow::Result<String> {
    let Some(admin) = admin else {
        let table = load_route_table(config, 1)?;
        let document = serde_json::to_value(table.config())?;
        return Ok(strangler::routes_cli::render(
            &document,
            None,
            table.config().kill_switch,
        ));
    };
    let document: strangler::admin_api::RoutesDocument =
        serde_json::from_value(admin_get(admin, "/routes", token)?)?;
    Ok(strangler::routes_cli::render_document(&document))
}

/// `GET path` on a running proxy's admin API, as JSON; the token defaults to
/// `$STRANGLER_ADMIN_TOKEN`.
fn admin_get(admin: &str, path: &str, token: Option<String>) -> anyhow::Result<serde_json::Value> {
    let token = token.or_else(|| std::env::var("STRANGLER_ADMIN_TOKEN").ok());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let document: serde_json::Value = runtime.block_on(async {
        use http_body_util::BodyExt;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let mut request = http::Request::get(format!("http://{admin}{path}"));
        if let Some(token) = &token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.request(request.body(http_body_util::Empty::new())?),
        )
        .await??;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            status.is_success(),
            "{admin} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok::<_, anyhow::Error>(serde_json::from_slice(&body)?)
    })?;
    Ok(document)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: files and log collectors get plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
