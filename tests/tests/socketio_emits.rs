//! Server-side emits to Socket.IO clients through the server API, with the
//! official socket.io-client 4.x and 2.x on two nodes sharing a Redis:
//! binary attachments (bytes marked `{"$binary": …}` in the API payload),
//! named events to users, to one socket and to everyone, and the sockets
//! of a room listed across the cluster (presence, the `fetchSockets` of
//! pubmesh).

use pubmesh_tests::harness::{config_file, eventually, hs256, patience, Node, Redis};
use pubmesh_tests::js::Script;
use serde_json::{json, Value};

const SECRET: &str = "socketio-emits-secret";

const CONFIG: &str = r#"
[[namespaces]]
pattern = "Lobby"
presence = true

[socketio]
ping_interval_ms = 1000
ping_timeout_ms = 2000

[[socketio.namespaces]]
name = "/"
rooms = ["Lobby"]

[[socketio.join_events]]
event = "join"
id_format = "any"

[socketio.join_events.types]
room = { rooms = ["{id}"] }
"#;

async fn two_nodes(redis: &Redis) -> (Node, Node) {
    let url = redis.url();
    let file = config_file(CONFIG);
    let args = [
        "--redis-url",
        url.as_str(),
        "--jwt-secret",
        SECRET,
        "--config",
        file.as_str(),
    ];
    pubmesh_tests::harness::two_nodes(&args).await
}

fn client(node: &Node, version: &str, options: Value) -> Script {
    let url = format!("http://127.0.0.1:{}/", node.port);
    Script::spawn("socketio_client.js", &[&url, version, &options.to_string()])
}

async fn event(script: &mut Script, name: &str) -> Value {
    let e = script
        .wait_for(name, patience(30), |v| {
            v["event"] == "event" && v["name"] == name
        })
        .await;
    e["args"].clone()
}

async fn post(node: &Node, path: &str, body: Value) {
    let (status, reply) = node.post(path, body).await;
    assert_eq!(status, 200, "{path}: {reply}");
}

#[tokio::test]
async fn the_api_emits_binary_and_named_events_and_lists_a_rooms_sockets() {
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis).await;
    let token = hs256(SECRET, "bob", 600);
    let mut bob = client(&a, "4", json!({"auth": {"token": token}}));
    let hello = bob.wait_event("connect", patience(60)).await;
    let bob_id = hello["id"].as_str().expect("id").to_string();
    let mut old = client(
        &b,
        "2",
        json!({"events": ["file", "hello", "all", "notvip", "b-notvip"]}),
    );
    old.wait_event("connect", patience(60)).await;
    a.wait_members("Lobby", 2).await;
    let sockets = r#"pubmesh_socketio_sockets{namespace="/"}"#;
    assert_eq!(a.metric(sockets).await, 1.0);
    assert_eq!(b.metric(sockets).await, 1.0);

    // Bytes in the payload reach both clients as binary attachments.
    post(
        &b,
        "/api/notify/channels",
        json!({"channel_ids": ["Lobby"], "event": "file", "data": {"$binary": "AAH/"}}),
    )
    .await;
    assert_eq!(event(&mut bob, "file").await, json!([{"base64": "AAH/"}]));
    assert_eq!(event(&mut old, "file").await, json!([{"base64": "AAH/"}]));
    // Nested, among other fields: a Buffer where the marker was.
    post(
        &a,
        "/api/notify/channels",
        json!({"channel_ids": ["Lobby"], "event": "file",
               "data": {"name": "hi.txt", "bytes": {"$binary": "aGk="}, "n": {"$binary": 1}}}),
    )
    .await;
    assert_eq!(
        event(&mut bob, "file").await,
        json!([{"name": "hi.txt", "bytes": {"type": "Buffer", "data": [104, 105]}, "n": {"$binary": 1}}])
    );

    // Named events to a user, to one socket, to everyone.
    post(
        &b,
        "/api/notify/users",
        json!({"root_ids": ["bob"], "event": "hello", "data": {"to": "bob"}}),
    )
    .await;
    assert_eq!(event(&mut bob, "hello").await, json!([{"to": "bob"}]));
    post(
        &b,
        "/api/notify/clients",
        json!({"client_ids": [bob_id], "event": "direct", "data": {"n": [1, 2]}}),
    )
    .await;
    assert_eq!(event(&mut bob, "direct").await, json!([{"n": [1, 2]}]));
    post(
        &a,
        "/api/broadcast",
        json!({"event": "all", "data": {"every": "one"}}),
    )
    .await;
    assert_eq!(event(&mut bob, "all").await, json!([{"every": "one"}]));
    assert_eq!(event(&mut old, "all").await, json!([{"every": "one"}]));
    let (status, refused) = a
        .post(
            "/api/notify/users",
            json!({"root_ids": ["bob"], "event": "a,b", "data": {}}),
        )
        .await;
    assert_eq!(status, 400, "{refused}");

    // Except the sockets of a room, in every form of emit: bob joins
    // "vip", a second socket of bob's (on B) does not; neither gets what
    // leaves it out, the others do.
    let mut bob2 = client(&b, "4", json!({"auth": {"token": token}}));
    let bob2_id = bob2.wait_event("connect", patience(60)).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    a.wait_members("Lobby", 3).await;
    let join = json!({"emit": "join", "args": [{"op": "subscribe", "type": "room", "id": "vip"}], "ack": true, "timeout": 20000});
    bob.send_line(&join.to_string()).await;
    let ack = bob.wait_event("ack", patience(30)).await;
    assert_eq!(ack["args"], json!(["ok"]), "{ack}");
    let except = [
        (
            "/api/notify/channels",
            json!({"channel_ids": ["Lobby"]}),
            "notvip",
        ),
        (
            "/api/notify/users",
            json!({"root_ids": ["bob"]}),
            "u-notvip",
        ),
        (
            "/api/notify/clients",
            json!({"client_ids": [bob_id, bob2_id]}),
            "c-notvip",
        ),
        ("/api/broadcast", json!({}), "b-notvip"),
    ];
    for (path, mut body, name) in except {
        body["except"] = json!(["vip"]);
        body["event"] = json!(name);
        body["data"] = json!({"x": 1});
        post(&b, path, body).await;
        assert_eq!(event(&mut bob2, name).await, json!([{"x": 1}]), "{path}");
    }
    assert_eq!(event(&mut old, "notvip").await, json!([{"x": 1}]));
    assert_eq!(event(&mut old, "b-notvip").await, json!([{"x": 1}]));
    post(
        &b,
        "/api/notify/channels",
        json!({"channel_ids": ["Lobby"], "event": "after", "data": {"x": 2}}),
    )
    .await;
    let next = bob
        .wait_for("an event", patience(30), |v| v["event"] == "event")
        .await;
    assert_eq!(next["name"], "after", "{next}");
    let (status, refused) = a
        .post(
            "/api/broadcast",
            json!({"except": [""], "event": "e", "data": {}}),
        )
        .await;
    assert_eq!(status, 400, "{refused}");

    // The room's sockets across the cluster, from either node: bob's
    // socket id on A, and the 2.x client's connection on B.
    for node in [&a, &b] {
        let (status, listed) = node.get("/api/presence?channel=Lobby").await;
        assert_eq!(status, 200, "{listed}");
        let entries = listed["clients"].as_array().cloned().unwrap_or_default();
        let text = listed.to_string();
        assert_eq!(entries.len(), 3, "{text}");
        assert!(text.contains(&bob_id), "{text}");
        assert!(
            text.contains(&a.node_id) && text.contains(&b.node_id),
            "{text}"
        );
    }
    // Gone sockets leave the list.
    bob.send_line(r#"{"disconnect":true}"#).await;
    eventually("bob leaves the list", patience(30), || async {
        let (_, listed) = b.get("/api/presence?channel=Lobby").await;
        (!listed.to_string().contains(&bob_id)).then_some(())
    })
    .await;
    eventually("bob's socket is counted out", patience(30), || async {
        (a.metric(sockets).await == 0.0).then_some(())
    })
    .await;
}

const VOLATILE_CONFIG: &str = r#"
[socketio]
ping_interval_ms = 25000
ping_timeout_ms = 20000

[[socketio.namespaces]]
name = "/"
rooms = ["Chat"]
"#;

/// Publish `event` to Chat from `node` until `series` on `watch` moves;
/// how many were published.
async fn flood(node: &Node, watch: &Node, volatile: bool, series: &str) -> u64 {
    let pad = "x".repeat(8 * 1024);
    let mut sent = 0;
    while watch.metric(series).await == 0.0 {
        assert!(sent < 5000, "{series} still 0 after {sent} publications");
        for _ in 0..20 {
            let body = json!({"channel_ids": ["Chat"], "event": "flood", "volatile": volatile,
                              "data": {"n": sent, "pad": pad}});
            post(node, "/api/notify/channels", body).await;
            sent += 1;
        }
    }
    sent
}

#[tokio::test]
async fn volatile_emits_are_dropped_for_a_socket_that_is_behind_and_it_stays_connected() {
    let redis = Redis::start().await;
    let url = redis.url();
    let file = config_file(VOLATILE_CONFIG);
    let args = [
        "--redis-url",
        url.as_str(),
        "--config",
        file.as_str(),
        "--outbox-bytes",
        "262144",
    ];
    let (a, b) = pubmesh_tests::harness::two_nodes(&args).await;
    let mut c = client(&a, "4", json!({}));
    c.wait_event("connect", patience(60)).await;
    a.wait_members("Chat", 1).await;

    // A socket that keeps up gets volatile emits, from the other node, in
    // every form.
    let forms = [
        ("/api/notify/channels", json!({"channel_ids": ["Chat"]})),
        ("/api/broadcast", json!({})),
    ];
    for (path, mut body) in forms {
        body["volatile"] = json!(true);
        body["event"] = json!("v");
        body["data"] = json!({"path": path});
        post(&b, path, body).await;
        assert_eq!(event(&mut c, "v").await, json!([{ "path": path }]));
    }

    // It stops reading. Volatile emits fill the socket buffers, then a
    // quarter of its outbox, then are dropped, counted, and it stays.
    let dropped = r#"pubmesh_dropped_total{reason="volatile"}"#;
    let slow = "pubmesh_slow_consumer_disconnects_total";
    c.send_line(r#"{"pause":true}"#).await;
    c.wait_event("paused", patience(10)).await;
    let sent = flood(&b, &a, true, dropped).await;
    assert_eq!(a.metric(slow).await, 0.0);
    c.send_line(r#"{"resume":true}"#).await;
    post(
        &b,
        "/api/notify/channels",
        json!({"channel_ids": ["Chat"], "event": "marker", "data": {}}),
    )
    .await;
    let mut received = 0;
    loop {
        let e = c.next_event(patience(60)).await;
        assert_ne!(e["event"], "disconnect", "{e}");
        match e["name"].as_str() {
            Some("flood") => received += 1,
            Some("marker") => break,
            _ => {}
        }
    }
    assert!(
        received > 0 && received < sent,
        "{received} of {sent} volatile emits received"
    );
    assert_eq!(a.metric(slow).await, 0.0);

    // The same flood, not volatile: the socket is closed as a slow consumer.
    c.send_line(r#"{"pause":true}"#).await;
    c.wait_event("paused", patience(10)).await;
    flood(&b, &a, false, slow).await;
    c.send_line(r#"{"resume":true}"#).await;
    c.wait_event("disconnect", patience(60)).await;
}
