//! The node: the hub, the relay and the mesh operations that front-ends and the
//! server API call (`notify_*`, broadcast, subscribe, disconnect, membership).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::history::{History, HistoryError, Position};
use crate::hub::{Conn, Hub, InterestChange, Target};
use crate::metrics::Metrics;
use crate::namespace::{pattern_matches, ChannelOptions, SubscribePolicy};
use crate::presence::{Presence, PresenceEntry};
use crate::relay::{NodeInfo, NodeView, Relay, RelayOutcome, Relayed};
use crate::walker::WalkerClient;

/// Where a message may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every node of the cluster.
    Cluster,
    /// This node only; never touches the relay (LocalBroadcast).
    Local,
}

/// What a publish did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Published {
    /// Outboxes on this node that took the message.
    pub local_deliveries: usize,
    /// Whether the message went to the relay for other nodes (once confirmed:
    /// whether Redis took it).
    pub relayed: bool,
    /// What became of the part for other nodes: `none`, `sent`, `failed`
    /// (or `queued` when not waited for).
    pub relay: RelayOutcome,
}

/// One pubmesh node.
pub struct Node {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub hub: Hub,
    pub relay: Arc<dyn Relay>,
    pub auth: Authenticator,
    pub walker: Option<WalkerClient>,
    /// Channel history (memory ring or Redis streams).
    pub history: Arc<dyn History>,
    /// Channel presence (memory or Redis).
    pub presence: Arc<dyn Presence>,
    started: Instant,
    /// Set once when a drain starts; read by /readyz and the accept path.
    draining: AtomicBool,
    /// Source of `Conn::id`.
    next_conn_id: AtomicU64,
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
        Node {
            hub: Hub::new(metrics.clone()),
            walker,
            config,
            metrics,
            relay,
            auth,
            history,
            presence,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(1),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Deliver `frame` to `target`: locally first, then (for [`Scope::Cluster`])
    /// through the relay to the other nodes. Messages whose targets are all on
    /// this node never touch the relay.
    pub fn publish(&self, target: Target, frame: Utf8Bytes, scope: Scope) -> Published {
        self.publish_relayed(target, frame, scope).0
    }

    /// Like [`Node::publish`], then wait until the relay knows whether Redis
    /// took the part for other nodes (at most the relay's retry window).
    pub async fn publish_confirmed(
        &self,
        target: Target,
        frame: Utf8Bytes,
        scope: Scope,
    ) -> Published {
        let (done, relayed) = self.publish_relayed(target, frame, scope);
        self.confirm(done, relayed).await
    }

    async fn confirm(&self, mut done: Published, relayed: Relayed) -> Published {
        done.relay = relayed.outcome(self.relay.settle_within()).await;
        done.relayed = done.relay == RelayOutcome::Sent;
        done
    }

    fn publish_relayed(
        &self,
        target: Target,
        frame: Utf8Bytes,
        scope: Scope,
    ) -> (Published, Relayed) {
        self.metrics
            .messages_out
            .with_label_values(&[target.kind()])
            .inc();
        let local_deliveries = self.hub.deliver(&target, &frame);
        let relayed = match scope {
            Scope::Local => Relayed::Nothing,
            Scope::Cluster => match self.remote_part(target) {
                Some(remote) => self.relay.publish(&remote, &frame),
                None => Relayed::Nothing,
            },
        };
        let done = Published {
            local_deliveries,
            relayed: relayed.queued(),
            relay: match &relayed {
                Relayed::Nothing => RelayOutcome::None,
                Relayed::Pending(_) => RelayOutcome::Queued,
                Relayed::Failed => RelayOutcome::Failed,
            },
        };
        (done, relayed)
    }

    /// Publish with channel options applied: publications to history-enabled
    /// channels are appended (and, in a cluster, relayed by the history store
    /// in the same atomic step) and get a position; everything else takes the
    /// plain path of [`Node::publish`]. `Scope::Local` never touches history.
    pub async fn publish_to(
        &self,
        target: Target,
        frame: Utf8Bytes,
        scope: Scope,
    ) -> Result<Published, HistoryError> {
        self.publish_with_options(target, frame, scope, false).await
    }

    /// [`Node::publish_to`], waiting for the relay's outcome like
    /// [`Node::publish_confirmed`].
    pub async fn publish_to_confirmed(
        &self,
        target: Target,
        frame: Utf8Bytes,
        scope: Scope,
    ) -> Result<Published, HistoryError> {
        self.publish_with_options(target, frame, scope, true).await
    }

    async fn publish_with_options(
        &self,
        target: Target,
        frame: Utf8Bytes,
        scope: Scope,
        confirm: bool,
    ) -> Result<Published, HistoryError> {
        let plain = |target: Target, frame: Utf8Bytes| async move {
            let (done, relayed) = self.publish_relayed(target, frame, scope);
            if confirm {
                self.confirm(done, relayed).await
            } else {
                done
            }
        };
        let Target::Channels(channels) = target else {
            return Ok(plain(target, frame).await);
        };
        if scope == Scope::Local || self.config.namespaces.is_plain() {
            return Ok(plain(Target::Channels(channels), frame).await);
        }
        let (with_history, plain_channels): (Vec<String>, Vec<String>) = channels
            .into_iter()
            .partition(|c| self.config.namespaces.options(c).history());
        let mut done = Published::default();
        if !plain_channels.is_empty() {
            done = plain(Target::Channels(plain_channels), frame.clone()).await;
        }
        for channel in with_history {
            let options = self.config.namespaces.options(&channel);
            let position = self.history.append(&channel, &frame, &options).await?;
            self.metrics
                .messages_out
                .with_label_values(&["channels"])
                .inc();
            self.metrics.history_appends.inc();
            if self.history.delivers_by_echo() {
                // The append published it; every node, this one included,
                // delivers it from the relay, in offset order.
                done.relayed = true;
                if done.relay != RelayOutcome::Failed {
                    done.relay = RelayOutcome::Sent;
                }
            } else {
                done.local_deliveries += self.deliver_publication(&channel, &position, &frame);
            }
        }
        Ok(done)
    }

    /// Deliver a positioned publication to this node's members of `channel`.
    pub fn deliver_publication(
        &self,
        channel: &str,
        position: &Position,
        data: &Utf8Bytes,
    ) -> usize {
        let env = publication_frame(channel, position, data);
        let epoch: Arc<str> = Arc::from(position.epoch.as_str());
        self.hub
            .deliver_publication(channel, &epoch, position.offset, data, &env)
    }

    /// May this connection join `channel` (and read its history and presence)?
    pub fn may_subscribe(&self, conn: &Conn, channel: &str) -> Result<ChannelOptions, String> {
        let options = self.config.namespaces.options(channel);
        let state = conn.state.lock();
        let allowed = match options.subscribe {
            SubscribePolicy::Anyone => true,
            SubscribePolicy::Authenticated => state.authenticated,
            SubscribePolicy::Claim => {
                state.authenticated
                    && state
                        .allowed_channels
                        .as_ref()
                        .map(|list| list.iter().any(|p| pattern_matches(p, channel)))
                        .unwrap_or(false)
            }
        };
        if allowed {
            Ok(options)
        } else {
            Err(format!("not allowed to subscribe to channel {channel:?}"))
        }
    }

    /// Record `conn` as present in `channel` and tell members when the
    /// channel pushes join events.
    pub async fn presence_join(&self, conn: &Conn, channel: &str, options: &ChannelOptions) {
        if !options.presence {
            return;
        }
        let entry = self.presence_entry(conn);
        match self.presence.join(channel, &entry).await {
            Ok(()) => self.metrics.presence_size.inc(),
            Err(e) => tracing::warn!(error = %e, channel, "presence join failed"),
        }
        if options.join_leave {
            let frame = presence_event("join", channel, &entry);
            self.publish(
                Target::Channels(vec![channel.to_string()]),
                frame,
                Scope::Cluster,
            );
        }
    }

    /// The reverse of [`Node::presence_join`].
    pub async fn presence_leave(&self, conn: &Conn, channel: &str, options: &ChannelOptions) {
        if !options.presence {
            return;
        }
        match self.presence.leave(channel, &conn.client_id).await {
            Ok(()) => self.metrics.presence_size.dec(),
            Err(e) => tracing::warn!(error = %e, channel, "presence leave failed"),
        }
        if options.join_leave {
            let entry = self.presence_entry(conn);
            let frame = presence_event("leave", channel, &entry);
            self.publish(
                Target::Channels(vec![channel.to_string()]),
                frame,
                Scope::Cluster,
            );
        }
    }

    pub fn presence_entry(&self, conn: &Conn) -> PresenceEntry {
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

    /// The part of a target that other nodes may have to deliver.
    fn remote_part(&self, target: Target) -> Option<Target> {
        match target {
            Target::Clients(ids) => {
                let me = self.node_id();
                let remote: Vec<String> = ids
                    .into_iter()
                    .filter(|id| pubmesh_cluster_proto::owner_node(id) != Some(me))
                    .collect();
                (!remote.is_empty()).then_some(Target::Clients(remote))
            }
            other => Some(other),
        }
    }

    /// Tell the relay about channels and users that gained or lost their last
    /// local member.
    pub fn interest(&self, change: InterestChange) {
        if !change.is_empty() {
            self.relay.interest(&change);
        }
    }

    pub fn register(&self, conn: &Arc<Conn>) {
        self.metrics.connections_accepted.inc();
        let change = self.hub.register(conn);
        self.interest(change);
    }

    pub fn unregister(self: &Arc<Self>, conn: &Arc<Conn>) {
        let channels: Vec<Arc<str>> = if self.config.namespaces.is_plain() {
            Vec::new()
        } else {
            conn.state.lock().channels.iter().cloned().collect()
        };
        let change = self.hub.unregister(conn);
        self.interest(change);
        let present: Vec<(Arc<str>, ChannelOptions)> = channels
            .into_iter()
            .map(|c| {
                let o = self.config.namespaces.options(&c);
                (c, o)
            })
            .filter(|(_, o)| o.presence)
            .collect();
        if !present.is_empty() {
            let node = self.clone();
            let conn = conn.clone();
            tokio::spawn(async move {
                for (channel, options) in present {
                    node.presence_leave(&conn, &channel, &options).await;
                }
            });
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
        let mut merged: HashMap<String, u64> = HashMap::new();
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
}

/// `{"type":"publication","channel":…,"offset":…,"epoch":…,"data":…}`: the
/// enveloped delivery form for clients that asked for positions.
pub fn publication_frame(channel: &str, position: &Position, data: &Utf8Bytes) -> Utf8Bytes {
    Utf8Bytes::from(format!(
        "{{\"type\":\"publication\",\"channel\":{},\"offset\":{},\"epoch\":{},\"data\":{}}}",
        serde_json::to_string(channel).expect("strings serialize"),
        position.offset,
        serde_json::to_string(&position.epoch).expect("strings serialize"),
        data.as_str()
    ))
}

/// `{"type":"join"|"leave","channel":…,"client_id":…,"user_id":…,"node_id":…}`.
fn presence_event(kind: &str, channel: &str, entry: &PresenceEntry) -> Utf8Bytes {
    let mut value = serde_json::to_value(entry).expect("entries serialize");
    value["type"] = serde_json::Value::from(kind);
    value["channel"] = serde_json::Value::from(channel);
    Utf8Bytes::from(value.to_string())
}

impl NodeView for Node {
    fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Remove a gone node's presence entries and send their `leave` events
    /// (where the channel sends them). The store hands the entries to one
    /// survivor only, so each `leave` goes out once in the cluster.
    fn peer_gone<'a>(&'a self, node_id: &'a str) -> crate::relay::BoxFuture<'a, ()> {
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
                    let frame = presence_event("leave", &channel, &entry);
                    self.publish(Target::Channels(vec![channel]), frame, Scope::Cluster);
                }
            }
        })
    }

    fn deliver_publication(&self, channel: &str, position: &Position, data: &Utf8Bytes) -> usize {
        Node::deliver_publication(self, channel, position, data)
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
