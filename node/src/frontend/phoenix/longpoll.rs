//! Phoenix long-polling at `/socket/longpoll`, as the official client's
//! `LongPoll` transport speaks it (docs/phoenix.md).
//!
//! Every answer is HTTP 200 with a JSON body whose `status` is the
//! protocol's: a `GET` without a session token opens a session
//! (`{"status":410,"token":T}`); a `GET` with it waits up to the poll window
//! for frames (`{"status":200,"token":T,"messages":[frame,…]}`, else
//! `{"status":204,"token":T}`); a `POST` carries newline-separated frames
//! (`{"status":200}`). An unknown or ended session gets `{"status":410}`,
//! after which the client reconnects and rejoins; a refused connect gets
//! `{"status":403}`.
//!
//! A session is the Phoenix state of a WebSocket ([`PhoenixSession`]) over
//! a connection whose outbox the polls drain. Between polls it keeps its
//! channels; it ends when no poll or POST has been in progress for
//! `--phoenix-longpoll-grace-ms`. Sessions live on the node that opened
//! them: a poll on another node gets 410 (its token is unknown there).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http::HeaderMap;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::session::{reasons, PhoenixSession, FRONTEND};
use super::wire::Vsn;
use crate::address::{AddressBudget, FrameLimit};
use crate::codec::Codec;
use crate::conn::Conn;
use crate::node::Node;
use crate::outbox::CloseReason;
use crate::transport::sse::{poll, PollClock};
use crate::transport::{Flow, Session};

/// Session tokens start with this (a JWT never does).
const TOKEN_PREFIX: &str = "lp.";
/// Frames one POST may carry (the client sends at most 100).
const MAX_BATCH: usize = 100;

/// One long-polling session.
struct Poller {
    conn: Arc<Conn>,
    session: tokio::sync::Mutex<Option<PhoenixSession>>,
    clock: PollClock,
    frames: Mutex<FrameLimit>,
}

/// The long-polling sessions this node holds.
#[derive(Default)]
pub struct Pollers {
    map: Mutex<HashMap<String, Arc<Poller>>>,
}

fn answer(body: Value) -> Response {
    axum::Json(body).into_response()
}

fn status(code: u16) -> Response {
    answer(json!({ "status": code }))
}

/// The session token of a request: the last `token` that looks like one.
fn session_token(query: &[(String, String)]) -> Option<&str> {
    query
        .iter()
        .rev()
        .filter(|(k, _)| k == "token")
        .map(|(_, v)| v.as_str())
        .find(|v| v.starts_with(TOKEN_PREFIX))
}

/// The connect's JWT: a `token` that is no session token, the client's
/// `authToken` (`X-Phoenix-AuthToken`), or `Authorization`.
fn connect_token(query: &[(String, String)], headers: &HeaderMap) -> Option<String> {
    query
        .iter()
        .find(|(k, v)| k == "token" && !v.starts_with(TOKEN_PREFIX))
        .map(|(_, v)| v.clone())
        .or_else(|| {
            headers
                .get("x-phoenix-authtoken")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
}

/// `GET /socket/longpoll`: open a session, or poll one.
pub(super) async fn get(
    node: Arc<Node>,
    pollers: Arc<Pollers>,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    codec: Arc<dyn Codec>,
    vsn: Vsn,
    address: Option<AddressBudget>,
) -> Response {
    let Some(token) = session_token(&query) else {
        return open(node, pollers, &query, &headers, codec, vsn, address).await;
    };
    let Some(poller) = pollers.map.lock().get(token).cloned() else {
        node.metrics.frontend.error(FRONTEND, reasons::SESSION_GONE);
        return status(410);
    };
    let _polling = poller.clock.polling();
    let window = node
        .config
        .phoenix
        .longpoll_grace
        .min(Duration::from_secs(10))
        / 2;
    let (frames, closing) = poll(&poller.conn.outbox, window).await;
    if frames.is_empty() {
        return match closing {
            Some(_) => status(410),
            None => answer(json!({"status": 204, "token": token})),
        };
    }
    let messages: Vec<&str> = frames.iter().map(Utf8Bytes::as_str).collect();
    answer(json!({"status": 200, "token": token, "messages": messages}))
}

/// A new session: admitted, its token checked, its connection opened; its
/// supervisor ends it after the grace period without a poll.
async fn open(
    node: Arc<Node>,
    pollers: Arc<Pollers>,
    query: &[(String, String)],
    headers: &HeaderMap,
    codec: Arc<dyn Codec>,
    vsn: Vsn,
    address: Option<AddressBudget>,
) -> Response {
    let Ok(admission) = node.admit() else {
        return status(503);
    };
    let jwt = connect_token(query, headers);
    let identity = match super::super::connect_identity(&node, jwt.as_ref(), headers) {
        Ok(identity) => identity,
        Err(why) => {
            tracing::debug!(reason = why, "phoenix long-poll connect refused");
            node.metrics
                .frontend
                .error(FRONTEND, reasons::CONNECT_REFUSED);
            return status(403);
        }
    };
    let conn = node.open(admission, identity, codec, None, |_| None).await;
    let session = PhoenixSession::new(node.clone(), conn.clone(), vsn);
    let frames = FrameLimit::new(node.config.client_rate, node.config.client_burst, address);
    let poller = Arc::new(Poller {
        conn,
        session: tokio::sync::Mutex::new(Some(session)),
        clock: PollClock::new(),
        frames: Mutex::new(frames),
    });
    let bits: u128 = rand::random();
    let token = format!("{TOKEN_PREFIX}{bits:032x}");
    pollers.map.lock().insert(token.clone(), poller.clone());
    let grace = node.config.phoenix.longpoll_grace;
    tokio::spawn(supervise(pollers, token.clone(), poller, grace));
    answer(json!({"status": 410, "token": token}))
}

/// End the session when no poll came for `grace` (`None`: the client went
/// away) or the node closed its connection.
async fn supervise(pollers: Arc<Pollers>, token: String, poller: Arc<Poller>, grace: Duration) {
    let by_server = loop {
        if let Some(reason) = poller.conn.outbox.closed() {
            break Some(reason);
        }
        tokio::select! {
            _ = poller.clock.expired(grace) => break None,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    };
    end(&pollers, &token, &poller, by_server).await;
}

async fn end(pollers: &Pollers, token: &str, poller: &Poller, by_server: Option<CloseReason>) {
    pollers.map.lock().remove(token);
    if let Some(mut session) = poller.session.lock().await.take() {
        session.on_close(by_server).await;
    }
}

/// `POST /socket/longpoll?token=T`: the frames of the body, one per line.
pub(super) async fn post(
    node: Arc<Node>,
    pollers: Arc<Pollers>,
    query: Vec<(String, String)>,
    body: Body,
) -> Response {
    let poller = session_token(&query).and_then(|t| pollers.map.lock().get(t).cloned());
    let (Some(poller), Some(token)) = (poller, session_token(&query)) else {
        node.metrics.frontend.error(FRONTEND, reasons::SESSION_GONE);
        return status(410);
    };
    // A POST keeps the session as a poll does.
    let _active = poller.clock.polling();
    let limit = node.config.max_message_size.saturating_mul(MAX_BATCH);
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        node.metrics.frontend.error(FRONTEND, reasons::BAD_FRAME);
        return status(413);
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        node.metrics.frontend.error(FRONTEND, reasons::BAD_FRAME);
        return status(400);
    };
    let mut closing = None;
    {
        let mut guard = poller.session.lock().await;
        let Some(session) = guard.as_mut() else {
            return status(410);
        };
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let reason = if line.len() > node.config.max_message_size {
                Some(CloseReason::TooBig)
            } else if !poller.frames.lock().allow() {
                Some(CloseReason::RateLimited)
            } else {
                // The official client sends binary frames base64-encoded,
                // one per line like text frames (which start with `[`/`{`).
                let binary = (!line.starts_with(['[', '{']))
                    .then(|| base64::engine::general_purpose::STANDARD.decode(line).ok())
                    .flatten();
                let flow = match binary {
                    Some(frame) => session.on_binary(bytes::Bytes::from(frame)).await,
                    None => session.on_text(Utf8Bytes::from(line.to_string())).await,
                };
                match flow {
                    Flow::Continue => None,
                    Flow::Close(reason) => Some(reason),
                }
            };
            if reason.is_some() {
                closing = reason;
                break;
            }
        }
    }
    if let Some(reason) = closing {
        tracing::info!(reason = reason.text(), "phoenix long-poll session closed");
        end(&pollers, token, &poller, Some(reason)).await;
        return status(410);
    }
    status(200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tokens_are_told_from_jwts() {
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let query = q(&[
            ("token", "eyJhbGciOi.x.y"),
            ("vsn", "2.0.0"),
            ("token", "lp.00ff"),
        ]);
        assert_eq!(session_token(&query), Some("lp.00ff"));
        assert_eq!(
            connect_token(&query, &HeaderMap::new()).as_deref(),
            Some("eyJhbGciOi.x.y")
        );
        let first = q(&[("vsn", "2.0.0")]);
        assert_eq!(session_token(&first), None);
        let mut headers = HeaderMap::new();
        headers.insert("x-phoenix-authtoken", "jwt".parse().expect("header"));
        assert_eq!(connect_token(&first, &headers).as_deref(), Some("jwt"));
    }
}
