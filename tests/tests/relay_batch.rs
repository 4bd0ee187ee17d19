//! Batched relay: envelopes for the same Redis channel that queue together
//! share one PUBLISH (a batch envelope), and the receiving node delivers each
//! of them once, in order. `--relay-batch-bytes 0` sends every envelope alone,
//! the wire format of builds without batches.

use std::time::Duration;

use pubmesh_tests::harness::{cluster_slot, eventually, patience, redis_cmd, two_nodes, Redis};
use serde_json::{json, Value};

/// `calls` of `cmdstat_publish` in Redis `INFO commandstats`.
async fn publish_calls(port: u16) -> u64 {
    let info = redis_cmd(port, &["INFO", "commandstats"])
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A burst of `count` frames from a socket on node A to a channel whose
/// other member is on node B; returns (A's `pubmesh_relay_batched_total`,
/// Redis PUBLISH commands during the burst).
async fn burst(extra: &[&str], count: u64) -> (f64, u64) {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let url = redis.url();
    let mut args = vec![
        "--redis-url",
        url.as_str(),
        "--client-rate",
        "100000",
        "--client-burst",
        "100000",
    ];
    args.extend_from_slice(extra);
    let (a, b) = two_nodes(&args).await;
    let mut publisher = a.client("channel_id=burst").await;
    let mut receiver = b.client("channel_id=burst").await;
    eventually("both nodes subscribed", patience(20), || async {
        let reply = redis_cmd(redis.port, &["PUBSUB", "NUMSUB", "pubmesh.ch.{burst}"]).await?;
        reply.ends_with(":2\r\n").then_some(())
    })
    .await;

    let before = publish_calls(redis.port).await;
    // Frames go out back to back: while one pipeline is in flight, the next
    // ones queue in the lane.
    let sender = tokio::spawn(async move {
        for i in 0..count {
            publisher
                .send(json!({"type": "channel", "channel_ids": ["burst"], "data": {"i": i}}))
                .await;
        }
        publisher
    });
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + patience(60);
    while (got.len() as u64) < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(frame) = tokio::time::timeout(left, receiver.recv()).await else {
            break;
        };
        if let Some(i) = frame.get("i").and_then(Value::as_u64) {
            got.push(i);
        }
    }
    let _publisher = sender.await.expect("publisher");
    receiver.expect_silence(Duration::from_millis(500)).await;
    let want: Vec<u64> = (0..count).collect();
    assert_eq!(got.len(), want.len(), "every frame arrives once");
    assert_eq!(got, want, "in publish order");
    let publishes = publish_calls(redis.port).await - before;
    (a.metric("pubmesh_relay_batched_total").await, publishes)
}

#[tokio::test]
async fn a_burst_to_one_channel_shares_publishes_and_arrives_once_in_order() {
    const COUNT: u64 = 2000;
    // A busy lane waits up to 2 ms for more envelopes, so batches form even
    // on a fast machine.
    let (batched, publishes) = burst(&["--relay-batch-us", "2000"], COUNT).await;
    eprintln!("{COUNT} frames: {publishes} PUBLISH commands, {batched} envelopes batched");
    assert!(batched > 0.0, "no envelope shared a PUBLISH");
    // Heartbeats and probes publish too, but far fewer than the batched ones.
    assert!(
        publishes < COUNT,
        "{publishes} PUBLISH commands for {COUNT} envelopes"
    );
}

#[tokio::test]
async fn without_batches_every_envelope_is_its_own_publish() {
    const COUNT: u64 = 500;
    let (batched, publishes) = burst(&["--relay-batch-bytes", "0"], COUNT).await;
    assert_eq!(batched, 0.0);
    assert!(
        publishes >= COUNT,
        "{publishes} PUBLISH commands for {COUNT} envelopes"
    );
}
