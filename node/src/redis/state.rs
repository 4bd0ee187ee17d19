//! The Redis relay's shared state: its servers, peers, subscription
//! wishes and sequence numbers, and how it builds and queues envelopes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use parking_lot::Mutex;
use pubmesh_cluster_proto::{self as proto, Body, Envelope, Extra, Targets, TargetsRef, Topics};
use tokio::sync::mpsc;

use super::client::shard_index;
use super::dedup::{Groups, SeenSeqs};
use super::envelope::{extra_of, extra_ref};
use super::health::ServerHealth;
use super::queue::{stream_key, Ack, Budget, Lane, Outgoing, OVERHEAD};
use super::store::{PublishSpec, RedisStore};
use super::views::{Interests, Route};
use super::watermark::Watermark;
use crate::config::RelayLimits;
use crate::delivery::{Delivery, Target};
use crate::hashing::{HashMap, HashSet};
use crate::metrics::Metrics;
use crate::policy::Namespaces;
use crate::relay::{NodeView, Relayed};

/// How long a topic stays subscribed after its last local member left.
pub const LINGER: Duration = Duration::from_secs(2);
/// How often a node announces itself.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A peer silent this long is dropped from membership.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most commands sent in one pipeline.
pub(super) const BATCH: usize = 512;
/// Longest a lane waits before it looks again at a Redis that is down.
pub(super) const OUTAGE_POLL: Duration = Duration::from_millis(20);
/// Smallest charge of a queued envelope: bounds how many can be in flight.
pub(super) const MIN_ENVELOPE_COST: usize = OVERHEAD + 32;

thread_local! {
    /// A channel's or user's topic while its key is computed: most envelopes
    /// of a busy cluster go to one peer's inbox or nowhere, and need no name
    /// of their own.
    static TOPIC: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// One Redis server (or the cluster).
pub(super) struct Server {
    pub(super) url: String,
    pub(super) publisher: Client,
    pub(super) subscriber: SubscriberClient,
    /// The one publishing lane: its queue and the task that pipelines it,
    /// one pipeline in flight at a time, so every envelope to this server
    /// leaves in the order it was queued. One lane rather than several
    /// makes each pipeline carry more envelopes, and a `PUBLISH` costs
    /// about the same whatever it carries (BENCHMARKS.md, "One publishing
    /// lane per Redis server").
    pub(super) lane: Arc<Lane>,
    pub(super) health: ServerHealth,
}

/// Subscription wishes, coalesced per topic until the interest task takes
/// them (a join and a leave of one topic in between cancel out): bounded by
/// the number of distinct topics, not by the churn.
#[derive(Default)]
pub(super) struct Wishes {
    /// (server, topic) → wanted (true) or not (false).
    pub(super) pending: HashMap<(usize, String), bool>,
    /// Interest changes made so far; the interest task reports in
    /// [`Inner::applied`] how many of them are in place at the broker.
    pub(super) requested: u64,
    /// (server, topic) → the change that last asked for it, while that
    /// change is not yet applied: what a join of the topic waits for.
    pub(super) adds: HashMap<(usize, String), u64>,
}

pub(super) struct Peer {
    pub(super) info: proto::NodeInfo,
    /// For the silence timeout: when it was last heard, or when this node
    /// could hear again after being cut off (it gets a fresh chance then).
    pub(super) seen: Instant,
    /// When its last heartbeat actually arrived: only this says the peer's
    /// subscriptions are in place ([`Inner::settled`]).
    pub(super) heard: Instant,
}

/// Where one peer's answer to a channels query goes: (peer, its channels).
pub(super) type ReplySender = mpsc::UnboundedSender<(String, Vec<(String, u64)>)>;

pub(super) struct Inner {
    pub(super) node_id: String,
    pub(super) topics: Topics,
    pub(super) sharded: bool,
    /// Whether a channel or user envelope that one peer alone listens to
    /// goes to that peer's inbox ([`super::routing::Route::Peer`]): with
    /// `--relay-node-addressing` on one Redis server that is not a cluster.
    pub(super) addresses_peers: bool,
    /// Whether a channel whose id names a node goes to that node's inbox,
    /// and this node's own such channels stay out of Redis
    /// (`--relay-owned-channels` on one Redis server that is not a cluster;
    /// see [`Inner::owner_inbox`]).
    pub(super) owns_channels: bool,
    /// The namespaces, for the history channels the rule above leaves out.
    pub(super) namespaces: Namespaces,
    pub(super) metrics: Arc<Metrics>,
    pub(super) servers: Vec<Server>,
    pub(super) seq: AtomicU64,
    pub(super) started_unix: u64,
    pub(super) node: OnceLock<Arc<dyn NodeView>>,
    /// History and presence; history appends publish through it.
    pub(super) store: Arc<RedisStore>,
    pub(super) peers: Mutex<HashMap<String, Peer>>,
    pub(super) wishes: Mutex<Wishes>,
    pub(super) wished: tokio::sync::Notify,
    /// The last [`Wishes::requested`] whose subscriptions Redis confirmed
    /// (or that no reachable server still waits for): joins wait for it.
    pub(super) applied: Watermark,
    pub(super) limits: RelayLimits,
    pub(super) budget: Budget,
    /// Held while a publish takes its sequence number and queues its
    /// envelopes, so sequence numbers rise in queue order on every topic.
    pub(super) ordering: Mutex<()>,
    pub(super) seen: Mutex<SeenSeqs>,
    pub(super) groups: Mutex<Groups>,
    /// Open `/api/channels` queries: request id → where replies go.
    pub(super) requests: Mutex<HashMap<u64, ReplySender>>,
    /// What peers listen to, and what this node told them (see [`super::views`]).
    pub(super) interests: Interests,
    /// Set when the node announces its clean exit: it sends no heartbeat
    /// after that, so peers do not take it back as alive.
    pub(super) leaving: AtomicBool,
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The shortest channel id that can name a node: `{1 digit}:{32 hex}:{1
/// character}`.
const MIN_OWNED_LEN: usize = 1 + 1 + 32 + 1 + 1;

impl Inner {
    /// The node whose inbox every envelope of `channel` goes to, when the
    /// channel's id names a node (the form nodes give a connection without
    /// `channel_id`) and that node is not this one. That node never
    /// subscribes to such a channel's topic nor announces it to peers
    /// ([`Inner::stays_off_redis`]): the channel's id tells every publisher
    /// where its members are.
    pub(super) fn owner_inbox<'a>(&self, channel: &'a str) -> Option<&'a str> {
        // A node id is at least one character after the id's second `:`.
        if !self.owns_channels || channel.len() < MIN_OWNED_LEN {
            return None;
        }
        proto::channel_owner(channel).filter(|owner| *owner != self.node_id)
    }

    /// Whether this node's channel `channel` needs no Redis subscription:
    /// its id names this node, so publishers anywhere send its envelopes to
    /// this node's inbox ([`Inner::owner_inbox`]). A history channel is
    /// subscribed as any other: the append script publishes to its topic.
    pub(super) fn stays_off_redis(&self, channel: &str) -> bool {
        self.owns_channels
            // The cheap test first: most channels do not end in this
            // node's id.
            && channel.ends_with(self.node_id.as_str())
            && proto::channel_owner(channel) == Some(self.node_id.as_str())
            && (self.namespaces.is_plain() || !self.namespaces.options(channel).history())
    }

    /// A fresh even sequence number (odd ones mark multi-channel publishes).
    pub(super) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(2, Ordering::Relaxed)
    }

    pub(super) fn server_for(&self, name: &str) -> usize {
        shard_index(name, self.servers.len())
    }

    pub(super) fn envelope(&self, body: Body) -> Bytes {
        proto::encode(&Envelope::new(self.node_id.clone(), self.next_seq(), body))
    }

    /// Queue one envelope for a topic on a server (the caller holds
    /// `ordering` when the envelope carries a sequence number that receivers
    /// order by); false when the byte budget refused it.
    pub(super) fn send(&self, server: usize, item: Outgoing, kind: &str) -> bool {
        if !self.budget.try_take(item.cost) {
            self.metrics
                .relay_dropped
                .with_label_values(&["queue_full"])
                .inc();
            item.refuse();
            return false;
        }
        self.metrics.relay_pipeline_depth.inc();
        self.metrics.relay_published.inc(kind);
        self.servers[server].lane.push(item);
        true
    }

    pub(super) fn outgoing(
        &self,
        topic: String,
        payload: Bytes,
        ack: Option<&Arc<Ack>>,
    ) -> Outgoing {
        Outgoing::new(topic, payload, self.limits.retry, ack.cloned())
    }

    pub(super) fn control(&self, body: Body) {
        let kind = body.kind().as_str();
        let _order = self.ordering.lock();
        let payload = self.envelope(body);
        let item = self.outgoing(self.topics.control(), payload, None);
        self.send(0, item, kind);
    }

    /// One envelope per topic, each carrying only its own names; ids are
    /// de-duplicated first. With `confirm`, an [`Ack`] counts the envelopes
    /// Redis has yet to take (see [`crate::relay::Relay::publish`]).
    pub(super) fn publish(&self, delivery: &Delivery, confirm: bool) -> Relayed {
        let target = &delivery.target;
        let frame = delivery.data.as_bytes();
        let extra = extra_ref(delivery);
        // (server, topic, targets) of every envelope. A channel's or user's
        // envelope names it without a copy ([`TargetsRef::One`]).
        const ALL: &Targets = &Targets::All;
        let mut by_node: Vec<(&str, Targets)> = Vec::new();
        // (server, Redis channel, order key when not the Redis channel's
        // own, targets, whether it is the envelope of the part before sent
        // to another Redis channel) of every envelope.
        let mut parts: Vec<(usize, String, Option<u64>, TargetsRef<'_>, bool)> = Vec::new();
        let mut group = false;
        match target {
            Target::Channels(names) | Target::Users(names) => {
                let channels = matches!(target, Target::Channels(_));
                // Most publishes name one channel: no set to build for it
                // (an empty set does not allocate).
                // Names that got at least one envelope.
                let mut named = 0;
                let mut seen = match names.len() {
                    1 => HashSet::default(),
                    n => crate::hashing::set_with_capacity(n),
                };
                for name in names {
                    if names.len() > 1 && !seen.insert(name.as_str()) {
                        continue;
                    }
                    let tag = match channels {
                        true => Targets::TAG_CHANNELS,
                        false => Targets::TAG_USERS,
                    };
                    let targets = TargetsRef::One(tag, name.as_str());
                    // A channel whose id names another node: that node's
                    // inbox gets it whatever the views say (the node never
                    // announces it), with the same sequence number as the
                    // envelope for the other peers, so a node that gets both
                    // delivers one.
                    let owner = match channels {
                        true => self.owner_inbox(name).map(|o| self.topics.node(o)),
                        false => None,
                    };
                    // The topic's key: what the views hold, and its order
                    // key for an envelope sent to an inbox.
                    let key = TOPIC.with_borrow_mut(|topic| {
                        match channels {
                            true => self.topics.channel_in(name, topic),
                            false => self.topics.user_in(name, topic),
                        }
                        stream_key(topic)
                    });
                    let route = self.route(key);
                    let order = (owner.is_some() || matches!(route, Route::Peer(_))).then_some(key);
                    let before = parts.len();
                    match route {
                        Route::Topic => {
                            let topic = match channels {
                                true => self.topics.channel(name),
                                false => self.topics.user(name),
                            };
                            parts.push((self.server_for(name), topic, None, targets, false))
                        }
                        // No peer listens to it (see `super::views`).
                        Route::Skip if owner.is_none() => self.metrics.relay_skipped.inc(),
                        Route::Skip => {}
                        // One peer listens: its inbox, with the topic's order
                        // key, which keeps a topic's envelopes in order within
                        // a pipeline whichever Redis channel carries them.
                        Route::Peer(inbox) if owner.as_ref() != Some(&inbox) => {
                            self.metrics.relay_addressed.inc();
                            parts.push((0, inbox, order, targets, false));
                        }
                        Route::Peer(_) => {}
                    }
                    if let Some(inbox) = owner {
                        self.metrics.relay_addressed.inc();
                        parts.push((0, inbox, order, targets, parts.len() > before));
                    }
                    if parts.len() > before {
                        named += 1;
                    }
                }
                // A connection may be in several of the channels (never in
                // several users): mark the envelopes as one publish.
                group = channels && named > 1;
            }
            Target::Clients(ids) => {
                let mut owners: HashMap<&str, Vec<String>> = HashMap::default();
                let mut seen = crate::hashing::set_with_capacity(ids.len());
                for id in ids {
                    if !seen.insert(id.as_str()) {
                        continue;
                    }
                    if let Some(owner) = proto::owner_node(id) {
                        owners.entry(owner).or_default().push(id.clone());
                    }
                }
                by_node = owners
                    .into_iter()
                    .map(|(owner, ids)| (owner, Targets::Clients(ids)))
                    .collect();
            }
            Target::All => parts.push((0, self.topics.all(), None, TargetsRef::Whole(ALL), false)),
        }
        for (owner, targets) in &by_node {
            parts.push((
                self.server_for(owner),
                self.topics.node(owner),
                None,
                TargetsRef::Whole(targets),
                false,
            ));
        }
        if parts.is_empty() {
            return Relayed::Nothing;
        }
        let (ack, rx) = confirm.then(Ack::new).unzip();
        let mut queued = 0;
        {
            let _order = self.ordering.lock();
            let shared = group.then(|| self.next_seq() + 1);
            let mut seq = 0;
            for (server, topic, order, targets, again) in parts {
                if !again {
                    seq = shared.unwrap_or_else(|| self.next_seq());
                }
                let payload = proto::encode_deliver(&self.node_id, seq, targets, frame, &extra);
                let mut item = self.outgoing(topic, payload, ack.as_ref());
                if let Some(stream) = order {
                    item.stream = stream;
                }
                if self.send(server, item, "deliver") {
                    queued += 1;
                }
            }
        }
        if let Some(ack) = ack {
            ack.done(true);
        }
        match rx {
            _ if queued == 0 => Relayed::Failed,
            Some(rx) => Relayed::Pending(rx),
            None => Relayed::Queued,
        }
    }

    /// True when every server's subscriptions are in place.
    pub(super) fn synced(&self) -> bool {
        self.servers.iter().all(|s| s.health.synced())
    }

    /// After an outage a lane may send what it held once its own
    /// subscriptions are back and a heartbeat of every known peer has
    /// arrived since `back` (peers heartbeat only with their subscriptions in
    /// place), so the held messages reach every node that is still alive.
    /// Only a heartbeat that arrived counts: the fresh chance the heartbeat
    /// task gives peers when this node can hear again (`Peer::seen`) says
    /// nothing about their subscriptions.
    pub(super) fn settled(&self, back: Instant) -> bool {
        self.synced() && self.peers.lock().values().all(|p| p.heard > back)
    }

    pub(super) fn observe_latency(&self, sent_at_micros: u64) {
        let age = proto::now_micros().saturating_sub(sent_at_micros);
        self.metrics
            .cross_node_latency
            .observe(age as f64 / 1_000_000.0);
    }

    pub(super) fn info(&self) -> proto::NodeInfo {
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

impl Inner {
    /// How the append script publishes a history channel's publication.
    pub(super) fn spec(&self, channel: &str, delivery: &Delivery) -> PublishSpec {
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
                    // The append script itself refuses a repeated key.
                    idempotency: None,
                    ..extra_of(delivery)
                },
            ),
        }
    }
}
