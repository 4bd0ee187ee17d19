//! Access is checked again whenever a socket's identity changes
//! (`change_user`, token expiry): it leaves the channels its new identity may
//! not be in, is told with an `unsubscribed` notice, stops receiving them and
//! leaves their presence; channels still allowed stay (issue 9, item 5).
//!
//! Before: a socket that lost its `channels` claim kept receiving a
//! `subscribe = "claim"` channel and stayed in its presence.

use std::io::Write;

use pubmesh_tests::harness::{eventually, hs256_with, patience, temp_dir, Client, Node, ANONYMOUS};
use serde_json::{json, Value};

const SECRET: &str = "recheck-secret";

fn config() -> String {
    let path = temp_dir("access-recheck").join("ns.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| {
            f.write_all(
                br#"
[[namespaces]]
pattern = "vip:*"
subscribe = "claim"
presence = true
join_leave = true
history_size = 10
history_ttl_seconds = 300

[[namespaces]]
pattern = "members:*"
subscribe = "authenticated"
presence = true
"#,
            )
        })
        .expect("config");
    path.to_string_lossy().to_string()
}

async fn node() -> Node {
    let file = config();
    Node::start(&["--config", &file, "--jwt-secret", SECRET]).await
}

fn token(sub: &str, channels: Option<Value>, ttl: i64) -> String {
    let mut claims = json!({"sub": sub});
    if let Some(channels) = channels {
        claims["channels"] = channels;
    }
    hs256_with(SECRET, claims, ttl)
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

async fn subscribe(c: &mut Client, frame: Value) {
    let mut frame = frame;
    frame["type"] = json!("subscribe");
    frame["ref"] = json!("sub");
    c.send(frame).await;
    let reply = c.recv_until(|f| f["ref"] == "sub").await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

/// Client ids listed in a channel's presence.
async fn present(node: &Node, channel: &str) -> Vec<String> {
    let (status, body) = node.get(&format!("/api/presence?channel={channel}")).await;
    assert_eq!(status, 200, "{body}");
    body["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["client_id"].as_str().map(str::to_string))
        .collect()
}

/// The next publication's data (raw or enveloped), skipping presence events.
async fn next_data(c: &mut Client) -> Value {
    loop {
        let frame = c.recv().await;
        match frame["type"].as_str() {
            Some("join" | "leave") => continue,
            Some("publication") => return frame["data"].clone(),
            _ => return frame,
        }
    }
}

/// Publish one message to each channel, in order; `c` must receive exactly
/// those of `expected` (in order), nothing from the others.
async fn receives_only(node: &Node, c: &mut Client, all: &[&str], expected: &[&str], tag: &str) {
    for channel in all {
        publish(node, channel, json!({"to": channel, "tag": tag})).await;
    }
    for channel in expected {
        let data = next_data(c).await;
        assert_eq!(data, json!({"to": channel, "tag": tag}), "{tag}");
    }
    // A marker on a channel it is still in: nothing from the others came between.
    let last = expected.last().expect("a channel it is still in");
    publish(node, last, json!({"marker": tag})).await;
    let data = next_data(c).await;
    assert_eq!(
        data,
        json!({"marker": tag}),
        "{tag}: only the marker may follow"
    );
}

#[tokio::test]
async fn change_user_to_an_identity_without_the_claim_leaves_the_claim_channel() {
    let node = node().await;
    let alice = token("n::alice", Some(json!(["vip:*"])), 300);
    let mut c = Client::connect_with_token(&node.ws(""), &alice).await;
    let me = c.client_id();
    subscribe(
        &mut c,
        json!({"channel_ids": ["vip:room", "members:lobby", "open"], "positioned": false}),
    )
    .await;
    subscribe(
        &mut c,
        json!({"channel_ids": ["vip:hist"], "positioned": true}),
    )
    .await;
    let watcher_token = token("n::watcher", Some(json!(["vip:*"])), 300);
    let mut watcher = Client::connect_with_token(&node.ws(""), &watcher_token).await;
    subscribe(&mut watcher, json!({"channel_ids": ["vip:room"]})).await;
    assert!(present(&node, "vip:room").await.contains(&me));
    let all = ["vip:room", "vip:hist", "members:lobby", "open"];
    receives_only(&node, &mut c, &all, &all, "before").await;

    // A token for another user, authenticated but without the claim.
    let bob = token("n::bob", None, 300);
    c.send(json!({"type": "change_user", "token": format!("Bearer {bob}"), "ref": "cu"}))
        .await;
    let notice = c.recv().await;
    assert_eq!(
        notice,
        json!({"type": "unsubscribed", "channel_ids": ["vip:hist", "vip:room"], "reason": "forbidden"})
    );
    let reply = c.recv().await;
    assert_eq!(reply["ref"], "cu", "{reply}");
    assert_eq!(reply["data"]["root_id"], "n::bob");
    receives_only(
        &node,
        &mut c,
        &all,
        &["members:lobby", "open"],
        "after change_user",
    )
    .await;
    assert!(!present(&node, "vip:room").await.contains(&me));
    let leave = watcher
        .recv_until(|f| f["type"] == "leave" && f["client_id"] == me.as_str())
        .await;
    assert_eq!(leave["channel"], "vip:room");
    assert_eq!(
        node.metric("pubmesh_subscriptions_revoked_total").await,
        2.0
    );
    // It may not come back in with this identity.
    c.send(json!({"type": "subscribe", "channel_ids": ["vip:room"], "ref": "again"}))
        .await;
    assert_eq!(c.recv().await["code"], "forbidden");

    // Anonymous now: the authenticated-only channel goes too, `open` stays.
    c.send(json!({"type": "change_user", "token": null, "ref": "anon"}))
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "unsubscribed", "channel_ids": ["members:lobby"], "reason": "forbidden"})
    );
    assert_eq!(c.recv().await["data"]["root_id"], ANONYMOUS);
    receives_only(&node, &mut c, &all, &["open"], "anonymous").await;
    assert!(!present(&node, "members:lobby").await.contains(&me));
}

/// A native socket whose own `channel_id` needs the claim cannot leave it:
/// losing the claim closes it with 4001.
#[tokio::test]
async fn losing_the_claim_to_the_sockets_own_channel_closes_it_with_4001() {
    let node = node().await;
    let alice = token("n::alice", Some(json!(["vip:*"])), 300);
    let mut c = Client::connect_with_token(&node.ws("channel_id=vip:home"), &alice).await;
    assert_eq!(c.channel_id(), "vip:home");
    let bob = token("n::bob", None, 300);
    c.send(json!({"type": "change_user", "token": format!("Bearer {bob}")}))
        .await;
    assert_eq!(c.expect_close().await.map(|c| c.0), Some(4001));
    eventually("vip:home to empty", patience(10), || async {
        present(&node, "vip:home").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_expiring_token_leaves_the_claim_channel_and_keeps_the_open_one() {
    let node = node().await;
    let brief = token("n::carol", Some(json!(["vip:*"])), 5);
    let mut c = Client::connect_with_token(&node.ws(""), &brief).await;
    let me = c.client_id();
    subscribe(&mut c, json!({"channel_ids": ["vip:room", "open"]})).await;
    assert!(present(&node, "vip:room").await.contains(&me));

    // Its own join event first, then, once the token expires, the notice.
    let join = c.recv().await;
    assert_eq!(
        (&join["type"], &join["client_id"]),
        (&json!("join"), &json!(me))
    );
    let notice = c.recv_within(patience(15)).await;
    assert_eq!(
        notice,
        json!({"type": "unsubscribed", "channel_ids": ["vip:room"], "reason": "forbidden"})
    );
    let frame = c.recv().await;
    assert_eq!(frame["type"], "connection", "{frame}");
    assert_eq!(frame["data"]["root_id"], ANONYMOUS);
    receives_only(&node, &mut c, &["vip:room", "open"], &["open"], "expired").await;
    assert!(!present(&node, "vip:room").await.contains(&me));
    assert_eq!(
        node.metric("pubmesh_subscriptions_revoked_total").await,
        1.0
    );
}
