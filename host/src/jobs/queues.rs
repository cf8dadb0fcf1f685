//! In-memory queues: which queued jobs run next. The store is the truth; this is an index
//! of it rebuilt at start, so it never needs to be durable.
//!
//! The order: higher priority first; within a priority, the job whose concurrency key has
//! the fewest jobs running gets the next slot, and among those the oldest (ids are
//! UUIDv7, ordered by creation). A key at its queue's `max_per_key` waits. Jobs without a
//! key share one group, which no `max_per_key` limits, so a queue where no job has a key
//! runs strictly by priority then age. The PostgreSQL claim
//! (`store/postgres/claim.sql`) follows the same order.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use uuid::Uuid;

use crate::store::JobRecord;

/// A job's concurrency key (`None`: the group of jobs without one).
pub type Key = Option<Arc<str>>;

/// A queued job the queues need to know of.
#[derive(Clone, Debug)]
pub struct Waiting {
    pub id: Uuid,
    pub priority: i32,
    pub key: Key,
    pub run_at_ms: Option<u64>,
}

impl Waiting {
    pub fn of(job: &JobRecord) -> Self {
        Self {
            id: job.id,
            priority: job.priority,
            key: key_of(job),
            run_at_ms: job.run_at_ms,
        }
    }
}

/// The key `job` is queued under.
pub fn key_of(job: &JobRecord) -> Key {
    job.concurrency_key.as_deref().map(Arc::from)
}

/// A ready job's place in its key's group: higher priority first, then older.
type Place = (Reverse<i32>, Uuid);

/// A group's turn, for the groups that may start a job now: its head's priority, its
/// running jobs, its head's id. The smallest goes next.
type Turn = (Reverse<i32>, usize, Uuid, Key);

/// What the queue knows of a ready job, by id.
#[derive(Clone, Debug)]
struct ReadyJob {
    priority: i32,
    key: Key,
    /// When it became ready (queued, or its `run_at` came), ms.
    since_ms: u64,
}

/// One queue's waiting and running jobs, and its figures.
#[derive(Debug, Default)]
pub struct Queue {
    /// Max running at once.
    pub limit: usize,
    /// Max running at once with one concurrency key (`None`: no limit but `limit`).
    pub max_per_key: Option<usize>,
    /// Running now.
    pub running: usize,
    /// Running jobs this queue gave a slot to, with their keys.
    holders: HashMap<Uuid, Key>,
    /// Running jobs per concurrency key (the keyless group included).
    running_by_key: HashMap<Key, usize>,
    /// Ready jobs by key, each group in order.
    groups: HashMap<Key, BTreeSet<Place>>,
    /// The turn of every group that has a ready job and is below `max_per_key`: the next
    /// job to start is the first's head, found in O(log groups) however many keys wait.
    turns: BTreeSet<Turn>,
    ready: HashMap<Uuid, ReadyJob>,
    /// (run_at ms, id) of jobs waiting for their time.
    delayed: BTreeSet<(u64, Uuid)>,
    delayed_jobs: HashMap<Uuid, Waiting>,
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
    pub fn oldest_ready_since(&self) -> Option<u64> {
        self.ready.values().map(|ready| ready.since_ms).min()
    }

    /// Gives `job` a slot now if one is free, its key is below `max_per_key` and no job
    /// is due ahead of it (a job that is ready, or delayed but due by `now_ms`, and may
    /// run).
    pub fn try_reserve(&mut self, id: Uuid, key: &Key, now_ms: u64) -> bool {
        let due_ahead =
            !self.ready.is_empty() || self.delayed.first().is_some_and(|&(at, _)| at <= now_ms);
        if self.running >= self.limit || due_ahead || self.key_is_full(key) {
            return false;
        }
        self.hold(id, key.clone());
        true
    }

    /// Frees the slot of job `id`.
    pub fn release(&mut self, id: Uuid) {
        if let Some(key) = self.holders.remove(&id) {
            self.changing_group(&key, |queue| {
                if let Some(count) = queue.running_by_key.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        queue.running_by_key.remove(&key);
                    }
                }
            });
        }
        self.running = self.running.saturating_sub(1);
    }

    fn hold(&mut self, id: Uuid, key: Key) {
        self.running += 1;
        self.changing_group(&key, |queue| {
            *queue.running_by_key.entry(key.clone()).or_default() += 1;
        });
        self.holders.insert(id, key);
    }

    /// Applies `change` to the group `key` (its ready jobs or its running count), keeping
    /// its turn current.
    fn changing_group(&mut self, key: &Key, change: impl FnOnce(&mut Self)) {
        if let Some(turn) = self.turn_of(key) {
            self.turns.remove(&turn);
        }
        change(self);
        if let Some(turn) = self.turn_of(key) {
            self.turns.insert(turn);
        }
    }

    /// The group's turn, if it has a ready job and may start one.
    fn turn_of(&self, key: &Key) -> Option<Turn> {
        if self.key_is_full(key) {
            return None;
        }
        let &(priority, id) = self.groups.get(key)?.first()?;
        Some((priority, self.running_of(key), id, key.clone()))
    }

    fn running_of(&self, key: &Key) -> usize {
        self.running_by_key.get(key).copied().unwrap_or(0)
    }

    /// Whether a job with `key` must wait for one of its key's jobs to end.
    fn key_is_full(&self, key: &Key) -> bool {
        key.is_some()
            && self
                .max_per_key
                .is_some_and(|max| self.running_of(key) >= max)
    }

    fn make_ready(&mut self, job: Waiting, since_ms: u64) {
        self.changing_group(&job.key, |queue| {
            queue
                .groups
                .entry(job.key.clone())
                .or_default()
                .insert((Reverse(job.priority), job.id));
        });
        self.ready.insert(
            job.id,
            ReadyJob {
                priority: job.priority,
                key: job.key,
                since_ms,
            },
        );
    }

    /// The next job to start: the head of the group whose turn it is.
    fn next_ready(&self) -> Option<(Key, Place)> {
        let (priority, _, id, key) = self.turns.first()?;
        Some((key.clone(), (*priority, *id)))
    }

    /// Takes the job at `place` of group `key` out of the ready jobs.
    fn take_ready(&mut self, key: &Key, place: Place) {
        self.changing_group(key, |queue| {
            if let Some(group) = queue.groups.get_mut(key) {
                group.remove(&place);
                if group.is_empty() {
                    queue.groups.remove(key);
                }
            }
        });
        self.ready.remove(&place.1);
    }
}

/// Every queue, by name.
#[derive(Debug, Default)]
pub struct Queues {
    queues: HashMap<String, Queue>,
}

/// A queue's limits: its name, `max_concurrent` and `max_per_key`.
pub type QueueLimits<'a> = (&'a str, usize, Option<usize>);

impl Queues {
    /// The queue `name`, created with its limits on first use.
    pub fn queue(&mut self, (name, limit, max_per_key): QueueLimits<'_>) -> &mut Queue {
        self.queues
            .entry(name.to_string())
            .or_insert_with(|| Queue {
                limit,
                max_per_key,
                ..Queue::default()
            })
    }

    /// Adds a queued job; it is ready at once unless its `run_at_ms` is later than
    /// `now_ms`. A job the queue already holds is left as it is: a job queued by its dependencies'
    /// end may also be found by the scan at start.
    pub fn push(&mut self, limits: QueueLimits<'_>, job: Waiting, now_ms: u64) {
        let queue = self.queue(limits);
        if queue.ready.contains_key(&job.id) || queue.delayed_jobs.contains_key(&job.id) {
            return;
        }
        match job.run_at_ms {
            Some(at) if at > now_ms => {
                queue.delayed.insert((at, job.id));
                queue.delayed_jobs.insert(job.id, job);
            }
            _ => queue.make_ready(job, now_ms),
        }
    }

    /// Takes every job that may start now (due, and within its queue's limits), counting
    /// it as running. Returns them with their queue names, and the time of the next
    /// delayed job, if any.
    pub fn take_startable(&mut self, now_ms: u64) -> (Vec<(String, Uuid)>, Option<u64>) {
        let mut start = Vec::new();
        let mut next_wake: Option<u64> = None;
        for (name, queue) in &mut self.queues {
            while let Some(&(at, id)) = queue.delayed.first() {
                if at > now_ms {
                    next_wake = Some(next_wake.map_or(at, |w| w.min(at)));
                    break;
                }
                queue.delayed.pop_first();
                if let Some(job) = queue.delayed_jobs.remove(&id) {
                    queue.make_ready(job, at);
                }
            }
            while queue.running < queue.limit {
                let Some((key, place)) = queue.next_ready() else {
                    break;
                };
                queue.take_ready(&key, place);
                queue.hold(place.1, key);
                start.push((name.clone(), place.1));
            }
        }
        (start, next_wake)
    }

    /// Takes a waiting job out of its queue (it was cancelled). Returns whether it was there.
    pub fn remove(&mut self, name: &str, id: Uuid) -> bool {
        let Some(queue) = self.queues.get_mut(name) else {
            return false;
        };
        if let Some(ready) = queue.ready.get(&id).cloned() {
            queue.take_ready(&ready.key, (Reverse(ready.priority), id));
            return true;
        }
        match queue.delayed_jobs.remove(&id) {
            Some(job) => queue.delayed.remove(&(job.run_at_ms.unwrap_or(0), id)),
            None => false,
        }
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

    fn job(priority: i32, key: Option<&str>, run_at_ms: Option<u64>) -> Waiting {
        Waiting {
            id: Uuid::now_v7(),
            priority,
            key: key.map(Arc::from),
            run_at_ms,
        }
    }

    fn started(queues: &mut Queues, now_ms: u64) -> Vec<Uuid> {
        let (started, _) = queues.take_startable(now_ms);
        started.into_iter().map(|(_, id)| id).collect()
    }

    #[test]
    fn priority_then_age_within_the_limit() {
        let mut queues = Queues::default();
        let (old, new, urgent) = (job(0, None, None), job(0, None, None), job(5, None, None));
        for waiting in [&old, &new, &urgent] {
            queues.push(("q", 2, None), waiting.clone(), 0);
        }
        assert_eq!(started(&mut queues, 0), vec![urgent.id, old.id]);
        assert_eq!(queues.total_depth(), 1);
    }

    #[test]
    fn removed_jobs_no_longer_count_or_start() {
        let mut queues = Queues::default();
        let (ready, delayed) = (job(0, Some("a"), None), job(0, None, Some(1_000)));
        queues.push(("q", 4, None), ready.clone(), 0);
        queues.push(("q", 4, None), delayed.clone(), 0);
        assert!(queues.remove("q", ready.id));
        assert!(queues.remove("q", delayed.id));
        assert!(!queues.remove("q", ready.id));
        assert_eq!(queues.total_depth(), 0);
        assert!(queues.take_startable(2_000).0.is_empty());
    }

    #[test]
    fn delayed_jobs_wait_for_their_time() {
        let mut queues = Queues::default();
        let delayed = job(0, None, Some(1_000));
        queues.push(("q", 4, None), delayed.clone(), 0);
        let (none, wake) = queues.take_startable(500);
        assert!(none.is_empty());
        assert_eq!(wake, Some(1_000));
        assert_eq!(started(&mut queues, 1_000), vec![delayed.id]);
    }

    #[test]
    fn the_key_with_fewest_running_goes_next() {
        let mut queues = Queues::default();
        let a: Vec<Waiting> = (0..6).map(|_| job(0, Some("a"), None)).collect();
        let b: Vec<Waiting> = (0..2).map(|_| job(0, Some("b"), None)).collect();
        for waiting in a.iter().chain(&b) {
            queues.push(("q", 2, None), waiting.clone(), 0);
        }
        // a's oldest first (a tie at 0 running), then b's (a has one running).
        assert_eq!(started(&mut queues, 0), vec![a[0].id, b[0].id]);
        queues.get_mut("q").unwrap().release(a[0].id);
        // a has none running now, b one: a goes.
        assert_eq!(started(&mut queues, 0), vec![a[1].id]);
        queues.get_mut("q").unwrap().release(a[1].id);
        assert_eq!(started(&mut queues, 0), vec![a[2].id]);
        queues.get_mut("q").unwrap().release(b[0].id);
        assert_eq!(started(&mut queues, 0), vec![b[1].id]);
    }

    #[test]
    fn a_key_at_max_per_key_waits_and_others_pass() {
        let mut queues = Queues::default();
        let a: Vec<Waiting> = (0..4).map(|_| job(0, Some("a"), None)).collect();
        let keyless = job(0, None, None);
        for waiting in a.iter().chain([&keyless]) {
            queues.push(("q", 4, Some(2)), waiting.clone(), 0);
        }
        assert_eq!(started(&mut queues, 0), vec![a[0].id, keyless.id, a[1].id]);
        assert!(started(&mut queues, 0).is_empty(), "a is at its limit");
        let queue = queues.get_mut("q").unwrap();
        let late = job(0, Some("a"), None);
        assert!(
            !queue.try_reserve(late.id, &late.key, 0),
            "a is at its limit"
        );
        queue.release(a[0].id);
        assert_eq!(started(&mut queues, 0), vec![a[2].id]);
    }

    #[test]
    fn a_higher_priority_comes_before_fairness() {
        let mut queues = Queues::default();
        let busy = job(0, Some("a"), None);
        let (urgent, other) = (job(5, Some("a"), None), job(0, Some("b"), None));
        queues.push(("q", 1, None), busy.clone(), 0);
        assert_eq!(started(&mut queues, 0), vec![busy.id]);
        queues.push(("q", 1, None), other.clone(), 0);
        queues.push(("q", 1, None), urgent.clone(), 0);
        queues.get_mut("q").unwrap().release(busy.id);
        assert_eq!(started(&mut queues, 0), vec![urgent.id]);
    }

    /// The next job by the rule itself: the best head over every group that may start.
    fn by_the_rule(queue: &Queue) -> Option<Uuid> {
        queue
            .groups
            .iter()
            .filter(|(key, _)| !queue.key_is_full(key))
            .filter_map(|(key, group)| group.first().map(|&(p, id)| (p, queue.running_of(key), id)))
            .min()
            .map(|(_, _, id)| id)
    }

    #[test]
    fn the_turn_index_agrees_with_the_rule_under_random_changes() {
        let mut rng = fastrand::Rng::with_seed(7);
        let keys: Vec<Option<&str>> = vec![None, Some("a"), Some("b"), Some("c"), Some("d")];
        let mut queues = Queues::default();
        let mut running: Vec<Uuid> = Vec::new();
        let mut waiting: Vec<Uuid> = Vec::new();
        for step in 0..5_000 {
            match rng.u8(0..4) {
                0 | 1 => {
                    let key = keys[rng.usize(0..keys.len())];
                    let waiting_job = job(rng.i32(0..3), key, None);
                    waiting.push(waiting_job.id);
                    queues.push(("q", 3, Some(2)), waiting_job, 0);
                }
                2 if !running.is_empty() => {
                    let id = running.swap_remove(rng.usize(0..running.len()));
                    queues.get_mut("q").unwrap().release(id);
                }
                _ if !waiting.is_empty() && rng.bool() => {
                    let id = waiting.swap_remove(rng.usize(0..waiting.len()));
                    queues.remove("q", id);
                }
                _ => {}
            }
            let queue = queues.get_mut("q").unwrap();
            let expected = (queue.running < queue.limit)
                .then(|| by_the_rule(queue))
                .flatten();
            let started = started(&mut queues, 0);
            assert_eq!(started.first().copied(), expected, "step {step}");
            for id in started {
                waiting.retain(|w| *w != id);
                running.push(id);
            }
        }
    }
}
