//! The Phoenix codec: a publication to a topic is the broadcast
//! `[null, null, topic, event, payload]` (v2; an object in v1), encoded
//! once per serializer for every Phoenix socket in the topic. Presence join
//! and leave events become `presence_diff` pushes. On history channels,
//! sockets that joined positioned get the publication's position as the
//! broadcast's `ref` (`"<epoch>:<offset>"`, see [`super::recover`]): a
//! second shared encoding.

use prometheus::IntCounter;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::wire::{self, Ref, Vsn};
use crate::codec::{Codec, ConnInfo, Frames, Notice, Recipient, Slot};
use crate::delivery::{Delivery, DeliveryKind, Target};
use crate::presence::PresenceEntry;

/// The event name of publications that carry none (native publications,
/// and `POST /api/notify/channels` without `event`).
pub const DEFAULT_EVENT: &str = "message";

/// The Phoenix codec for one serializer.
pub struct PhoenixCodec {
    vsn: Vsn,
    sent: IntCounter,
}

impl PhoenixCodec {
    pub fn new(vsn: Vsn, sent: IntCounter) -> Self {
        PhoenixCodec { vsn, sent }
    }

    /// The frame of `delivery` on `topic`, if it has one (with its position
    /// as the ref when `positioned`).
    fn frame(&self, delivery: &Delivery, topic: &str, positioned: bool) -> Option<Utf8Bytes> {
        let text = match delivery.kind {
            DeliveryKind::Message => {
                let payload: &RawValue = serde_json::from_str(delivery.data.as_str()).ok()?;
                let event = delivery.event.as_deref().unwrap_or(DEFAULT_EVENT);
                match delivery.position.as_ref().filter(|_| positioned) {
                    Some(p) => {
                        let at = Ref::Str(super::recover::format(p));
                        wire::encode(self.vsn, None, Some(&at), topic, event, payload)
                    }
                    None => wire::encode_broadcast(self.vsn, topic, event, payload),
                }
            }
            DeliveryKind::Join | DeliveryKind::Leave => {
                let entry: PresenceEntry = serde_json::from_str(delivery.data.as_str()).ok()?;
                let side = presence_map(std::slice::from_ref(&entry));
                let diff = if delivery.kind == DeliveryKind::Join {
                    json!({"joins": side, "leaves": {}})
                } else {
                    json!({"joins": {}, "leaves": side})
                };
                let payload = serde_json::value::to_raw_value(&diff).ok()?;
                wire::encode_broadcast(self.vsn, topic, "presence_diff", &payload)
            }
        };
        Some(Utf8Bytes::from(text))
    }
}

impl Codec for PhoenixCodec {
    fn protocol(&self) -> &'static str {
        "phoenix"
    }

    fn slot(&self, delivery: &Delivery, to: &Recipient<'_>) -> Slot {
        // Topics only: no frame for a user, a client or everyone.
        Slot::for_topic(delivery, to)
    }

    fn encode(&self, delivery: &Delivery, slot: Slot, to: &Recipient<'_>) -> Frames {
        match (slot, &delivery.channel, &delivery.target) {
            (Slot::Shared(n), Some(topic), _) => match self.frame(delivery, topic, n == 1) {
                Some(frame) => Frames::One(frame),
                None => Frames::None,
            },
            (Slot::Own, None, Target::Channels(topics)) => {
                let Some(member_of) = to.member_of else {
                    return Frames::None;
                };
                let frames: Vec<Utf8Bytes> = topics
                    .iter()
                    .filter(|t| member_of(t))
                    .filter_map(|t| self.frame(delivery, t, false))
                    .collect();
                Frames::Many(frames)
            }
            _ => Frames::None,
        }
    }

    fn sent(&self) -> Option<&IntCounter> {
        Some(&self.sent)
    }

    /// Channels the connection may no longer be in: `phx_close` on each
    /// (with no join ref, so it closes whichever join the client holds;
    /// the official client then does not rejoin).
    fn notice(&self, _conn: &ConnInfo<'_>, notice: Notice<'_>) -> Frames {
        match notice {
            Notice::Revoked { channels } => Frames::Many(
                channels
                    .iter()
                    .map(|t| Utf8Bytes::from(wire::encode_close(self.vsn, None, t)))
                    .collect(),
            ),
            Notice::TokenExpired => Frames::None,
        }
    }
}

/// Presence entries in the shape of Phoenix Presence: keyed by user id,
/// one meta per connection (`phx_ref` is the client id, which the
/// official client's `Presence` uses to tell connections apart).
pub fn presence_map(entries: &[PresenceEntry]) -> Value {
    let mut map: Map<String, Value> = Map::new();
    for e in entries {
        let mut meta = json!({
            "phx_ref": e.client_id,
            "client_id": e.client_id,
            "node_id": e.node_id,
        });
        if let Some(info) = &e.info {
            if let Ok(info) = serde_json::from_str::<Value>(info.get()) {
                meta["info"] = info;
            }
        }
        let slot = map
            .entry(e.user_id.clone())
            .or_insert_with(|| json!({"metas": []}));
        if let Some(metas) = slot["metas"].as_array_mut() {
            metas.push(meta);
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn codec(vsn: Vsn) -> PhoenixCodec {
        PhoenixCodec::new(vsn, IntCounter::new("t", "t").unwrap())
    }

    fn to<'a>(member_of: Option<&'a dyn Fn(&str) -> bool>) -> Recipient<'a> {
        Recipient {
            client_id: "c",
            positioned: false,
            tag: None,
            member_of,
        }
    }

    #[test]
    fn broadcasts_carry_the_event_or_message() {
        let mut d = Delivery::new(
            Target::Channels(vec!["room:1".into()]),
            Utf8Bytes::from(r#"{"a":1}"#),
        );
        let c = codec(Vsn::V2);
        let slot = c.slot(&d, &to(None));
        assert_eq!(
            c.encode(&d, slot, &to(None)),
            Frames::One(Utf8Bytes::from(r#"[null,null,"room:1","message",{"a":1}]"#))
        );
        d.event = Some(Arc::from("shout"));
        assert_eq!(
            codec(Vsn::V1).encode(&d, slot, &to(None)),
            Frames::One(Utf8Bytes::from(
                r#"{"topic":"room:1","event":"shout","payload":{"a":1},"ref":null}"#
            ))
        );
    }

    #[test]
    fn positioned_members_get_the_position_as_the_ref() {
        let mut d = Delivery::new(
            Target::Channels(vec!["room:1".into()]),
            Utf8Bytes::from(r#"{"a":1}"#),
        );
        d.position = Some(crate::delivery::Position {
            offset: 5,
            epoch: "e1".into(),
        });
        let c = codec(Vsn::V2);
        let mut positioned = to(None);
        positioned.positioned = true;
        assert_eq!(c.slot(&d, &to(None)), Slot::Shared(0));
        assert_eq!(c.slot(&d, &positioned), Slot::Shared(1));
        assert_eq!(
            c.encode(&d, Slot::Shared(1), &positioned),
            Frames::One(Utf8Bytes::from(
                r#"[null,"e1:5","room:1","message",{"a":1}]"#
            ))
        );
        assert_eq!(
            c.encode(&d, Slot::Shared(0), &to(None)),
            Frames::One(Utf8Bytes::from(r#"[null,null,"room:1","message",{"a":1}]"#))
        );
    }

    #[test]
    fn several_channels_give_one_frame_per_joined_topic_and_others_are_skipped() {
        let d = Delivery::new(
            Target::Channels(vec!["a".into(), "b".into(), "c".into()]),
            Utf8Bytes::from("{}"),
        );
        let c = codec(Vsn::V2);
        let member = |t: &str| t != "b";
        assert_eq!(c.slot(&d, &to(Some(&member))), Slot::Own);
        let Frames::Many(frames) = c.encode(&d, Slot::Own, &to(Some(&member))) else {
            panic!("several frames");
        };
        assert_eq!(frames.len(), 2);
        assert!(frames[1].as_str().contains("\"c\""));
        let users = Delivery::new(Target::Users(vec!["u".into()]), Utf8Bytes::from("{}"));
        assert_eq!(c.slot(&users, &to(None)), Slot::Skip);
    }

    #[test]
    fn presence_events_are_diffs_keyed_by_user() {
        let mut d = Delivery::new(
            Target::Channels(vec!["room:1".into()]),
            Utf8Bytes::from(
                r#"{"client_id":"c1","user_id":"u1","node_id":"n1","info":{"name":"a"}}"#,
            ),
        );
        d.kind = DeliveryKind::Leave;
        let Frames::One(frame) = codec(Vsn::V2).encode(&d, Slot::Shared(0), &to(None)) else {
            panic!("one frame");
        };
        let v: Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(v[3], "presence_diff");
        assert_eq!(v[4]["joins"], json!({}));
        assert_eq!(
            v[4]["leaves"]["u1"]["metas"][0],
            json!({"phx_ref": "c1", "client_id": "c1", "node_id": "n1", "info": {"name": "a"}})
        );
    }
}
