//! What a running plugin tells the outside world, and the trait that carries it there.

use serde_json::Value;

/// One thing a plugin reported while running.
#[derive(Clone, Debug, PartialEq)]
pub enum PluginEvent {
    /// Overall progress of the attempt (already clamped: never lower than the previous
    /// report, never above 100).
    Progress {
        /// 0 to 100.
        percent: u8,
        /// The stage, for humans.
        message: String,
    },
    /// One finished item.
    Partial {
        /// The item's label, e.g. `character-2`.
        name: String,
        /// The item, as JSON.
        data: Value,
    },
    /// An LLM call answered from the job's journal instead of a provider.
    Replayed {
        /// The call's position in the attempt.
        index: u64,
        /// Its stream label, if it had one.
        label: Option<String>,
    },
    /// A streamed piece of LLM output.
    Token {
        /// The stream label the plugin chose.
        label: String,
        /// The new text.
        delta: String,
    },
    /// The text streamed so far under `label` is void: the call failed after streaming
    /// part of its answer, so clients showing it should clear it (a later call, or the
    /// next attempt, streams the label again from the start).
    TokenReset {
        /// The stream label whose text is void.
        label: String,
    },
}

/// Receives a running job's events. The job service writes them to the job's event log;
/// `kiln plugin run` prints them. Emitting must not block: the plugin waits on it.
pub trait EventSink: Send + Sync + 'static {
    /// Take one event.
    fn emit(&self, event: PluginEvent);
}

/// Drops every event: for `describe` calls and tests that do not look.
pub struct DiscardEvents;

impl EventSink for DiscardEvents {
    fn emit(&self, _event: PluginEvent) {}
}
