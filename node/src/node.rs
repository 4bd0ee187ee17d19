//! The node: the hub, the relay and the mesh operations that front-ends and the
//! server API call (`notify_*`, broadcast, subscribe, disconnect, membership).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::{Conn, Hub, InterestChange, Target};
use crate::metrics::Metrics;
use crate::relay::{NodeInfo, NodeView, Relay};
use crate::walker::WalkerClient;

/// Where a message may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every node of the cluster.
    Cluster,
    /// This node only; never touches the relay (LocalBroadcast).
    Local,
}

/// What a publish did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Published {
    /// Outboxes on this node that took the message.
    pub local_deliveries: usize,
    /// Whether the message was handed to the relay for other nodes.
    pub relayed: bool,
}

/// One pubmesh node.
pub struct Node {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub hub: Hub,
    pub relay: Arc<dyn Relay>,
    pub auth: Authenticator,
    pub walker: Option<WalkerClient>,
    started: Instant,
    /// Set once when a drain starts; read by /readyz and the accept path.
    draining: AtomicBool,
    /// Source of `Conn::id`.
    next_conn_id: AtomicU64,
}

impl Node {
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        relay: Arc<dyn Relay>,
        auth: Authenticator,
    ) -> Node {
        let walker = config
            .backend_url
            .as_ref()
            .map(|url| WalkerClient::new(url.clone(), config.walker_timeout));
        Node {
            hub: Hub::new(metrics.clone()),
            walker,
            config,
            metrics,
            relay,
            auth,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(1),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Deliver `frame` to `target`: locally first, then (for [`Scope::Cluster`])
    /// through the relay to the other nodes. Messages whose targets are all on
    /// this node never touch the relay.
    pub fn publish(&self, target: Target, frame: Utf8Bytes, scope: Scope) -> Published {
        self.metrics
            .messages_out
            .with_label_values(&[target.kind()])
            .inc();
        let local_deliveries = self.hub.deliver(&target, &frame);
        let relayed = match scope {
            Scope::Local => false,
            Scope::Cluster => match self.remote_part(target) {
                Some(remote) => self.relay.publish(&remote, &frame),
                None => false,
            },
        };
        Published {
            local_deliveries,
            relayed,
        }
    }

    /// The part of a target that other nodes may have to deliver.
    fn remote_part(&self, target: Target) -> Option<Target> {
        match target {
            Target::Clients(ids) => {
                let me = self.node_id();
                let remote: Vec<String> = ids
                    .into_iter()
                    .filter(|id| crate::ids_shim::owner_node(id) != Some(me))
                    .collect();
                (!remote.is_empty()).then_some(Target::Clients(remote))
            }
            other => Some(other),
        }
    }

    /// Tell the relay about channels and users that gained or lost their last
    /// local member.
    pub fn interest(&self, change: InterestChange) {
        if !change.is_empty() {
            self.relay.interest(&change);
        }
    }

    pub fn register(&self, conn: &Arc<Conn>) {
        self.metrics.connections_accepted.inc();
        let change = self.hub.register(conn);
        self.interest(change);
    }

    pub fn unregister(&self, conn: &Arc<Conn>) {
        let change = self.hub.unregister(conn);
        self.interest(change);
    }

    /// Close connections by client or user id, here and on every node.
    pub fn disconnect(&self, client_ids: &[String], root_ids: &[String], scope: Scope) -> usize {
        let closed = self.hub.disconnect(client_ids, root_ids);
        if scope == Scope::Cluster {
            let me = self.node_id();
            let remote_clients: Vec<String> = client_ids
                .iter()
                .filter(|id| crate::ids_shim::owner_node(id) != Some(me))
                .cloned()
                .collect();
            if !remote_clients.is_empty() || !root_ids.is_empty() {
                self.relay.disconnect(&remote_clients, root_ids);
            }
        }
        closed
    }

    /// This node and its live peers.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut nodes = vec![self.info()];
        nodes.extend(self.relay.peers());
        nodes
    }

    /// Channels with members anywhere in the cluster, with member counts.
    pub async fn channels(&self) -> Result<Vec<(String, u64)>, crate::relay::RelayError> {
        let mut merged: HashMap<String, u64> = HashMap::new();
        for (name, n) in self.hub.channel_counts() {
            *merged.entry(name).or_default() += n;
        }
        for (name, n) in self.relay.remote_channels().await? {
            *merged.entry(name).or_default() += n;
        }
        let mut out: Vec<(String, u64)> = merged.into_iter().collect();
        out.sort();
        Ok(out)
    }

    /// Why the node is not ready, or `Ok` when it is.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining".into());
        }
        let status = self.relay.status();
        if !status.healthy {
            return Err(format!("relay degraded: {}", status.detail));
        }
        Ok(())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Start draining: readiness false, no new connections. Returns false if
    /// a drain had already started.
    pub fn begin_drain(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::AcqRel);
        if first {
            self.metrics.draining.set(1);
            self.metrics.ready.set(0);
        }
        first
    }

    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

impl NodeView for Node {
    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn info(&self) -> NodeInfo {
        let counts = self.hub.counts();
        NodeInfo {
            node_id: self.config.node_id.clone(),
            connections: counts.connections,
            users: counts.users,
            channels: counts.channels,
            subscriptions: counts.subscriptions,
            ready: self.readiness().is_ok(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.uptime_seconds(),
            is_self: true,
        }
    }
}
