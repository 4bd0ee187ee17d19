//! Interest routing at work: announcing this node's interest, keeping the
//! views of peers (state in [`super::views`]), skipping publishes no peer
//! needs and holding joins until every peer acknowledged them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pubmesh_cluster_proto::Body;

use super::state::{Inner, PEER_TIMEOUT};
use super::views::{Route, ASK_AGAIN, BEAT_VALID, DISCOVERY, SNAPSHOT_PART};
use crate::hashing::{HashMap, HashSet};

impl Inner {
    /// Where a channel or user envelope goes, for the topic whose key
    /// ([`super::queue::stream_key`]) is `key`. Off Redis when every peer's
    /// view is known and none listens to it; to the inbox of the one peer
    /// that listens when exactly one does (and `--relay-node-addressing`
    /// allows it), so that envelopes for many topics share one `PUBLISH`
    /// (one batch per pipeline and peer); else to the topic.
    pub(super) fn route(&self, key: u64) -> Route {
        let interests = &self.interests;
        if !interests.all_known.load(Ordering::Acquire) {
            return Route::Topic;
        }
        let now = interests.epoch.elapsed().as_millis() as u64;
        if now < interests.discovered_by.load(Ordering::Acquire) {
            return Route::Topic;
        }
        let beat = interests.confirmed_beat.load(Ordering::Acquire);
        if now.saturating_sub(beat) >= BEAT_VALID.as_millis() as u64 {
            return Route::Topic;
        }
        let peers = interests.peers.read();
        let mut listener = None;
        for (id, peer) in peers.iter() {
            match &peer.known {
                None => return Route::Topic,
                Some((_, topics)) if topics.contains(key) => {
                    if listener.is_some() {
                        return Route::Topic;
                    }
                    listener = Some(id);
                }
                Some(_) => {}
            }
        }
        match listener {
            None => Route::Skip,
            Some(id) if self.addresses_peers => Route::Peer(self.topics.node(id)),
            Some(_) => Route::Topic,
        }
    }

    /// This node's interest changed (Redis confirmed `added`, or the
    /// unsubscribe of `removed`): announce what is new to peers.
    pub(super) fn announce(&self, added: Vec<String>, removed: Vec<String>) {
        if !self.interests.enabled {
            return;
        }
        let mut own = self.interests.own.lock();
        let to = own.version + 1;
        let (added, removed) = news(&own.topics, added, removed);
        if added.is_empty() && removed.is_empty() {
            return;
        }
        for t in &added {
            own.topics.insert(t.clone(), to);
        }
        for t in &removed {
            own.topics.remove(t);
        }
        let from = own.version;
        own.version = to;
        // Queued under the lock: changes and snapshots leave in version order.
        self.control(Body::Interest {
            from,
            to,
            added,
            removed,
        });
    }

    /// Send the current version (with each heartbeat), and look after the
    /// views: the fast-path flag, and snapshots asked again.
    pub(super) fn interest_tick(&self) {
        let interests = &self.interests;
        if !interests.enabled {
            return;
        }
        let live: HashSet<String> = self.peers.lock().keys().cloned().collect();
        {
            let own = interests.own.lock();
            self.control(Body::Interest {
                from: own.version,
                to: own.version,
                added: Vec::new(),
                removed: Vec::new(),
            });
        }
        let mut ask = Vec::new();
        {
            let mut peers = interests.peers.write();
            // A node heard on `{p}.ctl` but never as a live peer, silent for
            // the peer timeout: gone before it was known (never waited for).
            peers.retain(|id, p| {
                live.contains(id) || p.heard.is_some_and(|t| t.elapsed() < PEER_TIMEOUT)
            });
            for (id, p) in peers.iter_mut() {
                if p.speaks && p.known.is_none() && p.asked.is_none_or(|t| t.elapsed() > ASK_AGAIN)
                {
                    p.asked = Some(Instant::now());
                    ask.push(id.clone());
                }
            }
            interests.refresh(&peers);
        }
        for node_id in ask {
            self.control(Body::InterestRequest { node_id });
        }
    }

    /// The subscriber of `{p}.ctl` lost messages or its connection: every
    /// view may be stale and a peer may have come unheard. `listening`:
    /// whether it hears again from now on.
    pub(super) fn interest_deaf(&self, listening: bool) {
        let interests = &self.interests;
        if !interests.enabled {
            return;
        }
        let since = listening.then(Instant::now);
        *interests.listening.lock() = since;
        let by = since.map_or(u64::MAX, |t| {
            (t + DISCOVERY).duration_since(interests.epoch).as_millis() as u64
        });
        interests.discovered_by.store(by, Ordering::Release);
        self.reset_views();
    }

    /// Make every view unknown (relay everything until snapshots arrive).
    fn reset_views(&self) {
        let interests = &self.interests;
        let mut peers = interests.peers.write();
        for p in peers.values_mut() {
            p.known = None;
            p.partial = None;
            p.asked = None;
        }
        interests.refresh(&peers);
    }

    /// This node started (again) to hear `{p}.ctl`.
    pub(super) fn interest_listening(&self) {
        let interests = &self.interests;
        if interests.enabled && interests.listening.lock().is_none() {
            self.interest_deaf(true);
        }
    }

    /// A control envelope from `origin`: a node never heard before starts
    /// unknown.
    pub(super) fn note_peer(&self, origin: &str) {
        let interests = &self.interests;
        if !interests.enabled || interests.peers.read().contains_key(origin) {
            return;
        }
        let mut peers = interests.peers.write();
        peers.entry(origin.to_string()).or_default().heard = Some(Instant::now());
        interests.refresh(&peers);
    }

    /// A heartbeat of `origin` arrived.
    pub(super) fn peer_beat(&self, origin: &str) {
        let interests = &self.interests;
        if !interests.enabled {
            return;
        }
        let mut peers = interests.peers.write();
        let p = peers.entry(origin.to_string()).or_default();
        let now = Some(Instant::now());
        p.beat = now;
        p.heard = now;
        interests.refresh(&peers);
    }

    /// Redis confirmed this node's heartbeat sent at `sent`. If the previous
    /// confirmed one is older than [`BEAT_VALID`], this node stopped
    /// skipping meanwhile and peers may have stopped waiting for it: its
    /// views are reset before it skips again.
    pub(super) fn beat_confirmed(&self, sent: Instant) {
        let interests = &self.interests;
        if !interests.enabled {
            return;
        }
        let at = sent.saturating_duration_since(interests.epoch).as_millis() as u64;
        let before = interests.confirmed_beat.fetch_max(at, Ordering::AcqRel);
        if at.saturating_sub(before) >= BEAT_VALID.as_millis() as u64 {
            // Snapshots asked from now on arrive after anything this node's
            // subscriber still holds (peers' changes and heartbeats).
            self.reset_views();
        }
    }

    /// A peer declared gone or leaving: its view goes.
    pub(super) fn forget_peer(&self, id: &str) {
        let interests = &self.interests;
        if !interests.enabled {
            return;
        }
        let mut peers = interests.peers.write();
        if peers.remove(id).is_some() {
            interests.refresh(&peers);
        }
    }

    /// Handle an interest envelope from a peer.
    pub(super) fn interest_received(&self, origin: &str, body: Body) {
        let interests = &self.interests;
        if !interests.enabled {
            return;
        }
        let mut ask = false;
        let mut acked = None;
        {
            let mut peers = interests.peers.write();
            let p = peers.entry(origin.to_string()).or_default();
            p.speaks = true;
            p.heard = Some(Instant::now());
            match body {
                Body::Interest {
                    from,
                    to,
                    added,
                    removed,
                } => {
                    match &mut p.known {
                        Some((version, topics)) if from == *version => {
                            for t in &removed {
                                topics.remove(t);
                            }
                            topics.extend(added);
                            *version = to;
                        }
                        // A copy of a change already applied.
                        Some((version, _)) if to <= *version => {}
                        // A gap: a change never arrived.
                        Some(_) => {
                            tracing::info!(peer = %origin, "interest change missed; asking for a snapshot");
                            p.known = None;
                            ask = true;
                        }
                        None => ask = p.asked.is_none_or(|t| t.elapsed() > ASK_AGAIN),
                    }
                    // Applied, or the view is unknown (everything relayed):
                    // either way every publish from now on accounts for it.
                    acked = Some(to);
                }
                Body::InterestSnapshot {
                    version,
                    part,
                    last,
                    topics,
                } => {
                    match &mut p.partial {
                        Some((v, next, set)) if *v == version && *next == part => {
                            set.extend(topics);
                            *next += 1;
                        }
                        _ if part == 0 => {
                            p.partial = Some((version, 1, topics.into_iter().collect()));
                        }
                        // A part of a snapshot whose start was missed.
                        _ => p.partial = None,
                    }
                    if last {
                        if let Some((v, next, set)) = p.partial.take() {
                            if v == version && next == part + 1 {
                                let newer = p.known.as_ref().is_none_or(|(k, _)| version > *k);
                                if newer {
                                    p.known = Some((version, set));
                                }
                                acked = Some(version);
                            }
                        }
                    }
                }
                Body::InterestAck { acks } => {
                    for (node, version) in acks {
                        if node == self.node_id && version > p.acked {
                            p.acked = version;
                        }
                    }
                }
                _ => {}
            }
            if ask {
                p.asked = Some(Instant::now());
            }
            interests.refresh(&peers);
        }
        if ask {
            self.control(Body::InterestRequest {
                node_id: origin.to_string(),
            });
        }
        if let Some(version) = acked {
            interests.ack(origin, version);
        }
    }

    /// `requester` asked for this node's whole interest: send it in parts,
    /// in order with the changes. Until the requester acknowledges more, it
    /// knows this version at most (it may have restarted or lost its view):
    /// joins wait for its acknowledgement of anything newer.
    pub(super) fn send_snapshot(&self, requester: &str) {
        if !self.interests.enabled {
            return;
        }
        let own = self.interests.own.lock();
        {
            let mut peers = self.interests.peers.write();
            if let Some(p) = peers.get_mut(requester) {
                p.acked = p.acked.min(own.version);
                self.interests.refresh(&peers);
            }
        }
        let topics: Vec<String> = own.topics.keys().cloned().collect();
        let parts: Vec<&[String]> = if topics.is_empty() {
            vec![&[]]
        } else {
            topics.chunks(SNAPSHOT_PART).collect()
        };
        let n = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            self.control(Body::InterestSnapshot {
                version: own.version,
                part: i as u32,
                last: i + 1 == n,
                topics: part.to_vec(),
            });
        }
    }

    /// Wait until every peer applied this node's interest in `topics` (after
    /// discovery), or until `deadline`. True when they have.
    pub(super) async fn peers_applied(
        &self,
        topics: &[String],
        deadline: tokio::time::Instant,
    ) -> bool {
        let interests = &self.interests;
        if !interests.enabled {
            return true;
        }
        loop {
            if !self.synced() {
                // Degraded: the join promises nothing cluster-wide (as
                // without interest routing), and peers relay everything
                // to this node while they cannot hear it.
                return true;
            }
            if let Some(at) = interests.discovered_at() {
                if at > Instant::now() {
                    let at = tokio::time::Instant::from_std(at).min(deadline);
                    tokio::time::sleep_until(at).await;
                }
            }
            if interests.discovered() {
                let version = {
                    let own = interests.own.lock();
                    topics
                        .iter()
                        .map(|t| own.topics.get(t).copied().unwrap_or(own.version))
                        .max()
                        .unwrap_or(0)
                };
                if interests.acked_everywhere(version) {
                    return true;
                }
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                // Woken when an acknowledgement (or a peer's going) takes
                // the version acknowledged everywhere to ours; the 100 ms
                // bound catches what no envelope announces.
                let wait = deadline.min(tokio::time::Instant::now() + Duration::from_millis(100));
                if interests.acked.level() >= version {
                    // The level is ahead of the peers (a change it does not
                    // reflect yet): waiting on it would return at once, so
                    // look again after the bound instead of spinning.
                    tokio::time::sleep_until(wait).await;
                } else {
                    let _ = tokio::time::timeout_at(wait, interests.acked.reached(version)).await;
                }
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // Not listening to `{p}.ctl`: look again shortly.
            let wait = deadline.min(tokio::time::Instant::now() + Duration::from_millis(100));
            tokio::time::sleep_until(wait).await;
        }
    }
}

/// What a pass's `added` and `removed` topics change in the announced
/// set `known`: topics not yet announced, and announced ones to drop, each
/// once. A topic in both (never from one pass of the subscription task)
/// stays: being listed as listened to only makes peers relay it. Sets, not
/// scans of `added` per removal: a pass at 10,000 sessions/s holds dozens
/// of each.
fn news(
    known: &HashMap<String, u64>,
    added: Vec<String>,
    removed: Vec<String>,
) -> (Vec<String>, Vec<String>) {
    let added: HashSet<String> = added.into_iter().collect();
    let removed: HashSet<String> = removed
        .into_iter()
        .filter(|t| known.contains_key(t) && !added.contains(t))
        .collect();
    let added = added.into_iter().filter(|t| !known.contains_key(t));
    (added.collect(), removed.into_iter().collect())
}

/// Least time between two acknowledgement envelopes of this node.
pub(super) const ACK_EVERY: Duration = Duration::from_millis(2);

/// Send acknowledgements as they pile up: one envelope for all peers, each
/// naming the highest version of that peer's interest handled (cumulative:
/// the peer releases every join up to it). An idle node acknowledges at
/// once; a busy one at most every [`ACK_EVERY`], so the changes that arrive
/// meanwhile share one envelope instead of one `PUBLISH` each.
pub(super) async fn ack_loop(inner: Arc<Inner>) {
    let interests = &inner.interests;
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        interests.ack_wake.notified().await;
        if let Some(next) = last.map(|t| t + ACK_EVERY) {
            if next > tokio::time::Instant::now() {
                tokio::time::sleep_until(next).await;
            }
        }
        let acks: Vec<(String, u64)> = interests.to_ack.lock().drain().collect();
        if !acks.is_empty() {
            inner.control(Body::InterestAck { acks });
            last = Some(tokio::time::Instant::now());
        }
    }
}

/// The readiness problem while discovery runs, if any.
pub(super) fn discovery_problem(inner: &Inner) -> Option<String> {
    (!inner.interests.discovered()).then(|| {
        format!(
            "listening for peers ({} ms after {{p}}.ctl is subscribed)",
            DISCOVERY.as_millis()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(v: &[&str]) -> Vec<String> {
        v.iter().map(|t| t.to_string()).collect()
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn an_announcement_names_each_new_and_each_dropped_topic_once() {
        let known: HashMap<String, u64> = [("p.c.old", 1), ("p.c.gone", 2)]
            .into_iter()
            .map(|(t, v)| (t.to_string(), v))
            .collect();
        let (added, removed) = news(
            &known,
            topics(&["p.c.new", "p.c.new", "p.c.old"]),
            topics(&["p.c.gone", "p.c.gone", "p.c.never"]),
        );
        // Already announced: not again; never announced: nothing to drop.
        assert_eq!(sorted(added), topics(&["p.c.new"]));
        assert_eq!(sorted(removed), topics(&["p.c.gone"]));
    }

    #[test]
    fn a_topic_both_added_and_removed_in_one_pass_stays_listed() {
        let known: HashMap<String, u64> = [("p.c.both".to_string(), 1)].into_iter().collect();
        // Announced already and in both lists: neither added nor dropped.
        let (added, removed) = news(&known, topics(&["p.c.both"]), topics(&["p.c.both"]));
        assert!(added.is_empty() && removed.is_empty());
        // Not announced yet and in both: added, not dropped.
        let (added, removed) = news(
            &HashMap::default(),
            topics(&["p.c.both"]),
            topics(&["p.c.both"]),
        );
        assert_eq!(added, topics(&["p.c.both"]));
        assert!(removed.is_empty());
    }

    #[test]
    fn a_large_pass_names_every_new_and_every_dropped_topic() {
        // 5,000 new topics and 5,000 dropped ones: each is named once.
        let known: HashMap<String, u64> = (0..5000).map(|i| (format!("p.c.k{i}"), 1)).collect();
        let added: Vec<String> = (0..5000).map(|i| format!("p.c.n{i}")).collect();
        let removed: Vec<String> = (0..5000).map(|i| format!("p.c.k{i}")).collect();
        let (a, r) = news(&known, added, removed);
        assert_eq!((a.len(), r.len()), (5000, 5000));
    }
}
