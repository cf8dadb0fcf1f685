//! Operator operations over many jobs: bulk retry, bulk cancel, and the doctor's report
//! (stuck jobs, recent failures grouped by kind, plugins, providers).

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use super::{JobService, ServiceError, bad_request};
use crate::store::{JobRecord, JobStatus, ListQuery, now_ms, rfc3339};

/// Most jobs one bulk call touches.
pub const MAX_BULK: usize = 1000;

/// How far back the doctor looks for failures.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Most failed jobs the doctor reads.
pub const FAILURE_SCAN: usize = 1000;

/// Most queued jobs the doctor reads when looking for stuck ones.
const QUEUED_SCAN: usize = 10_000;

/// Jobs shown per page while scanning.
const PAGE: usize = 100;

/// Which jobs a bulk operation applies to.
#[derive(Clone, Debug)]
pub struct BulkFilter {
    /// Only jobs with this status.
    pub status: JobStatus,
    /// Only jobs of this type.
    pub job_type: Option<String>,
    /// Running jobs started, or queued jobs created, longer ago than this.
    pub older_than: Option<Duration>,
    /// Most jobs to act on, 1..=[`MAX_BULK`].
    pub limit: usize,
}

/// A job the doctor thinks is stuck.
#[derive(Clone, Debug, Serialize)]
pub struct StuckJob {
    /// The job.
    pub id: Uuid,
    /// Its type.
    #[serde(rename = "type")]
    pub job_type: String,
    /// `running` or `queued`.
    pub status: JobStatus,
    /// Its progress.
    pub progress: u8,
    /// Its stage.
    pub message: Option<String>,
    /// Its attempt.
    pub attempt: u32,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, when running.
    pub started_at: Option<String>,
    /// RFC 3339, when it waits for a time.
    pub run_at: Option<String>,
    /// How long it has been running, or waiting past its start time, seconds.
    pub stuck_for_s: u64,
}

/// Recent failures of one `error.kind`.
#[derive(Clone, Debug, Serialize)]
pub struct FailureGroup {
    /// The error kind.
    pub kind: String,
    /// Failed jobs of this kind in the window.
    pub count: usize,
    /// The newest one's message.
    pub example_message: String,
    /// Up to five of them, newest first.
    pub job_ids: Vec<Uuid>,
}

/// A loaded job type.
#[derive(Clone, Debug, Serialize)]
pub struct PluginSummary {
    /// Type name.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// A configured LLM provider and whether it answered a probe.
#[derive(Clone, Debug, Serialize)]
pub struct ProviderHealth {
    /// Its name in the config.
    pub name: String,
    /// `openai`, `anthropic` or `offline`.
    pub kind: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Why not (never carries a key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `GET /v1/doctor` reports.
#[derive(Clone, Debug, Serialize)]
pub struct DoctorReport {
    /// Where jobs are stored: `redb <file>` or `postgres <URL, password masked>`.
    pub storage: String,
    /// The threshold used, seconds.
    pub stuck_after_s: u64,
    /// Jobs running longer than the threshold, or queued past their start by more.
    pub stuck: Vec<StuckJob>,
    /// Failed jobs of the last 24 h, grouped by `error.kind`, most frequent first.
    pub failures: Vec<FailureGroup>,
    /// Loaded job types.
    pub plugins: Vec<PluginSummary>,
    /// Configured providers.
    pub providers: Vec<ProviderHealth>,
}

impl JobService {
    /// Retries up to `filter.limit` jobs with `filter.status` (failed or cancelled),
    /// newest first; returns the ids retried. A job that changed state meanwhile is
    /// skipped.
    pub async fn bulk_retry(&self, filter: &BulkFilter) -> Result<Vec<Uuid>, ServiceError> {
        if !matches!(filter.status, JobStatus::Failed | JobStatus::Cancelled) {
            return Err(bad_request(
                "invalid_request",
                "status must be \"failed\" or \"cancelled\"",
            ));
        }
        check_limit(filter.limit)?;
        let now = now_ms();
        let targets = self.matching(filter, now).await?;
        let mut retried = Vec::with_capacity(targets.len());
        for id in targets {
            match self.retry(id).await {
                Ok(_) => retried.push(id),
                Err(ServiceError::Conflict(_) | ServiceError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(retried)
    }

    /// Cancels up to `filter.limit` jobs with `filter.status` (running, queued or waiting), oldest
    /// first, waiting up to `wait` for running ones to stop; returns the ids cancelled.
    pub async fn bulk_cancel(
        &self,
        filter: &BulkFilter,
        wait: Duration,
    ) -> Result<Vec<Uuid>, ServiceError> {
        if !matches!(
            filter.status,
            JobStatus::Running | JobStatus::Queued | JobStatus::Waiting
        ) {
            return Err(bad_request(
                "invalid_request",
                "status must be \"running\", \"queued\" or \"waiting\"",
            ));
        }
        check_limit(filter.limit)?;
        let now = now_ms();
        let targets = self.matching(filter, now).await?;
        let outcomes =
            futures::future::join_all(targets.iter().map(|&id| self.cancel(id, wait))).await;
        let mut cancelled = Vec::new();
        for (id, outcome) in targets.into_iter().zip(outcomes) {
            match outcome {
                Ok(job) if job.status == JobStatus::Cancelled => cancelled.push(id),
                Ok(_) | Err(ServiceError::Conflict(_) | ServiceError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(cancelled)
    }

    /// Ids of jobs matching `filter` at `now`, at most `filter.limit`. Failed and cancelled
    /// jobs are taken newest first; running and queued ones oldest first (the stuck ones).
    async fn matching(&self, filter: &BulkFilter, now: u64) -> Result<Vec<Uuid>, ServiceError> {
        let older_than_ms = filter
            .older_than
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let fits = |job: &JobRecord| {
            job.status == filter.status
                && filter.job_type.as_ref().is_none_or(|t| *t == job.job_type)
                && older_than_ms.is_none_or(|age| {
                    let since = match job.status {
                        JobStatus::Running => job.started_at_ms.unwrap_or(job.created_at_ms),
                        _ => job.created_at_ms,
                    };
                    now.saturating_sub(since) > age
                })
        };
        let mut ids = Vec::new();
        if filter.status.is_terminal() {
            let mut before = None;
            loop {
                let page = self
                    .list(&ListQuery {
                        tenant: None,
                        status: Some(filter.status),
                        job_type: filter.job_type.clone(),
                        limit: PAGE,
                        before,
                        batch: None,
                    })
                    .await?;
                for job in &page.jobs {
                    if fits(job) {
                        ids.push(job.id);
                        if ids.len() >= filter.limit {
                            return Ok(ids);
                        }
                    }
                }
                match page.next {
                    Some(next) => before = Some(next),
                    None => return Ok(ids),
                }
            }
        }
        let store = &self.inner.store;
        for id in store.ids_with_status(filter.status).await? {
            if let Some(job) = store.get(id).await?
                && fits(&job)
            {
                ids.push(id);
                if ids.len() >= filter.limit {
                    break;
                }
            }
        }
        Ok(ids)
    }

    /// The doctor's report: stuck jobs (running longer than `stuck_after`, or queued past
    /// their start time by more), failures of the last 24 h grouped by kind, the loaded
    /// job types and whether each configured provider answers.
    pub async fn doctor(&self, stuck_after: Duration) -> Result<DoctorReport, ServiceError> {
        let now = now_ms();
        let threshold = u64::try_from(stuck_after.as_millis()).unwrap_or(u64::MAX);
        let store = &self.inner.store;
        let mut stuck = Vec::new();
        for id in store.ids_with_status(JobStatus::Running).await? {
            if let Some(job) = store.get(id).await?
                && job.status == JobStatus::Running
            {
                let since = job.started_at_ms.unwrap_or(job.created_at_ms);
                if now.saturating_sub(since) > threshold {
                    stuck.push(stuck_job(job, now.saturating_sub(since)));
                }
            }
        }
        for id in store
            .ids_with_status(JobStatus::Queued)
            .await?
            .into_iter()
            .take(QUEUED_SCAN)
        {
            if let Some(job) = store.get(id).await?
                && job.status == JobStatus::Queued
            {
                let due = job.run_at_ms.unwrap_or(job.created_at_ms);
                if now > due && now - due > threshold {
                    stuck.push(stuck_job(job, now - due));
                }
            }
        }
        stuck.sort_by_key(|job| std::cmp::Reverse(job.stuck_for_s));

        let window = u64::try_from(FAILURE_WINDOW.as_millis()).unwrap_or(u64::MAX);
        let since = now.saturating_sub(window);
        let mut groups: Vec<FailureGroup> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut scanned = 0;
        let mut before = None;
        'pages: loop {
            let page = self
                .list(&ListQuery {
                    tenant: None,
                    status: Some(JobStatus::Failed),
                    job_type: None,
                    limit: PAGE,
                    before,
                    batch: None,
                })
                .await?;
            for job in page.jobs {
                scanned += 1;
                if job.finished_at_ms.unwrap_or(job.created_at_ms) >= since {
                    let error = job
                        .error
                        .clone()
                        .unwrap_or_else(|| crate::store::ErrorInfo {
                            kind: "unknown".into(),
                            message: String::new(),
                        });
                    let at = *index.entry(error.kind.clone()).or_insert_with(|| {
                        groups.push(FailureGroup {
                            kind: error.kind.clone(),
                            count: 0,
                            example_message: error.message.clone(),
                            job_ids: Vec::new(),
                        });
                        groups.len() - 1
                    });
                    let group = &mut groups[at];
                    group.count += 1;
                    if group.job_ids.len() < 5 {
                        group.job_ids.push(job.id);
                    }
                }
                if scanned >= FAILURE_SCAN {
                    break 'pages;
                }
            }
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.kind.cmp(&b.kind)));

        let plugins = self
            .plugins()
            .iter()
            .map(|p| PluginSummary {
                name: p.info.name.clone(),
                version: p.info.version.clone(),
            })
            .collect();

        let named = self.inner.llm.providers();
        let probes = futures::future::join_all(named.iter().map(|p| async {
            match tokio::time::timeout(Duration::from_secs(10), p.client.probe()).await {
                Ok(result) => result,
                Err(_) => Err(format!("provider '{}' did not answer the probe", p.name)),
            }
        }))
        .await;
        let providers = named
            .into_iter()
            .zip(probes)
            .map(|(p, result)| ProviderHealth {
                name: p.name,
                kind: p.kind,
                reachable: result.is_ok(),
                error: result.err(),
            })
            .collect();

        Ok(DoctorReport {
            storage: self.inner.settings.storage.clone(),
            stuck_after_s: stuck_after.as_secs(),
            stuck,
            failures: groups,
            plugins,
            providers,
        })
    }
}

fn check_limit(limit: usize) -> Result<(), ServiceError> {
    if (1..=MAX_BULK).contains(&limit) {
        Ok(())
    } else {
        Err(bad_request(
            "invalid_request",
            format!("limit must be between 1 and {MAX_BULK}"),
        ))
    }
}

fn stuck_job(job: JobRecord, for_ms: u64) -> StuckJob {
    StuckJob {
        id: job.id,
        job_type: job.job_type,
        status: job.status,
        progress: job.progress,
        message: job.message,
        attempt: job.attempt,
        created_at: rfc3339(job.created_at_ms),
        started_at: job.started_at_ms.map(rfc3339),
        run_at: job.run_at_ms.map(rfc3339),
        stuck_for_s: for_ms / 1000,
    }
}
