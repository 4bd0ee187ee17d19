//! pubmesh: a real-time WebSocket pub/sub server, one node or a cluster.
//!
//! Layers, top to bottom (docs/architecture.md); a module only uses modules
//! below it, which `tests/layers.rs` checks:
//!
//! - [`api`]: HTTP routes: the server API, health, metrics, and every
//!   front-end's routes from [`frontend::registry`];
//! - [`frontend`]: wire protocols (`/websocket`, jac-cloud compatible), each
//!   a session over the node's operations plus a [`codec::Codec`];
//! - [`transport`]: moving frames between a client and an outbox (WebSocket
//!   reader/writer, SSE and long-poll bodies), with no protocol in it;
//! - [`node`]: the mesh operations (admit, open, publish, join, leave,
//!   history, presence, close) over its private hub (registries and fan-out);
//! - [`relay`] and [`redis`]: how deliveries cross nodes and where history
//!   and presence live ([`relay::memory`] alone or in-process, [`redis`] in a
//!   cluster);
//! - [`conn`], [`codec`], [`delivery`], [`outbox`]: what the layers above
//!   share: connections, encodings, protocol-neutral deliveries, queues;
//! - [`policy`], [`config`], [`auth`], [`history`], [`presence`],
//!   [`metrics`], [`walker`], [`limits`], [`idempotency`]: rules, settings
//!   and stores; [`http_error`]: the JSON shape of every HTTP error;
//!   [`address`]: budgets per client address, shared by its sockets.
//!
//! [`shutdown`] drains; [`build`], [`build_on_bus`] and [`run`] wire a node.

pub mod address;
pub mod api;
pub mod auth;
pub mod close_log;
pub mod codec;
pub mod config;
pub mod conn;
pub mod delivery;
pub mod frontend;
pub mod hashing;
pub mod heap;
pub mod history;
pub mod http_error;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod policy;
pub mod presence;
pub mod redis;
pub mod redis_connect;
pub mod relay;
pub mod shutdown;
pub mod transport;
pub mod walker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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
    type Parts = (
        Arc<dyn relay::Relay>,
        Arc<dyn history::History>,
        Arc<dyn presence::Presence>,
    );
    let (relay, history, presence): Parts = if config.redis_urls.is_empty() {
        let history = Arc::new(history::MemoryHistory::with_idempotency(
            config.idempotency.window,
            config.idempotency.max_bytes,
        ));
        (
            Arc::new(relay::memory::MemoryRelay::new(history.clone())),
            history,
            presence::MemoryPresence::new(),
        )
    } else {
        let store = redis::store::RedisStore::connect(
            &config.redis_urls,
            config.redis_cluster,
            config.redis_tls_ca.as_deref(),
            &config.redis_prefix,
            config.presence_ttl,
            config.idempotency.window,
        )
        .map_err(relay::RelayError::Config)?;
        let relay = redis::relay::RedisRelay::new(&config, metrics.clone(), store.clone())?;
        (Arc::new(relay), store.clone(), store)
    };
    Ok(Arc::new(Node::new(
        config, metrics, relay, auth, history, presence,
    )))
}

/// Build a node that relays to the other nodes of an in-process
/// [`relay::memory::MemoryBus`] (history and presence are the bus's): N
/// nodes in one process, without Redis, for fast protocol tests.
pub fn build_on_bus(
    config: Config,
    bus: &Arc<relay::memory::MemoryBus>,
) -> Result<Arc<Node>, StartError> {
    let metrics = Arc::new(Metrics::new(&config.node_id));
    let auth = auth::Authenticator::new(
        config.jwt_secret.as_deref(),
        config.jwt_public_key.as_deref(),
    )?;
    let relay = Arc::new(relay::memory::MemoryRelay::on_bus(
        &config.node_id,
        bus.clone(),
    ));
    let history = bus.history.clone();
    let presence = bus.presence.clone();
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
    node.repair_gaps();
    node.relay()
        .start(node.clone() as Arc<dyn relay::NodeView>)
        .await?;
    tokio::spawn(watch_health(node.clone()));
    if node.config.namespaces.keeps_presence() && !node.config.redis_urls.is_empty() {
        tokio::spawn(node::refresh_presence(node.clone()));
    }
    if node.auth.enabled() {
        tokio::spawn(node::expire_tokens(node.clone(), Duration::from_secs(1)));
    }
    let conns = node.config.connections;
    let bounds = |label, permits, addresses, direct| transport::listener::Bounds {
        label,
        permits,
        addresses,
        header_timeout: conns.header_timeout,
        tcp_keepalive: conns.tcp_keepalive,
        // Sent data unacknowledged for as long as a ping may go unanswered
        // means a dead peer, on any transport (SSE has no pongs).
        user_timeout: conns.liveness.map(|l| l.bound()),
        direct,
    };
    let app = match admin {
        Some(admin) => {
            let admin_app = api::admin_router(node.clone());
            let admin_bounds = bounds(
                "admin",
                Some(Arc::new(tokio::sync::Semaphore::new(
                    conns.max_admin_connections,
                ))),
                None,
                None,
            );
            let metrics = node.metrics.clone();
            tokio::spawn(transport::listener::serve(
                admin,
                admin_app,
                admin_bounds,
                metrics,
                std::future::pending(),
            ));
            api::client_router(node.clone())
        }
        None => api::router(node.clone()),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_node = node.clone();
    let server = transport::listener::serve(
        listener,
        app,
        bounds(
            "client",
            node.connection_permits(),
            Some(address::Addresses::new(
                node.config.addresses.clone(),
                node.metrics.clone(),
            )),
            Some(frontend::native::direct(node.clone())),
        ),
        node.metrics.clone(),
        async move {
            shutdown.await;
            shutdown::drain(&drain_node).await;
            let _ = stop_tx.send(());
        },
    );
    let served = tokio::spawn(server);
    let _ = stop_rx.await;
    node.relay().shutdown().await;
    // In-flight HTTP requests get a moment; sockets are already closed.
    match tokio::time::timeout(Duration::from_secs(2), served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("HTTP server did not stop within 2 s; exiting anyway"),
    }
    Ok(())
}

/// Keep the readiness and relay gauges current without waiting for a probe.
async fn watch_health(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let status = node.relay().status();
        node.metrics.relay_up.set(status.healthy as i64);
        node.metrics.ready.set(node.readiness().is_ok() as i64);
        node.metrics
            .relay_peers
            .set(node.relay().peers().len() as i64);
    }
}
