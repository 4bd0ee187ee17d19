//! Channel namespaces, history, recovery and presence on one node.

use std::time::Duration;

use pubmesh_tests::harness::{hs256_with, Client, Node};
use serde_json::{json, Value};

const SECRET: &str = "history-secret";

fn config(text: &str) -> String {
    pubmesh_tests::harness::config_file(text)
}

const NAMESPACES: &str = r#"
[[namespaces]]
pattern = "vip:*"
subscribe = "claim"
history_size = 10
history_ttl_seconds = 60

[[namespaces]]
pattern = "chat:*"
history_size = 100
history_ttl_seconds = 300
presence = true
join_leave = true

[[namespaces]]
pattern = "small:*"
history_size = 5
history_ttl_seconds = 300
"#;

async fn node() -> Node {
    let file = config(NAMESPACES);
    Node::start(&["--config", &file, "--jwt-secret", SECRET]).await
}

async fn publish(node: &Node, channel: &str, data: Value) -> Value {
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": [channel], "data": data}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Subscribe with `positioned` and return the channel's position.
async fn subscribe_positioned(c: &mut Client, channel: &str) -> Value {
    c.send(json!({"type": "subscribe", "channel_ids": [channel], "positioned": true, "ref": "s"}))
        .await;
    let reply = c.recv_until(|f| f["ref"] == "s").await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    reply["positions"][channel].clone()
}

#[tokio::test]
async fn a_reconnecting_client_recovers_exactly_what_it_missed_then_live() {
    let node = node().await;
    let mut c = node.client("").await;
    let start = subscribe_positioned(&mut c, "chat:room").await;
    assert_eq!(start["offset"], 0);
    for i in 0..3 {
        publish(&node, "chat:room", json!({"i": i})).await;
    }
    let mut last = Value::Null;
    for i in 0..3 {
        let p = c.recv_until(|f| f["type"] == "publication").await;
        assert_eq!(p["data"], json!({"i": i}));
        assert_eq!(p["offset"], i + 1);
        last = p;
    }
    drop(c);
    for i in 3..1003 {
        publish(&node, "chat:room", json!({"i": i})).await;
    }
    let mut back = node.client("").await;
    let since = json!({"chat:room": {"offset": last["offset"], "epoch": last["epoch"]}});
    back.send(json!({"type": "subscribe", "channel_ids": ["chat:room"], "since": since, "ref": 1}))
        .await;
    let reply = back.recv_until(|f| f["ref"] == 1).await;
    // 1000 missed > history_size 100: cannot be recovered.
    assert_eq!(
        reply["positions"]["chat:room"]["recovered"], false,
        "{reply}"
    );
    assert_eq!(reply["positions"]["chat:room"]["offset"], 1003);

    // Within the window it recovers exactly, then continues live.
    let mut again = node.client("").await;
    let since = json!({"chat:room": {"offset": 950, "epoch": last["epoch"]}});
    again
        .send(json!({"type": "subscribe", "channel_ids": ["chat:room"], "since": since, "ref": 2}))
        .await;
    let reply = again.recv_until(|f| f["ref"] == 2).await;
    assert_eq!(
        reply["positions"]["chat:room"]["recovered"], true,
        "{reply}"
    );
    publish(&node, "chat:room", json!({"i": "live"})).await;
    let mut expected = 951u64;
    loop {
        let p = again.recv_until(|f| f["type"] == "publication").await;
        assert_eq!(p["offset"], expected, "no gap, no duplicate");
        if expected == 1004 {
            assert_eq!(p["data"], json!({"i": "live"}));
            break;
        }
        assert_eq!(p["data"], json!({"i": expected - 1}));
        expected += 1;
    }
    again.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn trimmed_history_or_another_epoch_is_not_recovered() {
    let node = node().await;
    let mut c = node.client("").await;
    let pos = subscribe_positioned(&mut c, "small:x").await;
    for i in 0..8 {
        publish(&node, "small:x", json!({"i": i})).await;
    }
    let epoch = pos["epoch"].clone();
    let mut r = node.client("").await;
    r.send(json!({"type": "subscribe", "channel_ids": ["small:x"], "since": {"small:x": {"offset": 1, "epoch": epoch}}, "ref": 1}))
        .await;
    let reply = r.recv_until(|f| f["ref"] == 1).await;
    assert_eq!(reply["positions"]["small:x"]["recovered"], false);
    let mut e = node.client("").await;
    e.send(json!({"type": "subscribe", "channel_ids": ["small:x"], "since": {"small:x": {"offset": 7, "epoch": "other"}}, "ref": 1}))
        .await;
    let reply = e.recv_until(|f| f["ref"] == 1).await;
    assert_eq!(reply["positions"]["small:x"]["recovered"], false);
    assert_eq!(reply["positions"]["small:x"]["offset"], 8);
    // Not recovered means no history replay: next is live only.
    publish(&node, "small:x", json!({"i": "next"})).await;
    let p = e.recv_until(|f| f["type"] == "publication").await;
    assert_eq!(p["offset"], 9);
}

#[tokio::test]
async fn history_frames_and_api_return_the_last_publications() {
    let node = node().await;
    for i in 0..7 {
        publish(&node, "small:h", json!({"i": i})).await;
    }
    let mut c = node.client("").await;
    c.send(json!({"type": "history", "channel_id": "small:h", "limit": 2, "ref": 4}))
        .await;
    let h = c.recv().await;
    assert_eq!(h["type"], "history");
    assert_eq!(h["ref"], 4);
    assert_eq!(h["offset"], 7);
    assert_eq!(
        h["publications"],
        json!([{"offset": 6, "data": {"i": 5}}, {"offset": 7, "data": {"i": 6}}])
    );
    let (status, body) = node.get("/api/history?channel=small:h&limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["publications"],
        json!([{"offset": 7, "data": {"i": 6}}])
    );
    let epoch = body["epoch"].as_str().expect("epoch").to_string();
    let (_, body) = node
        .get(&format!(
            "/api/history?channel=small:h&since_offset=5&epoch={epoch}"
        ))
        .await;
    assert_eq!(body["recovered"], true);
    assert_eq!(body["publications"].as_array().map(Vec::len), Some(2));

    // Errors: no history, bad position, bad fields.
    c.send(json!({"type": "history", "channel_id": "plain"}))
        .await;
    assert_eq!(c.recv().await["code"], "no_history");
    c.send(json!({"type": "history", "channel_id": "small:h", "since": {"offset": 99, "epoch": epoch}}))
        .await;
    assert_eq!(c.recv().await["code"], "bad_position");
    c.send(json!({"type": "history", "channel_id": "small:h", "limit": "x"}))
        .await;
    assert_eq!(c.recv().await["code"], "bad_request");
    c.send(json!({"type": "subscribe", "channel_ids": ["plain"], "positioned": true}))
        .await;
    assert_eq!(c.recv().await["code"], "no_history");
    assert_eq!(node.get("/api/history?channel=plain").await.0, 404);
    assert_eq!(
        node.get("/api/history?channel=small:h&since_offset=1")
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn raw_subscribers_keep_getting_plain_data_on_history_channels() {
    let node = node().await;
    let mut raw = node.client("channel_id=chat:mixed").await;
    let mut env = node.client("").await;
    subscribe_positioned(&mut env, "chat:mixed").await;
    publish(&node, "chat:mixed", json!({"hello": 1})).await;
    let r = raw.recv_until(|f| f.get("hello").is_some()).await;
    assert_eq!(r, json!({"hello": 1}));
    let e = env.recv_until(|f| f["type"] == "publication").await;
    assert_eq!(e["data"], json!({"hello": 1}));
    assert_eq!(e["channel"], "chat:mixed");
}

#[tokio::test]
async fn presence_lists_members_and_pushes_join_and_leave() {
    let node = node().await;
    let token = hs256_with(
        SECRET,
        json!({"sub": "n::ann", "info": {"name": "Ann"}}),
        300,
    );
    let mut ann = node
        .client(&format!("channel_id=chat:lobby&token={token}"))
        .await;
    let join = ann.recv_until(|f| f["type"] == "join").await;
    assert_eq!(join["user_id"], "n::ann");
    let mut bob = node.client("").await;
    bob.send(json!({"type": "subscribe", "channel_ids": ["chat:lobby"]}))
        .await;
    let join = ann.recv_until(|f| f["type"] == "join").await;
    assert_eq!(join["client_id"], bob.client_id().as_str());
    bob.send(json!({"type": "presence", "channel_id": "chat:lobby", "ref": 1}))
        .await;
    let p = bob.recv_until(|f| f["type"] == "presence").await;
    assert_eq!(p["count"], 2);
    let names: Vec<Value> = p["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| c["info"].clone())
        .collect();
    assert!(names.contains(&json!({"name": "Ann"})), "{p}");
    let (_, api) = node.get("/api/presence?channel=chat:lobby").await;
    assert_eq!(api["count"], 2);

    drop(bob);
    let leave = ann.recv_until(|f| f["type"] == "leave").await;
    assert_eq!(leave["channel"], "chat:lobby");
    let (_, api) = node.get("/api/presence?channel=chat:lobby").await;
    assert_eq!(api["count"], 1);

    ann.send(json!({"type": "presence", "channel_id": "plain"}))
        .await;
    assert_eq!(ann.recv().await["code"], "no_presence");
    assert_eq!(node.get("/api/presence?channel=plain").await.0, 404);
}

#[tokio::test]
async fn claim_namespaces_need_a_token_listing_the_channel() {
    let node = node().await;
    let mut anon = node.client("").await;
    anon.send(json!({"type": "subscribe", "channel_ids": ["vip:1"]}))
        .await;
    assert_eq!(anon.recv().await["code"], "forbidden");
    let refused = Client::connect_raw(&node.ws("channel_id=vip:1"), None).await;
    assert!(
        refused.is_err(),
        "connecting into a claim channel needs the claim"
    );
    let token = hs256_with(SECRET, json!({"sub": "n::v", "channels": ["vip:*"]}), 300);
    let mut vip = Client::connect_with_token(&node.ws(""), &token).await;
    vip.send(json!({"type": "subscribe", "channel_ids": ["vip:1"], "ref": 1}))
        .await;
    assert_eq!(vip.recv().await["type"], "subscribed");
    anon.send(json!({"type": "history", "channel_id": "vip:1"}))
        .await;
    assert_eq!(anon.recv().await["code"], "forbidden");
}

#[tokio::test]
async fn bad_namespaces_stop_the_node_with_a_message() {
    let file = config("[[namespaces]]\npattern = \"a*b\"\n");
    let out = std::process::Command::new(
        std::env::var("PUBMESH_BIN")
            .unwrap_or_else(|_| format!("{}/../target/debug/pubmesh", env!("CARGO_MANIFEST_DIR"))),
    )
    .args(["--config", &file, "--listen", "127.0.0.1:0"])
    .output()
    .expect("run pubmesh");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("only allowed at the end"), "{stderr}");
}

#[tokio::test]
async fn concurrent_publishers_reach_a_positioned_subscriber_at_every_offset_in_order() {
    let node = node().await;
    let mut c = node.client("").await;
    let start = subscribe_positioned(&mut c, "chat:race").await;
    assert_eq!(start["offset"], 0);
    const STREAMS: usize = 8;
    const EACH: usize = 150;
    let publishers = (0..STREAMS).map(|s| {
        let node = &node;
        async move {
            for i in 0..EACH {
                publish(node, "chat:race", json!({"s": s, "i": i})).await;
            }
        }
    });
    futures_util::future::join_all(publishers).await;
    for expected in 1..=(STREAMS * EACH) as u64 {
        let p = c.recv_until(|f| f["type"] == "publication").await;
        assert_eq!(p["offset"], expected, "every offset once, in order: {p}");
    }
}
