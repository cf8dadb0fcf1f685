//! Batches: many jobs of one type submitted in one call and one durable commit, followed,
//! cancelled and retried together. Their counts, progress and log are kept by the store's
//! writer in the same commit as each change of one of their jobs (see `store/batch.rs`),
//! so they are exact and survive restarts without a scan.

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::Value;
use uuid::Uuid;

use super::{JobService, ServiceError, SubmitRequest, bad_request, lifecycle};
use crate::store::{BatchPage, BatchRecord, JobRecord, ListQuery, NewJob, now_ms};

/// Jobs changed at once by a batch's cancel or retry: enough to share group commits,
/// few enough not to flood the writer.
const CONCURRENT_CHANGES: usize = 256;

/// Jobs read per page while walking a batch.
const PAGE: usize = 1000;

/// A batch to submit: one job of `job_type` per item, sharing the options.
#[derive(Clone, Debug, Default)]
pub struct BatchRequest {
    pub job_type: String,
    /// The jobs' payloads, each checked against the type's schema.
    pub items: Vec<Value>,
    pub priority: Option<i32>,
    pub max_attempts: Option<u32>,
    pub timeout_s: Option<u64>,
    pub run_at_ms: Option<u64>,
    /// The tenant that will own the batch and its jobs.
    pub tenant: Option<String>,
    /// The concurrency key of every job.
    pub concurrency_key: Option<String>,
}

impl JobService {
    /// Submits a batch: checks every item first (one bad item refuses the whole batch,
    /// naming its index, and creates nothing), then stores the batch and all its jobs in
    /// one commit and queues them.
    pub async fn submit_batch(
        &self,
        request: BatchRequest,
    ) -> Result<(BatchRecord, Vec<JobRecord>), ServiceError> {
        if self.inner.stopping.is_cancelled() {
            return Err(ServiceError::ShuttingDown);
        }
        let max = self.inner.settings.max_batch_items;
        if request.items.is_empty() || request.items.len() > max {
            return Err(bad_request(
                "batch_too_large",
                format!(
                    "a batch holds 1 to {max} items (max_batch_items); this one has {}",
                    request.items.len()
                ),
            ));
        }
        let id = Uuid::now_v7();
        let count = request.items.len();
        let mut jobs = Vec::with_capacity(count);
        for (index, payload) in request.items.into_iter().enumerate() {
            let (mut job, payload) = self
                .prepare_job(SubmitRequest {
                    job_type: request.job_type.clone(),
                    payload,
                    priority: request.priority,
                    max_attempts: request.max_attempts,
                    timeout_s: request.timeout_s,
                    run_at_ms: request.run_at_ms,
                    idempotency_key: None,
                    tenant: request.tenant.clone(),
                    concurrency_key: request.concurrency_key.clone(),
                    ..SubmitRequest::default()
                })
                .await
                .map_err(|error| at_item(index, error))?;
            job.batch = Some(id);
            let event = lifecycle::status_event(&job);
            jobs.push(NewJob {
                job,
                payload,
                event,
            });
        }
        self.check_room(count).await?;
        let batch = BatchRecord {
            id,
            job_type: request.job_type,
            tenant: request.tenant,
            created_at_ms: now_ms(),
            jobs: 0,
            counts: Default::default(),
            progress_sum: 0,
            finished_at_ms: None,
            last_seq: 0,
        };
        let (batch, jobs) = self.inner.store.insert_batch(batch, jobs).await?;
        for job in &jobs {
            self.enqueue(job);
        }
        Ok((batch, jobs))
    }

    /// One batch.
    pub async fn batch(&self, id: Uuid) -> Result<BatchRecord, ServiceError> {
        self.inner
            .store
            .batch(id)
            .await?
            .ok_or(ServiceError::BatchNotFound(id))
    }

    /// A page of batches, newest first: up to `limit` older than `before`, only
    /// `tenant`'s if given.
    pub async fn list_batches(
        &self,
        tenant: Option<&str>,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<BatchPage, ServiceError> {
        Ok(self.inner.store.list_batches(tenant, before, limit).await?)
    }

    /// The ids of a batch's jobs, oldest first.
    pub async fn batch_jobs(&self, id: Uuid) -> Result<Vec<Uuid>, ServiceError> {
        let mut ids = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .list(&ListQuery {
                    batch: Some(id),
                    limit: PAGE,
                    before,
                    ..ListQuery::default()
                })
                .await?;
            ids.extend(page.jobs.iter().map(|job| job.id));
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        ids.reverse();
        Ok(ids)
    }

    /// Cancels every queued or running job of a batch (running ones are stopped; this
    /// does not wait for them); returns how many were cancelled or asked to stop.
    pub async fn cancel_batch(&self, id: Uuid) -> Result<usize, ServiceError> {
        self.batch(id).await?;
        let jobs = self.batch_jobs(id).await?;
        let outcomes = futures::stream::iter(jobs)
            .map(|job| self.cancel(job, Duration::ZERO))
            .buffer_unordered(CONCURRENT_CHANGES)
            .collect::<Vec<_>>()
            .await;
        count_changed(outcomes)
    }

    /// Retries every failed or cancelled job of a batch; returns how many.
    pub async fn retry_batch(&self, id: Uuid) -> Result<usize, ServiceError> {
        self.batch(id).await?;
        let jobs = self.batch_jobs(id).await?;
        let outcomes = futures::stream::iter(jobs)
            .map(|job| self.retry(job))
            .buffer_unordered(CONCURRENT_CHANGES)
            .collect::<Vec<_>>()
            .await;
        count_changed(outcomes)
    }
}

/// How many changes went through; jobs in another state (a completed job is not retried,
/// a finished one not cancelled) are skipped, a storage failure is the answer.
fn count_changed(outcomes: Vec<Result<JobRecord, ServiceError>>) -> Result<usize, ServiceError> {
    let mut changed = 0;
    for outcome in outcomes {
        match outcome {
            Ok(_) => changed += 1,
            Err(ServiceError::Conflict(_) | ServiceError::NotFound(_)) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(changed)
}

/// A refusal of one item, naming it: its message begins with `items[index]` and its
/// violations' paths point into the request (`/items/index/...`). Refusals that are the
/// same for every item (an unknown type, options out of range) are left as they are.
fn at_item(index: usize, error: ServiceError) -> ServiceError {
    match error {
        ServiceError::BadRequest {
            kind,
            message,
            violations,
        } if matches!(kind, "invalid_payload" | "unknown_file") => ServiceError::BadRequest {
            kind,
            message: format!("items[{index}]: {message}"),
            violations: violations
                .into_iter()
                .map(|mut violation| {
                    violation.path = format!("/items/{index}{}", violation.path);
                    violation
                })
                .collect(),
        },
        other => other,
    }
}
