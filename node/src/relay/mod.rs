//! The relay: how messages cross nodes.
//!
//! [`Relay`] is the seam between the mesh and the broker. The mesh always
//! delivers locally first and then hands the message to the relay, which must
//! deliver it to the *other* nodes' hubs (at most once, in publish order per
//! publisher and topic). [`memory::MemoryRelay`] is the single-node relay (the
//! embedded default, or several nodes in one process over a
//! [`memory::MemoryBus`]); [`crate::redis::relay::RedisRelay`] is the
//! cluster relay.

pub mod memory;

use std::sync::Arc;

use crate::delivery::{BoxFuture, Delivery, InterestChange, Position};
use crate::history::HistoryError;
use crate::policy::ChannelOptions;

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
    /// Queued for Redis, published without `confirm`: nothing tracks
    /// Redis's answer for it.
    Queued,
    /// Refused at once (the relay's byte budget is full).
    Failed,
}

impl Relayed {
    /// True unless nothing was queued.
    pub fn queued(&self) -> bool {
        matches!(self, Relayed::Pending(_) | Relayed::Queued)
    }

    /// Wait (at most `within`) for the outcome.
    pub async fn outcome(self, within: std::time::Duration) -> RelayOutcome {
        match self {
            Relayed::Nothing => RelayOutcome::None,
            Relayed::Failed => RelayOutcome::Failed,
            Relayed::Queued => RelayOutcome::Queued,
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

/// What the relay needs from its node: local delivery, local disconnects,
/// what local members need, and a snapshot for heartbeats.
pub trait NodeView: Send + Sync + 'static {
    /// Encode and queue a delivery to this node's recipients.
    fn deliver(&self, delivery: &Delivery) -> usize;
    /// Like `deliver`, skipping connections that are members of any of the
    /// `reached` channels (an earlier envelope of the same publish got them).
    fn deliver_excluding(&self, delivery: &Delivery, reached: &[String]) -> usize;
    /// Close local connections by client or user id.
    fn disconnect_local(&self, client_ids: &[String], root_ids: &[String]) -> usize;
    /// Local channels with their local member counts.
    fn channel_counts(&self) -> Vec<(String, u64)>;
    /// Channels and users with local members (to resubscribe after an outage).
    fn interest_now(&self) -> (Vec<Arc<str>>, Vec<Arc<str>>);
    fn info(&self) -> NodeInfo;
    /// A peer stopped heartbeating and was declared gone.
    fn peer_gone<'a>(&'a self, _node_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// The result of a history publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Where the publication sits in the channel's history.
    pub position: Position,
    /// True when the relay delivers it to every node, this one included (in
    /// offset order); the node then must not deliver it locally.
    pub echoed: bool,
    /// True when other nodes were sent it.
    pub relayed: bool,
    /// True when the delivery's idempotency key was used before on this
    /// channel: nothing was appended or sent, `position` is the one the
    /// first publish got.
    pub duplicate: bool,
}

/// Moves messages between nodes.
///
/// Guarantees a relay must keep: at most once delivery; messages from one
/// publisher to one channel, user or client arrive in publish order; a node
/// never delivers its own messages twice (it ignores their echo).
pub trait Relay: Send + Sync + 'static {
    /// Start background work (connections, subscriber loops, heartbeats).
    fn start(&self, node: Arc<dyn NodeView>) -> BoxFuture<'_, Result<(), RelayError>>;

    /// Send a delivery to the other nodes. Never blocks on the network: the
    /// message is queued (pipelined); the result says whether it was queued
    /// and, with `confirm`, lets the caller wait for Redis's answer
    /// ([`Relayed::Pending`]). Without `confirm` a queued delivery is
    /// [`Relayed::Queued`], and nothing is kept to report the answer.
    fn publish(&self, delivery: &Delivery, confirm: bool) -> Relayed;

    /// Longest a publisher waits for a [`Relayed::Pending`] outcome.
    fn settle_within(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    /// Append a publication to one channel's history (`delivery` targets
    /// exactly that channel) and publish it, in one step: returns its
    /// position. A delivery with an idempotency key already used on this
    /// channel (within the window) is neither appended nor published: the
    /// check and the append are one atomic step.
    fn publish_history<'a>(
        &'a self,
        delivery: &'a Delivery,
        options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<Appended, HistoryError>>;

    /// Track which channels and users have local members, so the relay only
    /// receives what this node can deliver. Called after every change.
    fn interest(&self, change: &InterestChange);

    /// Resolves once the subscriptions `channels` and `users` need on this
    /// node are in place at the broker (including changes another join of
    /// the same topic started) and every peer that may skip publishes knows
    /// of them: from then on, whatever is published to them anywhere reaches
    /// this node. An error when that did not happen within the relay's
    /// deadline: the join (or the connect, or the change of identity) must
    /// then fail rather than answer. While the broker connection is down (the
    /// node is not ready and serves its local members only) it resolves at
    /// once. A relay that delivers without subscriptions resolves at once.
    fn interest_applied<'a>(
        &'a self,
        _channels: &'a [String],
        _users: &'a [String],
    ) -> BoxFuture<'a, Result<(), RelayError>> {
        Box::pin(async { Ok(()) })
    }

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
