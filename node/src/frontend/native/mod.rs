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
use std::task::Poll;

use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::SinkExt;
use http::{header, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

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

/// An upgrade request to `/websocket` that passed every check.
struct Checked {
    admission: crate::node::Admission,
    identity: crate::conn::Identity,
    home: String,
    address: Option<crate::address::AddressBudget>,
}

/// Admit and check an upgrade request to `/websocket`.
fn check<B>(
    node: &Node,
    params: &ConnectParams,
    request: &http::Request<B>,
) -> Result<(Checked, http::Response<()>), HttpError> {
    let (admission, reply) = super::admit_upgrade(node, request)?;
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| params.token.clone());
    let identity = node.identify(token.as_deref());
    let home = match &params.channel_id {
        Some(c) if c.is_empty() || c.len() > MAX_ID_LEN => {
            return Err(HttpError::bad_request(format!(
                "channel_id must be 1 to {MAX_ID_LEN} bytes long"
            )))
        }
        Some(c) => match crate::limits::channel_name(c) {
            Ok(()) => c.clone(),
            Err(message) => return Err(HttpError::bad_request(format!("channel_id: {message}"))),
        },
        None => fresh_channel_id(node.node_id()),
    };
    if let Err(e) = node.may_subscribe_as(&identity, &home) {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            e.code(),
            e.to_string(),
        ));
    }
    let checked = Checked {
        admission,
        identity,
        home,
        address: transport::Accepted::address_of(request),
    };
    Ok((checked, reply))
}

/// `GET /websocket` through hyper: admit, check, upgrade and run a native
/// session. (A request the client listener reads whole takes [`direct`]
/// instead.)
async fn websocket(
    State(node): State<Arc<Node>>,
    Query(params): Query<ConnectParams>,
    mut request: Request,
    codec: Arc<dyn Codec>,
) -> Response {
    let (checked, reply) = match check(&node, &params, &request) {
        Ok(checked) => checked,
        Err(e) => return e.into_response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let max = node.config.max_message_size;
        let Some(mut socket) = super::upgraded(&node, on_upgrade, max).await else {
            return;
        };
        let (conn, settings) = open(&node, codec, checked, &mut socket).await;
        let session = NativeSession::new(node.clone(), conn.clone());
        transport::run(socket, &conn.outbox, session, settings).await;
    });
    reply.map(|()| axum::body::Body::empty())
}

/// The client listener's direct handler (see [`transport::direct`]): an
/// upgrade to `/websocket` whose query parses is checked and answered
/// here, its `101` sent with the connection frame; anything else is left
/// to the router.
pub fn direct(node: Arc<Node>) -> transport::Direct<transport::Held> {
    let codec = Native.codec(&node);
    Arc::new(move |request| {
        if request.uri().path() != "/websocket" || !request.headers().contains_key(header::UPGRADE)
        {
            return None;
        }
        // A query the router's extractor refuses gets the router's answer.
        let Query(params) = Query::<ConnectParams>::try_from_uri(request.uri()).ok()?;
        let (checked, reply) = match check(&node, &params, request) {
            Ok(checked) => checked,
            Err(e) => return Some(Err(e)),
        };
        let (node, codec) = (node.clone(), codec.clone());
        let run: transport::DirectRun<transport::Held> = Box::new(move |io| {
            Box::pin(async move {
                let config = transport::socket_config(node.config.max_message_size);
                let mut socket = WebSocketStream::from_raw_socket(
                    transport::Wire::new(io),
                    Role::Server,
                    Some(config),
                )
                .await;
                let (conn, settings) = open(&node, codec, checked, &mut socket).await;
                let session = NativeSession::new(node.clone(), conn.clone());
                transport::run(socket, &conn.outbox, session, settings).await;
            })
        });
        Some(Ok(transport::Taken { reply, run }))
    })
}

/// Open the connection of a checked upgrade on `socket`. A `101` still held
/// in front of the socket's first write leaves with the connection frame,
/// unless opening waits (a join to the cluster): then it is sent first.
/// (The socket is borrowed, and the session run by the caller: an idle
/// connection's task then holds the socket once, not once per layer.)
async fn open<T>(
    node: &Arc<Node>,
    codec: Arc<dyn Codec>,
    checked: Checked,
    socket: &mut WebSocketStream<T>,
) -> (Arc<crate::conn::Conn>, transport::Settings)
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Checked {
        admission,
        identity,
        home,
        address,
    } = checked;
    let node_id = node.node_id();
    let open = node.open(admission, identity, codec, Some(home), |conn| {
        Some(conn.with_info(|info| connection_frame(node_id, info, None)))
    });
    let mut open = std::pin::pin!(open);
    let conn = match futures_util::poll!(open.as_mut()) {
        Poll::Ready(conn) => conn,
        Poll::Pending => {
            let _ = socket.flush().await;
            open.await
        }
    };
    (conn, super::socket_settings(node, address))
}
