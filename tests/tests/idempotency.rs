//! Idempotent publishing (issue 9 item 7): a publish retried with the same
//! `idempotency_key`, through the same node or another one, is appended
//! once and delivered once, and its reply repeats the first outcome (the
//! same position) with `"duplicate": true`. Also when the first attempt got
//! a 503 because Redis was frozen and its append landed later.

use std::io::Write;
use std::time::Duration;

use pubmesh_tests::harness::{
    cluster_slot, eventually, hs256, patience, temp_dir, Client, Node, Redis,
};
use serde_json::{json, Value};

const SECRET: &str = "idem-secret";

fn config() -> String {
    let path = temp_dir("idempotency").join("ns.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| {
            f.write_all(
                br#"
[[namespaces]]
pattern = "chat:*"
history_size = 100
history_ttl_seconds = 300
"#,
            )
        })
        .expect("config");
    path.to_string_lossy().to_string()
}

async fn two_nodes(redis: &Redis, extra: &[&str]) -> (Node, Node) {
    let url = redis.url();
    let file = config();
    let mut args = vec![
        "--redis-url",
        url.as_str(),
        "--config",
        file.as_str(),
        "--jwt-secret",
        SECRET,
    ];
    args.extend_from_slice(extra);
    pubmesh_tests::harness::two_nodes(&args).await
}

async fn member(node: &Node, channel: &str) -> Client {
    let mut c = node.client("").await;
    c.send(json!({"type": "subscribe", "channel_ids": [channel], "ref": "sub"}))
        .await;
    let reply = c.recv_until(|f| f["ref"] == "sub").await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    c
}

async fn notify(node: &Node, channel: &str, data: Value, key: Option<&str>) -> (u16, Value) {
    let mut body = json!({"channel_ids": [channel], "data": data});
    if let Some(key) = key {
        body["idempotency_key"] = json!(key);
    }
    node.post("/api/notify/channels", body).await
}

/// Read until the `{"marker": …}` frame; the values of `n` seen before it.
async fn before_marker(c: &mut Client) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let frame = c.recv().await;
        if frame.get("marker").is_some() {
            return seen;
        }
        if let Some(n) = frame["n"].as_u64() {
            seen.push(n);
        }
    }
}

/// A history publish retried with its key on the same node and on the other
/// node: one entry in Redis, one copy for members on both nodes, and each
/// retry's reply carries the first position and `duplicate: true`.
#[tokio::test]
async fn a_history_publish_retried_on_either_node_is_appended_and_delivered_once() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;
    let mut on_a = member(&a, "chat:once").await;
    let mut on_b = member(&b, "chat:once").await;

    let (status, first) = notify(&a, "chat:once", json!({"n": 1}), Some("order-1")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], false, "{first}");
    let position = first["positions"]["chat:once"].clone();
    assert_eq!(position["offset"], 1, "{first}");
    for (node, name) in [(&a, "same node"), (&b, "other node")] {
        let (status, again) = notify(node, "chat:once", json!({"n": 1}), Some("order-1")).await;
        assert_eq!(status, 200, "{name}: {again}");
        assert_eq!(again["duplicate"], true, "{name}: {again}");
        assert_eq!(again["positions"]["chat:once"], position, "{name}: {again}");
    }
    // Another key is another publish.
    let (_, other) = notify(&b, "chat:once", json!({"n": 2}), Some("order-2")).await;
    assert_eq!(other["duplicate"], false, "{other}");
    assert_eq!(other["positions"]["chat:once"]["offset"], 2, "{other}");
    notify(&a, "chat:once", json!({"marker": true}), None).await;
    assert_eq!(before_marker(&mut on_a).await, vec![1, 2]);
    assert_eq!(before_marker(&mut on_b).await, vec![1, 2]);
    let len = redis
        .cmd(&["XLEN", "pubmesh.h.{chat:once}"])
        .await
        .expect("xlen");
    assert_eq!(len, ":3\r\n", "one entry per key plus the marker");
    assert_eq!(a.metric("pubmesh_idempotent_duplicates_total").await, 1.0);
    assert_eq!(b.metric("pubmesh_idempotent_duplicates_total").await, 1.0);
}

/// A plain (no history) publish retried with its key: members on both
/// nodes get one copy, whichever node the retry goes to.
#[tokio::test]
async fn a_plain_publish_retried_on_either_node_is_delivered_once() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;
    let mut on_a = member(&a, "room").await;
    let mut on_b = member(&b, "room").await;
    let (status, first) = notify(&a, "room", json!({"n": 1}), Some("k")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (
            &first["duplicate"],
            &first["relay"],
            &first["local_deliveries"]
        ),
        (&json!(false), &json!("sent"), &json!(1)),
        "{first}"
    );
    assert_eq!(on_a.recv().await, json!({"n": 1}));
    assert_eq!(on_b.recv().await, json!({"n": 1}));
    let (_, again) = notify(&a, "room", json!({"n": 1}), Some("k")).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["local_deliveries"], 1, "the first outcome: {again}");
    assert_eq!(again["relay"], "sent", "{again}");
    let (_, elsewhere) = notify(&b, "room", json!({"n": 1}), Some("k")).await;
    assert_eq!(elsewhere["duplicate"], true, "{elsewhere}");
    // The same key from a socket is another publisher's key.
    let mut socket = member(&a, "room").await;
    socket
        .send(json!({"type": "channel", "channel_ids": ["room"], "data": {"n": 2}, "idempotency_key": "k", "ref": 1}))
        .await;
    let ack = socket.recv_until(|f| f["type"] == "published").await;
    assert_eq!(ack["duplicate"], false, "{ack}");
    // The marker leaves A after the publish (the same topic, the same lane),
    // so it reaches B after it. From B, it could overtake it: B delivers
    // its own publish at once, while A's may still be in B's reader.
    notify(&a, "room", json!({"marker": true}), None).await;
    assert_eq!(before_marker(&mut on_a).await, vec![2]);
    assert_eq!(before_marker(&mut on_b).await, vec![2]);
}

/// Publish `{"n": n}` to `channel` from a socket with a key; the ack.
async fn publish(c: &mut Client, channel: &str, key: &str, n: u64) -> Value {
    c.send(
        json!({"type": "channel", "channel_ids": [channel], "data": {"n": n},
        "idempotency_key": key, "ref": n}),
    )
    .await;
    c.recv_until(|f| f["type"] == "published" || f["type"] == "error")
        .await
}

/// Socket publishes: an authenticated user's key holds across its
/// connections and nodes; an anonymous socket's key is its connection's.
#[tokio::test]
async fn socket_publishes_are_idempotent_per_user_or_per_anonymous_connection() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;
    let mut on_b = member(&b, "chat:sock").await;
    let token = hs256(SECRET, "n::alice", 600);
    let mut alice_a = Client::connect_with_token(&a.ws("channel_id=chat:sock"), &token).await;
    let mut alice_b = Client::connect_with_token(&b.ws("channel_id=chat:sock"), &token).await;
    let first = publish(&mut alice_a, "chat:sock", "m-1", 1).await;
    assert_eq!(first["duplicate"], false, "{first}");
    let position = first["positions"]["chat:sock"].clone();
    let again = publish(&mut alice_b, "chat:sock", "m-1", 1).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["positions"]["chat:sock"], position, "{again}");
    // Two anonymous sockets: the same key is not shared.
    let mut anon1 = a.client("channel_id=chat:sock").await;
    let mut anon2 = a.client("channel_id=chat:sock").await;
    assert_eq!(
        publish(&mut anon1, "chat:sock", "m-1", 2).await["duplicate"],
        false
    );
    assert_eq!(
        publish(&mut anon1, "chat:sock", "m-1", 2).await["duplicate"],
        true
    );
    assert_eq!(
        publish(&mut anon2, "chat:sock", "m-1", 3).await["duplicate"],
        false
    );
    notify(&a, "chat:sock", json!({"marker": true}), None).await;
    assert_eq!(before_marker(&mut on_b).await, vec![1, 2, 3]);
}

/// Issue 9 item 7 as reported: Redis frozen, the API answers 503, the
/// append lands after SIGCONT; the retry with the same key appends nothing
/// more and answers with the first position.
#[tokio::test]
async fn a_503_during_a_frozen_redis_then_a_retry_with_the_key_appends_once() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;
    let mut on_a = member(&a, "chat:frozen").await;
    let mut on_b = member(&b, "chat:frozen").await;
    redis.freeze();
    let (status, failed) = notify(&a, "chat:frozen", json!({"n": 1}), Some("retry-me")).await;
    assert_eq!(status, 503, "{failed}");
    assert_eq!(failed["code"], "unavailable", "{failed}");
    redis.thaw();
    let (status, retried) = eventually("the retry is served", patience(30), || async {
        let (status, body) = notify(&a, "chat:frozen", json!({"n": 1}), Some("retry-me")).await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        retried["positions"]["chat:frozen"]["offset"], 1,
        "{retried}"
    );
    // And once more through the other node.
    let (_, again) = notify(&b, "chat:frozen", json!({"n": 1}), Some("retry-me")).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(
        again["positions"]["chat:frozen"],
        retried["positions"]["chat:frozen"]
    );
    notify(&a, "chat:frozen", json!({"marker": true}), None).await;
    assert_eq!(before_marker(&mut on_a).await, vec![1]);
    assert_eq!(before_marker(&mut on_b).await, vec![1]);
    let len = redis
        .cmd(&["XLEN", "pubmesh.h.{chat:frozen}"])
        .await
        .expect("xlen");
    assert_eq!(len, ":2\r\n", "the publish once, then the marker");
    eprintln!("frozen redis: the first call got 503 ({failed}); the retry: {retried}");
}

/// A plain publish whose relay part failed (Redis frozen past the retry
/// window) is sent to the other nodes again by a retry with its key; the
/// other node delivers it once whether or not the first copy arrived late.
#[tokio::test]
async fn a_failed_relay_retried_with_its_key_reaches_the_other_node_once() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &["--relay-retry-ms", "1000"]).await;
    let mut on_a = member(&a, "room").await;
    let mut on_b = member(&b, "room").await;
    redis.freeze();
    let (status, first) = notify(&a, "room", json!({"n": 1}), Some("late")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["relay"], "failed", "{first}");
    assert_eq!(on_a.recv().await, json!({"n": 1}));
    redis.thaw();
    for node in [&a, &b] {
        node.wait_ready().await;
    }
    let (_, retried) = notify(&a, "room", json!({"n": 1}), Some("late")).await;
    assert_eq!(retried["duplicate"], true, "{retried}");
    assert_eq!(retried["relay"], "sent", "{retried}");
    assert_eq!(retried["local_deliveries"], 1, "not delivered here again");
    notify(&a, "room", json!({"marker": true}), None).await;
    assert_eq!(before_marker(&mut on_a).await, Vec::<u64>::new());
    assert_eq!(before_marker(&mut on_b).await, vec![1]);
}

/// One node with memory history: the same guarantees without Redis, and
/// bad keys are refused.
#[tokio::test]
async fn a_single_node_appends_and_delivers_a_keyed_publish_once() {
    let file = config();
    let a = Node::start(&["--config", &file]).await;
    let mut on_history = member(&a, "chat:solo").await;
    let mut on_plain = member(&a, "solo").await;
    let (_, first) = notify(&a, "chat:solo", json!({"n": 1}), Some("s1")).await;
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(first["local_deliveries"], 1, "{first}");
    let (_, again) = notify(&a, "chat:solo", json!({"n": 1}), Some("s1")).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["positions"], first["positions"], "{again}");
    assert_eq!(again["local_deliveries"], 1, "the first outcome: {again}");
    let (_, history) = a.get("/api/history?channel=chat:solo").await;
    assert_eq!(history["publications"].as_array().map(Vec::len), Some(1));
    for _ in 0..2 {
        let (_, plain) = notify(&a, "solo", json!({"n": 5}), Some("s2")).await;
        assert_eq!(plain["local_deliveries"], 1, "{plain}");
    }
    // Users, clients and broadcasts take keys too.
    for _ in 0..2 {
        let (status, body) = a
            .post(
                "/api/broadcast",
                json!({"data": {"n": 9}, "idempotency_key": "b1"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    notify(&a, "chat:solo", json!({"marker": true}), None).await;
    notify(&a, "solo", json!({"marker": true}), None).await;
    assert_eq!(before_marker(&mut on_history).await, vec![1, 9]);
    assert_eq!(before_marker(&mut on_plain).await, vec![5, 9]);

    // Bad keys: the API answers 400, a socket gets bad_request with its ref.
    let long = "k".repeat(129);
    for bad in [
        json!(long),
        json!(7),
        json!(""),
        json!("has space"),
        json!(["k"]),
    ] {
        let body = json!({"channel_ids": ["solo"], "data": {}, "idempotency_key": bad});
        let (status, reply) = a.post("/api/notify/channels", body).await;
        assert_eq!(status, 400, "{bad}: {reply}");
        assert_eq!(reply["code"], "bad_request", "{reply}");
        assert!(
            reply["error"]
                .as_str()
                .unwrap_or("")
                .contains("idempotency_key"),
            "{reply}"
        );
        on_plain
            .send(json!({"type": "channel", "channel_ids": ["solo"], "data": {}, "idempotency_key": bad, "ref": "bad"}))
            .await;
        let error = on_plain.recv_until(|f| f["ref"] == "bad").await;
        assert_eq!(
            (&error["type"], &error["code"]),
            (&json!("error"), &json!("bad_request")),
            "{error}"
        );
    }
    on_plain.expect_silence(Duration::from_millis(300)).await;
}
