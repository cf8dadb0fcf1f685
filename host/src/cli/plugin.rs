//! `kiln plugin check` and `kiln plugin run`: the plugin author's loop.

use anyhow::Context as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::toolchain;
use crate::config::{Config, Overrides};
use crate::llm::{LlmClient, OfflineClient, OfflineConfig};
use crate::runtime::{
    EventSink, JobInput, Limits, Plugin, PluginEvent, RunContext, Runtime, RuntimeConfig,
};

/// `kiln plugin run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The .wasm component.
    pub file: PathBuf,
    /// The payload, as JSON, or `@FILE` to read it from a file.
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
    /// An input file the plugin may read, as `ID=PATH`: name ID in the payload's
    /// `kiln-file` property. Repeatable. The content type comes from the extension.
    #[arg(long = "file", value_name = "ID=PATH")]
    pub files: Vec<String>,
    /// Write the plugin's artifacts into this folder (without it they are listed only).
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
}

/// The content type of a local file, from its extension.
fn content_type_of(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "html" | "htm" => "text/html",
        "md" | "markdown" => "text/markdown",
        "txt" => "text/plain",
        "json" => "application/json",
        "csv" => "text/csv",
        _ => "application/octet-stream",
    }
}

/// `--file` arguments: local files by the ids the payload uses.
struct LocalFiles(std::collections::HashMap<String, PathBuf>);

impl LocalFiles {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut files = std::collections::HashMap::new();
        for arg in args {
            let (id, path) = arg
                .split_once('=')
                .with_context(|| format!("--file {arg:?}: write it as ID=PATH"))?;
            let path = PathBuf::from(path);
            anyhow::ensure!(
                path.is_file(),
                "--file {arg:?}: {} is not a file",
                path.display()
            );
            files.insert(id.to_string(), path);
        }
        Ok(Self(files))
    }
}

impl crate::runtime::JobFiles for LocalFiles {
    fn stat(&self, id: &str) -> Result<crate::runtime::FileInfo, crate::runtime::FileError> {
        use crate::runtime::FileError;
        let path = self
            .0
            .get(id)
            .ok_or_else(|| FileError::NotFound(format!("no --file {id}=PATH was given")))?;
        let bytes = std::fs::read(path).map_err(|e| FileError::Unavailable(e.to_string()))?;
        Ok(crate::runtime::FileInfo {
            id: id.to_string(),
            size: bytes.len() as u64,
            content_type: content_type_of(path).to_string(),
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        })
    }

    fn read(&self, id: &str, offset: u64, len: u32) -> Result<Vec<u8>, crate::runtime::FileError> {
        use std::io::{Read as _, Seek as _};
        let path = self.0.get(id).ok_or_else(|| {
            crate::runtime::FileError::NotFound(format!("no --file {id}=PATH was given"))
        })?;
        let unavailable = |e: std::io::Error| crate::runtime::FileError::Unavailable(e.to_string());
        let mut file = std::fs::File::open(path).map_err(unavailable)?;
        file.seek(std::io::SeekFrom::Start(offset))
            .map_err(unavailable)?;
        let mut bytes = Vec::new();
        file.take(u64::from(len))
            .read_to_end(&mut bytes)
            .map_err(unavailable)?;
        Ok(bytes)
    }
}

/// Artifacts of a local run: listed, and written into `--artifacts DIR` when given.
struct LocalArtifacts {
    dir: Option<PathBuf>,
    written: std::sync::Mutex<Vec<(String, String, u64)>>,
}

impl crate::runtime::ArtifactSink for LocalArtifacts {
    fn append(&self, name: &str, content_type: &str, bytes: &[u8]) -> Result<(), String> {
        use std::io::Write as _;
        let mut written = self.written.lock().expect("artifacts lock");
        let first = !written.iter().any(|(n, _, _)| n == name);
        if let Some(dir) = &self.dir {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(!first)
                .truncate(first)
                .open(dir.join(name))
                .map_err(|e| e.to_string())?;
            file.write_all(bytes).map_err(|e| e.to_string())?;
        }
        match written.iter_mut().find(|(n, _, _)| n == name) {
            Some(entry) => entry.2 += bytes.len() as u64,
            None => written.push((
                name.to_string(),
                content_type.to_string(),
                bytes.len() as u64,
            )),
        }
        Ok(())
    }
}

/// The runtime of the plugin commands: default limits, and the compiled-component cache
/// under the user's cache folder, so a Python or JavaScript component (seconds to compile)
/// compiles once, not at every `check` and `run`.
fn local_runtime() -> anyhow::Result<Runtime> {
    Runtime::new(RuntimeConfig {
        cache_dir: toolchain::user_cache_dir().map(|dir| dir.join("compiled")),
        ..RuntimeConfig::default()
    })
}

/// After `kiln plugin build`: loads the new component as `kiln serve` would, says what it
/// declares, and checks `example` (the project's example payload) against its schema.
pub(super) async fn check_built(path: &Path, example: Option<&Path>) -> anyhow::Result<ExitCode> {
    let runtime = local_runtime()?;
    let plugin = match runtime.load_file(path).await {
        Ok(plugin) => plugin,
        Err(error) => {
            eprintln!(
                "error: {} does not fit the Kiln contract: {error:#}",
                path.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "ok: {} is job type '{}' {} (kiln:plugin@{})",
        path.display(),
        plugin.info.name,
        plugin.info.version,
        plugin.contract()
    );
    let Some(example) = example else {
        return Ok(ExitCode::SUCCESS);
    };
    let text = std::fs::read_to_string(example)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", example.display()))?;
    let payload: serde_json::Value = match serde_json::from_str(&text) {
        Ok(payload) => payload,
        Err(error) => {
            eprintln!("error: {} is not JSON: {error}", example.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Err(violations) = plugin.validate_payload(&payload) {
        eprintln!(
            "error: {} does not match the payload schema the job type declares:",
            example.display()
        );
        for violation in violations {
            eprintln!("  {violation}");
        }
        return Ok(ExitCode::FAILURE);
    }
    println!("ok: example.json passes the payload schema");
    println!(
        "next: kiln plugin run {} --payload @example.json --tokens",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    Ok(ExitCode::SUCCESS)
}

/// `kiln plugin check PATH`: one component, or a plugins dir loaded exactly as
/// `kiln serve` loads it (the same checks, the same rule for two files claiming one type).
pub(super) async fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let runtime = local_runtime()?;
    if path.is_dir() {
        return check_dir(&runtime, path).await;
    }
    let started = Instant::now();
    match runtime.load_file(path).await {
        Ok(plugin) => {
            let info = &plugin.info;
            println!(
                "ok: {} is a Kiln job type (kiln:plugin@{})",
                path.display(),
                plugin.contract()
            );
            println!("  type:        {}", info.name);
            println!("  contract:    {}", plugin.contract());
            println!("  version:     {}", info.version);
            println!("  description: {}", info.description);
            println!("  timeout:     {}", timeout_line(&plugin));
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
                path.display()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The effective default timeout under the default `[limits]`, and the plugin's own claim
/// when the cap changed it.
fn timeout_line(plugin: &Plugin) -> String {
    let claimed = plugin.info.default_timeout_secs;
    let limits = Limits::default();
    let effective = limits.timeout(None, claimed).as_secs();
    if claimed == 0 {
        format!("{effective} s (the host default)")
    } else if u64::from(claimed) == effective {
        format!("{effective} s")
    } else {
        format!(
            "{effective} s (the plugin asks {claimed} s; [limits] max_timeout_secs caps it, \
             default {})",
            limits.max_timeout_secs
        )
    }
}

/// Checks every `*.wasm` of `dir` as the server would load it; exits 1 when any file
/// would not be served.
async fn check_dir(runtime: &Runtime, dir: &Path) -> anyhow::Result<ExitCode> {
    let load = runtime.load_dir(dir).await?;
    for plugin in load.registry.iter() {
        let file = plugin.file.as_deref().unwrap_or(dir);
        println!(
            "ok: {} serves job type '{}' {} (timeout {})",
            file.display(),
            plugin.info.name,
            plugin.info.version,
            timeout_line(plugin)
        );
    }
    for shadowed in &load.shadowed {
        eprintln!("warning: {shadowed}");
    }
    for (path, error) in &load.failed {
        eprintln!(
            "error: {} does not fit the Kiln contract: {error:#}",
            path.display()
        );
    }
    let served = load.registry.len();
    let left_out = load.shadowed.len() + load.failed.len();
    println!(
        "{served} job types served from {}; {left_out} files not loaded",
        dir.display()
    );
    Ok(if left_out == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
    let payload = match super::read_payload(&args.payload)? {
        Ok(payload) => payload,
        Err(code) => return Ok(code),
    };
    let runtime = local_runtime()?;
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
    let files = match LocalFiles::parse(&args.files) {
        Ok(files) => files,
        Err(error) => {
            eprintln!("error: {error:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let artifacts = Arc::new(LocalArtifacts {
        dir: args.artifacts.clone(),
        written: Default::default(),
    });
    let context = RunContext {
        sink: Arc::new(PrintEvents {
            tokens: args.tokens,
        }),
        llm,
        cancel: CancellationToken::new(),
        limits,
        timeout,
        files: Arc::new(files),
        artifacts: artifacts.clone(),
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
    for (name, content_type, size) in artifacts.written.lock().expect("artifacts lock").iter() {
        match &args.artifacts {
            Some(dir) => eprintln!(
                "artifact {name} ({content_type}, {size} bytes): {}",
                dir.join(name).display()
            ),
            None => eprintln!(
                "artifact {name} ({content_type}, {size} bytes), not kept: pass --artifacts DIR"
            ),
        }
    }
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
