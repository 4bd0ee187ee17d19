//! The native protocol's frames, and its codec: a publication's data is the
//! whole jac-cloud frame, sent verbatim (a refcount, no copy); positioned
//! subscribers of history channels get it wrapped in a `publication`
//! envelope; presence events are `join`/`leave` frames.

use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::codec::{Codec, ConnInfo, Frames, Notice, Recipient, Slot};
use crate::delivery::{Delivery, DeliveryKind, Position};
use crate::history::HistoryPage;
use crate::node::Joined;
use crate::presence::PresenceEntry;

/// Slot of the verbatim data.
const RAW: u32 = 0;
/// Slot of the `publication` envelope.
const ENVELOPED: u32 = 1;

/// The native codec of one node.
pub struct NativeCodec {
    node_id: String,
}

impl NativeCodec {
    pub fn new(node_id: &str) -> Self {
        NativeCodec {
            node_id: node_id.to_string(),
        }
    }
}

impl Codec for NativeCodec {
    fn protocol(&self) -> &'static str {
        "native"
    }

    fn slot(&self, delivery: &Delivery, to: &Recipient<'_>) -> Slot {
        if to.positioned && delivery.position.is_some() && delivery.kind == DeliveryKind::Message {
            Slot::Shared(ENVELOPED)
        } else {
            Slot::Shared(RAW)
        }
    }

    fn encode(&self, delivery: &Delivery, slot: Slot, _to: &Recipient<'_>) -> Frames {
        match (delivery.kind, slot, &delivery.position, &delivery.channel) {
            (DeliveryKind::Join | DeliveryKind::Leave, _, _, Some(channel)) => {
                let kind = if delivery.kind == DeliveryKind::Join {
                    "join"
                } else {
                    "leave"
                };
                match event_frame(kind, channel, &delivery.data) {
                    Some(frame) => Frames::One(frame),
                    None => Frames::None,
                }
            }
            (_, Slot::Shared(ENVELOPED), Some(position), Some(channel)) => {
                Frames::One(publication_frame(channel, position, &delivery.data))
            }
            _ => Frames::One(delivery.data.clone()),
        }
    }

    fn notice(&self, conn: &ConnInfo<'_>, notice: Notice<'_>) -> Frames {
        Frames::One(match notice {
            Notice::TokenExpired => connection_frame(&self.node_id, conn, None),
            Notice::Revoked { channels } => unsubscribed_notice(channels, "forbidden"),
        })
    }
}

/// `{"type":"join"|"leave","channel":…,"client_id":…,"user_id":…,"node_id":…,"info":…}`:
/// the presence entry's fields (in [`PresenceEntry`]'s order) after `type`
/// and `channel`.
fn event_frame(kind: &str, channel: &str, entry: &str) -> Option<Utf8Bytes> {
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(entry).ok()?;
    if fields.is_empty() {
        return None;
    }
    // The entry is a JSON object with at least one key: keep its bytes.
    let rest = entry.trim_start().strip_prefix('{')?;
    Some(Utf8Bytes::from(format!(
        "{{\"type\":\"{kind}\",\"channel\":{},{rest}",
        json_str(channel)
    )))
}

/// `{"type":"subscribed","channel_ids":[…],"positions":{…},"ref":…}`; each
/// position is `{"offset":…,"epoch":…}` plus `"recovered"` after a `since`.
pub fn subscribed_frame(joined: &Joined, reference: Option<&RawValue>) -> Utf8Bytes {
    let mut frame = format!(
        "{{\"type\":\"subscribed\",\"channel_ids\":{}",
        serde_json::to_string(&joined.channels).expect("strings serialize")
    );
    if !joined.positions.is_empty() {
        frame.push_str(",\"positions\":{");
        for (i, (channel, position, recovered)) in joined.positions.iter().enumerate() {
            if i > 0 {
                frame.push(',');
            }
            frame.push_str(&format!(
                "{}:{{\"offset\":{},\"epoch\":{}",
                json_str(channel),
                position.offset,
                json_str(&position.epoch)
            ));
            if let Some(recovered) = recovered {
                frame.push_str(&format!(",\"recovered\":{recovered}"));
            }
            frame.push('}');
        }
        frame.push('}');
    }
    push_ref(&mut frame, reference);
    frame.push('}');
    Utf8Bytes::from(frame)
}

/// `{"type":"presence","channel_id":…,"count":…,"clients":[…],"ref":…}`.
pub fn presence_frame(
    channel: &str,
    clients: &[PresenceEntry],
    reference: Option<&RawValue>,
) -> Utf8Bytes {
    let mut frame = format!(
        "{{\"type\":\"presence\",\"channel_id\":{},\"count\":{},\"clients\":{}",
        json_str(channel),
        clients.len(),
        serde_json::to_string(clients).expect("entries serialize")
    );
    push_ref(&mut frame, reference);
    frame.push('}');
    Utf8Bytes::from(frame)
}

/// `{"type":"publication","channel":…,"offset":…,"epoch":…,"data":…}`: the
/// enveloped delivery form for clients that asked for positions.
pub fn publication_frame(channel: &str, position: &Position, data: &Utf8Bytes) -> Utf8Bytes {
    Utf8Bytes::from(format!(
        "{{\"type\":\"publication\",\"channel\":{},\"offset\":{},\"epoch\":{},\"data\":{}}}",
        json_str(channel),
        position.offset,
        json_str(&position.epoch),
        data.as_str()
    ))
}

pub fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

pub fn push_ref(frame: &mut String, reference: Option<&RawValue>) {
    if let Some(r) = reference {
        frame.push_str(",\"ref\":");
        frame.push_str(r.get());
    }
}

/// The connection frame.
pub fn connection_frame(
    node_id: &str,
    conn: &ConnInfo<'_>,
    reference: Option<&RawValue>,
) -> Utf8Bytes {
    let mut frame = format!(
        "{{\"type\":\"connection\",\"data\":{{\"client_id\":{},\"root_id\":{},\"channel_id\":{},\"node_id\":{}}}",
        json_str(conn.client_id),
        json_str(conn.root_id),
        json_str(conn.home),
        json_str(node_id),
    );
    push_ref(&mut frame, reference);
    frame.push('}');
    Utf8Bytes::from(frame)
}

/// An error reply with a stable code.
pub fn error_frame(message: &str, code: &str, reference: Option<&RawValue>) -> Utf8Bytes {
    let mut frame = format!(
        "{{\"type\":\"error\",\"error\":{},\"code\":{}",
        json_str(message),
        json_str(code)
    );
    push_ref(&mut frame, reference);
    frame.push('}');
    Utf8Bytes::from(frame)
}

/// `{"type":"history","channel_id":…,"publications":[{"offset":…,"data":…}],"offset":…,"epoch":…,"recovered":…}`
pub fn history_frame(channel: &str, page: &HistoryPage, reference: Option<&RawValue>) -> Utf8Bytes {
    let mut frame = format!(
        "{{\"type\":\"history\",\"channel_id\":{},\"offset\":{},\"epoch\":{},\"recovered\":{},\"publications\":[",
        json_str(channel),
        page.top.offset,
        json_str(&page.top.epoch),
        page.recovered
    );
    for (i, p) in page.publications.iter().enumerate() {
        if i > 0 {
            frame.push(',');
        }
        frame.push_str(&format!(
            "{{\"offset\":{},\"data\":{}}}",
            p.offset,
            p.data.as_str()
        ));
    }
    frame.push(']');
    push_ref(&mut frame, reference);
    frame.push('}');
    Utf8Bytes::from(frame)
}

/// `{"type":"subscribed"|"unsubscribed","channel_ids":[…]}` (unsubscribed).
pub fn ack(kind: &str, channels: &[String], reference: Option<&RawValue>) -> Utf8Bytes {
    let mut frame = format!(
        "{{\"type\":\"{kind}\",\"channel_ids\":{}",
        serde_json::to_string(channels).expect("strings serialize")
    );
    push_ref(&mut frame, reference);
    frame.push('}');
    Utf8Bytes::from(frame)
}

/// `{"type":"unsubscribed","channel_ids":[…],"reason":…}`: the server took
/// the socket out of channels (no `ref`: nothing asked for it).
pub fn unsubscribed_notice(channels: &[String], reason: &str) -> Utf8Bytes {
    Utf8Bytes::from(format!(
        "{{\"type\":\"unsubscribed\",\"channel_ids\":{},\"reason\":{}}}",
        serde_json::to_string(channels).expect("strings serialize"),
        json_str(reason)
    ))
}
