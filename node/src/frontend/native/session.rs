//! The native protocol state of one socket: client frames in, node calls
//! out, replies queued through the node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::codec::{
    ack, connection_frame, error_frame, history_frame, json_str, presence_frame, push_ref,
    subscribed_frame,
};
use super::parse::{
    bad, boolean, data, idempotency_key, ids, string, valid_ref, Fields, Reject, MAX_REF_LEN,
};
use crate::conn::Conn;
use crate::delivery::{Delivery, Position, Target};
use crate::node::{JoinRequest, MeshError, Node, Published, Read};
use crate::outbox::CloseReason;
use crate::policy::ChannelOptions;
use crate::transport::{Flow, Session};
use crate::walker::{valid_walker_name, WalkerCall, WalkerError};

/// Walker calls one socket may have in flight.
const MAX_WALKERS_IN_FLIGHT: usize = 16;

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

    fn max_ids(&self) -> usize {
        self.node.config.max_ids_per_message
    }

    fn send(&self, frame: Utf8Bytes) {
        self.node.send(&self.conn, frame);
    }

    fn connection_frame(&self, reference: Option<&RawValue>) -> Utf8Bytes {
        self.conn
            .with_info(|info| connection_frame(self.node.node_id(), info, reference))
    }

    fn count_in(&self, kind: &str) {
        self.node.metrics.messages_in.inc(kind);
    }

    fn reject(&self, Reject(message, code): Reject, reference: Option<&RawValue>) {
        self.node.metrics.errors.with_label_values(&[code]).inc();
        self.send(error_frame(&message, code, reference));
    }

    async fn handle(&mut self, text: &str) -> Result<Flow, Reject> {
        let f = fields(text)?;
        let reference = match f.reference {
            Some(r) if !valid_ref(r) => {
                return Err(bad(format!(
                    "ref must be a number or a string of at most {MAX_REF_LEN} bytes"
                )))
            }
            other => other,
        };
        // From here on every error carries the frame's `ref`.
        let kind: Result<String, Reject> = match f.kind {
            None => Err(bad("type is required")),
            Some(k) => serde_json::from_str(k.get()).map_err(|_| bad("type must be a string")),
        };
        let result = match kind {
            Ok(kind) => self.dispatch(&kind, &f, reference).await,
            Err(reject) => {
                self.count_in("invalid");
                Err(reject)
            }
        };
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
        // The transport boxes this handler's future for every frame. Only
        // the publish frames, the common ones, await inline; every other
        // frame's wait is boxed apart, so the handler's future stays small
        // enough for the allocator's per-thread cache (BENCHMARKS.md, "W2
        // per delivery: a small frame handler").
        match kind {
            "connection" => {
                self.send(self.connection_frame(reference));
                Ok(())
            }
            "change_user" => {
                let token = string(f.token, "token")?;
                let identity = self
                    .node
                    .identify(token.as_deref().filter(|t| !t.is_empty()));
                match Box::pin(self.node.reauthenticate(&self.conn, identity)).await {
                    Err(MeshError::Unauthorized) => Ok(()),
                    Err(e) => Err(e.into()),
                    Ok(()) => {
                        self.send(self.connection_frame(reference));
                        Ok(())
                    }
                }
            }
            "channel" => {
                let channels = ids(f.channel_ids, "channel_ids", self.max_ids())?;
                let frame = data(f.data)?;
                let key = idempotency_key(f.idempotency_key)?;
                let delivery = Delivery::new(Target::Channels(channels), frame);
                // With a `ref` the ack waits for the relay's outcome.
                let confirm = reference.is_some();
                let done = self
                    .node
                    .client_publish(&self.conn, delivery, confirm, key.as_deref())
                    .await?;
                self.published(done, reference);
                Ok(())
            }
            "user" | "client" => {
                let target = if kind == "user" {
                    Target::Users(ids(f.root_ids, "root_ids", self.max_ids())?)
                } else {
                    Target::Clients(ids(f.client_ids, "client_ids", self.max_ids())?)
                };
                let frame = data(f.data)?;
                let key = idempotency_key(f.idempotency_key)?;
                let delivery = Delivery::new(target, frame);
                // With a `ref` the ack waits for the relay's outcome.
                let confirm = reference.is_some();
                let done = self
                    .node
                    .client_publish(&self.conn, delivery, confirm, key.as_deref())
                    .await?;
                self.published(done, reference);
                Ok(())
            }
            "subscribe" => Box::pin(self.subscribe(f, reference)).await,
            "unsubscribe" => {
                let channels = ids(f.channel_ids, "channel_ids", self.max_ids())?;
                if let Some(home) = channels.iter().find(|c| c.as_str() == self.conn.home()) {
                    return Err(bad(format!(
                        "{} is this connection's channel_id, which it stays in until it disconnects",
                        json_str(home)
                    )));
                }
                let reply = ack("unsubscribed", &channels, reference);
                Box::pin(self.node.leave(&self.conn, &channels, || Some(reply))).await;
                Ok(())
            }
            "history" => Box::pin(self.history(f, reference)).await,
            "presence" => Box::pin(self.presence(f, reference)).await,
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
        let channels = ids(f.channel_ids, "channel_ids", self.max_ids())?;
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
        let request = JoinRequest {
            channels: &channels,
            positioned,
            since: &since,
        };
        self.node
            .join(&self.conn, request, |joined| {
                Some(subscribed_frame(joined, reference))
            })
            .await?;
        Ok(())
    }

    /// The `channel_id` of a history or presence frame, if this socket may
    /// read that channel, with the channel's options.
    fn readable_channel(
        &self,
        f: &Fields<'_>,
        what: Read,
    ) -> Result<(String, ChannelOptions), Reject> {
        let channel =
            string(f.channel_id, "channel_id")?.ok_or_else(|| bad("channel_id is required"))?;
        crate::limits::channel_name(&channel).map_err(bad)?;
        let options = self.node.may_read(Some(&self.conn), &channel, what)?;
        Ok((channel, options))
    }

    /// `history`: the last N publications of a channel, or those after a position.
    async fn history(
        &mut self,
        f: &Fields<'_>,
        reference: Option<&RawValue>,
    ) -> Result<(), Reject> {
        let (channel, options) = self.readable_channel(f, Read::History)?;
        let limit = match f.limit {
            None => options.history_size,
            Some(raw) => serde_json::from_str::<usize>(raw.get())
                .map_err(|_| bad("limit must be a non-negative integer"))?,
        };
        let since: Option<Position> = match f.since {
            None => None,
            Some(raw) => Some(
                serde_json::from_str(raw.get())
                    .map_err(|_| bad("since must be {\"offset\":N,\"epoch\":\"…\"}"))?,
            ),
        };
        let page = self
            .node
            .history(&channel, since.as_ref(), limit, &options)
            .await?;
        self.send(history_frame(&channel, &page, reference));
        Ok(())
    }

    /// `presence`: who is in a channel, cluster-wide.
    async fn presence(
        &mut self,
        f: &Fields<'_>,
        reference: Option<&RawValue>,
    ) -> Result<(), Reject> {
        let (channel, _) = self.readable_channel(f, Read::Presence)?;
        let clients = self.node.presence(&channel).await?;
        self.send(presence_frame(&channel, &clients, reference));
        Ok(())
    }

    fn published(&self, done: Published, reference: Option<&RawValue>) {
        if let Some(r) = reference {
            let mut frame = format!(
                "{{\"type\":\"published\",\"ref\":{},\"local_deliveries\":{},\"relayed\":{},\"relay\":\"{}\"",
                r.get(),
                done.local_deliveries,
                done.relayed,
                done.relay.as_str()
            );
            if let Some(duplicate) = done.duplicate {
                frame.push_str(&format!(",\"duplicate\":{duplicate}"));
            }
            if !done.positions.is_empty() {
                let positions =
                    serde_json::to_string(&done.positions).expect("positions serialize");
                frame.push_str(&format!(",\"positions\":{positions}"));
            }
            frame.push('}');
            self.send(Utf8Bytes::from(frame));
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
            walker_failure(&node, &conn, &WalkerError::NoBackend, reference.as_deref());
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
                channel_id: conn.home(),
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
                    node.send(&conn, Utf8Bytes::from(frame));
                }
                Ok(_) => {}
                Err(e) => walker_failure(&node, &conn, &e, reference.as_deref()),
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(())
    }
}

fn walker_failure(node: &Node, conn: &Conn, error: &WalkerError, reference: Option<&RawValue>) {
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
    node.send(conn, Utf8Bytes::from(frame));
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

    async fn on_binary(&mut self, _data: Bytes) -> Flow {
        self.count_in("invalid");
        self.reject(bad("binary frames are not supported; send JSON text"), None);
        Flow::Continue
    }

    async fn on_close(&mut self, closed_by_server: Option<CloseReason>) {
        self.node.close(&self.conn, closed_by_server);
    }
}

/// A frame's fields, each kept raw, in one pass over the frame. Only when
/// that fails, or the frame is not an object (a JSON array fills the fields
/// in order), is it read again to tell which error it is.
fn fields(text: &str) -> Result<Fields<'_>, Reject> {
    match serde_json::from_str::<Fields<'_>>(text) {
        Ok(f) if is_object(text) => Ok(f),
        Ok(_) => Err(frame_error(text, None)),
        Err(e) => Err(frame_error(text, Some(e))),
    }
}

/// Whether a frame that parsed is a JSON object (its first byte after
/// JSON's whitespace is `{`).
fn is_object(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
}

/// The error of a frame that did not parse into fields (`fields`), or that
/// parsed but is not an object: not JSON at all, not an object, or an
/// object whose fields do not fit (a duplicate field).
fn frame_error(text: &str, fields: Option<serde_json::Error>) -> Reject {
    match serde_json::from_str::<&RawValue>(text) {
        Err(e) => Reject(format!("frame is not valid JSON: {e}"), "bad_json"),
        Ok(raw) if !raw.get().starts_with('{') => bad("frame must be a JSON object"),
        Ok(_) => bad(fields.map_or_else(
            || "frame must be a JSON object".to_owned(),
            |e| e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_read_once_and_its_errors_are_told_apart() {
        let f = fields(" \n{\"type\":\"channel\",\"data\":{\"a\":[1,\"}\"]},\"extra\":true}")
            .unwrap_or_else(|Reject(m, _)| panic!("{m}"));
        assert_eq!(f.kind.map(RawValue::get), Some("\"channel\""));
        assert_eq!(f.data.map(RawValue::get), Some("{\"a\":[1,\"}\"]}"));
        let refused = |text: &str| match fields(text) {
            Ok(_) => panic!("{text} was taken"),
            Err(Reject(message, code)) => (message, code),
        };
        for (text, message, code) in [
            (
                "{x}",
                "frame is not valid JSON: key must be a string at line 1 column 2",
                "bad_json",
            ),
            // A field error (a duplicate) comes before the syntax error:
            // the frame is still reported as not JSON.
            (
                "{\"type\":\"a\",\"type\":\"b\",",
                "frame is not valid JSON: EOF while parsing an object at line 1 column 23",
                "bad_json",
            ),
            // An array fills the fields in order, but is not an object.
            (
                "[\"channel\"]",
                "frame must be a JSON object",
                "bad_request",
            ),
            ("\"channel\"", "frame must be a JSON object", "bad_request"),
            (
                "{\"type\":\"a\",\"type\":\"b\"}",
                "duplicate field `type` at line 1 column 18",
                "bad_request",
            ),
        ] {
            assert_eq!(refused(text), (message.to_owned(), code), "{text}");
        }
    }

    /// The size of the future that `handler` returns, without calling it.
    fn future_size<A, F: std::future::Future>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The transport boxes the future of every client frame's handler; a
    /// box of at most 1,024 bytes comes from glibc's per-thread cache
    /// (tcache) instead of its bins, and is cheap to fill (BENCHMARKS.md,
    /// "W2 per delivery: a small frame handler").
    #[test]
    fn frame_handler_future_fits_the_allocator_cache() {
        let size = future_size(|(session, text): (&'static mut NativeSession, Utf8Bytes)| {
            session.on_text(text)
        });
        assert!(size <= 1024, "on_text's future is {size} bytes");
    }
}
