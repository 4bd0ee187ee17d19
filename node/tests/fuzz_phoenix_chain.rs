//! Property tests over the Phoenix and chain frame parsers, through real
//! sessions on an in-process node (memory relay; one session for the whole
//! run, so memberships and history accumulate): any frame either decodes or
//! is refused by the decoder (Phoenix closes the socket exactly then),
//! decoded frames encode back to themselves, every frame the node sends
//! back is well formed with a known error reason, and no membership is left
//! once the session ends. Fixed seeds and case counts keep `cargo test`
//! deterministic; `PUBMESH_FUZZ_CASES=N` raises the number of cases, and
//! the cargo-fuzz targets `phoenix_frame` and `chain_message` in
//! `node/fuzz` run the same checks for as long as you like.

#[path = "support/runner.rs"]
mod support;
use std::cell::RefCell;
use std::collections::VecDeque;
use support::runner;

use proptest::prelude::*;
use pubmesh_node::config::Config;
use pubmesh_node::frontend::chain::session::{reasons as chain_reasons, ChainSession, PostError};
use pubmesh_node::frontend::chain::wire as chain_wire;
use pubmesh_node::frontend::phoenix::session::{reasons, PhoenixSession};
use pubmesh_node::frontend::phoenix::wire::{self, Message, Vsn};
use pubmesh_node::frontend::phoenix::Phoenix;
use pubmesh_node::frontend::Frontend;
use pubmesh_node::transport::{Flow, Session};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

const CONFIG: &str = r#"
client_channel_publish = "any"
client_rate = 1000000
client_burst = 1000000
[[namespaces]]
pattern = "h*"
history_size = 5
history_ttl_seconds = 60
[[namespaces]]
pattern = "p*"
presence = true
join_leave = true
"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Strings that mix plain names with what parsers trip on.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9:_*,-]{0,10}",
        ".{0,20}",
        "[{}\u{0}\"\\\\\u{202e}\u{feff}a-c]{0,6}",
        (250usize..300).prop_map(|n| "e".repeat(n)),
    ]
}

fn topic() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(vec!["room:1", "h:1", "p:1", "phoenix", "room:*", "a,b", ""])
            .prop_map(Value::from),
        1 => nasty().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(Value::Null),
    ]
}

fn event(names: Vec<&'static str>) -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(names).prop_map(Value::from),
        1 => nasty().prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        nasty().prop_map(Value::from),
        Just(json!({"since": "0:0"})),
        Just(json!({"since": {"offset": 1, "epoch": "x"}})),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(nasty(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn a_ref() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        (0u8..5).prop_map(|n| Value::from(n.to_string())),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        Just(json!([])),
    ]
}

const PHOENIX_EVENTS: [&str; 8] = [
    "phx_join",
    "phx_leave",
    "heartbeat",
    "phx_reply",
    "phx_close",
    "say",
    "a,b",
    "",
];

/// A Phoenix v2 text frame: mostly 5-element arrays, some other shapes, some
/// edited bytes.
fn phoenix_frame() -> impl Strategy<Value = String> {
    let array = || {
        (
            a_ref(),
            a_ref(),
            topic(),
            event(PHOENIX_EVENTS.to_vec()),
            json_value(),
        )
            .prop_map(|(j, r, t, e, p)| json!([j, r, t, e, p]).to_string())
    };
    let edited =
        (array(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut text, at, byte)| {
            let i = at.index(text.len().max(1));
            if text.is_char_boundary(i) {
                text.insert(i, char::from(byte));
            }
            text
        });
    prop_oneof![
        6 => array(),
        1 => prop::collection::vec(json_value(), 0..7).prop_map(|v| Value::from(v).to_string()),
        1 => edited,
        1 => nasty(),
    ]
}

/// Phoenix's binary frames: a kind byte, header lengths and bytes.
fn phoenix_binary() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        (
            a_ref(),
            topic(),
            event(PHOENIX_EVENTS.to_vec()),
            prop::collection::vec(any::<u8>(), 0..8)
        )
            .prop_filter_map("encodable", |(r, t, e, data)| {
                let reference = r.as_str().map(|s| wire::Ref::Str(s.to_string()));
                wire::encode_binary_client_push(
                    reference.as_ref(),
                    reference.as_ref(),
                    t.as_str()?,
                    e.as_str()?,
                    &data,
                )
                .ok()
            }),
    ]
}

/// The reply reasons a Phoenix session may send with no backend configured.
fn known_phoenix_reason(reason: &str) -> bool {
    reasons::ALL.contains(&reason)
}

/// Every Phoenix frame a client can send either closes the socket, exactly
/// when the decoder refuses it, or is answered with well-formed frames;
/// decoded frames encode back to the same message; nothing is left after
/// the session ends.
#[test]
fn phoenix_frames_decode_or_close_and_replies_are_well_formed() {
    let rt = runtime();
    let node = pubmesh_node::build(Config::from_toml(CONFIG).expect("config")).expect("node");
    let admission = node.admit().expect("admitted");
    let codec = Phoenix.codec(&node);
    let conn = rt.block_on(node.open(admission, node.identify(None), codec, None, |_| None));
    let session = RefCell::new(PhoenixSession::new(node.clone(), conn.clone(), Vsn::V2));
    let out = RefCell::new(VecDeque::new());
    let joined = RefCell::new(0u32);
    let input = prop_oneof![
        8 => phoenix_frame().prop_map(Ok),
        1 => phoenix_binary().prop_map(Err),
    ];
    runner(1500, 11)
        .run(&input, |frame| {
            let (decoded, flow) = match &frame {
                Ok(text) => {
                    let decoded = Message::decode_text(Vsn::V2, text);
                    if let Ok(m) = &decoded {
                        let again = m.encode_text(Vsn::V2).expect("a decoded frame encodes");
                        let again = Message::decode_text(Vsn::V2, &again);
                        prop_assert_eq!(again.as_ref(), Ok(m));
                    }
                    let flow =
                        rt.block_on(session.borrow_mut().on_text(Utf8Bytes::from(text.clone())));
                    (decoded, flow)
                }
                Err(bytes) => {
                    let decoded = Message::decode_binary(Vsn::V2, bytes);
                    let data = bytes::Bytes::from(bytes.clone());
                    let flow = rt.block_on(session.borrow_mut().on_binary(data));
                    (decoded, flow)
                }
            };
            // The socket closes exactly for frames the decoder refuses.
            prop_assert_eq!(
                matches!(flow, Flow::Close(_)),
                decoded.is_err(),
                "{:?}: {:?}",
                frame,
                decoded
            );
            let mut out = out.borrow_mut();
            prop_assert!(conn.outbox.take(&mut out).is_none());
            for sent in out.drain(..) {
                let v: Value = serde_json::from_str(&sent).expect("a sent frame is JSON");
                let items = v.as_array().expect("a sent frame is an array");
                prop_assert_eq!(items.len(), 5, "{}", sent);
                prop_assert!(items[2].is_string() && items[3].is_string(), "{}", sent);
                if items[3] == "phx_reply" {
                    let status = items[4]["status"].as_str().unwrap_or_default();
                    prop_assert!(status == "ok" || status == "error", "{}", sent);
                    if status == "ok" && items[2] != "phoenix" && items[0].is_string() {
                        *joined.borrow_mut() += 1;
                    }
                    if status == "error" {
                        let reason = items[4]["response"]["reason"].as_str().unwrap_or_default();
                        prop_assert!(known_phoenix_reason(reason), "{} to {:?}", sent, frame);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(
        *joined.borrow() > 0,
        "some frames were answered ok on a topic"
    );
    let channels = rt.block_on(node.channels()).expect("channels");
    for (name, _) in &channels {
        assert!(pubmesh_node::limits::channel_name(name).is_ok(), "{name:?}");
        assert!(!name.contains('*') && name != "phoenix", "{name:?}");
    }
    rt.block_on(session.borrow_mut().on_close(None));
    let left = rt.block_on(node.channels()).expect("channels");
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A chain message: mostly positional arrays, some other shapes.
fn chain_message() -> impl Strategy<Value = String> {
    let int = prop_oneof![
        3 => (0i64..4).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => nasty().prop_map(Value::from),
        1 => Just(Value::Null),
    ];
    let array = (
        prop::sample::select(vec![0i64, 0, 0, 1, 2, 7]),
        int.clone(),
        int,
        topic(),
        event(vec!["_join", "_leave", "_close", "say", "a,b", "_x", ""]),
        prop::option::of(json_value()),
        0usize..3,
    )
        .prop_map(|(kind, j, r, t, e, p, cut)| {
            let mut items = vec![Value::from(kind), j, r, t, e];
            items.extend(p);
            items.truncate(items.len().saturating_sub(cut % 2 * cut));
            Value::from(items).to_string()
        });
    prop_oneof![
        6 => array,
        1 => prop::collection::vec(json_value(), 0..8).prop_map(|v| Value::from(v).to_string()),
        1 => nasty(),
    ]
}

fn known_chain_reason(reason: &str) -> bool {
    use chain_wire::Reason;
    chain_reasons::ALL.contains(&reason)
        || [
            Reason::WildcardTopic,
            Reason::UnmatchedTopic,
            Reason::CommaInEvent,
        ]
        .iter()
        .any(|r| r.as_str() == reason)
}

/// Every chain message a client can POST is dispatched or refused exactly
/// when the decoder refuses it (400), decoded messages encode back to
/// themselves, and what the session sends is chain's arrays with known
/// reasons.
#[test]
fn chain_messages_decode_or_are_refused_and_replies_are_well_formed() {
    let rt = runtime();
    let node = pubmesh_node::build(Config::from_toml(CONFIG).expect("config")).expect("node");
    let admission = node.admit().expect("admitted");
    let codec = pubmesh_node::frontend::chain::Chain.codec(&node);
    let conn = rt.block_on(node.open(admission, node.identify(None), codec, None, |_| None));
    let frames = pubmesh_node::address::FrameLimit::new(1_000_000, 1_000_000, None);
    let session = ChainSession::new("fuzz".into(), node.clone(), conn.clone(), frames);
    let out = RefCell::new(VecDeque::new());
    let accepted = RefCell::new(0u32);
    runner(1500, 13)
        .run(&chain_message(), |body| {
            let decoded = chain_wire::Message::decode(&body);
            if let Ok(m) = &decoded {
                let again = chain_wire::Message::decode(&m.encode());
                prop_assert_eq!(again.as_ref(), Ok(m), "{}", body);
            }
            let dispatched = rt.block_on(session.post(&body));
            let refused_by_decoder = match decoded {
                Err(_) => true,
                Ok(m) => matches!(
                    chain_wire::Inbound::try_from(m),
                    Err(e) if !matches!(e, chain_wire::DecodeError::Refused(_))
                ),
            };
            prop_assert_eq!(
                matches!(dispatched, Err(PostError::BadMessage(_))),
                refused_by_decoder,
                "{}: {:?}",
                body,
                dispatched
            );
            prop_assert!(!matches!(dispatched, Err(PostError::Gone)));
            let mut out = out.borrow_mut();
            prop_assert!(conn.outbox.take(&mut out).is_none());
            for sent in out.drain(..) {
                let v: Value = serde_json::from_str(&sent).expect("a sent message is JSON");
                let items = v.as_array().expect("an array");
                match items.first().and_then(Value::as_i64) {
                    Some(0) => prop_assert_eq!(&items[4], "_close", "{}", sent),
                    Some(1) => {
                        let status = items[3].as_i64().unwrap_or(-1);
                        prop_assert!(status == 0 || status == 1, "{}", sent);
                        *accepted.borrow_mut() += u32::from(status == 0);
                        if status == 1 {
                            let reason = items[4]["reason"].as_str().unwrap_or_default();
                            prop_assert!(known_chain_reason(reason), "{} to {}", sent, body);
                        }
                    }
                    Some(2) => prop_assert!(items[1].is_string() && items[2].is_string()),
                    _ => prop_assert!(false, "{} to {}", sent, body),
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(*accepted.borrow() > 0, "some messages were answered ok");
    let held = rt.block_on(node.channels()).expect("channels");
    assert!(
        !held.is_empty(),
        "the session holds memberships before it ends"
    );
    for (name, _) in held {
        assert!(
            pubmesh_node::limits::channel_name(&name).is_ok(),
            "{name:?}"
        );
        assert!(!name.contains('*') && !name.contains(','), "{name:?}");
    }
    // The session ends (as after its grace period): nothing is left, within
    // a deadline (leaving runs on the node's tasks).
    let left = rt.block_on(async {
        node.close(&conn, None);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = node.channels().await.expect("channels");
            if left.is_empty() || tokio::time::Instant::now() > deadline {
                return left;
            }
            tokio::task::yield_now().await;
        }
    });
    assert!(left.is_empty(), "left behind: {left:?}");
}
