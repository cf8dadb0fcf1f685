//! The `offline` provider: deterministic synthetic text, so the whole product runs, demos
//! and tests without a key or a network.
//!
//! The output is derived from a hash of the request, so the same request always gets the
//! same answer (which also makes journal replays and tests reproducible), and it says that
//! it is synthetic so nobody mistakes it for a model's work.
//!
//! A JSON-output request gets a JSON object of the shape its prompt asks for: the first
//! JSON object written in its messages (a prompt's example, such as `{"strength": 10, …}`)
//! with every value replaced by a synthetic one of the same type (see [`fill`]), plus
//! `"synthetic": true`. So a job type whose prompts show their JSON shape gets results of
//! its real shape without a key. A prompt with no example gets
//! `{"synthetic": true, "text": "[synthetic] …"}`.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// Where a prompt's JSON example is looked for: the first `{` positions of each message
/// (a bound, so a long text full of braces costs little).
const MAX_EXAMPLE_STARTS: usize = 256;

/// Deterministic pseudo-random numbers seeded by the request's hash (xorshift64: good
/// enough to vary words and values).
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `[synthetic]` and `count` words.
    fn phrase(&mut self, count: u32) -> String {
        let mut text = SYNTHETIC_PREFIX.to_string();
        for _ in 0..count {
            text.push(' ');
            text.push_str(WORDS[(self.next() % WORDS.len() as u64) as usize]);
        }
        text
    }

    /// An integer in `low..=high`.
    fn between(&mut self, low: i64, high: i64) -> i64 {
        let span = high.abs_diff(low).saturating_add(1);
        low.saturating_add_unsigned(self.next() % span)
    }
}

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
        let mut draw = Draw(hasher.finish() | 1);
        let most = self.config.words.max(2);
        if request.json_output {
            let mut object = match json_example(request) {
                Some(example) => fill_fields(&example, &mut draw, most),
                None => Map::from_iter([("text".to_string(), Value::String(draw.phrase(most)))]),
            };
            object.insert("synthetic".into(), Value::Bool(true));
            return Value::Object(object).to_string();
        }
        // Roughly as long as a model would answer: a few words for a 24-token name, the
        // configured maximum for long answers.
        let count = request
            .max_tokens
            .map_or(self.config.words, |max| (max / 8).clamp(2, most));
        draw.phrase(count)
    }
}

/// The first non-empty JSON object written in the request's messages, in order.
fn json_example(request: &LlmRequest) -> Option<Map<String, Value>> {
    request.messages.iter().find_map(|message| {
        let text = message.content.as_str();
        text.match_indices('{')
            .take(MAX_EXAMPLE_STARTS)
            .find_map(|(at, _)| {
                // The object starting here, ignoring whatever text follows it.
                let mut values = serde_json::Deserializer::from_str(&text[at..]).into_iter();
                match values.next() {
                    Some(Ok(Value::Object(object))) if !object.is_empty() => Some(object),
                    _ => None,
                }
            })
    })
}

/// `example` with every value replaced by a synthetic one of its type, keys and array
/// lengths kept:
/// - a string becomes `[synthetic]` and as many words as it has (2 to `most`);
/// - an integer `n` becomes one between 1 and `2n` (`2n` and -1 when negative, 0 stays 0),
///   so an example stat of 10 spreads over 1-20; a float `x` one between 0 and `2x`;
/// - booleans are drawn, `null` stays; arrays and objects are filled item by item.
fn fill(example: &Value, draw: &mut Draw, most: u32) -> Value {
    match example {
        Value::String(text) => {
            let words = u32::try_from(text.split_whitespace().count()).unwrap_or(most);
            Value::String(draw.phrase(words.clamp(2, most)))
        }
        Value::Number(number) => match number.as_i64() {
            Some(0) => Value::from(0),
            Some(n) if n > 0 => Value::from(draw.between(1, n.saturating_mul(2))),
            Some(n) => Value::from(draw.between(n.saturating_mul(2), -1)),
            None => {
                let x = number.as_f64().unwrap_or(1.0);
                let fraction = (draw.next() % 1001) as f64 / 1000.0;
                Value::from((x * 2.0 * fraction * 100.0).round() / 100.0)
            }
        },
        Value::Bool(_) => Value::Bool(draw.next().is_multiple_of(2)),
        Value::Null => Value::Null,
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, draw, most)).collect()),
        Value::Object(fields) => Value::Object(fill_fields(fields, draw, most)),
    }
}

/// [`fill`] of an object's fields.
fn fill_fields(fields: &Map<String, Value>, draw: &mut Draw, most: u32) -> Map<String, Value> {
    fields
        .iter()
        .map(|(key, value)| (key.clone(), fill(value, draw, most)))
        .collect()
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

    fn json(client: &OfflineClient, content: &str) -> Value {
        let mut req = request(content);
        req.json_output = true;
        serde_json::from_str(&client.synthesize(&req)).unwrap()
    }

    #[test]
    fn json_output_without_an_example_is_marked_text() {
        let client = OfflineClient::new(OfflineConfig::default());
        let value = json(&client, "stats, please {not json}");
        assert_eq!(value["synthetic"], true);
        assert!(
            value["text"]
                .as_str()
                .unwrap()
                .starts_with(SYNTHETIC_PREFIX)
        );
        assert_eq!(value.as_object().unwrap().len(), 2, "{value}");
    }

    #[test]
    fn json_output_follows_the_prompts_example() {
        let client = OfflineClient::new(OfflineConfig::default());
        let prompt = r#"Reply with one JSON object of this shape: {"name": "a full name",
            "level": 10, "ratio": 0.5, "alive": true, "gone": null, "tags": ["one", "two"],
            "home": {"city": "a city", "floor": -3}}. Mind the {braces} after it."#;
        let value = json(&client, prompt);
        assert_eq!(value, json(&client, prompt), "deterministic");
        assert_eq!(value["synthetic"], true);
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        // The keys of the prompt's example, in its order, then the marker.
        let expected = [
            "name",
            "level",
            "ratio",
            "alive",
            "gone",
            "tags",
            "home",
            "synthetic",
        ];
        assert_eq!(keys, expected, "{value}");
        let name = value["name"].as_str().unwrap();
        assert!(name.starts_with(SYNTHETIC_PREFIX), "{value}");
        assert_eq!(
            name.split_whitespace().count(),
            4,
            "3 words like the example: {value}"
        );
        assert!(
            (1..=20).contains(&value["level"].as_i64().unwrap()),
            "{value}"
        );
        assert!(
            (0.0..=1.0).contains(&value["ratio"].as_f64().unwrap()),
            "{value}"
        );
        assert!(
            value["alive"].is_boolean() && value["gone"].is_null(),
            "{value}"
        );
        assert_eq!(value["tags"].as_array().unwrap().len(), 2, "{value}");
        assert!(value["tags"][1].is_string(), "{value}");
        assert!((-6..=-1).contains(&value["home"]["floor"].as_i64().unwrap()));
        assert!(value["home"]["city"].is_string(), "{value}");
        // Another request, other values of the same shape.
        let other = json(&client, &format!("{prompt} Again."));
        assert_ne!(other, value);
        assert_eq!(
            other.as_object().unwrap().keys().collect::<Vec<_>>(),
            expected
        );
    }

    #[test]
    fn integers_spread_over_the_examples_range() {
        let client = OfflineClient::new(OfflineConfig::default());
        let seen: std::collections::BTreeSet<i64> = (0..200)
            .map(|i| {
                json(&client, &format!("{i}: {{\"stat\": 10}}"))["stat"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert!(seen.iter().all(|v| (1..=20).contains(v)), "{seen:?}");
        assert!(seen.len() > 10, "values vary: {seen:?}");
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
