//! The WebSocket upgrade: checking the handshake, the `101` reply, and
//! wrapping the upgraded connection.

use http::{header, HeaderMap, HeaderValue, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::Wire;

/// The socket type every front-end works with.
pub type Socket = WebSocketStream<Wire<TokioIo<Upgraded>>>;

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
        // tungstenite writes only until a connection's writer takes the
        // socket (a front-end's opening frames), then its pongs and close
        // replies (see `wire`); its (lazily grown) out buffer stays small.
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}

/// Finish the upgrade and wrap the raw connection.
pub async fn upgraded(on_upgrade: OnUpgrade, config: WebSocketConfig) -> Option<Socket> {
    match on_upgrade.await {
        Ok(io) => Some(
            WebSocketStream::from_raw_socket(
                Wire::new(TokioIo::new(io)),
                Role::Server,
                Some(config),
            )
            .await,
        ),
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            None
        }
    }
}
