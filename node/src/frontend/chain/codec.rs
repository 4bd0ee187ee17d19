//! The chain codec: a publication to a topic is the broadcast
//! `[2,topic,event,payload]`, encoded once for every chain session in the
//! topic. chain has no presence: presence events are not sent.

use prometheus::IntCounter;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::wire::{Message, Payload};
use crate::codec::{Codec, ConnInfo, Frames, Notice, Recipient, Slot};
use crate::delivery::{Delivery, DeliveryKind, Target};
use crate::frontend::phoenix::codec::DEFAULT_EVENT;

/// The chain codec.
pub struct ChainCodec {
    sent: IntCounter,
}

impl ChainCodec {
    pub fn new(sent: IntCounter) -> Self {
        ChainCodec { sent }
    }

    /// The broadcast of `delivery` on `topic`, if it has one (its data must
    /// be JSON, which every publication's is). `positioned`: with the
    /// publication's position as a fifth element,
    /// `[2,topic,event,payload,"<epoch>:<offset>"]` (chain's decoders read
    /// the first four and ignore the rest).
    fn frame(delivery: &Delivery, topic: &str, positioned: bool) -> Option<Utf8Bytes> {
        let payload = Payload::from_json(delivery.data.as_str())?;
        if let Some(p) = delivery.position.as_ref().filter(|_| positioned) {
            let event = delivery.event.as_deref().unwrap_or(DEFAULT_EVENT);
            let raw: &serde_json::value::RawValue = serde_json::from_str(payload.get()).ok()?;
            let at = crate::frontend::phoenix::recover::format(p);
            let text = serde_json::to_string(&(2, topic, event, raw, at)).ok()?;
            return Some(Utf8Bytes::from(text));
        }
        let message = Message::Broadcast {
            topic: topic.to_string(),
            event: delivery
                .event
                .as_deref()
                .unwrap_or(DEFAULT_EVENT)
                .to_string(),
            payload: Some(payload),
        };
        Some(Utf8Bytes::from(message.encode()))
    }
}

impl Codec for ChainCodec {
    fn protocol(&self) -> &'static str {
        "chain"
    }

    fn slot(&self, delivery: &Delivery, to: &Recipient<'_>) -> Slot {
        if delivery.kind != DeliveryKind::Message {
            return Slot::Skip;
        }
        // Topics only: no frame for a user, a client or everyone.
        Slot::for_topic(delivery, to)
    }

    fn encode(&self, delivery: &Delivery, slot: Slot, to: &Recipient<'_>) -> Frames {
        match (slot, &delivery.channel, &delivery.target) {
            (Slot::Shared(n), Some(topic), _) => match Self::frame(delivery, topic, n == 1) {
                Some(frame) => Frames::One(frame),
                None => Frames::None,
            },
            (Slot::Own, None, Target::Channels(topics)) => {
                let Some(member_of) = to.member_of else {
                    return Frames::None;
                };
                Frames::Many(
                    topics
                        .iter()
                        .filter(|t| member_of(t))
                        .filter_map(|t| Self::frame(delivery, t, false))
                        .collect(),
                )
            }
            _ => Frames::None,
        }
    }

    fn sent(&self) -> Option<&IntCounter> {
        Some(&self.sent)
    }

    /// Channels the session may no longer be in: `[0,null,null,topic,"_close"]`
    /// on each (chain's client closes the channel whatever its join ref, and
    /// does not rejoin).
    fn notice(&self, _conn: &ConnInfo<'_>, notice: Notice<'_>) -> Frames {
        match notice {
            Notice::Revoked { channels } => Frames::Many(
                channels
                    .iter()
                    .map(|t| Utf8Bytes::from(revoked(t)))
                    .collect(),
            ),
            Notice::TokenExpired => Frames::None,
        }
    }
}

/// The `_close` push of a revoked topic.
fn revoked(topic: &str) -> String {
    serde_json::to_string(&(0, (), (), topic, "_close")).expect("a close push serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn to() -> Recipient<'static> {
        Recipient {
            client_id: "c",
            positioned: false,
            tag: None,
            member_of: None,
        }
    }

    #[test]
    fn publications_are_positional_broadcasts_and_presence_is_skipped() {
        let codec = ChainCodec::new(IntCounter::new("t", "t").expect("counter"));
        let mut d = Delivery::new(
            Target::Channels(vec!["room:1".into()]),
            Utf8Bytes::from(r#"{"text":"hi"}"#),
        );
        d.channel = Some(Arc::from("room:1"));
        assert_eq!(codec.slot(&d, &to()), Slot::Shared(0));
        assert_eq!(
            codec.encode(&d, Slot::Shared(0), &to()),
            Frames::One(Utf8Bytes::from(r#"[2,"room:1","message",{"text":"hi"}]"#))
        );
        d.event = Some(Arc::from("shout"));
        assert_eq!(
            codec.encode(&d, Slot::Shared(0), &to()),
            Frames::One(Utf8Bytes::from(r#"[2,"room:1","shout",{"text":"hi"}]"#))
        );
        d.kind = DeliveryKind::Join;
        assert_eq!(codec.slot(&d, &to()), Slot::Skip);
        let users = Delivery::new(Target::Users(vec!["u".into()]), Utf8Bytes::from("{}"));
        assert_eq!(codec.slot(&users, &to()), Slot::Skip);
    }
}
