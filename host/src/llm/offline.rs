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
//!
//! Contract 0.2.0's requests get answers of their shape too:
//! - a request with a JSON Schema gets a value generated from the schema (see
//!   [`from_schema`]): it always validates, so structured output works offline;
//! - a request with tools calls one, once: the tool the last user message names (else
//!   the first), with arguments generated from its parameter schema. Once the
//!   conversation holds that call's result, it answers as usual, so a tool loop ends;
//! - embeddings are deterministic unit vectors of [`OfflineConfig::embedding_dimensions`]
//!   numbers, the same for the same text.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    EmbedRequest, EmbedResponse, FinishReason, LlmClient, LlmError, LlmRequest, LlmResponse, Role,
    TokenSink, ToolCall, estimate_tokens,
};

/// Settings of the offline provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfflineConfig {
    /// Simulated time per call, in milliseconds. Default 250, so progress visibly moves
    /// in a demo; tests and benchmarks set 0.
    pub latency_ms: u64,
    /// Most words per answer (a request's `max_tokens` shortens it). Default 40.
    pub words: u32,
    /// Length of the embedding vectors. Default 256.
    pub embedding_dimensions: u32,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        Self {
            latency_ms: 250,
            words: 40,
            embedding_dimensions: 256,
        }
    }
}

/// The offline provider. Cheap to clone; holds no connection.
#[derive(Clone)]
pub struct OfflineClient {
    config: OfflineConfig,
    /// Its name in the config, which labels its metrics.
    name: String,
    observer: super::Observer,
}

impl std::fmt::Debug for OfflineClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineClient")
            .field("config", &self.config)
            .field("name", &self.name)
            .field("observed", &self.observer.is_some())
            .finish()
    }
}

impl Default for OfflineClient {
    fn default() -> Self {
        Self::new(OfflineConfig::default())
    }
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
pub struct Draw(u64);

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
    /// An offline provider with these settings, called `offline`.
    pub fn new(config: OfflineConfig) -> Self {
        Self::named("offline", config)
    }

    /// An offline provider called `name` in the config.
    pub fn named(name: &str, config: OfflineConfig) -> Self {
        Self {
            config,
            name: name.to_string(),
            observer: None,
        }
    }

    /// Reports its calls to `observer` (the server's metrics).
    pub fn with_observer(mut self, observer: super::Observer) -> Self {
        self.observer = observer;
        self
    }

    /// The draws of `request`: seeded by its messages and model.
    fn draw_for(request: &LlmRequest) -> Draw {
        let mut hasher = DefaultHasher::new();
        for message in &request.messages {
            message.content.hash(&mut hasher);
            for call in &message.tool_calls {
                call.id.hash(&mut hasher);
            }
        }
        request.model.hash(&mut hasher);
        Draw(hasher.finish() | 1)
    }

    /// The tool call this provider answers `request` with, if it has tools and has not
    /// had a tool's result since the last user message. Pure.
    pub fn tool_call(&self, request: &LlmRequest) -> Option<ToolCall> {
        let first = request.tools.first()?;
        let since_user = request
            .messages
            .iter()
            .rev()
            .take_while(|m| m.role != Role::User);
        if since_user.clone().any(|m| m.role == Role::Tool) {
            return None;
        }
        let asked = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .unwrap_or_default();
        let tool = request
            .tools
            .iter()
            .find(|t| asked.contains(&t.name))
            .unwrap_or(first);
        let mut draw = Self::draw_for(request);
        let arguments = match from_schema(&tool.parameters, &mut draw, self.config.words.max(2), 0)
        {
            Value::Object(object) => Value::Object(object),
            _ => Value::Object(Map::new()),
        };
        Some(ToolCall {
            id: format!("call_{:016x}", draw.next()),
            name: tool.name.clone(),
            arguments: arguments.to_string(),
        })
    }

    /// The text this provider answers `request` with. Pure: same request, same text.
    pub fn synthesize(&self, request: &LlmRequest) -> String {
        let mut draw = Self::draw_for(request);
        let most = self.config.words.max(2);
        if let Some(spec) = &request.json_schema {
            return from_schema(&spec.schema, &mut draw, most, 0).to_string();
        }
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

/// Deepest schema nesting [`from_schema`] follows; below it, `null`.
const MAX_SCHEMA_DEPTH: usize = 16;

/// A value that validates against `schema` (the usual keywords of structured output:
/// `type`, `properties`, `required`, `items`, `enum`, `const`, `anyOf`/`oneOf`/`allOf`,
/// the length, size and range bounds), drawn from `draw`. Strings are `[synthetic]`
/// phrases cut to fit their bounds; every property is filled, required or not.
pub fn from_schema(schema: &Value, draw: &mut Draw, most: u32, depth: usize) -> Value {
    let Value::Object(schema) = schema else {
        // `true` or a missing schema accepts anything.
        return Value::String(draw.phrase(2));
    };
    if depth > MAX_SCHEMA_DEPTH {
        return Value::Null;
    }
    if let Some(value) = schema.get("const") {
        return value.clone();
    }
    if let Some(Value::Array(choices)) = schema.get("enum")
        && !choices.is_empty()
    {
        return choices[(draw.next() % choices.len() as u64) as usize].clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = schema.get(key)
            && let Some(branch) = branches.first()
        {
            return from_schema(branch, draw, most, depth + 1);
        }
    }
    if let Some(Value::Array(parts)) = schema.get("allOf") {
        let mut merged = schema.clone();
        merged.remove("allOf");
        for part in parts {
            if let Value::Object(part) = part {
                for (key, value) in part {
                    merged.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
        }
        return from_schema(&Value::Object(merged), draw, most, depth + 1);
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        // A list of types: the first that is not `null`.
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|k| *k != "null")
            .unwrap_or("null"),
        _ if schema.contains_key("properties") => "object",
        _ if schema.contains_key("items") => "array",
        _ => "string",
    };
    let bound = |key: &str| schema.get(key).and_then(Value::as_u64);
    match kind {
        "object" => {
            let mut object = Map::new();
            if let Some(Value::Object(properties)) = schema.get("properties") {
                for (key, property) in properties {
                    object.insert(key.clone(), from_schema(property, draw, most, depth + 1));
                }
            }
            Value::Object(object)
        }
        "array" => {
            let low = bound("minItems").unwrap_or(1);
            let high = bound("maxItems").unwrap_or(low.max(3)).max(low);
            let count = low + draw.next() % (high.min(low + 4) - low + 1);
            let items = schema.get("items").cloned().unwrap_or(Value::Bool(true));
            Value::Array(
                (0..count)
                    .map(|_| from_schema(&items, draw, most, depth + 1))
                    .collect(),
            )
        }
        "integer" | "number" => {
            let number = |key: &str| schema.get(key).and_then(Value::as_f64);
            let low = number("minimum")
                .or(number("exclusiveMinimum").map(|x| x.floor() + 1.0))
                .unwrap_or(1.0);
            let high = number("maximum")
                .or(number("exclusiveMaximum").map(|x| x.ceil() - 1.0))
                .unwrap_or(low.max(0.0) + 100.0)
                .max(low);
            let (low, high) = (low.ceil() as i64, high.floor() as i64);
            Value::from(draw.between(low, high.max(low)))
        }
        "boolean" => Value::Bool(draw.next().is_multiple_of(2)),
        "null" => Value::Null,
        _ => {
            let min = bound("minLength").unwrap_or(0) as usize;
            let max = bound("maxLength")
                .map_or(usize::MAX, |m| m as usize)
                .max(min);
            let mut text = draw.phrase(most.min(6));
            while text.chars().count() < min {
                text.push_str(" x");
            }
            let text: String = text.chars().take(max).collect();
            Value::String(text)
        }
    }
}

/// A unit vector of `dimensions` numbers derived from `text`.
fn unit_vector(text: &str, dimensions: u32) -> Vec<f32> {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    let mut draw = Draw(hasher.finish() | 1);
    let raw: Vec<f32> = (0..dimensions.max(1))
        .map(|_| (draw.next() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        let mut unit = vec![0.0; raw.len()];
        unit[0] = 1.0;
        return unit;
    }
    raw.into_iter().map(|x| x / norm).collect()
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
        _caller: &'a str,
        request: &'a LlmRequest,
        tokens: Option<TokenSink<'a>>,
    ) -> BoxFuture<'a, Result<LlmResponse, LlmError>> {
        async move {
            if request.messages.is_empty() {
                return Err(LlmError::Rejected("the request has no messages".into()));
            }
            let tool_call = self.tool_call(request);
            let text = if tool_call.is_some() {
                String::new()
            } else {
                self.synthesize(request)
            };
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
            let output_tokens = estimate_tokens(&text).saturating_add(
                tool_call
                    .as_ref()
                    .map_or(0, |call| estimate_tokens(&call.arguments)),
            );
            let response = Ok(LlmResponse {
                input_tokens: u32::try_from(input.div_ceil(4)).unwrap_or(u32::MAX),
                output_tokens,
                model: OFFLINE_MODEL.to_string(),
                text,
                finish_reason: if tool_call.is_some() {
                    FinishReason::ToolCalls
                } else {
                    FinishReason::Stop
                },
                tool_calls: tool_call.into_iter().collect(),
                ..Default::default()
            });
            if let Some(observer) = &self.observer {
                observer.call(&self.name, &response);
            }
            response
        }
        .boxed()
    }

    fn embed<'a>(
        &'a self,
        _caller: &'a str,
        request: &'a EmbedRequest,
    ) -> BoxFuture<'a, Result<EmbedResponse, LlmError>> {
        self.embed_now(request)
    }
}

impl OfflineClient {
    /// The embeddings this provider answers `request` with. Pure.
    pub fn embeddings(&self, request: &EmbedRequest) -> EmbedResponse {
        EmbedResponse {
            vectors: request
                .texts
                .iter()
                .map(|text| unit_vector(text, self.config.embedding_dimensions))
                .collect(),
            model: OFFLINE_MODEL.to_string(),
            input_tokens: request.estimated_input_tokens(),
        }
    }
}

impl OfflineClient {
    fn embed_now<'a>(
        &'a self,
        request: &'a EmbedRequest,
    ) -> BoxFuture<'a, Result<EmbedResponse, LlmError>> {
        async move {
            if request.texts.is_empty() {
                return Err(LlmError::Rejected("the request has no texts".into()));
            }
            let latency = Duration::from_millis(self.config.latency_ms);
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            Ok(self.embeddings(request))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{JsonSchemaSpec, Message, ToolSpec};

    fn request(content: &str) -> LlmRequest {
        LlmRequest {
            messages: vec![Message::new(Role::User, content)],
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
            ..Default::default()
        });
        let req = request("stream me");
        let streamed = std::sync::Mutex::new(String::new());
        let sink = |delta: &str| streamed.lock().unwrap().push_str(delta);
        let response = client.complete("test", &req, Some(&sink)).await.unwrap();
        assert_eq!(*streamed.lock().unwrap(), response.text);
        assert_eq!(response.model, OFFLINE_MODEL);
    }

    #[tokio::test]
    async fn empty_request_is_rejected() {
        let client = OfflineClient::default();
        let err = client
            .complete("test", &LlmRequest::default(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::Rejected(_)));
    }

    #[test]
    fn a_schema_gets_a_value_that_validates() {
        let client = OfflineClient::default();
        let schema = serde_json::json!({
            "type": "object",
            "required": ["name", "level", "tags", "class", "home"],
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string", "minLength": 3, "maxLength": 12},
                "level": {"type": "integer", "minimum": 5, "maximum": 7},
                "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
                "class": {"enum": ["mage", "rogue"]},
                "home": {"type": "object", "properties": {"city": {"type": ["string", "null"]}}},
                "alive": {"type": "boolean"},
                "pick": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 1}, {"type": "string"}]}
            }
        });
        let validator = jsonschema::validator_for(&schema).unwrap();
        for i in 0..50 {
            let mut req = request(&format!("character {i}"));
            req.json_schema = Some(JsonSchemaSpec {
                name: "character".into(),
                schema: schema.clone(),
            });
            let value: Value = serde_json::from_str(&client.synthesize(&req)).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{value}: {errors:?}");
        }
    }

    #[test]
    fn tools_are_called_once_then_answered() {
        let client = OfflineClient::default();
        let tool = |name: &str| ToolSpec {
            name: name.into(),
            description: "d".into(),
            parameters: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        };
        let mut req = request("What is the weather? Use get_weather.");
        req.tools = vec![tool("lookup"), tool("get_weather")];
        let call = client.tool_call(&req).expect("a tool call");
        assert_eq!(call.name, "get_weather", "the tool the user named");
        assert!(serde_json::from_str::<Value>(&call.arguments).unwrap()["city"].is_string());
        assert_eq!(client.tool_call(&req), Some(call.clone()), "deterministic");
        req.messages.push(Message {
            tool_calls: vec![call.clone()],
            ..Message::new(Role::Assistant, "")
        });
        req.messages.push(Message {
            tool_call_id: Some(call.id),
            ..Message::new(Role::Tool, "{\"sunny\": true}")
        });
        assert_eq!(client.tool_call(&req), None, "answered after the result");
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let client = OfflineClient::default();
        let request = EmbedRequest {
            model: None,
            texts: vec!["a".into(), "b".into(), "a".into()],
        };
        let response = client.embeddings(&request);
        assert_eq!(response.vectors.len(), 3);
        assert_eq!(response.vectors[0], response.vectors[2]);
        assert_ne!(response.vectors[0], response.vectors[1]);
        for vector in &response.vectors {
            assert_eq!(vector.len(), 256);
            let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        }
    }
}
