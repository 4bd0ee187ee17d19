//! Publishing of the Redis relay: each server's lane, which pipelines
//! queued envelopes to Redis and sends again what Redis did not confirm.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;
use fred::types::Value as RedisValue;
use pubmesh_cluster_proto as proto;

use super::kept::Kept;
use super::queue::{Lane, Outgoing};
use super::state::{Inner, BATCH, OUTAGE_POLL};
use crate::hashing::HashMap;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Is this error one that sending again may fix? Everything but a command
/// Redis (or the client) rejects as such: connection errors, timeouts and
/// routing failures while the connection changes state are all retried until
/// the envelope's deadline.
pub(super) fn transient(e: &Error) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::Auth
            | ErrorKind::InvalidArgument
            | ErrorKind::InvalidCommand
            | ErrorKind::Parse
            | ErrorKind::Config
            | ErrorKind::Url
            | ErrorKind::NotFound
    )
}

/// Drain one lane: whole batches in one pipeline, in order. A batch Redis
/// did not confirm is kept and sent again (from the first unconfirmed
/// envelope on) until each envelope's deadline; after an outage the lane
/// waits until the cluster has [`Inner::settled`], then sends again what
/// Redis confirmed just before it ([`Kept`]) and what it held.
///
/// An outage is any reconnect of the publisher connection, seen or not: a
/// disconnection the lane met, and also one that came and went while the lane
/// was idle (peers may still be resubscribing). A pipeline during which the
/// connection was re-established counts as unconfirmed even if Redis answered
/// it: the client library may have written it on the new connection, before
/// peers had their subscriptions back, so the lane sends it again once
/// settled (receivers drop the copies).
pub(super) async fn publish_loop(inner: Arc<Inner>, server: usize, lane: Arc<Lane>) {
    let client = inner.servers[server].publisher.clone();
    let mut reconnects = client.reconnect_rx();
    // Whether this lane has sent anything yet (the first connect is no outage).
    let mut sent_before = false;
    let mut batch: VecDeque<Outgoing> = VecDeque::with_capacity(BATCH);
    // Set while Redis is failing us; `back` is when it looked usable again.
    let mut outage = false;
    let mut back: Option<Instant> = None;
    // A pipeline gets this long before it counts as unconfirmed.
    let deadline = inner.limits.probe.max(Duration::from_secs(1)) * 2;
    // Whether the last pipeline carried more than one envelope.
    let mut busy = false;
    // Kept across pipelines, so a pipeline allocates none of them.
    let mut plan: Vec<Command> = Vec::new();
    let mut outcome: Vec<Option<bool>> = Vec::new();
    let mut kept = Kept::default();
    loop {
        if batch.is_empty() {
            if kept.is_empty() {
                lane.take(BATCH, &mut batch).await;
            } else {
                // An idle lane still follows reconnects: what it kept is
                // sent again even if nothing new is published after them.
                tokio::select! {
                    () = lane.take(BATCH, &mut batch) => {}
                    event = reconnects.recv() => match event {
                        Ok(_) | Err(RecvError::Lagged(_)) => {
                            outage = true;
                            back = None;
                            kept.replay_into(&mut batch);
                        }
                        Err(RecvError::Closed) => lane.take(BATCH, &mut batch).await,
                    },
                }
            }
            if busy {
                linger(&lane, &mut batch, inner.limits.batch_wait).await;
            }
        }
        let now = Instant::now();
        let mut expired = 0;
        while batch.front().is_some_and(|item| item.deadline <= now) {
            // A copy past its deadline is dropped unsent: it was reported
            // sent, and receivers no longer know whether they had it.
            if let Some(item) = batch.pop_front().filter(|item| !item.is_copy()) {
                item.settle(&inner.budget, false);
                expired += 1;
            }
        }
        if expired > 0 {
            tracing::warn!(server = %inner.servers[server].url, expired, "publishes not confirmed by Redis within --relay-retry-ms; reported failed");
            inner
                .metrics
                .relay_dropped
                .with_label_values(&["redis_down"])
                .inc_by(expired);
            inner.metrics.relay_pipeline_depth.sub(expired as i64);
        }
        if batch.is_empty() {
            continue;
        }
        if !client.is_connected() {
            outage = true;
            back = None;
            kept.replay_into(&mut batch);
            tokio::time::sleep(OUTAGE_POLL).await;
            continue;
        }
        if reconnected(&mut reconnects) && sent_before {
            outage = true;
            back = None;
            kept.replay_into(&mut batch);
        }
        if outage {
            let since = *back.get_or_insert(now);
            if !inner.settled(since) {
                tokio::time::sleep(OUTAGE_POLL).await;
                continue;
            }
            tracing::info!(
                server = %inner.servers[server].url,
                held = batch.len() + lane.len(),
                waited_ms = now.duration_since(since).as_millis() as u64,
                "subscriptions here and at every peer back; sending what was held"
            );
            outage = false;
            back = None;
        }
        let started = Instant::now();
        let pipeline = client.pipeline();
        // Never let the client library keep a command to send after a
        // reconnect: what is not confirmed is this lane's to send again, or
        // to report failed (a failed publish must not arrive later).
        let commands = pipeline.with_options(&Options {
            fail_fast: true,
            max_attempts: Some(1),
            timeout: Some(deadline),
            ..Default::default()
        });
        plan_into(&mut plan, &batch, inner.limits.batch_bytes, &inner.node_id);
        busy = batch.len() > 1;
        for command in &plan {
            let topic = batch[command.first].topic.as_str();
            let queued: Result<(), Error> = if inner.sharded {
                commands.spublish(topic, command.payload.clone()).await
            } else {
                commands.publish(topic, command.payload.clone()).await
            };
            if let Err(e) = queued {
                tracing::debug!(error = %e, "queueing a publish failed");
            }
        }
        sent_before = true;
        let results = tokio::time::timeout(deadline, pipeline.try_all::<RedisValue>())
            .await
            .unwrap_or_default();
        // Answered across a reconnect: maybe written too early (see above).
        let results = if reconnected(&mut reconnects) {
            Vec::new()
        } else {
            results
        };
        // What became of each envelope: Some(confirmed) or None (send again).
        outcome.clear();
        outcome.resize(batch.len(), None);
        let mut again = results.len() < plan.len();
        for (command, result) in plan.iter().zip(results) {
            let ok = match result {
                Ok(_) => true,
                Err(e) if transient(&e) => {
                    again = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = ?e.kind(), "Redis refused a publish");
                    false
                }
            };
            for i in command.items() {
                outcome[i] = Some(ok);
            }
        }
        if plan.len() < batch.len() {
            inner
                .metrics
                .relay_batched
                .inc_by((batch.len() - plan.len()) as u64);
        }
        // Settle what Redis answered (keeping what it confirmed for a
        // while); keep the rest, in order, to send again (in the same
        // buffer: it keeps its capacity).
        let answered = Instant::now();
        let mut confirmed = 0;
        let mut failed = 0;
        for &settled in &outcome {
            let Some(mut item) = batch.pop_front() else {
                break;
            };
            match settled {
                Some(ok) => {
                    if !item.is_copy() {
                        if ok {
                            confirmed += 1;
                        } else {
                            failed += 1;
                        }
                    }
                    item.report(&inner.budget, ok);
                    if ok {
                        kept.push(answered, item);
                    }
                }
                None => batch.push_back(item),
            }
        }
        if failed > 0 {
            inner
                .metrics
                .relay_dropped
                .with_label_values(&["redis_error"])
                .inc_by(failed as u64);
        }
        if again && !batch.is_empty() {
            tracing::info!(server = %inner.servers[server].url, unconfirmed = batch.len(), "Redis did not confirm a batch; holding it to send again");
            outage = true;
            back = None;
            let copies = batch.iter().filter(|item| item.is_copy()).count();
            inner
                .metrics
                .relay_retried
                .inc_by((batch.len() - copies) as u64);
            kept.replay_into(&mut batch);
            if client.is_connected() {
                // Connected but unconfirmed (a stalled Redis): look again later.
                tokio::time::sleep(OUTAGE_POLL).await;
            }
        }
        inner
            .metrics
            .relay_roundtrip
            .observe(started.elapsed().as_secs_f64());
        // Queued or in flight over every lane: added on enqueue, removed when settled.
        inner
            .metrics
            .relay_pipeline_depth
            .sub((confirmed + failed) as i64);
    }
}

/// Whether the connection was (re)established since the last look. Nearly
/// always nothing was: `len` answers that under one lock, where `try_recv`
/// takes three.
fn reconnected(events: &mut tokio::sync::broadcast::Receiver<fred::types::config::Server>) -> bool {
    if events.is_empty() {
        return false;
    }
    let mut any = false;
    loop {
        match events.try_recv() {
            Ok(_) | Err(TryRecvError::Lagged(_)) => any = true,
            Err(TryRecvError::Empty | TryRecvError::Closed) => return any,
        }
    }
}

/// A busy lane waits up to `wait` for more envelopes to join those it took,
/// so more of them share commands, and stops waiting as soon as it holds a
/// whole batch; an idle lane (its last pipeline carried one envelope) never
/// waits, so latency at low rates does not grow. The runtime's timer counts
/// in milliseconds: a wait under one millisecond is one pass of the other
/// ready tasks (those already woken add their envelopes), never a spin.
async fn linger(lane: &Lane, batch: &mut VecDeque<Outgoing>, wait: Duration) {
    if wait.is_zero() {
        return;
    }
    if wait < Duration::from_millis(1) {
        tokio::task::yield_now().await;
    } else {
        let fill = async {
            while batch.len() < BATCH {
                lane.take(BATCH - batch.len(), batch).await;
            }
        };
        let _ = tokio::time::timeout(wait, fill).await;
    }
    lane.take_ready(BATCH - batch.len(), batch);
}

/// One command of a pipeline: the envelopes it carries (indexes into the
/// lane's batch, in order: `first`, then `more`) and its payload.
struct Command {
    first: usize,
    more: Vec<usize>,
    payload: Bytes,
}

impl Command {
    fn items(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.first).chain(self.more.iter().copied())
    }
}

/// Group a lane's batch into commands (into `plan`, emptied first):
/// envelopes for the same topic share one batch envelope of at most
/// `max_bytes` (an envelope alone is sent as it is). Each topic's envelopes
/// stay in order, within and across its commands, and the commands follow
/// the first envelope of each. So do each stream's (`Outgoing::stream`):
/// an envelope joins its topic's command only if no envelope of its stream
/// went into a later command (a channel's envelope to a peer's inbox after
/// one to the channel's topic starts a command of its own).
fn plan_into(plan: &mut Vec<Command>, batch: &VecDeque<Outgoing>, max_bytes: usize, origin: &str) {
    plan.clear();
    if batch.len() == 1 {
        // An idle lane's batch (the common case below saturation): sent as
        // it is, without grouping by topic.
        plan.push(Command {
            first: 0,
            more: Vec::new(),
            payload: batch[0].payload.clone(),
        });
        return;
    }
    let overhead = proto::batch_overhead(origin.len());
    // Per command: its envelopes and their bytes in a batch.
    let mut groups: Vec<(Vec<usize>, usize)> = Vec::new();
    // Topic → the command its next envelope may join.
    let mut open: HashMap<&str, usize> = HashMap::default();
    // Stream → the last command holding one of its envelopes: sized for a
    // stream per envelope (W2's channels each have their own), so a busy
    // lane's batch of hundreds does not grow it step by step.
    let mut last: HashMap<u64, usize> = crate::hashing::map_with_capacity(batch.len());
    for (i, item) in batch.iter().enumerate() {
        let size = item.payload.len() + proto::BATCH_ITEM_OVERHEAD;
        let after = last.get(&item.stream).copied().unwrap_or(0);
        if let Some(&g) = open.get(item.topic.as_str()) {
            let (items, bytes) = &mut groups[g];
            if g >= after && *bytes + size <= max_bytes {
                items.push(i);
                *bytes += size;
                last.insert(item.stream, g);
                continue;
            }
        }
        open.insert(item.topic.as_str(), groups.len());
        last.insert(item.stream, groups.len());
        groups.push((vec![i], overhead + size));
    }
    plan.extend(groups.into_iter().map(|(mut items, _)| {
        let payload = if let [one] = items[..] {
            batch[one].payload.clone()
        } else {
            let parts: Vec<Bytes> = items.iter().map(|&i| batch[i].payload.clone()).collect();
            proto::encode_batch(origin, 0, &parts)
        };
        let first = items.remove(0);
        Command {
            first,
            more: items,
            payload,
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::super::queue::stream_key;
    use super::super::queue::tests::envelope;
    use super::*;

    /// (topic, seqs carried) of each command.
    fn plan(batch: &VecDeque<Outgoing>, max_bytes: usize, origin: &str) -> Vec<Command> {
        let mut plan = Vec::new();
        plan_into(&mut plan, batch, max_bytes, origin);
        plan
    }

    fn shape(batch: &VecDeque<Outgoing>, plan: &[Command]) -> Vec<(String, Vec<u64>)> {
        plan.iter()
            .map(|c| {
                let decoded = proto::decode(&c.payload).expect("decodes");
                let seqs = match decoded.body {
                    proto::Body::Batch(parts) => parts.iter().map(|e| e.seq).collect(),
                    _ => vec![decoded.seq],
                };
                let topic = batch[c.first].topic.clone();
                assert!(c.items().all(|i| batch[i].topic == topic));
                (topic, seqs)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_lingering_lane_takes_what_arrives_during_its_wait() {
        let lane = Arc::new(Lane::default());
        let mut batch: VecDeque<Outgoing> = [envelope(1, "a")].into_iter().collect();
        let pusher = {
            let lane = lane.clone();
            tokio::spawn(async move {
                for seq in 2..=5 {
                    lane.push(envelope(seq, "a"));
                    tokio::task::yield_now().await;
                }
            })
        };
        // Long enough for the pusher on any machine; it ends early only
        // when the batch is full, which four more cannot make it.
        linger(&lane, &mut batch, Duration::from_secs(2)).await;
        pusher.await.expect("pusher");
        let seqs: Vec<u64> = batch
            .iter()
            .map(|o| proto::decode(&o.payload).expect("decodes").seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert!(lane.is_empty());
    }

    #[tokio::test]
    async fn a_lingering_lane_sends_as_soon_as_it_holds_a_whole_batch() {
        let lane = Lane::default();
        let mut batch: VecDeque<Outgoing> = VecDeque::new();
        for seq in 0..(BATCH as u64 + 10) {
            lane.push(envelope(seq, "a"));
        }
        lane.take(1, &mut batch).await;
        // A wait of an hour returns at once: the batch fills from the queue.
        tokio::time::timeout(
            Duration::from_secs(30),
            linger(&lane, &mut batch, Duration::from_secs(3600)),
        )
        .await
        .expect("a full batch does not wait");
        assert_eq!(batch.len(), BATCH);
        assert_eq!(lane.len(), 10, "the rest waits for the next batch");
    }

    #[tokio::test]
    async fn a_wait_under_a_millisecond_takes_what_is_queued_without_sleeping() {
        let lane = Lane::default();
        let mut batch: VecDeque<Outgoing> = [envelope(1, "a")].into_iter().collect();
        lane.push(envelope(2, "a"));
        linger(&lane, &mut batch, Duration::from_micros(200)).await;
        assert_eq!(batch.len(), 2);
        // With nothing queued it returns too (one pass of the runtime).
        tokio::time::timeout(
            Duration::from_secs(30),
            linger(&lane, &mut batch, Duration::from_micros(200)),
        )
        .await
        .expect("returns");
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn envelopes_for_one_topic_share_a_command_in_order_within_the_byte_bound() {
        let batch: VecDeque<Outgoing> =
            [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "a"), (6, "b")]
                .into_iter()
                .map(|(seq, topic)| envelope(seq, topic))
                .collect();
        let plan = plan(&batch, 64 * 1024, "n1");
        assert_eq!(
            shape(&batch, &plan),
            [
                ("a".to_string(), vec![1, 3, 5]),
                ("b".to_string(), vec![2, 6]),
                ("c".to_string(), vec![4]),
            ]
        );
        // An envelope alone is sent as it was encoded, not wrapped.
        assert_eq!(plan[2].payload, batch[3].payload);
        // Within the bound: room for two envelopes of "a" per batch.
        let one = batch[0].payload.len() + proto::BATCH_ITEM_OVERHEAD;
        let bound = proto::batch_overhead(2) + 2 * one;
        let plan = self::plan(&batch, bound, "n1");
        assert_eq!(
            shape(&batch, &plan),
            [
                ("a".to_string(), vec![1, 3]),
                ("b".to_string(), vec![2, 6]),
                ("c".to_string(), vec![4]),
                ("a".to_string(), vec![5]),
            ]
        );
        assert!(plan.iter().all(|c| c.payload.len() <= bound));
        // 0: every envelope alone, in queue order.
        let plan = self::plan(&batch, 0, "n1");
        let seqs: Vec<u64> = shape(&batch, &plan)
            .into_iter()
            .flat_map(|(_, s)| s)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_channels_envelopes_stay_in_order_when_they_change_redis_channel() {
        // "inbox" carries channels y and x to the one peer that listens;
        // x's second envelope went to its topic (two peers listened), its
        // third to the inbox again (one peer again).
        let mut batch: VecDeque<Outgoing> = VecDeque::new();
        for (seq, topic, stream) in [
            (1, "inbox", "y"),
            (2, "x", "x"),
            (3, "inbox", "x"),
            (4, "inbox", "y"),
        ] {
            let mut item = envelope(seq, topic);
            item.stream = stream_key(stream);
            batch.push_back(item);
        }
        let plan = plan(&batch, 64 * 1024, "n1");
        assert_eq!(
            shape(&batch, &plan),
            [
                ("inbox".to_string(), vec![1]),
                ("x".to_string(), vec![2]),
                ("inbox".to_string(), vec![3, 4]),
            ]
        );
    }

    #[test]
    fn an_envelope_alone_in_its_batch_is_one_command_as_encoded() {
        let batch: VecDeque<Outgoing> = [envelope(7, "a")].into_iter().collect();
        let plan = plan(&batch, 64 * 1024, "n1");
        assert_eq!(shape(&batch, &plan), [("a".to_string(), vec![7])]);
        assert_eq!(plan[0].items().collect::<Vec<_>>(), [0]);
        assert_eq!(plan[0].payload, batch[0].payload);
    }
}
