//! Interest: which Redis topics a node subscribes to. A node listens to a
//! channel's or user's topic only while it has local members, and lets go
//! [`LINGER`] after the last one leaves (so join/leave churn costs nothing).
//! After a reconnect the subscription set is rebuilt from what local members
//! need.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// How long a topic stays subscribed after its last local member left.
pub const LINGER: Duration = Duration::from_secs(2);

/// Subscription wishes, handed to the interest task: (server, topic).
pub enum Interest {
    Add(usize, String),
    Remove(usize, String),
}

/// What the interest task works with.
pub struct Subscriptions {
    /// Each server's URL and subscriber connection.
    pub servers: Vec<(String, SubscriberClient)>,
    /// Sharded pub/sub (`SSUBSCRIBE`).
    pub sharded: bool,
    /// Topics always subscribed: (server, topic).
    pub permanent: Vec<(usize, String)>,
    /// Every topic local members need now: (server, topic).
    pub current: Box<dyn Fn() -> Vec<(usize, String)> + Send + Sync>,
    pub metrics: Arc<Metrics>,
}

/// Keep each server's subscriptions equal to what local members need.
pub async fn interest_loop(inner: Arc<Subscriptions>, mut rx: mpsc::UnboundedReceiver<Interest>) {
    let n = inner.servers.len();
    let mut desired: Vec<HashSet<String>> = vec![HashSet::new(); n];
    let mut confirmed: Vec<HashSet<String>> = vec![HashSet::new(); n];
    let mut lingering: HashMap<(usize, String), Instant> = HashMap::new();
    let mut ever_connected = vec![false; n];
    // Set when a server's connection dropped with subscriptions on it.
    let mut lost = vec![false; n];
    // Topics every node always listens to.
    for (s, topic) in &inner.permanent {
        desired[*s].insert(topic.clone());
    }
    let permanent: Vec<HashSet<String>> = desired.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            op = rx.recv() => {
                let Some(op) = op else { return };
                let mut next = Some(op);
                while let Some(op) = next.take() {
                    match op {
                        Interest::Add(s, topic) => {
                            lingering.remove(&(s, topic.clone()));
                            desired[s].insert(topic);
                        }
                        Interest::Remove(s, topic) => {
                            if !permanent[s].contains(&topic) {
                                lingering.insert((s, topic), Instant::now() + LINGER);
                            }
                        }
                    }
                    next = rx.try_recv().ok();
                }
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        lingering.retain(|(s, topic), until| {
            if *until <= now {
                desired[*s].remove(topic);
                false
            } else {
                true
            }
        });
        for s in 0..n {
            let subscriber = &inner.servers[s].1;
            if !subscriber.is_connected() {
                if ever_connected[s] && !confirmed[s].is_empty() {
                    lost[s] = true;
                }
                confirmed[s].clear();
                continue;
            }
            let remove: Vec<String> = confirmed[s].difference(&desired[s]).cloned().collect();
            if lost[s] {
                // Reconnected: besides what the interest events built up,
                // take the node's own view of local members, to be safe.
                for (owner, topic) in (inner.current)() {
                    if owner == s {
                        desired[s].insert(topic);
                    }
                }
            }
            let add: Vec<String> = desired[s].difference(&confirmed[s]).cloned().collect();
            if !add.is_empty() {
                if lost[s] {
                    lost[s] = false;
                    inner.metrics.relay_resubscribes.inc();
                    tracing::info!(server = %inner.servers[s].0, topics = add.len(), "reconnected; resubscribing");
                }
                for chunk in groups(&add, inner.sharded) {
                    let result = if inner.sharded {
                        subscriber.ssubscribe(chunk.clone()).await
                    } else {
                        subscriber.subscribe(chunk.clone()).await
                    };
                    match result {
                        Ok(()) => confirmed[s].extend(chunk.iter().cloned()),
                        Err(e) => {
                            tracing::debug!(error = %e, "subscribe failed; will retry");
                            break;
                        }
                    }
                }
                ever_connected[s] = true;
            }
            for chunk in groups(&remove, inner.sharded) {
                let result = if inner.sharded {
                    subscriber.sunsubscribe(chunk.clone()).await
                } else {
                    subscriber.unsubscribe(chunk.clone()).await
                };
                if result.is_ok() {
                    for topic in &chunk {
                        confirmed[s].remove(topic);
                    }
                }
            }
        }
        let total: usize = confirmed.iter().map(HashSet::len).sum();
        inner.metrics.relay_subscriptions.set(total as i64);
    }
}

/// Split topics into (un)subscribe batches: at most 1000 per command and,
/// for sharded pub/sub, one hash slot per command (Redis Cluster refuses
/// `SSUBSCRIBE` across slots).
fn groups(topics: &[String], sharded: bool) -> Vec<Vec<String>> {
    if !sharded {
        return topics.chunks(1000).map(<[String]>::to_vec).collect();
    }
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for topic in topics {
        by_slot
            .entry(fred::util::redis_keyslot(topic.as_bytes()))
            .or_default()
            .push(topic.clone());
    }
    by_slot
        .into_values()
        .flat_map(|v| v.chunks(1000).map(<[String]>::to_vec).collect::<Vec<_>>())
        .collect()
}
