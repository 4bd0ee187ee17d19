//! A subscriber that stops reading while frames of every size pile up (in
//! the kernel's socket buffers, in part at the end of them, and in its
//! outbox behind that) gets every frame whole and in order once it reads
//! again, within `--outbox-bytes`, and the node keeps serving everyone else
//! meanwhile.

use pubmesh_tests::harness::{eventually, patience, Node};
use serde_json::json;

/// Payload sizes from 1 byte to 60 KB, in no order a buffer boundary follows.
fn size(seq: u64) -> usize {
    (seq as usize * 7919) % 60_000 + 1
}

#[tokio::test]
async fn a_reader_that_stalls_gets_every_frame_whole_and_in_order_when_it_reads_again() {
    let node = Node::start(&[
        "--outbox-bytes",
        "67108864",
        "--client-channel-publish",
        "any",
        "--client-rate",
        "100000",
        "--client-burst",
        "100000",
    ])
    .await;
    let mut bystander = node.client("channel_id=watch").await;
    let mut stalled = node.client("channel_id=solo").await;
    let mut publisher = node.client("channel_id=pub").await;
    // About 18 MB: more than the kernel's socket buffers on both ends hold.
    const N: u64 = 600;
    for seq in 0..N {
        let p = "z".repeat(size(seq));
        publisher
            .send(json!({"type": "channel", "channel_ids": ["solo"], "data": {"seq": seq, "p": p}}))
            .await;
    }
    eventually("every publish delivered or queued", patience(30), || {
        let node = &node;
        async move { (node.metric("pubmesh_deliveries_total").await >= N as f64).then_some(()) }
    })
    .await;
    // Everyone else is served while the stalled socket is full.
    let (status, _) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["watch"], "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(bystander.recv_within(patience(10)).await, json!({"n": 1}));
    // Reading again: all of it, whole (the client's frame parser would
    // fail on a torn frame) and in order.
    for seq in 0..N {
        let frame = stalled.recv_within(patience(30)).await;
        assert_eq!(frame["seq"], seq, "in order");
        assert_eq!(frame["p"].as_str().map(str::len), Some(size(seq)), "whole");
    }
    assert_eq!(
        node.metric("pubmesh_slow_consumer_disconnects_total").await,
        0.0
    );
    // And the socket goes on as any other.
    publisher
        .send(json!({"type": "channel", "channel_ids": ["solo"], "data": {"seq": N}}))
        .await;
    assert_eq!(stalled.recv_within(patience(10)).await["seq"], N);
}
