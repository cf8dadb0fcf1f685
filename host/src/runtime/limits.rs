//! The sandbox limits of one job, in one place, with their defaults.
//!
//! Operators set them for every job type in `[limits]` and per job type in
//! `[limits.types.NAME]`; anything left out falls back to the defaults below. Each limit,
//! when hit, fails only the job that hit it, with its own `error.kind`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits applied to one job attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest linear memory the plugin may grow to, in MiB. Default 256: generous for
    /// text work, small enough that a runaway plugin cannot take the host's memory.
    /// Hitting it fails the job with `memory_limit`.
    pub memory_mib: u64,
    /// Wall-clock budget of one attempt, in seconds, when neither the job nor the plugin's
    /// `describe` names one. Default 300. Hitting it fails the job with `timeout`.
    pub default_timeout_secs: u64,
    /// The largest timeout a client may ask for with `timeout_s`, and the cap on the
    /// plugin's own default. Default 3600.
    pub max_timeout_secs: u64,
    /// Largest result (and largest single partial), in bytes of JSON. Default 8 MiB.
    /// Hitting it fails the job with `result_too_large`.
    pub max_result_bytes: usize,
    /// Progress reports and partials a plugin may emit per second (a token bucket of this
    /// size, refilled every second). Default 500. Hitting it fails the job with
    /// `event_limit`: a plugin that floods events would otherwise flood every client.
    pub max_events_per_second: u32,
    /// LLM calls one attempt may make. Default 500. Hitting it fails the job with
    /// `llm_limit`, which bounds what a looping plugin can spend.
    pub max_llm_calls: u32,
    /// Input plus output tokens one attempt may use. Default 2,000,000. Hitting it fails
    /// the job with `llm_limit`.
    pub max_llm_tokens: u64,
    /// Log lines a plugin may write per second (a token bucket of this size, refilled
    /// every second). Default 100. Lines beyond it are dropped and counted, not written:
    /// a plugin that logs in a loop must not fill the server's disk.
    pub max_log_lines_per_second: u32,
    /// Bytes of log lines one attempt may write in all. Default 1 MiB. Lines beyond it are
    /// dropped and counted; the job goes on.
    pub max_log_bytes: u64,
    /// Bytes of artifacts (output files) one attempt may write, all artifacts together.
    /// Default 64 MiB. Passing it fails the job with `artifact_limit`.
    pub artifact_limit: u64,
    /// Answers with tool calls one attempt may get: the rounds of a tool-calling loop.
    /// Default 16. Passing it fails the job with `llm_limit`, so a model and a plugin
    /// that keep calling tools cannot loop until the token budget is gone.
    pub max_tool_rounds: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mib: 256,
            default_timeout_secs: 300,
            max_timeout_secs: 3600,
            max_result_bytes: 8 * 1024 * 1024,
            max_events_per_second: 500,
            max_llm_calls: 500,
            max_llm_tokens: 2_000_000,
            max_log_lines_per_second: 100,
            max_log_bytes: 1024 * 1024,
            artifact_limit: 64 * 1024 * 1024,
            max_tool_rounds: 16,
        }
    }
}

/// Per-job-type overrides of [`Limits`]; a field left out keeps the global value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsOverride {
    /// See [`Limits::memory_mib`].
    pub memory_mib: Option<u64>,
    /// See [`Limits::default_timeout_secs`].
    pub default_timeout_secs: Option<u64>,
    /// See [`Limits::max_timeout_secs`].
    pub max_timeout_secs: Option<u64>,
    /// See [`Limits::max_result_bytes`].
    pub max_result_bytes: Option<usize>,
    /// See [`Limits::max_events_per_second`].
    pub max_events_per_second: Option<u32>,
    /// See [`Limits::max_llm_calls`].
    pub max_llm_calls: Option<u32>,
    /// See [`Limits::max_llm_tokens`].
    pub max_llm_tokens: Option<u64>,
    /// See [`Limits::max_log_lines_per_second`].
    pub max_log_lines_per_second: Option<u32>,
    /// See [`Limits::max_log_bytes`].
    pub max_log_bytes: Option<u64>,
    /// See [`Limits::artifact_limit`].
    pub artifact_limit: Option<u64>,
    /// See [`Limits::max_tool_rounds`].
    pub max_tool_rounds: Option<u32>,
}

impl Limits {
    /// These limits with `over`'s fields applied on top.
    pub fn with(&self, over: &LimitsOverride) -> Limits {
        Limits {
            memory_mib: over.memory_mib.unwrap_or(self.memory_mib),
            default_timeout_secs: over
                .default_timeout_secs
                .unwrap_or(self.default_timeout_secs),
            max_timeout_secs: over.max_timeout_secs.unwrap_or(self.max_timeout_secs),
            max_result_bytes: over.max_result_bytes.unwrap_or(self.max_result_bytes),
            max_events_per_second: over
                .max_events_per_second
                .unwrap_or(self.max_events_per_second),
            max_llm_calls: over.max_llm_calls.unwrap_or(self.max_llm_calls),
            max_llm_tokens: over.max_llm_tokens.unwrap_or(self.max_llm_tokens),
            max_log_lines_per_second: over
                .max_log_lines_per_second
                .unwrap_or(self.max_log_lines_per_second),
            max_log_bytes: over.max_log_bytes.unwrap_or(self.max_log_bytes),
            artifact_limit: over.artifact_limit.unwrap_or(self.artifact_limit),
            max_tool_rounds: over.max_tool_rounds.unwrap_or(self.max_tool_rounds),
        }
    }

    /// Memory cap in bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    /// The timeout of one attempt: the job's own request if it gave one, else the plugin's
    /// default if it gave one, else [`Limits::default_timeout_secs`]; never above
    /// [`Limits::max_timeout_secs`] and never zero.
    pub fn timeout(&self, requested_secs: Option<u64>, plugin_default_secs: u32) -> Duration {
        let plugin_default = (plugin_default_secs > 0).then_some(u64::from(plugin_default_secs));
        let secs = requested_secs
            .or(plugin_default)
            .unwrap_or(self.default_timeout_secs)
            .clamp(1, self.max_timeout_secs.max(1));
        Duration::from_secs(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_replaces_only_given_fields() {
        let base = Limits::default();
        let merged = base.with(&LimitsOverride {
            memory_mib: Some(32),
            ..Default::default()
        });
        assert_eq!(merged.memory_mib, 32);
        assert_eq!(merged.max_llm_calls, base.max_llm_calls);
    }

    #[test]
    fn timeout_prefers_job_then_plugin_then_default_and_is_capped() {
        let limits = Limits {
            default_timeout_secs: 300,
            max_timeout_secs: 600,
            ..Default::default()
        };
        assert_eq!(limits.timeout(Some(10), 60), Duration::from_secs(10));
        assert_eq!(limits.timeout(None, 60), Duration::from_secs(60));
        assert_eq!(limits.timeout(None, 0), Duration::from_secs(300));
        assert_eq!(limits.timeout(Some(99_999), 0), Duration::from_secs(600));
        assert_eq!(limits.timeout(Some(0), 0), Duration::from_secs(1));
    }
}
