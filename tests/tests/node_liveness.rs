//! Liveness (issue 9 item 9): the server pings every
//! `--ping-interval-seconds`; a connection that sends nothing within
//! `--pong-timeout-seconds` of a ping is closed with 4010 `ping timeout`,
//! counted, and leaves presence cluster-wide; a client that answers stays.
//! Accepted sockets get TCP keepalive (`--tcp-keepalive-seconds`).

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};

use pubmesh_tests::harness::{cluster_slot, eventually, patience, temp_dir, Client, Node, Redis};
use pubmesh_tests::proxy::Proxy;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Small test values (the pong timeout leaves a reading test client time to
/// answer on a busy machine).
const FAST_PINGS: [&str; 4] = [
    "--ping-interval-seconds",
    "1",
    "--pong-timeout-seconds",
    "2",
];

fn presence_config() -> String {
    let path = temp_dir("liveness").join("ns.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| {
            f.write_all(
                br#"
[[namespaces]]
pattern = "room:*"
presence = true
join_leave = true
"#,
            )
        })
        .expect("config");
    path.to_string_lossy().to_string()
}

/// Whether `/api/presence` on `node` lists `client_id` in `channel`.
async fn listed(node: &Node, channel: &str, client_id: &str) -> bool {
    let (status, list) = node.get(&format!("/api/presence?channel={channel}")).await;
    assert_eq!(status, 200, "{list}");
    list["clients"]
        .as_array()
        .is_some_and(|c| c.iter().any(|e| e["client_id"] == client_id))
}

/// `leave` events a client receives, collected by a task that keeps reading
/// it (and so keeps answering its pings).
#[derive(Clone, Default)]
struct Leaves(Arc<Mutex<Vec<String>>>);

impl Leaves {
    fn watch(mut client: Client) -> Leaves {
        let leaves = Leaves::default();
        let seen = leaves.clone();
        tokio::spawn(async move {
            while let Some(text) = client.recv_or_end().await {
                let frame: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                if frame["type"] == "leave" {
                    let id = frame["client_id"].as_str().unwrap_or_default();
                    seen.0.lock().expect("lock").push(id.to_string());
                }
            }
        });
        leaves
    }

    fn has(&self, client_id: &str) -> bool {
        self.0.lock().expect("lock").iter().any(|c| c == client_id)
    }
}

/// A raw WebSocket client on plain TCP: it reads only when the test says
/// so and never writes after its upgrade, so it answers no ping, and reading
/// what the node sent never meets a reset.
struct RawClient {
    tcp: TcpStream,
    /// Bytes after the upgrade reply not yet parsed into frames.
    buf: Vec<u8>,
}

impl RawClient {
    /// Upgrade and read the connection frame; returns the client and its id.
    async fn connect(port: u16, query: &str) -> (RawClient, String) {
        let mut tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let request = format!(
            "GET /websocket?{query} HTTP/1.1\r\nHost: pubmesh\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut client = RawClient {
            tcp,
            buf: Vec::new(),
        };
        let head_end = loop {
            if let Some(i) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(client.fill().await, "closed during the upgrade");
        };
        let head = String::from_utf8_lossy(&client.buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        client.buf.drain(..head_end);
        let (opcode, payload) = client.frame().await.expect("the connection frame");
        assert_eq!(opcode, 0x1);
        let frame: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
        let id = frame["data"]["client_id"].as_str().expect("client_id");
        (client, id.to_string())
    }

    /// Read more bytes; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(patience(20), self.tcp.read(&mut chunk))
            .await
            .expect("the node neither sent nor closed")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next (unmasked, server) frame: opcode and payload; `None` at the
    /// end of the stream.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let short = (self.buf[1] & 0x7f) as usize;
                let (len, start) = match short {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n, 2),
                };
                if len != usize::MAX && self.buf.len() >= start + len {
                    let opcode = self.buf[0] & 0x0f;
                    let payload = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    return Some((opcode, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }
}

#[tokio::test]
async fn clients_that_stop_answering_pings_are_dropped_and_leave_presence_cluster_wide() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let url = redis.url();
    let file = presence_config();
    let mut args = vec!["--redis-url", url.as_str(), "--config", file.as_str()];
    args.extend(FAST_PINGS);
    let a = Node::start(&args).await;
    let b = Node::start(&args).await;
    let observer = b.client("channel_id=room:1").await;
    let leaves = Leaves::watch(observer);

    // One client on A that stops reading after its greeting (so it answers
    // no ping), one on A through a TCP proxy that freezes.
    let (mut silent, silent_id) = RawClient::connect(a.port, "channel_id=room:1").await;
    let proxy = Proxy::start(a.port).await;
    let frozen = Client::connect(&format!(
        "ws://127.0.0.1:{}/websocket?channel_id=room:1",
        proxy.port
    ))
    .await;
    let frozen_id = frozen.client_id();
    for id in [&silent_id, &frozen_id] {
        eventually("presence on the other node", patience(10), || async {
            listed(&b, "room:1", id).await.then_some(())
        })
        .await;
    }
    proxy.stall();

    eventually("both gone from presence on B", patience(30), || async {
        let gone =
            !listed(&b, "room:1", &silent_id).await && !listed(&b, "room:1", &frozen_id).await;
        gone.then_some(())
    })
    .await;
    eventually("leave events on B", patience(10), || async {
        (leaves.has(&silent_id) && leaves.has(&frozen_id)).then_some(())
    })
    .await;
    assert_eq!(
        a.metric("pubmesh_connections_closed_total{reason=\"ping_timeout\"}")
            .await,
        2.0
    );
    assert_eq!(a.metric("pubmesh_connections").await, 0.0);
    assert_eq!(
        a.metric("pubmesh_connections_closed_total{reason=\"client\"}")
            .await,
        0.0
    );
    // The observer on B answered its pings all along.
    assert_eq!(b.metric("pubmesh_connections").await, 1.0);
    assert_eq!(
        b.metric("pubmesh_connections_closed_total{reason=\"ping_timeout\"}")
            .await,
        0.0
    );
    // The silent client, reading at last, finds the pings it left
    // unanswered, then the close frame.
    let mut pings = 0;
    let close = loop {
        match silent.frame().await.expect("a close frame before the end") {
            (0x9, _) => pings += 1,
            (0x8, payload) => break payload,
            // Join events of the others in room:1.
            (0x1, _) => {}
            (opcode, payload) => panic!("frame {opcode}: {payload:?}"),
        }
    };
    assert!(pings >= 1, "no ping before the close");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 4010);
    assert_eq!(&close[2..], b"ping timeout");
    drop(proxy);
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected_past_several_intervals() {
    let node = Node::start(&FAST_PINGS).await;
    let mut client = node.client("channel_id=room").await;
    // tokio-tungstenite answers each ping while it reads; five intervals pass.
    client.read_pings(5, patience(30)).await;
    client
        .send(json!({"type": "channel", "channel_ids": ["room"], "data": {"n": 1}, "ref": 1}))
        .await;
    let got = client.recv_until(|f| f["n"] == 1).await;
    assert_eq!(got, json!({"n": 1}));
    assert_eq!(node.metric("pubmesh_connections").await, 1.0);
    assert_eq!(
        node.metric("pubmesh_connections_closed_total{reason=\"ping_timeout\"}")
            .await,
        0.0
    );
}

/// `ss -tno` for established sockets with local port `port`.
fn socket_timers(port: u16) -> String {
    let out = Command::new("ss")
        .args(["-tnoH", "state", "established", &format!("sport = :{port}")])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn accepted_sockets_get_tcp_keepalive_unless_turned_off() {
    let on = Node::start(&["--tcp-keepalive-seconds", "7"]).await;
    let _client = on.client("channel_id=room").await;
    let timers = eventually("a keepalive timer", patience(10), || async {
        let timers = socket_timers(on.port);
        timers.contains("keepalive").then_some(timers)
    })
    .await;
    // The first probe is due within 7 s.
    assert!(
        timers.lines().any(|l| l.contains("timer:(keepalive,")),
        "{timers}"
    );

    let off = Node::start(&["--tcp-keepalive-seconds", "0"]).await;
    let _client = off.client("channel_id=room").await;
    let timers = socket_timers(off.port);
    assert!(!timers.is_empty(), "the socket is listed");
    assert!(!timers.contains("keepalive"), "{timers}");
}
