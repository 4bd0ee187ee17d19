//! WebSocket protocol violations and control-frame floods, sent as raw bytes
//! over TCP: each ends with a close frame carrying the right code, and other
//! sockets keep being served.

use pubmesh_tests::harness::{client_frame as frame, eventually, patience, Client, Node};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Open a WebSocket by hand; returns the socket after the `101` reply.
async fn raw_socket(node: &Node) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", node.port))
        .await
        .expect("connect");
    let request = format!(
        "GET /websocket HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        node.port
    );
    s.write_all(request.as_bytes()).await.expect("handshake");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.expect("read reply"), 1, "reply cut");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// The server's next frame: its first byte and payload; `None` when the
/// connection ends.
async fn next_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.ok()?;
    let mut len = (h[1] & 0x7f) as u64;
    if len == 126 {
        let mut l = [0u8; 2];
        s.read_exact(&mut l).await.ok()?;
        len = u16::from_be_bytes(l) as u64;
    } else if len == 127 {
        let mut l = [0u8; 8];
        s.read_exact(&mut l).await.ok()?;
        len = u64::from_be_bytes(l);
    }
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).await.ok()?;
    Some((h[0], payload))
}

/// Read server frames, skipping data frames and pongs, until a close frame;
/// returns its code, or `None` when the connection ends without one.
async fn close_code(s: &mut TcpStream) -> Option<u16> {
    let read = async {
        loop {
            let (first, payload) = next_frame(s).await?;
            if first & 0x0f == 0x8 {
                assert!(payload.len() >= 2, "close frame without a code");
                return Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    };
    tokio::time::timeout(patience(20), read)
        .await
        .expect("no close frame in time")
}

async fn bystander_still_receives(node: &Node, bystander: &mut Client, n: u64) {
    let (status, _) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["watch"], "data": {"n": n}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(bystander.recv().await, json!({"n": n}));
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let node = Node::start(&[]).await;
    let mut bystander = node.client("channel_id=watch").await;
    let mut s = raw_socket(&node).await;
    s.write_all(&frame(0x81, &[b'{', 0xff, 0xfe, b'}']))
        .await
        .expect("send");
    assert_eq!(close_code(&mut s).await, Some(1007));
    bystander_still_receives(&node, &mut bystander, 1).await;
}

#[tokio::test]
async fn a_reserved_opcode_closes_with_1002() {
    let node = Node::start(&[]).await;
    let mut bystander = node.client("channel_id=watch").await;
    let mut s = raw_socket(&node).await;
    // Opcode 0x3 is reserved for future data frames.
    s.write_all(&frame(0x83, b"x")).await.expect("send");
    assert_eq!(close_code(&mut s).await, Some(1002));
    bystander_still_receives(&node, &mut bystander, 1).await;
}

#[tokio::test]
async fn reserved_bits_close_with_1002() {
    let node = Node::start(&[]).await;
    let mut bystander = node.client("channel_id=watch").await;
    let mut s = raw_socket(&node).await;
    // RSV1 set with no extension negotiated.
    s.write_all(&frame(0x80 | 0x40 | 0x1, b"{}"))
        .await
        .expect("send");
    assert_eq!(close_code(&mut s).await, Some(1002));
    bystander_still_receives(&node, &mut bystander, 1).await;
}

#[tokio::test]
async fn a_ping_flood_closes_with_4029() {
    let node = Node::start(&["--client-rate", "50", "--client-burst", "50"]).await;
    let mut bystander = node.client("channel_id=watch").await;
    let mut s = raw_socket(&node).await;
    let flood: Vec<u8> = (0..500).flat_map(|_| frame(0x89, b"p")).collect();
    // The server may close before the whole flood is written.
    let _ = s.write_all(&flood).await;
    assert_eq!(close_code(&mut s).await, Some(4029));
    bystander_still_receives(&node, &mut bystander, 1).await;
    eventually("rate-limited close counted", patience(10), || {
        let node = &node;
        async move {
            (node
                .metric("pubmesh_connections_closed_total{reason=\"rate_limited\"}")
                .await
                >= 1.0)
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_pong_flood_closes_with_4029() {
    let node = Node::start(&["--client-rate", "50", "--client-burst", "50"]).await;
    let mut s = raw_socket(&node).await;
    let flood: Vec<u8> = (0..500).flat_map(|_| frame(0x8a, b"p")).collect();
    let _ = s.write_all(&flood).await;
    assert_eq!(close_code(&mut s).await, Some(4029));
}

#[tokio::test]
async fn a_ping_gets_its_pong_and_a_client_close_its_reply() {
    let node = Node::start(&[]).await;
    let mut s = raw_socket(&node).await;
    s.write_all(&frame(0x89, b"are you there"))
        .await
        .expect("send");
    let exchange = async {
        // The connection frame first, then the pong with the ping's payload.
        let mut got = Vec::new();
        while let Some((first, payload)) = next_frame(&mut s).await {
            got.push((first, payload));
            if got.last().is_some_and(|(first, _)| *first == 0x8a) {
                break;
            }
        }
        assert_eq!(
            got.last(),
            Some(&(0x8a, b"are you there".to_vec())),
            "{got:?}"
        );
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        s.write_all(&frame(0x88, &close)).await.expect("close");
        // The reply to the close carries its code, then the node closes.
        let (first, payload) = next_frame(&mut s).await.expect("a close reply");
        assert_eq!(first, 0x88);
        assert_eq!(payload[..2], 1000u16.to_be_bytes());
        assert_eq!(next_frame(&mut s).await, None);
    };
    tokio::time::timeout(patience(20), exchange)
        .await
        .expect("pong and close reply in time");
}
