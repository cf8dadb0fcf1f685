//! The nodes serving this store: each node's heartbeat, and the list `GET /v1/nodes`
//! answers. With PostgreSQL every node sharing the database writes its record every
//! [`HEARTBEAT`]; with redb the only node is this process.

use std::time::Duration;

use super::{JobService, ServiceError};
use crate::store::{NodeRecord, now_ms};

/// How often a node writes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// A node whose latest heartbeat is older than this is `unresponsive`: dead, cut off from
/// the database, or paused (five heartbeats missed).
pub const UNRESPONSIVE_AFTER_MS: u64 = 10_000;

/// How long a node that stopped or stopped answering stays listed.
const LISTED_FOR_MS: u64 = 24 * 3600 * 1000;

/// How long the database keeps a node that sent no heartbeat.
const KEPT_FOR_MS: u64 = 7 * 24 * 3600 * 1000;

/// Whether a node serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeStatus {
    /// Its heartbeat is recent.
    Alive,
    /// No heartbeat for [`UNRESPONSIVE_AFTER_MS`], and it did not say it stopped.
    Unresponsive,
    /// It shut down cleanly.
    Stopped,
}

impl NodeStatus {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Unresponsive => "unresponsive",
            Self::Stopped => "stopped",
        }
    }

    fn of(node: &NodeRecord, now_ms: u64) -> Self {
        if node.stopped_at_ms.is_some() {
            Self::Stopped
        } else if now_ms.saturating_sub(node.heartbeat_at_ms) > UNRESPONSIVE_AFTER_MS {
            Self::Unresponsive
        } else {
            Self::Alive
        }
    }
}

/// A node as `GET /v1/nodes` lists it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub record: NodeRecord,
    pub status: NodeStatus,
    /// Whether it is the node answering.
    pub this_node: bool,
    /// Whether it holds the leader's lease.
    pub leader: bool,
}

impl JobService {
    /// This node's record as of now; `stopped` when it shuts down.
    pub(super) fn this_node(&self, stopped: bool) -> NodeRecord {
        let now = now_ms();
        NodeRecord {
            id: self.inner.store.node_id(),
            address: self.inner.settings.node_address.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: self.inner.started_at_ms,
            heartbeat_at_ms: now,
            running_jobs: self.inner.running.lock().expect("running lock").len() as u64,
            stopped_at_ms: stopped.then_some(now),
        }
    }

    /// Writes this node's heartbeat every [`HEARTBEAT`] until the service stops.
    pub(super) async fn heartbeat_loop(self) {
        let mut failing = false;
        loop {
            match self.inner.store.record_node(&self.this_node(false)).await {
                Ok(()) => failing = false,
                Err(error) if !failing => {
                    tracing::warn!(%error, "could not write this node's heartbeat");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                () = tokio::time::sleep(HEARTBEAT) => {}
                () = self.inner.stopping.cancelled() => return,
            }
        }
    }

    /// Tells the other nodes this one stopped (best effort: a node that cannot is
    /// `unresponsive` once its heartbeat is old).
    pub(super) async fn announce_stop(&self) {
        let stopped = self.this_node(true);
        let write = self.inner.store.record_node(&stopped);
        match tokio::time::timeout(Duration::from_secs(2), write).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not record this node's stop"),
            Err(_) => tracing::warn!("recording this node's stop timed out"),
        }
    }

    /// Forgets nodes silent for a week (run by the sweep).
    pub(super) async fn forget_old_nodes(&self) {
        let before = now_ms().saturating_sub(KEPT_FOR_MS);
        if let Err(error) = self.inner.store.forget_nodes(before).await {
            tracing::warn!(%error, "could not forget old nodes");
        }
    }

    /// The nodes serving this store, this one included, oldest first; those that stopped
    /// or stopped answering stay listed for a day.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ServiceError> {
        let now = now_ms();
        let me = self.this_node(false);
        let mut nodes = self
            .inner
            .store
            .nodes(now.saturating_sub(LISTED_FOR_MS))
            .await?;
        nodes.retain(|node| node.id != me.id);
        nodes.push(me.clone());
        // UUIDv7 ids sort by first start.
        nodes.sort_by_key(|node| node.id);
        let leader = self.inner.store.leader().await?;
        Ok(nodes
            .into_iter()
            .map(|record| NodeInfo {
                status: NodeStatus::of(&record, now),
                this_node: record.id == me.id,
                leader: leader == Some(record.id),
                record,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_node_is_alive_until_its_heartbeat_is_old_or_it_stops() {
        let node = NodeRecord {
            id: Uuid::now_v7(),
            address: "127.0.0.1:8080".into(),
            version: "0.1.0".into(),
            started_at_ms: 1_000,
            heartbeat_at_ms: 50_000,
            running_jobs: 3,
            stopped_at_ms: None,
        };
        assert_eq!(NodeStatus::of(&node, 50_000), NodeStatus::Alive);
        assert_eq!(
            NodeStatus::of(&node, 50_000 + UNRESPONSIVE_AFTER_MS),
            NodeStatus::Alive
        );
        assert_eq!(
            NodeStatus::of(&node, 50_001 + UNRESPONSIVE_AFTER_MS),
            NodeStatus::Unresponsive
        );
        let stopped = NodeRecord {
            stopped_at_ms: Some(50_000),
            ..node
        };
        assert_eq!(NodeStatus::of(&stopped, 50_000), NodeStatus::Stopped);
    }
}
