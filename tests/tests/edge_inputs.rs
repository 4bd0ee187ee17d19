//! Inputs at the edge: repeated and too many ids, channel names, `nbf`, and
//! history reads of unknown names, against real nodes (and Redis).

use pubmesh_tests::harness::{
    cluster_slot, eventually, hs256, hs256_with, patience, Client, Node, Redis, ANONYMOUS,
};
use serde_json::{json, Value};

const SECRET: &str = "edge-secret";

const HISTORY: &str = r#"
[[namespaces]]
pattern = "h:*"
history_size = 100
history_ttl_seconds = 300
"#;

fn config(text: &str) -> String {
    pubmesh_tests::harness::config_file(text)
}

/// The same id `n` times.
fn repeated(id: &str, n: usize) -> Vec<String> {
    vec![id.to_string(); n]
}

/// Subscribe and wait for the acknowledgement.
async fn join(c: &mut Client, channel: &str) {
    c.send(json!({"type": "subscribe", "channel_ids": [channel], "ref": "join"}))
        .await;
    let reply = c.recv_until(|f| f["ref"] == "join").await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

/// The next frames are `first` and then `marker`: nothing (no duplicate of
/// `first`) arrived between them.
async fn once_then(c: &mut Client, first: &Value, marker: &Value) {
    assert_eq!(&c.recv().await, first);
    let next = c.recv().await;
    assert_eq!(&next, marker, "a duplicate arrived before the marker");
}

/// `:N` (a RESP integer) → N.
fn resp_int(reply: &str) -> i64 {
    reply
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("not an integer reply: {reply:?}"))
}

/// `calls=N` of `cmdstat_publish` in `INFO commandstats` (0 before any).
async fn redis_publishes(redis: &Redis) -> u64 {
    let info = redis.cmd(&["INFO", "commandstats"]).await.expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_frame_repeating_one_id_thousands_of_times_delivers_once_per_recipient() {
    let node = Node::start(&[
        "--jwt-secret",
        SECRET,
        "--client-channel-publish",
        "any",
        "--client-user-publish",
        "any",
        "--client-client-publish",
        "any",
    ])
    .await;
    let token = hs256(SECRET, "n::rita", 300);
    let mut a = node.client(&format!("token={token}")).await;
    let mut b = node.client("").await;
    join(&mut a, "dup").await;
    join(&mut b, "dup").await;
    let mut sender = node.client("").await;
    let marker = json!({"marker": true});

    // 5,000 copies of one channel: one delivery each, and the ack says 2.
    sender
        .send(json!({"type": "channel", "channel_ids": repeated("dup", 5000), "data": {"n": 1}, "ref": 1}))
        .await;
    let ack = sender.recv().await;
    assert_eq!(ack["type"], "published", "{ack}");
    assert_eq!(ack["local_deliveries"], 2, "{ack}");
    sender
        .send(json!({"type": "channel", "channel_ids": ["dup"], "data": marker}))
        .await;
    for c in [&mut a, &mut b] {
        once_then(c, &json!({"n": 1}), &marker).await;
    }

    // The same for user and client ids.
    sender
        .send(json!({"type": "user", "root_ids": repeated("n::rita", 5000), "data": {"n": 2}, "ref": 2}))
        .await;
    assert_eq!(sender.recv().await["local_deliveries"], 1);
    let b_id = b.client_id();
    sender
        .send(json!({"type": "client", "client_ids": repeated(&b_id, 1000), "data": {"n": 3}, "ref": 3}))
        .await;
    assert_eq!(sender.recv().await["local_deliveries"], 1);
    sender
        .send(json!({"type": "channel", "channel_ids": ["dup"], "data": marker}))
        .await;
    once_then(&mut a, &json!({"n": 2}), &marker).await;
    once_then(&mut b, &json!({"n": 3}), &marker).await;

    // And for the server API.
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": repeated("dup", 5000), "data": {"n": 4}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["local_deliveries"], 2, "{body}");
    let (status, body) = node
        .post(
            "/api/notify/clients",
            json!({"client_ids": repeated(&b_id, 1000), "data": {"n": 5}}),
        )
        .await;
    assert_eq!((status, body["local_deliveries"].clone()), (200, json!(1)));
    sender
        .send(json!({"type": "channel", "channel_ids": ["dup"], "data": marker}))
        .await;
    once_then(&mut a, &json!({"n": 4}), &marker).await;
    assert_eq!(b.recv().await, json!({"n": 4}));
    once_then(&mut b, &json!({"n": 5}), &marker).await;
}

#[tokio::test]
async fn more_distinct_ids_than_the_cap_are_a_bad_request_with_the_ref() {
    let file = config("max_ids_per_message = 3\n");
    let node = Node::start(&["--config", &file, "--client-channel-publish", "any"]).await;
    let mut c = node.client("").await;
    let four = ["a", "b", "c", "d"];
    for kind in ["channel", "subscribe", "unsubscribe"] {
        c.send(json!({"type": kind, "channel_ids": four, "data": {}, "ref": kind}))
            .await;
        let reply = c.recv().await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], "bad_request", "{reply}");
        assert_eq!(reply["ref"], kind, "{reply}");
        assert!(
            reply["error"].as_str().unwrap().contains("at most 3"),
            "{reply}"
        );
    }
    // Three distinct ids, however often repeated, are fine.
    c.send(
        json!({"type": "subscribe", "channel_ids": ["a", "b", "a", "c", "b", "a"], "ref": "ok"}),
    )
    .await;
    let reply = c.recv().await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["channel_ids"], json!(["a", "b", "c"]), "{reply}");

    for (path, field) in [
        ("/api/notify/channels", "channel_ids"),
        ("/api/notify/users", "root_ids"),
        ("/api/notify/clients", "client_ids"),
        ("/api/disconnect", "client_ids"),
    ] {
        let mut body = json!({"data": {}});
        if path == "/api/disconnect" {
            body = json!({});
        }
        body[field] = if field == "client_ids" {
            // Client ids must be well formed to reach the cap.
            json!(four.map(|n| format!("1730887348:{}:n1", n.repeat(32))))
        } else {
            json!(four)
        };
        let (status, reply) = node.post(path, body).await;
        assert_eq!(status, 400, "{path}: {reply}");
        assert_eq!(reply["code"], "bad_request", "{path}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains("at most 3"),
            "{path}: {reply}"
        );
    }
    // The flag overrides the file.
    let node = Node::start(&["--config", &file, "--max-ids-per-message", "4"]).await;
    let (status, reply) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": four, "data": {}}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test]
async fn repeated_ids_cost_one_redis_publish_across_two_nodes() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let url = redis.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--client-channel-publish",
        "any",
    ];
    let a = Node::start(&args).await;
    let b = Node::start(&args).await;
    let mut far = b.client("").await;
    join(&mut far, "amp").await;
    eventually("b subscribed to amp", patience(20), || async {
        let reply = redis.cmd(&["PUBSUB", "NUMSUB", "pubmesh.ch.{amp}"]).await?;
        (!reply.ends_with(":0\r\n")).then_some(())
    })
    .await;
    let mut sender = a.client("").await;
    let relayed = "pubmesh_relay_published_total{kind=\"deliver\"}";
    let relayed_before = a.metric(relayed).await;
    let publishes_before = redis_publishes(&redis).await;

    // ~60 KB: 7,000 copies of one channel in one frame.
    sender
        .send(
            json!({"type": "channel", "channel_ids": repeated("amp", 7000), "data": {"flood": 1}}),
        )
        .await;
    let marker = json!({"marker": true});
    sender
        .send(json!({"type": "channel", "channel_ids": ["amp"], "data": marker}))
        .await;
    once_then(&mut far, &json!({"flood": 1}), &marker).await;

    // Two envelopes left node a: the flood and the marker.
    assert_eq!(a.metric(relayed).await - relayed_before, 2.0);
    // Redis saw a handful of PUBLISHes (those two plus heartbeats), not 7,000.
    let publishes = redis_publishes(&redis).await - publishes_before;
    assert!(publishes < 100, "{publishes} PUBLISHes for two frames");
}

#[tokio::test]
async fn one_frame_listing_a_history_channel_1000_times_appends_once() {
    let file = config(HISTORY);
    let node = Node::start(&["--config", &file, "--client-channel-publish", "any"]).await;
    let mut member = node.client("").await;
    join(&mut member, "h:dup").await;
    let mut sender = node.client("").await;
    sender
        .send(json!({"type": "channel", "channel_ids": repeated("h:dup", 1000), "data": {"once": 1}, "ref": 1}))
        .await;
    let ack = sender.recv().await;
    assert_eq!(ack["local_deliveries"], 1, "{ack}");
    let marker = json!({"marker": true});
    sender
        .send(json!({"type": "channel", "channel_ids": ["h:dup"], "data": marker}))
        .await;
    once_then(&mut member, &json!({"once": 1}), &marker).await;
    let (status, page) = node.get("/api/history?channel=h:dup").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["offset"], 2, "{page}");
    assert_eq!(
        page["publications"],
        json!([{"offset": 1, "data": {"once": 1}}, {"offset": 2, "data": marker}])
    );
}

#[tokio::test]
async fn one_api_call_listing_a_history_channel_1000_times_appends_once_in_redis() {
    let redis = Redis::start().await;
    let url = redis.url();
    let file = config(HISTORY);
    let node = Node::start(&["--config", &file, "--redis-url", &url]).await;
    let mut member = node.client("").await;
    join(&mut member, "h:once").await;
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": repeated("h:once", 1000), "data": {"once": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(member.recv().await, json!({"once": 1}));
    let length = redis
        .cmd(&["XLEN", "pubmesh.h.{h:once}"])
        .await
        .expect("xlen");
    assert_eq!(resp_int(&length), 1);
    let marker = json!({"marker": true});
    node.post(
        "/api/notify/channels",
        json!({"channel_ids": ["h:once"], "data": marker}),
    )
    .await;
    assert_eq!(member.recv().await, marker, "a duplicate came first");
}

#[tokio::test]
async fn a_token_is_refused_before_its_nbf() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let now = jsonwebtoken::get_current_timestamp();
    let early = hs256_with(SECRET, json!({"sub": "n::early", "nbf": now + 300}), 600);
    let c = Client::connect_with_token(&node.ws(""), &early).await;
    assert_eq!(
        c.root_id(),
        ANONYMOUS,
        "a token before its nbf authenticated"
    );
    let mut c = node.client("").await;
    c.send(json!({"type": "change_user", "token": early, "ref": 1}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["data"]["root_id"], ANONYMOUS, "{reply}");
    let ready = hs256_with(SECRET, json!({"sub": "n::ready", "nbf": now - 5}), 600);
    let c = Client::connect_with_token(&node.ws(""), &ready).await;
    assert_eq!(c.root_id(), "n::ready");

    let strict = Node::start(&["--jwt-secret", SECRET, "--require-auth"]).await;
    let mut c = Client::connect_raw(&strict.ws(""), Some(&early))
        .await
        .expect("upgrade");
    assert_eq!(c.expect_close().await.map(|(code, _)| code), Some(4001));
}

const BAD_NAMES: [&str; 8] = [
    "a{b",
    "}",
    "{tag}x",
    "tab\tname",
    "nul\u{0}",
    "rlo\u{202e}txt.exe",
    "iso\u{2066}late",
    "bom\u{feff}",
];

#[tokio::test]
async fn channel_names_with_braces_controls_or_bidi_marks_are_refused() {
    let file = config(HISTORY);
    let node = Node::start(&["--config", &file, "--client-channel-publish", "any"]).await;
    let mut c = node.client("").await;
    let long = "x".repeat(257);
    let mut names: Vec<String> = BAD_NAMES.iter().map(|s| s.to_string()).collect();
    names.push(long.clone());
    names.push(format!("h:{}", BAD_NAMES[0]));
    for (i, name) in names.iter().enumerate() {
        let frames = [
            json!({"type": "subscribe", "channel_ids": ["fine", name], "ref": i}),
            json!({"type": "unsubscribe", "channel_ids": [name], "ref": i}),
            json!({"type": "channel", "channel_ids": [name], "data": {}, "ref": i}),
            json!({"type": "history", "channel_id": name, "ref": i}),
            json!({"type": "presence", "channel_id": name, "ref": i}),
        ];
        for frame in frames {
            c.send(frame.clone()).await;
            let reply = c.recv().await;
            assert_eq!(reply["type"], "error", "{frame} → {reply}");
            assert_eq!(reply["code"], "bad_request", "{frame} → {reply}");
            assert_eq!(reply["ref"], i, "{reply}");
        }
        let (status, reply) = node
            .post(
                "/api/notify/channels",
                json!({"channel_ids": [name], "data": {}}),
            )
            .await;
        assert_eq!((status, reply["code"].as_str()), (400, Some("bad_request")));
        for path in ["/api/history", "/api/presence"] {
            let url = format!("{}{path}", node.http());
            let response = reqwest::Client::new()
                .get(url)
                .query(&[("channel", name.as_str())])
                .header("X-API-Key", pubmesh_tests::harness::API_KEY)
                .send()
                .await
                .expect("request");
            assert_eq!(response.status().as_u16(), 400, "{path} {name:?}");
        }
        let query: String = url_encode(name);
        let refused = Client::connect_raw(&node.ws(&format!("channel_id={query}")), None).await;
        assert!(refused.is_err(), "connected with channel_id {name:?}");
    }
    // The socket was never a member of any of them, and "fine" was not joined
    // by a frame that also named a bad one.
    let (_, body) = node.get("/api/channels").await;
    let listed: Vec<&str> = body["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .map(|c| c["channel"].as_str().expect("name"))
        .collect();
    assert_eq!(listed, vec![c.channel_id().as_str()]);
    // Names outside ASCII that are none of those still work.
    for name in ["ünï:cødé", "日本語", "h:😀 space"] {
        join(&mut c, name).await;
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn history_reads_of_unknown_names_create_no_redis_keys() {
    let redis = Redis::start().await;
    let url = redis.url();
    let file = config(HISTORY);
    let node = Node::start(&["--config", &file, "--redis-url", &url]).await;
    let keys = || async { resp_int(&redis.cmd(&["DBSIZE"]).await.expect("dbsize")) };
    let before = keys().await;
    let mut c = node.client("").await;
    for i in 0..60 {
        let name = format!("h:nobody-{i}");
        c.send(json!({"type": "history", "channel_id": name, "ref": i}))
            .await;
        let page = c.recv().await;
        assert_eq!(page["type"], "history", "{page}");
        assert_eq!(
            (page["offset"].clone(), page["epoch"].clone()),
            (json!(0), json!(""))
        );
        assert_eq!(page["publications"], json!([]));
        c.send(
            json!({"type": "history", "channel_id": name, "since": {"offset": 0, "epoch": "abc"}}),
        )
        .await;
        assert_eq!(c.recv().await["recovered"], false);
        let (status, page) = node
            .get(&format!("/api/history?channel={name}&limit=5"))
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["publications"], json!([]));
    }
    assert_eq!(keys().await, before, "history reads created keys");
    let exists = redis
        .cmd(&[
            "EXISTS",
            "pubmesh.hm.{h:nobody-7}",
            "pubmesh.h.{h:nobody-7}",
        ])
        .await
        .expect("exists");
    assert_eq!(resp_int(&exists), 0);

    // A publication creates the channel's two keys, and reads then see it.
    node.post(
        "/api/notify/channels",
        json!({"channel_ids": ["h:nobody-7"], "data": {"now": 1}}),
    )
    .await;
    assert_eq!(keys().await, before + 2);
    c.send(json!({"type": "history", "channel_id": "h:nobody-7"}))
        .await;
    let page = c.recv().await;
    assert_eq!(page["offset"], 1, "{page}");
    assert_eq!(page["publications"][0]["data"], json!({"now": 1}));
}
