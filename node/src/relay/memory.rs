//! The single-node relay: the embedded default. Every message has already been
//! delivered locally by the mesh, and there is no other node to tell.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{BoxFuture, NodeInfo, NodeView, Relay, RelayError, RelayStatus, Relayed};
use crate::hub::{InterestChange, Target};

/// A relay for a node that serves alone.
#[derive(Default)]
pub struct MemoryRelay;

impl MemoryRelay {
    pub fn new() -> Self {
        MemoryRelay
    }
}

impl Relay for MemoryRelay {
    fn start(&self, _node: Arc<dyn NodeView>) -> BoxFuture<'_, Result<(), RelayError>> {
        Box::pin(async { Ok(()) })
    }

    fn publish(&self, _target: &Target, _frame: &Utf8Bytes) -> Relayed {
        Relayed::Nothing
    }

    fn interest(&self, _change: &InterestChange) {}

    fn disconnect(&self, _client_ids: &[String], _root_ids: &[String]) {}

    fn peers(&self) -> Vec<NodeInfo> {
        Vec::new()
    }

    fn remote_channels(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, RelayError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn status(&self) -> RelayStatus {
        RelayStatus {
            healthy: true,
            detail: "single node (memory relay)".into(),
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
