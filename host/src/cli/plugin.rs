//! `kiln plugin check` and `kiln plugin run`: the plugin author's loop.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Overrides};
use crate::llm::{LlmClient, OfflineClient, OfflineConfig};
use crate::runtime::{
    CONTRACT_VERSION, EventSink, JobInput, PluginEvent, RunContext, Runtime, RuntimeConfig,
};

/// `kiln plugin run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The .wasm component.
    pub file: PathBuf,
    /// The payload, as JSON.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// Use the providers, models and limits of this config file instead of the offline
    /// provider with default limits.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Offline provider latency per call, ms (without --config).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Timeout of the run, seconds [default: the plugin's].
    #[arg(long)]
    pub timeout_s: Option<u64>,
    /// Also print streamed LLM tokens.
    #[arg(long)]
    pub tokens: bool,
}

pub(super) async fn check(file: &Path) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let started = Instant::now();
    match runtime.load_file(file).await {
        Ok(plugin) => {
            let info = &plugin.info;
            println!(
                "ok: {} is a Kiln job type (kiln:plugin@{CONTRACT_VERSION})",
                file.display()
            );
            println!("  type:        {}", info.name);
            println!("  version:     {}", info.version);
            println!("  description: {}", info.description);
            println!("  timeout:     {} s", info.default_timeout_secs);
            println!(
                "  size:        {} bytes, sha256 {}",
                plugin.size, plugin.digest
            );
            println!(
                "  loaded in:   {:.1} ms",
                started.elapsed().as_secs_f64() * 1000.0
            );
            println!("  imports:");
            for import in &plugin.imports {
                println!("    {import}");
            }
            println!("  payload schema:");
            println!("{}", serde_json::to_string_pretty(&info.payload_schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!(
                "error: {} does not fit the Kiln contract: {error:#}",
                file.display()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

pub(super) async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (llm, limits): (Arc<dyn LlmClient>, _) = match &args.config {
        Some(path) => {
            let resolved = Config::load(path)?.resolve(Overrides::default())?;
            (resolved.llm, Some(resolved.service))
        }
        None => (
            Arc::new(OfflineClient::new(OfflineConfig {
                latency_ms: args.latency_ms,
                ..OfflineConfig::default()
            })),
            None,
        ),
    };
    let payload: serde_json::Value = match serde_json::from_str(&args.payload) {
        Ok(payload) => payload,
        Err(error) => {
            eprintln!("error: --payload is not JSON: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let plugin = match runtime.load_file(&args.file).await {
        Ok(plugin) => plugin,
        Err(error) => {
            eprintln!("error: {error:#}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Err(violations) = plugin.validate_payload(&payload) {
        eprintln!(
            "error: the payload does not match the '{}' schema:",
            plugin.info.name
        );
        for violation in violations {
            eprintln!("  {violation}");
        }
        return Ok(ExitCode::from(2));
    }
    let limits = limits.map_or_else(Default::default, |s| s.limits_of(&plugin.info.name));
    let timeout = limits.timeout(args.timeout_s, plugin.info.default_timeout_secs);
    let context = RunContext {
        sink: Arc::new(PrintEvents {
            tokens: args.tokens,
        }),
        llm,
        cancel: CancellationToken::new(),
        limits,
        timeout,
    };
    let input = JobInput {
        id: uuid::Uuid::now_v7().to_string(),
        job_type: plugin.info.name.clone(),
        payload: payload.to_string(),
        attempt: 1,
    };
    let started = Instant::now();
    let outcome = runtime.run(&plugin, input, context).await;
    let elapsed = started.elapsed();
    let usage = outcome.usage;
    eprintln!(
        "{} in {}; {} LLM calls, {} input + {} output tokens",
        if outcome.result.is_ok() {
            "completed"
        } else {
            "failed"
        },
        human(elapsed),
        usage.llm_calls,
        usage.input_tokens,
        usage.output_tokens
    );
    match outcome.result {
        Ok(result) => {
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            eprintln!("error ({}): {}", failure.kind, failure.message);
            Ok(ExitCode::FAILURE)
        }
    }
}

fn human(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", duration.as_secs_f64())
    }
}

/// Prints events to stderr as they come: a progress bar line per report, partials as
/// JSON, tokens when asked.
struct PrintEvents {
    tokens: bool,
}

impl EventSink for PrintEvents {
    fn emit(&self, event: PluginEvent) {
        let mut err = std::io::stderr().lock();
        let _ = match event {
            PluginEvent::Progress { percent, message } => {
                let filled = usize::from(percent) / 5;
                writeln!(
                    err,
                    "[{}{}] {percent:>3}% {message}",
                    "#".repeat(filled),
                    ".".repeat(20 - filled)
                )
            }
            PluginEvent::Partial { name, data } => writeln!(err, "partial {name}: {data}"),
            PluginEvent::Token { label, delta } if self.tokens => {
                writeln!(err, "token {label}: {delta:?}")
            }
            PluginEvent::TokenReset { label } if self.tokens => {
                writeln!(
                    err,
                    "token {label}: (the call failed; its text so far is void)"
                )
            }
            PluginEvent::Token { .. }
            | PluginEvent::TokenReset { .. }
            | PluginEvent::Replayed { .. } => Ok(()),
        };
    }
}
