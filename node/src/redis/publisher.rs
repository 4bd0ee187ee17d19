//! Publishing of the Redis relay: the lanes that pipeline queued
//! envelopes to Redis and send again what Redis did not confirm.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Value as RedisValue;

use super::queue::{Lane, Outgoing};
use super::state::{Inner, BATCH, OUTAGE_POLL};

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
/// waits until the cluster has [`Inner::settled`].
pub(super) async fn publish_loop(inner: Arc<Inner>, server: usize, lane: Arc<Lane>) {
    let client = inner.servers[server].publisher.clone();
    let mut batch: VecDeque<Outgoing> = VecDeque::with_capacity(BATCH);
    // Set while Redis is failing us; `back` is when it looked usable again.
    let mut outage = false;
    let mut back: Option<Instant> = None;
    // A pipeline gets this long before it counts as unconfirmed.
    let deadline = inner.limits.probe.max(Duration::from_secs(1)) * 2;
    loop {
        if batch.is_empty() {
            lane.take(BATCH, &mut batch).await;
        }
        let now = Instant::now();
        let mut expired = 0;
        while batch.front().is_some_and(|item| item.deadline <= now) {
            if let Some(item) = batch.pop_front() {
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
            tokio::time::sleep(OUTAGE_POLL).await;
            continue;
        }
        if outage {
            let since = *back.get_or_insert(now);
            if !inner.settled(since) {
                tokio::time::sleep(OUTAGE_POLL).await;
                continue;
            }
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
        for item in &batch {
            let queued: Result<(), Error> = if inner.sharded {
                commands
                    .spublish(item.topic.as_str(), item.payload.clone())
                    .await
            } else {
                commands
                    .publish(item.topic.as_str(), item.payload.clone())
                    .await
            };
            if let Err(e) = queued {
                tracing::debug!(error = %e, "queueing a publish failed");
            }
        }
        let sent = batch.len();
        let results = tokio::time::timeout(deadline, pipeline.try_all::<RedisValue>())
            .await
            .unwrap_or_default();
        let mut confirmed = 0;
        let mut failed = 0;
        let mut again = results.len() < sent;
        for result in results {
            match result {
                Ok(_) => {
                    if let Some(item) = batch.pop_front() {
                        item.settle(&inner.budget, true);
                    }
                    confirmed += 1;
                }
                Err(e) if transient(&e) => {
                    again = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = ?e.kind(), "Redis refused a publish");
                    if let Some(item) = batch.pop_front() {
                        item.settle(&inner.budget, false);
                    }
                    failed += 1;
                }
            }
        }
        if failed > 0 {
            inner
                .metrics
                .relay_dropped
                .with_label_values(&["redis_error"])
                .inc_by(failed);
        }
        if again && !batch.is_empty() {
            tracing::info!(server = %inner.servers[server].url, unconfirmed = batch.len(), "Redis did not confirm a batch; holding it to send again");
            outage = true;
            back = None;
            inner.metrics.relay_retried.inc_by(batch.len() as u64);
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
