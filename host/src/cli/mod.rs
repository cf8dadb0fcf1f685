//! The `kiln` command line. One file per command; each is a thin layer over the library.

mod batch;
mod build;
mod client;
mod doctor;
mod jobs;
mod keys;
mod new;
mod plugin;
mod schedules;
mod serve;
mod submit;
mod templates;
mod toolchain;
mod watch;

pub use client::{DEFAULT_SERVER, ServerArgs};

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Kiln: a self-hosted job server for long-running AI generation.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the job server.
    Serve(ServeArgs),
    /// Create, check or run a plugin (a job type component) locally.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Submit a job to a running server; prints its id (or follows it with --watch).
    Submit(submit::SubmitArgs),
    /// Follow a job live: progress bar, stage, partials, then the result or the error.
    /// Exits 0 completed, 1 failed, 2 cancelled.
    Watch(watch::WatchArgs),
    /// List, show, cancel or retry jobs on a running server.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Submit a batch (one job per item) or follow one to its end.
    #[command(subcommand)]
    Batch(batch::BatchCommand),
    /// List, add or delete the server's schedules (jobs submitted on a cron).
    #[command(subcommand)]
    Schedules(schedules::SchedulesCommand),
    /// Report stuck jobs, recent failures, plugins and provider reachability; fix them.
    Doctor(doctor::DoctorArgs),
    /// Make API keys for `[[auth.keys]]`.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
}

/// `kiln serve`. Flags beat `KILN_*` variables, which beat the config file.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "KILN_ADDR")]
    pub addr: Option<String>,
    /// Data dir for the database and the compiled-plugin cache [default: kiln-data].
    #[arg(long, env = "KILN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Folder of *.wasm job types [default: plugins/dist].
    #[arg(long, env = "KILN_PLUGINS_DIR")]
    pub plugins_dir: Option<PathBuf>,
    /// Store jobs in this PostgreSQL database (postgres://user:password@host/dbname)
    /// instead of the redb file in the data dir. Uploads and artifacts stay in the data
    /// dir.
    #[arg(long, env = "KILN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// `kiln plugin …`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Write a new job type project (Rust, Python or JavaScript) that builds as is, with
    /// the SDK inside it.
    New(new::NewArgs),
    /// Build the job type project in DIR (default: here) into DIR/NAME.wasm, then check it.
    Build(build::BuildArgs),
    /// Check a component against the contract and print what it declares; given a
    /// plugins dir, check every *.wasm in it as `kiln serve` would load them.
    Check {
        /// The .wasm component, or a folder of them.
        file: PathBuf,
    },
    /// Run one job with a component locally and print its progress, partials and result.
    Run(plugin::RunArgs),
}

/// Reads a `--payload` argument: JSON text, or `@FILE` to read it from a file. A file that
/// cannot be read is an error; text that is not JSON is reported here and answered with
/// exit code 2 (a usage error), as the commands taking a payload document.
fn read_payload(arg: &str) -> anyhow::Result<Result<serde_json::Value, std::process::ExitCode>> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the payload file {path}: {e}"))?,
        None => arg.to_string(),
    };
    Ok(serde_json::from_str(&text).map_err(|error| {
        eprintln!("error: --payload is not JSON: {error}");
        std::process::ExitCode::from(2)
    }))
}

/// Runs the parsed command; the exit code comes from the error, if any.
pub async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Plugin(PluginCommand::New(args)) => new::run(&args),
        Command::Plugin(PluginCommand::Build(args)) => build::run(&args).await,
        Command::Plugin(PluginCommand::Check { file }) => plugin::check(&file).await,
        Command::Plugin(PluginCommand::Run(args)) => plugin::run(args).await,
        Command::Submit(args) => submit::run(args).await,
        Command::Watch(args) => watch::run(args).await,
        Command::Jobs(command) => jobs::run(command).await,
        Command::Batch(command) => batch::run(command).await,
        Command::Schedules(command) => schedules::run(command).await,
        Command::Doctor(args) => doctor::run(args).await,
        Command::Keys(command) => keys::run(command).map(|()| std::process::ExitCode::SUCCESS),
    }
}

/// The whole `kiln` program: parse the command line, set up logging (`KILN_LOG`, default
/// `info`, to stderr, in the format of `KILN_LOG_FORMAT`), run the command on a
/// multi-threaded runtime.
pub fn main() -> std::process::ExitCode {
    main_from(std::env::args_os())
}

/// How log lines are written (`KILN_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines, coloured only when stderr is a terminal (the default).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The format chosen at start; read by commands that print outside the log.
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Whether the log is JSON lines, so nothing else may be written to stderr as plain text.
fn log_is_json() -> bool {
    LOG_FORMAT.get() == Some(&LogFormat::Json)
}

/// Reads `KILN_LOG_FORMAT` (`text` or `json`; unset is `text`).
fn log_format() -> Result<LogFormat, String> {
    match std::env::var("KILN_LOG_FORMAT") {
        Err(_) => Ok(LogFormat::Text),
        Ok(value) => match value.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "KILN_LOG_FORMAT is {value:?}; use \"text\" (the default) or \"json\""
            )),
        },
    }
}

/// Installs the global subscriber: to stderr, filtered by `KILN_LOG`.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        // Colour codes are noise in a file or a pipe: only a terminal gets them.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// [`main`] with the given command line (the first item is the program name), for
/// programs that embed `kiln`, such as the benchmark, which runs its server this way.
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    let cli = Cli::parse_from(args);
    let format = match log_format() {
        Ok(format) => format,
        Err(message) => {
            eprintln!("error: {message}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let _ = LOG_FORMAT.set(format);
    init_logging(format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) if log_is_json() => {
            tracing::error!(error = format!("{error:#}"), "kiln stopped");
            std::process::ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
