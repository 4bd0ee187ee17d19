//! Three nodes and one Redis: notify_* reach sockets on every node exactly
//! once, local broadcasts stay local, order holds, interest follows members.

use std::time::Duration;

use pubmesh_tests::harness::{cluster_slot, eventually, hs256, patience, Client, Node, Redis};
use serde_json::json;

const SECRET: &str = "cluster-secret";

async fn cluster(redis: &Redis, extra: &[&str]) -> Vec<Node> {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str(), "--jwt-secret", SECRET];
    args.extend_from_slice(extra);
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(&args).await);
    }
    // Wait until every node sees the other two.
    for node in &nodes {
        eventually("membership", patience(20), || async move {
            let (_, body) = node.get("/api/nodes").await;
            (body["nodes"].as_array().map(Vec::len) == Some(3)).then_some(())
        })
        .await;
    }
    nodes
}

/// Wait until `redis` has a subscriber for `topic`.
async fn subscribed(redis: &Redis, topic: &str) {
    eventually(
        &format!("{topic} subscribed"),
        patience(20),
        || async move {
            let reply = redis.cmd(&["PUBSUB", "NUMSUB", topic]).await?;
            (!reply.ends_with(":0\r\n")).then_some(())
        },
    )
    .await;
}

fn quiet() -> Duration {
    Duration::from_millis(400)
}

#[tokio::test]
async fn notify_channels_users_and_clients_reach_every_node_exactly_once() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let nodes = cluster(&redis, &[]).await;
    let mut members: Vec<Client> = Vec::new();
    for node in &nodes {
        members.push(node.client("channel_id=room").await);
    }
    // The same user on nodes 1 and 2.
    let token = hs256(SECRET, "n::dana", 300);
    let mut dana1 = nodes[1].client(&format!("token={token}")).await;
    let mut dana2 = nodes[2].client(&format!("token={token}")).await;
    subscribed(&redis, "pubmesh.ch.{room}").await;
    subscribed(&redis, "pubmesh.u.n::dana").await;

    // channel, from a client on node 0.
    members[0]
        .send(json!({"type": "channel", "channel_ids": ["room"], "data": {"from": "client"}}))
        .await;
    for m in members.iter_mut() {
        assert_eq!(m.recv().await, json!({"from": "client"}));
    }
    // channel, from the API on node 2.
    let (_, body) = nodes[2]
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["room"], "data": {"from": "api"}}),
        )
        .await;
    assert_eq!(body["relayed"], true);
    for m in members.iter_mut() {
        assert_eq!(m.recv().await, json!({"from": "api"}));
    }
    // users: every connection of dana, on both nodes, from node 0.
    nodes[0]
        .post(
            "/api/notify/users",
            json!({"root_ids": ["n::dana"], "data": {"to": "dana"}}),
        )
        .await;
    assert_eq!(dana1.recv().await, json!({"to": "dana"}));
    assert_eq!(dana2.recv().await, json!({"to": "dana"}));
    // user frame from an authenticated client on node 0.
    let mut erin = nodes[0]
        .client(&format!("token={}", hs256(SECRET, "n::erin", 300)))
        .await;
    erin.send(json!({"type": "user", "root_ids": ["n::dana"], "data": {"dm": 1}}))
        .await;
    assert_eq!(dana1.recv().await, json!({"dm": 1}));
    assert_eq!(dana2.recv().await, json!({"dm": 1}));
    // clients: one socket on each of two other nodes.
    let ids = [members[1].client_id(), members[2].client_id()];
    let (_, body) = nodes[0]
        .post(
            "/api/notify/clients",
            json!({"client_ids": ids, "data": {"direct": true}}),
        )
        .await;
    assert_eq!(body["local_deliveries"], 0);
    assert_eq!(members[1].recv().await, json!({"direct": true}));
    assert_eq!(members[2].recv().await, json!({"direct": true}));
    // Exactly once: nothing else arrives anywhere.
    for m in members.iter_mut() {
        m.expect_silence(quiet()).await;
    }
    dana1.expect_silence(quiet()).await;
    dana2.expect_silence(quiet()).await;
}

#[tokio::test]
async fn a_socket_in_two_targeted_channels_on_another_node_gets_one_copy() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let nodes = cluster(&redis, &[]).await;
    let mut c = nodes[1].client("channel_id=one").await;
    c.send(json!({"type": "subscribe", "channel_ids": ["two"]}))
        .await;
    c.recv().await;
    subscribed(&redis, "pubmesh.ch.{one}").await;
    subscribed(&redis, "pubmesh.ch.{two}").await;
    nodes[0]
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["one", "two"], "data": {"n": 1}}),
        )
        .await;
    assert_eq!(c.recv().await, json!({"n": 1}));
    c.expect_silence(quiet()).await;
}

#[tokio::test]
async fn local_broadcast_stays_on_its_node() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let nodes = cluster(&redis, &[]).await;
    let mut here = nodes[0].client("channel_id=lb").await;
    let mut there = nodes[1].client("channel_id=lb").await;
    subscribed(&redis, "pubmesh.ch.{lb}").await;
    let (_, body) = nodes[0]
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["lb"], "data": {"l": 1}, "local": true}),
        )
        .await;
    assert_eq!(
        body,
        json!({"local_deliveries": 1, "relayed": false, "relay": "none"})
    );
    let (_, body) = nodes[0]
        .post("/api/broadcast", json!({"data": {"l": 2}, "local": true}))
        .await;
    assert_eq!(body["relayed"], false);
    assert_eq!(here.recv().await, json!({"l": 1}));
    assert_eq!(here.recv().await, json!({"l": 2}));
    there.expect_silence(quiet()).await;
    // A cluster broadcast reaches both.
    nodes[0]
        .post("/api/broadcast", json!({"data": {"l": 3}}))
        .await;
    assert_eq!(here.recv().await, json!({"l": 3}));
    assert_eq!(there.recv().await, json!({"l": 3}));
}

#[tokio::test]
async fn one_publishers_thousand_messages_arrive_in_order_on_every_node() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let nodes = cluster(
        &redis,
        &["--client-rate", "100000", "--client-burst", "100000"],
    )
    .await;
    let mut publisher = nodes[0].client("channel_id=ordered").await;
    let mut b = nodes[1].client("channel_id=ordered").await;
    let mut c = nodes[2].client("channel_id=ordered").await;
    subscribed(&redis, "pubmesh.ch.{ordered}").await;
    eventually("all three nodes subscribed", patience(20), || {
        let redis = &redis;
        async move {
            let reply = redis
                .cmd(&["PUBSUB", "NUMSUB", "pubmesh.ch.{ordered}"])
                .await?;
            reply.ends_with(":3\r\n").then_some(())
        }
    })
    .await;
    for i in 0..1000 {
        let mut frame = json!({"type": "channel", "channel_ids": ["ordered"], "data": {"i": i}});
        if i == 999 {
            frame["ref"] = json!("last");
        }
        publisher.send(frame).await;
    }
    for receiver in [&mut publisher, &mut b, &mut c] {
        for i in 0..1000 {
            assert_eq!(receiver.recv().await, json!({"i": i}));
        }
    }
    // The first 999 had no `ref`: nothing waited for Redis's answer (the
    // relay kept nothing to report it), and the others got them all the
    // same, above. The last one's reply waited for it.
    assert_eq!(
        publisher.recv().await,
        json!({"type": "published", "ref": "last", "local_deliveries": 1, "relayed": true, "relay": "sent"})
    );
}

#[tokio::test]
async fn redis_interest_follows_local_members() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let nodes = cluster(&redis, &[]).await;
    let topic = "pubmesh.ch.{interest}";
    let channels = || async {
        redis
            .cmd(&["PUBSUB", "CHANNELS", "pubmesh.ch.*"])
            .await
            .unwrap_or_default()
    };
    assert!(!channels().await.contains(topic));
    let mut c = nodes[0].client("").await;
    c.send(json!({"type": "subscribe", "channel_ids": ["interest"]}))
        .await;
    c.recv().await;
    subscribed(&redis, topic).await;
    c.send(json!({"type": "unsubscribe", "channel_ids": ["interest"]}))
        .await;
    c.recv().await;
    eventually("interest gone after the linger", patience(20), || async {
        (!channels().await.contains(topic)).then_some(())
    })
    .await;
    assert!(nodes[0].metric("pubmesh_relay_subscriptions").await >= 3.0);
}

#[tokio::test]
async fn nodes_channels_and_disconnect_are_cluster_wide() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let nodes = cluster(&redis, &[]).await;
    let _a = nodes[0].client("channel_id=shared").await;
    let mut b = nodes[1].client("channel_id=shared").await;
    let token = hs256(SECRET, "n::frank", 300);
    let mut f = nodes[2]
        .client(&format!("channel_id=solo&token={token}"))
        .await;
    eventually("channels merged across nodes", patience(20), || {
        let node = &nodes[0];
        async move {
            let (_, body) = node.get("/api/channels").await;
            let list = body["channels"].as_array()?.clone();
            let has = |name: &str, n: u64| {
                list.iter()
                    .any(|c| c["channel"] == name && c["members"].as_u64() == Some(n))
            };
            (has("shared", 2) && has("solo", 1)).then_some(())
        }
    })
    .await;
    let (_, body) = nodes[0].get("/api/nodes").await;
    let total: u64 = body["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["connections"].as_u64().unwrap_or(0))
        .sum();
    assert!(total >= 1, "{body}");
    nodes[0]
        .post("/api/disconnect", json!({"client_ids": [b.client_id()]}))
        .await;
    assert_eq!(b.expect_close().await.map(|c| c.0), Some(4002));
    nodes[0]
        .post("/api/disconnect", json!({"root_ids": ["n::frank"]}))
        .await;
    assert_eq!(f.expect_close().await.map(|c| c.0), Some(4002));
}
