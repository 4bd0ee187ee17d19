//! The relay: how messages cross nodes.
//!
//! [`Relay`] is the seam between the mesh and the broker. The mesh always
//! delivers locally first and then hands the message to the relay, which must
//! deliver it to the *other* nodes' hubs (at most once, in publish order per
//! publisher and topic). [`MemoryRelay`] is the single-node relay (the
//! embedded default: nothing to send anywhere); [`redis::RedisRelay`] is the
//! cluster relay.

pub mod dedup;
pub mod health;
pub mod memory;
pub mod queue;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use memory::MemoryRelay;

use crate::hub::{Hub, Target};

/// A boxed future, so the trait stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a node knows about a node of the cluster (itself included).
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: String,
    pub connections: u64,
    pub users: u64,
    pub channels: u64,
    pub subscriptions: u64,
    pub ready: bool,
    pub version: String,
    pub uptime_seconds: u64,
    /// True for the node that answers.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// The relay's health, for `/readyz` and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayStatus {
    pub healthy: bool,
    pub detail: String,
}

/// What became of a publish handed to the relay.
#[derive(Debug)]
pub enum Relayed {
    /// Nothing had to leave this node.
    Nothing,
    /// Queued for Redis; the receiver learns whether Redis took every
    /// envelope (`true`) or not (`false`).
    Pending(tokio::sync::oneshot::Receiver<bool>),
    /// Refused at once (the relay's byte budget is full).
    Failed,
}

impl Relayed {
    /// True unless nothing was queued.
    pub fn queued(&self) -> bool {
        matches!(self, Relayed::Pending(_))
    }

    /// Wait (at most `within`) for the outcome.
    pub async fn outcome(self, within: std::time::Duration) -> RelayOutcome {
        match self {
            Relayed::Nothing => RelayOutcome::None,
            Relayed::Failed => RelayOutcome::Failed,
            Relayed::Pending(rx) => match tokio::time::timeout(within, rx).await {
                Ok(Ok(true)) => RelayOutcome::Sent,
                _ => RelayOutcome::Failed,
            },
        }
    }
}

/// Whether a message reached the other nodes' broker (reported to publishers
/// as `"relay"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayOutcome {
    /// Nothing had to leave this node (local scope, single node, or every
    /// target is local).
    #[default]
    None,
    /// Handed to the relay; not waited for.
    Queued,
    /// Redis confirmed every envelope: the other nodes get it.
    Sent,
    /// Redis did not take it (outage longer than `--relay-retry-ms`, or the
    /// relay's byte budget was full): the other nodes will not get it.
    Failed,
}

impl RelayOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayOutcome::None => "none",
            RelayOutcome::Queued => "queued",
            RelayOutcome::Sent => "sent",
            RelayOutcome::Failed => "failed",
        }
    }
}

/// What the relay needs from its node: the hub to deliver into and a snapshot
/// of the node for heartbeats.
pub trait NodeView: Send + Sync + 'static {
    fn hub(&self) -> &Hub;
    fn info(&self) -> NodeInfo;
    /// Deliver a history channel's publication (with its position).
    fn deliver_publication(
        &self,
        channel: &str,
        position: &crate::history::Position,
        data: &Utf8Bytes,
    ) -> usize;
    /// A peer stopped heartbeating and was declared gone.
    fn peer_gone<'a>(&'a self, _node_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// Moves messages between nodes.
///
/// Guarantees a relay must keep: at most once delivery; messages from one
/// publisher to one channel, user or client arrive in publish order; a node
/// never delivers its own messages twice (it ignores their echo).
pub trait Relay: Send + Sync + 'static {
    /// Start background work (connections, subscriber loops, heartbeats).
    fn start(&self, node: Arc<dyn NodeView>) -> BoxFuture<'_, Result<(), RelayError>>;

    /// Send a message to the other nodes. Never blocks on the network: the
    /// message is queued (pipelined); the result says whether it was queued
    /// and, later, whether Redis took it.
    fn publish(&self, target: &Target, frame: &Utf8Bytes) -> Relayed;

    /// The longest a [`Relayed::Pending`] may take to settle.
    fn settle_within(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    /// Track which channels and users have local members, so the relay only
    /// receives what this node can deliver. Called after every change.
    fn interest(&self, change: &crate::hub::InterestChange);

    /// Close connections anywhere in the cluster (the caller closed local ones).
    fn disconnect(&self, client_ids: &[String], root_ids: &[String]);

    /// Live nodes of the cluster other than this one.
    fn peers(&self) -> Vec<NodeInfo>;

    /// Channel member counts on the other nodes.
    fn remote_channels(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, RelayError>>;

    /// Health of the relay.
    fn status(&self) -> RelayStatus;

    /// Announce a clean exit and stop.
    fn shutdown(&self) -> BoxFuture<'_, ()>;

    /// A short name for logs ("memory", "redis").
    fn name(&self) -> &'static str;

    /// Give the relay the Redis history store, so that appends publish the
    /// positioned envelope on the relay's topic in the same atomic step.
    fn attach_store(&self, _store: Arc<crate::redis_store::RedisStore>) {}
}

/// A relay that failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("relay timed out")]
    Timeout,
    #[error("bad relay configuration: {0}")]
    Config(String),
}

/// The relay a configuration asks for.
pub fn from_config(
    config: &crate::config::Config,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Arc<dyn Relay>, RelayError> {
    if config.redis_urls.is_empty() {
        Ok(Arc::new(MemoryRelay::new()))
    } else {
        Ok(Arc::new(redis::RedisRelay::new(config, metrics)?))
    }
}

/// Which of `n` Redis servers owns `name` (a channel, user or node id), by
/// rendezvous hashing with a fixed hash: every node makes the same choice, and
/// adding a server moves only the names that the new server wins.
pub fn shard_index(name: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    (0..n)
        .max_by_key(|&i| fnv1a(name.as_bytes(), i as u64))
        .unwrap_or(0)
}

/// FNV-1a, 64 bit, seeded: stable across processes and versions.
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche so nearby seeds give unrelated orders.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::shard_index;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_index("x", 1), 0);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let name = format!("chan-{i}");
            let s = shard_index(&name, 3);
            assert_eq!(s, shard_index(&name, 3));
            counts[s] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        // Adding a server only moves names to the new server.
        for i in 0..1000 {
            let name = format!("chan-{i}");
            let (before, after) = (shard_index(&name, 3), shard_index(&name, 4));
            assert!(after == before || after == 3);
        }
    }
}
