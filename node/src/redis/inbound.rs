//! Inbound envelopes of the Redis relay: each server's subscriber
//! connection, decoded and handed to the node.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use fred::prelude::*;
use parking_lot::Mutex;
use pubmesh_cluster_proto::{
    self as proto, Body, Decoded, DeliverRef, ExtraRef, Names, TargetsView,
};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;
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

/// What fred's receive ring gives: a message, or the receiver's end.
type Received = Result<fred::types::Message, RecvError>;

/// A wait for the ring's next message that owns the receiver, so that the
/// wait stays registered between calls.
type NextMessage = Pin<Box<dyn Future<Output = (Received, Receiver<fred::types::Message>)> + Send>>;

/// The wait is outside tokio's cooperative budget: it is polled inside the
/// client library's task, whose budget is the library's own.
fn next_message(mut rx: Receiver<fred::types::Message>) -> NextMessage {
    Box::pin(tokio::task::unconstrained(
        async move { (rx.recv().await, rx) },
    ))
}

/// Read one server's subscriber connection: start the [`Reader`] that
/// handles its messages.
pub(super) fn start_reader(inner: Arc<Inner>, server: usize) {
    let rx = inner.servers[server].subscriber.message_rx();
    let reader = Arc::new(Reader {
        inner,
        server,
        state: Mutex::new(ReaderState {
            next: Some(next_message(rx)),
            lag: Lag::default(),
        }),
        woken: AtomicBool::new(false),
    });
    reader.run();
}

/// Handles the messages of one server's subscriber connection where the
/// client library puts them in its receive ring.
///
/// The reader is not a task: its waker is. The library's task rings a
/// message and wakes the reader's waker, which handles everything in the
/// ring before it returns. The library reads the next message from its
/// socket only afterwards, so the ring never holds more than the message
/// at hand, and a reader that is slower than Redis sends holds the
/// library back. Redis then keeps what is not read (up to its
/// `client-output-buffer-limit` for pub/sub clients) rather than the ring
/// dropping it. Handled by a task, a message waited in the ring for the
/// reader's turn, and after a stall the library could lap the ring before
/// the reader had one.
struct Reader {
    inner: Arc<Inner>,
    server: usize,
    state: Mutex<ReaderState>,
    /// Woken since the state was last taken: whoever holds the state
    /// drains again before it lets go.
    woken: AtomicBool,
}

struct ReaderState {
    /// The registered wait for the next message; `None` once the ring's
    /// sender is gone (the client was closed).
    next: Option<NextMessage>,
    lag: Lag,
}

impl Wake for Reader {
    fn wake(self: Arc<Self>) {
        self.run();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.run();
    }
}

impl Reader {
    /// Handle what the ring holds, then wait (registered) for more. A wake
    /// while another thread drains leaves `woken` for that thread.
    fn run(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        loop {
            let Some(mut state) = self.state.try_lock() else {
                return;
            };
            while self.woken.swap(false, Ordering::AcqRel) {
                self.drain(&mut state);
            }
            drop(state);
            if !self.woken.load(Ordering::Acquire) {
                return;
            }
        }
    }

    fn drain(self: &Arc<Self>, state: &mut ReaderState) {
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        while let Some(next) = state.next.as_mut() {
            let Poll::Ready((first, mut rx)) = next.as_mut().poll(&mut cx) else {
                return;
            };
            let mut open = match first {
                Ok(message) => {
                    self.take(&message);
                    true
                }
                Err(RecvError::Lagged(n)) => {
                    state.lag.lost(&self.inner, self.server, n);
                    true
                }
                Err(RecvError::Closed) => false,
            };
            // Everything else already in the ring, without waiting.
            while open {
                match rx.try_recv() {
                    Ok(message) => self.take(&message),
                    Err(TryRecvError::Lagged(n)) => state.lag.lost(&self.inner, self.server, n),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => open = false,
                }
            }
            state.next = open.then(|| next_message(rx));
        }
    }

    /// Hand one message to the relay. This runs inside the client
    /// library's task: a panic is caught and logged here rather than
    /// ending the library's connection.
    fn take(&self, message: &fred::types::Message) {
        let Some(bytes) = message.value.as_bytes() else {
            return;
        };
        let handled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.inner.receive(self.server, &message.channel, bytes)
        }));
        if handled.is_err() {
            tracing::error!(topic = %message.channel, "handling a relay message panicked; it was dropped");
        }
    }
}

/// Messages a reader lost since its last warning, and when it warned.
#[derive(Default)]
struct Lag {
    unlogged: u64,
    warned: Option<Instant>,
}

impl Lag {
    /// The reader fell a whole receive ring behind and lost `n` messages.
    fn lost(&mut self, inner: &Inner, server: usize, n: u64) {
        if server == 0 {
            // Control envelopes may be among those lost.
            inner.interest_deaf(true);
        }
        inner
            .metrics
            .relay_dropped
            .with_label_values(&["lagged"])
            .inc_by(n);
        self.unlogged += n;
        if self.warned.is_none_or(|at| at.elapsed() >= LAG_LOG_EVERY) {
            tracing::warn!(
                redis = %inner.servers[server].url,
                lost = self.unlogged,
                "the relay fell a whole receive ring behind and lost messages (a node \
                 short of CPU; see --relay-receive-bytes)"
            );
            (self.unlogged, self.warned) = (0, Some(Instant::now()));
        }
    }
}
