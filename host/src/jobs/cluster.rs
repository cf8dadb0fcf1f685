//! Running jobs on several nodes sharing one PostgreSQL database.
//!
//! With a shared store nothing that decides what runs lives in one process:
//!
//! - **Claims.** Each node's [`JobService::claim_loop`] takes due jobs from the store in
//!   batches ([`Store::claim`]: `FOR UPDATE SKIP LOCKED`, priority then `run_at` then age,
//!   within each queue's cluster-wide `max_concurrent`). It wakes when this node submits
//!   or finishes a job, when another node says it did (the listener's `NOTIFY`s, a hint),
//!   when a delayed job comes due, and every [`POLL`] as a backstop.
//! - **Leases.** A started attempt holds a lease: the attempt number and the node
//!   ([`crate::store::Lease`]), checked by every write the attempt makes. A node renews
//!   all its leases at once with its heartbeat ([`super::nodes`]); when it stops beating
//!   for [`LEASE_MS`] the leader re-queues its jobs as their next attempt (or fails them
//!   when attempts are spent), exactly as recovery at start does. A node that comes back
//!   finds its writes refused and stops its attempts ([`JobService::fence_loop`]).
//! - **The leader.** One node at a time holds the leader's lease (a row, renewed every
//!   [`super::HEARTBEAT`], judged by the database's clock) and runs what must run once:
//!   the rescue of dead nodes' jobs, and expiry. When it dies another node takes over once
//!   the lease runs out.
//! - **Cancels** are committed as a request on the job; the node running it hears of it
//!   through `NOTIFY` (or, at the latest, at its next fence check) and stops the attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{JobService, RunningJob, lifecycle};
use crate::store::{ClaimQueue, ClaimRequest, JobRecord, JobStatus, now_ms};

/// A node's jobs are given to other nodes after this long without its heartbeat; the
/// leader's lease lasts as long.
pub const LEASE_MS: u64 = super::UNRESPONSIVE_AFTER_MS;

/// The longest a node waits before looking for due jobs again, whatever it was told.
const POLL: Duration = Duration::from_secs(1);

/// How often a node checks that it still holds its running attempts' leases and whether
/// a client asked to cancel one of them (the backstop of the `NOTIFY` path).
const FENCE_CHECK: Duration = Duration::from_secs(1);

/// Most jobs one claim starts per queue.
const CLAIM_BATCH: usize = 64;

impl JobService {
    /// The queues this node claims from: those of its loaded job types, with their limits.
    fn claimable_queues(&self) -> Vec<ClaimQueue> {
        let settings = &self.inner.settings;
        let mut queues: Vec<ClaimQueue> = self
            .inner
            .plugins
            .names()
            .iter()
            .map(|name| {
                let name = settings.queue_of(name);
                ClaimQueue {
                    limit: settings.limit_of(&name),
                    max_per_key: settings.key_limit_of(&name),
                    name,
                }
            })
            .collect();
        queues.sort();
        queues.dedup();
        queues
    }

    /// Claims and starts due jobs until the service stops.
    pub(super) async fn claim_loop(self) {
        let queues = self.claimable_queues();
        {
            // The in-memory queues keep this node's figures (`/v1/queues` stats).
            let mut local = self.inner.queues.lock().expect("queues lock");
            for queue in &queues {
                local.queue((&queue.name, queue.limit, queue.max_per_key));
            }
        }
        let node = self.inner.store.node_id();
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.inner.stopping.is_cancelled() || queues.is_empty() {
                return;
            }
            let request = ClaimRequest {
                queues: queues.clone(),
                max: CLAIM_BATCH,
                now_ms: now_ms(),
            };
            let claimed = self
                .inner
                .store
                .claim(request, move |job| lifecycle::start(job, now_ms(), node))
                .await;
            let mut wait = POLL;
            match claimed {
                Ok(claimed) => {
                    backoff = Duration::from_millis(100);
                    let full = claimed.jobs.len() >= CLAIM_BATCH;
                    for job in claimed.jobs {
                        self.run_claimed(job);
                    }
                    if let Some(due) = claimed.next_due_ms {
                        wait = wait.min(Duration::from_millis(due.saturating_sub(now_ms())));
                    }
                    if full {
                        wait = Duration::ZERO;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "could not claim jobs; trying again");
                    wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = self.inner.stopping.cancelled() => return,
            }
        }
    }

    /// Runs a job this node's claim started.
    fn run_claimed(&self, job: JobRecord) {
        let running = self.register_running(job.id);
        let service = self.clone();
        tokio::spawn(async move {
            let (queue, id) = (job.queue.clone(), job.id);
            service.run_started(queue, id, running, Ok(job)).await;
        });
    }

    /// Reads the cluster's queue figures for `/v1/queues` and the submit's depth check.
    pub(super) async fn refresh_cluster_queues(&self) {
        match self.inner.store.queue_counts().await {
            Ok(counts) => {
                *self.inner.cluster_counts.lock().expect("cluster lock") = counts
                    .into_iter()
                    .map(|count| (count.queue.clone(), count))
                    .collect();
            }
            Err(error) => tracing::debug!(%error, "could not read the cluster's queues"),
        }
    }

    /// Takes or renews the leader's lease every heartbeat; while this node leads, gives
    /// the jobs of dead nodes their next attempt.
    pub(super) async fn leader_loop(self) {
        let mut leading = false;
        loop {
            let asked = Instant::now();
            match self.inner.store.lead(LEASE_MS).await {
                Ok(true) => {
                    // Counted from before the question, minus a heartbeat to spare.
                    let until = asked + Duration::from_millis(LEASE_MS) - super::HEARTBEAT;
                    *self.inner.leader_until.lock().expect("leader lock") = Some(until);
                    if !leading {
                        tracing::info!("this node is the leader");
                        leading = true;
                    }
                    self.rescue_orphans().await;
                }
                Ok(false) => {
                    *self.inner.leader_until.lock().expect("leader lock") = None;
                    if leading {
                        tracing::info!("this node is no longer the leader");
                        leading = false;
                    }
                }
                Err(error) => tracing::debug!(%error, "could not renew the leader's lease"),
            }
            tokio::select! {
                () = tokio::time::sleep(super::HEARTBEAT) => {}
                () = self.inner.stopping.cancelled() => return,
            }
        }
    }

    /// Whether this node runs the cluster's once-only maintenance now. A store no other
    /// node shares has no one else to ask.
    pub fn is_leader(&self) -> bool {
        if !self.inner.store.is_shared() {
            return true;
        }
        self.inner
            .leader_until
            .lock()
            .expect("leader lock")
            .is_some_and(|until| Instant::now() < until)
    }

    /// Re-queues (or fails, or cancels) the running jobs whose node's lease expired.
    async fn rescue_orphans(&self) {
        let orphans = match self.inner.store.orphaned(LEASE_MS).await {
            Ok(orphans) => orphans,
            Err(error) => {
                tracing::warn!(%error, "could not look for jobs of dead nodes");
                return;
            }
        };
        for (id, attempt, node) in orphans {
            let rescued = self
                .inner
                .store
                .update(id, move |job| {
                    lifecycle::rescue(job, attempt, node, now_ms())
                })
                .await;
            match rescued {
                Ok(job) => tracing::info!(
                    job_id = %id,
                    node = ?node,
                    status = job.status.as_str(),
                    "gave the job of a node that stopped answering its next attempt"
                ),
                Err(crate::store::StoreError::Conflict(_)) => {}
                Err(error) => tracing::warn!(%error, job_id = %id, "could not rescue a job"),
            }
        }
    }

    /// Acts on changes other nodes committed: wakes the claim loop (a job was queued or
    /// a slot freed), and checks the attempts this node runs when one of them changed
    /// (a cancel, or the job was given to another node).
    pub(super) async fn remote_changes_loop(self) {
        let mut changes = self.inner.store.bus.subscribe_remote_changes();
        loop {
            let change = tokio::select! {
                change = changes.recv() => change,
                () = self.inner.stopping.cancelled() => return,
            };
            match change {
                Ok((id, status)) => {
                    if status != JobStatus::Running {
                        self.inner.wake.notify_one();
                    }
                    if let Some(running) = self.running_here(id) {
                        self.check_attempts(vec![(id, running)]).await;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    self.inner.wake.notify_one();
                    self.check_all_attempts().await;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Checks this node's attempts every [`FENCE_CHECK`].
    pub(super) async fn fence_loop(self) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(FENCE_CHECK) => {}
                () = self.inner.stopping.cancelled() => return,
            }
            self.check_all_attempts().await;
        }
    }

    async fn check_all_attempts(&self) {
        let attempts: Vec<(Uuid, Arc<RunningJob>)> = self
            .inner
            .running
            .lock()
            .expect("running lock")
            .iter()
            .map(|(id, running)| (*id, running.clone()))
            .collect();
        if !attempts.is_empty() {
            self.check_attempts(attempts).await;
        }
    }

    /// Stops the attempts among `attempts` that a client asked to cancel, and those whose
    /// lease this node lost (their writes would be refused anyway).
    async fn check_attempts(&self, attempts: Vec<(Uuid, Arc<RunningJob>)>) {
        let ids: Vec<Uuid> = attempts.iter().map(|(id, _)| *id).collect();
        let records: HashMap<Uuid, JobRecord> = match self.inner.store.jobs(&ids).await {
            Ok(jobs) => jobs.into_iter().map(|job| (job.id, job)).collect(),
            Err(error) => {
                tracing::debug!(%error, "could not check this node's attempts");
                return;
            }
        };
        for (id, running) in attempts {
            // Not started yet: its start decides.
            let Some(lease) = running.lease.get() else {
                continue;
            };
            let held = records.get(&id).and_then(JobRecord::lease) == Some(*lease);
            if !held {
                tracing::warn!(job_id = %id, attempt = lease.attempt, "this node lost the attempt's lease; stopping it");
                running.cancel.cancel();
            } else if records.get(&id).is_some_and(|job| job.cancel_requested) {
                running.cancel.cancel();
            }
        }
    }
}
