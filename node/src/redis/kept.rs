//! What a publishing lane of the Redis relay keeps after Redis confirmed
//! it, to send again after an outage.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::queue::Outgoing;

/// How long after Redis confirmed an envelope a lane keeps it, to send it
/// again after an outage (see [`Kept`]).
const KEEP_FOR: Duration = Duration::from_secs(1);
/// At most this many bytes of confirmed envelopes kept per lane (one lane
/// per Redis server).
const KEEP_BYTES: usize = 1024 * 1024;

/// Commands Redis confirmed in the last [`KEEP_FOR`] (at most
/// [`KEEP_BYTES`]), oldest first, already reported sent: each a copy of one
/// command as it went ([`Outgoing::command_copy`]: one envelope, or a batch
/// of them for one topic), so a busy lane keeps one item per command rather
/// than one per envelope, and lets go of what it published at once.
///
/// Redis confirms a `PUBLISH` once the message is in its subscribers'
/// output buffers, not once they have read it. If Redis dies in the
/// meantime, the peer never gets it. So after an outage of its own
/// connection a lane sends these again, in front of what it held and in their
/// order, once the cluster has settled; a peer that had one drops the copy
/// (its sequence number is not above the last it saw). An idle lane keeps
/// its last ones until it publishes again, so a reconnect while idle still
/// finds them. A copy is sent again as it was, in a command of its own
/// ([`Outgoing::whole`]).
#[derive(Default)]
pub(super) struct Kept {
    items: VecDeque<(Instant, Outgoing)>,
    bytes: usize,
}

impl Kept {
    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Keep `item`, confirmed at `at`; forget what is now too old or over
    /// the byte bound.
    pub(super) fn push(&mut self, at: Instant, item: Outgoing) {
        self.bytes += item.size();
        self.items.push_back((at, item));
        while let Some((confirmed, oldest)) = self.items.front() {
            if self.bytes <= KEEP_BYTES && at.duration_since(*confirmed) <= KEEP_FOR {
                break;
            }
            self.bytes -= oldest.size();
            self.items.pop_front();
        }
    }

    /// Move everything kept to the front of `batch`, in order.
    pub(super) fn replay_into(&mut self, batch: &mut VecDeque<Outgoing>) {
        while let Some((_, item)) = self.items.pop_back() {
            batch.push_front(item);
        }
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::queue::tests::envelope;
    use super::*;
    use pubmesh_cluster_proto as proto;

    fn seq_of(item: &Outgoing) -> u64 {
        proto::decode(&item.payload).expect("decodes").seq
    }

    #[test]
    fn confirmed_envelopes_are_replayed_in_order_ahead_of_what_was_held() {
        let budget = super::super::queue::Budget::new(
            1 << 20,
            prometheus::IntGauge::new("k", "k").expect("gauge"),
        );
        let mut kept = Kept::default();
        let at = Instant::now();
        for seq in 1..=3 {
            let mut item = envelope(seq, "a");
            assert!(budget.try_take(item.cost));
            item.report(&budget, true);
            assert!(item.is_copy(), "a reported envelope is a copy");
            kept.push(at, item);
        }
        assert_eq!(budget.held(), 0, "what is kept is not charged");
        let mut batch: VecDeque<Outgoing> = [envelope(4, "a"), envelope(5, "a")].into();
        kept.replay_into(&mut batch);
        assert_eq!(
            batch.iter().map(seq_of).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert!(kept.is_empty());
        assert_eq!(kept.bytes, 0);
    }

    #[test]
    fn kept_envelopes_are_forgotten_by_age_and_by_bytes() {
        let mut kept = Kept::default();
        let start = Instant::now();
        kept.push(start, envelope(1, "a"));
        kept.push(start + KEEP_FOR / 2, envelope(2, "a"));
        kept.push(
            start + KEEP_FOR + Duration::from_millis(1),
            envelope(3, "a"),
        );
        let seqs: Vec<u64> = kept.items.iter().map(|(_, item)| seq_of(item)).collect();
        assert_eq!(seqs, [2, 3], "older than KEEP_FOR before the newest goes");

        let mut kept = Kept::default();
        // Sequence numbers of one encoded width, so every envelope has one size.
        let one = envelope(1000, "a").size();
        let fits = KEEP_BYTES / one;
        for seq in 1000..(1000 + fits as u64 + 10) {
            kept.push(start, envelope(seq, "a"));
        }
        assert_eq!(kept.items.len(), fits);
        assert!(kept.bytes <= KEEP_BYTES);
        assert_eq!(kept.items.front().map(|(_, item)| seq_of(item)), Some(1010));
    }
}
