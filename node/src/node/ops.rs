//! Mesh operations on a connection: admit, open, publish, join (with
//! recovery), leave, re-authenticate, history, presence, close.
//!
//! Front-ends pass their own frames in where ordering matters (a greeting,
//! an acknowledgement): the node queues them at the right moment, so no
//! delivery can slip in between, without knowing their format.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{MeshError, Node, Published, Scope};
use crate::codec::{Codec, Recipient, Slot};
use crate::conn::{Conn, ConnState, Identity};
use crate::delivery::{Delivery, DeliveryKind, Position, Target};
use crate::history::HistoryPage;
use crate::idempotency::Publisher;
use crate::outbox::{CloseReason, Outbox};
use crate::policy::{self, ChannelOptions, Claims};
use crate::presence::PresenceEntry;

/// The right to open one connection: taken by [`Node::admit`], held by the
/// connection, given back when it closes.
pub struct Admission {
    permit: Option<OwnedSemaphorePermit>,
}

/// A `join` request: channels, and whether deliveries on history channels
/// come with positions (`positioned`, or per channel when recovering `since`).
pub struct JoinRequest<'a> {
    pub channels: &'a [String],
    pub positioned: bool,
    pub since: &'a HashMap<String, Position>,
}

/// What a join did, for the front-end's acknowledgement.
pub struct Joined {
    pub channels: Vec<String>,
    /// For each positioned channel: its current position and, when the
    /// client asked to recover, whether everything it missed follows.
    pub positions: Vec<(String, Position, Option<bool>)>,
}

/// What a read needs from a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    History,
    Presence,
}

impl Node {
    /// Who a token says the connection is (anonymous when it is missing or
    /// invalid).
    pub fn identify(&self, token: Option<&str>) -> Identity {
        if let Some(token) = token {
            match self.auth.verify(token) {
                Ok(id) => {
                    return Identity {
                        root_id: id.user_id,
                        token: Some(crate::auth::strip_bearer(token).to_string()),
                        expires_at: Some(id.expires_at),
                        channels: id.channels,
                        info: id.info,
                    }
                }
                Err(e) => tracing::debug!(error = %e, "token rejected; socket is anonymous"),
            }
        }
        Identity {
            root_id: self.config.anonymous_id.clone(),
            token: None,
            expires_at: None,
            channels: None,
            info: None,
        }
    }

    /// May a new connection come in? Takes a connection permit, so a burst
    /// of upgrades cannot exceed `--max-connections`.
    pub fn admit(&self) -> Result<Admission, MeshError> {
        self.admit_socket(false)
    }

    /// Like [`Node::admit`] for a socket whose listener already took its
    /// permit when it accepted it (the socket holds it until it closes).
    pub fn admit_socket(&self, holds_permit: bool) -> Result<Admission, MeshError> {
        if self.is_draining() {
            return Err(MeshError::Draining);
        }
        if holds_permit {
            return Ok(Admission { permit: None });
        }
        let permit = match &self.permits {
            None => None,
            Some(permits) => match permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.metrics.errors.with_label_values(&["capacity"]).inc();
                    return Err(MeshError::AtCapacity);
                }
            },
        };
        Ok(Admission { permit })
    }

    /// May a connection with this identity subscribe to `channel`?
    pub fn may_subscribe_as(
        &self,
        identity: &Identity,
        channel: &str,
    ) -> Result<ChannelOptions, MeshError> {
        let options = self.config.namespaces.options(channel);
        let claims = Claims {
            authenticated: identity.expires_at.is_some(),
            channels: identity.channels.as_deref(),
        };
        policy::may_subscribe(&options, claims, channel).map_err(|m| {
            self.metrics.errors.with_label_values(&["forbidden"]).inc();
            MeshError::Forbidden(m)
        })?;
        Ok(options)
    }

    fn may_subscribe(&self, conn: &Conn, channel: &str) -> Result<ChannelOptions, MeshError> {
        let options = self.config.namespaces.options(channel);
        let state = conn.state.lock();
        let claims = Claims {
            authenticated: state.authenticated,
            channels: state.allowed_channels.as_deref(),
        };
        policy::may_subscribe(&options, claims, channel).map_err(MeshError::Forbidden)?;
        Ok(options)
    }

    /// Open an admitted connection: register it (and its `home` channel,
    /// native connections only), queue the front-end's `greeting`, then
    /// announce it in the home channel's presence. Under `--require-auth` an
    /// anonymous connection is closed with 4001 instead of greeted.
    pub async fn open(
        &self,
        admission: Admission,
        identity: Identity,
        codec: Arc<dyn Codec>,
        home: Option<String>,
        greeting: impl FnOnce(&Conn) -> Option<Utf8Bytes>,
    ) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self
                .next_conn_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            client_id: Arc::from(pubmesh_cluster_proto::new_client_id(self.node_id())),
            home: home.map(Arc::from),
            outbox: Outbox::new(self.config.outbox_bytes),
            codec,
            state: Mutex::new(ConnState {
                root_id: Arc::from(identity.root_id),
                token: identity.token,
                authenticated: identity.expires_at.is_some(),
                expires_at: identity.expires_at.unwrap_or(0),
                channels: Default::default(),
                allowed_channels: identity.channels.map(Arc::from),
                info: identity.info.map(Arc::from),
                positioned: HashMap::new(),
                churn: Default::default(),
                tag: None,
            }),
            permit: Mutex::new(admission.permit),
        });
        self.metrics.connections_accepted.inc();
        let change = self.hub.register(&conn);
        self.interest(change);
        if self.config.require_auth && !conn.state.lock().authenticated {
            conn.outbox.close(CloseReason::Unauthorized);
        } else {
            if let Some(frame) = greeting(&conn) {
                conn.outbox.push(frame);
            }
            if let Some(home) = conn.home.clone() {
                let options = self.config.namespaces.options(&home);
                self.presence_join(&conn, &home, &options).await;
            }
        }
        if self.is_draining() {
            conn.outbox.close(CloseReason::Drain);
        }
        conn
    }

    /// Queue a frame (a reply) to one connection.
    pub fn send(&self, conn: &Conn, frame: Utf8Bytes) -> bool {
        let sent = self.hub.push(conn, crate::codec::Frames::One(frame));
        if sent {
            self.metrics.deliveries.inc();
        }
        sent
    }

    /// Publish from a connection, after the publish policy: channels per
    /// namespace (else `--client-channel-publish`), users and clients per
    /// `--client-user-publish` / `--client-client-publish`.
    /// With `confirm`, waits for the relay's outcome (the reply then says
    /// whether the other nodes got it). An idempotency `key` is scoped to
    /// the socket's user when it is authenticated, else to the connection.
    pub async fn client_publish(
        &self,
        conn: &Conn,
        mut delivery: Delivery,
        confirm: bool,
        key: Option<&str>,
    ) -> Result<Published, MeshError> {
        match &delivery.target {
            Target::Channels(channels) => {
                for c in channels {
                    let rule = self
                        .config
                        .namespaces
                        .options(c)
                        .publish
                        .unwrap_or(self.config.client_channel_publish);
                    policy::may_publish_channel(rule, conn.is_member(c), c)
                        .map_err(MeshError::Forbidden)?;
                }
            }
            target => {
                let (rule, kind) = match target {
                    Target::Users(_) => (self.config.client_user_publish, "user"),
                    _ => (self.config.client_client_publish, "client"),
                };
                let authenticated = conn.state.lock().authenticated;
                policy::may_publish_direct(rule, authenticated, kind)
                    .map_err(MeshError::Forbidden)?;
            }
        }
        delivery.origin = Some(conn.client_id.clone());
        if let Some(key) = key {
            let (authenticated, root) = {
                let state = conn.state.lock();
                (state.authenticated, state.root_id.clone())
            };
            let publisher = if authenticated {
                Publisher::User(&root)
            } else {
                Publisher::Connection(&conn.client_id)
            };
            delivery.idempotency = Some(crate::idempotency::scoped(publisher, key));
        }
        if confirm {
            self.publish_channels_confirmed(delivery, Scope::Cluster)
                .await
        } else {
            self.publish_channels(delivery, Scope::Cluster).await
        }
    }

    /// Join channels. On history channels a positioned join gets deliveries
    /// with positions; with `since`, it first gets every publication it
    /// missed (or `recovered: false`). `reply` builds the front-end's
    /// acknowledgement, queued before the missed publications and before
    /// anything published meanwhile.
    pub async fn join(
        &self,
        conn: &Arc<Conn>,
        request: JoinRequest<'_>,
        reply: impl FnOnce(&Joined) -> Option<Utf8Bytes>,
    ) -> Result<(), MeshError> {
        let JoinRequest {
            channels,
            positioned,
            since,
        } = request;
        let wants_position = |c: &String| positioned || since.contains_key(c);
        let mut options = Vec::with_capacity(channels.len());
        for c in channels {
            let o = self.may_subscribe(conn, c)?;
            if wants_position(c) && !o.history() {
                return Err(MeshError::NoHistory(c.clone()));
            }
            options.push(o);
        }
        let joined: Vec<bool> = channels.iter().map(|c| !conn.is_member(c)).collect();
        let fresh: Vec<&str> = channels
            .iter()
            .zip(&joined)
            .filter(|(_, new)| **new)
            .map(|(c, _)| c.as_str())
            .collect();
        self.may_churn(conn, &fresh)?;
        {
            // Before joining, so live publications are caught from the start.
            let mut state = conn.state.lock();
            for c in channels.iter().filter(|c| wants_position(c)) {
                let pos = state.positioned.entry(Arc::from(c.as_str())).or_default();
                if let Some(p) = since.get(c) {
                    pos.epoch = Some(Arc::from(p.epoch.as_str()));
                    pos.last = p.offset;
                }
                pos.recovering = Some(Vec::new());
            }
        }
        let limit = self.config.max_channels_per_connection;
        let change = match self.hub.subscribe(conn, channels, limit) {
            Ok(change) => change,
            Err(limit) => {
                let mut state = conn.state.lock();
                for (c, new) in channels.iter().zip(&joined) {
                    if *new {
                        state.positioned.remove(c.as_str());
                    }
                }
                return Err(MeshError::TooManyChannels(limit));
            }
        };
        conn.state.lock().churn.record(fresh.iter().copied());
        // The join is answered (and history read) only once the broker sends
        // this node the new channels: a publish after the reply, or after the
        // history read, is never lost to a subscription still on its way.
        let subscribes = !change.channels_added.is_empty();
        self.interest(change);
        if subscribes {
            self.relay.interest_applied().await;
        }

        // Read what each recovering channel missed (and the positions of the others).
        let mut positions = Vec::new();
        let mut missed = Vec::new();
        for (c, o) in channels.iter().zip(&options) {
            if !wants_position(c) {
                continue;
            }
            let from = since.get(c);
            self.metrics.history_reads.inc();
            let page = self.history.read(c, from, o.history_size, o).await;
            let (top, publications, recovered) = match page {
                Ok(page) => (page.top, page.publications, page.recovered),
                Err(crate::history::HistoryError::BadPosition { .. }) if from.is_some() => {
                    // A position from the future: nothing can be trusted.
                    let top = self.history.read(c, None, 0, o).await.map(|p| p.top);
                    match top {
                        Ok(top) => (top, Vec::new(), false),
                        Err(e) => return Err(self.abort_recovery(conn, c, e.into())),
                    }
                }
                Err(e) => return Err(self.abort_recovery(conn, c, e.into())),
            };
            if from.is_some() {
                let result = if recovered { "ok" } else { "failed" };
                self.metrics.recoveries.with_label_values(&[result]).inc();
            }
            positions.push((c.clone(), top.clone(), from.map(|_| recovered)));
            missed.push((c.clone(), top, publications, from.is_some() && recovered));
        }
        let ack = reply(&Joined {
            channels: channels.to_vec(),
            positions,
        });

        // The reply, then the missed publications, then what arrived
        // meanwhile: all under the connection's lock so nothing slips between.
        {
            let mut state = conn.state.lock();
            let mut frames: Vec<Utf8Bytes> = ack.into_iter().collect();
            let to = Recipient {
                client_id: &conn.client_id,
                positioned: true,
                tag: None,
                member_of: None,
            };
            let encode = |d: &Delivery, frames: &mut Vec<Utf8Bytes>| {
                let slot = conn.codec.slot(d, &to);
                if slot != Slot::Skip {
                    frames.extend(conn.codec.encode(d, slot, &to).iter().cloned());
                }
            };
            for (c, top, publications, recovered) in missed {
                let Some(pos) = state.positioned.get_mut(c.as_str()) else {
                    continue;
                };
                if !recovered {
                    // Nothing to replay: continue live from the current top.
                    if pos.epoch.as_deref() == Some(top.epoch.as_str()) {
                        pos.last = pos.last.max(top.offset);
                    } else {
                        pos.epoch = Some(Arc::from(top.epoch.as_str()));
                        pos.last = top.offset;
                    }
                }
                for p in publications {
                    if pos.advance(&top.epoch, p.offset) {
                        let mut d = Delivery::new(Target::Channels(vec![c.clone()]), p.data);
                        d.position = Some(Position {
                            offset: p.offset,
                            epoch: top.epoch.clone(),
                        });
                        encode(&d, &mut frames);
                    }
                }
                for d in pos.recovering.take().unwrap_or_default() {
                    let Some(p) = &d.position else { continue };
                    if pos.advance(&p.epoch, p.offset) {
                        encode(&d, &mut frames);
                    }
                }
            }
            for frame in frames {
                conn.outbox.push(frame);
            }
        }
        for ((c, o), new) in channels.iter().zip(&options).zip(joined) {
            if new {
                self.presence_join(conn, c, o).await;
            }
        }
        Ok(())
    }

    /// A recovery that cannot read history: deliver live from now on.
    fn abort_recovery(&self, conn: &Conn, channel: &str, error: MeshError) -> MeshError {
        let mut state = conn.state.lock();
        if let Some(pos) = state.positioned.get_mut(channel) {
            pos.recovering = None;
        }
        error
    }

    /// Leave channels (never the native home channel); `reply` is queued
    /// before the presence leave events.
    pub async fn leave(
        &self,
        conn: &Arc<Conn>,
        channels: &[String],
        reply: impl FnOnce() -> Option<Utf8Bytes>,
    ) {
        let leaving: Vec<String> = channels
            .iter()
            .filter(|c| Some(c.as_str()) != conn.home.as_deref())
            .filter(|c| conn.is_member(c))
            .cloned()
            .collect();
        let change = self.hub.unsubscribe(conn, channels);
        self.interest(change);
        {
            let mut state = conn.state.lock();
            for c in &leaving {
                state.positioned.remove(c.as_str());
            }
            // A leave is never refused, but it counts.
            state.churn.record(leaving.iter().map(String::as_str));
        }
        if let Some(frame) = reply() {
            self.send(conn, frame);
        }
        for c in &leaving {
            let options = self.config.namespaces.options(c);
            self.presence_leave(conn, c, &options).await;
        }
    }

    /// Take a new identity (a fresh token, or none). Under `--require-auth`
    /// a connection left without a valid token is closed with 4001 and
    /// [`MeshError::Unauthorized`] returned.
    pub fn reauthenticate(&self, conn: &Arc<Conn>, identity: Identity) -> Result<(), MeshError> {
        {
            let mut state = conn.state.lock();
            state.allowed_channels = identity.channels.clone().map(Arc::from);
            state.info = identity.info.clone().map(Arc::from);
        }
        let authenticated = identity.expires_at.is_some();
        let change = self.hub.change_user(
            conn,
            Arc::from(identity.root_id),
            identity.token,
            identity.expires_at,
        );
        self.interest(change);
        if self.config.require_auth && !authenticated {
            conn.outbox.close(CloseReason::Unauthorized);
            return Err(MeshError::Unauthorized);
        }
        Ok(())
    }

    /// May `conn` (or the server API, `None`) read `channel`'s history or
    /// presence? Returns the channel's options.
    pub fn may_read(
        &self,
        conn: Option<&Conn>,
        channel: &str,
        what: Read,
    ) -> Result<ChannelOptions, MeshError> {
        let options = match conn {
            Some(conn) => self.may_subscribe(conn, channel)?,
            None => self.config.namespaces.options(channel),
        };
        match what {
            Read::History if !options.history() => Err(MeshError::NoHistory(channel.into())),
            Read::Presence if !options.presence => Err(MeshError::NoPresence(channel.into())),
            _ => Ok(options),
        }
    }

    /// A channel's last `limit` publications, or those after `since`.
    pub async fn history(
        &self,
        channel: &str,
        since: Option<&Position>,
        limit: usize,
        options: &ChannelOptions,
    ) -> Result<HistoryPage, MeshError> {
        self.metrics.history_reads.inc();
        let limit = limit.min(options.history_size);
        Ok(self.history.peek(channel, since, limit, options).await?)
    }

    /// Who is in a channel, cluster-wide.
    pub async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, MeshError> {
        self.presence
            .list(channel)
            .await
            .map_err(|e| MeshError::Unavailable(e.to_string()))
    }

    /// The connection ended (closed by the server for a reason, or by the
    /// client: `None`): count and log it, drop what is queued, unregister
    /// it, give back its permit and leave presence.
    pub fn close(self: &Arc<Self>, conn: &Arc<Conn>, closed_by_server: Option<CloseReason>) {
        if let Some(reason) = closed_by_server {
            crate::close_log::policy_close(reason, &conn.client_id);
        }
        let label = closed_by_server.map(CloseReason::label).unwrap_or("client");
        self.metrics
            .connections_closed
            .with_label_values(&[label])
            .inc();
        conn.outbox.close(CloseReason::Disconnected);
        let channels: Vec<Arc<str>> = if self.config.namespaces.is_plain() {
            Vec::new()
        } else {
            conn.state.lock().channels.iter().cloned().collect()
        };
        let change = self.hub.unregister(conn);
        self.interest(change);
        drop(conn.permit.lock().take());
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

    /// Record `conn` as present in `channel` and tell members when the
    /// channel pushes join events.
    async fn presence_join(&self, conn: &Conn, channel: &str, options: &ChannelOptions) {
        if !options.presence {
            return;
        }
        let entry = self.presence_entry(conn);
        match self.presence.join(channel, &entry).await {
            Ok(()) => self.metrics.presence_size.inc(),
            Err(e) => tracing::warn!(error = %e, channel, "presence join failed"),
        }
        if options.join_leave {
            self.publish(
                presence_event(DeliveryKind::Join, channel, &entry),
                Scope::Cluster,
            );
        }
    }

    /// The reverse of [`Node::presence_join`].
    async fn presence_leave(&self, conn: &Conn, channel: &str, options: &ChannelOptions) {
        if !options.presence {
            return;
        }
        match self.presence.leave(channel, &conn.client_id).await {
            Ok(()) => self.metrics.presence_size.dec(),
            Err(e) => tracing::warn!(error = %e, channel, "presence leave failed"),
        }
        if options.join_leave {
            let entry = self.presence_entry(conn);
            self.publish(
                presence_event(DeliveryKind::Leave, channel, &entry),
                Scope::Cluster,
            );
        }
    }

    /// Re-announce every local presence entry (cluster mode keeps them
    /// alive this way).
    pub(super) async fn refresh_presence_once(&self) {
        for channel in self.hub.channel_names() {
            if !self.config.namespaces.options(&channel).presence {
                continue;
            }
            for conn in self.hub.channel_members(&channel) {
                let entry = self.presence_entry(&conn);
                if let Err(e) = self.presence.join(&channel, &entry).await {
                    tracing::debug!(error = %e, "presence refresh failed");
                    break;
                }
            }
        }
    }
}

/// A presence event: the entry as JSON data, the channel, and the kind.
pub(super) fn presence_event(kind: DeliveryKind, channel: &str, entry: &PresenceEntry) -> Delivery {
    let data = serde_json::to_string(entry).expect("entries serialize");
    let mut d = Delivery::new(
        Target::Channels(vec![channel.to_string()]),
        Utf8Bytes::from(data),
    );
    d.kind = kind;
    d.event = Some(Arc::from(match kind {
        DeliveryKind::Leave => "leave",
        _ => "join",
    }));
    d
}
