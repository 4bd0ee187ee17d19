//! A join answered on one node must already receive what another node
//! publishes right after the answer: the subscribe reply waits until Redis
//! has the node's subscription.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pubmesh_tests::harness::{
    cluster_slot, eventually, patience, see_each_other, two_nodes, Client, Node, Redis,
};
use pubmesh_tests::proxy::{Mode, Proxy};
use serde_json::{json, Value};

/// `node` publishes `{"n": n}` to `channel`; `member` receives it next.
async fn publish_and_receive(node: &Node, member: &mut Client, channel: &str, n: usize) {
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": [channel], "data": {"n": n}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = member.recv_until(|f| f.get("n").is_some()).await;
    assert_eq!(
        got,
        json!({"n": n}),
        "a publish after the reply, on {channel}"
    );
}

#[tokio::test]
async fn a_publish_right_after_the_subscribe_reply_reaches_the_new_member_once() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let url = redis.url();
    // A low interest rate holds subscriptions back after the first few, the
    // widest form of the race between a subscribe reply and its SUBSCRIBE.
    let args = ["--redis-url", url.as_str(), "--relay-interest-rate", "4"];
    let (a, b) = two_nodes(&args).await;
    let mut member = b.client("").await;
    for i in 0..12 {
        let channel = format!("race-{i}");
        member
            .send(json!({"type": "subscribe", "channel_ids": [channel], "ref": i}))
            .await;
        let reply = member.recv_until(|f| f["ref"] == i).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        publish_and_receive(&a, &mut member, &channel, i).await;
    }
    member.expect_silence(Duration::from_millis(500)).await;
}

/// A join whose subscriptions take longer than any fixed wait (here 5 new
/// channels at 1 subscription per second) is answered only once all are in
/// place: every channel then receives what another node publishes next.
#[tokio::test]
async fn a_join_held_back_by_the_interest_rate_is_answered_only_when_every_channel_is_in_place() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let url = redis.url();
    let args = ["--redis-url", url.as_str(), "--relay-interest-rate", "1"];
    let (a, b) = two_nodes(&args).await;
    let mut member = b.client("").await;
    let channels: Vec<String> = (0..5).map(|i| format!("slow-{i}")).collect();
    let started = std::time::Instant::now();
    member
        .send(json!({"type": "subscribe", "channel_ids": channels, "ref": 1}))
        .await;
    let reply = member.recv_until(|f| f["ref"] == 1).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let waited = started.elapsed();
    eprintln!("5 channels at 1 subscription/s: answered after {waited:?}");
    for (i, channel) in channels.iter().enumerate() {
        publish_and_receive(&a, &mut member, channel, i).await;
    }
    member.expect_silence(Duration::from_millis(300)).await;
}

/// A join Redis does not confirm (the node's subscriber connection is open
/// but its SUBSCRIBE is held on the way) fails with `unavailable` after
/// `--relay-join-timeout-ms` instead of answering `subscribed` too early;
/// once Redis confirms again, the same join succeeds and receives.
#[tokio::test]
async fn a_join_redis_does_not_confirm_fails_with_unavailable_and_succeeds_once_it_does() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let to_b = Proxy::start(redis.port).await;
    let url_a = redis.url();
    let url_b = to_b.url();
    let a = Node::start(&["--redis-url", url_a.as_str()]).await;
    let b = Node::start(&[
        "--redis-url",
        url_b.as_str(),
        "--relay-join-timeout-ms",
        "1500",
    ])
    .await;
    see_each_other(&[&a, &b]).await;
    let mut member = b.client("").await;
    to_b.set(Mode::Hold("held-room"));
    member
        .send(json!({"type": "subscribe", "channel_ids": ["held-room"], "ref": 1}))
        .await;
    let refused = member.recv_until(|f| f["ref"] == 1).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("--relay-join-timeout-ms")),
        "{refused}"
    );
    assert_eq!(b.metric("pubmesh_relay_join_timeouts_total").await, 1.0);
    // The refused join left nothing behind: a publish is not delivered.
    let (status, body) = b
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["held-room"], "data": {"n": 0}, "local": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    member.expect_silence(Duration::from_millis(300)).await;

    to_b.set(Mode::Pass);
    // The held SUBSCRIBEs reach Redis now; joins succeed again once the
    // node's subscriber has caught up (within the deadline).
    let deadline = std::time::Instant::now() + patience(30);
    let reply = loop {
        member
            .send(json!({"type": "subscribe", "channel_ids": ["held-room"], "ref": 2}))
            .await;
        let reply = member.recv_until(|f| f["ref"] == 2).await;
        if reply["type"] == "subscribed" || std::time::Instant::now() > deadline {
            break reply;
        }
        assert_eq!(reply["code"], "unavailable", "{reply}");
    };
    assert_eq!(reply["channel_ids"], json!(["held-room"]), "{reply}");
    publish_and_receive(&a, &mut member, "held-room", 1).await;
    member.expect_silence(Duration::from_millis(300)).await;
}

/// Issue 14's race: a socket on node B subscribes while a socket on node A
/// publishes to that channel as fast as it can. Everything A's socket sent
/// after B's `subscribed` reply arrived reaches B, once and in order (what
/// was sent before may or may not, but never twice or out of order).
#[tokio::test]
async fn a_join_while_another_node_publishes_at_full_rate_misses_nothing_after_its_reply() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let url = redis.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--client-channel-publish",
        "any",
        "--client-rate",
        "1000000",
        "--client-burst",
        "1000000",
    ];
    let (a, b) = two_nodes(&args).await;
    for round in 0..3u64 {
        let channel = format!("race-full-{round}");
        let mut publisher = a.client("").await;
        let mut member = b.client("").await;
        // How many frames the publisher has written so far.
        let sent = Arc::new(AtomicU64::new(0));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let task = {
            let (sent, channel) = (sent.clone(), channel.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !*stop.borrow() {
                    publisher
                        .send(
                            json!({"type": "channel", "channel_ids": [channel], "data": {"i": i}}),
                        )
                        .await;
                    i += 1;
                    sent.store(i, Ordering::Release);
                    if i.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
                publisher
            })
        };
        eventually("the publisher is under way", patience(20), || {
            let sent = sent.clone();
            async move { (sent.load(Ordering::Acquire) > 200).then_some(()) }
        })
        .await;
        member
            .send(json!({"type": "subscribe", "channel_ids": [channel], "ref": round}))
            .await;
        let mut got: Vec<u64> = Vec::new();
        let reply = loop {
            let frame = member.recv().await;
            if frame["ref"] == round {
                break frame;
            }
        };
        assert_eq!(reply["type"], "subscribed", "{reply}");
        // Every frame from this number on was written after the reply.
        let after_reply = sent.load(Ordering::Acquire);
        eventually(
            "the publisher went on after the reply",
            patience(30),
            || {
                let sent = sent.clone();
                async move { (sent.load(Ordering::Acquire) > after_reply + 1000).then_some(()) }
            },
        )
        .await;
        let _ = stop_tx.send(true);
        let _publisher = task.await.expect("publisher");
        let last = sent.load(Ordering::Acquire) - 1;
        let deadline = tokio::time::Instant::now() + patience(60);
        while got.last().is_none_or(|&i| i < last) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Ok(frame) = tokio::time::timeout(left, member.recv()).await else {
                break;
            };
            if let Some(i) = frame.get("i").and_then(Value::as_u64) {
                got.push(i);
            }
        }
        member.expect_silence(Duration::from_millis(300)).await;
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "round {round}: out of order or twice"
        );
        let missed: Vec<u64> = (after_reply..=last)
            .filter(|i| got.binary_search(i).is_err())
            .collect();
        assert!(
            missed.is_empty(),
            "round {round}: {} of the frames sent after the reply (from {after_reply} to {last}) missed, first {:?}",
            missed.len(),
            &missed[..missed.len().min(10)]
        );
        eprintln!(
            "round {round}: subscribed after {after_reply} frames; {} received, all of {}..={last}",
            got.len(),
            after_reply
        );
    }
}
