//! The `offline` provider: deterministic synthetic text, so the whole product runs, demos
//! and tests without a key or a network.
//!
//! The output is derived from a hash of the request, so the same request always gets the
//! same answer (which also makes journal replays and tests reproducible), and it says that
//! it is synthetic so nobody mistakes it for a model's work.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{LlmClient, LlmError, LlmRequest, LlmResponse, TokenSink, estimate_tokens};

/// Settings of the offline provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfflineConfig {
    /// Simulated time per call, in milliseconds. Default 250, so progress visibly moves
    /// in a demo; tests and benchmarks set 0.
    pub latency_ms: u64,
    /// Most words per answer (a request's `max_tokens` shortens it). Default 40.
    pub words: u32,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        Self {
            latency_ms: 250,
            words: 40,
        }
    }
}

/// The offline provider. Cheap to clone; holds no connection.
#[derive(Clone, Debug, Default)]
pub struct OfflineClient {
    config: OfflineConfig,
}

/// The model name offline answers carry.
pub const OFFLINE_MODEL: &str = "offline";

/// Marks every offline answer as synthetic.
const SYNTHETIC_PREFIX: &str = "[synthetic]";

const WORDS: &[&str] = &[
    "amber",
    "ancient",
    "bold",
    "bright",
    "calm",
    "clever",
    "crimson",
    "distant",
    "eager",
    "ember",
    "fabled",
    "fierce",
    "gentle",
    "gilded",
    "hidden",
    "hollow",
    "iron",
    "jade",
    "keen",
    "lone",
    "lucid",
    "misty",
    "noble",
    "obsidian",
    "pale",
    "quiet",
    "restless",
    "silver",
    "stern",
    "swift",
    "tidal",
    "umber",
    "valiant",
    "wandering",
    "wild",
    "young",
    "harbor",
    "forest",
    "citadel",
    "river",
    "mountain",
    "archive",
    "lantern",
    "compass",
    "banner",
    "garden",
    "oath",
    "storm",
    "thread",
    "voyage",
    "whisper",
    "ember",
    "crown",
];

impl OfflineClient {
    /// An offline provider with these settings.
    pub fn new(config: OfflineConfig) -> Self {
        Self { config }
    }

    /// The text this provider answers `request` with. Pure: same request, same text.
    pub fn synthesize(&self, request: &LlmRequest) -> String {
        let mut hasher = DefaultHasher::new();
        for message in &request.messages {
            message.content.hash(&mut hasher);
        }
        request.model.hash(&mut hasher);
        let mut state = hasher.finish() | 1;
        // Roughly as long as a model would answer: a few words for a 24-token name, the
        // configured maximum for long answers.
        let count = request.max_tokens.map_or(self.config.words, |max| {
            (max / 8).clamp(2, self.config.words.max(2))
        });
        let words: Vec<&str> = (0..count)
            .map(|_| {
                // xorshift64: deterministic and good enough to vary the words.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                WORDS[(state % WORDS.len() as u64) as usize]
            })
            .collect();
        let text = format!("{SYNTHETIC_PREFIX} {}", words.join(" "));
        if request.json_output {
            serde_json::json!({ "synthetic": true, "text": text }).to_string()
        } else {
            text
        }
    }
}

impl LlmClient for OfflineClient {
    fn complete<'a>(
        &'a self,
        request: &'a LlmRequest,
        tokens: Option<TokenSink<'a>>,
    ) -> BoxFuture<'a, Result<LlmResponse, LlmError>> {
        async move {
            if request.messages.is_empty() {
                return Err(LlmError::Rejected("the request has no messages".into()));
            }
            let text = self.synthesize(request);
            let latency = Duration::from_millis(self.config.latency_ms);
            match tokens {
                Some(sink) => {
                    // Stream word by word, spreading the latency over the words, the way a
                    // real provider's deltas arrive.
                    let pieces: Vec<&str> = text.split_inclusive(' ').collect();
                    let pause = latency / u32::try_from(pieces.len().max(1)).unwrap_or(1);
                    for piece in pieces {
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                        sink(piece);
                    }
                }
                None if !latency.is_zero() => tokio::time::sleep(latency).await,
                None => {}
            }
            let input: usize = request.messages.iter().map(|m| m.content.len()).sum();
            let response = Ok(LlmResponse {
                input_tokens: u32::try_from(input.div_ceil(4)).unwrap_or(u32::MAX),
                output_tokens: estimate_tokens(&text),
                model: OFFLINE_MODEL.to_string(),
                text,
            });
            crate::monitor::llm_call(self as *const Self as *const (), "offline", &response);
            response
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Message, Role};

    fn request(content: &str) -> LlmRequest {
        LlmRequest {
            messages: vec![Message {
                role: Role::User,
                content: content.into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn same_request_same_text_and_marked_synthetic() {
        let client = OfflineClient::new(OfflineConfig::default());
        let a = client.synthesize(&request("a hero"));
        assert_eq!(a, client.synthesize(&request("a hero")));
        assert_ne!(a, client.synthesize(&request("a villain")));
        assert!(a.starts_with(SYNTHETIC_PREFIX));
    }

    #[test]
    fn json_output_is_a_json_object() {
        let client = OfflineClient::new(OfflineConfig::default());
        let mut req = request("stats");
        req.json_output = true;
        let value: serde_json::Value = serde_json::from_str(&client.synthesize(&req)).unwrap();
        assert_eq!(value["synthetic"], true);
    }

    #[tokio::test]
    async fn streams_the_same_text_it_returns() {
        let client = OfflineClient::new(OfflineConfig {
            latency_ms: 0,
            words: 5,
        });
        let req = request("stream me");
        let streamed = std::sync::Mutex::new(String::new());
        let sink = |delta: &str| streamed.lock().unwrap().push_str(delta);
        let response = client.complete(&req, Some(&sink)).await.unwrap();
        assert_eq!(*streamed.lock().unwrap(), response.text);
        assert_eq!(response.model, OFFLINE_MODEL);
    }

    #[tokio::test]
    async fn empty_request_is_rejected() {
        let client = OfflineClient::default();
        let err = client
            .complete(&LlmRequest::default(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::Rejected(_)));
    }
}
