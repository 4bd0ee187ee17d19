//! The Socket.IO codec: a publication to a room (a mesh channel) is the
//! Engine.IO message `42["event",payload]` (`42/nsp,["event",payload]` in a
//! namespace other than `/`), encoded once for every Socket.IO connection in
//! the room. The channel says the namespace: rooms of `/` are channels of
//! the same name, rooms of a namespace `/admin` are channels `/admin:room`
//! ([`channel`], [`split`]).
//!
//! While sockets of a recovery namespace are connected, an event to them
//! carries each socket's offset as its last argument. It is still encoded
//! once per publication ([`Slot::Spliced`]): per socket, only the offset is
//! spliced in before the closing `]`, and sockets whose positions equal
//! those of the socket before them share its frame ([`Event`]).

use std::sync::Arc;

use prometheus::IntCounter;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::binary;
use super::engineio::Eio;
use super::recovery::{self, Offsets, Rooms};
use super::wire::Json;
use crate::codec::{Codec, Frames, Prepared, Recipient, Slot};
use crate::config::socketio::MAIN;
use crate::delivery::{Delivery, DeliveryKind, Target};

/// The event name of publications that carry none (native publications,
/// and `POST /api/notify/channels` without `event`).
pub const DEFAULT_EVENT: &str = "message";

/// What marks a delivery's audience as a Socket.IO emit's options: the
/// prefix says whether it is volatile, and the lines after it are the
/// channels whose Socket.IO members do not receive it (maybe none).
const EXCEPT: &[u8] = b"socketio-except\n";
const VOLATILE: &[u8] = b"socketio-volatile\n";

/// The audience of a publication that skips the Socket.IO members of
/// `except` and, when `volatile`, may be dropped for a socket that is
/// behind (`None` for neither).
pub fn emit_audience(except: &[String], volatile: bool) -> Option<bytes::Bytes> {
    if except.is_empty() && !volatile {
        return None;
    }
    let mut out = if volatile { VOLATILE } else { EXCEPT }.to_vec();
    out.extend_from_slice(except.join("\n").as_bytes());
    Some(out.into())
}

/// The `except` channels of a delivery's audience, if it is an emit's.
fn except_list(delivery: &Delivery) -> Option<&str> {
    let audience = delivery.audience.as_deref()?;
    let list = audience
        .strip_prefix(EXCEPT)
        .or_else(|| audience.strip_prefix(VOLATILE))?;
    std::str::from_utf8(list).ok().filter(|l| !l.is_empty())
}

/// Is `to` in a channel `delivery` is not for?
fn excepted(delivery: &Delivery, to: &Recipient<'_>) -> bool {
    let (Some(list), Some(member_of)) = (except_list(delivery), to.member_of) else {
        return false;
    };
    list.split('\n').any(member_of)
}

/// The mesh channel of `room` in namespace `nsp`.
pub fn channel(nsp: &str, room: &str) -> String {
    if nsp == MAIN {
        room.to_string()
    } else {
        format!("{nsp}:{room}")
    }
}

/// The namespace and room of a channel, given the namespaces served (the
/// main namespace's rooms cannot look like another namespace's channels:
/// [`channel_of`] refuses those).
pub fn split<'a>(namespaces: &[String], channel: &'a str) -> (String, &'a str) {
    if channel.starts_with('/') {
        if let Some((nsp, room)) = channel.split_once(':') {
            if namespaces.iter().any(|n| n == nsp) {
                return (nsp.to_string(), room);
            }
        }
    }
    (MAIN.to_string(), channel)
}

/// The channel a client may join as `room` of `nsp`: a valid channel name
/// that does not name a room of another namespace, and no pattern.
pub fn channel_of(namespaces: &[String], nsp: &str, room: &str) -> Result<String, String> {
    let c = channel(nsp, room);
    crate::limits::channel_name(&c)?;
    if c.contains('*') {
        return Err("a room name may not contain *".into());
    }
    if split(namespaces, &c).0 != nsp {
        return Err(format!("room {room:?} names a room of another namespace"));
    }
    Ok(c)
}

/// The Socket.IO codec (one for every Socket.IO connection: the frame of a
/// delivery depends on its channel only).
pub struct SocketIoCodec {
    /// The namespaces served other than `/`.
    namespaces: Arc<Vec<String>>,
    sent: IntCounter,
    /// Positions of the sockets in recovery namespaces, whose events carry
    /// them as a last argument (spliced in per socket).
    offsets: Arc<Offsets>,
    /// The Engine.IO revision of its connections (binary attachments are
    /// framed per revision).
    eio: Eio,
}

/// One frame, several, or none.
fn frames(list: Vec<Utf8Bytes>) -> Frames {
    match list.len() {
        0 => Frames::None,
        1 => Frames::One(list.into_iter().next().expect("one")),
        _ => Frames::Many(list),
    }
}

/// An event prepared once per publication for the sockets of a recovery
/// namespace ([`Slot::Spliced`]).
struct Event {
    /// The namespace it is an event in.
    nsp: String,
    /// The Engine.IO messages without an offset: the packet, then its
    /// attachments (none when the payload is not JSON).
    plain: Vec<Utf8Bytes>,
    /// Those messages as frames: what sockets not tracked in `nsp` receive.
    untracked: Frames,
    /// The positions the last spliced frames name, and those frames:
    /// sockets in the same history rooms share them.
    last: Option<(Rooms, Frames)>,
}

/// `plain` (an event's messages) with `offset` as the event's last
/// argument: its packet `…]` becomes `…,"<offset>"]`, the bytes
/// [`binary::event_messages`] makes with `offset` among its arguments.
/// (An offset is a JSON string, so it holds no attachment and marks none.)
fn splice(plain: &[Utf8Bytes], offset: &str) -> Vec<Utf8Bytes> {
    let Some((packet, attachments)) = plain.split_first() else {
        return Vec::new();
    };
    let head = packet
        .as_str()
        .strip_suffix(']')
        .expect("an event ends its array");
    let quoted = serde_json::to_string(offset).expect("a string serializes");
    let mut out = String::with_capacity(head.len() + quoted.len() + 2);
    out.push_str(head);
    out.push(',');
    out.push_str(&quoted);
    out.push(']');
    let mut list = Vec::with_capacity(plain.len());
    list.push(Utf8Bytes::from(out));
    list.extend(attachments.iter().cloned());
    list
}

impl SocketIoCodec {
    pub fn new(
        namespaces: Arc<Vec<String>>,
        sent: IntCounter,
        offsets: Arc<Offsets>,
        eio: Eio,
    ) -> Self {
        SocketIoCodec {
            namespaces,
            sent,
            offsets,
            eio,
        }
    }

    /// The Engine.IO messages of `delivery` as an event in `nsp` (a
    /// BINARY_EVENT and its attachments when its payload marks bytes).
    fn frame(&self, delivery: &Delivery, nsp: &str) -> Vec<Utf8Bytes> {
        let Some(payload) = Json::from_text(delivery.data.as_str()) else {
            return Vec::new();
        };
        let event = delivery.event.as_deref().unwrap_or(DEFAULT_EVENT);
        binary::event_messages(self.eio, nsp, event, vec![payload])
    }

    fn room_frame(&self, delivery: &Delivery, channel: &str) -> Vec<Utf8Bytes> {
        let (nsp, _) = split(&self.namespaces, channel);
        self.frame(delivery, &nsp)
    }

    /// A frame of `delivery` in `nsp` for one socket of a publication to
    /// several rooms: with its offset when it is tracked there.
    fn own_frame(&self, delivery: &Delivery, nsp: &str, to: &Recipient<'_>) -> Vec<Utf8Bytes> {
        let plain = self.frame(delivery, nsp);
        match self
            .offsets
            .advance(to.client_id, nsp, None, recovery::format)
        {
            Some(offset) => splice(&plain, &offset),
            None => plain,
        }
    }
}

impl Codec for SocketIoCodec {
    fn protocol(&self) -> &'static str {
        "socketio"
    }

    fn slot(&self, delivery: &Delivery, to: &Recipient<'_>) -> Slot {
        if delivery.kind != DeliveryKind::Message {
            // Socket.IO has no presence frames.
            return Slot::Skip;
        }
        if excepted(delivery, to) {
            return Slot::Skip;
        }
        if self.offsets.tracking() {
            // The events of tracked sockets carry their own offsets
            // (finished per socket; the others get the plain frame).
            return match (&delivery.target, &delivery.channel) {
                (Target::Channels(_), Some(_)) => Slot::Spliced(0),
                (Target::Channels(_), None) => Slot::Own,
                _ => Slot::Spliced(1),
            };
        }
        match (&delivery.target, &delivery.channel) {
            (Target::Channels(_), Some(_)) => Slot::Shared(0),
            // One frame per room the socket is in.
            (Target::Channels(_), None) => Slot::Own,
            // To a socket, a user or everyone: an event in `/`.
            _ => Slot::Shared(1),
        }
    }

    fn droppable(&self, delivery: &Delivery) -> bool {
        delivery
            .audience
            .as_deref()
            .is_some_and(|a| a.starts_with(VOLATILE))
    }

    fn encode(&self, delivery: &Delivery, slot: Slot, to: &Recipient<'_>) -> Frames {
        let one = frames;
        match (slot, &delivery.channel, &delivery.target) {
            (Slot::Shared(0), Some(channel), _) => one(self.room_frame(delivery, channel)),
            (Slot::Shared(1), _, _) => one(self.frame(delivery, MAIN)),
            // For one socket (a recovering join's replay).
            (Slot::Spliced(n), _, _) => {
                let mut prepared = self.prepare(delivery, n);
                self.finish(delivery, &mut prepared, to)
            }
            (Slot::Own, _, Target::Channels(channels)) => {
                let Some(member_of) = to.member_of else {
                    return Frames::None;
                };
                frames(
                    channels
                        .iter()
                        .filter(|c| member_of(c))
                        .flat_map(|c| {
                            let (nsp, _) = split(&self.namespaces, c);
                            self.own_frame(delivery, &nsp, to)
                        })
                        .collect(),
                )
            }
            _ => Frames::None,
        }
    }

    /// A room event (`0`) or an event in `/` (`1`), without an offset.
    fn prepare(&self, delivery: &Delivery, n: u32) -> Prepared {
        let nsp = match (n, &delivery.channel) {
            (0, Some(channel)) => split(&self.namespaces, channel).0,
            _ => MAIN.to_string(),
        };
        let plain = self.frame(delivery, &nsp);
        Box::new(Event {
            nsp,
            untracked: frames(plain.clone()),
            plain,
            last: None,
        })
    }

    /// The prepared event with the socket's offset spliced in, after moving
    /// its position in the event's room; as prepared when it is not
    /// tracked in the event's namespace.
    fn finish(&self, delivery: &Delivery, prepared: &mut Prepared, to: &Recipient<'_>) -> Frames {
        let Some(event) = prepared.downcast_mut::<Event>() else {
            return Frames::None;
        };
        let moved = match (&delivery.channel, &delivery.position) {
            (Some(c), Some(p)) if to.positioned => Some((&**c, p)),
            _ => None,
        };
        let last = &event.last;
        // `None` inside: the same positions as the last socket's.
        let changed = self
            .offsets
            .advance(to.client_id, &event.nsp, moved, |rooms| match last {
                Some((same, _)) if same == rooms => None,
                _ => Some(rooms.clone()),
            });
        match changed {
            None => event.untracked.clone(),
            Some(None) => event.last.as_ref().map_or(Frames::None, |(_, f)| f.clone()),
            Some(Some(rooms)) => {
                let spliced = frames(splice(&event.plain, &recovery::format(&rooms)));
                event.last = Some((rooms, spliced.clone()));
                spliced
            }
        }
    }

    fn sent(&self) -> Option<&IntCounter> {
        Some(&self.sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Position;

    fn codec() -> SocketIoCodec {
        SocketIoCodec::new(
            Arc::new(vec!["/admin".to_string()]),
            IntCounter::new("t", "t").unwrap(),
            Arc::new(Offsets::default()),
            Eio::V4,
        )
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
    fn except_skips_the_members_of_its_channels() {
        let mut d = Delivery::new(Target::Channels(vec!["Chat".into()]), Utf8Bytes::from("{}"));
        let in_vip = |c: &str| c == "Chat" || c == "vip";
        let not = |c: &str| c == "Chat";
        let c = codec();
        for volatile in [false, true] {
            d.audience = emit_audience(&["vip".into(), "ops".into()], volatile);
            assert_eq!(c.slot(&d, &to(Some(&in_vip))), Slot::Skip);
            assert_eq!(c.slot(&d, &to(Some(&not))), Slot::Shared(0));
            assert_eq!(c.droppable(&d), volatile);
        }
        assert_eq!(emit_audience(&[], false), None);
        // Volatile alone: nobody is left out.
        d.audience = emit_audience(&[], true);
        assert_eq!(c.slot(&d, &to(Some(&in_vip))), Slot::Shared(0));
        assert!(c.droppable(&d));
        d.audience = None;
        assert!(!c.droppable(&d));
    }

    #[test]
    fn rooms_map_to_channels_and_back() {
        let served = vec!["/admin".to_string()];
        assert_eq!(channel("/", "Chat"), "Chat");
        assert_eq!(channel("/admin", "ops"), "/admin:ops");
        assert_eq!(split(&served, "/admin:ops"), ("/admin".into(), "ops"));
        assert_eq!(split(&served, "/other:ops"), ("/".into(), "/other:ops"));
        assert_eq!(split(&served, "job-1"), ("/".into(), "job-1"));
        assert!(channel_of(&served, "/", "/admin:ops").is_err());
        assert!(channel_of(&served, "/", "a*").is_err());
        assert!(channel_of(&served, "/", "").is_err());
        assert_eq!(channel_of(&served, "/admin", "x").unwrap(), "/admin:x");
    }

    #[test]
    fn room_publications_are_events_in_their_namespace() {
        let mut d = Delivery::new(
            Target::Channels(vec!["Chat".into()]),
            Utf8Bytes::from(r#"{"name":"a","text":"hi"}"#),
        );
        d.event = Some(Arc::from("/message"));
        let c = codec();
        let slot = c.slot(&d, &to(None));
        assert_eq!(
            c.encode(&d, slot, &to(None)),
            Frames::One(Utf8Bytes::from(
                r#"42["/message",{"name":"a","text":"hi"}]"#
            ))
        );
        let d = Delivery::new(
            Target::Channels(vec!["/admin:ops".into()]),
            Utf8Bytes::from("[1,2]"),
        );
        assert_eq!(
            c.encode(&d, Slot::Shared(0), &to(None)),
            Frames::One(Utf8Bytes::from(r#"42/admin,["message",[1,2]]"#))
        );
    }

    #[test]
    fn several_rooms_give_a_frame_per_joined_room_and_presence_is_skipped() {
        let d = Delivery::new(
            Target::Channels(vec!["a".into(), "/admin:b".into(), "c".into()]),
            Utf8Bytes::from("1"),
        );
        let c = codec();
        let member = |ch: &str| ch != "c";
        assert_eq!(c.slot(&d, &to(Some(&member))), Slot::Own);
        assert_eq!(
            c.encode(&d, Slot::Own, &to(Some(&member))),
            Frames::Many(vec![
                Utf8Bytes::from(r#"42["message",1]"#),
                Utf8Bytes::from(r#"42/admin,["message",1]"#),
            ])
        );
        let mut join = Delivery::new(Target::Channels(vec!["a".into()]), Utf8Bytes::from("{}"));
        join.kind = DeliveryKind::Join;
        assert_eq!(c.slot(&join, &to(None)), Slot::Skip);
        let user = Delivery::new(Target::Users(vec!["u".into()]), Utf8Bytes::from("{}"));
        assert_eq!(c.slot(&user, &to(None)), Slot::Shared(1));
        assert_eq!(
            c.encode(&user, Slot::Shared(1), &to(None)),
            Frames::One(Utf8Bytes::from(r#"42["message",{}]"#))
        );
    }

    /// The frames of an event with an offset as they were serialised per
    /// socket before splicing: the offset a last argument like any other.
    fn serialised(eio: Eio, nsp: &str, event: &str, payload: &str, offset: &str) -> Vec<Utf8Bytes> {
        let args = vec![Json::from_text(payload).unwrap(), Json::from_value(&offset)];
        binary::event_messages(eio, nsp, event, args)
    }

    #[test]
    fn spliced_offsets_give_the_bytes_of_the_serialised_event() {
        let payloads = [
            r#""he said \"hi\" \\ \u00e9 é ☃ 😀 \u2028""#,
            r#"[[1,[2,[3,[]]]],{"a":[{"b":"\\\""}],"c":null},-1.5e3,true]"#,
            r#"{"name":"a.png","file":{"$binary":"AAEC"},"more":[{"$binary":"aGk="}]}"#,
            r#"{"$binary":"not base64!"}"#,
            r#"  {"spaced" : [ 1 , 2 ] }  "#,
            "0",
        ];
        let offsets = [
            r#"[["Chat","e1",4]]"#,
            r#"[["ch\"q\\","é☃",0],["$binary","e\u0001",18446744073709551615]]"#,
            "[]",
        ];
        for eio in [Eio::V4, Eio::V3] {
            for nsp in ["/", "/admin"] {
                for event in ["message", "ev\"ent é"] {
                    for payload in payloads {
                        let plain = binary::event_messages(
                            eio,
                            nsp,
                            event,
                            vec![Json::from_text(payload).unwrap()],
                        );
                        for offset in offsets {
                            assert_eq!(
                                splice(&plain, offset),
                                serialised(eio, nsp, event, payload, offset),
                                "{payload} {offset}"
                            );
                        }
                    }
                }
            }
        }
        assert!(splice(&[], "[]").is_empty());
    }

    #[test]
    fn recovery_sockets_get_their_offsets_and_share_frames_when_equal() {
        let offsets = Arc::new(Offsets::default());
        let c: Arc<dyn Codec> = Arc::new(SocketIoCodec::new(
            Arc::new(vec!["/admin".to_string()]),
            IntCounter::new("t", "t").unwrap(),
            offsets.clone(),
            Eio::V4,
        ));
        let at = |offset| Position {
            offset,
            epoch: "e\"1".into(),
        };
        for (client, rooms) in [
            ("a", &["Chat"][..]),
            ("b", &["Chat"]),
            ("c", &["Chat", "Jobs"]),
        ] {
            offsets.start(client, "/");
            for r in rooms {
                offsets.set(client, "/", r, &at(3));
            }
        }
        let payload = r#"{"t":"é \"x\"","b":{"$binary":"aGk="}}"#;
        let mut d = Delivery::new(
            Target::Channels(vec!["Chat".into()]),
            Utf8Bytes::from(payload),
        );
        d.position = Some(at(4));
        let mut cache = crate::codec::EncodeCache::default();
        let mut got = Vec::new();
        for client in ["a", "b", "c", "untracked"] {
            let to = Recipient {
                client_id: client,
                positioned: client != "untracked",
                tag: None,
                member_of: None,
            };
            assert_eq!(c.slot(&d, &to), Slot::Spliced(0));
            got.push(cache.frames(&c, &d, &to).expect("sent"));
        }
        let expect = |offset: &str| {
            let list = match offset {
                "" => binary::event_messages(
                    Eio::V4,
                    "/",
                    "message",
                    vec![Json::from_text(payload).unwrap()],
                ),
                o => serialised(Eio::V4, "/", "message", payload, o),
            };
            Frames::Many(list)
        };
        let chat = r#"[["Chat","e\"1",4]]"#;
        assert_eq!(got[0], expect(chat));
        assert_eq!(got[1], expect(chat));
        assert_eq!(got[2], expect(r#"[["Chat","e\"1",4],["Jobs","e\"1",3]]"#));
        assert_eq!(got[3], expect(""));
        // Sockets at the same positions share one frame.
        let first = |f: &Frames| f.iter().next().unwrap().as_str().as_ptr();
        assert_eq!(first(&got[0]), first(&got[1]));
        assert_eq!(cache.encodings(), 1);
        // Encoded for one socket (a join's replay), as in the fan-out.
        let c_alone = Recipient {
            client_id: "c",
            positioned: true,
            tag: None,
            member_of: None,
        };
        assert_eq!(c.encode(&d, Slot::Spliced(0), &c_alone), got[2]);
        // Their positions moved with the event.
        let now = offsets.advance("a", "/", None, recovery::format);
        assert_eq!(now.unwrap(), chat);
    }
}
