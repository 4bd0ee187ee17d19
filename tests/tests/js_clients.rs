//! The JavaScript client plumbing against a real node: the `ws` npm package
//! under node and the browser's own WebSocket in headless Chromium, both on
//! the native `/websocket`, each receiving a publish made through the server
//! API.

use pubmesh_tests::harness::{patience, Node};
use pubmesh_tests::js::Script;
use serde_json::{json, Value};

/// Wait for the connection frame, publish to `channel` through the API,
/// and check the script reports exactly that data.
async fn receives_api_publish(node: &Node, script: &mut Script, channel: &str) {
    let connection = script
        .wait_for("the connection frame", patience(60), |v| {
            v["event"] == "frame" && v["data"]["type"] == "connection"
        })
        .await;
    assert_eq!(connection["data"]["data"]["channel_id"], channel);
    let data = json!({"from": "api", "n": 1, "text": "héllo"});
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": [channel], "data": data}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = script
        .wait_for("the published data", patience(20), |v| {
            v["event"] == "frame" && v["data"]["from"] == "api"
        })
        .await;
    assert_eq!(got["data"], data);
    // The node forwards `data` byte for byte: compact, keys in order.
    assert_eq!(
        got["text"],
        Value::from(r#"{"from":"api","n":1,"text":"héllo"}"#)
    );
}

#[tokio::test]
async fn ws_package_under_node_receives_an_api_publish() {
    let node = Node::start(&[]).await;
    let mut script = Script::spawn("ws_client.js", &[&node.ws("channel_id=js-ws")]);
    script.wait_event("open", patience(30)).await;
    receives_api_publish(&node, &mut script, "js-ws").await;
    // Frames written to the script go out on the socket: a subscribe is
    // acknowledged by the node.
    script
        .send_line(r#"{"type":"subscribe","channel_ids":["js-ws-2"],"ref":7}"#)
        .await;
    let ack = script
        .wait_for("the subscribe ack", patience(20), |v| {
            v["event"] == "frame" && v["data"]["ref"] == 7
        })
        .await;
    assert_eq!(ack["data"]["type"], "subscribed", "{ack}");
    assert!(script.finish(patience(20)).await.success());
}

#[tokio::test]
async fn headless_chromium_page_receives_an_api_publish() {
    let node = Node::start(&[]).await;
    let mut page = Script::browser(
        "native_ws.js",
        &json!({"url": node.ws("channel_id=js-browser")}),
        &[],
    );
    let browser = page.wait_event("browser", patience(90)).await;
    assert!(
        browser["version"]
            .as_str()
            .is_some_and(|v| v.contains("Chrom")),
        "{browser}"
    );
    page.wait_event("open", patience(30)).await;
    receives_api_publish(&node, &mut page, "js-browser").await;
    assert!(page.finish(patience(30)).await.success());
}
