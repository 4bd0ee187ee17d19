//! Membership and health of the Redis relay: probes, heartbeats and
//! the peers this node has heard from.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use pubmesh_cluster_proto::{self as proto, Body, Envelope};

use super::state::{Inner, HEARTBEAT, PEER_TIMEOUT};

/// Longest a heartbeat may wait in the client library to be written: one
/// written after a reconnect could arrive before this node's subscriptions
/// are back, so a heartbeat that waited longer is dropped (the next one
/// follows within [`HEARTBEAT`]).
const HEARTBEAT_WRITE_WITHIN: Duration = Duration::from_millis(500);

/// Probe every server every `--relay-probe-ms`: a `PING` with that deadline
/// and a canary heartbeat to this node's own inbox (see [`super::health`]).
pub(super) async fn probe_loop(inner: Arc<Inner>) {
    let interval = inner.limits.probe;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let inbox = inner.topics.node(&inner.node_id);
    loop {
        tick.tick().await;
        for i in 0..inner.servers.len() {
            let inner = inner.clone();
            let inbox = inbox.clone();
            tokio::spawn(async move {
                let server = &inner.servers[i];
                let client = &server.publisher;
                if !client.is_connected() {
                    return;
                }
                let ping = tokio::time::timeout(interval, client.ping::<String>(None)).await;
                server.health.ping_result(match ping {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("PING timed out".into()),
                });
                let seq = inner.next_seq();
                let payload = proto::encode(&Envelope::new(
                    inner.node_id.clone(),
                    seq,
                    Body::Heartbeat(inner.info()),
                ));
                server.health.canary_sent(seq);
                let sent = if inner.sharded {
                    tokio::time::timeout(interval, client.spublish::<(), _, _>(inbox, payload))
                        .await
                } else {
                    tokio::time::timeout(interval, client.publish::<(), _, _>(inbox, payload)).await
                };
                if !matches!(sent, Ok(Ok(()))) {
                    tracing::debug!(server = %server.url, "canary publish failed");
                }
            });
        }
        let up = inner.update_health();
        inner.metrics.relay_up.set(up as i64);
    }
}

/// Announce this node every [`HEARTBEAT`] (only while its subscriptions are
/// in place) and forget peers silent for [`PEER_TIMEOUT`] while this node
/// could hear them; each one forgotten is reported to the node once.
pub(super) async fn heartbeat_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut was_synced = false;
    loop {
        tick.tick().await;
        let synced = inner.synced();
        if synced && !inner.leaving.load(Ordering::Acquire) {
            inner.heartbeat_now();
            inner.interest_tick();
        }
        let mut gone = Vec::new();
        {
            let mut peers = inner.peers.lock();
            if synced && !was_synced {
                // Deaf until now: give every peer a fresh chance to be heard.
                let now = Instant::now();
                for peer in peers.values_mut() {
                    peer.seen = peer.seen.max(now);
                }
            }
            if synced {
                peers.retain(|id, p| {
                    let alive = p.seen.elapsed() < PEER_TIMEOUT;
                    if !alive {
                        gone.push(id.clone());
                    }
                    alive
                });
            }
            inner.metrics.relay_peers.set(peers.len() as i64);
        }
        was_synced = synced;
        for id in &gone {
            inner.forget_peer(id);
        }
        if let Some(node) = inner.node.get() {
            for id in gone {
                tracing::warn!(peer = %id, "peer silent for {PEER_TIMEOUT:?}; declared gone");
                let node = node.clone();
                tokio::spawn(async move { node.peer_gone(&id).await });
            }
        }
    }
}

impl Inner {
    /// Publish a heartbeat now, straight on the publisher connection (not
    /// through a lane: a lane may be waiting for peers' heartbeats).
    ///
    /// A heartbeat tells peers this node's subscriptions are in place, so it
    /// must never reach Redis later than that was known: it is built only
    /// while every subscriber is connected and synced, and the client library
    /// may not keep it to write after a reconnect (one attempt, failing at
    /// once when not connected, dropped unwritten after
    /// [`HEARTBEAT_WRITE_WITHIN`]; the library skips a command whose own
    /// timeout fired, so the deadline is the library's, not a wrapper's).
    pub(super) fn heartbeat_now(self: &Arc<Self>) {
        let inner = self.clone();
        tokio::spawn(async move {
            let hearing =
                inner.synced() && inner.servers.iter().all(|s| s.subscriber.is_connected());
            if !hearing {
                return;
            }
            let sent_at = Instant::now();
            let payload = inner.envelope(Body::Heartbeat(inner.info()));
            if inner.leaving.load(Ordering::Acquire) {
                return;
            }
            let client = inner.servers[0].publisher.with_options(&Options {
                fail_fast: true,
                max_attempts: Some(1),
                timeout: Some(HEARTBEAT_WRITE_WITHIN),
                ..Default::default()
            });
            let topic = inner.topics.control();
            let sent = if inner.sharded {
                client.spublish::<(), _, _>(topic, payload).await
            } else {
                client.publish::<(), _, _>(topic, payload).await
            };
            if sent.is_ok() {
                inner.beat_confirmed(sent_at);
                inner
                    .metrics
                    .relay_published
                    .with_label_values(&["heartbeat"])
                    .inc();
            }
        });
    }

    /// Which servers are unusable and why; updates the per-server gauges.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (i, server) in self.servers.iter().enumerate() {
            let connected = server.publisher.is_connected() && server.subscriber.is_connected();
            let problem = server.health.problem(connected, self.limits.probe);
            self.metrics
                .relay_server_up
                .with_label_values(&[&server.url])
                .set(problem.is_none() as i64);
            if let Some(p) = problem {
                problems.push(format!("shard {i} ({}): {p}", server.url));
            }
        }
        problems
    }

    pub(super) fn update_health(&self) -> bool {
        self.problems().is_empty()
    }
}
