//! Socket.IO connection-state recovery that survives the death of the node
//! a client was on: the official socket.io-client 4.x on node A, A killed
//! (SIGKILL), room events published on node B meanwhile, the client back on
//! B with `socket.recovered === true` and exactly what it missed; and
//! `recovered === false` (a fresh start) when history cannot cover the gap.

use pubmesh_tests::harness::{config_file, patience, Node, Redis};
use pubmesh_tests::js::Script;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[[namespaces]]
pattern = "tiny"
history_size = 2
history_ttl_seconds = 600

[[namespaces]]
pattern = "*"
history_size = 100
history_ttl_seconds = 600

[socketio]
ping_interval_ms = 1000
ping_timeout_ms = 2000

[[socketio.namespaces]]
name = "/"
rooms = ["Chat"]
recovery_seconds = 60

[[socketio.join_events]]
event = "/subscription"
id_format = "any"

[socketio.join_events.types]
job = { rooms = ["job-{id}"] }
tiny = { rooms = ["tiny"] }
"#;

async fn two_nodes(redis: &Redis) -> (Node, Node) {
    let url = redis.url();
    let file = config_file(CONFIG);
    let args = ["--redis-url", url.as_str(), "--config", file.as_str()];
    pubmesh_tests::harness::two_nodes(&args).await
}

/// The 4.x client on `node`, reconnecting quickly when its node goes.
fn client(node: &Node) -> Script {
    let url = format!("http://127.0.0.1:{}/", node.port);
    let options =
        json!({"reconnection": true, "reconnectionDelay": 100, "reconnectionDelayMax": 300});
    Script::spawn("socketio_client.js", &[&url, "4", &options.to_string()])
}

async fn notify(node: &Node, room: &str, n: u64) {
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": [room], "event": "update", "data": {"room": room, "n": n}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The next `update` event: its room and number, and its last argument
/// (the offset the client keeps).
async fn update(script: &mut Script) -> (String, u64, Value) {
    let e = script
        .wait_for("an update", patience(30), |v| {
            v["event"] == "event" && v["name"] == "update"
        })
        .await;
    let args = e["args"].as_array().expect("args").clone();
    (
        args[0]["room"].as_str().expect("room").to_string(),
        args[0]["n"].as_u64().expect("n"),
        args.last().cloned().unwrap_or(Value::Null),
    )
}

async fn subscribe(script: &mut Script, kind: &str, id: &str) {
    let line = json!({"emit": "/subscription", "args": [{"op": "subscribe", "type": kind, "id": id}], "ack": true, "timeout": 20000});
    script.send_line(&line.to_string()).await;
    let ack = script
        .wait_for("an ack", patience(30), |v| v["event"] == "ack")
        .await;
    assert_eq!(ack["args"], json!(["ok"]), "{ack}");
}

/// Kill `a` under the client, publish with `publish` on `b` while the
/// client cannot reach any node, then let it reconnect to `b`; the
/// `connect` report.
async fn kill_and_come_back(
    script: &mut Script,
    a: &mut Node,
    b: &Node,
    publish: impl std::future::Future<Output = ()>,
) -> Value {
    a.kill();
    script.wait_event("disconnect", patience(30)).await;
    // Until told otherwise the client keeps retrying the dead node.
    publish.await;
    let uri = format!("http://127.0.0.1:{}/", b.port);
    script.send_line(&json!({ "uri": uri }).to_string()).await;
    script.wait_event("connect", patience(60)).await
}

#[tokio::test]
async fn a_client_recovers_what_its_rooms_missed_on_another_node_after_its_node_was_killed() {
    let redis = Redis::start().await;
    let (mut a, b) = two_nodes(&redis).await;
    let mut c = client(&a);
    let hello = c.wait_event("connect", patience(60)).await;
    assert_eq!(hello["recovered"], false, "{hello}");
    subscribe(&mut c, "job", "7").await;
    a.wait_members("job-7", 1).await;

    // Live events carry the client's offset as their last argument.
    notify(&b, "Chat", 1).await;
    assert_eq!(update(&mut c).await.1, 1);
    notify(&b, "job-7", 1).await;
    let (room, n, offset) = update(&mut c).await;
    assert_eq!((room.as_str(), n), ("job-7", 1));
    assert!(offset.is_string(), "no offset argument: {offset}");

    let publish = async {
        notify(&b, "Chat", 2).await;
        notify(&b, "job-7", 2).await;
        notify(&b, "Chat", 3).await;
    };
    let back = kill_and_come_back(&mut c, &mut a, &b, publish).await;
    assert_eq!(back["recovered"], true, "{back}");

    // Exactly what was missed, each room in order, then live events.
    notify(&b, "Chat", 4).await;
    notify(&b, "job-7", 3).await;
    let mut chat = Vec::new();
    let mut job = Vec::new();
    while chat.last() != Some(&4) || job.last() != Some(&3) {
        let (room, n, offset) = update(&mut c).await;
        assert!(offset.is_string(), "no offset argument: {offset}");
        match room.as_str() {
            "Chat" => chat.push(n),
            "job-7" => job.push(n),
            other => panic!("an update from {other}"),
        }
    }
    assert_eq!(chat, [2, 3, 4]);
    // (job-7's live event proves it is in its rooms on B, as it was on A.)
    assert_eq!(job, [2, 3]);
    let recovered = r#"pubmesh_socketio_recoveries_total{namespace="/",result="recovered"}"#;
    assert_eq!(b.metric(recovered).await, 1.0);
}

#[tokio::test]
async fn a_gap_history_cannot_cover_is_a_fresh_start_with_recovered_false() {
    let redis = Redis::start().await;
    let (mut a, b) = two_nodes(&redis).await;
    let mut c = client(&a);
    c.wait_event("connect", patience(60)).await;
    subscribe(&mut c, "tiny", "x").await;
    notify(&b, "tiny", 1).await;
    assert_eq!(update(&mut c).await.1, 1);

    // "tiny" keeps 2 publications: 3 missed ones cannot all be replayed.
    let publish = async {
        for n in 2..=4 {
            notify(&b, "tiny", n).await;
        }
    };
    let back = kill_and_come_back(&mut c, &mut a, &b, publish).await;
    assert_eq!(back["recovered"], false, "{back}");

    // A fresh start: the default room only (it was joined before the
    // CONNECT reply), nothing from before; "tiny" 5, published first,
    // does not reach it.
    notify(&b, "tiny", 5).await;
    notify(&b, "Chat", 1).await;
    let (room, n, _) = update(&mut c).await;
    assert_eq!((room.as_str(), n), ("Chat", 1));
    let fresh = r#"pubmesh_socketio_recoveries_total{namespace="/",result="fresh"}"#;
    assert_eq!(b.metric(fresh).await, 1.0);
}
