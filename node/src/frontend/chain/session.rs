//! One chain session: its joined topics, the messages its client POSTs
//! (joins, leaves, pushes) turned into node calls, and the task that moves
//! the node's frames into its [`Link`] and ends it when the grace period
//! runs out or the node closes it.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::link::{Ended, Link};
use super::wire::{DecodeError, Inbound, Message, Payload, Reason};
use crate::address::FrameLimit;
use crate::config::join_hooks::{event_rule_for, hook_for, Action, EventRule};
use crate::conn::Conn;
use crate::delivery::{Delivery, Target};
use crate::frontend::phoenix::session::join_response;
use crate::frontend::phoenix::{hook, recover};
use crate::node::{JoinRequest, MeshError, Node};

/// The front-end's name in metrics.
pub const FRONTEND: &str = "chain";

/// The `reason`s pubmesh adds to chain's own, and the codes of the
/// front-end's error metrics (docs/chain.md).
pub mod reasons {
    /// A POST body that is not a chain push (the POST gets 400).
    pub const BAD_MESSAGE: &str = "bad_message";
    /// chain's refusals (`joining topics with wildcard is not allowed`,
    /// `unmatched topic`, `commas are not allowed in event`), as metrics.
    pub const WILDCARD_TOPIC: &str = "wildcard_topic";
    pub const UNMATCHED_TOPIC: &str = "unmatched_topic";
    pub const COMMA_IN_EVENT: &str = "comma_in_event";
    /// An event name that is empty, too long or starts with `_`.
    pub const BAD_EVENT: &str = "bad_event";
    /// A push payload that is not a JSON object.
    pub const BAD_PAYLOAD: &str = "bad_payload";
    /// Policy refuses the join or the publish.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// `--max-channels-per-connection` reached.
    pub const TOO_MANY_CHANNELS: &str = "too_many_channels";
    /// `--client-channel-churn`, or the POST rate (`--client-rate`).
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const BAD_REQUEST: &str = "bad_request";
    /// The node cannot take the request now.
    pub const UNAVAILABLE: &str = "unavailable";
    /// A POST body over `--max-message-size` (413).
    pub const TOO_LARGE: &str = "too_large";
    /// A POST for a session this node does not hold (410).
    pub const GONE: &str = "gone";
    /// A connect refused (403) for an invalid token or `--require-auth`.
    pub const CONNECT_REFUSED: &str = "connect_refused";
    /// A `_join` whose `since` is not a position.
    pub const BAD_SINCE: &str = "bad_since";
    /// A `_join` with `since` to a topic that keeps no history.
    pub const NO_HISTORY: &str = "no_history";
    /// A join hook's or event rule's backend refused, or did not answer
    /// properly; an event a rule refuses.
    pub use crate::frontend::phoenix::hook::reasons::*;

    pub const ALL: &[&str] = &[
        BAD_MESSAGE,
        WILDCARD_TOPIC,
        UNMATCHED_TOPIC,
        COMMA_IN_EVENT,
        BAD_EVENT,
        BAD_PAYLOAD,
        UNAUTHORIZED,
        TOO_MANY_CHANNELS,
        RATE_LIMITED,
        BAD_REQUEST,
        UNAVAILABLE,
        TOO_LARGE,
        GONE,
        CONNECT_REFUSED,
        BAD_SINCE,
        NO_HISTORY,
        BACKEND_REFUSED,
        BACKEND_TIMEOUT,
        BACKEND_UNAVAILABLE,
        BACKEND_BAD_ANSWER,
        EVENT_REFUSED,
    ];
}

/// A refusal: the error reply's `reason` and the metric code.
struct Refusal {
    reason: Cow<'static, str>,
    code: &'static str,
}

impl From<Reason> for Refusal {
    fn from(r: Reason) -> Refusal {
        let code = match r {
            Reason::WildcardTopic => reasons::WILDCARD_TOPIC,
            Reason::CommaInEvent => reasons::COMMA_IN_EVENT,
            _ => reasons::UNMATCHED_TOPIC,
        };
        Refusal {
            reason: r.as_str().into(),
            code,
        }
    }
}

fn plain(code: &'static str) -> Refusal {
    Refusal {
        reason: code.into(),
        code,
    }
}

/// A backend's refusal (its own reason, or a stable `backend_*` one).
fn backend_refusal(why: String) -> Refusal {
    Refusal {
        code: hook::refusal_code(&why),
        reason: why.into(),
    }
}

fn mesh_refusal(e: &MeshError) -> Refusal {
    plain(match e {
        MeshError::Forbidden(_) | MeshError::Unauthorized => reasons::UNAUTHORIZED,
        MeshError::TooManyChannels(_) => reasons::TOO_MANY_CHANNELS,
        MeshError::RateLimited(_) => reasons::RATE_LIMITED,
        MeshError::BadRequest(_) => reasons::BAD_REQUEST,
        MeshError::NoHistory(_) => reasons::NO_HISTORY,
        _ => reasons::UNAVAILABLE,
    })
}

/// Why a POST was not dispatched.
#[derive(Debug, PartialEq, Eq)]
pub enum PostError {
    /// Not a chain push at all (400); the text says why.
    BadMessage(String),
    /// Over the session's POST rate (429).
    RateLimited,
    /// The session ended meanwhile (410).
    Gone,
}

/// What the POSTs of one session share.
struct Protocol {
    /// Joined topics and the `(join_ref, ref)` of their join.
    joined: HashMap<String, (i64, i64)>,
    frames: FrameLimit,
}

/// One chain session.
pub struct ChainSession {
    pub id: String,
    node: Arc<Node>,
    pub conn: Arc<Conn>,
    pub link: Link,
    protocol: tokio::sync::Mutex<Protocol>,
    /// Held while frames move from the outbox into the link, so they keep
    /// their order whoever moves them.
    pump: parking_lot::Mutex<VecDeque<Utf8Bytes>>,
}

impl ChainSession {
    pub fn new(id: String, node: Arc<Node>, conn: Arc<Conn>, frames: FrameLimit) -> Self {
        let link = Link::new(node.config.chain.buffer_frames, node.config.outbox_bytes);
        node.metrics
            .frontend
            .connections
            .with_label_values(&[FRONTEND])
            .inc();
        ChainSession {
            id,
            node,
            conn,
            link,
            protocol: tokio::sync::Mutex::new(Protocol {
                joined: HashMap::new(),
                frames,
            }),
            pump: parking_lot::Mutex::new(VecDeque::new()),
        }
    }

    fn send(&self, message: Message) {
        self.node
            .send(&self.conn, Utf8Bytes::from(message.encode()));
    }

    fn refuse(&self, join_ref: i64, reference: i64, why: Refusal) {
        self.node.metrics.frontend.error(FRONTEND, why.code);
        tracing::debug!(reason = %why.reason, session = %self.id, "chain error reply");
        self.send(Message::Reply {
            join_ref,
            reference,
            status: super::wire::Status::Error,
            payload: Some(super::wire::reason_payload(&why.reason)),
        });
    }

    /// Dispatch one POSTed message. Its replies go to the event stream.
    pub async fn post(&self, body: &str) -> Result<(), PostError> {
        let mut protocol = self.protocol.lock().await;
        if !self.link.heard() {
            return Err(PostError::Gone);
        }
        if !protocol.frames.allow() {
            self.node
                .metrics
                .frontend
                .error(FRONTEND, reasons::RATE_LIMITED);
            return Err(PostError::RateLimited);
        }
        self.node
            .metrics
            .frontend
            .messages_in
            .with_label_values(&[FRONTEND])
            .inc();
        let message = match Message::decode(body) {
            Ok(m) => m,
            Err(e) => return Err(self.bad_message(body, e)),
        };
        let inbound = match Inbound::try_from(message.clone()) {
            Ok(inbound) => inbound,
            Err(DecodeError::Refused(reason)) => {
                if let Message::Push {
                    join_ref,
                    reference,
                    ..
                } = message
                {
                    self.refuse(join_ref, reference, reason.into());
                }
                return Ok(());
            }
            Err(e) => return Err(self.bad_message(body, e)),
        };
        match inbound {
            Inbound::Join {
                join_ref,
                reference,
                topic,
                params,
            } => {
                self.join(&mut protocol, (join_ref, reference), topic, params)
                    .await
            }
            Inbound::Leave {
                join_ref,
                reference,
                topic,
            } => {
                // chain answers every leave with ok, joined or not.
                let ok = Utf8Bytes::from(Message::ok(join_ref, reference, None).encode());
                if protocol.joined.remove(&topic).is_some() {
                    let topics = [topic];
                    self.node.leave(&self.conn, &topics, || Some(ok)).await;
                } else {
                    self.node.send(&self.conn, ok);
                }
            }
            Inbound::Push {
                join_ref,
                reference,
                topic,
                event,
                payload,
            } => {
                // A membership the node revoked (`_close` sent) is gone.
                if !self.conn.is_member(&topic) {
                    protocol.joined.remove(&topic);
                }
                if !protocol.joined.contains_key(&topic) {
                    self.refuse(join_ref, reference, Reason::UnmatchedTopic.into());
                    return Ok(());
                }
                drop(protocol);
                self.push(join_ref, reference, topic, event, payload).await;
            }
        }
        Ok(())
    }

    /// A body that is no chain push: counted, logged, and answered with an
    /// error reply when its refs can be read.
    fn bad_message(&self, body: &str, e: DecodeError) -> PostError {
        tracing::debug!(error = %e, session = %self.id, "chain client sent a bad message");
        let refs = serde_json::from_str::<Vec<serde_json::Value>>(body)
            .ok()
            .and_then(|items| match items.as_slice() {
                [kind, j, r, ..] if kind == 0 => Some((j.as_i64()?, r.as_i64()?)),
                _ => None,
            });
        match refs {
            Some((j, r)) => self.refuse(j, r, plain(reasons::BAD_MESSAGE)),
            None => self
                .node
                .metrics
                .frontend
                .error(FRONTEND, reasons::BAD_MESSAGE),
        }
        PostError::BadMessage(e.to_string())
    }

    async fn join(
        &self,
        protocol: &mut Protocol,
        (join_ref, reference): (i64, i64),
        topic: String,
        params: Option<Payload>,
    ) {
        if crate::limits::channel_name(&topic).is_err() {
            return self.refuse(join_ref, reference, Reason::UnmatchedTopic.into());
        }
        // History channels deliver positions; `since` recovers from one.
        let history = self.node.config.namespaces.options(&topic).history();
        let mut since = HashMap::new();
        // chain accepts any params; only an object's `since` counts.
        let params = params.as_ref().map_or("{}", Payload::get);
        let params = if params.starts_with('{') {
            params
        } else {
            "{}"
        };
        match recover::since(params) {
            Ok(None) => {}
            Ok(Some(_)) if !history => {
                return self.refuse(join_ref, reference, plain(reasons::NO_HISTORY))
            }
            Ok(Some(p)) => {
                since.insert(topic.clone(), p);
            }
            Err(_) => return self.refuse(join_ref, reference, plain(reasons::BAD_SINCE)),
        }
        // A backend join hook decides, and gives the reply's response.
        let mut hooked = None;
        if let Some(h) = hook_for(&self.node.config.phoenix.join_hooks, &topic) {
            let raw = serde_json::from_str(params).unwrap_or_else(|_| empty_object());
            match hook::ask_join(h, &self.conn, &topic, raw).await {
                hook::Verdict::Ok(response) => hooked = Some(response),
                hook::Verdict::Refused(why) => {
                    return self.refuse(join_ref, reference, backend_refusal(why))
                }
            }
        }
        let channels = [topic.clone()];
        let request = JoinRequest {
            channels: &channels,
            positioned: history,
            since: &since,
        };
        // A rejoin under another join ref closes the old membership for the
        // client (chain's `_close` for the old join ref).
        if !self.conn.is_member(&topic) {
            protocol.joined.remove(&topic);
        }
        if let Some((old_join, old_ref)) = protocol.joined.get(&topic).copied() {
            if old_join != join_ref {
                self.send(Message::close(old_join, old_ref, &topic));
            }
        }
        let reply = |joined: &crate::node::Joined| {
            // `{"position", "recovered"}` on history channels, as Phoenix.
            // and the hook's response.
            let response = (history || hooked.is_some())
                .then(|| {
                    let response = join_response(hooked.as_deref(), joined, &topic);
                    Payload::from_json(response.get())
                })
                .flatten();
            Some(Utf8Bytes::from(
                Message::ok(join_ref, reference, response).encode(),
            ))
        };
        match self.node.join(&self.conn, request, reply).await {
            Ok(()) => {
                protocol.joined.insert(topic, (join_ref, reference));
            }
            Err(e) => self.refuse(join_ref, reference, mesh_refusal(&e)),
        }
    }

    async fn push(
        &self,
        join_ref: i64,
        reference: i64,
        topic: String,
        event: String,
        payload: Option<Payload>,
    ) {
        if event.starts_with('_') || crate::limits::event_name(&event).is_err() {
            return self.refuse(join_ref, reference, plain(reasons::BAD_EVENT));
        }
        let data = match &payload {
            None => Utf8Bytes::from_static("{}"),
            Some(p) if p.get().starts_with('{') => Utf8Bytes::from(p.get().to_string()),
            Some(_) => return self.refuse(join_ref, reference, plain(reasons::BAD_PAYLOAD)),
        };
        // The event rules: refuse, forward to a backend, or broadcast.
        match event_rule_for(&self.node.config.phoenix.event_rules, &topic, &event) {
            Some(rule) if rule.action == Action::Refuse => {
                return self.refuse(join_ref, reference, plain(reasons::EVENT_REFUSED))
            }
            Some(EventRule {
                backend: Some((url, timeout)),
                ..
            }) => {
                let raw = serde_json::from_str(data.as_str()).unwrap_or_else(|_| empty_object());
                let backend = (url.as_str(), *timeout);
                return match hook::forward(backend, &self.conn, &topic, &event, raw).await {
                    hook::Verdict::Ok(response) => self.send(Message::ok(
                        join_ref,
                        reference,
                        Payload::from_json(response.get()),
                    )),
                    hook::Verdict::Refused(why) => {
                        self.refuse(join_ref, reference, backend_refusal(why))
                    }
                };
            }
            _ => {}
        }
        let mut delivery = Delivery::new(Target::Channels(vec![topic]), data);
        delivery.event = Some(Arc::from(event.as_str()));
        match self
            .node
            .client_publish(&self.conn, delivery, false, None)
            .await
        {
            Ok(_) => self.send(Message::ok(join_ref, reference, None)),
            Err(e) => self.refuse(join_ref, reference, mesh_refusal(&e)),
        }
    }

    /// Move what the outbox holds into the link. `Some`: the session must
    /// end (the node closed it, or it overflowed its byte bound).
    fn pump(&self) -> Option<Ended> {
        let mut batch = self.pump.lock();
        let closing = self.conn.outbox.take(&mut batch);
        let mut overflowed = false;
        for frame in batch.drain(..) {
            overflowed |= !self.link.queue(frame);
        }
        if overflowed {
            return Some(Ended::Closed(crate::outbox::CloseReason::SlowConsumer));
        }
        closing.map(Ended::Closed)
    }

    /// A new event stream (see [`Link::attach`]), after everything the node
    /// queued so far is in the link, so the buffer's bound applies to it.
    pub fn attach(&self, last_event_id: Option<u64>) -> Option<u64> {
        // An end found here is the supervisor's to act on; it is woken.
        let _ = self.pump();
        self.link.attach(last_event_id)
    }

    /// Until the session ends: move the node's frames into the link, and
    /// end the session when it has had no stream and no POST for the grace
    /// period, or when the node closes its connection.
    pub async fn supervise(self: Arc<Self>, grace: Duration, on_end: impl FnOnce(&str)) {
        let ended = loop {
            let changed = self.link.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(ended) = self.pump() {
                break ended;
            }
            let deadline = self.link.deadline(grace);
            if deadline.is_some_and(|d| d <= std::time::Instant::now()) {
                break Ended::Expired;
            }
            let expiry = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.conn.outbox.ready() => {}
                _ = changed => {}
                _ = expiry => {}
            }
        };
        // Stop taking POSTs before leaving the channels.
        let _protocol = self.protocol.lock().await;
        self.link.end(ended);
        on_end(&self.id);
        let by_server = match ended {
            Ended::Closed(reason) => Some(reason),
            Ended::Expired => None,
        };
        tracing::debug!(session = %self.id, ?ended, "chain session ended");
        self.node.close(&self.conn, by_server);
        self.node
            .metrics
            .frontend
            .connections
            .with_label_values(&[FRONTEND])
            .dec();
    }
}

fn empty_object() -> &'static serde_json::value::RawValue {
    serde_json::from_str("{}").expect("{} is JSON")
}
