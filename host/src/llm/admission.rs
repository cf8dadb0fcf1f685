//! Admission control for one provider: how many requests may be in flight, how many
//! requests and tokens per minute may start, and a pause the provider itself asked for
//! (a 429's `Retry-After`).
//!
//! One [`Admission`] exists per configured provider and every request to that provider
//! passes through [`Admission::admit`] before it is sent. Waiting requests are admitted
//! round-robin across callers (jobs), so one job's `complete-all` of 50 requests does not
//! starve another job's single request: each caller's requests queue in order, and the
//! callers take turns.
//!
//! Limits and defaults:
//! - `max_concurrent`: requests in flight at once. Default 8 (see [`DEFAULT_MAX_CONCURRENT`]).
//! - `requests_per_minute`: a token bucket holding a minute's worth of requests, refilled
//!   continuously; it starts full. Unset means unlimited.
//! - `tokens_per_minute`: the same for tokens. A request reserves its estimated input
//!   tokens plus its `max_tokens` when it is admitted; [`Permit::settle`] corrects the
//!   bucket with the tokens the provider actually counted. A reservation larger than the
//!   whole bucket is clamped to the bucket, so such a request waits for a full bucket rather
//!   than forever. Unset means unlimited.
//! - [`Admission::pause_until`]: no request of any caller is admitted before that instant.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Requests in flight per provider when the config sets no `max_concurrent`.
pub const DEFAULT_MAX_CONCURRENT: usize = 8;

/// The caller name of calls made outside a job.
pub const ANONYMOUS_CALLER: &str = "anonymous";

/// The limits of one provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Requests in flight at once (at least 1). Default 8.
    pub max_concurrent: usize,
    /// Requests that may start per minute; `None` is unlimited (the default).
    pub requests_per_minute: Option<u32>,
    /// Tokens (input + output) per minute; `None` is unlimited (the default).
    pub tokens_per_minute: Option<u32>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            requests_per_minute: None,
            tokens_per_minute: None,
        }
    }
}

/// Admission control of one provider. Cheap to clone: clones share the same limits.
#[derive(Clone, Debug)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_concurrent: usize,
    state: Mutex<State>,
    /// Woken whenever something that could admit a waiter changed.
    changed: Notify,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    paused_until: Option<Instant>,
    /// Callers with waiting requests, in the order they take turns.
    turns: VecDeque<String>,
    /// Each caller's waiting tickets, oldest first.
    waiting: HashMap<String, VecDeque<u64>>,
    next_ticket: u64,
}

/// A token bucket: `level` may go below zero when actual usage exceeded a reservation
/// (a debt the refill pays back first).
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    level: f64,
    per_second: f64,
    at: Instant,
}

impl Bucket {
    fn per_minute(amount: u32, now: Instant) -> Self {
        let capacity = f64::from(amount.max(1));
        Self {
            capacity,
            level: capacity,
            per_second: capacity / 60.0,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.capacity);
        self.at = now;
    }

    /// The part of `amount` this bucket can ever hold.
    fn clamp(&self, amount: f64) -> f64 {
        amount.min(self.capacity)
    }

    /// How long until `amount` is available (zero if it is now).
    fn wait_for(&self, amount: f64) -> Duration {
        let missing = self.clamp(amount) - self.level;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.per_second)
        }
    }

    fn add(&mut self, amount: f64) {
        self.level = (self.level + amount).min(self.capacity);
    }
}

/// Why a request cannot be admitted right now.
enum Blocked {
    /// Until a request in flight finishes.
    Busy,
    /// For this long (a bucket refilling, or a pause).
    For(Duration),
}

impl State {
    fn is_turn(&self, caller: &str, ticket: u64) -> bool {
        self.turns.front().is_some_and(|c| c == caller)
            && self
                .waiting
                .get(caller)
                .and_then(|queue| queue.front())
                .is_some_and(|t| *t == ticket)
    }

    /// Takes a slot, a request and `tokens` if all are available now.
    fn try_take(
        &mut self,
        max_concurrent: usize,
        tokens: f64,
        now: Instant,
    ) -> Result<f64, Blocked> {
        if let Some(until) = self.paused_until {
            if until > now {
                return Err(Blocked::For(until - now));
            }
            self.paused_until = None;
        }
        if self.in_flight >= max_concurrent {
            return Err(Blocked::Busy);
        }
        let mut wait = Duration::ZERO;
        if let Some(bucket) = &mut self.requests {
            bucket.refill(now);
            wait = wait.max(bucket.wait_for(1.0));
        }
        if let Some(bucket) = &mut self.tokens {
            bucket.refill(now);
            wait = wait.max(bucket.wait_for(tokens));
        }
        if !wait.is_zero() {
            return Err(Blocked::For(wait));
        }
        self.in_flight += 1;
        if let Some(bucket) = &mut self.requests {
            bucket.level -= 1.0;
        }
        let mut reserved = 0.0;
        if let Some(bucket) = &mut self.tokens {
            reserved = bucket.clamp(tokens);
            bucket.level -= reserved;
        }
        Ok(reserved)
    }

    /// Ends `caller`'s turn after its oldest ticket was admitted: the caller goes to the
    /// back of the line if it has more waiting.
    fn end_turn(&mut self, caller: &str) {
        self.turns.pop_front();
        let more = match self.waiting.get_mut(caller) {
            Some(queue) => {
                queue.pop_front();
                !queue.is_empty()
            }
            None => false,
        };
        if more {
            self.turns.push_back(caller.to_string());
        } else {
            self.waiting.remove(caller);
        }
    }

    /// Forgets a ticket whose request stopped waiting (timed out, cancelled).
    fn forget(&mut self, caller: &str, ticket: u64) {
        let Some(queue) = self.waiting.get_mut(caller) else {
            return;
        };
        queue.retain(|t| *t != ticket);
        if queue.is_empty() {
            self.waiting.remove(caller);
            self.turns.retain(|c| c != caller);
        }
    }
}

impl Admission {
    /// Admission control with these limits.
    pub fn new(config: &AdmissionConfig) -> Self {
        let now = Instant::now();
        Self {
            inner: Arc::new(Inner {
                max_concurrent: config.max_concurrent.max(1),
                state: Mutex::new(State {
                    in_flight: 0,
                    requests: config
                        .requests_per_minute
                        .map(|n| Bucket::per_minute(n, now)),
                    tokens: config.tokens_per_minute.map(|n| Bucket::per_minute(n, now)),
                    paused_until: None,
                    turns: VecDeque::new(),
                    waiting: HashMap::new(),
                    next_ticket: 0,
                }),
                changed: Notify::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across every early return, so a poisoned lock (a
        // panic elsewhere while holding it) is safe to keep using.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `caller` may send one request that is estimated to use
    /// `estimated_tokens` (input plus output), then holds its slot until the returned
    /// permit is dropped. Callers take turns; each caller's own requests go in order.
    ///
    /// Never fails: bound the wait with a timeout (dropping the future leaves the line).
    pub async fn admit(&self, caller: &str, estimated_tokens: u32) -> Permit {
        let ticket = {
            let mut state = self.state();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            let queue = state.waiting.entry(caller.to_string()).or_default();
            if queue.is_empty() {
                state.turns.push_back(caller.to_string());
            }
            state
                .waiting
                .get_mut(caller)
                .expect("just inserted")
                .push_back(ticket);
            ticket
        };
        let mut in_line = InLine {
            admission: self,
            caller,
            ticket,
            admitted: false,
        };
        let tokens = f64::from(estimated_tokens);
        loop {
            // Registered before looking, so a change after the look still wakes us.
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let blocked = {
                let mut state = self.state();
                if state.is_turn(caller, ticket) {
                    match state.try_take(self.inner.max_concurrent, tokens, Instant::now()) {
                        Ok(reserved) => {
                            state.end_turn(caller);
                            drop(state);
                            in_line.admitted = true;
                            // The next in line may fit too.
                            self.inner.changed.notify_waiters();
                            return Permit {
                                admission: self.clone(),
                                reserved,
                            };
                        }
                        Err(blocked) => blocked,
                    }
                } else {
                    Blocked::Busy
                }
            };
            match blocked {
                Blocked::Busy => changed.await,
                Blocked::For(wait) => {
                    tokio::select! {
                        () = &mut changed => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// How long the request at the head of the line would wait for the rate buckets and
    /// any pause if it asked for `estimated_tokens` now (zero when nothing limits it).
    /// Lets a caller with a deadline give up at once instead of waiting in vain.
    pub fn rate_wait(&self, estimated_tokens: u32) -> Duration {
        let mut state = self.state();
        let now = Instant::now();
        let mut wait = state
            .paused_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        if let Some(bucket) = &mut state.requests {
            bucket.refill(now);
            wait = wait.max(bucket.wait_for(1.0));
        }
        if let Some(bucket) = &mut state.tokens {
            bucket.refill(now);
            wait = wait.max(bucket.wait_for(f64::from(estimated_tokens)));
        }
        wait
    }

    /// Admits nothing before `until` (a provider's `Retry-After`). A later pause already in
    /// force is kept.
    pub fn pause_until(&self, until: Instant) {
        {
            let mut state = self.state();
            if state.paused_until.is_none_or(|current| current < until) {
                state.paused_until = Some(until);
            }
        }
        self.inner.changed.notify_waiters();
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.state().in_flight
    }
}

/// A request's place in line; leaving the line early (the future dropped) forgets it.
struct InLine<'a> {
    admission: &'a Admission,
    caller: &'a str,
    ticket: u64,
    admitted: bool,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        if !self.admitted {
            self.admission.state().forget(self.caller, self.ticket);
            self.admission.inner.changed.notify_waiters();
        }
    }
}

/// One admitted request: holds a concurrency slot until dropped.
#[derive(Debug)]
#[must_use = "the request's slot is released when the permit is dropped"]
pub struct Permit {
    admission: Admission,
    reserved: f64,
}

impl Permit {
    /// Corrects the tokens-per-minute bucket with the tokens the request really used
    /// (input plus output): the difference to the reservation is given back, or taken.
    pub fn settle(&mut self, actual_tokens: u64) {
        let actual = actual_tokens as f64;
        let mut state = self.admission.state();
        if let Some(bucket) = &mut state.tokens {
            bucket.refill(Instant::now());
            bucket.add(self.reserved - actual);
        }
        self.reserved = actual;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.state().in_flight -= 1;
        self.admission.inner.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrency_is_bounded_and_released() {
        let admission = Admission::new(&AdmissionConfig {
            max_concurrent: 2,
            ..Default::default()
        });
        let a = admission.admit("x", 0).await;
        let _b = admission.admit("x", 0).await;
        assert_eq!(admission.in_flight(), 2);
        let third = tokio::time::timeout(Duration::from_millis(50), admission.admit("x", 0)).await;
        assert!(third.is_err(), "a third request must wait");
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(5), admission.admit("x", 0))
            .await
            .expect("admitted after a release");
        assert_eq!(admission.in_flight(), 2);
    }

    #[tokio::test]
    async fn buckets_reserve_and_settle_corrects() {
        let admission = Admission::new(&AdmissionConfig {
            max_concurrent: 10,
            requests_per_minute: Some(60),
            tokens_per_minute: Some(600),
        });
        let mut permit = admission.admit("x", 500).await;
        assert!(admission.rate_wait(500) > Duration::ZERO);
        // Used only 100 of the 500 reserved: 400 come back.
        permit.settle(100);
        assert_eq!(admission.rate_wait(500), Duration::ZERO);
        drop(permit);
    }

    #[tokio::test]
    async fn a_pause_holds_everyone() {
        let admission = Admission::new(&AdmissionConfig::default());
        let until = Instant::now() + Duration::from_millis(300);
        admission.pause_until(until);
        assert!(admission.rate_wait(0) > Duration::ZERO);
        let held = tokio::time::timeout(Duration::from_millis(50), admission.admit("x", 0)).await;
        assert!(held.is_err(), "nothing is admitted during a pause");
        let _permit = tokio::time::timeout(Duration::from_secs(10), admission.admit("x", 0))
            .await
            .expect("admitted after the pause");
        assert!(Instant::now() >= until);
    }

    #[tokio::test]
    async fn callers_take_turns() {
        let admission = Admission::new(&AdmissionConfig {
            max_concurrent: 1,
            ..Default::default()
        });
        let first = admission.admit("a", 0).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (caller, n) in [("a", 5), ("b", 1)] {
            for i in 0..n {
                let shared = admission.clone();
                let order = order.clone();
                tasks.push(tokio::spawn(async move {
                    let _permit = shared.admit(caller, 0).await;
                    order.lock().unwrap().push(format!("{caller}{i}"));
                }));
                // Queue in a known order.
                while admission
                    .state()
                    .waiting
                    .values()
                    .map(VecDeque::len)
                    .sum::<usize>()
                    < tasks.len()
                {
                    tokio::task::yield_now().await;
                }
            }
        }
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order, ["a0", "b0", "a1", "a2", "a3", "a4"]);
    }

    #[tokio::test]
    async fn leaving_the_line_lets_the_next_in() {
        let admission = Admission::new(&AdmissionConfig {
            max_concurrent: 1,
            ..Default::default()
        });
        let held = admission.admit("a", 0).await;
        let gave_up =
            tokio::time::timeout(Duration::from_millis(20), admission.admit("b", 0)).await;
        assert!(gave_up.is_err());
        drop(held);
        let _permit = tokio::time::timeout(Duration::from_secs(5), admission.admit("c", 0))
            .await
            .expect("the line is not stuck behind a request that left");
    }
}
