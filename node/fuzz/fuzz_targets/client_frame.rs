//! Any text frame a client sends must leave its session open and get only
//! JSON objects back, with a known code when it is an error. One node and
//! one socket live for the whole run, so state (memberships, history)
//! accumulates across inputs as it would on a long-lived connection.

#![no_main]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use pubmesh_node::config::Config;
use pubmesh_node::conn::Conn;
use pubmesh_node::frontend::native::{self, Native, NativeSession};
use pubmesh_node::frontend::Frontend;
use pubmesh_node::transport::Session;
use tokio_tungstenite::tungstenite::Utf8Bytes;

const CONFIG: &str = r#"
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

const CODES: [&str; 8] = [
    "bad_json",
    "bad_request",
    "forbidden",
    "too_many_channels",
    "no_history",
    "no_presence",
    "bad_position",
    "rate_limited",
];

struct State {
    rt: tokio::runtime::Runtime,
    conn: Arc<Conn>,
    session: Mutex<NativeSession>,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let node = pubmesh_node::build(Config::from_toml(CONFIG).expect("config")).expect("node");
        let admission = node.admit().expect("admitted");
        let identity = node.identify(None);
        let codec = Native.codec(&node);
        let home = Some(native::fresh_channel_id(node.node_id()));
        let conn = rt.block_on(node.open(admission, identity, codec, home, |_| None));
        let session = Mutex::new(NativeSession::new(node, conn.clone()));
        State { rt, conn, session }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // WebSocket text frames are UTF-8; the transport checks that.
    };
    let s = state();
    let mut session = s.session.lock().expect("not poisoned");
    s.rt.block_on(session.on_text(Utf8Bytes::from(text.to_string())));
    let mut out = VecDeque::new();
    assert!(s.conn.outbox.take(&mut out).is_none(), "a frame closed the session");
    for reply in out {
        let value: serde_json::Value = serde_json::from_str(&reply).expect("replies are JSON");
        assert!(value.is_object(), "{reply}");
        if value["type"] == "error" {
            let code = value["code"].as_str().unwrap_or_default();
            assert!(CODES.contains(&code), "{reply}");
        }
    }
});
