//! Binary events from the server. JSON cannot carry bytes, so the server
//! API (and the backend's `emit`) marks them: an object that is exactly
//! `{"$binary": "<base64>"}` anywhere in an event's payload is sent as an
//! attachment. The event then goes out as a BINARY_EVENT
//! (`451-["event",{"_placeholder":true,"num":0}]`) followed by one Engine.IO
//! message per attachment, the bytes as base64 text messages (`b<base64>`
//! in Engine.IO 4, `b4<base64>` in Engine.IO 3), which both client parsers
//! read as binary messages. The handler receives a `Buffer`/`ArrayBuffer`.
//! The backend's `ack` arguments are marked the same way and go out as a
//! BINARY_ACK (`461-<id>[…]`) and its attachments.

use base64::Engine as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::engineio::{self, Eio};
use super::wire::{Json, Packet};

/// The key marking bytes in a JSON payload.
pub const MARKER: &str = "$binary";

/// `args` with every marked object replaced by a placeholder, and the
/// attachments in placeholder order; `None` when nothing is marked.
pub fn extract(args: &[Json]) -> Option<(Vec<Json>, Vec<Vec<u8>>)> {
    if !args.iter().any(|a| a.get().contains(MARKER)) {
        return None;
    }
    fn walk(v: &mut Value, out: &mut Vec<Vec<u8>>) {
        match v {
            Value::Object(map) if map.len() == 1 => {
                let bytes = map
                    .get(MARKER)
                    .and_then(Value::as_str)
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
                match bytes {
                    Some(bytes) => {
                        *v = serde_json::json!({"_placeholder": true, "num": out.len()});
                        out.push(bytes);
                    }
                    None => map.values_mut().for_each(|c| walk(c, out)),
                }
            }
            Value::Object(map) => map.values_mut().for_each(|c| walk(c, out)),
            Value::Array(items) => items.iter_mut().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    let mut attachments = Vec::new();
    let mut replaced = Vec::with_capacity(args.len());
    for a in args {
        let mut v: Value = serde_json::from_str(a.get()).ok()?;
        walk(&mut v, &mut attachments);
        replaced.push(Json::from_value(&v));
    }
    (!attachments.is_empty()).then_some((replaced, attachments))
}

/// The Engine.IO messages of an event: `4` + the EVENT packet, or `4` +
/// the BINARY_EVENT packet and its attachments.
pub fn event_messages(eio: Eio, nsp: &str, event: &str, args: Vec<Json>) -> Vec<Utf8Bytes> {
    messages(eio, args, |args, attachments| Packet::Event {
        nsp: nsp.to_string(),
        id: None,
        event: event.to_string(),
        args,
        attachments,
    })
}

/// The Engine.IO messages of an ack: `4` + the ACK packet, or `4` + the
/// BINARY_ACK packet and its attachments when its arguments mark bytes.
pub fn ack_messages(eio: Eio, nsp: &str, id: u64, args: Vec<Json>) -> Vec<Utf8Bytes> {
    messages(eio, args, |args, attachments| Packet::Ack {
        nsp: nsp.to_string(),
        id,
        args,
        attachments,
    })
}

/// The packet `make` builds from `args` (with placeholders, and the number
/// of attachments when there are any), then its attachments.
fn messages(
    eio: Eio,
    args: Vec<Json>,
    make: impl FnOnce(Vec<Json>, Option<usize>) -> Packet,
) -> Vec<Utf8Bytes> {
    let Some((args, attachments)) = extract(&args) else {
        return vec![Utf8Bytes::from(format!("4{}", make(args, None).encode()))];
    };
    let packet = make(args, Some(attachments.len()));
    let prefix = match eio {
        Eio::V4 => "b",
        Eio::V3 => "b4",
    };
    let mut out = vec![Utf8Bytes::from(format!("4{}", packet.encode()))];
    for bytes in attachments {
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        out.push(Utf8Bytes::from(format!("{prefix}{b64}")));
    }
    out
}

/// A frame of a connection's outbox as an Engine.IO packet (for polling
/// bodies): an attachment's base64 message back to its bytes.
pub fn outbox_packet(eio: Eio, frame: &str) -> Result<engineio::Packet, engineio::DecodeError> {
    let prefix = match eio {
        Eio::V4 => "b",
        Eio::V3 => "b4",
    };
    match frame.strip_prefix(prefix) {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(engineio::Packet::binary)
            .map_err(|_| engineio::DecodeError::Base64),
        None => engineio::Packet::decode_text(frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Json {
        Json::from_text(text).unwrap()
    }

    #[test]
    fn marked_bytes_become_attachments_in_order() {
        let args = vec![json(
            r#"{"name":"a.png","file":{"$binary":"AAEC"},"more":[{"$binary":"aGk="}]}"#,
        )];
        let out = event_messages(Eio::V4, "/", "upload", args.clone());
        assert_eq!(
            out,
            [
                Utf8Bytes::from(
                    r#"452-["upload",{"file":{"_placeholder":true,"num":0},"more":[{"_placeholder":true,"num":1}],"name":"a.png"}]"#
                ),
                Utf8Bytes::from("bAAEC"),
                Utf8Bytes::from("baGk="),
            ]
        );
        let v3 = event_messages(Eio::V3, "/admin", "upload", args);
        assert!(v3[0].as_str().starts_with("452-/admin,[\"upload\""));
        assert_eq!(v3[1].as_str(), "b4AAEC");
        // Polling bodies carry them as packets of bytes.
        let p = outbox_packet(Eio::V3, v3[1].as_str()).unwrap();
        assert_eq!(p.data, engineio::Data::Binary(vec![0u8, 1, 2].into()));
        let p = outbox_packet(Eio::V4, out[2].as_str()).unwrap();
        assert_eq!(p.data, engineio::Data::Binary(b"hi".to_vec().into()));
    }

    #[test]
    fn acks_with_marked_bytes_are_binary_acks() {
        let args = vec![json(r#"{"$binary":"aGk="}"#), json("1")];
        let out = ack_messages(Eio::V4, "/", 7, args);
        assert_eq!(
            out,
            [
                Utf8Bytes::from(r#"461-7[{"_placeholder":true,"num":0},1]"#),
                Utf8Bytes::from("baGk="),
            ]
        );
        let plain = ack_messages(Eio::V3, "/admin", 3, vec![json(r#""ok""#)]);
        assert_eq!(plain, [Utf8Bytes::from(r#"43/admin,3["ok"]"#)]);
    }

    #[test]
    fn anything_else_is_plain_json() {
        for text in [
            r#"{"$binary":"not base64!"}"#,
            r#"{"$binary":"AAEC","other":1}"#,
            r#"{"$binary":7}"#,
            r#""$binary""#,
        ] {
            assert_eq!(extract(&[json(text)]), None, "{text}");
            let out = event_messages(Eio::V4, "/", "e", vec![json(text)]);
            assert_eq!(out.len(), 1);
            assert!(out[0].as_str().starts_with("42[\"e\","), "{text}");
        }
    }
}
