//! A subscribe that is refused or fails leaves no channel "recovering", and
//! live publications held back during a recovery count against the
//! connection's outbox bound (issue 9, item 4).
//!
//! Before: a refused subscribe (`too_many_channels`) or a history read that
//! failed left the socket's channels recovering for good: it silently
//! stopped receiving them while the node held every publication in memory,
//! outside any bound.

use std::io::Write;

use pubmesh_tests::harness::{
    cluster_slot, eventually, patience, redis_cmd, temp_dir, Client, Node, Redis,
};
use pubmesh_tests::proxy::Proxy;
use serde_json::{json, Value};

/// The `vip:*` namespace needs a JWT key to start; no token is used here.
const SECRET: &str = "recovery-secret";

fn config() -> String {
    let path = temp_dir("recovery-state").join("ns.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| {
            f.write_all(
                br#"
[[namespaces]]
pattern = "vip:*"
subscribe = "claim"
history_size = 100
history_ttl_seconds = 300

[[namespaces]]
pattern = "h:*"
history_size = 100
history_ttl_seconds = 300
"#,
            )
        })
        .expect("config");
    path.to_string_lossy().to_string()
}

async fn publish(node: &Node, channel: &str, data: Value) {
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": [channel], "data": data}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Send a subscribe frame and return the reply to it.
async fn subscribe(c: &mut Client, mut frame: Value, reference: &str) -> Value {
    frame["type"] = json!("subscribe");
    frame["ref"] = json!(reference);
    c.send(frame).await;
    c.recv_until(|f| f["ref"] == reference).await
}

/// The node holds nothing back for any recovery: both gauges exist and are 0.
async fn nothing_held(node: &Node) {
    let text = node.metrics().await;
    for line in [
        "pubmesh_recoveries_in_progress 0",
        "pubmesh_recovery_held_bytes 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing:\n{}",
            text.lines()
                .filter(|l| l.starts_with("pubmesh_recover"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// A publication to `positioned` arrives enveloped at the next offset, and
/// one to `plain` arrives raw: the socket still receives both channels.
async fn still_delivering(
    node: &Node,
    c: &mut Client,
    positioned: &str,
    offset: &mut u64,
    plain: &str,
    step: &str,
) {
    publish(node, positioned, json!({"step": step})).await;
    *offset += 1;
    let p = c.recv().await;
    assert_eq!(p["type"], "publication", "after {step}: {p}");
    assert_eq!(p["channel"], positioned, "after {step}: {p}");
    assert_eq!(p["offset"], *offset, "after {step}: {p}");
    assert_eq!(p["data"], json!({"step": step}));
    publish(node, plain, json!({"plain": step})).await;
    assert_eq!(c.recv().await, json!({"plain": step}), "after {step}");
    nothing_held(node).await;
}

async fn local_channels(node: &Node) -> Vec<String> {
    let (status, body) = node.get("/api/channels").await;
    assert_eq!(status, 200, "{body}");
    body["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .filter_map(|c| c["channel"].as_str().or(c["name"].as_str()))
        .map(str::to_string)
        .collect()
}

/// Every way a subscribe can be refused on one node: by policy, for a
/// channel without history, over `--max-channels-per-connection` (for a
/// channel the socket was positioned in, and for one it was a plain member
/// of), and a position ahead of the channel. After each, the socket's
/// channels deliver exactly as before and nothing is held.
#[tokio::test]
async fn refused_subscribes_leave_every_channel_delivering() {
    let file = config();
    let node = Node::start(&[
        "--config",
        &file,
        "--jwt-secret",
        SECRET,
        "--max-channels-per-connection",
        "3",
    ])
    .await;
    let mut c = node.client("").await;
    // Its own channel, h:a positioned and h:p plain: the limit of 3.
    let reply = subscribe(
        &mut c,
        json!({"channel_ids": ["h:a"], "positioned": true}),
        "a",
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let epoch = reply["positions"]["h:a"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    let reply = subscribe(&mut c, json!({"channel_ids": ["h:p"]}), "p").await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let mut offset = 0;
    still_delivering(&node, &mut c, "h:a", &mut offset, "h:p", "start").await;

    let refusals = [
        (
            json!({"channel_ids": ["h:a", "vip:x"], "since": {"h:a": {"offset": 1, "epoch": epoch}}}),
            "forbidden",
        ),
        (
            json!({"channel_ids": ["h:a", "plain"], "positioned": true}),
            "no_history",
        ),
        (
            json!({"channel_ids": ["h:a", "h:new"], "since": {"h:a": {"offset": 1, "epoch": epoch}}}),
            "too_many_channels",
        ),
        (
            json!({"channel_ids": ["h:p", "h:new2"], "positioned": true}),
            "too_many_channels",
        ),
    ];
    for (i, (frame, code)) in refusals.into_iter().enumerate() {
        let reference = format!("r{i}");
        let reply = subscribe(&mut c, frame, &reference).await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], code, "{reply}");
        still_delivering(&node, &mut c, "h:a", &mut offset, "h:p", code).await;
    }

    // A position ahead of the channel: answered, not recovered, live from now.
    let reply = subscribe(
        &mut c,
        json!({"channel_ids": ["h:a"], "since": {"h:a": {"offset": 999, "epoch": epoch}}}),
        "ahead",
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["positions"]["h:a"]["recovered"], false, "{reply}");
    assert_eq!(reply["positions"]["h:a"]["offset"], offset, "{reply}");
    still_delivering(&node, &mut c, "h:a", &mut offset, "h:p", "bad_position").await;

    let channels = local_channels(&node).await;
    assert!(channels.contains(&"h:a".to_string()), "{channels:?}");
    for never in ["h:new", "h:new2", "vip:x", "plain"] {
        assert!(
            !channels.contains(&never.to_string()),
            "{never} in {channels:?}"
        );
    }
}

/// A history read that fails in the middle of a subscribe (the channel's
/// Redis meta key has the wrong type) is answered `unavailable` and changes
/// nothing: channels read before and after it keep delivering as before, the
/// channel that was new is not joined, nothing is held.
#[tokio::test]
async fn a_history_read_failure_puts_the_whole_subscribe_back() {
    let redis = Redis::start().await;
    let url = redis.url();
    let file = config();
    let node = Node::start(&[
        "--redis-url",
        &url,
        "--config",
        &file,
        "--jwt-secret",
        SECRET,
    ])
    .await;
    let mut c = node.client("").await;
    let reply = subscribe(
        &mut c,
        json!({"channel_ids": ["h:good"], "positioned": true}),
        "g",
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let epoch = reply["positions"]["h:good"]["epoch"].clone();
    let reply = subscribe(&mut c, json!({"channel_ids": ["h:raw"]}), "r").await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let mut offset = 0;
    still_delivering(&node, &mut c, "h:good", &mut offset, "h:raw", "start").await;

    let set = redis
        .cmd(&["SET", "pubmesh.hm.{h:bad}", "not-a-hash"])
        .await;
    assert!(set.is_some_and(|r| r.starts_with("+OK")), "SET failed");
    let reply = subscribe(
        &mut c,
        json!({
            "channel_ids": ["h:good", "h:bad", "h:raw", "h:later"],
            "positioned": true,
            "since": {"h:good": {"offset": offset, "epoch": epoch}},
        }),
        "fails",
    )
    .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "unavailable", "{reply}");
    still_delivering(&node, &mut c, "h:good", &mut offset, "h:raw", "after").await;
    let channels = local_channels(&node).await;
    for never in ["h:bad", "h:later"] {
        assert!(
            !channels.contains(&never.to_string()),
            "{never} in {channels:?}"
        );
    }
}

/// A recovery whose history read is held up (the node's Redis link holds
/// that one request) while live publications pour in: what is held back
/// counts against `--outbox-bytes`, and beyond it the socket is closed with
/// 4008 like any slow consumer, while the read is still pending. Another
/// member of the channel on the same node is not affected.
#[tokio::test]
async fn a_recovery_backlog_beyond_the_outbox_bound_closes_with_4008() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let proxy = Proxy::start(redis.port).await;
    let file = config();
    let (via_proxy, direct) = (proxy.url(), redis.url());
    let bound = "65536";
    let a = Node::start(&[
        "--redis-url",
        &via_proxy,
        "--config",
        &file,
        "--outbox-bytes",
        bound,
        "--jwt-secret",
        SECRET,
    ])
    .await;
    let b = Node::start(&[
        "--redis-url",
        &direct,
        "--config",
        &file,
        "--jwt-secret",
        SECRET,
    ])
    .await;
    for node in [&a, &b] {
        eventually("membership", patience(20), || async move {
            let (_, body) = node.get("/api/nodes").await;
            (body["nodes"].as_array().map(Vec::len) == Some(2)).then_some(())
        })
        .await;
    }
    // A plain member on A, so A receives the channel from Redis.
    let mut watcher = a.client("").await;
    let reply = subscribe(&mut watcher, json!({"channel_ids": ["h:slow"]}), "w").await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    // (The reply comes once Redis has confirmed A's subscription; the
    // check below says so from Redis' side.)
    eventually("A subscribed to h:slow in Redis", patience(20), || async {
        let reply = redis_cmd(redis.port, &["PUBSUB", "NUMSUB", "pubmesh.ch.{h:slow}"]).await?;
        reply.ends_with(":1\r\n").then_some(())
    })
    .await;
    publish(&b, "h:slow", json!({"n": 0})).await;
    assert_eq!(watcher.recv().await, json!({"n": 0}));
    let (_, page) = b.get("/api/history?channel=h:slow").await;
    let since = json!({"offset": page["offset"], "epoch": page["epoch"]});

    // The recovering socket's history read waits in the proxy.
    proxy.hold(".hm.{h:slow}");
    let mut late = a.client("").await;
    late.send(json!({"type": "subscribe", "channel_ids": ["h:slow"], "since": {"h:slow": since}, "ref": 1}))
        .await;
    eventually("the recovery to start", patience(10), || async {
        (a.metric("pubmesh_recoveries_in_progress").await == 1.0).then_some(())
    })
    .await;

    let big = "x".repeat(40_000);
    publish(&b, "h:slow", json!({"n": 1, "big": big})).await;
    assert_eq!(watcher.recv().await["n"], 1);
    let held = eventually("the publication to be held", patience(10), || async {
        let held = a.metric("pubmesh_recovery_held_bytes").await;
        (held > 0.0).then_some(held)
    })
    .await;
    assert!(held > 40_000.0 && held <= 65_536.0, "held {held} bytes");
    publish(&b, "h:slow", json!({"n": 2, "big": big})).await;
    assert_eq!(watcher.recv().await["n"], 2);
    let close = late.expect_close().await;
    assert_eq!(close, Some((4008, "slow consumer".to_string())));

    proxy.heal();
    eventually("nothing held on A", patience(10), || async {
        let text = a.metrics().await;
        (text
            .lines()
            .any(|l| l == "pubmesh_recoveries_in_progress 0")
            && text.lines().any(|l| l == "pubmesh_recovery_held_bytes 0"))
        .then_some(())
    })
    .await;
    assert_eq!(
        a.metric("pubmesh_connections_closed_total{reason=\"slow_consumer\"}")
            .await,
        1.0
    );
    publish(&b, "h:slow", json!({"n": 3})).await;
    assert_eq!(watcher.recv().await, json!({"n": 3}));
}
