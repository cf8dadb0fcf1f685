//! The journal of a job's finished LLM calls: the runtime's side of "never pay twice".
//!
//! Every answered call is recorded under its position in the attempt (0, 1, 2, … in the
//! order the plugin issues them; a `complete-all` takes consecutive positions in list
//! order) with a hash of the request, before the plugin sees the answer. When the job runs
//! again (a retry, or recovery after a crash), the plugin issues the same calls in the same
//! order, and each call whose position and hash match the journal is answered from it
//! without contacting the provider. The first mismatch ends the replay: that call and every
//! later one go to the provider (and overwrite the journal from there on).

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::llm::{LlmRequest, LlmResponse};

/// One finished call as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// SHA-256 of the request (messages, model alias, settings, stream label).
    pub request_hash: String,
    /// The provider's answer.
    pub response: LlmResponse,
}

/// Where a job's calls are journaled. The job service keeps them in redb; `kiln plugin
/// run` has none.
pub trait CallJournal: Send + Sync + 'static {
    /// The calls earlier attempts recorded, by position. Read once per attempt.
    fn recorded(&self) -> Vec<(u64, JournalEntry)>;

    /// Records call `index`. The plugin receives the answer only after this returns, so a
    /// crash right after never loses a call that was paid for.
    fn record(&self, index: u64, entry: JournalEntry) -> BoxFuture<'_, Result<(), String>>;
}

/// The hash that decides whether a re-run's call is the same call.
pub fn request_hash(request: &LlmRequest) -> String {
    let bytes = serde_json::to_vec(request).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Message, Role};

    #[test]
    fn the_hash_changes_with_any_part_of_the_request() {
        let base = LlmRequest {
            messages: vec![Message {
                role: Role::User,
                content: "hello".into(),
            }],
            ..Default::default()
        };
        let mut other_label = base.clone();
        other_label.stream_label = Some("x".into());
        let mut other_text = base.clone();
        other_text.messages[0].content = "hello!".into();
        assert_eq!(request_hash(&base), request_hash(&base.clone()));
        assert_ne!(request_hash(&base), request_hash(&other_label));
        assert_ne!(request_hash(&base), request_hash(&other_text));
    }
}
