//! The sandbox: runs job types as WebAssembly components under wasmtime.
//!
//! One [`Runtime`] per process holds the engine, the linker with the contract's imports,
//! the compiled-component cache and an admission semaphore sized to the instance pool.
//! [`Runtime::run`] runs one attempt of one job in a fresh store and always comes back
//! with a [`RunOutcome`]: whatever the plugin does (trap, loop, eat memory, flood
//! events), only its own job fails, with a [`FailureKind`] that says why.
//!
//! The runtime knows nothing of HTTP or storage: events leave through an [`EventSink`]
//! and LLM calls through an [`LlmClient`](crate::llm::LlmClient), so it is tested and
//! used by `kiln plugin run` without the job service.

mod cache;
mod contract;
mod engine;
mod events;
mod failure;
mod files;
mod guests;
mod host;
mod journal;
mod limits;
mod plugin;
mod relay;
mod stderr;

pub use cache::{CacheOutcome, ComponentCache};
pub use contract::{CONTRACT_PACKAGE, CONTRACT_VERSION, ContractVersion};
pub use events::{DiscardEvents, EventSink, PluginEvent};
pub use failure::{FailureKind, JobFailure};
pub use files::{
    ArtifactSink, DiscardArtifacts, FileError, FileInfo, JobFiles, MAX_ARTIFACT_NAME,
    MAX_READ_CHUNK, NoFiles, valid_artifact_name, valid_content_type,
};
pub use journal::{CallJournal, JournalEntry, request_hash};
pub use limits::{Limits, LimitsOverride};
pub use plugin::{
    MAX_DESCRIPTION_BYTES, MAX_SCHEMA_BYTES, Plugin, PluginInfo, PluginRegistry, SchemaViolation,
};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};

use crate::llm::{LlmClient, LlmError, LlmRequest, LlmResponse, TokenSink, Usage};
use contract::{ContractPre, RunJob};
use engine::EpochTicker;
use failure::{HostStop, classify};
use guests::GuestThreads;
use host::HostState;

/// How the runtime is sized.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Jobs that may run at once across all types: the size of the instance pool and of
    /// the admission semaphore in front of it. Default 128.
    pub max_instances: u32,
    /// The largest memory any job type may be given, in MiB; per-type caps above it are
    /// lowered to it. Default 1024.
    pub max_memory_mib: u64,
    /// Where compiled components are cached; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// How long a component's `describe` may take at load before it is refused. Default
    /// 2 s: `describe` returns constants, so anything slower is a bug (a loop), and the
    /// server does not serve jobs until every plugin is loaded.
    pub describe_timeout: Duration,
    /// Threads that run guest code, apart from the executor that serves HTTP, SSE and
    /// LLM calls. Default: one per core.
    pub guest_threads: usize,
}

/// [`RuntimeConfig::describe_timeout`]'s default.
pub const DEFAULT_DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: 128,
            max_memory_mib: 1024,
            cache_dir: None,
            describe_timeout: DEFAULT_DESCRIBE_TIMEOUT,
            guest_threads: guests::default_threads(),
        }
    }
}

/// What [`Runtime::load_dir`] made of a plugins dir.
#[derive(Debug, Default)]
pub struct DirLoad {
    /// The job types to serve.
    pub registry: PluginRegistry,
    /// Files that did not load, with why, by file name.
    pub failed: Vec<(PathBuf, anyhow::Error)>,
    /// Files that loaded but describe a job type an earlier file (by name) already
    /// serves, by file name.
    pub shadowed: Vec<Shadowed>,
}

/// A file not served because another one claims the same job type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shadowed {
    /// The file left out.
    pub path: PathBuf,
    /// The job type both describe.
    pub job_type: String,
    /// The file that serves it: the first of the two by file name.
    pub winner: PathBuf,
}

impl std::fmt::Display for Shadowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} and {} both describe the job type '{}': {} serves it (the first file by name \
             wins) and {} is not loaded; rename or remove one of them",
            self.winner.display(),
            self.path.display(),
            self.job_type,
            self.winner.display(),
            self.path.display()
        )
    }
}

/// One attempt of one job, as the runtime needs it.
#[derive(Clone, Debug)]
pub struct JobInput {
    /// Job id.
    pub id: String,
    /// Job type name.
    pub job_type: String,
    /// Payload, JSON text (already validated against the schema).
    pub payload: String,
    /// Attempt number, from 1.
    pub attempt: u32,
}

/// What an attempt may use and where its events go.
#[derive(Clone)]
pub struct RunContext {
    /// Receives progress, partials and tokens.
    pub sink: Arc<dyn EventSink>,
    /// Answers the plugin's LLM calls.
    pub llm: Arc<dyn LlmClient>,
    /// Cancelled when a client cancels the job (or the host gives up on it).
    pub cancel: CancellationToken,
    /// The sandbox limits.
    pub limits: Limits,
    /// Wall-clock budget of this attempt.
    pub timeout: Duration,
    /// The input files the job may read (its payload's `kiln-file` ids).
    pub files: Arc<dyn JobFiles>,
    /// Where the attempt's artifacts go.
    pub artifacts: Arc<dyn ArtifactSink>,
}

impl RunContext {
    /// A context with `sink`, `llm` and `limits`, a fresh cancel token, no files, and
    /// artifacts dropped: what a run outside the job service starts from.
    pub fn new(
        sink: Arc<dyn EventSink>,
        llm: Arc<dyn LlmClient>,
        limits: Limits,
        timeout: Duration,
    ) -> Self {
        Self {
            sink,
            llm,
            cancel: CancellationToken::new(),
            limits,
            timeout,
            files: Arc::new(NoFiles),
            artifacts: Arc::new(DiscardArtifacts),
        }
    }
}

/// How an attempt ended, and what it spent.
#[derive(Debug)]
pub struct RunOutcome {
    /// The result JSON, or why there is none.
    pub result: Result<Value, JobFailure>,
    /// LLM usage of this attempt.
    pub usage: Usage,
}

/// The sandbox. Create one per process and share it.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: ComponentCache,
    admission: Arc<Semaphore>,
    max_memory_mib: u64,
    /// WASI only: `describe` gets no Kiln import (see [`Runtime::describe`]).
    describe_linker: Linker<HostState>,
    describe_timeout: Duration,
    guests: GuestThreads,
    _ticker: EpochTicker,
}

impl Runtime {
    /// Builds the engine, links the contract's imports and WASI, and starts the epoch
    /// ticker.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let max_memory_bytes = usize::try_from(config.max_memory_mib * 1024 * 1024)
            .context("max_memory_mib is too large")?;
        let engine = engine::build_engine(config.max_instances, max_memory_bytes)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI")?;
        let describe_linker = linker.clone();
        contract::add_to_linker(&mut linker).context("linking the kiln:plugin imports")?;
        Ok(Self {
            cache: ComponentCache::new(&engine, config.cache_dir),
            admission: Arc::new(Semaphore::new(config.max_instances as usize)),
            max_memory_mib: config.max_memory_mib,
            describe_linker,
            describe_timeout: config.describe_timeout,
            guests: GuestThreads::start(config.guest_threads)?,
            _ticker: EpochTicker::start(engine.clone()),
            engine,
            linker,
        })
    }

    /// Loads a plugin from a `.wasm` file.
    pub async fn load_file(&self, path: &Path) -> anyhow::Result<Plugin> {
        let bytes = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        let mut plugin = self
            .load_named(bytes, &path.display().to_string())
            .await
            .with_context(|| format!("loading plugin {}", path.display()))?;
        plugin.file = Some(path.to_path_buf());
        Ok(plugin)
    }

    /// Loads a plugin from component bytes: checks it against the contract, compiles it
    /// (or takes it from the cache), pre-links it and calls `describe`.
    pub async fn load_bytes(&self, bytes: Vec<u8>) -> anyhow::Result<Plugin> {
        self.load_named(bytes, "(bytes)").await
    }

    /// [`Runtime::load_bytes`]; `origin` names the component in log lines.
    async fn load_named(&self, bytes: Vec<u8>, origin: &str) -> anyhow::Result<Plugin> {
        plugin::check_is_component(&bytes)?;
        let engine = self.engine.clone();
        let cache = self.cache.clone();
        let size = bytes.len();
        // Compiling is CPU-bound and can take seconds: keep it off the async workers.
        let (component, outcome, digest) = tokio::task::spawn_blocking(move || {
            let (component, outcome) = cache.load(&engine, &bytes)?;
            anyhow::Ok((component, outcome, ComponentCache::digest(&bytes)))
        })
        .await
        .context("the compile task failed")??;
        let (version, imports) = plugin::check_contract(&self.engine, &component)?;
        let pre = pre_link(&self.linker, &component, version)?;
        let info = self.describe(&component, version, origin).await?;
        Plugin::new(info, digest, size, outcome, imports, pre)
    }

    /// Loads every `*.wasm` in `dir`, all at once (a slow file costs its own `describe`
    /// deadline, not the others'). Files that fail are listed with their errors rather
    /// than stopping the others. When several files describe one job type, the first by
    /// file name serves it and the others are listed as shadowed.
    pub async fn load_dir(&self, dir: &Path) -> anyhow::Result<DirLoad> {
        let mut paths = Vec::new();
        let mut entries = tokio::fs::read_dir(dir)
            .await
            .with_context(|| format!("reading the plugins dir {}", dir.display()))?;
        while let Some(entry) = entries.next_entry().await? {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "wasm") {
                paths.push(path);
            }
        }
        paths.sort();
        let loads = paths.iter().map(|path| self.load_file(path));
        let outcomes = futures::future::join_all(loads).await;
        let mut load = DirLoad::default();
        for (path, outcome) in paths.into_iter().zip(outcomes) {
            let plugin = match outcome {
                Ok(plugin) => plugin,
                Err(error) => {
                    load.failed.push((path, error));
                    continue;
                }
            };
            if let Some(winner) = load.registry.get(&plugin.info.name) {
                load.shadowed.push(Shadowed {
                    job_type: plugin.info.name.clone(),
                    winner: winner.file.clone().unwrap_or_default(),
                    path,
                });
                continue;
            }
            load.registry
                .insert(plugin)
                .expect("the name was checked to be free");
        }
        Ok(load)
    }

    /// Calls the component's `describe` with the describe deadline and without any Kiln
    /// import: the contract says `describe` must not call one, so each is linked to a
    /// function that stops it with a message naming the import. WASI stays linked (an
    /// empty context), as standard-library guests need it to instantiate.
    async fn describe(
        &self,
        component: &Component,
        version: ContractVersion,
        origin: &str,
    ) -> anyhow::Result<PluginInfo> {
        let mut linker = self.describe_linker.clone();
        plugin::refuse_kiln_imports(&self.engine, component, version, &mut linker)?;
        let pre = pre_link(&linker, component, version)?;
        let context = RunContext::new(
            Arc::new(DiscardEvents),
            Arc::new(NoLlm),
            Limits::default(),
            self.describe_timeout,
        );
        let (raw, _usage) = self
            .call(
                &pre,
                &format!("describe:{origin}"),
                "(describe)",
                context,
                None,
                |pre, store| pre.describe(store),
            )
            .await;
        let info = raw.map_err(|failure| match failure.kind {
            FailureKind::Timeout => anyhow::anyhow!(
                "`describe` did not return within {} s (`describe_timeout_ms`): it must \
                 return its constants at once, without loops or waits",
                self.describe_timeout.as_secs_f64()
            ),
            _ => anyhow::anyhow!("`describe` failed: {}", failure.message),
        })?;
        plugin::check_description(&info)?;
        let payload_schema: Value = serde_json::from_str(&info.payload_schema)
            .context("`describe` returned a payload schema that is not JSON")?;
        Ok(PluginInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            payload_schema,
            default_timeout_secs: info.default_timeout_secs,
        })
    }

    /// Runs one attempt of `job` with `plugin`. Never panics and never fails the host:
    /// every way the attempt can go wrong comes back as a [`JobFailure`].
    pub async fn run(&self, plugin: &Plugin, job: JobInput, context: RunContext) -> RunOutcome {
        self.run_journaled(plugin, job, context, None).await
    }

    /// [`Runtime::run`] with the job's LLM call journal: calls earlier attempts finished
    /// are replayed from it, and new ones are recorded in it.
    pub async fn run_journaled(
        &self,
        plugin: &Plugin,
        job: JobInput,
        context: RunContext,
        journal: Option<Arc<dyn CallJournal>>,
    ) -> RunOutcome {
        let limits = context.limits.clone();
        let cancel = context.cancel.clone();
        let run_job = RunJob {
            id: job.id.clone(),
            job_type: job.job_type.clone(),
            payload: job.payload,
            attempt: job.attempt,
        };
        let (raw, usage) = self
            .call(
                &plugin.pre,
                &job.id,
                &job.job_type,
                context,
                journal,
                move |pre, store| pre.run(store, run_job),
            )
            .await;
        let result = match raw {
            _ if cancel.is_cancelled() => Err(cancelled()),
            Ok(Ok(text)) => parse_result(&text, &limits),
            Ok(Err(failure)) => Err(failure),
            Err(failure) => Err(failure),
        };
        RunOutcome { result, usage }
    }

    /// The common path of `describe` and `run`: admission, then the guest on the guest
    /// threads while this task (on the caller's executor) carries out its LLM calls.
    async fn call<R: Send + 'static>(
        &self,
        pre: &ContractPre,
        job_id: &str,
        job_type: &str,
        context: RunContext,
        journal: Option<Arc<dyn CallJournal>>,
        invoke: impl for<'a> FnOnce(
            &'a ContractPre,
            &'a mut Store<HostState>,
        ) -> BoxFuture<'a, wasmtime::Result<R>>
        + Send
        + 'static,
    ) -> (Result<R, JobFailure>, Usage) {
        let cancel = context.cancel.clone();
        // Wait for a pool slot, unless the job is cancelled first.
        let _permit = tokio::select! {
            permit = self.admission.acquire() => permit.expect("the admission semaphore is never closed"),
            () = cancel.cancelled() => return (Err(cancelled()), Usage::default()),
        };
        let (llm, serve_llm) = relay::relay(context.llm.clone());
        let mut limits = context.limits.clone();
        limits.memory_mib = limits.memory_mib.min(self.max_memory_mib);
        let context = RunContext {
            llm,
            limits,
            ..context
        };
        let ids = (job_id.to_string(), job_type.to_string());
        let guest = self.guests.spawn(
            run_guest(
                (self.engine.clone(), pre.clone()),
                ids,
                context,
                journal,
                invoke,
            )
            .in_current_span(),
        );
        let mut guest = std::pin::pin!(guest);
        let ended = tokio::select! {
            ended = &mut guest => ended,
            // The guest dropped its LLM client: it is about to end.
            () = serve_llm => guest.await,
        };
        let (result, usage) = ended.unwrap_or_else(|error| {
            let failure = JobFailure::new(
                FailureKind::Internal,
                format!("the guest's task failed: {error}"),
            );
            (Err(failure), Usage::default())
        });
        if let Err(failure) = &result {
            tracing::info!(job_id, kind = %failure.kind, message = %failure.message, "attempt failed");
        }
        (result, usage)
    }
}

/// Links `component` with `linker`'s imports through `version`'s bindings, ready to
/// instantiate once per call.
fn pre_link(
    linker: &Linker<HostState>,
    component: &Component,
    version: ContractVersion,
) -> anyhow::Result<ContractPre> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|e| anyhow::anyhow!("the component does not link against Kiln: {e:#}"))?;
    ContractPre::new(version, instance_pre)
}

/// One guest call on the guest threads: a fresh store with the limits, deadline and
/// cancellation wired in, instantiation, the call.
async fn run_guest<R: Send>(
    (engine, pre): (Engine, ContractPre),
    ids: (String, String),
    context: RunContext,
    journal: Option<Arc<dyn CallJournal>>,
    invoke: impl for<'a> FnOnce(
        &'a ContractPre,
        &'a mut Store<HostState>,
    ) -> BoxFuture<'a, wasmtime::Result<R>>
    + Send,
) -> (Result<R, JobFailure>, Usage) {
    let cancel = context.cancel.clone();
    let timeout = context.timeout;
    let deadline = Instant::now() + timeout;
    let state = HostState::new(ids, context, deadline, journal);
    let mut store = Store::new(&engine, state);
    store.limiter(|state| state as &mut dyn wasmtime::ResourceLimiter);
    // Check cancellation and the deadline on every epoch tick, and yield so the other
    // guests on this thread get their turn.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |store| {
        let state = store.data();
        if state.cancel.is_cancelled() {
            return Err(HostStop::error(
                FailureKind::Cancelled,
                "the job was cancelled",
            ));
        }
        if Instant::now() >= state.deadline {
            return Err(timed_out(timeout).into_stop());
        }
        Ok(UpdateDeadline::Yield(1))
    });

    let raw = {
        let call = invoke(&pre, &mut store);
        // The epoch callback stops a guest that is computing; these two stop one that
        // is waiting in a host call (an LLM request), which epochs cannot interrupt.
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(StopReason::Failure(cancelled())),
            () = tokio::time::sleep_until(deadline.into()) => Err(StopReason::Failure(timed_out(timeout))),
            result = call => result.map_err(StopReason::Wasm),
        }
    };
    let state = store.data();
    let result = raw.map_err(|reason| match reason {
        StopReason::Failure(failure) => failure,
        StopReason::Wasm(error) => {
            // The plugin's own account of the failure: its last error log, else the end
            // of its stderr (where CPython, for one, prints a fatal traceback).
            let account = state.last_error_log.clone().or_else(|| state.stderr.text());
            classify(&error, account.as_deref())
        }
    });
    (result, state.usage)
}

enum StopReason {
    Failure(JobFailure),
    Wasm(wasmtime::Error),
}

fn cancelled() -> JobFailure {
    JobFailure::new(FailureKind::Cancelled, "the job was cancelled")
}

fn timed_out(timeout: Duration) -> JobFailure {
    JobFailure::new(
        FailureKind::Timeout,
        format!(
            "the attempt ran past its {} s timeout",
            timeout.as_secs_f64()
        ),
    )
}

impl JobFailure {
    fn into_stop(self) -> wasmtime::Error {
        wasmtime::Error::new(HostStop(self))
    }
}

fn parse_result(text: &str, limits: &Limits) -> Result<Value, JobFailure> {
    if text.len() > limits.max_result_bytes {
        return Err(JobFailure::new(
            FailureKind::ResultTooLarge,
            format!(
                "the result is {} bytes; the limit is {}",
                text.len(),
                limits.max_result_bytes
            ),
        ));
    }
    serde_json::from_str(text).map_err(|e| {
        let start: String = text.chars().take(60).collect();
        JobFailure::new(
            FailureKind::InvalidResult,
            format!("the result is not JSON ({e}); it starts with {start:?}"),
        )
    })
}

/// The LLM client `describe` gets: describing a job type must not cost money.
struct NoLlm;

impl LlmClient for NoLlm {
    fn complete<'a>(
        &'a self,
        _caller: &'a str,
        _request: &'a LlmRequest,
        _tokens: Option<TokenSink<'a>>,
    ) -> BoxFuture<'a, Result<LlmResponse, LlmError>> {
        async {
            Err(LlmError::Rejected(
                "LLM calls are not allowed in `describe`".into(),
            ))
        }
        .boxed()
    }
}
