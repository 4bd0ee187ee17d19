//! Bad input, floods and slow readers: each gets a clear error or close code,
//! and everyone else keeps being served.

use pubmesh_tests::harness::{eventually, patience, Client, Node};
use serde_json::json;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// A bystander in channel `watch` that must keep receiving.
async fn bystander_still_receives(node: &Node, bystander: &mut Client, n: u64) {
    let (status, _) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["watch"], "data": {"n": n}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(bystander.recv().await, json!({"n": n}));
}

#[tokio::test]
async fn malformed_frames_get_error_codes_and_the_socket_stays_open() {
    let node = Node::start(&[]).await;
    let mut bystander = node.client("channel_id=watch").await;
    let mut c = node.client("").await;
    let cases: Vec<(&str, &str)> = vec![
        ("not json at all", "bad_json"),
        ("{\"type\":", "bad_json"),
        ("[1,2,3]", "bad_request"),
        ("42", "bad_request"),
        ("{}", "bad_request"),
        ("{\"type\":7}", "bad_request"),
        ("{\"type\":\"nope\"}", "bad_request"),
        (
            "{\"type\":\"channel\",\"channel_ids\":\"x\",\"data\":{}}",
            "bad_request",
        ),
        (
            "{\"type\":\"channel\",\"channel_ids\":[],\"data\":{}}",
            "bad_request",
        ),
        (
            "{\"type\":\"channel\",\"channel_ids\":[5],\"data\":{}}",
            "bad_request",
        ),
        (
            "{\"type\":\"channel\",\"channel_ids\":[\"a\"],\"data\":\"str\"}",
            "bad_request",
        ),
        ("{\"type\":\"user\",\"root_ids\":[\"a\"]}", "bad_request"),
        (
            "{\"type\":\"subscribe\",\"channel_ids\":null}",
            "bad_request",
        ),
        (
            "{\"type\":\"subscribe\",\"channel_ids\":[\"a\"],\"ref\":{\"x\":1}}",
            "bad_request",
        ),
        ("{\"type\":\"change_user\",\"token\":5}", "bad_request"),
    ];
    for (frame, code) in cases {
        c.send_text(frame).await;
        let reply = c.recv().await;
        assert_eq!(reply["type"], "error", "{frame}: {reply}");
        assert_eq!(reply["code"], code, "{frame}: {reply}");
    }
    c.send_message(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    assert_eq!(c.recv().await["code"], "bad_request");
    // ref survives in errors once the frame is an object.
    c.send(json!({"type": "bogus", "ref": 77})).await;
    assert_eq!(c.recv().await["ref"], 77);
    bystander_still_receives(&node, &mut bystander, 1).await;
    c.send(json!({"type": "connection"})).await;
    assert_eq!(c.recv().await["type"], "connection");
    assert!(node.metric("pubmesh_errors_total{code=\"bad_json\"}").await >= 2.0);
}

#[tokio::test]
async fn a_ten_megabyte_frame_closes_with_1009() {
    let node = Node::start(&[]).await;
    let mut bystander = node.client("channel_id=watch").await;
    let mut c = node.client("").await;
    let big = format!(
        "{{\"type\":\"channel\",\"channel_ids\":[\"x\"],\"data\":{{\"p\":\"{}\"}}}}",
        "x".repeat(10 * 1024 * 1024)
    );
    // The server may close before the whole frame is written.
    let _ = c.send_message(Message::Text(Utf8Bytes::from(big))).await;
    assert_eq!(c.expect_close().await.map(|c| c.0), Some(1009));
    bystander_still_receives(&node, &mut bystander, 2).await;
}

#[tokio::test]
async fn a_flood_beyond_the_rate_limit_closes_with_4029() {
    let node = Node::start(&["--client-rate", "50", "--client-burst", "50"]).await;
    let mut bystander = node.client("channel_id=watch").await;
    let mut c = node.client("").await;
    for _ in 0..500 {
        if c.send_message(Message::Text(Utf8Bytes::from("{\"type\":\"connection\"}")))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(c.expect_close().await.map(|c| c.0), Some(4029));
    bystander_still_receives(&node, &mut bystander, 3).await;
    eventually("rate-limited close counted", patience(10), || {
        let node = &node;
        async move {
            (node
                .metric("pubmesh_connections_closed_total{reason=\"rate_limited\"}")
                .await
                >= 1.0)
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_while_fast_ones_get_everything() {
    let node = Node::start(&[
        "--outbox-bytes",
        "262144",
        "--client-rate",
        "100000",
        "--client-burst",
        "100000",
    ])
    .await;
    let mut fast = node.client("channel_id=firehose").await;
    let mut slow = node.client("channel_id=firehose").await;
    let mut publisher = node.client("channel_id=firehose").await;
    let payload = "y".repeat(60_000);
    const N: u64 = 400;
    // The fast reader reports its progress; the publisher keeps at most one
    // message ahead of it, so it stays fast however busy the machine is,
    // while the slow socket, which never reads, falls further behind.
    let (progress, mut read) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < N {
            let frame = fast.recv_within(patience(30)).await;
            assert_eq!(frame["seq"], got, "fast reader gets everything in order");
            got += 1;
            progress.send_replace(got);
        }
        fast
    });
    for seq in 0..N {
        tokio::time::timeout(patience(30), read.wait_for(|&got| got + 1 >= seq))
            .await
            .expect("the fast reader keeps up")
            .expect("fast reader alive");
        publisher
            .send(json!({"type": "channel", "channel_ids": ["firehose"], "data": {"seq": seq, "p": payload}}))
            .await;
        // The publisher is a member too; keep its own socket drained.
        publisher.recv_within(patience(30)).await;
    }
    let _fast = reader.await.expect("fast reader");
    eventually("slow consumer disconnected", patience(20), || {
        let node = &node;
        async move {
            (node.metric("pubmesh_slow_consumer_disconnects_total").await >= 1.0).then_some(())
        }
    })
    .await;
    // The slow socket ends (after whatever was already in flight). A server
    // stuck on a full socket buffer may drop it without a close frame; when
    // a close frame does get through, it says 4008.
    let (frames, close) = slow.read_to_end(patience(20)).await;
    assert!(
        frames < N,
        "the slow consumer cannot have received everything"
    );
    if let Some((code, _)) = close {
        assert_eq!(code, 4008, "slow consumer close code");
    }
    assert!(
        node.metric("pubmesh_connections_closed_total{reason=\"slow_consumer\"}")
            .await
            >= 1.0
    );
    eventually("slow consumer unregistered", patience(10), || {
        let node = &node;
        async move { (node.metric("pubmesh_connections").await == 2.0).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn max_message_size_is_the_limit_for_one_frame() {
    let node = Node::start(&["--max-message-size", "2048", "--outbox-bytes", "65536"]).await;
    let mut bystander = node.client("channel_id=watch").await;
    let mut c = node.client("channel_id=sz").await;
    let frame = |pad: usize| {
        format!(
            "{{\"type\":\"channel\",\"channel_ids\":[\"sz\"],\"data\":{{\"p\":\"{}\"}}}}",
            "x".repeat(pad)
        )
    };
    let fits = frame(1900);
    assert!(fits.len() <= 2048);
    c.send_text(&fits).await;
    assert_eq!(c.recv().await["p"].as_str().map(str::len), Some(1900));
    let too_big = frame(2100);
    let _ = c
        .send_message(Message::Text(Utf8Bytes::from(too_big)))
        .await;
    assert_eq!(c.expect_close().await.map(|c| c.0), Some(1009));
    bystander_still_receives(&node, &mut bystander, 4).await;
}

#[tokio::test]
async fn frames_within_the_burst_are_all_served() {
    let node = Node::start(&["--client-rate", "5", "--client-burst", "20"]).await;
    let mut c = node.client("").await;
    for i in 0..20 {
        c.send(json!({"type": "connection", "ref": i})).await;
    }
    for i in 0..20 {
        let frame = c.recv().await;
        assert_eq!(frame["type"], "connection", "{frame}");
        assert_eq!(frame["ref"], i);
    }
    assert_eq!(
        node.metric("pubmesh_connections_closed_total{reason=\"rate_limited\"}")
            .await,
        0.0
    );
}
