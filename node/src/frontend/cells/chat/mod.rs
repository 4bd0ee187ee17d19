//! The Cells chat at `/ws/chat` (docs/cells.md): sessions subscribe with a
//! JWT as on `/ws/event`, JOIN rooms named by a type and an object, POST
//! and delete messages, and read a room's history.
//!
//! A room is a mesh channel (internal, named by [`rooms::channel`]) whose
//! namespace keeps history and presence (`Cells::chat_namespace`): a POST
//! is a publication to it, so it reaches members on every node and is
//! stored where history is (Redis in a cluster, memory on one node); a
//! room's members are its presence; HISTORY reads the channel's history.
//!
//! - [`rooms`]: room uuids, the read-only claim, sanitising, pages;
//! - [`access`]: the backend asked at each JOIN, when configured;
//! - [`session`]: one socket's requests, rooms and JOIN pings.

pub mod access;
pub mod rooms;
pub mod session;

use std::collections::HashMap;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::codec::{Codec, Frames, Recipient, Slot};
use crate::config::cells::CHAT_ROOM_PREFIX;
use crate::delivery::{Delivery, DeliveryKind};

/// The `frontend` label of the chat's front-end metrics.
pub const FAMILY: &str = "cells_chat";

/// The codes of `pubmesh_frontend_errors_total{frontend="cells_chat"}`
/// (each closes the socket).
pub const ERROR_CODES: &[&str] = &[
    "bad_json",
    "empty_jwt",
    "bad_jwt",
    "bad_claims",
    "too_big",
    "rate_limited",
];

/// The reasons of `pubmesh_cells_chat_refused_total` (requests ignored,
/// as Cells ignores them, with nothing stored).
pub const REFUSALS: &[&str] = &[
    "not_subscribed",
    "bad_message",
    "bad_range",
    "bad_room",
    "not_joined",
    "read_only",
    "not_author",
    "not_found",
    "empty_message",
    "join_refused",
    "forbidden",
    "access_unavailable",
    "unavailable",
];

/// The chat's state on one node: its metrics, and the members each room
/// has here.
pub struct Chat {
    /// `pubmesh_cells_chat_rooms`: rooms with members on this node.
    pub rooms: prometheus::IntGauge,
    /// `pubmesh_cells_chat_members`: room memberships on this node.
    pub members: prometheus::IntGauge,
    /// `pubmesh_cells_chat_messages_total{op}`: posted, deleted.
    pub messages: prometheus::IntCounterVec,
    /// `pubmesh_cells_chat_refused_total{reason}`.
    pub refused: prometheus::IntCounterVec,
    /// The access backend, when configured.
    pub access: Option<access::AccessHook>,
    local: parking_lot::Mutex<HashMap<String, u64>>,
}

impl Chat {
    /// The chat's metrics, registered in `registry` at zero.
    pub fn new(registry: &prometheus::Registry, access: Option<access::AccessHook>) -> Chat {
        let rooms = prometheus::IntGauge::new(
            "pubmesh_cells_chat_rooms",
            "Cells chat rooms with members on this node",
        )
        .expect("valid metric");
        let members = prometheus::IntGauge::new(
            "pubmesh_cells_chat_members",
            "Cells chat room memberships (session, room) on this node",
        )
        .expect("valid metric");
        let messages = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "pubmesh_cells_chat_messages_total",
                "Cells chat messages stored by this node: posted, deleted",
            ),
            &["op"],
        )
        .expect("valid metric");
        let refused = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "pubmesh_cells_chat_refused_total",
                "Cells chat requests ignored, by reason (nothing is stored for them)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for op in ["posted", "deleted"] {
            messages.with_label_values(&[op]);
        }
        for reason in REFUSALS {
            refused.with_label_values(&[reason]);
        }
        for m in [
            Box::new(rooms.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(members.clone()),
            Box::new(messages.clone()),
            Box::new(refused.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Chat {
            rooms,
            members,
            messages,
            refused,
            access,
            local: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// A session of this node joined (`true`) or left a room.
    pub fn member(&self, room_uuid: &str, joined: bool) {
        let mut local = self.local.lock();
        if joined {
            *local.entry(room_uuid.to_string()).or_default() += 1;
            self.members.inc();
        } else if let Some(n) = local.get_mut(room_uuid) {
            *n -= 1;
            self.members.dec();
            if *n == 0 {
                local.remove(room_uuid);
            }
        }
        self.rooms.set(local.len() as i64);
    }

    pub fn refuse(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }
}

/// The chat's codec: a room's publications (messages, deletions, room
/// updates) are the frames themselves, shared by every member; nothing
/// else reaches a chat socket.
pub struct ChatCodec {
    out: prometheus::IntCounter,
}

impl ChatCodec {
    pub fn new(out: prometheus::IntCounter) -> Self {
        ChatCodec { out }
    }
}

impl Codec for ChatCodec {
    fn protocol(&self) -> &'static str {
        "cells_chat"
    }

    fn slot(&self, delivery: &Delivery, _to: &Recipient<'_>) -> Slot {
        let room = delivery
            .channel
            .as_deref()
            .is_some_and(|c| c.starts_with(CHAT_ROOM_PREFIX));
        if room && delivery.kind == DeliveryKind::Message {
            Slot::Shared(0)
        } else {
            Slot::Skip
        }
    }

    fn encode(&self, delivery: &Delivery, _slot: Slot, _to: &Recipient<'_>) -> Frames {
        Frames::One(Utf8Bytes::clone(&delivery.data))
    }

    fn sent(&self) -> Option<&prometheus::IntCounter> {
        Some(&self.out)
    }
}
