//! Figures over the last five minutes, per queue: a ring of 60 five-second buckets, so
//! recording is O(1), reading is O(60) and memory is constant however busy the queue is.

/// Width of one bucket, ms.
const BUCKET_MS: u64 = 5_000;
/// Buckets in the ring.
const BUCKETS: usize = 60;
/// How far back the window reaches, ms (the last 295 to 300 s, at bucket granularity).
pub const WINDOW_MS: u64 = BUCKET_MS * BUCKETS as u64;

/// How an attempt ended, as the window and `/metrics` count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The job completed.
    Completed,
    /// The job failed for good.
    Failed,
    /// The attempt failed and the job was queued again for its next attempt.
    Retried,
    /// A client cancelled the job.
    Cancelled,
    /// The server stopped during the attempt; the job was re-queued (or failed when its
    /// attempts were spent, which counts as `Failed`).
    Interrupted,
}

impl Outcome {
    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Retried => "retried",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// `ms / BUCKET_MS` of the time this bucket counts; stale buckets are reset on use.
    slot: u64,
    started: u64,
    queue_ms: u64,
    finished: u64,
    run_ms: u64,
    completed: u64,
    failed: u64,
    retried: u64,
    cancelled: u64,
}

/// Totals of the recent window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowSummary {
    /// Attempts started.
    pub started: u64,
    /// Sum of their queue waits, ms.
    pub queue_ms: u64,
    /// Attempts finished, any outcome.
    pub finished: u64,
    /// Sum of their run times, ms.
    pub run_ms: u64,
    /// Jobs completed.
    pub completed: u64,
    /// Jobs failed for good.
    pub failed: u64,
    /// Attempts that failed and were retried.
    pub retried: u64,
    /// Jobs cancelled while running.
    pub cancelled: u64,
}

impl WindowSummary {
    /// Mean queue wait of the attempts started, ms.
    pub fn avg_queue_ms(&self) -> Option<u64> {
        self.queue_ms.checked_div(self.started)
    }

    /// Mean run time of the attempts finished, ms.
    pub fn avg_run_ms(&self) -> Option<u64> {
        self.run_ms.checked_div(self.finished)
    }

    /// Jobs decided (completed or failed for good).
    pub fn decided(&self) -> u64 {
        self.completed + self.failed
    }

    /// `completed / (completed + failed)`; `None` when nothing was decided.
    pub fn success_rate(&self) -> Option<f64> {
        let decided = self.decided();
        (decided > 0).then(|| self.completed as f64 / decided as f64)
    }

    /// Jobs decided per minute: `decided / 5`.
    pub fn throughput_per_min(&self) -> f64 {
        self.decided() as f64 * 60_000.0 / WINDOW_MS as f64
    }
}

/// One queue's ring of recent buckets.
#[derive(Clone, Debug)]
pub struct RecentWindow {
    buckets: [Bucket; BUCKETS],
}

impl Default for RecentWindow {
    fn default() -> Self {
        Self {
            buckets: [Bucket::default(); BUCKETS],
        }
    }
}

impl RecentWindow {
    fn bucket(&mut self, now_ms: u64) -> &mut Bucket {
        let slot = now_ms / BUCKET_MS;
        let bucket = &mut self.buckets[(slot % BUCKETS as u64) as usize];
        if bucket.slot != slot {
            *bucket = Bucket {
                slot,
                ..Bucket::default()
            };
        }
        bucket
    }

    /// An attempt started after waiting `queue_ms`.
    pub fn started(&mut self, now_ms: u64, queue_ms: u64) {
        let bucket = self.bucket(now_ms);
        bucket.started += 1;
        bucket.queue_ms += queue_ms;
    }

    /// An attempt ended with `outcome` after running `run_ms`.
    pub fn finished(&mut self, now_ms: u64, outcome: Outcome, run_ms: u64) {
        let bucket = self.bucket(now_ms);
        bucket.finished += 1;
        bucket.run_ms += run_ms;
        match outcome {
            Outcome::Completed => bucket.completed += 1,
            Outcome::Failed => bucket.failed += 1,
            Outcome::Retried => bucket.retried += 1,
            Outcome::Cancelled => bucket.cancelled += 1,
            Outcome::Interrupted => {}
        }
    }

    /// The totals of the buckets within the window ending at `now_ms`.
    pub fn summary(&self, now_ms: u64) -> WindowSummary {
        let now_slot = now_ms / BUCKET_MS;
        let mut sum = WindowSummary::default();
        for b in self
            .buckets
            .iter()
            .filter(|b| b.slot <= now_slot && b.slot + BUCKETS as u64 > now_slot)
        {
            sum.started += b.started;
            sum.queue_ms += b.queue_ms;
            sum.finished += b.finished;
            sum.run_ms += b.run_ms;
            sum.completed += b.completed;
            sum.failed += b.failed;
            sum.retried += b.retried;
            sum.cancelled += b.cancelled;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_and_forgets_older_buckets() {
        let mut window = RecentWindow::default();
        let t0 = 1_700_000_000_000;
        window.started(t0, 100);
        window.finished(t0, Outcome::Completed, 1_000);
        window.finished(t0 + 1_000, Outcome::Failed, 3_000);
        window.finished(t0 + 2_000, Outcome::Retried, 10);
        let now = window.summary(t0 + 10_000);
        assert_eq!(now.started, 1);
        assert_eq!(now.avg_queue_ms(), Some(100));
        assert_eq!(now.finished, 3);
        assert_eq!((now.completed, now.failed, now.retried), (1, 1, 1));
        assert_eq!(now.success_rate(), Some(0.5));
        assert!((now.throughput_per_min() - 0.4).abs() < 1e-9);
        // Six minutes later everything has left the window, and a new record reuses the
        // slot without the old counts.
        let later = t0 + 6 * 60_000;
        assert_eq!(window.summary(later), WindowSummary::default());
        window.finished(later, Outcome::Completed, 5);
        let summary = window.summary(later);
        assert_eq!((summary.finished, summary.completed), (1, 1));
        assert_eq!(summary.success_rate(), Some(1.0));
    }

    #[test]
    fn empty_window_has_no_averages() {
        let summary = RecentWindow::default().summary(1_700_000_000_000);
        assert_eq!(summary.avg_queue_ms(), None);
        assert_eq!(summary.avg_run_ms(), None);
        assert_eq!(summary.success_rate(), None);
        assert_eq!(summary.throughput_per_min(), 0.0);
    }
}
