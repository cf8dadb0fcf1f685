//! What operators watch: the Prometheus metrics of `GET /metrics`, the recent-window
//! figures and the health rule of `GET /v1/queues`.
//!
//! One [`Metrics`] per server. The scheduler records attempts on it directly; each LLM
//! provider is given it as its [`crate::llm::CallObserver`] when it is built, so its
//! calls are counted wherever they run (providers built outside a server, as by `kiln
//! plugin run`, have none). Figures that the store or the scheduler already know (jobs by
//! status, queue depth, SSE streams) are read when scraped, never kept twice.
//!
//! # Metric names
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `kiln_jobs` | gauge | `type`, `status` | stored jobs (read from the store when scraped) |
//! | `kiln_queue_depth` | gauge | `queue` | jobs waiting (ready or scheduled) |
//! | `kiln_queue_running` | gauge | `queue` | jobs running |
//! | `kiln_queue_limit` | gauge | `queue` | max running at once |
//! | `kiln_queue_oldest_wait_seconds` | gauge | `queue` | wait of the oldest ready job |
//! | `kiln_queue_health` | gauge | `queue`, `health` | 1 for the queue's current health, else 0 |
//! | `kiln_queue_wait_seconds` | histogram | `queue` | queue wait of each started attempt |
//! | `kiln_attempt_run_seconds` | histogram | `queue` | run time of each finished attempt |
//! | `kiln_attempts_finished_total` | counter | `queue`, `type`, `outcome` | attempts ended: `completed`, `failed`, `retried`, `cancelled`, `interrupted` |
//! | `kiln_llm_calls_total` | counter | `provider` | calls sent to a provider, answered or failed |
//! | `kiln_llm_input_tokens_total` | counter | `provider` | prompt tokens of answered calls |
//! | `kiln_llm_output_tokens_total` | counter | `provider` | output tokens of answered calls |
//! | `kiln_llm_errors_total` | counter | `provider`, `kind` | failed calls: `rate_limited`, `timeout`, `unavailable`, `rejected` |
//! | `kiln_llm_http_responses_total` | counter | `provider`, `status` | every HTTP answer of a provider by status code, those absorbed by retries included (`none`: the connection failed) |
//! | `kiln_journal_replays_total` | counter | `type` | LLM calls answered from a job's journal instead of a provider |
//! | `kiln_sse_subscribers` | gauge | | open SSE streams (`/v1/jobs/{id}/events` and `/v1/events`) |
//! | `kiln_plugins_loaded` | gauge | | job types loaded |

mod health;
mod window;

pub use health::{Health, HealthInput, HealthThresholds};
pub use window::{Outcome, RecentWindow, WINDOW_MS, WindowSummary};

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::llm::{LlmError, LlmResponse};

/// Labels: `[(name, value); N]`.
type Labels<const N: usize> = [(&'static str, String); N];
type HistogramFamily = Family<Labels<1>, Histogram, fn() -> Histogram>;

/// Queue waits from 1 ms to an hour, seconds.
const WAIT_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Attempt run times from 10 ms to an hour, seconds.
const RUN_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

fn wait_histogram() -> Histogram {
    Histogram::new(WAIT_BUCKETS)
}

fn run_histogram() -> Histogram {
    Histogram::new(RUN_BUCKETS)
}

impl crate::llm::CallObserver for Metrics {
    fn call(&self, provider: &str, result: &Result<LlmResponse, LlmError>) {
        self.record_llm_call(provider, result);
    }

    fn http_answer(&self, provider: &str, status: Option<u16>) {
        self.record_llm_http_answer(provider, status);
    }
}

/// What is read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `(type, status, count)` of stored jobs.
    pub jobs: Vec<(String, String, u64)>,
    /// Per queue.
    pub queues: Vec<QueueSnapshot>,
    /// Open SSE streams.
    pub sse_subscribers: u64,
    /// Job types loaded.
    pub plugins_loaded: u64,
}

/// One queue's scrape-time figures.
#[derive(Clone, Debug)]
pub struct QueueSnapshot {
    /// Queue name.
    pub name: String,
    /// Waiting.
    pub depth: u64,
    /// Running.
    pub running: u64,
    /// Limit.
    pub limit: u64,
    /// Oldest ready job's wait, ms.
    pub oldest_wait_ms: Option<u64>,
    /// Current health.
    pub health: Health,
}

/// The metrics of one job service.
pub struct Metrics {
    registry: Registry,
    /// Held while scrape-time gauges are refreshed and the registry encoded.
    scrape: Mutex<()>,
    jobs: Family<Labels<2>, Gauge>,
    queue_depth: Family<Labels<1>, Gauge>,
    queue_running: Family<Labels<1>, Gauge>,
    queue_limit: Family<Labels<1>, Gauge>,
    queue_oldest_wait: Family<Labels<1>, Gauge<f64, AtomicU64>>,
    queue_health: Family<Labels<2>, Gauge>,
    sse_subscribers: Gauge,
    plugins_loaded: Gauge,
    queue_wait: HistogramFamily,
    run_time: HistogramFamily,
    attempts: Family<Labels<3>, Counter>,
    llm_calls: Family<Labels<1>, Counter>,
    llm_input_tokens: Family<Labels<1>, Counter>,
    llm_output_tokens: Family<Labels<1>, Counter>,
    llm_errors: Family<Labels<2>, Counter>,
    llm_http_answers: Family<Labels<2>, Counter>,
    replays: Family<Labels<1>, Counter>,
    webhook_sends: Family<Labels<1>, Counter>,
    /// Recent figures per queue, for `/v1/queues`.
    windows: Mutex<HashMap<String, RecentWindow>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            scrape: Mutex::new(()),
            jobs: Family::default(),
            queue_depth: Family::default(),
            queue_running: Family::default(),
            queue_limit: Family::default(),
            queue_oldest_wait: Family::default(),
            queue_health: Family::default(),
            sse_subscribers: Gauge::default(),
            plugins_loaded: Gauge::default(),
            queue_wait: Family::new_with_constructor(wait_histogram),
            run_time: Family::new_with_constructor(run_histogram),
            attempts: Family::default(),
            llm_calls: Family::default(),
            llm_input_tokens: Family::default(),
            llm_output_tokens: Family::default(),
            llm_errors: Family::default(),
            llm_http_answers: Family::default(),
            replays: Family::default(),
            webhook_sends: Family::default(),
            windows: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "kiln_jobs",
            "Stored jobs by type and status",
            metrics.jobs.clone(),
        );
        r.register(
            "kiln_queue_depth",
            "Jobs waiting in the queue (ready or scheduled)",
            metrics.queue_depth.clone(),
        );
        r.register(
            "kiln_queue_running",
            "Jobs of the queue running",
            metrics.queue_running.clone(),
        );
        r.register(
            "kiln_queue_limit",
            "Jobs of the queue allowed to run at once",
            metrics.queue_limit.clone(),
        );
        r.register(
            "kiln_queue_oldest_wait_seconds",
            "How long the queue's oldest ready job has waited",
            metrics.queue_oldest_wait.clone(),
        );
        r.register(
            "kiln_queue_health",
            "1 for the queue's current health (healthy, warning, critical, disabled), else 0",
            metrics.queue_health.clone(),
        );
        r.register(
            "kiln_queue_wait_seconds",
            "Time from queued (or due) to started, per attempt",
            metrics.queue_wait.clone(),
        );
        r.register(
            "kiln_attempt_run_seconds",
            "Run time of finished attempts",
            metrics.run_time.clone(),
        );
        r.register(
            "kiln_attempts_finished",
            "Attempts ended, by outcome (completed, failed, retried, cancelled, interrupted)",
            metrics.attempts.clone(),
        );
        r.register(
            "kiln_llm_calls",
            "LLM calls sent to a provider, answered or failed",
            metrics.llm_calls.clone(),
        );
        r.register(
            "kiln_llm_input_tokens",
            "Prompt tokens of answered LLM calls",
            metrics.llm_input_tokens.clone(),
        );
        r.register(
            "kiln_llm_output_tokens",
            "Output tokens of answered LLM calls",
            metrics.llm_output_tokens.clone(),
        );
        r.register(
            "kiln_llm_errors",
            "Failed LLM calls by kind (rate_limited, timeout, unavailable, rejected)",
            metrics.llm_errors.clone(),
        );
        r.register(
            "kiln_llm_http_responses",
            "Every HTTP answer of a provider by status code, retried ones included \
             (status \"none\": the connection failed)",
            metrics.llm_http_answers.clone(),
        );
        r.register(
            "kiln_journal_replays",
            "LLM calls answered from a job's journal instead of a provider",
            metrics.replays.clone(),
        );
        r.register(
            "kiln_webhook_sends",
            "Webhook sends by outcome: delivered (a 2xx), failed (retried later) or \
             gave_up (the last failure past the retry window)",
            metrics.webhook_sends.clone(),
        );
        r.register(
            "kiln_sse_subscribers",
            "Open SSE streams",
            metrics.sse_subscribers.clone(),
        );
        r.register(
            "kiln_plugins_loaded",
            "Job types loaded",
            metrics.plugins_loaded.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// A webhook send ended with `outcome` (`delivered`, `failed` or `gave_up`).
    pub fn webhook_sent(&self, outcome: &'static str) {
        self.webhook_sends
            .get_or_create(&[("outcome", outcome.to_string())])
            .inc();
    }

    /// An attempt of a job in `queue` started after waiting `queue_ms`.
    pub fn attempt_started(&self, queue: &str, queue_ms: u64, now_ms: u64) {
        self.queue_wait
            .get_or_create(&[("queue", queue.to_string())])
            .observe(queue_ms as f64 / 1000.0);
        self.window(queue, |w| w.started(now_ms, queue_ms));
    }

    /// An attempt of a `job_type` job in `queue` ended with `outcome` after `run_ms`,
    /// having answered `replayed` LLM calls from the journal.
    pub fn attempt_finished(
        &self,
        (queue, job_type): (&str, &str),
        outcome: Outcome,
        run_ms: u64,
        replayed: u64,
        now_ms: u64,
    ) {
        self.run_time
            .get_or_create(&[("queue", queue.to_string())])
            .observe(run_ms as f64 / 1000.0);
        self.attempts
            .get_or_create(&[
                ("queue", queue.to_string()),
                ("type", job_type.to_string()),
                ("outcome", outcome.as_str().to_string()),
            ])
            .inc();
        let replays = self
            .replays
            .get_or_create(&[("type", job_type.to_string())]);
        replays.inc_by(replayed);
        self.window(queue, |w| w.finished(now_ms, outcome, run_ms));
    }

    fn window(&self, queue: &str, record: impl FnOnce(&mut RecentWindow)) {
        let mut windows = self.windows.lock().expect("windows lock");
        match windows.get_mut(queue) {
            Some(window) => record(window),
            None => record(windows.entry(queue.to_string()).or_default()),
        }
    }

    /// The recent-window totals of `queue` at `now_ms`.
    pub fn recent(&self, queue: &str, now_ms: u64) -> WindowSummary {
        self.windows
            .lock()
            .expect("windows lock")
            .get(queue)
            .map(|w| w.summary(now_ms))
            .unwrap_or_default()
    }

    fn record_llm_http_answer(&self, provider: &str, status: Option<u16>) {
        let status = status.map_or_else(|| "none".to_string(), |code| code.to_string());
        self.llm_http_answers
            .get_or_create(&[("provider", provider.to_string()), ("status", status)])
            .inc();
    }

    fn record_llm_call(&self, provider: &str, result: &Result<LlmResponse, LlmError>) {
        let label = [("provider", provider.to_string())];
        self.llm_calls.get_or_create(&label).inc();
        match result {
            Ok(response) => {
                self.llm_input_tokens
                    .get_or_create(&label)
                    .inc_by(u64::from(response.input_tokens));
                self.llm_output_tokens
                    .get_or_create(&label)
                    .inc_by(u64::from(response.output_tokens));
            }
            Err(error) => {
                let kind = match error {
                    LlmError::RateLimited(_) => "rate_limited",
                    LlmError::Timeout(_) => "timeout",
                    LlmError::Unavailable(_) => "unavailable",
                    LlmError::Rejected(_) => "rejected",
                };
                let [provider] = label;
                self.llm_errors
                    .get_or_create(&[provider, ("kind", kind.to_string())])
                    .inc();
            }
        }
    }

    /// Refreshes the scrape-time gauges from `snapshot` and renders every metric in the
    /// Prometheus text format (version 0.0.4).
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let _scrape = self.scrape.lock().expect("scrape lock");
        self.jobs.clear();
        for (job_type, status, count) in &snapshot.jobs {
            self.jobs
                .get_or_create(&[("type", job_type.clone()), ("status", status.clone())])
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        for family in [&self.queue_depth, &self.queue_running, &self.queue_limit] {
            family.clear();
        }
        self.queue_oldest_wait.clear();
        self.queue_health.clear();
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for q in &snapshot.queues {
            let label = [("queue", q.name.clone())];
            self.queue_depth.get_or_create(&label).set(int(q.depth));
            self.queue_running.get_or_create(&label).set(int(q.running));
            self.queue_limit.get_or_create(&label).set(int(q.limit));
            self.queue_oldest_wait
                .get_or_create(&label)
                .set(q.oldest_wait_ms.unwrap_or(0) as f64 / 1000.0);
            for health in Health::ALL {
                self.queue_health
                    .get_or_create(&[
                        ("queue", q.name.clone()),
                        ("health", health.as_str().to_string()),
                    ])
                    .set(i64::from(health == q.health));
            }
        }
        self.sse_subscribers.set(int(snapshot.sse_subscribers));
        self.plugins_loaded.set(int(snapshot.plugins_loaded));
        let mut text = String::new();
        // The registry alone, without OpenMetrics' `# EOF`: the 0.0.4 text format.
        if let Err(error) =
            prometheus_client::encoding::text::encode_registry(&mut text, &self.registry)
        {
            tracing::error!(%error, "encoding metrics failed");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_recorded_figures() {
        let metrics = Metrics::new();
        metrics.attempt_started("q", 1_500, 1_700_000_000_000);
        metrics.attempt_finished(("q", "t"), Outcome::Completed, 250, 2, 1_700_000_000_000);
        let ok = Ok(LlmResponse {
            text: "x".into(),
            model: "m".into(),
            input_tokens: 7,
            output_tokens: 3,
            ..Default::default()
        });
        metrics.record_llm_call("p", &ok);
        metrics.record_llm_call("p", &Err(LlmError::Timeout("t".into())));
        let text = metrics.render(&Snapshot {
            jobs: vec![("t".into(), "completed".into(), 1)],
            queues: vec![QueueSnapshot {
                name: "q".into(),
                depth: 0,
                running: 0,
                limit: 4,
                oldest_wait_ms: None,
                health: Health::Healthy,
            }],
            sse_subscribers: 2,
            plugins_loaded: 1,
        });
        for line in [
            "kiln_jobs{type=\"t\",status=\"completed\"} 1",
            "kiln_queue_wait_seconds_count{queue=\"q\"} 1",
            "kiln_queue_wait_seconds_sum{queue=\"q\"} 1.5",
            "kiln_attempt_run_seconds_count{queue=\"q\"} 1",
            "kiln_attempts_finished_total{queue=\"q\",type=\"t\",outcome=\"completed\"} 1",
            "kiln_llm_calls_total{provider=\"p\"} 2",
            "kiln_llm_input_tokens_total{provider=\"p\"} 7",
            "kiln_llm_errors_total{provider=\"p\",kind=\"timeout\"} 1",
            "kiln_journal_replays_total{type=\"t\"} 2",
            "kiln_queue_health{queue=\"q\",health=\"healthy\"} 1",
            "kiln_queue_health{queue=\"q\",health=\"critical\"} 0",
            "kiln_sse_subscribers 2",
            "# TYPE kiln_queue_wait_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("# EOF"), "{text}");
        assert_eq!(metrics.recent("q", 1_700_000_000_000).completed, 1);
    }
}
