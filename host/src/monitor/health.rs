//! The health of a queue, as `GET /v1/queues` and `kiln_queue_health` report it.
//!
//! # The rule
//!
//! Checked in this order; the first that matches decides:
//!
//! 1. **`disabled`**: no loaded plugin has a job type that runs in this queue (its jobs
//!    can only fail `unknown_type`, and no new ones can be submitted).
//! 2. **`critical`**, when either
//!    - the queue is at its limit (`running >= limit`) and its oldest ready job has waited
//!      at least `critical_wait_secs` (default 300), or
//!    - at least `min_finished` jobs (default 5) were decided (completed or failed for
//!      good) in the last 5 minutes and fewer than `critical_success_rate` (default 0.5)
//!      of them completed.
//! 3. **`warning`**, when either
//!    - its oldest ready job has waited at least `warning_wait_secs` (default 30), or
//!    - at least `min_finished` jobs were decided in the last 5 minutes and fewer than
//!      `warning_success_rate` (default 0.9) of them completed.
//! 4. **`healthy`** otherwise.
//!
//! A "ready" job is queued and due (its `run_at`, if any, has passed): jobs scheduled for
//! later, or waiting out a retry backoff, do not count as waiting. The thresholds are the
//! `[health]` table of the config.

use serde::{Deserialize, Serialize};

/// The thresholds of the rule (the `[health]` config table).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthThresholds {
    /// A ready job waiting this long makes the queue `warning`. Default 30.
    pub warning_wait_secs: u64,
    /// A ready job waiting this long in a queue at its limit makes it `critical`.
    /// Default 300.
    pub critical_wait_secs: u64,
    /// Recent success rate below this is `warning`. Default 0.9.
    pub warning_success_rate: f64,
    /// Recent success rate below this is `critical`. Default 0.5.
    pub critical_success_rate: f64,
    /// Jobs decided in the window before the success rate counts. Default 5.
    pub min_finished: u64,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            warning_wait_secs: 30,
            critical_wait_secs: 300,
            warning_success_rate: 0.9,
            critical_success_rate: 0.5,
            min_finished: 5,
        }
    }
}

/// A queue's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Nothing to look at.
    Healthy,
    /// Jobs wait long, or too many fail.
    Warning,
    /// Jobs wait very long in a full queue, or most fail.
    Critical,
    /// No loaded plugin runs in this queue.
    Disabled,
}

impl Health {
    /// Every value, for `kiln_queue_health`.
    pub const ALL: [Health; 4] = [
        Health::Healthy,
        Health::Warning,
        Health::Critical,
        Health::Disabled,
    ];

    /// The JSON and label text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Disabled => "disabled",
        }
    }
}

/// What the rule looks at.
#[derive(Clone, Copy, Debug, Default)]
pub struct HealthInput {
    /// Some loaded plugin's job type runs in this queue.
    pub has_plugin: bool,
    /// Jobs running.
    pub running: usize,
    /// Max running at once.
    pub limit: usize,
    /// How long the oldest ready job has waited, ms.
    pub oldest_wait_ms: Option<u64>,
    /// Jobs completed in the window.
    pub recent_completed: u64,
    /// Jobs failed for good in the window.
    pub recent_failed: u64,
}

impl HealthThresholds {
    /// Applies the rule (see the module docs); returns the health and why, one sentence
    /// per matching condition of the deciding level (none when healthy).
    pub fn judge(&self, input: &HealthInput) -> (Health, Vec<String>) {
        if !input.has_plugin {
            return (
                Health::Disabled,
                vec!["no loaded plugin runs in this queue".into()],
            );
        }
        let wait_s = input.oldest_wait_ms.map(|ms| ms / 1000);
        let decided = input.recent_completed + input.recent_failed;
        let rate = (decided >= self.min_finished.max(1))
            .then(|| input.recent_completed as f64 / decided as f64);
        let mut critical = Vec::new();
        if input.running >= input.limit
            && let Some(wait) = wait_s.filter(|w| *w >= self.critical_wait_secs)
        {
            critical.push(format!(
                "the queue is at its limit ({}) and a job has waited {wait}s (critical at {}s)",
                input.limit, self.critical_wait_secs
            ));
        }
        if let Some(rate) = rate.filter(|r| *r < self.critical_success_rate) {
            critical.push(success_reason(rate, decided, self.critical_success_rate));
        }
        if !critical.is_empty() {
            return (Health::Critical, critical);
        }
        let mut warning = Vec::new();
        if let Some(wait) = wait_s.filter(|w| *w >= self.warning_wait_secs) {
            warning.push(format!(
                "a job has waited {wait}s (warning at {}s)",
                self.warning_wait_secs
            ));
        }
        if let Some(rate) = rate.filter(|r| *r < self.warning_success_rate) {
            warning.push(success_reason(rate, decided, self.warning_success_rate));
        }
        if !warning.is_empty() {
            return (Health::Warning, warning);
        }
        (Health::Healthy, Vec::new())
    }
}

fn success_reason(rate: f64, decided: u64, threshold: f64) -> String {
    format!(
        "{:.0}% of the {decided} jobs decided in the last 5 minutes completed (below {:.0}%)",
        rate * 100.0,
        threshold * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> HealthInput {
        HealthInput {
            has_plugin: true,
            running: 1,
            limit: 2,
            ..HealthInput::default()
        }
    }

    #[test]
    fn each_level_of_the_rule() {
        let t = HealthThresholds::default();
        assert_eq!(t.judge(&input()).0, Health::Healthy);
        let disabled = HealthInput {
            has_plugin: false,
            ..input()
        };
        assert_eq!(t.judge(&disabled).0, Health::Disabled);
        // A long wait in a queue below its limit is only a warning...
        let waiting = HealthInput {
            oldest_wait_ms: Some(400_000),
            ..input()
        };
        assert_eq!(t.judge(&waiting).0, Health::Warning);
        // ...and critical once the queue is full.
        let full = HealthInput {
            running: 2,
            ..waiting
        };
        let (health, why) = t.judge(&full);
        assert_eq!(health, Health::Critical);
        assert!(why[0].contains("at its limit"), "{why:?}");
        let short = HealthInput {
            oldest_wait_ms: Some(29_999),
            ..full
        };
        assert_eq!(t.judge(&short).0, Health::Healthy);
    }

    #[test]
    fn success_rate_needs_enough_jobs() {
        let t = HealthThresholds::default();
        let few = HealthInput {
            recent_completed: 0,
            recent_failed: 4,
            ..input()
        };
        assert_eq!(t.judge(&few).0, Health::Healthy);
        let many = HealthInput {
            recent_failed: 5,
            ..few
        };
        assert_eq!(t.judge(&many).0, Health::Critical);
        let some = HealthInput {
            recent_completed: 8,
            recent_failed: 2,
            ..input()
        };
        assert_eq!(t.judge(&some).0, Health::Warning);
        let good = HealthInput {
            recent_completed: 19,
            recent_failed: 1,
            ..input()
        };
        assert_eq!(t.judge(&good).0, Health::Healthy);
    }
}
