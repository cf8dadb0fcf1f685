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

use std::cell::RefCell;

use serde_json::Value;

use crate::bindings::kiln::plugin::llm as raw;
use crate::bindings::kiln::plugin::log::Level;
use crate::llm::{LlmError, Request};
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
    answer: impl FnMut(&Request) -> Result<String, LlmError> + 'static,
) -> TestRun {
    let host = FakeHost {
        answer: Box::new(answer),
        record: TestRun {
            result: Ok(Value::Null),
            progress: Vec::new(),
            partials: Vec::new(),
            logs: Vec::new(),
            requests: Vec::new(),
        },
        cancelled: false,
    };
    let previous = HOST.with(|slot| slot.borrow_mut().replace(host));
    assert!(
        previous.is_none(),
        "kiln_plugin::testing::run called inside another run on the same thread"
    );
    let result = crate::__private::run_native::<T>(&payload.to_string());
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

thread_local! {
    static HOST: RefCell<Option<FakeHost>> = const { RefCell::new(None) };
}

/// A test's function answering LLM calls.
type AnswerFn = dyn FnMut(&Request) -> Result<String, LlmError>;

/// The host of the test run in progress on this thread.
pub(crate) struct FakeHost {
    answer: Box<AnswerFn>,
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
            Ok(text) => Ok(raw::Response {
                output_tokens: tokens(&text),
                text,
                model: "test".to_string(),
                input_tokens,
            }),
            Err(error) => Err(error.into_raw()),
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

/// A rough token count (one per four bytes), as the offline provider counts.
fn tokens(text: &str) -> u32 {
    u32::try_from(text.len().div_ceil(4)).unwrap_or(u32::MAX)
}
