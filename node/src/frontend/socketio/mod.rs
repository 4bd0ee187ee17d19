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

pub mod args;
pub mod backend;
pub mod binary;
pub mod codec;
pub mod engineio;
pub mod joins;
pub mod metrics;
mod opening;
pub mod pings;
pub mod polling;
pub mod recovery;
pub mod session;
pub mod sid;
pub mod wire;

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use futures_util::SinkExt;
use http::{header, HeaderMap, StatusCode};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use self::codec::SocketIoCodec;
use self::engineio::{Eio, Handshake, ServerError, Transport};
pub use self::session::{reasons, FRONTEND};
use self::session::{Pings, SioSession};
use crate::address::AddressBudget;
use crate::codec::Codec;
use crate::config::socketio::SocketIo as Config;
use crate::conn::Conn;
use crate::frontend::Frontend;
use crate::node::{Admission, Node};
use crate::transport::{self, Socket};

/// The CONNECT_ERROR message for a token that does not verify.
pub const TOKEN_INVALID: &str = "the token is not valid";
/// The CONNECT_ERROR message under `--require-auth` without a token.
pub const TOKEN_REQUIRED: &str = "this node requires a token (auth.token)";

/// The Socket.IO front-end.
pub struct SocketIo;

/// What every request handler shares.
#[derive(Clone)]
pub(crate) struct Shared {
    config: Arc<Config>,
    /// The namespaces other than `/`.
    namespaces: Arc<Vec<String>>,
    codec: Arc<dyn Codec>,
    /// The codec of Engine.IO 3 connections.
    codec_v3: Arc<dyn Codec>,
    /// The polling sessions this node owns.
    polls: Arc<polling::Polls>,
    /// This node's URL as other nodes reach it (forwarded polls).
    advertise: String,
    /// For forwarding polls to their owner.
    http: reqwest::Client,
    /// Where unhandled client events go.
    backend: Option<Arc<backend::Backend>>,
    /// Recovery positions, shared with the codec.
    offsets: Arc<recovery::Offsets>,
    /// Per-namespace series.
    metrics: Option<Arc<metrics::NamespaceMetrics>>,
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
        codec_with(node, Arc::default(), Eio::V4)
    }

    fn routes(&self, node: &Arc<Node>) -> Router<Arc<Node>> {
        node.metrics.frontend.init(FRONTEND, reasons::ALL);
        let advertise = node
            .config
            .socketio
            .advertise_url
            .clone()
            .unwrap_or_else(|| {
                let listen = node.config.listen;
                if listen.ip().is_unspecified() {
                    format!("http://127.0.0.1:{}", listen.port())
                } else {
                    format!("http://{listen}")
                }
            });
        let offsets: Arc<recovery::Offsets> = Arc::default();
        let served: Vec<&str> = (node.config.socketio.namespaces.iter())
            .map(|n| n.name.as_str())
            .collect();
        let metrics = metrics::NamespaceMetrics::register(&node.metrics.registry, &served);
        let shared = Shared {
            metrics: metrics.map(Arc::new),
            config: Arc::new(node.config.socketio.clone()),
            namespaces: others(&node.config.socketio),
            codec: codec_with(node, offsets.clone(), Eio::V4),
            codec_v3: codec_with(node, offsets.clone(), Eio::V3),
            offsets,
            polls: Arc::new(polling::Polls::default()),
            advertise,
            http: reqwest::Client::new(),
            backend: node.config.socketio.backend_url.clone().map(|url| {
                Arc::new(backend::Backend::new(
                    url,
                    node.config.socketio.backend_timeout,
                ))
            }),
        };
        let s2 = shared.clone();
        Router::new()
            .route(
                "/socket.io/",
                any(move |state, request| engine(state, request, shared.clone())),
            )
            .route(
                "/socket.io",
                any(move |state, request| engine(state, request, s2.clone())),
            )
    }
}

fn codec_with(node: &Node, offsets: Arc<recovery::Offsets>, eio: Eio) -> Arc<dyn Codec> {
    let sent = node
        .metrics
        .frontend
        .messages_out
        .with_label_values(&[FRONTEND]);
    Arc::new(SocketIoCodec::new(
        others(&node.config.socketio),
        sent,
        offsets,
        eio,
    ))
}

impl Shared {
    /// The codec of connections in Engine.IO revision `eio`.
    pub(crate) fn codec(&self, eio: Eio) -> Arc<dyn Codec> {
        match eio {
            Eio::V4 => self.codec.clone(),
            Eio::V3 => self.codec_v3.clone(),
        }
    }
}

/// An Engine.IO error reply: 400 (403) with `{"code":…,"message":…}`.
pub(crate) fn refuse(e: ServerError) -> Response {
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

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// `/socket.io/?EIO=…&transport=…[&sid=…]`.
async fn engine(State(node): State<Arc<Node>>, mut request: Request, shared: Shared) -> Response {
    let raw = request.uri().query().unwrap_or_default().to_string();
    let query: Vec<(String, String)> = Query::try_from_uri(request.uri())
        .map(|Query(q)| q)
        .unwrap_or_default();
    let classified = engineio::Request::classify(
        request.method().as_str(),
        query.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        true,
    );
    let token = request_token(&query, request.headers());
    let (eio, transport, sid) = match classified {
        Err(e) => return refuse(e),
        Ok(engineio::Request::Session {
            eio,
            transport,
            sid,
        }) => (eio, transport, Some(sid)),
        Ok(engineio::Request::Handshake { eio, transport }) => (eio, transport, None),
    };
    match (transport, sid) {
        (Transport::Polling, None) => {
            let address = transport::Accepted::address_of(&request);
            polling::handshake(node, shared, eio, token, address).await
        }
        (Transport::Polling, Some(sid)) => {
            let method = request.method().clone();
            let headers = request.headers().clone();
            let limit = shared.config.max_payload + 1;
            let body = match axum::body::to_bytes(request.into_body(), limit).await {
                Ok(b) => b,
                Err(_) => {
                    return (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large").into_response()
                }
            };
            polling::session_request(node, shared, method, headers, raw, sid, body).await
        }
        (Transport::WebSocket, sid) => {
            if let Some(sid) = &sid {
                // Only the owner can take a polling session's upgrade.
                if !shared.polls.contains(sid) {
                    return refuse(ServerError::UnknownSid);
                }
            }
            if !is_upgrade(request.headers()) {
                return refuse(ServerError::BadRequest);
            }
            let (admission, reply) = match super::admit_upgrade(&node, &request) {
                Ok(admitted) => admitted,
                Err(e) => return e.into_response(),
            };
            let address = transport::Accepted::address_of(&request);
            let on_upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let max = shared.config.max_payload;
                let Some(mut socket) = super::upgraded(&node, on_upgrade, max).await else {
                    return;
                };
                match sid {
                    Some(sid) => {
                        // The polling session keeps its own admission.
                        drop(admission);
                        polling::upgrade(node, shared, sid, socket, address).await
                    }
                    None => {
                        let pings = Pings::new(&shared.config, eio);
                        let hs = uuid::Uuid::new_v4().simple().to_string();
                        let open = handshake_packet(&shared.config, hs, eio, Vec::new());
                        if !send(&mut socket, open.encode_text().expect("text")).await {
                            return;
                        }
                        let opened = Opened {
                            eio,
                            token,
                            pings,
                            admission,
                            address,
                        };
                        continue_on_socket(node, shared, socket, opened).await
                    }
                }
            });
            reply.map(|()| axum::body::Body::empty())
        }
    }
}

/// The open packet.
pub(crate) fn handshake_packet(
    config: &Config,
    sid: String,
    eio: Eio,
    upgrades: Vec<String>,
) -> engineio::Packet {
    Handshake {
        sid,
        upgrades,
        ping_interval: config.ping_interval.as_millis() as u64,
        ping_timeout: config.ping_timeout.as_millis() as u64,
        max_payload: Some(config.max_payload as u64),
    }
    .packet(eio)
}

/// A WebSocket connection between its open packet and its first CONNECT.
pub(crate) struct Opened {
    pub eio: Eio,
    /// The handshake request's token.
    pub token: Option<String>,
    pub pings: Pings,
    pub admission: Admission,
    /// The frame budget of the client's address.
    pub address: Option<AddressBudget>,
}

/// After the open packet: wait on the socket for the first accepted
/// CONNECT, then open the mesh connection and run the session.
pub(crate) async fn continue_on_socket(
    node: Arc<Node>,
    shared: Shared,
    mut socket: Socket,
    opened: Opened,
) {
    let Opened {
        eio,
        token,
        mut pings,
        admission,
        address,
    } = opened;
    let Some((identity, nsp)) =
        opening::opening(&node, &shared, eio, token, &mut socket, &mut pings).await
    else {
        return;
    };
    let conn = node
        .open(admission, identity, shared.codec(eio), None, |_| None)
        .await;
    let session = SioSession::new(
        node.clone(),
        conn.clone(),
        shared.config.clone(),
        shared.namespaces.clone(),
        eio,
        Some(nsp),
        pings,
    )
    .with_shared(&shared);
    run_socket(&node, &shared, socket, conn, session, address).await;
}

/// Run a session over a WebSocket to its end.
pub(crate) async fn run_socket(
    node: &Node,
    shared: &Shared,
    socket: Socket,
    conn: Arc<Conn>,
    session: SioSession,
    address: Option<AddressBudget>,
) {
    let settings = transport::Settings {
        tick: Some(Pings::tick(&shared.config)),
        // Engine.IO pings in its own framing.
        liveness: None,
        ..super::socket_settings(node, address)
    };
    transport::run(socket, &conn.outbox, session, settings).await;
}

async fn send(socket: &mut Socket, text: String) -> bool {
    socket
        .send(Message::Text(Utf8Bytes::from(text)))
        .await
        .is_ok()
}
