//! A connection between Engine.IO's open packet and its first accepted
//! CONNECT (over a WebSocket or polling): the packets it may send, the
//! CONNECT's identity, and the CONNECT_ERROR when it is refused.

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::engineio::{self, Eio, PacketType};
use super::recovery::{Claim, Connecting};
use super::session::{connect_token, message, Due, Pings};
use super::wire::{Packet, Version};
use super::{reasons, send, session, Shared, FRONTEND, TOKEN_INVALID, TOKEN_REQUIRED};
use crate::config::socketio::{SocketIo as Config, MAIN};
use crate::conn::Identity;
use crate::node::Node;
use crate::outbox::CloseReason;
use crate::transport::Socket;

/// Packets a connection may send before it has joined a namespace.
const OPENING_PACKETS: usize = 16;

/// What one packet before the first accepted CONNECT asks for.
pub(crate) enum Step {
    Nothing,
    /// Send this packet.
    Reply(String),
    /// The client closed.
    End,
    /// A bad packet (counted): close.
    Bad,
    /// A CONNECT accepted: open the connection with this identity and
    /// namespace.
    Connect(Identity, Connecting),
}

/// One client packet (Engine.IO text) before the first accepted CONNECT.
pub(crate) fn opening_step(
    node: &Node,
    shared: &Shared,
    eio: Eio,
    request_token: Option<&str>,
    text: &str,
    pings: &mut Pings,
    packets: &mut usize,
) -> Step {
    let bad = |why: &dyn std::fmt::Display| {
        node.metrics.frontend.error(FRONTEND, reasons::BAD_PACKET);
        tracing::info!(error = %why, "socket.io connection sent a bad packet before CONNECT; closing");
        Step::Bad
    };
    *packets += 1;
    if *packets > OPENING_PACKETS {
        return bad(&"too many packets before a namespace was joined");
    }
    let packet = match engineio::Packet::decode_text(text) {
        Ok(p) => p,
        Err(e) => return bad(&e),
    };
    let engineio::Data::Text(data) = packet.data else {
        return bad(&"binary data before CONNECT");
    };
    match packet.kind {
        PacketType::Pong => {
            pings.pong(Instant::now());
            return Step::Nothing;
        }
        PacketType::Ping if eio == Eio::V3 => {
            pings.client_ping(Instant::now());
            return Step::Reply(format!("{}{data}", PacketType::Pong.digit()));
        }
        PacketType::Noop | PacketType::Upgrade => return Step::Nothing,
        PacketType::Close => return Step::End,
        PacketType::Ping | PacketType::Open => return bad(&"unexpected packet"),
        PacketType::Message => {}
    }
    let (nsp, auth, claim) = match Packet::decode(&data) {
        Ok(Packet::Connect { nsp, data, query }) => (
            nsp,
            connect_token(data.as_ref(), query.as_deref(), &shared.config.auth_field),
            Claim::of(data.as_ref()),
        ),
        // Other packets before a namespace is joined are dropped.
        Ok(_) => return Step::Nothing,
        Err(e) => return bad(&e),
    };
    let version = match eio {
        Eio::V4 => Version::V5,
        Eio::V3 => Version::V4,
    };
    match admit_connect(node, &shared.config, &nsp, auth, request_token) {
        Ok(identity) => Step::Connect(identity, Connecting { nsp, claim }),
        Err((code, why)) => {
            node.metrics.frontend.error(FRONTEND, code);
            Step::Reply(message(&Packet::connect_error(version, &nsp, why)))
        }
    }
}

/// From the open packet to the first accepted CONNECT over a WebSocket:
/// keep the pings, answer what [`opening_step`] says, and return the
/// identity and the namespace. `None`: the connection ended (closed, timed
/// out, or a bad packet).
pub(super) async fn opening(
    node: &Node,
    shared: &Shared,
    eio: Eio,
    request_token: Option<String>,
    socket: &mut Socket,
    pings: &mut Pings,
) -> Option<(Identity, Connecting)> {
    if eio == Eio::V3 {
        // Socket.IO v4 clients are in `/` from the start.
        return match admit_connect(node, &shared.config, MAIN, None, request_token.as_deref()) {
            Ok(identity) => Some((identity, Connecting::to(MAIN))),
            Err((code, why)) => {
                node.metrics.frontend.error(FRONTEND, code);
                let refusal = message(&Packet::connect_error(Version::V4, MAIN, why));
                let _ = send(socket, refusal).await;
                close(socket, CloseReason::Unauthorized).await;
                None
            }
        };
    }
    let deadline = tokio::time::Instant::now() + shared.config.connect_timeout;
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
                continue;
            }
        };
        let step = match frame {
            Some(Ok(Message::Text(text))) => opening_step(
                node,
                shared,
                eio,
                request_token.as_deref(),
                &text,
                pings,
                &mut packets,
            ),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                opening_step(node, shared, eio, None, "", pings, &mut packets)
            }
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                close(socket, CloseReason::TooBig).await;
                return None;
            }
            _ => return None,
        };
        match step {
            Step::Nothing => {}
            Step::Reply(text) => {
                if !send(socket, text).await {
                    return None;
                }
            }
            Step::End => {
                close(socket, CloseReason::Disconnected).await;
                return None;
            }
            Step::Bad => {
                close(socket, CloseReason::BadFrame).await;
                return None;
            }
            Step::Connect(identity, nsp) => return Some((identity, nsp)),
        }
    }
}

/// The identity of a first CONNECT to `nsp`, or the CONNECT_ERROR's metric
/// code and message.
pub(crate) fn admit_connect(
    node: &Node,
    config: &Config,
    nsp: &str,
    connect_token: Option<String>,
    request_token: Option<&str>,
) -> Result<Identity, (&'static str, &'static str)> {
    if config.namespace(nsp).is_none() {
        return Err((reasons::INVALID_NAMESPACE, session::INVALID_NAMESPACE));
    }
    let token = connect_token.or(request_token.map(str::to_string));
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
