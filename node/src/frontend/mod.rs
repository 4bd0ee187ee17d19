//! Front-ends: each turns a wire protocol into calls on the node (publish,
//! subscribe, …) and node deliveries into frames. They share the transport,
//! the hub and the relay; only the framing differs.
//!
//! - [`native`]: `/websocket`, the jac-cloud compatible protocol.

pub mod cells;
pub mod chain;
pub mod native;
pub mod phoenix;
pub mod socketio;

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};

use crate::hub::Conn;
use crate::node::Node;
use crate::outbox::CloseReason;
use crate::transport;

/// `GET /websocket`: upgrade and run a native session.
pub async fn websocket(
    State(node): State<Arc<Node>>,
    Query(params): Query<native::ConnectParams>,
    mut request: Request,
) -> Response {
    if node.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if let Some(max) = node.config.max_connections {
        if node.hub.counts().connections as usize >= max {
            node.metrics.errors.with_label_values(&["capacity"]).inc();
            return (StatusCode::SERVICE_UNAVAILABLE, "connection limit reached").into_response();
        }
    }
    let reply = match transport::accept(request.headers()) {
        Ok(reply) => reply,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| params.token.clone());
    let identity = native::identify(&node, token.as_deref());
    let conn = match native::new_conn(&node, &params, identity) {
        Ok(conn) => Arc::new(conn),
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    let options = match node.may_subscribe(&conn, &conn.channel_id) {
        Ok(options) => options,
        Err(message) => {
            node.metrics.errors.with_label_values(&["forbidden"]).inc();
            return (StatusCode::FORBIDDEN, message).into_response();
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let config = transport::socket_config(node.config.max_message_size);
    tokio::spawn(async move {
        let Some(socket) = transport::upgraded(on_upgrade, config).await else {
            return;
        };
        start_native(node, conn, socket, options).await;
    });
    reply.map(|()| axum::body::Body::empty())
}

async fn start_native(
    node: Arc<Node>,
    conn: Arc<Conn>,
    socket: transport::Socket,
    options: crate::namespace::ChannelOptions,
) {
    node.register(&conn);
    if node.config.require_auth && !conn.state.lock().authenticated {
        conn.outbox.close(CloseReason::Unauthorized);
    } else {
        conn.outbox
            .push(native::connection_frame(&node, &conn, None));
        node.presence_join(&conn, &conn.channel_id, &options).await;
    }
    if node.is_draining() {
        conn.outbox.close(CloseReason::Drain);
    }
    let session = native::NativeSession::new(node.clone(), conn.clone());
    transport::run(node, conn, socket, session).await;
}
