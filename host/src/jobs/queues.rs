//! In-memory queues: which queued jobs run next. The store is the truth; this is an index
//! of it rebuilt at start, so it never needs to be durable.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use uuid::Uuid;

/// A job ready to run. Higher priority first; within a priority, older first (ids are
/// UUIDv7, ordered by creation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ready {
    priority: i32,
    id: Reverse<Uuid>,
    /// When it became ready (queued, or its `run_at` came), ms; not part of the order.
    since_ms: u64,
}

impl Ord for Ready {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One queue's waiting and running jobs, and its figures.
#[derive(Debug, Default)]
pub struct Queue {
    /// Max running at once.
    pub limit: usize,
    /// Running now.
    pub running: usize,
    ready: BinaryHeap<Ready>,
    /// (run_at ms, priority, id) of jobs waiting for their time.
    delayed: BTreeSet<(u64, i32, Uuid)>,
    /// Figures since the process started.
    pub stats: QueueStats,
}

/// Running totals a queue keeps for `/v1/queues`.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueStats {
    /// Attempts started.
    pub started: u64,
    /// Jobs completed.
    pub completed: u64,
    /// Jobs failed for good.
    pub failed: u64,
    /// Sum of queue waits of started attempts, ms.
    pub queue_ms: u64,
    /// Sum of run times of finished attempts, ms.
    pub run_ms: u64,
    /// Attempts finished (any outcome).
    pub finished: u64,
}

impl Queue {
    /// Jobs waiting (ready or delayed).
    pub fn depth(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }

    /// When the longest-waiting ready job became ready, ms (a scan of the ready jobs).
    /// Whether a job is ready, or delayed but due by `now_ms`: a new job must not start
    /// ahead of it.
    pub fn has_due(&self, now_ms: u64) -> bool {
        !self.ready.is_empty() || self.delayed.first().is_some_and(|&(at, _, _)| at <= now_ms)
    }

    pub fn oldest_ready_since(&self) -> Option<u64> {
        self.ready.iter().map(|ready| ready.since_ms).min()
    }
}

/// Every queue, by name.
#[derive(Debug, Default)]
pub struct Queues {
    queues: HashMap<String, Queue>,
}

impl Queues {
    /// The queue `name`, created with `limit` on first use.
    pub fn queue(&mut self, name: &str, limit: usize) -> &mut Queue {
        self.queues
            .entry(name.to_string())
            .or_insert_with(|| Queue {
                limit,
                ..Queue::default()
            })
    }

    /// Adds a queued job; it is ready at once unless `run_at_ms` is later than `now_ms`.
    pub fn push(
        &mut self,
        (name, limit): (&str, usize),
        id: Uuid,
        priority: i32,
        run_at_ms: Option<u64>,
        now_ms: u64,
    ) {
        let queue = self.queue(name, limit);
        match run_at_ms {
            Some(at) if at > now_ms => {
                queue.delayed.insert((at, priority, id));
            }
            _ => queue.ready.push(Ready {
                priority,
                id: Reverse(id),
                since_ms: now_ms,
            }),
        }
    }

    /// Takes every job that may start now (due, and within its queue's limit), counting
    /// it as running. Returns them with their queue names, and the time of the next
    /// delayed job, if any.
    pub fn take_startable(&mut self, now_ms: u64) -> (Vec<(String, Uuid)>, Option<u64>) {
        let mut start = Vec::new();
        let mut next_wake: Option<u64> = None;
        for (name, queue) in &mut self.queues {
            while let Some(&(at, priority, id)) = queue.delayed.first() {
                if at > now_ms {
                    next_wake = Some(next_wake.map_or(at, |w| w.min(at)));
                    break;
                }
                queue.delayed.pop_first();
                queue.ready.push(Ready {
                    priority,
                    id: Reverse(id),
                    since_ms: at,
                });
            }
            while queue.running < queue.limit {
                let Some(ready) = queue.ready.pop() else {
                    break;
                };
                queue.running += 1;
                start.push((name.clone(), ready.id.0));
            }
        }
        (start, next_wake)
    }

    /// Takes a waiting job out of its queue (it was cancelled). Returns whether it was there.
    pub fn remove(&mut self, name: &str, id: Uuid) -> bool {
        let Some(queue) = self.queues.get_mut(name) else {
            return false;
        };
        let before = queue.depth();
        queue.ready.retain(|ready| ready.id.0 != id);
        queue.delayed.retain(|&(_, _, delayed)| delayed != id);
        queue.depth() < before
    }

    /// Total waiting jobs.
    pub fn total_depth(&self) -> usize {
        self.queues.values().map(Queue::depth).sum()
    }

    /// All queues.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Queue)> {
        self.queues.iter()
    }

    /// The queue `name`, if it exists.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Queue> {
        self.queues.get_mut(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_age_within_the_limit() {
        let mut queues = Queues::default();
        let (old, new, urgent) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        queues.push(("q", 2), old, 0, None, 0);
        queues.push(("q", 2), new, 0, None, 0);
        queues.push(("q", 2), urgent, 5, None, 0);
        let (started, _) = queues.take_startable(0);
        let ids: Vec<Uuid> = started.into_iter().map(|(_, id)| id).collect();
        assert_eq!(ids, vec![urgent, old]);
        assert_eq!(queues.total_depth(), 1);
    }

    #[test]
    fn removed_jobs_no_longer_count_or_start() {
        let mut queues = Queues::default();
        let (ready, delayed) = (Uuid::now_v7(), Uuid::now_v7());
        queues.push(("q", 4), ready, 0, None, 0);
        queues.push(("q", 4), delayed, 0, Some(1_000), 0);
        assert!(queues.remove("q", ready));
        assert!(queues.remove("q", delayed));
        assert!(!queues.remove("q", ready));
        assert_eq!(queues.total_depth(), 0);
        assert!(queues.take_startable(2_000).0.is_empty());
    }

    #[test]
    fn delayed_jobs_wait_for_their_time() {
        let mut queues = Queues::default();
        let id = Uuid::now_v7();
        queues.push(("q", 4), id, 0, Some(1_000), 0);
        let (started, wake) = queues.take_startable(500);
        assert!(started.is_empty());
        assert_eq!(wake, Some(1_000));
        let (started, _) = queues.take_startable(1_000);
        assert_eq!(started, vec![("q".to_string(), id)]);
    }
}
