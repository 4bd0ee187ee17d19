//! Node-wide background tasks.

use std::sync::Arc;
use std::time::Duration;

use super::Node;

/// Connections whose token expired lose their identity: under
/// `--require-auth` they are closed with 4001, otherwise they become
/// anonymous, leave the channels an anonymous connection may not be in, and
/// their codec tells them in its own way (the native protocol sends an
/// `unsubscribed` notice and a new connection frame). Checked every `every`.
pub async fn expire_tokens(node: Arc<Node>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for conn in node.hub.connections() {
            let expired = {
                let state = conn.state.lock();
                state.authenticated && state.expires_at <= now
            };
            if expired {
                node.expire_identity(&conn, now).await;
            }
        }
    }
}

/// Re-announce this node's presence entries so they outlive their TTL while
/// the connections live (entries of a dead node expire by themselves).
pub async fn refresh_presence(node: Arc<Node>) {
    let mut tick =
        tokio::time::interval(crate::presence::refresh_interval(node.config.presence_ttl));
    tick.tick().await;
    loop {
        tick.tick().await;
        node.refresh_presence_once().await;
    }
}
