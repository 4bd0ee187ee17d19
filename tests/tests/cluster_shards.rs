//! Scaling the broker: channels spread over two independent Redis servers,
//! and a 3-master Redis Cluster with sharded pub/sub.

use std::io::Write;
use std::time::Duration;

use pubmesh_tests::harness::{
    cluster_slot, eventually, hs256, patience, temp_dir, Client, Node, Redis, RedisCluster,
};
use serde_json::json;

async fn wait_members(node: &Node, n: usize) {
    eventually("membership", patience(20), || async move {
        let (_, body) = node.get("/api/nodes").await;
        (body["nodes"].as_array().map(Vec::len) == Some(n)).then_some(())
    })
    .await;
}

/// Publish to `channel` on `from` until `to` gets it (subscriptions settle
/// asynchronously), then check exactly-once from there on.
async fn settle(from: &Node, to: &mut Client, channel: &str) {
    let deadline = tokio::time::Instant::now() + patience(20);
    loop {
        from.post(
            "/api/notify/channels",
            json!({"channel_ids": [channel], "data": {"probe": channel}}),
        )
        .await;
        if tokio::time::timeout(Duration::from_millis(500), to.recv())
            .await
            .is_ok()
        {
            // Drain any second probe still in flight.
            while tokio::time::timeout(Duration::from_millis(200), to.recv())
                .await
                .is_ok()
            {}
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{channel} never crossed"
        );
    }
}

#[tokio::test]
async fn channels_spread_over_two_redis_servers_and_all_deliver() {
    let _slot = cluster_slot().await;
    let r1 = Redis::start().await;
    let r2 = Redis::start().await;
    let (u1, u2) = (r1.url(), r2.url());
    let args = ["--redis-url", u1.as_str(), "--redis-url", u2.as_str()];
    let a = Node::start(&args).await;
    let b = Node::start(&args).await;
    wait_members(&a, 2).await;
    let mut c = b.client("channel_id=c0").await;
    let channels: Vec<String> = (0..16).map(|i| format!("c{i}")).collect();
    c.send(json!({"type": "subscribe", "channel_ids": channels[1..]}))
        .await;
    c.recv().await;
    for ch in &channels {
        settle(&a, &mut c, ch).await;
    }
    for (i, ch) in channels.iter().enumerate() {
        a.post(
            "/api/notify/channels",
            json!({"channel_ids": [ch], "data": {"i": i}}),
        )
        .await;
        assert_eq!(c.recv().await, json!({"i": i}));
    }
    c.expect_silence(Duration::from_millis(300)).await;
    // Both servers carry some of the channel topics.
    for redis in [&r1, &r2] {
        let topics = redis
            .cmd(&["PUBSUB", "CHANNELS", "pubmesh.ch.*"])
            .await
            .unwrap_or_default();
        assert!(
            topics.contains("pubmesh.ch.{c"),
            "a server carries no channel: {topics}"
        );
    }
}

#[tokio::test]
async fn a_redis_cluster_with_sharded_pubsub_relays_and_keeps_history() {
    let _slot = cluster_slot().await;
    let cluster = RedisCluster::start(3).await;
    let url = cluster.url();
    let config = temp_dir("cluster-config").join("ns.toml");
    std::fs::File::create(&config)
        .and_then(|mut f| {
            f.write_all(
                b"[[namespaces]]\npattern = \"h:*\"\nhistory_size = 50\nhistory_ttl_seconds = 60\n",
            )
        })
        .expect("config");
    let config = config.to_string_lossy().to_string();
    let args = [
        "--redis-url",
        url.as_str(),
        "--redis-cluster",
        "--jwt-secret",
        "s",
        "--config",
        config.as_str(),
    ];
    let a = Node::start(&args).await;
    let b = Node::start(&args).await;
    wait_members(&a, 2).await;
    wait_members(&b, 2).await;

    let mut c = b.client("channel_id=k0").await;
    let channels: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    c.send(json!({"type": "subscribe", "channel_ids": channels[1..]}))
        .await;
    c.recv().await;
    for ch in &channels {
        settle(&a, &mut c, ch).await;
    }
    for (i, ch) in channels.iter().enumerate() {
        a.post(
            "/api/notify/channels",
            json!({"channel_ids": [ch], "data": {"i": i}}),
        )
        .await;
        assert_eq!(c.recv().await, json!({"i": i}));
    }
    // Users and client ids cross too.
    let token = hs256("s", "n::gus", 300);
    let mut gus = b.client(&format!("token={token}")).await;
    let deadline = tokio::time::Instant::now() + patience(20);
    loop {
        a.post(
            "/api/notify/users",
            json!({"root_ids": ["n::gus"], "data": {"u": 1}}),
        )
        .await;
        if tokio::time::timeout(Duration::from_millis(500), gus.recv())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "user message never crossed"
        );
    }
    a.post(
        "/api/notify/clients",
        json!({"client_ids": [c.client_id()], "data": {"direct": 1}}),
    )
    .await;
    assert_eq!(c.recv().await, json!({"direct": 1}));

    // History: the append script publishes in the channel's slot.
    c.send(json!({"type": "subscribe", "channel_ids": ["h:room"], "positioned": true, "ref": "h"}))
        .await;
    let reply = c.recv_until(|f| f["ref"] == "h").await;
    let epoch = reply["positions"]["h:room"]["epoch"].clone();
    for i in 0..5 {
        let (status, body) = a
            .post(
                "/api/notify/channels",
                json!({"channel_ids": ["h:room"], "data": {"h": i}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..5 {
        let p = c.recv_until(|f| f["type"] == "publication").await;
        assert_eq!(p["offset"], i + 1);
        assert_eq!(p["epoch"], epoch);
    }
    let mut late = a.client("").await;
    late.send(json!({"type": "subscribe", "channel_ids": ["h:room"], "since": {"h:room": {"offset": 2, "epoch": epoch}}, "ref": 1}))
        .await;
    let reply = late.recv_until(|f| f["ref"] == 1).await;
    assert_eq!(reply["positions"]["h:room"]["recovered"], true, "{reply}");
    for offset in 3..=5 {
        assert_eq!(
            late.recv_until(|f| f["type"] == "publication").await["offset"],
            offset
        );
    }
}
