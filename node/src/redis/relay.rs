//! The cluster relay over Redis pub/sub.
//!
//! Routing (topic names from `pubmesh_cluster_proto::Topics`):
//! - a channel's messages go to `{p}.ch.{{channel}}`, a user's to `{p}.u.{user}`;
//!   a node subscribes to those only while it has local members, and lets go
//!   [`LINGER`] after the last one leaves (so join/leave churn costs nothing;
//!   see [`super::interest`]);
//! - messages for client ids go straight to the owning node's inbox `{p}.n.{node}`;
//! - broadcasts use `{p}.all`; membership, disconnects and channel queries `{p}.ctl`.
//!
//! With several `--redis-url`s each name lives on one server chosen by
//! rendezvous hashing ([`super::client::shard_index`]); `{p}.all` and `{p}.ctl` live on
//! the first. With `--redis-cluster` every topic uses sharded pub/sub
//! (`SSUBSCRIBE`/`SPUBLISH`), which Redis Cluster routes to the topic's slot.
//!
//! Publishing never blocks: messages go to bounded queues per server (one per
//! lane, chosen by topic), each drained by a task that pipelines whole batches
//! in one round trip and sends the next only after it completes, so one
//! publisher's messages to one topic stay in order. Each server has a
//! dedicated subscriber connection whose reader only decodes and pushes to
//! outboxes. A node ignores the echo of its own messages (it delivered them
//! locally first); history publications are the exception: the store's
//! append script publishes them, and every node (this one included)
//! delivers them from Redis, in offset order.
//!
//! What travels is the protocol-neutral delivery (cluster-proto version 2:
//! data plus channel, event, kind, origin and audience); each node encodes
//! it for its own connections' protocols.
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
use super::interest::{interest_loop, Interest, Subscriptions};
use super::membership::{unix_now, Membership, HEARTBEAT};
use super::store::{PublishSpec, RedisStore};
use crate::config::Config;
use crate::delivery::{BoxFuture, Delivery, DeliveryKind, InterestChange, Position, Target};
use crate::history::HistoryError;
use crate::metrics::Metrics;
use crate::policy::ChannelOptions;
use crate::relay::{Appended, NodeInfo, NodeView, Relay, RelayError, RelayStatus};

pub use super::interest::LINGER;
pub use super::membership::PEER_TIMEOUT;
/// Messages waiting per Redis server before publishes are dropped.
const QUEUE: usize = 100_000;
/// Publishing lanes per server: each has its own queue and task, so several
/// pipelines are in flight at once. A topic always uses the same lane, which
/// keeps one publisher's messages to a topic in order.
const LANES: usize = 4;
/// Most commands sent in one pipeline.
const BATCH: usize = 512;
/// How many recent (origin, seq) pairs are remembered to drop duplicates.
const RECENT: usize = 4096;

/// One Redis server (or the cluster).
struct Server {
    url: String,
    publisher: Client,
    subscriber: SubscriberClient,
    lanes: Vec<mpsc::Sender<(String, Bytes)>>,
    /// Taken by the publisher task at start.
    lanes_rx: Mutex<Vec<mpsc::Receiver<(String, Bytes)>>>,
}

/// Recently seen (origin, seq) of multi-topic messages.
#[derive(Default)]
struct Recent {
    set: HashSet<(String, u64)>,
    order: VecDeque<(String, u64)>,
}

impl Recent {
    /// True the first time a pair is seen.
    fn first(&mut self, origin: &str, seq: u64) -> bool {
        let key = (origin.to_string(), seq);
        if self.set.contains(&key) {
            return false;
        }
        if self.order.len() >= RECENT {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(key.clone());
        self.order.push_back(key);
        true
    }
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
    membership: Membership,
    /// History and presence; history appends publish through it.
    store: Arc<RedisStore>,
    interest_tx: mpsc::UnboundedSender<Interest>,
    interest_rx: Mutex<Option<mpsc::UnboundedReceiver<Interest>>>,
    recent: Mutex<Recent>,
    /// Open `/api/channels` queries: request id → where replies go.
    requests: Mutex<HashMap<u64, ReplySender>>,
}

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
        let (interest_tx, interest_rx) = mpsc::unbounded_channel();
        Ok(RedisRelay {
            inner: Arc::new(Inner {
                node_id: config.node_id.clone(),
                topics: Topics::new(&config.redis_prefix),
                sharded: config.redis_cluster,
                metrics,
                servers,
                seq: AtomicU64::new(1),
                started_unix: unix_now(),
                node: OnceLock::new(),
                membership: Membership::default(),
                store,
                interest_tx,
                interest_rx: Mutex::new(Some(interest_rx)),
                recent: Mutex::new(Recent::default()),
                requests: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Inner {
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn server_for(&self, name: &str) -> usize {
        shard_index(name, self.servers.len())
    }

    fn envelope(&self, body: Body) -> Bytes {
        proto::encode(&Envelope::new(self.node_id.clone(), self.next_seq(), body))
    }

    /// Queue one payload for a topic on a server; false when dropped.
    fn send(&self, server: usize, topic: String, payload: Bytes, kind: &str) -> bool {
        let lanes = &self.servers[server].lanes;
        let lane = shard_index(&topic, lanes.len());
        match lanes[lane].try_send((topic, payload)) {
            Ok(()) => {
                self.metrics.relay_pipeline_depth.inc();
                self.metrics
                    .relay_published
                    .with_label_values(&[kind])
                    .inc();
                true
            }
            Err(_) => {
                self.metrics
                    .relay_dropped
                    .with_label_values(&["queue_full"])
                    .inc();
                false
            }
        }
    }

    fn control(&self, body: Body) {
        let kind = body.kind().as_str();
        let payload = self.envelope(body);
        self.send(0, self.topics.control(), payload, kind);
    }

    fn deliver_body(&self, targets: Targets, delivery: &Delivery) -> Body {
        Body::Deliver(proto::Delivery {
            targets,
            frame: Bytes::from(delivery.data.clone()),
            exclude_client: None,
            extra: extra_of(delivery),
        })
    }

    fn publish(&self, delivery: &Delivery) -> bool {
        let target = &delivery.target;
        match target {
            Target::Channels(names) | Target::Users(names) => {
                let channels = matches!(target, Target::Channels(_));
                let targets = if channels {
                    Targets::Channels(names.clone())
                } else {
                    Targets::Users(names.clone())
                };
                let payload = self.envelope(self.deliver_body(targets, delivery));
                let mut sent = false;
                for name in names {
                    let topic = if channels {
                        self.topics.channel(name)
                    } else {
                        self.topics.user(name)
                    };
                    sent |= self.send(self.server_for(name), topic, payload.clone(), "deliver");
                }
                sent
            }
            Target::Clients(ids) => {
                let mut by_node: HashMap<&str, Vec<String>> = HashMap::new();
                for id in ids {
                    if let Some(owner) = proto::owner_node(id) {
                        by_node.entry(owner).or_default().push(id.clone());
                    }
                }
                let mut sent = false;
                for (owner, ids) in by_node {
                    let payload = self.envelope(self.deliver_body(Targets::Clients(ids), delivery));
                    sent |= self.send(
                        self.server_for(owner),
                        self.topics.node(owner),
                        payload,
                        "deliver",
                    );
                }
                sent
            }
            Target::All => {
                let payload = self.envelope(self.deliver_body(Targets::All, delivery));
                self.send(0, self.topics.all(), payload, "deliver")
            }
        }
    }

    /// Handle one message from a subscriber connection.
    fn receive(&self, payload: &[u8]) {
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
                let several = match &delivery.targets {
                    Targets::Channels(v) | Targets::Users(v) => v.len() > 1,
                    _ => false,
                };
                if several && !self.recent.lock().first(&envelope.origin, envelope.seq) {
                    return;
                }
                let target = match delivery.targets {
                    Targets::Channels(v) => Target::Channels(v),
                    Targets::Users(v) => Target::Users(v),
                    Targets::Clients(v) => Target::Clients(v),
                    Targets::All => Target::All,
                };
                let Ok(data) = Utf8Bytes::try_from(delivery.frame) else {
                    return;
                };
                node.deliver(&delivery_of(target, data, delivery.extra, None));
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
                    return;
                }
                self.metrics.relay_received.with_label_values(&[kind]).inc();
                let peers = self.membership.seen(envelope.origin.clone(), info);
                self.metrics.relay_peers.set(peers as i64);
            }
            Body::Leaving { node_id } => {
                if mine {
                    return;
                }
                self.metrics.relay_received.with_label_values(&[kind]).inc();
                let peers = self.membership.left(&node_id);
                self.metrics.relay_peers.set(peers as i64);
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
                let payload = self.envelope(Body::ChannelsReply {
                    request_id,
                    channels,
                });
                let server = match self.topics.parse(&reply_to) {
                    Some(proto::TopicKind::Node(owner)) => self.server_for(owner),
                    _ => 0,
                };
                self.send(server, reply_to, payload, "channels_reply");
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

/// Drain one server's queue: whole batches in one pipeline, in order.
async fn publish_loop(inner: Arc<Inner>, server: usize, mut rx: mpsc::Receiver<(String, Bytes)>) {
    let client = inner.servers[server].publisher.clone();
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
            inner
                .metrics
                .relay_dropped
                .with_label_values(&["redis_down"])
                .inc_by(batch.len() as u64);
            batch.clear();
            inner.metrics.relay_pipeline_depth.sub(taken);
            continue;
        }
        let started = Instant::now();
        let pipeline = client.pipeline();
        for (topic, payload) in batch.drain(..) {
            let queued: Result<(), Error> = if inner.sharded {
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
            inner
                .metrics
                .relay_dropped
                .with_label_values(&["redis_error"])
                .inc_by(failed as u64);
        }
        inner
            .metrics
            .relay_roundtrip
            .observe(started.elapsed().as_secs_f64());
        // Queued or in flight over every lane: added on enqueue, removed here.
        inner.metrics.relay_pipeline_depth.sub(taken);
    }
}

/// Read one server's subscriber connection.
async fn receive_loop(inner: Arc<Inner>, server: usize) {
    let mut rx = inner.servers[server].subscriber.message_rx();
    loop {
        match rx.recv().await {
            Ok(message) => {
                if let Some(bytes) = message.value.as_bytes() {
                    inner.receive(bytes);
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

/// Announce this node every [`HEARTBEAT`] and forget silent peers.
async fn heartbeat_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        inner.control(Body::Heartbeat(inner.info()));
        let peers = inner.membership.prune();
        inner.metrics.relay_peers.set(peers as i64);
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

    /// Every topic local members need now: (server, topic).
    fn current_topics(&self) -> Vec<(usize, String)> {
        let Some(node) = self.node.get() else {
            return Vec::new();
        };
        let (channels, users) = node.interest_now();
        let channels = channels
            .into_iter()
            .map(|c| (self.server_for(&c), self.topics.channel(&c)));
        let users = users
            .into_iter()
            .map(|u| (self.server_for(&u), self.topics.user(&u)));
        channels.chain(users).collect()
    }
}

/// The envelope's extra part of a delivery.
fn extra_of(delivery: &Delivery) -> Extra {
    Extra {
        channel: delivery.channel.as_deref().map(str::to_string),
        event: delivery.event.as_deref().map(str::to_string),
        kind: delivery.kind.tag(),
        origin_client: delivery.origin.as_deref().map(str::to_string),
        audience: delivery.audience.clone(),
    }
}

/// A delivery from what an envelope carried.
fn delivery_of(
    target: Target,
    data: Utf8Bytes,
    extra: Extra,
    position: Option<Position>,
) -> Delivery {
    let channel = match &target {
        Target::Channels(v) if v.len() == 1 => Some(Arc::from(v[0].as_str())),
        _ => extra.channel.as_deref().map(Arc::from),
    };
    Delivery {
        target,
        channel,
        event: extra.event.as_deref().map(Arc::from),
        kind: DeliveryKind::from_tag(extra.kind),
        data,
        position,
        origin: extra.origin_client.as_deref().map(Arc::from),
        audience: extra.audience,
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
                for rx in std::mem::take(&mut *server.lanes_rx.lock()) {
                    tokio::spawn(publish_loop(inner.clone(), i, rx));
                }
                tokio::spawn(receive_loop(inner.clone(), i));
            }
            if let Some(rx) = inner.interest_rx.lock().take() {
                let me = inner.clone();
                let subscriptions = Subscriptions {
                    servers: inner
                        .servers
                        .iter()
                        .map(|s| (s.url.clone(), s.subscriber.clone()))
                        .collect(),
                    sharded: inner.sharded,
                    permanent: vec![
                        (
                            inner.server_for(&inner.node_id),
                            inner.topics.node(&inner.node_id),
                        ),
                        (0, inner.topics.all()),
                        (0, inner.topics.control()),
                    ],
                    current: Box::new(move || me.current_topics()),
                    metrics: inner.metrics.clone(),
                };
                tokio::spawn(interest_loop(Arc::new(subscriptions), rx));
            }
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
            // The first heartbeat goes out once the publisher is connected
            // (or the start-up wait gave up).
            tokio::spawn(heartbeat_loop(inner.clone()));
            Ok(())
        })
    }

    fn publish(&self, delivery: &Delivery) -> bool {
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

    fn interest(&self, change: &InterestChange) {
        let inner = &self.inner;
        let send = |op| {
            let _ = inner.interest_tx.send(op);
        };
        for c in &change.channels_added {
            send(Interest::Add(inner.server_for(c), inner.topics.channel(c)));
        }
        for c in &change.channels_removed {
            send(Interest::Remove(
                inner.server_for(c),
                inner.topics.channel(c),
            ));
        }
        for u in &change.users_added {
            send(Interest::Add(inner.server_for(u), inner.topics.user(u)));
        }
        for u in &change.users_removed {
            send(Interest::Remove(inner.server_for(u), inner.topics.user(u)));
        }
    }

    fn disconnect(&self, client_ids: &[String], root_ids: &[String]) {
        self.inner.control(Body::Disconnect {
            client_ids: client_ids.to_vec(),
            root_ids: root_ids.to_vec(),
        });
    }

    fn peers(&self) -> Vec<NodeInfo> {
        self.inner.membership.list()
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
        let down: Vec<&str> = self
            .inner
            .servers
            .iter()
            .filter(|s| !(s.publisher.is_connected() && s.subscriber.is_connected()))
            .map(|s| s.url.as_str())
            .collect();
        if down.is_empty() {
            RelayStatus {
                healthy: true,
                detail: format!("redis ({} servers)", self.inner.servers.len()),
            }
        } else {
            RelayStatus {
                healthy: false,
                detail: format!("redis unreachable: {}", down.join(", ")),
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
            while inner.servers[0]
                .lanes
                .iter()
                .any(|lane| lane.capacity() < lane.max_capacity())
                && tokio::time::Instant::now() < deadline
            {
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
