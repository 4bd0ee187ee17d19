//! The wire modules (`node/src/frontend/*/wire.rs`) against the official
//! JavaScript clients: a WebSocket peer in this test frames everything with
//! the wire modules, and the real `phoenix`, `socket.io-client` 4 and
//! `socket.io-client` 2 must understand it (and it them). This pins the
//! byte formats the front-ends will serve before the front-ends exist.

use futures_util::{SinkExt, StreamExt};
use pubmesh_node::frontend::phoenix::wire as phx;
use pubmesh_node::frontend::socketio::{engineio as eio, wire as sio};
use pubmesh_tests::harness::patience;
use pubmesh_tests::js::Script;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_string()).expect("json")
}

/// Accept one WebSocket on `listener`; returns it and the request URI.
// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn accept(listener: &TcpListener, js: &mut Script) -> (Ws, String) {
    // Waiting on the script too: if it dies, its report says why.
    let stream = tokio::select! {
        accepted = listener.accept() => accepted.expect("accept").0,
        event = js.wait_event("a connection (never reported)", patience(60)) => {
            panic!("the client reported {event} instead of connecting")
        }
    };
    let mut uri = String::new();
    let ws = tokio_tungstenite::accept_hdr_async(stream, |req: &Request, resp: Response| {
        uri = req.uri().to_string();
        Ok(resp)
    })
    .await
    .expect("websocket handshake");
    (ws, uri)
}

async fn text(ws: &mut Ws, t: String) {
    ws.send(Message::Text(Utf8Bytes::from(t)))
        .await
        .expect("send text");
}

async fn binary(ws: &mut Ws, b: Vec<u8>) {
    ws.send(Message::Binary(Bytes::from(b)))
        .await
        .expect("send binary");
}

/// A Phoenix v2 peer built from the wire module: replies to joins,
/// heartbeats and pushes; `crash` answers with `phx_error`, `close` with
/// `phx_close`; binary pushes get a binary reply with the bytes reversed.
/// Reports what it decoded.
async fn phoenix_peer(mut ws: Ws, seen: mpsc::UnboundedSender<String>) {
    let v = phx::Vsn::V2;
    while let Some(Ok(msg)) = ws.next().await {
        let inbound = match msg {
            Message::Text(t) => phx::Inbound::decode_text(v, &t),
            Message::Binary(b) => phx::Inbound::decode_binary(v, &b),
            Message::Close(_) => break,
            _ => continue,
        };
        let inbound =
            inbound.unwrap_or_else(|e| panic!("the wire module refused a client frame: {e}"));
        match inbound {
            phx::Inbound::Join {
                join_ref,
                reference,
                topic,
                params,
            } => {
                let _ = seen.send(format!("join {} {}", params.get(), join_ref.is_some()));
                let response = raw(&json!({ "welcome": topic }).to_string());
                let reply = phx::encode_reply(
                    v,
                    join_ref.as_ref(),
                    reference.as_ref(),
                    &topic,
                    phx::Status::Ok,
                    &response,
                );
                text(&mut ws, reply).await;
                text(
                    &mut ws,
                    phx::encode_broadcast(v, &topic, "hello", &raw(r#"{"n":1}"#)),
                )
                .await;
                text(
                    &mut ws,
                    phx::encode_push(v, join_ref.as_ref(), &topic, "tick", &raw(r#"{"n":2}"#)),
                )
                .await;
                binary(
                    &mut ws,
                    phx::encode_binary_broadcast(&topic, "blob", &[1, 2, 3]).expect("blob"),
                )
                .await;
                binary(
                    &mut ws,
                    phx::encode_binary_push(join_ref.as_ref(), &topic, "bpush", &[9])
                        .expect("bpush"),
                )
                .await;
            }
            phx::Inbound::Heartbeat { reference } => {
                let _ = seen.send("heartbeat".into());
                let reply = phx::encode_reply(
                    v,
                    None,
                    reference.as_ref(),
                    phx::HEARTBEAT_TOPIC,
                    phx::Status::Ok,
                    &raw("{}"),
                );
                text(&mut ws, reply).await;
            }
            phx::Inbound::Leave {
                join_ref,
                reference,
                topic,
            } => {
                let _ = seen.send("leave".into());
                let reply = phx::encode_reply(
                    v,
                    join_ref.as_ref(),
                    reference.as_ref(),
                    &topic,
                    phx::Status::Ok,
                    &raw("{}"),
                );
                text(&mut ws, reply).await;
            }
            phx::Inbound::Push {
                join_ref,
                reference,
                topic,
                event,
                payload,
            } => {
                let _ = seen.send(format!("push {event}"));
                match (event.as_str(), payload) {
                    ("crash", _) => {
                        text(&mut ws, phx::encode_error(v, join_ref.as_ref(), &topic)).await
                    }
                    ("close", _) => {
                        text(&mut ws, phx::encode_close(v, join_ref.as_ref(), &topic)).await
                    }
                    ("refuse", _) => {
                        let reply = phx::encode_reply(
                            v,
                            join_ref.as_ref(),
                            reference.as_ref(),
                            &topic,
                            phx::Status::Error,
                            &phx::reason("not allowed"),
                        );
                        text(&mut ws, reply).await;
                    }
                    (_, phx::Payload::Json(p)) => {
                        let reply = phx::encode_reply(
                            v,
                            join_ref.as_ref(),
                            reference.as_ref(),
                            &topic,
                            phx::Status::Ok,
                            &p,
                        );
                        text(&mut ws, reply).await;
                    }
                    (_, phx::Payload::Binary(b)) => {
                        let mut back = b.to_vec();
                        back.reverse();
                        let reply = phx::encode_binary_reply(
                            join_ref.as_ref(),
                            reference.as_ref(),
                            &topic,
                            phx::Status::Ok,
                            &back,
                        )
                        .expect("binary reply");
                        binary(&mut ws, reply).await;
                    }
                }
            }
        }
    }
}

async fn wait_seen(seen: &mut mpsc::UnboundedReceiver<String>, what: &str) -> String {
    loop {
        let got = tokio::time::timeout(patience(30), seen.recv())
            .await
            .unwrap_or_else(|_| panic!("the peer never saw {what}"))
            .expect("peer running");
        if got.starts_with(what) {
            return got;
        }
    }
}

/// A channel message the Phoenix script reported.
fn is_message(v: &Value, name: &str) -> bool {
    v["event"] == "message" && v["name"] == name
}

#[tokio::test]
async fn official_phoenix_client_understands_the_v2_wire_module() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let options =
        json!({"params": {"token": "t1"}, "joinParams": {"since": 3}, "heartbeatIntervalMs": 300});
    let mut js = Script::spawn(
        "phoenix_client.js",
        &[
            &format!("ws://127.0.0.1:{port}/socket"),
            "room:lobby",
            &options.to_string(),
        ],
    );
    let (ws, uri) = accept(&listener, &mut js).await;
    assert!(uri.starts_with("/socket/websocket?"), "{uri}");
    assert!(
        uri.contains("vsn=2.0.0") && uri.contains("token=t1"),
        "{uri}"
    );
    let (tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(phoenix_peer(ws, tx));

    // Join: the client's join decodes, our reply reaches its `receive("ok")`.
    assert_eq!(
        wait_seen(&mut seen, "join").await,
        r#"join {"since":3} true"#
    );
    let joined = js.wait_event("joined", patience(30)).await;
    assert_eq!(joined["response"], json!({"welcome": "room:lobby"}));
    // Broadcast, push and binary frames all reach the channel.
    let hello = js
        .wait_for("hello", patience(20), |v| is_message(v, "hello"))
        .await;
    assert_eq!(hello["payload"], json!({"n": 1}));
    let tick = js
        .wait_for("tick", patience(20), |v| is_message(v, "tick"))
        .await;
    assert_eq!(tick["payload"], json!({"n": 2}));
    let blob = js
        .wait_for("blob", patience(20), |v| is_message(v, "blob"))
        .await;
    assert_eq!(blob["payload"], json!({"base64": "AQID"}));
    let bpush = js
        .wait_for("bpush", patience(20), |v| is_message(v, "bpush"))
        .await;
    assert_eq!(bpush["payload"], json!({"base64": "CQ=="}));
    // Heartbeats decode and their replies keep the socket open.
    wait_seen(&mut seen, "heartbeat").await;
    wait_seen(&mut seen, "heartbeat").await;

    // A push with a JSON reply, an error reply and a binary round trip.
    js.send_line(r#"{"push":"echo","payload":{"x":[1,"é"]}}"#)
        .await;
    let reply = js.wait_event("reply", patience(20)).await;
    assert_eq!(
        (&reply["name"], &reply["status"]),
        (&json!("echo"), &json!("ok"))
    );
    assert_eq!(reply["response"], json!({"x": [1, "é"]}));
    js.send_line(r#"{"push":"refuse","payload":{}}"#).await;
    let reply = js.wait_event("reply", patience(20)).await;
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["response"], json!({"reason": "not allowed"}));
    js.send_line(r#"{"push":"up","base64":"AQIDBA=="}"#).await;
    assert_eq!(wait_seen(&mut seen, "push up").await, "push up");
    let reply = js.wait_event("reply", patience(20)).await;
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["response"], json!({"base64": "BAMCAQ=="}));

    // phx_error makes the client rejoin; phx_close ends the channel.
    js.send_line(r#"{"push":"crash","payload":{}}"#).await;
    js.wait_event("channel_error", patience(20)).await;
    assert!(wait_seen(&mut seen, "join").await.starts_with("join"));
    js.wait_event("joined", patience(30)).await;
    js.send_line(r#"{"push":"close","payload":{}}"#).await;
    js.wait_event("channel_close", patience(20)).await;
}

#[tokio::test]
async fn phoenix_browser_bundle_in_headless_chromium_understands_the_v2_wire_module() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut page = Script::browser(
        "phoenix.js",
        &json!({
            "endpoint": format!("ws://127.0.0.1:{port}/socket"),
            "topic": "room:browser",
            "params": {"token": "b1"},
            "heartbeatIntervalMs": 300,
        }),
        &["node_modules/phoenix/priv/static/phoenix.js"],
    );
    let (ws, uri) = accept(&listener, &mut page).await;
    assert!(
        uri.starts_with("/socket/websocket?")
            && uri.contains("vsn=2.0.0")
            && uri.contains("token=b1"),
        "{uri}"
    );
    let (tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(phoenix_peer(ws, tx));
    wait_seen(&mut seen, "join").await;
    let joined = page.wait_event("joined", patience(60)).await;
    assert_eq!(joined["response"], json!({"welcome": "room:browser"}));
    let hello = page
        .wait_for("hello", patience(20), |v| is_message(v, "hello"))
        .await;
    assert_eq!(hello["payload"], json!({"n": 1}));
    let blob = page
        .wait_for("blob", patience(20), |v| is_message(v, "blob"))
        .await;
    assert_eq!(blob["payload"], json!({"bytes": [1, 2, 3]}));
    let reply = page.wait_event("reply", patience(20)).await;
    assert_eq!(reply["response"], json!({"from": "browser"}));
    wait_seen(&mut seen, "heartbeat").await;
    assert!(page.finish(patience(30)).await.success());
}

/// Send one Engine.IO packet as a WebSocket frame.
async fn out(ws: &mut Ws, packet: eio::Packet, version: eio::Eio) {
    let msg = match packet.encode_ws(version) {
        eio::WsFrame::Text(t) => Message::Text(Utf8Bytes::from(t)),
        eio::WsFrame::Binary(b) => Message::Binary(b),
    };
    ws.send(msg).await.expect("send to the client");
}

/// Socket.IO peer built from the wire modules. EIO=4: sends the handshake,
/// answers `40{auth}` with the sid, pings (the client must pong). EIO=3:
/// sends the handshake and `40`, answers client pings. Both: acks `join`,
/// then emits `bench` (text) and `file` (one binary attachment); acks
/// client events with their arguments, reassembling binary ones.
async fn socketio_peer(mut ws: Ws, version: eio::Eio, seen: mpsc::UnboundedSender<String>) {
    let sio_version = match version {
        eio::Eio::V4 => sio::Version::V5,
        eio::Eio::V3 => sio::Version::V4,
    };
    let handshake = eio::Handshake {
        sid: "wire-test-sid".into(),
        upgrades: vec![],
        ping_interval: 300,
        ping_timeout: 10_000,
        max_payload: Some(1_000_000),
    };
    out(&mut ws, handshake.packet(version), version).await;
    if version == eio::Eio::V3 {
        let connected = sio::Packet::connected(sio_version, "/", "");
        out(&mut ws, eio::Packet::message(connected.encode()), version).await;
    } else {
        out(&mut ws, eio::Packet::bare(eio::PacketType::Ping), version).await;
    }
    let mut pending: Option<sio::Reassembly> = None;
    while let Some(Ok(msg)) = ws.next().await {
        let packet = match msg {
            Message::Text(t) => eio::Packet::decode_text(&t),
            Message::Binary(b) => eio::Packet::decode_binary(version, &b),
            Message::Close(_) => break,
            _ => continue,
        }
        .unwrap_or_else(|e| panic!("the engine.io module refused a client frame: {e}"));
        let complete = match (packet.kind, packet.data) {
            (eio::PacketType::Pong, _) => {
                let _ = seen.send("pong".into());
                continue;
            }
            (eio::PacketType::Ping, _) => {
                let _ = seen.send("ping".into());
                out(&mut ws, eio::Packet::bare(eio::PacketType::Pong), version).await;
                continue;
            }
            (eio::PacketType::Message, eio::Data::Binary(b)) => {
                let mut r = pending
                    .take()
                    .expect("an attachment follows a binary packet");
                if !r.push(b) {
                    pending = Some(r);
                    continue;
                }
                r.finish().expect("complete")
            }
            (eio::PacketType::Message, eio::Data::Text(t)) => {
                let p = sio::Packet::decode(&t)
                    .unwrap_or_else(|e| panic!("the socket.io module refused {t:?}: {e}"));
                match sio::Reassembly::start(p).expect("placeholders") {
                    sio::Start::Complete(p) => sio::Reassembled {
                        packet: p,
                        attachments: vec![],
                    },
                    sio::Start::Pending(r) => {
                        pending = Some(r);
                        continue;
                    }
                }
            }
            (kind, _) => panic!("unexpected engine.io packet {kind:?}"),
        };
        match complete.packet {
            sio::Packet::Connect { nsp, data, .. } => {
                let _ = seen.send(format!(
                    "connect {nsp} {}",
                    data.map(|d| d.get().to_string()).unwrap_or_default()
                ));
                let ok = sio::Packet::connected(sio_version, &nsp, "sio-1");
                out(&mut ws, eio::Packet::message(ok.encode()), version).await;
            }
            sio::Packet::Event {
                nsp,
                id,
                event,
                args,
                ..
            } => {
                let _ = seen.send(format!("event {event} {}", complete.attachments.len()));
                let id = id.expect("the client asked for an ack");
                let (ack_args, attachments, bin) = if complete.attachments.is_empty() {
                    (args, vec![], None)
                } else {
                    (vec![sio::placeholder(0)], complete.attachments, Some(1))
                };
                let ack = sio::Packet::Ack {
                    nsp: nsp.clone(),
                    id,
                    args: ack_args,
                    attachments: bin,
                };
                out(&mut ws, eio::Packet::message(ack.encode()), version).await;
                for a in attachments {
                    out(&mut ws, eio::Packet::binary(a), version).await;
                }
                if event == "join" {
                    let bench = sio::Packet::event(
                        &nsp,
                        "bench",
                        vec![sio::Json::from_text(r#"{"t":1,"room":"r"}"#).expect("json")],
                    );
                    out(&mut ws, eio::Packet::message(bench.encode()), version).await;
                    let file = sio::Packet::Event {
                        nsp: nsp.clone(),
                        id: None,
                        event: "file".into(),
                        args: vec![sio::placeholder(0)],
                        attachments: Some(1),
                    };
                    out(&mut ws, eio::Packet::message(file.encode()), version).await;
                    out(&mut ws, eio::Packet::binary(vec![7u8, 8, 9]), version).await;
                }
            }
            other => panic!("unexpected socket.io packet {other:?}"),
        }
    }
}

async fn socketio_round_trip(client: &str, version: eio::Eio) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let options = json!({"auth": {"token": "t1"}, "events": ["bench", "file"]});
    let mut js = Script::spawn(
        "socketio_client.js",
        &[
            &format!("http://127.0.0.1:{port}"),
            client,
            &options.to_string(),
        ],
    );
    let (ws, uri) = accept(&listener, &mut js).await;
    let eio_param = match version {
        eio::Eio::V4 => "EIO=4",
        eio::Eio::V3 => "EIO=3",
    };
    assert!(uri.starts_with("/socket.io/?"), "{uri}");
    assert!(
        uri.contains(eio_param) && uri.contains("transport=websocket"),
        "{uri}"
    );
    let query: Vec<(String, String)> = uri
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(
        eio::Request::classify(
            "GET",
            query.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            true
        ),
        Ok(eio::Request::Handshake {
            eio: version,
            transport: eio::Transport::WebSocket
        })
    );
    let (tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(socketio_peer(ws, version, tx));

    match version {
        // v5: the client sends CONNECT with its auth and must answer pings.
        eio::Eio::V4 => {
            assert_eq!(
                wait_seen(&mut seen, "connect").await,
                r#"connect / {"token":"t1"}"#
            );
            wait_seen(&mut seen, "pong").await;
        }
        // v4: the client pings at the announced interval.
        eio::Eio::V3 => {
            wait_seen(&mut seen, "ping").await;
        }
    }
    js.wait_event("connect", patience(30)).await;

    js.send_line(r#"{"emit":"join","args":["room-1"],"ack":true}"#)
        .await;
    assert_eq!(wait_seen(&mut seen, "event join").await, "event join 0");
    let ack = js.wait_event("ack", patience(20)).await;
    assert_eq!(ack["args"], json!(["room-1"]));
    let bench = js
        .wait_for("bench", patience(20), |v| {
            v["event"] == "event" && v["name"] == "bench"
        })
        .await;
    assert_eq!(bench["args"], json!([{"t": 1, "room": "r"}]));
    let file = js
        .wait_for("file", patience(20), |v| {
            v["event"] == "event" && v["name"] == "file"
        })
        .await;
    assert_eq!(file["args"], json!([{"base64": "BwgJ"}]));

    // A binary emit: attachments reassembled by the wire module, acked back.
    js.send_line(r#"{"emit":"upload","args":[{"base64":"AQID"}],"ack":true}"#)
        .await;
    assert_eq!(wait_seen(&mut seen, "event upload").await, "event upload 1");
    let ack = js.wait_event("ack", patience(20)).await;
    assert_eq!(ack["args"], json!([{"base64": "AQID"}]));
}

#[tokio::test]
async fn socketio_client_4_understands_engineio_4_and_socketio_5() {
    socketio_round_trip("4", eio::Eio::V4).await;
}

#[tokio::test]
async fn socketio_client_2_understands_engineio_3_and_socketio_4() {
    socketio_round_trip("2", eio::Eio::V3).await;
}
