//! The Cells gateway (`/ws/event`) on two nodes and Redis: typed events
//! from `POST /api/events` reach exactly the sessions their audience
//! entitles, once per matching workspace, on either node; a refreshed JWT
//! changes what a session receives; bad input gets Cells' error and a close.

use std::time::Duration;

mod cells_support;

use cells_support::{events_url, token, two_nodes, Session, SECRET};
use pubmesh_tests::harness::{cluster_slot, eventually, hs256_with, patience, Client, Node, Redis};
use serde_json::{json, Value};

async fn publish(node: &Node, kind: &str, id: &str, audience: Value) {
    let body = json!({"kind": kind, "audience": audience, "body": {"id": id}});
    let (status, reply) = node.post("/api/events", body).await;
    assert_eq!(status, 200, "{reply}");
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

/// Where a session connects, and its user, profile, roles and workspaces.
type Spec<'a> = (&'a Node, &'a str, &'a str, &'a [&'a str], &'a [&'a str]);

#[tokio::test]
async fn events_reach_exactly_the_entitled_sessions_on_both_nodes() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let (n0, n1) = two_nodes(&redis).await;
    let specs: [Spec<'_>; 5] = [
        (&n0, "alice", "standard", &["r-editors"], &["w1", "w2"]),
        (&n1, "alice", "standard", &["r-editors"], &["w1"]),
        (&n1, "bob", "standard", &[], &["w2"]),
        (&n0, "carol", "admin", &["r-admins"], &[]),
        (&n1, "dave", "standard", &["r-editors"], &["w3"]),
    ];
    let mut sessions = Vec::new();
    for (node, user, profile, roles, ws) in specs {
        let mut s = Session::open(node, &token(user, profile, roles, ws), user).await;
        // Ready as seen from the other node: the relay carries the groups.
        let other = if std::ptr::eq(node, &n0) { &n1 } else { &n0 };
        s.ready(other, ws).await;
        sessions.push(s);
    }
    publish(&n0, "tree", "e1", json!({"workspaces": ["w1", "w2"]})).await;
    publish(&n0, "activity", "e2", json!({"users": ["alice"]})).await;
    publish(&n0, "idm", "e3", json!({"roles": ["r-editors"]})).await;
    publish(&n0, "task", "e4", json!({"profile": "admin"})).await;
    publish(
        &n0,
        "activity",
        "e5",
        json!({"workspaces": ["w1", "w2"], "exclude_user": "alice"}),
    )
    .await;
    publish(
        &n0,
        "tree",
        "e6",
        json!({"workspaces": ["w9"], "users": ["zed"]}),
    )
    .await;
    publish(
        &n1,
        "meta",
        "e7",
        json!({"workspaces": ["w1"], "roles": ["r-admins"]}),
    )
    .await;
    let expected: [Vec<(String, String)>; 5] = [
        pairs(&[
            ("e1", "w1"),
            ("e1", "w2"),
            ("e2", ""),
            ("e3", ""),
            ("e7", "w1"),
        ]),
        pairs(&[("e1", "w1"), ("e2", ""), ("e3", ""), ("e7", "w1")]),
        pairs(&[("e1", "w2"), ("e5", "w2")]),
        pairs(&[("e4", ""), ("e7", "")]),
        pairs(&[("e3", "")]),
    ];
    for (i, (s, want)) in sessions.iter_mut().zip(expected).enumerate() {
        let via = if i % 2 == 0 { &n1 } else { &n0 };
        let got = s.collect(via, want.len()).await;
        assert_eq!(got, want, "session {i} ({})", s.user);
    }
    // Frames keep the body and carry Cells' markers.
    let s = &mut sessions[0];
    publish(&n1, "tree", "e8", json!({"workspaces": ["w2"]})).await;
    let frame = s.client.recv_until(|f| f.get("id").is_some()).await;
    assert_eq!(frame["id"], "e8");
    assert_eq!(frame["EventWorkspaceId"], "w2");
    assert!(
        frame.get("@type").is_none(),
        "tree events are untyped: {frame}"
    );
    let text = n0.metrics().await;
    assert!(
        text.contains("pubmesh_frontend_connections{frontend=\"cells\"} 2"),
        "{}",
        text.lines()
            .filter(|l| l.contains("frontend"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn a_refreshed_jwt_changes_what_a_session_receives() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let (n0, n1) = two_nodes(&redis).await;
    let mut s = Session::open(&n1, &token("erin", "standard", &[], &["w1"]), "erin").await;
    s.ready(&n0, &["w1"]).await;
    publish(&n0, "tree", "before", json!({"workspaces": ["w1", "w2"]})).await;
    assert_eq!(s.collect(&n0, 1).await, pairs(&[("before", "w1")]));
    // Same socket, new claims: w2 instead of w1, and a role.
    s.client
        .send(json!({"@type": "subscribe", "jwt": token("erin", "standard", &["r1"], &["w2"])}))
        .await;
    s.ready(&n0, &["w2"]).await;
    publish(&n0, "tree", "after", json!({"workspaces": ["w1", "w2"]})).await;
    publish(&n0, "idm", "role", json!({"roles": ["r1"]})).await;
    let got = s.collect(&n0, 2).await;
    assert_eq!(got, pairs(&[("after", "w2"), ("role", "")]));
    // The node no longer holds erin's w1 group anywhere.
    eventually("w1 group gone", patience(20), || async {
        let (_, body) = n0.get("/api/channels").await;
        let names: Vec<String> = body["channels"]
            .as_array()?
            .iter()
            .filter_map(|c| c["channel"].as_str().map(str::to_string))
            .collect();
        (!names.iter().any(|c| c.ends_with("ws/w1")) && names.iter().any(|c| c.ends_with("ws/w2")))
            .then_some(())
    })
    .await;
    // Unsubscribed: nothing at all.
    s.client.send(json!({"@type": "unsubscribe"})).await;
    eventually("groups left", patience(20), || async {
        let (_, body) = n0.get("/api/channels").await;
        body["channels"].as_array()?.is_empty().then_some(())
    })
    .await;
    publish(
        &n0,
        "tree",
        "gone",
        json!({"workspaces": ["w2"], "users": ["erin"]}),
    )
    .await;
    s.client.expect_silence(Duration::from_millis(500)).await;
}

/// Open a session, send `frames`, and return the error frame and the close.
async fn refused(node: &Node, frames: &[&str]) -> (Value, Option<(u16, String)>) {
    let mut client = Client::connect_raw(&events_url(node), None)
        .await
        .expect("connect");
    for f in frames {
        client.send_text(f).await;
    }
    let error = client.recv_within(patience(20)).await;
    (error, client.expect_close().await)
}

#[tokio::test]
async fn bad_frames_and_tokens_get_cells_error_and_a_close() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let expired = hs256_with(SECRET, json!({"sub": "x", "name": "x"}), -30);
    let forged = hs256_with("other", json!({"sub": "x"}), 300);
    let bad_claims = hs256_with(SECRET, json!({"sub": "x", "workspaces": 5}), 300);
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 4400, ""),
        ("[1,2]".into(), 4400, ""),
        (r#"{"@type":"subscribe","jwt":5}"#.into(), 4400, ""),
        (
            r#"{"@type":"subscribe","jwt":""}"#.into(),
            4001,
            "empty jwt",
        ),
        (r#"{"@type":"subscribe"}"#.into(), 4001, "empty jwt"),
        (
            json!({"@type": "subscribe", "jwt": expired}).to_string(),
            4001,
            "token expired",
        ),
        (
            json!({"@type": "subscribe", "jwt": forged}).to_string(),
            4001,
            "",
        ),
        (
            json!({"@type": "subscribe", "jwt": "a.b.c"}).to_string(),
            4001,
            "",
        ),
        (
            json!({"@type": "subscribe", "jwt": bad_claims}).to_string(),
            4400,
            "",
        ),
    ];
    for (frame, code, text) in &cases {
        let (error, close) = refused(&node, &[frame.as_str()]).await;
        assert_eq!(error["@type"], "error", "{frame}: {error}");
        assert_eq!(error["jwt"], "", "{frame}");
        let message = error["error"].as_str().expect("error text");
        assert!(
            !message.is_empty() && message.contains(text),
            "{frame}: {message}"
        );
        assert_eq!(close.map(|c| c.0), Some(*code), "{frame}");
    }
    // A subscribed session that sends garbage is closed too.
    let good = token("x", "standard", &[], &["w1"]);
    let sub = json!({"@type": "subscribe", "jwt": good}).to_string();
    let (error, close) = refused(&node, &[sub.as_str(), "nope"]).await;
    assert_eq!(error["@type"], "error");
    assert_eq!(close.map(|c| c.0), Some(4400));
    // Unknown @type is ignored, as Cells does: the session still works.
    let mut s = Session::open(&node, &good, "x").await;
    s.client.send_text(r#"{"@type":"register","x":1}"#).await;
    s.ready(&node, &["w1"]).await;
    // Over the frame cap (2,048 bytes): 1009.
    let big = format!(r#"{{"@type":"subscribe","jwt":"{}"}}"#, "a".repeat(3000));
    s.client.send_text(&big).await;
    assert_eq!(s.client.expect_close().await.map(|c| c.0), Some(1009));
    // A flood: 4029.
    let mut flood = Client::connect_raw(&events_url(&node), None)
        .await
        .expect("connect");
    for _ in 0..400 {
        if flood
            .send_message(tokio_tungstenite::tungstenite::Message::Text(
                r#"{"@type":"ping"}"#.into(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(flood.expect_close().await.map(|c| c.0), Some(4029));
    // Nothing is left: no connections, no groups.
    eventually("no cells state left", patience(20), || async {
        let text = node.metrics().await;
        let open = text.contains("pubmesh_frontend_connections{frontend=\"cells\"} 0");
        let (_, body) = node.get("/api/channels").await;
        (open && body["channels"].as_array()?.is_empty()).then_some(())
    })
    .await;
    let text = node.metrics().await;
    for code in [
        "bad_json",
        "empty_jwt",
        "bad_jwt",
        "bad_claims",
        "too_big",
        "rate_limited",
    ] {
        let line = format!("pubmesh_frontend_errors_total{{code=\"{code}\",frontend=\"cells\"}}");
        let n: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(&line)
                    .map(|v| v.trim().parse().unwrap_or(0.0))
            })
            .unwrap_or_else(|| panic!("{line} missing"));
        assert!(n >= 1.0, "{line} {n}");
    }
}

#[tokio::test]
async fn bad_event_requests_are_refused_with_json_errors() {
    let node = Node::start(&["--jwt-secret", SECRET, "--cells-event-kinds", "share"]).await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"kind": "nope", "audience": {"users": ["u"]}, "body": {}}),
            "unknown_kind",
        ),
        (
            json!({"kind": "tree", "audience": {"users": ["u"]}, "body": [1]}),
            "bad_request",
        ),
        (
            json!({"kind": "tree", "audience": {}, "body": {}}),
            "bad_request",
        ),
        (json!({"kind": "tree", "body": {}}), "bad_request"),
        (
            json!({"kind": 5, "audience": {"users": ["u"]}, "body": {}}),
            "bad_request",
        ),
        (
            json!({"kind": "tree", "audience": {"users": "u"}, "body": {}}),
            "bad_request",
        ),
        (
            json!({"kind": "tree", "audience": {"workspaces": ["a\tb"]}, "body": {}}),
            "bad_request",
        ),
        (
            json!({"kind": "tree", "audience": {"users": ["u"], "group": 1}, "body": {}}),
            "bad_request",
        ),
        (
            json!({"kind": "tree", "audience": {"users": ["u"]}, "body": {}, "x": 1}),
            "bad_request",
        ),
    ];
    for (body, code) in cases {
        let (status, reply) = node.post("/api/events", body.clone()).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["code"], code, "{body}: {reply}");
        assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let many: Vec<String> = (0..101).map(|i| format!("w{i}")).collect();
    let (status, _) = node
        .post(
            "/api/events",
            json!({"kind": "tree", "audience": {"workspaces": many}, "body": {}}),
        )
        .await;
    assert_eq!(status, 400);
    // A configured kind is accepted and typed.
    let mut s = Session::open(&node, &token("y", "standard", &[], &[]), "y").await;
    s.ready(&node, &[]).await;
    publish(&node, "share", "s1", json!({"users": ["y"]})).await;
    let frame = s.client.recv_until(|f| f.get("id").is_some()).await;
    assert_eq!(frame, json!({"@type": "share", "id": "s1"}));
    let response = reqwest::Client::new()
        .post(format!("{}/api/events", node.http()))
        .body("{")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 401);
}
