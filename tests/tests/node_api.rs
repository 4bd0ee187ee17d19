//! The HTTP server API: keys, bodies, every route, health and metrics.

use std::time::Duration;

use pubmesh_tests::harness::{Node, API_KEY};
use serde_json::json;

#[tokio::test]
async fn api_needs_the_key_in_either_header() {
    let node = Node::start(&[]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/nodes", node.http());
    let none = http.get(&url).send().await.expect("request");
    assert_eq!(none.status(), 401);
    let body: serde_json::Value = none.json().await.expect("json");
    assert_eq!(body["code"], "unauthorized");
    let wrong = http
        .get(&url)
        .header("X-API-Key", "nope")
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status(), 401);
    let bearer = http
        .get(&url)
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(bearer.status(), 200);
    let header = http
        .get(&url)
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(header.status(), 200);
}

#[tokio::test]
async fn bad_bodies_get_400_with_a_code() {
    let node = Node::start(&[]).await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: &str| {
        http.post(format!("{}{path}", node.http()))
            .header("X-API-Key", API_KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    for (path, body) in [
        ("/api/notify/channels", "not json"),
        ("/api/notify/channels", "{\"channel_ids\":[],\"data\":{}}"),
        (
            "/api/notify/channels",
            "{\"channel_ids\":\"a\",\"data\":{}}",
        ),
        (
            "/api/notify/channels",
            "{\"channel_ids\":[\"a\"],\"data\":5}",
        ),
        ("/api/notify/channels", "{\"channel_ids\":[\"a\"]}"),
        ("/api/notify/users", "{\"root_ids\":[1],\"data\":{}}"),
        ("/api/notify/clients", "{\"client_ids\":[\"\"],\"data\":{}}"),
        ("/api/broadcast", "{\"data\":[]}"),
        ("/api/disconnect", "{}"),
        (
            "/api/notify/channels",
            "{\"channel_ids\":[\"a\"],\"data\":{},\"extra\":1}",
        ),
    ] {
        let response = post(path, body).await.expect("request");
        assert_eq!(response.status(), 400, "{path} {body}");
        let json: serde_json::Value = response.json().await.expect("json error body");
        assert_eq!(json["code"], "bad_request", "{path} {body}: {json}");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let huge = format!(
        "{{\"channel_ids\":[\"a\"],\"data\":{{\"p\":\"{}\"}}}}",
        "x".repeat(200_000)
    );
    assert_eq!(
        post("/api/notify/channels", &huge)
            .await
            .expect("request")
            .status(),
        413
    );
    // The node is still fine.
    assert_eq!(node.get("/api/nodes").await.0, 200);
}

#[tokio::test]
async fn notify_routes_deliver_and_report_what_they_did() {
    let node = Node::start(&["--jwt-secret", "s"]).await;
    let token = pubmesh_tests::harness::hs256("s", "n::u1", 300);
    let mut a = node.client(&format!("channel_id=ch-a&token={token}")).await;
    let mut b = node.client("channel_id=ch-b").await;

    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["ch-a", "ch-b"], "data": {"k": 1}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"local_deliveries": 2, "relayed": false, "relay": "none"})
    );
    assert_eq!(a.recv().await, json!({"k": 1}));
    assert_eq!(b.recv().await, json!({"k": 1}));

    let (_, body) = node
        .post(
            "/api/notify/users",
            json!({"root_ids": ["n::u1"], "data": {"k": 2}}),
        )
        .await;
    assert_eq!(body["local_deliveries"], 1);
    assert_eq!(a.recv().await, json!({"k": 2}));

    let (_, body) = node
        .post(
            "/api/notify/clients",
            json!({"client_ids": [b.client_id()], "data": {"k": 3}}),
        )
        .await;
    assert_eq!(body["local_deliveries"], 1);
    assert_eq!(b.recv().await, json!({"k": 3}));

    let (_, body) = node
        .post("/api/broadcast", json!({"data": {"k": 4}, "local": true}))
        .await;
    assert_eq!(
        body,
        json!({"local_deliveries": 2, "relayed": false, "relay": "none"})
    );
    assert_eq!(a.recv().await, json!({"k": 4}));
    assert_eq!(b.recv().await, json!({"k": 4}));

    // Unknown ids and channels are fine: nobody to deliver to.
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["nobody-here"], "data": {}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["local_deliveries"], 0);
    a.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn disconnect_closes_by_client_or_user_with_4002() {
    let node = Node::start(&["--jwt-secret", "s"]).await;
    let token = pubmesh_tests::harness::hs256("s", "n::gone", 300);
    let mut a = node.client("").await;
    let mut u1 = node.client(&format!("token={token}")).await;
    let mut u2 = node.client(&format!("token={token}")).await;
    let mut keep = node.client("").await;
    let (status, body) = node
        .post("/api/disconnect", json!({"client_ids": [a.client_id()]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["local_disconnects"], 1);
    assert_eq!(a.expect_close().await.map(|c| c.0), Some(4002));
    let (_, body) = node
        .post("/api/disconnect", json!({"root_ids": ["n::gone"]}))
        .await;
    assert_eq!(body["local_disconnects"], 2);
    assert_eq!(u1.expect_close().await.map(|c| c.0), Some(4002));
    assert_eq!(u2.expect_close().await.map(|c| c.0), Some(4002));
    keep.send(json!({"type": "connection"})).await;
    assert_eq!(keep.recv().await["type"], "connection");
}

#[tokio::test]
async fn nodes_and_channels_describe_the_node() {
    let node = Node::start(&[]).await;
    let _a = node.client("channel_id=alpha").await;
    let _b = node.client("channel_id=alpha").await;
    let _c = node.client("channel_id=beta").await;
    let (status, body) = node.get("/api/nodes").await;
    assert_eq!(status, 200);
    let me = &body["nodes"][0];
    assert_eq!(me["node_id"], node.node_id.as_str());
    assert_eq!(me["self"], true);
    assert_eq!(me["connections"], 3);
    assert_eq!(me["channels"], 2);
    assert_eq!(me["users"], 1, "all three share the anonymous user");
    assert!(me["uptime_seconds"].is_u64(), "{me}");
    assert_eq!(body["nodes"].as_array().map(Vec::len), Some(1));
    let (_, body) = node.get("/api/channels").await;
    let mut channels = body["channels"].as_array().expect("channels").clone();
    channels.sort_by_key(|c| c["channel"].as_str().map(str::to_string));
    assert_eq!(
        channels,
        vec![
            json!({"channel": "alpha", "members": 2}),
            json!({"channel": "beta", "members": 1})
        ]
    );
}

#[tokio::test]
async fn health_and_metrics_are_served() {
    let node = Node::start(&[]).await;
    let live = reqwest::get(format!("{}/livez", node.http()))
        .await
        .expect("livez");
    assert_eq!(live.status(), 200);
    let ready = reqwest::get(format!("{}/readyz", node.http()))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("readyz json");
    assert_eq!(body, json!({"ready": true}));
    let mut c = node.client("channel_id=m").await;
    node.post(
        "/api/notify/channels",
        json!({"channel_ids": ["m"], "data": {}}),
    )
    .await;
    c.recv().await;
    let text = node.metrics().await;
    for name in [
        "pubmesh_info",
        "pubmesh_connections",
        "pubmesh_connections_accepted_total",
        "pubmesh_subscriptions",
        "pubmesh_channels",
        "pubmesh_users",
        "pubmesh_messages_out_total",
        "pubmesh_messages_in_total",
        "pubmesh_deliveries_total",
        "pubmesh_slow_consumer_disconnects_total",
        "pubmesh_api_request_duration_seconds_bucket",
        "pubmesh_fanout_duration_seconds_bucket",
        "pubmesh_open_files_limit",
        "pubmesh_draining",
        "pubmesh_ready",
        "pubmesh_relay_up",
        "pubmesh_cross_node_latency_seconds_bucket",
        "pubmesh_relay_roundtrip_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(node.metric("pubmesh_connections").await, 1.0);
    assert_eq!(node.metric("pubmesh_deliveries_total").await, 1.0);
    assert!(node.metric("pubmesh_open_files_limit").await >= 1024.0);
}

#[tokio::test]
async fn local_notifications_are_never_relayed() {
    let node = Node::start(&["--jwt-secret", "s"]).await;
    let token = pubmesh_tests::harness::hs256("s", "n::loc", 300);
    let mut a = node.client(&format!("channel_id=loc&token={token}")).await;
    for (path, body) in [
        (
            "/api/notify/channels",
            json!({"channel_ids": ["loc"], "data": {"via": "channels"}, "local": true}),
        ),
        (
            "/api/notify/users",
            json!({"root_ids": ["n::loc"], "data": {"via": "users"}, "local": true}),
        ),
        (
            "/api/broadcast",
            json!({"data": {"via": "broadcast"}, "local": true}),
        ),
    ] {
        let (status, reply) = node.post(path, body.clone()).await;
        assert_eq!(status, 200, "{path}: {reply}");
        assert_eq!(
            reply,
            json!({"local_deliveries": 1, "relayed": false, "relay": "none"})
        );
        assert_eq!(a.recv().await, body["data"]);
    }
}

#[tokio::test]
async fn disconnect_accepts_clients_and_users_in_one_body() {
    let node = Node::start(&["--jwt-secret", "s"]).await;
    let token = pubmesh_tests::harness::hs256("s", "n::both", 300);
    let mut by_id = node.client("").await;
    let mut by_user = node.client(&format!("token={token}")).await;
    let mut stays = node.client("").await;
    let (status, body) = node
        .post(
            "/api/disconnect",
            json!({"client_ids": [by_id.client_id()], "root_ids": ["n::both"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(by_id.expect_close().await.map(|c| c.0), Some(4002));
    assert_eq!(by_user.expect_close().await.map(|c| c.0), Some(4002));
    stays.send(json!({"type": "connection"})).await;
    assert_eq!(stays.recv().await["type"], "connection");
    pubmesh_tests::harness::eventually(
        "disconnected sockets unregistered",
        pubmesh_tests::harness::patience(10),
        || {
            let node = &node;
            async move { (node.metric("pubmesh_connections").await == 1.0).then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn every_documented_metric_is_exposed() {
    let node = Node::start(&[]).await;
    // Unlabelled series exist from start-up.
    let text = node.metrics().await;
    let series = |text: &str, name: &str| {
        text.lines().any(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        })
    };
    for name in [
        "pubmesh_connections",
        "pubmesh_connections_accepted_total",
        "pubmesh_subscriptions",
        "pubmesh_channels",
        "pubmesh_users",
        "pubmesh_deliveries_total",
        "pubmesh_slow_consumer_disconnects_total",
        "pubmesh_fanout_duration_seconds_count",
        "pubmesh_open_files_limit",
        "pubmesh_draining",
        "pubmesh_ready",
        "pubmesh_relay_up",
        "pubmesh_relay_pipeline_depth",
        "pubmesh_relay_roundtrip_seconds_count",
        "pubmesh_cross_node_latency_seconds_count",
        "pubmesh_relay_subscriptions",
        "pubmesh_relay_resubscribes_total",
        "pubmesh_relay_subscriber_reconnects_total",
        "pubmesh_relay_peers",
    ] {
        assert!(series(&text, name), "{name} missing at start-up:\n{text}");
    }
    let info = format!(
        "pubmesh_info{{node_id=\"{}\",version=\"{}\"}}",
        node.node_id,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(node.metric(&info).await, 1.0, "{info}");
    assert_eq!(node.metric("pubmesh_ready").await, 1.0);
    assert_eq!(node.metric("pubmesh_draining").await, 0.0);

    // Labelled series appear once used.
    let mut c = node.client("channel_id=lab").await;
    c.send(json!({"type": "channel", "channel_ids": ["lab"], "data": {}}))
        .await;
    c.recv().await;
    c.send_text("nope").await;
    assert_eq!(c.recv().await["code"], "bad_json");
    node.post(
        "/api/notify/channels",
        json!({"channel_ids": ["lab"], "data": {}}),
    )
    .await;
    c.recv().await;
    let (status, _) = node
        .post("/api/disconnect", json!({"client_ids": [c.client_id()]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(c.expect_close().await.map(|c| c.0), Some(4002));
    let text = pubmesh_tests::harness::eventually(
        "labelled series",
        pubmesh_tests::harness::patience(10),
        || {
            let node = &node;
            async move {
                let text = node.metrics().await;
                series(&text, "pubmesh_connections_closed_total").then_some(text)
            }
        },
    )
    .await;
    for name in [
        "pubmesh_messages_in_total",
        "pubmesh_messages_out_total",
        "pubmesh_errors_total",
        "pubmesh_api_request_duration_seconds_bucket",
    ] {
        assert!(series(&text, name), "{name} missing after use:\n{text}");
    }
    assert!(node.metric("pubmesh_errors_total{code=\"bad_json\"}").await >= 1.0);
    assert!(node.metric("pubmesh_connections_accepted_total").await >= 1.0);
    assert!(node.metric("pubmesh_deliveries_total").await >= 2.0);
}
