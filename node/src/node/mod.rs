//! The node: the mesh operations every front-end and the server API call.
//!
//! Front-ends never touch the hub or the relay: they admit and open
//! connections, publish, join and leave channels, read history and presence
//! and close connections through the methods of [`Node`] (in [`ops`]), and
//! get failures as one [`MeshError`] with stable codes.

mod churn;
mod error;
mod groups;
mod hub;
mod identity;
mod join;
mod keyed;
mod ops;
mod records;
mod tasks;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

pub use error::MeshError;
pub use groups::{group_name, GROUP_PREFIX};
pub use hub::HubCounts;
pub use join::{JoinRequest, Joined};
pub use ops::{Admission, Read};
pub use tasks::{expire_tokens, refresh_presence};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::conn::Conn;
use crate::delivery::{Delivery, InterestChange, Position, Target};
use crate::history::History;
use crate::idempotency::PublishKeys;
use crate::metrics::Metrics;
use crate::presence::{Presence, PresenceEntry};
use crate::relay::{NodeInfo, NodeView, Relay, RelayOutcome, Relayed};
use crate::walker::WalkerClient;
use hub::Hub;

/// Where a message may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every node of the cluster.
    Cluster,
    /// This node only; never touches the relay (LocalBroadcast).
    Local,
}

/// What a publish did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Published {
    /// Outboxes on this node that took the message.
    pub local_deliveries: usize,
    /// Whether the message went to the relay for other nodes (once confirmed:
    /// whether Redis took it).
    pub relayed: bool,
    /// What became of the part for other nodes: `none`, `sent`, `failed`
    /// (or `queued` when not waited for).
    pub relay: RelayOutcome,
    /// Publishes with an idempotency key only: true when the key was used
    /// before (nothing was delivered or appended again; the rest of the
    /// reply repeats the first publish's outcome).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// Publishes with an idempotency key only: each history channel's
    /// position (the first publish's, for a duplicate).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub positions: BTreeMap<String, Position>,
}

/// One pubmesh node.
pub struct Node {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub auth: Authenticator,
    pub walker: Option<WalkerClient>,
    hub: Hub,
    relay: Arc<dyn Relay>,
    /// Channel history reads (appends go through the relay).
    history: Arc<dyn History>,
    /// Channel presence (memory or Redis).
    presence: Arc<dyn Presence>,
    /// One permit per connection (`--max-connections`): taken by the client
    /// listener when it accepts a socket (or at admission for a connection
    /// that did not come through it).
    permits: Option<Arc<Semaphore>>,
    started: Instant,
    /// Set once when a drain starts; read by /readyz and the accept path.
    draining: AtomicBool,
    /// Source of `Conn::id`.
    next_conn_id: AtomicU64,
    /// Keyed publishes made here or received (`--idempotency-window-seconds`).
    keys: Arc<PublishKeys<Published>>,
}

impl Node {
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        relay: Arc<dyn Relay>,
        auth: Authenticator,
        history: Arc<dyn History>,
        presence: Arc<dyn Presence>,
    ) -> Node {
        let walker = config
            .backend_url
            .as_ref()
            .map(|url| WalkerClient::new(url.clone(), config.walker_timeout));
        let permits = config
            .max_connections
            .map(|max| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))));
        let keys = Arc::new(PublishKeys::new(
            config.idempotency.window,
            config.idempotency.max_bytes,
        ));
        Node {
            keys,
            hub: Hub::new(metrics.clone()),
            walker,
            config,
            metrics,
            relay,
            auth,
            history,
            presence,
            permits,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(1),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The relay's short name ("memory", "redis").
    pub fn relay_name(&self) -> &'static str {
        self.relay.name()
    }

    /// The relay, for start-up and shutdown.
    pub fn relay(&self) -> &Arc<dyn Relay> {
        &self.relay
    }

    /// The connection cap's semaphore, for the listener that takes a permit
    /// per accepted socket (`None` without `--max-connections`).
    pub fn connection_permits(&self) -> Option<Arc<Semaphore>> {
        self.permits.clone()
    }

    /// Connection permits not taken (`None` without `--max-connections`).
    pub fn free_permits(&self) -> Option<usize> {
        self.permits.as_ref().map(|p| p.available_permits())
    }

    /// Deliver to `delivery.target`: locally first, then (for
    /// [`Scope::Cluster`]) through the relay to the other nodes. Messages
    /// whose targets are all on this node never touch the relay. History
    /// channels are not special here; see [`Node::publish_channels`].
    pub fn publish(&self, delivery: Delivery, scope: Scope) -> Published {
        self.publish_relayed(delivery, scope, false).0
    }

    /// Like [`Node::publish`], then wait until the relay knows whether Redis
    /// took the part for other nodes (at most the relay's retry window).
    pub async fn publish_confirmed(&self, delivery: Delivery, scope: Scope) -> Published {
        let (done, relayed) = self.publish_relayed(delivery, scope, true);
        self.confirm(done, relayed).await
    }

    async fn confirm(&self, mut done: Published, relayed: Relayed) -> Published {
        done.relay = relayed.outcome(self.relay.settle_within()).await;
        done.relayed = done.relay == RelayOutcome::Sent;
        done
    }

    /// With `confirm`, the caller waits for the relay's outcome.
    fn publish_relayed(
        &self,
        delivery: Delivery,
        scope: Scope,
        confirm: bool,
    ) -> (Published, Relayed) {
        self.metrics.messages_out.inc(delivery.target.kind());
        let local_deliveries = self.hub.deliver(&delivery);
        let relayed = match scope {
            Scope::Local => Relayed::Nothing,
            Scope::Cluster => self.relay_remote(&delivery, confirm),
        };
        let done = Published {
            local_deliveries,
            relayed: relayed.queued(),
            relay: match &relayed {
                Relayed::Nothing => RelayOutcome::None,
                Relayed::Pending(_) | Relayed::Queued => RelayOutcome::Queued,
                Relayed::Failed => RelayOutcome::Failed,
            },
            ..Published::default()
        };
        (done, relayed)
    }

    /// Hand the part of a delivery that other nodes may have to deliver to
    /// the relay (see [`crate::relay::Relay::publish`] for `confirm`).
    fn relay_remote(&self, delivery: &Delivery, confirm: bool) -> Relayed {
        let Target::Clients(ids) = &delivery.target else {
            return self.relay.publish(delivery, confirm);
        };
        let me = self.node_id();
        let remote: Vec<String> = ids
            .iter()
            .filter(|id| pubmesh_cluster_proto::owner_node(id) != Some(me))
            .cloned()
            .collect();
        if remote.is_empty() {
            return Relayed::Nothing;
        }
        if remote.len() == ids.len() {
            return self.relay.publish(delivery, confirm);
        }
        let remote = Delivery {
            target: Target::Clients(remote),
            ..delivery.clone()
        };
        self.relay.publish(&remote, confirm)
    }

    /// Publish with channel options applied: publications to history-enabled
    /// channels are appended (and, in a cluster, relayed by the broker in the
    /// same atomic step) and get a position; everything else takes the plain
    /// path of [`Node::publish`]. `Scope::Local` is refused
    /// ([`MeshError::BadRequest`]) when a channel keeps history.
    pub async fn publish_channels(
        &self,
        delivery: Delivery,
        scope: Scope,
    ) -> Result<Published, MeshError> {
        self.publish_with_options(delivery, scope, false).await
    }

    /// [`Node::publish_channels`], waiting for the relay's outcome like
    /// [`Node::publish_confirmed`].
    pub async fn publish_channels_confirmed(
        &self,
        delivery: Delivery,
        scope: Scope,
    ) -> Result<Published, MeshError> {
        self.publish_with_options(delivery, scope, true).await
    }

    async fn publish_with_options(
        &self,
        delivery: Delivery,
        scope: Scope,
        confirm: bool,
    ) -> Result<Published, MeshError> {
        if delivery.idempotency.is_some() {
            return self.publish_keyed(delivery, scope, confirm).await;
        }
        if self.names_no_history(&delivery) {
            // The common case takes the delivery as it is, without a copy.
            let (sent, relayed) = self.publish_relayed(delivery, scope, confirm);
            return Ok(if confirm {
                self.confirm(sent, relayed).await
            } else {
                sent
            });
        }
        let (plain, with_history) = self.split_history(&delivery, scope)?;
        let mut done = Published::default();
        if let Some(part) = plain {
            let (sent, relayed) = self.publish_relayed(part, scope, confirm);
            done = if confirm {
                self.confirm(sent, relayed).await
            } else {
                sent
            };
        }
        for channel in with_history {
            let options = self.config.namespaces.options(&channel);
            let one = delivery.for_channel(&channel);
            let appended = self.relay.publish_history(&one, &options).await?;
            self.appended(&mut done, one, appended);
        }
        Ok(done)
    }

    /// True when `delivery` names no history channel (so all of it takes
    /// the plain path).
    fn names_no_history(&self, delivery: &Delivery) -> bool {
        match &delivery.target {
            Target::Channels(channels) => self.config.namespaces.is_plain_for(channels),
            _ => true,
        }
    }

    /// The part of a publish that takes the plain path (everything but
    /// history channels; `None` when nothing does), and the history channels.
    /// A `Scope::Local` publish naming a history channel is refused: it
    /// would reach this node's members and be missing from the history.
    fn split_history(
        &self,
        delivery: &Delivery,
        scope: Scope,
    ) -> Result<(Option<Delivery>, Vec<String>), MeshError> {
        let whole = || Ok((Some(delivery.clone()), Vec::new()));
        let Target::Channels(channels) = &delivery.target else {
            return whole();
        };
        if self.names_no_history(delivery) {
            return whole();
        }
        let (with_history, plain_channels): (Vec<String>, Vec<String>) = channels
            .iter()
            .cloned()
            .partition(|c| self.config.namespaces.options(c).history());
        if scope == Scope::Local {
            if let Some(c) = with_history.first() {
                return Err(MeshError::BadRequest(format!(
                    "channel {c:?} keeps history, which a local publication would bypass; publish without local"
                )));
            }
            return whole();
        }
        if plain_channels.is_empty() {
            return Ok((None, with_history));
        }
        if with_history.is_empty() {
            return whole();
        }
        let target = Target::Channels(plain_channels);
        let channel = match &target {
            Target::Channels(v) if v.len() == 1 => Some(Arc::from(v[0].as_str())),
            _ => None,
        };
        let part = Delivery {
            target,
            channel,
            ..delivery.clone()
        };
        Ok((Some(part), with_history))
    }

    /// Account for one history append (of `one`) in `done`, and deliver it
    /// here unless the relay echoes it back.
    fn appended(&self, done: &mut Published, one: Delivery, appended: crate::relay::Appended) {
        self.metrics
            .messages_out
            .with_label_values(&["channels"])
            .inc();
        self.metrics.history_appends.inc();
        if appended.relayed {
            done.relayed = true;
            if done.relay != RelayOutcome::Failed {
                done.relay = RelayOutcome::Sent;
            }
        }
        if !appended.echoed {
            let positioned = Delivery {
                position: Some(appended.position),
                idempotency: None,
                ..one
            };
            done.local_deliveries += self.hub.deliver(&positioned);
        }
    }

    /// Tell the relay about channels and users that gained or lost their last
    /// local member.
    fn interest(&self, change: InterestChange) {
        if !change.is_empty() {
            self.relay.interest(&change);
        }
    }

    /// Close connections by client or user id, here and on every node.
    pub fn disconnect(&self, client_ids: &[String], root_ids: &[String], scope: Scope) -> usize {
        let closed = self.hub.disconnect(client_ids, root_ids);
        if scope == Scope::Cluster {
            let me = self.node_id();
            let remote_clients: Vec<String> = client_ids
                .iter()
                .filter(|id| pubmesh_cluster_proto::owner_node(id) != Some(me))
                .cloned()
                .collect();
            if !remote_clients.is_empty() || !root_ids.is_empty() {
                self.relay.disconnect(&remote_clients, root_ids);
            }
        }
        closed
    }

    /// This node and its live peers.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut nodes = vec![self.info()];
        nodes.extend(self.relay.peers());
        nodes
    }

    /// Channels with members anywhere in the cluster, with member counts.
    pub async fn channels(&self) -> Result<Vec<(String, u64)>, crate::relay::RelayError> {
        let mut merged: std::collections::HashMap<String, u64> = Default::default();
        for (name, n) in self.hub.channel_counts() {
            *merged.entry(name).or_default() += n;
        }
        for (name, n) in self.relay.remote_channels().await? {
            *merged.entry(name).or_default() += n;
        }
        let mut out: Vec<(String, u64)> = merged.into_iter().collect();
        out.sort();
        Ok(out)
    }

    /// Live counts of this node's registries.
    pub fn counts(&self) -> HubCounts {
        self.hub.counts()
    }

    /// Every local connection.
    pub fn connections(&self) -> Vec<Arc<Conn>> {
        self.hub.connections()
    }

    /// Why the node is not ready, or `Ok` when it is.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining".into());
        }
        let status = self.relay.status();
        self.metrics.relay_up.set(status.healthy as i64);
        if !status.healthy {
            return Err(format!("relay degraded: {}", status.detail));
        }
        Ok(())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Start draining: readiness false, no new connections. Returns false if
    /// a drain had already started.
    pub fn begin_drain(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::AcqRel);
        if first {
            self.metrics.draining.set(1);
            self.metrics.ready.set(0);
        }
        first
    }

    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn presence_entry(&self, conn: &Conn) -> PresenceEntry {
        let state = conn.state.lock();
        PresenceEntry {
            client_id: conn.client_id.to_string(),
            user_id: state.root_id.to_string(),
            node_id: self.config.node_id.clone(),
            info: state
                .info
                .as_ref()
                .and_then(|i| serde_json::value::RawValue::from_string(i.to_string()).ok()),
        }
    }
}

impl NodeView for Node {
    fn deliver(&self, delivery: &Delivery) -> usize {
        match &delivery.idempotency {
            Some(key) => self.deliver_keyed(delivery, key),
            None => self.hub.deliver(delivery),
        }
    }

    fn deliver_excluding(&self, delivery: &Delivery, reached: &[String]) -> usize {
        let mut recipients = self.hub.recipients(&delivery.target);
        recipients.retain(|c| !reached.iter().any(|b| c.is_member(b)));
        self.hub.fan_out(&recipients, delivery)
    }

    /// Presence entries of a gone node: remove them and tell the channels
    /// (where the channel sends them). The store hands the entries to one
    /// survivor only, so each `leave` goes out once in the cluster.
    fn peer_gone<'a>(&'a self, node_id: &'a str) -> crate::delivery::BoxFuture<'a, ()> {
        Box::pin(async move {
            let taken = match self.presence.take_node(node_id).await {
                Ok(taken) => taken,
                Err(e) => {
                    tracing::warn!(error = %e, node_id, "could not clear a gone node's presence");
                    return;
                }
            };
            for (channel, entry) in taken {
                self.metrics.presence_gone_leaves.inc();
                if self.config.namespaces.options(&channel).join_leave {
                    let event =
                        ops::presence_event(crate::delivery::DeliveryKind::Leave, &channel, &entry);
                    self.publish(event, Scope::Cluster);
                }
            }
        })
    }

    fn disconnect_local(&self, client_ids: &[String], root_ids: &[String]) -> usize {
        self.hub.disconnect(client_ids, root_ids)
    }

    fn channel_counts(&self) -> Vec<(String, u64)> {
        self.hub.channel_counts()
    }

    fn interest_now(&self) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        (self.hub.channel_names(), self.hub.user_names())
    }

    fn info(&self) -> NodeInfo {
        let counts = self.hub.counts();
        NodeInfo {
            node_id: self.config.node_id.clone(),
            connections: counts.connections,
            users: counts.users,
            channels: counts.channels,
            subscriptions: counts.subscriptions,
            ready: self.readiness().is_ok(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.uptime_seconds(),
            is_self: true,
        }
    }
}
