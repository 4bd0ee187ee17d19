//! Presence: who is in a presence-enabled channel, across the cluster.
//!
//! [`MemoryPresence`] serves a single node. The Redis store keeps a hash and
//! an expiry set per channel; each node refreshes its own entries every third
//! of `--presence-ttl-seconds`, so those of a node that dies expire within it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::delivery::BoxFuture;

/// How often a node refreshes its entries, given their TTL (cluster mode).
pub fn refresh_interval(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(500))
}

/// One connection present in a channel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub client_id: String,
    pub user_id: String,
    pub node_id: String,
    /// The `info` claim of the connection's token, as JSON text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<serde_json::value::RawValue>>,
}

/// Why a presence call failed.
#[derive(Debug, thiserror::Error)]
#[error("presence storage unavailable: {0}")]
pub struct PresenceError(pub String);

/// Where presence lives.
pub trait Presence: Send + Sync + 'static {
    fn join<'a>(
        &'a self,
        channel: &'a str,
        entry: &'a PresenceEntry,
    ) -> BoxFuture<'a, Result<(), PresenceError>>;
    fn leave<'a>(
        &'a self,
        channel: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<(), PresenceError>>;
    fn list<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PresenceEntry>, PresenceError>>;
    /// Remove every entry of a node declared gone and return them as
    /// (channel, entry). Atomic across the cluster: of all the nodes that
    /// call it for one gone node, one gets the entries, the others nothing.
    fn take_node<'a>(
        &'a self,
        _node_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, PresenceEntry)>, PresenceError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Presence of a single node, in memory.
#[derive(Default)]
pub struct MemoryPresence {
    channels: Mutex<HashMap<String, HashMap<String, PresenceEntry>>>,
}

impl MemoryPresence {
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryPresence::default())
    }
}

impl Presence for MemoryPresence {
    fn join<'a>(
        &'a self,
        channel: &'a str,
        entry: &'a PresenceEntry,
    ) -> BoxFuture<'a, Result<(), PresenceError>> {
        self.channels
            .lock()
            .entry(channel.to_string())
            .or_default()
            .insert(entry.client_id.clone(), entry.clone());
        Box::pin(async { Ok(()) })
    }

    fn leave<'a>(
        &'a self,
        channel: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<(), PresenceError>> {
        let mut channels = self.channels.lock();
        if let Some(members) = channels.get_mut(channel) {
            members.remove(client_id);
            if members.is_empty() {
                channels.remove(channel);
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn list<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PresenceEntry>, PresenceError>> {
        let mut list: Vec<PresenceEntry> = self
            .channels
            .lock()
            .get(channel)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        list.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Box::pin(async move { Ok(list) })
    }
}
