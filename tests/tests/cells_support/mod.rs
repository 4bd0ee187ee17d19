//! What the Cells gateway's test files share: tokens, subscribed
//! sessions, and a two-node cluster.
#![allow(dead_code)]

use std::time::Duration;

use pubmesh_tests::harness::{eventually, hs256_with, patience, Client, Node, Redis};
use serde_json::{json, Value};

pub const SECRET: &str = "cells-secret";

pub fn events_url(node: &Node) -> String {
    node.ws("").replace("/websocket", "/ws/event")
}

pub fn token(user: &str, profile: &str, roles: &[&str], workspaces: &[&str]) -> String {
    hs256_with(
        SECRET,
        json!({"sub": format!("id-{user}"), "name": user, "profile": profile,
               "roles": roles, "workspaces": workspaces}),
        300,
    )
}

/// A subscribed Cells session.
pub struct Session {
    pub client: Client,
    pub user: String,
    probe: u64,
}

impl Session {
    pub async fn open(node: &Node, jwt: &str, user: &str) -> Session {
        let mut client = Client::connect_raw(&events_url(node), None)
            .await
            .expect("connect");
        client.send(json!({"@type": "subscribe", "jwt": jwt})).await;
        Session {
            client,
            user: user.into(),
            probe: 0,
        }
    }

    /// Probe through `via` until a probe for the session's user and each of
    /// `workspaces` arrives (Cells acknowledges nothing).
    pub async fn ready(&mut self, via: &Node, workspaces: &[&str]) {
        let deadline = std::time::Instant::now() + patience(30);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never ready",
                self.user
            );
            self.probe += 1;
            let probe = format!("{}-{}", self.user, self.probe);
            let audience = if workspaces.is_empty() {
                json!({"users": [self.user]})
            } else {
                json!({"workspaces": workspaces})
            };
            let (status, _) = via
                .post(
                    "/api/events",
                    json!({"kind": "idm", "audience": audience, "body": {"probe": probe}}),
                )
                .await;
            assert_eq!(status, 200);
            let want = workspaces.len().max(1);
            let mut got = 0;
            while got < want {
                let next = tokio::time::timeout(
                    Duration::from_millis(700),
                    self.client.recv_within(patience(30)),
                )
                .await;
                match next {
                    Ok(frame) if frame["probe"] == probe.as_str() => got += 1,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if got == want {
                return;
            }
        }
    }

    /// The next `n` event frames as (id, workspace), then every other
    /// event frame that arrives before a marker sent through `via` (none,
    /// when delivery is exact).
    pub async fn collect(&mut self, via: &Node, n: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while out.len() < n {
            let frame = self.client.recv_within(patience(30)).await;
            if let Some(pair) = event_of(&frame) {
                out.push(pair);
            }
        }
        self.probe += 1;
        let marker = format!("marker-{}-{}", self.user, self.probe);
        let (status, _) = via
            .post(
                "/api/events",
                json!({"kind": "idm", "audience": {"users": [self.user]},
                       "body": {"marker": marker}}),
            )
            .await;
        assert_eq!(status, 200);
        loop {
            let frame = self.client.recv_within(patience(30)).await;
            if frame["marker"] == marker.as_str() {
                out.sort();
                return out;
            }
            if let Some(pair) = event_of(&frame) {
                out.push(pair);
            }
        }
    }
}

/// A test event's (id, workspace); `None` for probes and markers.
pub fn event_of(frame: &Value) -> Option<(String, String)> {
    let id = frame.get("id")?.as_str()?.to_string();
    let ws = frame["EventWorkspaceId"].as_str().unwrap_or("").to_string();
    Some((id, ws))
}

pub async fn two_nodes(redis: &Redis) -> (Node, Node) {
    two_nodes_with(redis, &[]).await
}

/// Two nodes on `redis` with `extra` flags, once both see each other.
pub async fn two_nodes_with(redis: &Redis, extra: &[&str]) -> (Node, Node) {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str(), "--jwt-secret", SECRET];
    args.extend_from_slice(extra);
    let a = Node::start(&args).await;
    let b = Node::start(&args).await;
    for node in [&a, &b] {
        eventually("membership", patience(20), || async move {
            let (_, body) = node.get("/api/nodes").await;
            (body["nodes"].as_array().map(Vec::len) == Some(2)).then_some(())
        })
        .await;
    }
    (a, b)
}
