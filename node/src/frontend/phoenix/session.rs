//! The Phoenix Channels state of one socket: joined topics, heartbeats,
//! client frames in, node calls out, replies queued through the node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::codec::presence_map;
use super::wire::{self, DecodeError, Inbound, Message, Params, Payload, Ref, Status, Vsn};
use super::{hook, recover};
use crate::config::join_hooks::{Action, EventRule};
use crate::conn::Conn;
use crate::delivery::{Delivery, Target};
use crate::node::{JoinRequest, MeshError, Node, Read};
use crate::outbox::CloseReason;
use crate::transport::{Flow, Session};

/// The front-end's name in metrics.
pub const FRONTEND: &str = "phoenix";

/// Every `reason` of an error reply, and the codes of the front-end's
/// error metrics (docs/phoenix.md).
pub mod reasons {
    /// A frame that is not a Phoenix frame at all (the socket is closed).
    pub const BAD_FRAME: &str = "bad_frame";
    /// A push or leave to a topic the socket has not joined (Phoenix's own
    /// text).
    pub const UNMATCHED_TOPIC: &str = "unmatched topic";
    /// Policy refuses the join or the publish.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// `--max-channels-per-connection` reached.
    pub const TOO_MANY_CHANNELS: &str = "too_many_channels";
    /// `--client-channel-churn` reached.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// A topic that is not a valid channel name, or `phoenix`.
    pub const BAD_TOPIC: &str = "bad_topic";
    /// A topic with `*`: patterns cannot be joined.
    pub const WILDCARD_TOPIC: &str = "wildcard_topic";
    /// An event name that is empty, too long or has commas.
    pub const BAD_EVENT: &str = "bad_event";
    /// A `phx_` event the server does not handle.
    pub const UNKNOWN_EVENT: &str = "unknown_event";
    /// A push payload that is not a JSON object (binary payloads included).
    pub const BAD_PAYLOAD: &str = "bad_payload";
    /// Presence storage failed, or the node cannot take the request.
    pub const UNAVAILABLE: &str = "unavailable";
    pub const BAD_REQUEST: &str = "bad_request";
    /// The socket was idle past `--phoenix-heartbeat-timeout-ms`.
    pub const HEARTBEAT_TIMEOUT: &str = "heartbeat_timeout";
    /// A connect refused (403) for an invalid token or `--require-auth`.
    pub const CONNECT_REFUSED: &str = "connect_refused";
    /// A long poll or POST for a session this node does not hold (410).
    pub const SESSION_GONE: &str = "session_gone";
    /// A join's `since` that is not a position.
    pub const BAD_SINCE: &str = "bad_since";
    /// A join with `since` to a topic that keeps no history.
    pub const NO_HISTORY: &str = "no_history";
    /// A join hook's or event rule's backend refused (the reply carries its
    /// reason), a backend that did not answer properly, an event a rule
    /// refuses.
    pub use super::super::hook::reasons::*;

    pub const ALL: &[&str] = &[
        BAD_FRAME,
        UNMATCHED_TOPIC,
        UNAUTHORIZED,
        TOO_MANY_CHANNELS,
        RATE_LIMITED,
        BAD_TOPIC,
        WILDCARD_TOPIC,
        BAD_EVENT,
        UNKNOWN_EVENT,
        BAD_PAYLOAD,
        UNAVAILABLE,
        BAD_REQUEST,
        HEARTBEAT_TIMEOUT,
        CONNECT_REFUSED,
        SESSION_GONE,
        BAD_SINCE,
        NO_HISTORY,
        BACKEND_REFUSED,
        BACKEND_TIMEOUT,
        BACKEND_UNAVAILABLE,
        BACKEND_BAD_ANSWER,
        EVENT_REFUSED,
    ];
}

/// The reason a join or publish refusal carries.
fn mesh_reason(e: &MeshError) -> &'static str {
    match e {
        MeshError::Forbidden(_) | MeshError::Unauthorized => reasons::UNAUTHORIZED,
        MeshError::TooManyChannels(_) => reasons::TOO_MANY_CHANNELS,
        MeshError::RateLimited(_) => reasons::RATE_LIMITED,
        MeshError::BadRequest(_) => reasons::BAD_REQUEST,
        MeshError::NoHistory(_) => reasons::NO_HISTORY,
        _ => reasons::UNAVAILABLE,
    }
}

/// The Phoenix state of one socket.
pub struct PhoenixSession {
    node: Arc<Node>,
    conn: Arc<Conn>,
    vsn: Vsn,
    /// Joined topics and the `join_ref` of their join.
    joined: HashMap<String, Option<Ref>>,
    last_seen: Instant,
    timeout: Duration,
}

impl PhoenixSession {
    pub fn new(node: Arc<Node>, conn: Arc<Conn>, vsn: Vsn) -> Self {
        let timeout = node.config.phoenix.heartbeat_timeout;
        node.metrics
            .frontend
            .connections
            .with_label_values(&[FRONTEND])
            .inc();
        PhoenixSession {
            node,
            conn,
            vsn,
            joined: HashMap::new(),
            last_seen: Instant::now(),
            timeout,
        }
    }

    /// How often to check the heartbeat timeout.
    pub fn tick(timeout: Duration) -> Duration {
        (timeout / 4).clamp(Duration::from_millis(25), Duration::from_secs(5))
    }

    fn send(&self, frame: String) {
        self.node.send(&self.conn, Utf8Bytes::from(frame));
    }

    fn reply(
        &self,
        join_ref: Option<&Ref>,
        reference: Option<&Ref>,
        topic: &str,
        response: &RawValue,
    ) {
        self.send(wire::encode_reply(
            self.vsn,
            join_ref,
            reference,
            topic,
            Status::Ok,
            response,
        ));
    }

    fn refuse(&self, join_ref: Option<&Ref>, reference: Option<&Ref>, topic: &str, why: &str) {
        self.refuse_as(join_ref, reference, topic, why, None);
    }

    /// An error reply with reason `why`, counted as `code` (else `why`).
    fn refuse_as(
        &self,
        join_ref: Option<&Ref>,
        reference: Option<&Ref>,
        topic: &str,
        why: &str,
        code: Option<&str>,
    ) {
        self.node
            .metrics
            .frontend
            .error(FRONTEND, code.unwrap_or(why));
        tracing::debug!(topic, reason = why, client_id = %self.conn.client_id, "phoenix error reply");
        self.send(wire::encode_reply(
            self.vsn,
            join_ref,
            reference,
            topic,
            Status::Error,
            &wire::reason(why),
        ));
    }

    fn received(&mut self) {
        self.last_seen = Instant::now();
        self.node
            .metrics
            .frontend
            .messages_in
            .with_label_values(&[FRONTEND])
            .inc();
    }

    /// A frame that cannot be read as Phoenix at all: closed, logged.
    fn bad_frame(&self, e: &DecodeError) -> Flow {
        self.node
            .metrics
            .frontend
            .error(FRONTEND, reasons::BAD_FRAME);
        tracing::info!(error = %e, client_id = %self.conn.client_id, "phoenix socket sent a bad frame; closing");
        Flow::Close(CloseReason::BadFrame)
    }

    async fn handle(&mut self, message: Message) -> Flow {
        let (join_ref, reference, topic) = (
            message.join_ref.clone(),
            message.reference.clone(),
            message.topic.clone(),
        );
        let inbound = match Inbound::try_from(message) {
            Ok(inbound) => inbound,
            Err(e) => {
                let why = match e {
                    DecodeError::EmptyTopic => reasons::BAD_TOPIC,
                    DecodeError::EmptyEvent | DecodeError::CommaInEvent => reasons::BAD_EVENT,
                    DecodeError::ReservedEvent(_) => reasons::UNKNOWN_EVENT,
                    _ => reasons::BAD_PAYLOAD,
                };
                self.refuse(join_ref.as_ref(), reference.as_ref(), &topic, why);
                return Flow::Continue;
            }
        };
        match inbound {
            Inbound::Heartbeat { reference } => {
                self.reply(None, reference.as_ref(), wire::HEARTBEAT_TOPIC, &empty());
            }
            Inbound::Join {
                join_ref,
                reference,
                topic,
                params,
            } => self.join(join_ref, reference, topic, params).await,
            Inbound::Leave {
                join_ref,
                reference,
                topic,
            } => {
                if self.joined.remove(&topic).is_none() {
                    self.refuse(
                        join_ref.as_ref(),
                        reference.as_ref(),
                        &topic,
                        reasons::UNMATCHED_TOPIC,
                    );
                    return Flow::Continue;
                }
                let frame = wire::encode_reply(
                    self.vsn,
                    join_ref.as_ref(),
                    reference.as_ref(),
                    &topic,
                    Status::Ok,
                    &empty(),
                );
                self.node
                    .leave(&self.conn, std::slice::from_ref(&topic), || {
                        Some(Utf8Bytes::from(frame))
                    })
                    .await;
            }
            Inbound::Push {
                join_ref,
                reference,
                topic,
                event,
                payload,
            } => self.push(join_ref, reference, topic, event, payload).await,
        }
        Flow::Continue
    }

    async fn join(
        &mut self,
        join_ref: Option<Ref>,
        reference: Option<Ref>,
        topic: String,
        params: Params,
    ) {
        let (jr, r) = (join_ref.as_ref(), reference.as_ref());
        if topic == wire::HEARTBEAT_TOPIC || crate::limits::channel_name(&topic).is_err() {
            return self.refuse(jr, r, &topic, reasons::BAD_TOPIC);
        }
        if topic.contains('*') {
            return self.refuse(jr, r, &topic, reasons::WILDCARD_TOPIC);
        }
        // History channels deliver positions; `since` recovers from one.
        let history = self.node.config.namespaces.options(&topic).history();
        let mut since = HashMap::new();
        match recover::since(params.get()) {
            Ok(None) => {}
            Ok(Some(_)) if !history => return self.refuse(jr, r, &topic, reasons::NO_HISTORY),
            Ok(Some(p)) => {
                since.insert(topic.clone(), p);
            }
            Err(_) => return self.refuse(jr, r, &topic, reasons::BAD_SINCE),
        }
        // A backend join hook decides, and gives the reply's response.
        let mut hooked = None;
        let hooks = &self.node.config.phoenix.join_hooks;
        if let Some(h) = crate::config::join_hooks::hook_for(hooks, &topic) {
            match hook::ask_join(h, &self.conn, &topic, params.raw()).await {
                hook::Verdict::Ok(response) => hooked = Some(response),
                hook::Verdict::Refused(why) => {
                    let code = hook::refusal_code(&why);
                    return self.refuse_as(jr, r, &topic, &why, Some(code));
                }
            }
        }
        let channels = [topic.clone()];
        let request = JoinRequest {
            channels: &channels,
            positioned: history,
            since: &since,
        };
        let vsn = self.vsn;
        let ok = |joined: &crate::node::Joined| {
            Some(Utf8Bytes::from(wire::encode_reply(
                vsn,
                jr,
                r,
                &topic,
                Status::Ok,
                &join_response(hooked.as_deref(), joined, &topic),
            )))
        };
        if let Err(e) = self.node.join(&self.conn, request, ok).await {
            return self.refuse(jr, r, &topic, mesh_reason(&e));
        }
        self.joined.insert(topic.clone(), join_ref.clone());
        // Presence-enabled topics: the current members, after the reply.
        if self
            .node
            .may_read(Some(&self.conn), &topic, Read::Presence)
            .is_ok()
        {
            match self.node.presence(&topic).await {
                Ok(entries) => {
                    let state = presence_map(&entries);
                    let payload =
                        serde_json::value::to_raw_value(&state).expect("presence serializes");
                    self.send(wire::encode_push(
                        self.vsn,
                        join_ref.as_ref(),
                        &topic,
                        "presence_state",
                        &payload,
                    ));
                }
                Err(e) => tracing::warn!(error = %e, topic, "presence_state unavailable"),
            }
        }
    }

    async fn push(
        &mut self,
        join_ref: Option<Ref>,
        reference: Option<Ref>,
        topic: String,
        event: String,
        payload: Payload,
    ) {
        let (jr, r) = (join_ref.as_ref(), reference.as_ref());
        // A membership the node revoked (phx_close sent) is gone here too.
        if self.joined.contains_key(&topic) && !self.conn.is_member(&topic) {
            self.joined.remove(&topic);
        }
        if !self.joined.contains_key(&topic) {
            return self.refuse(jr, r, &topic, reasons::UNMATCHED_TOPIC);
        }
        if event.starts_with("phx_") {
            return self.refuse(jr, r, &topic, reasons::UNKNOWN_EVENT);
        }
        if crate::limits::event_name(&event).is_err() {
            return self.refuse(jr, r, &topic, reasons::BAD_EVENT);
        }
        let raw = match payload {
            Payload::Json(raw) if raw.get().starts_with('{') => raw,
            _ => return self.refuse(jr, r, &topic, reasons::BAD_PAYLOAD),
        };
        // The event rules: refuse, forward to a backend, or broadcast.
        let rules = &self.node.config.phoenix.event_rules;
        match crate::config::join_hooks::event_rule_for(rules, &topic, &event) {
            Some(rule) if rule.action == Action::Refuse => {
                return self.refuse(jr, r, &topic, reasons::EVENT_REFUSED)
            }
            Some(EventRule {
                backend: Some((url, timeout)),
                ..
            }) => {
                let backend = (url.as_str(), *timeout);
                return match hook::forward(backend, &self.conn, &topic, &event, &raw).await {
                    hook::Verdict::Ok(response) => self.reply(jr, r, &topic, &response),
                    hook::Verdict::Refused(why) => {
                        let code = hook::refusal_code(&why);
                        self.refuse_as(jr, r, &topic, &why, Some(code))
                    }
                };
            }
            _ => {}
        }
        let data = Utf8Bytes::from(raw.get().to_string());
        let mut delivery = Delivery::new(Target::Channels(vec![topic.clone()]), data);
        delivery.event = Some(Arc::from(event.as_str()));
        match self
            .node
            .client_publish(&self.conn, delivery, false, None)
            .await
        {
            Ok(_) => self.reply(jr, r, &topic, &empty()),
            Err(e) => self.refuse(jr, r, &topic, mesh_reason(&e)),
        }
    }
}

/// A join reply's response: the hook's (or `{}`), with the position and
/// recovery fields on history channels.
pub fn join_response(
    hooked: Option<&RawValue>,
    joined: &crate::node::Joined,
    topic: &str,
) -> Box<RawValue> {
    let positions = recover::join_response(joined, topic);
    let Some(hooked) = hooked else {
        return positions;
    };
    if positions.get() == "{}" {
        return hooked.to_owned();
    }
    let mut map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(hooked.get()).unwrap_or_default();
    if let Ok(serde_json::Value::Object(extra)) = serde_json::from_str(positions.get()) {
        map.extend(extra);
    }
    serde_json::value::to_raw_value(&map).expect("a join response serializes")
}

fn empty() -> Box<RawValue> {
    RawValue::from_string("{}".to_string()).expect("{} is JSON")
}

impl Session for PhoenixSession {
    async fn on_text(&mut self, text: Utf8Bytes) -> Flow {
        self.received();
        match Message::decode_text(self.vsn, &text) {
            Ok(message) => self.handle(message).await,
            Err(e) => self.bad_frame(&e),
        }
    }

    async fn on_binary(&mut self, data: Bytes) -> Flow {
        self.received();
        match Message::decode_binary(self.vsn, &data) {
            Ok(message) => self.handle(message).await,
            Err(e) => self.bad_frame(&e),
        }
    }

    async fn on_tick(&mut self) -> Flow {
        if self.last_seen.elapsed() < self.timeout {
            return Flow::Continue;
        }
        self.node
            .metrics
            .frontend
            .error(FRONTEND, reasons::HEARTBEAT_TIMEOUT);
        Flow::Close(CloseReason::HeartbeatTimeout)
    }

    async fn on_close(&mut self, closed_by_server: Option<CloseReason>) {
        self.node
            .metrics
            .frontend
            .connections
            .with_label_values(&[FRONTEND])
            .dec();
        self.joined.clear();
        self.node.close(&self.conn, closed_by_server);
    }
}
