//! The HTTP client the server-facing commands (`submit`, `watch`, `jobs`, `doctor`) share:
//! the `--server` flag, requests, and API errors printed as their kind and message.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// Default address of the Kiln server.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Timeout of one ordinary (non-streaming) request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the server is.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// Base URL of the Kiln server.
    #[arg(long, env = "KILN_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// API key, sent as `Authorization: Bearer` (not needed in open mode). Prefer the
    /// variable to the flag, which other users can see in the process list.
    #[arg(long, env = "KILN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// An error answer of the API (`{"error": {kind, message}}`), or a status without one.
#[derive(Debug)]
pub struct ApiFailure {
    /// HTTP status.
    pub status: u16,
    /// `error.kind`.
    pub kind: String,
    /// `error.message`.
    pub message: String,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {}): {}", self.kind, self.status, self.message)?;
        if self.status == 401 {
            write!(f, "\n(the CLI sends the key in KILN_API_KEY, or --api-key)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

/// A client of one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the server at `args.server`.
    pub fn new(args: &ServerArgs) -> anyhow::Result<Self> {
        let base = args.server.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| anyhow::anyhow!("--server {base:?} is not a URL: {e}"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "--server {base:?} must start with http:// or https://"
        );
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = &args.api_key {
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                    .map_err(|_| anyhow::anyhow!("the API key must be printable ASCII"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("kiln-cli/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self { base, http })
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The underlying HTTP client (for streams).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET path`, JSON answer.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(self.url(path))).await
    }

    /// `POST path` with a JSON body (or none), JSON answer.
    pub async fn post(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut request = self.http.post(self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
    }

    /// Sends `request`; a 2xx answer's JSON, or the API's error as an [`ApiFailure`].
    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("the server sent a body that is not JSON: {e}"));
        }
        Err(failure(status.as_u16(), &bytes).into())
    }

    /// The error for a request that got no answer.
    pub fn unreachable(&self, error: &reqwest::Error) -> anyhow::Error {
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        anyhow::anyhow!(
            "could not reach the Kiln server at {} ({detail}); is `kiln serve` running? \
             Set --server or KILN_SERVER to its address",
            self.base
        )
    }
}

/// The [`ApiFailure`] of an error answer with `status` and `body`.
pub fn failure(status: u16, body: &[u8]) -> ApiFailure {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().map(|v| &v["error"]);
    let text = |field: &str| {
        error
            .and_then(|e| e[field].as_str())
            .map(ToString::to_string)
    };
    ApiFailure {
        status,
        kind: text("kind").unwrap_or_else(|| format!("http_{status}")),
        message: text("message")
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string()),
    }
}

/// Milliseconds since the epoch of an RFC 3339 time from the API.
pub fn parse_time_ms(text: &str) -> Option<u64> {
    let time = humantime::parse_rfc3339(text)
        .or_else(|_| humantime::parse_rfc3339_weak(text))
        .ok()?;
    let since = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

/// A short human duration: `42s`, `3m12s`, `2h05m`, `3d04h`.
pub fn short_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// How long ago `time` (RFC 3339) was, in short form; `-` when unknown.
pub fn age(time: Option<&str>) -> String {
    time.and_then(parse_time_ms)
        .map(|ms| short_duration(crate::jobs::now_ms().saturating_sub(ms)))
        .unwrap_or_else(|| "-".into())
}
