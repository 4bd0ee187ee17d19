//! Faults: Redis killed and restarted, a node killed with SIGKILL.

use std::time::Duration;

use pubmesh_tests::harness::{cluster_slot, eventually, patience, Client, Node, Redis};
use serde_json::json;

/// Publish on `from` until `to` receives it (each try waits 500 ms).
async fn delivered_across(from: &Node, to: &mut Client, key: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let mut n = 0u64;
    loop {
        n += 1;
        from.post(
            "/api/notify/channels",
            json!({"channel_ids": ["heal"], "data": {key: n}}),
        )
        .await;
        let got = tokio::time::timeout(
            Duration::from_millis(500),
            to.recv_until(|v| v.get(key).is_some()),
        )
        .await;
        if got.is_ok_and(|v| v[key] == n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no cross-node delivery within {within:?}"
        );
    }
}

async fn ready_status(node: &Node) -> u16 {
    reqwest::get(format!("{}/readyz", node.http()))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn redis_restart_degrades_then_heals_without_restarting_nodes() {
    let _slot = cluster_slot().await;
    let mut redis = Redis::start().await;
    let url = redis.url();
    let a = Node::start(&["--redis-url", &url]).await;
    let b = Node::start(&["--redis-url", &url]).await;
    let mut on_a = a.client("channel_id=heal").await;
    let mut on_b = b.client("channel_id=heal").await;

    // Cross-node delivery works.
    delivered_across(&a, &mut on_b, "n", patience(20)).await;

    redis.kill();
    eventually("readyz 503 while Redis is down", patience(20), || async {
        (ready_status(&a).await == 503).then_some(())
    })
    .await;
    assert_eq!(a.metric("pubmesh_relay_up").await, 0.0);
    // Local delivery keeps working.
    while tokio::time::timeout(Duration::from_millis(100), on_a.recv())
        .await
        .is_ok()
    {}
    let (status, body) = a
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["heal"], "data": {"local": "ok"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["local_deliveries"], 1);
    assert_eq!(
        on_a.recv_until(|v| v.get("local").is_some()).await,
        json!({"local": "ok"})
    );

    redis.restart().await;
    eventually("readyz 200 after Redis returns", patience(30), || async {
        (ready_status(&a).await == 200 && ready_status(&b).await == 200).then_some(())
    })
    .await;
    delivered_across(&a, &mut on_b, "m", patience(30)).await;
    eventually("resubscribe counted", patience(10), || async {
        (b.metric("pubmesh_relay_resubscribes_total").await >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_killed_node_disappears_from_membership() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let url = redis.url();
    let a = Node::start(&["--redis-url", &url]).await;
    let mut b = Node::start(&["--redis-url", &url]).await;
    let b_id = b.node_id.clone();
    let sees_b = |present: bool| {
        let a = &a;
        let b_id = b_id.clone();
        move || {
            let b_id = b_id.clone();
            async move {
                let (_, body) = a.get("/api/nodes").await;
                let ids: Vec<String> = body["nodes"]
                    .as_array()?
                    .iter()
                    .filter_map(|n| n["node_id"].as_str().map(str::to_string))
                    .collect();
                (ids.contains(&b_id) == present).then_some(())
            }
        }
    };
    eventually("b joins", patience(20), sees_b(true)).await;
    b.kill();
    // Heartbeats stop; the peer timeout is 5 s.
    eventually(
        "b dropped after the peer timeout",
        patience(20),
        sees_b(false),
    )
    .await;
}

#[tokio::test]
async fn a_node_that_stops_cleanly_leaves_membership_at_once() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let url = redis.url();
    let a = Node::start(&["--redis-url", &url]).await;
    let mut b = Node::start(&["--redis-url", &url, "--drain-seconds", "1"]).await;
    eventually("b joins", patience(20), || async {
        let (_, body) = a.get("/api/nodes").await;
        (body["nodes"].as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .await;
    b.sigterm();
    b.wait_exit(patience(10)).await;
    eventually("b leaves", patience(4), || async {
        let (_, body) = a.get("/api/nodes").await;
        (body["nodes"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_node_started_while_redis_is_down_serves_locally_and_joins_later() {
    let _slot = cluster_slot().await;
    let mut redis = Redis::start().await;
    let url = redis.url();
    redis.kill();
    let a = Node::spawn_unready(&["--redis-url", &url]).await;
    assert_eq!(ready_status(&a).await, 503);
    let mut c = a.client("channel_id=early").await;
    a.post(
        "/api/notify/channels",
        json!({"channel_ids": ["early"], "data": {"x": 1}}),
    )
    .await;
    assert_eq!(c.recv().await, json!({"x": 1}));
    redis.restart().await;
    a.wait_ready().await;
}
