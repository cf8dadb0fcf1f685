//! The journal of a job's answered LLM calls: the runtime's side of "never pay twice".
//!
//! Every call a provider answers is recorded, with a hash of its request, the moment its
//! answer arrives and before the plugin sees it, whatever happens to the attempt
//! afterwards (a sibling of a `complete-all` failing, a trap, a crash). Entries are keyed
//! by a position that only grows over the job's life, so no paid answer is ever
//! overwritten.
//!
//! When the job runs again (a retry, or recovery after a crash), each call the plugin
//! issues is answered from the journal if an unused entry with the same request hash
//! exists (the n-th identical request of an attempt takes the n-th such entry), without
//! contacting the provider. Matching by request rather than by position is what lets a
//! batch whose third call failed replay its fourth and fifth: the journal has a hole
//! where the failed call was, not a point after which nothing counts.

use std::collections::{HashMap, VecDeque};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::llm::{EmbedRequest, EmbedResponse, LlmRequest, LlmResponse};

/// One answered call as the journal keeps it: a completion, or an embedding request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// SHA-256 of the request (messages, model alias, settings, stream label).
    pub request_hash: String,
    /// The provider's answer, with the tokens it was paid for. For an embedding call,
    /// only its model and input tokens.
    pub response: LlmResponse,
    /// The vectors of an embedding call (contract 0.2.0); absent for completions, and in
    /// every entry an older Kiln wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<EmbedResponse>,
}

impl JournalEntry {
    /// A completion's entry.
    pub fn completion(request_hash: String, response: LlmResponse) -> Self {
        Self {
            request_hash,
            response,
            embeddings: None,
        }
    }

    /// An embedding call's entry; `cost` carries its model and input tokens.
    pub fn embedding(request_hash: String, cost: LlmResponse, embeddings: EmbedResponse) -> Self {
        Self {
            request_hash,
            response: cost,
            embeddings: Some(embeddings),
        }
    }
}

/// Where a job's calls are journaled. The job service keeps them in the store, where
/// recording a call also adds it to the job's `usage` in the same commit; `kiln plugin
/// run` has no journal.
pub trait CallJournal: Send + Sync + 'static {
    /// The calls earlier attempts recorded, by position. Read once per attempt.
    fn recorded(&self) -> Vec<(u64, JournalEntry)>;

    /// Records an answered call at position `index` (never one already used). The plugin
    /// receives the answer only after this returns, so a crash right after never loses a
    /// call that was paid for.
    fn record(&self, index: u64, entry: JournalEntry) -> BoxFuture<'_, Result<(), String>>;
}

/// The hash that decides whether a re-run's call is the same call. Fields added to
/// [`LlmRequest`] after 0.1.0 are left out of its JSON when unset, so this hash of an
/// older request is unchanged and its journal still replays.
pub fn request_hash(request: &LlmRequest) -> String {
    let bytes = serde_json::to_vec(request).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// [`request_hash`] of an embedding request; never equal to a completion's.
pub fn embed_hash(request: &EmbedRequest) -> String {
    let bytes = serde_json::to_vec(&serde_json::json!({ "embed": request })).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// One attempt's view of the journal: the answers still unused, by request hash, and the
/// next free position for a call the provider answers.
#[derive(Debug, Default)]
pub struct Replay {
    unused: HashMap<String, VecDeque<JournalEntry>>,
    next_index: u64,
}

impl Replay {
    /// The view of what earlier attempts recorded.
    pub fn new(mut recorded: Vec<(u64, JournalEntry)>) -> Self {
        recorded.sort_by_key(|(index, _)| *index);
        let next_index = recorded.last().map_or(0, |(index, _)| index + 1);
        let mut unused: HashMap<String, VecDeque<JournalEntry>> = HashMap::new();
        for (_, entry) in recorded {
            unused
                .entry(entry.request_hash.clone())
                .or_default()
                .push_back(entry);
        }
        Self { unused, next_index }
    }

    /// The journaled answer to a request with this hash, if an unused one is left; each
    /// answer is given once per attempt.
    pub fn take(&mut self, hash: &str) -> Option<JournalEntry> {
        self.unused.get_mut(hash)?.pop_front()
    }

    /// The position where the next call answered by the provider is recorded.
    pub fn claim_index(&mut self) -> u64 {
        let index = self.next_index;
        self.next_index += 1;
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Message, Role};

    fn request(text: &str) -> LlmRequest {
        LlmRequest {
            messages: vec![Message::new(Role::User, text)],
            ..Default::default()
        }
    }

    fn entry(text: &str, answer: &str) -> JournalEntry {
        JournalEntry::completion(
            request_hash(&request(text)),
            LlmResponse {
                text: answer.into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn the_hash_changes_with_any_part_of_the_request() {
        let base = request("hello");
        let mut other_label = base.clone();
        other_label.stream_label = Some("x".into());
        let other_text = request("hello!");
        assert_eq!(request_hash(&base), request_hash(&base.clone()));
        assert_ne!(request_hash(&base), request_hash(&other_label));
        assert_ne!(request_hash(&base), request_hash(&other_text));
    }

    #[test]
    fn a_hole_in_the_journal_does_not_end_the_replay() {
        // Calls 0, 1, 3 and 4 were answered; call 2 failed.
        let mut replay = Replay::new(vec![
            (4, entry("e", "E")),
            (0, entry("a", "A")),
            (1, entry("b", "B")),
            (3, entry("d", "D")),
        ]);
        let hash = |text| request_hash(&request(text));
        assert_eq!(replay.take(&hash("a")).unwrap().response.text, "A");
        assert_eq!(replay.take(&hash("b")).unwrap().response.text, "B");
        assert!(
            replay.take(&hash("c")).is_none(),
            "the failed call is asked again"
        );
        assert_eq!(replay.take(&hash("d")).unwrap().response.text, "D");
        assert_eq!(replay.take(&hash("e")).unwrap().response.text, "E");
        assert_eq!(
            replay.claim_index(),
            5,
            "new answers go after every recorded one"
        );
        assert_eq!(replay.claim_index(), 6);
    }

    #[test]
    fn identical_requests_take_their_answers_in_order_and_once() {
        let mut replay = Replay::new(vec![
            (0, entry("same", "first")),
            (1, entry("same", "second")),
        ]);
        let hash = request_hash(&request("same"));
        assert_eq!(replay.take(&hash).unwrap().response.text, "first");
        assert_eq!(replay.take(&hash).unwrap().response.text, "second");
        assert!(
            replay.take(&hash).is_none(),
            "a third identical call is paid for"
        );
    }

    #[test]
    fn an_empty_journal_replays_nothing_and_starts_at_zero() {
        let mut replay = Replay::new(Vec::new());
        assert!(replay.take("anything").is_none());
        assert_eq!(replay.claim_index(), 0);
    }

    #[test]
    fn a_request_without_the_new_fields_hashes_as_before() {
        // The JSON a 0.1.0-era Kiln hashed for this request, byte for byte.
        let old = r#"{"messages":[{"role":"user","content":"hello"}],"model":null,"max_tokens":null,"temperature":null,"json_output":false,"stream_label":null}"#;
        assert_eq!(
            request_hash(&request("hello")),
            hex::encode(Sha256::digest(old.as_bytes()))
        );
        let entry: JournalEntry = serde_json::from_str(
            r#"{"request_hash":"h","response":{"text":"t","model":"m","input_tokens":1,"output_tokens":2}}"#,
        )
        .expect("an entry an older Kiln wrote");
        assert_eq!(entry.response.output_tokens, 2);
        assert!(entry.embeddings.is_none());
    }
}
