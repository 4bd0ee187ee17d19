//! pubmesh node-to-node wire format.
//!
//! Nodes of a pubmesh cluster talk through Redis pub/sub. Everything they
//! publish is one [`Envelope`], turned into bytes by [`encode`] and back by
//! [`decode`]; [`Topics`] names the Redis channels it travels on, and
//! [`new_client_id`] / [`owner_node`] make and read the client ids that let any
//! node route to the node owning a connection.
//!
//! Modules: `envelope` (the message types and their tags), `codec` (bytes,
//! errors), `borrowed` ([`decode_ref`]: deliveries decoded without copying
//! their names and frame), `topics` (Redis channel names), `ids` (node and
//! client ids).
//!
//! # Format
//!
//! ```text
//! byte 0..2   magic "PM" (0x50 0x4d)
//! byte 2..4   version, u16 big-endian (PROTOCOL_VERSION = 2; 1 still decodes)
//! byte 4      kind tag, u8 (table below)
//! byte 5..    msgpack array [origin: str, seq: uint, sent_at_micros: uint, payload]
//! ```
//!
//! Integers use msgpack's shortest form, structs are msgpack arrays in field
//! order (never maps), byte strings are msgpack `bin`, `None` is `nil`.
//!
//! | tag | kind | payload |
//! |---|---|---|
//! | 0 | (reserved, never sent) | |
//! | 1 | [`Body::Deliver`] | v1: `[targets, frame: bin, exclude_client: str\|nil]`; v2: the same plus `extra` |
//! | 2 | [`Body::Heartbeat`] | `[node_id, started_at_unix, connections, users, channels, subscriptions, api_addr: str\|nil, version, ready: bool]` |
//! | 3 | [`Body::Leaving`] | `[node_id]` |
//! | 4 | [`Body::Disconnect`] | `[[client_id…], [root_id…]]` |
//! | 5 | [`Body::ChannelsRequest`] | `[request_id, reply_to]` |
//! | 6 | [`Body::ChannelsReply`] | `[request_id, [[channel, count]…]]` |
//! | 7 | [`Body::Publication`] | v1: `[channel, frame: bin]`; v2: `[channel, frame: bin, extra]`; then the ASCII tail `OFFSET\nEPOCH\n` |
//! | 8 | [`Body::Batch`] | `[envelope: bin…]`: complete envelopes (any version, any kind but 8) of the same origin, handled in order |
//! | 9 | [`Body::Interest`] | `[from, to, [added topic…], [removed topic…]]` |
//! | 10 | [`Body::InterestRequest`] | `[node_id]` |
//! | 11 | [`Body::InterestSnapshot`] | `[version, part, last: bool, [topic…]]` |
//! | 12 | [`Body::InterestAck`] | `[[[node_id, version]…]]` |
//!
//!
//! `extra` ([`Extra`], version 2) is `[channel: str|nil, event: str|nil,
//! kind: uint, origin_client: str|nil, audience: bin|nil]`: what a node needs
//! to encode the message for any wire protocol.
//!
//! `targets` is itself tagged: `[1, [channel…]]`, `[2, [user…]]`,
//! `[3, [client_id…]]` or `[4]` (everyone). Tags are explicit numbers in the
//! code ([`Kind`], [`Targets::TAG_CHANNELS`] …) and never change or get reused.
//!
//! # Versioning
//!
//! The version sits at a fixed offset so a node can refuse a peer of another
//! version before looking at the rest: [`decode`] returns
//! [`DecodeError::Version`] instead of guessing. Rules for changing the format:
//!
//! - Version 2 added [`Extra`] to deliveries and publications; [`decode`]
//!   reads both versions (a version 1 envelope decodes with
//!   `Extra::default()`), and [`encode`] writes the layout of the envelope's
//!   own `version`.
//! - Changing the layout of an existing payload (adding, removing, reordering
//!   or retyping a field) requires bumping [`PROTOCOL_VERSION`]; nodes of
//!   different versions then refuse each other's envelopes loudly.
//! - Adding a new kind with a new tag does not: older nodes refuse just that
//!   kind with [`DecodeError::UnknownKind`] and keep understanding the rest,
//!   which allows rolling upgrades when the new kind is optional.
//! - [`Body::Batch`] (tag 8) is such a kind: it only wraps envelopes every
//!   version 2 node reads, so a sender that does not batch speaks exactly the
//!   format of earlier builds (see the relay's `--relay-batch-us 0`).
//! - The interest kinds (tags 9 to 12, [`Body::Interest`] and the rest) are
//!   optional too: a node that never sends them (an older build, or one run
//!   with `--relay-interest-routing false`) never gets a known interest view
//!   at its peers, so every node keeps relaying everything to Redis while it
//!   is in the cluster; an older node refuses them as unknown kinds.
//! - Golden-byte tests pin the encoding of every kind, so an accidental
//!   change fails the build.
//!
//! # Decoding untrusted bytes
//!
//! [`decode`] never panics, refuses inputs over [`MAX_ENVELOPE_BYTES`], checks
//! every length prefix against the bytes actually present, never reserves
//! more than a few dozen elements ahead of those decoded, limits nesting,
//! refuses trailing bytes, checks node ids with [`valid_node_id`], and
//! guarantees a [`Delivery::frame`] is valid UTF-8. [`decode_ref`] reads
//! deliveries (alone or in a batch) without copying: their names, frame and
//! `extra` are slices of the input; it accepts and refuses exactly what
//! [`decode`] does, with the same errors (anything but the usual layout is
//! handed to [`decode`]). A cargo-fuzz target lives
//! in `cluster-proto/fuzz`, outside the workspace: from `cluster-proto/`, run
//! `cargo fuzz run decode` (on a stable toolchain prefix it with
//! `RUSTC_BOOTSTRAP=1`).
//!
//! # Redis channels
//!
//! See [`Topics`]: `{p}.ch.{{channel}}`, `{p}.u.{user}`, `{p}.n.{node}`,
//! `{p}.all`, `{p}.ctl`, with the prefix `p` defaulting to `pubmesh`. With
//! Redis Cluster sharded pub/sub the names are used as-is, so each channel
//! name gets its own hash slot.
//!
//! # Example
//!
//! ```
//! use pubmesh_cluster_proto::{decode, encode, Body, Delivery, Envelope, Targets, Topics};
//!
//! let env = Envelope::new(
//!     "n1",
//!     7,
//!     Body::Deliver(Delivery {
//!         targets: Targets::Channels(vec!["news".into()]),
//!         frame: bytes::Bytes::from_static(br#"{"type":"channel","data":{}}"#),
//!         exclude_client: None,
//!         extra: Default::default(),
//!     }),
//! );
//! let topic = Topics::default().channel("news"); // "pubmesh.ch.{news}"
//! let wire = encode(&env);
//! assert_eq!(decode(&wire).unwrap(), env);
//! # assert_eq!(topic, "pubmesh.ch.{news}");
//! ```

mod borrowed;
mod codec;
mod envelope;
mod ids;
mod topics;

pub use borrowed::{decode_ref, peek_origin, Decoded, DeliverRef, Names, TargetsView};
pub use codec::{
    batch_overhead, decode, encode, encode_batch, encode_deliver, encode_publication_head,
    peek_kind, DecodeError, ExtraRef, TargetsRef, BATCH_ITEM_OVERHEAD, HEADER_LEN, MAGIC,
    MAX_ENVELOPE_BYTES,
};
pub use envelope::{
    now_micros, Body, Delivery, Envelope, Extra, Kind, NodeInfo, Targets, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
pub use ids::{
    channel_owner, new_client_id, owner_node, valid_client_id, valid_node_id, MAX_NODE_ID_LEN,
};
pub use topics::{TopicKind, Topics};

#[cfg(test)]
mod tests;
