//! Backend join hooks on the Phoenix front-end, against a real HTTP
//! backend: its `{"ok": …}` becomes the join reply, its `{"error": …}` the
//! refusal reason; a slow, failing or nonsensical backend gives an error
//! reply with a stable reason, and a refused join leaves no membership.

use std::time::Duration;

use pubmesh_tests::backend::{self, Answer};
use pubmesh_tests::harness::{config_file, hs256, Node};
use pubmesh_tests::phoenix::call;
use serde_json::{json, Value};

/// The backend: decides by topic.
fn decide(call: &Value) -> Answer {
    match call["topic"].as_str().unwrap_or_default() {
        "room:ok" => {
            Answer::json(json!({"ok": {"welcome": call["user_id"], "params": call["params"]}}))
        }
        "room:no" => Answer::json(json!({"error": "not_invited"})),
        // Longer than the hook's timeout_ms: the join must not wait.
        "room:slow" => Answer {
            delay: Some(Duration::from_secs(10)),
            ..Answer::json(json!({"ok": {}}))
        },
        "room:weird" => Answer::json(json!({"maybe": true})),
        _ => Answer {
            status: 500,
            ..Answer::json(json!("boom"))
        },
    }
}

#[tokio::test]
async fn a_join_hook_answers_or_refuses_joins_and_failures_have_stable_reasons() {
    let (url, seen) = backend::start(decide).await;
    let file = config_file(&format!(
        "[[phoenix_join_hooks]]\npattern = \"room:*\"\nurl = \"{url}\"\ntimeout_ms = 500\n"
    ));
    let node = Node::start(&["--config", file.as_str(), "--jwt-secret", "s3cret"]).await;
    let token = hs256("s3cret", "alice", 600);
    let ws_url = format!(
        "ws://127.0.0.1:{}/socket/websocket?vsn=2.0.0&token={token}",
        node.port
    );
    let mut ws = pubmesh_tests::harness::Client::connect_raw(&ws_url, None)
        .await
        .expect("connect");

    let ok = call(&mut ws, json!(["1", "1", "room:ok", "phx_join", {"x": 1}])).await;
    assert_eq!(
        ok[4],
        json!({"status": "ok", "response": {"welcome": "alice", "params": {"x": 1}}})
    );
    assert_eq!(node.channel_members("room:ok").await, 1);
    let first = seen.lock().await[0].clone();
    assert_eq!(first["call"]["topic"], "room:ok");
    assert_eq!(first["call"]["authenticated"], true);
    assert!(first["call"]["client_id"].is_string(), "{first}");
    assert_eq!(first["authorization"], format!("Bearer {token}"));

    let error = |reason: &str| json!({"status": "error", "response": {"reason": reason}});
    for (i, (topic, reason)) in [
        ("room:no", "not_invited"),
        ("room:slow", "backend_timeout"),
        ("room:weird", "backend_bad_answer"),
        ("room:500", "backend_unavailable"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = (i + 2).to_string();
        let refused = call(&mut ws, json!([r, r, topic, "phx_join", {}])).await;
        assert_eq!(refused[4], error(reason), "{topic}");
        assert_eq!(node.channel_members(topic).await, 0, "{topic}");
    }
    // Topics no hook matches are joined as before, without a call.
    let calls = seen.lock().await.len();
    let free = call(&mut ws, json!(["9", "9", "free:1", "phx_join", {}])).await;
    assert_eq!(free[4], json!({"status": "ok", "response": {}}));
    assert_eq!(seen.lock().await.len(), calls);
    for code in [
        "backend_refused",
        "backend_timeout",
        "backend_bad_answer",
        "backend_unavailable",
    ] {
        let series =
            format!("pubmesh_frontend_errors_total{{code=\"{code}\",frontend=\"phoenix\"}}");
        assert_eq!(node.metric(&series).await, 1.0, "{series}");
    }
}
