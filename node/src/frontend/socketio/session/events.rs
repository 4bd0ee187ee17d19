//! A session's client events that the server answers: join events (rooms
//! joined or left from the join-event table) and events for the backend.

use std::sync::Arc;

use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{message, reasons, SioSession};
use crate::config::socketio::JoinEvent;
use crate::delivery::{Delivery, Target};
use crate::frontend::socketio::backend::{Backend, EventCall};
use crate::frontend::socketio::codec;
use crate::frontend::socketio::joins::{self, Op};
use crate::frontend::socketio::wire::{Json, Packet};
use crate::node::Scope;

impl SioSession {
    /// A join event: its rooms joined or left, answered with the table's
    /// strings.
    pub(super) async fn join_event(
        &mut self,
        event: JoinEvent,
        nsp: String,
        id: Option<u64>,
        args: Vec<Json>,
    ) {
        let payload: Option<Value> = args
            .first()
            .and_then(|a| serde_json::from_str(a.get()).ok());
        let (op, rooms) = match joins::rooms(&event, payload.as_ref()) {
            Ok(asked) => asked,
            Err(answer) => {
                self.error(reasons::JOIN_REFUSED);
                if let Some(frame) = self.ack(&nsp, id, &answer) {
                    self.node.send(&self.conn, frame);
                }
                return;
            }
        };
        let channels: Result<Vec<String>, String> = rooms
            .iter()
            .map(|r| codec::channel_of(&self.namespaces, &nsp, r))
            .collect();
        let failed = |e: &str| format!("{}{e}", event.failed);
        let channels = match channels {
            Ok(c) => c,
            Err(e) => {
                self.error(reasons::JOIN_REFUSED);
                if let Some(frame) = self.ack(&nsp, id, &failed(&e)) {
                    self.node.send(&self.conn, frame);
                }
                return;
            }
        };
        let ok = self.ack(&nsp, id, &event.ok);
        match op {
            Op::Join => match self.join_rooms(&nsp, &channels, None, |_| ok).await {
                Ok(()) => {
                    let set = self.connected.entry(nsp.clone()).or_default();
                    set.extend(channels);
                    self.save(&nsp).await;
                }
                Err(e) => {
                    self.error(reasons::JOIN_REFUSED);
                    if let Some(frame) = self.ack(&nsp, id, &failed(&e.to_string())) {
                        self.node.send(&self.conn, frame);
                    }
                }
            },
            Op::Leave => {
                if let Some(set) = self.connected.get_mut(&nsp) {
                    for c in &channels {
                        set.remove(c);
                    }
                }
                self.node.leave(&self.conn, &channels, || ok).await;
                self.left(&nsp, &channels).await;
            }
        }
    }

    /// An event for the backend: its answer applied (joins, leaves, emits,
    /// publications), then the ack; a failure is an error ack.
    pub(super) async fn backend_event(
        &mut self,
        backend: &Backend,
        nsp: String,
        id: Option<u64>,
        event: String,
        args: Vec<Json>,
    ) {
        let (token, user) = {
            let state = self.conn.state.lock();
            (state.token.clone(), state.root_id.clone())
        };
        let rooms: Vec<&str> = self
            .connected
            .get(&nsp)
            .into_iter()
            .flatten()
            .map(|c| codec::split(&self.namespaces, c).1)
            .collect();
        let call = EventCall {
            namespace: &nsp,
            event: &event,
            args: args.iter().map(Json::raw).collect(),
            socket_id: &self.conn.client_id,
            user_id: &user,
            rooms,
            ack: id.is_some(),
        };
        let answer = backend.call(&call, token.as_deref()).await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.error(e.code());
                tracing::info!(error = %e, event, "socket.io backend call failed");
                if let Some(id) = id {
                    let error = serde_json::json!({"error": e.code(), "message": e.to_string()});
                    self.send(message(&Packet::Ack {
                        nsp,
                        id,
                        args: vec![Json::from_value(&error)],
                        attachments: None,
                    }));
                }
                return;
            }
        };
        let namespaces = self.namespaces.clone();
        let channels = |rooms: &[String]| -> Vec<String> {
            rooms
                .iter()
                .filter_map(|r| codec::channel_of(&namespaces, &nsp, r).ok())
                .collect()
        };
        let join = channels(&answer.join);
        if !join.is_empty() {
            match self.join_rooms(&nsp, &join, None, |_| None).await {
                Ok(()) => {
                    self.connected.entry(nsp.clone()).or_default().extend(join);
                    self.save(&nsp).await;
                }
                Err(e) => tracing::info!(error = %e, "socket.io backend join refused"),
            }
        }
        let leave = channels(&answer.leave);
        if !leave.is_empty() {
            if let Some(set) = self.connected.get_mut(&nsp) {
                for c in &leave {
                    set.remove(c);
                }
            }
            self.node.leave(&self.conn, &leave, || None).await;
            self.left(&nsp, &leave).await;
        }
        for emit in answer.emit {
            let args = emit.args.into_iter().map(Json::from_raw).collect();
            for m in
                crate::frontend::socketio::binary::event_messages(self.eio, &nsp, &emit.event, args)
            {
                self.send(m.to_string());
            }
        }
        for b in answer.broadcast {
            let Ok(channel) = codec::channel_of(&self.namespaces, &nsp, &b.room) else {
                continue;
            };
            let mut delivery = Delivery::new(
                Target::Channels(vec![channel]),
                Utf8Bytes::from(b.data.get().to_string()),
            );
            delivery.event = Some(Arc::from(b.event.as_str()));
            if let Err(e) = self.node.publish_channels(delivery, Scope::Cluster).await {
                tracing::info!(error = %e, "socket.io backend broadcast failed");
            }
        }
        if let Some(id) = id {
            let args = answer.ack.into_iter().map(Json::from_raw).collect();
            for m in crate::frontend::socketio::binary::ack_messages(self.eio, &nsp, id, args) {
                self.send(m.to_string());
            }
        }
    }
}
