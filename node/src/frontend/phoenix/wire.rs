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
            Vsn::V2 => decode_v2(text),
            Vsn::V1 => decode_v1(text),
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

fn json_error(e: serde_json::Error) -> DecodeError {
    DecodeError::Json(e.to_string())
}

fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

fn decode_ref(raw: Option<&RawValue>, name: &'static str) -> Result<Option<Ref>, DecodeError> {
    match raw {
        None => Ok(None),
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| DecodeError::BadRef(name)),
    }
}

fn decode_string(raw: &RawValue, err: DecodeError) -> Result<String, DecodeError> {
    serde_json::from_str::<String>(raw.get()).map_err(|_| err)
}

fn decode_v2(text: &str) -> Result<Message, DecodeError> {
    let items: Vec<&RawValue> = match serde_json::from_str(text) {
        Ok(items) => items,
        Err(_) if is_json(text) => return Err(DecodeError::NotArray),
        Err(e) => return Err(json_error(e)),
    };
    let [join_ref, reference, topic, event, payload] = items[..] else {
        return Err(DecodeError::Arity(items.len()));
    };
    Ok(Message {
        join_ref: decode_ref(Some(join_ref), "join_ref")?,
        reference: decode_ref(Some(reference), "ref")?,
        topic: decode_string(topic, DecodeError::TopicNotString)?,
        event: decode_string(event, DecodeError::EventNotString)?,
        payload: Payload::Json(payload.to_owned()),
    })
}

fn decode_v1(text: &str) -> Result<Message, DecodeError> {
    #[derive(Deserialize)]
    struct V1<'a> {
        #[serde(borrow)]
        topic: Option<&'a RawValue>,
        #[serde(borrow)]
        event: Option<&'a RawValue>,
        #[serde(borrow)]
        payload: Option<&'a RawValue>,
        // `ref` must be present (it may be null), as Phoenix requires.
        #[serde(borrow, rename = "ref", default, deserialize_with = "present")]
        reference: Option<Option<&'a RawValue>>,
        #[serde(borrow)]
        join_ref: Option<&'a RawValue>,
    }
    fn present<'de, D>(d: D) -> Result<Option<Option<&'de RawValue>>, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        let raw = <&'de RawValue>::deserialize(d)?;
        Ok(Some((raw.get() != "null").then_some(raw)))
    }
    // serde would also read a struct from an array: objects only.
    if !text.trim_start().starts_with('{') {
        return Err(if is_json(text) {
            DecodeError::NotObject
        } else {
            DecodeError::Json("expected a JSON object".into())
        });
    }
    let v: V1<'_> = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) if is_json(text) => return Err(DecodeError::NotObject),
        Err(e) => return Err(json_error(e)),
    };
    let topic = v.topic.ok_or(DecodeError::MissingField("topic"))?;
    let event = v.event.ok_or(DecodeError::MissingField("event"))?;
    let payload = v.payload.ok_or(DecodeError::MissingField("payload"))?;
    let reference = v.reference.ok_or(DecodeError::MissingField("ref"))?;
    Ok(Message {
        join_ref: decode_ref(v.join_ref, "join_ref")?,
        reference: decode_ref(reference, "ref")?,
        topic: decode_string(topic, DecodeError::TopicNotString)?,
        event: decode_string(event, DecodeError::EventNotString)?,
        payload: Payload::Json(payload.to_owned()),
    })
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

fn size(name: &'static str, field: &str) -> Result<u8, EncodeError> {
    u8::try_from(field.len()).map_err(|_| EncodeError::TooLong(name, field.len()))
}

fn ref_text(r: Option<&Ref>) -> String {
    r.map(Ref::to_string).unwrap_or_default()
}

/// A binary server push: `<<0, join_ref_size, topic_size, event_size,
/// join_ref, topic, event, data>>`.
pub fn encode_binary_push(
    join_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    data: &[u8],
) -> Result<Vec<u8>, EncodeError> {
    let join_ref = ref_text(join_ref);
    let header = [
        KIND_PUSH,
        size("join_ref", &join_ref)?,
        size("topic", topic)?,
        size("event", event)?,
    ];
    Ok(concat(&header, &[&join_ref, topic, event], data))
}

/// A binary reply: `<<1, join_ref_size, ref_size, topic_size, status_size,
/// join_ref, ref, topic, status, data>>` (the client turns it into a
/// `phx_reply` whose response is the data).
pub fn encode_binary_reply(
    join_ref: Option<&Ref>,
    reference: Option<&Ref>,
    topic: &str,
    status: Status,
    data: &[u8],
) -> Result<Vec<u8>, EncodeError> {
    let join_ref = ref_text(join_ref);
    let reference = ref_text(reference);
    let status = status.as_str();
    let header = [
        KIND_REPLY,
        size("join_ref", &join_ref)?,
        size("ref", &reference)?,
        size("topic", topic)?,
        size("status", status)?,
    ];
    Ok(concat(
        &header,
        &[&join_ref, &reference, topic, status],
        data,
    ))
}

/// A binary broadcast: `<<2, topic_size, event_size, topic, event, data>>`.
pub fn encode_binary_broadcast(
    topic: &str,
    event: &str,
    data: &[u8],
) -> Result<Vec<u8>, EncodeError> {
    let header = [KIND_BROADCAST, size("topic", topic)?, size("event", event)?];
    Ok(concat(&header, &[topic, event], data))
}

/// A binary client push (what the official client sends for an
/// `ArrayBuffer` payload): `<<0, join_ref_size, ref_size, topic_size,
/// event_size, join_ref, ref, topic, event, data>>`.
pub fn encode_binary_client_push(
    join_ref: Option<&Ref>,
    reference: Option<&Ref>,
    topic: &str,
    event: &str,
    data: &[u8],
) -> Result<Vec<u8>, EncodeError> {
    let join_ref = ref_text(join_ref);
    let reference = ref_text(reference);
    let header = [
        KIND_PUSH,
        size("join_ref", &join_ref)?,
        size("ref", &reference)?,
        size("topic", topic)?,
        size("event", event)?,
    ];
    Ok(concat(
        &header,
        &[&join_ref, &reference, topic, event],
        data,
    ))
}

fn concat(header: &[u8], fields: &[&str], data: &[u8]) -> Vec<u8> {
    let len = header.len() + fields.iter().map(|f| f.len()).sum::<usize>() + data.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(header);
    for f in fields {
        out.extend_from_slice(f.as_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).expect("json")
    }

    fn s(r: &str) -> Option<Ref> {
        Some(Ref::Str(r.to_string()))
    }

    #[test]
    fn vsn_follows_phoenix_version_requirements() {
        assert_eq!(Vsn::from_param(None), Ok(Vsn::V1));
        assert_eq!(Vsn::from_param(Some("1.0.0")), Ok(Vsn::V1));
        assert_eq!(Vsn::from_param(Some("2.0.0")), Ok(Vsn::V2));
        assert_eq!(Vsn::from_param(Some("2.0.7")), Ok(Vsn::V2));
        for bad in [
            "2.1.0", "3.0.0", "2.0", "2", "", "2.0.x", "2.0.0.0", "v2.0.0",
        ] {
            assert_eq!(
                Vsn::from_param(Some(bad)),
                Err(DecodeError::UnsupportedVsn(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[test]
    fn v2_join_as_the_official_client_sends_it() {
        let got = Inbound::decode_text(
            Vsn::V2,
            r#"["3","3","room:lobby","phx_join",{"token":"abc"}]"#,
        )
        .expect("decode");
        assert_eq!(
            got,
            Inbound::Join {
                join_ref: s("3"),
                reference: s("3"),
                topic: "room:lobby".into(),
                params: Params(raw(r#"{"token":"abc"}"#)),
            }
        );
    }

    #[test]
    fn v2_heartbeat_leave_and_push() {
        assert_eq!(
            Inbound::decode_text(Vsn::V2, r#"[null,"7","phoenix","heartbeat",{}]"#),
            Ok(Inbound::Heartbeat { reference: s("7") })
        );
        assert_eq!(
            Inbound::decode_text(Vsn::V2, r#"["3","8","room:1","phx_leave",{}]"#),
            Ok(Inbound::Leave {
                join_ref: s("3"),
                reference: s("8"),
                topic: "room:1".into()
            })
        );
        // Integer refs (other client ports) are kept as integers.
        assert_eq!(
            Inbound::decode_text(Vsn::V2, r#"[3,9,"room:1","new_msg",{"body":"hi"}]"#),
            Ok(Inbound::Push {
                join_ref: Some(Ref::Int(3)),
                reference: Some(Ref::Int(9)),
                topic: "room:1".into(),
                event: "new_msg".into(),
                payload: Payload::Json(raw(r#"{"body":"hi"}"#)),
            })
        );
        // A heartbeat event on another topic is an ordinary push.
        assert!(matches!(
            Inbound::decode_text(Vsn::V2, r#"["1","2","room:1","heartbeat",{}]"#),
            Ok(Inbound::Push { .. })
        ));
    }

    #[test]
    fn v2_payload_bytes_pass_through_unchanged() {
        let frame = r#"["1","2","room:1","msg",{"z":1,"a":[1.50,"\u00e9"]}]"#;
        let m = Message::decode_text(Vsn::V2, frame).expect("decode");
        assert_eq!(
            m.payload,
            Payload::Json(raw(r#"{"z":1,"a":[1.50,"\u00e9"]}"#))
        );
        assert_eq!(m.encode_text(Vsn::V2).as_deref(), Some(frame));
    }

    #[test]
    fn v2_rejects_malformed_frames_with_typed_errors() {
        let cases: &[(&str, DecodeError)] = &[
            (r#"{"topic":"a"}"#, DecodeError::NotArray),
            ("42", DecodeError::NotArray),
            (r#"["1","2","room:1","ev"]"#, DecodeError::Arity(4)),
            (r#"["1","2","room:1","ev",{},{}]"#, DecodeError::Arity(6)),
            ("[]", DecodeError::Arity(0)),
            (
                r#"[true,"2","room:1","ev",{}]"#,
                DecodeError::BadRef("join_ref"),
            ),
            (r#"["1",{},"room:1","ev",{}]"#, DecodeError::BadRef("ref")),
            (r#"["1",1.5,"room:1","ev",{}]"#, DecodeError::BadRef("ref")),
            (r#"["1","2",7,"ev",{}]"#, DecodeError::TopicNotString),
            (r#"["1","2",null,"ev",{}]"#, DecodeError::TopicNotString),
            (
                r#"["1","2","room:1",["ev"],{}]"#,
                DecodeError::EventNotString,
            ),
            (r#"["1","2","room:1","",{}]"#, DecodeError::EmptyEvent),
            (r#"["1","2","","ev",{}]"#, DecodeError::EmptyTopic),
            (r#"["1","2","room:1","a,b",{}]"#, DecodeError::CommaInEvent),
            (
                r#"["1","2","room:1","phx_reply",{}]"#,
                DecodeError::ReservedEvent("phx_reply".into()),
            ),
            (
                r#"["1","2","room:1","phx_close",{}]"#,
                DecodeError::ReservedEvent("phx_close".into()),
            ),
            (
                r#"["1","2","room:1","phx_join","x"]"#,
                DecodeError::JoinParamsNotObject,
            ),
            (
                r#"["1","2","room:1","phx_join",null]"#,
                DecodeError::JoinParamsNotObject,
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(
                Inbound::decode_text(Vsn::V2, frame).as_ref(),
                Err(want),
                "{frame}"
            );
        }
        assert!(matches!(
            Inbound::decode_text(Vsn::V2, r#"["1","2""#),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            Inbound::decode_text(Vsn::V2, ""),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn v1_objects_decode_and_require_phoenix_fields() {
        assert_eq!(
            Inbound::decode_text(
                Vsn::V1,
                r#"{"topic":"room:1","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#
            ),
            Ok(Inbound::Join {
                join_ref: s("1"),
                reference: s("1"),
                topic: "room:1".into(),
                params: Params(raw("{}")),
            })
        );
        // join_ref is optional; ref may be null but must be there.
        assert_eq!(
            Inbound::decode_text(
                Vsn::V1,
                r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":null}"#
            ),
            Ok(Inbound::Heartbeat { reference: None })
        );
        let cases: &[(&str, DecodeError)] = &[
            (r#"["1","2","t","e",{}]"#, DecodeError::NotObject),
            (
                r#"{"event":"e","payload":{},"ref":"1"}"#,
                DecodeError::MissingField("topic"),
            ),
            (
                r#"{"topic":"t","payload":{},"ref":"1"}"#,
                DecodeError::MissingField("event"),
            ),
            (
                r#"{"topic":"t","event":"e","ref":"1"}"#,
                DecodeError::MissingField("payload"),
            ),
            (
                r#"{"topic":"t","event":"e","payload":{}}"#,
                DecodeError::MissingField("ref"),
            ),
            (
                r#"{"topic":"t","event":"e","payload":{},"ref":false}"#,
                DecodeError::BadRef("ref"),
            ),
            (
                r#"{"topic":1,"event":"e","payload":{},"ref":"1"}"#,
                DecodeError::TopicNotString,
            ),
            (
                r#"{"topic":"t","event":"a,b","payload":{},"ref":"1"}"#,
                DecodeError::CommaInEvent,
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(
                Inbound::decode_text(Vsn::V1, frame).as_ref(),
                Err(want),
                "{frame}"
            );
        }
    }

    #[test]
    fn replies_errors_closes_and_broadcasts_encode_as_phoenix_does() {
        let j = s("3");
        let r = s("4");
        assert_eq!(
            encode_reply(
                Vsn::V2,
                j.as_ref(),
                r.as_ref(),
                "room:1",
                Status::Ok,
                &raw("{}")
            ),
            r#"["3","4","room:1","phx_reply",{"status":"ok","response":{}}]"#
        );
        assert_eq!(
            encode_reply(
                Vsn::V2,
                j.as_ref(),
                r.as_ref(),
                "room:1",
                Status::Error,
                &reason("unmatched topic")
            ),
            r#"["3","4","room:1","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        );
        assert_eq!(
            encode_reply(
                Vsn::V2,
                None,
                s("9").as_ref(),
                "phoenix",
                Status::Ok,
                &raw("{}")
            ),
            r#"[null,"9","phoenix","phx_reply",{"status":"ok","response":{}}]"#
        );
        assert_eq!(
            encode_error(Vsn::V2, j.as_ref(), "room:1"),
            r#"["3","3","room:1","phx_error",{}]"#
        );
        assert_eq!(
            encode_close(Vsn::V2, j.as_ref(), "room:1"),
            r#"["3","3","room:1","phx_close",{}]"#
        );
        assert_eq!(
            encode_broadcast(Vsn::V2, "room:1", "new_msg", &raw(r#"{"body":"hi"}"#)),
            r#"[null,null,"room:1","new_msg",{"body":"hi"}]"#
        );
        assert_eq!(
            encode_push(Vsn::V2, j.as_ref(), "room:1", "presence_state", &raw("{}")),
            r#"["3",null,"room:1","presence_state",{}]"#
        );
        // Integer refs are echoed as integers; strings are escaped.
        assert_eq!(
            encode_reply(
                Vsn::V2,
                Some(&Ref::Int(1)),
                Some(&Ref::Int(2)),
                "a\"b",
                Status::Ok,
                &raw("null")
            ),
            r#"[1,2,"a\"b","phx_reply",{"status":"ok","response":null}]"#
        );
    }

    #[test]
    fn v1_encodes_topic_event_payload_ref() {
        assert_eq!(
            encode_reply(
                Vsn::V1,
                s("1").as_ref(),
                s("2").as_ref(),
                "t",
                Status::Ok,
                &raw("{}")
            ),
            r#"{"topic":"t","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"2"}"#
        );
        assert_eq!(
            encode_broadcast(Vsn::V1, "t", "e", &raw("[1]")),
            r#"{"topic":"t","event":"e","payload":[1],"ref":null}"#
        );
        // What v1 encodes, v1 decodes.
        let text = encode_push(Vsn::V1, None, "t", "e", &raw(r#"{"a":1}"#));
        let m = Message::decode_text(Vsn::V1, &text).expect("decode");
        assert_eq!((m.topic.as_str(), m.event.as_str()), ("t", "e"));
        assert_eq!(m.payload, Payload::Json(raw(r#"{"a":1}"#)));
    }

    #[test]
    fn every_text_message_round_trips_in_both_serializers() {
        let messages = [
            Message {
                join_ref: s("1"),
                reference: s("2"),
                topic: "room:ü".into(),
                event: "msg".into(),
                payload: Payload::Json(raw(r#"{"x":[1,2,{"y":null}]}"#)),
            },
            Message {
                join_ref: None,
                reference: None,
                topic: "t".into(),
                event: "e".into(),
                payload: Payload::Json(raw("\"text\"")),
            },
            Message {
                join_ref: Some(Ref::Int(-5)),
                reference: Some(Ref::Int(6)),
                topic: "t".into(),
                event: "e".into(),
                payload: Payload::Json(raw("[]")),
            },
        ];
        for m in &messages {
            let v2 = m.encode_text(Vsn::V2).expect("json");
            assert_eq!(&Message::decode_text(Vsn::V2, &v2).expect("v2"), m);
            // v1 does not carry join_ref when encoding.
            let v1 = m.encode_text(Vsn::V1).expect("json");
            let back = Message::decode_text(Vsn::V1, &v1).expect("v1");
            assert_eq!(back.join_ref, None);
            assert_eq!(
                (&back.reference, &back.topic, &back.event, &back.payload),
                (&m.reference, &m.topic, &m.event, &m.payload)
            );
        }
    }

    #[test]
    fn binary_frames_match_the_client_layout() {
        // A client push with an ArrayBuffer payload.
        let frame = encode_binary_client_push(
            s("12").as_ref(),
            s("13").as_ref(),
            "room:1",
            "up",
            &[1, 2, 3],
        )
        .expect("encode");
        let mut want = vec![0u8, 2, 2, 6, 2];
        want.extend_from_slice(b"1213room:1up");
        want.extend_from_slice(&[1, 2, 3]);
        assert_eq!(frame, want);
        assert_eq!(
            Inbound::decode_binary(Vsn::V2, &frame),
            Ok(Inbound::Push {
                join_ref: s("12"),
                reference: s("13"),
                topic: "room:1".into(),
                event: "up".into(),
                payload: Payload::Binary(Bytes::from_static(&[1, 2, 3])),
            })
        );
        // Server frames.
        let mut push = vec![0u8, 1, 1, 2];
        push.extend_from_slice(b"3tev\xff");
        assert_eq!(
            encode_binary_push(s("3").as_ref(), "t", "ev", &[0xff]).expect("push"),
            push
        );
        let mut reply = vec![1u8, 1, 1, 1, 2];
        reply.extend_from_slice(b"34tok\x00");
        assert_eq!(
            encode_binary_reply(s("3").as_ref(), s("4").as_ref(), "t", Status::Ok, &[0])
                .expect("reply"),
            reply
        );
        let mut bcast = vec![2u8, 1, 2];
        bcast.extend_from_slice(b"tev\x01\x02");
        assert_eq!(
            encode_binary_broadcast("t", "ev", &[1, 2]).expect("broadcast"),
            bcast
        );
        assert_eq!(
            encode_binary_broadcast(&"x".repeat(256), "e", &[]),
            Err(EncodeError::TooLong("topic", 256))
        );
    }

    #[test]
    fn malformed_binary_frames_are_refused() {
        assert_eq!(
            Message::decode_binary(Vsn::V2, &[]),
            Err(DecodeError::BinaryTruncated)
        );
        assert_eq!(
            Message::decode_binary(Vsn::V2, &[0, 1, 1]),
            Err(DecodeError::BinaryTruncated)
        );
        assert_eq!(
            Message::decode_binary(Vsn::V2, &[0, 5, 0, 0, 0, b'1']),
            Err(DecodeError::BinaryTruncated)
        );
        assert_eq!(
            Message::decode_binary(Vsn::V2, &[2, 1, 1, b't', b'e']),
            Err(DecodeError::BinaryKind(2))
        );
        assert_eq!(
            Message::decode_binary(Vsn::V2, &[0, 0, 0, 1, 1, 0xff, b'e']),
            Err(DecodeError::BinaryNotUtf8)
        );
        assert_eq!(
            Message::decode_binary(Vsn::V1, &[0, 0, 0, 1, 1, b't', b'e']),
            Err(DecodeError::BinaryInV1)
        );
        // Binary joins make no sense.
        let join =
            encode_binary_client_push(None, s("1").as_ref(), "t", JOIN, b"{}").expect("encode");
        assert_eq!(
            Inbound::decode_binary(Vsn::V2, &join),
            Err(DecodeError::BinaryNotAllowed)
        );
    }
}
