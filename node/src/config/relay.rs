//! What the cluster relay may hold, how it batches and how it probes Redis.

use std::time::Duration;

/// What the cluster relay may hold and how it probes Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Bytes of outgoing envelopes held (queues and retry buffer together).
    pub queue_bytes: usize,
    /// Bytes of received envelopes held per subscriber connection.
    pub receive_bytes: usize,
    /// How long a publish may wait for Redis.
    pub retry: Duration,
    /// Readiness probe interval (and deadline).
    pub probe: Duration,
    /// Subscribe/unsubscribe topic changes per second.
    pub interest_rate: u32,
    /// Longest a join waits for Redis to confirm its subscriptions before
    /// it fails with `unavailable`.
    pub join_timeout: Duration,
    /// Largest batch envelope in bytes (0: no batches).
    pub batch_bytes: usize,
    /// How long a busy lane waits for more envelopes before it sends.
    pub batch_wait: Duration,
    /// Least time between the starts of two passes of a busy interest
    /// task (`--relay-interest-us`).
    pub interest_wait: Duration,
    /// Publish a channel's or user's message to Redis only when a peer
    /// listens to it (`--relay-interest-routing`).
    pub interest_routing: bool,
    /// Send a channel's or user's message that one peer alone listens to
    /// to that peer's inbox, batched with the others for it
    /// (`--relay-node-addressing`).
    pub node_addressing: bool,
    /// On one Redis server (not a cluster), send the messages of a channel
    /// whose id names a node (the form nodes give) to that node's inbox, and
    /// do not subscribe to this node's own such channels in Redis
    /// (`--relay-owned-channels`).
    pub owned_channels: bool,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            queue_bytes: 32 * 1024 * 1024,
            receive_bytes: 4 * 1024 * 1024,
            retry: Duration::from_secs(5),
            probe: Duration::from_secs(1),
            interest_rate: 20_000,
            join_timeout: Duration::from_secs(10),
            batch_bytes: 64 * 1024,
            batch_wait: Duration::from_millis(1),
            interest_wait: Duration::from_millis(1),
            interest_routing: true,
            node_addressing: true,
            owned_channels: true,
        }
    }
}
