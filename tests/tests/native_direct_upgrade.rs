//! The native upgrade answered without the HTTP stack (docs/protocol.md,
//! "Connecting"; docs/architecture.md): a `GET /websocket` head that arrives whole is answered
//! by the listener, its `101` in the same write as the connection frame;
//! anything else takes the HTTP path and is answered as before. Raw TCP, so
//! what is on the wire is what is asserted.

use std::time::Duration;

use pubmesh_tests::harness::{client_frame, patience, Node, Redis};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY_HEADERS: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

fn upgrade(query: &str, extra: &str) -> String {
    format!("GET /websocket{query} HTTP/1.1\r\nHost: pubmesh\r\n{KEY_HEADERS}{extra}\r\n")
}

/// Reads a raw upgrade and the server's frames from one socket.
struct Wire {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    async fn connect(port: u16) -> Wire {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        Wire {
            tcp,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write");
    }

    /// One read: what the server has sent so far (at least one byte).
    async fn read_once(&mut self) -> Vec<u8> {
        let mut chunk = vec![0u8; 8192];
        let n = tokio::time::timeout(patience(10), self.tcp.read(&mut chunk))
            .await
            .expect("the server sent nothing")
            .expect("read");
        assert!(n > 0, "closed before anything was sent");
        chunk.truncate(n);
        chunk
    }

    async fn fill(&mut self) {
        let chunk = self.read_once().await;
        self.buf.extend_from_slice(&chunk);
    }

    /// The reply head (up to the blank line): its status code and text.
    async fn head(&mut self) -> (u16, String) {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..end + 4].to_vec()).expect("head");
                self.buf.drain(..end + 4);
                let status = head[9..12].parse().expect("status");
                return (status, head);
            }
            self.fill().await;
        }
    }

    /// A reply's body of `content-length` bytes.
    async fn body(&mut self, head: &str) -> String {
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content-length")
            .trim()
            .parse()
            .expect("length");
        while self.buf.len() < len {
            self.fill().await;
        }
        String::from_utf8(self.buf.drain(..len).collect()).expect("body")
    }

    /// The next server text frame, as JSON.
    async fn frame(&mut self) -> Value {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[0], 0x81, "a text frame: {:?}", self.buf);
                let (start, len) = match self.buf[1] {
                    126 if self.buf.len() >= 4 => {
                        (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize)
                    }
                    126 => (usize::MAX, 0),
                    n => (2, n as usize),
                };
                if start != usize::MAX && self.buf.len() >= start + len {
                    let text: Vec<u8> = self.buf.drain(..start + len).skip(start).collect();
                    return serde_json::from_slice(&text).expect("JSON frame");
                }
            }
            self.fill().await;
        }
    }
}

#[tokio::test]
async fn the_101_leaves_with_the_connection_frame_and_a_frame_sent_behind_the_head_is_read() {
    let node = Node::start(&[]).await;
    let mut wire = Wire::connect(node.port).await;
    // The head and a subscribe in one write: the client did not wait for the 101.
    let mut bytes = upgrade("", "").into_bytes();
    bytes.extend(client_frame(
        0x81,
        br#"{"type":"subscribe","channel_ids":["behind"],"ref":7}"#,
    ));
    wire.send(&bytes).await;
    // One read holds the whole 101 and the whole connection frame: they
    // were one write.
    wire.buf = wire.read_once().await;
    let (status, head) = wire.head().await;
    assert_eq!(status, 101, "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert!(
        wire.buf.len() > 2 && wire.buf.len() == 2 + wire.buf[1] as usize
            || wire.buf.len() > 4 && wire.buf[1] == 126,
        "the connection frame came in the same read as the 101: {:?}",
        String::from_utf8_lossy(&wire.buf)
    );
    let hello = wire.frame().await;
    assert_eq!(hello["type"], "connection", "{hello}");
    let reply = wire.frame().await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["ref"], 7, "{reply}");
    node.wait_members("behind", 1).await;
}

#[tokio::test]
async fn heads_the_direct_path_does_not_take_are_served_over_http() {
    let node = Node::start(&[]).await;

    // A head in two pieces, the second a moment later: still one upgrade.
    let mut wire = Wire::connect(node.port).await;
    let head = upgrade("?channel_id=pieces", "");
    let (first, second) = head.split_at(30);
    wire.send(first.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    wire.send(second.as_bytes()).await;
    assert_eq!(wire.head().await.0, 101);
    assert_eq!(wire.frame().await["data"]["channel_id"], "pieces");

    // A head over the direct path's 2 KiB (a large cookie): hyper upgrades it.
    let mut wire = Wire::connect(node.port).await;
    let cookie = format!("Cookie: c={}\r\n", "x".repeat(3000));
    wire.send(upgrade("?channel_id=cookie", &cookie).as_bytes())
        .await;
    assert_eq!(wire.head().await.0, 101);
    assert_eq!(wire.frame().await["data"]["channel_id"], "cookie");

    // A plain GET /websocket is refused by the router and the connection
    // stays open for the next request.
    let mut wire = Wire::connect(node.port).await;
    wire.send(b"GET /websocket HTTP/1.1\r\nHost: pubmesh\r\n\r\n")
        .await;
    let (status, head) = wire.head().await;
    assert_eq!(status, 400, "{head}");
    let body: Value = serde_json::from_str(&wire.body(&head).await).expect("JSON");
    assert_eq!(body["code"], "bad_request", "{body}");
    wire.send(b"GET /livez HTTP/1.1\r\nHost: pubmesh\r\n\r\n")
        .await;
    let (status, head) = wire.head().await;
    assert_eq!(status, 200, "{head}");

    // An upgrade after another request on a kept-alive connection.
    let _ = wire.body(&head).await;
    wire.send(upgrade("?channel_id=second", "").as_bytes())
        .await;
    assert_eq!(wire.head().await.0, 101);
    assert_eq!(wire.frame().await["data"]["channel_id"], "second");

    // A query the router's extractor refuses gets its JSON answer.
    let mut wire = Wire::connect(node.port).await;
    wire.send(upgrade("?channel_id=a&channel_id=b", "").as_bytes())
        .await;
    let (status, head) = wire.head().await;
    assert_eq!(status, 400, "{head}");
    assert!(wire.body(&head).await.starts_with("{\"error\":"));

    // A refused channel id, answered by the direct path: JSON, then closed.
    let mut wire = Wire::connect(node.port).await;
    wire.send(upgrade("?channel_id=", "").as_bytes()).await;
    let (status, head) = wire.head().await;
    assert_eq!(status, 400, "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    let body: Value = serde_json::from_str(&wire.body(&head).await).expect("JSON");
    assert_eq!(body["code"], "bad_request", "{body}");

    // None of it stopped the node.
    let mut client = node.client("").await;
    client
        .send(serde_json::json!({"type": "subscribe", "channel_ids": ["after"], "ref": 1}))
        .await;
    let reply = client.recv_until(|f| f["type"] == "subscribed").await;
    assert_eq!(reply["ref"], 1);
}

#[tokio::test]
async fn while_opening_waits_for_the_cluster_the_101_goes_first() {
    let redis = Redis::start().await;
    let url = redis.url();
    let node = Node::start(&["--redis-url", &url]).await;
    // Redis frozen: joining a channel the client named waits for its
    // SUBSCRIBE, so opening the connection waits.
    redis.freeze();
    let mut wire = Wire::connect(node.port).await;
    wire.send(upgrade("?channel_id=waiting", "").as_bytes())
        .await;
    let first = wire.read_once().await;
    let text = String::from_utf8_lossy(&first).to_string();
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "nothing but the 101 while the join waits: {text}"
    );
    redis.thaw();
    // Then the connection frame, or the close of a join that gave up (1013).
    wire.buf = wire.read_once().await;
    assert!(
        wire.buf[0] == 0x81 || wire.buf[0] == 0x88,
        "a text or close frame: {:?}",
        wire.buf
    );
    drop(redis);
}
