//! The official clients' own reconnection, without connection-state
//! recovery: socket.io-client 4.x and 2.x, each behind a TCP proxy to node
//! A of two nodes sharing a Redis, reconnect by themselves when the link
//! drops and when A restarts; what they emitted while disconnected
//! (buffered by the client) is sent on reconnection and acked, and room
//! events published on node B reach them again; a node that stops
//! answering is left at the ping timeout, and rejoined when it answers.

use pubmesh_tests::harness::{config_file, patience, Node, Redis};
use pubmesh_tests::js::Script;
use pubmesh_tests::proxy::Proxy;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[socketio]
ping_interval_ms = 1000
ping_timeout_ms = 2000

[[socketio.namespaces]]
name = "/"
rooms = ["Chat"]

[[socketio.join_events]]
event = "/subscription"
id_format = "any"

[socketio.join_events.types]
job = { rooms = ["job-{id}"] }
"#;

/// The client of `version` on the proxy's port, reconnecting quickly.
fn client(proxy: &Proxy, version: &str) -> Script {
    let url = format!("http://127.0.0.1:{}/", proxy.port);
    let options = json!({"reconnection": true, "reconnectionDelay": 100,
                         "reconnectionDelayMax": 300, "events": ["update"]});
    Script::spawn("socketio_client.js", &[&url, version, &options.to_string()])
}

/// The id of the next `connect`.
async fn connected(script: &mut Script) -> String {
    let hello = script.wait_event("connect", patience(60)).await;
    assert_eq!(hello["recovered"], false, "{hello}");
    hello["id"].as_str().expect("id").to_string()
}

/// Emit a subscription to `job-{id}` with an ack (the ack comes later).
async fn subscribe(script: &mut Script, id: &str) {
    let args = json!([{"op": "subscribe", "type": "job", "id": id}]);
    let line = json!({"emit": "/subscription", "args": args, "ack": true});
    script.send_line(&line.to_string()).await;
}

async fn acked(script: &mut Script) {
    let ack = script.wait_event("ack", patience(60)).await;
    assert_eq!(ack["args"], json!(["ok"]), "{ack}");
}

async fn update(script: &mut Script) -> Value {
    let e = script
        .wait_for("an update", patience(30), |v| {
            v["event"] == "event" && v["name"] == "update"
        })
        .await;
    e["args"][0].clone()
}

async fn notify(node: &Node, room: &str, n: u64) {
    let body = json!({"channel_ids": [room], "event": "update", "data": {"n": n}});
    let (status, reply) = node.post("/api/notify/channels", body).await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test]
async fn the_official_clients_reconnect_by_themselves_and_send_what_they_buffered() {
    let redis = Redis::start().await;
    let url = redis.url();
    let file = config_file(CONFIG);
    let args = ["--redis-url", url.as_str(), "--config", file.as_str()];
    let (mut a, b) = pubmesh_tests::harness::two_nodes(&args).await;
    let proxy = Proxy::start(a.port).await;
    let mut clients = [client(&proxy, "4"), client(&proxy, "2")];
    let mut ids = Vec::new();
    for c in &mut clients {
        ids.push(connected(c).await);
    }

    // The 4.x client's own ack timeout: an event nothing handles (there is
    // no backend) is never acked, and the client says so after 300 ms.
    let line = json!({"emit": "nobody", "args": [], "ack": true, "timeout": 300});
    clients[0].send_line(&line.to_string()).await;
    let ack = clients[0].wait_event("ack", patience(30)).await;
    assert_eq!(ack["error"], "operation has timed out", "{ack}");

    // The link drops: each client sees it, emits while disconnected, and
    // reconnects once the link is back; the buffered emit then joins it.
    proxy.cut();
    for c in &mut clients {
        c.wait_event("disconnect", patience(30)).await;
        subscribe(c, "1").await;
    }
    proxy.heal();
    for (c, old) in clients.iter_mut().zip(&ids) {
        assert_ne!(&connected(c).await, old, "a new connection");
        acked(c).await;
    }
    a.wait_members("job-1", 2).await;
    notify(&b, "job-1", 1).await;
    for c in &mut clients {
        assert_eq!(update(c).await, json!({"n": 1}));
    }

    // The node restarts: the same, through its death and its return.
    a.kill();
    for c in &mut clients {
        c.wait_event("disconnect", patience(30)).await;
        subscribe(c, "2").await;
    }
    a.restart().await;
    for c in &mut clients {
        connected(c).await;
        acked(c).await;
    }
    a.wait_members("job-2", 2).await;
    notify(&b, "job-2", 2).await;
    // The default room is joined again too.
    notify(&b, "Chat", 3).await;
    for c in &mut clients {
        assert_eq!(update(c).await, json!({"n": 2}));
        assert_eq!(update(c).await, json!({"n": 3}));
    }

    // The node stops answering (SIGSTOP): each client's ping timeout (the
    // announced interval plus timeout, 3 s) ends the connection, and it
    // reconnects once the node runs again.
    a.freeze();
    for c in &mut clients {
        let gone = c.wait_event("disconnect", patience(30)).await;
        assert_eq!(gone["reason"], "ping timeout", "{gone}");
    }
    a.thaw();
    for c in &mut clients {
        connected(c).await;
    }
    a.wait_members("Chat", 2).await;
}
