//! jac-cloud client flows, frame for frame as jac-cloud's websocket guide
//! shows them: a browser client that authenticates with `change_user`, an
//! npm `ws` client with an `Authorization` header, group chat through
//! `?channel_id`, direct chat through `client_ids`, user chat through
//! `root_ids`, and the `connection` event. A jac-cloud client must see exactly
//! the frames it expects: no acknowledgements, no envelopes.

use std::time::Duration;

use pubmesh_tests::harness::{hs256, Client, Node, ANONYMOUS};
use serde_json::{json, Value};

const SECRET: &str = "jac-secret";

fn quiet() -> Duration {
    Duration::from_millis(300)
}

fn chat(text: &str) -> Value {
    json!({"type": "chat", "data": {"any_field": text}})
}

#[tokio::test]
async fn a_browser_client_authenticates_with_change_user_after_connecting() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    // `new WebSocket("ws://…/websocket")`: no header, no query.
    let mut browser = node.client("").await;
    assert_eq!(browser.root_id(), ANONYMOUS);
    let client_id = browser.client_id();
    let channel_id = browser.channel_id();

    // client.onopen: send change_user with "Bearer {token}" and no ref.
    let token = hs256(SECRET, "n::672b35cec309e5ef8469c372", 300);
    browser
        .send(json!({"type": "change_user", "token": format!("Bearer {token}")}))
        .await;
    let frame = browser.recv().await;
    assert_eq!(frame["type"], "connection", "{frame}");
    assert!(frame.get("ref").is_none(), "no ref was sent: {frame}");
    let data = &frame["data"];
    assert_eq!(data["root_id"], "n::672b35cec309e5ef8469c372");
    assert_eq!(data["client_id"], client_id.as_str(), "same socket");
    assert_eq!(data["channel_id"], channel_id.as_str(), "same channel");

    // Now reachable as that user.
    let mut friend =
        Client::connect_with_token(&node.ws(""), &hs256(SECRET, "n::friend", 300)).await;
    friend
        .send(json!({"type": "user", "root_ids": ["n::672b35cec309e5ef8469c372"], "data": chat("hello")}))
        .await;
    assert_eq!(browser.recv().await, chat("hello"));
    friend.expect_silence(quiet()).await;
}

#[tokio::test]
async fn change_user_migrates_between_public_and_authenticated_users() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let token = hs256(SECRET, "n::migrant", 300);
    let mut c = node.client("channel_id=lobby").await;

    // A bare JWT (without "Bearer ") is accepted too.
    c.send(json!({"type": "change_user", "token": token})).await;
    assert_eq!(c.recv().await["data"]["root_id"], "n::migrant");

    // A null token goes back to the public user.
    c.send(json!({"type": "change_user", "token": null})).await;
    let frame = c.recv().await;
    assert_eq!(frame["type"], "connection");
    assert_eq!(frame["data"]["root_id"], ANONYMOUS);
    assert_eq!(frame["data"]["channel_id"], "lobby");

    // So does a change_user without any token.
    c.send(json!({"type": "change_user", "token": format!("Bearer {token}")}))
        .await;
    assert_eq!(c.recv().await["data"]["root_id"], "n::migrant");
    c.send(json!({"type": "change_user"})).await;
    assert_eq!(c.recv().await["data"]["root_id"], ANONYMOUS);

    // The public user is no longer reachable as the old user.
    let (status, body) = node
        .post(
            "/api/notify/users",
            json!({"root_ids": ["n::migrant"], "data": chat("gone")}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["local_deliveries"], 0);
    c.expect_silence(quiet()).await;
}

#[tokio::test]
async fn group_chat_through_the_channel_id_query_parameter() {
    let node = Node::start(&[]).await;
    let mut alice = node.client("channel_id=anystring").await;
    let mut bob = node.client("channel_id=anystring").await;
    let mut carol = node.client("channel_id=another").await;
    assert_eq!(alice.channel_id(), "anystring");
    assert_eq!(bob.channel_id(), "anystring");

    // "target channel_id from connection event".
    let target = bob.channel_id();
    bob.send(json!({"type": "channel", "channel_ids": [target], "data": chat("group")}))
        .await;
    assert_eq!(alice.recv().await, chat("group"));
    assert_eq!(bob.recv().await, chat("group"));
    // jac-cloud sends no acknowledgement: nothing else arrives.
    bob.expect_silence(quiet()).await;
    alice.expect_silence(quiet()).await;
    carol.expect_silence(quiet()).await;
}

#[tokio::test]
async fn direct_chat_to_a_client_id_from_the_connection_event() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    // npm `ws` client: Authorization header on the upgrade.
    let mut sender = Client::connect_with_token(&node.ws(""), &hs256(SECRET, "n::s", 300)).await;
    // The receiver is anonymous; being a target needs no authentication.
    let mut receiver = node.client("").await;
    let mut other = node.client("").await;
    sender
        .send(
            json!({"type": "client", "client_ids": [receiver.client_id()], "data": chat("direct")}),
        )
        .await;
    assert_eq!(receiver.recv().await, chat("direct"));
    sender.expect_silence(quiet()).await;
    other.expect_silence(quiet()).await;
}

#[tokio::test]
async fn user_chat_reaches_every_client_of_the_target_user() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let token = hs256(SECRET, "n::many", 300);
    let mut sender = Client::connect_with_token(&node.ws(""), &hs256(SECRET, "n::s", 300)).await;
    let mut tabs = Vec::new();
    for _ in 0..3 {
        tabs.push(Client::connect_with_token(&node.ws(""), &token).await);
    }
    // "target root_id from connection event".
    let target = tabs[0].root_id();
    sender
        .send(json!({"type": "user", "root_ids": [target], "data": chat("all tabs")}))
        .await;
    for tab in tabs.iter_mut() {
        assert_eq!(tab.recv().await, chat("all tabs"));
    }
    sender.expect_silence(quiet()).await;
}

#[tokio::test]
async fn the_connection_event_returns_the_connection_info() {
    let node = Node::start(&[]).await;
    let mut c = node.client("channel_id=info").await;
    c.send(json!({"type": "connection"})).await;
    let frame = c.recv().await;
    assert_eq!(frame["type"], "connection");
    assert_eq!(frame["data"], c.info, "the same info as on connect");
    let keys: Vec<&String> = frame["data"]
        .as_object()
        .expect("data object")
        .keys()
        .collect();
    for key in ["client_id", "root_id", "channel_id"] {
        assert!(frame["data"][key].is_string(), "{key} in {frame}");
    }
    assert!(keys.len() <= 4, "only the documented fields: {frame}");
}

#[tokio::test]
async fn the_payload_arrives_byte_for_byte() {
    let node = Node::start(&[]).await;
    let mut a = node.client("channel_id=bytes").await;
    let mut b = node.client("channel_id=bytes").await;
    // Key order, spacing, unicode escapes and number spellings are kept.
    let data = r#"{"z":1, "a":{"type":"chat"},"n":1.50,"u":"\u00e9t\u00e9","e":[]}"#;
    a.send_text(&format!(
        r#"{{"type":"channel","channel_ids":["bytes"],"data":{data}}}"#
    ))
    .await;
    let got = b.recv_or_end().await.expect("a frame");
    assert_eq!(got, data);
    assert_eq!(a.recv_or_end().await.expect("a frame"), data);
}
