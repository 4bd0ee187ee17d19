//! The Phoenix Channels front-end (`/socket/websocket`) against real
//! processes: the official `phoenix` npm client under node (and its browser
//! bundle in headless Chromium) on two nodes sharing a Redis, side by side
//! with native clients.

use std::io::Write;

use pubmesh_tests::harness::{eventually, hs256, patience, temp_dir, Client, Node, Redis};
use pubmesh_tests::js::Script;
use serde_json::{json, Value};

const SECRET: &str = "phoenix-secret";

const NAMESPACES: &str = r#"
[[namespaces]]
pattern = "private:*"
subscribe = "authenticated"

[[namespaces]]
pattern = "pres:*"
presence = true
join_leave = true
"#;

fn config() -> String {
    let path = temp_dir("config").join("pubmesh.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(NAMESPACES.as_bytes()))
        .expect("write config");
    path.to_string_lossy().into_owned()
}

async fn two_nodes(redis: &Redis, extra: &[&str]) -> (Node, Node) {
    let url = redis.url();
    let file = config();
    let mut args = vec![
        "--redis-url",
        url.as_str(),
        "--jwt-secret",
        SECRET,
        "--config",
        file.as_str(),
    ];
    args.extend_from_slice(extra);
    pubmesh_tests::harness::two_nodes(&args).await
}

fn endpoint(node: &Node) -> String {
    format!("ws://127.0.0.1:{}/socket", node.port)
}

/// The official client joined to `topic` on `node`.
fn phoenix(node: &Node, topic: &str, options: Value) -> Script {
    Script::spawn(
        "phoenix_client.js",
        &[&endpoint(node), topic, &options.to_string()],
    )
}

/// The next channel message the script reports (other events skipped).
async fn next_message(script: &mut Script) -> Value {
    script
        .wait_for("a channel message", patience(30), |v| {
            v["event"] == "message"
        })
        .await
}

/// The reply to a push and the next channel message, in either order.
async fn reply_and_message(script: &mut Script) -> (Value, Value) {
    let (mut reply, mut message) = (None, None);
    while reply.is_none() || message.is_none() {
        let v = script
            .wait_for("a reply or a message", patience(30), |v| {
                v["event"] == "reply" || v["event"] == "message"
            })
            .await;
        if v["event"] == "reply" {
            assert!(reply.replace(v).is_none(), "two replies");
        } else {
            assert!(message.replace(v).is_none(), "two messages");
        }
    }
    (reply.unwrap(), message.unwrap())
}

/// Members of `channel` across the cluster, as `/api/channels` reports them.
async fn members(node: &Node, channel: &str) -> u64 {
    let (status, body) = node.get("/api/channels").await;
    assert_eq!(status, 200, "{body}");
    body["channels"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["channel"] == channel)
        .and_then(|c| c["members"].as_u64())
        .unwrap_or(0)
}

async fn wait_members(node: &Node, channel: &str, n: u64) {
    eventually(
        &format!("{n} members in {channel}"),
        patience(30),
        || async { (members(node, channel).await == n).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn official_client_on_two_nodes_with_a_native_client() {
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;
    let token = hs256(SECRET, "bob", 600);

    let mut anon = phoenix(&a, "room:1", json!({}));
    let joined = anon.wait_event("joined", patience(60)).await;
    assert_eq!(joined["response"], json!({}));
    let mut bob = phoenix(&b, "room:1", json!({"params": {"token": token}}));
    bob.wait_event("joined", patience(60)).await;
    let mut native = Client::connect(&b.ws("")).await;
    native
        .send(json!({"type": "subscribe", "channel_ids": ["room:1"], "ref": 1}))
        .await;
    let ack = native.recv_until(|v| v["ref"] == 1).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    wait_members(&a, "room:1", 3).await;

    // A push is broadcast to the topic on both nodes and replied to.
    // (The pusher gets its reply and the broadcast in either order.)
    anon.send_line(r#"{"push":"shout","payload":{"body":"hi"}}"#)
        .await;
    let (reply, m) = reply_and_message(&mut anon).await;
    assert_eq!(
        (&reply["status"], &reply["response"]),
        (&json!("ok"), &json!({}))
    );
    assert_eq!(
        (&m["name"], &m["payload"]),
        (&json!("shout"), &json!({"body": "hi"}))
    );
    let m = next_message(&mut bob).await;
    assert_eq!(
        (&m["name"], &m["payload"]),
        (&json!("shout"), &json!({"body": "hi"}))
    );
    let got = native.recv_until(|v| v.get("body").is_some()).await;
    assert_eq!(got, json!({"body": "hi"}));

    // Bob pushes from the other node.
    bob.send_line(r#"{"push":"wave","payload":{"from":"bob"}}"#)
        .await;
    let (reply, m) = reply_and_message(&mut bob).await;
    assert_eq!(reply["status"], "ok");
    assert_eq!(
        (&m["name"], &m["payload"]),
        (&json!("wave"), &json!({"from": "bob"}))
    );
    let m = next_message(&mut anon).await;
    assert_eq!(
        (&m["name"], &m["payload"]),
        (&json!("wave"), &json!({"from": "bob"}))
    );
    assert_eq!(
        native.recv_until(|v| v.get("from").is_some()).await,
        json!({"from": "bob"})
    );

    // The server API, with and without an event name.
    let (status, body) = b
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["room:1"], "event": "news", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // From the same node, so n = 2 follows n = 1 everywhere (from A it
    // could reach A's socket before n = 1, still in A's Redis reader).
    let (status, body) = b
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["room:1", "room:elsewhere"], "data": {"n": 2}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for script in [&mut anon, &mut bob] {
        let m = next_message(script).await;
        assert_eq!(
            (&m["name"], &m["payload"]),
            (&json!("news"), &json!({"n": 1}))
        );
        let m = next_message(script).await;
        assert_eq!(
            (&m["name"], &m["payload"]),
            (&json!("message"), &json!({"n": 2}))
        );
    }
    assert_eq!(
        native.recv_until(|v| v.get("n").is_some()).await,
        json!({"n": 1})
    );
    assert_eq!(
        native.recv_until(|v| v.get("n").is_some()).await,
        json!({"n": 2})
    );
    let (status, body) = a
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["room:1"], "event": "a,b", "data": {}}),
        )
        .await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("bad_request")),
        "{body}"
    );

    // A native publication reaches the Phoenix clients as `message`, once.
    native
        .send(json!({"type": "channel", "channel_ids": ["room:1"], "data": {"from": "native"}}))
        .await;
    for script in [&mut anon, &mut bob] {
        let m = next_message(script).await;
        assert_eq!(
            (&m["name"], &m["payload"]),
            (&json!("message"), &json!({"from": "native"}))
        );
    }

    // Bob leaves: the channel has two members left, which still get
    // messages.
    bob.send_line(r#"{"leave":true}"#).await;
    bob.wait_event("left", patience(30)).await;
    wait_members(&a, "room:1", 2).await;
    let (status, _) = a
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["room:1"], "event": "after", "data": {}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(next_message(&mut anon).await["name"], "after");

    // Each message arrived once: nothing but `after` is left for anon.
    let (status, _) = a
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["room:1"], "event": "end", "data": {}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(next_message(&mut anon).await["name"], "end");

    // Everything gone once the clients are.
    drop((anon, bob, native));
    wait_members(&a, "room:1", 0).await;
    let metrics = a.metrics().await;
    for series in [
        "pubmesh_frontend_connections{frontend=\"phoenix\"}",
        "pubmesh_frontend_errors_total{code=\"unmatched topic\",frontend=\"phoenix\"}",
    ] {
        assert!(metrics.contains(series), "{series} missing");
    }
    assert!(
        a.metric("pubmesh_frontend_messages_in_total{frontend=\"phoenix\"}")
            .await
            >= 2.0
    );
    assert!(
        a.metric("pubmesh_frontend_messages_out_total{frontend=\"phoenix\"}")
            .await
            >= 7.0
    );
}

#[tokio::test]
async fn tokens_are_checked_at_connect_and_join() {
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;

    // No token: connected, but a topic for authenticated sockets refuses.
    let mut anon = phoenix(&a, "private:1", json!({}));
    let refused = anon.wait_event("join_error", patience(60)).await;
    assert_eq!(refused["response"], json!({"reason": "unauthorized"}));
    let token = hs256(SECRET, "alice", 600);
    let mut alice = phoenix(&b, "private:1", json!({"params": {"token": token}}));
    alice.wait_event("joined", patience(60)).await;
    wait_members(&a, "private:1", 1).await;

    // A bad token: the upgrade is refused with 403 and a JSON error.
    let url = format!("{}/websocket?vsn=2.0.0&token=nope", endpoint(&a));
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .expect("a JSON body");
            assert_eq!(body["code"], "unauthorized", "{body}");
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let mut bad = phoenix(&a, "room:1", json!({"params": {"token": "nope"}}));
    let closed = bad.wait_event("close", patience(60)).await;
    assert_ne!(closed["code"], 1000, "{closed}");
    assert_eq!(
        a.metric("pubmesh_frontend_errors_total{code=\"connect_refused\",frontend=\"phoenix\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn presence_sync_lists_the_cluster_members() {
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;
    let carol = hs256(SECRET, "carol", 600);
    let dave = hs256(SECRET, "dave", 600);

    let mut c = phoenix(
        &a,
        "pres:1",
        json!({"params": {"token": carol}, "presence": true}),
    );
    let first = c
        .wait_for("carol alone", patience(60), |v| {
            v["event"] == "sync" && v["list"].as_array().map(Vec::len) == Some(1)
        })
        .await;
    assert_eq!(first["list"][0]["id"], "carol");
    let mut d = phoenix(
        &b,
        "pres:1",
        json!({"params": {"token": dave}, "presence": true}),
    );
    for script in [&mut c, &mut d] {
        let both = script
            .wait_for("carol and dave", patience(60), |v| {
                v["event"] == "sync" && v["list"].as_array().map(Vec::len) == Some(2)
            })
            .await;
        let ids: Vec<&str> = both["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["carol", "dave"]);
        assert_eq!(both["list"][1]["refs"].as_array().map(Vec::len), Some(1));
    }
    // Dave's socket goes: carol's list follows.
    drop(d);
    let left = c
        .wait_for("dave gone", patience(60), |v| {
            v["event"] == "sync" && v["list"].as_array().map(Vec::len) == Some(1)
        })
        .await;
    assert_eq!(left["list"][0]["id"], "carol");
    drop(c);
    eventually("presence empty", patience(30), || async {
        let (_, body) = a.get("/api/presence?channel=pres:1").await;
        (body["count"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_idle_socket_is_closed_after_the_heartbeat_timeout() {
    let node = Node::start(&["--phoenix-heartbeat-timeout-ms", "500"]).await;
    let mut quiet = phoenix(&node, "room:1", json!({"heartbeatIntervalMs": 600000}));
    quiet.wait_event("joined", patience(60)).await;
    let closed = quiet.wait_event("close", patience(30)).await;
    assert_eq!(closed["code"], 4408, "{closed}");
    assert_eq!(
        node.metric("pubmesh_connections_closed_total{reason=\"heartbeat_timeout\"}")
            .await,
        1.0
    );
    wait_members(&node, "room:1", 0).await;
}

#[tokio::test]
async fn browser_page_receives_a_broadcast_from_the_other_node() {
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;
    let mut page = Script::browser(
        "phoenix.js",
        &json!({"endpoint": endpoint(&a), "topic": "room:browser"}),
        &["node_modules/phoenix/priv/static/phoenix.js"],
    );
    page.wait_event("joined", patience(90)).await;
    // The page's own push comes back as a broadcast and is replied to.
    let echo = page
        .wait_for("echo", patience(30), |v| {
            v["event"] == "message" && v["name"] == "echo"
        })
        .await;
    assert_eq!(echo["payload"], json!({"from": "browser"}));
    page.wait_event("reply", patience(30)).await;
    wait_members(&b, "room:browser", 1).await;
    let (status, body) = b
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["room:browser"], "event": "hello", "data": {"from": "b"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let hello = page
        .wait_for("hello", patience(30), |v| {
            v["event"] == "message" && v["name"] == "hello"
        })
        .await;
    assert_eq!(hello["payload"], json!({"from": "b"}));
}
