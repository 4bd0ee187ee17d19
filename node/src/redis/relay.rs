//! The cluster relay over Redis pub/sub.
//!
//! Routing (topic names from `pubmesh_cluster_proto::Topics`):
//! - a channel's messages go to `{p}.ch.{{channel}}`, a user's to `{p}.u.{user}`;
//!   a node subscribes to those only while it has local members, and lets go
//!   [`LINGER`] after the last one leaves (so join/leave churn costs nothing);
//! - messages for client ids go straight to the owning node's inbox `{p}.n.{node}`;
//! - broadcasts use `{p}.all`; membership, disconnects and channel queries `{p}.ctl`.
//!
//! With several `--redis-url`s each name lives on one server chosen by
//! rendezvous hashing ([`super::shard_index`]); `{p}.all` and `{p}.ctl` live on
//! the first. With `--redis-cluster` every topic uses sharded pub/sub
//! (`SSUBSCRIBE`/`SPUBLISH`), which Redis Cluster routes to the topic's slot.
//!
//! Publishing never blocks: messages go to one queue per server (its lane),
//! bounded together in bytes (`--relay-queue-bytes`, see [`super::queue`]),
//! each drained by a task that pipelines whole batches in one round trip and
//! sends the next only after it completes, so one publisher's messages to
//! one topic stay in order. A batch Redis does not confirm is kept and sent
//! again until its deadline (`--relay-retry-ms`): after an outage a lane
//! first waits until its own subscriptions are back and every known peer
//! has heartbeated again (a node heartbeats only while its subscriptions
//! are in place), so what was held reaches every node. Receivers drop the
//! copies this can make ([`super::dedup`]).
//!
//! A publish to several channels or users becomes one envelope per topic,
//! carrying only that topic's name. Envelopes of one multi-channel publish
//! share one odd sequence number (single-topic envelopes get even ones), so a
//! node holding members of several of those channels delivers to each
//! connection once.
//!
//! Each server has a dedicated subscriber connection whose reader only
//! decodes and pushes to outboxes; what it may hold is bounded by
//! `--relay-receive-bytes`. A node ignores the echo of its own messages (it
//! delivered them locally first); history publications are the exception,
//! see [`super::store`]. Readiness is probed actively ([`super::health`]).
//!
//! Why fred: its subscriber client re-issues subscriptions after a reconnect
//! (plain, pattern and sharded ones), it pipelines commands sent concurrently
//! on one connection, and it speaks Redis Cluster including sharded pub/sub.
//! pubmesh also reconciles its own subscription set after every reconnect, so
//! an outage at start-up heals the same way.
//!
//! This file holds the relay itself and its `Relay` implementation; its
//! parts live beside it: the shared state (`state.rs`), publishing and retry
//! (`publisher.rs`), inbound envelopes (`inbound.rs`), subscriptions
//! (`interest.rs`), and membership, heartbeats and probes (`membership.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fred::prelude::*;
use parking_lot::Mutex;
use pubmesh_cluster_proto::{self as proto, Body, Topics};
use tokio::sync::mpsc;

use super::dedup::{Groups, SeenSeqs};
use super::health::ServerHealth;
use super::inbound::start_reader;
use super::interest::interest_loop;
use super::membership::{heartbeat_loop, probe_loop};
use super::publisher::publish_loop;
use super::queue::{Budget, Lane};
use super::routing::{ack_loop, discovery_problem};
use super::state::{unix_now, Inner, Server, Wishes, MIN_ENVELOPE_COST};
use super::store::RedisStore;
use super::views::Interests;
use super::watermark::Watermark;
use crate::config::Config;
use crate::delivery::{BoxFuture, Delivery, InterestChange};
use crate::hashing::{HashMap, HashSet};
use crate::history::HistoryError;
use crate::metrics::Metrics;
use crate::policy::ChannelOptions;
use crate::relay::{Appended, NodeInfo, NodeView, Relay, RelayError, RelayStatus, Relayed};

pub use super::state::{HEARTBEAT, LINGER, PEER_TIMEOUT};

/// Relays through one or more Redis servers, or a Redis Cluster.
pub struct RedisRelay {
    inner: Arc<Inner>,
}

impl RedisRelay {
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        store: Arc<RedisStore>,
    ) -> Result<Self, RelayError> {
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
            // fred keeps received messages in a broadcast ring of this many
            // slots (allocated up front, each holding one message until the
            // reader took it): size it so a full ring of the largest
            // envelopes stays within --relay-receive-bytes.
            let capacity = receive_capacity(config);
            let mut builder = Builder::from_config(redis_config);
            builder
                .with_performance_config(|p| {
                    p.broadcast_channel_capacity = 8;
                    p.default_command_timeout = Duration::from_secs(2);
                })
                .with_connection_config(|c| {
                    c.connection_timeout = Duration::from_secs(2);
                    c.max_command_attempts = 1;
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 50, 500, 2));
            let publisher = builder
                .build()
                .map_err(|e| RelayError::Config(e.to_string()))?;
            builder.with_performance_config(|p| p.broadcast_channel_capacity = capacity);
            let subscriber = builder
                .build_subscriber_client()
                .map_err(|e| RelayError::Config(e.to_string()))?;
            crate::redis_connect::log_outages(&publisher, &url, "relay publisher", None);
            let reconnects = Some(metrics.relay_subscriber_reconnects.clone());
            crate::redis_connect::log_outages(&subscriber, &url, "relay subscriber", reconnects);
            servers.push(Server {
                url: crate::redis_connect::redacted(&url),
                publisher,
                subscriber,
                lane: Arc::new(Lane::default()),
                health: ServerHealth::new(crate::redis_connect::redacted(&url)),
            });
        }
        let limits = config.relay.clone();
        let budget = Budget::new(limits.queue_bytes, metrics.relay_queue_bytes.clone());
        Ok(RedisRelay {
            inner: Arc::new(Inner {
                node_id: config.node_id.clone(),
                topics: Topics::new(&config.redis_prefix),
                sharded: config.redis_cluster,
                addresses_peers: config.relay.interest_routing
                    && config.relay.node_addressing
                    && servers.len() == 1
                    && !config.redis_cluster,
                owns_channels: config.relay.owned_channels
                    && servers.len() == 1
                    && !config.redis_cluster,
                namespaces: config.namespaces.clone(),
                metrics,
                servers,
                // Start above anything an earlier run of this node id sent,
                // so receivers' duplicate filters never mistake a restarted
                // node's envelopes for copies. Even: see `publish`.
                seq: AtomicU64::new(proto::now_micros() * 2),
                started_unix: unix_now(),
                node: OnceLock::new(),
                store,
                peers: Mutex::new(HashMap::default()),
                wishes: Mutex::new(Wishes::default()),
                wished: tokio::sync::Notify::new(),
                applied: Watermark::new(0),
                budget,
                ordering: Mutex::new(()),
                seen: Mutex::new(SeenSeqs::new(limits.retry)),
                groups: Mutex::new(Groups::new(
                    limits.retry,
                    limits.queue_bytes / MIN_ENVELOPE_COST,
                )),
                limits,
                requests: Mutex::new(HashMap::default()),
                interests: Interests::new(config.relay.interest_routing),
                leaving: AtomicBool::new(false),
            }),
        })
    }
}

/// Slots of fred's receive ring: as many of the largest envelopes
/// (`--max-message-size` plus 1 KiB) as fit in `--relay-receive-bytes`,
/// rounded down to a power of two (tokio rounds up), at least 64.
fn receive_capacity(config: &Config) -> usize {
    let largest = config.max_message_size + 1024;
    let n = (config.relay.receive_bytes / largest).max(64);
    if n.is_power_of_two() {
        n
    } else {
        n.next_power_of_two() / 2
    }
}

impl Relay for RedisRelay {
    fn start(&self, node: Arc<dyn NodeView>) -> BoxFuture<'_, Result<(), RelayError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if inner.node.set(node).is_err() {
                return Err(RelayError::Config("relay started twice".into()));
            }
            for (i, server) in inner.servers.iter().enumerate() {
                drop(server.publisher.connect());
                drop(server.subscriber.connect());
                drop(server.subscriber.manage_subscriptions());
                tokio::spawn(publish_loop(inner.clone(), i, server.lane.clone()));
                start_reader(inner.clone(), i);
            }
            tokio::spawn(interest_loop(inner.clone()));
            tokio::spawn(ack_loop(inner.clone()));
            // Start degraded rather than fail when Redis is down: the clients
            // keep reconnecting and /readyz reports it meanwhile.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            for server in &inner.servers {
                let connected = async {
                    server.publisher.wait_for_connect().await?;
                    server.subscriber.wait_for_connect().await
                };
                let ready = tokio::time::timeout_at(deadline, connected).await;
                if !matches!(ready, Ok(Ok(()))) {
                    tracing::warn!(url = %server.url, "Redis not reachable yet; starting degraded");
                }
            }
            // Let the subscriptions settle so the first probe can succeed.
            while !inner.synced() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // The first heartbeat goes out once the publisher is connected
            // (or the start-up wait gave up).
            tokio::spawn(heartbeat_loop(inner.clone()));
            tokio::spawn(probe_loop(inner.clone()));
            Ok(())
        })
    }

    fn publish(&self, delivery: &Delivery, confirm: bool) -> Relayed {
        self.inner.publish(delivery, confirm)
    }

    fn publish_history<'a>(
        &'a self,
        delivery: &'a Delivery,
        options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<Appended, HistoryError>> {
        Box::pin(async move {
            let channel = delivery.channel.as_deref().unwrap_or_default();
            let spec = self.inner.spec(channel, delivery);
            let key = delivery.idempotency.as_deref();
            let (position, duplicate) = self
                .inner
                .store
                .append_publish(
                    channel,
                    &delivery.data,
                    options,
                    Some(spec),
                    key,
                    delivery.event.as_deref(),
                )
                .await?;
            Ok(Appended {
                position,
                echoed: true,
                relayed: true,
                duplicate,
            })
        })
    }

    fn settle_within(&self) -> Duration {
        // The retry window, plus one unconfirmed pipeline past it.
        self.inner.limits.retry + self.inner.limits.probe.max(Duration::from_secs(1)) * 2
    }

    fn interest(&self, change: &InterestChange) {
        let inner = &self.inner;
        {
            let mut wishes = inner.wishes.lock();
            let ticket = wishes.requested + 1;
            let Wishes { pending, adds, .. } = &mut *wishes;
            let mut wish = |name: &str, channel: bool, wanted: bool| {
                let topic = if channel {
                    inner.topics.channel(name)
                } else {
                    inner.topics.user(name)
                };
                let key = (inner.server_for(name), topic);
                if wanted {
                    adds.insert(key.clone(), ticket);
                }
                pending.insert(key, wanted);
            };
            // This node's channels that name it need no subscription
            // (publishers send them to its inbox).
            for c in &change.channels_added {
                if !inner.stays_off_redis(c) {
                    wish(c, true, true);
                }
            }
            for c in &change.channels_removed {
                if !inner.stays_off_redis(c) {
                    wish(c, true, false);
                }
            }
            for u in &change.users_added {
                wish(u, false, true);
            }
            for u in &change.users_removed {
                wish(u, false, false);
            }
            wishes.requested = ticket;
        }
        inner.wished.notify_one();
    }

    fn interest_applied<'a>(
        &'a self,
        channels: &'a [String],
        users: &'a [String],
    ) -> BoxFuture<'a, Result<(), RelayError>> {
        let inner = &self.inner;
        // Each topic with the server that holds it. A channel that names
        // this node waits for nothing: its inbox has been subscribed since
        // the node started, and every publisher sends the channel's
        // envelopes there.
        let keys: Vec<(usize, String)> = channels
            .iter()
            .filter(|c| !inner.stays_off_redis(c))
            .map(|c| (inner.server_for(c), inner.topics.channel(c)))
            .chain(
                users
                    .iter()
                    .map(|u| (inner.server_for(u), inner.topics.user(u))),
            )
            .collect();
        if keys.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        // The latest change asking for one of these topics, if it is not
        // in place yet (its entry goes once it is).
        let ticket = {
            let wishes = inner.wishes.lock();
            let done = inner.applied.level();
            keys.iter()
                .filter_map(|key| wishes.adds.get(key).copied())
                .filter(|&t| t > done)
                .max()
        };
        let wait = inner.limits.join_timeout;
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + wait;
            if let Some(ticket) = ticket {
                // Woken once, when the interest task has applied `ticket`.
                match tokio::time::timeout_at(deadline, inner.applied.reached(ticket)).await {
                    Ok(()) => {}
                    Err(_) => {
                        inner.metrics.relay_join_timeouts.inc();
                        return Err(RelayError::Unavailable(format!(
                            "Redis did not confirm the subscription within {} ms \
                             (--relay-join-timeout-ms)",
                            wait.as_millis()
                        )));
                    }
                }
            }
            // Every peer must know this node listens before the join is
            // answered, or it might keep a publish off Redis.
            let topics: Vec<String> = keys.into_iter().map(|(_, topic)| topic).collect();
            if inner.peers_applied(&topics, deadline).await {
                Ok(())
            } else {
                inner.metrics.relay_join_timeouts.inc();
                Err(RelayError::Unavailable(format!(
                    "peers did not acknowledge the subscription within {} ms \
                     (--relay-join-timeout-ms)",
                    wait.as_millis()
                )))
            }
        })
    }

    fn disconnect(&self, client_ids: &[String], root_ids: &[String]) {
        self.inner.control(Body::Disconnect {
            client_ids: client_ids.to_vec(),
            root_ids: root_ids.to_vec(),
        });
    }

    fn peers(&self) -> Vec<NodeInfo> {
        let now = unix_now();
        let mut peers: Vec<NodeInfo> = self
            .inner
            .peers
            .lock()
            .values()
            .filter(|p| p.seen.elapsed() < PEER_TIMEOUT)
            .map(|p| NodeInfo {
                node_id: p.info.node_id.clone(),
                connections: p.info.connections,
                users: p.info.users,
                channels: p.info.channels,
                subscriptions: p.info.subscriptions,
                ready: p.info.ready,
                version: p.info.version.clone(),
                uptime_seconds: now.saturating_sub(p.info.started_at_unix),
                is_self: false,
            })
            .collect();
        peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        peers
    }

    fn remote_channels(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, RelayError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let expected: HashSet<String> = self.peers().into_iter().map(|p| p.node_id).collect();
            if expected.is_empty() {
                return Ok(Vec::new());
            }
            let request_id = rand::random::<u64>();
            let (tx, mut rx) = mpsc::unbounded_channel();
            inner.requests.lock().insert(request_id, tx);
            inner.control(Body::ChannelsRequest {
                request_id,
                reply_to: inner.topics.node(&inner.node_id),
            });
            let mut answered = HashSet::default();
            let mut merged = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while answered.len() < expected.len() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((origin, channels))) => {
                        if answered.insert(origin) {
                            merged.extend(channels);
                        }
                    }
                    _ => break,
                }
            }
            inner.requests.lock().remove(&request_id);
            Ok(merged)
        })
    }

    fn status(&self) -> RelayStatus {
        let mut problems = self.inner.problems();
        problems.extend(discovery_problem(&self.inner));
        if problems.is_empty() {
            RelayStatus {
                healthy: true,
                detail: format!("redis ({} servers)", self.inner.servers.len()),
            }
        } else {
            RelayStatus {
                healthy: false,
                detail: format!("redis not usable: {}", problems.join("; ")),
            }
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            // A heartbeat that reached peers after `Leaving` would make them
            // take this node back until it timed out.
            inner.leaving.store(true, Ordering::Release);
            inner.control(Body::Leaving {
                node_id: inner.node_id.clone(),
            });
            // Let the publisher send it (and whatever is queued).
            let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
            while inner.budget.held() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            for server in &inner.servers {
                let _ = server.subscriber.quit().await;
                let _ = server.publisher.quit().await;
            }
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
