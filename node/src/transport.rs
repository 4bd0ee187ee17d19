//! WebSocket transport: the HTTP upgrade, and the reader and writer halves of
//! every connection.
//!
//! A connection runs as one task holding two futures: the reader (frames from
//! the client, rate limited, handed to the front-end's [`Session`]) and the
//! writer (drains the outbox: feed every queued frame, flush once). When
//! either ends, both are dropped and the socket closes.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::hub::Conn;
use crate::node::Node;
use crate::outbox::CloseReason;

/// The socket type every front-end works with.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Reasons an upgrade request is refused before it becomes a socket.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("not a WebSocket upgrade request")]
    NotWebSocket,
    #[error("unsupported WebSocket version (need 13)")]
    Version,
}

/// Check the handshake headers and build the `101 Switching Protocols` reply.
pub fn accept(headers: &HeaderMap) -> Result<http::Response<()>, UpgradeError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(UpgradeError::NotWebSocket);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(UpgradeError::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(UpgradeError::NotWebSocket)?;
    let accept = derive_accept_key(key.as_bytes());
    let mut response = http::Response::new(());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    Ok(response)
}

/// tungstenite settings for server sockets: small buffers keep idle
/// connections cheap (the 128 KiB default read buffer is allocated eagerly).
pub fn socket_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        // Frames gather in tungstenite's (lazily grown) out buffer until a
        // flush or until this size: one write syscall for many deliveries.
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}

/// Finish the upgrade and wrap the raw connection.
pub async fn upgraded(on_upgrade: OnUpgrade, config: WebSocketConfig) -> Option<Socket> {
    match on_upgrade.await {
        Ok(io) => Some(
            WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(config)).await,
        ),
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            None
        }
    }
}

/// What the reader should do after a frame.
pub enum Flow {
    Continue,
    /// Close the connection with this reason (queued after pending frames).
    Close(CloseReason),
}

/// A front-end's per-connection protocol state.
pub trait Session: Send {
    /// A text frame arrived.
    fn on_text(&mut self, text: Utf8Bytes) -> impl Future<Output = Flow> + Send;
    /// A binary frame arrived.
    fn on_binary(&mut self) -> impl Future<Output = Flow> + Send;
}

/// A per-connection token bucket.
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: u32, burst: u32) -> Self {
        RateLimit {
            tokens: burst as f64,
            rate: rate as f64,
            burst: burst as f64,
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Run one connection to its end, then unregister it.
pub async fn run<S: Session>(node: Arc<Node>, conn: Arc<Conn>, socket: Socket, mut session: S) {
    let (mut sink, mut stream) = socket.split();
    let reader = async {
        let mut limit = RateLimit::new(node.config.client_rate, node.config.client_burst);
        loop {
            let flow = match stream.next().await {
                None | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Text(text))) => {
                    if !limit.allow() {
                        Flow::Close(CloseReason::RateLimited)
                    } else {
                        session.on_text(text).await
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    if !limit.allow() {
                        Flow::Close(CloseReason::RateLimited)
                    } else {
                        session.on_binary().await
                    }
                }
                Some(Ok(_)) => Flow::Continue,
                Some(Err(WsError::Capacity(
                    CapacityError::MessageTooLong { .. } | CapacityError::TooManyHeaders,
                ))) => Flow::Close(CloseReason::TooBig),
                Some(Err(e)) => {
                    tracing::debug!(client_id = %conn.client_id, error = %e, "read error");
                    return;
                }
            };
            if let Flow::Close(reason) = flow {
                conn.outbox.close(reason);
                // The writer sends the close frame; stop reading, but stay
                // pending so the writer can finish.
                std::future::pending::<()>().await;
            }
        }
    };
    let writer = write_loop(&node, &conn, &mut sink);
    let closed_by_server = tokio::select! {
        _ = reader => None,
        reason = writer => reason,
    };
    match closed_by_server {
        // The client closed: send tungstenite's queued close reply.
        None => {
            let _ = tokio::time::timeout(Duration::from_millis(500), sink.flush()).await;
        }
        // Stuck on a full socket: nothing more will get through.
        Some(CloseReason::SlowConsumer) => {}
        // We sent a close frame: read (and drop) what the client still sends
        // until its close reply, so closing the socket does not reset the
        // connection before the client has read our close frame.
        Some(_) => {
            let drain = async {
                while let Some(Ok(message)) = stream.next().await {
                    if message.is_close() {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        }
    }
    if let Some(reason) = closed_by_server {
        crate::close_log::policy_close(reason, &conn.client_id);
    }
    let label = closed_by_server.map(CloseReason::label).unwrap_or("client");
    node.metrics
        .connections_closed
        .with_label_values(&[label])
        .inc();
    // Whatever is left in the outbox is dropped with the connection.
    conn.outbox.close(CloseReason::Disconnected);
    node.unregister(&conn);
}

type Sink = futures_util::stream::SplitSink<Socket, Message>;

/// Drain the outbox until it closes; returns the server's close reason, or
/// `None` when the socket failed.
async fn write_loop(node: &Node, conn: &Conn, sink: &mut Sink) -> Option<CloseReason> {
    let window = node.config.flush_window;
    let mut batch: VecDeque<Utf8Bytes> = VecDeque::new();
    loop {
        let closing = conn.outbox.take(&mut batch);
        if batch.is_empty() {
            if let Some(reason) = closing {
                send_close(sink, reason).await;
                return Some(reason);
            }
            if batch.capacity() > 64 {
                batch = VecDeque::new();
            }
            conn.outbox.ready().await;
            continue;
        }
        let io = async {
            if !window.is_zero() && batch.len() > 1 {
                // Under load, let more frames arrive so they share a syscall.
                tokio::time::sleep(window).await;
                conn.outbox.take(&mut batch);
            }
            while let Some(frame) = batch.pop_front() {
                sink.feed(Message::Text(frame)).await?;
            }
            sink.flush().await
        };
        tokio::pin!(io);
        let result = loop {
            tokio::select! {
                result = &mut io => break Some(result),
                _ = conn.outbox.ready() => {
                    // A slow consumer stuck on a full socket buffer will never
                    // read a close frame: drop it now.
                    if conn.outbox.closed() == Some(CloseReason::SlowConsumer) {
                        break None;
                    }
                }
            }
        };
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::debug!(client_id = %conn.client_id, error = %e, "write error");
                return None;
            }
            None => return Some(CloseReason::SlowConsumer),
        }
    }
}

async fn send_close(sink: &mut Sink, reason: CloseReason) {
    let frame = CloseFrame {
        code: CloseCode::from(reason.code()),
        reason: Utf8Bytes::from_static(reason.text()),
    };
    let send = async {
        sink.send(Message::Close(Some(frame))).await?;
        sink.flush().await
    };
    // A peer that does not read cannot hold the task forever.
    let _ = tokio::time::timeout(Duration::from_secs(2), send).await;
}
