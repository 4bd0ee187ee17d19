//! History, recovery and presence across nodes (Redis streams and hashes).

use std::io::Write;
use std::time::Duration;

use pubmesh_tests::harness::{cluster_slot, eventually, patience, temp_dir, Client, Node, Redis};
use serde_json::{json, Value};

fn config() -> String {
    let path = temp_dir("cluster-history").join("ns.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| {
            f.write_all(
                br#"
[[namespaces]]
pattern = "chat:*"
history_size = 2000
history_ttl_seconds = 300
presence = true
join_leave = true

[[namespaces]]
pattern = "tiny:*"
history_size = 10
history_ttl_seconds = 300
"#,
            )
        })
        .expect("config");
    path.to_string_lossy().to_string()
}

async fn two_nodes(redis: &Redis, extra: &[&str]) -> (Node, Node) {
    let url = redis.url();
    let file = config();
    let mut args = vec!["--redis-url", url.as_str(), "--config", file.as_str()];
    args.extend_from_slice(extra);
    pubmesh_tests::harness::two_nodes(&args).await
}

async fn publish(node: &Node, channel: &str, data: Value) {
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": [channel], "data": data}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn subscribe(c: &mut Client, channel: &str, since: Option<Value>) -> Value {
    let mut frame =
        json!({"type": "subscribe", "channel_ids": [channel], "positioned": true, "ref": "sub"});
    if let Some(since) = since {
        frame["since"] = json!({ channel: since });
    }
    c.send(frame).await;
    let reply = c.recv_until(|f| f["ref"] == "sub").await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    reply["positions"][channel].clone()
}

#[tokio::test]
async fn a_client_recovers_a_thousand_missed_messages_on_another_node() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;
    let mut c = a.client("").await;
    let start = subscribe(&mut c, "chat:big", None).await;
    publish(&b, "chat:big", json!({"i": 0})).await;
    let first = c.recv_until(|f| f["type"] == "publication").await;
    assert_eq!(first["offset"], start["offset"].as_u64().unwrap_or(0) + 1);
    drop(c);
    for i in 1..=1000 {
        publish(&b, "chat:big", json!({"i": i})).await;
    }
    // Reconnect to the other node with the last position seen.
    let mut back = b.client("").await;
    let since = json!({"offset": first["offset"], "epoch": first["epoch"]});
    let reply = subscribe(&mut back, "chat:big", Some(since)).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    // Live messages published while the missed ones stream in.
    publish(&a, "chat:big", json!({"i": "live-1"})).await;
    publish(&b, "chat:big", json!({"i": "live-2"})).await;
    let mut offset = first["offset"].as_u64().expect("offset");
    // Its own `join` event (the namespace has join_leave) comes after the
    // missed publications, racing with the live ones: wait for it too.
    let mut joined = false;
    for i in 1..=1002u64 {
        let p = back
            .recv_until(|f| {
                joined |= f["type"] == "join";
                f["type"] == "publication"
            })
            .await;
        offset += 1;
        assert_eq!(p["offset"], offset, "in order, no gap, no duplicate");
        if i <= 1000 {
            assert_eq!(p["data"], json!({"i": i}));
        }
    }
    if !joined {
        back.recv_until(|f| f["type"] == "join").await;
    }
    back.expect_silence(Duration::from_millis(300)).await;
    assert!(b.metric("pubmesh_recoveries_total{result=\"ok\"}").await >= 1.0);
}

#[tokio::test]
async fn trimmed_history_and_a_redis_restart_are_not_recovered() {
    let _slot = cluster_slot().await;
    let mut redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;
    let mut c = a.client("").await;
    let pos = subscribe(&mut c, "tiny:t", None).await;
    for i in 0..30 {
        publish(&b, "tiny:t", json!({"i": i})).await;
    }
    let mut r = b.client("").await;
    let since = json!({"offset": 1, "epoch": pos["epoch"]});
    let reply = subscribe(&mut r, "tiny:t", Some(since)).await;
    assert_eq!(reply["recovered"], false, "trimmed: {reply}");
    assert_eq!(reply["offset"], 30);

    // Redis restarts empty: the epoch changes.
    redis.restart().await;
    a.wait_ready().await;
    b.wait_ready().await;
    let mut later = b.client("").await;
    let since = json!({"offset": 30, "epoch": pos["epoch"]});
    let reply = subscribe(&mut later, "tiny:t", Some(since)).await;
    assert_eq!(reply["recovered"], false, "epoch changed: {reply}");
    assert_ne!(reply["epoch"], pos["epoch"]);
    assert!(
        b.metric("pubmesh_recoveries_total{result=\"failed\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn presence_spans_nodes_and_a_killed_nodes_members_expire() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let (a, mut b) = two_nodes(&redis, &["--presence-ttl-seconds", "3"]).await;
    let mut on_a = a.client("channel_id=chat:lobby").await;
    // Node a listens for the channel before b's member joins (at most once:
    // a join published before that would not reach it).
    eventually("a subscribed to the lobby", patience(20), || async {
        let reply = redis
            .cmd(&["PUBSUB", "NUMSUB", "pubmesh.ch.{chat:lobby}"])
            .await?;
        (!reply.ends_with(":0\r\n")).then_some(())
    })
    .await;
    let on_b = b.client("channel_id=chat:lobby").await;
    let b_client = on_b.client_id();
    // The join of b's client reached a's client through the relay.
    let join = on_a
        .recv_until(|f| f["type"] == "join" && f["client_id"] == b_client.as_str())
        .await;
    assert_eq!(join["node_id"], b.node_id.as_str());
    let count = |node: &Node| {
        let url = format!("{}/api/presence?channel=chat:lobby", node.http());
        async move {
            let body: Value = reqwest::Client::new()
                .get(url)
                .header("X-API-Key", pubmesh_tests::harness::API_KEY)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            body["count"].as_u64()
        }
    };
    eventually(
        "both members listed on both nodes",
        patience(20),
        || async { (count(&a).await == Some(2) && count(&b).await == Some(2)).then_some(()) },
    )
    .await;
    on_a.send(json!({"type": "presence", "channel_id": "chat:lobby", "ref": 1}))
        .await;
    let p = on_a.recv_until(|f| f["type"] == "presence").await;
    let nodes: Vec<&str> = p["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["node_id"].as_str())
        .collect();
    assert!(
        nodes.contains(&a.node_id.as_str()) && nodes.contains(&b.node_id.as_str()),
        "{p}"
    );

    b.kill();
    eventually("a killed node's member expires", patience(15), || async {
        (count(&a).await == Some(1)).then_some(())
    })
    .await;
}
