//! The Socket.IO front-end at `/socket.io/`: the official `socket.io-client`
//! (and Flamenco's web app) connects over Engine.IO, joins namespaces, and
//! receives room events; rooms are mesh channels (docs/socketio.md).
//!
//! - [`engineio`]: Engine.IO packets and payloads (v3, v4);
//! - [`wire`]: Socket.IO packets (v4, v5);
//! - [`codec`]: deliveries as `42["event",payload]`, rooms as channels;
//! - [`joins`]: the declarative client-join table (Flamenco's `/subscription`);
//! - [`session`]: one connection's Socket.IO state, over the node's operations.
//!
//! A WebSocket connection is opened in two steps. Engine.IO's handshake
//! (the open packet) goes out at once; the connection becomes a mesh
//! connection (`Node::open`) only when the client's first CONNECT arrives,
//! with the identity of the token in its `auth` object, so `--require-auth`
//! and invalid tokens are answered with CONNECT_ERROR as a Socket.IO server
//! would, and a socket that never joins a namespace never counts as one.

pub mod codec;
pub mod engineio;
pub mod joins;
pub mod session;
pub mod wire;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use self::codec::SocketIoCodec;
use self::engineio::{Eio, Handshake, PacketType, ServerError, Transport};
use self::session::{auth_token, message, reasons, Due, Pings, SioSession, FRONTEND};
use self::wire::{Json, Packet, Version};
use crate::codec::Codec;
use crate::config::socketio::SocketIo as Config;
use crate::conn::Identity;
use crate::frontend::Frontend;
use crate::node::Node;
use crate::outbox::CloseReason;
use crate::transport::{self, Socket};

/// The CONNECT_ERROR message for a token that does not verify.
pub const TOKEN_INVALID: &str = "the token is not valid";
/// The CONNECT_ERROR message under `--require-auth` without a token.
pub const TOKEN_REQUIRED: &str = "this node requires a token (auth.token)";

/// Packets a connection may send before it has joined a namespace.
const OPENING_PACKETS: usize = 16;

/// The Socket.IO front-end.
pub struct SocketIo;

/// What every request handler shares.
#[derive(Clone)]
struct Shared {
    config: Arc<Config>,
    /// The namespaces other than `/`.
    namespaces: Arc<Vec<String>>,
    codec: Arc<dyn Codec>,
}

fn others(config: &Config) -> Arc<Vec<String>> {
    Arc::new(
        config
            .namespaces
            .iter()
            .skip(1)
            .map(|n| n.name.clone())
            .collect(),
    )
}

impl Frontend for SocketIo {
    fn name(&self) -> &'static str {
        FRONTEND
    }

    fn codec(&self, node: &Node) -> Arc<dyn Codec> {
        let sent = node
            .metrics
            .frontend
            .messages_out
            .with_label_values(&[FRONTEND]);
        Arc::new(SocketIoCodec::new(others(&node.config.socketio), sent))
    }

    fn routes(&self, node: &Arc<Node>) -> Router<Arc<Node>> {
        node.metrics.frontend.init(FRONTEND, reasons::ALL);
        let shared = Shared {
            config: Arc::new(node.config.socketio.clone()),
            namespaces: others(&node.config.socketio),
            codec: self.codec(node),
        };
        let s2 = shared.clone();
        Router::new()
            .route(
                "/socket.io/",
                any(move |state, query, request| engine(state, query, request, shared.clone())),
            )
            .route(
                "/socket.io",
                any(move |state, query, request| engine(state, query, request, s2.clone())),
            )
    }
}

/// An Engine.IO error reply: 400 (403) with `{"code":…,"message":…}`.
fn refuse(e: ServerError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        e.body(),
    )
        .into_response()
}

/// The token of the handshake request: `?token=` or `Authorization`.
fn request_token(query: &[(String, String)], headers: &HeaderMap) -> Option<String> {
    query
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.clone())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .filter(|t| !t.is_empty())
}

/// `/socket.io/?EIO=…&transport=…[&sid=…]`.
async fn engine(
    State(node): State<Arc<Node>>,
    Query(query): Query<Vec<(String, String)>>,
    mut request: Request,
    shared: Shared,
) -> Response {
    let classified = engineio::Request::classify(
        request.method().as_str(),
        query.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        false,
    );
    let eio = match classified {
        Err(e) => return refuse(e),
        // No polling sessions are kept: every sid is unknown.
        Ok(engineio::Request::Session { .. }) => return refuse(ServerError::UnknownSid),
        // Only the WebSocket transport is served.
        Ok(engineio::Request::Handshake {
            transport: Transport::Polling,
            ..
        }) => return refuse(ServerError::UnknownTransport),
        Ok(engineio::Request::Handshake { eio, .. }) => eio,
    };
    if request
        .headers()
        .get(header::UPGRADE)
        .is_none_or(|v| !v.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        return refuse(ServerError::BadRequest);
    }
    let (admission, reply) = match super::admit_upgrade(&node, &request) {
        Ok(admitted) => admitted,
        Err(e) => return e.into_response(),
    };
    let token = request_token(&query, request.headers());
    let address = transport::Accepted::address_of(&request);
    let on_upgrade = hyper::upgrade::on(&mut request);
    let ws_config = transport::socket_config(shared.config.max_payload);
    let handshake_timeout = node.config.connections.handshake_timeout;
    tokio::spawn(async move {
        let upgraded = tokio::time::timeout(
            handshake_timeout,
            transport::upgraded(on_upgrade, ws_config),
        );
        let Ok(Some(mut socket)) = upgraded.await else {
            return;
        };
        let mut pings = Pings::new(&shared.config);
        let Some((identity, nsp)) =
            opening(&node, &shared, eio, token, &mut socket, &mut pings).await
        else {
            return;
        };
        let conn = node
            .open(admission, identity, shared.codec.clone(), None, |_| None)
            .await;
        let settings = transport::Settings {
            rate: node.config.client_rate,
            burst: node.config.client_burst,
            address,
            flush_window: node.config.flush_window,
            tick: Some(Pings::tick(&shared.config)),
            // Engine.IO pings in its own framing.
            liveness: None,
        };
        let session = SioSession::new(
            node.clone(),
            conn.clone(),
            shared.config.clone(),
            shared.namespaces.clone(),
            eio,
            nsp,
            pings,
        );
        transport::run(socket, &conn.outbox, session, settings).await;
    });
    reply.map(|()| axum::body::Body::empty())
}

async fn send(socket: &mut Socket, text: String) -> bool {
    socket
        .send(Message::Text(Utf8Bytes::from(text)))
        .await
        .is_ok()
}

async fn close(socket: &mut Socket, reason: CloseReason) {
    let frame = CloseFrame {
        code: CloseCode::from(reason.code()),
        reason: Utf8Bytes::from_static(reason.text()),
    };
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}

/// From the upgrade to the first accepted CONNECT: send the Engine.IO
/// handshake, keep the pings, answer CONNECTs to namespaces not served and
/// with bad tokens with CONNECT_ERROR, and return the identity and the
/// namespace of the first good one. `None`: the connection ended (closed,
/// timed out, or a bad packet).
async fn opening(
    node: &Node,
    shared: &Shared,
    eio: Eio,
    request_token: Option<String>,
    socket: &mut Socket,
    pings: &mut Pings,
) -> Option<(Identity, String)> {
    let config = &shared.config;
    let version = match eio {
        Eio::V4 => Version::V5,
        Eio::V3 => Version::V4,
    };
    let handshake = Handshake {
        sid: uuid::Uuid::new_v4().simple().to_string(),
        upgrades: Vec::new(),
        ping_interval: config.ping_interval.as_millis() as u64,
        ping_timeout: config.ping_timeout.as_millis() as u64,
        max_payload: Some(config.max_payload as u64),
    };
    let open = handshake.packet(eio).encode_text().expect("text packet");
    if !send(socket, open).await {
        return None;
    }
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let bad = |why: &dyn std::fmt::Display| {
        node.metrics.frontend.error(FRONTEND, reasons::BAD_PACKET);
        tracing::info!(error = %why, "socket.io connection sent a bad packet before CONNECT; closing");
    };
    let mut packets = 0;
    loop {
        let wake = tokio::time::Instant::from_std(pings.next_event()).min(deadline);
        let frame = tokio::select! {
            frame = socket.next() => frame,
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    node.metrics.frontend.error(FRONTEND, reasons::CONNECT_TIMEOUT);
                    close(socket, CloseReason::PingTimeout).await;
                    return None;
                }
                if eio == Eio::V4 {
                    match pings.due(Instant::now()) {
                        Due::Ping => {
                            if !send(socket, PacketType::Ping.digit().to_string()).await {
                                return None;
                            }
                        }
                        Due::Dead => {
                            node.metrics.frontend.error(FRONTEND, reasons::PING_TIMEOUT);
                            close(socket, CloseReason::PingTimeout).await;
                            return None;
                        }
                        Due::Nothing => {}
                    }
                }
                continue;
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                bad(&"binary data before CONNECT");
                close(socket, CloseReason::BadFrame).await;
                return None;
            }
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                close(socket, CloseReason::TooBig).await;
                return None;
            }
            _ => return None,
        };
        packets += 1;
        if packets > OPENING_PACKETS {
            bad(&"too many packets before a namespace was joined");
            close(socket, CloseReason::BadFrame).await;
            return None;
        }
        let packet = match engineio::Packet::decode_text(&text) {
            Ok(p) => p,
            Err(e) => {
                bad(&e);
                close(socket, CloseReason::BadFrame).await;
                return None;
            }
        };
        let engineio::Data::Text(data) = packet.data else {
            return None;
        };
        match packet.kind {
            PacketType::Pong => {
                pings.pong(Instant::now());
                continue;
            }
            PacketType::Ping if eio == Eio::V3 => {
                if !send(socket, format!("{}{data}", PacketType::Pong.digit())).await {
                    return None;
                }
                continue;
            }
            PacketType::Noop | PacketType::Upgrade => continue,
            PacketType::Close => {
                close(socket, CloseReason::Disconnected).await;
                return None;
            }
            PacketType::Ping | PacketType::Open => {
                bad(&"unexpected packet");
                close(socket, CloseReason::BadFrame).await;
                return None;
            }
            PacketType::Message => {}
        }
        let (nsp, auth) = match Packet::decode(&data) {
            Ok(Packet::Connect { nsp, data, .. }) => (nsp, data),
            // Other packets before a namespace is joined are dropped.
            Ok(_) => continue,
            Err(e) => {
                bad(&e);
                close(socket, CloseReason::BadFrame).await;
                return None;
            }
        };
        match admit_connect(node, config, &nsp, auth.as_ref(), request_token.as_deref()) {
            Ok(identity) => return Some((identity, nsp)),
            Err((code, why)) => {
                node.metrics.frontend.error(FRONTEND, code);
                let refusal = message(&Packet::connect_error(version, &nsp, why));
                if !send(socket, refusal).await {
                    return None;
                }
            }
        }
    }
}

/// The identity of a first CONNECT to `nsp`, or the CONNECT_ERROR's metric
/// code and message.
fn admit_connect(
    node: &Node,
    config: &Config,
    nsp: &str,
    auth: Option<&Json>,
    request_token: Option<&str>,
) -> Result<Identity, (&'static str, &'static str)> {
    if config.namespace(nsp).is_none() {
        return Err((reasons::INVALID_NAMESPACE, session::INVALID_NAMESPACE));
    }
    let token = auth_token(auth, &config.auth_field).or(request_token.map(str::to_string));
    let identity = node.identify(token.as_deref());
    let authenticated = identity.expires_at.is_some();
    if token.is_some() && !authenticated {
        return Err((reasons::CONNECT_REFUSED, TOKEN_INVALID));
    }
    if node.config.require_auth && !authenticated {
        return Err((reasons::CONNECT_REFUSED, TOKEN_REQUIRED));
    }
    Ok(identity)
}
