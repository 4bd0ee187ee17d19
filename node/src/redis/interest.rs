//! Subscriptions of the Redis relay: what local members need, coalesced
//! and applied to each server.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;

use super::state::{Inner, LINGER};

/// Keep each server's subscriptions equal to what local members need.
///
/// Wishes are coalesced per topic ([`Wishes`]) and applied in batches, at most
/// `--relay-interest-rate` topic changes per second (adds first; removals can
/// wait, an extra subscription only costs a little traffic). After a
/// reconnect every needed topic is subscribed again at once, outside that
/// bound, and only then does the server count as synced.
pub(super) async fn interest_loop(inner: Arc<Inner>) {
    let n = inner.servers.len();
    let mut desired: Vec<HashSet<String>> = vec![HashSet::new(); n];
    let mut confirmed: Vec<HashSet<String>> = vec![HashSet::new(); n];
    let mut lingering: HashMap<(usize, String), Instant> = HashMap::new();
    // Set when a server's connection dropped (or never came up).
    let mut lost = vec![true; n];
    // Topics every node always listens to: its inbox (on every server, as
    // the readiness canary's return path), broadcast and control.
    for topics in desired.iter_mut() {
        topics.insert(inner.topics.node(&inner.node_id));
    }
    desired[0].insert(inner.topics.all());
    desired[0].insert(inner.topics.control());
    let permanent: Vec<HashSet<String>> = desired.clone();
    let rate = f64::from(inner.limits.interest_rate);
    // Token bucket of topic changes: one second's worth of burst.
    let mut tokens = rate;
    let mut refilled = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.wished.notified() => {}
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        tokens = (tokens + now.duration_since(refilled).as_secs_f64() * rate).min(rate);
        refilled = now;
        let (upto, wishes) = {
            let mut wishes = inner.wishes.lock();
            (wishes.requested, std::mem::take(&mut wishes.pending))
        };
        for ((s, topic), wanted) in wishes {
            if wanted {
                lingering.remove(&(s, topic.clone()));
                desired[s].insert(topic);
            } else if !permanent[s].contains(&topic) && desired[s].contains(&topic) {
                lingering.insert((s, topic), now + LINGER);
            }
        }
        lingering.retain(|(s, topic), until| {
            if *until <= now {
                desired[*s].remove(topic);
                false
            } else {
                true
            }
        });
        let mut pending = 0usize;
        for s in 0..n {
            let server = &inner.servers[s];
            let subscriber = &server.subscriber;
            if !subscriber.is_connected() {
                if !lost[s] {
                    tracing::info!(server = %server.url, "subscriber connection lost");
                }
                lost[s] = true;
                server.health.set_synced(false);
                confirmed[s].clear();
                continue;
            }
            if lost[s] {
                // (Re)connected: take the hub's own view of local members too.
                if let Some(node) = inner.node.get() {
                    let (channels, users) = node.interest_now();
                    let channels = channels
                        .into_iter()
                        .map(|c| (inner.server_for(&c), inner.topics.channel(&c)));
                    let users = users
                        .into_iter()
                        .map(|u| (inner.server_for(&u), inner.topics.user(&u)));
                    for (owner, topic) in channels.chain(users) {
                        if owner == s {
                            desired[s].insert(topic);
                        }
                    }
                }
                let add: Vec<String> = desired[s].difference(&confirmed[s]).cloned().collect();
                let mut ok = true;
                for chunk in groups(&add, inner.sharded) {
                    if subscribe(&inner, s, &chunk, true).await {
                        confirmed[s].extend(chunk.iter().cloned());
                        inner.metrics.relay_interest_ops.inc_by(chunk.len() as u64);
                    } else {
                        ok = false;
                        break;
                    }
                }
                if ok {
                    if !confirmed[s].is_empty() && confirmed[s].len() > permanent[s].len() {
                        inner.metrics.relay_resubscribes.inc();
                    }
                    tracing::info!(server = %server.url, topics = add.len(), "subscriptions in place");
                    lost[s] = false;
                    server.health.set_synced(true);
                    // Tell peers at once (a held-back publish may wait for it).
                    inner.heartbeat_now();
                }
                continue;
            }
            let mut add: Vec<String> = desired[s].difference(&confirmed[s]).cloned().collect();
            let mut remove: Vec<String> = confirmed[s].difference(&desired[s]).cloned().collect();
            let budget = tokens.floor() as usize;
            add.truncate(budget);
            remove.truncate(budget - add.len());
            pending += desired[s].difference(&confirmed[s]).count()
                + confirmed[s].difference(&desired[s]).count()
                - add.len()
                - remove.len();
            for chunk in groups(&add, inner.sharded) {
                if subscribe(&inner, s, &chunk, true).await {
                    tokens -= chunk.len() as f64;
                    inner.metrics.relay_interest_ops.inc_by(chunk.len() as u64);
                    confirmed[s].extend(chunk.iter().cloned());
                } else {
                    break;
                }
            }
            for chunk in groups(&remove, inner.sharded) {
                if subscribe(&inner, s, &chunk, false).await {
                    tokens -= chunk.len() as f64;
                    inner.metrics.relay_interest_ops.inc_by(chunk.len() as u64);
                    for topic in &chunk {
                        confirmed[s].remove(topic);
                    }
                }
            }
        }
        inner.metrics.relay_interest_pending.set(pending as i64);
        let total: usize = confirmed.iter().map(HashSet::len).sum();
        inner.metrics.relay_subscriptions.set(total as i64);
        // Every change taken above is in place on every reachable server
        // (a lost server resubscribes everything when it is back).
        if (0..n).all(|s| lost[s] || desired[s].is_subset(&confirmed[s])) {
            inner.applied.send_if_modified(|applied| {
                let moved = *applied < upto;
                *applied = (*applied).max(upto);
                moved
            });
        }
    }
}

/// (Un)subscribe one batch on server `s`; true when Redis confirmed it.
pub(super) async fn subscribe(inner: &Inner, s: usize, topics: &[String], add: bool) -> bool {
    let subscriber = &inner.servers[s].subscriber;
    let topics = topics.to_vec();
    let result = match (inner.sharded, add) {
        (true, true) => subscriber.ssubscribe(topics).await,
        (false, true) => subscriber.subscribe(topics).await,
        (true, false) => subscriber.sunsubscribe(topics).await,
        (false, false) => subscriber.unsubscribe(topics).await,
    };
    if let Err(e) = &result {
        tracing::debug!(error = %e, "subscription change failed; will retry");
    }
    result.is_ok()
}

/// Split topics into (un)subscribe batches: at most 1000 per command and,
/// for sharded pub/sub, one hash slot per command (Redis Cluster refuses
/// `SSUBSCRIBE` across slots).
pub(super) fn groups(topics: &[String], sharded: bool) -> Vec<Vec<String>> {
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
