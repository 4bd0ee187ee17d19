//! Golden transcripts of the native protocol: the exact bytes of frames, close
//! codes and API replies, recorded from pubmesh before the front-end/mesh
//! split. Ids that change from run to run (client ids, node ids, epochs) are
//! replaced by placeholders; everything else must match byte for byte.
//!
//! Changed on purpose since (docs/protocol.md shows the new bytes): every
//! server frame starts with `type` (`subscribed`, `presence`, `join`/`leave`),
//! positions are `{"offset","epoch","recovered"}`, API errors are
//! `{"error","code"}`, an error carries the frame's `ref` even when `type` is
//! missing, malformed client ids and `local` publications to history channels
//! are refused, and the connect-time channel cannot be unsubscribed.

use std::time::Duration;

use pubmesh_tests::harness::{hs256_with, patience, Client, Node, API_KEY};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "golden-secret";

const NAMESPACES: &str = r#"
[[namespaces]]
pattern = "vip:*"
subscribe = "claim"
history_size = 10
history_ttl_seconds = 60

[[namespaces]]
pattern = "chat:*"
history_size = 100
history_ttl_seconds = 300
presence = true
join_leave = true
"#;

fn config(text: &str) -> String {
    pubmesh_tests::harness::config_file(text)
}

/// Collects raw frames and replies, with run-specific ids replaced.
struct Transcript {
    lines: Vec<String>,
    subs: Vec<(String, String)>,
}

impl Transcript {
    fn new() -> Self {
        Transcript {
            lines: Vec::new(),
            subs: Vec::new(),
        }
    }

    fn name(&mut self, value: &str, placeholder: &str) {
        self.subs.push((value.to_string(), placeholder.to_string()));
    }

    fn push(&mut self, who: &str, text: &str) {
        let mut text = text.to_string();
        let mut subs = self.subs.clone();
        subs.sort_by_key(|(value, _)| std::cmp::Reverse(value.len()));
        for (value, placeholder) in &subs {
            text = text.replace(value.as_str(), placeholder.as_str());
        }
        self.lines.push(format!("{who} {text}"));
    }

    fn check(&self, expected: &str) {
        let actual = self.lines.join("\n");
        let expected = expected.trim();
        if actual != expected {
            for (i, (a, e)) in actual.lines().zip(expected.lines()).enumerate() {
                if a != e {
                    panic!(
                        "line {i} differs\n  got:  {a}\n  want: {e}\n\nwhole transcript:\n{actual}"
                    );
                }
            }
            panic!("transcripts differ in length\n\nwhole transcript:\n{actual}");
        }
    }
}

async fn raw(client: &mut Client) -> String {
    tokio::time::timeout(patience(10), client.recv_or_end())
        .await
        .expect("a frame within the deadline")
        .expect("a text frame")
}

/// Connect and read the connection frame as text; returns its client id too.
async fn connect(url: &str, token: Option<&str>) -> (Client, String, String) {
    let mut client = Client::connect_raw(url, token).await.expect("connect");
    let text = raw(&mut client).await;
    let v: Value = serde_json::from_str(&text).expect("json");
    let id = v["data"]["client_id"]
        .as_str()
        .expect("client_id")
        .to_string();
    client.info = v["data"].clone();
    (client, id, text)
}

async fn http(method: &str, url: &str, key: Option<&str>, body: Option<&str>) -> String {
    let client = reqwest::Client::new();
    let mut request = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("http");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = response.text().await.expect("body");
    format!("{status} [{content_type}] {text}")
}

#[tokio::test]
async fn native_frames_are_byte_for_byte_unchanged() {
    let node = Node::start(&["--config", &config(NAMESPACES), "--jwt-secret", SECRET]).await;
    let mut t = Transcript::new();
    t.name(&node.node_id, "NODE");

    let (mut a, a_id, text) = connect(&node.ws("channel_id=room"), None).await;
    t.name(&a_id, "A");
    t.push("a<", &text);
    let token = hs256_with(
        SECRET,
        json!({"sub": "alice", "channels": ["vip:*"], "info": {"name": "Alice"}}),
        3600,
    );
    let (mut b, b_id, text) = connect(&node.ws(""), Some(&token)).await;
    t.name(&b_id, "B");
    let b_channel = b.channel_id();
    t.name(&b_channel, "BCHAN");
    t.push("b<", &text);

    let script: &[(&str, &str)] = &[
        ("a", r#"{"type":"connection","ref":1}"#),
        (
            "a",
            r#"{"type":"channel","channel_ids":["room"],"data":{"type":"chat","data":{"m":1}},"ref":7}"#,
        ),
        (
            "a",
            r#"{"type":"subscribe","channel_ids":["news","x"],"ref":"s1"}"#,
        ),
        ("a", r#"{"type":"subscribe","channel_ids":["news"]}"#),
        (
            "a",
            r#"{"type":"unsubscribe","channel_ids":["news","room"],"ref":2}"#,
        ),
        (
            "a",
            r#"{"type":"unsubscribe","channel_ids":["news"],"ref":"u"}"#,
        ),
        ("a", r#"not json"#),
        ("a", r#"[1,2]"#),
        ("a", r#"{"ref":3}"#),
        ("a", r#"{"type":5}"#),
        ("a", r#"{"type":"nope","ref":4}"#),
        ("a", r#"{"type":"channel","ref":{"x":1}}"#),
        ("a", r#"{"type":"channel","channel_ids":"room","data":{}}"#),
        ("a", r#"{"type":"channel","channel_ids":[],"data":{}}"#),
        ("a", r#"{"type":"channel","channel_ids":[""],"data":{}}"#),
        ("a", r#"{"type":"channel","channel_ids":["room"],"data":5}"#),
        ("a", r#"{"type":"channel","channel_ids":["room"]}"#),
        (
            "a",
            r#"{"type":"channel","channel_ids":["elsewhere"],"data":{},"ref":5}"#,
        ),
        (
            "a",
            r#"{"type":"user","root_ids":["alice"],"data":{},"ref":6}"#,
        ),
        ("a", r#"{"type":"client","client_ids":["x"],"data":{}}"#),
        (
            "a",
            r#"{"type":"client","client_ids":["1730887348:f46d85203c704c099e9f44e948322a20:n1"],"data":{}}"#,
        ),
        (
            "a",
            r#"{"type":"subscribe","channel_ids":["vip:1"],"ref":8}"#,
        ),
        (
            "a",
            r#"{"type":"subscribe","channel_ids":["news"],"positioned":true}"#,
        ),
        (
            "a",
            r#"{"type":"subscribe","channel_ids":["news"],"positioned":1}"#,
        ),
        (
            "a",
            r#"{"type":"subscribe","channel_ids":["chat:1"],"since":{"chat:2":{"offset":1,"epoch":"e"}}}"#,
        ),
        ("a", r#"{"type":"history","channel_id":"news","ref":9}"#),
        ("a", r#"{"type":"history","ref":9}"#),
        ("a", r#"{"type":"presence","channel_id":"news","ref":10}"#),
        ("a", r#"{"type":"walker","walker":"w","ref":11}"#),
        ("a", r#"{"type":"walker","walker":"bad name!"}"#),
        ("a", r#"{"type":"change_user","token":5}"#),
        (
            "b",
            r#"{"type":"user","root_ids":["alice"],"data":{"to":"alice"},"ref":12}"#,
        ),
        (
            "b",
            r#"{"type":"subscribe","channel_ids":["vip:1"],"positioned":true,"ref":13}"#,
        ),
        ("b", r#"{"type":"history","channel_id":"vip:1","limit":-1}"#),
        (
            "b",
            r#"{"type":"history","channel_id":"vip:1","since":{"offset":"x"}}"#,
        ),
    ];
    for (who, frame) in script {
        let client = if *who == "a" { &mut a } else { &mut b };
        t.push(&format!("{who}>"), frame);
        client.send_text(frame).await;
        // Each scripted frame gets exactly the replies recorded below; the
        // transcript reads them in order.
        let text = raw(client).await;
        if frame.contains("\"ref\":13") {
            let v: Value = serde_json::from_str(&text).expect("json");
            let epoch = v["positions"]["vip:1"]["epoch"].as_str().expect("epoch");
            t.name(epoch, "VIPEPOCH");
        }
        t.push(&format!("{who}<"), &text);
        if frame.contains("\"ref\":7") || frame.contains("\"ref\":12") {
            // A publish: the delivery, then the `published` reply.
            let text = raw(client).await;
            t.push(&format!("{who}<"), &text);
        }
    }

    // A binary frame.
    t.push("a>", "(binary)");
    a.send_message(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    let text = raw(&mut a).await;
    t.push("a<", &text);

    // History channel: positioned delivery, history and presence replies, and
    // join/leave events.
    b.send_text(r#"{"type":"subscribe","channel_ids":["chat:1"],"positioned":true,"ref":"p"}"#)
        .await;
    let text = raw(&mut b).await;
    let v: Value = serde_json::from_str(&text).expect("json");
    let epoch = v["positions"]["chat:1"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    t.name(&epoch, "EPOCH");
    t.push("b<", &text);
    a.send_text(r#"{"type":"subscribe","channel_ids":["chat:1"],"ref":"j"}"#)
        .await;
    t.push("a<", &raw(&mut a).await);
    // b sees a's join (a gets its own join event too, raw form).
    t.push("b<", &raw(&mut b).await);
    t.push("a<", &raw(&mut a).await);
    a.send_text(r#"{"type":"channel","channel_ids":["chat:1"],"data":{"n":1},"ref":"pub"}"#)
        .await;
    t.push("a<", &raw(&mut a).await);
    t.push("a<", &raw(&mut a).await);
    t.push("b<", &raw(&mut b).await);
    t.push("b<", &raw(&mut b).await);
    b.send_text(r#"{"type":"history","channel_id":"chat:1","ref":"h"}"#)
        .await;
    t.push("b<", &raw(&mut b).await);
    b.send_text(r#"{"type":"history","channel_id":"chat:1","since":{"offset":0,"epoch":"EPOCH"},"limit":5}"#.replace("EPOCH", &epoch).as_str())
        .await;
    t.push("b<", &raw(&mut b).await);
    b.send_text(
        r#"{"type":"history","channel_id":"chat:1","since":{"offset":9,"epoch":"EPOCH"}}"#
            .replace("EPOCH", &epoch)
            .as_str(),
    )
    .await;
    t.push("b<", &raw(&mut b).await);
    b.send_text(r#"{"type":"presence","channel_id":"chat:1","ref":"pr"}"#)
        .await;
    // Entries are sorted by client id, which is random: put them in a fixed
    // order (b's entry first), keeping their bytes.
    let mut text = raw(&mut b).await;
    type Raw = Box<serde_json::value::RawValue>;
    let fields: std::collections::HashMap<String, Raw> = serde_json::from_str(&text).expect("json");
    let clients: Vec<Raw> = serde_json::from_str(fields["clients"].get()).expect("clients");
    if a_id < b_id {
        let [first, second] = &clients[..] else {
            panic!("two entries: {text}")
        };
        let pair = format!("{},{}", first.get(), second.get());
        let swapped = format!("{},{}", second.get(), first.get());
        text = text.replace(&pair, &swapped);
    }
    t.push("b<", &text);
    b.send_text(r#"{"type":"subscribe","channel_ids":["chat:1"],"since":{"chat:1":{"offset":0,"epoch":"EPOCH"}},"ref":"r"}"#.replace("EPOCH", &epoch).as_str())
        .await;
    t.push("b<", &raw(&mut b).await);
    t.push("b<", &raw(&mut b).await);
    a.send_text(r#"{"type":"unsubscribe","channel_ids":["chat:1"]}"#)
        .await;
    t.push("a<", &raw(&mut a).await);
    t.push("b<", &raw(&mut b).await);
    // Anonymous now: B leaves the claim-gated vip:1 and is told first.
    b.send_text(r#"{"type":"change_user","token":"","ref":"cu"}"#)
        .await;
    t.push("b<", &raw(&mut b).await);
    t.push("b<", &raw(&mut b).await);

    // Server API replies.
    let base = node.http();
    let calls: &[(&str, &str, Option<&str>, Option<&str>)] = &[
        (
            "POST",
            "/api/notify/channels",
            Some(API_KEY),
            Some(r#"{"channel_ids":["room"],"data":{"type":"api","data":{}}}"#),
        ),
        (
            "POST",
            "/api/notify/channels",
            Some(API_KEY),
            Some(r#"{"channel_ids":["chat:1"],"data":{"k":2},"local":true}"#),
        ),
        (
            "POST",
            "/api/notify/channels",
            Some(API_KEY),
            Some(r#"{"channel_ids":["BCHAN"],"data":{"k":3},"local":true}"#),
        ),
        (
            "POST",
            "/api/notify/users",
            Some(API_KEY),
            Some(r#"{"root_ids":["nobody"],"data":{}}"#),
        ),
        (
            "POST",
            "/api/notify/clients",
            Some(API_KEY),
            Some(r#"{"client_ids":["x"],"data":{}}"#),
        ),
        (
            "POST",
            "/api/notify/clients",
            Some(API_KEY),
            Some(r#"{"client_ids":["1730887348:f46d85203c704c099e9f44e948322a20:n1"],"data":{}}"#),
        ),
        (
            "POST",
            "/api/broadcast",
            Some(API_KEY),
            Some(r#"{"data":{"all":true}}"#),
        ),
        (
            "POST",
            "/api/notify/channels",
            None,
            Some(r#"{"channel_ids":["room"],"data":{}}"#),
        ),
        (
            "POST",
            "/api/notify/channels",
            Some("wrong"),
            Some(r#"{"channel_ids":["room"],"data":{}}"#),
        ),
        ("POST", "/api/notify/channels", Some(API_KEY), Some("{")),
        (
            "POST",
            "/api/notify/channels",
            Some(API_KEY),
            Some(r#"{"channel_ids":[],"data":{}}"#),
        ),
        (
            "POST",
            "/api/notify/channels",
            Some(API_KEY),
            Some(r#"{"channel_ids":["a"],"data":[]}"#),
        ),
        (
            "POST",
            "/api/notify/channels",
            Some(API_KEY),
            Some(r#"{"channel_ids":["a"],"data":{},"extra":1}"#),
        ),
        ("POST", "/api/disconnect", Some(API_KEY), Some(r#"{}"#)),
        (
            "GET",
            "/api/history?channel=chat:1&limit=1",
            Some(API_KEY),
            None,
        ),
        ("GET", "/api/history?channel=room", Some(API_KEY), None),
        (
            "GET",
            "/api/history?channel=chat:1&since_offset=1",
            Some(API_KEY),
            None,
        ),
        (
            "GET",
            "/api/history?channel=chat:1&since_offset=99&epoch=EPOCH",
            Some(API_KEY),
            None,
        ),
        ("GET", "/api/presence?channel=chat:1", Some(API_KEY), None),
        ("GET", "/api/presence?channel=room", Some(API_KEY), None),
        ("GET", "/api/presence", Some(API_KEY), None),
        ("GET", "/api/channels", Some(API_KEY), None),
        ("GET", "/livez", None, None),
        ("GET", "/readyz", None, None),
        ("GET", "/nope", None, None),
    ];
    for (method, path, key, body) in calls {
        let path = path.replace("EPOCH", &epoch);
        t.push(">", &format!("{method} {path} {}", body.unwrap_or("")));
        let body = body.map(|b| b.replace("BCHAN", &b_channel));
        let reply = http(method, &format!("{base}{path}"), *key, body.as_deref()).await;
        t.push("<", &reply);
    }
    // What the API publications delivered.
    t.push("a<", &raw(&mut a).await);
    t.push("a<", &raw(&mut a).await);
    t.push("b<", &raw(&mut b).await);
    t.push("b<", &raw(&mut b).await);

    // Disconnect: close code 4002.
    let body = format!(r#"{{"client_ids":["{a_id}"]}}"#);
    let reply = http(
        "POST",
        &format!("{base}/api/disconnect"),
        Some(API_KEY),
        Some(&body),
    )
    .await;
    t.push("<", &reply);
    t.push("a close", &format!("{:?}", a.expect_close().await));

    t.check(GOLDEN);
    drop(b);
}

#[tokio::test]
async fn close_codes_are_unchanged() {
    let node = Node::start(&[
        "--require-auth",
        "--jwt-secret",
        SECRET,
        "--max-message-size",
        "1024",
        "--client-rate",
        "1",
        "--client-burst",
        "3",
    ])
    .await;
    let mut t = Transcript::new();
    let mut anonymous = Client::connect_raw(&node.ws(""), None)
        .await
        .expect("connect");
    t.push(
        "anonymous",
        &format!("{:?}", anonymous.expect_close().await),
    );

    let token = hs256_with(SECRET, json!({"sub": "u"}), 3600);
    let (mut big, id, _) = connect(&node.ws(""), Some(&token)).await;
    t.name(&id, "ID");
    big.send_text(&format!(r#"{{"type":"x","pad":"{}"}}"#, "a".repeat(2000)))
        .await;
    t.push("too big", &format!("{:?}", big.expect_close().await));

    let (mut fast, _, _) = connect(&node.ws(""), Some(&token)).await;
    for _ in 0..10 {
        if fast
            .send_message(Message::Text(r#"{"type":"connection"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (_, close) = fast.read_to_end(patience(10)).await;
    t.push("rate limited", &format!("{close:?}"));

    let (mut expiring, _, _) = connect(
        &node.ws(""),
        Some(&hs256_with(SECRET, json!({"sub": "e"}), 2)),
    )
    .await;
    let (_, close) = expiring.read_to_end(patience(20)).await;
    t.push("expired", &format!("{close:?}"));

    let (mut draining, _, _) = connect(&node.ws(""), Some(&token)).await;
    node.sigterm();
    let (_, close) = draining.read_to_end(patience(20)).await;
    t.push("drain", &format!("{close:?}"));
    t.check(CLOSES);
    let _ = Duration::from_secs(0);
}

const CLOSES: &str = r##"
anonymous Some((4001, "unauthorized"))
too big Some((1009, "message too big"))
rate limited Some((4029, "rate limited"))
expired Some((4001, "unauthorized"))
drain Some((1012, "reconnect"))
"##;

const GOLDEN: &str = r##"
a< {"type":"connection","data":{"client_id":"A","root_id":"n::000000000000000000000001","channel_id":"room","node_id":"NODE"}}
b< {"type":"connection","data":{"client_id":"B","root_id":"alice","channel_id":"BCHAN","node_id":"NODE"}}
a> {"type":"connection","ref":1}
a< {"type":"connection","data":{"client_id":"A","root_id":"n::000000000000000000000001","channel_id":"room","node_id":"NODE"},"ref":1}
a> {"type":"channel","channel_ids":["room"],"data":{"type":"chat","data":{"m":1}},"ref":7}
a< {"type":"chat","data":{"m":1}}
a< {"type":"published","ref":7,"local_deliveries":1,"relayed":false,"relay":"none"}
a> {"type":"subscribe","channel_ids":["news","x"],"ref":"s1"}
a< {"type":"subscribed","channel_ids":["news","x"],"ref":"s1"}
a> {"type":"subscribe","channel_ids":["news"]}
a< {"type":"subscribed","channel_ids":["news"]}
a> {"type":"unsubscribe","channel_ids":["news","room"],"ref":2}
a< {"type":"error","error":"\"room\" is this connection's channel_id, which it stays in until it disconnects","code":"bad_request","ref":2}
a> {"type":"unsubscribe","channel_ids":["news"],"ref":"u"}
a< {"type":"unsubscribed","channel_ids":["news"],"ref":"u"}
a> not json
a< {"type":"error","error":"frame is not valid JSON: expected ident at line 1 column 2","code":"bad_json"}
a> [1,2]
a< {"type":"error","error":"frame must be a JSON object","code":"bad_request"}
a> {"ref":3}
a< {"type":"error","error":"type is required","code":"bad_request","ref":3}
a> {"type":5}
a< {"type":"error","error":"type must be a string","code":"bad_request"}
a> {"type":"nope","ref":4}
a< {"type":"error","error":"unknown message type \"nope\"","code":"bad_request","ref":4}
a> {"type":"channel","ref":{"x":1}}
a< {"type":"error","error":"ref must be a number or a string of at most 64 bytes","code":"bad_request"}
a> {"type":"channel","channel_ids":"room","data":{}}
a< {"type":"error","error":"channel_ids must be a list of strings","code":"bad_request"}
a> {"type":"channel","channel_ids":[],"data":{}}
a< {"type":"error","error":"channel_ids must not be empty","code":"bad_request"}
a> {"type":"channel","channel_ids":[""],"data":{}}
a< {"type":"error","error":"channel_ids: a channel name must be 1 to 256 bytes","code":"bad_request"}
a> {"type":"channel","channel_ids":["room"],"data":5}
a< {"type":"error","error":"data must be an object","code":"bad_request"}
a> {"type":"channel","channel_ids":["room"]}
a< {"type":"error","error":"data is required","code":"bad_request"}
a> {"type":"channel","channel_ids":["elsewhere"],"data":{},"ref":5}
a< {"type":"error","error":"not a member of channel \"elsewhere\"","code":"forbidden","ref":5}
a> {"type":"user","root_ids":["alice"],"data":{},"ref":6}
a< {"type":"error","error":"user messages need an authenticated socket","code":"forbidden","ref":6}
a> {"type":"client","client_ids":["x"],"data":{}}
a< {"type":"error","error":"client_ids: \"x\" is not a client id ({unix seconds}:{32 hex}:{node id})","code":"bad_request"}
a> {"type":"client","client_ids":["1730887348:f46d85203c704c099e9f44e948322a20:n1"],"data":{}}
a< {"type":"error","error":"client messages need an authenticated socket","code":"forbidden"}
a> {"type":"subscribe","channel_ids":["vip:1"],"ref":8}
a< {"type":"error","error":"not allowed to subscribe to channel \"vip:1\"","code":"forbidden","ref":8}
a> {"type":"subscribe","channel_ids":["news"],"positioned":true}
a< {"type":"error","error":"channel \"news\" keeps no history","code":"no_history"}
a> {"type":"subscribe","channel_ids":["news"],"positioned":1}
a< {"type":"error","error":"positioned must be a boolean","code":"bad_request"}
a> {"type":"subscribe","channel_ids":["chat:1"],"since":{"chat:2":{"offset":1,"epoch":"e"}}}
a< {"type":"error","error":"since names \"chat:2\", which is not in channel_ids","code":"bad_request"}
a> {"type":"history","channel_id":"news","ref":9}
a< {"type":"error","error":"channel \"news\" keeps no history","code":"no_history","ref":9}
a> {"type":"history","ref":9}
a< {"type":"error","error":"channel_id is required","code":"bad_request","ref":9}
a> {"type":"presence","channel_id":"news","ref":10}
a< {"type":"error","error":"channel \"news\" has no presence","code":"no_presence","ref":10}
a> {"type":"walker","walker":"w","ref":11}
a< {"type":"walker","error":"no backend is configured (--backend-url)","code":"no_backend","ref":11}
a> {"type":"walker","walker":"bad name!"}
a< {"type":"error","error":"walker must match [A-Za-z0-9_.-]{1,128}","code":"bad_request"}
a> {"type":"change_user","token":5}
a< {"type":"error","error":"token must be a string","code":"bad_request"}
b> {"type":"user","root_ids":["alice"],"data":{"to":"alice"},"ref":12}
b< {"to":"alice"}
b< {"type":"published","ref":12,"local_deliveries":1,"relayed":false,"relay":"none"}
b> {"type":"subscribe","channel_ids":["vip:1"],"positioned":true,"ref":13}
b< {"type":"subscribed","channel_ids":["vip:1"],"positions":{"vip:1":{"offset":0,"epoch":"VIPEPOCH"}},"ref":13}
b> {"type":"history","channel_id":"vip:1","limit":-1}
b< {"type":"error","error":"limit must be a non-negative integer","code":"bad_request"}
b> {"type":"history","channel_id":"vip:1","since":{"offset":"x"}}
b< {"type":"error","error":"since must be {\"offset\":N,\"epoch\":\"…\"}","code":"bad_request"}
a> (binary)
a< {"type":"error","error":"binary frames are not supported; send JSON text","code":"bad_request"}
b< {"type":"subscribed","channel_ids":["chat:1"],"positions":{"chat:1":{"offset":0,"epoch":"EPOCH"}},"ref":"p"}
a< {"type":"subscribed","channel_ids":["chat:1"],"ref":"j"}
b< {"type":"join","channel":"chat:1","client_id":"B","user_id":"alice","node_id":"NODE","info":{"name":"Alice"}}
a< {"type":"join","channel":"chat:1","client_id":"A","user_id":"n::000000000000000000000001","node_id":"NODE"}
a< {"n":1}
a< {"type":"published","ref":"pub","local_deliveries":2,"relayed":false,"relay":"none"}
b< {"type":"join","channel":"chat:1","client_id":"A","user_id":"n::000000000000000000000001","node_id":"NODE"}
b< {"type":"publication","channel":"chat:1","offset":1,"epoch":"EPOCH","data":{"n":1}}
b< {"type":"history","channel_id":"chat:1","offset":1,"epoch":"EPOCH","recovered":true,"publications":[{"offset":1,"data":{"n":1}}],"ref":"h"}
b< {"type":"history","channel_id":"chat:1","offset":1,"epoch":"EPOCH","recovered":true,"publications":[{"offset":1,"data":{"n":1}}]}
b< {"type":"error","error":"position 9 is ahead of the channel (latest 1)","code":"bad_position"}
b< {"type":"presence","channel_id":"chat:1","count":2,"clients":[{"client_id":"B","user_id":"alice","node_id":"NODE","info":{"name":"Alice"}},{"client_id":"A","user_id":"n::000000000000000000000001","node_id":"NODE"}],"ref":"pr"}
b< {"type":"subscribed","channel_ids":["chat:1"],"positions":{"chat:1":{"offset":1,"epoch":"EPOCH","recovered":true}},"ref":"r"}
b< {"type":"publication","channel":"chat:1","offset":1,"epoch":"EPOCH","data":{"n":1}}
a< {"type":"unsubscribed","channel_ids":["chat:1"]}
b< {"type":"leave","channel":"chat:1","client_id":"A","user_id":"n::000000000000000000000001","node_id":"NODE"}
b< {"type":"unsubscribed","channel_ids":["vip:1"],"reason":"forbidden"}
b< {"type":"connection","data":{"client_id":"B","root_id":"n::000000000000000000000001","channel_id":"BCHAN","node_id":"NODE"},"ref":"cu"}
> POST /api/notify/channels {"channel_ids":["room"],"data":{"type":"api","data":{}}}
< 200 [application/json] {"local_deliveries":1,"relayed":false,"relay":"none"}
> POST /api/notify/channels {"channel_ids":["chat:1"],"data":{"k":2},"local":true}
< 400 [application/json] {"error":"channel \"chat:1\" keeps history, which a local publication would bypass; publish without local","code":"bad_request"}
> POST /api/notify/channels {"channel_ids":["BCHAN"],"data":{"k":3},"local":true}
< 200 [application/json] {"local_deliveries":1,"relayed":false,"relay":"none"}
> POST /api/notify/users {"root_ids":["nobody"],"data":{}}
< 200 [application/json] {"local_deliveries":0,"relayed":false,"relay":"none"}
> POST /api/notify/clients {"client_ids":["x"],"data":{}}
< 400 [application/json] {"error":"client_ids: \"x\" is not a client id ({unix seconds}:{32 hex}:{node id})","code":"bad_request"}
> POST /api/notify/clients {"client_ids":["1730887348:f46d85203c704c099e9f44e948322a20:n1"],"data":{}}
< 200 [application/json] {"local_deliveries":0,"relayed":false,"relay":"none"}
> POST /api/broadcast {"data":{"all":true}}
< 200 [application/json] {"local_deliveries":2,"relayed":false,"relay":"none"}
> POST /api/notify/channels {"channel_ids":["room"],"data":{}}
< 401 [application/json] {"error":"missing or wrong API key","code":"unauthorized"}
> POST /api/notify/channels {"channel_ids":["room"],"data":{}}
< 401 [application/json] {"error":"missing or wrong API key","code":"unauthorized"}
> POST /api/notify/channels {
< 400 [application/json] {"error":"body is not valid JSON: EOF while parsing an object at line 1 column 1","code":"bad_request"}
> POST /api/notify/channels {"channel_ids":[],"data":{}}
< 400 [application/json] {"error":"channel_ids must not be empty","code":"bad_request"}
> POST /api/notify/channels {"channel_ids":["a"],"data":[]}
< 400 [application/json] {"error":"data must be an object","code":"bad_request"}
> POST /api/notify/channels {"channel_ids":["a"],"data":{},"extra":1}
< 400 [application/json] {"error":"unknown field `extra`, expected one of `channel_ids`, `data`, `local`, `event`, `idempotency_key`, `except`, `volatile` at line 1 column 38","code":"bad_request"}
> POST /api/disconnect {}
< 400 [application/json] {"error":"give client_ids or root_ids","code":"bad_request"}
> GET /api/history?channel=chat:1&limit=1 
< 200 [application/json] {"type":"history","channel_id":"chat:1","offset":1,"epoch":"EPOCH","recovered":true,"publications":[{"offset":1,"data":{"n":1}}]}
> GET /api/history?channel=room 
< 404 [application/json] {"error":"channel \"room\" keeps no history","code":"no_history"}
> GET /api/history?channel=chat:1&since_offset=1 
< 400 [application/json] {"error":"since_offset and epoch go together","code":"bad_request"}
> GET /api/history?channel=chat:1&since_offset=99&epoch=EPOCH 
< 400 [application/json] {"error":"position 99 is ahead of the channel (latest 1)","code":"bad_position"}
> GET /api/presence?channel=chat:1 
< 200 [application/json] {"channel":"chat:1","count":1,"clients":[{"client_id":"B","user_id":"alice","node_id":"NODE","info":{"name":"Alice"}}]}
> GET /api/presence?channel=room 
< 404 [application/json] {"error":"channel \"room\" has no presence","code":"no_presence"}
> GET /api/presence 
< 400 [application/json] {"error":"Failed to deserialize query string: missing field `channel`","code":"bad_request"}
> GET /api/channels 
< 200 [application/json] {"channels":[{"channel":"BCHAN","members":1},{"channel":"chat:1","members":1},{"channel":"room","members":1},{"channel":"x","members":1}]}
> GET /livez 
< 200 [application/json] {"live":true}
> GET /readyz 
< 200 [application/json] {"ready":true}
> GET /nope 
< 404 [application/json] {"error":"no such route","code":"not_found"}
a< {"type":"api","data":{}}
a< {"all":true}
b< {"k":3}
b< {"all":true}
< 200 [application/json] {"local_disconnects":1,"relayed":false}
a close Some((4002, "disconnected"))
"##;
