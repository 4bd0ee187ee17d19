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

use axum::extract::Request;
use axum::Router;
use http::StatusCode;

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
pub(crate) fn admit_upgrade(
    node: &Node,
    request: &Request,
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
