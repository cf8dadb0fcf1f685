//! The job service's settings, as `config` hands them over.

use std::collections::HashMap;
use std::time::Duration;

use crate::runtime::{Limits, LimitsOverride};

/// How jobs are queued, retried, limited and expired.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// Where jobs are stored, as `kiln doctor` shows it (a database URL with its password
    /// masked).
    pub storage: String,
    /// Sandbox limits for every job type.
    pub limits: Limits,
    /// Per-type overrides of `limits`.
    pub type_limits: HashMap<String, LimitsOverride>,
    /// Job type -> queue name; a type not listed gets a queue of its own name.
    pub type_queues: HashMap<String, String>,
    /// Queue name -> max jobs running at once; a queue not listed gets
    /// `default_max_concurrent`.
    pub queue_limits: HashMap<String, usize>,
    /// Queue name -> max jobs running at once with one concurrency key; a queue not
    /// listed has no such limit.
    pub queue_key_limits: HashMap<String, usize>,
    /// Running jobs per queue when not configured. Default 16.
    pub default_max_concurrent: usize,
    /// Attempts per job when the client does not say. Default 3.
    pub default_max_attempts: u32,
    /// The most attempts a client may ask for. Default 20.
    pub max_attempts_cap: u32,
    /// Queued jobs (all queues) beyond which submits get `429`. Default 100,000.
    pub max_queued: usize,
    /// Most items of one batch (`POST /v1/batches`). Default 10,000.
    pub max_batch_items: usize,
    /// Most jobs one job may depend on (`depends_on`). Default 1,000.
    pub max_dependencies: usize,
    /// The config file's schedules (`[schedules.NAME]`).
    pub schedules: Vec<super::ScheduleSpec>,
    /// Most schedules (the config's and the API's). Default 1,000.
    pub max_schedules: usize,
    /// First retry backoff; doubles per attempt, with ±25% jitter. Default 2 s.
    pub retry_base: Duration,
    /// Longest retry backoff. Default 5 min.
    pub retry_max: Duration,
    /// How long finished jobs are kept. Default 24 h.
    pub job_ttl: Duration,
    /// How often the sweeper looks for expired jobs. Default 60 s.
    pub sweep_interval: Duration,
    /// How long running jobs get to finish at shutdown before they are re-queued.
    /// Default 30 s.
    pub shutdown_grace: Duration,
    /// Largest upload (`POST /v1/files`), bytes. Default 64 MiB.
    pub max_file_bytes: u64,
    /// How long uploads are kept. Default 24 h.
    pub file_ttl: Duration,
    /// Webhook secrets, default URLs and limits.
    pub webhooks: super::WebhookSettings,
    /// The address this node's API listens on, as `GET /v1/nodes` shows it (set by the
    /// server once it has bound its port).
    pub node_address: String,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            storage: String::new(),
            limits: Limits::default(),
            type_limits: HashMap::new(),
            type_queues: HashMap::new(),
            queue_limits: HashMap::new(),
            queue_key_limits: HashMap::new(),
            default_max_concurrent: 16,
            default_max_attempts: 3,
            max_attempts_cap: 20,
            max_queued: 100_000,
            max_batch_items: 10_000,
            max_dependencies: 1_000,
            schedules: Vec::new(),
            max_schedules: 1_000,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            job_ttl: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            max_file_bytes: 64 * 1024 * 1024,
            file_ttl: Duration::from_secs(24 * 3600),
            webhooks: Default::default(),
            node_address: String::new(),
        }
    }
}

impl ServiceSettings {
    /// The queue a job type waits in.
    pub fn queue_of(&self, job_type: &str) -> String {
        self.type_queues
            .get(job_type)
            .cloned()
            .unwrap_or_else(|| job_type.to_string())
    }

    /// Max running jobs of a queue.
    pub fn limit_of(&self, queue: &str) -> usize {
        self.queue_limits
            .get(queue)
            .copied()
            .unwrap_or(self.default_max_concurrent)
            .max(1)
    }

    /// A queue's name with its limits, as the in-memory queues take them.
    pub fn queue_limits<'a>(&self, queue: &'a str) -> (&'a str, usize, Option<usize>) {
        (queue, self.limit_of(queue), self.key_limit_of(queue))
    }

    /// Max running jobs of a queue with one concurrency key, if limited.
    pub fn key_limit_of(&self, queue: &str) -> Option<usize> {
        self.queue_key_limits.get(queue).map(|&max| max.max(1))
    }

    /// The sandbox limits of a job type.
    pub fn limits_of(&self, job_type: &str) -> Limits {
        match self.type_limits.get(job_type) {
            Some(over) => self.limits.with(over),
            None => self.limits.clone(),
        }
    }

    /// Backoff before attempt `next_attempt` (2 for the first retry): exponential from
    /// `retry_base`, capped at `retry_max`, with ±25% jitter so failed jobs do not all
    /// come back at once.
    pub fn backoff(&self, next_attempt: u32) -> Duration {
        let exponent = next_attempt.saturating_sub(2).min(30);
        let base = self.retry_base.saturating_mul(1u32 << exponent);
        let capped = base.min(self.retry_max);
        capped.mul_f64(0.75 + fastrand::f64() * 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let settings = ServiceSettings {
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(10),
            ..Default::default()
        };
        for _ in 0..50 {
            let first = settings.backoff(2);
            assert!(first >= Duration::from_millis(1500) && first <= Duration::from_millis(2500));
            let third = settings.backoff(4);
            assert!(third >= Duration::from_secs(6) && third <= Duration::from_secs(10));
            assert!(settings.backoff(40) <= Duration::from_millis(12_500));
        }
    }
}
