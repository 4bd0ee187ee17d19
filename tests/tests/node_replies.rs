//! What the node answers matches what it did and what docs/protocol.md
//! says: errors keep the frame's `ref`, an acknowledged unsubscribe really
//! happened, malformed client ids and local publications that would bypass
//! a channel's history are refused rather than answered 200, and replies
//! keep their documented key order.

use pubmesh_tests::harness::{hs256, patience, Client, Node, API_KEY};
use serde_json::{json, Value};

const SECRET: &str = "replies-secret";

const HISTORY: &str = r#"
[[namespaces]]
pattern = "h:*"
history_size = 10
history_ttl_seconds = 60
presence = true
"#;

fn config(text: &str) -> String {
    pubmesh_tests::harness::config_file(text)
}

/// The next text frame, as sent.
async fn raw(client: &mut Client) -> String {
    tokio::time::timeout(patience(10), client.recv_or_end())
        .await
        .expect("a frame within the deadline")
        .expect("a text frame")
}

/// An API call; the status and the body as sent.
async fn http(node: &Node, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", node.http());
    let mut request = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    request = request.header("X-API-Key", API_KEY);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

const WELL_FORMED: &str = "1730887348:f46d85203c704c099e9f44e948322a20:n1";

#[tokio::test]
async fn an_error_carries_the_frames_ref_even_without_a_type() {
    let node = Node::start(&[]).await;
    let mut c = node.client("").await;
    for (frame, reply) in [
        (
            r#"{"ref":3}"#,
            r#"{"type":"error","error":"type is required","code":"bad_request","ref":3}"#,
        ),
        (
            r#"{"type":5,"ref":"x"}"#,
            r#"{"type":"error","error":"type must be a string","code":"bad_request","ref":"x"}"#,
        ),
        (
            r#"{"type":null,"ref":[1]}"#,
            r#"{"type":"error","error":"ref must be a number or a string of at most 64 bytes","code":"bad_request"}"#,
        ),
    ] {
        c.send_text(frame).await;
        assert_eq!(raw(&mut c).await, reply, "{frame}");
    }
}

#[tokio::test]
async fn the_connect_time_channel_cannot_be_unsubscribed() {
    let node = Node::start(&[]).await;
    let mut c = node.client("channel_id=home").await;
    c.send(json!({"type": "subscribe", "channel_ids": ["news"]}))
        .await;
    assert_eq!(c.recv().await["type"], "subscribed");
    // Refused as a whole: the other channel is not left either.
    c.send(json!({"type": "unsubscribe", "channel_ids": ["news", "home"], "ref": 1}))
        .await;
    assert_eq!(
        raw(&mut c).await,
        r#"{"type":"error","error":"\"home\" is this connection's channel_id, which it stays in until it disconnects","code":"bad_request","ref":1}"#
    );
    for channel in ["news", "home"] {
        let (status, body) = http(
            &node,
            "POST",
            "/api/notify/channels",
            Some(&format!(
                r#"{{"channel_ids":["{channel}"],"data":{{"to":"{channel}"}}}}"#
            )),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(c.recv().await, json!({ "to": channel }));
    }
    c.send(json!({"type": "unsubscribe", "channel_ids": ["news"], "ref": 2}))
        .await;
    assert_eq!(
        raw(&mut c).await,
        r#"{"type":"unsubscribed","channel_ids":["news"],"ref":2}"#
    );
}

#[tokio::test]
async fn malformed_client_ids_are_refused_everywhere() {
    let node = Node::start(&["--jwt-secret", SECRET, "--client-client-publish", "any"]).await;
    let (status, body) = http(
        &node,
        "POST",
        "/api/notify/clients",
        Some(r#"{"client_ids":["x"],"data":{}}"#),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        r#"{"error":"client_ids: \"x\" is not a client id ({unix seconds}:{32 hex}:{node id})","code":"bad_request"}"#
    );
    let (status, body) = http(
        &node,
        "POST",
        "/api/disconnect",
        Some(r#"{"client_ids":["a:b:c"]}"#),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // A well-formed id of a client that is gone is fine: nobody receives it.
    let (status, body) = http(
        &node,
        "POST",
        "/api/notify/clients",
        Some(&format!(
            r#"{{"client_ids":["{WELL_FORMED}"],"data":{{}}}}"#
        )),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            r#"{"local_deliveries":0,"relayed":false,"relay":"none"}"#
        )
    );

    let token = hs256(SECRET, "n::sender", 300);
    let mut c = node.client(&format!("token={token}")).await;
    c.send(json!({"type": "client", "client_ids": [c.client_id(), "x"], "data": {}, "ref": 1}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    assert_eq!(reply["ref"], 1, "{reply}");
}

#[tokio::test]
async fn local_publications_to_history_channels_are_refused_not_dropped() {
    let node = Node::start(&["--config", &config(HISTORY)]).await;
    let mut member = node.client("channel_id=plain").await;
    member
        .send(json!({"type": "subscribe", "channel_ids": ["h:1"]}))
        .await;
    assert_eq!(member.recv().await["type"], "subscribed");
    for body in [
        r#"{"channel_ids":["h:1"],"data":{"n":1},"local":true}"#,
        r#"{"channel_ids":["plain","h:1"],"data":{"n":1},"local":true}"#,
    ] {
        let (status, reply) = http(&node, "POST", "/api/notify/channels", Some(body)).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            reply,
            r#"{"error":"channel \"h:1\" keeps history, which a local publication would bypass; publish without local","code":"bad_request"}"#
        );
    }
    // Nothing was delivered nor stored; a cluster-wide publication is both.
    let (status, reply) = http(
        &node,
        "POST",
        "/api/notify/channels",
        Some(r#"{"channel_ids":["h:1"],"data":{"n":2}}"#),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(member.recv().await, json!({"n": 2}));
    let (status, history) = http(&node, "GET", "/api/history?channel=h:1", None).await;
    assert_eq!(status, 200);
    let history: Value = serde_json::from_str(&history).expect("json");
    assert_eq!(history["offset"], 1, "{history}");
    assert_eq!(history["publications"][0]["data"], json!({"n": 2}));
    // A local publication to a channel without history still works.
    let (status, reply) = http(
        &node,
        "POST",
        "/api/notify/channels",
        Some(r#"{"channel_ids":["plain"],"data":{"n":3},"local":true}"#),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(member.recv().await, json!({"n": 3}));
}

#[tokio::test]
async fn replies_keep_their_documented_key_order() {
    let node = Node::start(&["--config", &config(HISTORY)]).await;
    let mut c = node.client("").await;
    c.send_text(r#"{"type":"subscribe","channel_ids":["h:1","news"],"ref":1}"#)
        .await;
    assert_eq!(
        raw(&mut c).await,
        r#"{"type":"subscribed","channel_ids":["h:1","news"],"ref":1}"#
    );
    c.send_text(r#"{"type":"subscribe","channel_ids":["h:2"],"positioned":true}"#)
        .await;
    let text = raw(&mut c).await;
    assert!(
        text.starts_with(
            r#"{"type":"subscribed","channel_ids":["h:2"],"positions":{"h:2":{"offset":0,"epoch":""#
        ),
        "{text}"
    );
    c.send_text(r#"{"type":"presence","channel_id":"h:1","ref":2}"#)
        .await;
    let id = c.client_id();
    assert_eq!(
        raw(&mut c).await,
        format!(
            r#"{{"type":"presence","channel_id":"h:1","count":1,"clients":[{{"client_id":"{id}","user_id":"n::000000000000000000000001","node_id":"{}"}}],"ref":2}}"#,
            node.node_id
        )
    );
    // The API: the message, then the code; a position ahead is bad_position.
    let (status, _) = http(
        &node,
        "POST",
        "/api/notify/channels",
        Some(r#"{"channel_ids":["h:1"],"data":{}}"#),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(raw(&mut c).await, "{}");
    let (_, history) = http(&node, "GET", "/api/history?channel=h:1", None).await;
    let history: Value = serde_json::from_str(&history).expect("json");
    let epoch = history["epoch"].as_str().expect("epoch");
    let (status, body) = http(
        &node,
        "GET",
        &format!("/api/history?channel=h:1&since_offset=5&epoch={epoch}"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        r#"{"error":"position 5 is ahead of the channel (latest 1)","code":"bad_position"}"#
    );
    let (status, body) = http(&node, "GET", "/api/presence?channel=h:1", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!(
            r#"{{"channel":"h:1","count":1,"clients":[{{"client_id":"{id}","user_id":"n::000000000000000000000001","node_id":"{}"}}]}}"#,
            node.node_id
        )
    );
    let (status, body) = http(&node, "GET", "/api/nodes", None).await;
    assert_eq!(status, 200);
    let prefix = format!(
        r#"{{"nodes":[{{"node_id":"{}","connections":1,"users":1,"channels":4,"subscriptions":4,"ready":true,"version":"{}","uptime_seconds":"#,
        node.node_id,
        env!("CARGO_PKG_VERSION")
    );
    assert!(body.starts_with(&prefix), "{body}");
    assert!(body.ends_with(r#","self":true}]}"#), "{body}");
}
