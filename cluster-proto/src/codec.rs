//! Turning an [`Envelope`] into bytes and back.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::envelope::{
    Body, BoundedVec, Delivery, Envelope, Extra, Kind, NodeInfo, Targets, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use crate::ids::valid_node_id;

/// First two bytes of every envelope.
pub const MAGIC: [u8; 2] = *b"PM";

/// Length of the fixed header: magic (2), version (2, big-endian), kind (1).
pub const HEADER_LEN: usize = 5;

/// Largest envelope [`decode`] accepts. Publishers should not send more.
pub const MAX_ENVELOPE_BYTES: usize = 16 * 1024 * 1024;

/// Deepest msgpack nesting [`decode`] follows. The deepest valid envelope
/// nests 4 levels; the limit only has to stop hostile input from recursing.
const MAX_DEPTH: usize = 16;

/// Why bytes could not be decoded into an [`Envelope`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Longer than [`MAX_ENVELOPE_BYTES`].
    #[error("envelope of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Input length.
        len: usize,
        /// [`MAX_ENVELOPE_BYTES`].
        max: usize,
    },
    /// Shorter than the fixed header.
    #[error("truncated envelope: {len} bytes, the header alone is {HEADER_LEN}")]
    Truncated {
        /// Input length.
        len: usize,
    },
    /// The first two bytes are not [`MAGIC`]: not a pubmesh envelope at all.
    #[error("not a pubmesh envelope (first bytes {got:02x?})")]
    BadMagic {
        /// The first two bytes found.
        got: [u8; 2],
    },
    /// A pubmesh envelope of a wire format version this build does not read
    /// (a peer running an incompatible build).
    #[error("pubmesh protocol version mismatch: got {got}, expected {expected}")]
    Version {
        /// Version found in the header.
        got: u16,
        /// [`PROTOCOL_VERSION`] (versions from [`MIN_PROTOCOL_VERSION`] on decode).
        expected: u16,
    },
    /// A kind tag this build does not know (a newer peer's message).
    #[error("unknown envelope kind tag {tag}")]
    UnknownKind {
        /// The tag found in byte 4.
        tag: u8,
    },
    /// The msgpack part does not have the layout of its kind.
    #[error("malformed {kind} envelope: {reason}")]
    Malformed {
        /// Kind named in the header.
        kind: Kind,
        /// What the msgpack decoder objected to.
        reason: String,
    },
    /// Bytes left over after a complete envelope.
    #[error("{len} unexpected bytes after a {kind} envelope")]
    TrailingBytes {
        /// Kind named in the header.
        kind: Kind,
        /// How many bytes were left.
        len: usize,
    },
    /// `origin` or a node id inside the body fails [`valid_node_id`].
    #[error("invalid node id in a {kind} envelope")]
    InvalidNodeId {
        /// Kind named in the header.
        kind: Kind,
    },
    /// A delivery frame that is not valid UTF-8 (frames are JSON text).
    #[error("delivery frame is not valid UTF-8")]
    FrameNotUtf8,
}

/// Encodes `envelope`: the 5-byte header, then the msgpack array
/// `[origin, seq, sent_at_micros, payload]`.
///
/// The header carries `envelope.version` as given, so an envelope built with
/// another version encodes but is refused by [`decode`]. Encoding never fails;
/// callers that relay untrusted sizes should compare the result's length with
/// [`MAX_ENVELOPE_BYTES`] before publishing.
pub fn encode(envelope: &Envelope) -> Bytes {
    let mut buf = Vec::with_capacity(HEADER_LEN + size_estimate(envelope));
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&envelope.version.to_be_bytes());
    buf.push(envelope.body.kind().tag());
    let head = (
        envelope.origin.as_str(),
        envelope.seq,
        envelope.sent_at_micros,
    );
    let v1 = envelope.version == 1;
    match &envelope.body {
        Body::Deliver(d) => {
            let frame = serde_bytes_ref(&d.frame);
            if v1 {
                write_payload(&mut buf, head, (&d.targets, frame, &d.exclude_client))
            } else {
                write_payload(
                    &mut buf,
                    head,
                    (&d.targets, frame, &d.exclude_client, &d.extra),
                )
            }
        }
        Body::Heartbeat(info) => write_payload(&mut buf, head, info),
        Body::Leaving { node_id } => write_payload(&mut buf, head, (node_id,)),
        Body::Disconnect {
            client_ids,
            root_ids,
        } => write_payload(&mut buf, head, (client_ids, root_ids)),
        Body::ChannelsRequest {
            request_id,
            reply_to,
        } => write_payload(&mut buf, head, (request_id, reply_to)),
        Body::ChannelsReply {
            request_id,
            channels,
        } => write_payload(&mut buf, head, (request_id, channels)),
        Body::Publication {
            channel,
            frame,
            offset,
            epoch,
            extra,
        } => {
            if v1 {
                write_payload(&mut buf, head, (channel, serde_bytes_ref(frame)));
            } else {
                write_payload(&mut buf, head, (channel, serde_bytes_ref(frame), extra));
            }
            push_position(&mut buf, *offset, epoch);
        }
        Body::Batch(parts) => {
            let parts: Vec<Bytes> = parts.iter().map(encode).collect();
            write_payload(&mut buf, head, parts_ref(&parts));
        }
        Body::Interest {
            from,
            to,
            added,
            removed,
        } => write_payload(&mut buf, head, (from, to, added, removed)),
        Body::InterestRequest { node_id } => write_payload(&mut buf, head, (node_id,)),
        Body::InterestSnapshot {
            version,
            part,
            last,
            topics,
        } => write_payload(&mut buf, head, (version, part, last, topics)),
        Body::InterestAck { acks } => write_payload(&mut buf, head, (acks,)),
    }
    Bytes::from(buf)
}

/// The recipients of a delivery for [`encode_deliver`]: one name (the
/// common case, written as `[tag, [name]]` without building a list), or
/// any [`Targets`].
#[derive(Clone, Copy, Debug)]
pub enum TargetsRef<'a> {
    /// One channel ([`Targets::TAG_CHANNELS`]), user or client id, by tag.
    One(u8, &'a str),
    /// Whatever a [`Targets`] names.
    Whole(&'a Targets),
}

impl Serialize for TargetsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TargetsRef::One(tag, name) => (tag, [name]).serialize(s),
            TargetsRef::Whole(targets) => targets.serialize(s),
        }
    }
}

/// [`Extra`] borrowed, for [`encode_deliver`]: written exactly as the
/// owned one (five elements, a sixth only with an idempotency key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraRef<'a> {
    pub channel: Option<&'a str>,
    pub event: Option<&'a str>,
    pub kind: u8,
    pub origin_client: Option<&'a str>,
    pub audience: Option<&'a [u8]>,
    pub idempotency: Option<&'a str>,
}

impl<'a> From<&'a Extra> for ExtraRef<'a> {
    fn from(extra: &'a Extra) -> Self {
        ExtraRef {
            channel: extra.channel.as_deref(),
            event: extra.event.as_deref(),
            kind: extra.kind,
            origin_client: extra.origin_client.as_deref(),
            audience: extra.audience.as_deref(),
            idempotency: extra.idempotency.as_deref(),
        }
    }
}

impl Serialize for ExtraRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let audience = self.audience.map(BinRef);
        let five = (
            self.channel,
            self.event,
            self.kind,
            self.origin_client,
            audience,
        );
        match self.idempotency {
            None => five.serialize(s),
            Some(key) => (five.0, five.1, five.2, five.3, five.4, key).serialize(s),
        }
    }
}

/// A current-version [`Body::Deliver`] envelope (no `exclude_client`) from
/// borrowed parts: the bytes [`encode`] writes for the owned envelope with
/// the same fields, without copying names, ids or the frame into one first.
pub fn encode_deliver(
    origin: &str,
    seq: u64,
    targets: TargetsRef<'_>,
    frame: &[u8],
    extra: &ExtraRef<'_>,
) -> Bytes {
    let names = match targets {
        TargetsRef::One(_, name) => name.len() + 5,
        TargetsRef::Whole(_) => 64,
    };
    let text = |s: Option<&str>| s.map_or(0, str::len);
    let mut buf = header(
        Kind::Deliver,
        48 + origin.len()
            + names
            + frame.len()
            + 16
            + text(extra.channel)
            + text(extra.event)
            + text(extra.origin_client)
            + extra.audience.map_or(0, <[u8]>::len)
            + text(extra.idempotency),
    );
    write_payload(
        &mut buf,
        (origin, seq, crate::now_micros()),
        (targets, BinRef(frame), None::<&str>, extra),
    );
    Bytes::from(buf)
}

/// A [`Body::Batch`] envelope from envelopes already encoded (each one of
/// `origin`, none a batch): the bytes [`encode`] writes for the batch of
/// their decoded forms, without decoding them.
pub fn encode_batch(origin: &str, seq: u64, parts: &[Bytes]) -> Bytes {
    let inner: usize = parts.iter().map(|p| p.len() + 5).sum();
    let mut buf = header(Kind::Batch, 32 + origin.len() + inner);
    write_payload(
        &mut buf,
        (origin, seq, crate::now_micros()),
        parts_ref(parts),
    );
    Bytes::from(buf)
}

/// Bytes [`encode_batch`] adds to each envelope it carries, at most (the
/// msgpack `bin` header).
pub const BATCH_ITEM_OVERHEAD: usize = 5;

/// Bytes [`encode_batch`] writes besides its envelopes, at most, for an
/// origin of `origin_len` bytes.
pub fn batch_overhead(origin_len: usize) -> usize {
    HEADER_LEN + 1 + 5 + origin_len + 9 + 9 + 5
}

/// The fixed header of a current-version envelope of `kind`, in a buffer
/// with room for `payload` more bytes.
fn header(kind: Kind, payload: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload);
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    buf.push(kind.tag());
    buf
}

fn parts_ref(parts: &[Bytes]) -> Vec<BinRef<'_>> {
    parts.iter().map(|p| BinRef(p)).collect()
}

/// Everything of a [`Body::Publication`] envelope but its position tail:
/// the history store's append script publishes these bytes followed by
/// `OFFSET\nEPOCH\n` once Redis has assigned the offset.
pub fn encode_publication_head(
    origin: &str,
    seq: u64,
    channel: &str,
    frame: &[u8],
    extra: &Extra,
) -> Vec<u8> {
    let mut buf = header(
        Kind::Publication,
        64 + origin.len() + channel.len() + frame.len(),
    );
    write_payload(
        &mut buf,
        (origin, seq, crate::now_micros()),
        (channel, serde_bytes_ref(frame), extra),
    );
    buf
}

fn push_position(buf: &mut Vec<u8>, offset: u64, epoch: &str) {
    buf.extend_from_slice(offset.to_string().as_bytes());
    buf.push(b'\n');
    buf.extend_from_slice(epoch.as_bytes());
    buf.push(b'\n');
}

/// Serialises a byte slice as msgpack `bin`, like `Bytes` does.
fn serde_bytes_ref(bytes: &[u8]) -> BinRef<'_> {
    BinRef(bytes)
}

struct BinRef<'a>(&'a [u8]);

impl Serialize for BinRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Parses the `OFFSET\nEPOCH\n` tail of a publication.
fn parse_position(tail: &[u8]) -> Option<(u64, String)> {
    let text = std::str::from_utf8(tail).ok()?.strip_suffix('\n')?;
    let (offset, epoch) = text.split_once('\n')?;
    if offset.is_empty() || offset.len() > 20 || !offset.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if epoch.is_empty() || epoch.len() > 64 || epoch.contains('\n') {
        return None;
    }
    Some((offset.parse().ok()?, epoch.to_string()))
}

/// Reads only the fixed header: checks size, magic and version and returns the
/// kind, without decoding the rest.
pub fn peek_kind(input: &[u8]) -> Result<Kind, DecodeError> {
    if input.len() > MAX_ENVELOPE_BYTES {
        return Err(DecodeError::TooLarge {
            len: input.len(),
            max: MAX_ENVELOPE_BYTES,
        });
    }
    let Some(header) = input.get(..HEADER_LEN) else {
        return Err(DecodeError::Truncated { len: input.len() });
    };
    let magic = [header[0], header[1]];
    if magic != MAGIC {
        return Err(DecodeError::BadMagic { got: magic });
    }
    let version = u16::from_be_bytes([header[2], header[3]]);
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(DecodeError::Version {
            got: version,
            expected: PROTOCOL_VERSION,
        });
    }
    Kind::from_tag(header[4]).ok_or(DecodeError::UnknownKind { tag: header[4] })
}

/// Decodes one envelope, consuming all of `input`.
///
/// Never panics. Memory allocated is proportional to `input.len()`: length
/// prefixes are checked against the bytes actually present before anything is
/// copied, and sequences reserve at most a few dozen slots ahead of the
/// elements actually decoded.
pub fn decode(input: &[u8]) -> Result<Envelope, DecodeError> {
    let kind = peek_kind(input)?;
    let version = u16::from_be_bytes([input[2], input[3]]);
    let v1 = version == 1;
    let rest = &input[HEADER_LEN..];
    let (origin, seq, sent_at_micros, body) = match kind {
        Kind::Deliver => {
            let (o, s, t, delivery) = if v1 {
                let (o, s, t, (targets, frame, exclude_client)) =
                    read_payload::<(Targets, Bytes, Option<String>)>(kind, rest)?;
                let extra = Extra::default();
                (o, s, t, (targets, frame, exclude_client, extra))
            } else {
                read_payload::<(Targets, Bytes, Option<String>, Extra)>(kind, rest)?
            };
            let (targets, frame, exclude_client, extra) = delivery;
            if std::str::from_utf8(&frame).is_err() {
                return Err(DecodeError::FrameNotUtf8);
            }
            let delivery = Delivery {
                targets,
                frame,
                exclude_client,
                extra,
            };
            (o, s, t, Body::Deliver(delivery))
        }
        Kind::Heartbeat => {
            let (o, s, t, info) = read_payload::<NodeInfo>(kind, rest)?;
            check_node_id(kind, &info.node_id)?;
            (o, s, t, Body::Heartbeat(info))
        }
        Kind::Leaving => {
            let (o, s, t, (node_id,)) = read_payload::<(String,)>(kind, rest)?;
            check_node_id(kind, &node_id)?;
            (o, s, t, Body::Leaving { node_id })
        }
        Kind::Disconnect => {
            let (o, s, t, (clients, roots)) =
                read_payload::<(BoundedVec<String>, BoundedVec<String>)>(kind, rest)?;
            let body = Body::Disconnect {
                client_ids: clients.0,
                root_ids: roots.0,
            };
            (o, s, t, body)
        }
        Kind::ChannelsRequest => {
            let (o, s, t, (request_id, reply_to)) = read_payload::<(u64, String)>(kind, rest)?;
            let body = Body::ChannelsRequest {
                request_id,
                reply_to,
            };
            (o, s, t, body)
        }
        Kind::ChannelsReply => {
            let (o, s, t, (request_id, channels)) =
                read_payload::<(u64, BoundedVec<(String, u64)>)>(kind, rest)?;
            let body = Body::ChannelsReply {
                request_id,
                channels: channels.0,
            };
            (o, s, t, body)
        }
        Kind::Publication => {
            let ((o, s, t, (channel, frame, extra)), tail) = if v1 {
                let ((o, s, t, (channel, frame)), tail) =
                    read_payload_with_tail::<(String, Bytes)>(kind, rest)?;
                ((o, s, t, (channel, frame, Extra::default())), tail)
            } else {
                read_payload_with_tail::<(String, Bytes, Extra)>(kind, rest)?
            };
            if std::str::from_utf8(&frame).is_err() {
                return Err(DecodeError::FrameNotUtf8);
            }
            let (offset, epoch) = parse_position(tail).ok_or(DecodeError::Malformed {
                kind,
                reason: "bad position tail".into(),
            })?;
            let body = Body::Publication {
                channel,
                frame,
                offset,
                epoch,
                extra,
            };
            (o, s, t, body)
        }
        Kind::Batch => {
            let (o, s, t, parts) = read_payload::<BoundedVec<Bytes>>(kind, rest)?;
            let mut envelopes = Vec::with_capacity(parts.0.len());
            for part in parts.0 {
                let malformed = |reason: &str| DecodeError::Malformed {
                    kind,
                    reason: reason.into(),
                };
                // Nesting is refused before decoding, so a batch costs one
                // level of recursion at most.
                if peek_kind(&part) == Ok(Kind::Batch) {
                    return Err(malformed("a batch inside a batch"));
                }
                let envelope = decode(&part)?;
                if envelope.origin != o {
                    return Err(malformed("an envelope of another origin"));
                }
                envelopes.push(envelope);
            }
            (o, s, t, Body::Batch(envelopes))
        }
        Kind::Interest => {
            let (o, s, t, (from, to, added, removed)) =
                read_payload::<(u64, u64, BoundedVec<String>, BoundedVec<String>)>(kind, rest)?;
            let body = Body::Interest {
                from,
                to,
                added: added.0,
                removed: removed.0,
            };
            (o, s, t, body)
        }
        Kind::InterestRequest => {
            let (o, s, t, (node_id,)) = read_payload::<(String,)>(kind, rest)?;
            check_node_id(kind, &node_id)?;
            (o, s, t, Body::InterestRequest { node_id })
        }
        Kind::InterestSnapshot => {
            let (o, s, t, (version, part, last, topics)) =
                read_payload::<(u64, u32, bool, BoundedVec<String>)>(kind, rest)?;
            let body = Body::InterestSnapshot {
                version,
                part,
                last,
                topics: topics.0,
            };
            (o, s, t, body)
        }
        Kind::InterestAck => {
            let (o, s, t, (acks,)) = read_payload::<(BoundedVec<(String, u64)>,)>(kind, rest)?;
            for (node, _) in &acks.0 {
                check_node_id(kind, node)?;
            }
            (o, s, t, Body::InterestAck { acks: acks.0 })
        }
    };
    check_node_id(kind, &origin)?;
    Ok(Envelope {
        version,
        origin,
        seq,
        sent_at_micros,
        body,
    })
}

fn write_payload<P: Serialize>(buf: &mut Vec<u8>, head: (&str, u64, u64), payload: P) {
    let mut ser = rmp_serde::Serializer::new(buf);
    (head.0, head.1, head.2, payload)
        .serialize(&mut ser)
        // Writing to a Vec cannot fail, and every value here has a known
        // length and a msgpack representation.
        .expect("envelope payloads always serialise to a Vec");
}

type Head<P> = (String, u64, u64, P);

/// Like [`read_payload`], but returns the bytes after the msgpack value.
fn read_payload_with_tail<P>(kind: Kind, mut rest: &[u8]) -> Result<(Head<P>, &[u8]), DecodeError>
where
    P: for<'de> Deserialize<'de>,
{
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    de.set_max_depth(MAX_DEPTH);
    let value = <Head<P>>::deserialize(&mut de).map_err(|e| DecodeError::Malformed {
        kind,
        reason: e.to_string(),
    })?;
    drop(de);
    Ok((value, rest))
}

fn read_payload<P>(kind: Kind, mut rest: &[u8]) -> Result<(String, u64, u64, P), DecodeError>
where
    P: for<'de> Deserialize<'de>,
{
    // The reader form of the deserialiser lets us see what is left afterwards.
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    de.set_max_depth(MAX_DEPTH);
    let value =
        <(String, u64, u64, P)>::deserialize(&mut de).map_err(|e| DecodeError::Malformed {
            kind,
            reason: e.to_string(),
        })?;
    drop(de);
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            kind,
            len: rest.len(),
        });
    }
    Ok(value)
}

fn check_node_id(kind: Kind, id: &str) -> Result<(), DecodeError> {
    if valid_node_id(id) {
        Ok(())
    } else {
        Err(DecodeError::InvalidNodeId { kind })
    }
}

/// Roughly the encoded size, so `encode` allocates once in the common case.
fn size_estimate(envelope: &Envelope) -> usize {
    const OVERHEAD: usize = 48;
    let strings = |v: &[String]| v.iter().map(|s| s.len() + 5).sum::<usize>();
    OVERHEAD
        + envelope.origin.len()
        + match &envelope.body {
            Body::Deliver(d) => {
                d.frame.len()
                    + 16
                    + d.extra.event.as_ref().map_or(0, String::len)
                    + d.extra.channel.as_ref().map_or(0, String::len)
                    + d.extra.origin_client.as_ref().map_or(0, String::len)
                    + d.extra.audience.as_ref().map_or(0, Bytes::len)
                    + d.exclude_client.as_ref().map_or(0, String::len)
                    + match &d.targets {
                        crate::Targets::Channels(v)
                        | crate::Targets::Users(v)
                        | crate::Targets::Clients(v) => strings(v),
                        crate::Targets::All => 0,
                    }
            }
            Body::Heartbeat(info) => 64 + info.node_id.len() + info.version.len(),
            Body::Leaving { node_id } => node_id.len(),
            Body::Disconnect {
                client_ids,
                root_ids,
            } => strings(client_ids) + strings(root_ids),
            Body::ChannelsRequest { reply_to, .. } => reply_to.len(),
            Body::ChannelsReply { channels, .. } => {
                channels.iter().map(|(c, _)| c.len() + 14).sum::<usize>()
            }
            Body::Publication {
                channel,
                frame,
                epoch,
                ..
            } => channel.len() + frame.len() + epoch.len() + 24,
            Body::Batch(parts) => parts
                .iter()
                .map(|p| size_estimate(p) + HEADER_LEN + BATCH_ITEM_OVERHEAD)
                .sum(),
            Body::Interest { added, removed, .. } => 24 + strings(added) + strings(removed),
            Body::InterestRequest { node_id } => node_id.len(),
            Body::InterestSnapshot { topics, .. } => 24 + strings(topics),
            Body::InterestAck { acks } => acks.iter().map(|(n, _)| n.len() + 14).sum::<usize>(),
        }
}
