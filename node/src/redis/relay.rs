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
//! Publishing never blocks: messages go to queues per server (one per lane,
//! chosen by topic), bounded together in bytes (`--relay-queue-bytes`, see
//! [`super::queue`]), each drained by a task that pipelines whole batches in
//! one round trip and sends the next only after it completes, so one
//! publisher's messages to one topic stay in order. A batch Redis does not
//! confirm is kept and sent again until its deadline (`--relay-retry-ms`):
//! after an outage a lane first waits until its own subscriptions are back
//! and every known peer has heartbeated again (a node heartbeats only while
//! its subscriptions are in place), so what was held reaches every node.
//! Receivers drop the copies this can make ([`super::dedup`]).
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::Value as RedisValue;
use parking_lot::Mutex;
use pubmesh_cluster_proto::{self as proto, Body, Envelope, Extra, Targets, Topics};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::client::shard_index;
use super::dedup::{Groups, SeenSeqs};
use super::envelope::{delivery_of, extra_of};
use super::health::ServerHealth;
use super::queue::{Ack, Budget, Lane, Outgoing, OVERHEAD};
use super::store::{PublishSpec, RedisStore};
use crate::config::{Config, RelayLimits};
use crate::delivery::{BoxFuture, Delivery, InterestChange, Position, Target};
use crate::history::HistoryError;
use crate::metrics::Metrics;
use crate::policy::ChannelOptions;
use crate::relay::{Appended, NodeInfo, NodeView, Relay, RelayError, RelayStatus, Relayed};

/// How long a topic stays subscribed after its last local member left.
pub const LINGER: Duration = Duration::from_secs(2);
/// How often a node announces itself.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A peer silent this long is dropped from membership.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// Publishing lanes per server: each has its own queue and task, so several
/// pipelines are in flight at once. A topic always uses the same lane, which
/// keeps one publisher's messages to a topic in order.
const LANES: usize = 4;
/// Most commands sent in one pipeline.
const BATCH: usize = 512;
/// Longest a lane waits before it looks again at a Redis that is down.
const OUTAGE_POLL: Duration = Duration::from_millis(20);
/// Smallest charge of a queued envelope: bounds how many can be in flight.
const MIN_ENVELOPE_COST: usize = OVERHEAD + 32;

/// One Redis server (or the cluster).
struct Server {
    url: String,
    publisher: Client,
    subscriber: SubscriberClient,
    lanes: Vec<Arc<Lane>>,
    health: ServerHealth,
}

/// Subscription wishes, coalesced per topic until the interest task takes
/// them (a join and a leave of one topic in between cancel out): bounded by
/// the number of distinct topics, not by the churn.
#[derive(Default)]
struct Wishes {
    /// (server, topic) → wanted (true) or not (false).
    pending: HashMap<(usize, String), bool>,
}

struct Peer {
    info: proto::NodeInfo,
    seen: Instant,
}

/// Where one peer's answer to a channels query goes: (peer, its channels).
type ReplySender = mpsc::UnboundedSender<(String, Vec<(String, u64)>)>;

struct Inner {
    node_id: String,
    topics: Topics,
    sharded: bool,
    metrics: Arc<Metrics>,
    servers: Vec<Server>,
    seq: AtomicU64,
    started_unix: u64,
    node: OnceLock<Arc<dyn NodeView>>,
    /// History and presence; history appends publish through it.
    store: Arc<RedisStore>,
    peers: Mutex<HashMap<String, Peer>>,
    wishes: Mutex<Wishes>,
    wished: tokio::sync::Notify,
    limits: RelayLimits,
    budget: Budget,
    /// Held while a publish takes its sequence number and queues its
    /// envelopes, so sequence numbers rise in queue order on every topic.
    ordering: Mutex<()>,
    seen: Mutex<SeenSeqs>,
    groups: Mutex<Groups>,
    /// Open `/api/channels` queries: request id → where replies go.
    requests: Mutex<HashMap<u64, ReplySender>>,
}

/// Relays through one or more Redis servers, or a Redis Cluster.
pub struct RedisRelay {
    inner: Arc<Inner>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
            crate::redis_connect::log_outages(&publisher, &url, "relay publisher");
            crate::redis_connect::log_outages(&subscriber, &url, "relay subscriber");
            servers.push(Server {
                url: crate::redis_connect::redacted(&url),
                publisher,
                subscriber,
                lanes: (0..LANES).map(|_| Arc::new(Lane::default())).collect(),
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
                metrics,
                servers,
                // Start above anything an earlier run of this node id sent,
                // so receivers' duplicate filters never mistake a restarted
                // node's envelopes for copies. Even: see `publish`.
                seq: AtomicU64::new(proto::now_micros() * 2),
                started_unix: unix_now(),
                node: OnceLock::new(),
                store,
                peers: Mutex::new(HashMap::new()),
                wishes: Mutex::new(Wishes::default()),
                wished: tokio::sync::Notify::new(),
                budget,
                ordering: Mutex::new(()),
                seen: Mutex::new(SeenSeqs::new(limits.retry)),
                groups: Mutex::new(Groups::new(
                    limits.retry,
                    limits.queue_bytes / MIN_ENVELOPE_COST,
                )),
                limits,
                requests: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Inner {
    /// A fresh even sequence number (odd ones mark multi-channel publishes).
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(2, Ordering::Relaxed)
    }

    fn server_for(&self, name: &str) -> usize {
        shard_index(name, self.servers.len())
    }

    fn envelope(&self, body: Body) -> Bytes {
        proto::encode(&Envelope::new(self.node_id.clone(), self.next_seq(), body))
    }

    /// Queue one envelope for a topic on a server (the caller holds
    /// `ordering` when the envelope carries a sequence number that receivers
    /// order by); false when the byte budget refused it.
    fn send(&self, server: usize, item: Outgoing, kind: &str) -> bool {
        if !self.budget.try_take(item.cost) {
            self.metrics
                .relay_dropped
                .with_label_values(&["queue_full"])
                .inc();
            item.refuse();
            return false;
        }
        let lanes = &self.servers[server].lanes;
        let lane = shard_index(&item.topic, lanes.len());
        self.metrics.relay_pipeline_depth.inc();
        self.metrics
            .relay_published
            .with_label_values(&[kind])
            .inc();
        lanes[lane].push(item);
        true
    }

    fn outgoing(&self, topic: String, payload: Bytes, ack: Option<&Arc<Ack>>) -> Outgoing {
        Outgoing::new(topic, payload, self.limits.retry, ack.cloned())
    }

    fn control(&self, body: Body) {
        let kind = body.kind().as_str();
        let _order = self.ordering.lock();
        let payload = self.envelope(body);
        let item = self.outgoing(self.topics.control(), payload, None);
        self.send(0, item, kind);
    }

    fn deliver_envelope(&self, seq: u64, targets: Targets, frame: &Bytes, extra: &Extra) -> Bytes {
        proto::encode(&Envelope::new(
            self.node_id.clone(),
            seq,
            Body::Deliver(proto::Delivery {
                targets,
                frame: frame.clone(),
                exclude_client: None,
                extra: extra.clone(),
            }),
        ))
    }

    /// One envelope per topic, each carrying only its own names; ids are
    /// de-duplicated first.
    fn publish(&self, delivery: &Delivery) -> Relayed {
        let target = &delivery.target;
        let frame = Bytes::from(delivery.data.clone());
        let extra = extra_of(delivery);
        // (server, topic, targets) of every envelope.
        let mut parts: Vec<(usize, String, Targets)> = Vec::new();
        let mut group = false;
        match target {
            Target::Channels(names) | Target::Users(names) => {
                let channels = matches!(target, Target::Channels(_));
                let mut seen = HashSet::with_capacity(names.len());
                for name in names {
                    if !seen.insert(name.as_str()) {
                        continue;
                    }
                    let (topic, targets) = if channels {
                        (
                            self.topics.channel(name),
                            Targets::Channels(vec![name.clone()]),
                        )
                    } else {
                        (self.topics.user(name), Targets::Users(vec![name.clone()]))
                    };
                    parts.push((self.server_for(name), topic, targets));
                }
                // A connection may be in several of the channels (never in
                // several users): mark the envelopes as one publish.
                group = channels && parts.len() > 1;
            }
            Target::Clients(ids) => {
                let mut by_node: HashMap<&str, Vec<String>> = HashMap::new();
                let mut seen = HashSet::with_capacity(ids.len());
                for id in ids {
                    if !seen.insert(id.as_str()) {
                        continue;
                    }
                    if let Some(owner) = proto::owner_node(id) {
                        by_node.entry(owner).or_default().push(id.clone());
                    }
                }
                for (owner, ids) in by_node {
                    parts.push((
                        self.server_for(owner),
                        self.topics.node(owner),
                        Targets::Clients(ids),
                    ));
                }
            }
            Target::All => parts.push((0, self.topics.all(), Targets::All)),
        }
        if parts.is_empty() {
            return Relayed::Nothing;
        }
        let (ack, rx) = Ack::new();
        let mut queued = 0;
        {
            let _order = self.ordering.lock();
            let shared = group.then(|| self.next_seq() + 1);
            for (server, topic, targets) in parts {
                let seq = shared.unwrap_or_else(|| self.next_seq());
                let payload = self.deliver_envelope(seq, targets, &frame, &extra);
                let item = self.outgoing(topic, payload, Some(&ack));
                if self.send(server, item, "deliver") {
                    queued += 1;
                }
            }
        }
        ack.done(true);
        if queued == 0 {
            Relayed::Failed
        } else {
            Relayed::Pending(rx)
        }
    }

    /// Handle one message from server `server`'s subscriber connection.
    fn receive(&self, server: usize, topic: &str, payload: &[u8]) {
        let Some(node) = self.node.get() else {
            return;
        };
        let envelope = match proto::decode(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                self.metrics
                    .relay_dropped
                    .with_label_values(&["decode"])
                    .inc();
                tracing::debug!(error = %e, "undecodable relay message");
                return;
            }
        };
        let mine = envelope.origin == self.node_id;
        let kind = envelope.body.kind().as_str();
        match envelope.body {
            Body::Deliver(delivery) => {
                if mine {
                    return;
                }
                self.metrics.relay_received.with_label_values(&[kind]).inc();
                // Its publisher has reported it failed long ago (a write the
                // client library replayed after a reconnect): drop it.
                let age = proto::now_micros().saturating_sub(envelope.sent_at_micros);
                if age > (self.limits.retry + super::dedup::MARGIN).as_micros() as u64 {
                    self.metrics
                        .relay_dropped
                        .with_label_values(&["expired"])
                        .inc();
                    return;
                }
                if !self
                    .seen
                    .lock()
                    .fresh(&envelope.origin, topic, envelope.seq)
                {
                    self.metrics
                        .relay_dropped
                        .with_label_values(&["duplicate"])
                        .inc();
                    return;
                }
                let Ok(data) = Utf8Bytes::try_from(delivery.frame) else {
                    return;
                };
                let extra = delivery.extra;
                let local = |target: Target| delivery_of(target, data.clone(), extra.clone(), None);
                match delivery.targets {
                    Targets::Channels(v) if v.len() == 1 && envelope.seq % 2 == 1 => {
                        // One envelope of a multi-channel publish: skip the
                        // connections an earlier sibling reached.
                        let before =
                            self.groups
                                .lock()
                                .record(&envelope.origin, envelope.seq, &v[0]);
                        let Some(before) = before else { return };
                        let target = Target::Channels(v);
                        if before.is_empty() {
                            node.deliver(&local(target));
                        } else {
                            node.deliver_excluding(&local(target), &before);
                        }
                    }
                    Targets::Channels(v) if v.len() > 1 => {
                        // An older node's envelope: the full list on every topic.
                        let first = self
                            .groups
                            .lock()
                            .record(&envelope.origin, envelope.seq, "")
                            .is_some_and(|b| b.is_empty());
                        if first {
                            node.deliver(&local(Target::Channels(v)));
                        }
                    }
                    targets => {
                        let target = match targets {
                            Targets::Channels(v) => Target::Channels(v),
                            Targets::Users(v) => Target::Users(v),
                            Targets::Clients(v) => Target::Clients(v),
                            Targets::All => Target::All,
                        };
                        node.deliver(&local(target));
                    }
                }
                self.observe_latency(envelope.sent_at_micros);
            }
            Body::Publication {
                channel,
                frame,
                offset,
                epoch,
                extra,
            } => {
                self.metrics.relay_received.with_label_values(&[kind]).inc();
                let Ok(data) = Utf8Bytes::try_from(frame) else {
                    return;
                };
                let position = Position { offset, epoch };
                let target = Target::Channels(vec![channel]);
                node.deliver(&delivery_of(target, data, extra, Some(position)));
                if !mine {
                    self.observe_latency(envelope.sent_at_micros);
                }
            }
            Body::Heartbeat(info) => {
                if mine {
                    // The readiness canary, sent to this node's own inbox.
                    if topic == self.topics.node(&self.node_id) {
                        self.servers[server].health.canary_received(envelope.seq);
                    }
                    return;
                }
                self.metrics.relay_received.with_label_values(&[kind]).inc();
                let mut peers = self.peers.lock();
                peers.insert(
                    envelope.origin.clone(),
                    Peer {
                        info,
                        seen: Instant::now(),
                    },
                );
                self.metrics.relay_peers.set(peers.len() as i64);
            }
            Body::Leaving { node_id } => {
                if mine {
                    return;
                }
                self.metrics.relay_received.with_label_values(&[kind]).inc();
                let mut peers = self.peers.lock();
                peers.remove(&node_id);
                self.metrics.relay_peers.set(peers.len() as i64);
            }
            Body::Disconnect {
                client_ids,
                root_ids,
            } => {
                if mine {
                    return;
                }
                self.metrics.relay_received.with_label_values(&[kind]).inc();
                node.disconnect_local(&client_ids, &root_ids);
            }
            Body::ChannelsRequest {
                request_id,
                reply_to,
            } => {
                if mine {
                    return;
                }
                self.metrics.relay_received.with_label_values(&[kind]).inc();
                let channels = node.channel_counts();
                let server = match self.topics.parse(&reply_to) {
                    Some(proto::TopicKind::Node(owner)) => self.server_for(owner),
                    _ => 0,
                };
                let _order = self.ordering.lock();
                let payload = self.envelope(Body::ChannelsReply {
                    request_id,
                    channels,
                });
                let item = self.outgoing(reply_to, payload, None);
                self.send(server, item, "channels_reply");
            }
            Body::ChannelsReply {
                request_id,
                channels,
            } => {
                self.metrics.relay_received.with_label_values(&[kind]).inc();
                if let Some(tx) = self.requests.lock().get(&request_id) {
                    let _ = tx.send((envelope.origin, channels));
                }
            }
        }
    }

    /// True when every server's subscriptions are in place.
    fn synced(&self) -> bool {
        self.servers.iter().all(|s| s.health.synced())
    }

    /// After an outage a lane may send what it held once its own
    /// subscriptions are back and every known peer has heartbeated since
    /// `back` (peers heartbeat only with their subscriptions in place), so
    /// the held messages reach every node that is still alive.
    fn settled(&self, back: Instant) -> bool {
        self.synced() && self.peers.lock().values().all(|p| p.seen > back)
    }

    fn observe_latency(&self, sent_at_micros: u64) {
        let age = proto::now_micros().saturating_sub(sent_at_micros);
        self.metrics
            .cross_node_latency
            .observe(age as f64 / 1_000_000.0);
    }

    fn info(&self) -> proto::NodeInfo {
        let node = self.node.get().map(|n| n.info());
        proto::NodeInfo {
            node_id: self.node_id.clone(),
            started_at_unix: self.started_unix,
            connections: node.as_ref().map_or(0, |n| n.connections),
            users: node.as_ref().map_or(0, |n| n.users),
            channels: node.as_ref().map_or(0, |n| n.channels),
            subscriptions: node.as_ref().map_or(0, |n| n.subscriptions),
            api_addr: None,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ready: node.as_ref().is_none_or(|n| n.ready),
        }
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

/// Is this error one that sending again may fix? Everything but a command
/// Redis (or the client) rejects as such: connection errors, timeouts and
/// routing failures while the connection changes state are all retried until
/// the envelope's deadline.
fn transient(e: &Error) -> bool {
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
async fn publish_loop(inner: Arc<Inner>, server: usize, lane: Arc<Lane>) {
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

/// Read one server's subscriber connection.
async fn receive_loop(inner: Arc<Inner>, server: usize) {
    let mut rx = inner.servers[server].subscriber.message_rx();
    loop {
        match rx.recv().await {
            Ok(message) => {
                if let Some(bytes) = message.value.as_bytes() {
                    inner.receive(server, &message.channel, bytes);
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                inner
                    .metrics
                    .relay_dropped
                    .with_label_values(&["lagged"])
                    .inc_by(n);
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Probe every server every `--relay-probe-ms`: a `PING` with that deadline
/// and a canary heartbeat to this node's own inbox (see [`super::health`]).
async fn probe_loop(inner: Arc<Inner>) {
    let interval = inner.limits.probe;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let inbox = inner.topics.node(&inner.node_id);
    loop {
        tick.tick().await;
        for i in 0..inner.servers.len() {
            let inner = inner.clone();
            let inbox = inbox.clone();
            tokio::spawn(async move {
                let server = &inner.servers[i];
                let client = &server.publisher;
                if !client.is_connected() {
                    return;
                }
                let ping = tokio::time::timeout(interval, client.ping::<String>(None)).await;
                server.health.ping_result(match ping {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("PING timed out".into()),
                });
                let seq = inner.next_seq();
                let payload = proto::encode(&Envelope::new(
                    inner.node_id.clone(),
                    seq,
                    Body::Heartbeat(inner.info()),
                ));
                server.health.canary_sent(seq);
                let sent = if inner.sharded {
                    tokio::time::timeout(interval, client.spublish::<(), _, _>(inbox, payload))
                        .await
                } else {
                    tokio::time::timeout(interval, client.publish::<(), _, _>(inbox, payload)).await
                };
                if !matches!(sent, Ok(Ok(()))) {
                    tracing::debug!(server = %server.url, "canary publish failed");
                }
            });
        }
        let up = inner.update_health();
        inner.metrics.relay_up.set(up as i64);
    }
}

/// Keep each server's subscriptions equal to what local members need.
///
/// Wishes are coalesced per topic ([`Wishes`]) and applied in batches, at most
/// `--relay-interest-rate` topic changes per second (adds first; removals can
/// wait, an extra subscription only costs a little traffic). After a
/// reconnect every needed topic is subscribed again at once, outside that
/// bound, and only then does the server count as synced.
async fn interest_loop(inner: Arc<Inner>) {
    let n = inner.servers.len();
    let mut desired: Vec<HashSet<String>> = vec![HashSet::new(); n];
    let mut confirmed: Vec<HashSet<String>> = vec![HashSet::new(); n];
    let mut lingering: HashMap<(usize, String), Instant> = HashMap::new();
    // Set when a server's connection dropped (or never came up).
    let mut lost = vec![true; n];
    // Topics every node always listens to: its inbox (on every server, as
    // the readiness canary's return path), broadcast and control.
    for topics in desired.iter_mut() {
        topics.insert(inner.topics.node(&inner.node_id));
    }
    desired[0].insert(inner.topics.all());
    desired[0].insert(inner.topics.control());
    let permanent: Vec<HashSet<String>> = desired.clone();
    let rate = f64::from(inner.limits.interest_rate);
    // Token bucket of topic changes: one second's worth of burst.
    let mut tokens = rate;
    let mut refilled = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.wished.notified() => {}
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        tokens = (tokens + now.duration_since(refilled).as_secs_f64() * rate).min(rate);
        refilled = now;
        let wishes = std::mem::take(&mut inner.wishes.lock().pending);
        for ((s, topic), wanted) in wishes {
            if wanted {
                lingering.remove(&(s, topic.clone()));
                desired[s].insert(topic);
            } else if !permanent[s].contains(&topic) && desired[s].contains(&topic) {
                lingering.insert((s, topic), now + LINGER);
            }
        }
        lingering.retain(|(s, topic), until| {
            if *until <= now {
                desired[*s].remove(topic);
                false
            } else {
                true
            }
        });
        let mut pending = 0usize;
        for s in 0..n {
            let server = &inner.servers[s];
            let subscriber = &server.subscriber;
            if !subscriber.is_connected() {
                if !lost[s] {
                    tracing::info!(server = %server.url, "subscriber connection lost");
                }
                lost[s] = true;
                server.health.set_synced(false);
                confirmed[s].clear();
                continue;
            }
            if lost[s] {
                // (Re)connected: take the hub's own view of local members too.
                if let Some(node) = inner.node.get() {
                    let (channels, users) = node.interest_now();
                    let channels = channels
                        .into_iter()
                        .map(|c| (inner.server_for(&c), inner.topics.channel(&c)));
                    let users = users
                        .into_iter()
                        .map(|u| (inner.server_for(&u), inner.topics.user(&u)));
                    for (owner, topic) in channels.chain(users) {
                        if owner == s {
                            desired[s].insert(topic);
                        }
                    }
                }
                let add: Vec<String> = desired[s].difference(&confirmed[s]).cloned().collect();
                let mut ok = true;
                for chunk in groups(&add, inner.sharded) {
                    if subscribe(&inner, s, &chunk, true).await {
                        confirmed[s].extend(chunk.iter().cloned());
                        inner.metrics.relay_interest_ops.inc_by(chunk.len() as u64);
                    } else {
                        ok = false;
                        break;
                    }
                }
                if ok {
                    if !confirmed[s].is_empty() && confirmed[s].len() > permanent[s].len() {
                        inner.metrics.relay_resubscribes.inc();
                    }
                    tracing::info!(server = %server.url, topics = add.len(), "subscriptions in place");
                    lost[s] = false;
                    server.health.set_synced(true);
                    // Tell peers at once (a held-back publish may wait for it).
                    inner.heartbeat_now();
                }
                continue;
            }
            let mut add: Vec<String> = desired[s].difference(&confirmed[s]).cloned().collect();
            let mut remove: Vec<String> = confirmed[s].difference(&desired[s]).cloned().collect();
            let budget = tokens.floor() as usize;
            add.truncate(budget);
            remove.truncate(budget - add.len());
            pending += desired[s].difference(&confirmed[s]).count()
                + confirmed[s].difference(&desired[s]).count()
                - add.len()
                - remove.len();
            for chunk in groups(&add, inner.sharded) {
                if subscribe(&inner, s, &chunk, true).await {
                    tokens -= chunk.len() as f64;
                    inner.metrics.relay_interest_ops.inc_by(chunk.len() as u64);
                    confirmed[s].extend(chunk.iter().cloned());
                } else {
                    break;
                }
            }
            for chunk in groups(&remove, inner.sharded) {
                if subscribe(&inner, s, &chunk, false).await {
                    tokens -= chunk.len() as f64;
                    inner.metrics.relay_interest_ops.inc_by(chunk.len() as u64);
                    for topic in &chunk {
                        confirmed[s].remove(topic);
                    }
                }
            }
        }
        inner.metrics.relay_interest_pending.set(pending as i64);
        let total: usize = confirmed.iter().map(HashSet::len).sum();
        inner.metrics.relay_subscriptions.set(total as i64);
    }
}

/// (Un)subscribe one batch on server `s`; true when Redis confirmed it.
async fn subscribe(inner: &Inner, s: usize, topics: &[String], add: bool) -> bool {
    let subscriber = &inner.servers[s].subscriber;
    let topics = topics.to_vec();
    let result = match (inner.sharded, add) {
        (true, true) => subscriber.ssubscribe(topics).await,
        (false, true) => subscriber.subscribe(topics).await,
        (true, false) => subscriber.sunsubscribe(topics).await,
        (false, false) => subscriber.unsubscribe(topics).await,
    };
    if let Err(e) = &result {
        tracing::debug!(error = %e, "subscription change failed; will retry");
    }
    result.is_ok()
}

/// Split topics into (un)subscribe batches: at most 1000 per command and,
/// for sharded pub/sub, one hash slot per command (Redis Cluster refuses
/// `SSUBSCRIBE` across slots).
fn groups(topics: &[String], sharded: bool) -> Vec<Vec<String>> {
    if !sharded {
        return topics.chunks(1000).map(<[String]>::to_vec).collect();
    }
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for topic in topics {
        by_slot
            .entry(fred::util::redis_keyslot(topic.as_bytes()))
            .or_default()
            .push(topic.clone());
    }
    by_slot
        .into_values()
        .flat_map(|v| v.chunks(1000).map(<[String]>::to_vec).collect::<Vec<_>>())
        .collect()
}

/// Announce this node every [`HEARTBEAT`] (only while its subscriptions are
/// in place) and forget peers silent for [`PEER_TIMEOUT`] while this node
/// could hear them; each one forgotten is reported to the node once.
async fn heartbeat_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut was_synced = false;
    loop {
        tick.tick().await;
        let synced = inner.synced();
        if synced {
            inner.heartbeat_now();
        }
        let mut gone = Vec::new();
        {
            let mut peers = inner.peers.lock();
            if synced && !was_synced {
                // Deaf until now: give every peer a fresh chance to be heard.
                let now = Instant::now();
                for peer in peers.values_mut() {
                    peer.seen = peer.seen.max(now);
                }
            }
            if synced {
                peers.retain(|id, p| {
                    let alive = p.seen.elapsed() < PEER_TIMEOUT;
                    if !alive {
                        gone.push(id.clone());
                    }
                    alive
                });
            }
            inner.metrics.relay_peers.set(peers.len() as i64);
        }
        was_synced = synced;
        if let Some(node) = inner.node.get() {
            for id in gone {
                tracing::warn!(peer = %id, "peer silent for {PEER_TIMEOUT:?}; declared gone");
                let node = node.clone();
                tokio::spawn(async move { node.peer_gone(&id).await });
            }
        }
    }
}

impl Inner {
    /// Publish a heartbeat now, straight on the publisher connection (not
    /// through a lane: a lane may be waiting for peers' heartbeats).
    fn heartbeat_now(self: &Arc<Self>) {
        let inner = self.clone();
        tokio::spawn(async move {
            let payload = inner.envelope(Body::Heartbeat(inner.info()));
            let client = &inner.servers[0].publisher;
            let topic = inner.topics.control();
            let sent = if inner.sharded {
                tokio::time::timeout(HEARTBEAT, client.spublish::<(), _, _>(topic, payload)).await
            } else {
                tokio::time::timeout(HEARTBEAT, client.publish::<(), _, _>(topic, payload)).await
            };
            if matches!(sent, Ok(Ok(()))) {
                inner
                    .metrics
                    .relay_published
                    .with_label_values(&["heartbeat"])
                    .inc();
            }
        });
    }

    /// Which servers are unusable and why; updates the per-server gauges.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (i, server) in self.servers.iter().enumerate() {
            let connected = server.publisher.is_connected() && server.subscriber.is_connected();
            let problem = server.health.problem(connected, self.limits.probe);
            self.metrics
                .relay_server_up
                .with_label_values(&[&server.url])
                .set(problem.is_none() as i64);
            if let Some(p) = problem {
                problems.push(format!("shard {i} ({}): {p}", server.url));
            }
        }
        problems
    }

    fn update_health(&self) -> bool {
        self.problems().is_empty()
    }
}

impl Inner {
    /// How the append script publishes a history channel's publication.
    fn spec(&self, channel: &str, delivery: &Delivery) -> PublishSpec {
        PublishSpec {
            topic: self.topics.channel(channel),
            command: if self.sharded { "SPUBLISH" } else { "PUBLISH" },
            head: proto::encode_publication_head(
                &self.node_id,
                self.next_seq(),
                channel,
                delivery.data.as_bytes(),
                &Extra {
                    channel: None,
                    ..extra_of(delivery)
                },
            ),
        }
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
                for lane in &server.lanes {
                    tokio::spawn(publish_loop(inner.clone(), i, lane.clone()));
                }
                tokio::spawn(receive_loop(inner.clone(), i));
            }
            tokio::spawn(interest_loop(inner.clone()));
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

    fn publish(&self, delivery: &Delivery) -> Relayed {
        self.inner.publish(delivery)
    }

    fn publish_history<'a>(
        &'a self,
        delivery: &'a Delivery,
        options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<Appended, HistoryError>> {
        Box::pin(async move {
            let channel = delivery.channel.as_deref().unwrap_or_default();
            let spec = self.inner.spec(channel, delivery);
            let position = self
                .inner
                .store
                .append_publish(channel, &delivery.data, options, Some(spec))
                .await?;
            Ok(Appended {
                position,
                echoed: true,
                relayed: true,
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
            let mut wish = |name: &str, channel: bool, wanted: bool| {
                let topic = if channel {
                    inner.topics.channel(name)
                } else {
                    inner.topics.user(name)
                };
                wishes
                    .pending
                    .insert((inner.server_for(name), topic), wanted);
            };
            for c in &change.channels_added {
                wish(c, true, true);
            }
            for c in &change.channels_removed {
                wish(c, true, false);
            }
            for u in &change.users_added {
                wish(u, false, true);
            }
            for u in &change.users_removed {
                wish(u, false, false);
            }
        }
        inner.wished.notify_one();
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
            let mut answered = HashSet::new();
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
        let problems = self.inner.problems();
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
