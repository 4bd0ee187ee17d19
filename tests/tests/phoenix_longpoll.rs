//! Phoenix long-polling at `/socket/longpoll`: the official `phoenix`
//! client's LongPoll transport (under node, over fetch) against two nodes
//! and Redis beside a native client, the protocol's statuses from a raw
//! HTTP client, and the session's end after the grace period.

use pubmesh_tests::harness::{eventually, patience, two_nodes, Node, Redis};

/// The session token of a new long-polling session on `base`.
async fn open(base: &str) -> String {
    let opened = get(&format!("{base}/socket/longpoll?vsn=2.0.0")).await;
    assert_eq!(opened["status"], 410, "{opened}");
    opened["token"].as_str().expect("token").to_string()
}
use pubmesh_tests::js::Script;
use serde_json::{json, Value};

async fn get(url: &str) -> Value {
    let response = reqwest::get(url).await.expect("GET");
    assert_eq!(response.status(), 200);
    response.json().await.expect("JSON")
}

async fn post(url: &str, body: &str) -> Value {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-ndjson")
        .body(body.to_string())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    response.json().await.expect("JSON")
}

/// Poll until the session sends frames; returns them, decoded.
async fn frames(base: &str, token: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = get(&format!("{base}/socket/longpoll?vsn=2.0.0&token={token}")).await;
        match v["status"].as_u64() {
            Some(200) => {
                assert_eq!(v["token"], token);
                for m in v["messages"].as_array().expect("messages") {
                    out.push(serde_json::from_str(m.as_str().expect("a string")).expect("frame"));
                }
            }
            Some(204) => {}
            _ => panic!("poll: {v}"),
        }
    }
    out
}

async fn phoenix_connections(node: &Node) -> f64 {
    node.metric("pubmesh_frontend_connections{frontend=\"phoenix\"}")
        .await
}

/// A publication through `node` with event `news` reaches the script.
async fn news_reaches(node: &Node, topic: &str, n: u64, script: &mut Script) {
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": [topic], "event": "news", "data": {"n": n}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let m = script
        .wait_for("news", patience(30), |v| v["event"] == "message")
        .await;
    assert_eq!(
        (&m["name"], &m["payload"]),
        (&json!("news"), &json!({"n": n}))
    );
}

#[tokio::test]
async fn the_official_long_poll_transport_joins_pushes_and_receives_across_nodes() {
    let redis = Redis::start().await;
    let url = redis.url();
    let (a, b) = two_nodes(&["--redis-url", &url, "--phoenix-longpoll-grace-ms", "1500"]).await;
    let endpoint = format!("ws://127.0.0.1:{}/socket", a.port);
    let mut script = Script::spawn(
        "phoenix_client.js",
        &[&endpoint, "room:1", &json!({"longpoll": true}).to_string()],
    );
    script.wait_event("open", patience(30)).await;
    let joined = script.wait_event("joined", patience(30)).await;
    assert_eq!(joined["response"], json!({}));
    let mut native = pubmesh_tests::harness::Client::connect(&b.ws("")).await;
    native
        .send(json!({"type": "subscribe", "channel_ids": ["room:1"], "ref": 1}))
        .await;
    native.recv_until(|v| v["ref"] == 1).await;
    b.wait_members("room:1", 2).await;

    // A publication on the other node, with an event name.
    news_reaches(&b, "room:1", 1, &mut script).await;

    // A push: replied to, broadcast to the channel (the pusher too).
    script
        .send_line(&json!({"push": "said", "payload": {"from": "lp"}}).to_string())
        .await;
    let reply = script
        .wait_for("the reply", patience(30), |v| v["event"] == "reply")
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(
        native.recv_until(|v| v.get("from").is_some()).await,
        json!({"from": "lp"})
    );

    // The client goes away: after the grace period its session ends and
    // leaves the channel.
    drop(script);
    b.wait_members("room:1", 1).await;
    eventually("no Phoenix session on a", patience(30), || async {
        (phoenix_connections(&a).await == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn long_poll_statuses_from_a_raw_client() {
    let redis = Redis::start().await;
    let url = redis.url();
    let (a, b) = two_nodes(&["--redis-url", &url, "--jwt-secret", "s3cret"]).await;
    let (base, other) = (a.http(), b.http());

    // A connect: 410 with the session's token.
    let opened = get(&format!("{base}/socket/longpoll?vsn=2.0.0")).await;
    assert_eq!(opened["status"], 410, "{opened}");
    let token = opened["token"].as_str().expect("token").to_string();
    assert!(token.starts_with("lp."), "{token}");
    // Frames in one POST, one per line; the answers come with the polls.
    let posted = post(
        &format!("{base}/socket/longpoll?vsn=2.0.0&token={token}"),
        "[\"1\",\"1\",\"room:2\",\"phx_join\",{}]\n[null,\"2\",\"phoenix\",\"heartbeat\",{}]",
    )
    .await;
    assert_eq!(posted, json!({"status": 200}));
    let got = frames(&base, &token, 2).await;
    assert_eq!(
        got,
        vec![
            json!(["1", "1", "room:2", "phx_reply", {"status": "ok", "response": {}}]),
            json!([null, "2", "phoenix", "phx_reply", {"status": "ok", "response": {}}]),
        ]
    );
    a.wait_members("room:2", 1).await;
    // Nothing queued: the poll waits, then 204.
    let idle = get(&format!("{base}/socket/longpoll?vsn=2.0.0&token={token}")).await;
    assert_eq!(idle, json!({"status": 204, "token": token}));

    // The other node does not hold the session: 410, for polls and POSTs.
    let elsewhere = format!("{other}/socket/longpoll?vsn=2.0.0&token={token}");
    assert_eq!(get(&elsewhere).await, json!({"status": 410}));
    assert_eq!(post(&elsewhere, "[]").await, json!({"status": 410}));
    // An invalid JWT is refused at connect.
    let refused = get(&format!("{base}/socket/longpoll?vsn=2.0.0&token=not.a.jwt")).await;
    assert_eq!(refused, json!({"status": 403}));

    // A frame that is no Phoenix frame ends the session (4400): 410 after.
    let bad = post(
        &format!("{base}/socket/longpoll?vsn=2.0.0&token={token}"),
        "[1,2]",
    )
    .await;
    assert_eq!(bad, json!({"status": 410}));
    let gone = get(&format!("{base}/socket/longpoll?vsn=2.0.0&token={token}")).await;
    assert_eq!(gone, json!({"status": 410}));
    a.wait_members("room:2", 0).await;
    assert_eq!(phoenix_connections(&a).await, 0.0);
}

#[tokio::test]
async fn long_poll_bad_input_ends_or_refuses_and_leaves_nothing() {
    let node = Node::start(&[
        "--max-message-size",
        "4096",
        "--phoenix-longpoll-grace-ms",
        "1500",
    ])
    .await;
    let base = node.http();
    let join = r#"["1","1","room:3","phx_join",{}]"#;

    // A frame over --max-message-size ends the session (as 1009 would).
    let token = open(&base).await;
    let url = format!("{base}/socket/longpoll?vsn=2.0.0&token={token}");
    assert_eq!(post(&url, join).await, json!({"status": 200}));
    node.wait_members("room:3", 1).await;
    let big = format!(
        r#"["1","2","room:3","said",{{"pad":"{}"}}]"#,
        "x".repeat(5000)
    );
    assert_eq!(post(&url, &big).await, json!({"status": 410}));
    node.wait_members("room:3", 0).await;

    // A body that is not UTF-8 is refused; the session goes on. An unknown
    // serializer is refused at connect.
    let token = open(&base).await;
    let url = format!("{base}/socket/longpoll?vsn=2.0.0&token={token}");
    let response = reqwest::Client::new()
        .post(&url)
        .body(vec![0xff, 0xfe, b'\n'])
        .send()
        .await
        .expect("POST");
    let refused: Value = response.json().await.expect("JSON");
    assert_eq!(refused, json!({"status": 400}));
    assert_eq!(post(&url, join).await, json!({"status": 200}));
    node.wait_members("room:3", 1).await;
    let vsn = reqwest::get(format!("{base}/socket/longpoll?vsn=9.9"))
        .await
        .expect("GET");
    assert_eq!(vsn.status(), 400);

    // No more polls: after the grace period the session is gone.
    node.wait_members("room:3", 0).await;
    eventually("no Phoenix session", patience(30), || async {
        (phoenix_connections(&node).await == 0.0).then_some(())
    })
    .await;
    assert_eq!(post(&url, join).await, json!({"status": 410}));
}

/// Without sticky sessions a poll can land on a node that does not hold its
/// session: it gets 410 there, and the official client (1.8) closes the
/// transport with 3410 `session_gone`, opens a new session on the node it
/// now reaches and rejoins its channel by itself; it then receives and
/// pushes as before, and the old session ends on its node after the grace
/// period.
#[tokio::test]
async fn a_poll_on_another_node_gets_410_and_the_official_client_reconnects_there() {
    let redis = Redis::start().await;
    let url = redis.url();
    let (a, b) = two_nodes(&["--redis-url", &url, "--phoenix-longpoll-grace-ms", "1000"]).await;
    let endpoint = |n: &Node| format!("ws://127.0.0.1:{}/socket", n.port);
    let options = json!({"longpoll": true, "reconnectAfterMs": 50});
    let mut script = Script::spawn(
        "phoenix_client.js",
        &[&endpoint(&a), "room:7", &options.to_string()],
    );
    script.wait_event("joined", patience(30)).await;
    a.wait_members("room:7", 1).await;
    let gone_before = b
        .metric("pubmesh_frontend_errors_total{code=\"session_gone\",frontend=\"phoenix\"}")
        .await;

    // The balancer now sends this client to node B.
    script
        .send_line(&json!({"route": endpoint(&b)}).to_string())
        .await;
    script.wait_event("routed", patience(30)).await;
    let closed = script.wait_event("close", patience(30)).await;
    assert_eq!(
        closed["code"], 3410,
        "the client saw its session gone: {closed}"
    );
    script.wait_event("open", patience(30)).await;
    let rejoined = script.wait_event("joined", patience(30)).await;
    assert_eq!(rejoined["response"], json!({}));
    assert!(
        b.metric("pubmesh_frontend_errors_total{code=\"session_gone\",frontend=\"phoenix\"}")
            .await
            > gone_before
    );
    // The old session ends on A once its grace period has passed; the new
    // one, on B, is the channel's only member.
    eventually("the session moved from a to b", patience(30), || async {
        (phoenix_connections(&a).await == 0.0 && phoenix_connections(&b).await == 1.0).then_some(())
    })
    .await;
    a.wait_members("room:7", 1).await;

    // It works on B: a publication through A reaches it, a push is answered.
    news_reaches(&a, "room:7", 7, &mut script).await;
    script
        .send_line(&json!({"push": "said", "payload": {}}).to_string())
        .await;
    let reply = script.wait_event("reply", patience(30)).await;
    assert_eq!(reply["status"], "ok", "{reply}");
}

/// A session whose client stops polling while its channel keeps publishing
/// overflows its outbox (`--outbox-bytes`): it ends (slow consumer, as a
/// WebSocket would be closed with 4008), its membership goes, and its next
/// poll gets 410, so the client knows to reconnect and rejoin: nothing is
/// dropped silently.
#[tokio::test]
async fn an_overflowing_session_ends_and_its_next_poll_gets_410() {
    let node = Node::start(&[
        "--max-message-size",
        "1024",
        "--outbox-bytes",
        "4096",
        "--phoenix-longpoll-grace-ms",
        "60000",
    ])
    .await;
    let base = node.http();
    let token = open(&base).await;
    let url = format!("{base}/socket/longpoll?vsn=2.0.0&token={token}");
    let posted = post(&url, "[\"1\",\"1\",\"room:9\",\"phx_join\",{}]").await;
    assert_eq!(posted, json!({"status": 200}));
    assert_eq!(frames(&base, &token, 1).await.len(), 1);
    node.wait_members("room:9", 1).await;
    let before = node
        .metric("pubmesh_connections_closed_total{reason=\"slow_consumer\"}")
        .await;
    let text = "x".repeat(600);
    for n in 0..20 {
        let (status, body) = node
            .post(
                "/api/notify/channels",
                json!({"channel_ids": ["room:9"], "data": {"n": n, "text": text}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    node.wait_members("room:9", 0).await;
    assert_eq!(get(&url).await, json!({"status": 410}));
    assert_eq!(
        node.metric("pubmesh_connections_closed_total{reason=\"slow_consumer\"}")
            .await,
        before + 1.0
    );
    assert_eq!(phoenix_connections(&node).await, 0.0);
}
