//! The Cells chat (`/ws/chat`) on one node without Redis: join, post,
//! history with paging, delete, room updates, read-only rooms, JOIN ping
//! expiry, and requests refused with nothing stored.

mod chat_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_support::{names, texts, Chat, SECRET};
use pubmesh_tests::harness::{eventually, patience, Node};
use serde_json::json;

fn refused(reason: &str) -> String {
    format!("pubmesh_cells_chat_refused_total{{reason=\"{reason}\"}}")
}

#[tokio::test]
async fn join_post_history_delete_and_leave() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let text = node.metrics().await;
    for zero in [
        "pubmesh_cells_chat_rooms 0",
        "pubmesh_cells_chat_members 0",
        "pubmesh_cells_chat_messages_total{op=\"posted\"} 0",
        "pubmesh_cells_chat_refused_total{reason=\"not_joined\"} 0",
    ] {
        assert!(text.contains(zero), "{zero} in {text}");
    }

    let mut alice = Chat::open(&node, "alice").await;
    let mut bob = Chat::open(&node, "bob").await;
    let room = alice.join("NODE", "n-1", &["alice"]).await;
    assert_eq!(room["Type"], "NODE");
    assert_eq!(room["RoomTypeObject"], "n-1");
    // The same uuid on every node and after restarts (pinned in the unit tests).
    assert_eq!(room["Uuid"], "de901614-eb96-5222-9ed6-fc886d250a25");
    let uuid = room["Uuid"].as_str().unwrap().to_string();
    bob.join("NODE", "n-1", &["alice", "bob"]).await;
    alice.room_update(&uuid, &["alice", "bob"]).await;

    // POST: author and timestamp from the server, the text sanitised, the
    // message to every member.
    alice.post(&uuid, "<b>hi</b>").await;
    for chat in [&mut alice, &mut bob] {
        let m = chat.message().await;
        assert_eq!(m["Author"], "alice");
        assert_eq!(m["RoomUuid"], uuid.as_str());
        assert_eq!(m["Message"], "&lt;b&gt;hi&lt;/b&gt;");
        let ts: i64 = m["Timestamp"]
            .as_str()
            .expect("int64 as a string")
            .parse()
            .unwrap();
        assert!(ts > 1_700_000_000, "{m}");
        assert_eq!(m["Uuid"].as_str().map(str::len), Some(36));
    }
    for i in 2..=5 {
        alice.post(&uuid, &format!("m{i}")).await;
        assert_eq!(bob.message().await["Message"], format!("m{i}"));
        alice.message().await;
    }

    // Pages count from the newest; a full page is followed by MAY_HAVE_MORE.
    let page = bob.history("NODE", "n-1", Some((0, 2))).await;
    assert_eq!(page[0]["@type"], "ROOM_UPDATE", "{page:?}");
    assert_eq!(names(&page[0]["Room"]["Users"]), ["alice", "bob"]);
    assert_eq!(texts(&page), ["m4", "m5"]);
    let more = page.last().unwrap();
    assert_eq!(more["@type"], "MAY_HAVE_MORE");
    assert_eq!(more["RoomUuid"], uuid.as_str());
    assert_eq!(more["Offset"], 2);
    assert_eq!(more["Limit"], 2);
    assert_eq!(
        more["Timestamp"].as_i64().map(|t| t.to_string()),
        page[1]["Timestamp"].as_str().map(String::from),
        "the first message's timestamp, as a number"
    );
    let last = bob.history("NODE", "n-1", Some((4, 2))).await;
    assert_eq!(texts(&last), ["&lt;b&gt;hi&lt;/b&gt;"]);
    assert_eq!(
        last.len(),
        2,
        "no MAY_HAVE_MORE after a short page: {last:?}"
    );
    let all = bob.history("NODE", "n-1", None).await;
    assert_eq!(texts(&all).len(), 5);

    // DELETE_MSG: not by someone else (even claiming to be the author)...
    let mut target = all[2].clone();
    assert_eq!(target["Message"], "m2");
    bob.client
        .send(json!({"@type": "DELETE_MSG", "Message": target.clone()}))
        .await;
    eventually("not_author counted", patience(20), || async {
        (node.metric(&refused("not_author")).await == 1.0).then_some(())
    })
    .await;
    assert_eq!(texts(&bob.history("NODE", "n-1", None).await).len(), 5);
    // ...by its author: every member gets it, and it leaves the history.
    target["Author"] = json!("mallory");
    alice
        .client
        .send(json!({"@type": "DELETE_MSG", "Message": target.clone()}))
        .await;
    for chat in [&mut alice, &mut bob] {
        let d = chat.client.recv_until(|f| f["@type"] == "DELETE_MSG").await;
        assert_eq!(d["Message"]["Uuid"], target["Uuid"]);
        assert_eq!(d["Message"]["Author"], "alice", "the stored message");
    }
    assert_eq!(
        texts(&bob.history("NODE", "n-1", None).await),
        ["&lt;b&gt;hi&lt;/b&gt;", "m3", "m4", "m5"]
    );

    // LEAVE: the others get the new member list.
    bob.client
        .send(json!({"@type": "LEAVE", "Room": {"Type": "NODE", "RoomTypeObject": "n-1"}}))
        .await;
    alice.room_update(&uuid, &["alice"]).await;
    assert_eq!(
        node.metric("pubmesh_cells_chat_messages_total{op=\"posted\"}")
            .await,
        5.0
    );
    assert_eq!(
        node.metric("pubmesh_cells_chat_messages_total{op=\"deleted\"}")
            .await,
        1.0
    );
    // alice: n-1; bob: the marker room of his history reads.
    assert_eq!(node.metric("pubmesh_cells_chat_members").await, 2.0);
    assert_eq!(node.metric("pubmesh_cells_chat_rooms").await, 2.0);
    drop(alice);
    drop(bob);
    eventually("rooms empty after close", patience(20), || async {
        let members = node.metric("pubmesh_cells_chat_members").await;
        let rooms = node.metric("pubmesh_cells_chat_rooms").await;
        (members == 0.0 && rooms == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn refused_requests_store_nothing_and_bad_frames_close() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let mut alice = Chat::open(&node, "alice").await;
    let mut reader = Chat::open_with(&node, "rita", json!({"chat_readonly": ["NODE:n-1"]})).await;
    let room = alice.join("NODE", "n-1", &["alice"]).await;
    let uuid = room["Uuid"].as_str().unwrap().to_string();
    reader.join("NODE", "n-1", &["alice", "rita"]).await;
    alice.post(&uuid, "kept").await;
    alice.message().await;

    let other = chat_support::room("NODE", "n-2");
    let cases = [
        // Read-only membership: may read, may not post.
        (
            "read_only",
            json!({"@type": "POST", "Message": {"RoomUuid": uuid, "Message": "no"}}),
        ),
        // A room not joined.
        (
            "not_joined",
            json!({"@type": "POST", "Message": {"RoomUuid": "r-x", "Message": "no"}}),
        ),
        ("not_joined", json!({"@type": "HISTORY", "Room": other})),
        (
            "bad_range",
            json!({"@type": "HISTORY", "Room": {"Type": "NODE", "RoomTypeObject": "n-1"},
                             "Message": {"Message": "{\"Offset\":0,\"Limit\":-5}"}}),
        ),
        (
            "bad_range",
            json!({"@type": "HISTORY", "Room": {"Type": "NODE", "RoomTypeObject": "n-1"},
                             "Message": {"Message": "lots"}}),
        ),
        (
            "bad_message",
            json!({"@type": "SHOUT", "Message": {"RoomUuid": uuid, "Message": "no"}}),
        ),
        ("bad_message", json!({"@type": "POST"})),
        (
            "bad_room",
            json!({"@type": "JOIN", "Room": {"Type": "NODE"}}),
        ),
        (
            "not_found",
            json!({"@type": "DELETE_MSG", "Message": {"Uuid": "nope", "RoomUuid": uuid}}),
        ),
    ];
    for (reason, frame) in &cases {
        let before = node.metric(&refused(reason)).await;
        let chat = if *reason == "read_only" {
            &mut reader
        } else {
            &mut alice
        };
        chat.client.send(frame.clone()).await;
        eventually(reason, patience(20), || async {
            (node.metric(&refused(reason)).await == before + 1.0).then_some(())
        })
        .await;
    }
    // An empty text, once sanitised, is refused too.
    alice.post(&uuid, "\u{7}").await;
    // A huge limit reads what there is; alice is still in the room, and
    // nothing else was stored.
    let page = alice.history("NODE", "n-1", Some((0, i64::MAX))).await;
    assert_eq!(texts(&page), ["kept"], "{page:?}");
    assert_eq!(node.metric(&refused("empty_message")).await, 1.0);
    assert_eq!(
        node.metric("pubmesh_cells_chat_messages_total{op=\"posted\"}")
            .await,
        1.0
    );

    // Before subscribing, requests are ignored.
    let mut anon =
        pubmesh_tests::harness::Client::connect_raw(&chat_support::chat_url(&node), None)
            .await
            .unwrap();
    let before = node.metric(&refused("not_subscribed")).await;
    anon.send(json!({"@type": "JOIN", "Room": {"Type": "NODE", "RoomTypeObject": "n-1"}}))
        .await;
    eventually("not_subscribed", patience(20), || async {
        (node.metric(&refused("not_subscribed")).await == before + 1.0).then_some(())
    })
    .await;
    // Text that is not JSON, and an empty token, close with Cells' error
    // frame; a frame over 2,048 bytes closes with 1009.
    anon.send_text("{not json").await;
    let error = anon.recv().await;
    assert_eq!(error["@type"], "error");
    assert_eq!(error["jwt"], "");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("key must be a string"),
        "{error}"
    );
    assert!(anon.expect_close().await.is_some());
    let mut empty =
        pubmesh_tests::harness::Client::connect_raw(&chat_support::chat_url(&node), None)
            .await
            .unwrap();
    empty.send(json!({"@type": "subscribe", "jwt": ""})).await;
    assert_eq!(
        empty.recv().await,
        json!({"@type": "error", "jwt": "", "error": "Empty JWT"})
    );
    let big = "x".repeat(3000);
    alice.post(&uuid, &big).await;
    assert_eq!(alice.client.expect_close().await.map(|c| c.0), Some(1009));
    let page = reader.history("NODE", "n-1", None).await;
    assert_eq!(texts(&page), ["kept"]);
}

#[tokio::test]
async fn a_session_that_stops_pinging_leaves_its_rooms() {
    let node = Node::start(&[
        "--jwt-secret",
        SECRET,
        "--cells-chat-ping-timeout-ms",
        "1500",
    ])
    .await;
    let mut alice = Chat::open(&node, "alice").await;
    let mut bob = Chat::open(&node, "bob").await;
    let room = alice.join("WORKSPACE", "ws-1", &["alice"]).await;
    let uuid = room["Uuid"].as_str().unwrap().to_string();
    bob.join("WORKSPACE", "ws-1", &["alice", "bob"]).await;
    // alice pings (as the web client does every 15 s), bob does not: bob
    // leaves, alice stays.
    let mut pings = tokio::time::interval(Duration::from_millis(300));
    let deadline = tokio::time::Instant::now() + patience(30);
    loop {
        tokio::select! {
            _ = pings.tick() => alice.ping("WORKSPACE", "ws-1").await,
            f = alice.client.recv_within(patience(30)) => {
                if f["@type"] == "ROOM_UPDATE" && names(&f["Room"]["Users"]) == ["alice"] {
                    break;
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "bob never left");
    }
    assert_eq!(node.metric("pubmesh_cells_chat_members").await, 1.0);
    // A ping brings bob back (the room exists), and alice sees him.
    bob.ping("WORKSPACE", "ws-1").await;
    alice.room_update(&uuid, &["alice", "bob"]).await;
    // A ping for a room nobody is in makes no room.
    bob.ping("NODE", "never").await;
    bob.client
        .send(json!({"@type": "HISTORY", "Room": {"Type": "NODE", "RoomTypeObject": "never"}}))
        .await;
    eventually("not joined", patience(20), || async {
        (node.metric(&refused("not_joined")).await == 1.0).then_some(())
    })
    .await;
}

/// An access backend: `write` for rooms whose object starts with `w` (or
/// `m`, the marker rooms of history reads), `read` for `r`, `none`
/// otherwise; it records the users and tokens asked.
async fn access_backend() -> (String, Arc<Mutex<Vec<(String, bool)>>>) {
    use axum::routing::post;
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/access",
        post(
            move |headers: axum::http::HeaderMap, body: axum::Json<serde_json::Value>| {
                let record = record.clone();
                async move {
                    let bearer = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with("Bearer ey"));
                    let user = body["user"].as_str().unwrap_or_default().to_string();
                    record.lock().unwrap().push((user, bearer));
                    let object = body["room"]["RoomTypeObject"].as_str().unwrap_or_default();
                    let access = match object.chars().next() {
                        Some('w' | 'm') => "write",
                        Some('r') => "read",
                        _ => "none",
                    };
                    axum::Json(json!({"access": access}))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/access", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn an_access_backend_decides_who_may_write_read_or_enter() {
    let (url, seen) = access_backend().await;
    let node = Node::start(&["--jwt-secret", SECRET, "--cells-chat-access-url", &url]).await;
    let mut alice = Chat::open(&node, "alice").await;
    let writable = alice.join("NODE", "w-1", &["alice"]).await;
    let readable = alice.join("NODE", "r-1", &["alice"]).await;
    alice
        .client
        .send(json!({"@type": "JOIN", "Room": {"Type": "NODE", "RoomTypeObject": "x-1"}}))
        .await;
    eventually("forbidden", patience(20), || async {
        (node.metric(&refused("forbidden")).await == 1.0).then_some(())
    })
    .await;
    alice.post(readable["Uuid"].as_str().unwrap(), "no").await;
    eventually("read_only", patience(20), || async {
        (node.metric(&refused("read_only")).await == 1.0).then_some(())
    })
    .await;
    alice.post(writable["Uuid"].as_str().unwrap(), "yes").await;
    assert_eq!(alice.message().await["Message"], "yes");
    assert_eq!(
        texts(&alice.history("NODE", "r-1", None).await),
        Vec::<String>::new()
    );
    // Asked once per JOIN (a ping of a joined room does not ask), with the
    // session's token; the forbidden room was not joined.
    alice.ping("NODE", "w-1").await;
    alice
        .client
        .send(json!({"@type": "HISTORY", "Room": {"Type": "NODE", "RoomTypeObject": "x-1"}}))
        .await;
    eventually("not joined", patience(20), || async {
        (node.metric(&refused("not_joined")).await == 1.0).then_some(())
    })
    .await;
    // A new token keeps the backend's answer: r-1 stays read-only.
    let fresh = chat_support::token_with("alice", json!({}));
    alice
        .client
        .send(json!({"@type": "subscribe", "jwt": fresh}))
        .await;
    alice
        .post(readable["Uuid"].as_str().unwrap(), "still no")
        .await;
    eventually("still read_only", patience(20), || async {
        (node.metric(&refused("read_only")).await == 2.0).then_some(())
    })
    .await;
    // w-1, r-1, x-1 and the marker room of the history read.
    let asked = seen.lock().unwrap().clone();
    assert_eq!(asked.len(), 4, "{asked:?}");
    assert!(
        asked
            .iter()
            .all(|(user, bearer)| user == "alice" && *bearer),
        "{asked:?}"
    );

    // A backend that does not answer refuses the JOIN.
    let down = format!(
        "http://127.0.0.1:{}/access",
        pubmesh_tests::harness::free_port()
    );
    let closed = Node::start(&["--jwt-secret", SECRET, "--cells-chat-access-url", &down]).await;
    let mut bob = Chat::open(&closed, "bob").await;
    bob.client
        .send(json!({"@type": "JOIN", "Room": {"Type": "NODE", "RoomTypeObject": "w-2"}}))
        .await;
    eventually("access_unavailable", patience(20), || async {
        (closed.metric(&refused("access_unavailable")).await == 1.0).then_some(())
    })
    .await;
    assert_eq!(closed.metric("pubmesh_cells_chat_members").await, 0.0);
}

#[tokio::test]
async fn a_session_whose_token_expires_leaves_its_rooms() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let mut bob = Chat::open(&node, "bob").await;
    let room = bob.join("WORKSPACE", "ws-9", &["bob"]).await;
    let uuid = room["Uuid"].as_str().unwrap().to_string();
    let mut alice =
        pubmesh_tests::harness::Client::connect_raw(&chat_support::chat_url(&node), None)
            .await
            .unwrap();
    let short =
        pubmesh_tests::harness::hs256_with(SECRET, json!({"sub": "id-alice", "name": "alice"}), 3);
    alice
        .send(json!({"@type": "subscribe", "jwt": short}))
        .await;
    alice
        .send(json!({"@type": "JOIN", "Room": chat_support::room("WORKSPACE", "ws-9")}))
        .await;
    bob.room_update(&uuid, &["alice", "bob"]).await;
    // At expiry alice leaves (bob sees it) and her requests are ignored
    // until she subscribes again.
    bob.room_update(&uuid, &["bob"]).await;
    alice
        .send(json!({"@type": "POST", "Message": {"RoomUuid": uuid, "Message": "late"}}))
        .await;
    eventually("not_subscribed", patience(20), || async {
        (node.metric(&refused("not_subscribed")).await == 1.0).then_some(())
    })
    .await;
    let fresh = chat_support::token_with("alice", json!({}));
    alice
        .send(json!({"@type": "subscribe", "jwt": fresh}))
        .await;
    alice
        .send(json!({"@type": "JOIN", "Room": chat_support::room("WORKSPACE", "ws-9")}))
        .await;
    bob.room_update(&uuid, &["alice", "bob"]).await;
}
