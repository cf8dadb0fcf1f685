//! How a job attempt fails: the `error.kind` values clients see, and the classification of
//! wasmtime errors into them.

use serde::{Deserialize, Serialize};
use wasmtime::Trap;

/// Why an attempt failed. Serialised as the `error.kind` of a job, in snake case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The plugin judged the payload unusable (`job-error::invalid-input`). Not retried.
    InvalidInput,
    /// A transient failure the plugin reported (`job-error::retryable`). Retried.
    Retryable,
    /// A failure the plugin reported as final (`job-error::permanent`). Not retried.
    Permanent,
    /// The plugin trapped: a panic, `unreachable`, an out-of-bounds access.
    Trap,
    /// The plugin recursed past its stack.
    StackOverflow,
    /// The attempt ran past its wall-clock budget.
    Timeout,
    /// The plugin tried to grow its memory past the cap.
    MemoryLimit,
    /// The result or a partial was larger than allowed.
    ResultTooLarge,
    /// The result or a partial was not JSON.
    InvalidResult,
    /// The plugin emitted events faster than allowed.
    EventLimit,
    /// The plugin used more LLM calls or tokens than allowed.
    LlmLimit,
    /// The plugin wrote more artifact bytes than its `artifact_limit`.
    ArtifactLimit,
    /// A client cancelled the job.
    Cancelled,
    /// The job's type is not loaded (its plugin was removed or failed to load).
    UnknownType,
    /// The host was stopping and the attempt could not finish in its grace period.
    Interrupted,
    /// Something went wrong in the host itself; the message says what.
    Internal,
    /// A job it depends on (`depends_on`) failed or was cancelled; the message names it.
    /// Never run, not retried.
    DependencyFailed,
}

impl FailureKind {
    /// The `error.kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::Retryable => "retryable",
            Self::Permanent => "permanent",
            Self::Trap => "trap",
            Self::StackOverflow => "stack_overflow",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory_limit",
            Self::ResultTooLarge => "result_too_large",
            Self::InvalidResult => "invalid_result",
            Self::EventLimit => "event_limit",
            Self::LlmLimit => "llm_limit",
            Self::ArtifactLimit => "artifact_limit",
            Self::Cancelled => "cancelled",
            Self::UnknownType => "unknown_type",
            Self::Interrupted => "interrupted",
            Self::Internal => "internal",
            Self::DependencyFailed => "dependency_failed",
        }
    }

    /// Whether the scheduler may run the job again while attempts remain. Only failures
    /// that say "try later" are retried: a trap or a limit would just happen again.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Retryable | Self::Interrupted)
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed attempt: a kind for programs and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct JobFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// What happened, pointing at the plugin where the plugin is at fault.
    pub message: String,
}

impl JobFailure {
    /// A failure of `kind` saying `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Raised inside the store (from a host import, the epoch callback or the memory limiter)
/// to stop the guest with a known kind. It travels through wasmtime as the error of the
/// call and is recognised again by [`classify`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct HostStop(pub JobFailure);

impl HostStop {
    /// A wasmtime error that stops the guest and fails the job with `kind`.
    pub(crate) fn error(kind: FailureKind, message: impl Into<String>) -> wasmtime::Error {
        wasmtime::Error::new(HostStop(JobFailure::new(kind, message)))
    }
}

/// Turns the error of a failed guest call into a [`JobFailure`]. `account` is the plugin's
/// own account of what went wrong (its last `error`-level log line, where the Rust SDK
/// logs panic messages, else the end of its stderr): it opens the message; the trap and
/// a short backtrace follow.
pub(crate) fn classify(error: &wasmtime::Error, account: Option<&str>) -> JobFailure {
    if let Some(stop) = error.chain().find_map(|e| e.downcast_ref::<HostStop>()) {
        return stop.0.clone();
    }
    match error.chain().find_map(|e| e.downcast_ref::<Trap>()) {
        Some(Trap::StackOverflow) => JobFailure::new(
            FailureKind::StackOverflow,
            "the plugin overflowed its stack (unbounded recursion?)",
        ),
        Some(Trap::Interrupt) => {
            JobFailure::new(FailureKind::Timeout, "the plugin was interrupted")
        }
        // Rust and C guests keep their frames' data on a stack inside linear memory, which
        // runs out (and faults below address 0) long before wasmtime's own stack does: a
        // memory fault whose backtrace is one or two functions over and over is unbounded
        // recursion, not a stray pointer.
        Some(Trap::MemoryOutOfBounds) if let Some(name) = runaway_recursion(error) => {
            JobFailure::new(
                FailureKind::StackOverflow,
                format!("the plugin overflowed its stack: unbounded recursion in `{name}`"),
            )
        }
        Some(trap) => {
            let text = trap.to_string();
            let what = text.strip_prefix("wasm trap: ").unwrap_or(&text);
            trapped(account, what, error)
        }
        // Some other failure inside the guest call (a canonical ABI error, say): its
        // causes, without the backtrace wasmtime puts around them.
        None => {
            let backtrace = error
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .map(ToString::to_string);
            let causes: Vec<String> = error
                .chain()
                .map(ToString::to_string)
                .filter(|cause| Some(cause) != backtrace.as_ref())
                .collect();
            trapped(account, &causes.join(": "), error)
        }
    }
}

/// Frames of a trap's backtrace quoted in its message.
const QUOTED_FRAMES: usize = 4;

/// The message of a trap, one item a line: the plugin's own account (its panic message)
/// if it left one, the trap, and where it happened.
fn trapped(account: Option<&str>, trap: &str, error: &wasmtime::Error) -> JobFailure {
    let mut message = match account {
        Some(log) => format!("{log}\nthe plugin trapped: {trap}"),
        None => format!("the plugin trapped: {trap}"),
    };
    for frame in short_backtrace(error) {
        message.push_str("\n    at ");
        message.push_str(&frame);
    }
    JobFailure::new(FailureKind::Trap, message)
}

/// The first few frames of the guest backtrace, innermost first, named where the
/// component has a name section. Frames of the language runtime's panic and abort
/// machinery on top are left out: the plugin's own function that failed comes first.
fn short_backtrace(error: &wasmtime::Error) -> Vec<String> {
    let Some(backtrace) = error.downcast_ref::<wasmtime::WasmBacktrace>() else {
        return Vec::new();
    };
    let names: Vec<String> = backtrace.frames().iter().map(frame_name).collect();
    let runtime = names
        .iter()
        .take_while(|name| is_runtime_frame(name))
        .count();
    let start = if runtime < names.len() { runtime } else { 0 };
    names.into_iter().skip(start).take(QUOTED_FRAMES).collect()
}

/// A frame's function name without the hash rustc appends, or its index.
fn frame_name(frame: &wasmtime::FrameInfo) -> String {
    match frame.func_name() {
        Some(name) => format!("{:#}", rustc_demangle::demangle(name)),
        None => format!("wasm function {}", frame.func_index()),
    }
}

/// How the names of Rust's standard library and panic entry points start.
const RUNTIME_PREFIXES: [&str; 8] = [
    "std::", "core::", "alloc::", "<std::", "<core::", "<alloc::", "__rust", "rust_",
];

/// Whether a function belongs to Rust's standard library or its panic entry points.
fn is_runtime_frame(name: &str) -> bool {
    name == "abort"
        || RUNTIME_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

/// The function recursing when the backtrace is a full window (wasmtime keeps 20 frames)
/// of at most two distinct functions.
fn runaway_recursion(error: &wasmtime::Error) -> Option<String> {
    let frames = error.downcast_ref::<wasmtime::WasmBacktrace>()?.frames();
    if frames.len() < 20 {
        return None;
    }
    let mut distinct: Vec<u32> = frames.iter().map(|f| f.func_index()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    (distinct.len() <= 2).then(|| {
        frames[0].func_name().map_or_else(
            || format!("function {}", frames[0].func_index()),
            str::to_string,
        )
    })
}
