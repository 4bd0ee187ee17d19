//! Duplicate filters of the Redis relay's receiving side.
//!
//! - [`SeenSeqs`]: an envelope that Redis did not confirm is sent again, so a
//!   receiver may get a copy of one it already delivered. Sequence numbers of
//!   one origin rise on every lane (they are assigned in queue order), so a
//!   `Deliver` whose sequence is not above the last one seen from that origin
//!   in that [`Stream`] is a copy. A channel's (or user's) envelopes are one
//!   stream whichever Redis channel carried them (its topic, or a peer's
//!   inbox when that peer alone listens): both leave through the topic's
//!   lane, in order.
//! - [`Groups`]: a publish to several channels becomes one envelope per
//!   channel topic, all with the same (odd) sequence number. A node that holds
//!   members of several of those channels delivers each envelope only to the
//!   members it has not reached through an earlier one.
//!
//! Both keep entries only as long as a copy or a sibling can still arrive:
//! the retry window (`--relay-retry-ms`) plus [`MARGIN`]; [`Groups`] also
//! keeps at most as many entries as envelopes can be in flight (the outgoing
//! byte budget divided by the smallest envelope's cost).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Extra time on top of the retry window for transit and scheduling.
pub const MARGIN: Duration = Duration::from_secs(5);

/// The envelopes whose sequence numbers rise together.
#[derive(Clone, Copy, Debug, Hash)]
pub enum Stream<'a> {
    /// Those for one channel.
    Channel(&'a str),
    /// Those for one user.
    User(&'a str),
    /// The others, per Redis channel that carried them.
    Topic(&'a str),
}

/// The key of an (origin, stream) pair: foldhash with a seed drawn once per
/// process (std's `DefaultHasher` has fixed keys, so colliding names could
/// be prepared in advance; it also cost about 660 instructions more a
/// delivery, BENCHMARKS.md).
fn key(origin: &str, stream: Stream<'_>) -> u64 {
    crate::hashing::process_hash((origin, stream))
}

/// Highest `Deliver` sequence seen per (origin, stream).
pub struct SeenSeqs {
    last: crate::hashing::HashMap<u64, (u64, Instant)>,
    keep: Duration,
    pruned: Instant,
}

impl SeenSeqs {
    pub fn new(retry: Duration) -> Self {
        SeenSeqs {
            last: crate::hashing::HashMap::default(),
            keep: retry + MARGIN,
            pruned: Instant::now(),
        }
    }

    /// True unless this (origin, stream, seq) is a copy of one already seen.
    pub fn fresh(&mut self, origin: &str, stream: Stream<'_>, seq: u64) -> bool {
        let now = Instant::now();
        if now.duration_since(self.pruned) > self.keep {
            let keep = self.keep;
            self.last
                .retain(|_, (_, at)| now.duration_since(*at) <= keep);
            self.pruned = now;
        }
        match self.last.entry(key(origin, stream)) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let (last, at) = e.get_mut();
                if seq <= *last {
                    return false;
                }
                *last = seq;
                *at = now;
                true
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((seq, now));
                true
            }
        }
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// Channels already delivered per multi-channel publish (origin, seq).
pub struct Groups {
    names: HashMap<(String, u64), Vec<String>>,
    order: VecDeque<((String, u64), Instant)>,
    keep: Duration,
    max: usize,
}

impl Groups {
    pub fn new(retry: Duration, max: usize) -> Self {
        Groups {
            names: HashMap::new(),
            order: VecDeque::new(),
            keep: retry + MARGIN,
            max: max.max(1),
        }
    }

    /// Record that `name` of publish (origin, seq) arrived; returns the names
    /// of that publish delivered before it, or `None` if `name` itself was.
    pub fn record(&mut self, origin: &str, seq: u64, name: &str) -> Option<Vec<String>> {
        let now = Instant::now();
        while let Some((_, at)) = self.order.front() {
            if now.duration_since(*at) > self.keep || self.order.len() >= self.max {
                if let Some((k, _)) = self.order.pop_front() {
                    self.names.remove(&k);
                }
            } else {
                break;
            }
        }
        let k = (origin.to_string(), seq);
        match self.names.get_mut(&k) {
            Some(names) => {
                if names.iter().any(|n| n == name) {
                    return None;
                }
                let before = names.clone();
                names.push(name.to_string());
                Some(before)
            }
            None => {
                self.names.insert(k.clone(), vec![name.to_string()]);
                self.order.push_back((k, now));
                Some(Vec::new())
            }
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_dropped_per_origin_and_topic() {
        let mut seen = SeenSeqs::new(Duration::from_secs(1));
        assert!(seen.fresh("a", Stream::Topic("t1"), 10));
        assert!(seen.fresh("a", Stream::Topic("t1"), 12));
        assert!(!seen.fresh("a", Stream::Topic("t1"), 12));
        assert!(!seen.fresh("a", Stream::Topic("t1"), 10));
        assert!(seen.fresh("a", Stream::Topic("t2"), 11));
        assert!(seen.fresh("b", Stream::Topic("t1"), 1));
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn a_group_remembers_what_it_delivered_and_stays_bounded() {
        let mut groups = Groups::new(Duration::from_secs(60), 3);
        assert_eq!(groups.record("a", 1, "x"), Some(vec![]));
        assert_eq!(groups.record("a", 1, "y"), Some(vec!["x".to_string()]));
        assert_eq!(groups.record("a", 1, "y"), None);
        for seq in 2..10 {
            groups.record("a", seq, "x");
        }
        assert!(groups.len() <= 3, "{}", groups.len());
    }
}
