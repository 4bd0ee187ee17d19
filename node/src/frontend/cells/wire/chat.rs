//! The `/ws/chat` messages: rooms, chat messages, the client's requests and
//! the server's frames.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::{int64, Control, ControlError};

proto_enum!(
    /// `chat.RoomType`.
    RoomType {
        Global = 0 => "GLOBAL",
        Workspace = 1 => "WORKSPACE",
        User = 2 => "USER",
        Node = 3 => "NODE",
        Any = 4 => "ANY",
    }
);

proto_enum!(
    /// `chat.WsMessageType`.
    WsMessageType {
        Join = 0 => "JOIN",
        Leave = 1 => "LEAVE",
        Post = 2 => "POST",
        RoomUpdate = 3 => "ROOM_UPDATE",
        History = 4 => "HISTORY",
        DeleteMsg = 5 => "DELETE_MSG",
        DeleteRoom = 6 => "DELETE_ROOM",
    }
);

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

/// `chat.ChatRoom`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChatRoom {
    #[serde(rename = "Uuid", default, skip_serializing_if = "String::is_empty")]
    pub uuid: String,
    #[serde(rename = "Type", default, skip_serializing_if = "RoomType::is_zero")]
    pub kind: RoomType,
    #[serde(
        rename = "RoomTypeObject",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub type_object: String,
    #[serde(
        rename = "RoomLabel",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub label: String,
    #[serde(rename = "Users", default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// int32: a JSON number.
    #[serde(rename = "LastUpdated", default, skip_serializing_if = "is_zero_i32")]
    pub last_updated: i32,
}

/// `chat.ChatMessage`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatMessage {
    #[serde(rename = "Uuid", default, skip_serializing_if = "String::is_empty")]
    pub uuid: String,
    #[serde(rename = "RoomUuid", default, skip_serializing_if = "String::is_empty")]
    pub room_uuid: String,
    #[serde(rename = "Message", default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(rename = "Author", default, skip_serializing_if = "String::is_empty")]
    pub author: String,
    /// Unix seconds; int64, so a JSON string.
    #[serde(
        rename = "Timestamp",
        default,
        with = "int64",
        skip_serializing_if = "int64::is_zero"
    )]
    pub timestamp: i64,
    /// An `activity.Object`, passed through.
    #[serde(rename = "Activity", default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Value>,
    #[serde(rename = "Info", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub info: BTreeMap<String, String>,
}

/// `chat.WebSocketMessage`: the envelope of chat frames in both directions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WebSocketMessage {
    #[serde(
        rename = "@type",
        default,
        skip_serializing_if = "WsMessageType::is_zero"
    )]
    pub kind: WsMessageType,
    #[serde(rename = "Room", default, skip_serializing_if = "Option::is_none")]
    pub room: Option<ChatRoom>,
    #[serde(rename = "Message", default, skip_serializing_if = "Option::is_none")]
    pub message: Option<ChatMessage>,
}

/// A `HISTORY` page (`Message.Message` = `{"Offset":…,"Limit":…}`);
/// `limit` 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HistoryRange {
    #[serde(rename = "Offset", default)]
    pub offset: i64,
    #[serde(rename = "Limit", default)]
    pub limit: i64,
}

/// What a chat client asked for, from one frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatRequest {
    /// `subscribe` / `unsubscribe`, as on `/ws/event`.
    Control(Control),
    /// `JOIN` (a `ping` is the 15 s keep-alive, `"Message":{"Message":"PING"}`:
    /// it must not create the room).
    Join {
        room: ChatRoom,
        ping: bool,
    },
    Leave {
        room: ChatRoom,
    },
    History {
        room: ChatRoom,
        range: HistoryRange,
    },
    Post {
        message: ChatMessage,
    },
    DeleteMsg {
        message: ChatMessage,
    },
    /// `ROOM_UPDATE` / `DELETE_ROOM` sent by a client (Cells ignores them).
    Ignored(WsMessageType),
}

/// Why a chat frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    Json(String),
    #[error("empty jwt")]
    EmptyJwt,
    #[error("{0} needs a Room")]
    MissingRoom(&'static str),
    #[error("{0} needs a Message")]
    MissingMessage(&'static str),
    #[error("history range is not JSON: {0}")]
    BadRange(String),
    #[error("history offset and limit must not be negative")]
    NegativeRange,
}

/// The keep-alive text of a `JOIN` ping.
pub const PING: &str = "PING";

impl ChatRequest {
    /// Decode a `/ws/chat` frame.
    pub fn decode(text: &str) -> Result<ChatRequest, ChatError> {
        // Control messages first, as Cells does.
        #[derive(Deserialize)]
        struct Probe {
            #[serde(rename = "@type", default)]
            kind: Option<Value>,
        }
        let probe: Probe =
            serde_json::from_str(text).map_err(|e| ChatError::Json(e.to_string()))?;
        if let Some(Value::String(k)) = &probe.kind {
            if k == "subscribe" || k == "unsubscribe" {
                return match Control::decode(text) {
                    Ok(c) => Ok(ChatRequest::Control(c)),
                    Err(ControlError::EmptyJwt) => Err(ChatError::EmptyJwt),
                    Err(ControlError::Json(e)) => Err(ChatError::Json(e)),
                };
            }
        }
        let m: WebSocketMessage =
            serde_json::from_str(text).map_err(|e| ChatError::Json(e.to_string()))?;
        let name = m.kind.as_str();
        let room = |m: &WebSocketMessage| m.room.clone().ok_or(ChatError::MissingRoom(name));
        Ok(match m.kind {
            WsMessageType::Join => ChatRequest::Join {
                room: room(&m)?,
                ping: m.message.as_ref().is_some_and(|msg| msg.message == PING),
            },
            WsMessageType::Leave => ChatRequest::Leave { room: room(&m)? },
            WsMessageType::History => {
                let range = match m.message.as_ref().map(|msg| msg.message.as_str()) {
                    None | Some("") => HistoryRange::default(),
                    Some(text) if !text.trim_start().starts_with('{') => {
                        return Err(ChatError::BadRange("expected a JSON object".into()))
                    }
                    Some(text) => serde_json::from_str::<HistoryRange>(text)
                        .map_err(|e| ChatError::BadRange(e.to_string()))?,
                };
                if range.offset < 0 || range.limit < 0 {
                    return Err(ChatError::NegativeRange);
                }
                ChatRequest::History {
                    room: room(&m)?,
                    range,
                }
            }
            WsMessageType::Post => ChatRequest::Post {
                message: m.message.ok_or(ChatError::MissingMessage(name))?,
            },
            WsMessageType::DeleteMsg => ChatRequest::DeleteMsg {
                message: m.message.ok_or(ChatError::MissingMessage(name))?,
            },
            kind => ChatRequest::Ignored(kind),
        })
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("chat frames serialize")
}

/// `{"@type":"ROOM_UPDATE","Room":{…}}`.
pub fn room_update(room: &ChatRoom) -> String {
    to_json(&WebSocketMessage {
        kind: WsMessageType::RoomUpdate,
        room: Some(room.clone()),
        message: None,
    })
}

/// `{"@type":"DELETE_MSG","Message":{…}}`.
pub fn delete_msg(message: &ChatMessage) -> String {
    to_json(&WebSocketMessage {
        kind: WsMessageType::DeleteMsg,
        room: None,
        message: Some(message.clone()),
    })
}

/// A posted (or history) message: the plain `ChatMessage`, no envelope.
pub fn chat_message(message: &ChatMessage) -> String {
    to_json(message)
}

/// `{"@type":"MAY_HAVE_MORE","RoomUuid":…,"Timestamp":N,"Offset":N,"Limit":N}`,
/// after a full history page (plain JSON: the numbers are numbers).
pub fn may_have_more(room_uuid: &str, timestamp: i64, offset: i64, limit: i64) -> String {
    #[derive(Serialize)]
    struct MayHaveMore<'a> {
        #[serde(rename = "@type")]
        kind: &'static str,
        #[serde(rename = "RoomUuid")]
        room_uuid: &'a str,
        #[serde(rename = "Timestamp")]
        timestamp: i64,
        #[serde(rename = "Offset")]
        offset: i64,
        #[serde(rename = "Limit")]
        limit: i64,
    }
    to_json(&MayHaveMore {
        kind: "MAY_HAVE_MORE",
        room_uuid,
        timestamp,
        offset,
        limit,
    })
}
