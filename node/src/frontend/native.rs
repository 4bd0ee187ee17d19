//! The native front-end at `/websocket`: the jac-cloud websocket protocol,
//! extended with `subscribe`/`unsubscribe`, `ref` echo and error frames
//! (docs/protocol.md).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::{ChannelPublish, DirectPublish};
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
                }
            }
            Err(e) => tracing::debug!(error = %e, "token rejected; socket is anonymous"),
        }
    }
    Identity {
        root_id: node.config.anonymous_id.clone(),
        token: None,
        expires_at: None,
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
        Some(c) => c.clone(),
        None => fresh_channel_id(),
    };
    Ok(Conn {
        id: node.next_conn_id(),
        client_id: Arc::from(crate::ids_shim::new_client_id(node.node_id())),
        channel_id: Arc::from(channel_id),
        outbox: Outbox::new(node.config.outbox_bytes),
        state: Mutex::new(ConnState {
            root_id: Arc::from(identity.root_id),
            token: identity.token,
            authenticated: identity.expires_at.is_some(),
            expires_at: identity.expires_at.unwrap_or(0),
            channels: HashSet::new(),
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
}

/// A rejected frame: message and code.
struct Reject(String, &'static str);

fn bad(message: impl Into<String>) -> Reject {
    Reject(message.into(), "bad_request")
}

fn ids(field: Option<&RawValue>, name: &str) -> Result<Vec<String>, Reject> {
    let raw = field.ok_or_else(|| bad(format!("{name} is required")))?;
    let list: Vec<String> = serde_json::from_str(raw.get())
        .map_err(|_| bad(format!("{name} must be a list of strings")))?;
    if list.is_empty() {
        return Err(bad(format!("{name} must not be empty")));
    }
    if list.iter().any(|id| id.is_empty() || id.len() > MAX_ID_LEN) {
        return Err(bad(format!(
            "every id in {name} must be 1 to {MAX_ID_LEN} bytes"
        )));
    }
    Ok(list)
}

/// `data` must be a JSON object (as in jac-cloud); it is delivered verbatim.
fn data(field: Option<&RawValue>) -> Result<Utf8Bytes, Reject> {
    let raw = field.ok_or_else(|| bad("data is required"))?;
    if !raw.get().starts_with('{') {
        return Err(bad("data must be an object"));
    }
    Ok(Utf8Bytes::from(raw.get().to_string()))
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

    fn handle(&mut self, text: &str) -> Result<Flow, Reject> {
        let raw: &RawValue = serde_json::from_str(text)
            .map_err(|e| Reject(format!("frame is not valid JSON: {e}"), "bad_json"))?;
        if !raw.get().starts_with('{') {
            return Err(bad("frame must be a JSON object"));
        }
        let f: Fields<'_> = serde_json::from_str(raw.get()).map_err(|e| bad(e.to_string()))?;
        let reference = match f.reference {
            Some(r) if r.get().len() > MAX_REF_LEN => {
                return Err(bad(format!("ref must be at most {MAX_REF_LEN} bytes")))
            }
            Some(r)
                if !(r.get().starts_with('"')
                    || r.get()
                        .starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])) =>
            {
                return Err(bad("ref must be a number or a string"))
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
        let result = self.dispatch(&kind, &f, reference);
        if let Err(reject) = result {
            self.reject(reject, reference);
        }
        Ok(Flow::Continue)
    }

    fn dispatch(
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
                let channels = ids(f.channel_ids, "channel_ids")?;
                let frame = data(f.data)?;
                match self.node.config.client_channel_publish {
                    ChannelPublish::Any => {}
                    ChannelPublish::None => {
                        return Err(Reject(
                            "publishing to channels from a socket is disabled".into(),
                            "forbidden",
                        ))
                    }
                    ChannelPublish::Members => {
                        if let Some(c) = channels.iter().find(|c| !Hub::is_member(&self.conn, c)) {
                            return Err(Reject(
                                format!("not a member of channel {c:?}"),
                                "forbidden",
                            ));
                        }
                    }
                }
                self.publish(Target::Channels(channels), frame, reference);
                Ok(())
            }
            "user" | "client" => {
                let (target, policy) = if kind == "user" {
                    (
                        Target::Users(ids(f.root_ids, "root_ids")?),
                        self.node.config.client_user_publish,
                    )
                } else {
                    (
                        Target::Clients(ids(f.client_ids, "client_ids")?),
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
                self.publish(target, frame, reference);
                Ok(())
            }
            "subscribe" => {
                let channels = ids(f.channel_ids, "channel_ids")?;
                let limit = self.node.config.max_channels_per_connection;
                let change = self
                    .node
                    .hub
                    .subscribe(&self.conn, &channels, limit)
                    .map_err(|limit| {
                        Reject(
                            format!("a connection may be in at most {limit} channels"),
                            "too_many_channels",
                        )
                    })?;
                self.node.interest(change);
                self.send(ack("subscribed", &channels, reference));
                Ok(())
            }
            "unsubscribe" => {
                let channels = ids(f.channel_ids, "channel_ids")?;
                let change = self.node.hub.unsubscribe(&self.conn, &channels);
                self.node.interest(change);
                self.send(ack("unsubscribed", &channels, reference));
                Ok(())
            }
            "walker" => self.walker(f, reference),
            other => Err(bad(format!("unknown message type {}", json_str(other)))),
        }
    }

    fn publish(&self, target: Target, frame: Utf8Bytes, reference: Option<&RawValue>) {
        let done = self.node.publish(target, frame, Scope::Cluster);
        if let Some(r) = reference {
            self.send(Utf8Bytes::from(format!(
                "{{\"type\":\"published\",\"ref\":{},\"local_deliveries\":{},\"relayed\":{}}}",
                r.get(),
                done.local_deliveries,
                done.relayed
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
        match self.handle(&text) {
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
