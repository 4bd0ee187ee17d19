//! Inbound envelopes of the Redis relay: each server's subscriber
//! connection, decoded and handed to the node.

use std::sync::Arc;
use std::time::Instant;

use fred::prelude::*;
use pubmesh_cluster_proto::{
    self as proto, Body, Decoded, DeliverRef, ExtraRef, Names, TargetsView,
};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::dedup::Stream;
use super::envelope::delivery_of;
use super::state::{Inner, Peer};
use crate::delivery::{Position, Target};

impl Inner {
    /// Handle one message from server `server`'s subscriber connection.
    pub(super) fn receive(&self, server: usize, topic: &str, payload: &[u8]) {
        if self.node.get().is_none() {
            return;
        }
        // This node hears its own control envelopes (announcements,
        // acknowledgements, heartbeats) back on `{p}.ctl`, where it acts on
        // none of them: drop them before decoding their topic lists. The
        // topic is looked at first, so a delivery's head is read only once.
        if server == 0
            && matches!(self.topics.parse(topic), Some(proto::TopicKind::Control))
            && proto::peek_origin(payload) == Some(self.node_id.as_str())
        {
            return;
        }
        // Deliveries (alone or batched) are read in place: their names,
        // frame and extra part are borrowed from `payload`.
        match proto::decode_ref(payload) {
            Ok(decoded) => self.handle_decoded(server, topic, decoded),
            Err(e) => {
                self.metrics
                    .relay_dropped
                    .with_label_values(&["decode"])
                    .inc();
                tracing::debug!(error = %e, "undecodable relay message");
            }
        }
    }

    fn handle_decoded(&self, server: usize, topic: &str, decoded: Decoded<'_>) {
        match decoded {
            Decoded::Deliver(delivery) => self.deliver(topic, &delivery),
            Decoded::Batch { origin, parts, .. } => {
                // Several envelopes for this topic in one command: each is
                // handled as if it had come alone, in order.
                if origin != self.node_id {
                    let kind = proto::Kind::Batch.as_str();
                    self.metrics.relay_received.inc(kind);
                }
                for part in parts {
                    self.handle_decoded(server, topic, part);
                }
            }
            Decoded::Owned(envelope) => self.handle(server, topic, envelope),
        }
    }

    /// Hand one delivery from a peer to the node, unless it is this node's
    /// own (delivered locally first), too old, or a copy.
    fn deliver(&self, topic: &str, envelope: &DeliverRef<'_>) {
        let Some(node) = self.node.get() else {
            return;
        };
        if envelope.origin == self.node_id {
            return;
        }
        let kind = proto::Kind::Deliver.as_str();
        self.metrics.relay_received.inc(kind);
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
        let stream = match &envelope.targets {
            TargetsView::Channels(Names::One(name)) => Stream::Channel(name),
            TargetsView::Users(Names::One(name)) => Stream::User(name),
            _ => Stream::Topic(topic),
        };
        if !self
            .seen
            .lock()
            .fresh(envelope.origin, stream, envelope.seq)
        {
            self.metrics
                .relay_dropped
                .with_label_values(&["duplicate"])
                .inc();
            return;
        }
        let data = Utf8Bytes::from(envelope.frame);
        let extra = &envelope.extra;
        // A keyed publish: the node delivers each (key, name) once,
        // which covers siblings, copies and retries sent through
        // other nodes alike (see `crate::idempotency`).
        let keyed = extra.idempotency.is_some();
        // Exactly one arm below delivers: it takes the data.
        let local = move |target: Target| delivery_of(target, data, extra, None);
        match &envelope.targets {
            TargetsView::Channels(names) if names.len() == 1 && envelope.seq % 2 == 1 && !keyed => {
                // One envelope of a multi-channel publish: skip the
                // connections an earlier sibling reached.
                let v = names.to_vec();
                let before = self
                    .groups
                    .lock()
                    .record(envelope.origin, envelope.seq, &v[0]);
                let Some(before) = before else { return };
                let target = Target::Channels(v);
                if before.is_empty() {
                    node.deliver(&local(target));
                } else {
                    node.deliver_excluding(&local(target), &before);
                }
            }
            TargetsView::Channels(names) if names.len() > 1 && !keyed => {
                // An older node's envelope: the full list on every topic.
                let first = self
                    .groups
                    .lock()
                    .record(envelope.origin, envelope.seq, "")
                    .is_some_and(|b| b.is_empty());
                if first {
                    node.deliver(&local(Target::Channels(names.to_vec())));
                }
            }
            targets => {
                let target = match targets {
                    TargetsView::Channels(v) => Target::Channels(v.to_vec()),
                    TargetsView::Users(v) => Target::Users(v.to_vec()),
                    TargetsView::Clients(v) => Target::Clients(v.to_vec()),
                    TargetsView::All => Target::All,
                };
                node.deliver(&local(target));
            }
        }
        self.observe_latency(envelope.sent_at_micros);
    }

    /// Handle one decoded envelope received on `topic`.
    fn handle(&self, server: usize, topic: &str, envelope: proto::Envelope) {
        let Some(node) = self.node.get() else {
            return;
        };
        let mine = envelope.origin == self.node_id;
        let kind = envelope.body.kind().as_str();
        match envelope.body {
            Body::Deliver(_) => {
                // A delivery in a layout `decode_ref` leaves to `decode`.
                if let Some(delivery) = DeliverRef::of(&envelope) {
                    self.deliver(topic, &delivery);
                }
            }
            Body::Publication {
                channel,
                frame,
                offset,
                epoch,
                extra,
            } => {
                self.metrics.relay_received.inc(kind);
                let Ok(data) = Utf8Bytes::try_from(frame) else {
                    return;
                };
                let position = Position { offset, epoch };
                let target = Target::Channels(vec![channel]);
                let extra = ExtraRef::from(&extra);
                node.deliver(&delivery_of(target, data, &extra, Some(position)));
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
                self.metrics.relay_received.inc(kind);
                self.peer_beat(&envelope.origin);
                let mut peers = self.peers.lock();
                let now = Instant::now();
                peers.insert(
                    envelope.origin.clone(),
                    Peer {
                        info,
                        seen: now,
                        heard: now,
                    },
                );
                self.metrics.relay_peers.set(peers.len() as i64);
            }
            Body::Leaving { node_id } => {
                if mine {
                    return;
                }
                self.metrics.relay_received.inc(kind);
                let mut peers = self.peers.lock();
                peers.remove(&node_id);
                self.metrics.relay_peers.set(peers.len() as i64);
                drop(peers);
                self.forget_peer(&node_id);
            }
            Body::Disconnect {
                client_ids,
                root_ids,
            } => {
                if mine {
                    return;
                }
                self.metrics.relay_received.inc(kind);
                self.note_peer(&envelope.origin);
                node.disconnect_local(&client_ids, &root_ids);
            }
            Body::ChannelsRequest {
                request_id,
                reply_to,
            } => {
                if mine {
                    return;
                }
                self.metrics.relay_received.inc(kind);
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
            Body::Batch(envelopes) => {
                // Several envelopes for this topic in one command: each is
                // handled as if it had come alone, in order.
                if !mine {
                    self.metrics.relay_received.inc(kind);
                }
                for envelope in envelopes {
                    self.handle(server, topic, envelope);
                }
            }
            Body::InterestRequest { node_id } => {
                if mine {
                    return;
                }
                self.metrics.relay_received.inc(kind);
                let asked = node_id == self.node_id;
                self.interest_received(&envelope.origin, Body::InterestRequest { node_id });
                if asked {
                    self.send_snapshot(&envelope.origin);
                }
            }
            body @ (Body::Interest { .. }
            | Body::InterestSnapshot { .. }
            | Body::InterestAck { .. }) => {
                if mine {
                    return;
                }
                self.metrics.relay_received.inc(kind);
                self.interest_received(&envelope.origin, body);
            }
            Body::ChannelsReply {
                request_id,
                channels,
            } => {
                self.metrics.relay_received.inc(kind);
                if let Some(tx) = self.requests.lock().get(&request_id) {
                    let _ = tx.send((envelope.origin, channels));
                }
            }
        }
    }
}

/// How often a reader that keeps falling behind says so in the log (the
/// metric counts every loss).
const LAG_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Read one server's subscriber connection.
pub(super) async fn receive_loop(inner: Arc<Inner>, server: usize) {
    let mut rx = inner.servers[server].subscriber.message_rx();
    // Messages lost since the last warning, and when it was logged.
    let (mut unlogged, mut warned) = (0u64, None::<Instant>);
    loop {
        match rx.recv().await {
            Ok(message) => {
                if let Some(bytes) = message.value.as_bytes() {
                    inner.receive(server, &message.channel, bytes);
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                if server == 0 {
                    // Control envelopes may be among those lost.
                    inner.interest_deaf(true);
                }
                inner
                    .metrics
                    .relay_dropped
                    .with_label_values(&["lagged"])
                    .inc_by(n);
                unlogged += n;
                if warned.is_none_or(|at| at.elapsed() >= LAG_LOG_EVERY) {
                    tracing::warn!(
                        redis = %inner.servers[server].url,
                        lost = unlogged,
                        "the relay fell a whole receive ring behind and lost messages (a node \
                         short of CPU; see --relay-receive-bytes)"
                    );
                    (unlogged, warned) = (0, Some(Instant::now()));
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
