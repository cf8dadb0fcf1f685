//! The HTTP providers (`openai` and `anthropic` kinds): one engine that admits each request
//! through the provider's [`Admission`], sends it in the provider's wire format, streams or
//! reads the answer, retries what is worth retrying, and maps everything else onto
//! [`LlmError`].
//!
//! Retries and errors:
//! - 429: the provider's `Retry-After` (seconds or an HTTP date; `retry-after-ms` too)
//!   pauses every request to this provider until then, and the request is retried after
//!   the delay, at most [`MAX_RATE_LIMIT_RETRIES`] times and only while the delay ends
//!   before the request's deadline; then `RateLimited`. Without a `Retry-After` the delay
//!   is 1 s, doubling per retry, at most 30 s.
//! - 5xx and connection failures: retried [`MAX_SERVER_RETRIES`] times with a short
//!   backoff (about 250 ms, then 500 ms); then `Unavailable`.
//! - 408 and the deadline: `Timeout`. The deadline (`timeout_s`, default 120) covers the
//!   whole call: waiting for admission, every attempt and the whole stream. Running out of
//!   it while still waiting for this provider's own limits is `RateLimited`.
//! - Other 4xx: `Rejected`, never retried (401/403 name the key's variable, not the key).
//! - A body that is not the wire format's answer: `Unavailable`, not retried.
//! - Once a streamed answer has passed text to the token sink, nothing is retried (the
//!   sink would get the text twice); the failure is returned as is.
//!
//! Keys: sent only in the request's auth header; every error message has the key's text
//! replaced by `[redacted]` in case a provider echoes it; `Debug` prints no key.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::time::Instant;

use super::admission::{Admission, AdmissionConfig};
use super::shared::{SharedAdmit, SharedLimitsCell, SharedSlot};
use super::wire::{self, Failure, Parsed, SseParser, StreamState};
use super::{
    EmbedRequest, EmbedResponse, FinishReason, LlmClient, LlmError, LlmRequest, LlmResponse,
    TokenSink, anthropic, estimate_tokens, openai,
};

/// Per-request timeout when the config sets no `timeout_s`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Retries after a 429 before the request fails `RateLimited`.
pub const MAX_RATE_LIMIT_RETRIES: u32 = 4;

/// Retries after a 5xx or a connection failure before the request fails `Unavailable`.
pub const MAX_SERVER_RETRIES: u32 = 2;

/// Output tokens reserved in the tokens-per-minute bucket for a request with no
/// `max_tokens`.
pub const DEFAULT_OUTPUT_RESERVATION: u32 = 1024;

/// How often a request waiting for one of the cluster's slots looks again: from the
/// first, doubling, to the second.
const SHARED_BUSY_POLL_MIN: Duration = Duration::from_millis(10);
const SHARED_BUSY_POLL_MAX: Duration = Duration::from_millis(200);

/// Longest a request waiting for the cluster's per-minute window sleeps before looking
/// again (a pause or a window may end sooner when other nodes' calls settle).
const SHARED_RATE_POLL_MAX: Duration = Duration::from_secs(1);

/// Wait before asking again when the cluster's limits could not be read.
const SHARED_RETRY: Duration = Duration::from_millis(500);

/// Largest answer body read, so a broken server cannot exhaust memory.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Most of an error body read for its message.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// An API key. Its `Debug` and `Display` print `[redacted]`; only the request's auth
/// header sees the value.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key's value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Which wire format a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFormat {
    /// OpenAI Chat Completions (also Ollama, vLLM, llama.cpp server, LM Studio).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

impl WireFormat {
    /// The base URL used when the config sets none.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Self::OpenAi => openai::OPENAI_BASE_URL,
            Self::Anthropic => anthropic::ANTHROPIC_BASE_URL,
        }
    }

    /// `base` as this format's endpoints are joined to (Anthropic's gains `/v1`).
    fn versioned_base(self, base: &str) -> String {
        match self {
            Self::OpenAi => base.to_string(),
            Self::Anthropic => anthropic::versioned_base(base),
        }
    }

    /// The `base_url` form this format expects, for a 404's message.
    fn base_url_form(self) -> &'static str {
        match self {
            Self::OpenAi => openai::BASE_URL_FORM,
            Self::Anthropic => anthropic::BASE_URL_FORM,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::OpenAi => openai::PATH,
            Self::Anthropic => anthropic::PATH,
        }
    }

    fn body(self, request: &LlmRequest, stream: bool, completion_tokens: bool) -> Value {
        match self {
            Self::OpenAi => openai::body(request, stream, completion_tokens),
            Self::Anthropic => anthropic::body(request, stream),
        }
    }

    fn headers(
        self,
        builder: reqwest::RequestBuilder,
        key: Option<&ApiKey>,
    ) -> reqwest::RequestBuilder {
        match self {
            Self::OpenAi => openai::headers(builder, key),
            Self::Anthropic => anthropic::headers(builder, key),
        }
    }

    fn parse(self, value: &Value) -> Result<Parsed, String> {
        match self {
            Self::OpenAi => openai::parse(value),
            Self::Anthropic => anthropic::parse(value),
        }
    }

    fn on_event(self, event: &wire::SseEvent, state: &mut StreamState) -> Result<(), Failure> {
        match self {
            Self::OpenAi => openai::on_event(event, state),
            Self::Anthropic => anthropic::on_event(event, state),
        }
    }
}

/// Settings of one HTTP provider.
#[derive(Clone, Debug)]
pub struct HttpProviderConfig {
    /// The provider's name in the config, used in messages.
    pub name: String,
    /// Base URL without the endpoint, e.g. `https://api.openai.com/v1` or
    /// `http://localhost:11434/v1`; `None` is the wire format's default.
    pub base_url: Option<String>,
    /// The key, if the provider needs one.
    pub api_key: Option<ApiKey>,
    /// The environment variable the key came from, named in credential errors.
    pub api_key_env: Option<String>,
    /// Deadline of one whole call. Default 120 s.
    pub timeout: Duration,
    /// Concurrency and rate limits.
    pub admission: AdmissionConfig,
    /// Models sent `max_completion_tokens` instead of `max_tokens` (OpenAI kind): exact
    /// names, or prefixes ending in `*`. Default: OpenAI's reasoning models
    /// ([`openai::DEFAULT_MAX_COMPLETION_TOKENS_MODELS`]).
    pub max_completion_tokens_models: Vec<String>,
}

impl HttpProviderConfig {
    /// Settings with the defaults: default base URL, no key, 120 s, default limits.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            base_url: None,
            api_key: None,
            api_key_env: None,
            timeout: DEFAULT_TIMEOUT,
            admission: AdmissionConfig::default(),
            max_completion_tokens_models: openai::DEFAULT_MAX_COMPLETION_TOKENS_MODELS
                .iter()
                .map(|m| m.to_string())
                .collect(),
        }
    }
}

/// An `openai` or `anthropic` provider.
pub struct HttpProvider {
    format: WireFormat,
    name: String,
    url: String,
    key: Option<ApiKey>,
    key_env: Option<String>,
    timeout: Duration,
    limits: AdmissionConfig,
    admission: Admission,
    http: reqwest::Client,
    /// `{base}/embeddings` (OpenAI kind only).
    embeddings_url: Option<String>,
    max_completion_tokens_models: Vec<String>,
    observer: super::Observer,
    /// The cluster's limits of this provider, when the node is part of one.
    shared: SharedLimitsCell,
}

impl fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProvider")
            .field("format", &self.format)
            .field("name", &self.name)
            .field("url", &self.url)
            .field("key", &self.key)
            .field("key_env", &self.key_env)
            .field("timeout", &self.timeout)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Where a call was when its deadline passed.
struct Phase {
    admitting: AtomicBool,
}

/// What a call asks of the provider.
#[derive(Clone, Copy)]
enum Ask<'a> {
    Complete(&'a LlmRequest, Option<TokenSink<'a>>),
    Embed(&'a EmbedRequest),
}

impl Ask<'_> {
    /// Tokens reserved in the tokens-per-minute bucket before sending: the estimated input
    /// plus the output allowance (none for embeddings).
    fn reservation(&self) -> u32 {
        match self {
            Ask::Complete(request, _) => request
                .estimated_input_tokens()
                .saturating_add(request.max_tokens.unwrap_or(DEFAULT_OUTPUT_RESERVATION)),
            Ask::Embed(request) => request.estimated_input_tokens(),
        }
    }
}

/// What the provider answered.
enum Answer {
    Completion(LlmResponse),
    Embeddings(EmbedResponse),
}

impl Answer {
    /// The tokens it was paid for, settled against the reservation.
    fn tokens(&self) -> u64 {
        match self {
            Answer::Completion(r) => u64::from(r.input_tokens) + u64::from(r.output_tokens),
            Answer::Embeddings(r) => u64::from(r.input_tokens),
        }
    }
}

impl HttpProvider {
    /// Reports its calls and HTTP answers to `observer` (the server's metrics).
    pub fn with_observer(mut self, observer: super::Observer) -> Self {
        self.observer = observer;
        self
    }

    /// Also asks the cluster's limits in `shared` (once set) before each request.
    pub fn with_shared_limits(mut self, shared: SharedLimitsCell) -> Self {
        self.shared = shared;
        self
    }

    /// Waits until the cluster admits a request reserving `reservation` tokens (none to
    /// wait for on a single node). Gives up when the wait would pass `deadline`.
    async fn admit_shared(
        &self,
        reservation: u32,
        deadline: Instant,
    ) -> Result<Option<SharedSlot>, LlmError> {
        let Some(limits) = self.shared.get() else {
            return Ok(None);
        };
        let mut busy_poll = SHARED_BUSY_POLL_MIN;
        loop {
            let wait = match limits.admit(&self.name, &self.limits, reservation).await {
                Ok(SharedAdmit::Admitted(call)) => {
                    return Ok(Some(SharedSlot::new(limits.clone(), call, reservation)));
                }
                Ok(SharedAdmit::WaitFor(wait)) => {
                    if Instant::now() + wait > deadline {
                        return Err(LlmError::RateLimited(format!(
                            "provider '{}' is at the cluster's limits for the next {:.1}s, past \
                             this request's {}s timeout",
                            self.name,
                            wait.as_secs_f64(),
                            self.timeout.as_secs()
                        )));
                    }
                    wait.min(SHARED_RATE_POLL_MAX)
                }
                Ok(SharedAdmit::Busy) => {
                    let wait = busy_poll;
                    busy_poll = (busy_poll * 2).min(SHARED_BUSY_POLL_MAX);
                    wait
                }
                Err(error) => {
                    if Instant::now() + SHARED_RETRY > deadline {
                        return Err(LlmError::Unavailable(format!(
                            "the cluster's limits of provider '{}' could not be read: {error}",
                            self.name
                        )));
                    }
                    SHARED_RETRY
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn observe_http(&self, status: Option<u16>) {
        if let Some(observer) = &self.observer {
            observer.http_answer(&self.name, status);
        }
    }

    /// A provider speaking `format` with `config`. Fails on a base URL that is not an
    /// http(s) URL or when the HTTP client cannot be built.
    pub fn new(format: WireFormat, config: HttpProviderConfig) -> anyhow::Result<Self> {
        let base = config
            .base_url
            .as_deref()
            .unwrap_or(format.default_base_url())
            .trim_end_matches('/');
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| anyhow::anyhow!("base_url {base:?} is not a URL: {e}"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "base_url {base:?} must start with http:// or https://"
        );
        anyhow::ensure!(!config.timeout.is_zero(), "timeout_s must be at least 1");
        let http = reqwest::Client::builder()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))?;
        Ok(Self {
            format,
            url: format!("{}/{}", format.versioned_base(base), format.path()),
            embeddings_url: (format == WireFormat::OpenAi).then(|| {
                format!(
                    "{}/{}",
                    format.versioned_base(base),
                    openai::EMBEDDINGS_PATH
                )
            }),
            max_completion_tokens_models: config.max_completion_tokens_models,
            observer: None,
            shared: SharedLimitsCell::default(),
            name: config.name,
            key: config.api_key.filter(|k| !k.0.is_empty()),
            key_env: config.api_key_env,
            timeout: config.timeout,
            admission: Admission::new(&config.admission),
            limits: config.admission,
            http,
        })
    }

    /// An `openai`-kind provider.
    pub fn openai(config: HttpProviderConfig) -> anyhow::Result<Self> {
        Self::new(WireFormat::OpenAi, config)
    }

    /// An `anthropic`-kind provider.
    pub fn anthropic(config: HttpProviderConfig) -> anyhow::Result<Self> {
        Self::new(WireFormat::Anthropic, config)
    }

    /// This provider's admission control (shared by all its requests).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    async fn call(
        &self,
        caller: &str,
        ask: Ask<'_>,
        deadline: Instant,
        phase: &Phase,
    ) -> Result<Answer, LlmError> {
        let reservation = ask.reservation();
        let mut rate_limited = 0u32;
        let mut server_errors = 0u32;
        let mut streamed = false;
        loop {
            phase.admitting.store(true, Ordering::Relaxed);
            let wait = self.admission.rate_wait(reservation);
            if Instant::now() + wait > deadline {
                return Err(LlmError::RateLimited(format!(
                    "provider '{}' is at its configured limits for the next {:.1}s, past this \
                     request's {}s timeout",
                    self.name,
                    wait.as_secs_f64(),
                    self.timeout.as_secs()
                )));
            }
            let mut permit = self.admission.admit(caller, reservation).await;
            let mut slot = self.admit_shared(reservation, deadline).await?;
            phase.admitting.store(false, Ordering::Relaxed);
            let attempt = match ask {
                Ask::Complete(request, tokens) => self
                    .attempt(request, tokens, &mut streamed)
                    .await
                    .map(Answer::Completion),
                Ask::Embed(request) => self.attempt_embed(request).await.map(Answer::Embeddings),
            };
            let failure = match attempt {
                Ok(answer) => {
                    permit.settle(answer.tokens());
                    if let Some(slot) = &mut slot {
                        slot.settle(answer.tokens());
                    }
                    return Ok(answer);
                }
                // Clean before anything logs it.
                Err(Failure::Final(error)) => Failure::Final(self.scrub(error)),
                Err(Failure::Transient(message)) => Failure::Transient(self.scrub_text(message)),
                Err(Failure::RateLimited {
                    retry_after,
                    message,
                }) => Failure::RateLimited {
                    retry_after,
                    message: self.scrub_text(message),
                },
            };
            match failure {
                Failure::Final(error) => return Err(error),
                Failure::RateLimited {
                    retry_after,
                    message,
                } => {
                    // The provider refused it: it used no tokens.
                    permit.settle(0);
                    rate_limited += 1;
                    let delay = retry_after.unwrap_or_else(|| {
                        Duration::from_secs(1 << (rate_limited - 1).min(5))
                            .min(Duration::from_secs(30))
                    });
                    let until = Instant::now() + delay;
                    self.admission.pause_until(until);
                    if let Some(mut slot) = slot.take() {
                        slot.settle(0);
                        // Paused for every node before this call's slot frees, so no
                        // node sends in between.
                        if let Some(limits) = self.shared.get()
                            && let Err(error) = limits.pause(&self.name, delay).await
                        {
                            tracing::warn!(provider = %self.name, %error, "could not pause the provider for the cluster");
                        }
                    }
                    drop(permit);
                    if streamed || rate_limited > MAX_RATE_LIMIT_RETRIES || until > deadline {
                        let tries = rate_limited;
                        return Err(LlmError::RateLimited(format!(
                            "provider '{}' rate-limited the request {tries} time(s) (last asked \
                             to wait {:.1}s): {message}",
                            self.name,
                            delay.as_secs_f64()
                        )));
                    }
                    tracing::debug!(provider = %self.name, delay_ms = delay.as_millis() as u64, "rate limited; retrying");
                }
                Failure::Transient(message) => {
                    drop(slot);
                    drop(permit);
                    server_errors += 1;
                    if streamed || server_errors > MAX_SERVER_RETRIES {
                        return Err(LlmError::Unavailable(message));
                    }
                    let base = 250u64 << (server_errors - 1);
                    let backoff = Duration::from_millis(base + fastrand::u64(0..=base / 4));
                    tracing::debug!(provider = %self.name, %message, "server error; retrying");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// Sends the request once and reads the whole answer.
    async fn attempt(
        &self,
        request: &LlmRequest,
        tokens: Option<TokenSink<'_>>,
        streamed: &mut bool,
    ) -> Result<LlmResponse, Failure> {
        let stream = tokens.is_some();
        let completion_tokens = request
            .model
            .as_deref()
            .is_some_and(|model| openai::model_matches(model, &self.max_completion_tokens_models));
        let body = self.format.body(request, stream, completion_tokens);
        let builder = self.http.post(&self.url).json(&body);
        let builder = self.format.headers(builder, self.key.as_ref());
        let sent = builder.send().await;
        let status = sent
            .as_ref()
            .ok()
            .map(|response| response.status().as_u16());
        self.observe_http(status);
        let response = sent.map_err(|e| self.send_failure(e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.status_failure(response).await);
        }
        let is_sse = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let model = request.model.clone().unwrap_or_default();
        match tokens {
            Some(sink) if is_sse => {
                self.read_stream(response, sink, streamed, request, model)
                    .await
            }
            _ => {
                let bytes = self.read_body(response, MAX_BODY_BYTES).await?;
                let value: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| self.malformed(&format!("the body is not JSON ({e})")))?;
                let parsed = self
                    .format
                    .parse(&value)
                    .map_err(|why| self.malformed(&why))?;
                let response = self.finish(request, parsed, model);
                // A server that ignored `stream: true` answered in one piece: pass it on
                // as one delta so the sink still sees the whole text.
                if let Some(sink) = tokens
                    && !response.text.is_empty()
                {
                    *streamed = true;
                    sink(&response.text);
                }
                Ok(response)
            }
        }
    }

    /// Sends an embeddings request once and reads its answer.
    async fn attempt_embed(&self, request: &EmbedRequest) -> Result<EmbedResponse, Failure> {
        let Some(url) = &self.embeddings_url else {
            return Err(Failure::Final(LlmError::Rejected(format!(
                "provider '{}' speaks the Anthropic API, which has no embeddings endpoint: \
                 route the embedding alias to an openai-kind provider",
                self.name
            ))));
        };
        let builder = self.http.post(url).json(&openai::embeddings_body(request));
        let sent = self.format.headers(builder, self.key.as_ref()).send().await;
        let status = sent.as_ref().ok().map(|r| r.status().as_u16());
        self.observe_http(status);
        let response = sent.map_err(|e| self.send_failure(e))?;
        if !response.status().is_success() {
            return Err(self.status_failure(response).await);
        }
        let bytes = self.read_body(response, MAX_BODY_BYTES).await?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.malformed(&format!("the body is not JSON ({e})")))?;
        let mut answer = openai::parse_embeddings(&value, request.texts.len())
            .map_err(|why| self.malformed(&why))?;
        if answer.model.is_empty() {
            answer.model = request.model.clone().unwrap_or_default();
        }
        if answer.input_tokens == 0 {
            answer.input_tokens = request.estimated_input_tokens();
        }
        Ok(answer)
    }

    async fn read_stream(
        &self,
        response: reqwest::Response,
        sink: TokenSink<'_>,
        streamed: &mut bool,
        request: &LlmRequest,
        model: String,
    ) -> Result<LlmResponse, Failure> {
        let mut parser = SseParser::default();
        let mut state = StreamState::default();
        let mut body = response.bytes_stream();
        let mut ended = false;
        while !state.done {
            let events = match body.next().await {
                Some(Ok(chunk)) => parser.push(&chunk),
                Some(Err(e)) => {
                    return Err(Failure::Transient(format!(
                        "provider '{}' broke off the stream: {}",
                        self.name,
                        describe(&e)
                    )));
                }
                None => {
                    ended = true;
                    parser.finish().into_iter().collect()
                }
            };
            for event in events {
                self.format.on_event(&event, &mut state)?;
                for delta in state.pending.drain(..) {
                    *streamed = true;
                    sink(&delta);
                }
                if state.done {
                    break;
                }
            }
            if ended {
                break;
            }
        }
        if !state.done && !state.finished {
            return Err(Failure::Transient(format!(
                "provider '{}' ended the stream before the answer was complete",
                self.name
            )));
        }
        Ok(self.finish(request, state.into_parsed(), model))
    }

    fn finish(&self, request: &LlmRequest, parsed: Parsed, model: String) -> LlmResponse {
        let input_tokens = parsed.input_tokens.unwrap_or_else(|| {
            request
                .messages
                .iter()
                .map(|m| estimate_tokens(&m.content))
                .fold(0, u32::saturating_add)
        });
        let output_tokens = parsed
            .output_tokens
            .unwrap_or_else(|| estimate_tokens(&parsed.text));
        let finish_reason = parsed
            .finish_reason
            .unwrap_or(if parsed.tool_calls.is_empty() {
                FinishReason::Stop
            } else {
                FinishReason::ToolCalls
            });
        LlmResponse {
            model: parsed.model.unwrap_or(model),
            input_tokens,
            output_tokens,
            text: parsed.text,
            tool_calls: parsed.tool_calls,
            finish_reason,
            cached_input_tokens: parsed.cached_input_tokens.unwrap_or(0),
            reasoning_tokens: parsed.reasoning_tokens.unwrap_or(0),
        }
    }

    async fn read_body(&self, response: reqwest::Response, max: usize) -> Result<Vec<u8>, Failure> {
        let mut body = response.bytes_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                Failure::Transient(format!(
                    "provider '{}' broke off its answer: {}",
                    self.name,
                    describe(&e)
                ))
            })?;
            let room = max.saturating_sub(bytes.len());
            bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if bytes.len() >= max {
                break;
            }
        }
        Ok(bytes)
    }

    fn malformed(&self, why: &str) -> Failure {
        Failure::Final(LlmError::Unavailable(format!(
            "provider '{}' sent an answer that could not be decoded: {why}",
            self.name
        )))
    }

    fn send_failure(&self, error: reqwest::Error) -> Failure {
        let detail = describe(&error);
        if error.is_timeout() {
            Failure::Final(LlmError::Timeout(format!(
                "provider '{}' did not answer in time: {detail}",
                self.name
            )))
        } else if error.is_connect() {
            Failure::Transient(format!(
                "could not connect to provider '{}': {detail}",
                self.name
            ))
        } else {
            Failure::Transient(format!(
                "the request to provider '{}' failed: {detail}",
                self.name
            ))
        }
    }

    async fn status_failure(&self, response: reqwest::Response) -> Failure {
        let status = response.status();
        let retry_after = wire::retry_after(response.headers());
        let url = shown_url(response.url());
        let body = self
            .read_body(response, MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        let detail = self.scrub_text(wire::error_detail(&body));
        let message = format!("provider '{}' answered HTTP {status}: {detail}", self.name);
        match status.as_u16() {
            // A spent quota or credit balance is a 429 too, but waiting does not end it:
            // fail at once, and say what it is.
            429 if wire::is_spend_limit(&body) => Failure::Final(LlmError::RateLimited(format!(
                "{message} (the account's quota or spend limit is used up: retrying will not \
                 help until it is raised)"
            ))),
            429 => Failure::RateLimited {
                retry_after,
                message,
            },
            // Anthropic's `overloaded_error`: the service is busy, not this account.
            529 => Failure::Transient(format!("{message} (provider overloaded)")),
            408 => Failure::Final(LlmError::Timeout(message)),
            404 => Failure::Final(LlmError::Rejected(format!(
                "{message} (for {url}: check the model name, and that base_url is {})",
                self.format.base_url_form()
            ))),
            401 | 403 => Failure::Final(LlmError::Rejected(format!(
                "provider '{}' refused the credentials (HTTP {status}); check the key in {}",
                self.name,
                self.key_env.as_deref().map_or(
                    "its api_key_env variable (none is configured)".to_string(),
                    |v| { format!("the environment variable {v}") }
                )
            ))),
            500..=599 => Failure::Transient(message),
            _ => Failure::Final(LlmError::Rejected(message)),
        }
    }

    /// `text` with the key's text replaced, in case a provider echoed it.
    /// `text` with the key replaced, including the start of a key that a cut-short
    /// message (ending in `…`) ends with.
    fn scrub_text(&self, text: String) -> String {
        let Some(key) = &self.key else {
            return text;
        };
        let key = key.expose();
        let text = text.replace(key, "[redacted]");
        let Some(body) = text.strip_suffix('…') else {
            return text;
        };
        let cut_key = (4..key.len())
            .rev()
            .find(|&n| key.is_char_boundary(n) && body.ends_with(&key[..n]));
        match cut_key {
            Some(n) => format!("{}[redacted]…", &body[..body.len() - n]),
            None => text,
        }
    }

    /// `error` with the key's text replaced.
    fn scrub(&self, error: LlmError) -> LlmError {
        let clean = |m: String| self.scrub_text(m);
        match error {
            LlmError::RateLimited(m) => LlmError::RateLimited(clean(m)),
            LlmError::Timeout(m) => LlmError::Timeout(clean(m)),
            LlmError::Unavailable(m) => LlmError::Unavailable(clean(m)),
            LlmError::Rejected(m) => LlmError::Rejected(clean(m)),
        }
    }
}

/// `url` without what could be a secret (user info, query, fragment), for messages.
fn shown_url(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// A reqwest error and its causes, without the URL.
fn describe(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        let part = cause.to_string();
        // reqwest's own text may carry the URL; its causes are what matter.
        let part = match part.find(" for url (") {
            Some(at) => part[..at].to_string(),
            None => part,
        };
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
        source = cause.source();
    }
    wire::truncate(&text, 400)
}

impl HttpProvider {
    /// `ask` within the provider's deadline: a deadline passed while still waiting for this
    /// provider's own limits is `RateLimited`, one passed while answering `Timeout`.
    async fn within_deadline(&self, caller: &str, ask: Ask<'_>) -> Result<Answer, LlmError> {
        let deadline = Instant::now() + self.timeout;
        let phase = Phase {
            admitting: AtomicBool::new(true),
        };
        let outcome =
            tokio::time::timeout_at(deadline, self.call(caller, ask, deadline, &phase)).await;
        let result = match outcome {
            Ok(result) => result,
            Err(_) if phase.admitting.load(Ordering::Relaxed) => {
                Err(LlmError::RateLimited(format!(
                    "provider '{}' had no room for the request within its {}s timeout \
                 (its configured limits are in use)",
                    self.name,
                    self.timeout.as_secs()
                )))
            }
            Err(_) => Err(LlmError::Timeout(format!(
                "provider '{}' did not finish answering within {}s",
                self.name,
                self.timeout.as_secs()
            ))),
        };
        result.map_err(|e| self.scrub(e))
    }
}

impl LlmClient for HttpProvider {
    fn complete<'a>(
        &'a self,
        caller: &'a str,
        request: &'a LlmRequest,
        tokens: Option<TokenSink<'a>>,
    ) -> BoxFuture<'a, Result<LlmResponse, LlmError>> {
        async move {
            if request.messages.is_empty() {
                return Err(LlmError::Rejected("the request has no messages".into()));
            }
            let result = match self
                .within_deadline(caller, Ask::Complete(request, tokens))
                .await
            {
                Ok(Answer::Completion(response)) => Ok(response),
                Ok(Answer::Embeddings(_)) => unreachable!("a completion is answered as one"),
                Err(error) => Err(error),
            };
            if let Some(observer) = &self.observer {
                observer.call(&self.name, &result);
            }
            result
        }
        .boxed()
    }

    fn embed<'a>(
        &'a self,
        caller: &'a str,
        request: &'a EmbedRequest,
    ) -> BoxFuture<'a, Result<EmbedResponse, LlmError>> {
        async move {
            if request.texts.is_empty() {
                return Err(LlmError::Rejected("the request has no texts".into()));
            }
            match self.within_deadline(caller, Ask::Embed(request)).await? {
                Answer::Embeddings(response) => Ok(response),
                Answer::Completion(_) => unreachable!("embeddings are answered as such"),
            }
        }
        .boxed()
    }

    /// `GET {base_url}/models` with the provider's credentials, within [`PROBE_TIMEOUT`]
    /// (or the provider's own timeout when shorter): any 2xx is reachable.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        async move {
            let base = self
                .url
                .strip_suffix(self.format.path())
                .unwrap_or(&self.url)
                .trim_end_matches('/');
            let request = self
                .format
                .headers(self.http.get(format!("{base}/models")), self.key.as_ref())
                .timeout(self.timeout.min(PROBE_TIMEOUT));
            let result = match request.send().await {
                Err(error) if error.is_timeout() => Err(format!(
                    "provider '{}' did not answer within {}s",
                    self.name,
                    self.timeout.min(PROBE_TIMEOUT).as_secs()
                )),
                Err(error) => Err(format!(
                    "could not reach provider '{}': {}",
                    self.name,
                    describe(&error)
                )),
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => match self.status_failure(response).await {
                    Failure::Final(error) => Err(error.to_string()),
                    Failure::Transient(message) | Failure::RateLimited { message, .. } => {
                        Err(message)
                    }
                },
            };
            result.map_err(|message| self.scrub_text(message))
        }
        .boxed()
    }
}

/// Longest wait of a [`LlmClient::probe`] of an HTTP provider.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        let mut config = HttpProviderConfig::new("p");
        config.api_key = Some(ApiKey::new("sk-very-secret"));
        let provider = HttpProvider::openai(config).unwrap();
        let debug = format!("{provider:?}");
        assert!(!debug.contains("sk-very-secret"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn bad_base_urls_are_refused() {
        let mut config = HttpProviderConfig::new("p");
        config.base_url = Some("ftp://x".into());
        assert!(HttpProvider::anthropic(config.clone()).is_err());
        config.base_url = Some("not a url".into());
        assert!(HttpProvider::anthropic(config).is_err());
    }
}
