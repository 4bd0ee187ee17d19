//! Mesh operations on a connection: admit, open, publish, leave, history,
//! presence, close (joining is in `join.rs`, identity in `identity.rs`).
//!
//! Front-ends pass their own frames in where ordering matters (a greeting,
//! an acknowledgement): the node queues them at the right moment, so no
//! delivery can slip in between, without knowing their format.

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{MeshError, Node, Published, Scope};
use crate::codec::Codec;
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

/// What a read needs from a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    History,
    Presence,
}

impl Node {
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

    pub(super) fn may_subscribe(
        &self,
        conn: &Conn,
        channel: &str,
    ) -> Result<ChannelOptions, MeshError> {
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
    /// native connections only), wait until its user's topic and its home
    /// channel are subscribed cluster-wide (as a join waits: the relay has
    /// them in place and every peer that may skip publishes knows), queue
    /// the front-end's `greeting`, then announce it in the home channel's
    /// presence. The greeting is the connection's first frame: whatever was
    /// queued to it during the wait is dropped (it was published before).
    /// Under `--require-auth` an anonymous connection is closed with 4001
    /// instead of greeted; when the wait fails, with 1013 (try again later).
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
                positioned: Default::default(),
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
        } else if self.connection_interest(&conn).await.is_err() {
            // Nothing reaches the socket but the close (1013).
            conn.outbox.start(None);
            conn.outbox.close(CloseReason::Unavailable);
        } else {
            conn.outbox.start(greeting(&conn));
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
    ///
    /// The policy, and the common publish that waits for nothing, run when
    /// this is called; only a publish that waits (for the relay's outcome,
    /// an idempotency check or a history append) is a future of its own,
    /// boxed. So the future returned is small, and so is a front-end's
    /// frame handler that awaits it (BENCHMARKS.md, "W2 per delivery: a
    /// small frame handler").
    pub fn client_publish<'a>(
        &'a self,
        conn: &Conn,
        delivery: Delivery,
        confirm: bool,
        key: Option<&str>,
    ) -> impl Future<Output = Result<Published, MeshError>> + Send + 'a {
        let step = self.authorize_publish(conn, delivery, key).map(|delivery| {
            if !confirm && delivery.idempotency.is_none() && self.names_no_history(&delivery) {
                Ok(self.publish(delivery, Scope::Cluster))
            } else {
                Err(Box::pin(self.publish_with_options(
                    delivery,
                    Scope::Cluster,
                    confirm,
                )))
            }
        });
        async move {
            match step? {
                Ok(done) => Ok(done),
                Err(waiting) => waiting.await,
            }
        }
    }

    /// The publish policy for a publish from `conn`; sets the delivery's
    /// origin and its scoped idempotency key.
    fn authorize_publish(
        &self,
        conn: &Conn,
        mut delivery: Delivery,
        key: Option<&str>,
    ) -> Result<Delivery, MeshError> {
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
        Ok(delivery)
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
                if let Some(mut pos) = state.positioned.remove(c.as_str()) {
                    self.hub.end_recovery(conn, &mut pos);
                }
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
    pub(super) async fn presence_join(&self, conn: &Conn, channel: &str, options: &ChannelOptions) {
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
    pub(super) async fn presence_leave(
        &self,
        conn: &Conn,
        channel: &str,
        options: &ChannelOptions,
    ) {
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
