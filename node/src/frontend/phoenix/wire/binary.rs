//! The binary frames of the v2 serializer: a small header of kind and
//! field sizes, the fields, then the raw payload.

use super::{EncodeError, Ref, Status, KIND_BROADCAST, KIND_PUSH, KIND_REPLY};

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
