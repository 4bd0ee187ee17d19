//! Rate limits of the Cells gateway, with real sessions: a session over its
//! event rate gets at most burst + rate × elapsed events and the rest are
//! dropped and counted; events marked silent beyond the node's silent rate
//! are dropped and counted; a session whose token expired receives
//! nothing until it subscribes again with a fresh one.

use std::time::Instant;

mod cells_support;

use cells_support::{token, Session, SECRET};
use futures_util::future::join_all;
use pubmesh_tests::harness::{eventually, patience, Node};
use serde_json::json;

const SESSION_DROPS: &str = r#"pubmesh_cells_events_total{outcome="dropped_session_rate"}"#;
const SILENT_DROPS: &str = r#"pubmesh_cells_events_total{outcome="dropped_silent_rate"}"#;

/// Whether `got` events fit a bucket of `rate`/s and `burst` over
/// `elapsed` seconds (plus one event of slack for the clock).
fn within(got: usize, rate: f64, burst: f64, elapsed: f64) -> bool {
    (got as f64) <= burst + rate * elapsed + 1.0
}

#[tokio::test]
async fn a_session_over_its_rate_gets_at_most_its_bucket_and_drops_are_counted() {
    let node = Node::start(&[
        "--jwt-secret",
        SECRET,
        "--cells-session-rate",
        "5",
        "--cells-session-burst",
        "10",
    ])
    .await;
    // Counters exist at zero from the start.
    let text = node.metrics().await;
    assert!(text.contains(&format!("{SESSION_DROPS} 0")), "{text}");
    assert!(text.contains(&format!("{SILENT_DROPS} 0")), "{text}");

    let mut alice = Session::open(&node, &token("alice", "standard", &[], &[]), "alice").await;
    alice.ready(&node, &[]).await;
    let mut bob = Session::open(&node, &token("bob", "standard", &[], &[]), "bob").await;
    bob.ready(&node, &[]).await;

    const N: usize = 150;
    let before = node.metric(SESSION_DROPS).await;
    let start = Instant::now();
    let posts = (0..N).map(|i| {
        node.post(
            "/api/events",
            json!({"kind": "activity", "audience": {"users": ["alice"]}, "body": {"n": i}}),
        )
    });
    for (status, reply) in join_all(posts).await {
        assert_eq!(status, 200, "{reply}");
    }
    // Every event was either queued to alice or dropped for her: count
    // what arrives until the two add up.
    let mut got = 0usize;
    let deadline = Instant::now() + patience(30);
    loop {
        let dropped = (node.metric(SESSION_DROPS).await - before) as usize;
        if got + dropped == N {
            break;
        }
        assert!(Instant::now() < deadline, "got {got}, dropped {dropped}");
        let frame = alice.client.recv_within(patience(30)).await;
        if frame.get("n").is_some() {
            got += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let dropped = N - got;
    assert!(got > 0, "some arrive");
    assert!(
        within(got, 5.0, 10.0, elapsed),
        "{got} events in {elapsed:.2} s"
    );
    assert!(dropped > 0, "{N} events in {elapsed:.2} s, none dropped");
    // Bob's sessions are not limited by alice's bucket.
    let (status, _) = node
        .post(
            "/api/events",
            json!({"kind": "idm", "audience": {"users": ["bob"]}, "body": {"to": "bob"}}),
        )
        .await;
    assert_eq!(status, 200);
    loop {
        if bob.client.recv_within(patience(30)).await["to"] == "bob" {
            break;
        }
    }
}

#[tokio::test]
async fn silent_events_over_the_node_rate_are_dropped_and_counted() {
    let node = Node::start(&[
        "--jwt-secret",
        SECRET,
        "--cells-silent-rate",
        "2",
        "--cells-silent-burst",
        "3",
    ])
    .await;
    const N: usize = 60;
    let start = Instant::now();
    let posts = (0..N).map(|i| {
        node.post(
            "/api/events",
            json!({"kind": "tree", "audience": {"workspaces": ["w1"]},
                   "body": {"Silent": true, "Target": {"Path": format!("p{i}")}}}),
        )
    });
    let mut dropped = 0;
    for (status, reply) in join_all(posts).await {
        assert_eq!(status, 200, "{reply}");
        if reply["dropped"] == "silent_rate" {
            dropped += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let sent = N - dropped;
    assert!(sent >= 3, "the burst goes: {sent}");
    assert!(within(sent, 2.0, 3.0, elapsed), "{sent} in {elapsed:.2} s");
    assert!(dropped > 0);
    eventually("silent drops counted", patience(10), || async {
        (node.metric(SILENT_DROPS).await as usize == dropped).then_some(())
    })
    .await;
    // Events that are not silent are not limited by it.
    for i in 0..10 {
        let (status, reply) = node
            .post(
                "/api/events",
                json!({"kind": "tree", "audience": {"workspaces": ["w1"]},
                       "body": {"Silent": false, "n": i}}),
            )
            .await;
        assert_eq!(status, 200);
        assert!(reply.get("dropped").is_none(), "{reply}");
    }
}

#[tokio::test]
async fn an_expired_token_stops_events_until_a_fresh_subscribe() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let claims = json!({"sub": "id-erin", "name": "erin", "workspaces": ["w1"]});
    let short = pubmesh_tests::harness::hs256_with(SECRET, claims, 3);
    let mut s = Session::open(&node, &short, "erin").await;
    let expired = r#"pubmesh_cells_events_total{outcome="dropped_expired"}"#;
    // Post events to erin until one is withheld because the token expired
    // (only a subscribed session whose claims match is counted so).
    let node_ref = &node;
    eventually("an event withheld at expiry", patience(30), || async move {
        let (status, _) = node_ref
            .post(
                "/api/events",
                json!({"kind": "idm", "audience": {"users": ["erin"]}, "body": {"late": true}}),
            )
            .await;
        assert_eq!(status, 200);
        (node_ref.metric(expired).await > 0.0).then_some(())
    })
    .await;
    // A fresh token: events flow again, on the same socket.
    s.client
        .send(json!({"@type": "subscribe", "jwt": token("erin", "standard", &[], &["w1"])}))
        .await;
    s.ready(&node, &["w1"]).await;
    let before = node.metric(expired).await;
    s.ready(&node, &[]).await;
    assert_eq!(node.metric(expired).await, before, "nothing withheld now");
}
