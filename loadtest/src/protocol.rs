//! The client side of the protocols subscribers can speak besides the
//! native one: Phoenix Channels v2 (`/socket/websocket`), Socket.IO v5/v4
//! over WebSocket (`/socket.io/`), and the Cells event gateway
//! (`/ws/event`).
//!
//! [`Session`] is one subscriber's protocol state, free of I/O: it says
//! what to send after the socket opens, reads each text frame (answering
//! pings, noticing when its joins are done, and finding deliveries), and
//! builds heartbeats. The engine moves the bytes.
//!
//! Deliveries are found by the payload stamp (`"t":MICROS`) inside the
//! protocol's framing: `[null,null,"topic","event",{"t":…}]`,
//! `42["event",{"t":…}]`, or a Cells event whose body is the stamp.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::Frame;

/// The protocol a subscriber speaks.
#[derive(Debug, Serialize, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `/websocket`, the jac-cloud compatible protocol.
    #[default]
    Native,
    /// Phoenix Channels, serializer v2, over WebSocket.
    Phoenix,
    /// Socket.IO over WebSocket (`eio = 4`: v5, `eio = 3`: v4).
    Socketio,
    /// The Cells `/ws/event` gateway.
    Cells,
}

/// Per-protocol settings (from `[subscribers]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Phoenix: heartbeat period.
    pub heartbeat: Duration,
    /// Socket.IO: Engine.IO revision (4 or 3).
    pub eio: u8,
    /// Socket.IO: the event emitted (with an ack) to join each room; empty:
    /// the node puts sockets in their rooms itself.
    pub join_event: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            heartbeat: Duration::from_secs(30),
            eio: 4,
            join_event: "join".into(),
        }
    }
}

/// What reading one frame produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Read<'a> {
    pub frame: Frame<'a>,
    /// Frames to send back (pongs, connect, joins).
    pub send: Vec<String>,
    /// The subscriber just became ready (all joins acknowledged).
    pub ready: bool,
}

impl<'a> Read<'a> {
    fn other() -> Read<'a> {
        Read {
            frame: Frame::Other,
            send: Vec::new(),
            ready: false,
        }
    }

    fn error(code: &'a str) -> Read<'a> {
        Read {
            frame: Frame::Error(code),
            send: Vec::new(),
            ready: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the protocol handshake or join replies.
    Joining,
    Ready,
}

/// One subscriber's protocol state.
#[derive(Debug)]
pub struct Session {
    protocol: Protocol,
    options: Options,
    channels: Vec<String>,
    jwt: Option<String>,
    state: State,
    next_ref: u64,
    /// Join refs (Phoenix) or ack ids (Socket.IO) not yet answered.
    pending: Vec<u64>,
    /// EIO=3: the client pings at the interval the server announced.
    ping_interval: Option<Duration>,
}

/// The value of `"t":` (digits) anywhere in `text`.
fn stamp(text: &str) -> Option<u64> {
    let at = text.find("\"t\":")? + 4;
    let digits: &str = &text[at..];
    let n = digits.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return None;
    }
    digits[..n].parse().ok()
}

/// A delivery inside protocol framing: the `t` stamp, unless marked warm.
fn delivery(text: &str) -> Option<Frame<'_>> {
    let t = stamp(text)?;
    if text.contains("\"w\":1,") || text.contains("\"w\":1}") {
        return Some(Frame::Warm);
    }
    Some(Frame::Delivery(t))
}

impl Session {
    /// `channels` are Phoenix topics, Socket.IO rooms or Cells workspaces;
    /// `jwt` is the Cells subscribe token (or the Socket.IO `auth.token`).
    pub fn new(
        protocol: Protocol,
        options: Options,
        channels: Vec<String>,
        jwt: Option<String>,
    ) -> Session {
        Session {
            protocol,
            options,
            channels,
            jwt,
            state: State::Joining,
            next_ref: 1,
            pending: Vec::new(),
            ping_interval: None,
        }
    }

    /// The path and query to open the WebSocket on.
    pub fn path(&self) -> String {
        match self.protocol {
            Protocol::Native => "/websocket".into(),
            Protocol::Phoenix => "/socket/websocket?vsn=2.0.0".into(),
            Protocol::Socketio => {
                format!("/socket.io/?EIO={}&transport=websocket", self.options.eio)
            }
            Protocol::Cells => "/ws/event".into(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    fn take_ref(&mut self) -> u64 {
        let r = self.next_ref;
        self.next_ref += 1;
        r
    }

    /// Frames to send as soon as the WebSocket is open.
    pub fn start(&mut self) -> Vec<String> {
        match self.protocol {
            Protocol::Native | Protocol::Socketio => Vec::new(),
            Protocol::Phoenix => {
                let mut out = Vec::new();
                for topic in self.channels.clone() {
                    let r = self.take_ref();
                    self.pending.push(r);
                    out.push(format!(
                        "[\"{r}\",\"{r}\",{},\"phx_join\",{{}}]",
                        json_str(&topic)
                    ));
                }
                if self.pending.is_empty() {
                    self.state = State::Ready;
                }
                out
            }
            Protocol::Cells => {
                // Cells acknowledges nothing: subscribed once sent.
                self.state = State::Ready;
                vec![format!(
                    "{{\"@type\":\"subscribe\",\"jwt\":{}}}",
                    json_str(self.jwt.as_deref().unwrap_or_default())
                )]
            }
        }
    }

    /// The heartbeat to send every period, if the protocol has one on the
    /// client side (Phoenix; Socket.IO over EIO=3 once the handshake said
    /// the interval).
    pub fn heartbeat_period(&self) -> Option<Duration> {
        match self.protocol {
            Protocol::Phoenix => Some(self.options.heartbeat),
            Protocol::Socketio => self.ping_interval,
            _ => None,
        }
    }

    pub fn heartbeat(&mut self) -> Option<String> {
        match self.protocol {
            Protocol::Phoenix => {
                let r = self.take_ref();
                Some(format!("[null,\"{r}\",\"phoenix\",\"heartbeat\",{{}}]"))
            }
            Protocol::Socketio if self.ping_interval.is_some() => Some("2".into()),
            _ => None,
        }
    }

    /// Read one text frame.
    pub fn read<'a>(&mut self, text: &'a str) -> Read<'a> {
        match self.protocol {
            Protocol::Native => Read {
                frame: crate::client::classify(text),
                send: Vec::new(),
                ready: false,
            },
            Protocol::Phoenix => self.read_phoenix(text),
            Protocol::Socketio => self.read_socketio(text),
            Protocol::Cells => self.read_cells(text),
        }
    }

    fn joined_one(&mut self, id: u64) -> bool {
        let before = self.pending.len();
        self.pending.retain(|p| *p != id);
        if before != self.pending.len() && self.pending.is_empty() && self.state == State::Joining {
            self.state = State::Ready;
            return true;
        }
        false
    }

    fn read_phoenix<'a>(&mut self, text: &'a str) -> Read<'a> {
        // Broadcasts (`[null,null,…`) are the hot path: scan, do not parse.
        if text.starts_with("[null,null,") {
            if let Some(frame) = delivery(text) {
                return Read {
                    frame,
                    send: Vec::new(),
                    ready: false,
                };
            }
            return Read::other();
        }
        let Ok(items) = serde_json::from_str::<Vec<serde_json::Value>>(text) else {
            return Read::error("phx_bad_frame");
        };
        let event = items.get(3).and_then(|e| e.as_str()).unwrap_or_default();
        match event {
            "phx_reply" => {
                let ok = items
                    .get(4)
                    .and_then(|p| p.get("status"))
                    .and_then(|s| s.as_str())
                    == Some("ok");
                let reference = items
                    .get(1)
                    .and_then(|r| r.as_str())
                    .and_then(|r| r.parse::<u64>().ok());
                let joining = reference.is_some_and(|r| self.pending.contains(&r));
                if !ok {
                    return Read::error(if joining {
                        "phx_join_refused"
                    } else {
                        "phx_reply_error"
                    });
                }
                let ready = reference.is_some_and(|r| self.joined_one(r));
                Read {
                    frame: Frame::Other,
                    send: Vec::new(),
                    ready,
                }
            }
            "phx_error" => Read::error("phx_error"),
            "phx_close" => Read::error("phx_close"),
            _ => match delivery(text) {
                Some(frame) => Read {
                    frame,
                    send: Vec::new(),
                    ready: false,
                },
                None => Read::other(),
            },
        }
    }

    fn join_rooms(&mut self) -> Vec<String> {
        if self.options.join_event.is_empty() {
            self.state = State::Ready;
            return Vec::new();
        }
        let mut out = Vec::new();
        for room in self.channels.clone() {
            let id = self.take_ref();
            self.pending.push(id);
            out.push(format!(
                "42{id}[{},{}]",
                json_str(&self.options.join_event),
                json_str(&room)
            ));
        }
        if self.pending.is_empty() {
            self.state = State::Ready;
        }
        out
    }

    fn read_socketio<'a>(&mut self, text: &'a str) -> Read<'a> {
        let b = text.as_bytes();
        match b.first() {
            // Engine.IO open: the handshake.
            Some(b'0') => {
                let mut send = Vec::new();
                if self.options.eio == 3 {
                    self.ping_interval = serde_json::from_str::<serde_json::Value>(&text[1..])
                        .ok()
                        .and_then(|h| h["pingInterval"].as_u64())
                        .map(Duration::from_millis);
                } else {
                    // v5: the client connects to the main namespace.
                    send.push(match &self.jwt {
                        Some(token) => format!("40{{\"token\":{}}}", json_str(token)),
                        None => "40".into(),
                    });
                }
                Read {
                    frame: Frame::Other,
                    send,
                    ready: false,
                }
            }
            // Engine.IO ping (v4: from the server): answer.
            Some(b'2') if b.len() == 1 => Read {
                frame: Frame::Other,
                send: vec!["3".into()],
                ready: false,
            },
            Some(b'1') => Read::error("eio_close"),
            Some(b'4') => match b.get(1) {
                // Socket.IO EVENT: the hot path.
                Some(b'2') => match delivery(text) {
                    Some(frame) => Read {
                        frame,
                        send: Vec::new(),
                        ready: false,
                    },
                    None => Read::other(),
                },
                // CONNECT accepted: join the rooms.
                Some(b'0') if self.state == State::Joining && self.pending.is_empty() => {
                    let send = self.join_rooms();
                    let ready = self.state == State::Ready;
                    Read {
                        frame: Frame::Other,
                        send,
                        ready,
                    }
                }
                // ACK of a join.
                Some(b'3') => {
                    let id: String = text[2..].chars().take_while(char::is_ascii_digit).collect();
                    let ready = id.parse().is_ok_and(|id| self.joined_one(id));
                    Read {
                        frame: Frame::Other,
                        send: Vec::new(),
                        ready,
                    }
                }
                Some(b'4') => Read::error("sio_connect_error"),
                Some(b'1') => Read::error("sio_disconnect"),
                _ => Read::other(),
            },
            _ => Read::other(),
        }
    }

    fn read_cells<'a>(&mut self, text: &'a str) -> Read<'a> {
        if text.contains("\"@type\":\"error\"") {
            return Read::error("cells_error");
        }
        match delivery(text) {
            Some(frame) => Read {
                frame,
                send: Vec::new(),
                ready: false,
            },
            None => Read::other(),
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Claims of a Cells subscriber's token: its user and the workspaces
/// (channels) it is entitled to. The node's claim names must match
/// (`sub`, `name`, `profile`, `roles`, `workspaces`).
pub fn cells_claims(user: &str, workspaces: &[String], exp: u64) -> serde_json::Value {
    serde_json::json!({
        "sub": user,
        "name": user,
        "profile": "standard",
        "roles": [],
        "workspaces": workspaces,
        "exp": exp,
    })
}

/// The server API body that publishes `data` for `protocol` subscribers of
/// `channel`, and its path: `/api/notify/channels` with an `event` name
/// (Phoenix, Socket.IO), or `/api/events` with a workspace audience (Cells).
pub fn api_publish(
    protocol: Protocol,
    event: &str,
    channel: &str,
    data: &str,
) -> (&'static str, String) {
    match protocol {
        Protocol::Native => (
            "/api/notify/channels",
            format!(
                "{{\"channel_ids\":[{}],\"data\":{data}}}",
                json_str(channel)
            ),
        ),
        Protocol::Phoenix | Protocol::Socketio => (
            "/api/notify/channels",
            format!(
                "{{\"channel_ids\":[{}],\"event\":{},\"data\":{data}}}",
                json_str(channel),
                json_str(event)
            ),
        ),
        Protocol::Cells => (
            "/api/events",
            format!(
                "{{\"kind\":{},\"audience\":{{\"workspaces\":[{}]}},\"body\":{data}}}",
                json_str(event),
                json_str(channel)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    //! The frames are checked with the node's own wire modules: what this
    //! client sends must decode there, and what the node encodes must be
    //! read here.

    use pubmesh_node::frontend::cells::wire as cells;
    use pubmesh_node::frontend::phoenix::wire as phx;
    use pubmesh_node::frontend::socketio::{engineio as eio, wire as sio};
    use serde_json::value::RawValue;

    use super::*;
    use crate::client::payload;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).expect("json")
    }

    #[test]
    fn phoenix_joins_heartbeats_and_broadcasts() {
        let mut s = Session::new(
            Protocol::Phoenix,
            Options::default(),
            vec!["fanout-0".into(), "room:\"1\"".into()],
            None,
        );
        assert_eq!(s.path(), "/socket/websocket?vsn=2.0.0");
        let joins = s.start();
        assert_eq!(joins.len(), 2);
        let mut refs = Vec::new();
        for (frame, topic) in joins.iter().zip(["fanout-0", "room:\"1\""]) {
            match phx::Inbound::decode_text(phx::Vsn::V2, frame).expect("node decodes the join") {
                phx::Inbound::Join {
                    join_ref,
                    reference,
                    topic: t,
                    ..
                } => {
                    assert_eq!(t, topic);
                    assert_eq!(join_ref, reference);
                    refs.push(reference.expect("a ref"));
                }
                other => panic!("not a join: {other:?}"),
            }
        }
        assert!(!s.is_ready());
        let reply = |r: &phx::Ref, status| {
            phx::encode_reply(
                phx::Vsn::V2,
                Some(r),
                Some(r),
                "fanout-0",
                status,
                &raw("{}"),
            )
        };
        let first = reply(&refs[0], phx::Status::Ok);
        assert!(!s.read(&first).ready);
        let second = reply(&refs[1], phx::Status::Ok);
        assert!(s.read(&second).ready);
        assert!(s.is_ready());

        let hb = s.heartbeat().expect("phoenix heartbeats");
        assert!(matches!(
            phx::Inbound::decode_text(phx::Vsn::V2, &hb),
            Ok(phx::Inbound::Heartbeat { reference: Some(_) })
        ));
        assert_eq!(s.heartbeat_period(), Some(Duration::from_secs(30)));

        let data = payload(1234, 9, false, "xx");
        let b = phx::encode_broadcast(phx::Vsn::V2, "fanout-0", "bench", &raw(&data));
        assert_eq!(s.read(&b).frame, Frame::Delivery(1234));
        let warm = phx::encode_broadcast(
            phx::Vsn::V2,
            "fanout-0",
            "bench",
            &raw(&payload(5, 1, true, "")),
        );
        assert_eq!(s.read(&warm).frame, Frame::Warm);
        // A push to the member (join ref set) is read too.
        let push = phx::encode_push(
            phx::Vsn::V2,
            Some(&refs[0]),
            "fanout-0",
            "bench",
            &raw(&data),
        );
        assert_eq!(s.read(&push).frame, Frame::Delivery(1234));
        let err = phx::encode_error(phx::Vsn::V2, Some(&refs[0]), "fanout-0");
        assert_eq!(s.read(&err).frame, Frame::Error("phx_error"));
        let close = phx::encode_close(phx::Vsn::V2, Some(&refs[0]), "fanout-0");
        assert_eq!(s.read(&close).frame, Frame::Error("phx_close"));
    }

    #[test]
    fn phoenix_refused_join_is_an_error() {
        let mut s = Session::new(
            Protocol::Phoenix,
            Options::default(),
            vec!["t".into()],
            None,
        );
        let join = s.start().remove(0);
        let phx::Inbound::Join { reference, .. } =
            phx::Inbound::decode_text(phx::Vsn::V2, &join).expect("join")
        else {
            panic!("a join");
        };
        let refused = phx::encode_reply(
            phx::Vsn::V2,
            reference.as_ref(),
            reference.as_ref(),
            "t",
            phx::Status::Error,
            &phx::reason("unauthorized"),
        );
        assert_eq!(s.read(&refused).frame, Frame::Error("phx_join_refused"));
        assert!(!s.is_ready());
    }

    fn handshake(eio_v: eio::Eio) -> String {
        eio::Handshake {
            sid: "abc".into(),
            upgrades: vec![],
            ping_interval: 25000,
            ping_timeout: 20000,
            max_payload: Some(1_000_000),
        }
        .packet(eio_v)
        .encode_text()
        .expect("text")
    }

    #[test]
    fn socketio_v5_connects_joins_pongs_and_reads_events() {
        let mut s = Session::new(
            Protocol::Socketio,
            Options::default(),
            vec!["fanout-0".into()],
            Some("tok".into()),
        );
        assert_eq!(s.path(), "/socket.io/?EIO=4&transport=websocket");
        assert!(s.start().is_empty());
        let hs = handshake(eio::Eio::V4);
        let open = s.read(&hs);
        assert_eq!(open.send.len(), 1);
        let connect = eio::Packet::decode_text(&open.send[0]).expect("engine.io packet");
        assert_eq!(connect.kind, eio::PacketType::Message);
        let eio::Data::Text(inner) = &connect.data else {
            panic!("text");
        };
        assert_eq!(
            sio::Packet::decode(inner),
            Ok(sio::Packet::Connect {
                nsp: "/".into(),
                query: None,
                data: Some(sio::Json::from_text(r#"{"token":"tok"}"#).expect("json"))
            })
        );
        // The node accepts: the client joins its room with an ack.
        let accepted =
            eio::Packet::message(sio::Packet::connected(sio::Version::V5, "/", "s1").encode());
        let accepted = accepted.encode_text().expect("text");
        let joined = s.read(&accepted);
        assert_eq!(joined.send.len(), 1);
        let sio::Packet::Event {
            id, event, args, ..
        } = sio::Packet::decode(&joined.send[0][1..]).expect("socket.io event")
        else {
            panic!("an event");
        };
        assert_eq!(event, "join");
        assert_eq!(args[0].get(), "\"fanout-0\"");
        let ack = sio::Packet::Ack {
            nsp: "/".into(),
            id: id.expect("an ack id"),
            args: vec![sio::Json::from_text("\"ok\"").expect("json")],
            attachments: None,
        };
        assert!(s.read(&format!("4{}", ack.encode())).ready);
        // Server pings are answered.
        let ping = eio::Packet::bare(eio::PacketType::Ping)
            .encode_text()
            .expect("text");
        assert_eq!(s.read(&ping).send, vec!["3".to_string()]);
        assert_eq!(s.heartbeat_period(), None);
        // A room event.
        let data = payload(777, 1, false, "x");
        let ev = sio::Packet::event(
            "/",
            "bench",
            vec![sio::Json::from_text(&data).expect("json")],
        );
        let frame = eio::Packet::message(ev.encode())
            .encode_text()
            .expect("text");
        assert_eq!(s.read(&frame).frame, Frame::Delivery(777));
        let refused = eio::Packet::message(
            sio::Packet::connect_error(sio::Version::V5, "/", "Not authorized").encode(),
        )
        .encode_text()
        .expect("text");
        assert_eq!(s.read(&refused).frame, Frame::Error("sio_connect_error"));
    }

    #[test]
    fn socketio_v4_pings_at_the_announced_interval() {
        let options = Options {
            eio: 3,
            join_event: String::new(),
            ..Options::default()
        };
        let mut s = Session::new(Protocol::Socketio, options, vec!["Chat".into()], None);
        assert_eq!(s.path(), "/socket.io/?EIO=3&transport=websocket");
        let hs = handshake(eio::Eio::V3);
        let open = s.read(&hs);
        assert!(
            open.send.is_empty(),
            "EIO=3: the server connects `/` itself"
        );
        assert_eq!(s.heartbeat_period(), Some(Duration::from_millis(25000)));
        assert_eq!(s.heartbeat().as_deref(), Some("2"));
        let connected =
            eio::Packet::message(sio::Packet::connected(sio::Version::V4, "/", "s").encode());
        // No join event: ready as soon as the namespace is joined.
        assert!(s.read(&connected.encode_text().expect("text")).ready);
    }

    #[test]
    fn cells_subscribes_with_its_token_and_reads_events() {
        let mut s = Session::new(
            Protocol::Cells,
            Options::default(),
            vec!["ws-1".into()],
            Some("a.b.c".into()),
        );
        assert_eq!(s.path(), "/ws/event");
        let sub = s.start();
        assert_eq!(
            cells::Control::decode(&sub[0]),
            Ok(cells::Control::Subscribe {
                jwt: "a.b.c".into()
            })
        );
        assert!(s.is_ready());
        assert_eq!(
            s.read(&payload(42, 1, false, "")).frame,
            Frame::Delivery(42)
        );
        // The stamp may sit anywhere in the event, keys in any order.
        assert_eq!(
            s.read(r#"{"@type":"tree","body":{"s":3,"t":99,"p":""},"EventWorkspaceId":"ws-1"}"#)
                .frame,
            Frame::Delivery(99)
        );
        assert_eq!(s.read(cells::DUMP).frame, Frame::Other);
        assert_eq!(
            s.read(&cells::error_frame("empty jwt")).frame,
            Frame::Error("cells_error")
        );
        let claims = cells_claims("u1", &["ws-1".into()], 10);
        assert_eq!(claims["workspaces"][0], "ws-1");
    }

    #[test]
    fn api_bodies_name_the_event_or_the_audience() {
        let data = payload(1, 2, false, "");
        let (path, body) = api_publish(Protocol::Phoenix, "bench", "fanout-0", &data);
        assert_eq!(path, "/api/notify/channels");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["event"], "bench");
        assert_eq!(v["channel_ids"][0], "fanout-0");
        assert_eq!(v["data"]["t"], 1);
        let (path, body) = api_publish(Protocol::Cells, "tree", "ws-1", &data);
        assert_eq!(path, "/api/events");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["audience"]["workspaces"][0], "ws-1");
        assert_eq!(v["body"]["s"], 2);
        let (_, body) = api_publish(Protocol::Native, "x", "c", &data);
        assert!(!body.contains("event"));
    }
}
