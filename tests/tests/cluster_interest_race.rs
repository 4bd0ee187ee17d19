//! A join answered on one node must already receive what another node
//! publishes right after the answer: the subscribe reply waits until Redis
//! has the node's subscription.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pubmesh_tests::harness::{cluster_slot, eventually, patience, two_nodes, Redis};
use serde_json::{json, Value};

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
        let (status, body) = a
            .post(
                "/api/notify/channels",
                json!({"channel_ids": [channel], "data": {"n": i}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let got = member.recv_until(|f| f.get("n").is_some()).await;
        assert_eq!(
            got,
            json!({"n": i}),
            "every publish after the reply arrives, in order"
        );
    }
    member.expect_silence(Duration::from_millis(500)).await;
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
