//! History recovery on a Phoenix rejoin, across the death of a node: a
//! socket on node A joins history topics and records the position (the
//! broadcast's `ref`) of what it received, A is SIGKILLed, publications go
//! out through the API on node B, and a socket on B that rejoins with
//! `since` gets exactly the missed ones, once, in order, before live ones;
//! a gap history cannot cover is answered `recovered: false`. The same
//! for chain sessions (`_join` with `since`, positions as the broadcast's
//! fifth element).

use pubmesh_tests::harness::{config_file, patience, Client, Node, Redis};
use pubmesh_tests::js::Script;
use pubmesh_tests::phoenix::{call, socket};
use pubmesh_tests::sse::Sse;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[[namespaces]]
pattern = "tiny:*"
history_size = 2
history_ttl_seconds = 600

[[namespaces]]
pattern = "room:*"
history_size = 100
history_ttl_seconds = 600
"#;

async fn notify(node: &Node, topic: &str, n: u64) {
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": [topic], "event": "update", "data": {"n": n}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The next `update` on `topic`: its number and its ref (the position).
async fn update(ws: &mut Client, topic: &str) -> (u64, String) {
    let v = ws.recv_until(|v| v[3] == "update" && v[2] == topic).await;
    let n = v[4]["n"].as_u64().expect("n");
    let at = v[1]
        .as_str()
        .unwrap_or_else(|| panic!("no position ref: {v}"));
    (n, at.to_string())
}

/// The next broadcast on `topic`: its number and its position.
async fn chain_update(tab: &mut Sse, topic: &str) -> (u64, String) {
    let v = tab.recv_until(|v| v[0] == 2 && v[1] == topic).await;
    assert_eq!(v[2], "update", "{v}");
    let n = v[3]["n"].as_u64().expect("n");
    let at = v[4].as_str().unwrap_or_else(|| panic!("no position: {v}"));
    (n, at.to_string())
}

/// SIGKILL `a`, then publish on `b`: 3 to 5 in `room:1` (history covers
/// them), 1 to 4 in `tiny:1` (history keeps 2).
async fn kill_and_publish(a: &mut Node, b: &Node) {
    a.kill();
    for n in 3..=5 {
        notify(b, "room:1", n).await;
    }
    for n in 1..=4 {
        notify(b, "tiny:1", n).await;
    }
}

fn offset(position: &str) -> u64 {
    let (_, offset) = position.rsplit_once(':').expect("epoch:offset");
    offset.parse().expect("offset")
}

#[tokio::test]
async fn a_rejoin_with_since_on_another_node_gets_exactly_what_was_missed() {
    let redis = Redis::start().await;
    let url = redis.url();
    let file = config_file(CONFIG);
    let args = ["--redis-url", url.as_str(), "--config", file.as_str()];
    let (mut a, b) = pubmesh_tests::harness::two_nodes(&args).await;

    let mut ws = socket(&a, "2.0.0").await;
    let joined = call(&mut ws, json!(["1", "1", "room:1", "phx_join", {}])).await;
    assert_eq!(joined[4]["status"], "ok", "{joined}");
    assert!(joined[4]["response"]["position"].is_string(), "{joined}");
    assert!(joined[4]["response"].get("recovered").is_none(), "{joined}");
    let joined = call(&mut ws, json!(["2", "2", "tiny:1", "phx_join", {}])).await;
    let tiny_at = joined[4]["response"]["position"]
        .as_str()
        .expect("tiny position")
        .to_string();
    b.wait_members("room:1", 1).await;

    notify(&b, "room:1", 1).await;
    notify(&b, "room:1", 2).await;
    let (n1, p1) = update(&mut ws, "room:1").await;
    let (n2, last) = update(&mut ws, "room:1").await;
    assert_eq!((n1, n2), (1, 2));
    assert_eq!(offset(&last), offset(&p1) + 1);

    kill_and_publish(&mut a, &b).await;

    let mut ws = socket(&b, "2.0.0").await;
    let rejoined = call(
        &mut ws,
        json!(["3", "3", "room:1", "phx_join", {"since": last, "token": "x"}]),
    )
    .await;
    assert_eq!(rejoined[4]["status"], "ok", "{rejoined}");
    assert_eq!(rejoined[4]["response"]["recovered"], true, "{rejoined}");
    notify(&b, "room:1", 6).await;
    notify(&b, "room:1", 7).await;
    // The missed ones, in order, each with the next position; then live
    // ones, none twice.
    let from = offset(&last);
    for (want, at) in (3..=7).zip(from + 1..) {
        let (n, position) = update(&mut ws, "room:1").await;
        assert_eq!(n, want);
        assert_eq!(offset(&position), at, "{position}");
    }

    // History kept 2 of the 4 missed: not recovered, nothing replayed, and
    // live publications follow with positions.
    let rejoined = call(
        &mut ws,
        json!(["4", "4", "tiny:1", "phx_join", {"since": tiny_at}]),
    )
    .await;
    assert_eq!(rejoined[4]["status"], "ok", "{rejoined}");
    assert_eq!(rejoined[4]["response"]["recovered"], false, "{rejoined}");
    notify(&b, "tiny:1", 5).await;
    let (n, position) = update(&mut ws, "tiny:1").await;
    assert_eq!(n, 5);
    assert_eq!(offset(&position), offset(&tiny_at) + 5);

    // The object form of `since` works too (the native protocol's shape).
    let (epoch, _) = last.rsplit_once(':').unwrap();
    let mut v1 = socket(&b, "1.0.0").await;
    v1.send(json!({"topic": "room:1", "event": "phx_join", "ref": "1",
        "payload": {"since": {"epoch": epoch, "offset": offset(&last) + 3}}}))
        .await;
    let reply = v1
        .recv_until(|v| v["event"] == "phx_reply" && v["ref"] == "1")
        .await;
    assert_eq!(reply["payload"]["response"]["recovered"], true, "{reply}");
    let got: Vec<u64> = [
        v1.recv_until(|v| v["event"] == "update").await,
        v1.recv_until(|v| v["event"] == "update").await,
    ]
    .iter()
    .map(|v| v["payload"]["n"].as_u64().expect("n"))
    .collect();
    assert_eq!(got, [6, 7]);
}

#[tokio::test]
async fn since_on_a_topic_without_history_or_malformed_is_refused() {
    let file = config_file(CONFIG);
    let node = Node::start(&["--config", file.as_str()]).await;
    let mut ws = socket(&node, "2.0.0").await;
    let error = |reason: &str| json!({"status": "error", "response": {"reason": reason}});
    let plain = call(
        &mut ws,
        json!(["1", "1", "plain", "phx_join", {"since": "abc:1"}]),
    )
    .await;
    assert_eq!(plain[4], error("no_history"));
    for (i, since) in [json!("abc"), json!(3), json!({"offset": "x"})]
        .into_iter()
        .enumerate()
    {
        let r = (i + 2).to_string();
        let bad = call(
            &mut ws,
            json!([r, r, "room:9", "phx_join", {"since": since}]),
        )
        .await;
        assert_eq!(bad[4], error("bad_since"), "{since}");
    }
    // A join without `since` on a topic without history answers `{}`.
    let ok = call(&mut ws, json!(["9", "9", "plain", "phx_join", {}])).await;
    assert_eq!(ok[4], json!({"status": "ok", "response": {}}));
    assert_eq!(node.channel_members("room:9").await, 0);
}

#[tokio::test]
async fn a_join_with_since_on_another_node_gets_exactly_what_was_missed() {
    let redis = Redis::start().await;
    let url = redis.url();
    let file = config_file(CONFIG);
    let args = ["--redis-url", url.as_str(), "--config", file.as_str()];
    let (mut a, b) = pubmesh_tests::harness::two_nodes(&args).await;

    let mut tab = Sse::open(&a.http(), "tab1").await;
    let joined = tab.call(json!([0, 1, 1, "room:1", "_join", {}])).await;
    assert_eq!(joined[3], 0, "{joined}");
    assert!(joined[4]["position"].is_string(), "{joined}");
    let joined = tab.call(json!([0, 2, 2, "tiny:1", "_join", {}])).await;
    let tiny_at = joined[4]["position"].as_str().expect("tiny").to_string();
    b.wait_members("room:1", 1).await;

    notify(&b, "room:1", 1).await;
    notify(&b, "room:1", 2).await;
    let (n1, p1) = chain_update(&mut tab, "room:1").await;
    let (n2, last) = chain_update(&mut tab, "room:1").await;
    assert_eq!((n1, n2), (1, 2));
    assert_eq!(offset(&last), offset(&p1) + 1);

    kill_and_publish(&mut a, &b).await;

    let mut tab = Sse::open(&b.http(), "tab1").await;
    let rejoined = tab
        .call(json!([0, 3, 3, "room:1", "_join", {"since": last}]))
        .await;
    assert_eq!(rejoined[3], 0, "{rejoined}");
    assert_eq!(rejoined[4]["recovered"], true, "{rejoined}");
    notify(&b, "room:1", 6).await;
    notify(&b, "room:1", 7).await;
    let from = offset(&last);
    for (want, at) in (3..=7).zip(from + 1..) {
        let (n, position) = chain_update(&mut tab, "room:1").await;
        assert_eq!(n, want);
        assert_eq!(offset(&position), at, "{position}");
    }

    let rejoined = tab
        .call(json!([0, 4, 4, "tiny:1", "_join", {"since": tiny_at}]))
        .await;
    assert_eq!(rejoined[4]["recovered"], false, "{rejoined}");
    notify(&b, "tiny:1", 5).await;
    let (n, position) = chain_update(&mut tab, "tiny:1").await;
    assert_eq!(n, 5);
    assert_eq!(offset(&position), offset(&tiny_at) + 5);

    // Refusals: `since` without history, or not a position.
    let plain = tab
        .call(json!([0, 5, 5, "plain", "_join", {"since": last}]))
        .await;
    assert_eq!(plain, json!([1, 5, 5, 1, {"reason": "no_history"}]));
    let bad = tab
        .call(json!([0, 6, 6, "room:2", "_join", {"since": 7}]))
        .await;
    assert_eq!(bad, json!([1, 6, 6, 1, {"reason": "bad_since"}]));
    // A topic without history: chain's plain reply, plain broadcasts.
    let ok = tab.call(json!([0, 7, 7, "plain", "_join", {}])).await;
    assert_eq!(ok, json!([1, 7, 7, 0]));
    notify(&b, "plain", 1).await;
    let v = tab.recv_until(|v| v[0] == 2 && v[1] == "plain").await;
    assert_eq!(v, json!([2, "plain", "update", {"n": 1}]));
}

/// The official client's next message: its number and its ref.
async fn js_message(c: &mut Script) -> (u64, Value) {
    let v = c
        .wait_for("a message", patience(30), |v| v["event"] == "message")
        .await;
    (v["payload"]["n"].as_u64().expect("n"), v["ref"].clone())
}

/// The official `phoenix` client with its params as a function of the last
/// ref it saw: killed node, reconnect to the other, automatic rejoin with
/// `since`, exactly the missed messages.
#[tokio::test]
async fn the_official_client_rejoins_with_since_after_its_node_is_killed() {
    let redis = Redis::start().await;
    let url = redis.url();
    let file = config_file(CONFIG);
    let args = ["--redis-url", url.as_str(), "--config", file.as_str()];
    let (mut a, b) = pubmesh_tests::harness::two_nodes(&args).await;
    let endpoint = |n: &Node| format!("ws://127.0.0.1:{}/socket", n.port);
    let options = json!({"recover": true}).to_string();
    let mut c = Script::spawn("phoenix_client.js", &[&endpoint(&a), "room:1", &options]);
    let joined = c.wait_event("joined", patience(30)).await;
    assert!(joined["response"]["position"].is_string(), "{joined}");
    b.wait_members("room:1", 1).await;
    notify(&b, "room:1", 1).await;
    notify(&b, "room:1", 2).await;
    assert_eq!(js_message(&mut c).await.0, 1);
    let (n, last) = js_message(&mut c).await;
    assert_eq!(n, 2);
    assert!(last.is_string(), "{last}");

    kill_and_publish(&mut a, &b).await;
    c.send_line(&json!({"endpoint": endpoint(&b)}).to_string())
        .await;
    let rejoined = c.wait_event("joined", patience(60)).await;
    assert_eq!(rejoined["response"]["recovered"], true, "{rejoined}");
    notify(&b, "room:1", 6).await;
    let mut got = Vec::new();
    while got.last() != Some(&6) {
        got.push(js_message(&mut c).await.0);
    }
    assert_eq!(got, [3, 4, 5, 6]);
}
