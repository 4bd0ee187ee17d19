//! The native front-end at `/websocket`: the jac-cloud websocket protocol,
//! extended with `subscribe`/`unsubscribe`, `ref` echo and error frames
//! (docs/protocol.md).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::{ChannelPublish, DirectPublish};
use crate::history::Position;
use crate::hub::{Conn, ConnState, Hub, Target};
use crate::node::{Node, Scope};
use crate::outbox::{CloseReason, Outbox};
use crate::transport::{Flow, Session};
use crate::walker::{valid_walker_name, WalkerCall};

/// Longest `ref` echoed back, in bytes of JSON.
const MAX_REF_LEN: usize = 64;
/// Walker calls one socket may have in flight.
const MAX_WALKERS_IN_FLIGHT: usize = 16;
/// Longest channel, user or client id accepted, in bytes.
const MAX_ID_LEN: usize = 256;

/// Query parameters of `/websocket`.
#[derive(Deserialize, Default)]
pub struct ConnectParams {
    pub channel_id: Option<String>,
    pub token: Option<String>,
}

/// Who the socket is, decided at connect time.
pub struct Identity {
    pub root_id: String,
    pub token: Option<String>,
    /// Token expiry (seconds since the epoch) when authenticated.
    pub expires_at: Option<u64>,
    /// The token's `channels` claim.
    pub channels: Option<Vec<String>>,
    /// The token's `info` claim (JSON text).
    pub info: Option<String>,
}

/// Resolve the socket's identity from a token (header or query).
pub fn identify(node: &Node, token: Option<&str>) -> Identity {
    if let Some(token) = token {
        match node.auth.verify(token) {
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
        root_id: node.config.anonymous_id.clone(),
        token: None,
        expires_at: None,
        channels: None,
        info: None,
    }
}

/// A fresh jac-cloud style id: `{unix seconds}:{32 hex}`.
pub fn fresh_channel_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs}:{}", uuid::Uuid::new_v4().simple())
}

/// Build the connection handle for a new socket.
pub fn new_conn(node: &Node, params: &ConnectParams, identity: Identity) -> Result<Conn, String> {
    let channel_id = match &params.channel_id {
        Some(c) if c.is_empty() || c.len() > MAX_ID_LEN => {
            return Err(format!("channel_id must be 1 to {MAX_ID_LEN} bytes long"))
        }
        Some(c) => crate::limits::channel_name(c).map(|()| c.clone())?,
        None => fresh_channel_id(),
    };
    Ok(Conn {
        id: node.next_conn_id(),
        client_id: Arc::from(pubmesh_cluster_proto::new_client_id(node.node_id())),
        channel_id: Arc::from(channel_id),
        outbox: Outbox::new(node.config.outbox_bytes),
        state: Mutex::new(ConnState {
            root_id: Arc::from(identity.root_id),
            token: identity.token,
            authenticated: identity.expires_at.is_some(),
            expires_at: identity.expires_at.unwrap_or(0),
            channels: HashSet::new(),
            allowed_channels: identity.channels.map(Arc::from),
            info: identity.info.map(Arc::from),
            positioned: HashMap::new(),
        }),
    })
}

/// The connection frame.
pub fn connection_frame(node: &Node, conn: &Conn, reference: Option<&RawValue>) -> Utf8Bytes {
    let root = conn.root_id();
    let mut frame = format!(
        "{{\"type\":\"connection\",\"data\":{{\"client_id\":{},\"root_id\":{},\"channel_id\":{},\"node_id\":{}}}",
        json_str(&conn.client_id),
        json_str(&root),
        json_str(&conn.channel_id),
        json_str(node.node_id()),
    );
    push_ref(&mut frame, reference);
    frame.push('}');
    Utf8Bytes::from(frame)
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

fn push_ref(frame: &mut String, reference: Option<&RawValue>) {
    if let Some(r) = reference {
        frame.push_str(",\"ref\":");
        frame.push_str(r.get());
    }
}

/// An error reply with a stable code.
pub fn error_frame(message: &str, code: &str, reference: Option<&RawValue>) -> Utf8Bytes {
    let mut frame = format!(
        "{{\"type\":\"error\",\"error\":{},\"code\":{}",
        json_str(message),
        json_str(code)
    );
    push_ref(&mut frame, reference);
    frame.push('}');
    Utf8Bytes::from(frame)
}

/// Every field a client frame may carry, unparsed; each is checked by the
/// handler of the frame's type so errors can name the field.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
    #[serde(borrow)]
    channel_ids: Option<&'a RawValue>,
    #[serde(borrow)]
    root_ids: Option<&'a RawValue>,
    #[serde(borrow)]
    client_ids: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    #[serde(borrow)]
    walker: Option<&'a RawValue>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
    #[serde(borrow)]
    node: Option<&'a RawValue>,
    #[serde(borrow)]
    response: Option<&'a RawValue>,
    #[serde(borrow)]
    positioned: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow)]
    channel_id: Option<&'a RawValue>,
    #[serde(borrow)]
    limit: Option<&'a RawValue>,
}

/// A rejected frame: message and code.
struct Reject(String, &'static str);

fn bad(message: impl Into<String>) -> Reject {
    Reject(message.into(), "bad_request")
}

/// A `ref` is a number, or a string of at most [`MAX_REF_LEN`] bytes.
fn valid_ref(r: &RawValue) -> bool {
    let text = r.get();
    if text.starts_with('"') {
        serde_json::from_str::<String>(text).is_ok_and(|s| s.len() <= MAX_REF_LEN)
    } else {
        text.len() <= MAX_REF_LEN && serde_json::from_str::<serde_json::Number>(text).is_ok()
    }
}

fn ids(field: Option<&RawValue>, name: &str, max: usize) -> Result<Vec<String>, Reject> {
    let raw = field.ok_or_else(|| bad(format!("{name} is required")))?;
    let list: Vec<String> = serde_json::from_str(raw.get())
        .map_err(|_| bad(format!("{name} must be a list of strings")))?;
    crate::limits::id_list(list, name, max).map_err(bad)
}

/// `data` must be a JSON object (as in jac-cloud); it is delivered verbatim.
fn data(field: Option<&RawValue>) -> Result<Utf8Bytes, Reject> {
    let raw = field.ok_or_else(|| bad("data is required"))?;
    if !raw.get().starts_with('{') {
        return Err(bad("data must be an object"));
    }
    Ok(Utf8Bytes::from(raw.get().to_string()))
}

fn boolean(field: Option<&RawValue>, name: &str) -> Result<bool, Reject> {
    match field {
        None => Ok(false),
        Some(raw) => {
            serde_json::from_str(raw.get()).map_err(|_| bad(format!("{name} must be a boolean")))
        }
    }
}

fn position_json(position: &Position, recovered: Option<bool>) -> serde_json::Value {
    let mut v = serde_json::json!({"offset": position.offset, "epoch": position.epoch});
    if let Some(r) = recovered {
        v["recovered"] = r.into();
    }
    v
}

fn string(field: Option<&RawValue>, name: &str) -> Result<Option<String>, Reject> {
    match field {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|_| bad(format!("{name} must be a string"))),
    }
}

/// The native protocol state of one socket.
pub struct NativeSession {
    node: Arc<Node>,
    conn: Arc<Conn>,
    /// Walker calls in flight, shared with their tasks; made on first use.
    walkers: Option<Arc<AtomicUsize>>,
}

impl NativeSession {
    pub fn new(node: Arc<Node>, conn: Arc<Conn>) -> Self {
        NativeSession {
            node,
            conn,
            walkers: None,
        }
    }

    fn send(&self, frame: Utf8Bytes) {
        self.node
            .hub
            .push_all(std::slice::from_ref(&self.conn), &frame);
    }

    fn count_in(&self, kind: &str) {
        self.node
            .metrics
            .messages_in
            .with_label_values(&[kind])
            .inc();
    }

    fn reject(&self, Reject(message, code): Reject, reference: Option<&RawValue>) {
        self.node.metrics.errors.with_label_values(&[code]).inc();
        self.send(error_frame(&message, code, reference));
    }

    async fn handle(&mut self, text: &str) -> Result<Flow, Reject> {
        let raw: &RawValue = serde_json::from_str(text)
            .map_err(|e| Reject(format!("frame is not valid JSON: {e}"), "bad_json"))?;
        if !raw.get().starts_with('{') {
            return Err(bad("frame must be a JSON object"));
        }
        let f: Fields<'_> = serde_json::from_str(raw.get()).map_err(|e| bad(e.to_string()))?;
        let reference = match f.reference {
            Some(r) if !valid_ref(r) => {
                return Err(bad(format!(
                    "ref must be a number or a string of at most {MAX_REF_LEN} bytes"
                )))
            }
            other => other,
        };
        let kind: String = match f.kind {
            None => {
                self.count_in("invalid");
                return Err(bad("type is required"));
            }
            Some(k) => serde_json::from_str(k.get()).map_err(|_| bad("type must be a string"))?,
        };
        let result = self.dispatch(&kind, &f, reference).await;
        if let Err(reject) = result {
            self.reject(reject, reference);
        }
        Ok(Flow::Continue)
    }

    async fn dispatch(
        &mut self,
        kind: &str,
        f: &Fields<'_>,
        reference: Option<&RawValue>,
    ) -> Result<(), Reject> {
        let known = matches!(
            kind,
            "connection"
                | "change_user"
                | "channel"
                | "user"
                | "client"
                | "walker"
                | "subscribe"
                | "unsubscribe"
                | "history"
                | "presence"
        );
        self.count_in(if known { kind } else { "invalid" });
        match kind {
            "connection" => {
                self.send(connection_frame(&self.node, &self.conn, reference));
                Ok(())
            }
            "change_user" => {
                let token = string(f.token, "token")?;
                let identity = identify(&self.node, token.as_deref().filter(|t| !t.is_empty()));
                {
                    let mut state = self.conn.state.lock();
                    state.allowed_channels = identity.channels.clone().map(Arc::from);
                    state.info = identity.info.clone().map(Arc::from);
                }
                let change = self.node.hub.change_user(
                    &self.conn,
                    Arc::from(identity.root_id),
                    identity.token,
                    identity.expires_at,
                );
                self.node.interest(change);
                if self.node.config.require_auth && identity.expires_at.is_none() {
                    self.conn.outbox.close(CloseReason::Unauthorized);
                    return Ok(());
                }
                self.send(connection_frame(&self.node, &self.conn, reference));
                Ok(())
            }
            "channel" => {
                let channels = ids(
                    f.channel_ids,
                    "channel_ids",
                    self.node.config.max_ids_per_message,
                )?;
                let frame = data(f.data)?;
                for c in &channels {
                    let policy = self
                        .node
                        .config
                        .namespaces
                        .options(c)
                        .publish
                        .unwrap_or(self.node.config.client_channel_publish);
                    match policy {
                        ChannelPublish::Any => {}
                        ChannelPublish::None => {
                            return Err(Reject(
                                format!("publishing to channel {c:?} from a socket is disabled"),
                                "forbidden",
                            ))
                        }
                        ChannelPublish::Members if Hub::is_member(&self.conn, c) => {}
                        ChannelPublish::Members => {
                            return Err(Reject(
                                format!("not a member of channel {c:?}"),
                                "forbidden",
                            ))
                        }
                    }
                }
                // With a `ref` the ack waits for the relay's outcome.
                let target = Target::Channels(channels);
                let done = if reference.is_some() {
                    self.node
                        .publish_to_confirmed(target, frame, Scope::Cluster)
                        .await
                } else {
                    self.node.publish_to(target, frame, Scope::Cluster).await
                }
                .map_err(|e| Reject(e.to_string(), e.code()))?;
                self.published(done, reference);
                Ok(())
            }
            "user" | "client" => {
                let (target, policy) = if kind == "user" {
                    (
                        Target::Users(ids(
                            f.root_ids,
                            "root_ids",
                            self.node.config.max_ids_per_message,
                        )?),
                        self.node.config.client_user_publish,
                    )
                } else {
                    (
                        Target::Clients(ids(
                            f.client_ids,
                            "client_ids",
                            self.node.config.max_ids_per_message,
                        )?),
                        self.node.config.client_client_publish,
                    )
                };
                let frame = data(f.data)?;
                let authenticated = self.conn.state.lock().authenticated;
                match policy {
                    DirectPublish::Any => {}
                    DirectPublish::Authenticated if authenticated => {}
                    DirectPublish::Authenticated => {
                        return Err(Reject(
                            format!("{kind} messages need an authenticated socket"),
                            "forbidden",
                        ))
                    }
                    DirectPublish::None => {
                        return Err(Reject(
                            format!("{kind} messages from a socket are disabled"),
                            "forbidden",
                        ))
                    }
                }
                let done = if reference.is_some() {
                    self.node
                        .publish_confirmed(target, frame, Scope::Cluster)
                        .await
                } else {
                    self.node.publish(target, frame, Scope::Cluster)
                };
                self.published(done, reference);
                Ok(())
            }
            "subscribe" => self.subscribe(f, reference).await,
            "unsubscribe" => {
                let channels = ids(
                    f.channel_ids,
                    "channel_ids",
                    self.node.config.max_ids_per_message,
                )?;
                let leaving: Vec<String> = channels
                    .iter()
                    .filter(|c| c.as_str() != &*self.conn.channel_id)
                    .filter(|c| Hub::is_member(&self.conn, c))
                    .cloned()
                    .collect();
                let change = self.node.hub.unsubscribe(&self.conn, &channels);
                self.node.interest(change);
                {
                    let mut state = self.conn.state.lock();
                    for c in &leaving {
                        state.positioned.remove(c.as_str());
                    }
                }
                self.send(ack("unsubscribed", &channels, reference));
                for c in &leaving {
                    let options = self.node.config.namespaces.options(c);
                    self.node.presence_leave(&self.conn, c, &options).await;
                }
                Ok(())
            }
            "history" => self.history(f, reference).await,
            "presence" => self.presence(f, reference).await,
            "walker" => self.walker(f, reference),
            other => Err(bad(format!("unknown message type {}", json_str(other)))),
        }
    }

    /// Join channels; with `positioned` (or `since`, for recovery) on history
    /// channels, deliveries come enveloped with their positions.
    async fn subscribe(
        &mut self,
        f: &Fields<'_>,
        reference: Option<&RawValue>,
    ) -> Result<(), Reject> {
        let channels = ids(
            f.channel_ids,
            "channel_ids",
            self.node.config.max_ids_per_message,
        )?;
        let positioned = boolean(f.positioned, "positioned")?;
        let since: HashMap<String, Position> = match f.since {
            None => HashMap::new(),
            Some(raw) => serde_json::from_str(raw.get()).map_err(|_| {
                bad("since must map channel names to {\"offset\":N,\"epoch\":\"…\"}")
            })?,
        };
        if let Some(c) = since.keys().find(|c| !channels.contains(c)) {
            return Err(bad(format!(
                "since names {c:?}, which is not in channel_ids"
            )));
        }
        let mut options = Vec::with_capacity(channels.len());
        for c in &channels {
            let o = self
                .node
                .may_subscribe(&self.conn, c)
                .map_err(|m| Reject(m, "forbidden"))?;
            if (positioned || since.contains_key(c)) && !o.history() {
                return Err(Reject(
                    format!("channel {c:?} keeps no history"),
                    "no_history",
                ));
            }
            options.push(o);
        }
        let joined: Vec<bool> = channels
            .iter()
            .map(|c| !Hub::is_member(&self.conn, c))
            .collect();
        let wants_position = |c: &String| positioned || since.contains_key(c);
        {
            // Before joining, so live publications are caught from the start.
            let mut state = self.conn.state.lock();
            for c in channels.iter().filter(|c| wants_position(c)) {
                let pos = state.positioned.entry(Arc::from(c.as_str())).or_default();
                if let Some(p) = since.get(c) {
                    pos.epoch = Some(Arc::from(p.epoch.as_str()));
                    pos.last = p.offset;
                }
                pos.recovering = Some(Vec::new());
            }
        }
        let limit = self.node.config.max_channels_per_connection;
        let change = match self.node.hub.subscribe(&self.conn, &channels, limit) {
            Ok(change) => change,
            Err(limit) => {
                let mut state = self.conn.state.lock();
                for (c, new) in channels.iter().zip(&joined) {
                    if *new {
                        state.positioned.remove(c.as_str());
                    }
                }
                return Err(Reject(
                    format!("a connection may be in at most {limit} channels"),
                    "too_many_channels",
                ));
            }
        };
        self.node.interest(change);

        // Read what each recovering channel missed (and the positions of the others).
        let mut positions = serde_json::Map::new();
        let mut missed: Vec<(String, Position, Vec<crate::history::Publication>, bool)> =
            Vec::new();
        for (c, o) in channels.iter().zip(&options) {
            if !wants_position(c) {
                continue;
            }
            let from = since.get(c);
            self.node.metrics.history_reads.inc();
            let page = self.node.history.read(c, from, o.history_size, o).await;
            let (top, publications, recovered) = match page {
                Ok(page) => (page.top, page.publications, page.recovered),
                Err(crate::history::HistoryError::BadPosition { .. }) if from.is_some() => {
                    // A position from the future: nothing can be trusted.
                    let top = self.node.history.read(c, None, 0, o).await.map(|p| p.top);
                    match top {
                        Ok(top) => (top, Vec::new(), false),
                        Err(e) => return Err(self.abort_recovery(c, e)),
                    }
                }
                Err(e) => return Err(self.abort_recovery(c, e)),
            };
            if from.is_some() {
                let result = if recovered { "ok" } else { "failed" };
                self.node
                    .metrics
                    .recoveries
                    .with_label_values(&[result])
                    .inc();
            }
            positions.insert(c.clone(), position_json(&top, from.map(|_| recovered)));
            missed.push((c.clone(), top, publications, from.is_some() && recovered));
        }

        // Reply, then the missed publications, then what arrived meanwhile:
        // all under the connection's lock so no live publication slips between.
        let mut reply = serde_json::json!({"type": "subscribed", "channel_ids": channels});
        if !positions.is_empty() {
            reply["positions"] = serde_json::Value::Object(positions);
        }
        if let Some(r) = reference {
            reply["ref"] = serde_json::from_str(r.get()).expect("ref is valid JSON");
        }
        {
            let mut state = self.conn.state.lock();
            let mut frames = vec![Utf8Bytes::from(reply.to_string())];
            for (c, top, publications, recovered) in missed {
                let epoch: Arc<str> = Arc::from(top.epoch.as_str());
                let Some(pos) = state.positioned.get_mut(c.as_str()) else {
                    continue;
                };
                if !recovered {
                    // Nothing to replay: continue live from the current top.
                    if pos.epoch.as_deref() == Some(&*epoch) {
                        pos.last = pos.last.max(top.offset);
                    } else {
                        pos.epoch = Some(epoch.clone());
                        pos.last = top.offset;
                    }
                }
                for p in publications {
                    if pos.advance(&epoch, p.offset) {
                        let position = Position {
                            offset: p.offset,
                            epoch: top.epoch.clone(),
                        };
                        frames.push(crate::node::publication_frame(&c, &position, &p.data));
                    }
                }
                for (offset, e, frame) in pos.recovering.take().unwrap_or_default() {
                    if pos.advance(&e, offset) {
                        frames.push(frame);
                    }
                }
            }
            for frame in frames {
                self.conn.outbox.push(frame);
            }
        }
        for ((c, o), new) in channels.iter().zip(&options).zip(joined) {
            if new {
                self.node.presence_join(&self.conn, c, o).await;
            }
        }
        Ok(())
    }

    /// A recovery that cannot read history: deliver live from now on.
    fn abort_recovery(&self, channel: &str, error: crate::history::HistoryError) -> Reject {
        let mut state = self.conn.state.lock();
        if let Some(pos) = state.positioned.get_mut(channel) {
            pos.recovering = None;
        }
        Reject(error.to_string(), error.code())
    }

    /// The `channel_id` of a history or presence frame, if this socket may
    /// read that channel, with the channel's options.
    fn readable_channel(
        &self,
        f: &Fields<'_>,
    ) -> Result<(String, crate::namespace::ChannelOptions), Reject> {
        let channel =
            string(f.channel_id, "channel_id")?.ok_or_else(|| bad("channel_id is required"))?;
        crate::limits::channel_name(&channel).map_err(bad)?;
        let options = self
            .node
            .may_subscribe(&self.conn, &channel)
            .map_err(|m| Reject(m, "forbidden"))?;
        Ok((channel, options))
    }

    /// `history`: the last N publications of a channel, or those after a position.
    async fn history(
        &mut self,
        f: &Fields<'_>,
        reference: Option<&RawValue>,
    ) -> Result<(), Reject> {
        let (channel, options) = self.readable_channel(f)?;
        if !options.history() {
            return Err(Reject(
                format!("channel {channel:?} keeps no history"),
                "no_history",
            ));
        }
        let limit = match f.limit {
            None => options.history_size,
            Some(raw) => serde_json::from_str::<usize>(raw.get())
                .map_err(|_| bad("limit must be a non-negative integer"))?
                .min(options.history_size),
        };
        let since: Option<Position> = match f.since {
            None => None,
            Some(raw) => Some(
                serde_json::from_str(raw.get())
                    .map_err(|_| bad("since must be {\"offset\":N,\"epoch\":\"…\"}"))?,
            ),
        };
        self.node.metrics.history_reads.inc();
        let page = self
            .node
            .history
            .peek(&channel, since.as_ref(), limit, &options)
            .await
            .map_err(|e| Reject(e.to_string(), e.code()))?;
        self.send(history_frame(&channel, &page, reference));
        Ok(())
    }

    /// `presence`: who is in a channel, cluster-wide.
    async fn presence(
        &mut self,
        f: &Fields<'_>,
        reference: Option<&RawValue>,
    ) -> Result<(), Reject> {
        let (channel, options) = self.readable_channel(f)?;
        if !options.presence {
            return Err(Reject(
                format!("channel {channel:?} has no presence"),
                "no_presence",
            ));
        }
        let clients = self
            .node
            .presence
            .list(&channel)
            .await
            .map_err(|e| Reject(e.to_string(), "unavailable"))?;
        let mut reply = serde_json::json!({
            "type": "presence",
            "channel_id": channel,
            "count": clients.len(),
            "clients": clients,
        });
        if let Some(r) = reference {
            reply["ref"] = serde_json::from_str(r.get()).expect("ref is valid JSON");
        }
        self.send(Utf8Bytes::from(reply.to_string()));
        Ok(())
    }

    fn published(&self, done: crate::node::Published, reference: Option<&RawValue>) {
        if let Some(r) = reference {
            self.send(Utf8Bytes::from(format!(
                "{{\"type\":\"published\",\"ref\":{},\"local_deliveries\":{},\"relayed\":{},\"relay\":\"{}\"}}",
                r.get(),
                done.local_deliveries,
                done.relayed,
                done.relay.as_str()
            )));
        }
    }

    fn walker(&mut self, f: &Fields<'_>, reference: Option<&RawValue>) -> Result<(), Reject> {
        let name = string(f.walker, "walker")?.ok_or_else(|| bad("walker is required"))?;
        if !valid_walker_name(&name) {
            return Err(bad("walker must match [A-Za-z0-9_.-]{1,128}"));
        }
        let context: Box<RawValue> = match f.context {
            None => RawValue::from_string("{}".into()).expect("valid JSON"),
            Some(c) if c.get().starts_with('{') => c.to_owned(),
            Some(_) => return Err(bad("context must be an object")),
        };
        let entry = string(f.node, "node")?;
        let response = match f.response {
            None => false,
            Some(r) => serde_json::from_str::<bool>(r.get())
                .map_err(|_| bad("response must be a boolean"))?,
        };
        let reference: Option<Box<RawValue>> = reference.map(|r| r.to_owned());
        let node = self.node.clone();
        let conn = self.conn.clone();
        if node.walker.is_none() {
            walker_failure(
                &node,
                &conn,
                &crate::walker::WalkerError::NoBackend,
                reference.as_deref(),
            );
            return Ok(());
        }
        let in_flight = self.walkers.get_or_insert_with(Default::default).clone();
        if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_WALKERS_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Reject(
                format!("at most {MAX_WALKERS_IN_FLIGHT} walker calls may be in flight"),
                "rate_limited",
            ));
        }
        tokio::spawn(async move {
            let (root, token) = {
                let state = conn.state.lock();
                (state.root_id.clone(), state.token.clone())
            };
            let call = WalkerCall {
                context: &context,
                node: entry.as_deref(),
                client_id: &conn.client_id,
                root_id: &root,
                channel_id: &conn.channel_id,
            };
            let client = node.walker.as_ref().expect("checked above");
            match client.call(&name, &call, token.as_deref()).await {
                Ok(body) if response => {
                    let frame = match &reference {
                        Some(r) => format!(
                            "{{\"type\":\"walker\",\"ref\":{},\"data\":{}}}",
                            r.get(),
                            body.trim()
                        ),
                        None => body,
                    };
                    node.hub
                        .push_all(std::slice::from_ref(&conn), &Utf8Bytes::from(frame));
                }
                Ok(_) => {}
                Err(e) => walker_failure(&node, &conn, &e, reference.as_deref()),
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(())
    }
}

fn walker_failure(
    node: &Node,
    conn: &Arc<Conn>,
    error: &crate::walker::WalkerError,
    reference: Option<&RawValue>,
) {
    node.metrics.errors.with_label_values(&[error.code()]).inc();
    let mut frame = format!(
        "{{\"type\":\"walker\",\"error\":{},\"code\":\"{}\"",
        json_str(&error.to_string()),
        error.code()
    );
    if let Some(status) = error.status() {
        frame.push_str(&format!(",\"status\":{status}"));
    }
    push_ref(&mut frame, reference);
    frame.push('}');
    node.hub
        .push_all(std::slice::from_ref(conn), &Utf8Bytes::from(frame));
}

/// `{"type":"history","channel_id":…,"publications":[{"offset":…,"data":…}],"offset":…,"epoch":…,"recovered":…}`
pub fn history_frame(
    channel: &str,
    page: &crate::history::HistoryPage,
    reference: Option<&RawValue>,
) -> Utf8Bytes {
    let mut frame = format!(
        "{{\"type\":\"history\",\"channel_id\":{},\"offset\":{},\"epoch\":{},\"recovered\":{},\"publications\":[",
        json_str(channel),
        page.top.offset,
        json_str(&page.top.epoch),
        page.recovered
    );
    for (i, p) in page.publications.iter().enumerate() {
        if i > 0 {
            frame.push(',');
        }
        frame.push_str(&format!(
            "{{\"offset\":{},\"data\":{}}}",
            p.offset,
            p.data.as_str()
        ));
    }
    frame.push(']');
    push_ref(&mut frame, reference);
    frame.push('}');
    Utf8Bytes::from(frame)
}

fn ack(kind: &str, channels: &[String], reference: Option<&RawValue>) -> Utf8Bytes {
    let mut frame = format!(
        "{{\"type\":\"{kind}\",\"channel_ids\":{}",
        serde_json::to_string(channels).expect("strings serialize")
    );
    push_ref(&mut frame, reference);
    frame.push('}');
    Utf8Bytes::from(frame)
}

/// Sockets whose token expired lose their identity: under `--require-auth`
/// they are closed with 4001, otherwise they become anonymous and receive a
/// new connection frame. Checked every `every`.
pub async fn expire_tokens(node: Arc<Node>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for conn in node.hub.connections() {
            let expired = {
                let state = conn.state.lock();
                state.authenticated && state.expires_at <= now
            };
            if !expired {
                continue;
            }
            if node.config.require_auth {
                conn.outbox.close(CloseReason::Unauthorized);
                continue;
            }
            let anonymous = Arc::from(node.config.anonymous_id.as_str());
            let change = node.hub.change_user(&conn, anonymous, None, None);
            node.interest(change);
            node.hub.push_all(
                std::slice::from_ref(&conn),
                &connection_frame(&node, &conn, None),
            );
        }
    }
}

impl Session for NativeSession {
    async fn on_text(&mut self, text: Utf8Bytes) -> Flow {
        match self.handle(&text).await {
            Ok(flow) => flow,
            Err(reject) => {
                self.reject(reject, None);
                Flow::Continue
            }
        }
    }

    async fn on_binary(&mut self) -> Flow {
        self.count_in("invalid");
        self.reject(bad("binary frames are not supported; send JSON text"), None);
        Flow::Continue
    }
}
