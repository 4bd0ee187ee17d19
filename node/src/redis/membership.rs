//! Membership: which nodes are alive. Every node announces itself on the
//! control topic every [`HEARTBEAT`]; a peer silent for [`PEER_TIMEOUT`] is
//! forgotten, and one that announces a clean exit is forgotten at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pubmesh_cluster_proto as proto;

use crate::relay::NodeInfo;

/// How often a node announces itself.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A peer silent this long is dropped from membership.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);

struct Peer {
    info: proto::NodeInfo,
    seen: Instant,
}

/// The live peers of a node.
#[derive(Default)]
pub struct Membership {
    peers: Mutex<HashMap<String, Peer>>,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Membership {
    /// A heartbeat from `origin`; returns the number of peers.
    pub fn seen(&self, origin: String, info: proto::NodeInfo) -> usize {
        let mut peers = self.peers.lock();
        peers.insert(
            origin,
            Peer {
                info,
                seen: Instant::now(),
            },
        );
        peers.len()
    }

    /// A peer announced its exit; returns the number of peers.
    pub fn left(&self, node_id: &str) -> usize {
        let mut peers = self.peers.lock();
        peers.remove(node_id);
        peers.len()
    }

    /// Forget silent peers; returns the number left.
    pub fn prune(&self) -> usize {
        let mut peers = self.peers.lock();
        peers.retain(|_, p| p.seen.elapsed() < PEER_TIMEOUT);
        peers.len()
    }

    /// The live peers, by node id.
    pub fn list(&self) -> Vec<NodeInfo> {
        let now = unix_now();
        let mut peers: Vec<NodeInfo> = self
            .peers
            .lock()
            .values()
            .filter(|p| p.seen.elapsed() < PEER_TIMEOUT)
            .map(|p| NodeInfo {
                node_id: p.info.node_id.clone(),
                connections: p.info.connections,
                users: p.info.users,
                channels: p.info.channels,
                subscriptions: p.info.subscriptions,
                ready: p.info.ready,
                version: p.info.version.clone(),
                uptime_seconds: now.saturating_sub(p.info.started_at_unix),
                is_self: false,
            })
            .collect();
        peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        peers
    }
}
