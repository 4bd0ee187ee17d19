//! Property tests over the parsers that face untrusted input: client frames
//! (through a native session on an in-process node), the TOML config file,
//! and JWT verification. Each runs a fixed number of cases from a fixed seed,
//! so `cargo test` is deterministic and fast; the cargo-fuzz targets in
//! `node/fuzz` run the same entry points for as long as you like.

#[path = "support/runner.rs"]
mod support;
use std::cell::RefCell;
use std::collections::VecDeque;
use support::runner;

use proptest::prelude::*;
use pubmesh_node::config::Config;
use pubmesh_node::frontend::native::{self, Native, NativeSession};
use pubmesh_node::frontend::Frontend;
use pubmesh_node::limits;
use pubmesh_node::transport::Session;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Strings that mix plain text with the characters parsers trip on.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9:_*-]{0,12}",
        ".{0,40}",
        "[{}\u{0}\t\n\"\\\\\u{202e}\u{2066}\u{feff}\u{85}a-c]{0,8}",
        (0usize..300).prop_map(|n| "x".repeat(n)),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        nasty_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(nasty_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn id_list() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::collection::vec(nasty_string(), 0..8).prop_map(|v| json!(v)),
        // Few distinct names, many repeats.
        (prop::collection::vec("[a-d]", 1..4), 1usize..400).prop_map(|(names, n)| {
            json!(names.iter().cycle().take(n).cloned().collect::<Vec<_>>())
        }),
        json_value(),
    ]
}

const TYPES: [&str; 13] = [
    "connection",
    "change_user",
    "channel",
    "user",
    "client",
    "walker",
    "subscribe",
    "unsubscribe",
    "history",
    "presence",
    "",
    "CHANNEL",
    "nope",
];

/// A frame that looks like a client's: a known type and a random selection of
/// fields, each either well-typed or arbitrary.
fn structured_frame() -> impl Strategy<Value = String> {
    let field = |name: &'static str, good: BoxedStrategy<Value>| {
        prop::option::weighted(0.6, prop_oneof![3 => good, 1 => json_value().boxed()])
            .prop_map(move |v| (name, v))
    };
    (
        prop_oneof![
            prop::sample::select(TYPES.to_vec()).prop_map(Value::from),
            json_value()
        ],
        field("channel_ids", id_list().boxed()),
        field("root_ids", id_list().boxed()),
        field("client_ids", id_list().boxed()),
        field(
            "data",
            prop::collection::btree_map("[a-z]{1,4}", json_value(), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
                .boxed(),
        ),
        field(
            "ref",
            prop_oneof![
                any::<i32>().prop_map(Value::from),
                "[a-z]{0,80}".prop_map(Value::from)
            ]
            .boxed(),
        ),
        field("channel_id", nasty_string().prop_map(Value::from).boxed()),
        field("positioned", any::<bool>().prop_map(Value::from).boxed()),
        field(
            "since",
            (nasty_string(), any::<u64>(), "[a-f0-9]{0,8}")
                .prop_map(
                    |(c, o, e)| json!({c: {"offset": o, "epoch": e}, "offset": o, "epoch": e}),
                )
                .boxed(),
        ),
        field("limit", any::<i64>().prop_map(Value::from).boxed()),
        (
            field("token", nasty_string().prop_map(Value::from).boxed()),
            field("walker", nasty_string().prop_map(Value::from).boxed()),
            field(
                "idempotency_key",
                prop_oneof![
                    "k[0-3]".prop_map(Value::from),
                    nasty_string().prop_map(Value::from)
                ]
                .boxed(),
            ),
        ),
    )
        .prop_map(|(kind, a, b, c, d, e, f, g, h, i, (j, k, l))| {
            let mut frame = serde_json::Map::new();
            frame.insert("type".into(), kind);
            for (name, value) in [a, b, c, d, e, f, g, h, i, j, k, l] {
                if let Some(v) = value {
                    frame.insert(name.into(), v);
                }
            }
            Value::Object(frame).to_string()
        })
}

/// Channel names: mostly a small pool (so subscribes, publishes and history
/// reads meet again), sometimes refused ones.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["a", "b", "c", "h1", "h2", "h3", "hé", "h 日本"]).prop_map(String::from),
        1 => nasty_string(),
    ]
}

/// Well-formed frames of every type (names from [`name`], repeated ids).
fn valid_frame() -> impl Strategy<Value = String> {
    let names = prop::collection::vec(name(), 1..12);
    let kind = prop::sample::select(vec![
        "subscribe",
        "subscribe",
        "unsubscribe",
        "channel",
        "channel",
        "user",
        "client",
        "history",
        "presence",
        "change_user",
        "connection",
    ]);
    (
        kind,
        names,
        any::<u16>(),
        any::<bool>(),
        0u64..12,
        "[a-f0-9]{0,8}",
    )
        .prop_map(|(kind, names, r, flag, offset, epoch)| {
            let mut f = json!({"type": kind, "ref": r});
            match kind {
                "subscribe" => {
                    f["channel_ids"] = json!(names);
                    if flag {
                        f["positioned"] = json!(true);
                    } else if offset % 3 == 0 {
                        f["since"] = json!({&names[0]: {"offset": offset, "epoch": epoch}});
                    }
                }
                "unsubscribe" => f["channel_ids"] = json!(names),
                "channel" => {
                    f["channel_ids"] = json!(names);
                    f["data"] = json!({"n": r});
                    if flag {
                        // A few keys, so retries meet earlier publishes.
                        f["idempotency_key"] = json!(format!("k{}", r % 4));
                    }
                }
                "user" => {
                    f["root_ids"] = json!(names);
                    f["data"] = json!({"n": r});
                }
                "client" => {
                    f["client_ids"] = json!(names);
                    f["data"] = json!({"n": r});
                }
                "history" | "presence" => {
                    f["channel_id"] = json!(names[0]);
                    if flag {
                        f["since"] = json!({"offset": offset, "epoch": epoch});
                        f["limit"] = json!(offset);
                    }
                }
                "change_user" => {
                    f["token"] = json!(if flag { Value::Null } else { json!(names[0]) })
                }
                _ => {}
            }
            f.to_string()
        })
}

/// Any text: well-formed and structured frames, arbitrary JSON, random strings, and
/// structured frames with a few characters replaced, cut or inserted.
fn any_frame() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => valid_frame(),
        3 => structured_frame(),
        1 => json_value().prop_map(|v| v.to_string()),
        1 => ".{0,64}",
        2 => (structured_frame(), prop::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0u8..3), 1..4))
            .prop_map(|(text, edits)| mutate(&text, &edits)),
    ]
}

fn mutate(text: &str, edits: &[(prop::sample::Index, char, u8)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for (at, c, op) in edits {
        if chars.is_empty() {
            chars.push(*c);
            continue;
        }
        let i = at.index(chars.len());
        match op {
            0 => chars[i] = *c,
            1 => {
                chars.remove(i);
            }
            _ => chars.insert(i, *c),
        }
    }
    chars.into_iter().collect()
}

const FRAME_CONFIG: &str = r#"
max_ids_per_message = 8
client_channel_publish = "any"
client_user_publish = "any"
client_client_publish = "any"
jwt_secret = "fuzz"
[[namespaces]]
pattern = "h*"
history_size = 5
history_ttl_seconds = 60
presence = true
join_leave = true
"#;

const ERROR_CODES: [&str; 8] = [
    "bad_json",
    "bad_request",
    "forbidden",
    "too_many_channels",
    "no_history",
    "no_presence",
    "bad_position",
    "rate_limited",
];

/// Every client frame, whatever its bytes, leaves the session running, and
/// every frame the node sends back is a JSON object; errors carry a known
/// code; acknowledged id lists are de-duplicated valid names; and the node
/// never holds a channel whose name is refused.
#[test]
fn client_frames_never_break_the_session_or_its_replies() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = Config::from_toml(FRAME_CONFIG).expect("config");
    let node = pubmesh_node::build(config).expect("node");
    let admission = node.admit().expect("admitted");
    let identity = node.identify(None);
    let codec = Native.codec(&node);
    let home = Some(native::fresh_channel_id(node.node_id()));
    let conn = rt.block_on(node.open(admission, identity, codec, home, |_| None));
    let session = RefCell::new(NativeSession::new(node.clone(), conn.clone()));
    let out = RefCell::new(VecDeque::new());
    runner(2000, 7)
        .run(&any_frame(), |text| {
            rt.block_on(session.borrow_mut().on_text(Utf8Bytes::from(text.clone())));
            let mut out = out.borrow_mut();
            if let Some(reason) = conn.outbox.take(&mut out) {
                panic!("frame {text:?} closed the session: {reason:?}");
            }
            for reply in out.drain(..) {
                let value: Value = serde_json::from_str(&reply)
                    .unwrap_or_else(|e| panic!("reply {reply} to {text:?} is not JSON: {e}"));
                prop_assert!(value.is_object(), "reply {} to {:?}", reply, text);
                if std::env::var_os("PUBMESH_FUZZ_SHOW").is_some() {
                    eprintln!(
                        "{}",
                        value["type"]
                            .as_str()
                            .map(|t| format!("{t} {}", value["code"]))
                            .unwrap_or_default()
                    );
                }
                match value["type"].as_str() {
                    Some("error") => {
                        let code = value["code"].as_str().unwrap_or_default();
                        prop_assert!(ERROR_CODES.contains(&code), "{reply} to {text:?}");
                    }
                    Some("subscribed") | Some("unsubscribed") => {
                        let ids: Vec<&str> = value["channel_ids"]
                            .as_array()
                            .expect("channel_ids")
                            .iter()
                            .map(|v| v.as_str().expect("string"))
                            .collect();
                        let mut unique = ids.clone();
                        unique.sort();
                        unique.dedup();
                        prop_assert_eq!(unique.len(), ids.len(), "{} to {:?}", reply, text);
                        prop_assert!(ids.len() <= 8);
                        for id in ids {
                            prop_assert!(limits::channel_name(id).is_ok(), "{:?} acked", id);
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        })
        .unwrap();
    let channels = rt.block_on(node.channels()).expect("channels");
    assert!(channels.len() <= node.config.max_channels_per_connection + 1);
    for (name, _) in channels {
        assert!(limits::channel_name(&name).is_ok(), "node holds {name:?}");
    }
}

const KEYS: [&str; 19] = [
    "listen",
    "node_id",
    "api_key",
    "max_message_size",
    "outbox_bytes",
    "client_rate",
    "max_ids_per_message",
    "max_channels_per_connection",
    "redis_url",
    "client_user_publish",
    "require_auth",
    "presence_ttl_seconds",
    "idempotency_window_seconds",
    "idempotency_max_bytes",
    "client_channel_churn",
    "client_channel_churn_seconds",
    "ping_interval_seconds",
    "header_timeout_seconds",
    "phoenix_heartbeat_timeout_ms",
];

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("0".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        nasty_string().prop_map(|s| format!("{s:?}")),
        Just("\"127.0.0.1:0\"".to_string()),
        Just("[\"redis://127.0.0.1:1\"]".to_string()),
        Just("\"any\"".to_string()),
        ".{0,12}",
    ]
}

fn structured_config() -> impl Strategy<Value = String> {
    let line = (prop::sample::select(KEYS.to_vec()), toml_value())
        .prop_map(|(k, v)| format!("{k} = {v}\n"));
    let namespace = (
        nasty_string(),
        0usize..200_000,
        0u64..5000,
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec!["anyone", "authenticated", "claim", "x"]),
    )
        .prop_map(|(p, size, ttl, presence, jl, sub)| {
            format!(
                "[[namespaces]]\npattern = {p:?}\nhistory_size = {size}\nhistory_ttl_seconds = {ttl}\npresence = {presence}\njoin_leave = {jl}\nsubscribe = \"{sub}\"\n"
            )
        });
    (
        prop::collection::vec(line, 0..8),
        prop::collection::vec(namespace, 0..3),
    )
        .prop_map(|(lines, ns)| lines.concat() + &ns.concat())
}

fn config_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => structured_config(),
        1 => ".{0,80}",
        2 => (structured_config(), prop::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0u8..3), 1..4))
            .prop_map(|(text, edits)| mutate(&text, &edits)),
    ]
}

/// Any config file text either fails with an error or gives a configuration
/// that keeps the invariants the node relies on.
#[test]
fn config_files_parse_or_fail_cleanly() {
    runner(3000, 11)
        .run(&config_text(), |text| {
            if let Ok(config) = Config::from_toml(&text) {
                prop_assert!(config.max_message_size > 0);
                prop_assert!(config.outbox_bytes >= config.max_message_size);
                prop_assert!(config.max_ids_per_message > 0);
                prop_assert!(config.client_rate > 0 && config.client_burst > 0);
                prop_assert!(pubmesh_node::config::valid_node_id(&config.node_id));
                prop_assert!(!config.api_key.is_empty());
                prop_assert!(!config.idempotency.window.is_zero());
                prop_assert!(config.channel_churn.channels > 0);
                prop_assert!(!config.channel_churn.window.is_zero());
            }
            Ok(())
        })
        .unwrap();
}

const SECRET: &str = "fuzz-secret";

/// A claim value: usually well-typed, sometimes anything.
fn claim(good: BoxedStrategy<Value>) -> impl Strategy<Value = Option<Value>> {
    prop::option::weighted(0.85, prop_oneof![5 => good, 1 => json_value().boxed()])
}

fn claims() -> impl Strategy<Value = Value> {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    // Never within 3 s of now: no oracle disagreement at the boundary.
    let time = move || {
        prop_oneof![now + 3..now + 100_000, now - 100_000..now - 3]
            .prop_map(Value::from)
            .boxed()
    };
    (
        claim(prop_oneof!["[a-z:]{0,6}".prop_map(Value::from)].boxed()),
        claim(time()),
        prop::option::weighted(0.4, prop_oneof![5 => time(), 1 => json_value().boxed()]),
        prop::option::weighted(
            0.3,
            prop_oneof![
                prop::collection::vec("[a-z*]{0,5}", 0..3).prop_map(|v| json!(v)),
                json_value()
            ],
        ),
        prop::option::weighted(0.3, json_value()),
    )
        .prop_map(|(sub, exp, nbf, channels, info)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("sub", sub),
                ("exp", exp),
                ("nbf", nbf),
                ("channels", channels),
                ("info", info),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m)
        })
}

/// What a verifier must decide for a token signed with the right key.
fn should_accept(claims: &Value) -> bool {
    let now = jsonwebtoken::get_current_timestamp();
    let sub_ok = claims["sub"].as_str().is_some_and(|s| !s.is_empty());
    let exp_ok = claims["exp"].as_u64().is_some_and(|e| e > now);
    let nbf_ok = match claims.get("nbf") {
        None => true,
        Some(v) => v.as_u64().is_some_and(|n| n <= now),
    };
    let channels_ok = match claims.get("channels") {
        None | Some(Value::Null) => true,
        Some(Value::Array(items)) => items.iter().all(Value::is_string),
        Some(_) => false,
    };
    sub_ok && exp_ok && nbf_ok && channels_ok
}

/// Tokens signed with the right key are accepted exactly when their claims
/// are valid (sub, exp, nbf, channels); other keys, other algorithms,
/// mutated tokens and random text never verify, and nothing panics.
#[test]
fn jwt_verification_accepts_exactly_the_valid_tokens() {
    let auth = pubmesh_node::auth::Authenticator::new(Some(SECRET), None).expect("auth");
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let wrong = jsonwebtoken::EncodingKey::from_secret(b"other");
    let cases = (
        claims(),
        0u8..10,
        prop::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0u8..3), 1..3),
        ".{0,200}",
    );
    runner(2000, 13)
        .run(&cases, |(claims, how, edits, random)| {
            let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            let signed = jsonwebtoken::encode(&header, &claims, &key).expect("encode");
            match how {
                0..=5 => {
                    let result = auth.verify(&signed);
                    prop_assert_eq!(
                        result.is_ok(),
                        should_accept(&claims),
                        "{} {:?}",
                        claims,
                        result
                    );
                    if let Ok(id) = result {
                        prop_assert_eq!(Some(id.user_id.as_str()), claims["sub"].as_str());
                    }
                }
                6 => {
                    let forged = jsonwebtoken::encode(&header, &claims, &wrong).expect("encode");
                    prop_assert!(auth.verify(&forged).is_err());
                }
                7 => {
                    let other = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512);
                    let token = jsonwebtoken::encode(&other, &claims, &key).expect("encode");
                    prop_assert!(auth.verify(&token).is_err());
                }
                8 => {
                    let mutated = mutate(&signed, &edits);
                    if mutated != signed && auth.verify(&mutated).is_ok() {
                        // Only a change the decoder ignores (base64 padding
                        // bits, "Bearer"-style whitespace) may still verify.
                        prop_assert!(should_accept(&claims), "{mutated}");
                    }
                }
                _ => prop_assert!(auth.verify(&random).is_err()),
            }
            Ok(())
        })
        .unwrap();
}
