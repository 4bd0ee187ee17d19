//! Engine.IO, the transport under Socket.IO: protocol v4 (socket.io-client
//! 3 and 4) and v3 (socket.io-client 2).
//!
//! A packet is a type digit and its data:
//!
//! | type | digit | data |
//! |---|---|---|
//! | open | `0` | the handshake JSON ([`Handshake`]) |
//! | close | `1` | none |
//! | ping | `2` | none, or `probe` during an upgrade |
//! | pong | `3` | none, or `probe` |
//! | message | `4` | text, or bytes |
//! | upgrade | `5` | none |
//! | noop | `6` | none |
//!
//! Over WebSocket each packet is one frame. Binary messages are bare bytes
//! in v4 and `0x04` + bytes in v3. Over HTTP long-polling several packets
//! travel in one body (a *payload*): v4 joins them with the record
//! separator `\x1e` and sends bytes as `b` + base64; v3 prefixes each with
//! its length (`<len>:<packet>`, the length in UTF-16 code units as the
//! JavaScript implementation counts) and sends bytes as `b4` + base64, or,
//! for clients that accept binary bodies, uses the binary payload layout
//! ([`encode_payload_v3_binary`]).
//!
//! Nothing here knows about nodes, hubs or sessions.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The record separator between packets of a v4 polling payload.
pub const SEPARATOR: char = '\x1e';

/// Engine.IO protocol revision (the `EIO` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eio {
    V3,
    V4,
}

/// A transport (the `transport` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Polling,
    WebSocket,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Polling => "polling",
            Transport::WebSocket => "websocket",
        }
    }
}

/// The errors the reference server answers bad requests with: HTTP 400
/// (403 for [`ServerError::Forbidden`]) and the body
/// `{"code":N,"message":"…"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("Transport unknown")]
    UnknownTransport,
    #[error("Session ID unknown")]
    UnknownSid,
    #[error("Bad handshake method")]
    BadHandshakeMethod,
    #[error("Bad request")]
    BadRequest,
    #[error("Forbidden")]
    Forbidden,
    #[error("Unsupported protocol version")]
    UnsupportedProtocolVersion,
}

impl ServerError {
    pub fn code(self) -> u8 {
        match self {
            ServerError::UnknownTransport => 0,
            ServerError::UnknownSid => 1,
            ServerError::BadHandshakeMethod => 2,
            ServerError::BadRequest => 3,
            ServerError::Forbidden => 4,
            ServerError::UnsupportedProtocolVersion => 5,
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ServerError::Forbidden => 403,
            _ => 400,
        }
    }

    /// The JSON body.
    pub fn body(self) -> String {
        format!(r#"{{"code":{},"message":"{}"}}"#, self.code(), self)
    }
}

/// What an HTTP request to `/socket.io/` is, from its method and query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// No `sid`: open a session (GET only).
    Handshake { eio: Eio, transport: Transport },
    /// A request for an existing session (a poll, a POST of packets, or a
    /// WebSocket upgrade); the caller looks the `sid` up and answers
    /// [`ServerError::UnknownSid`] when it does not know it.
    Session {
        eio: Eio,
        transport: Transport,
        sid: String,
    },
}

impl Request {
    /// Classify a request as the reference server does: the transport is
    /// checked first, then the protocol version, then the method of a
    /// handshake. `allow_eio3` accepts `EIO=3` clients. JSONP polling (a
    /// `j` parameter, which only a 2.x client in a browser without
    /// XMLHttpRequest, or told `forceJSONP`, sends) is not served: a
    /// [`ServerError::BadRequest`] rather than an answer its script tag
    /// could not run.
    pub fn classify<'a>(
        method: &str,
        query: impl IntoIterator<Item = (&'a str, &'a str)>,
        allow_eio3: bool,
    ) -> Result<Request, ServerError> {
        let (mut eio, mut transport, mut sid, mut jsonp) = (None, None, None, false);
        for (k, v) in query {
            match k {
                "EIO" => eio = Some(v),
                "transport" => transport = Some(v),
                "sid" => sid = Some(v),
                "j" => jsonp = true,
                _ => {}
            }
        }
        let transport = match transport {
            Some("polling") if jsonp => return Err(ServerError::BadRequest),
            Some("polling") => Transport::Polling,
            Some("websocket") => Transport::WebSocket,
            _ => return Err(ServerError::UnknownTransport),
        };
        let eio = match eio {
            Some("4") => Eio::V4,
            Some("3") if allow_eio3 => Eio::V3,
            _ => return Err(ServerError::UnsupportedProtocolVersion),
        };
        match sid {
            Some(sid) if !sid.is_empty() => Ok(Request::Session {
                eio,
                transport,
                sid: sid.to_string(),
            }),
            Some(_) => Err(ServerError::UnknownSid),
            None if method.eq_ignore_ascii_case("GET") => Ok(Request::Handshake { eio, transport }),
            None => Err(ServerError::BadHandshakeMethod),
        }
    }
}

/// The data of the open packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake {
    pub sid: String,
    /// Transports the client may upgrade to (`["websocket"]` from polling,
    /// `[]` on a WebSocket).
    pub upgrades: Vec<String>,
    /// Milliseconds between pings (v4: the server pings; v3: the client).
    pub ping_interval: u64,
    /// Milliseconds to wait for the answer to a ping.
    pub ping_timeout: u64,
    /// Largest payload the server accepts, in bytes (v4 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload: Option<u64>,
}

impl Handshake {
    /// The open packet for `eio` (`maxPayload` is announced in v4 only).
    pub fn packet(&self, eio: Eio) -> Packet {
        let mut h = self.clone();
        if eio == Eio::V3 {
            h.max_payload = None;
        }
        Packet::text(
            PacketType::Open,
            serde_json::to_string(&h).expect("a handshake serializes"),
        )
    }
}

/// Packet types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketType {
    Open,
    Close,
    Ping,
    Pong,
    Message,
    Upgrade,
    Noop,
}

impl PacketType {
    pub fn digit(self) -> char {
        (b'0' + self as u8) as char
    }

    fn from_byte(b: u8) -> Option<PacketType> {
        Some(match b {
            b'0' => PacketType::Open,
            b'1' => PacketType::Close,
            b'2' => PacketType::Ping,
            b'3' => PacketType::Pong,
            b'4' => PacketType::Message,
            b'5' => PacketType::Upgrade,
            b'6' => PacketType::Noop,
            _ => return None,
        })
    }
}

/// A packet's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    Text(String),
    Binary(Bytes),
}

/// One Engine.IO packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub kind: PacketType,
    pub data: Data,
}

/// Why a packet or payload was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    #[error("binary data must be a message")]
    BinaryNotMessage,
    #[error("invalid base64")]
    Base64,
    #[error("payload length prefix is malformed")]
    BadLength,
    #[error("payload is shorter than its length prefix")]
    Truncated,
    #[error("payload is not UTF-8")]
    NotUtf8,
}

impl Packet {
    pub fn text(kind: PacketType, data: impl Into<String>) -> Packet {
        Packet {
            kind,
            data: Data::Text(data.into()),
        }
    }

    /// A packet with no data (close, ping, pong, upgrade, noop).
    pub fn bare(kind: PacketType) -> Packet {
        Packet::text(kind, "")
    }

    pub fn message(text: impl Into<String>) -> Packet {
        Packet::text(PacketType::Message, text)
    }

    pub fn binary(bytes: impl Into<Bytes>) -> Packet {
        Packet {
            kind: PacketType::Message,
            data: Data::Binary(bytes.into()),
        }
    }

    /// The text form of a text packet (`4hello`); `None` for bytes.
    pub fn encode_text(&self) -> Option<String> {
        match &self.data {
            Data::Text(t) => {
                let mut out = String::with_capacity(1 + t.len());
                out.push(self.kind.digit());
                out.push_str(t);
                Some(out)
            }
            Data::Binary(_) => None,
        }
    }

    /// The packet as a WebSocket frame.
    pub fn encode_ws(&self, eio: Eio) -> WsFrame {
        match &self.data {
            Data::Text(_) => WsFrame::Text(self.encode_text().expect("text")),
            Data::Binary(b) => WsFrame::Binary(match eio {
                Eio::V4 => b.clone(),
                Eio::V3 => {
                    let mut out = Vec::with_capacity(1 + b.len());
                    out.push(4);
                    out.extend_from_slice(b);
                    Bytes::from(out)
                }
            }),
        }
    }

    /// Decode a text WebSocket frame or one text packet of a payload.
    pub fn decode_text(text: &str) -> Result<Packet, DecodeError> {
        let &first = text.as_bytes().first().ok_or(DecodeError::Empty)?;
        let kind = PacketType::from_byte(first)
            .ok_or_else(|| DecodeError::UnknownType(text.chars().next().unwrap_or_default()))?;
        Ok(Packet::text(kind, &text[1..]))
    }

    /// Decode a binary WebSocket frame.
    pub fn decode_binary(eio: Eio, frame: &[u8]) -> Result<Packet, DecodeError> {
        match eio {
            Eio::V4 => Ok(Packet::binary(Bytes::copy_from_slice(frame))),
            Eio::V3 => match frame.split_first() {
                Some((4, rest)) => Ok(Packet::binary(Bytes::copy_from_slice(rest))),
                Some((&t, _)) if t <= 6 => Err(DecodeError::BinaryNotMessage),
                Some((&t, _)) => Err(DecodeError::UnknownType(t as char)),
                None => Err(DecodeError::Empty),
            },
        }
    }
}

/// A WebSocket frame to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsFrame {
    Text(String),
    Binary(Bytes),
}

/// A v4 polling body: packets joined with `\x1e`, bytes as `b<base64>`.
pub fn encode_payload_v4(packets: &[Packet]) -> String {
    let mut out = String::new();
    for (i, p) in packets.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        match &p.data {
            Data::Text(_) => out.push_str(&p.encode_text().expect("text")),
            Data::Binary(b) => {
                out.push('b');
                out.push_str(&B64.encode(b));
            }
        }
    }
    out
}

/// Split a v4 polling body into packets.
pub fn decode_payload_v4(body: &str) -> Result<Vec<Packet>, DecodeError> {
    body.split(SEPARATOR)
        .map(|part| match part.strip_prefix('b') {
            Some(b64) => B64
                .decode(b64)
                .map(Packet::binary)
                .map_err(|_| DecodeError::Base64),
            None => Packet::decode_text(part),
        })
        .collect()
}

/// One packet of a v3 string payload: text as is, bytes as `b4<base64>`.
fn v3_string_packet(p: &Packet) -> String {
    match &p.data {
        Data::Text(_) => p.encode_text().expect("text"),
        Data::Binary(b) => format!("b4{}", B64.encode(b)),
    }
}

/// A v3 polling body for clients without binary support:
/// `<len>:<packet>` for each packet, `len` in UTF-16 code units.
pub fn encode_payload_v3(packets: &[Packet]) -> String {
    let mut out = String::new();
    for p in packets {
        let packet = v3_string_packet(p);
        out.push_str(&packet.encode_utf16().count().to_string());
        out.push(':');
        out.push_str(&packet);
    }
    out
}

/// Split a v3 string polling body into packets.
pub fn decode_payload_v3(body: &str) -> Result<Vec<Packet>, DecodeError> {
    let mut packets = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let colon = rest.find(':').ok_or(DecodeError::BadLength)?;
        let digits = &rest[..colon];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DecodeError::BadLength);
        }
        let units: usize = digits.parse().map_err(|_| DecodeError::BadLength)?;
        let after = &rest[colon + 1..];
        // Walk `units` UTF-16 code units forward.
        let mut counted = 0;
        let mut end = 0;
        for c in after.chars() {
            if counted >= units {
                break;
            }
            counted += c.len_utf16();
            end += c.len_utf8();
        }
        if counted != units {
            return Err(DecodeError::Truncated);
        }
        let packet = &after[..end];
        packets.push(match packet.strip_prefix('b') {
            Some(b64) => {
                let b64 = b64.strip_prefix('4').ok_or(DecodeError::BinaryNotMessage)?;
                Packet::binary(B64.decode(b64).map_err(|_| DecodeError::Base64)?)
            }
            None => Packet::decode_text(packet)?,
        });
        rest = &after[end..];
    }
    Ok(packets)
}

/// A v3 polling body for clients that accept binary bodies (XHR2): for each
/// packet `<0 string | 1 binary>`, its length as one byte per decimal
/// digit, `0xff`, then the packet (text as UTF-8; bytes behind the type
/// byte `4`).
pub fn encode_payload_v3_binary(packets: &[Packet]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in packets {
        let (marker, body): (u8, Vec<u8>) = match &p.data {
            Data::Text(_) => (0, p.encode_text().expect("text").into_bytes()),
            Data::Binary(b) => {
                let mut v = Vec::with_capacity(1 + b.len());
                v.push(4);
                v.extend_from_slice(b);
                (1, v)
            }
        };
        out.push(marker);
        out.extend(body.len().to_string().bytes().map(|d| d - b'0'));
        out.push(0xff);
        out.extend_from_slice(&body);
    }
    out
}

/// Split a v3 binary polling body into packets.
pub fn decode_payload_v3_binary(body: &[u8]) -> Result<Vec<Packet>, DecodeError> {
    let mut packets = Vec::new();
    let mut rest = body;
    while let Some((&marker, after)) = rest.split_first() {
        if marker > 1 {
            return Err(DecodeError::BadLength);
        }
        let ff = after
            .iter()
            .position(|&b| b == 0xff)
            .ok_or(DecodeError::BadLength)?;
        let digits = &after[..ff];
        if digits.is_empty() || digits.len() > 10 || digits.iter().any(|&d| d > 9) {
            return Err(DecodeError::BadLength);
        }
        let len = digits.iter().fold(0usize, |n, &d| n * 10 + d as usize);
        let packet = after
            .get(ff + 1..ff + 1 + len)
            .ok_or(DecodeError::Truncated)?;
        packets.push(if marker == 0 {
            Packet::decode_text(std::str::from_utf8(packet).map_err(|_| DecodeError::NotUtf8)?)?
        } else {
            Packet::decode_binary(Eio::V3, packet)?
        });
        rest = &after[ff + 1 + len..];
    }
    Ok(packets)
}

#[cfg(test)]
mod tests;
