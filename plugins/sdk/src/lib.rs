//! # kiln-plugin: write a Kiln job type in a few dozen lines
//!
//! A Kiln job type is a WebAssembly component built against the `kiln:plugin@0.2.0`
//! contract (`wit/v0.2.0/plugin.wit`; hosts also keep running components built for
//! 0.1.0). This crate hides the contract's plumbing: you
//! implement [`JobType`] for a unit struct, call [`export!`] once, and build with
//! `cargo build --release --target wasm32-wasip2` (a `cdylib` crate; no extra tools).
//!
//! ```no_run
//! //! `greet`: writes one greeting per name.
//! use kiln_plugin::prelude::*;
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Payload {
//!     names: Vec<String>,
//! }
//!
//! struct Greet;
//!
//! impl JobType for Greet {
//!     type Payload = Payload;
//!
//!     fn info() -> Info {
//!         Info::new("greet", env!("CARGO_PKG_VERSION"))
//!             .description("Writes a short greeting for each name.")
//!             .schema(json!({
//!                 "type": "object",
//!                 "required": ["names"],
//!                 "properties": {
//!                     "names": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 20}
//!                 },
//!                 "additionalProperties": false
//!             }))
//!             .timeout_secs(120)
//!     }
//!
//!     fn run(job: Job<Payload>) -> Result<impl Serialize, JobError> {
//!         let requests = job.payload.names.iter().enumerate().map(|(i, name)| {
//!             Request::new()
//!                 .system("You write one warm sentence.")
//!                 .user(format!("Greet {name}."))
//!                 .stream(format!("greeting-{}", i + 1))
//!         });
//!         let mut greetings = Vec::new();
//!         for response in llm::complete_all(requests.collect()) {
//!             greetings.push(response?.text); // an LLM error becomes retryable/permanent
//!         }
//!         progress::report(100, "Greeted everyone");
//!         Ok(json!({ "greetings": greetings }))
//!     }
//! }
//!
//! kiln_plugin::export!(Greet);
//! ```
//!
//! `Cargo.toml` of such a plugin:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! kiln-plugin = "0.1"
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! ## What the host guarantees, and what it expects
//!
//! * `describe` ([`JobType::info`]) runs once when the host loads the component; it must
//!   not call any import (no logging, no LLM), just build an [`Info`].
//! * Every job attempt runs in a fresh instance: no state survives between jobs.
//! * The payload has already passed your JSON Schema when [`JobType::run`] is called; a
//!   payload that still fails to deserialise into [`JobType::Payload`] becomes a
//!   [`JobError::InvalidInput`] carrying serde's message.
//! * WASI is linked with an empty context: no files, no sockets, no environment variables,
//!   no arguments; stdout goes nowhere and stderr only into the message of a trap. Talk
//!   to the host through [`progress`], [`llm`], [`files`], [`artifacts`] and [`log`].
//! * A panic is logged through [`log::error`] as `MESSAGE (panicked at FILE:LINE:COLUMN)`
//!   before the instance traps, and the job's error message starts with it.
//! * Keep events reasonable: every [`progress::report`] and [`progress::partial`] call is
//!   an SSE event, and the host fails a job that exceeds its event rate limit.
//!
//! ## Modules
//!
//! * [`progress`]: percent + message reports, named partial results, cancellation, and the
//!   [`progress::Progress`] tracker for "items × steps" jobs.
//! * [`llm`]: the [`llm::Request`] builder (JSON Schema output, tools), [`llm::complete`],
//!   [`llm::complete_all`] and [`llm::embed`].
//! * [`files`]: the input files the payload names, read in chunks.
//! * [`artifacts`]: output files stored with the job.
//! * [`log`]: leveled log lines tagged by the host with the job id.
//! * [`text`]: pure text helpers such as [`text::split_chunks`].
//! * [`testing`]: unit tests of a job type with `cargo test`, natively, with a fake host
//!   answering the LLM calls.
#![deny(missing_docs)]

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod artifacts;
pub mod files;
mod host;
pub mod llm;
pub mod log;
pub mod progress;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod text;

pub use serde_json::{Value, json};

/// The raw bindings generated from the contract. Plugin authors do not need them; they
/// exist so [`export!`] can wire a [`JobType`] to the `kiln:plugin/job-type` export, and
/// for the rare test fixture that must call an import unchecked.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.2.0",
        world: "job-plugin",
        pub_export_macro: true,
        default_bindings_module: "kiln_plugin::bindings",
        export_macro_name: "export",
    });
}

/// The usual imports of a plugin: `use kiln_plugin::prelude::*;`.
pub mod prelude {
    pub use crate::llm::{self, Request, Response, Tool, ToolCall};
    pub use crate::progress::{self, Progress};
    pub use crate::{Info, Job, JobError, JobType, Value, json, log, text};
    pub use crate::{artifacts, files};
    pub use serde::Serialize;
}

/// A job type: what the host calls `describe` and `run` on.
///
/// Implement it for a unit struct and pass that struct to [`export!`].
pub trait JobType {
    /// The payload clients post, deserialised from JSON with serde. It has already passed
    /// the schema from [`JobType::info`]; a mismatch between the two fails the job with
    /// [`JobError::InvalidInput`] and serde's message.
    type Payload: DeserializeOwned;

    /// Describes the job type: name, version, description, payload schema, timeout.
    /// Called once at load time; must not call imports ([`log`], [`llm`], [`progress`]).
    fn info() -> Info;

    /// Runs one attempt of one job and returns its result, serialised to JSON for the
    /// client. Return `Result<impl Serialize, JobError>`, typically a [`Value`] built with
    /// [`json!`] or a `#[derive(Serialize)]` struct. Errors from [`llm`] convert with `?`.
    fn run(job: Job<Self::Payload>) -> Result<impl Serialize, JobError>;
}

/// What a job type tells the host about itself, built with a small builder:
///
/// ```
/// # use kiln_plugin::{Info, json};
/// let info = Info::new("characters", env!("CARGO_PKG_VERSION"))
///     .description("Generates characters for a theme.")
///     .schema(json!({"type": "object"}))
///     .timeout_secs(300);
/// assert_eq!(info.name(), "characters");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    name: String,
    version: String,
    description: String,
    schema: Value,
    timeout_secs: u32,
}

impl Info {
    /// A job type called `name` (lowercase letters, digits, `-`, `_`; what clients post as
    /// `type`) at `version` (semver; pass `env!("CARGO_PKG_VERSION")`). The schema starts
    /// as `{"type": "object"}` and the timeout as 0 ("use the host default").
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            schema: json!({ "type": "object" }),
            timeout_secs: 0,
        }
    }

    /// One or two sentences for humans: what a job of this type produces.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// The JSON Schema (draft 2020-12) of the payload. The host validates every submitted
    /// payload against it and refuses the job (HTTP 400) when it fails, so make it precise:
    /// `required`, bounds, `additionalProperties: false`.
    pub fn schema(mut self, schema: Value) -> Self {
        self.schema = schema;
        self
    }

    /// Wall-clock budget of one attempt in seconds, unless the operator or client overrides
    /// it. 0 means the host default.
    pub fn timeout_secs(mut self, secs: u32) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// The job type name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The human description.
    pub fn description_text(&self) -> &str {
        &self.description
    }

    /// The payload JSON Schema.
    pub fn schema_value(&self) -> &Value {
        &self.schema
    }

    /// The default timeout in seconds (0 = host default).
    pub fn default_timeout_secs(&self) -> u32 {
        self.timeout_secs
    }
}

/// One attempt of one job, with its payload already deserialised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job<P> {
    /// The job id (a UUID); handy in log lines.
    pub id: String,
    /// The job type name (the name from [`Info::new`]).
    pub job_type: String,
    /// 1 for the first attempt, 2 for the first retry, and so on.
    pub attempt: u32,
    /// The client's payload.
    pub payload: P,
}

/// Why a job failed. The variant decides what the host does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobError {
    /// The payload is unusable even though it passed the schema. Not retried.
    InvalidInput(String),
    /// A transient failure (upstream outage, rate limit). Retried with backoff while
    /// attempts remain.
    Retryable(String),
    /// The job cannot succeed. Not retried.
    Permanent(String),
}

impl JobError {
    /// The payload is unusable: not retried, shown to the client as `invalid_input`.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// A transient failure: the host retries the job later while attempts remain.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable(message.into())
    }

    /// The job cannot succeed: not retried.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent(message.into())
    }

    /// The message, whatever the variant.
    pub fn message(&self) -> &str {
        match self {
            Self::InvalidInput(m) | Self::Retryable(m) | Self::Permanent(m) => m,
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Self::InvalidInput(_) => "invalid input",
            Self::Retryable(_) => "retryable",
            Self::Permanent(_) => "permanent",
        };
        write!(f, "{kind}: {}", self.message())
    }
}

impl std::error::Error for JobError {}

impl From<serde_json::Error> for JobError {
    /// A JSON error inside `run` (not while reading the payload) is a bug, not bad input:
    /// it becomes [`JobError::Permanent`].
    fn from(error: serde_json::Error) -> Self {
        Self::Permanent(format!("JSON error: {error}"))
    }
}

/// Exports a [`JobType`] as this component's `kiln:plugin/job-type` implementation.
///
/// Call it exactly once per plugin crate, at the top level:
///
/// ```ignore
/// kiln_plugin::export!(MyJobType);
/// ```
///
/// It wires `describe` to [`JobType::info`] and `run` to [`JobType::run`], deserialises
/// the payload, serialises the result, and installs a panic hook that logs the panic
/// message at error level so the host can show it.
#[macro_export]
macro_rules! export {
    ($job_type:ty) => {
        const _: () = {
            struct __KilnPluginExport;

            impl $crate::bindings::exports::kiln::plugin::job_type::Guest for __KilnPluginExport {
                fn describe() -> $crate::bindings::kiln::plugin::types::PluginInfo {
                    $crate::__private::describe::<$job_type>()
                }

                fn run(
                    job: $crate::bindings::kiln::plugin::types::Job,
                ) -> ::core::result::Result<
                    ::std::string::String,
                    $crate::bindings::kiln::plugin::types::JobError,
                > {
                    $crate::__private::run::<$job_type>(job)
                }
            }

    $crate::bindings::export!(__KilnPluginExport with_types_in $crate::bindings);
        };
    };
}

/// Glue used by [`export!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    use super::*;
    use crate::bindings::kiln::plugin::types as raw;

    /// `describe`: builds the raw plugin info. Calls no import (unless it panics).
    pub fn describe<T: JobType>() -> raw::PluginInfo {
        install_panic_hook();
        let info = T::info();
        raw::PluginInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            payload_schema: info.schema.to_string(),
            default_timeout_secs: info.timeout_secs,
        }
    }

    /// `run`: deserialise, call the job type, serialise.
    pub fn run<T: JobType>(job: raw::Job) -> Result<String, raw::JobError> {
        install_panic_hook();
        run_inner::<T>(job).map_err(into_raw)
    }

    /// `run` for [`crate::testing`]: attempt 1 of a job with a made-up id.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn run_native<T: JobType>(payload: &str) -> Result<String, JobError> {
        run_inner::<T>(raw::Job {
            id: "00000000-0000-7000-8000-000000000000".to_string(),
            job_type: T::info().name,
            payload: payload.to_string(),
            attempt: 1,
        })
    }

    fn run_inner<T: JobType>(job: raw::Job) -> Result<String, JobError> {
        let payload = parse_payload::<T::Payload>(&job.payload)?;
        let output = T::run(Job {
            id: job.id,
            job_type: job.job_type,
            attempt: job.attempt,
            payload,
        })?;
        serde_json::to_string(&output)
            .map_err(|e| JobError::permanent(format!("could not serialise the result: {e}")))
    }

    /// Payload JSON -> `P`, failing with `invalid_input` and serde's message.
    pub fn parse_payload<P: DeserializeOwned>(payload: &str) -> Result<P, JobError> {
        serde_json::from_str(payload)
            .map_err(|e| JobError::invalid_input(format!("invalid payload: {e}")))
    }

    fn into_raw(error: JobError) -> raw::JobError {
        match error {
            JobError::InvalidInput(m) => raw::JobError::InvalidInput(m),
            JobError::Retryable(m) => raw::JobError::Retryable(m),
            JobError::Permanent(m) => raw::JobError::Permanent(m),
        }
    }

    /// Formats a panic the way the host quotes it: the panic's own message first, then
    /// where it happened.
    pub fn panic_message(info: &std::panic::PanicHookInfo<'_>) -> String {
        let message = info.payload_as_str().unwrap_or("Box<dyn Any>");
        match info.location() {
            Some(at) => format!(
                "{message} (panicked at {}:{}:{})",
                at.file(),
                at.line(),
                at.column()
            ),
            None => message.to_string(),
        }
    }

    /// Logs a panic at error level before the instance traps: the host opens the job's
    /// error message with the last error log, so the panic's words reach the client.
    fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| crate::log::error(panic_message(info))));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct P {
        count: u8,
    }

    #[test]
    fn bad_payload_is_invalid_input_with_serde_message() {
        let err = __private::parse_payload::<P>(r#"{"count": "x"}"#).unwrap_err();
        match err {
            JobError::InvalidInput(m) => assert!(m.contains("invalid type"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn info_builder_fills_the_raw_record() {
        struct T;
        impl JobType for T {
            type Payload = Value;
            fn info() -> Info {
                Info::new("t", "1.2.3")
                    .description("d")
                    .schema(json!({"type": "object", "required": ["a"]}))
                    .timeout_secs(7)
            }
            fn run(_: Job<Value>) -> Result<impl Serialize, JobError> {
                Ok(json!(null))
            }
        }
        let raw = __private::describe::<T>();
        assert_eq!(raw.name, "t");
        assert_eq!(raw.version, "1.2.3");
        assert_eq!(raw.description, "d");
        assert_eq!(raw.default_timeout_secs, 7);
        let schema: Value = serde_json::from_str(&raw.payload_schema).unwrap();
        assert_eq!(schema["required"][0], "a");
    }

    #[test]
    fn panic_message_starts_with_the_message_then_says_where() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            sink.lock().unwrap().push(__private::panic_message(info));
        }));
        let count = 3;
        let _ = std::panic::catch_unwind(|| panic!("plain"));
        let _ = std::panic::catch_unwind(|| panic!("formatted {count}"));
        std::panic::set_hook(previous);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[0].starts_with("plain (panicked at "), "{seen:?}");
        assert!(seen[1].starts_with("formatted 3 (panicked at "), "{seen:?}");
        assert!(seen[1].contains("src/lib.rs:"), "{seen:?}");
    }

    #[test]
    fn job_error_constructors() {
        assert_eq!(JobError::retryable("x"), JobError::Retryable("x".into()));
        assert_eq!(JobError::permanent("y").message(), "y");
        assert_eq!(JobError::invalid_input("z").to_string(), "invalid input: z");
    }
}
