//! Every HTTP error answer is JSON, `{"error":"…","code":"…"}`, with a
//! stable code: unknown routes, wrong methods, bodies over the limit, bad
//! and refused WebSocket upgrades, a full or draining node, on the client
//! listener and on `--admin-listen` alike (docs/protocol.md, "HTTP errors").

use pubmesh_tests::harness::{eventually, free_port, patience, Client, Node, API_KEY};
use serde_json::Value;

const CLAIMS: &str = r#"
[[namespaces]]
pattern = "vip:*"
subscribe = "claim"
"#;

fn config(text: &str) -> String {
    pubmesh_tests::harness::config_file(text)
}

/// One request: method, URL, whether it asks for a WebSocket upgrade, body.
async fn call(method: &str, url: &str, upgrade: bool, body: Option<String>) -> reqwest::Response {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client.request(method, url).header("X-API-Key", API_KEY);
    if upgrade {
        request = request
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    request.send().await.expect("request")
}

/// Assert a JSON error answer with this status and code; returns the message.
async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> String {
    let what = format!("{} {}", response.status(), response.url());
    assert_eq!(response.status().as_u16(), status, "{what}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(content_type, "application/json", "{what}");
    let text = response.text().await.expect("body");
    assert!(text.starts_with("{\"error\":"), "{what}: {text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {text}: {e}"));
    assert_eq!(body["code"], code, "{what}: {text}");
    let message = body["error"].as_str().unwrap_or_default().to_string();
    assert!(!message.is_empty(), "{what}: {text}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{what}: {text}");
    message
}

#[tokio::test]
async fn the_client_listener_answers_every_error_in_json() {
    let node = Node::start(&[
        "--config",
        &config(CLAIMS),
        "--max-message-size",
        "1024",
        "--max-connections",
        "1",
        "--jwt-secret",
        "errors-secret",
    ])
    .await;
    let base = node.http();
    expect_error(
        call("GET", &format!("{base}/nope"), false, None).await,
        404,
        "not_found",
    )
    .await;
    let wrong_method = call("POST", &format!("{base}/livez"), false, None).await;
    assert_eq!(wrong_method.headers()["allow"], "GET,HEAD");
    let message = expect_error(wrong_method, 405, "method_not_allowed").await;
    assert_eq!(message, "POST is not allowed on /livez");
    expect_error(
        call("DELETE", &format!("{base}/websocket"), false, None).await,
        405,
        "method_not_allowed",
    )
    .await;
    // The API shares this listener here: its limits answer JSON too.
    let big = format!(
        r#"{{"channel_ids":["a"],"data":{{"p":"{}"}}}}"#,
        "x".repeat(2000)
    );
    let message = expect_error(
        call(
            "POST",
            &format!("{base}/api/notify/channels"),
            false,
            Some(big),
        )
        .await,
        413,
        "too_large",
    )
    .await;
    assert!(message.contains("1024 bytes"), "{message}");
    expect_error(
        call("GET", &format!("{base}/api/notify/channels"), false, None).await,
        405,
        "method_not_allowed",
    )
    .await;

    // Upgrades: not an upgrade, a refused channel name, a bad query, a
    // channel the socket may not join.
    expect_error(
        call("GET", &format!("{base}/websocket"), false, None).await,
        400,
        "bad_request",
    )
    .await;
    expect_error(
        call(
            "GET",
            &format!("{base}/websocket?channel_id=a%7Bb"),
            true,
            None,
        )
        .await,
        400,
        "bad_request",
    )
    .await;
    expect_error(
        call(
            "GET",
            &format!("{base}/websocket?channel_id=a&channel_id=b"),
            true,
            None,
        )
        .await,
        400,
        "bad_request",
    )
    .await;
    expect_error(
        call(
            "GET",
            &format!("{base}/websocket?channel_id=vip:1"),
            true,
            None,
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    // A full node: 503 `capacity`.
    let _only = node.client("").await;
    expect_error(
        call("GET", &format!("{base}/websocket"), true, None).await,
        503,
        "capacity",
    )
    .await;
}

#[tokio::test]
async fn the_admin_listener_answers_every_error_in_json() {
    let admin = format!("127.0.0.1:{}", free_port());
    let node = Node::start(&["--admin-listen", &admin, "--max-message-size", "1024"]).await;
    let base = format!("http://{admin}");
    expect_error(
        call("GET", &format!("{base}/nope"), false, None).await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        call("GET", &format!("{base}/websocket"), true, None).await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        call("GET", &format!("{base}/api/broadcast"), false, None).await,
        405,
        "method_not_allowed",
    )
    .await;
    expect_error(
        call("PUT", &format!("{base}/metrics"), false, None).await,
        405,
        "method_not_allowed",
    )
    .await;
    let big = format!(r#"{{"data":{{"p":"{}"}}}}"#, "x".repeat(2000));
    expect_error(
        call("POST", &format!("{base}/api/broadcast"), false, Some(big)).await,
        413,
        "too_large",
    )
    .await;
    expect_error(
        call("GET", &format!("{base}/api/history"), false, None).await,
        400,
        "bad_request",
    )
    .await;
    let unkeyed = reqwest::get(format!("{base}/api/nodes"))
        .await
        .expect("request");
    expect_error(unkeyed, 401, "unauthorized").await;
    // The client listener no longer serves the API.
    expect_error(
        call("GET", &format!("{}/api/nodes", node.http()), false, None).await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn a_draining_node_refuses_upgrades_with_json() {
    let admin = format!("127.0.0.1:{}", free_port());
    let node = Node::start(&["--admin-listen", &admin, "--drain-seconds", "20"]).await;
    // A connected client keeps the drain going.
    let mut held = Client::connect(&node.ws("")).await;
    node.sigterm();
    let url = format!("{}/websocket", node.http());
    let refused = eventually("upgrades refused", patience(10), || {
        let url = url.clone();
        async move {
            let response = call("GET", &url, true, None).await;
            (response.status().as_u16() == 503).then_some(response)
        }
    })
    .await;
    let message = expect_error(refused, 503, "draining").await;
    assert!(message.contains("another node"), "{message}");
    // The admin listener still answers, in JSON.
    expect_error(
        call("GET", &format!("http://{admin}/nope"), false, None).await,
        404,
        "not_found",
    )
    .await;
    assert_eq!(held.expect_close().await.map(|c| c.0), Some(1012));
}
