//! `walker` frames against a real HTTP backend started by the test.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use pubmesh_tests::harness::{hs256, Client, Node};
use serde_json::{json, Value};
use tokio::sync::Mutex;

const SECRET: &str = "walker-secret";

/// What the backend saw: (walker name, Authorization header, body).
type Seen = Arc<Mutex<Vec<(String, Option<String>, Value)>>>;

fn content_type_is_json(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

async fn walker(
    State(seen): State<Seen>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert!(content_type_is_json(&headers), "walker calls send JSON");
    seen.lock().await.push((name.clone(), auth, body.clone()));
    match name.as_str() {
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Json(json!({"status": 200})).into_response()
        }
        "broken" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        _ => Json(json!({"status": 200, "reports": [{"walker": name, "echo": body["context"]}]}))
            .into_response(),
    }
}

async fn backend() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/walker/{name}", post(walker))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn walker_reply_is_the_backend_answer_and_carries_the_caller() {
    let (url, seen) = backend().await;
    let node = Node::start(&["--backend-url", &url, "--jwt-secret", SECRET]).await;
    let token = hs256(SECRET, "n::walker-user", 300);
    let mut c = Client::connect_with_token(&node.ws("channel_id=wc"), &token).await;
    c.send(json!({"type": "walker", "walker": "send_chat", "context": {"message": "hi"}, "node": "n::entry", "response": true}))
        .await;
    let reply = c.recv().await;
    assert_eq!(
        reply,
        json!({"status": 200, "reports": [{"walker": "send_chat", "echo": {"message": "hi"}}]})
    );
    let calls = seen.lock().await.clone();
    assert_eq!(calls.len(), 1);
    let (name, auth, body) = &calls[0];
    assert_eq!(name, "send_chat");
    assert_eq!(auth.as_deref(), Some(format!("Bearer {token}").as_str()));
    assert_eq!(body["context"], json!({"message": "hi"}));
    assert_eq!(body["node"], "n::entry");
    assert_eq!(body["client_id"], c.client_id().as_str());
    assert_eq!(body["root_id"], "n::walker-user");
    assert_eq!(body["channel_id"], "wc");
}

#[tokio::test]
async fn walker_with_ref_is_wrapped_and_without_response_is_silent() {
    let (url, seen) = backend().await;
    let node = Node::start(&["--backend-url", &url]).await;
    let mut c = node.client("").await;
    c.send(json!({"type": "walker", "walker": "w1", "context": {}, "response": true, "ref": 11}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["type"], "walker");
    assert_eq!(reply["ref"], 11);
    assert_eq!(reply["data"]["status"], 200);

    c.send(json!({"type": "walker", "walker": "w2", "context": {}, "response": false}))
        .await;
    pubmesh_tests::harness::eventually(
        "backend called",
        pubmesh_tests::harness::patience(10),
        || {
            let seen = seen.clone();
            async move { (seen.lock().await.len() == 2).then_some(()) }
        },
    )
    .await;
    c.expect_silence(Duration::from_millis(300)).await;
    // Anonymous sockets send no Authorization header.
    assert_eq!(seen.lock().await[1].1, None);
}

#[tokio::test]
async fn walker_timeouts_and_backend_errors_are_reported() {
    let (url, _seen) = backend().await;
    let node = Node::start(&["--backend-url", &url, "--walker-timeout-ms", "500"]).await;
    let mut c = node.client("").await;
    c.send(json!({"type": "walker", "walker": "slow", "response": true, "ref": 1}))
        .await;
    let err = c.recv().await;
    assert_eq!(err["type"], "walker");
    assert_eq!(err["code"], "backend_timeout");
    assert_eq!(err["ref"], 1);
    c.send(json!({"type": "walker", "walker": "broken", "response": true}))
        .await;
    let err = c.recv().await;
    assert_eq!(err["code"], "backend_error");
    assert_eq!(err["status"], 500);
    // The socket keeps working.
    c.send(json!({"type": "connection"})).await;
    assert_eq!(c.recv().await["type"], "connection");
}

#[tokio::test]
async fn walker_without_a_backend_or_with_bad_fields_is_refused() {
    let node = Node::start(&[]).await;
    let mut c = node.client("").await;
    c.send(json!({"type": "walker", "walker": "w", "response": true}))
        .await;
    let err = c.recv().await;
    assert_eq!(err["type"], "walker");
    assert_eq!(err["code"], "no_backend");
    c.send(json!({"type": "walker", "walker": "../etc", "response": true}))
        .await;
    assert_eq!(c.recv().await["code"], "bad_request");
    c.send(json!({"type": "walker", "walker": "w", "context": [1], "response": true}))
        .await;
    assert_eq!(c.recv().await["code"], "bad_request");
}

#[tokio::test]
async fn an_unreachable_backend_is_reported_as_unavailable() {
    let port = pubmesh_tests::harness::free_port();
    let node = Node::start(&["--backend-url", &format!("http://127.0.0.1:{port}")]).await;
    let mut c = node.client("").await;
    c.send(json!({"type": "walker", "walker": "w", "response": true}))
        .await;
    assert_eq!(c.recv().await["code"], "backend_unavailable");
}

#[tokio::test]
async fn walker_forwards_the_token_from_change_user_and_a_null_node() {
    let (url, seen) = backend().await;
    let node = Node::start(&["--backend-url", &url, "--jwt-secret", SECRET]).await;
    let mut c = node.client("").await;
    let token = hs256(SECRET, "n::later", 300);
    c.send(json!({"type": "change_user", "token": format!("Bearer {token}")}))
        .await;
    assert_eq!(c.recv().await["data"]["root_id"], "n::later");
    c.send(json!({"type": "walker", "walker": "after_login", "context": {"k": [1, 2]}, "response": true}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["reports"][0]["echo"], json!({"k": [1, 2]}));
    let calls = seen.lock().await.clone();
    let (name, auth, body) = &calls[0];
    assert_eq!(name, "after_login");
    assert_eq!(auth.as_deref(), Some(format!("Bearer {token}").as_str()));
    assert_eq!(body["root_id"], "n::later");
    assert_eq!(body["node"], Value::Null);
    assert_eq!(body["channel_id"], c.channel_id().as_str());
}

#[tokio::test]
async fn a_slow_walker_does_not_hold_up_other_frames() {
    let (url, _seen) = backend().await;
    let node = Node::start(&["--backend-url", &url, "--walker-timeout-ms", "4000"]).await;
    let mut c = node.client("channel_id=busy").await;
    c.send(json!({"type": "walker", "walker": "slow", "response": true, "ref": "w"}))
        .await;
    // While the backend sleeps, the socket still answers and receives.
    c.send(json!({"type": "connection", "ref": "c"})).await;
    let first = c.recv().await;
    assert_eq!(first["type"], "connection", "{first}");
    assert_eq!(first["ref"], "c");
    let (status, _) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["busy"], "data": {"meanwhile": true}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(c.recv().await, json!({"meanwhile": true}));
    let late = c.recv_within(pubmesh_tests::harness::patience(15)).await;
    assert_eq!(late["type"], "walker");
    assert_eq!(late["ref"], "w");
    assert_eq!(late["code"], "backend_timeout");
}
