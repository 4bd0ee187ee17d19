//! The publishing side of the relay: each lane's queue drained by a task
//! that pipelines whole batches in one round trip and sends the next only
//! after it completes, so one publisher's messages to one topic stay in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::Value as RedisValue;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::relay::RelayError;

/// Most commands sent in one pipeline.
pub const BATCH: usize = 512;

/// Drain one server's queue: whole batches in one pipeline, in order.
pub async fn publish_loop(
    client: Client,
    sharded: bool,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<(String, Bytes)>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let taken = batch.len() as i64;
        if !client.is_connected() {
            metrics
                .relay_dropped
                .with_label_values(&["redis_down"])
                .inc_by(batch.len() as u64);
            batch.clear();
            metrics.relay_pipeline_depth.sub(taken);
            continue;
        }
        let started = Instant::now();
        let pipeline = client.pipeline();
        for (topic, payload) in batch.drain(..) {
            let queued: Result<(), Error> = if sharded {
                pipeline.spublish(topic, payload).await
            } else {
                pipeline.publish(topic, payload).await
            };
            if let Err(e) = queued {
                tracing::debug!(error = %e, "queueing a publish failed");
            }
        }
        let results = pipeline.try_all::<RedisValue>().await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            metrics
                .relay_dropped
                .with_label_values(&["redis_error"])
                .inc_by(failed as u64);
        }
        metrics
            .relay_roundtrip
            .observe(started.elapsed().as_secs_f64());
        // Queued or in flight over every lane: added on enqueue, removed here.
        metrics.relay_pipeline_depth.sub(taken);
    }
}

/// Messages waiting per Redis server before publishes are dropped.
const QUEUE: usize = 100_000;
/// Publishing lanes per server: each has its own queue and task, so several
/// pipelines are in flight at once. A topic always uses the same lane, which
/// keeps one publisher's messages to a topic in order.
const LANES: usize = 4;

/// One Redis server (or the cluster).
pub struct Server {
    pub url: String,
    pub publisher: Client,
    pub subscriber: SubscriberClient,
    pub lanes: Vec<mpsc::Sender<(String, Bytes)>>,
    /// Taken by the publisher task at start.
    pub lanes_rx: Mutex<Vec<mpsc::Receiver<(String, Bytes)>>>,
}

/// Connect (in the background) to every Redis server of the configuration.
pub fn servers(config: &Config) -> Result<Vec<Server>, RelayError> {
    let urls: Vec<String> = if config.redis_cluster {
        config.redis_urls.iter().take(1).cloned().collect()
    } else {
        config.redis_urls.clone()
    };
    let mut servers = Vec::with_capacity(urls.len());
    for url in urls {
        let redis_config = crate::redis_connect::client_config(
            &url,
            config.redis_cluster,
            config.redis_tls_ca.as_deref(),
        )
        .map_err(RelayError::Config)?;
        let mut builder = Builder::from_config(redis_config);
        builder
            .with_performance_config(|p| {
                p.broadcast_channel_capacity = 1 << 16;
                p.default_command_timeout = Duration::from_secs(2);
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.max_command_attempts = 2;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let publisher = builder
            .build()
            .map_err(|e| RelayError::Config(e.to_string()))?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| RelayError::Config(e.to_string()))?;
        crate::redis_connect::log_outages(&publisher, &url, "relay publisher");
        crate::redis_connect::log_outages(&subscriber, &url, "relay subscriber");
        let (lanes, lanes_rx): (Vec<_>, Vec<_>) =
            (0..LANES).map(|_| mpsc::channel(QUEUE / LANES)).unzip();
        servers.push(Server {
            url: crate::redis_connect::redacted(&url),
            publisher,
            subscriber,
            lanes,
            lanes_rx: Mutex::new(lanes_rx),
        });
    }
    Ok(servers)
}
