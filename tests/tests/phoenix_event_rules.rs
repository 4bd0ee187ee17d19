//! Channel rules per topic pattern, for Phoenix and chain alike, against a
//! real HTTP backend: `[[channel_events]]` forwards an event to the backend
//! and replies with its answer (not broadcast), refuses an event, or lets it
//! be broadcast; a slow, failing or nonsensical backend gives an error reply
//! with a stable reason, never a hung push. `[[phoenix_join_hooks]]` apply
//! to chain's `_join` too.

use std::time::Duration;

use pubmesh_tests::backend::{self, Answer};
use pubmesh_tests::harness::{config_file, hs256, patience, Client, Node};
use pubmesh_tests::js::Script;
use pubmesh_tests::sse::Sse;
use serde_json::{json, Value};

const SECRET: &str = "rules-secret";

/// The backend: joins by topic, events by their payload's `q`.
fn decide(call: &Value) -> Answer {
    if call.get("event").is_none() {
        return match call["topic"].as_str().unwrap_or_default() {
            "hooked:no" => Answer::json(json!({"error": "not_invited"})),
            _ => Answer::json(json!({"ok": {"welcome": call["user_id"]}})),
        };
    }
    match call["payload"]["q"].as_str().unwrap_or_default() {
        "ok" => Answer::json(
            json!({"ok": {"answer": 42, "to": call["user_id"], "asked": call["payload"]}}),
        ),
        "no" => Answer::json(json!({"error": "not_allowed"})),
        // Longer than the rule's timeout_ms: the push must not wait.
        "slow" => Answer {
            delay: Some(Duration::from_secs(10)),
            ..Answer::json(json!({"ok": {}}))
        },
        "weird" => Answer::json(json!({"ok": [1]})),
        _ => Answer {
            status: 503,
            ..Answer::json(json!("down"))
        },
    }
}

async fn node(url: &str) -> Node {
    let file = config_file(&format!(
        r#"
[[phoenix_join_hooks]]
pattern = "hooked:*"
url = "{url}"

[[channel_events]]
pattern = "*"
event = "ask"
action = "forward"
url = "{url}"
timeout_ms = 400

[[channel_events]]
pattern = "room:*"
event = "admin_*"
action = "refuse"

# quiet:* topics: clients may publish "say" and nothing else.
[[channel_events]]
pattern = "quiet:*"
event = "say"
action = "broadcast"

[[channel_events]]
pattern = "quiet:*"
event = "*"
action = "refuse"
"#
    ));
    Node::start(&["--config", &file, "--jwt-secret", SECRET]).await
}

/// The next reply the official client reports.
async fn reply(script: &mut Script, push: Value) -> Value {
    script.send_line(&push.to_string()).await;
    script
        .wait_for("a reply", patience(30), |v| v["event"] == "reply")
        .await
}

#[tokio::test]
async fn phoenix_events_are_forwarded_refused_or_broadcast_by_rule() {
    let (url, seen) = backend::start(decide).await;
    let node = node(&url).await;
    let token = hs256(SECRET, "alice", 600);
    let endpoint = format!("ws://127.0.0.1:{}/socket", node.port);
    let mut script = Script::spawn(
        "phoenix_client.js",
        &[
            &endpoint,
            "room:1",
            &json!({"params": {"token": token}}).to_string(),
        ],
    );
    script.wait_event("joined", patience(30)).await;
    let mut native = Client::connect(&node.ws("")).await;
    native
        .send(json!({"type": "subscribe", "channel_ids": ["room:1"], "ref": 1}))
        .await;
    native.recv_until(|v| v["ref"] == 1).await;

    // Forwarded: the backend's answer is the reply; nothing is broadcast.
    let r = reply(&mut script, json!({"push": "ask", "payload": {"q": "ok"}})).await;
    assert_eq!(
        (&r["status"], &r["response"]),
        (
            &json!("ok"),
            &json!({"answer": 42, "to": "alice", "asked": {"q": "ok"}})
        )
    );
    let call = seen.lock().await.last().cloned().expect("a call");
    assert_eq!(call["call"]["topic"], "room:1");
    assert_eq!(call["call"]["event"], "ask");
    assert_eq!(call["call"]["authenticated"], true);
    assert_eq!(call["authorization"], format!("Bearer {token}"));
    let error = |reason: &str| json!({"status": "error", "response": {"reason": reason}});
    for (q, reason) in [
        ("no", "not_allowed"),
        ("slow", "backend_timeout"),
        ("weird", "backend_bad_answer"),
        ("down", "backend_unavailable"),
    ] {
        let started = std::time::Instant::now();
        let r = reply(&mut script, json!({"push": "ask", "payload": {"q": q}})).await;
        assert_eq!(
            json!({"status": r["status"], "response": r["response"]}),
            error(reason),
            "{q}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{q}: no hung push"
        );
    }
    // Refused by rule, without a backend call.
    let calls = seen.lock().await.len();
    let r = reply(&mut script, json!({"push": "admin_kick", "payload": {}})).await;
    assert_eq!(r["response"], json!({"reason": "event_refused"}));
    assert_eq!(seen.lock().await.len(), calls);
    // No rule: broadcast as before; the native member sees only this one.
    let r = reply(&mut script, json!({"push": "shout", "payload": {"n": 1}})).await;
    assert_eq!(r["status"], "ok");
    assert_eq!(native.recv().await, json!({"n": 1}));
    for (code, n) in [
        ("backend_refused", 1.0),
        ("backend_timeout", 1.0),
        ("backend_bad_answer", 1.0),
        ("backend_unavailable", 1.0),
        ("event_refused", 1.0),
    ] {
        let series =
            format!("pubmesh_frontend_errors_total{{code=\"{code}\",frontend=\"phoenix\"}}");
        assert_eq!(node.metric(&series).await, n, "{series}");
    }
}

#[tokio::test]
async fn chain_joins_go_through_join_hooks_and_events_through_the_rules() {
    let (url, seen) = backend::start(decide).await;
    let node = node(&url).await;
    let token = hs256(SECRET, "bob", 600);
    let mut sse = Sse::new(&node.http(), "tab");
    assert_eq!(sse.connect(&format!("&token={token}")).await, 200);

    // A hooked join: the backend's object is the reply's payload.
    let ok = sse
        .call(json!([0, 1, 1, "hooked:1", "_join", {"x": 1}]))
        .await;
    assert_eq!(ok, json!([1, 1, 1, 0, {"welcome": "bob"}]));
    let first = seen.lock().await[0].clone();
    assert_eq!(first["call"]["params"], json!({"x": 1}));
    assert_eq!(first["authorization"], format!("Bearer {token}"));
    let no = sse.call(json!([0, 2, 2, "hooked:no", "_join", {}])).await;
    assert_eq!(no, json!([1, 2, 2, 1, {"reason": "not_invited"}]));
    assert_eq!(node.channel_members("hooked:no").await, 0);

    // A native member of both topics sees what is broadcast there.
    let mut native = Client::connect(&node.ws("")).await;
    native
        .send(json!({"type": "subscribe", "channel_ids": ["hooked:1", "quiet:1"], "ref": 1}))
        .await;
    native.recv_until(|v| v["ref"] == 1).await;

    // Events: forwarded (the answer, no broadcast), failures, refusals.
    let ask = sse
        .call(json!([0, 1, 3, "hooked:1", "ask", {"q": "ok"}]))
        .await;
    assert_eq!(
        ask,
        json!([1, 1, 3, 0, {"answer": 42, "to": "bob", "asked": {"q": "ok"}}])
    );
    let slow = sse
        .call(json!([0, 1, 4, "hooked:1", "ask", {"q": "slow"}]))
        .await;
    assert_eq!(slow, json!([1, 1, 4, 1, {"reason": "backend_timeout"}]));
    let joined = sse.call(json!([0, 5, 5, "quiet:1", "_join", {}])).await;
    assert_eq!(joined, json!([1, 5, 5, 0]));
    let said = sse.call(json!([0, 5, 6, "quiet:1", "say", {"n": 1}])).await;
    assert_eq!(said, json!([1, 5, 6, 0]));
    let other = sse
        .call(json!([0, 5, 7, "quiet:1", "shout", {"n": 2}]))
        .await;
    assert_eq!(other, json!([1, 5, 7, 1, {"reason": "event_refused"}]));
    // Only the allowed event was broadcast: the forwarded and refused ones
    // were not (the API publication marks the end).
    let (status, _) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["quiet:1"], "data": {"end": true}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(native.recv().await, json!({"n": 1}));
    assert_eq!(native.recv().await, json!({"end": true}));
    for code in ["backend_refused", "backend_timeout", "event_refused"] {
        let series = format!("pubmesh_frontend_errors_total{{code=\"{code}\",frontend=\"chain\"}}");
        assert_eq!(node.metric(&series).await, 1.0, "{series}");
    }
}
