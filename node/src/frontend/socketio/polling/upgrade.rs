//! A polling session's move to a WebSocket: the probe, then the session
//! goes on on the socket.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Stage;
use crate::address::AddressBudget;
use crate::frontend::socketio::{self, Shared};
use crate::node::Node;

/// A WebSocket upgrade for a polling session (`transport=websocket&sid=`):
/// the probe, then the session moves to the socket.
pub(crate) async fn upgrade(
    node: Arc<Node>,
    shared: Shared,
    sid: String,
    mut socket: crate::transport::Socket,
    address: Option<AddressBudget>,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let Some(polling) = shared.polls.get(&sid) else {
        return;
    };
    // `2probe` → `3probe`, then `5` (the client paused polling).
    let probe = tokio::time::timeout(shared.config.ping_timeout, socket.next()).await;
    match probe {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2probe" => {}
        _ => return,
    }
    if socket
        .send(Message::Text(Utf8Bytes::from_static("3probe")))
        .await
        .is_err()
    {
        return;
    }
    polling.upgrading.store(true, Ordering::Release);
    polling.wake.notify_one();
    let upgraded = loop {
        match tokio::time::timeout(shared.config.ping_timeout, socket.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "5" => break true,
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2probe" => {
                let _ = socket
                    .send(Message::Text(Utf8Bytes::from_static("3probe")))
                    .await;
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            _ => break false,
        }
    };
    if !upgraded {
        polling.upgrading.store(false, Ordering::Release);
        return;
    }
    // The session leaves polling: later polls and posts find no sid.
    shared.polls.remove(&sid);
    let stage = std::mem::replace(&mut *polling.stage.lock().await, Stage::Gone);
    polling.ended.store(true, Ordering::Release);
    polling.wake.notify_one();
    let pings = polling.pings.lock().clone();
    match stage {
        Stage::Open(session) => {
            let conn = polling
                .conn
                .get()
                .expect("an open session has a connection")
                .clone();
            socketio::run_socket(&node, &shared, socket, conn, *session, address).await;
        }
        Stage::Opening {
            admission: Some(admission),
            token,
            ..
        } => {
            let early: Vec<String> = polling.early.lock().drain(..).collect();
            for t in early {
                if socket
                    .send(Message::Text(Utf8Bytes::from(t)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let opened = socketio::Opened {
                eio: polling.eio,
                token,
                pings,
                admission,
                address,
            };
            socketio::continue_on_socket(node, shared, socket, opened).await;
        }
        _ => {}
    }
}
