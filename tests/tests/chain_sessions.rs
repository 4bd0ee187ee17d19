//! chain sessions that outlive their event stream: a `GET` with the same
//! cookie and `sid` within the grace period resumes the session without a
//! rejoin and gets what was buffered, in order; a full buffer's loss is
//! reported; after the grace period POSTs get 410 and nothing is left.
//! Also bad input on `/socket/sse`: refused with chain's error replies or
//! HTTP statuses, never a panic, no state left behind.

use std::io::Write;
use std::time::Duration;

use pubmesh_tests::harness::{eventually, patience, temp_dir, Client, Node};
use pubmesh_tests::sse::Sse;
use serde_json::json;

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
    let mut args = vec!["--config", file.as_str()];
    args.extend_from_slice(extra);
    Node::start(&args).await
}

async fn publish(node: &Node, n: u64) {
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["pres:1"], "data": {"n": n}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["local_deliveries"], 1, "{body}");
}

/// Nothing of chain's sessions is left on `node`.
async fn nothing_left(node: &Node) {
    eventually(
        "no members, no presence, no chain session",
        patience(30),
        || async {
            let (_, channels) = node.get("/api/channels").await;
            let (_, presence) = node.get("/api/presence?channel=pres:1").await;
            let open = node
                .metric("pubmesh_frontend_connections{frontend=\"chain\"}")
                .await;
            (channels["channels"] == json!([]) && presence["count"] == 0 && open == 0.0)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_session_resumes_within_the_grace_period_and_ends_after_it() {
    let node = node(&["--chain-grace-ms", "2000", "--chain-buffer-frames", "3"]).await;
    let mut tab = Sse::open(&node.http(), "t1").await;
    assert_eq!(
        tab.call(json!([0, 1, 1, "pres:1", "_join", {}])).await,
        json!([1, 1, 1, 0])
    );
    let cookie = tab.cookie.clone();

    // Resume: the stream drops, two publications wait, the same cookie and
    // sid get them in order, with no rejoin and no new cookie.
    tab.drop_stream();
    publish(&node, 1).await;
    publish(&node, 2).await;
    assert_eq!(tab.connect("").await, 200);
    assert!(tab.last_headers.get("set-cookie").is_none(), "same session");
    assert_eq!(tab.recv().await, json!([2, "pres:1", "message", {"n": 1}]));
    assert_eq!(tab.recv().await, json!([2, "pres:1", "message", {"n": 2}]));
    assert_eq!(
        tab.call(json!([0, 1, 2, "pres:1", "said", {"x": 1}])).await,
        json!([1, 1, 2, 0]),
        "still joined"
    );
    assert_eq!(tab.cookie, cookie);

    // Overflow: three are kept, the loss of the other two is reported
    // right after them, and what follows arrives as usual.
    tab.drop_stream();
    for n in 10..15 {
        publish(&node, n).await;
    }
    assert_eq!(tab.connect("").await, 200);
    for n in 10..13 {
        assert_eq!(tab.recv().await, json!([2, "pres:1", "message", {"n": n}]));
    }
    assert_eq!(
        tab.recv().await,
        json!([2, "pres:1", "_overflow", {"dropped": 2}])
    );
    publish(&node, 20).await;
    assert_eq!(tab.recv().await, json!([2, "pres:1", "message", {"n": 20}]));

    // A second GET replaces the first stream: the old one ends.
    let mut twin = Sse::new(&node.http(), "t1");
    twin.cookie = tab.cookie.clone();
    assert_eq!(twin.connect("").await, 200);
    assert_eq!(
        tab.next_raw(patience(10)).await,
        None,
        "the old stream ends"
    );
    publish(&node, 21).await;
    assert_eq!(
        twin.recv().await,
        json!([2, "pres:1", "message", {"n": 21}])
    );

    // After the grace period without a stream: gone, and nothing left.
    twin.drop_stream();
    nothing_left(&node).await;
    assert_eq!(tab.post(r#"[0,1,3,"pres:1","said",{}]"#).await.0, 410);
    // A GET with the old cookie starts a new session (a new cookie).
    assert_eq!(tab.connect("").await, 200);
    assert_ne!(tab.cookie, cookie);
    assert_eq!(
        tab.call(json!([0, 1, 1, "pres:1", "_join", {}])).await,
        json!([1, 1, 1, 0])
    );
    assert_eq!(node.channel_members("pres:1").await, 1);
}

#[tokio::test]
async fn bad_input_is_refused_and_leaves_nothing_behind() {
    let node = node(&[
        "--chain-grace-ms",
        "500",
        "--max-message-size",
        "4096",
        "--max-channels-per-connection",
        "3",
    ])
    .await;
    let mut tab = Sse::open(&node.http(), "bad").await;
    // Not a chain push at all: 400, and an error reply when the refs can
    // be read.
    for body in [
        "not json",
        "{}",
        "[0,1]",
        r#"[0,"1",1,"t","e"]"#,
        r#"[1,1,1,0]"#,
        r#"[2,"t","e",{}]"#,
        r#"[9,1,1,"t","e"]"#,
    ] {
        let (status, text) = tab.post(body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains("bad_message"), "{text}");
    }
    let (status, _) = tab.post(r#"[0,4,5,7,"_join",{}]"#).await;
    assert_eq!(status, 400);
    assert_eq!(
        tab.recv().await,
        json!([1, 4, 5, 1, {"reason": "bad_message"}])
    );
    // Oversize bodies: 413; a bad sid: 400.
    let big = format!(
        r#"[0,1,1,"pres:1","_join",{{"pad":"{}"}}]"#,
        "x".repeat(5000)
    );
    assert_eq!(tab.post(&big).await.0, 413);
    let bad_sid = Sse::new(&node.http(), "a%20b");
    assert_eq!(bad_sid.post("[]").await.0, 400);

    // Pushes before a join, wildcards, bad events and payloads, a flood.
    let refusals = [
        (json!([0, 1, 1, "pres:1", "said", {}]), "unmatched topic"),
        (
            json!([0, 1, 2, "pres:*", "_join", {}]),
            "joining topics with wildcard is not allowed",
        ),
        (json!([0, 1, 3, "a{b", "_join", {}]), "unmatched topic"),
    ];
    for (message, reason) in refusals {
        assert_eq!(
            tab.call(message.clone()).await,
            json!([1, message[1], message[2], 1, {"reason": reason}]),
            "{message}"
        );
    }
    assert_eq!(
        tab.call(json!([0, 2, 2, "pres:1", "_join", {}])).await,
        json!([1, 2, 2, 0])
    );
    for (message, reason) in [
        (json!([0, 2, 3, "pres:1", "_close", {}]), "bad_event"),
        (json!([0, 2, 4, "pres:1", "said", [1, 2]]), "bad_payload"),
        (json!([0, 2, 5, "pres:1", "", {}]), "bad_event"),
    ] {
        assert_eq!(
            tab.call(message.clone()).await,
            json!([1, message[1], message[2], 1, {"reason": reason}]),
            "{message}"
        );
    }
    for i in 0..3 {
        let topic = format!("room:{i}");
        let reply = tab
            .call(json!([0, 10 + i, 10 + i, topic, "_join", {}]))
            .await;
        let expected = if i < 2 {
            json!([1, 10 + i, 10 + i, 0])
        } else {
            json!([1, 12, 12, 1, {"reason": "too_many_channels"}])
        };
        assert_eq!(reply, expected);
    }
    // A Phoenix socket sees the chain session in the topic's presence.
    let url = format!("ws://127.0.0.1:{}/socket/websocket?vsn=2.0.0", node.port);
    let mut phoenix = Client::connect_raw(&url, None).await.expect("phoenix");
    phoenix
        .send(json!(["1", "1", "pres:1", "phx_join", {}]))
        .await;
    let state = phoenix.recv_until(|v| v[3] == "presence_state").await;
    let metas: usize = state[4]
        .as_object()
        .map(|m| {
            m.values()
                .map(|u| u["metas"].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(metas, 2, "{state}");
    drop(phoenix);

    // Still usable; then the stream goes and the session expires.
    assert_eq!(
        tab.call(json!([0, 2, 30, "pres:1", "said", {"ok": true}]))
            .await,
        json!([1, 2, 30, 0])
    );
    tab.drop_stream();
    nothing_left(&node).await;
    assert_eq!(tab.post(r#"[0,2,31,"pres:1","said",{}]"#).await.0, 410);
    let errors =
        |code: &str| format!("pubmesh_frontend_errors_total{{code=\"{code}\",frontend=\"chain\"}}");
    assert_eq!(node.metric(&errors("bad_message")).await, 8.0);
    assert_eq!(node.metric(&errors("too_large")).await, 1.0);
    assert_eq!(node.metric(&errors("too_many_channels")).await, 1.0);
    assert!(node.metric(&errors("gone")).await >= 1.0);
    let (status, _) = node.get("/api/nodes").await;
    assert_eq!(status, 200, "the node is still up");
    tab.expect_silence(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn a_drain_ends_sessions_with_a_close_event() {
    let mut node = node(&["--drain-seconds", "2"]).await;
    let mut tab = Sse::open(&node.http(), "d").await;
    assert_eq!(
        tab.call(json!([0, 1, 1, "pres:1", "_join", {}])).await,
        json!([1, 1, 1, 0])
    );
    node.sigterm();
    // `event: close` with the WebSocket close code and reason, then the end.
    assert_eq!(
        tab.next_raw(patience(10)).await.as_deref(),
        Some("1012 reconnect")
    );
    assert_eq!(tab.next_raw(patience(10)).await, None);
    assert!(node.wait_exit(patience(20)).await.success());
}

#[tokio::test]
async fn posts_over_the_client_rate_get_429_and_are_not_dispatched() {
    let node = node(&["--client-rate", "1", "--client-burst", "2"]).await;
    let mut tab = Sse::open(&node.http(), "r").await;
    // Three POSTs in a row (well within a second): the bucket holds two.
    assert_eq!(tab.post(r#"[0,1,1,"pres:1","_join",{}]"#).await.0, 200);
    assert_eq!(tab.post(r#"[0,1,2,"pres:1","said",{}]"#).await.0, 200);
    let (status, body) = tab.post(r#"[0,1,3,"pres:1","said",{}]"#).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("rate_limited"), "{body}");
    // The join and the first push were dispatched, the last was not.
    assert_eq!(tab.recv().await, json!([1, 1, 1, 0]));
    let mut got = vec![tab.recv().await, tab.recv().await];
    got.sort_by_key(|v| v.to_string());
    assert_eq!(
        got,
        vec![json!([1, 1, 2, 0]), json!([2, "pres:1", "said", {}])]
    );
    tab.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(
        node.metric("pubmesh_frontend_errors_total{code=\"rate_limited\",frontend=\"chain\"}")
            .await,
        1.0
    );
}
