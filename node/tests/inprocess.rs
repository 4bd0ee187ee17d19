//! The fast test tier: several nodes in one test process, joined by an
//! in-memory bus instead of Redis, served on loopback ports and driven by
//! real WebSocket and HTTP clients. For protocol behaviour across nodes that
//! needs no Redis; process-level tests (tests/) keep Redis, signals and faults.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pubmesh_node::config::Config;
use pubmesh_node::policy::{NamespaceConfig, Namespaces};
use pubmesh_node::relay::memory::MemoryBus;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const KEY: &str = "inprocess-key";

/// One in-process node and how to stop it.
struct InNode {
    addr: std::net::SocketAddr,
    id: String,
    _stop: oneshot::Sender<()>,
}

async fn cluster(n: usize) -> Vec<InNode> {
    let bus = MemoryBus::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        let mut config = Config::defaults();
        config.node_id = format!("p{i}");
        config.api_key = KEY.into();
        config.namespaces = Namespaces::new(&[NamespaceConfig {
            pattern: "h:*".into(),
            history_size: 10,
            history_ttl_seconds: 60,
            presence: false,
            join_leave: false,
            subscribe: Default::default(),
            publish: None,
        }])
        .expect("namespaces");
        let node = pubmesh_node::build_on_bus(config, &bus).expect("node");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(pubmesh_node::run(node, listener, async move {
            let _ = stopped.await;
        }));
        nodes.push(InNode {
            addr,
            id: format!("p{i}"),
            _stop: stop,
        });
    }
    nodes
}

async fn connect(node: &InNode, query: &str) -> (Ws, Value) {
    let url = format!("ws://{}/websocket?{query}", node.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let first = recv(&mut ws).await;
    assert_eq!(first["type"], "connection");
    (ws, first)
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame within 30 s");
        match next {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).expect("json"),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
}

/// Nothing more arrives within `quiet` (the one timed wait: silence).
async fn silent(ws: &mut Ws, quiet: Duration) {
    if let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(quiet, ws.next()).await {
        panic!("expected nothing, got {text}");
    }
}

#[tokio::test]
async fn a_channel_publication_reaches_a_member_on_another_node_exactly_once() {
    let nodes = cluster(3).await;
    let (mut a, _) = connect(&nodes[0], "channel_id=room").await;
    let (mut b, _) = connect(&nodes[1], "channel_id=room").await;
    let (mut c, _) = connect(&nodes[2], "channel_id=elsewhere").await;
    // b also joins room through a second channel list entry: still one copy.
    send(
        &mut b,
        json!({"type": "subscribe", "channel_ids": ["room", "x"], "ref": 1}),
    )
    .await;
    assert_eq!(recv(&mut b).await["type"], "subscribed");
    send(
        &mut a,
        json!({"type": "channel", "channel_ids": ["room"], "data": {"type": "m", "data": 1}, "ref": 2}),
    )
    .await;
    assert_eq!(recv(&mut a).await, json!({"type": "m", "data": 1}));
    let reply = recv(&mut a).await;
    assert_eq!(reply["type"], "published");
    assert_eq!(reply["relayed"], true);
    // A publish with a `ref` waits for the relay's outcome.
    assert_eq!(reply["relay"], "sent");
    assert_eq!(recv(&mut b).await, json!({"type": "m", "data": 1}));
    // Published from a third node to both of b's channels: still one copy.
    let reply = reqwest::Client::new()
        .post(format!("http://{}/api/notify/channels", nodes[2].addr))
        .header("X-API-Key", KEY)
        .json(&json!({"channel_ids": ["room", "x"], "data": {"n": 2}}))
        .send()
        .await
        .expect("api");
    assert_eq!(reply.status().as_u16(), 200);
    assert_eq!(recv(&mut a).await, json!({"n": 2}));
    assert_eq!(recv(&mut b).await, json!({"n": 2}));
    silent(&mut b, Duration::from_millis(300)).await;
    silent(&mut c, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn history_publications_cross_nodes_with_positions() {
    let nodes = cluster(2).await;
    let (mut reader, _) = connect(&nodes[1], "").await;
    send(
        &mut reader,
        json!({"type": "subscribe", "channel_ids": ["h:1"], "positioned": true}),
    )
    .await;
    let subscribed = recv(&mut reader).await;
    let epoch = subscribed["positions"]["h:1"]["epoch"].clone();
    let reply = reqwest::Client::new()
        .post(format!("http://{}/api/notify/channels", nodes[0].addr))
        .header("X-API-Key", KEY)
        .json(&json!({"channel_ids": ["h:1"], "data": {"n": 1}}))
        .send()
        .await
        .expect("api");
    assert_eq!(reply.status().as_u16(), 200);
    let publication = recv(&mut reader).await;
    assert_eq!(
        publication,
        json!({"type": "publication", "channel": "h:1", "offset": 1, "epoch": epoch, "data": {"n": 1}})
    );
    // Both nodes read the same history.
    send(&mut reader, json!({"type": "history", "channel_id": "h:1"})).await;
    let history = recv(&mut reader).await;
    assert_eq!(
        history["publications"],
        json!([{"offset": 1, "data": {"n": 1}}])
    );
}

#[tokio::test]
async fn users_clients_and_membership_span_the_bus() {
    let nodes = cluster(2).await;
    let (mut a, first) = connect(&nodes[0], "").await;
    let client_id = first["data"]["client_id"].as_str().expect("id").to_string();
    let http = reqwest::Client::new();
    let post = |node: &InNode, path: &str, body: Value| {
        http.post(format!("http://{}{path}", node.addr))
            .header("X-API-Key", KEY)
            .json(&body)
            .send()
    };
    let reply: Value = post(
        &nodes[1],
        "/api/notify/clients",
        json!({"client_ids": [client_id], "data": {"to": "a"}}),
    )
    .await
    .expect("api")
    .json()
    .await
    .expect("json");
    assert_eq!(
        reply,
        json!({"local_deliveries": 0, "relayed": true, "relay": "sent"})
    );
    assert_eq!(recv(&mut a).await, json!({"to": "a"}));
    let listed: Value = http
        .get(format!("http://{}/api/nodes", nodes[1].addr))
        .header("X-API-Key", KEY)
        .send()
        .await
        .expect("api")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = listed["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["node_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, vec![nodes[1].id.as_str(), nodes[0].id.as_str()]);
}
