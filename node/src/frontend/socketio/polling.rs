//! Engine.IO HTTP long-polling (EIO=4), with the upgrade to WebSocket.
//!
//! A polling session lives on the node that answered its handshake (its
//! *owner*). Its sid says where that is: `<owner>.<nonce>.<signature>`,
//! the owner's advertised URL (base64url) and a random nonce, signed with
//! HMAC-SHA256 under the API key every node of a cluster shares. A request
//! for a sid this node does not hold, with a valid signature naming another
//! node, is forwarded there as is (method, query, body) and its answer
//! relayed: a client behind a round-robin balancer needs no sticky
//! sessions. A bad signature is never forwarded (no request goes to an
//! address a client made up): it is an unknown sid.
//!
//! Until the client's first accepted CONNECT the session has no mesh
//! connection; what it must send meanwhile (pings, CONNECT_ERRORs) waits in
//! its own queue. From then on a poll drains the connection's outbox.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, Method, StatusCode};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::engineio::{self, Eio, PacketType, ServerError};
use super::opening::{admit_connect, opening_step, Step};
use super::session::{message, Due, Pings, SioSession};
use super::sid::new_sid;
use super::{refuse, Shared};
use crate::address::{AddressBudget, FrameLimit};
use crate::config::socketio::MAIN;
use crate::conn::Conn;
use crate::node::{Admission, Node};
use crate::outbox::CloseReason;
use crate::transport::{Flow, Session};

mod forward;
mod upgrade;

use forward::forward;
pub(crate) use upgrade::upgrade;

/// The header a forwarded request carries (a node never forwards it again).
pub const FORWARDED: &str = "x-pubmesh-socketio-forwarded";

/// Where a session is.
enum Stage {
    /// Before the first accepted CONNECT.
    Opening {
        admission: Option<Admission>,
        packets: usize,
        token: Option<String>,
    },
    Open(Box<SioSession>),
    /// Moved to a WebSocket, or ended.
    Gone,
}

/// One polling session.
pub struct Polling {
    sid: String,
    eio: Eio,
    /// Packets to send that are not in the connection's outbox (before it
    /// exists; the noop that ends a poll during an upgrade).
    early: parking_lot::Mutex<Vec<String>>,
    wake: tokio::sync::Notify,
    stage: tokio::sync::Mutex<Stage>,
    pings: parking_lot::Mutex<Pings>,
    conn: OnceLock<Arc<Conn>>,
    /// A GET is in progress.
    polling: AtomicBool,
    /// The client sent the upgrade probe: polls end at once.
    upgrading: AtomicBool,
    ended: AtomicBool,
    /// When the handshake was answered (a session must CONNECT within the
    /// connect timeout).
    opened_at: Instant,
    /// Packets the client may send, as for a WebSocket's frames: the
    /// session's own budget (`--client-rate`), then the handshake address's.
    frames: parking_lot::Mutex<FrameLimit>,
}

/// The polling sessions this node owns.
#[derive(Default)]
pub struct Polls {
    map: parking_lot::Mutex<HashMap<String, Arc<Polling>>>,
}

impl Polls {
    fn get(&self, sid: &str) -> Option<Arc<Polling>> {
        self.map.lock().get(sid).cloned()
    }

    fn remove(&self, sid: &str) {
        self.map.lock().remove(sid);
    }

    pub fn contains(&self, sid: &str) -> bool {
        self.map.lock().contains_key(sid)
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn text_reply(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        body,
    )
        .into_response()
}

/// `GET /socket.io/?EIO=4&transport=polling`: a new session, answered with
/// the open packet.
pub(crate) async fn handshake(
    node: Arc<Node>,
    shared: Shared,
    eio: Eio,
    token: Option<String>,
    address: Option<AddressBudget>,
) -> Response {
    let admission = match node.admit() {
        Ok(a) => a,
        Err(e) => {
            return crate::http_error::HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                e.code(),
                e.to_string(),
            )
            .into_response()
        }
    };
    let sid = new_sid(&shared.advertise, &node.config.api_key);
    let polling = Arc::new(Polling {
        sid: sid.clone(),
        eio,
        early: parking_lot::Mutex::new(Vec::new()),
        wake: tokio::sync::Notify::new(),
        stage: tokio::sync::Mutex::new(Stage::Opening {
            admission: Some(admission),
            packets: 0,
            token,
        }),
        pings: parking_lot::Mutex::new(Pings::new(&shared.config, eio)),
        conn: OnceLock::new(),
        polling: AtomicBool::new(false),
        upgrading: AtomicBool::new(false),
        ended: AtomicBool::new(false),
        opened_at: Instant::now(),
        frames: parking_lot::Mutex::new(FrameLimit::new(
            node.config.client_rate,
            node.config.client_burst,
            address,
        )),
    });
    shared.polls.map.lock().insert(sid.clone(), polling.clone());
    let open = super::handshake_packet(&shared.config, sid, eio, vec!["websocket".into()]);
    if eio == Eio::V3 {
        // Socket.IO v4 clients are in `/` from the start.
        let mut stage = polling.stage.lock().await;
        let Stage::Opening {
            admission, token, ..
        } = &mut *stage
        else {
            unreachable!("a new session is opening")
        };
        let admitted = admit_connect(&node, &shared.config, MAIN, None, token.as_deref());
        match admitted {
            Ok(identity) => {
                let admission = admission.take().expect("admitted once");
                let opened =
                    open_session(&node, &shared, &polling, admission, identity, MAIN.into()).await;
                *stage = opened;
            }
            Err((code, why)) => {
                node.metrics.frontend.error(super::FRONTEND, code);
                drop(stage);
                end(&shared, &polling, None).await;
                let refusal = message(&super::wire::Packet::connect_error(
                    super::wire::Version::V4,
                    MAIN,
                    why,
                ));
                let refusal = engineio::Packet::decode_text(&refusal).expect("our own packet");
                return text_reply(StatusCode::OK, payload(eio, &[open, refusal]));
            }
        }
    }
    tokio::spawn(heartbeat(node, shared.clone(), polling));
    text_reply(StatusCode::OK, payload(eio, &[open]))
}

/// The server's pings for a polling session (until it moves to a
/// WebSocket), and its end when one goes unanswered.
async fn heartbeat(node: Arc<Node>, shared: Shared, polling: Arc<Polling>) {
    let every = Pings::tick(&shared.config);
    loop {
        tokio::time::sleep(every).await;
        if polling.ended.load(Ordering::Acquire) {
            return;
        }
        if polling.conn.get().is_none()
            && polling.opened_at.elapsed() >= shared.config.connect_timeout
        {
            node.metrics
                .frontend
                .error(super::FRONTEND, super::reasons::CONNECT_TIMEOUT);
            end(&shared, &polling, Some(CloseReason::PingTimeout)).await;
            return;
        }
        let due = polling.pings.lock().due(Instant::now());
        match due {
            Due::Nothing => {}
            Due::Ping => polling.queue(&node, PacketType::Ping.digit().to_string()),
            Due::Dead => {
                node.metrics
                    .frontend
                    .error(super::FRONTEND, super::reasons::PING_TIMEOUT);
                end(&shared, &polling, Some(CloseReason::PingTimeout)).await;
                return;
            }
        }
    }
}

impl Polling {
    /// Queue a packet: in the connection's outbox once there is one.
    fn queue(&self, node: &Node, text: String) {
        match self.conn.get() {
            Some(conn) => {
                node.send(conn, Utf8Bytes::from(text));
            }
            None => {
                self.early.lock().push(text);
                self.wake.notify_one();
            }
        }
    }
}

/// End a session: its connection closes, polls get the close packet.
async fn end(shared: &Shared, polling: &Polling, reason: Option<CloseReason>) {
    if polling.ended.swap(true, Ordering::AcqRel) {
        return;
    }
    shared.polls.remove(&polling.sid);
    let stage = std::mem::replace(&mut *polling.stage.lock().await, Stage::Gone);
    match stage {
        Stage::Open(mut session) => session.on_close(reason).await,
        Stage::Opening { .. } | Stage::Gone => {}
    }
    if let Some(conn) = polling.conn.get() {
        conn.outbox
            .close(reason.unwrap_or(CloseReason::Disconnected));
    }
    polling.wake.notify_one();
}

/// A request for an existing session: served here when this node owns it,
/// forwarded to its owner otherwise.
pub(crate) async fn session_request(
    node: Arc<Node>,
    shared: Shared,
    method: Method,
    headers: HeaderMap,
    raw_query: String,
    sid: String,
    body: Bytes,
) -> Response {
    let Some(polling) = shared.polls.get(&sid) else {
        return forward(&node, &shared, method, headers, raw_query, &sid, body).await;
    };
    if method == Method::GET {
        poll(&shared, &polling).await
    } else if method == Method::POST {
        let binary = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"));
        post(&node, &shared, &polling, binary, body).await
    } else {
        refuse(ServerError::BadRequest)
    }
}

/// A GET: wait for packets and answer them as one payload.
async fn poll(shared: &Shared, polling: &Arc<Polling>) -> Response {
    if polling.polling.swap(true, Ordering::AcqRel) {
        // Two polls at once: the reference server closes the session.
        end(shared, polling, Some(CloseReason::BadFrame)).await;
        return refuse(ServerError::BadRequest);
    }
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    let _done = Done(&polling.polling);
    let longest = shared.config.ping_interval + shared.config.ping_timeout;
    let deadline = tokio::time::Instant::now() + longest;
    let mut batch: VecDeque<Utf8Bytes> = VecDeque::new();
    loop {
        let mut out: Vec<engineio::Packet> = polling
            .early
            .lock()
            .drain(..)
            .map(|t| engineio::Packet::decode_text(&t).expect("our own packets"))
            .collect();
        let mut closing = None;
        if let Some(conn) = polling.conn.get() {
            closing = conn.outbox.take(&mut batch);
            for frame in batch.drain(..) {
                out.push(super::binary::outbox_packet(polling.eio, &frame).expect("our own"));
            }
        }
        let ended = polling.ended.load(Ordering::Acquire);
        if !out.is_empty() {
            return text_reply(StatusCode::OK, payload(polling.eio, &out));
        }
        if closing.is_some() || ended {
            if !ended {
                end(shared, polling, closing).await;
            }
            return text_reply(
                StatusCode::OK,
                payload(polling.eio, &[engineio::Packet::bare(PacketType::Close)]),
            );
        }
        if polling.upgrading.load(Ordering::Acquire) || tokio::time::Instant::now() >= deadline {
            return text_reply(
                StatusCode::OK,
                payload(polling.eio, &[engineio::Packet::bare(PacketType::Noop)]),
            );
        }
        let outbox_ready = async {
            match polling.conn.get() {
                Some(conn) => conn.outbox.ready().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = polling.wake.notified() => {}
            _ = outbox_ready => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// A POST: the client's packets, handled in order.
async fn post(
    node: &Arc<Node>,
    shared: &Shared,
    polling: &Arc<Polling>,
    binary: bool,
    body: Bytes,
) -> Response {
    if body.len() > shared.config.max_payload {
        end(shared, polling, Some(CloseReason::TooBig)).await;
        return (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large").into_response();
    }
    let packets = match (polling.eio, binary) {
        (Eio::V3, true) => engineio::decode_payload_v3_binary(&body).ok(),
        (eio, _) => std::str::from_utf8(&body).ok().and_then(|text| match eio {
            Eio::V4 => engineio::decode_payload_v4(text).ok(),
            Eio::V3 => engineio::decode_payload_v3(text).ok(),
        }),
    };
    let Some(packets) = packets else {
        node.metrics
            .frontend
            .error(super::FRONTEND, super::reasons::BAD_PACKET);
        end(shared, polling, Some(CloseReason::BadFrame)).await;
        return refuse(ServerError::BadRequest);
    };
    for packet in packets {
        if !polling.frames.lock().allow() {
            // Over its budget: the session ends as a WebSocket's would
            // (4029, `rate_limited`), and the POST is refused.
            end(shared, polling, Some(CloseReason::RateLimited)).await;
            return refuse(ServerError::BadRequest);
        }
        let flow = handle(node, shared, polling, packet).await;
        if let Some(reason) = flow {
            end(shared, polling, reason).await;
            break;
        }
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html")], "ok").into_response()
}

/// One packet from the client; `Some` when the session must end (with the
/// server's close reason, `None` for a client's close).
async fn handle(
    node: &Arc<Node>,
    shared: &Shared,
    polling: &Arc<Polling>,
    packet: engineio::Packet,
) -> Option<Option<CloseReason>> {
    let mut stage = polling.stage.lock().await;
    match &mut *stage {
        Stage::Gone => Some(None),
        Stage::Opening {
            admission,
            packets,
            token,
        } => {
            let text = match packet.encode_text() {
                Some(t) => t,
                None => {
                    node.metrics
                        .frontend
                        .error(super::FRONTEND, super::reasons::BAD_PACKET);
                    return Some(Some(CloseReason::BadFrame));
                }
            };
            let step = {
                let mut pings = polling.pings.lock();
                opening_step(
                    node,
                    shared,
                    polling.eio,
                    token.as_deref(),
                    &text,
                    &mut pings,
                    packets,
                )
            };
            match step {
                Step::Nothing => None,
                Step::Reply(t) => {
                    polling.queue(node, t);
                    None
                }
                Step::End => Some(None),
                Step::Bad => Some(Some(CloseReason::BadFrame)),
                Step::Connect(identity, nsp) => {
                    let admission = admission.take().expect("admitted once");
                    *stage = open_session(node, shared, polling, admission, identity, nsp).await;
                    None
                }
            }
        }
        Stage::Open(session) => {
            if packet.kind == PacketType::Ping {
                polling.pings.lock().client_ping(Instant::now());
            }
            let flow = match (&packet.kind, &packet.data) {
                (PacketType::Pong, _) => {
                    polling.pings.lock().pong(Instant::now());
                    Flow::Continue
                }
                (_, engineio::Data::Text(_)) => {
                    let text = packet.encode_text().expect("text");
                    session.on_text(Utf8Bytes::from(text)).await
                }
                (_, engineio::Data::Binary(b)) => session.on_binary(b.clone()).await,
            };
            match flow {
                Flow::Continue => None,
                Flow::Close(CloseReason::Disconnected) => Some(None),
                Flow::Close(reason) => Some(Some(reason)),
            }
        }
    }
}

/// The first accepted CONNECT: the mesh connection opens and the session
/// joins the namespace.
async fn open_session(
    node: &Arc<Node>,
    shared: &Shared,
    polling: &Polling,
    admission: Admission,
    identity: crate::conn::Identity,
    nsp: super::recovery::Connecting,
) -> Stage {
    let conn = node
        .open(admission, identity, shared.codec(polling.eio), None, |_| {
            None
        })
        .await;
    // Packets queued before the connection existed go first.
    for t in polling.early.lock().drain(..) {
        conn.outbox.push(Utf8Bytes::from(t));
    }
    let _ = polling.conn.set(conn.clone());
    let pings = polling.pings.lock().clone();
    let mut session = SioSession::new(
        node.clone(),
        conn,
        shared.config.clone(),
        shared.namespaces.clone(),
        polling.eio,
        Some(nsp),
        pings,
    )
    .with_shared(shared);
    session.on_open().await;
    polling.wake.notify_one();
    Stage::Open(Box::new(session))
}

/// A payload in the session's Engine.IO revision.
fn payload(eio: Eio, packets: &[engineio::Packet]) -> String {
    match eio {
        Eio::V4 => engineio::encode_payload_v4(packets),
        Eio::V3 => engineio::encode_payload_v3(packets),
    }
}
