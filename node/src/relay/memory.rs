//! The in-memory relay: one node alone (the embedded default), or several
//! nodes in one process joined by a [`MemoryBus`] (the fast test tier:
//! protocol tests across nodes without Redis).

use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::{Appended, NodeInfo, NodeView, Relay, RelayError, RelayStatus, Relayed};
use crate::delivery::{BoxFuture, Delivery, InterestChange};
use crate::history::{HistoryError, MemoryHistory};
use crate::policy::ChannelOptions;
use crate::presence::MemoryPresence;

/// Nodes of one process that relay to each other, with the history and
/// presence they share.
pub struct MemoryBus {
    nodes: Mutex<Vec<(String, Weak<dyn NodeView>)>>,
    pub history: Arc<MemoryHistory>,
    pub presence: Arc<MemoryPresence>,
}

impl MemoryBus {
    pub fn new() -> Arc<MemoryBus> {
        Arc::new(MemoryBus {
            nodes: Mutex::new(Vec::new()),
            history: Arc::new(MemoryHistory::new()),
            presence: MemoryPresence::new(),
        })
    }

    /// The live nodes other than `me`.
    fn others(&self, me: &str) -> Vec<Arc<dyn NodeView>> {
        let mut nodes = self.nodes.lock();
        nodes.retain(|(_, n)| n.strong_count() > 0);
        nodes
            .iter()
            .filter(|(id, _)| id != me)
            .filter_map(|(_, n)| n.upgrade())
            .collect()
    }
}

/// A relay for a node that serves alone, or with the other nodes of its
/// [`MemoryBus`].
pub struct MemoryRelay {
    node_id: String,
    history: Arc<MemoryHistory>,
    bus: Option<Arc<MemoryBus>>,
}

impl MemoryRelay {
    /// A node alone, with its own history.
    pub fn new(history: Arc<MemoryHistory>) -> Self {
        MemoryRelay {
            node_id: String::new(),
            history,
            bus: None,
        }
    }

    /// A node on a bus (history and presence are the bus's).
    pub fn on_bus(node_id: &str, bus: Arc<MemoryBus>) -> Self {
        MemoryRelay {
            node_id: node_id.to_string(),
            history: bus.history.clone(),
            bus: Some(bus),
        }
    }

    /// Deliver to every other node of the bus; false when there is none.
    fn forward(&self, delivery: &Delivery) -> bool {
        let others = self.others();
        for node in &others {
            node.deliver(delivery);
        }
        !others.is_empty()
    }

    fn others(&self) -> Vec<Arc<dyn NodeView>> {
        self.bus
            .as_ref()
            .map(|b| b.others(&self.node_id))
            .unwrap_or_default()
    }
}

impl Relay for MemoryRelay {
    fn start(&self, node: Arc<dyn NodeView>) -> BoxFuture<'_, Result<(), RelayError>> {
        if let Some(bus) = &self.bus {
            bus.nodes
                .lock()
                .push((self.node_id.clone(), Arc::downgrade(&node)));
        }
        Box::pin(async { Ok(()) })
    }

    fn publish(&self, delivery: &Delivery, confirm: bool) -> Relayed {
        if !self.forward(delivery) {
            Relayed::Nothing
        } else if confirm {
            // Delivered in this call: the other nodes have it.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(true);
            Relayed::Pending(rx)
        } else {
            Relayed::Queued
        }
    }

    fn publish_history<'a>(
        &'a self,
        delivery: &'a Delivery,
        options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<Appended, HistoryError>> {
        Box::pin(async move {
            let channel = delivery.channel.as_deref().unwrap_or_default();
            let key = delivery.idempotency.as_deref();
            let (position, duplicate) = self.history.append_once(
                channel,
                &delivery.data,
                options,
                key,
                delivery.event.as_ref(),
            );
            if duplicate {
                return Ok(Appended {
                    position,
                    echoed: false,
                    relayed: false,
                    duplicate,
                });
            }
            let positioned = Delivery {
                position: Some(position.clone()),
                // The history decided: every node delivers this one.
                idempotency: None,
                ..delivery.clone()
            };
            let relayed = self.forward(&positioned);
            Ok(Appended {
                position,
                echoed: false,
                relayed,
                duplicate,
            })
        })
    }

    fn interest(&self, _change: &InterestChange) {}

    fn disconnect(&self, client_ids: &[String], root_ids: &[String]) {
        for node in self.others() {
            node.disconnect_local(client_ids, root_ids);
        }
    }

    fn peers(&self) -> Vec<NodeInfo> {
        let mut peers: Vec<NodeInfo> = self
            .others()
            .iter()
            .map(|n| NodeInfo {
                is_self: false,
                ..n.info()
            })
            .collect();
        peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        peers
    }

    fn remote_channels(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, RelayError>> {
        let counts: Vec<(String, u64)> = self
            .others()
            .iter()
            .flat_map(|n| n.channel_counts())
            .collect();
        Box::pin(async move { Ok(counts) })
    }

    fn status(&self) -> RelayStatus {
        RelayStatus {
            healthy: true,
            detail: if self.bus.is_some() {
                "in-process bus (memory relay)".into()
            } else {
                "single node (memory relay)".into()
            },
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
