//! A join answered on one node must already receive what another node
//! publishes right after the answer: the subscribe reply waits until Redis
//! has the node's subscription.

use std::time::Duration;

use pubmesh_tests::harness::{cluster_slot, eventually, patience, Node, Redis};
use serde_json::json;

#[tokio::test]
async fn a_publish_right_after_the_subscribe_reply_reaches_the_new_member_once() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let url = redis.url();
    // A low interest rate holds subscriptions back after the first few, the
    // widest form of the race between a subscribe reply and its SUBSCRIBE.
    let args = ["--redis-url", url.as_str(), "--relay-interest-rate", "4"];
    let a = Node::start(&args).await;
    let b = Node::start(&args).await;
    for node in [&a, &b] {
        eventually("membership", patience(20), || async move {
            let (_, body) = node.get("/api/nodes").await;
            (body["nodes"].as_array().map(Vec::len) == Some(2)).then_some(())
        })
        .await;
    }
    let mut member = b.client("").await;
    for i in 0..12 {
        let channel = format!("race-{i}");
        member
            .send(json!({"type": "subscribe", "channel_ids": [channel], "ref": i}))
            .await;
        let reply = member.recv_until(|f| f["ref"] == i).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        let (status, body) = a
            .post(
                "/api/notify/channels",
                json!({"channel_ids": [channel], "data": {"n": i}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let got = member.recv_until(|f| f.get("n").is_some()).await;
        assert_eq!(
            got,
            json!({"n": i}),
            "every publish after the reply arrives, in order"
        );
    }
    member.expect_silence(Duration::from_millis(500)).await;
}
