//! Access lost while joined (the token expires and the socket becomes
//! anonymous): a Phoenix socket gets `phx_close` on each topic it may no
//! longer be in, so the official client closes that channel without
//! rejoining; a chain session gets chain's `_close`. Either way the
//! membership and the presence entry are gone, nothing published there
//! arrives after, and a push to the topic is refused with `unmatched topic`.

use pubmesh_tests::harness::{config_file, eventually, hs256, patience, Node};
use pubmesh_tests::js::Script;
use pubmesh_tests::sse::Sse;
use serde_json::{json, Value};

const SECRET: &str = "revoked-secret";

async fn node() -> Node {
    let file = config_file(
        "[[namespaces]]\npattern = \"members:*\"\nsubscribe = \"authenticated\"\npresence = true\n",
    );
    Node::start(&["--config", &file, "--jwt-secret", SECRET]).await
}

async fn present(node: &Node, channel: &str) -> u64 {
    let (_, body) = node.get(&format!("/api/presence?channel={channel}")).await;
    body["count"].as_u64().unwrap_or(u64::MAX)
}

async fn publish(node: &Node, channel: &str, data: Value) {
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": [channel], "event": "news", "data": data}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn an_expired_token_closes_the_phoenix_channel_with_phx_close() {
    let node = node().await;
    let brief = hs256(SECRET, "alice", 3);
    let endpoint = format!("ws://127.0.0.1:{}/socket", node.port);
    let mut script = Script::spawn(
        "phoenix_client.js",
        &[
            &endpoint,
            "members:1",
            &json!({"params": {"token": brief}}).to_string(),
        ],
    );
    script.wait_event("joined", patience(30)).await;
    node.wait_members("members:1", 1).await;
    assert_eq!(present(&node, "members:1").await, 1);
    publish(&node, "members:1", json!({"n": 1})).await;
    let m = script
        .wait_for("the first message", patience(30), |v| v["name"] == "news")
        .await;
    assert_eq!(m["payload"], json!({"n": 1}));

    // The token expires: phx_close, and the official client closes the
    // channel (no channel_error, no rejoin).
    let closed = script.next_event(patience(30)).await;
    assert_eq!(closed["event"], "channel_close", "{closed}");
    node.wait_members("members:1", 0).await;
    assert_eq!(present(&node, "members:1").await, 0);
    assert_eq!(
        node.metric("pubmesh_subscriptions_revoked_total").await,
        1.0
    );
    // The socket stays open; nothing published there reaches it, and no
    // rejoin happens.
    publish(&node, "members:1", json!({"n": 2})).await;
    script
        .send_line(&json!({"push": "said", "payload": {}}).to_string())
        .await;
    let after = script.next_event(patience(30)).await;
    assert_eq!(after["event"], "reply", "{after}");
    assert_eq!(
        after["status"], "timeout",
        "a closed channel does not push: {after}"
    );
    assert_eq!(node.channel_members("members:1").await, 0);
}

#[tokio::test]
async fn an_expired_token_closes_the_raw_phoenix_and_chain_topics() {
    let node = node().await;
    let brief = hs256(SECRET, "bob", 3);
    // A raw v2 socket, to see the frames themselves.
    let url = format!(
        "ws://127.0.0.1:{}/socket/websocket?vsn=2.0.0&token={brief}",
        node.port
    );
    let mut ws = pubmesh_tests::harness::Client::connect_raw(&url, None)
        .await
        .expect("connect");
    let joined =
        pubmesh_tests::phoenix::call(&mut ws, json!(["1", "1", "members:2", "phx_join", {}])).await;
    assert_eq!(joined[4]["status"], "ok", "{joined}");
    // A chain session with the same kind of token.
    let mut sse = Sse::new(&node.http(), "tab");
    assert_eq!(sse.connect(&format!("&token={brief}")).await, 200);
    let reply = sse.call(json!([0, 4, 5, "members:2", "_join", {}])).await;
    assert_eq!(reply, json!([1, 4, 5, 0]));
    node.wait_members("members:2", 2).await;

    let close = ws.recv_until(|v| v[3] == "phx_close").await;
    assert_eq!(close, json!([null, null, "members:2", "phx_close", {}]));
    let close = sse.recv_until(|v| v[0] == 0).await;
    assert_eq!(close, json!([0, null, null, "members:2", "_close"]));
    eventually("no member, no presence", patience(30), || async {
        (node.channel_members("members:2").await == 0 && present(&node, "members:2").await == 0)
            .then_some(())
    })
    .await;

    // Pushes to the closed topic are refused as not joined.
    let refused =
        pubmesh_tests::phoenix::call(&mut ws, json!(["1", "2", "members:2", "said", {}])).await;
    assert_eq!(
        refused,
        json!(["1", "2", "members:2", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
    let refused = sse.call(json!([0, 4, 6, "members:2", "said", {}])).await;
    assert_eq!(refused, json!([1, 4, 6, 1, {"reason": "unmatched topic"}]));
    // A rejoin as the anonymous socket it now is: refused by the rule.
    let again =
        pubmesh_tests::phoenix::call(&mut ws, json!(["3", "3", "members:2", "phx_join", {}])).await;
    assert_eq!(again[4]["response"], json!({"reason": "unauthorized"}));
    assert_eq!(node.channel_members("members:2").await, 0);
}
