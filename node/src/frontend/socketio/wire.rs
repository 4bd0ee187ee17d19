//! Socket.IO packets, carried in Engine.IO message packets
//! ([`super::engineio`]): protocol v5 (socket.io-client 3 and 4, over
//! EIO=4) and v4 (socket.io-client 2, over EIO=3).
//!
//! ```text
//! <type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]
//! ```
//!
//! | type | digit | data |
//! |---|---|---|
//! | CONNECT | `0` | v5: client auth object / server `{"sid":…}`; v4: none |
//! | DISCONNECT | `1` | none |
//! | EVENT | `2` | `["name", args…]` |
//! | ACK | `3` | `[args…]` |
//! | CONNECT_ERROR | `4` | v5: `{"message":…,"data"?:…}`; v4 (ERROR): a string |
//! | BINARY_EVENT | `5` | as EVENT, binary parts replaced by placeholders |
//! | BINARY_ACK | `6` | as ACK, likewise |
//!
//! The namespace is written only when it is not `/`. Binary parts travel as
//! separate Engine.IO binary messages after the packet, in order; the JSON
//! holds `{"_placeholder":true,"num":N}` in their place ([`Reassembly`]).
//!
//! Nothing here knows about nodes, hubs or sessions.

use bytes::Bytes;
use serde_json::value::RawValue;

/// The Socket.IO protocol revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// socket.io 2.x (Engine.IO v3).
    V4,
    /// socket.io 3.x and 4.x (Engine.IO v4).
    V5,
}

/// Event names a client may not emit (the reference parser refuses them).
pub use crate::config::socketio::RESERVED_EVENTS;

/// Packet type digits.
const CONNECT: u8 = 0;
const DISCONNECT: u8 = 1;
const EVENT: u8 = 2;
const ACK: u8 = 3;
const CONNECT_ERROR: u8 = 4;
const BINARY_EVENT: u8 = 5;
const BINARY_ACK: u8 = 6;

/// A JSON value kept as the bytes it arrived as.
#[derive(Debug, Clone)]
pub struct Json(Box<RawValue>);

impl Json {
    /// Wrap JSON text; `None` if it is not JSON.
    pub fn from_text(text: &str) -> Option<Json> {
        RawValue::from_string(text.to_string()).ok().map(Json)
    }

    /// Wrap JSON already parsed as raw text.
    pub fn from_raw(raw: Box<RawValue>) -> Json {
        Json(raw)
    }

    /// Serialize a value.
    pub fn from_value<T: serde::Serialize>(value: &T) -> Json {
        Json(serde_json::value::to_raw_value(value).expect("value serializes"))
    }

    pub fn get(&self) -> &str {
        self.0.get()
    }

    pub fn raw(&self) -> &RawValue {
        &self.0
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// One Socket.IO packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// Client: join a namespace (v5 `data` is the `auth` object; v4 may
    /// carry a query string after the namespace). Server: the namespace is
    /// joined (v5 `data` is `{"sid":…}`).
    Connect {
        nsp: String,
        query: Option<String>,
        data: Option<Json>,
    },
    Disconnect {
        nsp: String,
    },
    /// EVENT, or BINARY_EVENT when `attachments` is `Some`.
    Event {
        nsp: String,
        id: Option<u64>,
        event: String,
        args: Vec<Json>,
        attachments: Option<usize>,
    },
    /// ACK, or BINARY_ACK when `attachments` is `Some`.
    Ack {
        nsp: String,
        id: u64,
        args: Vec<Json>,
        attachments: Option<usize>,
    },
    /// v5: `{"message":…}` (maybe with `data`); v4: a string.
    ConnectError {
        nsp: String,
        data: Json,
    },
}

/// Why a packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type")]
    UnknownType,
    #[error("illegal attachments")]
    IllegalAttachments,
    #[error("invalid payload")]
    InvalidPayload,
    #[error("ack id out of range")]
    BadId,
    #[error("an ACK needs an id")]
    MissingAckId,
    #[error("event name {0:?} is reserved")]
    ReservedEvent(String),
    #[error("binary data arrived with no packet waiting for it")]
    UnexpectedBinary,
    #[error("placeholder {0} has no attachment")]
    BadPlaceholder(u64),
}

fn nsp_prefix(out: &mut String, nsp: &str) {
    if nsp != "/" {
        out.push_str(nsp);
        out.push(',');
    }
}

impl Packet {
    /// The namespace the packet is for.
    pub fn nsp(&self) -> &str {
        match self {
            Packet::Connect { nsp, .. }
            | Packet::Disconnect { nsp }
            | Packet::Event { nsp, .. }
            | Packet::Ack { nsp, .. }
            | Packet::ConnectError { nsp, .. } => nsp,
        }
    }

    /// How many binary messages follow this packet.
    pub fn attachments(&self) -> usize {
        match self {
            Packet::Event { attachments, .. } | Packet::Ack { attachments, .. } => {
                attachments.unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// The server's answer to a CONNECT: v5 `0{"sid":…}`, v4 `0` (`0/nsp,`).
    pub fn connected(version: Version, nsp: &str, sid: &str) -> Packet {
        #[derive(serde::Serialize)]
        struct Sid<'a> {
            sid: &'a str,
        }
        Packet::Connect {
            nsp: nsp.to_string(),
            query: None,
            data: (version == Version::V5).then(|| Json::from_value(&Sid { sid })),
        }
    }

    /// The CONNECT reply of a namespace with connection-state recovery:
    /// v5 `0{"sid":…,"pid":…}` (v4 has no recovery: as [`Packet::connected`]).
    pub fn connected_with_pid(version: Version, nsp: &str, sid: &str, pid: &str) -> Packet {
        #[derive(serde::Serialize)]
        struct Sid<'a> {
            sid: &'a str,
            pid: &'a str,
        }
        Packet::Connect {
            nsp: nsp.to_string(),
            query: None,
            data: (version == Version::V5).then(|| Json::from_value(&Sid { sid, pid })),
        }
    }

    /// A refused CONNECT: v5 `4{"message":…}`, v4 `4"…"`.
    pub fn connect_error(version: Version, nsp: &str, message: &str) -> Packet {
        #[derive(serde::Serialize)]
        struct Message<'a> {
            message: &'a str,
        }
        Packet::ConnectError {
            nsp: nsp.to_string(),
            data: match version {
                Version::V5 => Json::from_value(&Message { message }),
                Version::V4 => Json::from_value(&message),
            },
        }
    }

    /// A text EVENT `["event", args…]`.
    pub fn event(nsp: &str, event: &str, args: Vec<Json>) -> Packet {
        Packet::Event {
            nsp: nsp.to_string(),
            id: None,
            event: event.to_string(),
            args,
            attachments: None,
        }
    }

    /// Encode (the Engine.IO message's text; attachments are sent after it
    /// as binary messages).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(32);
        match self {
            Packet::Connect { nsp, query, data } => {
                out.push((b'0' + CONNECT) as char);
                if nsp != "/" || query.is_some() {
                    out.push_str(nsp);
                    if let Some(q) = query {
                        out.push('?');
                        out.push_str(q);
                    }
                    out.push(',');
                }
                if let Some(d) = data {
                    out.push_str(d.get());
                }
            }
            Packet::Disconnect { nsp } => {
                out.push((b'0' + DISCONNECT) as char);
                nsp_prefix(&mut out, nsp);
            }
            Packet::Event {
                nsp,
                id,
                event,
                args,
                attachments,
            } => {
                header(&mut out, EVENT, BINARY_EVENT, *attachments, nsp, *id);
                out.push('[');
                out.push_str(&serde_json::to_string(event).expect("a string serializes"));
                for a in args {
                    out.push(',');
                    out.push_str(a.get());
                }
                out.push(']');
            }
            Packet::Ack {
                nsp,
                id,
                args,
                attachments,
            } => {
                header(&mut out, ACK, BINARY_ACK, *attachments, nsp, Some(*id));
                out.push('[');
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(a.get());
                }
                out.push(']');
            }
            Packet::ConnectError { nsp, data } => {
                out.push((b'0' + CONNECT_ERROR) as char);
                nsp_prefix(&mut out, nsp);
                out.push_str(data.get());
            }
        }
        out
    }

    /// Decode the text of an Engine.IO message, checking the payload of
    /// each type as the reference parser does.
    pub fn decode(text: &str) -> Result<Packet, DecodeError> {
        let b = text.as_bytes();
        let &first = b.first().ok_or(DecodeError::Empty)?;
        let kind = first.wrapping_sub(b'0');
        if kind > BINARY_ACK {
            return Err(DecodeError::UnknownType);
        }
        let mut i = 1;
        let mut attachments = None;
        if kind == BINARY_EVENT || kind == BINARY_ACK {
            let dash = text[i..].find('-').ok_or(DecodeError::IllegalAttachments)?;
            let digits = &text[i..i + dash];
            if digits.is_empty() || !digits.bytes().all(|d| d.is_ascii_digit()) {
                return Err(DecodeError::IllegalAttachments);
            }
            attachments = Some(
                digits
                    .parse::<usize>()
                    .map_err(|_| DecodeError::IllegalAttachments)?,
            );
            i += dash + 1;
        }
        let mut nsp = "/".to_string();
        let mut query = None;
        if b.get(i) == Some(&b'/') {
            let end = text[i..].find(',').map(|c| i + c).unwrap_or(text.len());
            let full = &text[i..end];
            match full.split_once('?') {
                Some((n, q)) if kind == CONNECT => {
                    nsp = n.to_string();
                    query = Some(q.to_string());
                }
                _ => nsp = full.to_string(),
            }
            i = (end + 1).min(text.len());
        }
        let digits = b[i..].iter().take_while(|d| d.is_ascii_digit()).count();
        let id = if digits > 0 {
            let id = text[i..i + digits]
                .parse::<u64>()
                .map_err(|_| DecodeError::BadId)?;
            i += digits;
            Some(id)
        } else {
            None
        };
        let rest = &text[i..];
        let data = if rest.is_empty() {
            None
        } else {
            Some(Json::from_text(rest).ok_or(DecodeError::InvalidPayload)?)
        };
        let first_char = |d: &Json| d.get().trim_start().as_bytes().first().copied();
        match kind {
            CONNECT => match &data {
                None => Ok(Packet::Connect { nsp, query, data }),
                Some(d) if first_char(d) == Some(b'{') => Ok(Packet::Connect { nsp, query, data }),
                Some(_) => Err(DecodeError::InvalidPayload),
            },
            DISCONNECT => match data {
                None => Ok(Packet::Disconnect { nsp }),
                Some(_) => Err(DecodeError::InvalidPayload),
            },
            CONNECT_ERROR => match data {
                Some(d) if matches!(first_char(&d), Some(b'{') | Some(b'"')) => {
                    Ok(Packet::ConnectError { nsp, data: d })
                }
                _ => Err(DecodeError::InvalidPayload),
            },
            EVENT | BINARY_EVENT => {
                let items = array(data.as_ref())?;
                let (name, args) = items.split_first().ok_or(DecodeError::InvalidPayload)?;
                let event = event_name(name)?;
                if RESERVED_EVENTS.contains(&event.as_str()) {
                    return Err(DecodeError::ReservedEvent(event));
                }
                Ok(Packet::Event {
                    nsp,
                    id,
                    event,
                    args: args.iter().map(|a| Json((*a).to_owned())).collect(),
                    attachments,
                })
            }
            _ => {
                let items = array(data.as_ref())?;
                Ok(Packet::Ack {
                    nsp,
                    id: id.ok_or(DecodeError::MissingAckId)?,
                    args: items.iter().map(|a| Json((*a).to_owned())).collect(),
                    attachments,
                })
            }
        }
    }
}

fn header(
    out: &mut String,
    plain: u8,
    binary: u8,
    attachments: Option<usize>,
    nsp: &str,
    id: Option<u64>,
) {
    match attachments {
        Some(n) => {
            out.push((b'0' + binary) as char);
            out.push_str(&n.to_string());
            out.push('-');
        }
        None => out.push((b'0' + plain) as char),
    }
    nsp_prefix(out, nsp);
    if let Some(id) = id {
        out.push_str(&id.to_string());
    }
}

fn array(data: Option<&Json>) -> Result<Vec<&RawValue>, DecodeError> {
    let d = data.ok_or(DecodeError::InvalidPayload)?;
    serde_json::from_str::<Vec<&RawValue>>(d.get()).map_err(|_| DecodeError::InvalidPayload)
}

/// An event name: a string, or a number (the reference parser accepts
/// both; numbers become their decimal text).
fn event_name(raw: &RawValue) -> Result<String, DecodeError> {
    if let Ok(s) = serde_json::from_str::<String>(raw.get()) {
        return Ok(s);
    }
    match serde_json::from_str::<serde_json::Number>(raw.get()) {
        Ok(n) => Ok(n.to_string()),
        Err(_) => Err(DecodeError::InvalidPayload),
    }
}

/// `{"_placeholder":true,"num":n}`, what stands for attachment `n`.
pub fn placeholder(n: usize) -> Json {
    Json::from_text(&format!(r#"{{"_placeholder":true,"num":{n}}}"#)).expect("placeholder JSON")
}

/// The attachment numbers of the placeholders in `value`, in document
/// order.
pub fn placeholders(value: &str) -> Result<Vec<u64>, DecodeError> {
    let v: serde_json::Value =
        serde_json::from_str(value).map_err(|_| DecodeError::InvalidPayload)?;
    let mut found = Vec::new();
    walk(&v, &mut found)?;
    Ok(found)
}

fn walk(v: &serde_json::Value, found: &mut Vec<u64>) -> Result<(), DecodeError> {
    match v {
        serde_json::Value::Object(map) => {
            if map.get("_placeholder") == Some(&serde_json::Value::Bool(true)) {
                let n = map
                    .get("num")
                    .and_then(|n| n.as_u64())
                    .ok_or(DecodeError::InvalidPayload)?;
                found.push(n);
                return Ok(());
            }
            for child in map.values() {
                walk(child, found)?;
            }
        }
        serde_json::Value::Array(items) => {
            for child in items {
                walk(child, found)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Collects the binary messages that follow a BINARY_EVENT or BINARY_ACK.
///
/// Start it with the decoded packet, [`push`](Reassembly::push) each binary
/// message, and take the packet with its attachments (index `n` is what
/// placeholder `num: n` stands for) once complete. Every placeholder must
/// name an attachment that exists.
#[derive(Debug)]
pub struct Reassembly {
    packet: Packet,
    expected: usize,
    buffers: Vec<Bytes>,
}

/// A packet with all its attachments.
#[derive(Debug, Clone, PartialEq)]
pub struct Reassembled {
    pub packet: Packet,
    pub attachments: Vec<Bytes>,
}

/// What [`Reassembly::start`] found.
#[derive(Debug)]
pub enum Start {
    /// No attachments: the packet is complete.
    Complete(Packet),
    /// Waiting for binary messages.
    Pending(Reassembly),
}

impl Reassembly {
    /// Check the placeholders (each must name an attachment below the
    /// count) and start waiting for the attachments, if any.
    pub fn start(packet: Packet) -> Result<Start, DecodeError> {
        let expected = packet.attachments();
        let args = match &packet {
            Packet::Event { args, .. } | Packet::Ack { args, .. } => args.as_slice(),
            _ => &[],
        };
        for a in args {
            for n in placeholders(a.get())? {
                if n >= expected as u64 {
                    return Err(DecodeError::BadPlaceholder(n));
                }
            }
        }
        if expected == 0 {
            return Ok(Start::Complete(packet));
        }
        Ok(Start::Pending(Reassembly {
            packet,
            expected,
            buffers: Vec::with_capacity(expected),
        }))
    }

    /// Add the next binary message; true once all have arrived.
    pub fn push(&mut self, data: Bytes) -> bool {
        if self.buffers.len() < self.expected {
            self.buffers.push(data);
        }
        self.missing() == 0
    }

    /// How many binary messages are still awaited.
    pub fn missing(&self) -> usize {
        self.expected - self.buffers.len()
    }

    /// The packet and its attachments; `None` while some are missing.
    pub fn finish(self) -> Option<Reassembled> {
        (self.missing() == 0).then_some(Reassembled {
            packet: self.packet,
            attachments: self.buffers,
        })
    }
}

#[cfg(test)]
mod tests;
