//! What a session reads from and writes into packets: the message text of a
//! packet, the token of a CONNECT, a binary event's attachments.

use bytes::Bytes;
use serde_json::Value;

use super::engineio::PacketType;
use super::wire::{Json, Packet};

/// `4` + a Socket.IO packet: the text of its Engine.IO message.
pub fn message(packet: &Packet) -> String {
    format!("{}{}", PacketType::Message.digit(), packet.encode())
}

/// The arguments of a binary event with each placeholder replaced by
/// `{"base64": …}`, its attachment's bytes (what the backend receives).
pub fn with_attachments(args: Vec<Json>, attachments: &[Bytes]) -> Vec<Json> {
    use base64::Engine as _;
    if attachments.is_empty() {
        return args;
    }
    fn fill(v: &mut Value, attachments: &[Bytes]) {
        match v {
            Value::Object(map) if map.get("_placeholder") == Some(&Value::Bool(true)) => {
                let n = map.get("num").and_then(Value::as_u64).unwrap_or(u64::MAX);
                if let Some(bytes) = attachments.get(n as usize) {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                    *v = serde_json::json!({ "base64": b64 });
                }
            }
            Value::Object(map) => map.values_mut().for_each(|c| fill(c, attachments)),
            Value::Array(items) => items.iter_mut().for_each(|c| fill(c, attachments)),
            _ => {}
        }
    }
    args.into_iter()
        .map(|a| match serde_json::from_str::<Value>(a.get()) {
            Ok(mut v) => {
                fill(&mut v, attachments);
                Json::from_value(&v)
            }
            Err(_) => a,
        })
        .collect()
}

/// The token of a CONNECT: its `auth` object's field (v5), or the
/// `token` parameter of its query (v4: `40/admin?token=…,`).
pub fn connect_token(data: Option<&Json>, query: Option<&str>, field: &str) -> Option<String> {
    auth_token(data, field).or_else(|| {
        let (_, token) = url_pairs(query?).into_iter().find(|(k, _)| k == "token")?;
        Some(token).filter(|t| !t.is_empty())
    })
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    let uri: Option<http::Uri> = format!("/?{query}").parse().ok();
    uri.and_then(|u| axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&u).ok())
        .map(|axum::extract::Query(q)| q)
        .unwrap_or_default()
}

/// The token of a CONNECT's `auth` object, if any.
pub fn auth_token(data: Option<&Json>, field: &str) -> Option<String> {
    let v: Value = serde_json::from_str(data?.get()).ok()?;
    v.get(field)?
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_replace_their_placeholders_for_the_backend() {
        let args = vec![
            Json::from_text(r#"{"file":{"_placeholder":true,"num":1},"n":2}"#).unwrap(),
            Json::from_text(r#"{"_placeholder":true,"num":0}"#).unwrap(),
        ];
        let out = with_attachments(
            args,
            &[Bytes::from_static(b"\x00\x01"), Bytes::from_static(b"hi")],
        );
        assert_eq!(out[0].get(), r#"{"file":{"base64":"aGk="},"n":2}"#);
        assert_eq!(out[1].get(), r#"{"base64":"AAE="}"#);
    }

    #[test]
    fn the_token_comes_from_the_configured_auth_field() {
        let data = Json::from_text(r#"{"token":"abc","other":1}"#);
        assert_eq!(auth_token(data.as_ref(), "token"), Some("abc".into()));
        assert_eq!(auth_token(data.as_ref(), "other"), None);
        assert_eq!(auth_token(None, "token"), None);
        let empty = Json::from_text(r#"{"token":""}"#);
        assert_eq!(auth_token(empty.as_ref(), "token"), None);
        assert_eq!(
            connect_token(None, Some("a=1&token=x%2By"), "token"),
            Some("x+y".into())
        );
        assert_eq!(
            connect_token(data.as_ref(), Some("token=q"), "token"),
            Some("abc".into())
        );
    }
}
