//! The cluster relay over Redis pub/sub: routing, receiving, control
//! messages and history publications (see the [`super`] module for the
//! topics, sharding and ordering it keeps).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use parking_lot::Mutex;
use pubmesh_cluster_proto::{self as proto, Body, Envelope, Extra, Targets, Topics};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::client::shard_index;
use super::envelope::{delivery_of, extra_of, Recent};
use super::interest::{interest_loop, Interest, Subscriptions};
use super::membership::{unix_now, Membership, HEARTBEAT};
use super::publisher::{publish_loop, servers, Server};
use super::store::{PublishSpec, RedisStore};
use crate::config::Config;
use crate::delivery::{BoxFuture, Delivery, InterestChange, Position, Target};
use crate::history::HistoryError;
use crate::metrics::Metrics;
use crate::policy::ChannelOptions;
use crate::relay::{Appended, NodeInfo, NodeView, Relay, RelayError, RelayStatus};

pub use super::interest::LINGER;
pub use super::membership::PEER_TIMEOUT;

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
        let servers = servers(config)?;
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
                    let client = server.publisher.clone();
                    let metrics = inner.metrics.clone();
                    tokio::spawn(publish_loop(client, inner.sharded, metrics, rx));
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
