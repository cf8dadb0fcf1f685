//! Wire-level pieces shared by the HTTP providers: the Server-Sent Events parser, the
//! `Retry-After` header, the state a streamed answer accumulates, and how a failed
//! attempt is classified for the retry loop.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use super::{FinishReason, LlmError, ToolCall};

/// One Server-Sent Event: its `event:` name (empty when none) and its `data:` lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Splits a byte stream into SSE events. Frames end at a blank line; `\r` is dropped, so
/// CRLF and LF streams parse alike. Frames are cut at ASCII newlines only, so a UTF-8
/// character split across network chunks is reassembled before decoding.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    /// Adds received bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer
            .extend(bytes.iter().copied().filter(|b| *b != b'\r'));
        let mut events = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = self.buffer.drain(..end + 2).collect();
            if let Some(event) = parse_frame(&String::from_utf8_lossy(&frame)) {
                events.push(event);
            }
        }
        events
    }

    /// The last event, when the stream ended without the blank line after it.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let rest = std::mem::take(&mut self.buffer);
        parse_frame(&String::from_utf8_lossy(&rest))
    }
}

fn parse_frame(frame: &str) -> Option<SseEvent> {
    let mut event = SseEvent::default();
    let mut has_data = false;
    for line in frame.lines() {
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => event.event = value.to_string(),
            "data" => {
                if has_data {
                    event.data.push('\n');
                }
                event.data.push_str(value);
                has_data = true;
            }
            // Comments (`: keep-alive`), `id:`, `retry:` and unknown fields.
            _ => {}
        }
    }
    (has_data || !event.event.is_empty()).then_some(event)
}

/// The delay a 429 or 503 asks for: `retry-after-ms` (OpenAI), else `Retry-After` as
/// seconds (integer or decimal) or as an HTTP date. `None` when absent or unreadable.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    parse_retry_after(value, SystemTime::now())
}

/// `Retry-After`'s value, relative to `now` when it is a date.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What a streamed answer accumulated so far.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    /// The whole text so far.
    pub text: String,
    /// Deltas not yet handed to the token sink.
    pub pending: Vec<String>,
    pub model: Option<String>,
    pub input_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
    pub cached_input_tokens: Option<u32>,
    pub reasoning_tokens: Option<u32>,
    /// Tool calls so far, by the stream's index of each; arguments arrive in pieces.
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<FinishReason>,
    /// The provider said the answer is complete (a finish reason or a stop event).
    pub finished: bool,
    /// The end-of-stream marker arrived; nothing more will.
    pub done: bool,
}

impl StreamState {
    pub fn delta(&mut self, text: &str) {
        if !text.is_empty() {
            self.text.push_str(text);
            self.pending.push(text.to_string());
        }
    }

    /// The tool call at stream position `index`, created empty when new. Positions past
    /// a bound are refused, so a broken stream cannot make the host allocate without end.
    pub fn tool_call(&mut self, index: usize) -> Result<&mut ToolCall, Failure> {
        if index >= MAX_TOOL_CALLS {
            return Err(Failure::Final(LlmError::Unavailable(format!(
                "the stream has a tool call at position {index}; at most {MAX_TOOL_CALLS} are read"
            ))));
        }
        while self.tool_calls.len() <= index {
            self.tool_calls.push(ToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
        }
        Ok(&mut self.tool_calls[index])
    }

    /// What the stream added up to.
    pub fn into_parsed(self) -> Parsed {
        Parsed {
            text: self.text,
            model: self.model,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cached_input_tokens: self.cached_input_tokens,
            reasoning_tokens: self.reasoning_tokens,
            // Positions of text blocks (Anthropic numbers them with the tool calls).
            tool_calls: self
                .tool_calls
                .into_iter()
                .filter(|call| !call.name.is_empty())
                .collect(),
            finish_reason: self.finish_reason,
        }
    }
}

/// Most tool calls read from one answer.
pub(crate) const MAX_TOOL_CALLS: usize = 128;

/// A non-streamed answer as a wire format decoded it.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub text: String,
    pub model: Option<String>,
    pub input_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
    pub cached_input_tokens: Option<u32>,
    pub reasoning_tokens: Option<u32>,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<FinishReason>,
}

/// How one attempt failed, which decides whether the provider retries it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// 429 (or an in-stream rate-limit error): pause the provider, retry after the delay.
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// A server error or a broken connection: retry a couple of times with backoff.
    Transient(String),
    /// No retry: the error is final.
    Final(LlmError),
}

/// Whether a 429's body says the account's quota or spend limit is used up (OpenAI's
/// `insufficient_quota`, Anthropic's billing errors) rather than a rate: then waiting does
/// not help, and the call must not be retried.
pub(crate) fn is_spend_limit(body: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let error = &value["error"];
    let code = [&error["code"], &error["type"]]
        .iter()
        .filter_map(|v| v.as_str())
        .any(|c| {
            matches!(
                c,
                "insufficient_quota" | "billing_error" | "billing_hard_limit_reached"
            )
        });
    let message = error["message"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    code || message.contains("exceeded your current quota")
        || message.contains("credit balance is too low")
        || message.contains("spend limit")
}

/// A number from a JSON usage field.
pub(crate) fn tokens(value: &serde_json::Value) -> Option<u32> {
    value.as_u64().map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// The human part of a provider's error body (`{"error": {"message": …}}` in both wire
/// formats, or a bare string), cut to a readable length.
pub(crate) fn error_detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let detail = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value) => value["error"]["message"]
            .as_str()
            .or_else(|| value["error"].as_str())
            .or_else(|| value["message"].as_str())
            .map_or_else(|| value.to_string(), str::to_string),
        Err(_) => text.trim().to_string(),
    };
    truncate(&detail, 300)
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames_split_anywhere() {
        let stream = "event: a\ndata: {\"x\":1}\n\n: comment\n\ndata: two\r\ndata: lines\r\n\r\ndata: [DONE]";
        for cut in 0..stream.len() {
            let mut parser = SseParser::default();
            let mut events = parser.push(&stream.as_bytes()[..cut]);
            events.extend(parser.push(&stream.as_bytes()[cut..]));
            events.extend(parser.finish());
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        event: "a".into(),
                        data: "{\"x\":1}".into()
                    },
                    SseEvent {
                        event: String::new(),
                        data: "two\nlines".into()
                    },
                    SseEvent {
                        event: String::new(),
                        data: "[DONE]".into()
                    },
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn multibyte_text_survives_chunking() {
        let stream = "data: héllo ✓\n\n".as_bytes();
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for byte in stream {
            events.extend(parser.push(std::slice::from_ref(byte)));
        }
        assert_eq!(events[0].data, "héllo ✓");
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn error_details_are_short_and_plain() {
        assert_eq!(
            error_detail(br#"{"error":{"message":"bad model","type":"x"}}"#),
            "bad model"
        );
        assert_eq!(error_detail(b"<html>oops</html>"), "<html>oops</html>");
        assert!(error_detail("é".repeat(400).as_bytes()).len() < 310);
    }
}
