//! Decoding deliveries without copying: [`decode_ref`] reads a delivery's
//! origin, names, frame and [`Extra`] part as slices of the received bytes,
//! where [`decode`] allocates a `String` or `Bytes` for each.
//!
//! It reads the msgpack layout that [`encode`](crate::encode) and
//! [`encode_deliver`](crate::encode_deliver) write (`str` for text, `bin`
//! for the frame and audience, unsigned integers, exact array lengths); any
//! other envelope, and anything unusual in a delivery or a batch, is handed
//! to [`decode`], so both accept and refuse exactly the same inputs, with
//! the same errors, and mean the same message by them
//! ([`Decoded::into_envelope`] is [`decode`]'s result).

use bytes::Bytes;

use crate::codec::{decode, peek_kind, DecodeError, ExtraRef, HEADER_LEN};
use crate::envelope::{Body, Delivery, Envelope, Extra, Kind, Targets};
use crate::ids::valid_node_id;

/// The names of a delivery's targets, borrowed: one (the common case,
/// without a list) or several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Names<'a> {
    /// Exactly one name.
    One(&'a str),
    /// Any number of names (none, or more than one).
    Many(Vec<&'a str>),
}

impl<'a> Names<'a> {
    /// How many names.
    pub fn len(&self) -> usize {
        match self {
            Names::One(_) => 1,
            Names::Many(v) => v.len(),
        }
    }

    /// Whether there is no name.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        let (one, many) = match self {
            Names::One(name) => (Some(*name), &[][..]),
            Names::Many(v) => (None, &v[..]),
        };
        one.into_iter().chain(many.iter().copied())
    }

    /// The names, owned.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }

    fn of(names: &'a [String]) -> Names<'a> {
        match names {
            [one] => Names::One(one),
            many => Names::Many(many.iter().map(String::as_str).collect()),
        }
    }
}

/// [`Targets`] with borrowed names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetsView<'a> {
    /// Members of these channels.
    Channels(Names<'a>),
    /// Connections of these users.
    Users(Names<'a>),
    /// These connections, by client id.
    Clients(Names<'a>),
    /// Every connection.
    All,
}

impl<'a> TargetsView<'a> {
    /// The owned [`Targets`].
    pub fn to_owned(&self) -> Targets {
        match self {
            TargetsView::Channels(n) => Targets::Channels(n.to_vec()),
            TargetsView::Users(n) => Targets::Users(n.to_vec()),
            TargetsView::Clients(n) => Targets::Clients(n.to_vec()),
            TargetsView::All => Targets::All,
        }
    }

    /// The view of an owned [`Targets`].
    pub fn of(targets: &'a Targets) -> TargetsView<'a> {
        match targets {
            Targets::Channels(v) => TargetsView::Channels(Names::of(v)),
            Targets::Users(v) => TargetsView::Users(Names::of(v)),
            Targets::Clients(v) => TargetsView::Clients(Names::of(v)),
            Targets::All => TargetsView::All,
        }
    }
}

/// A [`Body::Deliver`] envelope with its text and bytes borrowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliverRef<'a> {
    /// Wire format version the sender wrote (1 has no `extra`: default).
    pub version: u16,
    /// Node id of the sender (checked with [`valid_node_id`]).
    pub origin: &'a str,
    /// The sender's sequence number.
    pub seq: u64,
    /// The sender's clock when it sent it, in microseconds.
    pub sent_at_micros: u64,
    /// Who receives it.
    pub targets: TargetsView<'a>,
    /// The message data, valid UTF-8 ([`Delivery::frame`]).
    pub frame: &'a str,
    /// A connection that must not receive it.
    pub exclude_client: Option<&'a str>,
    /// Channel, event name, kind, origin client, audience, idempotency key.
    pub extra: ExtraRef<'a>,
}

impl<'a> DeliverRef<'a> {
    /// The view of an owned delivery envelope (`None` for any other body,
    /// or a frame that is not UTF-8, which [`decode`] never returns).
    pub fn of(envelope: &'a Envelope) -> Option<DeliverRef<'a>> {
        let Body::Deliver(d) = &envelope.body else {
            return None;
        };
        Some(DeliverRef {
            version: envelope.version,
            origin: &envelope.origin,
            seq: envelope.seq,
            sent_at_micros: envelope.sent_at_micros,
            targets: TargetsView::of(&d.targets),
            frame: std::str::from_utf8(&d.frame).ok()?,
            exclude_client: d.exclude_client.as_deref(),
            extra: ExtraRef::from(&d.extra),
        })
    }

    /// The owned envelope: what [`decode`] returns for the same bytes.
    pub fn to_envelope(&self) -> Envelope {
        let extra = &self.extra;
        let text = |s: Option<&str>| s.map(str::to_string);
        Envelope {
            version: self.version,
            origin: self.origin.to_string(),
            seq: self.seq,
            sent_at_micros: self.sent_at_micros,
            body: Body::Deliver(Delivery {
                targets: self.targets.to_owned(),
                frame: Bytes::copy_from_slice(self.frame.as_bytes()),
                exclude_client: text(self.exclude_client),
                extra: Extra {
                    channel: text(extra.channel),
                    event: text(extra.event),
                    kind: extra.kind,
                    origin_client: text(extra.origin_client),
                    audience: extra.audience.map(Bytes::copy_from_slice),
                    idempotency: text(extra.idempotency),
                },
            }),
        }
    }
}

/// What [`decode_ref`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A delivery, borrowed.
    Deliver(DeliverRef<'a>),
    /// A batch of envelopes of one origin, each decoded the same way.
    Batch {
        /// Wire format version of the batch.
        version: u16,
        /// Node id of the sender, shared by every part.
        origin: &'a str,
        /// The batch's own sequence number.
        seq: u64,
        /// The sender's clock when it sent the batch.
        sent_at_micros: u64,
        /// The envelopes, in order (none is a batch).
        parts: Vec<Decoded<'a>>,
    },
    /// Any other envelope (or a delivery in an unusual layout), as
    /// [`decode`] returns it.
    Owned(Envelope),
}

impl Decoded<'_> {
    /// Node id of the sender.
    pub fn origin(&self) -> &str {
        match self {
            Decoded::Deliver(d) => d.origin,
            Decoded::Batch { origin, .. } => origin,
            Decoded::Owned(e) => &e.origin,
        }
    }

    /// The owned envelope, equal to what [`decode`] returns for the same bytes.
    pub fn into_envelope(self) -> Envelope {
        match self {
            Decoded::Deliver(d) => d.to_envelope(),
            Decoded::Batch {
                version,
                origin,
                seq,
                sent_at_micros,
                parts,
            } => Envelope {
                version,
                origin: origin.to_string(),
                seq,
                sent_at_micros,
                body: Body::Batch(parts.into_iter().map(Decoded::into_envelope).collect()),
            },
            Decoded::Owned(e) => e,
        }
    }
}

/// The origin of an envelope of any kind, read from its head without
/// decoding the rest; `None` when the head is not well formed (then
/// [`decode_ref`] refuses the whole envelope too).
pub fn peek_origin(input: &[u8]) -> Option<&str> {
    peek_kind(input).ok()?;
    Reader(&input[HEADER_LEN..])
        .head()
        .map(|(origin, ..)| origin)
}

/// Decodes one envelope, consuming all of `input`, like [`decode`] (same
/// inputs accepted, same errors), with deliveries and batches of them
/// borrowed from `input`.
pub fn decode_ref(input: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let fast = match peek_kind(input)? {
        Kind::Deliver => deliver(input).map(Decoded::Deliver),
        Kind::Batch => batch(input),
        _ => None,
    };
    match fast {
        Some(decoded) => Ok(decoded),
        None => decode(input).map(Decoded::Owned),
    }
}

/// A delivery in the usual layout, or `None` (then [`decode`] decides).
fn deliver(input: &[u8]) -> Option<DeliverRef<'_>> {
    let version = u16::from_be_bytes([input[2], input[3]]);
    let mut r = Reader(&input[HEADER_LEN..]);
    let (origin, seq, sent_at_micros) = r.head()?;
    r.array_of(if version == 1 { 3 } else { 4 })?;
    let targets = r.targets()?;
    let frame = std::str::from_utf8(r.bin()?).ok()?;
    let exclude_client = r.opt_str()?;
    let extra = if version == 1 {
        ExtraRef::default()
    } else {
        let n = r.array()?;
        if n != 5 && n != 6 {
            return None;
        }
        ExtraRef {
            channel: r.opt_str()?,
            event: r.opt_str()?,
            kind: u8::try_from(r.uint()?).ok()?,
            origin_client: r.opt_str()?,
            audience: r.opt_bin()?,
            idempotency: if n == 6 { r.opt_str()? } else { None },
        }
    };
    r.0.is_empty().then_some(DeliverRef {
        version,
        origin,
        seq,
        sent_at_micros,
        targets,
        frame,
        exclude_client,
        extra,
    })
}

/// A batch whose parts all decode, or `None` (then [`decode`] decides, and
/// reports the error of the first part that does not).
fn batch(input: &[u8]) -> Option<Decoded<'_>> {
    let version = u16::from_be_bytes([input[2], input[3]]);
    let mut r = Reader(&input[HEADER_LEN..]);
    let (origin, seq, sent_at_micros) = r.head()?;
    let n = r.array()?;
    let mut parts = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let part = r.bin()?;
        if peek_kind(part).ok()? == Kind::Batch {
            return None;
        }
        let decoded = decode_ref(part).ok()?;
        if decoded.origin() != origin {
            return None;
        }
        parts.push(decoded);
    }
    r.0.is_empty().then_some(Decoded::Batch {
        version,
        origin,
        seq,
        sent_at_micros,
        parts,
    })
}

/// A msgpack reader over the bytes left; each method reads one value of the
/// usual form, or returns `None` for anything else.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// A big-endian unsigned integer of `n` bytes (at most 8).
    fn be(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        )
    }

    fn peek_nil(&mut self) -> bool {
        if self.0.first() == Some(&0xc0) {
            self.0 = &self.0[1..];
            true
        } else {
            false
        }
    }

    fn array(&mut self) -> Option<usize> {
        let n = match self.byte()? {
            b @ 0x90..=0x9f => u64::from(b & 0x0f),
            0xdc => self.be(2)?,
            0xdd => self.be(4)?,
            _ => return None,
        };
        usize::try_from(n).ok()
    }

    fn array_of(&mut self, n: usize) -> Option<()> {
        (self.array()? == n).then_some(())
    }

    fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            b @ 0x00..=0x7f => Some(u64::from(b)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }

    fn str(&mut self) -> Option<&'a str> {
        let n = match self.byte()? {
            b @ 0xa0..=0xbf => u64::from(b & 0x1f),
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            _ => return None,
        };
        std::str::from_utf8(self.take(usize::try_from(n).ok()?)?).ok()
    }

    fn bin(&mut self) -> Option<&'a [u8]> {
        let n = match self.byte()? {
            0xc4 => self.be(1)?,
            0xc5 => self.be(2)?,
            0xc6 => self.be(4)?,
            _ => return None,
        };
        self.take(usize::try_from(n).ok()?)
    }

    fn opt_str(&mut self) -> Option<Option<&'a str>> {
        if self.peek_nil() {
            Some(None)
        } else {
            self.str().map(Some)
        }
    }

    fn opt_bin(&mut self) -> Option<Option<&'a [u8]>> {
        if self.peek_nil() {
            Some(None)
        } else {
            self.bin().map(Some)
        }
    }

    /// `[origin, seq, sent_at_micros, ` (the payload follows), with a valid
    /// origin.
    fn head(&mut self) -> Option<(&'a str, u64, u64)> {
        self.array_of(4)?;
        let origin = self.str()?;
        if !valid_node_id(origin) {
            return None;
        }
        Some((origin, self.uint()?, self.uint()?))
    }

    /// `[tag, [name…]]` or `[4]`.
    fn targets(&mut self) -> Option<TargetsView<'a>> {
        let n = self.array()?;
        let tag = u8::try_from(self.uint()?).ok()?;
        if tag == Targets::TAG_ALL {
            return (n == 1).then_some(TargetsView::All);
        }
        if n != 2 {
            return None;
        }
        let count = self.array()?;
        let names = if count == 1 {
            Names::One(self.str()?)
        } else {
            let mut names = Vec::with_capacity(count.min(64));
            for _ in 0..count {
                names.push(self.str()?);
            }
            Names::Many(names)
        };
        match tag {
            Targets::TAG_CHANNELS => Some(TargetsView::Channels(names)),
            Targets::TAG_USERS => Some(TargetsView::Users(names)),
            Targets::TAG_CLIENTS => Some(TargetsView::Clients(names)),
            _ => None,
        }
    }
}
