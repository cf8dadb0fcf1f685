//! `kiln watch ID`: follows a job's SSE stream with a progress bar and its stage message,
//! prints partials as they come and the result (or the error) at the end. A dropped
//! connection is resumed with `Last-Event-ID`, so no event is lost or shown twice.
//!
//! Exit codes: 0 completed, 1 failed, 2 cancelled (and 1 for any other error).

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use super::client::{Client, ServerArgs, failure};

/// Consecutive failed connections before `watch` gives up.
const MAX_RECONNECTS: u32 = 30;

/// First pause before reconnecting; doubles per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Longest pause between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// `kiln watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The job id.
    pub id: String,
    /// Also print streamed LLM tokens.
    #[arg(long)]
    pub tokens: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub(super) async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    follow(&client, &args.id, args.tokens).await
}

/// One parsed SSE event.
struct Frame {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// Splits complete frames off the front of `buffer`.
fn frames(buffer: &mut String) -> Vec<Frame> {
    let mut out = Vec::new();
    loop {
        let normalized_end = buffer.find("\n\n");
        let Some(end) = normalized_end else { break };
        let frame: String = buffer.drain(..end + 2).collect();
        let (mut id, mut event, mut data) = (None, None, String::new());
        for line in frame.lines() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if let Some(event) = event {
            out.push(Frame {
                id,
                event,
                data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
            });
        }
    }
    out
}

/// How the progress is drawn: one redrawn line on a terminal, a line per report
/// otherwise.
struct Display {
    tty: bool,
    bar_shown: bool,
    tokens: bool,
}

impl Display {
    fn new(tokens: bool) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            bar_shown: false,
            tokens,
        }
    }

    fn bar(progress: u64, message: &str) -> String {
        let progress = progress.min(100);
        let filled = usize::try_from(progress / 4).unwrap_or(25);
        format!(
            "[{}{}] {progress:>3}% {message}",
            "#".repeat(filled),
            "-".repeat(25 - filled)
        )
    }

    fn progress(&mut self, progress: u64, message: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{}", Self::bar(progress, message));
            self.bar_shown = true;
        } else {
            let _ = writeln!(err, "{}", Self::bar(progress, message));
        }
        let _ = err.flush();
    }

    /// A line of its own, above the bar.
    fn line(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.bar_shown {
            let _ = write!(err, "\r\x1b[2K");
            self.bar_shown = false;
        }
        let _ = writeln!(err, "{text}");
    }

    fn end(&mut self) {
        if self.bar_shown {
            let _ = writeln!(std::io::stderr());
            self.bar_shown = false;
        }
    }

    fn event(&mut self, frame: &Frame) {
        let data = &frame.data;
        match frame.event.as_str() {
            "progress" => self.progress(
                data["progress"].as_u64().unwrap_or(0),
                data["message"].as_str().unwrap_or(""),
            ),
            "status" => {
                let status = data["status"].as_str().unwrap_or("?");
                let attempt = data["attempt"].as_u64().unwrap_or(1);
                let mut text = format!("status: {status} (attempt {attempt})");
                if let Some(error) = data.get("error").filter(|e| e.is_object()) {
                    text.push_str(&format!(
                        "; last attempt: {}: {}",
                        error["kind"].as_str().unwrap_or("?"),
                        error["message"].as_str().unwrap_or("")
                    ));
                }
                if let Some(at) = data["run_at"].as_str() {
                    text.push_str(&format!("; runs at {at}"));
                }
                self.line(&text);
            }
            "partial" => {
                let name = data["name"].as_str().unwrap_or("?");
                self.line(&format!("partial {name}: {}", data["data"]));
            }
            "token" if self.tokens => {
                let label = data["label"].as_str().unwrap_or("?");
                let delta = data["delta"].as_str().unwrap_or("");
                self.line(&format!("token {label}: {delta:?}"));
            }
            _ => {}
        }
    }
}

/// Follows job `id` to its end; prints the result or the error; the exit code says how it
/// ended.
pub(super) async fn follow(client: &Client, id: &str, tokens: bool) -> anyhow::Result<ExitCode> {
    let mut display = Display::new(tokens);
    let mut last_id: Option<u64> = None;
    let mut failures = 0u32;
    let url = client.url(&format!("/v1/jobs/{id}/events"));
    loop {
        let mut request = client
            .http()
            .get(&url)
            .header("accept", "text/event-stream");
        if let Some(seen) = last_id {
            request = request.header("last-event-id", seen.to_string());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                failures += 1;
                if failures > MAX_RECONNECTS {
                    display.end();
                    return Err(client.unreachable(&error));
                }
                backoff(&mut display, failures, last_id).await;
                continue;
            }
        };
        let status = response.status().as_u16();
        if status == 204 {
            // The job is over and nothing follows what we saw.
            let job = client.get(&format!("/v1/jobs/{id}")).await?;
            if is_terminal(&job) {
                display.end();
                return Ok(finish(&job));
            }
            // Retried in the meantime: follow its new attempt.
            continue;
        }
        if status != 200 {
            let body = response.bytes().await.unwrap_or_default();
            if status >= 500 && failures < MAX_RECONNECTS {
                failures += 1;
                backoff(&mut display, failures, last_id).await;
                continue;
            }
            display.end();
            return Err(failure(status, &body).into());
        }
        let mut stream = response.bytes_stream();
        let mut buffer = String::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut terminal: Option<String> = None;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            pending.extend_from_slice(&chunk);
            // Only whole UTF-8 sequences go into the text buffer.
            let valid = match std::str::from_utf8(&pending) {
                Ok(text) => text.len(),
                Err(error) => error.valid_up_to(),
            };
            buffer.push_str(std::str::from_utf8(&pending[..valid]).unwrap_or_default());
            pending.drain(..valid);
            for frame in frames(&mut buffer) {
                if let (Some(seen), Some(this)) = (last_id, frame.id)
                    && this <= seen
                {
                    continue;
                }
                if frame.id.is_some() {
                    last_id = frame.id;
                }
                failures = 0;
                display.event(&frame);
                if matches!(frame.event.as_str(), "completed" | "failed" | "cancelled") {
                    terminal = Some(frame.event.clone());
                }
            }
            if terminal.is_some() {
                break;
            }
        }
        if let Some(ended) = terminal {
            // A log replayed from the start may hold an earlier attempt's end (the job was
            // retried since): go on unless the job ended the way this event says.
            let job = client.get(&format!("/v1/jobs/{id}")).await?;
            if job["status"].as_str() == Some(ended.as_str()) {
                display.end();
                return Ok(finish(&job));
            }
            continue;
        }
        // The stream ended without a terminal event: the connection dropped.
        failures += 1;
        if failures > MAX_RECONNECTS {
            display.end();
            anyhow::bail!(
                "the event stream of job {id} kept dropping; gave up after {MAX_RECONNECTS} tries"
            );
        }
        backoff(&mut display, failures, last_id).await;
    }
}

async fn backoff(display: &mut Display, failures: u32, last_id: Option<u64>) {
    let pause = FIRST_BACKOFF
        .saturating_mul(1 << failures.min(8).saturating_sub(1))
        .min(MAX_BACKOFF);
    display.line(&format!(
        "connection lost; reconnecting in {} ms (try {failures}/{MAX_RECONNECTS}, after event {})",
        pause.as_millis(),
        last_id.map_or_else(|| "none".to_string(), |id| id.to_string())
    ));
    tokio::time::sleep(pause).await;
}

fn is_terminal(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

/// Prints how `job` ended: the result on stdout, or the error on stderr.
pub(super) fn finish(job: &Value) -> ExitCode {
    match job["status"].as_str() {
        Some("completed") => {
            eprintln!("completed (attempt {})", job["attempt"]);
            println!(
                "{}",
                serde_json::to_string_pretty(&job["result"]).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Some("failed") => {
            let error = &job["error"];
            eprintln!(
                "failed (attempt {}): {}: {}",
                job["attempt"],
                error["kind"].as_str().unwrap_or("unknown"),
                error["message"].as_str().unwrap_or("")
            );
            ExitCode::FAILURE
        }
        _ => {
            eprintln!("cancelled");
            ExitCode::from(2)
        }
    }
}
