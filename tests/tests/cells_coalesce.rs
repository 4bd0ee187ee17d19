//! Coalescing on the Cells gateway, two nodes and Redis, real WebSocket
//! sessions: a burst of events for one key arrives once, merged as Cells'
//! batcher merges, on both nodes; keys do not mix; a hot key still flushes
//! within the maximum wait; an unbatched type sends the held burst first;
//! a burst split across two API nodes becomes one event per node.

use std::time::Duration;

mod cells_support;

use cells_support::{token, two_nodes_with, Session};
use pubmesh_tests::harness::{cluster_slot, patience, Node, Redis};
use serde_json::{json, Value};

/// POST a `tree` event for `w1` and return the reply.
async fn tree(node: &Node, body: Value) -> Value {
    let (status, reply) = node
        .post(
            "/api/events",
            json!({"kind": "tree", "audience": {"workspaces": ["w1"]}, "body": body}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    reply
}

/// The node event frames (those with a `Target`) a session receives until
/// a marker sent through `via` arrives after `n` of them.
async fn node_events(s: &mut Session, via: &Node, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = s.client.recv_within(patience(30)).await;
        if frame.get("Target").is_some() {
            out.push(frame);
        }
    }
    let marker = format!("marker-{}", s.user);
    let (status, _) = via
        .post(
            "/api/events",
            json!({"kind": "idm", "audience": {"users": [s.user]}, "body": {"marker": marker}}),
        )
        .await;
    assert_eq!(status, 200);
    loop {
        let frame = s.client.recv_within(patience(30)).await;
        if frame["marker"] == marker.as_str() {
            return out;
        }
        if frame.get("Target").is_some() {
            out.push(frame);
        }
    }
}

fn uuid(frame: &Value) -> &str {
    frame["Target"]["Uuid"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_burst_for_one_key_arrives_once_merged_on_both_nodes_and_keys_do_not_mix() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    // A long idle window: the test's own posts must never be an idle gap.
    let flags = [
        "--cells-coalesce-idle-ms",
        "3000",
        "--cells-coalesce-max-wait-ms",
        "120000",
    ];
    let (n0, n1) = two_nodes_with(&redis, &flags).await;
    let mut a = Session::open(&n0, &token("alice", "standard", &[], &["w1"]), "alice").await;
    a.ready(&n1, &["w1"]).await;
    let mut b = Session::open(&n1, &token("bob", "standard", &[], &["w1"]), "bob").await;
    b.ready(&n0, &["w1"]).await;

    const N: usize = 50;
    for i in 0..N {
        // u1 starts with a CREATE; u2 is all updates, the last of content.
        let t1 = if i == 0 { "CREATE" } else { "UPDATE_META" };
        let t2 = if i == N - 1 {
            "UPDATE_CONTENT"
        } else {
            "UPDATE_META"
        };
        for (id, ty) in [("u1", t1), ("u2", t2)] {
            let path = if i == 0 {
                format!("{id}.txt")
            } else {
                String::new()
            };
            let mut meta = serde_json::Map::new();
            meta.insert("seq".into(), json!(format!("\"{i}\"")));
            meta.insert(format!("k{i}"), json!(format!("\"{id}\"")));
            let reply = tree(
                &n0,
                json!({"Type": ty, "Target": {"Uuid": id, "Path": path, "MetaStore": meta}}),
            )
            .await;
            assert_eq!(reply["coalesced"], true, "{reply}");
            assert_eq!(reply["key"], id);
            assert_eq!(reply["pending"], i + 1, "{reply}");
        }
    }

    for (s, via) in [(&mut a, &n0), (&mut b, &n1)] {
        let mut got = node_events(s, via, 2).await;
        got.sort_by(|x, y| uuid(x).cmp(uuid(y)));
        assert_eq!(
            got.iter().map(uuid).collect::<Vec<_>>(),
            ["u1", "u2"],
            "one merged event per key for {}: {got:?}",
            s.user
        );
        for (frame, id) in got.iter().zip(["u1", "u2"]) {
            let target = &frame["Target"];
            assert_eq!(target["Path"], format!("{id}.txt"), "first path kept");
            let meta = target["MetaStore"].as_object().expect("meta");
            assert_eq!(meta["seq"], format!("\"{}\"", N - 1), "later wins");
            for i in 0..N {
                // Every event's keys, and only this uuid's.
                assert_eq!(meta[&format!("k{i}")], format!("\"{id}\""), "{frame}");
            }
            assert_eq!(meta["EventWorkspaceId"], "\"w1\"");
        }
        // Any CREATE gives CREATE (protojson leaves the zero type out).
        assert!(got[0].get("Type").is_none(), "{}", got[0]);
        // Otherwise the last type.
        assert_eq!(got[1]["Type"], "UPDATE_CONTENT");
    }
    // Merged once for the cluster, on the node that took the events.
    let merged = r#"pubmesh_cells_events_total{outcome="merged"}"#;
    let coalesced = r#"pubmesh_cells_events_total{outcome="coalesced"}"#;
    assert_eq!(n0.metric(merged).await, 2.0);
    assert_eq!(n0.metric(coalesced).await, (2 * N) as f64);
    assert_eq!(n1.metric(merged).await, 0.0);
    assert!(n1
        .metrics()
        .await
        .contains("pubmesh_cells_events_total{outcome=\"merged\"} 0"));

    // A burst split across the two API nodes: one merged event per node.
    for i in 0..10 {
        let via = if i % 2 == 0 { &n0 } else { &n1 };
        let reply = tree(
            via,
            json!({"Type": "UPDATE_META", "Target": {"Uuid": "u3",
                   "MetaStore": {format!("k{i}"): "\"v\""}}}),
        )
        .await;
        assert_eq!(reply["coalesced"], true, "{reply}");
    }
    let got = node_events(&mut a, &n0, 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let mut keys: Vec<usize> = Vec::new();
    for frame in &got {
        assert_eq!(uuid(frame), "u3");
        let meta = frame["Target"]["MetaStore"].as_object().expect("meta");
        let mine: Vec<usize> = (0..10)
            .filter(|i| meta.contains_key(&format!("k{i}")))
            .collect();
        // Each node merged exactly the events posted to it.
        assert!(
            mine == [0, 2, 4, 6, 8] || mine == [1, 3, 5, 7, 9],
            "{frame}"
        );
        keys.extend(mine);
    }
    keys.sort();
    assert_eq!(keys, (0..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_hot_key_flushes_within_the_maximum_wait_and_unbatched_types_go_after_the_burst() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let flags = [
        "--cells-coalesce-idle-ms",
        "1500",
        "--cells-coalesce-max-wait-ms",
        "3000",
    ];
    let (n0, n1) = two_nodes_with(&redis, &flags).await;
    let mut s = Session::open(&n1, &token("carol", "standard", &[], &["w1"]), "carol").await;
    s.ready(&n0, &["w1"]).await;

    // Post to one key every 100 ms (well inside the idle window) until a
    // merged event arrives: only the maximum wait can have sent it.
    let deadline = std::time::Instant::now() + patience(60);
    let mut posted = 0usize;
    let first = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the hot key never flushed ({posted} posted)"
        );
        let reply = tree(
            &n0,
            json!({"Type": "UPDATE_META", "Target": {"Uuid": "hot",
                   "MetaStore": {"seq": format!("\"{posted}\"")}}}),
        )
        .await;
        assert_eq!(reply["coalesced"], true, "{reply}");
        posted += 1;
        let next = tokio::time::timeout(
            Duration::from_millis(100),
            s.client.recv_within(patience(30)),
        )
        .await;
        if let Ok(frame) = next {
            if uuid(&frame) == "hot" {
                break frame;
            }
        }
    };
    let seq: usize = first["Target"]["MetaStore"]["seq"]
        .as_str()
        .and_then(|v| v.trim_matches('"').parse().ok())
        .expect("seq");
    assert!(seq < posted, "flushed while the key was still hot");

    // An unbatched type (DELETE) is sent at once, after the held burst.
    let reply = tree(
        &n0,
        json!({"Type": "UPDATE_META", "Target": {"Uuid": "d1", "MetaStore": {"x": "\"1\""}}}),
    )
    .await;
    assert_eq!(reply["coalesced"], true);
    let reply = tree(&n0, json!({"Type": "DELETE", "Target": {"Uuid": "d1"}})).await;
    assert!(reply.get("coalesced").is_none(), "{reply}");
    // Other frames (the rest of the hot key) may come in between.
    let mut got = Vec::new();
    while got.len() < 2 {
        let frame = s.client.recv_within(patience(30)).await;
        if uuid(&frame) == "d1" {
            got.push(frame);
        }
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["Type"], "UPDATE_META");
    assert_eq!(got[0]["Target"]["MetaStore"]["x"], "\"1\"");
    assert_eq!(got[1]["Type"], "DELETE");
}
