//! Budgets per client address: a client that reconnects as soon as it is
//! closed is held to its address's frame and connection budgets, whatever
//! the number of sockets; trusted networks are exempt (docs/protocol.md,
//! "Limits"). The attacker's sockets come from another loopback address
//! (127.0.0.2, 127.0.0.3) than the test's own clients and API calls
//! (127.0.0.1, trusted).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pubmesh_tests::harness::{eventually, patience, Node};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

const ATTACKER: &str = "127.0.0.2";

/// A TCP connection to the node from `source`.
async fn tcp_from(source: &str, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source.parse().expect("ip"), 0))
        .expect("bind a loopback source address");
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect")
}

/// A WebSocket to `/websocket?{query}` from `source`.
async fn ws_from(source: &str, node: &Node, query: &str) -> Ws {
    let tcp = tcp_from(source, node.port).await;
    let (ws, _) = tokio_tungstenite::client_async(node.ws(query), tcp)
        .await
        .expect("upgrade");
    ws
}

/// What the node answered an upgrade request.
enum Reply {
    Upgraded(TcpStream),
    Refused {
        status: u16,
        head: String,
        body: Value,
    },
}

/// An upgrade request by hand from `source`, to see a refusal's head and body.
async fn upgrade_from(source: &str, port: u16) -> Reply {
    let mut s = tcp_from(source, port).await;
    let request = format!(
        "GET /websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(patience(10), s.read(&mut b))
            .await
            .expect("a reply in time")
            .expect("read the reply");
        assert_eq!(n, 1, "reply cut after {:?}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status: u16 = head[9..12].parse().expect("status");
    if status == 101 {
        return Reply::Upgraded(s);
    }
    let mut body = Vec::new();
    tokio::time::timeout(patience(10), s.read_to_end(&mut body))
        .await
        .expect("the body in time")
        .expect("read the body");
    let body = serde_json::from_slice(&body).expect("a JSON body");
    Reply::Refused { status, head, body }
}

/// Read a socket until the node closes it; returns the close code (`None`:
/// no close frame) and the pongs that arrived. Panics if it stays open.
async fn until_closed(ws: &mut Ws) -> (Option<u16>, u64) {
    let mut pongs = 0;
    let deadline = Instant::now() + patience(10);
    loop {
        let next = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .expect("the node closes the socket");
        match next {
            Some(Ok(Message::Close(frame))) => return (frame.map(|f| u16::from(f.code)), pongs),
            Some(Ok(Message::Pong(_))) => pongs += 1,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (None, pongs),
        }
    }
}

/// The most deliveries an address budget of `burst` frames refilled at
/// `rate`/s lets through in `elapsed`, plus slack for the clocks.
fn budget(burst: u64, rate: f64, elapsed: Duration) -> u64 {
    burst + (rate * elapsed.as_secs_f64()).ceil() as u64 + 10
}

/// Flags for a node whose address frame budget is 100 frames, then 20/s,
/// with room for everything else (connections, each socket's own budget).
const FRAME_BUDGET: &[&str] = &[
    "--trusted-networks",
    "127.0.0.1/32",
    "--address-frame-rate",
    "20",
    "--address-frame-burst",
    "100",
    "--address-connection-rate",
    "1000",
    "--address-connection-burst",
    "1000",
    "--client-rate",
    "1000",
    "--client-burst",
    "1000",
];

#[tokio::test]
async fn a_reconnect_flood_from_one_address_is_held_to_the_address_budget() {
    let node = Node::start(FRAME_BUDGET).await;
    let mut watcher = node.client("channel_id=flood").await;
    let flood = json!({"type": "channel", "channel_ids": ["flood"], "data": {"flood": 1}});
    let flood = Message::text(flood.to_string());
    let start = Instant::now();
    let mut closes = Vec::new();
    // 20 sockets in turn, each sending 200 frames (within its own budget
    // of 1,000): 4,000 frames, each socket replaced once it is closed.
    for _ in 0..20 {
        let mut ws = ws_from(ATTACKER, &node, "channel_id=flood").await;
        for _ in 0..200 {
            if ws.feed(flood.clone()).await.is_err() {
                break;
            }
        }
        let _ = ws.flush().await;
        closes.push(until_closed(&mut ws).await.0);
    }
    let elapsed = start.elapsed();
    let (status, _) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["flood"], "data": {"marker": true}}),
        )
        .await;
    assert_eq!(status, 200);
    let mut delivered = 0;
    while watcher.recv().await != json!({"marker": true}) {
        delivered += 1;
    }
    let most = budget(100, 20.0, elapsed);
    assert!(
        (100..=most).contains(&delivered),
        "{delivered} of 4,000 frames delivered in {elapsed:?}; the address budget allows 100 to {most}"
    );
    assert!(
        closes.iter().all(|c| *c == Some(4029)),
        "every flooding socket is closed with 4029: {closes:?}"
    );
    let limited = node
        .metric("pubmesh_address_limited_total{kind=\"frame\"}")
        .await;
    assert_eq!(limited, 20.0, "one count per socket closed");
}

#[tokio::test]
async fn a_reconnect_ping_flood_is_held_to_the_address_budget() {
    let node = Node::start(FRAME_BUDGET).await;
    let start = Instant::now();
    let mut pongs = 0;
    for _ in 0..20 {
        let mut ws = ws_from(ATTACKER, &node, "").await;
        for _ in 0..200 {
            if ws
                .feed(Message::Ping(vec![b'p'; 125].into()))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = ws.flush().await;
        let (code, got) = until_closed(&mut ws).await;
        assert_eq!(code, Some(4029), "after {got} pongs");
        pongs += got;
    }
    let elapsed = start.elapsed();
    let most = budget(100, 20.0, elapsed);
    assert!(
        pongs <= most,
        "{pongs} pongs for 4,000 pings in {elapsed:?}; the address budget allows {most}"
    );
    assert!(pongs >= 90, "the budget's burst is answered: {pongs} pongs");
    assert_eq!(
        node.metric("pubmesh_address_limited_total{kind=\"frame\"}")
            .await,
        20.0
    );
}

#[tokio::test]
async fn connections_over_the_address_rate_are_refused_with_429() {
    let node = Node::start(&[
        "--trusted-networks",
        "127.0.0.1/32",
        "--address-connection-rate",
        "1",
        "--address-connection-burst",
        "5",
    ])
    .await;
    let start = Instant::now();
    let mut upgraded = Vec::new();
    let mut refusals = Vec::new();
    for _ in 0..20 {
        match upgrade_from(ATTACKER, node.port).await {
            Reply::Upgraded(s) => upgraded.push(s),
            Reply::Refused { status, head, body } => refusals.push((status, head, body)),
        }
    }
    let elapsed = start.elapsed();
    let most = 5 + elapsed.as_secs_f64().ceil() as usize;
    assert!(
        (5..=most).contains(&upgraded.len()),
        "{} of 20 upgrades in {elapsed:?}; the budget allows 5 to {most}",
        upgraded.len()
    );
    let (status, head, body) = refusals.first().expect("a refusal");
    assert_eq!(*status, 429, "{head}");
    assert_eq!(body["code"], "rate_limited", "{body}");
    let message = body["error"].as_str().expect("a message");
    assert!(message.contains("--address-connection-rate"), "{message}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "{head}");
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .expect("a retry-after header")
        .trim()
        .parse()
        .expect("seconds");
    assert!(retry >= 1, "{retry}");
    assert!(refusals.iter().all(|(s, _, _)| *s == 429));
    let count = refusals.len() as f64;
    eventually("refusals counted", patience(10), || {
        let node = &node;
        async move {
            let by_address = node
                .metric("pubmesh_address_limited_total{kind=\"connection\"}")
                .await;
            let errors = node
                .metric("pubmesh_errors_total{code=\"rate_limited\"}")
                .await;
            (by_address == count && errors == count).then_some(())
        }
    })
    .await;
    // The refused address does not hold anyone else back.
    let mut trusted = node.client("channel_id=t").await;
    let (status, _) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["t"], "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(trusted.recv().await, json!({"n": 1}));
}

#[tokio::test]
async fn a_trusted_network_is_exempt() {
    let node = Node::start(&[
        "--trusted-networks",
        "127.0.0.1/32,127.0.0.2",
        "--address-connection-rate",
        "1",
        "--address-connection-burst",
        "2",
        "--address-frame-rate",
        "1",
        "--address-frame-burst",
        "5",
    ])
    .await;
    // 127.0.0.2 is trusted: 20 connections at once and 50 frames, all taken.
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(ws_from("127.0.0.2", &node, "channel_id=ok").await);
    }
    let mut watcher = node.client("channel_id=ok").await;
    let publisher = &mut sockets[0];
    for n in 0..50 {
        let frame = json!({"type": "channel", "channel_ids": ["ok"], "data": {"n": n}});
        publisher
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }
    for n in 0..50 {
        assert_eq!(watcher.recv().await, json!({"n": n}));
    }
    // 127.0.0.3 is not: its sixth frame closes its socket, and of five
    // connections at once (its first took one of two tokens) one at least
    // is refused.
    let mut ws = ws_from("127.0.0.3", &node, "channel_id=ok").await;
    for n in 0..20 {
        let frame = json!({"type": "channel", "channel_ids": ["ok"], "data": {"m": n}});
        if ws.send(Message::text(frame.to_string())).await.is_err() {
            break;
        }
    }
    assert_eq!(until_closed(&mut ws).await.0, Some(4029));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(match upgrade_from("127.0.0.3", node.port).await {
            Reply::Upgraded(_) => 101,
            Reply::Refused { status, .. } => status,
        });
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // The trusted sockets were never closed.
    let (status, _) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["ok"], "data": {"end": true}}),
        )
        .await;
    assert_eq!(status, 200);
    let mut got = 0;
    for ws in sockets.iter_mut() {
        loop {
            match tokio::time::timeout(patience(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == r#"{"end":true}"# => {
                    got += 1;
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("a trusted socket ended: {other:?}"),
            }
        }
    }
    assert_eq!(got, 20);
}
