//! Interest routing: what this node tells its peers it listens to, and what
//! it knows its peers listen to, so a channel's or user's publish goes to
//! Redis only when a peer needs it.
//!
//! A node's interest is the set of channel and user topics its subscribers
//! listen to (confirmed by Redis, lingering ones included). It announces
//! every change as a versioned [`Body::Interest`] on `{p}.ctl`, in order with
//! its other control envelopes (one lane), sends the current version as a
//! beacon with every heartbeat, and answers a [`Body::InterestRequest`] with
//! its whole set ([`Body::InterestSnapshot`], in parts).
//!
//! Each node keeps a view per peer: unknown (relay everything) or known (a
//! version and a set). A view becomes known only from a snapshot; changes
//! apply in version order; a gap, a beacon ahead of the view, a lag of the
//! control connection or this node's own reconnect make it unknown again and
//! ask for a snapshot. A publish skips Redis for a topic only when every
//! peer's view is known, none holds the topic, and this node has listened to
//! `{p}.ctl` for longer than [`DISCOVERY`] (so it has heard every live peer).
//!
//! Every peer acknowledges the changes it handled ([`Body::InterestAck`],
//! cumulative by version, at most one envelope per 2 ms when busy):
//! a join waits until every peer that speaks interest acknowledged the
//! version that added its topics, so a publish decided anywhere after the
//! join's answer reaches it (see `Relay::interest_applied`).
//!
//! This module holds the state; [`super::routing`] how the relay uses it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::queue::stream_key;
use super::watermark::Watermark;
use crate::hashing::HashMap;

/// How long a node listens to `{p}.ctl` before it trusts that it knows
/// every live peer: two heartbeat intervals.
pub const DISCOVERY: Duration = Duration::from_secs(2);
/// Topics per snapshot part.
pub(super) const SNAPSHOT_PART: usize = 1000;
/// Least time between two snapshot requests to one peer (a heartbeat
/// interval).
pub(super) const ASK_AGAIN: Duration = Duration::from_secs(1);

/// One peer's topics, held by their keys ([`stream_key`], a hash fixed for
/// the life of the process), each with how many of the peer's topics share
/// it. A publish's look-up (once per publish, into thousands of entries)
/// then touches one table entry and never a topic's string. Two topics of
/// one key (a chance of about one in 2^64 per pair) only ever make a
/// publish go to the peer when it need not, an envelope the peer drops:
/// a key stays while any topic with it does.
#[derive(Default)]
pub(super) struct TopicSet(HashMap<u64, u32>);

impl TopicSet {
    pub(super) fn insert(&mut self, topic: &str) {
        *self.0.entry(stream_key(topic)).or_insert(0) += 1;
    }

    pub(super) fn remove(&mut self, topic: &str) {
        use std::collections::hash_map::Entry;
        if let Entry::Occupied(mut e) = self.0.entry(stream_key(topic)) {
            match e.get_mut() {
                n if *n > 1 => *n -= 1,
                _ => {
                    e.remove();
                }
            }
        }
    }

    /// Whether a topic with this key ([`stream_key`]) is held.
    pub(super) fn contains(&self, key: u64) -> bool {
        self.0.contains_key(&key)
    }
}

impl Extend<String> for TopicSet {
    fn extend<I: IntoIterator<Item = String>>(&mut self, topics: I) {
        for topic in topics {
            self.insert(&topic);
        }
    }
}

impl FromIterator<String> for TopicSet {
    fn from_iter<I: IntoIterator<Item = String>>(topics: I) -> Self {
        let mut set = TopicSet::default();
        set.extend(topics);
        set
    }
}

/// What this node knows of one peer's interest.
#[derive(Default)]
pub(super) struct PeerInterest {
    /// `Some((version, topics))` once known from a snapshot; `None`: relay
    /// everything to it.
    pub(super) known: Option<(u64, TopicSet)>,
    /// It has sent an interest envelope, so it may skip topics: joins wait
    /// for its acknowledgements.
    pub(super) speaks: bool,
    /// The highest version of this node's interest it acknowledged.
    pub(super) acked: u64,
    /// When this node last asked it for a snapshot.
    pub(super) asked: Option<Instant>,
    /// Snapshot parts received so far: (version, next part, topics).
    pub(super) partial: Option<(u64, u32, TopicSet)>,
    /// When an interest envelope of it last arrived.
    pub(super) heard: Option<Instant>,
    /// When its last heartbeat arrived.
    pub(super) beat: Option<Instant>,
}

impl PeerInterest {
    /// No heartbeat of it arrived within [`SILENT`]: its joins are not
    /// waited for.
    pub(super) fn silent(&self) -> bool {
        self.beat.is_none_or(|t| t.elapsed() > SILENT)
    }
}

/// This node's own announced interest.
#[derive(Default)]
pub(super) struct Own {
    pub(super) version: u64,
    /// Topic → the version that added it.
    pub(super) topics: HashMap<String, u64>,
}

/// Where a channel's or user's envelope goes (`Inner::route` in [`super::routing`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// To its topic, for whoever listens.
    Topic,
    /// Nowhere: no peer listens to it.
    Skip,
    /// To this peer's inbox (`{p}.n.{peer}`, the topic given here): it is the
    /// only peer that listens.
    Peer(String),
}

/// Interest routing state of one relay.
pub(super) struct Interests {
    /// Off (`--relay-interest-routing false`): this node neither speaks
    /// interest nor skips, like a build without it.
    pub(super) enabled: bool,
    /// Fast path of `Inner::skips`: true only while every peer's view is
    /// known.
    pub(super) all_known: AtomicBool,
    pub(super) peers: RwLock<HashMap<String, PeerInterest>>,
    pub(super) own: Mutex<Own>,
    /// Since when this node hears `{p}.ctl` without a break.
    pub(super) listening: Mutex<Option<Instant>>,
    /// When (ms after `epoch`) discovery ends; `u64::MAX` while deaf.
    pub(super) discovered_by: AtomicU64,
    /// The version of this node's interest that every live peer speaking
    /// interest acknowledged, as of the last change to the peers
    /// ([`Interests::refresh`]): joins wait for their version on it,
    /// each woken only when it is reached. A hint: the waiting join checks
    /// [`Interests::acked_everywhere`] itself, and looks again every 100 ms
    /// for what no envelope announces (a peer falling silent).
    pub(super) acked: Watermark,
    /// Acknowledgements to send: peer → version.
    pub(super) to_ack: Mutex<HashMap<String, u64>>,
    pub(super) ack_wake: tokio::sync::Notify,
    /// Reference point of `confirmed_beat`.
    pub(super) epoch: Instant,
    /// When (ms after `epoch`) this node sent its latest heartbeat that
    /// Redis confirmed: it skips only within [`BEAT_VALID`] of it.
    pub(super) confirmed_beat: AtomicU64,
}

/// How long after sending a heartbeat Redis confirmed a node may skip: a
/// node whose heartbeats stop (frozen, or its publisher cut off) stops
/// skipping on its own, and resets its views before it skips again.
pub(super) const BEAT_VALID: Duration = Duration::from_secs(2);
/// A peer whose heartbeat has not arrived for this long cannot be skipping
/// (its own heartbeats stopped being confirmed at least [`BEAT_VALID`]
/// before): joins stop waiting for its acknowledgement.
pub(super) const SILENT: Duration = Duration::from_secs(3);

impl Interests {
    pub(super) fn new(enabled: bool) -> Self {
        Interests {
            enabled,
            all_known: AtomicBool::new(false),
            peers: RwLock::new(HashMap::default()),
            // Versions start above anything an earlier run of this node id
            // announced, so peers see a restart as a gap.
            own: Mutex::new(Own {
                version: pubmesh_cluster_proto::now_micros(),
                topics: HashMap::default(),
            }),
            listening: Mutex::new(None),
            discovered_by: AtomicU64::new(u64::MAX),
            acked: Watermark::new(0),
            to_ack: Mutex::new(HashMap::default()),
            ack_wake: tokio::sync::Notify::new(),
            epoch: Instant::now(),
            confirmed_beat: AtomicU64::new(0),
        }
    }

    /// Whether this node has listened to `{p}.ctl` long enough to know
    /// every live peer (always true when interest routing is off).
    pub(super) fn discovered(&self) -> bool {
        !self.enabled
            || self
                .listening
                .lock()
                .is_some_and(|t| t.elapsed() > DISCOVERY)
    }

    /// When discovery ends, if this node is listening.
    pub(super) fn discovered_at(&self) -> Option<Instant> {
        self.listening.lock().map(|t| t + DISCOVERY)
    }

    /// After any change to `peers` (the caller holds the write lock),
    /// recompute what is derived from them: the fast-path flag, and the
    /// version acknowledged everywhere that waiting joins watch
    /// ([`Interests::acked`]).
    pub(super) fn refresh(&self, peers: &HashMap<String, PeerInterest>) {
        let all = peers.values().all(|p| p.known.is_some());
        self.all_known.store(all, Ordering::Release);
        let everywhere = peers
            .values()
            .filter(|p| p.speaks && !p.silent())
            .map(|p| p.acked)
            .min()
            .unwrap_or(u64::MAX);
        self.acked.set(everywhere);
    }

    /// Whether every peer that speaks interest acknowledged `version` of
    /// this node's interest (or is silent, so it cannot be skipping).
    pub(super) fn acked_everywhere(&self, version: u64) -> bool {
        self.peers
            .read()
            .values()
            .all(|p| !p.speaks || p.acked >= version || p.silent())
    }

    pub(super) fn ack(&self, peer: &str, version: u64) {
        let mut to_ack = self.to_ack.lock();
        let v = to_ack.entry(peer.to_string()).or_default();
        *v = (*v).max(version);
        drop(to_ack);
        self.ack_wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Interests, PeerInterest, TopicSet, SILENT};
    use crate::hashing::HashMap;
    use crate::redis::queue::stream_key;

    #[test]
    fn a_topic_set_holds_topics_by_key_until_the_last_is_removed() {
        let mut set: TopicSet = ["p.c.a".to_string(), "p.c.b".to_string()]
            .into_iter()
            .collect();
        assert!(set.contains(stream_key("p.c.a")));
        assert!(set.contains(stream_key("p.c.b")));
        assert!(!set.contains(stream_key("p.c.c")));
        set.remove("p.c.a");
        assert!(!set.contains(stream_key("p.c.a")));
        assert!(set.contains(stream_key("p.c.b")));
        // Removing what is not held changes nothing.
        set.remove("p.c.a");
        set.remove("p.c.z");
        assert!(set.contains(stream_key("p.c.b")));
        // Two topics of one key (forced here through the count): the key
        // stays until both are gone.
        set.extend(["p.c.b".to_string()]);
        set.remove("p.c.b");
        assert!(set.contains(stream_key("p.c.b")));
        set.remove("p.c.b");
        assert!(!set.contains(stream_key("p.c.b")));
    }

    fn speaking(acked: u64) -> PeerInterest {
        PeerInterest {
            speaks: true,
            acked,
            beat: Some(Instant::now()),
            ..PeerInterest::default()
        }
    }

    /// The version joins wait on follows every change to the peers, down as
    /// well as up: a silent peer that speaks again, or one whose
    /// acknowledgements were reset by a snapshot request, holds it back
    /// again, so no join finds its wait satisfied while a peer that may be
    /// skipping has not acknowledged it.
    #[test]
    fn the_version_acknowledged_everywhere_follows_every_change_to_the_peers() {
        let interests = Interests::new(true);
        let mut peers: HashMap<String, PeerInterest> = HashMap::default();
        interests.refresh(&peers);
        assert_eq!(
            interests.acked.level(),
            u64::MAX,
            "no peer: nothing to wait for"
        );

        peers.insert("a".into(), speaking(5));
        peers.insert("b".into(), speaking(9));
        // A peer that never spoke interest cannot skip: it is not waited for.
        peers.insert("old".into(), PeerInterest::default());
        interests.refresh(&peers);
        assert_eq!(interests.acked.level(), 5);

        // `a` falls silent: only `b` counts.
        let long_ago = Instant::now()
            .checked_sub(SILENT + Duration::from_secs(1))
            .expect("the monotonic clock started more than 4 s ago");
        peers.get_mut("a").unwrap().beat = Some(long_ago);
        interests.refresh(&peers);
        assert_eq!(interests.acked.level(), 9);

        // Its heartbeat is back, still at 5: the level falls with it.
        peers.get_mut("a").unwrap().beat = Some(Instant::now());
        interests.refresh(&peers);
        assert_eq!(interests.acked.level(), 5);

        // `b` asked for a snapshot: what it acknowledged is reset.
        peers.get_mut("b").unwrap().acked = 2;
        interests.refresh(&peers);
        assert_eq!(interests.acked.level(), 2);

        // The checks a woken join makes agree with the kept level.
        *interests.peers.write() = peers;
        assert!(interests.acked_everywhere(2));
        assert!(!interests.acked_everywhere(3));
    }
}
