//! Following an event log: one job's own log, or the feed of every job's events.
//!
//! "Subscribe to live events, replay the log after the client's position, then go live,
//! dropping live events already replayed" is written once, here ([`LogFollower`]): the SSE
//! streams, `?wait=` and cancel-and-wait all follow logs through it. Subscribing *first*
//! means nothing committed between the replay and the live part can fall through the gap;
//! comparing positions means nothing comes twice. A follower that lags past its live buffer
//! ends; its client resumes from its last position.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::{self, Stream};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{JobService, ServiceError};
use crate::store::{
    BatchRecord, Bus, JobEvent, JobRecord, JobStatus, Store, StoreError, batch_event_names,
};

/// The names of the events of a job's log, which SSE sends as the `event:` field.
pub mod event_names {
    /// A status change: `{status, attempt, ...}`.
    pub const STATUS: &str = "status";
    /// `{progress, message}`.
    pub const PROGRESS: &str = "progress";
    /// `{name, data}`: one finished item.
    pub const PARTIAL: &str = "partial";
    /// `{label, delta}`: streamed LLM output.
    pub const TOKEN: &str = "token";
    /// `{index, label}`: an LLM call answered from the job's journal (not paid again).
    pub const REPLAYED: &str = "replayed";
    /// `{result}`: terminal.
    pub const COMPLETED: &str = "completed";
    /// `{error}`: terminal.
    pub const FAILED: &str = "failed";
    /// `{status}`: terminal.
    pub const CANCELLED: &str = "cancelled";

    /// Whether an event of this name ends the job's stream.
    pub fn is_terminal(name: &str) -> bool {
        matches!(name, COMPLETED | FAILED | CANCELLED)
    }
}

/// Events replayed from the log per read.
const REPLAY_PAGE: usize = 512;

/// A durable log of events that a [`LogFollower`] replays before it goes live.
trait EventLog: Send + Sync + 'static {
    /// Up to `limit` events after position `after`, in order.
    fn after(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<JobEvent>, StoreError>> + Send;
    /// An event's position in this log.
    fn position(event: &JobEvent) -> u64;
    /// Whether this follower is shown the event (filters, tenants).
    fn shows(&self, event: &JobEvent) -> bool;
    /// Whether the log ends after the event.
    fn ends_after(event: &JobEvent) -> bool;
}

/// One job's own log; positions are the job's event sequence numbers.
struct JobLog {
    store: Arc<Store>,
    job: JobRecord,
    _release: ReleaseJobChannel,
}

impl EventLog for JobLog {
    async fn after(&self, after: u64, limit: usize) -> Result<Vec<JobEvent>, StoreError> {
        self.store.events_after(&self.job, after, limit).await
    }

    fn position(event: &JobEvent) -> u64 {
        event.seq
    }

    fn shows(&self, _event: &JobEvent) -> bool {
        true
    }

    fn ends_after(event: &JobEvent) -> bool {
        event_names::is_terminal(&event.name)
    }
}

/// A batch's own log; positions are its event sequence numbers.
struct BatchLog {
    store: Arc<Store>,
    batch: BatchRecord,
    _release: ReleaseJobChannel,
}

impl EventLog for BatchLog {
    async fn after(&self, after: u64, limit: usize) -> Result<Vec<JobEvent>, StoreError> {
        self.store
            .batch_events_after(&self.batch, after, limit)
            .await
    }

    fn position(event: &JobEvent) -> u64 {
        event.seq
    }

    fn shows(&self, _event: &JobEvent) -> bool {
        true
    }

    fn ends_after(event: &JobEvent) -> bool {
        event.name == batch_event_names::COMPLETED
    }
}

/// Whether a follower may see a job of a tenant (`None`: a job without one).
pub type TenantCheck = Box<dyn Fn(Option<&str>) -> bool + Send + Sync>;

/// Which events of the feed a follower sees.
pub struct FeedFilter {
    /// Only jobs of this type.
    pub job_type: Option<String>,
    /// Only events after which the job has this status.
    pub status: Option<JobStatus>,
    /// Whether the follower may see a job of this tenant.
    pub sees_tenant: TenantCheck,
}

/// The feed of every job's events; positions are feed positions, durable and monotonic
/// across jobs.
struct FeedLog {
    store: Arc<Store>,
    filter: FeedFilter,
}

impl EventLog for FeedLog {
    async fn after(&self, after: u64, limit: usize) -> Result<Vec<JobEvent>, StoreError> {
        let page = self.store.feed_after(after, limit).await?;
        // Trimmed while this follower replayed: it cannot have every event; end it so its
        // reconnect is told (`410`) instead of silently skipping some.
        if let Some((first, _)) = self.store.feed_bounds().await?
            && after.saturating_add(1) < first
        {
            return Err(StoreError::Conflict(format!(
                "the feed was trimmed past position {after} while the client replayed"
            )));
        }
        Ok(page)
    }

    fn position(event: &JobEvent) -> u64 {
        event.feed_seq
    }

    fn shows(&self, event: &JobEvent) -> bool {
        let filter = &self.filter;
        filter
            .job_type
            .as_ref()
            .is_none_or(|t| *t == event.job_type)
            && filter.status.is_none_or(|s| s == event.status)
            && (filter.sees_tenant)(event.tenant.as_deref())
    }

    fn ends_after(_event: &JobEvent) -> bool {
        false
    }
}

/// Forgets a job's bus channel once its last subscriber is gone.
struct ReleaseJobChannel {
    bus: Arc<Bus>,
    id: Uuid,
}

impl Drop for ReleaseJobChannel {
    fn drop(&mut self) {
        self.bus.release_job(self.id);
    }
}

/// Replay after a position, then live, without gap or duplicate.
struct LogFollower<L: EventLog> {
    /// Declared before `log`, so it is dropped first: a job log's channel is released
    /// only once this receiver is gone.
    live: broadcast::Receiver<Arc<JobEvent>>,
    log: L,
    /// The position of the last event this follower passed (shown or filtered out).
    last: u64,
    replaying: bool,
    /// Shared with every other subscriber: never copied per subscriber.
    buffer: VecDeque<Arc<JobEvent>>,
    done: bool,
}

impl<L: EventLog> LogFollower<L> {
    fn new(log: L, live: broadcast::Receiver<Arc<JobEvent>>, after: u64) -> Self {
        Self {
            live,
            log,
            last: after,
            replaying: true,
            buffer: VecDeque::new(),
            done: false,
        }
    }

    fn into_stream(self) -> impl Stream<Item = Arc<JobEvent>> + Send + 'static {
        stream::unfold(self, |mut follower| async move {
            let event = follower.next().await?;
            Some((event, follower))
        })
    }

    async fn next(&mut self) -> Option<Arc<JobEvent>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.buffer.pop_front() {
                let position = L::position(&event);
                if position <= self.last {
                    continue;
                }
                self.last = position;
                if !self.log.shows(&event) {
                    continue;
                }
                self.done = L::ends_after(&event);
                return Some(event);
            }
            if self.replaying {
                match self.log.after(self.last, REPLAY_PAGE).await {
                    Ok(page) if page.is_empty() => self.replaying = false,
                    Ok(page) => self.buffer.extend(page.into_iter().map(Arc::new)),
                    Err(error) => {
                        tracing::warn!(%error, "event replay ended the stream");
                        return None;
                    }
                }
                continue;
            }
            match self.live.recv().await {
                Ok(event) => {
                    let position = L::position(&event);
                    if position == self.last + 1 {
                        self.buffer.push_back(event);
                    } else if position > self.last {
                        // A gap (an event committed elsewhere, or a skipped one): read
                        // what is missing from the log.
                        self.replaying = true;
                    }
                }
                // Too slow, or the bus went away: end; the client resumes from its last
                // position.
                Err(_) => return None,
            }
        }
    }
}

/// A job's events from a position on, as [`JobService::follow_job`] gives them.
pub struct JobEvents {
    /// The job as it was when the follow began (after subscribing).
    pub job: JobRecord,
    /// Its events after the position, in order, ending after the terminal one.
    pub events: std::pin::Pin<Box<dyn Stream<Item = Arc<JobEvent>> + Send>>,
}

/// A batch's events from a position on, as [`JobService::follow_batch`] gives them.
pub struct BatchEvents {
    /// The batch as it was when the follow began (after subscribing).
    pub batch: BatchRecord,
    /// Its events after the position, in order, ending after `batch_completed`.
    pub events: std::pin::Pin<Box<dyn Stream<Item = Arc<JobEvent>> + Send>>,
}

/// Why the feed cannot be followed from a position.
#[derive(Debug)]
pub enum FeedRefusal {
    /// The position is past the newest event.
    Beyond { after: u64, newest: u64 },
    /// The events after the position are no longer kept.
    Expired { after: u64, first: u64 },
    /// The store failed.
    Store(ServiceError),
}

impl JobService {
    /// Follows job `id`'s log after position `after` (with none: after its newest event):
    /// replayed, then live, ending after its terminal event.
    pub async fn follow_job(
        &self,
        id: Uuid,
        after: Option<u64>,
    ) -> Result<JobEvents, ServiceError> {
        let store = self.inner.store.clone();
        // Subscribed before the job is read, so no event committed in between is missed.
        let live = store.bus.subscribe_job(id);
        let release = ReleaseJobChannel {
            bus: store.bus.clone(),
            id,
        };
        let job = self.get(id).await?;
        let after = after.unwrap_or(job.last_seq);
        let log = JobLog {
            store,
            job: job.clone(),
            _release: release,
        };
        let events = Box::pin(LogFollower::new(log, live, after).into_stream());
        Ok(JobEvents { job, events })
    }

    /// Follows batch `id`'s log after position `after` (with none: after its newest
    /// event): replayed, then live, ending after `batch_completed`.
    pub async fn follow_batch(
        &self,
        id: Uuid,
        after: Option<u64>,
    ) -> Result<BatchEvents, ServiceError> {
        let store = self.inner.store.clone();
        // Subscribed before the batch is read, so no event committed in between is missed.
        let live = store.bus.subscribe_job(id);
        let release = ReleaseJobChannel {
            bus: store.bus.clone(),
            id,
        };
        let batch = self.batch(id).await?;
        let after = after.unwrap_or(batch.last_seq);
        let log = BatchLog {
            store,
            batch: batch.clone(),
            _release: release,
        };
        let events = Box::pin(LogFollower::new(log, live, after).into_stream());
        Ok(BatchEvents { batch, events })
    }

    /// Follows the feed of every job's events after position `after` (with none: from the
    /// newest event on), showing a follower what `filter` lets through.
    pub async fn follow_feed(
        &self,
        after: Option<u64>,
        filter: FeedFilter,
    ) -> Result<impl Stream<Item = Arc<JobEvent>> + Send + 'static, FeedRefusal> {
        let store = self.inner.store.clone();
        // Subscribed before the feed is read, so no event committed in between is missed.
        let live = store.bus.subscribe_all();
        let (first, newest) = store
            .feed_bounds()
            .await
            .map_err(|e| FeedRefusal::Store(e.into()))?
            .unwrap_or((1, 0));
        let after = after.unwrap_or(newest);
        if after > newest {
            return Err(FeedRefusal::Beyond { after, newest });
        }
        if after.saturating_add(1) < first {
            return Err(FeedRefusal::Expired { after, first });
        }
        let log = FeedLog { store, filter };
        Ok(LogFollower::new(log, live, after).into_stream())
    }

    /// Waits up to `wait` for job `id` to end; returns it as it is then.
    pub async fn wait_for_end(
        &self,
        id: Uuid,
        wait: std::time::Duration,
    ) -> Result<JobRecord, ServiceError> {
        let follow = self.follow_job(id, None).await?;
        self.until_terminal(follow, wait).await;
        self.get(id).await
    }

    /// Follows `follow` until a terminal event, for up to `wait`.
    pub(super) async fn until_terminal(&self, follow: JobEvents, wait: std::time::Duration) {
        use futures::StreamExt as _;
        if follow.job.status.is_terminal() || wait.is_zero() {
            return;
        }
        let mut events = follow.events;
        let _ = tokio::time::timeout(wait, async {
            while let Some(event) = events.next().await {
                if event_names::is_terminal(&event.name) {
                    break;
                }
            }
        })
        .await;
    }
}
