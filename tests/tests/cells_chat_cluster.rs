//! The Cells chat (`/ws/chat`) on two nodes and Redis: a room's members on
//! both nodes get its messages, deletions and member lists; a session on
//! one node that stops pinging leaves the room for the other node's
//! members; a room's history is in Redis, so it survives a node restart.

mod chat_support;

use std::time::Duration;

use chat_support::{names, texts, Chat, SECRET};
use pubmesh_tests::harness::{patience, two_nodes, Redis};
use serde_json::json;

#[tokio::test]
async fn rooms_span_nodes_and_history_survives_a_restart() {
    let redis = Redis::start().await;
    let url = redis.url();
    let (mut a, b) = two_nodes(&["--redis-url", &url, "--jwt-secret", SECRET]).await;
    let mut alice = Chat::open(&a, "alice").await;
    let mut bob = Chat::open(&b, "bob").await;
    let room = alice.join("NODE", "n-9", &["alice"]).await;
    let uuid = room["Uuid"].as_str().unwrap().to_string();
    let same = bob.join("NODE", "n-9", &["alice", "bob"]).await;
    assert_eq!(same["Uuid"], uuid.as_str(), "one room on both nodes");
    alice.room_update(&uuid, &["alice", "bob"]).await;

    alice.post(&uuid, "from a").await;
    let m = bob.message().await;
    assert_eq!(
        (m["Author"].as_str(), m["Message"].as_str()),
        (Some("alice"), Some("from a"))
    );
    alice.message().await;
    bob.post(&uuid, "from b").await;
    let mine = alice.message().await;
    assert_eq!(mine["Author"], "bob");
    bob.message().await;
    bob.client
        .send(json!({"@type": "DELETE_MSG", "Message": mine.clone()}))
        .await;
    let d = alice
        .client
        .recv_until(|f| f["@type"] == "DELETE_MSG")
        .await;
    assert_eq!(d["Message"]["Uuid"], mine["Uuid"]);
    bob.client.recv_until(|f| f["@type"] == "DELETE_MSG").await;
    alice.post(&uuid, "again from a").await;
    bob.message().await;

    let page = bob.history("NODE", "n-9", Some((0, 1))).await;
    assert_eq!(texts(&page), ["again from a"]);
    assert_eq!(page.last().unwrap()["@type"], "MAY_HAVE_MORE");
    assert_eq!(
        texts(&alice.history("NODE", "n-9", None).await),
        ["from a", "again from a"]
    );

    // alice's socket closes: she leaves the room. Then node a restarts;
    // the history is still there, read through the restarted node.
    drop(alice);
    bob.room_update(&uuid, &["bob"]).await;
    a.restart().await;
    let mut carol = Chat::open(&a, "carol").await;
    let joined = carol.join("NODE", "n-9", &["bob", "carol"]).await;
    assert_eq!(joined["Uuid"], uuid.as_str());
    assert_eq!(
        texts(&carol.history("NODE", "n-9", None).await),
        ["from a", "again from a"]
    );
    bob.room_update(&uuid, &["bob", "carol"]).await;
    // Stored in Redis (a stream per room channel), not in a node.
    let keys = redis.cmd(&["KEYS", "*chat:*"]).await.unwrap_or_default();
    assert!(keys.contains(&uuid), "{keys}");
}

#[tokio::test]
async fn a_session_that_stops_pinging_leaves_the_room_on_every_node() {
    let redis = Redis::start().await;
    let url = redis.url();
    let (a, b) = two_nodes(&[
        "--redis-url",
        &url,
        "--jwt-secret",
        SECRET,
        "--cells-chat-ping-timeout-ms",
        "1500",
    ])
    .await;
    let mut alice = Chat::open(&a, "alice").await;
    let mut bob = Chat::open(&b, "bob").await;
    let room = alice.join("USER", "u-1", &["alice"]).await;
    let uuid = room["Uuid"].as_str().unwrap().to_string();
    bob.join("USER", "u-1", &["alice", "bob"]).await;
    let mut pings = tokio::time::interval(Duration::from_millis(300));
    let deadline = tokio::time::Instant::now() + patience(30);
    loop {
        tokio::select! {
            _ = pings.tick() => alice.ping("USER", "u-1").await,
            f = alice.client.recv_within(patience(30)) => {
                if f["@type"] == "ROOM_UPDATE" && f["Room"]["Uuid"] == uuid.as_str()
                    && names(&f["Room"]["Users"]) == ["alice"] {
                    break;
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "bob never left");
    }
    // bob's node counts no member left.
    pubmesh_tests::harness::eventually("b has no members", patience(20), || async {
        (b.metric("pubmesh_cells_chat_members").await == 0.0).then_some(())
    })
    .await;
}
