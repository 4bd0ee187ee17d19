//! The Socket.IO front-end against bad input, with a raw WebSocket: the
//! Engine.IO handshake errors, malformed packets, unknown namespaces,
//! frames over `maxPayload`, silence past the ping timeout. Each ends as
//! the reference server ends it (an Engine.IO error body, a CONNECT_ERROR,
//! or a closed connection), and no room membership is left behind.

use futures_util::{SinkExt, StreamExt};
use pubmesh_tests::harness::{config_file, patience, Node};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const CONFIG: &str = r#"
[socketio]
ping_interval_ms = 300
ping_timeout_ms = 300
max_payload = 1024

[[socketio.namespaces]]
name = "/"
rooms = ["lobby"]
"#;

async fn node() -> Node {
    let file = config_file(CONFIG);
    Node::start(&["--config", &file]).await
}

async fn open(node: &Node) -> (Ws, Value) {
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
        node.port
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let first = next_text(&mut ws).await.expect("open packet");
    let handshake = first.strip_prefix('0').expect("an open packet");
    (ws, serde_json::from_str(handshake).expect("handshake JSON"))
}

/// The next text frame; `None` once the connection has ended.
async fn next_text(ws: &mut Ws) -> Option<String> {
    let deadline = tokio::time::Instant::now() + patience(20);
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a frame or the end within the deadline");
        match next {
            Some(Ok(Message::Text(t))) => return Some(t.to_string()),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// The next text frame that is not an Engine.IO ping (answered).
async fn next_packet(ws: &mut Ws) -> Option<String> {
    loop {
        let t = next_text(ws).await?;
        if t == "2" {
            let _ = ws.send(Message::Text(Utf8Bytes::from("3"))).await;
            continue;
        }
        return Some(t);
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(Utf8Bytes::from(text.to_string())))
        .await
        .expect("send");
}

/// Read until the connection ends; the close code, if a close frame came.
async fn closed(ws: &mut Ws) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + patience(20);
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("closed within the deadline");
        match next {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Err(_)) | None => return None,
            Some(Ok(_)) => {}
        }
    }
}

async fn lobby(node: &Node) -> u64 {
    node.channel_members("lobby").await
}

async fn wait_lobby(node: &Node, n: u64) {
    node.wait_members("lobby", n).await
}

/// Open and join `/`; the socket is then in `lobby`.
async fn joined(node: &Node) -> Ws {
    let (mut ws, _) = open(node).await;
    send(&mut ws, "40").await;
    let reply = next_packet(&mut ws).await.expect("CONNECT reply");
    assert!(reply.starts_with("40{\"sid\":"), "{reply}");
    ws
}

#[tokio::test]
async fn engineio_handshake_errors_have_the_reference_codes() {
    let node = node().await;
    for (method, query, code, message) in [
        (
            "GET",
            "EIO=4&transport=carrier-pigeon",
            0,
            "Transport unknown",
        ),
        (
            "GET",
            "EIO=9&transport=websocket",
            5,
            "Unsupported protocol version",
        ),
        (
            "GET",
            "transport=websocket",
            5,
            "Unsupported protocol version",
        ),
        (
            "PUT",
            "EIO=4&transport=websocket",
            2,
            "Bad handshake method",
        ),
        (
            "GET",
            "EIO=4&transport=websocket&sid=nope",
            1,
            "Session ID unknown",
        ),
        // A WebSocket handshake that is not an upgrade.
        ("GET", "EIO=4&transport=websocket", 3, "Bad request"),
    ] {
        let response = reqwest::Client::new()
            .request(
                method.parse().unwrap(),
                format!("http://127.0.0.1:{}/socket.io/?{query}", node.port),
            )
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 400, "{method} {query}");
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(
            body,
            json!({"code": code, "message": message}),
            "{method} {query}"
        );
    }
}

#[tokio::test]
async fn the_handshake_announces_the_configured_timers_and_namespaces_are_checked() {
    let node = node().await;
    let (mut ws, handshake) = open(&node).await;
    assert_eq!(handshake["upgrades"], json!([]));
    assert_eq!(handshake["pingInterval"], 300);
    assert_eq!(handshake["pingTimeout"], 300);
    assert_eq!(handshake["maxPayload"], 1024);
    assert!(handshake["sid"].as_str().is_some_and(|s| !s.is_empty()));
    // A namespace not served: the standard CONNECT_ERROR, and the
    // connection stays open for another CONNECT.
    send(&mut ws, "40/nope,").await;
    assert_eq!(
        next_packet(&mut ws).await.as_deref(),
        Some(r#"44/nope,{"message":"Invalid namespace"}"#)
    );
    send(&mut ws, "40").await;
    let reply = next_packet(&mut ws).await.expect("CONNECT reply");
    assert!(reply.starts_with("40{\"sid\":"), "{reply}");
    wait_lobby(&node, 1).await;
    // Again once connected.
    send(&mut ws, "40/nope,").await;
    assert_eq!(
        next_packet(&mut ws).await.as_deref(),
        Some(r#"44/nope,{"message":"Invalid namespace"}"#)
    );
    // DISCONNECT leaves the namespace's rooms.
    send(&mut ws, "41").await;
    wait_lobby(&node, 0).await;
}

#[tokio::test]
async fn malformed_packets_close_the_connection_and_leave_no_membership() {
    let node = node().await;
    for bad in [
        "42[\"unterminated",                             // not JSON
        "42{\"not\":\"an array\"}",                      // an event that is not an array
        "42[\"connect\"]",                               // a reserved event name
        "43[\"no id\"]",                                 // an ACK without id
        "4",                                             // an empty Socket.IO packet
        "49[]",                                          // an unknown Socket.IO type
        "9",                                             // an unknown Engine.IO type
        "",                                              // an empty Engine.IO packet
        "2",                                             // a v4 client never pings
        "451-[\"e\",{\"_placeholder\":true,\"num\":7}]", // a placeholder beyond its attachments
    ] {
        let mut ws = joined(&node).await;
        wait_lobby(&node, 1).await;
        send(&mut ws, bad).await;
        let code = closed(&mut ws).await;
        assert_eq!(code, Some(4400), "{bad:?}");
        wait_lobby(&node, 0).await;
    }
    // A binary frame with no binary packet waiting for it.
    let mut ws = joined(&node).await;
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(closed(&mut ws).await, Some(4400));
    wait_lobby(&node, 0).await;
    // Before any CONNECT, too.
    let (mut ws, _) = open(&node).await;
    send(&mut ws, "4zzz").await;
    assert_eq!(closed(&mut ws).await, Some(4400));
    let text = node.metrics().await;
    assert!(
        text.lines().any(|l| l.starts_with(
            "pubmesh_frontend_errors_total{code=\"bad_packet\",frontend=\"socketio\"}"
        ) && !l.ends_with(" 0")),
        "bad_packet counted"
    );
}

#[tokio::test]
async fn a_frame_over_max_payload_closes_with_1009() {
    let node = node().await;
    let mut ws = joined(&node).await;
    wait_lobby(&node, 1).await;
    let big = format!("42[\"e\",\"{}\"]", "x".repeat(2000));
    send(&mut ws, &big).await;
    assert_eq!(closed(&mut ws).await, Some(1009));
    wait_lobby(&node, 0).await;
}

#[tokio::test]
async fn silence_past_the_ping_timeout_ends_the_connection() {
    let node = node().await;
    let (mut ws, _) = open(&node).await;
    send(&mut ws, "40").await;
    // Read without answering the pings.
    let mut pings = 0;
    let ended = loop {
        match next_text(&mut ws).await {
            Some(t) if t == "2" => pings += 1,
            Some(_) => {}
            None => break true,
        }
    };
    assert!(ended);
    assert_eq!(pings, 1, "one unanswered ping, then the end");
    wait_lobby(&node, 0).await;

    // Answering keeps the connection: several pings come and go.
    let mut ws = joined(&node).await;
    let mut pings = 0;
    while pings < 4 {
        let t = next_text(&mut ws).await.expect("still open");
        if t == "2" {
            pings += 1;
            send(&mut ws, "3").await;
        }
    }
    assert_eq!(lobby(&node).await, 1);
}

async fn http(node: &Node, method: &str, query: &str, body: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .request(
            method.parse().unwrap(),
            format!("http://127.0.0.1:{}/socket.io/?{query}", node.port),
        )
        .header("content-type", "text/plain;charset=UTF-8")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// A polling handshake: the sid.
async fn polling_sid(node: &Node) -> String {
    let (status, body) = http(node, "GET", "EIO=4&transport=polling", "").await;
    assert_eq!(status, 200, "{body}");
    let handshake: Value =
        serde_json::from_str(body.strip_prefix('0').expect("open packet")).expect("JSON");
    assert_eq!(handshake["upgrades"], json!(["websocket"]));
    handshake["sid"].as_str().expect("sid").to_string()
}

#[tokio::test]
async fn polling_requests_that_are_not_right_get_the_reference_errors() {
    let node = node().await;
    let unknown = json!({"code": 1, "message": "Session ID unknown"});
    // Unknown sids, and a forged one (its signature does not verify, so
    // it is never forwarded anywhere).
    let sid = polling_sid(&node).await;
    // Its last character changed (to one it is not).
    let last = if sid.ends_with('x') { 'y' } else { 'x' };
    let forged = format!("{}{last}", &sid[..sid.len() - 1]);
    for sid in ["nope", forged.as_str()] {
        for method in ["GET", "POST"] {
            let (status, body) = http(
                &node,
                method,
                &format!("EIO=4&transport=polling&sid={sid}"),
                "40",
            )
            .await;
            assert_eq!(status, 400, "{method} {sid}");
            assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), unknown);
        }
    }
    // JSONP polling (`j=`) is not served, for a handshake or a session.
    let bad = json!({"code": 3, "message": "Bad request"});
    for query in [
        "EIO=3&transport=polling&j=0".to_string(),
        format!("EIO=4&transport=polling&sid={sid}&j=0"),
    ] {
        let (status, body) = http(&node, "GET", &query, "").await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), bad);
    }

    // Join, then a payload that is not Engine.IO: 400, and the session ends.
    let q = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(http(&node, "POST", &q, "40").await, (200, "ok".to_string()));
    let (status, body) = http(&node, "GET", &q, "").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("40{\"sid\":"), "{body}");
    wait_lobby(&node, 1).await;
    let (status, _) = http(&node, "POST", &q, "9nonsense").await;
    assert_eq!(status, 400);
    wait_lobby(&node, 0).await;
    let (status, body) = http(&node, "GET", &q, "").await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (400, unknown.clone())
    );

    // A body over maxPayload: 413, and the session ends.
    let sid = polling_sid(&node).await;
    let q = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(http(&node, "POST", &q, "40").await.0, 200);
    wait_lobby(&node, 1).await;
    let big = format!("42[\"e\",\"{}\"]", "x".repeat(2000));
    assert_eq!(http(&node, "POST", &q, &big).await.0, 413);
    wait_lobby(&node, 0).await;

    // Two polls at once: the second is refused and the session ends.
    let sid = polling_sid(&node).await;
    let q = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(http(&node, "POST", &q, "40").await.0, 200);
    let (status, body) = http(&node, "GET", &q, "").await;
    assert!(status == 200 && body.starts_with("40"), "{body}");
    wait_lobby(&node, 1).await;
    // Two polls sent together until they overlap (a poll is held until
    // there is something to send, so they almost always do at once).
    let url = format!("http://127.0.0.1:{}/socket.io/?{q}", node.port);
    let get = |url: String| async move {
        let r = reqwest::get(url).await.expect("poll");
        (r.status().as_u16(), r.text().await.expect("body"))
    };
    let mut refused = false;
    for _ in 0..20 {
        let (one, two) = tokio::join!(get(url.clone()), get(url.clone()));
        if one.0 == 400 || two.0 == 400 {
            refused = true;
            break;
        }
        // Both ended with a ping: answer it and try again.
        http(&node, "POST", &q, "3").await;
    }
    assert!(refused, "overlapping polls were both served");
    wait_lobby(&node, 0).await;
}

#[tokio::test]
async fn polling_packets_take_the_frame_budget_of_a_websocket() {
    // Each POSTed packet costs a token like a WebSocket frame: a burst of 10.
    let file = config_file(CONFIG);
    let node = Node::start(&[
        "--config",
        &file,
        "--client-rate",
        "1",
        "--client-burst",
        "10",
    ])
    .await;
    let sid = polling_sid(&node).await;
    let q = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(http(&node, "POST", &q, "40").await, (200, "ok".to_string()));
    let (status, body) = http(&node, "GET", &q, "").await;
    assert!(status == 200 && body.starts_with("40"), "{body}");
    wait_lobby(&node, 1).await;
    // 40 events in one payload: far over what is left of the burst.
    let flood = vec![r#"42["e",1]"#; 40].join("\u{1e}");
    let (status, body) = http(&node, "POST", &q, &flood).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (400, json!({"code": 3, "message": "Bad request"}))
    );
    wait_lobby(&node, 0).await;
    let (status, _) = http(&node, "GET", &q, "").await;
    assert_eq!(status, 400, "the session ended");
    assert_eq!(
        node.metric(r#"pubmesh_connections_closed_total{reason="rate_limited"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn engineio_3_clients_are_in_the_main_namespace_at_once_and_ping_the_server() {
    let node = node().await;
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=3&transport=websocket",
        node.port
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let open = next_text(&mut ws).await.expect("open packet");
    let handshake: Value = serde_json::from_str(&open[1..]).expect("handshake JSON");
    assert_eq!(handshake["pingInterval"], 300);
    assert!(handshake.get("maxPayload").is_none(), "{handshake}");
    assert_eq!(next_text(&mut ws).await.as_deref(), Some("40"));
    wait_lobby(&node, 1).await;
    // The client pings; the server answers (with the probe's data too).
    send(&mut ws, "2").await;
    assert_eq!(next_text(&mut ws).await.as_deref(), Some("3"));
    // v4 errors are strings.
    send(&mut ws, "40/nope,").await;
    assert_eq!(
        next_text(&mut ws).await.as_deref(),
        Some(r#"44/nope,"Invalid namespace""#)
    );
    // A client that stops pinging is dropped after interval + timeout.
    assert_eq!(closed(&mut ws).await, Some(4010));
    wait_lobby(&node, 0).await;
}

#[tokio::test]
async fn attachments_that_never_arrive_leave_nothing_behind() {
    let node = node().await;
    // A text packet while attachments are awaited: the reference parser
    // refuses it, and the connection closes.
    let mut ws = joined(&node).await;
    wait_lobby(&node, 1).await;
    send(&mut ws, r#"451-["e",{"_placeholder":true,"num":0}]"#).await;
    send(&mut ws, r#"42["e",1]"#).await;
    assert_eq!(closed(&mut ws).await, Some(4400));
    wait_lobby(&node, 0).await;
    // Announced attachments, then silence: the ping timeout ends it (the
    // half-read packet is not kept alive by anything).
    let mut ws = joined(&node).await;
    wait_lobby(&node, 1).await;
    send(
        &mut ws,
        r#"452-["e",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
    )
    .await;
    ws.send(Message::Binary(vec![1u8, 2].into()))
        .await
        .expect("send");
    assert_eq!(closed(&mut ws).await, Some(4010));
    wait_lobby(&node, 0).await;
}

#[tokio::test]
async fn a_poll_flood_on_one_sid_ends_that_session_only() {
    let node = node().await;
    let sid = polling_sid(&node).await;
    let q = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(http(&node, "POST", &q, "40").await.0, 200);
    let (status, body) = http(&node, "GET", &q, "").await;
    assert!(status == 200 && body.starts_with("40"), "{body}");
    wait_lobby(&node, 1).await;
    // 30 polls at once: one is held, the others are refused (400) and end
    // the session; what was held is answered with the session's end (a
    // close packet), as is a poll that slipped in before the end.
    let url = format!("http://127.0.0.1:{}/socket.io/?{q}", node.port);
    let polls = (0..30).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let r = reqwest::get(url).await.expect("poll");
            (r.status().as_u16(), r.text().await.expect("body"))
        })
    });
    let mut replies = Vec::new();
    for p in polls {
        replies.push(p.await.expect("poll task"));
    }
    let refused = replies.iter().filter(|(s, _)| *s == 400).count();
    assert!(refused >= 28, "{replies:?}");
    for (status, body) in &replies {
        assert!(
            *status == 400 || (*status == 200 && body.split('\x1e').all(|p| p == "1" || p == "2")),
            "{replies:?}"
        );
    }
    // The session is over, its membership gone; the node serves others.
    wait_lobby(&node, 0).await;
    let (status, body) = http(&node, "GET", &q, "").await;
    assert_eq!(status, 400, "{body}");
    let other = polling_sid(&node).await;
    let q = format!("EIO=4&transport=polling&sid={other}");
    assert_eq!(http(&node, "POST", &q, "40").await.0, 200);
    wait_lobby(&node, 1).await;
}
