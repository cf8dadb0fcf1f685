//! Provider limits shared with the other nodes of a cluster.
//!
//! Each node's [`Admission`](super::Admission) keeps its own callers fair and within the
//! provider's limits; when several nodes share one database, a request must also be
//! admitted by the cluster, so `max_concurrent`, `requests_per_minute` and
//! `tokens_per_minute` hold for all nodes together and a 429's pause stops every node.
//! The store implements [`SharedLimits`] (this module knows nothing of databases); the
//! server hands it to the providers through a [`SharedLimitsCell`] once the store is open.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;

use super::AdmissionConfig;

/// The cluster's answer to a request asking to be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedAdmit {
    /// Sent: the request holds the cluster's slot `call` until it is released.
    Admitted(u64),
    /// Not yet: a per-minute window or a pause allows it after this long.
    WaitFor(Duration),
    /// Not yet: as many requests as the cluster allows are in flight.
    Busy,
}

/// Limits kept for the whole cluster, by provider name.
pub trait SharedLimits: Send + Sync + 'static {
    /// Admits one request reserving `tokens` to `provider` under `limits`, or says why not.
    /// An error is the shared state being unreachable.
    fn admit<'a>(
        &'a self,
        provider: &'a str,
        limits: &'a AdmissionConfig,
        tokens: u32,
    ) -> BoxFuture<'a, Result<SharedAdmit, String>>;

    /// Ends the admitted request `call`, which was paid for `tokens` tokens.
    fn release(&self, call: u64, tokens: u64) -> BoxFuture<'_, Result<(), String>>;

    /// Lets no node send to `provider` for `pause` (a later pause already set is kept).
    fn pause<'a>(&'a self, provider: &'a str, pause: Duration)
    -> BoxFuture<'a, Result<(), String>>;
}

/// Where the providers find the cluster's limits: empty on a single node. Set once, after
/// the providers were built and the store was opened.
#[derive(Clone, Default)]
pub struct SharedLimitsCell(Arc<OnceLock<Arc<dyn SharedLimits>>>);

impl std::fmt::Debug for SharedLimitsCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedLimitsCell")
            .field(&self.0.get().is_some())
            .finish()
    }
}

impl SharedLimitsCell {
    /// Makes every provider built with this cell ask `limits` too. A second call is ignored.
    pub fn set(&self, limits: Arc<dyn SharedLimits>) {
        let _ = self.0.set(limits);
    }

    /// The cluster's limits, if this node is part of one.
    pub fn get(&self) -> Option<&Arc<dyn SharedLimits>> {
        self.0.get()
    }
}

/// Tries to release a call before giving up (about 30 s in all).
const RELEASE_TRIES: u32 = 7;

/// An admitted request's place in the cluster's count; released when dropped (in the
/// background, so a cancelled call still frees its slot).
pub struct SharedSlot {
    limits: Arc<dyn SharedLimits>,
    call: u64,
    tokens: u64,
}

impl SharedSlot {
    pub(super) fn new(limits: Arc<dyn SharedLimits>, call: u64, reserved: u32) -> Self {
        Self {
            limits,
            call,
            tokens: u64::from(reserved),
        }
    }

    /// The tokens the provider counted, in place of the reservation.
    pub fn settle(&mut self, tokens: u64) {
        self.tokens = tokens;
    }
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        let (limits, call, tokens) = (self.limits.clone(), self.call, self.tokens);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // Until it is released the call counts as in flight, so a database that
                // is briefly away gets a few more tries.
                for tries in 1..=RELEASE_TRIES {
                    match limits.release(call, tokens).await {
                        Ok(()) => return,
                        Err(error) if tries == RELEASE_TRIES => tracing::warn!(
                            %error,
                            "could not release a provider call in the cluster; it counts as \
                             in flight until this node restarts"
                        ),
                        Err(_) => tokio::time::sleep(Duration::from_millis(250 << tries)).await,
                    }
                }
            });
        }
    }
}
