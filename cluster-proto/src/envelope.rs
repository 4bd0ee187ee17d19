//! The messages nodes exchange, and their stable numeric tags.

use std::fmt;
use std::marker::PhantomData;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

/// The wire format version this build speaks. Written in bytes 2..4 of every
/// envelope; a different value is refused by [`decode`](crate::decode).
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest wire format version this build still decodes. Version 1
/// deliveries and publications carry no [`Extra`]; they decode with
/// [`Extra::default`] (a plain message without event name or origin).
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// One message from one node to its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Wire format version; [`PROTOCOL_VERSION`] for everything this build
    /// sends. After a decode, the version the sender wrote (between
    /// [`MIN_PROTOCOL_VERSION`] and [`PROTOCOL_VERSION`]); encoding an
    /// envelope of version 1 writes the version 1 layout.
    pub version: u16,
    /// Node id of the sender. A node ignores envelopes it originated.
    pub origin: String,
    /// Per-origin sequence number, incremented for every envelope published,
    /// so receivers can count gaps and reorderings per peer.
    pub seq: u64,
    /// Sender's wall clock at publish time, in microseconds since the Unix
    /// epoch; the receiver's `now - sent_at_micros` is the cross-node latency
    /// (meaningful as long as node clocks are synchronised).
    pub sent_at_micros: u64,
    /// What the message says.
    pub body: Body,
}

impl Envelope {
    /// An envelope of the current version stamped with the current time.
    pub fn new(origin: impl Into<String>, seq: u64, body: Body) -> Self {
        Envelope {
            version: PROTOCOL_VERSION,
            origin: origin.into(),
            seq,
            sent_at_micros: now_micros(),
            body,
        }
    }

    /// Microseconds between sending and `now_micros` (0 if the clocks disagree
    /// so much that the envelope appears to come from the future).
    pub fn age_micros(&self, now_micros: u64) -> u64 {
        now_micros.saturating_sub(self.sent_at_micros)
    }
}

/// Current wall-clock time in microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The payload of an [`Envelope`]. Its [`Kind`] tag is written in byte 4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Deliver a message to local connections: protocol-neutral data that
    /// each node encodes for its own connections' wire protocols.
    Deliver(Delivery),
    /// Periodic liveness and load report of a node (published on `{p}.ctl`).
    Heartbeat(NodeInfo),
    /// A node announcing a clean shutdown; peers forget it at once instead of
    /// waiting for its heartbeats to expire.
    Leaving {
        /// The node that is leaving.
        node_id: String,
    },
    /// Close these connections wherever they are (close code 4002).
    Disconnect {
        /// Connections to close, by client id.
        client_ids: Vec<String>,
        /// Users whose every connection is closed, by root id.
        root_ids: Vec<String>,
    },
    /// Cluster-wide channel listing: every peer answers with a
    /// [`Body::ChannelsReply`] published on `reply_to`.
    ChannelsRequest {
        /// Chosen by the requester to match replies to the request.
        request_id: u64,
        /// Redis channel to answer on; normally the requester's
        /// [`Topics::node`](crate::Topics::node) topic.
        reply_to: String,
    },
    /// One peer's answer to a [`Body::ChannelsRequest`]. The answering node is
    /// the envelope's `origin`.
    ChannelsReply {
        /// Copied from the request.
        request_id: u64,
        /// `(channel, local subscriber count)` for every channel with members
        /// on the answering node.
        channels: Vec<(String, u64)>,
    },
    /// A publication to a history channel with its position. Published by the
    /// history store's append script, which writes the position as an ASCII
    /// tail `OFFSET\nEPOCH\n` after the msgpack payload (see
    /// [`encode_publication_head`](crate::encode_publication_head)), so the
    /// offset Redis assigns travels in the same atomic step.
    Publication {
        /// The channel.
        channel: String,
        /// The `data` object's JSON text (valid UTF-8).
        frame: Bytes,
        /// Position in the channel's history.
        offset: u64,
        /// History epoch the offset belongs to.
        epoch: String,
        /// Event name, origin and audience (version 2; default for version 1).
        extra: Extra,
    },
    /// Several envelopes of one origin that travel in one Redis command on
    /// one topic, in the order the receiver handles them. Each keeps its own
    /// sequence number, time and kind; a batch never holds a batch, and
    /// every envelope in it has the batch's origin.
    Batch(Vec<Envelope>),
    /// A change of the sender's interest: the channel and user topics its
    /// subscriber started (`added`) or stopped (`removed`) listening to,
    /// taking its interest from version `from` to version `to` (published on
    /// `{p}.ctl`, in order with the sender's other control envelopes). With
    /// `from == to` and nothing added or removed it is a beacon: the
    /// sender's current version, sent with every heartbeat so a peer that
    /// missed a change notices.
    Interest {
        /// The version this change applies to.
        from: u64,
        /// The version after it.
        to: u64,
        /// Topics now listened to.
        added: Vec<String>,
        /// Topics no longer listened to.
        removed: Vec<String>,
    },
    /// Ask `node_id` for its whole interest ([`Body::InterestSnapshot`]).
    InterestRequest {
        /// The node whose interest is asked for.
        node_id: String,
    },
    /// One part of the sender's whole interest at `version`; parts come in
    /// order, `part` counting from 0, the last with `last` set.
    InterestSnapshot {
        /// The interest version the parts describe.
        version: u64,
        /// Index of this part.
        part: u32,
        /// Whether this is the last part.
        last: bool,
        /// Topics of this part.
        topics: Vec<String>,
    },
    /// `(node, version)`: the sender has applied `node`'s interest up to
    /// `version`; every publish it decides from now on takes it into account.
    InterestAck {
        /// One entry per acknowledged node.
        acks: Vec<(String, u64)>,
    },
}

impl Body {
    /// The stable tag of this body.
    pub fn kind(&self) -> Kind {
        match self {
            Body::Deliver(_) => Kind::Deliver,
            Body::Heartbeat(_) => Kind::Heartbeat,
            Body::Leaving { .. } => Kind::Leaving,
            Body::Disconnect { .. } => Kind::Disconnect,
            Body::ChannelsRequest { .. } => Kind::ChannelsRequest,
            Body::ChannelsReply { .. } => Kind::ChannelsReply,
            Body::Publication { .. } => Kind::Publication,
            Body::Batch(_) => Kind::Batch,
            Body::Interest { .. } => Kind::Interest,
            Body::InterestRequest { .. } => Kind::InterestRequest,
            Body::InterestSnapshot { .. } => Kind::InterestSnapshot,
            Body::InterestAck { .. } => Kind::InterestAck,
        }
    }
}

/// Stable numeric tag of a [`Body`] variant, written in byte 4 of an envelope.
///
/// These numbers never change and are never reused. Tag 0 is reserved so that
/// zeroed memory never decodes as a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// [`Body::Deliver`]
    Deliver = 1,
    /// [`Body::Heartbeat`]
    Heartbeat = 2,
    /// [`Body::Leaving`]
    Leaving = 3,
    /// [`Body::Disconnect`]
    Disconnect = 4,
    /// [`Body::ChannelsRequest`]
    ChannelsRequest = 5,
    /// [`Body::ChannelsReply`]
    ChannelsReply = 6,
    /// [`Body::Publication`]
    Publication = 7,
    /// [`Body::Batch`]
    Batch = 8,
    /// [`Body::Interest`]
    Interest = 9,
    /// [`Body::InterestRequest`]
    InterestRequest = 10,
    /// [`Body::InterestSnapshot`]
    InterestSnapshot = 11,
    /// [`Body::InterestAck`]
    InterestAck = 12,
}

impl Kind {
    /// Every kind, in tag order.
    pub const ALL: [Kind; 12] = [
        Kind::Deliver,
        Kind::Heartbeat,
        Kind::Leaving,
        Kind::Disconnect,
        Kind::ChannelsRequest,
        Kind::ChannelsReply,
        Kind::Publication,
        Kind::Batch,
        Kind::Interest,
        Kind::InterestRequest,
        Kind::InterestSnapshot,
        Kind::InterestAck,
    ];

    /// The tag written on the wire.
    pub fn tag(self) -> u8 {
        self as u8
    }

    /// The kind with this tag, if any.
    pub fn from_tag(tag: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.tag() == tag)
    }

    /// A short snake_case name, suitable as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deliver => "deliver",
            Kind::Heartbeat => "heartbeat",
            Kind::Leaving => "leaving",
            Kind::Disconnect => "disconnect",
            Kind::ChannelsRequest => "channels_request",
            Kind::ChannelsReply => "channels_reply",
            Kind::Publication => "publication",
            Kind::Batch => "batch",
            Kind::Interest => "interest",
            Kind::InterestRequest => "interest_request",
            Kind::InterestSnapshot => "interest_snapshot",
            Kind::InterestAck => "interest_ack",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message to hand to local connections.
///
/// Version 1 encodes the msgpack array `[targets, frame, exclude_client]`;
/// version 2 appends [`Extra`]: `[targets, frame, exclude_client, extra]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Who receives the message.
    pub targets: Targets,
    /// The message data: for JSON protocols the payload's UTF-8 JSON text
    /// (for the native protocol, the complete client frame).
    /// [`decode`](crate::decode) guarantees it is valid UTF-8.
    pub frame: Bytes,
    /// A connection that must not receive the message (typically the publisher).
    pub exclude_client: Option<String>,
    /// Channel, event name, kind, origin and audience (version 2).
    pub extra: Extra,
}

/// What version 2 adds to a delivery or publication, so that each node can
/// encode it for any wire protocol: the msgpack array
/// `[channel, event, kind, origin_client, audience]`, followed by
/// `idempotency` when the publish carried a key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extra {
    /// The channel, when the message was published to exactly one channel.
    pub channel: Option<String>,
    /// The event name, for protocols that name events (Phoenix, Socket.IO).
    pub event: Option<String>,
    /// 0: a message; 1: a presence join; 2: a presence leave.
    pub kind: u8,
    /// Client id of the publishing connection (None for the server API).
    pub origin_client: Option<String>,
    /// Opaque per-message audience or metadata (e.g. claims a receiving
    /// session filters on); pubmesh carries it unread.
    pub audience: Option<Bytes>,
    /// The publisher's scoped idempotency key, when the publish carried one:
    /// a receiver delivers each key once. Written only when present (a sixth
    /// element), so envelopes without one are byte for byte those of
    /// earlier builds, and their five-element `Extra` decodes with `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<String>,
}

/// The recipients of a [`Delivery`].
///
/// Encoded as a msgpack array whose first element is the stable tag:
/// `[1, [channel…]]`, `[2, [user…]]`, `[3, [client id…]]` or `[4]`.
/// When several channels or users are named, each connection still receives
/// the frame at most once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// Members of these channels. Tag 1.
    Channels(Vec<String>),
    /// Connections of these users (root ids). Tag 2.
    Users(Vec<String>),
    /// These connections, by client id. Tag 3.
    Clients(Vec<String>),
    /// Every connection. Tag 4.
    All,
}

impl Targets {
    /// Wire tag of [`Targets::Channels`].
    pub const TAG_CHANNELS: u8 = 1;
    /// Wire tag of [`Targets::Users`].
    pub const TAG_USERS: u8 = 2;
    /// Wire tag of [`Targets::Clients`].
    pub const TAG_CLIENTS: u8 = 3;
    /// Wire tag of [`Targets::All`].
    pub const TAG_ALL: u8 = 4;

    /// The stable tag of this variant.
    pub fn tag(&self) -> u8 {
        match self {
            Targets::Channels(_) => Self::TAG_CHANNELS,
            Targets::Users(_) => Self::TAG_USERS,
            Targets::Clients(_) => Self::TAG_CLIENTS,
            Targets::All => Self::TAG_ALL,
        }
    }
}

impl Serialize for Targets {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Targets::Channels(names) | Targets::Users(names) | Targets::Clients(names) => {
                let mut t = serializer.serialize_tuple(2)?;
                t.serialize_element(&self.tag())?;
                t.serialize_element(names)?;
                t.end()
            }
            Targets::All => {
                let mut t = serializer.serialize_tuple(1)?;
                t.serialize_element(&self.tag())?;
                t.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Targets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TargetsVisitor;

        impl<'de> Visitor<'de> for TargetsVisitor {
            type Value = Targets;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a targets array [tag, names] or [4]")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Targets, A::Error> {
                let tag: u8 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let names = |seq: &mut A| -> Result<Vec<String>, A::Error> {
                    seq.next_element::<BoundedVec<String>>()?
                        .map(|v| v.0)
                        .ok_or_else(|| {
                            de::Error::invalid_length(1, &"a targets array [tag, names]")
                        })
                };
                match tag {
                    Targets::TAG_CHANNELS => Ok(Targets::Channels(names(&mut seq)?)),
                    Targets::TAG_USERS => Ok(Targets::Users(names(&mut seq)?)),
                    Targets::TAG_CLIENTS => Ok(Targets::Clients(names(&mut seq)?)),
                    Targets::TAG_ALL => Ok(Targets::All),
                    other => Err(de::Error::invalid_value(
                        de::Unexpected::Unsigned(other.into()),
                        &"a targets tag 1..=4",
                    )),
                }
            }
        }

        deserializer.deserialize_seq(TargetsVisitor)
    }
}

/// A node's liveness and load report, sent in [`Body::Heartbeat`].
///
/// Encoded as the msgpack array `[node_id, started_at_unix, connections,
/// users, channels, subscriptions, api_addr, version, ready]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The reporting node.
    pub node_id: String,
    /// When the node started, in seconds since the Unix epoch (uptime = now - this).
    pub started_at_unix: u64,
    /// Open client connections.
    pub connections: u64,
    /// Distinct users with at least one connection.
    pub users: u64,
    /// Channels with at least one local member.
    pub channels: u64,
    /// (connection, channel) memberships.
    pub subscriptions: u64,
    /// Address where the node serves its HTTP API, if it advertises one.
    pub api_addr: Option<String>,
    /// The node's software version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Whether the node reports itself ready (false while draining).
    pub ready: bool,
}

/// Largest number of elements reserved up front for a decoded sequence; beyond
/// this a vector grows only as elements are actually decoded, so a forged
/// length prefix cannot make the decoder allocate more than the input holds.
const PREALLOC_LIMIT: usize = 64;

/// A `Vec` whose deserialisation never trusts the declared length for more
/// than [`PREALLOC_LIMIT`] elements.
pub(crate) struct BoundedVec<T>(pub(crate) Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for BoundedVec<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SeqVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
            type Value = BoundedVec<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(PREALLOC_LIMIT));
                while let Some(item) = seq.next_element()? {
                    out.push(item);
                }
                Ok(BoundedVec(out))
            }
        }

        deserializer.deserialize_seq(SeqVisitor(PhantomData))
    }
}
