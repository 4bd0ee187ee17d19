//! The hub: this node's local registries of connections, channels and users,
//! and local delivery.
//!
//! Registries are sharded by key hash, each shard behind its own mutex; no lock
//! is ever held across an `.await`, and fan-out takes the member handles out of
//! the shard (a channel's shared snapshot, see [`members`]) before pushing to
//! outboxes. Counts are kept as they change so that
//! metrics and heartbeats never scan a map.

use std::collections::hash_map::Entry;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::codec::{EncodeCache, Recipient};
use crate::conn::{Conn, ConnState, Identity};
use crate::delivery::{Delivery, InterestChange, Target};
use crate::hashing::{HashMap, HashSet, RandomState};
use crate::metrics::Metrics;
use crate::outbox::CloseReason;

mod members;
mod push;

use members::Members;
pub use members::Recipients;
pub(super) use push::{encode, encode_past};

const SHARDS: usize = 64;

type Shard<V> = Mutex<HashMap<Arc<str>, V>>;

/// A map from a name (channel, user, client id) to members, sharded by hash.
struct Registry<V> {
    shards: Box<[Shard<V>]>,
    hasher: RandomState,
}

impl<V> Registry<V> {
    fn new() -> Self {
        Registry {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            hasher: RandomState::default(),
        }
    }

    fn shard(&self, key: &str) -> &Shard<V> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }
}

/// Live counts of the hub.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HubCounts {
    pub connections: u64,
    pub users: u64,
    pub channels: u64,
    pub subscriptions: u64,
}

/// This node's registries and local delivery.
pub struct Hub {
    channels: Registry<Members>,
    users: Registry<Members>,
    clients: Registry<Arc<Conn>>,
    /// Counters mirrored into gauges; atomics so they are exact without a lock.
    n_connections: AtomicI64,
    n_channels: AtomicI64,
    n_users: AtomicI64,
    n_subscriptions: AtomicI64,
    metrics: Arc<Metrics>,
    /// Reads from history what a positioned subscription missed.
    node: std::sync::OnceLock<std::sync::Weak<super::Node>>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub {
            channels: Registry::new(),
            users: Registry::new(),
            clients: Registry::new(),
            n_connections: AtomicI64::new(0),
            n_channels: AtomicI64::new(0),
            n_users: AtomicI64::new(0),
            n_subscriptions: AtomicI64::new(0),
            metrics,
            node: std::sync::OnceLock::new(),
        }
    }

    pub fn counts(&self) -> HubCounts {
        let get = |a: &AtomicI64| a.load(Ordering::Relaxed).max(0) as u64;
        HubCounts {
            connections: get(&self.n_connections),
            users: get(&self.n_users),
            channels: get(&self.n_channels),
            subscriptions: get(&self.n_subscriptions),
        }
    }

    fn add(&self, counter: &AtomicI64, gauge: &prometheus::IntGauge, delta: i64) {
        counter.fetch_add(delta, Ordering::Relaxed);
        gauge.add(delta);
    }

    /// Add a new connection: its client id, its user and its home channel
    /// (native connections only).
    pub fn register(&self, conn: &Arc<Conn>) -> InterestChange {
        self.clients
            .shard(&conn.client_id)
            .lock()
            .insert(conn.client_id.clone(), conn.clone());
        self.add(&self.n_connections, &self.metrics.connections, 1);
        let mut change = InterestChange::default();
        let root = conn.root_id();
        if self.join_user(conn, &root) {
            change.users_added.push(root);
        }
        if let Some(channel) = conn.home.clone() {
            conn.state.lock().channels.insert(channel.clone());
            if self.join_channel(conn, &channel) {
                change.channels_added.push(channel);
            }
        }
        change
    }

    /// Remove a connection from every registry.
    pub fn unregister(&self, conn: &Arc<Conn>) -> InterestChange {
        let mut change = InterestChange::default();
        let (root, channels) = {
            let mut state = conn.state.lock();
            (state.root_id.clone(), std::mem::take(&mut state.channels))
        };
        for channel in channels {
            if self.leave_channel(conn, &channel) {
                change.channels_removed.push(channel);
            }
        }
        if self.leave_user(conn, &root) {
            change.users_removed.push(root);
        }
        if self
            .clients
            .shard(&conn.client_id)
            .lock()
            .remove(&conn.client_id)
            .is_some()
        {
            self.add(&self.n_connections, &self.metrics.connections, -1);
        }
        change
    }

    /// Join channels. Returns the channels this connection newly joined and the
    /// interest change, or the limit error.
    pub fn subscribe(
        &self,
        conn: &Arc<Conn>,
        channels: &[String],
        limit: usize,
    ) -> Result<InterestChange, usize> {
        let fresh: Vec<Arc<str>> = {
            let mut state = conn.state.lock();
            let mut fresh: Vec<Arc<str>> = Vec::new();
            for c in channels {
                if !state.channels.contains(c.as_str()) && !fresh.iter().any(|f| **f == **c) {
                    fresh.push(Arc::from(c.as_str()));
                }
            }
            if state.channels.len() + fresh.len() > limit {
                return Err(limit);
            }
            state.channels.extend(fresh.iter().cloned());
            fresh
        };
        let mut change = InterestChange::default();
        for channel in fresh {
            if self.join_channel(conn, &channel) {
                change.channels_added.push(channel);
            }
        }
        Ok(change)
    }

    /// Leave channels (never the connection's home channel).
    pub fn unsubscribe(&self, conn: &Arc<Conn>, channels: &[String]) -> InterestChange {
        let gone: Vec<Arc<str>> = {
            let mut state = conn.state.lock();
            channels
                .iter()
                .filter(|c| Some(c.as_str()) != conn.home.as_deref())
                .filter_map(|c| state.channels.take(c.as_str()))
                .collect()
        };
        let mut change = InterestChange::default();
        for channel in gone {
            if self.leave_channel(conn, &channel) {
                change.channels_removed.push(channel);
            }
        }
        change
    }

    /// Give a connection another identity (after `change_user`, or when its
    /// token expires), if `only_if` still holds for its state: checked and
    /// changed under one lock. `None` when it did not hold.
    pub fn change_identity(
        &self,
        conn: &Arc<Conn>,
        identity: Identity,
        only_if: impl FnOnce(&ConnState) -> bool,
    ) -> Option<InterestChange> {
        let root_id: Arc<str> = Arc::from(identity.root_id);
        let old = {
            let mut state = conn.state.lock();
            if !only_if(&state) {
                return None;
            }
            state.token = identity.token;
            state.authenticated = identity.expires_at.is_some();
            state.expires_at = identity.expires_at.unwrap_or(0);
            state.allowed_channels = identity.channels.map(Arc::from);
            state.info = identity.info.map(Arc::from);
            std::mem::replace(&mut state.root_id, root_id.clone())
        };
        let mut change = InterestChange::default();
        if old == root_id {
            return Some(change);
        }
        if self.leave_user(conn, &old) {
            change.users_removed.push(old);
        }
        if self.join_user(conn, &root_id) {
            change.users_added.push(root_id);
        }
        Some(change)
    }

    /// Returns true when the channel got its first local member.
    fn join_channel(&self, conn: &Arc<Conn>, channel: &Arc<str>) -> bool {
        let first = join(&self.channels, conn, channel);
        self.add(&self.n_subscriptions, &self.metrics.subscriptions, 1);
        if first {
            self.add(&self.n_channels, &self.metrics.channels, 1);
        }
        first
    }

    fn leave_channel(&self, conn: &Arc<Conn>, channel: &Arc<str>) -> bool {
        let (was_member, last) = leave(&self.channels, conn, channel);
        if was_member {
            self.add(&self.n_subscriptions, &self.metrics.subscriptions, -1);
        }
        if last {
            self.add(&self.n_channels, &self.metrics.channels, -1);
        }
        last
    }

    fn join_user(&self, conn: &Arc<Conn>, user: &Arc<str>) -> bool {
        let first = join(&self.users, conn, user);
        if first {
            self.add(&self.n_users, &self.metrics.users, 1);
        }
        first
    }

    fn leave_user(&self, conn: &Arc<Conn>, user: &Arc<str>) -> bool {
        let (_, last) = leave(&self.users, conn, user);
        if last {
            self.add(&self.n_users, &self.metrics.users, -1);
        }
        last
    }

    /// A local connection by client id.
    pub fn client(&self, client_id: &str) -> Option<Arc<Conn>> {
        self.clients.shard(client_id).lock().get(client_id).cloned()
    }

    /// The local recipients of a target, each once.
    pub fn recipients(&self, target: &Target) -> Vec<Arc<Conn>> {
        match target {
            Target::Channels(names) => self.members_of(&self.channels, names),
            Target::Users(names) => self.members_of(&self.users, names),
            Target::Clients(ids) => {
                let mut out: Vec<Arc<Conn>> = ids.iter().filter_map(|id| self.client(id)).collect();
                if out.len() > 1 {
                    let mut seen = crate::hashing::set_with_capacity(out.len());
                    out.retain(|c| seen.insert(c.id));
                }
                out
            }
            Target::All => {
                let mut out = Vec::with_capacity(self.counts().connections as usize);
                for shard in self.clients.shards.iter() {
                    out.extend(shard.lock().values().cloned());
                }
                out
            }
        }
    }

    /// The local recipients of a target, each once; one channel's or one
    /// user's are their shared snapshot.
    pub fn shared_recipients(&self, target: &Target) -> Recipients {
        match target {
            Target::Channels(names) if names.len() == 1 => shared(&self.channels, &names[0]),
            Target::Users(names) if names.len() == 1 => shared(&self.users, &names[0]),
            _ => Recipients::Owned(self.recipients(target)),
        }
    }

    /// The local members of one channel.
    pub fn channel_members(&self, channel: &str) -> Vec<Arc<Conn>> {
        one_key(&self.channels, channel)
    }

    fn members_of(&self, registry: &Registry<Members>, names: &[String]) -> Vec<Arc<Conn>> {
        if let [name] = names {
            return one_key(registry, name);
        }
        let mut seen: HashMap<u64, Arc<Conn>> = HashMap::default();
        for name in names {
            let shard = registry.shard(name).lock();
            if let Some(members) = shard.get(name.as_str()) {
                for (id, conn) in members.iter() {
                    seen.entry(*id).or_insert_with(|| conn.clone());
                }
            }
        }
        seen.into_values().collect()
    }

    /// Encode and queue `delivery` to every local recipient of its target,
    /// each at most once. Returns how many outboxes took it.
    pub fn deliver(&self, delivery: &Delivery) -> usize {
        let started = std::time::Instant::now();
        let recipients = self.shared_recipients(&delivery.target);
        let delivered = self.fan_out(&recipients, delivery);
        self.metrics
            .fanout_latency
            .observe(started.elapsed().as_secs_f64());
        delivered
    }

    /// Encode `delivery` with each recipient's codec (once per codec slot)
    /// and queue it. Positioned recipients of a history publication skip
    /// duplicates, and those still recovering buffer it.
    pub fn fan_out(&self, recipients: &[Arc<Conn>], delivery: &Delivery) -> usize {
        let mut cache = EncodeCache::default();
        let mut delivered = 0;
        let positioned_channel = match (&delivery.position, &delivery.channel) {
            (Some(p), Some(c)) => Some((p, c)),
            _ => None,
        };
        // Positioned recipients that found a gap: the offset each got last.
        let mut gaps: Vec<(u64, Arc<Conn>)> = Vec::new();
        for conn in recipients {
            if let Some((position, channel)) = positioned_channel {
                let mut state = conn.state.lock();
                if let Some(pos) = state.positioned.get_mut(&**channel) {
                    if let Some(held) = &mut pos.recovering {
                        self.hold(conn, held, delivery);
                        continue;
                    }
                    if pos.gap(&position.epoch, position.offset) {
                        // Hold this one, as a recovery does, while what is
                        // missing is read from history.
                        gaps.push((pos.last, conn.clone()));
                        self.begin_recovery(pos);
                        if let Some(held) = &mut pos.recovering {
                            self.hold(conn, held, delivery);
                        }
                        continue;
                    }
                    if !pos.advance(&position.epoch, position.offset) {
                        continue;
                    }
                    // Queued before the lock is let go: a later offset that
                    // another task delivers cannot pass this one.
                    let tag = delivery.audience.as_ref().and_then(|_| state.tag.clone());
                    let member_of = |channel: &str| state.channels.contains(channel);
                    let to = Recipient {
                        client_id: &conn.client_id,
                        positioned: true,
                        tag: tag.as_ref(),
                        member_of: Some(&member_of),
                    };
                    delivered += usize::from(self.queue(&mut cache, conn, delivery, &to));
                    continue;
                }
            }
            // Only deliveries with an audience read the connection's tag.
            let tag = match &delivery.audience {
                Some(_) => conn.state.lock().tag.clone(),
                None => None,
            };
            let member_of = |channel: &str| conn.is_member(channel);
            let to = Recipient {
                client_id: &conn.client_id,
                positioned: false,
                tag: tag.as_ref(),
                member_of: Some(&member_of),
            };
            delivered += usize::from(self.queue(&mut cache, conn, delivery, &to));
        }
        if let Some((position, channel)) = positioned_channel.filter(|_| !gaps.is_empty()) {
            self.repair(channel, &position.epoch, gaps);
        }
        self.metrics.deliveries.inc_by(delivered as u64);
        delivered
    }

    /// Encode `delivery` for `to` (through `cache`) and queue it to `conn`;
    /// whether it took frames. Only deliveries with an audience may be
    /// droppable.
    fn queue(
        &self,
        cache: &mut EncodeCache,
        conn: &Conn,
        delivery: &Delivery,
        to: &Recipient<'_>,
    ) -> bool {
        let Some(frames) = cache.frames(&conn.codec, delivery, to) else {
            return false;
        };
        match &delivery.audience {
            Some(_) if conn.codec.droppable(delivery) => self.offer(conn, frames),
            _ => self.push(conn, frames),
        }
    }

    /// Have the node read what the connections of `gaps` missed of
    /// `channel` (after the offset each got last, in `epoch`) and deliver it
    /// ahead of what is held ([`super::Node::repair`]): one history read per
    /// distinct offset, however many members a gap reaches. Without a
    /// running node (no tokio runtime, or a hub on its own) the recoveries
    /// end here and what was held follows the gap. Called without the
    /// connections' locks held.
    pub(super) fn repair(&self, channel: &Arc<str>, epoch: &str, mut gaps: Vec<(u64, Arc<Conn>)>) {
        let node = self.node.get().and_then(std::sync::Weak::upgrade);
        let runtime = tokio::runtime::Handle::try_current();
        let (Some(node), Ok(runtime)) = (node, runtime) else {
            for (_, conn) in gaps {
                let mut frames = Vec::new();
                let mut state = conn.state.lock();
                if let Some(pos) = state.positioned.get_mut(&**channel) {
                    self.flush_held(&conn, pos, &mut frames, false);
                }
                self.push(&conn, crate::codec::Frames::Many(frames));
            }
            return;
        };
        gaps.sort_by_key(|(offset, _)| *offset);
        for group in gaps.chunk_by(|a, b| a.0 == b.0) {
            let from = crate::delivery::Position {
                offset: group[0].0,
                epoch: epoch.to_string(),
            };
            let conns = group.iter().map(|(_, conn)| conn.clone()).collect();
            runtime.spawn(node.clone().repair(conns, channel.clone(), from));
        }
    }

    /// The node that repairs gaps in positioned subscriptions.
    pub fn repair_with(&self, node: std::sync::Weak<super::Node>) {
        let _ = self.node.set(node);
    }

    /// Close local connections by client id or user id; returns how many.
    pub fn disconnect(&self, client_ids: &[String], root_ids: &[String]) -> usize {
        let mut conns = self.recipients(&Target::Clients(client_ids.to_vec()));
        if !root_ids.is_empty() {
            conns.extend(self.recipients(&Target::Users(root_ids.to_vec())));
        }
        let mut seen = HashSet::default();
        conns
            .into_iter()
            .filter(|c| seen.insert(c.id))
            .filter(|c| c.outbox.close(CloseReason::Disconnected))
            .count()
    }

    /// Every local channel with its local member count.
    pub fn channel_counts(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for shard in self.channels.shards.iter() {
            out.extend(
                shard
                    .lock()
                    .iter()
                    .map(|(name, members)| (name.to_string(), members.len() as u64)),
            );
        }
        out
    }

    /// Every local channel name.
    pub fn channel_names(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for shard in self.channels.shards.iter() {
            out.extend(shard.lock().keys().cloned());
        }
        out
    }

    /// Every local user id.
    pub fn user_names(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for shard in self.users.shards.iter() {
            out.extend(shard.lock().keys().cloned());
        }
        out
    }

    /// Every local connection.
    pub fn connections(&self) -> Vec<Arc<Conn>> {
        self.recipients(&Target::All)
    }
}

fn one_key(registry: &Registry<Members>, key: &str) -> Vec<Arc<Conn>> {
    registry
        .shard(key)
        .lock()
        .get(key)
        .map(|m| m.iter().map(|(_, c)| c.clone()).collect())
        .unwrap_or_default()
}

fn shared(registry: &Registry<Members>, key: &str) -> Recipients {
    match registry.shard(key).lock().get_mut(key) {
        Some(members) => members.shared(),
        None => Recipients::Owned(Vec::new()),
    }
}

fn join(registry: &Registry<Members>, conn: &Arc<Conn>, key: &Arc<str>) -> bool {
    let mut shard = registry.shard(key).lock();
    match shard.entry(key.clone()) {
        Entry::Occupied(mut e) => {
            e.get_mut().insert(conn);
            false
        }
        Entry::Vacant(e) => {
            e.insert(Members::one(conn));
            true
        }
    }
}

/// Returns (was a member, was the last member).
fn leave(registry: &Registry<Members>, conn: &Conn, key: &str) -> (bool, bool) {
    let mut shard = registry.shard(key).lock();
    let Some(members) = shard.get_mut(key) else {
        return (false, false);
    };
    let was_member = members.remove(conn.id);
    if members.is_empty() {
        shard.remove(key);
        return (was_member, true);
    }
    (was_member, false)
}

#[cfg(test)]
mod tests;
