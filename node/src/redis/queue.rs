//! Outgoing envelopes of the Redis relay: the byte-bounded lanes (one per
//! Redis server), the retry buffer that bridges a short Redis outage, and
//! publish acknowledgements.
//!
//! Every envelope waiting for Redis (queued, in a pipeline, or held through an
//! outage) is charged to one [`Budget`] per node, in bytes
//! (`--relay-queue-bytes`). A publish that does not fit fails at once
//! (`queue_full`). An envelope that Redis has not confirmed by its deadline
//! (`--relay-retry-ms` after it was queued) fails (`redis_down`). Either way
//! the publisher's [`Ack`] reports it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus::IntGauge;
use tokio::sync::{oneshot, Notify};

/// Bytes charged for an envelope besides its payload and topic (the queue
/// entry, the pipeline's command frame).
pub const OVERHEAD: usize = 96;

/// The node-wide byte bound on outgoing envelopes.
pub struct Budget {
    held: AtomicUsize,
    limit: usize,
    gauge: IntGauge,
}

impl Budget {
    pub fn new(limit: usize, gauge: IntGauge) -> Budget {
        gauge.set(0);
        Budget {
            held: AtomicUsize::new(0),
            limit,
            gauge,
        }
    }

    /// Take `n` bytes if they fit.
    pub fn try_take(&self, n: usize) -> bool {
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            if held + n > self.limit {
                return false;
            }
            match self.held.compare_exchange_weak(
                held,
                held + n,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.gauge.add(n as i64);
                    return true;
                }
                Err(now) => held = now,
            }
        }
    }

    pub fn give_back(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
        self.gauge.sub(n as i64);
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// Whether every envelope of one publish reached Redis. The publisher holds
/// one count while it queues; each envelope holds one until it is confirmed
/// or fails. The receiver gets `true` only if all of them were confirmed.
pub struct Ack {
    remaining: AtomicUsize,
    failed: AtomicBool,
    tx: Mutex<Option<oneshot::Sender<bool>>>,
}

impl Ack {
    pub fn new() -> (Arc<Ack>, oneshot::Receiver<bool>) {
        let (tx, rx) = oneshot::channel();
        let ack = Arc::new(Ack {
            remaining: AtomicUsize::new(1),
            failed: AtomicBool::new(false),
            tx: Mutex::new(Some(tx)),
        });
        (ack, rx)
    }

    /// One more envelope to wait for.
    pub fn add(&self) {
        self.remaining.fetch_add(1, Ordering::AcqRel);
    }

    /// One envelope (or the publisher's own count) is settled.
    pub fn done(&self, ok: bool) {
        if !ok {
            self.failed.store(true, Ordering::Release);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(tx) = self.tx.lock().take() {
                let _ = tx.send(!self.failed.load(Ordering::Acquire));
            }
        }
    }
}

/// One envelope for one topic.
pub struct Outgoing {
    pub topic: String,
    /// Which envelopes must reach receivers in queue order with it (see
    /// [`stream_key`]): those of its topic, or of the channel or user whose
    /// envelope it carries to a peer's inbox.
    pub stream: u64,
    pub payload: Bytes,
    /// Redis must confirm it by then, or it fails.
    pub deadline: Instant,
    /// Bytes charged to the [`Budget`]; 0 once reported (a copy, see
    /// [`Outgoing::report`]).
    pub cost: usize,
    pub ack: Option<Arc<Ack>>,
    /// A whole command Redis confirmed before (one envelope, or a batch of
    /// them for one topic), sent again as it is: it is never grouped with
    /// other envelopes (see [`super::kept::Kept`]).
    pub whole: bool,
}

/// The order key of the envelopes of `topic` (a channel's, a user's, or any
/// other Redis channel's): equal for every envelope of a channel or user,
/// whether it goes to the topic or to a peer's inbox.
///
/// The key stays within this process (the order of commands in a pipeline,
/// and ordering groups).
pub fn stream_key(topic: &str) -> u64 {
    crate::hashing::process_hash(topic)
}

impl Outgoing {
    pub fn new(topic: String, payload: Bytes, retry: Duration, ack: Option<Arc<Ack>>) -> Self {
        if let Some(ack) = &ack {
            ack.add();
        }
        let mut item = Outgoing {
            stream: stream_key(&topic),
            topic,
            payload,
            deadline: Instant::now() + retry,
            cost: 0,
            ack,
            whole: false,
        };
        item.cost = item.size();
        item
    }

    /// A copy of one command Redis confirmed (`payload`, whose first
    /// envelope is `first`), to send again as it is after an outage: already
    /// reported, so nothing is charged for it and its publishers are not
    /// told again. It takes the first envelope's topic, stream and deadline
    /// (the oldest of its topic's envelopes in the command).
    pub fn command_copy(first: &Outgoing, payload: Bytes) -> Self {
        Outgoing {
            topic: first.topic.clone(),
            stream: first.stream,
            payload,
            deadline: first.deadline,
            cost: 0,
            ack: None,
            whole: true,
        }
    }

    /// Refuse it before it was charged (the budget was full).
    pub fn refuse(self) {
        if let Some(ack) = self.ack {
            ack.done(false);
        }
    }

    /// Settle it: give its bytes back and tell its publisher.
    pub fn settle(mut self, budget: &Budget, ok: bool) {
        self.report(budget, ok);
    }

    /// Settle it but keep it, to be sent again as a copy: its bytes go back
    /// to the budget and its publisher is told, once.
    pub fn report(&mut self, budget: &Budget, ok: bool) {
        if self.cost > 0 {
            budget.give_back(self.cost);
            self.cost = 0;
        }
        if let Some(ack) = self.ack.take() {
            ack.done(ok);
        }
    }

    /// Already reported: a copy sent again (receivers drop it if they had it).
    pub fn is_copy(&self) -> bool {
        self.cost == 0
    }

    /// Bytes it takes, charged or not (what [`Outgoing::new`] charges).
    pub fn size(&self) -> usize {
        self.payload.len() + self.topic.len() + OVERHEAD
    }
}

/// One publishing lane (one per Redis server): a FIFO drained by one task,
/// so envelopes leave in the order they were queued.
#[derive(Default)]
pub struct Lane {
    queue: Mutex<VecDeque<Outgoing>>,
    notify: Notify,
}

impl Lane {
    pub fn push(&self, item: Outgoing) {
        self.queue.lock().push_back(item);
        self.notify.notify_one();
    }

    /// Move up to `max` envelopes into `into`, waiting for the first.
    pub async fn take(&self, max: usize, into: &mut VecDeque<Outgoing>) {
        loop {
            {
                let mut queue = self.queue.lock();
                if !queue.is_empty() {
                    let n = queue.len().min(max);
                    into.extend(queue.drain(..n));
                    return;
                }
            }
            self.notify.notified().await;
        }
    }

    /// Move up to `max` envelopes into `into`, without waiting.
    pub fn take_ready(&self, max: usize, into: &mut VecDeque<Outgoing>) {
        let mut queue = self.queue.lock();
        let n = queue.len().min(max);
        into.extend(queue.drain(..n));
    }

    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.lock().is_empty()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A `Deliver` envelope of origin `n1` with sequence `seq` for channel `topic`.
    pub(in crate::redis) fn envelope(seq: u64, topic: &str) -> Outgoing {
        use pubmesh_cluster_proto as proto;
        let body = proto::Body::Deliver(proto::Delivery {
            targets: proto::Targets::Channels(vec![topic.to_string()]),
            frame: Bytes::from_static(b"{\"n\":1}"),
            exclude_client: None,
            extra: proto::Extra::default(),
        });
        let payload = proto::encode(&proto::Envelope::new("n1", seq, body));
        Outgoing::new(topic.into(), payload, Duration::from_secs(1), None)
    }

    #[test]
    fn the_budget_refuses_what_does_not_fit_and_takes_it_back() {
        let gauge = IntGauge::new("b", "b").expect("gauge");
        let budget = Budget::new(1000, gauge.clone());
        assert!(budget.try_take(600));
        assert!(!budget.try_take(500));
        assert!(budget.try_take(400));
        assert_eq!(gauge.get(), 1000);
        budget.give_back(600);
        assert_eq!(budget.held(), 400);
        assert!(budget.try_take(500));
    }

    #[tokio::test]
    async fn an_ack_reports_failure_if_any_envelope_failed() {
        let (ack, rx) = Ack::new();
        let budget = Budget::new(1 << 20, IntGauge::new("c", "c").expect("gauge"));
        let a = Outgoing::new(
            "t1".into(),
            Bytes::from_static(b"x"),
            Duration::from_secs(1),
            Some(ack.clone()),
        );
        let b = Outgoing::new(
            "t2".into(),
            Bytes::from_static(b"y"),
            Duration::from_secs(1),
            Some(ack.clone()),
        );
        assert!(budget.try_take(a.cost + b.cost));
        ack.done(true);
        a.settle(&budget, true);
        b.settle(&budget, false);
        assert!(!rx.await.expect("settled"));
        assert_eq!(budget.held(), 0);

        let (ack, rx) = Ack::new();
        let c = Outgoing::new(
            "t".into(),
            Bytes::from_static(b"z"),
            Duration::from_secs(1),
            Some(ack.clone()),
        );
        ack.done(true);
        assert!(budget.try_take(c.cost));
        c.settle(&budget, true);
        assert!(rx.await.expect("settled"));
    }
}
