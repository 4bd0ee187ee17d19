//! The Pydio Cells websocket gateway's wire format: `/ws/event` control
//! messages and node events, the event batcher's merge, and the `/ws/chat`
//! messages.
//!
//! Cells writes its messages with protojson, and its web client relies on
//! protojson's conventions, which these types keep:
//!
//! - field names are the proto field names (`Uuid`, `RoomTypeObject`, …),
//!   the message type is `@type`;
//! - enums travel as their names (`"NODE"`), and numbers are accepted too;
//! - int64 fields travel as strings (`"Timestamp":"1700000000"`), and
//!   numbers are accepted too;
//! - zero values are left out: a `CREATE` node event has no `Type`, a
//!   `GLOBAL` room no `Type`, a `JOIN` message no `@type`.
//!
//! Nothing here knows about nodes, hubs or sessions.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The literal text frame Cells sends after a batch of node events (its
/// client ignores it).
pub const DUMP: &str = "\"dump\"";
/// The error text for a subscribe without a token on `/ws/event`.
pub const EMPTY_JWT_EVENT: &str = "empty jwt";
/// The error text for a subscribe without a token on `/ws/chat`.
pub const EMPTY_JWT_CHAT: &str = "Empty JWT";
/// The largest frame Cells reads (melody's `MaxMessageSize`).
pub const MAX_MESSAGE_SIZE: usize = 2048;

// ---------------------------------------------------------------------------
// Control messages (`/ws/event` and `/ws/chat`)

/// A control message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// `{"@type":"subscribe","jwt":…}`: start, or refresh the claims.
    Subscribe { jwt: String },
    /// `{"@type":"unsubscribe"}`: forget the claims.
    Unsubscribe,
    /// Any other `@type` (ignored on `/ws/event`).
    Other(String),
}

/// Why a control message was refused (the socket is then closed with
/// [`error_frame`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Json(String),
    #[error("empty jwt")]
    EmptyJwt,
}

impl Control {
    /// Decode a `/ws/event` frame.
    pub fn decode(text: &str) -> Result<Control, ControlError> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "@type", default)]
            kind: String,
            #[serde(default)]
            jwt: String,
        }
        let raw: Raw = serde_json::from_str(text).map_err(|e| ControlError::Json(e.to_string()))?;
        match raw.kind.as_str() {
            "subscribe" if raw.jwt.is_empty() => Err(ControlError::EmptyJwt),
            "subscribe" => Ok(Control::Subscribe { jwt: raw.jwt }),
            "unsubscribe" => Ok(Control::Unsubscribe),
            _ => Ok(Control::Other(raw.kind)),
        }
    }
}

/// `{"@type":"error","jwt":"","error":"<text>"}`, the payload Cells closes
/// a socket with.
pub fn error_frame(text: &str) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "@type")]
        kind: &'static str,
        jwt: &'static str,
        error: &'a str,
    }
    serde_json::to_string(&Error {
        kind: "error",
        jwt: "",
        error: text,
    })
    .expect("an error frame serializes")
}

// ---------------------------------------------------------------------------
// protojson helpers

/// int64 as protojson writes it (a string) and reads it (string or number).
mod int64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Num(i64),
            Str(String),
        }
        match Either::deserialize(d)? {
            Either::Num(n) => Ok(n),
            Either::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }

    pub fn is_zero(v: &i64) -> bool {
        *v == 0
    }
}

/// A protojson enum: written as its name, read from its name or number.
macro_rules! proto_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $n:literal => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
        pub enum $name {
            #[default]
            $($variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn number(self) -> i32 {
                match self { $($name::$variant => $n),+ }
            }

            pub fn is_zero(&self) -> bool {
                self.number() == 0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = Value::deserialize(d)?;
                let found = match &v {
                    Value::String(s) => [$(($text, $name::$variant)),+]
                        .into_iter()
                        .find(|(t, _)| t == s)
                        .map(|(_, e)| e),
                    Value::Number(n) => [$(($n, $name::$variant)),+]
                        .into_iter()
                        .find(|(k, _)| Some(*k as i64) == n.as_i64())
                        .map(|(_, e)| e),
                    _ => None,
                };
                found.ok_or_else(|| serde::de::Error::custom(format!(
                    concat!("unknown ", stringify!($name), " {}"), v
                )))
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Node events (`/ws/event`)

proto_enum!(
    /// `tree.NodeChangeEvent.EventType`.
    EventType {
        Create = 0 => "CREATE",
        Read = 1 => "READ",
        UpdatePath = 2 => "UPDATE_PATH",
        UpdateContent = 3 => "UPDATE_CONTENT",
        UpdateMeta = 4 => "UPDATE_META",
        Delete = 5 => "DELETE",
        UpdateUserMeta = 6 => "UPDATE_USER_META",
    }
);

fn is_false(b: &bool) -> bool {
    !*b
}

/// A tree node as node events carry it (`tree.Node`). Fields this module
/// does not merge pass through in `other`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Node {
    #[serde(rename = "Uuid", default, skip_serializing_if = "String::is_empty")]
    pub uuid: String,
    #[serde(rename = "Path", default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// `LEAF` or `COLLECTION` (left as text).
    #[serde(rename = "Type", default, skip_serializing_if = "String::is_empty")]
    pub node_type: String,
    #[serde(rename = "Etag", default, skip_serializing_if = "String::is_empty")]
    pub etag: String,
    #[serde(
        rename = "MTime",
        default,
        with = "int64",
        skip_serializing_if = "int64::is_zero"
    )]
    pub mtime: i64,
    #[serde(
        rename = "Size",
        default,
        with = "int64",
        skip_serializing_if = "int64::is_zero"
    )]
    pub size: i64,
    /// Values are JSON texts (`"EventWorkspaceId":"\"ws1\""`).
    #[serde(
        rename = "MetaStore",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub meta_store: BTreeMap<String, String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A node change (`tree.NodeChangeEvent`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeChangeEvent {
    #[serde(rename = "Type", default, skip_serializing_if = "EventType::is_zero")]
    pub kind: EventType,
    #[serde(rename = "Source", default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Node>,
    #[serde(rename = "Target", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Node>,
    #[serde(rename = "Silent", default, skip_serializing_if = "is_false")]
    pub silent: bool,
    #[serde(rename = "Optimistic", default, skip_serializing_if = "is_false")]
    pub optimistic: bool,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The result of merging a burst of events for one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub event: NodeChangeEvent,
    /// Whether the target should be re-read per session before sending
    /// (false after a CREATE, whose target is fresh).
    pub refresh_target: bool,
}

/// The etag Cells puts on nodes whose content is still being written.
pub const TEMPORARY_ETAG: &str = "temporary";

/// Merge a burst of events for one node into one, as Cells' batcher does:
///
/// - the type: `CREATE` if any event was a `CREATE`, else the last type;
/// - the source: the last event's;
/// - the target: the first target is the base; a later target fills an
///   empty `Path`, replaces `Etag` (except by `temporary`), `Type`, `MTime`
///   and `Size` when it has them, and its `MetaStore` keys are merged in,
///   later values winning;
/// - other fields: the last event's.
///
/// `None` for an empty burst.
pub fn merge(events: &[NodeChangeEvent]) -> Option<Merged> {
    let last = events.last()?;
    let created = events.iter().any(|e| e.kind == EventType::Create);
    let mut target: Option<Node> = None;
    for t in events.iter().filter_map(|e| e.target.as_ref()) {
        let Some(base) = target.as_mut() else {
            target = Some(t.clone());
            continue;
        };
        if base.path.is_empty() {
            base.path.clone_from(&t.path);
        }
        if !t.etag.is_empty() && t.etag != TEMPORARY_ETAG {
            base.etag.clone_from(&t.etag);
        }
        if !t.node_type.is_empty() {
            base.node_type.clone_from(&t.node_type);
        }
        if t.mtime != 0 {
            base.mtime = t.mtime;
        }
        if t.size != 0 {
            base.size = t.size;
        }
        for (k, v) in &t.meta_store {
            base.meta_store.insert(k.clone(), v.clone());
        }
    }
    let mut event = last.clone();
    event.kind = if created {
        EventType::Create
    } else {
        last.kind
    };
    event.target = target;
    Some(Merged {
        event,
        refresh_target: !created,
    })
}

mod chat;

pub use chat::{
    chat_message, delete_msg, may_have_more, room_update, ChatError, ChatMessage, ChatRequest,
    ChatRoom, HistoryRange, RoomType, WebSocketMessage, WsMessageType, PING,
};

#[cfg(test)]
mod tests;
