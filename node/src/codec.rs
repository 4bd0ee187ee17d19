//! Codecs: how a [`Delivery`] becomes frames for one wire protocol.
//!
//! Every connection has a codec, chosen by its front-end when the connection
//! opens. The fan-out asks each recipient's codec for a [`Slot`]: recipients
//! with the same codec instance and the same shared slot receive the same
//! frames, encoded once per delivery ([`EncodeCache`]). So "serialize once"
//! holds per protocol (and per variant of it, such as a Socket.IO namespace,
//! which gets its own codec instance). A codec may also refuse a delivery for
//! a connection ([`Slot::Skip`]) or encode it for that connection alone
//! ([`Slot::Own`]), which is where per-session filtering goes. Between the
//! two, [`Slot::Spliced`] prepares what recipients share once per delivery
//! and finishes it per recipient (a per-connection field spliced into
//! frames encoded once).

use std::any::Any;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::delivery::{Delivery, Target};

/// Per-connection data a front-end attaches for its codec (e.g. a Cells
/// session's claims), read back by downcasting in [`Codec::slot`].
pub type Tag = Arc<dyn Any + Send + Sync>;

/// What a codec may know about one recipient of a delivery.
#[derive(Clone, Copy)]
pub struct Recipient<'a> {
    /// The connection's client id.
    pub client_id: &'a str,
    /// True when the delivery has a position and this connection asked for
    /// positions on the channel (the enveloped form, with offsets).
    pub positioned: bool,
    /// The connection's tag; filled in only for deliveries that carry an
    /// audience (so the fan-out of every other delivery never reads it).
    pub tag: Option<&'a Tag>,
    /// Is the connection a member of this channel? (For protocols that
    /// frame a publication to several channels once per joined channel;
    /// `None` where the connection's state is locked. Takes a lock: call it
    /// only for such deliveries.)
    pub member_of: Option<&'a dyn Fn(&str) -> bool>,
}

impl std::fmt::Debug for Recipient<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recipient")
            .field("client_id", &self.client_id)
            .field("positioned", &self.positioned)
            .field("tag", &self.tag.is_some())
            .finish()
    }
}

/// Which encoding a recipient gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Shared by every recipient with the same codec instance and number:
    /// encoded once per delivery. `encode` must then depend only on the
    /// delivery and the number.
    Shared(u32),
    /// Encoded for this recipient alone (per-session filtering or framing).
    Own,
    /// Finished for this recipient alone ([`Codec::finish`]) from what was
    /// prepared once per delivery for every recipient with the same codec
    /// instance and number ([`Codec::prepare`]): for frames that differ
    /// between recipients only in a part spliced in. `encode` with this
    /// slot must give what preparing and finishing for `to` gives (for
    /// callers that encode for one connection).
    Spliced(u32),
    /// Not sent to this recipient.
    Skip,
}

impl Slot {
    /// The slot of a topic-framed protocol (Phoenix, chain): a publication
    /// to a channel is shared by every member, in its positioned form
    /// (`Shared(1)`) for members that receive positions on a history
    /// channel; a multi-channel publication is framed per member (`Own`,
    /// one frame per topic it joined); anything else has no frame.
    pub fn for_topic(delivery: &Delivery, to: &Recipient<'_>) -> Slot {
        match (&delivery.target, &delivery.channel) {
            (Target::Channels(_), Some(_)) if to.positioned && delivery.position.is_some() => {
                Slot::Shared(1)
            }
            (Target::Channels(_), Some(_)) => Slot::Shared(0),
            (Target::Channels(_), None) => Slot::Own,
            _ => Slot::Skip,
        }
    }
}

/// The frames one encoding produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frames {
    None,
    One(Utf8Bytes),
    /// Several frames, in order (e.g. one per matching workspace).
    Many(Vec<Utf8Bytes>),
}

impl Frames {
    /// Every frame, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Utf8Bytes> + Clone {
        let (one, many): (Option<&Utf8Bytes>, &[Utf8Bytes]) = match self {
            Frames::None => (None, &[]),
            Frames::One(f) => (Some(f), &[]),
            Frames::Many(v) => (None, v.as_slice()),
        };
        one.into_iter().chain(many.iter())
    }
}

/// What a codec prepared for a [`Slot::Spliced`] slot of one delivery,
/// handed back to it for each recipient of that slot. The codec may keep
/// scratch state there (what it finished last, say): one delivery's
/// fan-out runs on one thread.
pub type Prepared = Box<dyn Any + Send>;

/// Something the node tells a connection outside any delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice<'a> {
    /// The connection's token expired and it is now anonymous.
    TokenExpired,
    /// The connection's identity changed (a new token, or its token
    /// expired) and may no longer be in these channels: it left them, and
    /// nothing published there reaches it after this notice.
    Revoked { channels: &'a [String] },
}

/// What a codec may read about its connection for a [`Notice`].
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo<'a> {
    pub client_id: &'a str,
    pub root_id: &'a str,
    /// The native protocol's fixed channel; empty for other protocols.
    pub home: &'a str,
}

/// A wire protocol's encoding of deliveries.
pub trait Codec: Send + Sync + 'static {
    /// Short protocol name, for logs and metrics ("native", "phoenix", …).
    fn protocol(&self) -> &'static str;

    /// Which encoding `to` receives (default: one shared encoding).
    fn slot(&self, _delivery: &Delivery, _to: &Recipient<'_>) -> Slot {
        Slot::Shared(0)
    }

    /// Encode `delivery` for `slot` (for [`Slot::Shared`], `to` is just the
    /// first recipient of that slot and must not change the result).
    fn encode(&self, delivery: &Delivery, slot: Slot, to: &Recipient<'_>) -> Frames;

    /// Prepare `delivery` for [`Slot::Spliced`] slot `n`, once per
    /// delivery (must depend only on the delivery and `n`). Only codecs
    /// that return that slot need it.
    fn prepare(&self, _delivery: &Delivery, _n: u32) -> Prepared {
        Box::new(())
    }

    /// The frames of `delivery` for `to`, from what [`Codec::prepare`]
    /// made of it (default: as for [`Slot::Own`]).
    fn finish(&self, delivery: &Delivery, _prepared: &mut Prepared, to: &Recipient<'_>) -> Frames {
        self.encode(delivery, Slot::Own, to)
    }

    /// May `delivery` be dropped for this codec's connections when their
    /// outbox is behind, rather than queued (a Socket.IO `volatile` emit)?
    /// Asked only for deliveries that carry an audience.
    fn droppable(&self, _delivery: &Delivery) -> bool {
        false
    }

    /// The frames telling the connection about a node event, if this
    /// protocol has any.
    fn notice(&self, _conn: &ConnInfo<'_>, _notice: Notice<'_>) -> Frames {
        Frames::None
    }

    /// A counter of frames queued to this codec's connections (per
    /// front-end metrics), if the protocol keeps one.
    fn sent(&self) -> Option<&prometheus::IntCounter> {
        None
    }
}

/// One encoding of a delivery kept for the next recipients of its slot.
enum Entry {
    Shared(Frames),
    Spliced(Prepared),
}

/// Encodings of one delivery made so far, by (codec instance, slot). The
/// first is kept inline: most deliveries have recipients of one encoding
/// only, and a fan-out then allocates nothing for its cache.
#[derive(Default)]
pub struct EncodeCache {
    first: Option<(usize, Slot, Entry)>,
    others: Vec<(usize, Slot, Entry)>,
}

impl EncodeCache {
    /// The frames for `to`, encoding them only when no recipient with the
    /// same codec and shared slot was encoded before (for a spliced slot:
    /// preparing once, finishing for each recipient). `None` for a skip.
    pub fn frames(
        &mut self,
        codec: &Arc<dyn Codec>,
        delivery: &Delivery,
        to: &Recipient<'_>,
    ) -> Option<Frames> {
        let slot = codec.slot(delivery, to);
        let key = Arc::as_ptr(codec) as *const () as usize;
        let found = self
            .first
            .iter_mut()
            .chain(self.others.iter_mut())
            .find(|(k, s, _)| *k == key && *s == slot);
        match (slot, found) {
            (Slot::Skip, _) => None,
            (Slot::Own, _) => Some(codec.encode(delivery, Slot::Own, to)),
            (_, Some((_, _, Entry::Shared(frames)))) => Some(frames.clone()),
            (_, Some((_, _, Entry::Spliced(prepared)))) => {
                Some(codec.finish(delivery, prepared, to))
            }
            (Slot::Shared(n), None) => {
                let frames = codec.encode(delivery, Slot::Shared(n), to);
                self.keep((key, slot, Entry::Shared(frames.clone())));
                Some(frames)
            }
            (Slot::Spliced(n), None) => {
                let mut prepared = codec.prepare(delivery, n);
                let frames = codec.finish(delivery, &mut prepared, to);
                self.keep((key, slot, Entry::Spliced(prepared)));
                Some(frames)
            }
        }
    }

    fn keep(&mut self, entry: (usize, Slot, Entry)) {
        if self.first.is_none() {
            self.first = Some(entry);
        } else {
            self.others.push(entry);
        }
    }

    /// How many distinct encodings were made (for tests and metrics).
    pub fn encodings(&self) -> usize {
        usize::from(self.first.is_some()) + self.others.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Target;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize, &'static str);

    impl Codec for Counting {
        fn protocol(&self) -> &'static str {
            "counting"
        }
        fn slot(&self, _: &Delivery, to: &Recipient<'_>) -> Slot {
            match to.client_id {
                "skip" => Slot::Skip,
                "own" => Slot::Own,
                _ => Slot::Shared(0),
            }
        }
        fn encode(&self, d: &Delivery, _: Slot, _: &Recipient<'_>) -> Frames {
            self.0.fetch_add(1, Ordering::Relaxed);
            Frames::One(Utf8Bytes::from(format!("{}{}", self.1, d.data.as_str())))
        }
    }

    /// Prepares once, and finishes with the recipient's id spliced in.
    struct Splicing(AtomicUsize);

    impl Codec for Splicing {
        fn protocol(&self) -> &'static str {
            "splicing"
        }
        fn slot(&self, _: &Delivery, _: &Recipient<'_>) -> Slot {
            Slot::Spliced(0)
        }
        fn encode(&self, _: &Delivery, _: Slot, _: &Recipient<'_>) -> Frames {
            Frames::None
        }
        fn prepare(&self, d: &Delivery, _: u32) -> Prepared {
            self.0.fetch_add(1, Ordering::Relaxed);
            Box::new(format!("[{}", d.data.as_str()))
        }
        fn finish(&self, _: &Delivery, prepared: &mut Prepared, to: &Recipient<'_>) -> Frames {
            let head = prepared.downcast_ref::<String>().expect("prepared here");
            Frames::One(Utf8Bytes::from(format!("{head},{}]", to.client_id)))
        }
    }

    #[test]
    fn a_spliced_slot_is_prepared_once_and_finished_per_recipient() {
        let c = Arc::new(Splicing(AtomicUsize::new(0)));
        let codec: Arc<dyn Codec> = c.clone();
        let d = Delivery::new(Target::All, Utf8Bytes::from("1"));
        let mut cache = EncodeCache::default();
        for id in ["a", "b", "c"] {
            let to = Recipient {
                client_id: id,
                positioned: false,
                tag: None,
                member_of: None,
            };
            let f = cache.frames(&codec, &d, &to).expect("sent");
            assert_eq!(f, Frames::One(Utf8Bytes::from(format!("[1,{id}]"))));
        }
        assert_eq!(c.0.load(Ordering::Relaxed), 1);
        assert_eq!(cache.encodings(), 1);
    }

    #[test]
    fn each_codec_encodes_once_per_shared_slot() {
        let ca = Arc::new(Counting(AtomicUsize::new(0), "a:"));
        let cb = Arc::new(Counting(AtomicUsize::new(0), "b:"));
        let (a, b): (Arc<dyn Codec>, Arc<dyn Codec>) = (ca.clone(), cb.clone());
        let d = Delivery::new(Target::All, Utf8Bytes::from("{}"));
        let mut cache = EncodeCache::default();
        let to = |id| Recipient {
            client_id: id,
            positioned: false,
            tag: None,
            member_of: None,
        };
        for id in ["1", "2", "3"] {
            let f = cache.frames(&a, &d, &to(id)).expect("sent");
            assert_eq!(f, Frames::One(Utf8Bytes::from("a:{}")));
            cache.frames(&b, &d, &to(id)).expect("sent");
        }
        assert!(cache.frames(&a, &d, &to("skip")).is_none());
        cache.frames(&a, &d, &to("own")).expect("sent");
        cache.frames(&a, &d, &to("own")).expect("sent");
        assert_eq!(cache.encodings(), 2);
        assert_eq!(ca.0.load(Ordering::Relaxed), 3, "1 shared + 2 own");
        assert_eq!(cb.0.load(Ordering::Relaxed), 1);
    }
}
