//! pubmesh: a real-time WebSocket pub/sub server, one node or a cluster.
//!
//! Data flows top to bottom (see ARCHITECTURE.md):
//!
//! - [`transport`]: the WebSocket upgrade and each connection's reader and writer;
//! - [`frontend`]: wire protocols (`/websocket`, jac-cloud compatible) over the node;
//! - [`node`]: the mesh operations — publish to channels/users/clients/all, in
//!   cluster or local scope, subscribe, disconnect, membership;
//! - [`hub`]: this node's sharded registries and local delivery into [`outbox`]es;
//! - [`relay`]: how messages cross nodes ([`relay::MemoryRelay`] alone,
//!   [`relay::redis::RedisRelay`] in a cluster).
//!
//! Side modules: [`config`], [`auth`] (JWT), [`api`] (HTTP server API, health,
//! metrics), [`metrics`], [`walker`] (backend calls), [`shutdown`] (drain), [`limits`].

pub mod api;
pub mod auth;
pub mod close_log;
pub mod config;
pub mod frontend;
pub mod history;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod namespace;
pub mod node;
pub mod outbox;
pub mod presence;
pub mod redis_connect;
pub mod redis_store;
pub mod relay;
pub mod shutdown;
pub mod transport;
pub mod walker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::node::Node;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] auth::KeyError),
    #[error(transparent)]
    Relay(#[from] relay::RelayError),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Build a node from its configuration.
pub fn build(config: Config) -> Result<Arc<Node>, StartError> {
    let metrics = Arc::new(Metrics::new(&config.node_id));
    let auth = auth::Authenticator::new(
        config.jwt_secret.as_deref(),
        config.jwt_public_key.as_deref(),
    )?;
    let relay = relay::from_config(&config, metrics.clone())?;
    let (history, presence): (Arc<dyn history::History>, Arc<dyn presence::Presence>) =
        if config.redis_urls.is_empty() {
            (
                Arc::new(history::MemoryHistory::new()),
                presence::MemoryPresence::new(),
            )
        } else {
            let store = redis_store::RedisStore::connect(
                &config.redis_urls,
                config.redis_cluster,
                config.redis_tls_ca.as_deref(),
                &config.redis_prefix,
                config.presence_ttl,
            )
            .map_err(relay::RelayError::Config)?;
            relay.attach_store(store.clone());
            (store.clone(), store)
        };
    Ok(Arc::new(Node::new(
        config, metrics, relay, auth, history, presence,
    )))
}

/// Bind a listener with a listen(2) backlog of `backlog` (None: the host's
/// `net.core.somaxconn`, so the kernel's own cap applies).
pub fn bind(addr: std::net::SocketAddr, backlog: Option<u32>) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog.unwrap_or_else(somaxconn))
}

/// The host's `net.core.somaxconn` (4096 when it cannot be read).
pub fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(4096)
}

/// Serve until `shutdown` completes, then drain and return.
///
/// The shutdown trigger is a parameter so tests and embedders pass their own;
/// the binary passes SIGTERM/SIGINT.
pub async fn run(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    run_with_admin(node, listener, None, shutdown).await
}

/// Like [`run`], with the server API and /metrics on their own listener
/// (`--admin-listen`) instead of the client one. The admin listener keeps
/// serving through the drain, so metrics are scraped until the end.
pub async fn run_with_admin(
    node: Arc<Node>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    node.relay
        .start(node.clone() as Arc<dyn relay::NodeView>)
        .await?;
    tokio::spawn(watch_health(node.clone()));
    if !node.config.namespaces.is_plain() && !node.config.redis_urls.is_empty() {
        tokio::spawn(refresh_presence(node.clone()));
    }
    if node.auth.enabled() {
        tokio::spawn(frontend::native::expire_tokens(
            node.clone(),
            Duration::from_secs(1),
        ));
    }
    let app = match admin {
        Some(admin) => {
            let admin_app = api::admin_router(node.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(admin, admin_app).await {
                    tracing::error!(error = %e, "admin listener failed");
                }
            });
            api::client_router(node.clone())
        }
        None => api::router(node.clone()),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_node = node.clone();
    // Small frames must not wait for Nagle's algorithm (40 ms stalls).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        shutdown::drain(&drain_node).await;
        let _ = stop_tx.send(());
    });
    let served = tokio::spawn(async move { server.await });
    let _ = stop_rx.await;
    node.relay.shutdown().await;
    // In-flight HTTP requests get a moment; sockets are already closed.
    match tokio::time::timeout(Duration::from_secs(2), served).await {
        Ok(Ok(result)) => result?,
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("HTTP server did not stop within 2 s; exiting anyway"),
    }
    Ok(())
}

/// Re-announce this node's presence entries so they outlive their TTL while
/// the connections live (entries of a dead node expire by themselves).
async fn refresh_presence(node: Arc<Node>) {
    let mut tick = tokio::time::interval(presence::refresh_interval(node.config.presence_ttl));
    tick.tick().await;
    loop {
        tick.tick().await;
        for channel in node.hub.channel_names() {
            if !node.config.namespaces.options(&channel).presence {
                continue;
            }
            for conn in node.hub.channel_members(&channel) {
                let entry = node.presence_entry(&conn);
                if let Err(e) = node.presence.join(&channel, &entry).await {
                    tracing::debug!(error = %e, "presence refresh failed");
                    break;
                }
            }
        }
    }
}

/// Keep the readiness and relay gauges current without waiting for a probe.
async fn watch_health(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let status = node.relay.status();
        node.metrics.relay_up.set(status.healthy as i64);
        node.metrics.ready.set(node.readiness().is_ok() as i64);
        node.metrics
            .relay_peers
            .set(node.relay.peers().len() as i64);
    }
}
