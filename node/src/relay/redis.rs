//! The cluster relay over Redis pub/sub.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{BoxFuture, NodeInfo, NodeView, Relay, RelayError, RelayStatus};
use crate::config::Config;
use crate::hub::{InterestChange, Target};
use crate::metrics::Metrics;

/// Relays through one or more Redis servers (or a Redis Cluster).
pub struct RedisRelay {
    _metrics: Arc<Metrics>,
}

impl RedisRelay {
    pub fn new(_config: &Config, metrics: Arc<Metrics>) -> Result<Self, RelayError> {
        Err(RelayError::Config(format!(
            "the Redis relay is not available in this build ({} metrics)",
            metrics.registry.gather().len()
        )))
    }
}

impl Relay for RedisRelay {
    fn start(&self, _node: Arc<dyn NodeView>) -> BoxFuture<'_, Result<(), RelayError>> {
        Box::pin(async { Ok(()) })
    }
    fn publish(&self, _target: &Target, _frame: &Utf8Bytes) -> bool {
        false
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
            healthy: false,
            detail: "unavailable".into(),
        }
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn name(&self) -> &'static str {
        "redis"
    }
}
