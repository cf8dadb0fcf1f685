//! Live fan-out of committed events to SSE subscribers.
//!
//! Each job with subscribers has its own bounded broadcast channel, and dashboards share
//! one channel of every event. A subscriber that falls more than the channel's capacity
//! behind gets `Lagged` and its stream is closed; it reconnects with `Last-Event-ID` and
//! catches up from the log. So a slow client never slows a job or other clients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use super::model::{JobEvent, JobRecord, JobStatus};

/// The live side of the event log.
pub struct Bus {
    capacity: usize,
    all: broadcast::Sender<Arc<JobEvent>>,
    jobs: Mutex<HashMap<Uuid, broadcast::Sender<Arc<JobEvent>>>>,
    /// Status changes (and cancel requests) committed by other nodes sharing the store.
    remote: broadcast::Sender<(Uuid, JobStatus)>,
    /// Jobs this process's writer queued on its own: their dependencies ended. Unbounded,
    /// since each one must reach the scheduler (it is the only one to queue them).
    released: mpsc::UnboundedSender<JobRecord>,
    released_rx: Mutex<Option<mpsc::UnboundedReceiver<JobRecord>>>,
}

impl Bus {
    /// A bus whose subscribers may lag `capacity` events before being cut off.
    pub fn new(capacity: usize) -> Self {
        let (all, _) = broadcast::channel(capacity);
        let (released, released_rx) = mpsc::unbounded_channel();
        Self {
            capacity,
            all,
            jobs: Mutex::new(HashMap::new()),
            remote: broadcast::channel(capacity.max(1024)).0,
            released,
            released_rx: Mutex::new(Some(released_rx)),
        }
    }

    /// The jobs the writer queues on its own once their dependencies have ended, as
    /// committed; for the scheduler, which takes it once.
    pub fn take_released(&self) -> Option<mpsc::UnboundedReceiver<JobRecord>> {
        self.released_rx.lock().expect("bus lock").take()
    }

    /// Hands a job the writer queued (its dependencies ended) to the scheduler.
    pub(crate) fn publish_released(&self, job: JobRecord) {
        let _ = self.released.send(job);
    }

    /// Jobs whose status another node changed, or whose running attempt a client asked
    /// to cancel there, with their new status, from now on. A receiver that lags has
    /// missed some: it should check what it cares about in the store.
    pub fn subscribe_remote_changes(&self) -> broadcast::Receiver<(Uuid, JobStatus)> {
        self.remote.subscribe()
    }

    /// Tells this node's receivers of a change another node committed.
    pub(crate) fn publish_remote_change(&self, id: Uuid, status: JobStatus) {
        let _ = self.remote.send((id, status));
    }

    /// Live events of one job, from now on.
    pub fn subscribe_job(&self, id: Uuid) -> broadcast::Receiver<Arc<JobEvent>> {
        let mut jobs = self.jobs.lock().expect("bus lock");
        jobs.entry(id)
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }

    /// Live events of every job, from now on.
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<JobEvent>> {
        self.all.subscribe()
    }

    /// Forgets a job's channel once nobody listens (called when a subscriber leaves).
    pub fn release_job(&self, id: Uuid) {
        let mut jobs = self.jobs.lock().expect("bus lock");
        if jobs.get(&id).is_some_and(|tx| tx.receiver_count() == 0) {
            jobs.remove(&id);
        }
    }

    /// Sends a committed event to its job's subscribers and to the dashboards.
    pub(crate) fn publish(&self, event: Arc<JobEvent>) {
        let _ = self.all.send(event.clone());
        let jobs = self.jobs.lock().expect("bus lock");
        if let Some(tx) = jobs.get(&event.job_id) {
            let _ = tx.send(event);
        }
    }

    /// Whether anyone follows job `id` live.
    pub(crate) fn has_job_subscribers(&self, id: Uuid) -> bool {
        let jobs = self.jobs.lock().expect("bus lock");
        jobs.get(&id).is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Sends an event committed by another process to the job's subscribers only (it was
    /// read from the job's log, without its feed position).
    pub(crate) fn publish_job(&self, event: Arc<JobEvent>) {
        let jobs = self.jobs.lock().expect("bus lock");
        if let Some(tx) = jobs.get(&event.job_id) {
            let _ = tx.send(event);
        }
    }

    /// Whether anyone follows the feed of every job live.
    pub(crate) fn has_feed_subscribers(&self) -> bool {
        self.all.receiver_count() > 0
    }

    /// Sends a feed event committed by another node to the followers of the feed only
    /// (the listener has already given the job's own subscribers theirs).
    pub(crate) fn publish_feed(&self, event: Arc<JobEvent>) {
        let _ = self.all.send(event);
    }

    /// Current subscribers: per-job streams and dashboard streams.
    pub fn subscriber_count(&self) -> usize {
        let jobs = self.jobs.lock().expect("bus lock");
        jobs.values().map(|tx| tx.receiver_count()).sum::<usize>() + self.all.receiver_count()
    }
}
