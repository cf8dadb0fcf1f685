//! Unit tests for job types, run natively with `cargo test`: no component, no server.
//!
//! [`run`] calls your [`JobType::run`] with a payload, the way the host would, answering
//! each LLM call with your function and recording everything the job reports:
//!
//! ```
//! # use kiln_plugin::prelude::*;
//! # struct Echo;
//! # impl JobType for Echo {
//! #     type Payload = Value;
//! #     fn info() -> Info { Info::new("echo", "0.1.0") }
//! #     fn run(job: Job<Value>) -> Result<impl Serialize, JobError> {
//! #         let text = llm::complete(Request::new().user("Say hi").stream("hi"))?.text;
//! #         progress::partial("hi", &text);
//! #         Ok(json!({ "said": text }))
//! #     }
//! # }
//! use kiln_plugin::testing;
//!
//! let run = testing::run::<Echo>(json!({}), |_request| "Hello!".to_string());
//! assert_eq!(run.result.unwrap(), json!({ "said": "Hello!" }));
//! assert_eq!(run.partials, [("hi".to_string(), json!("Hello!"))]);
//! assert_eq!(run.requests[0].last_user_message(), Some("Say hi"));
//! ```
//!
//! [`run_with`] answers with a `Result`, to test how the job handles a failed call:
//! `testing::run_with::<Echo>(payload, |_| Err(LlmError::RateLimited("busy".into())))`.
//!
//! [`Harness`] does the rest: input files, answers with tool calls
//! ([`Response::calls`]), and what the job wrote as artifacts and embedded:
//!
//! ```ignore
//! let run = testing::Harness::new(json!({ "file": "f1" }))
//!     .file("f1", "text/plain", b"some text")
//!     .answer(|request| Ok(Response::text("a summary")))
//!     .run::<Summarise>();
//! assert_eq!(run.artifacts[0].0, "summary.md");
//! ```

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::Value;

use crate::bindings::kiln::plugin::files as raw_files;
use crate::bindings::kiln::plugin::llm as raw;
use crate::bindings::kiln::plugin::log::Level;
use crate::llm::{LlmError, Request, Response};
use crate::{JobError, JobType};

/// Everything one test run of a job type did.
#[derive(Debug)]
pub struct TestRun {
    /// What `run` returned, as the JSON the client would get, or its error.
    pub result: Result<Value, JobError>,
    /// Every progress report, in order, as the host would keep it (never going down,
    /// capped at 100).
    pub progress: Vec<(u8, String)>,
    /// Every partial, in order: name and data.
    pub partials: Vec<(String, Value)>,
    /// Every log line: level (`"info"`, ...) and message.
    pub logs: Vec<(&'static str, String)>,
    /// Every LLM request, in order.
    pub requests: Vec<Request>,
    /// Every artifact written: name, content type, bytes (appends joined).
    pub artifacts: Vec<(String, String, Vec<u8>)>,
    /// The texts of every [`crate::llm::embed`] call, in order.
    pub embedded: Vec<Vec<String>>,
}

/// Runs job type `T` on `payload` (attempt 1), answering every LLM call with `answer`.
///
/// The payload is not checked against the schema (the host does that before a job
/// exists); a payload that does not deserialise fails with `InvalidInput`, as on the host.
pub fn run<T: JobType>(
    payload: Value,
    mut answer: impl FnMut(&Request) -> String + 'static,
) -> TestRun {
    run_with::<T>(payload, move |request| Ok(answer(request)))
}

/// [`run`] with an answer function that may fail a call, to test how the job handles
/// LLM errors.
pub fn run_with<T: JobType>(
    payload: Value,
    mut answer: impl FnMut(&Request) -> Result<String, LlmError> + 'static,
) -> TestRun {
    Harness::new(payload)
        .answer(move |request| answer(request).map(Response::text))
        .run::<T>()
}

/// A test run with everything configurable: files, answers with tool calls.
pub struct Harness {
    payload: Value,
    files: HashMap<String, (String, Vec<u8>)>,
    answer: Box<AnswerFn>,
}

impl Harness {
    /// A run of `payload`, answering every LLM call with empty text until
    /// [`Harness::answer`] says otherwise.
    pub fn new(payload: Value) -> Self {
        Self {
            payload,
            files: HashMap::new(),
            answer: Box::new(|_| Ok(Response::text(""))),
        }
    }

    /// Makes file `id` readable through [`crate::files`].
    pub fn file(mut self, id: &str, content_type: &str, bytes: &[u8]) -> Self {
        self.files
            .insert(id.to_string(), (content_type.to_string(), bytes.to_vec()));
        self
    }

    /// Answers every LLM call with `answer`.
    pub fn answer(
        mut self,
        answer: impl FnMut(&Request) -> Result<Response, LlmError> + 'static,
    ) -> Self {
        self.answer = Box::new(answer);
        self
    }

    /// Runs job type `T`.
    pub fn run<T: JobType>(self) -> TestRun {
        let host = FakeHost {
            answer: self.answer,
            files: self.files,
            record: TestRun {
                result: Ok(Value::Null),
                progress: Vec::new(),
                partials: Vec::new(),
                logs: Vec::new(),
                requests: Vec::new(),
                artifacts: Vec::new(),
                embedded: Vec::new(),
            },
            cancelled: false,
        };
        let previous = HOST.with(|slot| slot.borrow_mut().replace(host));
        assert!(
            previous.is_none(),
            "kiln_plugin::testing::run called inside another run on the same thread"
        );
        let result = crate::__private::run_native::<T>(&self.payload.to_string());
        let host = HOST
            .with(|slot| slot.borrow_mut().take())
            .expect("the test host is still installed");
        let mut record = host.record;
        record.result = result.and_then(|text| {
            serde_json::from_str(&text)
                .map_err(|e| JobError::permanent(format!("the result is not JSON: {e}")))
        });
        record
    }
}

thread_local! {
    static HOST: RefCell<Option<FakeHost>> = const { RefCell::new(None) };
}

/// A test's function answering LLM calls.
type AnswerFn = dyn FnMut(&Request) -> Result<Response, LlmError>;

/// The host of the test run in progress on this thread.
pub(crate) struct FakeHost {
    answer: Box<AnswerFn>,
    files: HashMap<String, (String, Vec<u8>)>,
    record: TestRun,
    cancelled: bool,
}

/// Calls `f` with this thread's test host; outside [`run`] there is none, which is a bug
/// in the test (or SDK code running natively outside a test).
pub(crate) fn with_host<R>(f: impl FnOnce(&mut FakeHost) -> R) -> R {
    HOST.with(|slot| {
        let mut slot = slot.borrow_mut();
        let host = slot.as_mut().expect(
            "a Kiln host call outside a component: natively, job code runs only inside \
             kiln_plugin::testing::run",
        );
        f(host)
    })
}

impl FakeHost {
    pub(crate) fn report(&mut self, percent: u8, message: &str) {
        let last = self.record.progress.last().map_or(0, |(p, _)| *p);
        let percent = percent.min(100).max(last);
        self.record.progress.push((percent, message.to_string()));
    }

    pub(crate) fn partial(&mut self, name: &str, data: &str) {
        let data = serde_json::from_str(data).unwrap_or_else(|e| {
            panic!("partial {name:?} is not JSON ({e}); the host would fail the job")
        });
        self.record.partials.push((name.to_string(), data));
    }

    pub(crate) fn cancelled(&mut self) -> bool {
        self.cancelled
    }

    pub(crate) fn complete(
        &mut self,
        request: &raw::Request,
    ) -> Result<raw::Response, raw::LlmError> {
        let request = Request::from_raw(request.clone());
        let answer = (self.answer)(&request);
        let input_tokens = request.messages().map(|(_, text)| tokens(text)).sum();
        self.record.requests.push(request);
        match answer {
            Ok(mut response) => {
                if response.input_tokens == 0 {
                    response.input_tokens = input_tokens;
                }
                Ok(response.into_raw())
            }
            Err(error) => Err(error.into_raw()),
        }
    }

    pub(crate) fn embed(
        &mut self,
        _model: Option<&str>,
        texts: &[String],
    ) -> Result<raw::Embeddings, raw::LlmError> {
        self.record.embedded.push(texts.to_vec());
        Ok(raw::Embeddings {
            vectors: texts.iter().map(|t| unit_vector(t)).collect(),
            model: "test".to_string(),
            input_tokens: texts.iter().map(|t| tokens(t)).sum(),
        })
    }

    pub(crate) fn file_stat(
        &mut self,
        id: &str,
    ) -> Result<raw_files::FileInfo, raw_files::FileError> {
        let (content_type, bytes) = self.files.get(id).ok_or_else(|| {
            raw_files::FileError::NotFound(format!("no file '{id}' in this test"))
        })?;
        Ok(raw_files::FileInfo {
            id: id.to_string(),
            size: bytes.len() as u64,
            content_type: content_type.clone(),
            sha256: String::new(),
        })
    }

    pub(crate) fn file_read(
        &mut self,
        id: &str,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, raw_files::FileError> {
        let (_, bytes) = self.files.get(id).ok_or_else(|| {
            raw_files::FileError::NotFound(format!("no file '{id}' in this test"))
        })?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start
            .saturating_add(len.min(crate::files::CHUNK) as usize)
            .min(bytes.len());
        Ok(bytes[start..end].to_vec())
    }

    pub(crate) fn artifact_write(
        &mut self,
        name: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<(), String> {
        let valid = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(format!("the artifact name {name:?} is not allowed"));
        }
        match self.record.artifacts.iter_mut().find(|(n, _, _)| n == name) {
            Some((_, earlier, _)) if earlier != content_type => Err(format!(
                "the artifact '{name}' was created as {earlier}, not {content_type}"
            )),
            Some((_, _, data)) => {
                data.extend_from_slice(bytes);
                Ok(())
            }
            None => {
                self.record.artifacts.push((
                    name.to_string(),
                    content_type.to_string(),
                    bytes.to_vec(),
                ));
                Ok(())
            }
        }
    }

    pub(crate) fn log(&mut self, level: Level, message: &str) {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.record.logs.push((level, message.to_string()));
    }
}

use crate::llm::tokens;

/// A deterministic unit vector of 8 numbers for `text`: equal texts, equal vectors.
fn unit_vector(text: &str) -> Vec<f32> {
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    let raw: Vec<f32> = (0..8)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    raw.into_iter().map(|x| x / norm).collect()
}
