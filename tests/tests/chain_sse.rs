//! chain's protocol at `/socket/sse` against real nodes: the event stream
//! and POSTs, chain's replies and refusals byte for byte, topics as mesh
//! channels shared with Phoenix and native clients across two nodes.

use std::time::Duration;

use pubmesh_tests::harness::{eventually, patience, two_nodes, Client, Node, Redis};
use pubmesh_tests::sse::Sse;
use serde_json::{json, Value};

/// The next event, raw (patiently).
async fn raw(tab: &mut Sse) -> String {
    tab.next_raw(patience(10)).await.expect("an event")
}

/// POST exactly these bytes (accepted) and read the next event.
async fn exchange(tab: &mut Sse, body: &str) -> String {
    let (status, text) = tab.post(body).await;
    assert_eq!(status, 200, "POST {body}: {text}");
    raw(tab).await
}

#[tokio::test]
async fn stream_post_replies_and_refusals_byte_for_byte() {
    let node = Node::start(&[]).await;
    let mut tab = Sse::open(&node.http(), "tab1").await;
    let h = &tab.last_headers;
    assert_eq!(h["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(
        h["cache-control"],
        "private, no-cache, no-store, must-revalidate, max-age=0"
    );
    let set = h["set-cookie"].to_str().expect("ascii").to_string();
    assert!(
        set.starts_with("_sse_d4edab26=tab1=") && set.contains("; Path=/socket/sse;"),
        "{set}"
    );

    // chain's serializer vectors, sent as they are: the join and the leave
    // are answered; the empty topic was never joined.
    assert_eq!(
        exchange(&mut tab, r#"[0,2,3,"room:1234","_join",{"param1":"foo"}]"#).await,
        "[1,2,3,0]"
    );
    assert_eq!(node.channel_members("room:1234").await, 1);
    assert_eq!(
        exchange(&mut tab, r#"[0,2,4,"room:1234","_leave",{}]"#).await,
        "[1,2,4,0]"
    );
    assert_eq!(
        exchange(&mut tab, r#"[0,2,4,"",""]"#).await,
        r#"[1,2,4,1,{"reason":"unmatched topic"}]"#
    );

    // Join, push (broadcast to the topic, the pusher included), API publish.
    assert_eq!(
        exchange(&mut tab, r#"[0,5,5,"room:1","_join",{}]"#).await,
        "[1,5,5,0]"
    );
    tab.send(json!([0, 5, 6, "room:1", "shout", {"text": "hi"}]))
        .await;
    let mut got = vec![raw(&mut tab).await, raw(&mut tab).await];
    got.sort();
    assert_eq!(
        got,
        vec![
            "[1,5,6,0]".to_string(),
            r#"[2,"room:1","shout",{"text":"hi"}]"#.to_string()
        ]
    );
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["room:1"], "event": "news", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(raw(&mut tab).await, r#"[2,"room:1","news",{"n":1}]"#);
    node.post(
        "/api/notify/channels",
        json!({"channel_ids": ["room:1"], "data": {"n": 2}}),
    )
    .await;
    assert_eq!(raw(&mut tab).await, r#"[2,"room:1","message",{"n":2}]"#);

    // chain's refusals.
    assert_eq!(
        exchange(&mut tab, r#"[0,7,7,"room:*","_join",{}]"#).await,
        r#"[1,7,7,1,{"reason":"joining topics with wildcard is not allowed"}]"#
    );
    assert_eq!(
        exchange(&mut tab, r#"[0,8,8,"room:2","shout",{}]"#).await,
        r#"[1,8,8,1,{"reason":"unmatched topic"}]"#
    );
    assert_eq!(
        exchange(&mut tab, r#"[0,5,9,"room:1","a,b",{}]"#).await,
        r#"[1,5,9,1,{"reason":"commas are not allowed in event"}]"#
    );
    // A rejoin under a new join ref closes the old one first.
    assert_eq!(
        exchange(&mut tab, r#"[0,10,10,"room:1","_join",{}]"#).await,
        r#"[0,5,5,"room:1","_close"]"#
    );
    assert_eq!(raw(&mut tab).await, "[1,10,10,0]");
    assert_eq!(
        exchange(&mut tab, r#"[0,10,11,"room:1","_leave",{}]"#).await,
        "[1,10,11,0]"
    );
    assert_eq!(node.channel_members("room:1").await, 0);

    // Without the cookie, or with another, there is no session: 410.
    let mut stranger = Sse::new(&node.http(), "tab1");
    assert_eq!(stranger.post("[0,1,1,\"a\",\"_join\"]").await.0, 410);
    stranger.cookie = Some("_sse_d4edab26=tab1=0123".into());
    assert_eq!(stranger.post("[0,1,1,\"a\",\"_join\"]").await.0, 410);
    // Another tab (sid) with the same cookie has no session either.
    let mut other_tab = Sse::new(&node.http(), "tab2");
    other_tab.cookie = tab.cookie.clone();
    assert_eq!(other_tab.post("[0,1,1,\"a\",\"_join\"]").await.0, 410);
    // Its own GET starts one; the cookie then holds both tabs.
    assert_eq!(other_tab.connect("").await, 200);
    let both = other_tab.cookie.clone().expect("cookie");
    assert!(both.contains("tab1=") && both.contains("&tab2="), "{both}");
    assert_eq!(
        exchange(&mut other_tab, r#"[0,1,1,"room:1","_join",{}]"#).await,
        "[1,1,1,0]"
    );
    assert_eq!(node.channel_members("room:1").await, 1);
    tab.expect_silence(Duration::from_millis(300)).await;
    assert!(
        node.metric("pubmesh_frontend_messages_in_total{frontend=\"chain\"}")
            .await
            >= 11.0
    );
}

/// A Phoenix v2 frame and the reply to it.
async fn phoenix_call(ws: &mut Client, frame: Value) -> Value {
    let reference = frame[1].clone();
    ws.send(frame).await;
    ws.recv_until(|v| v[1] == reference && v[3] == "phx_reply")
        .await
}

#[tokio::test]
async fn chain_phoenix_and_native_clients_share_a_channel_across_two_nodes() {
    let redis = Redis::start().await;
    let url = redis.url();
    let (a, b) = two_nodes(&["--redis-url", &url]).await;

    let mut chain = Sse::open(&a.http(), "t").await;
    assert_eq!(
        chain.call(json!([0, 1, 1, "room:x", "_join", {}])).await,
        json!([1, 1, 1, 0])
    );
    let phoenix_url = format!("ws://127.0.0.1:{}/socket/websocket?vsn=2.0.0", b.port);
    let mut phoenix = Client::connect_raw(&phoenix_url, None)
        .await
        .expect("phoenix");
    let joined = phoenix_call(&mut phoenix, json!(["1", "1", "room:x", "phx_join", {}])).await;
    assert_eq!(joined[4]["status"], "ok", "{joined}");
    let mut native = Client::connect(&b.ws("")).await;
    native
        .send(json!({"type": "subscribe", "channel_ids": ["room:x"], "ref": 1}))
        .await;
    assert_eq!(
        native.recv_until(|v| v["ref"] == 1).await["type"],
        "subscribed"
    );
    for node in [&a, &b] {
        eventually("both nodes see the members", patience(10), || async move {
            let (_, body) = node.get("/api/channels").await;
            let n = body["channels"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["channel"] == "room:x"))
                .and_then(|c| c["members"].as_u64());
            (n == Some(3)).then_some(())
        })
        .await;
    }

    // One message from each.
    chain
        .send(json!([0, 1, 2, "room:x", "said", {"from": "chain"}]))
        .await;
    phoenix
        .send(json!(["1", "2", "room:x", "said", {"from": "phoenix"}]))
        .await;
    native
        .send(json!({"type": "channel", "channel_ids": ["room:x"], "data": {"from": "native"}}))
        .await;

    // Each client gets each message once, in its own framing.
    let mut seen = Vec::new();
    let mut replies = 0;
    while seen.len() < 3 {
        let m = chain.recv().await;
        if m[0] == 1 {
            assert_eq!(m, json!([1, 1, 2, 0]));
            replies += 1;
            continue;
        }
        assert_eq!(m[1], "room:x");
        seen.push((m[2].as_str().unwrap().to_string(), m[3]["from"].clone()));
    }
    seen.sort_by_key(|(_, from)| from.to_string());
    assert_eq!(
        seen,
        vec![
            ("said".to_string(), json!("chain")),
            ("message".to_string(), json!("native")),
            ("said".to_string(), json!("phoenix")),
        ]
    );
    let mut froms = Vec::new();
    while froms.len() < 3 {
        let m = phoenix.recv().await;
        if m[3] == "phx_reply" {
            assert_eq!((&m[1], &m[4]["status"]), (&json!("2"), &json!("ok")), "{m}");
            continue;
        }
        assert_eq!((&m[0], &m[2]), (&Value::Null, &json!("room:x")), "{m}");
        froms.push(m[4]["from"].as_str().unwrap().to_string());
    }
    froms.sort();
    assert_eq!(froms, ["chain", "native", "phoenix"]);
    let mut froms = Vec::new();
    while froms.len() < 3 {
        let m = native.recv_until(|v| v.get("from").is_some()).await;
        froms.push(m["from"].as_str().unwrap().to_string());
    }
    froms.sort();
    assert_eq!(froms, ["chain", "native", "phoenix"]);
    if replies == 0 {
        assert_eq!(chain.recv().await, json!([1, 1, 2, 0]));
    }
    // And nothing twice.
    chain.expect_silence(Duration::from_millis(500)).await;
    native.expect_silence(Duration::from_millis(100)).await;
}
