//! chain's wire format (`/socket/sse`): positional JSON arrays carried as
//! Server-Sent Events downstream and as POST bodies upstream.
//!
//! ```text
//! push       [0, join_ref, ref, topic, event, payload?]
//! reply      [1, join_ref, ref, status, payload?]        status 0 ok, 1 error
//! broadcast  [2, topic, event, payload?]
//! ```
//!
//! A missing payload is encoded by leaving the element out, as chain does.
//! Refs are JSON integers. Event names never contain commas; topics a
//! client joins never contain commas or `*`. Each downstream message is one
//! SSE event, `data: <json array>\n\n`, with no other fields.
//!
//! Nothing here knows about nodes, hubs or sessions.

use serde_json::value::RawValue;

/// Join a topic (client push).
pub const JOIN: &str = "_join";
/// Leave a topic (client push).
pub const LEAVE: &str = "_leave";
/// The server closed a membership (server push for the old join ref).
pub const CLOSE: &str = "_close";

const KIND_PUSH: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_BROADCAST: u8 = 2;

/// A reply status (`0` ok, `1` error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Error,
}

impl Status {
    fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Error => 1,
        }
    }
}

/// A JSON payload, kept as the bytes it arrived as.
#[derive(Debug, Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// Wrap JSON text; `None` if it is not JSON.
    pub fn from_json(text: &str) -> Option<Payload> {
        RawValue::from_string(text.to_string()).ok().map(Payload)
    }

    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl From<Box<RawValue>> for Payload {
    fn from(raw: Box<RawValue>) -> Payload {
        Payload(raw)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// One chain message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Push {
        join_ref: i64,
        reference: i64,
        topic: String,
        event: String,
        payload: Option<Payload>,
    },
    Reply {
        join_ref: i64,
        reference: i64,
        status: Status,
        payload: Option<Payload>,
    },
    Broadcast {
        topic: String,
        event: String,
        payload: Option<Payload>,
    },
}

/// What a client asked for in one POSTed message.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Join {
        join_ref: i64,
        reference: i64,
        topic: String,
        params: Option<Payload>,
    },
    Leave {
        join_ref: i64,
        reference: i64,
        topic: String,
    },
    Push {
        join_ref: i64,
        reference: i64,
        topic: String,
        event: String,
        payload: Option<Payload>,
    },
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is not valid JSON: {0}")]
    Json(String),
    #[error("a message must be a JSON array")]
    NotArray,
    #[error("a message has at least 3 elements (a reply 4), this one has {0}")]
    TooShort(usize),
    #[error("a push has at least 5 elements, this one has {0}")]
    PushTooShort(usize),
    #[error("a message has at most {max} elements, this one has {got}")]
    TooLong { max: usize, got: usize },
    #[error("element {0} must be an integer")]
    NotInteger(usize),
    #[error("element {0} must be a string")]
    NotString(usize),
    #[error("unknown message kind {0}")]
    UnknownKind(i64),
    #[error("unknown reply status {0}")]
    UnknownStatus(i64),
    #[error("clients send pushes only")]
    NotAPush,
    #[error("{0}")]
    Refused(Reason),
}

/// chain's error reasons, sent as `[1, join_ref, ref, 1, {"reason": …}]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A join to a topic containing `*` (or a comma).
    WildcardTopic,
    /// No channel matches the topic, or the socket has not joined it.
    UnmatchedTopic,
    /// The join handler failed unexpectedly.
    JoinCrashed,
    /// An event name containing a comma.
    CommaInEvent,
    /// A push to a topic the session has not joined.
    NotJoined,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::WildcardTopic => "joining topics with wildcard is not allowed",
            Reason::UnmatchedTopic => "unmatched topic",
            Reason::JoinCrashed => "join crashed",
            Reason::CommaInEvent => "commas are not allowed in event",
            Reason::NotJoined => "socket not joined",
        }
    }

    /// The `{"reason": …}` payload.
    pub fn payload(self) -> Payload {
        reason_payload(self.as_str())
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"reason": text}`.
pub fn reason_payload(text: &str) -> Payload {
    #[derive(serde::Serialize)]
    struct R<'a> {
        reason: &'a str,
    }
    Payload(serde_json::value::to_raw_value(&R { reason: text }).expect("a reason serializes"))
}

fn integer(items: &[&RawValue], i: usize) -> Result<i64, DecodeError> {
    serde_json::from_str::<i64>(items[i].get()).map_err(|_| DecodeError::NotInteger(i))
}

fn string(items: &[&RawValue], i: usize) -> Result<String, DecodeError> {
    serde_json::from_str::<String>(items[i].get()).map_err(|_| DecodeError::NotString(i))
}

fn payload_at(items: &[&RawValue], i: usize) -> Option<Payload> {
    items.get(i).map(|raw| Payload((*raw).to_owned()))
}

fn check_len(items: &[&RawValue], max: usize) -> Result<(), DecodeError> {
    if items.len() > max {
        return Err(DecodeError::TooLong {
            max,
            got: items.len(),
        });
    }
    Ok(())
}

impl Message {
    /// Decode one message (a POST body, or an SSE `data` field).
    pub fn decode(text: &str) -> Result<Message, DecodeError> {
        let items: Vec<&RawValue> = match serde_json::from_str(text) {
            Ok(items) => items,
            Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
                return Err(DecodeError::NotArray)
            }
            Err(e) => return Err(DecodeError::Json(e.to_string())),
        };
        // chain's own decoder wants 4 elements; a broadcast without payload
        // (3 elements) is what chain encodes and its client reads, so it is
        // accepted too.
        if items.len() < 3 {
            return Err(DecodeError::TooShort(items.len()));
        }
        match integer(&items, 0)? {
            k if k == KIND_PUSH as i64 => {
                if items.len() < 5 {
                    return Err(DecodeError::PushTooShort(items.len()));
                }
                check_len(&items, 6)?;
                Ok(Message::Push {
                    join_ref: integer(&items, 1)?,
                    reference: integer(&items, 2)?,
                    topic: string(&items, 3)?,
                    event: string(&items, 4)?,
                    payload: payload_at(&items, 5),
                })
            }
            k if k == KIND_REPLY as i64 => {
                if items.len() < 4 {
                    return Err(DecodeError::TooShort(items.len()));
                }
                check_len(&items, 5)?;
                let status = match integer(&items, 3)? {
                    0 => Status::Ok,
                    1 => Status::Error,
                    other => return Err(DecodeError::UnknownStatus(other)),
                };
                Ok(Message::Reply {
                    join_ref: integer(&items, 1)?,
                    reference: integer(&items, 2)?,
                    status,
                    payload: payload_at(&items, 4),
                })
            }
            k if k == KIND_BROADCAST as i64 => {
                check_len(&items, 4)?;
                Ok(Message::Broadcast {
                    topic: string(&items, 1)?,
                    event: string(&items, 2)?,
                    payload: payload_at(&items, 3),
                })
            }
            other => Err(DecodeError::UnknownKind(other)),
        }
    }

    /// Encode as chain does (compact JSON, the payload left out when
    /// absent).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push('[');
        match self {
            Message::Push {
                join_ref,
                reference,
                topic,
                event,
                payload,
            } => {
                push_items(&mut out, &[&KIND_PUSH, join_ref, reference]);
                push_str(&mut out, topic);
                push_str(&mut out, event);
                push_payload(&mut out, payload.as_ref());
            }
            Message::Reply {
                join_ref,
                reference,
                status,
                payload,
            } => {
                push_items(
                    &mut out,
                    &[&KIND_REPLY, join_ref, reference, &status.code()],
                );
                push_payload(&mut out, payload.as_ref());
            }
            Message::Broadcast {
                topic,
                event,
                payload,
            } => {
                push_items(&mut out, &[&KIND_BROADCAST]);
                push_str(&mut out, topic);
                push_str(&mut out, event);
                push_payload(&mut out, payload.as_ref());
            }
        }
        out.push(']');
        out
    }

    /// This message as one SSE event.
    pub fn encode_sse(&self) -> String {
        sse_event(&self.encode())
    }

    /// An ok reply with an optional payload.
    pub fn ok(join_ref: i64, reference: i64, payload: Option<Payload>) -> Message {
        Message::Reply {
            join_ref,
            reference,
            status: Status::Ok,
            payload,
        }
    }

    /// An error reply `[1, join_ref, ref, 1, {"reason": …}]`.
    pub fn refused(join_ref: i64, reference: i64, reason: Reason) -> Message {
        Message::Reply {
            join_ref,
            reference,
            status: Status::Error,
            payload: Some(reason.payload()),
        }
    }

    /// `[0, join_ref, ref, topic, "_close"]`, sent for a membership replaced
    /// by a rejoin with another join ref.
    pub fn close(join_ref: i64, reference: i64, topic: &str) -> Message {
        Message::Push {
            join_ref,
            reference,
            topic: topic.to_string(),
            event: CLOSE.to_string(),
            payload: None,
        }
    }
}

fn sep(out: &mut String) {
    if !out.ends_with('[') {
        out.push(',');
    }
}

fn push_items(out: &mut String, items: &[&dyn std::fmt::Display]) {
    for item in items {
        sep(out);
        out.push_str(&item.to_string());
    }
}

fn push_str(out: &mut String, s: &str) {
    sep(out);
    out.push_str(&serde_json::to_string(s).expect("a string serializes"));
}

fn push_payload(out: &mut String, payload: Option<&Payload>) {
    if let Some(p) = payload {
        sep(out);
        out.push_str(p.get());
    }
}

impl Inbound {
    /// Decode and check a message a client POSTed.
    pub fn decode(text: &str) -> Result<Inbound, DecodeError> {
        Inbound::try_from(Message::decode(text)?)
    }

    /// The reply that refuses this message.
    pub fn refuse(&self, reason: Reason) -> Message {
        let (join_ref, reference) = self.refs();
        Message::refused(join_ref, reference, reason)
    }

    /// `(join_ref, ref)`.
    pub fn refs(&self) -> (i64, i64) {
        match self {
            Inbound::Join {
                join_ref,
                reference,
                ..
            }
            | Inbound::Leave {
                join_ref,
                reference,
                ..
            }
            | Inbound::Push {
                join_ref,
                reference,
                ..
            } => (*join_ref, *reference),
        }
    }
}

/// The checks chain makes before dispatching. A message that fails them
/// is answered with [`Inbound`]'s refs and the [`Reason`]; use
/// [`refusal`] to build that reply from the raw message.
impl TryFrom<Message> for Inbound {
    type Error = DecodeError;

    fn try_from(m: Message) -> Result<Inbound, DecodeError> {
        let Message::Push {
            join_ref,
            reference,
            topic,
            event,
            payload,
        } = m
        else {
            return Err(DecodeError::NotAPush);
        };
        if event.contains(',') {
            return Err(DecodeError::Refused(Reason::CommaInEvent));
        }
        match event.as_str() {
            JOIN => {
                if topic.contains('*') || topic.contains(',') {
                    return Err(DecodeError::Refused(Reason::WildcardTopic));
                }
                Ok(Inbound::Join {
                    join_ref,
                    reference,
                    topic,
                    params: payload,
                })
            }
            LEAVE => Ok(Inbound::Leave {
                join_ref,
                reference,
                topic,
            }),
            _ => Ok(Inbound::Push {
                join_ref,
                reference,
                topic,
                event,
                payload,
            }),
        }
    }
}

/// For a message refused with [`DecodeError::Refused`], the error reply
/// chain sends (needs the refs, so decode the [`Message`] first).
pub fn refusal(m: &Message, reason: Reason) -> Option<Message> {
    match m {
        Message::Push {
            join_ref,
            reference,
            ..
        } => Some(Message::refused(*join_ref, *reference, reason)),
        _ => None,
    }
}

mod sse;

pub use sse::{sse_event, SseDecoder, SSE_CACHE_CONTROL, SSE_CONTENT_TYPE};

#[cfg(test)]
mod tests;
