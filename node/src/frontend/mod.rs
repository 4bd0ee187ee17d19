//! Front-ends: each turns a wire protocol into calls on the node (admit,
//! open, publish, join, …) and contributes its routes and its codec. They
//! share the transport and depend on the node's operations only, never on
//! the hub or the relay.
//!
//! Adding a protocol is one module here and one line in
//! [`registry::frontends`]; see docs/architecture.md.
//!
//! - [`native`]: `/websocket`, the jac-cloud compatible protocol;
//! - [`phoenix`]: `/socket/websocket`, Phoenix Channels (v1 and v2 JSON);
//! - [`socketio`]: `/socket.io/`, Socket.IO over Engine.IO;
//! - [`chain`]: `/socket/sse`, chain's protocol over Server-Sent Events.

pub mod cells;
pub mod chain;
pub mod native;
pub mod phoenix;
pub mod registry;
pub mod socketio;

use std::sync::Arc;

use axum::Router;
use http::StatusCode;

use crate::address::AddressBudget;
use crate::codec::Codec;
use crate::http_error::HttpError;
use crate::node::{Admission, Node};
use crate::transport;

/// A wire protocol served by the node.
pub trait Frontend: Send + Sync + 'static {
    /// Short name, for logs and docs ("native", "phoenix", …).
    fn name(&self) -> &'static str;

    /// The protocol's codec for a connection (a front-end whose frames
    /// depend on more than the protocol, such as a Socket.IO namespace or a
    /// session's claims, makes further instances itself).
    fn codec(&self, node: &Node) -> Arc<dyn Codec>;

    /// The routes this front-end serves; the HTTP router merges them.
    fn routes(&self, node: &Arc<Node>) -> Router<Arc<Node>>;
}

/// Admit a WebSocket upgrade request: the node's drain and capacity checks
/// (a socket the listener counted already holds its permit) and the
/// handshake headers. An `Err` is the HTTP error to answer instead.
pub(crate) fn admit_upgrade<B>(
    node: &Node,
    request: &http::Request<B>,
) -> Result<(Admission, http::Response<()>), HttpError> {
    let holds_permit = request
        .extensions()
        .get::<transport::Accepted>()
        .is_some_and(|a| a.counted);
    let admission = node
        .admit_socket(holds_permit)
        .map_err(|e| HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string()))?;
    let reply =
        transport::accept(request.headers()).map_err(|e| HttpError::bad_request(e.to_string()))?;
    Ok((admission, reply))
}

/// Finish a WebSocket upgrade admitted by [`admit_upgrade`] within the
/// node's handshake deadline (`--handshake-timeout`): a client that never
/// completes it is dropped and counted in
/// `pubmesh_http_timeouts_total{phase="handshake"}`. `None`: the upgrade
/// failed or timed out.
pub(crate) async fn upgraded(
    node: &Node,
    on_upgrade: hyper::upgrade::OnUpgrade,
    max_message_size: usize,
) -> Option<transport::Socket> {
    let config = transport::socket_config(max_message_size);
    let deadline = node.config.connections.handshake_timeout;
    match tokio::time::timeout(deadline, transport::upgraded(on_upgrade, config)).await {
        Ok(socket) => socket,
        Err(_) => {
            node.metrics
                .http_timeouts
                .with_label_values(&["handshake"])
                .inc();
            None
        }
    }
}

/// The socket settings a front-end starts from: the node's per-socket frame
/// budget and flush window, `address`'s shared budget, the node's server
/// pings, no tick. A protocol with its own keep-alive (Phoenix heartbeats,
/// Engine.IO pings) sets `tick` and turns `liveness` off.
pub(crate) fn socket_settings(node: &Node, address: Option<AddressBudget>) -> transport::Settings {
    transport::Settings {
        rate: node.config.client_rate,
        burst: node.config.client_burst,
        address,
        flush_window: node.config.flush_window,
        tick: None,
        liveness: node.config.connections.liveness,
    }
}

/// The identity of an HTTP connect (a Phoenix socket, a chain session):
/// the `token` param, else the `Authorization` header. `Err` is why it is
/// refused: a token that does not verify, or none under `--require-auth`.
pub(crate) fn connect_identity(
    node: &Node,
    param: Option<&String>,
    headers: &http::HeaderMap,
) -> Result<crate::conn::Identity, &'static str> {
    let token = param.cloned().or_else(|| {
        headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let token = token.filter(|t| !t.is_empty());
    let identity = node.identify(token.as_deref());
    let authenticated = identity.expires_at.is_some();
    if token.is_some() && !authenticated {
        Err("the token is not valid")
    } else if node.config.require_auth && !authenticated {
        Err("this node requires a token (connect param `token`)")
    } else {
        Ok(identity)
    }
}
