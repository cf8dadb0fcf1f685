//! `kiln watch ID`: follows a job's SSE stream with a progress bar and its stage message,
//! prints a line per partial as it comes (its whole JSON with `--partials`) and the result
//! (or the error) at the end. A dropped connection is resumed with `Last-Event-ID`, so no
//! event is lost or shown twice.
//!
//! With `--tokens` it prints streamed LLM text, and marks where streamed text was voided:
//! a `token` event with `"reset": true` voids what its label streamed so far (the call
//! failed after streaming part of it), and a new attempt's `running` status voids all the
//! previous attempt's text.
//!
//! Exit codes: 0 completed, 1 failed, 2 cancelled (and 1 for any other error).

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use super::client::{Client, ServerArgs, failure};

/// Consecutive failed connections before `watch` gives up.
pub(super) const MAX_RECONNECTS: u32 = 30;

/// First pause before reconnecting; doubles per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Longest pause between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// `kiln watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The job id.
    pub id: String,
    #[command(flatten)]
    pub show: ShowArgs,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// What following a job prints besides progress, statuses and the end (`watch` and
/// `submit --watch`).
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct ShowArgs {
    /// Also print streamed LLM tokens (and where a failed call's text was voided).
    #[arg(long)]
    pub tokens: bool,
    /// Print each partial result's whole JSON, not a one-line summary.
    #[arg(long)]
    pub partials: bool,
}

pub(super) async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    follow(&client, &args.id, args.show).await
}

/// One parsed SSE event.
pub(super) struct Frame {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// Splits complete frames off the front of `buffer`.
pub(super) fn frames(buffer: &mut String) -> Vec<Frame> {
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

/// The lines events print, apart from the progress bar; keeps what it needs to say when
/// streamed text is voided.
#[derive(Default)]
struct View {
    show: ShowArgs,
    /// The attempt whose `running` status came last.
    running: Option<u64>,
    /// Whether any token text of that attempt was printed.
    tokens_printed: bool,
    /// Whether the hint about `--partials` was given.
    partial_hinted: bool,
}

impl View {
    fn new(show: ShowArgs) -> Self {
        Self {
            show,
            ..Self::default()
        }
    }

    /// What `frame` prints (nothing for progress, which the bar draws).
    fn lines(&mut self, frame: &Frame) -> Vec<String> {
        let data = &frame.data;
        match frame.event.as_str() {
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
                let mut lines = vec![text];
                if status == "running" {
                    let previous = self.running.replace(attempt);
                    if let Some(previous) = previous.filter(|p| *p != attempt)
                        && std::mem::take(&mut self.tokens_printed)
                    {
                        lines.push(format!(
                            "[attempt {previous}: its streamed text is void; attempt {attempt} \
                             starts over]"
                        ));
                    }
                }
                lines
            }
            "partial" => {
                let name = data["name"].as_str().unwrap_or("?");
                let value = &data["data"];
                if self.show.partials {
                    let json = serde_json::to_string_pretty(value).unwrap_or_default();
                    return vec![format!("partial {name}:\n{json}")];
                }
                let mut text = format!("partial {name}: {}", summary(value));
                if !std::mem::replace(&mut self.partial_hinted, true) {
                    text.push_str(" (--partials prints them whole)");
                }
                vec![text]
            }
            "token" if self.show.tokens => {
                let label = data["label"].as_str().unwrap_or("?");
                if data["reset"] == true {
                    return vec![format!("[{label}: restarted; its text so far is void]")];
                }
                let delta = data["delta"].as_str().unwrap_or("");
                self.tokens_printed = true;
                vec![format!("token {label}: {delta:?}")]
            }
            _ => Vec::new(),
        }
    }
}

/// A partial's one-line description: its JSON type, how many items, its size.
fn summary(value: &Value) -> String {
    let bytes = value.to_string().len();
    let size = if bytes < 1024 {
        format!("{bytes} bytes")
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    };
    let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    match value {
        Value::Object(fields) => format!("object, {}, {size}", plural(fields.len(), "key")),
        Value::Array(items) => format!("array, {}, {size}", plural(items.len(), "item")),
        Value::String(text) => format!("text, {}, {size}", plural(text.chars().count(), "char")),
        _ => format!("{value}"),
    }
}

/// How the progress is drawn: one redrawn line on a terminal, a line per report
/// otherwise.
pub(super) struct Display {
    tty: bool,
    bar_shown: bool,
    view: View,
}

impl Display {
    pub(super) fn new(show: ShowArgs) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            bar_shown: false,
            view: View::new(show),
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

    pub(super) fn progress(&mut self, progress: u64, message: &str) {
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
    pub(super) fn line(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.bar_shown {
            let _ = write!(err, "\r\x1b[2K");
            self.bar_shown = false;
        }
        let _ = writeln!(err, "{text}");
    }

    pub(super) fn end(&mut self) {
        if self.bar_shown {
            let _ = writeln!(std::io::stderr());
            self.bar_shown = false;
        }
    }

    fn event(&mut self, frame: &Frame) {
        if frame.event == "progress" {
            let data = &frame.data;
            self.progress(
                data["progress"].as_u64().unwrap_or(0),
                data["message"].as_str().unwrap_or(""),
            );
        }
        for line in self.view.lines(frame) {
            self.line(&line);
        }
    }
}

/// Follows job `id` to its end; prints the result or the error; the exit code says how it
/// ended.
pub(super) async fn follow(client: &Client, id: &str, show: ShowArgs) -> anyhow::Result<ExitCode> {
    let mut display = Display::new(show);
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

pub(super) async fn backoff(display: &mut Display, failures: u32, last_id: Option<u64>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frame(event: &str, data: Value) -> Frame {
        Frame {
            id: None,
            event: event.into(),
            data,
        }
    }

    fn token(label: &str, delta: &str) -> Frame {
        frame("token", json!({"label": label, "delta": delta}))
    }

    fn running(attempt: u64) -> Frame {
        frame("status", json!({"status": "running", "attempt": attempt}))
    }

    fn shown(view: &mut View, frames: &[Frame]) -> Vec<String> {
        frames.iter().flat_map(|f| view.lines(f)).collect()
    }

    #[test]
    fn a_token_reset_is_shown_where_it_happens() {
        let mut view = View::new(ShowArgs {
            tokens: true,
            partials: false,
        });
        let reset = frame("token", json!({"label": "a", "delta": "", "reset": true}));
        let lines = shown(&mut view, &[token("a", "Once"), reset, token("a", "Twice")]);
        assert_eq!(
            lines,
            [
                "token a: \"Once\"",
                "[a: restarted; its text so far is void]",
                "token a: \"Twice\""
            ]
        );
    }

    #[test]
    fn a_new_attempt_voids_the_previous_attempts_tokens() {
        let mut view = View::new(ShowArgs {
            tokens: true,
            partials: false,
        });
        let lines = shown(
            &mut view,
            &[running(1), token("a", "x"), running(2), running(2)],
        );
        assert_eq!(
            lines,
            [
                "status: running (attempt 1)",
                "token a: \"x\"",
                "status: running (attempt 2)",
                "[attempt 1: its streamed text is void; attempt 2 starts over]",
                "status: running (attempt 2)",
            ]
        );
        // Without printed tokens, a new attempt needs no such line.
        let mut quiet = View::new(ShowArgs::default());
        let lines = shown(&mut quiet, &[running(1), token("a", "x"), running(2)]);
        assert_eq!(
            lines,
            ["status: running (attempt 1)", "status: running (attempt 2)"]
        );
    }

    #[test]
    fn partials_are_one_line_unless_asked_whole() {
        let data = json!({"name": "character-1", "data": {"name": "Ada", "stats": {"wisdom": 12}}});
        let mut view = View::new(ShowArgs::default());
        let lines = shown(
            &mut view,
            &[
                frame("partial", data.clone()),
                frame("partial", data.clone()),
            ],
        );
        let size = data["data"].to_string().len();
        assert_eq!(
            lines,
            [
                format!(
                    "partial character-1: object, 2 keys, {size} bytes (--partials prints them whole)"
                ),
                format!("partial character-1: object, 2 keys, {size} bytes"),
            ]
        );
        let mut whole = View::new(ShowArgs {
            tokens: false,
            partials: true,
        });
        let lines = shown(&mut whole, &[frame("partial", data.clone())]);
        let (head, json) = lines[0].split_once('\n').unwrap();
        assert_eq!(head, "partial character-1:");
        assert_eq!(serde_json::from_str::<Value>(json).unwrap(), data["data"]);
        assert_eq!(summary(&json!("héllo")), "text, 5 chars, 8 bytes");
        assert_eq!(summary(&json!([1])), "array, 1 item, 3 bytes");
        assert_eq!(
            summary(&json!({"t": "x".repeat(2000)})),
            "object, 1 key, 2.0 KiB"
        );
    }
}
