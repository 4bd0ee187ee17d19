//! Publishing of the Redis relay: each server's lane, which pipelines
//! queued envelopes to Redis and sends again what Redis did not confirm.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Value as RedisValue;

use super::kept::Kept;
use super::plan::{plan_into, Plan};
use super::queue::{Lane, Outgoing};
use super::state::{Inner, BATCH, OUTAGE_POLL};
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
    let mut plan = Plan::default();
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
        for command in &plan.commands {
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
        let mut again = results.len() < plan.commands.len();
        // What Redis confirmed is kept a while, command by command.
        let answered = Instant::now();
        for (command, result) in plan.commands.iter().zip(results) {
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
            for &i in plan.items(command) {
                outcome[i] = Some(ok);
            }
            if ok {
                let first = &batch[command.first];
                let copy = Outgoing::command_copy(first, command.payload.clone());
                kept.push(answered, copy);
            }
        }
        if plan.commands.len() < batch.len() {
            inner
                .metrics
                .relay_batched
                .inc_by((batch.len() - plan.commands.len()) as u64);
        }
        // Settle what Redis answered; keep the rest, in order, to send
        // again (in the same buffer: it keeps its capacity).
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

#[cfg(test)]
mod tests {
    use super::super::queue::tests::envelope;
    use super::*;
    use pubmesh_cluster_proto as proto;

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
}
