//! Bad input on the Phoenix front-end, from a raw WebSocket client: each
//! gets Phoenix's error reply or a close with a code, and no membership or
//! presence is left once the sockets are gone.

use std::io::Write;

use pubmesh_tests::harness::{eventually, patience, temp_dir, Client, Node};
use pubmesh_tests::phoenix::{call, socket};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn node(extra: &[&str]) -> Node {
    let path = temp_dir("config").join("pubmesh.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| {
            f.write_all(
                b"[[namespaces]]\npattern = \"pres:*\"\npresence = true\njoin_leave = true\n",
            )
        })
        .expect("write config");
    let file = path.to_string_lossy().into_owned();
    let mut args = vec!["--config", file.as_str(), "--max-message-size", "4096"];
    args.extend_from_slice(extra);
    Node::start(&args).await
}

fn error(reason: &str) -> Value {
    json!({"status": "error", "response": {"reason": reason}})
}

#[tokio::test]
async fn bad_frames_get_error_replies_and_leave_no_state() {
    let node = node(&["--max-channels-per-connection", "3"]).await;
    let mut ws = socket(&node, "2.0.0").await;

    let joined = call(&mut ws, json!(["1", "1", "pres:1", "phx_join", {}])).await;
    assert_eq!(
        joined,
        json!(["1", "1", "pres:1", "phx_reply", {"status": "ok", "response": {}}])
    );
    let state = ws.recv_until(|v| v[3] == "presence_state").await;
    assert_eq!(state[0], "1");
    assert_eq!(state[4].as_object().map(|m| m.len()), Some(1), "{state}");
    let hb = call(&mut ws, json!([null, "2", "phoenix", "heartbeat", {}])).await;
    assert_eq!(
        hb,
        json!([null, "2", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );

    let cases = [
        // A push to a topic the socket has not joined.
        (json!([null, "3", "room:2", "shout", {}]), "unmatched topic"),
        (
            json!([null, "4", "room:2", "phx_leave", {}]),
            "unmatched topic",
        ),
        // Patterns cannot be joined; reserved and invalid topics.
        (
            json!(["5", "5", "room:*", "phx_join", {}]),
            "wildcard_topic",
        ),
        (json!(["6", "6", "phoenix", "phx_join", {}]), "bad_topic"),
        (json!(["7", "7", "a{b", "phx_join", {}]), "bad_topic"),
        // Events: unknown protocol events, server-only events, commas.
        (json!(["1", "8", "pres:1", "phx_foo", {}]), "unknown_event"),
        (
            json!(["1", "9", "pres:1", "phx_reply", {}]),
            "unknown_event",
        ),
        (json!(["1", "10", "pres:1", "a,b", {}]), "bad_event"),
        (json!(["1", "11", "pres:1", "", {}]), "bad_event"),
        // Payloads: pushes carry objects, joins take object params.
        (json!(["1", "12", "pres:1", "shout", [1, 2]]), "bad_payload"),
        (
            json!(["13", "13", "room:3", "phx_join", "x"]),
            "bad_payload",
        ),
    ];
    for (frame, reason) in cases {
        let reply = call(&mut ws, frame.clone()).await;
        assert_eq!(reply[4], error(reason), "{frame} -> {reply}");
    }
    // A flood of joins stops at --max-channels-per-connection.
    for (i, topic) in ["room:a", "room:b"].iter().enumerate() {
        let r = json!(format!("j{i}"));
        let reply = call(&mut ws, json!([r, r, topic, "phx_join", {}])).await;
        assert_eq!(reply[4]["status"], "ok", "{reply}");
    }
    let reply = call(&mut ws, json!(["j9", "j9", "room:c", "phx_join", {}])).await;
    assert_eq!(reply[4], error("too_many_channels"));
    // Still usable: a push to a joined topic is broadcast and replied to.
    ws.send(json!(["1", "20", "pres:1", "shout", {"ok": true}]))
        .await;
    let broadcast = ws.recv_until(|v| v[3] == "shout").await;
    assert_eq!(
        broadcast,
        json!([null, null, "pres:1", "shout", {"ok": true}])
    );

    // Frames that are not Phoenix frames at all close the socket (4400).
    ws.send_text(r#"["1","21","pres:1"]"#).await;
    assert_eq!(ws.expect_close().await.map(|c| c.0), Some(4400));
    for text in [
        r#"{"topic":"x"}"#,
        "[1,2,3,4,5]",
        "not json",
        r#"[null,null,"t",7,{}]"#,
    ] {
        let mut ws = socket(&node, "2.0.0").await;
        ws.send_text(text).await;
        assert_eq!(ws.expect_close().await.map(|c| c.0), Some(4400), "{text}");
    }
    // Binary frames in v1, and oversize frames.
    let mut ws = socket(&node, "1.0.0").await;
    ws.send_message(Message::Binary(vec![0u8, 1, 2].into()))
        .await
        .expect("send");
    assert_eq!(ws.expect_close().await.map(|c| c.0), Some(4400));
    let mut ws = socket(&node, "2.0.0").await;
    let big = json!(["1", "1", "room:1", "phx_join", {"pad": "x".repeat(5000)}]);
    ws.send(big).await;
    assert_eq!(ws.expect_close().await.map(|c| c.0), Some(1009));

    // An unknown serializer is refused at connect.
    let url = format!("ws://127.0.0.1:{}/socket/websocket?vsn=3.0.0", node.port);
    assert!(Client::connect_raw(&url, None).await.is_err());

    // Nothing is left behind, once the closed sockets have finished their
    // close handshakes (the gauge drops when a connection task ends, after
    // its memberships are gone).
    eventually(
        "no members, no presence, no connection",
        patience(30),
        || async {
            let (_, channels) = node.get("/api/channels").await;
            let (_, presence) = node.get("/api/presence?channel=pres:1").await;
            let open = node
                .metric("pubmesh_frontend_connections{frontend=\"phoenix\"}")
                .await;
            (channels["channels"] == json!([]) && presence["count"] == 0 && open == 0.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        node.metric("pubmesh_frontend_errors_total{code=\"bad_frame\",frontend=\"phoenix\"}")
            .await,
        6.0
    );
    assert_eq!(
        node.metric("pubmesh_frontend_connections{frontend=\"phoenix\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn v1_object_frames_join_push_and_leave() {
    let node = node(&[]).await;
    let mut ws = socket(&node, "1.0.0").await;
    ws.send(
        json!({"topic": "room:1", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"}),
    )
    .await;
    let joined = ws.recv().await;
    assert_eq!(
        joined,
        json!({"topic": "room:1", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "1"})
    );
    ws.send(json!({"topic": "room:1", "event": "shout", "payload": {"a": 1}, "ref": "2"}))
        .await;
    let broadcast = ws.recv_until(|v| v["event"] == "shout").await;
    assert_eq!(
        broadcast,
        json!({"topic": "room:1", "event": "shout", "payload": {"a": 1}, "ref": null})
    );
    // A v1 frame without `ref` is not a Phoenix frame.
    ws.send(json!({"topic": "room:1", "event": "phx_leave", "payload": {}, "ref": "3"}))
        .await;
    let left = ws.recv_until(|v| v["ref"] == "3").await;
    assert_eq!(left["payload"]["status"], "ok");
    ws.send(json!({"topic": "room:1", "event": "shout", "payload": {}}))
        .await;
    assert_eq!(ws.expect_close().await.map(|c| c.0), Some(4400));
    eventually("no members", patience(30), || async {
        let (_, channels) = node.get("/api/channels").await;
        (channels["channels"] == json!([])).then_some(())
    })
    .await;
}

/// Binary payloads are not supported: the official client's ArrayBuffer
/// push (a v2 binary frame over WebSocket, base64 in a long-poll POST) gets
/// the error reply `bad_payload`, not a hang or a dropped socket, and the
/// next JSON push on the same socket works.
#[tokio::test]
async fn binary_pushes_from_the_official_client_are_refused_with_bad_payload() {
    let node = node(&["--phoenix-longpoll-grace-ms", "500"]).await;
    let endpoint = format!("ws://127.0.0.1:{}/socket", node.port);
    for options in [json!({}), json!({"longpoll": true})] {
        let mut script = pubmesh_tests::js::Script::spawn(
            "phoenix_client.js",
            &[&endpoint, "room:bin", &options.to_string()],
        );
        script.wait_event("joined", patience(30)).await;
        script
            .send_line(&json!({"push": "blob", "base64": "AAECAw=="}).to_string())
            .await;
        let reply = script.wait_event("reply", patience(30)).await;
        assert_eq!(
            (&reply["status"], &reply["response"]),
            (&json!("error"), &json!({"reason": "bad_payload"})),
            "{options}: {reply}"
        );
        script
            .send_line(&json!({"push": "said", "payload": {"n": 1}}).to_string())
            .await;
        let reply = script.wait_event("reply", patience(30)).await;
        assert_eq!(reply["status"], "ok", "{options}: {reply}");
        drop(script);
        node.wait_members("room:bin", 0).await;
    }
    assert_eq!(
        node.metric("pubmesh_frontend_errors_total{code=\"bad_payload\",frontend=\"phoenix\"}")
            .await,
        2.0
    );
}
