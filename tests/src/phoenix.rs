//! A raw Phoenix Channels client over the test WebSocket [`Client`].

use serde_json::Value;

use crate::harness::{Client, Node};

/// A Phoenix socket on `node` with serializer `vsn` (`"2.0.0"`, `"1.0.0"`).
pub async fn socket(node: &Node, vsn: &str) -> Client {
    let url = format!("ws://127.0.0.1:{}/socket/websocket?vsn={vsn}", node.port);
    Client::connect_raw(&url, None).await.expect("connect")
}

/// Send a v2 frame and read the reply to its ref.
pub async fn call(ws: &mut Client, frame: Value) -> Value {
    let reference = frame[1].clone();
    ws.send(frame).await;
    ws.recv_until(|v| v[1] == reference && v[3] == "phx_reply")
        .await
}
