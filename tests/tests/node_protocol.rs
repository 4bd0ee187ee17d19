//! The native protocol on one node: every frame type, jac-cloud client flows,
//! membership, acknowledgements and the publish policy.

use std::time::Duration;

use pubmesh_tests::harness::{hs256, Client, Node, ANONYMOUS};
use serde_json::json;

const SECRET: &str = "protocol-secret";

fn quiet() -> Duration {
    Duration::from_millis(300)
}

#[tokio::test]
async fn connection_frame_has_the_jac_cloud_shape() {
    let node = Node::start(&[]).await;
    let mut a = node.client("channel_id=room-1").await;
    assert_eq!(a.info["root_id"], ANONYMOUS);
    assert_eq!(a.info["channel_id"], "room-1");
    assert_eq!(a.info["node_id"], node.node_id.as_str());
    let client_id = a.client_id();
    let parts: Vec<&str> = client_id.splitn(3, ':').collect();
    assert_eq!(parts.len(), 3, "{client_id}");
    assert!(parts[0].parse::<u64>().is_ok(), "{client_id}");
    assert_eq!(parts[1].len(), 32);
    assert!(parts[1]
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(parts[2], node.node_id);

    // Without channel_id the socket gets a fresh `{secs}:{hex32}:{node}`
    // channel: jac-cloud's form, naming the node like a client id.
    let b = node.client("").await;
    let channel = b.channel_id();
    let parts: Vec<&str> = channel.splitn(3, ':').collect();
    assert_eq!(parts.len(), 3, "{channel}");
    assert!(parts[0].parse::<u64>().is_ok(), "{channel}");
    assert_eq!(parts[1].len(), 32, "{channel}");
    assert!(parts[1]
        .bytes()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(parts[2], node.node_id, "{channel}");
    assert_ne!(
        parts[1],
        &client_id[client_id.find(':').unwrap() + 1..][..32]
    );

    // `connection` repeats the frame, echoing ref.
    a.send(json!({"type": "connection", "ref": 9})).await;
    let again = a.recv().await;
    assert_eq!(again["type"], "connection");
    assert_eq!(again["ref"], 9);
    assert_eq!(again["data"]["client_id"], client_id.as_str());
}

#[tokio::test]
async fn channel_messages_reach_every_member_as_raw_data() {
    let node = Node::start(&[]).await;
    let mut a = node.client("channel_id=group").await;
    let mut b = node.client("channel_id=group").await;
    let mut outsider = node.client("channel_id=elsewhere").await;
    let data = json!({"type": "chat", "data": {"message": "hi", "n": 1}});
    a.send(json!({"type": "channel", "channel_ids": ["group"], "data": data}))
        .await;
    assert_eq!(a.recv().await, data, "the sender is a member too");
    assert_eq!(b.recv().await, data);
    outsider.expect_silence(quiet()).await;
}

#[tokio::test]
async fn user_and_client_messages_between_two_authenticated_clients() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let alice = hs256(SECRET, "n::alice", 300);
    let bob = hs256(SECRET, "n::bob", 300);
    let mut a = Client::connect_with_token(&node.ws(""), &alice).await;
    let mut b1 = Client::connect_with_token(&node.ws(""), &bob).await;
    let mut b2 = node.client(&format!("token={bob}")).await;
    assert_eq!(a.root_id(), "n::alice");
    assert_eq!(b1.root_id(), "n::bob");
    assert_eq!(b2.root_id(), "n::bob");

    // user: every connection of bob.
    let dm = json!({"type": "chat", "data": {"to": "bob"}});
    a.send(json!({"type": "user", "root_ids": ["n::bob"], "data": dm}))
        .await;
    assert_eq!(b1.recv().await, dm);
    assert_eq!(b2.recv().await, dm);
    a.expect_silence(quiet()).await;

    // client: exactly one connection.
    let direct = json!({"type": "chat", "data": {"to": "b2"}});
    a.send(json!({"type": "client", "client_ids": [b2.client_id()], "data": direct}))
        .await;
    assert_eq!(b2.recv().await, direct);
    b1.expect_silence(quiet()).await;
}

#[tokio::test]
async fn anonymous_sockets_may_not_message_users_or_clients_by_default() {
    let node = Node::start(&[]).await;
    let mut a = node.client("").await;
    let mut b = node.client("").await;
    a.send(json!({"type": "user", "root_ids": [ANONYMOUS], "data": {"x": 1}, "ref": 1}))
        .await;
    let err = a.recv().await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "forbidden");
    assert_eq!(err["ref"], 1);
    a.send(json!({"type": "client", "client_ids": [b.client_id()], "data": {"x": 1}, "ref": 2}))
        .await;
    assert_eq!(a.recv().await["code"], "forbidden");
    b.expect_silence(quiet()).await;
}

#[tokio::test]
async fn policy_flags_open_direct_messages_and_close_channel_publishing() {
    let node = Node::start(&[
        "--client-user-publish",
        "any",
        "--client-client-publish",
        "any",
        "--client-channel-publish",
        "none",
    ])
    .await;
    let mut a = node.client("channel_id=c").await;
    let mut b = node.client("channel_id=c").await;
    a.send(json!({"type": "client", "client_ids": [b.client_id()], "data": {"k": "v"}}))
        .await;
    assert_eq!(b.recv().await, json!({"k": "v"}));
    a.send(json!({"type": "channel", "channel_ids": ["c"], "data": {"x": 1}}))
        .await;
    assert_eq!(a.recv().await["code"], "forbidden");
    b.expect_silence(quiet()).await;
}

#[tokio::test]
async fn only_members_publish_to_a_channel_by_default() {
    let node = Node::start(&[]).await;
    let mut a = node.client("channel_id=mine").await;
    let mut b = node.client("channel_id=theirs").await;
    a.send(json!({"type": "channel", "channel_ids": ["theirs"], "data": {"x": 1}, "ref": "r1"}))
        .await;
    let err = a.recv().await;
    assert_eq!(err["code"], "forbidden");
    assert_eq!(err["ref"], "r1");
    b.expect_silence(quiet()).await;
}

#[tokio::test]
async fn subscribe_and_unsubscribe_change_what_a_socket_receives() {
    let node = Node::start(&[]).await;
    let mut a = node.client("channel_id=home-a").await;
    let mut b = node.client("channel_id=news").await;
    a.send(json!({"type": "subscribe", "channel_ids": ["news", "sport"], "ref": 1}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"type": "subscribed", "channel_ids": ["news", "sport"], "ref": 1})
    );
    b.send(json!({"type": "channel", "channel_ids": ["news"], "data": {"headline": 1}}))
        .await;
    assert_eq!(a.recv().await, json!({"headline": 1}));
    assert_eq!(b.recv().await, json!({"headline": 1}));

    a.send(json!({"type": "unsubscribe", "channel_ids": ["news"], "ref": 2}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"type": "unsubscribed", "channel_ids": ["news"], "ref": 2})
    );
    b.send(json!({"type": "channel", "channel_ids": ["news"], "data": {"headline": 2}}))
        .await;
    assert_eq!(b.recv().await, json!({"headline": 2}));
    a.expect_silence(quiet()).await;

    // The connect-time channel cannot be left.
    a.send(json!({"type": "unsubscribe", "channel_ids": ["home-a"]}))
        .await;
    let refused = a.recv().await;
    assert_eq!(refused["code"], "bad_request", "{refused}");
    let (status, _) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["home-a"], "data": {"still": true}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(a.recv().await, json!({"still": true}));
}

#[tokio::test]
async fn a_socket_in_several_targeted_channels_gets_one_copy() {
    let node = Node::start(&[]).await;
    let mut a = node.client("channel_id=x").await;
    a.send(json!({"type": "subscribe", "channel_ids": ["y"]}))
        .await;
    a.recv().await;
    a.send(json!({"type": "channel", "channel_ids": ["x", "y"], "data": {"once": true}, "ref": 5}))
        .await;
    assert_eq!(a.recv().await, json!({"once": true}));
    let ack = a.recv().await;
    assert_eq!(ack["type"], "published");
    assert_eq!(ack["ref"], 5);
    assert_eq!(ack["local_deliveries"], 1);
    a.expect_silence(quiet()).await;
}

#[tokio::test]
async fn published_ack_is_sent_only_when_ref_is_given() {
    let node = Node::start(&[]).await;
    let mut a = node.client("channel_id=p").await;
    a.send(json!({"type": "channel", "channel_ids": ["p"], "data": {"n": 1}}))
        .await;
    assert_eq!(a.recv().await, json!({"n": 1}));
    a.expect_silence(quiet()).await;
}

#[tokio::test]
async fn change_user_switches_identity_and_user_routing() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let mut a = node.client("").await;
    assert_eq!(a.root_id(), ANONYMOUS);
    let token = hs256(SECRET, "n::carol", 300);
    a.send(json!({"type": "change_user", "token": format!("Bearer {token}"), "ref": 3}))
        .await;
    let frame = a.recv().await;
    assert_eq!(frame["type"], "connection");
    assert_eq!(frame["ref"], 3);
    assert_eq!(frame["data"]["root_id"], "n::carol");
    assert_eq!(frame["data"]["client_id"], a.client_id().as_str());

    let (status, body) = node
        .post(
            "/api/notify/users",
            json!({"root_ids": ["n::carol"], "data": {"hello": "carol"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.recv().await, json!({"hello": "carol"}));

    // A bad token makes the socket anonymous again.
    a.send(json!({"type": "change_user", "token": "Bearer not-a-jwt"}))
        .await;
    assert_eq!(a.recv().await["data"]["root_id"], ANONYMOUS);
    let (_, body) = node
        .post(
            "/api/notify/users",
            json!({"root_ids": ["n::carol"], "data": {"x": 1}}),
        )
        .await;
    assert_eq!(body["local_deliveries"], 0);
}

#[tokio::test]
async fn too_many_channels_is_refused() {
    let node = Node::start(&["--max-channels-per-connection", "3"]).await;
    let mut a = node.client("").await;
    a.send(json!({"type": "subscribe", "channel_ids": ["a", "b"]}))
        .await;
    assert_eq!(a.recv().await["type"], "subscribed");
    a.send(json!({"type": "subscribe", "channel_ids": ["c"], "ref": 1}))
        .await;
    let err = a.recv().await;
    assert_eq!(err["code"], "too_many_channels");
    assert_eq!(err["ref"], 1);
}

#[tokio::test]
async fn unknown_fields_in_client_frames_are_ignored() {
    let node = Node::start(&[]).await;
    let mut a = node.client("channel_id=u").await;
    a.send(json!({"type": "subscribe", "channel_ids": ["v"], "future_field": {"x": 1}, "ref": 1}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"type": "subscribed", "channel_ids": ["v"], "ref": 1})
    );
    a.send(json!({"type": "channel", "channel_ids": ["v"], "data": {"ok": 1}, "priority": "high"}))
        .await;
    assert_eq!(a.recv().await, json!({"ok": 1}));
    a.send(json!({"type": "connection", "extra": [1, 2]})).await;
    assert_eq!(a.recv().await["type"], "connection");
}

#[tokio::test]
async fn ref_is_echoed_as_sent_for_numbers_and_strings_up_to_64_bytes() {
    let node = Node::start(&[]).await;
    let mut a = node.client("").await;
    let long = "r".repeat(64);
    for reference in [json!(0), json!(-3), json!(1.5), json!("abc"), json!(long)] {
        a.send(json!({"type": "connection", "ref": reference}))
            .await;
        let frame = a.recv().await;
        assert_eq!(frame["type"], "connection", "ref {reference}: {frame}");
        assert_eq!(frame["ref"], reference);
    }
    // Longer than 64 bytes, or not a number or string: refused.
    for reference in [json!("r".repeat(65)), json!(true), json!([1])] {
        a.send(json!({"type": "connection", "ref": reference}))
            .await;
        let frame = a.recv().await;
        assert_eq!(frame["type"], "error", "ref {reference}: {frame}");
        assert_eq!(frame["code"], "bad_request");
    }
}

#[tokio::test]
async fn published_acks_report_local_deliveries_for_every_kind() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let dave = hs256(SECRET, "n::dave", 300);
    let mut a = Client::connect_with_token(&node.ws("channel_id=k"), &dave).await;
    let mut b = Client::connect_with_token(&node.ws("channel_id=k"), &dave).await;
    let mut c = node.client("channel_id=k").await;

    a.send(json!({"type": "channel", "channel_ids": ["k"], "data": {"n": 1}, "ref": "c"}))
        .await;
    // The ack may come before or after the sender's own copy.
    let mut frames = [a.recv().await, a.recv().await];
    frames.sort_by_key(|f| f["type"] == "published");
    assert_eq!(frames[0], json!({"n": 1}));
    assert_eq!(
        frames[1],
        json!({"type": "published", "ref": "c", "local_deliveries": 3, "relayed": false, "relay": "none"})
    );
    assert_eq!(b.recv().await, json!({"n": 1}));
    assert_eq!(c.recv().await, json!({"n": 1}));

    c.send(json!({"type": "user", "root_ids": ["n::dave"], "data": {"n": 2}, "ref": 2}))
        .await;
    // c is anonymous: the default policy refuses it.
    assert_eq!(c.recv().await["code"], "forbidden");

    b.send(json!({"type": "client", "client_ids": [c.client_id()], "data": {"n": 3}, "ref": 3}))
        .await;
    assert_eq!(c.recv().await, json!({"n": 3}));
    assert_eq!(
        b.recv().await,
        json!({"type": "published", "ref": 3, "local_deliveries": 1, "relayed": false, "relay": "none"})
    );
    a.expect_silence(quiet()).await;
}

#[tokio::test]
async fn the_sender_receives_its_own_user_message_once() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let erin = hs256(SECRET, "n::erin", 300);
    let mut a = Client::connect_with_token(&node.ws(""), &erin).await;
    let mut b = Client::connect_with_token(&node.ws(""), &erin).await;
    // The same user twice, and the same client twice: one copy each.
    a.send(
        json!({"type": "user", "root_ids": ["n::erin", "n::erin"], "data": {"to": "me"}, "ref": 1}),
    )
    .await;
    let mut frames = [a.recv().await, a.recv().await];
    frames.sort_by_key(|f| f["type"] == "published");
    assert_eq!(frames[0], json!({"to": "me"}));
    assert_eq!(frames[1]["local_deliveries"], 2);
    assert_eq!(b.recv().await, json!({"to": "me"}));
    b.expect_silence(quiet()).await;

    a.send(json!({"type": "client", "client_ids": [b.client_id(), b.client_id()], "data": {"twice": false}}))
        .await;
    assert_eq!(b.recv().await, json!({"twice": false}));
    b.expect_silence(quiet()).await;
    a.expect_silence(quiet()).await;
}

#[tokio::test]
async fn the_anonymous_id_can_be_configured() {
    let node = Node::start(&["--anonymous-id", "n::public"]).await;
    let mut a = node.client("").await;
    assert_eq!(a.root_id(), "n::public");
    a.send(json!({"type": "change_user", "token": "Bearer nothing-valid"}))
        .await;
    assert_eq!(a.recv().await["data"]["root_id"], "n::public");
}

#[tokio::test]
async fn a_message_to_the_senders_channel_does_not_reach_other_channels() {
    let node = Node::start(&["--client-channel-publish", "any"]).await;
    let mut a = node.client("channel_id=one").await;
    let mut b = node.client("channel_id=two").await;
    let mut c = node.client("channel_id=three").await;
    // With `any`, a socket may publish to a channel it is not in.
    a.send(json!({"type": "channel", "channel_ids": ["two"], "data": {"hop": 1}}))
        .await;
    assert_eq!(b.recv().await, json!({"hop": 1}));
    a.expect_silence(quiet()).await;
    c.expect_silence(quiet()).await;
}

#[tokio::test]
async fn subscriptions_show_in_the_channel_list_and_go_with_the_socket() {
    let node = Node::start(&[]).await;
    let mut a = node.client("channel_id=home").await;
    a.send(json!({"type": "subscribe", "channel_ids": ["extra"]}))
        .await;
    a.recv().await;
    let (_, body) = node.get("/api/channels").await;
    let mut channels = body["channels"].as_array().expect("channels").clone();
    channels.sort_by_key(|c| c["channel"].as_str().map(str::to_string));
    assert_eq!(
        channels,
        vec![
            json!({"channel": "extra", "members": 1}),
            json!({"channel": "home", "members": 1})
        ]
    );
    drop(a);
    pubmesh_tests::harness::eventually(
        "channels emptied after the socket left",
        pubmesh_tests::harness::patience(10),
        || {
            let node = &node;
            async move {
                let (_, body) = node.get("/api/channels").await;
                (body["channels"] == json!([])).then_some(())
            }
        },
    )
    .await;
}
