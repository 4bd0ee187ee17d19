//! The Phoenix Channels wire format, as the official `phoenix` JavaScript
//! client (and the Swift, Kotlin and Dart ports) speak it.
//!
//! Two serializers, chosen by the `vsn` connect parameter:
//!
//! - **v2** (`vsn=2.0.0`): text frames are JSON arrays
//!   `[join_ref, ref, topic, event, payload]` (refs may be `null`); binary
//!   frames carry a raw payload behind a small header (push, reply,
//!   broadcast, see [`encode_binary_broadcast`]);
//! - **v1** (`vsn=1.0.0`, and a missing `vsn`): JSON objects
//!   `{"topic","event","payload","ref","join_ref"}`.
//!
//! Decoding is strict: anything that is not one of these shapes is a
//! [`DecodeError`], never a panic, so a front-end can answer or close with a
//! logged reason. Encoders take payloads as already-encoded JSON
//! ([`RawValue`]) so a broadcast is encoded once for all its recipients.
//!
//! Nothing here knows about nodes, hubs or sockets.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The topic of heartbeats.
pub const HEARTBEAT_TOPIC: &str = "phoenix";
/// A client's heartbeat event (on [`HEARTBEAT_TOPIC`]).
pub const HEARTBEAT: &str = "heartbeat";
/// Join a topic.
pub const JOIN: &str = "phx_join";
/// Leave a topic.
pub const LEAVE: &str = "phx_leave";
/// A reply to a push (`{"status","response"}`).
pub const REPLY: &str = "phx_reply";
/// The channel failed; the client rejoins.
pub const ERROR: &str = "phx_error";
/// The channel was closed by the server; the client does not rejoin.
pub const CLOSE: &str = "phx_close";

/// Which serializer a socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    /// The serializer for a `vsn` connect parameter: `1.0.x` (or none, as
    /// Phoenix defaults) is v1, `2.0.x` is v2 (Phoenix matches `~> 2.0.0`).
    pub fn from_param(vsn: Option<&str>) -> Result<Vsn, DecodeError> {
        let Some(vsn) = vsn else {
            return Ok(Vsn::V1);
        };
        let mut parts = vsn.split('.');
        let (major, minor, patch) = (parts.next(), parts.next(), parts.next());
        let numeric = |p: Option<&str>| {
            p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        if parts.next().is_some() || !numeric(major) || !numeric(minor) || !numeric(patch) {
            return Err(DecodeError::UnsupportedVsn(vsn.to_string()));
        }
        match (major, minor) {
            (Some("1"), Some("0")) => Ok(Vsn::V1),
            (Some("2"), Some("0")) => Ok(Vsn::V2),
            _ => Err(DecodeError::UnsupportedVsn(vsn.to_string())),
        }
    }
}

/// A message reference (`ref`, `join_ref`). The official client sends
/// decimal strings (`"1"`); other clients may send integers. Replies echo
/// the reference in the form it came in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ref {
    Str(String),
    Int(i64),
}

impl std::fmt::Display for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ref::Str(s) => f.write_str(s),
            Ref::Int(i) => write!(f, "{i}"),
        }
    }
}

/// A payload: JSON (text frames) or raw bytes (v2 binary frames).
#[derive(Debug, Clone)]
pub enum Payload {
    Json(Box<RawValue>),
    Binary(Bytes),
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Payload::Json(a), Payload::Json(b)) => a.get() == b.get(),
            (Payload::Binary(a), Payload::Binary(b)) => a == b,
            _ => false,
        }
    }
}

/// Join params: a JSON object, as the client sent it.
#[derive(Debug, Clone)]
pub struct Params(Box<RawValue>);

impl Params {
    /// The params' JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The params as raw JSON.
    pub fn raw(&self) -> &RawValue {
        &self.0
    }
}

impl PartialEq for Params {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// One message as it travels, in either direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub join_ref: Option<Ref>,
    pub reference: Option<Ref>,
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

/// What a client asked for, from one decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// `[null, ref, "phoenix", "heartbeat", {}]`: answer with an `ok` reply.
    Heartbeat { reference: Option<Ref> },
    /// `phx_join` with its params (a JSON object).
    Join {
        join_ref: Option<Ref>,
        reference: Option<Ref>,
        topic: String,
        params: Params,
    },
    /// `phx_leave`.
    Leave {
        join_ref: Option<Ref>,
        reference: Option<Ref>,
        topic: String,
    },
    /// Any other event pushed to a joined topic.
    Push {
        join_ref: Option<Ref>,
        reference: Option<Ref>,
        topic: String,
        event: String,
        payload: Payload,
    },
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not valid JSON: {0}")]
    Json(String),
    #[error("a v2 frame must be a JSON array")]
    NotArray,
    #[error("a v2 frame has 5 elements, this one has {0}")]
    Arity(usize),
    #[error("a v1 frame must be a JSON object")]
    NotObject,
    #[error("a v1 frame needs the field {0:?}")]
    MissingField(&'static str),
    #[error("{0} must be a string, an integer or null")]
    BadRef(&'static str),
    #[error("topic must be a string")]
    TopicNotString,
    #[error("topic must not be empty")]
    EmptyTopic,
    #[error("event must be a string")]
    EventNotString,
    #[error("event must not be empty")]
    EmptyEvent,
    #[error("commas are not allowed in event")]
    CommaInEvent,
    #[error("event {0:?} is sent by the server only")]
    ReservedEvent(String),
    #[error("join params must be a JSON object")]
    JoinParamsNotObject,
    #[error("binary payloads are only allowed in pushes")]
    BinaryNotAllowed,
    #[error("binary frames need the v2 serializer")]
    BinaryInV1,
    #[error("binary frame is truncated")]
    BinaryTruncated,
    #[error("binary frame kind {0} is not a push")]
    BinaryKind(u8),
    #[error("binary frame header is not UTF-8")]
    BinaryNotUtf8,
    #[error("unsupported serializer version {0:?}")]
    UnsupportedVsn(String),
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0} is {1} bytes; binary frames allow 255")]
    TooLong(&'static str, usize),
}

/// Reply status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}

const KIND_PUSH: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_BROADCAST: u8 = 2;

impl Message {
    /// Decode a text frame.
    pub fn decode_text(vsn: Vsn, text: &str) -> Result<Message, DecodeError> {
        match vsn {
            Vsn::V2 => decode::decode_v2(text),
            Vsn::V1 => decode::decode_v1(text),
        }
    }

    /// Decode a binary frame a client sent (a v2 push:
    /// `<<0, join_ref_size, ref_size, topic_size, event_size, join_ref, ref,
    /// topic, event, data>>`).
    pub fn decode_binary(vsn: Vsn, frame: &[u8]) -> Result<Message, DecodeError> {
        if vsn == Vsn::V1 {
            return Err(DecodeError::BinaryInV1);
        }
        let (&kind, rest) = frame.split_first().ok_or(DecodeError::BinaryTruncated)?;
        if kind != KIND_PUSH {
            return Err(DecodeError::BinaryKind(kind));
        }
        let sizes = rest.get(..4).ok_or(DecodeError::BinaryTruncated)?;
        let mut at = 5;
        let mut field = |size: u8| -> Result<&str, DecodeError> {
            let end = at + size as usize;
            let bytes = frame.get(at..end).ok_or(DecodeError::BinaryTruncated)?;
            at = end;
            std::str::from_utf8(bytes).map_err(|_| DecodeError::BinaryNotUtf8)
        };
        let join_ref = field(sizes[0])?.to_string();
        let reference = field(sizes[1])?.to_string();
        let topic = field(sizes[2])?.to_string();
        let event = field(sizes[3])?.to_string();
        let data = Bytes::copy_from_slice(&frame[at..]);
        let text_ref = |s: String| (!s.is_empty()).then_some(Ref::Str(s));
        Ok(Message {
            join_ref: text_ref(join_ref),
            reference: text_ref(reference),
            topic,
            event,
            payload: Payload::Binary(data),
        })
    }

    /// Encode as a text frame. Binary payloads cannot travel in text frames:
    /// use the `encode_binary_*` functions.
    pub fn encode_text(&self, vsn: Vsn) -> Option<String> {
        let Payload::Json(payload) = &self.payload else {
            return None;
        };
        Some(encode(
            vsn,
            self.join_ref.as_ref(),
            self.reference.as_ref(),
            &self.topic,
            &self.event,
            payload,
        ))
    }
}

impl Inbound {
    /// Decode and classify a text frame from a client.
    pub fn decode_text(vsn: Vsn, text: &str) -> Result<Inbound, DecodeError> {
        Inbound::try_from(Message::decode_text(vsn, text)?)
    }

    /// Decode and classify a binary frame from a client.
    pub fn decode_binary(vsn: Vsn, frame: &[u8]) -> Result<Inbound, DecodeError> {
        Inbound::try_from(Message::decode_binary(vsn, frame)?)
    }

    /// The topic the message is about.
    pub fn topic(&self) -> &str {
        match self {
            Inbound::Heartbeat { .. } => HEARTBEAT_TOPIC,
            Inbound::Join { topic, .. }
            | Inbound::Leave { topic, .. }
            | Inbound::Push { topic, .. } => topic,
        }
    }
}

impl TryFrom<Message> for Inbound {
    type Error = DecodeError;

    fn try_from(m: Message) -> Result<Inbound, DecodeError> {
        if m.event.is_empty() {
            return Err(DecodeError::EmptyEvent);
        }
        if m.event.contains(',') {
            return Err(DecodeError::CommaInEvent);
        }
        if m.topic.is_empty() {
            return Err(DecodeError::EmptyTopic);
        }
        let binary = matches!(m.payload, Payload::Binary(_));
        match m.event.as_str() {
            REPLY | ERROR | CLOSE => Err(DecodeError::ReservedEvent(m.event)),
            HEARTBEAT if m.topic == HEARTBEAT_TOPIC => {
                if binary {
                    return Err(DecodeError::BinaryNotAllowed);
                }
                Ok(Inbound::Heartbeat {
                    reference: m.reference,
                })
            }
            JOIN => {
                let Payload::Json(params) = m.payload else {
                    return Err(DecodeError::BinaryNotAllowed);
                };
                if !params.get().trim_start().starts_with('{') {
                    return Err(DecodeError::JoinParamsNotObject);
                }
                Ok(Inbound::Join {
                    join_ref: m.join_ref,
                    reference: m.reference,
                    topic: m.topic,
                    params: Params(params),
                })
            }
            LEAVE => {
                if binary {
                    return Err(DecodeError::BinaryNotAllowed);
                }
                Ok(Inbound::Leave {
                    join_ref: m.join_ref,
                    reference: m.reference,
                    topic: m.topic,
                })
            }
            _ => Ok(Inbound::Push {
                join_ref: m.join_ref,
                reference: m.reference,
                topic: m.topic,
                event: m.event,
                payload: m.payload,
            }),
        }
    }
}

/// Encode any message as a text frame.
pub fn encode(
    vsn: Vsn,
    join_ref: Option<&Ref>,
    reference: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &RawValue,
) -> String {
    let encoded = match vsn {
        Vsn::V2 => serde_json::to_string(&(join_ref, reference, topic, event, payload)),
        // Phoenix's v1 serializer writes these four fields only.
        Vsn::V1 => {
            #[derive(Serialize)]
            struct V1<'a> {
                topic: &'a str,
                event: &'a str,
                payload: &'a RawValue,
                #[serde(rename = "ref")]
                reference: Option<&'a Ref>,
            }
            serde_json::to_string(&V1 {
                topic,
                event,
                payload,
                reference,
            })
        }
    };
    encoded.expect("strings, refs and raw JSON always serialize")
}

/// `phx_reply` to a push, join, leave or heartbeat:
/// `[join_ref, ref, topic, "phx_reply", {"status": …, "response": …}]`.
pub fn encode_reply(
    vsn: Vsn,
    join_ref: Option<&Ref>,
    reference: Option<&Ref>,
    topic: &str,
    status: Status,
    response: &RawValue,
) -> String {
    let payload = reply_payload(status, response);
    let join_ref = match vsn {
        Vsn::V2 => join_ref,
        Vsn::V1 => None,
    };
    encode(vsn, join_ref, reference, topic, REPLY, &payload)
}

/// `{"status": …, "response": …}`.
pub fn reply_payload(status: Status, response: &RawValue) -> Box<RawValue> {
    #[derive(Serialize)]
    struct Reply<'a> {
        status: &'static str,
        response: &'a RawValue,
    }
    serde_json::value::to_raw_value(&Reply {
        status: status.as_str(),
        response,
    })
    .expect("a reply always serializes")
}

/// `{"reason": …}`, the response of error replies.
pub fn reason(text: &str) -> Box<RawValue> {
    #[derive(Serialize)]
    struct Reason<'a> {
        reason: &'a str,
    }
    serde_json::value::to_raw_value(&Reason { reason: text }).expect("a reason always serializes")
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_string()).expect("{} is JSON")
}

/// A server push to one member of a topic (`ref` is null).
pub fn encode_push(
    vsn: Vsn,
    join_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &RawValue,
) -> String {
    encode(vsn, join_ref, None, topic, event, payload)
}

/// A broadcast: `[null, null, topic, event, payload]`, the same bytes for
/// every member of the topic.
pub fn encode_broadcast(vsn: Vsn, topic: &str, event: &str, payload: &RawValue) -> String {
    encode(vsn, None, None, topic, event, payload)
}

/// `phx_error` for a channel that failed (the client rejoins):
/// `[join_ref, join_ref, topic, "phx_error", {}]`.
pub fn encode_error(vsn: Vsn, join_ref: Option<&Ref>, topic: &str) -> String {
    encode(vsn, join_ref, join_ref, topic, ERROR, &empty_object())
}

/// `phx_close` for a channel the server closed (the client does not rejoin):
/// `[join_ref, join_ref, topic, "phx_close", {}]`.
pub fn encode_close(vsn: Vsn, join_ref: Option<&Ref>, topic: &str) -> String {
    encode(vsn, join_ref, join_ref, topic, CLOSE, &empty_object())
}

mod binary;
mod decode;
pub use binary::{
    encode_binary_broadcast, encode_binary_client_push, encode_binary_push, encode_binary_reply,
};

#[cfg(test)]
mod tests;
