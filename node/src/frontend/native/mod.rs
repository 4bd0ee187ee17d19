//! The native front-end at `/websocket`: the jac-cloud websocket protocol,
//! extended with `subscribe`/`unsubscribe`, `ref` echo and error frames
//! (docs/protocol.md).
//!
//! - [`parse`]: reading client frames;
//! - [`codec`]: the frames it sends and [`codec::NativeCodec`];
//! - [`session`]: one socket's protocol state, over the node's operations.

pub mod codec;
pub mod parse;
pub mod session;

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, StatusCode};
use serde::Deserialize;

use self::codec::{connection_frame, NativeCodec};
use self::parse::MAX_ID_LEN;
pub use self::session::NativeSession;
use crate::codec::Codec;
use crate::frontend::Frontend;
use crate::http_error::HttpError;
use crate::node::Node;
use crate::transport;

/// The native protocol.
pub struct Native;

impl Frontend for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn codec(&self, node: &Node) -> Arc<dyn Codec> {
        Arc::new(NativeCodec::new(node.node_id()))
    }

    fn routes(&self, node: &Arc<Node>) -> Router<Arc<Node>> {
        let codec = self.codec(node);
        Router::new().route(
            "/websocket",
            get(move |state, query, request| websocket(state, query, request, codec.clone())),
        )
    }
}

/// Query parameters of `/websocket`.
#[derive(Deserialize, Default)]
pub struct ConnectParams {
    pub channel_id: Option<String>,
    pub token: Option<String>,
}

/// A fresh channel id for a connection that did not ask for one:
/// jac-cloud's `{unix seconds}:{32 hex}` followed by `:{node id}`, the form
/// of a client id, so that it names this node
/// ([`pubmesh_cluster_proto::channel_owner`]) and peers send its messages
/// straight to this node's inbox (docs/cluster.md, "Channels named for
/// their node").
pub fn fresh_channel_id(node_id: &str) -> String {
    pubmesh_cluster_proto::new_client_id(node_id)
}

/// `GET /websocket`: admit, check, upgrade and run a native session.
async fn websocket(
    State(node): State<Arc<Node>>,
    Query(params): Query<ConnectParams>,
    mut request: Request,
    codec: Arc<dyn Codec>,
) -> Response {
    let (admission, reply) = match super::admit_upgrade(&node, &request) {
        Ok(admitted) => admitted,
        Err(e) => return e.into_response(),
    };
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| params.token.clone());
    let identity = node.identify(token.as_deref());
    let home = match &params.channel_id {
        Some(c) if c.is_empty() || c.len() > MAX_ID_LEN => {
            return HttpError::bad_request(format!(
                "channel_id must be 1 to {MAX_ID_LEN} bytes long"
            ))
            .into_response()
        }
        Some(c) => match crate::limits::channel_name(c) {
            Ok(()) => c.clone(),
            Err(message) => {
                return HttpError::bad_request(format!("channel_id: {message}")).into_response()
            }
        },
        None => fresh_channel_id(node.node_id()),
    };
    if let Err(e) = node.may_subscribe_as(&identity, &home) {
        return HttpError::new(StatusCode::FORBIDDEN, e.code(), e.to_string()).into_response();
    }
    let address = transport::Accepted::address_of(&request);
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let max = node.config.max_message_size;
        let Some(socket) = super::upgraded(&node, on_upgrade, max).await else {
            return;
        };
        let node_id = node.node_id().to_string();
        let conn = node
            .open(admission, identity, codec, Some(home), |conn| {
                Some(conn.with_info(|info| connection_frame(&node_id, info, None)))
            })
            .await;
        let settings = super::socket_settings(&node, address);
        let session = NativeSession::new(node.clone(), conn.clone());
        transport::run(socket, &conn.outbox, session, settings).await;
    });
    reply.map(|()| axum::body::Body::empty())
}
