//! Connection-state recovery (socket.io-client's `recovered`), built on
//! channel history so that it survives the death of the node a client was
//! on (docs/socketio.md, "Connection-state recovery").
//!
//! In a namespace with `recovery_seconds`, the CONNECT reply carries a
//! `pid` (the session's recovery id) and every event to the socket carries
//! an *offset* as its last argument, which the official client keeps (the
//! last one it received) and sends back, with the `pid`, in its next
//! CONNECT. The offset is the socket's position in each of its history
//! rooms as of that event ([`Offsets`]), so a reconnecting client names
//! exactly what it has seen. The session's rooms are a [record](Record) in
//! the history store, kept alive while the socket is and for the window
//! after it, so any node can rejoin them, from those positions.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::wire::Json;
use crate::delivery::Position;

/// A first CONNECT: its namespace and what it asks to recover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connecting {
    pub nsp: String,
    pub claim: Option<Claim>,
}

impl Connecting {
    /// A CONNECT to `nsp` that claims nothing.
    pub fn to(nsp: &str) -> Connecting {
        Connecting {
            nsp: nsp.to_string(),
            claim: None,
        }
    }
}

impl From<&str> for Connecting {
    fn from(nsp: &str) -> Connecting {
        Connecting::to(nsp)
    }
}

/// What a CONNECT asks to recover: socket.io-client sends its last `pid`
/// and the last offset it received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub pid: String,
    pub offset: Option<String>,
}

impl Claim {
    /// The claim in a CONNECT's `auth` data, if any.
    pub fn of(data: Option<&Json>) -> Option<Claim> {
        let v: Value = serde_json::from_str(data?.get()).ok()?;
        let pid = v.get("pid")?.as_str()?.to_string();
        if pid.is_empty() || pid.len() > 64 {
            return None;
        }
        let offset = v.get("offset").and_then(Value::as_str).map(str::to_string);
        Some(Claim { pid, offset })
    }

    /// The positions the offset names (none when it is not one of ours).
    pub fn positions(&self) -> HashMap<String, Position> {
        self.offset.as_deref().map(parse).unwrap_or_default()
    }
}

/// A recovery session's record: its namespace, its user (when the token
/// was valid) and its rooms' channels. `closed`: the client left on purpose.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub nsp: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub rooms: Vec<String>,
    #[serde(default)]
    pub closed: bool,
}

/// The record's name in the history store.
pub fn record_name(pid: &str) -> String {
    format!("socketio.pid:{pid}")
}

/// A fresh recovery id.
pub fn new_pid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `[[channel, epoch, offset], …]`, as a JSON string: the offset argument.
pub fn format(rooms: &Rooms) -> String {
    let list: Vec<(&str, &str, u64)> = rooms
        .iter()
        .map(|(c, (e, o))| (c.as_str(), e.as_str(), *o))
        .collect();
    serde_json::to_string(&list).unwrap_or_default()
}

/// The positions of an offset argument; anything else names none.
pub fn parse(offset: &str) -> HashMap<String, Position> {
    serde_json::from_str::<Vec<(String, String, u64)>>(offset)
        .map(|list| {
            list.into_iter()
                .map(|(c, epoch, offset)| (c, Position { offset, epoch }))
                .collect()
        })
        .unwrap_or_default()
}

/// A socket's positions in a namespace: channel → (epoch, offset).
pub type Rooms = BTreeMap<String, (String, u64)>;

/// For every socket in a recovery namespace, its position in each history
/// room as of the last event encoded for it (the fan-out encodes a
/// connection's deliveries in the order it queues them). Shared by the
/// codec, which reads and advances it, and the sessions, which start and
/// end it.
///
/// The fan-out takes the lock once per socket per event, to move one
/// position and compare the socket's positions with those of the socket
/// before it (the codec's [`Offsets::advance`]): no allocation there
/// unless they differ, and nothing is encoded under it.
#[derive(Default)]
pub struct Offsets {
    /// Sockets tracked: when 0, the codec never takes the lock.
    tracked: AtomicUsize,
    /// client id → namespace → channel → (epoch, offset).
    map: Mutex<HashMap<String, HashMap<String, Rooms>>>,
}

impl Offsets {
    /// Start tracking `client` in `nsp` (its positions so far forgotten).
    pub fn start(&self, client: &str, nsp: &str) {
        let mut map = self.map.lock();
        let namespaces = map.entry(client.to_string()).or_default();
        if namespaces.insert(nsp.to_string(), Rooms::new()).is_none() {
            self.tracked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stop tracking `client` in `nsp` (every namespace: `None`).
    pub fn end(&self, client: &str, nsp: Option<&str>) {
        let mut map = self.map.lock();
        let Some(namespaces) = map.get_mut(client) else {
            return;
        };
        let removed = match nsp {
            Some(nsp) => usize::from(namespaces.remove(nsp).is_some()),
            None => namespaces.drain().count(),
        };
        if namespaces.is_empty() {
            map.remove(client);
        }
        self.tracked.fetch_sub(removed, Ordering::Relaxed);
    }

    /// Set `client`'s position in `channel` of `nsp` (a join's position).
    pub fn set(&self, client: &str, nsp: &str, channel: &str, position: &Position) {
        if let Some(rooms) = self.map.lock().get_mut(client).and_then(|n| n.get_mut(nsp)) {
            rooms.insert(
                channel.to_string(),
                (position.epoch.clone(), position.offset),
            );
        }
    }

    /// Forget `client`'s positions in `channels` of `nsp` (it left them).
    pub fn forget(&self, client: &str, nsp: &str, channels: &[String]) {
        if let Some(rooms) = self.map.lock().get_mut(client).and_then(|n| n.get_mut(nsp)) {
            for c in channels {
                rooms.remove(c);
            }
        }
    }

    /// Is any socket tracked? (When none is, events are encoded once for
    /// every socket and the lock is never taken.)
    pub fn tracking(&self) -> bool {
        self.tracked.load(Ordering::Relaxed) > 0
    }

    /// Move `client`'s position in the event's channel (when the event has
    /// one), then `read` its positions in `nsp` (their offset argument is
    /// [`format`] of them); `None` when `client` is not tracked in `nsp`.
    /// `read` runs under the lock: it should only compare or copy.
    pub fn advance<R>(
        &self,
        client: &str,
        nsp: &str,
        moved: Option<(&str, &Position)>,
        read: impl FnOnce(&Rooms) -> R,
    ) -> Option<R> {
        let mut map = self.map.lock();
        let rooms = map.get_mut(client)?.get_mut(nsp)?;
        if let Some((channel, p)) = moved {
            if let Some((epoch, offset)) = rooms.get_mut(channel) {
                if *epoch != p.epoch {
                    epoch.clone_from(&p.epoch);
                }
                *offset = p.offset;
            }
        }
        Some(read(rooms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: &str, offset: u64) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn offsets_name_every_history_room_and_parse_back() {
        let o = Offsets::default();
        assert!(!o.tracking());
        o.start("c", "/");
        o.set("c", "/", "Chat", &pos("e1", 4));
        o.set("c", "/", "Jobs", &pos("e2", 0));
        assert!(o.tracking());
        let s = o.advance("c", "/", Some(("Jobs", &pos("e2", 1))), format);
        assert_eq!(s.unwrap(), r#"[["Chat","e1",4],["Jobs","e2",1]]"#);
        // A new epoch replaces the old one.
        let s = o.advance("c", "/", Some(("Chat", &pos("e9", 0))), format);
        assert_eq!(s.unwrap(), r#"[["Chat","e9",0],["Jobs","e2",1]]"#);
        // A channel it is not positioned in does not appear.
        let s = o.advance("c", "/", Some(("Other", &pos("e3", 9))), format);
        let s = s.unwrap();
        assert_eq!(parse(&s).len(), 2);
        assert_eq!(parse(&s)["Chat"], pos("e9", 0));
        assert_eq!(o.advance("c", "/admin", None, format), None);
        o.forget("c", "/", &["Chat".into()]);
        let s = o.advance("c", "/", None, format);
        assert_eq!(s.unwrap(), r#"[["Jobs","e2",1]]"#);
        o.end("c", None);
        assert!(!o.tracking());
        assert_eq!(o.tracked.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn claims_come_from_the_connect_data() {
        let data = Json::from_text(r#"{"pid":"p1","offset":"[[\"a\",\"e\",3]]","token":"x"}"#);
        let c = Claim::of(data.as_ref()).unwrap();
        assert_eq!(c.pid, "p1");
        assert_eq!(c.positions()["a"], pos("e", 3));
        let no_offset = Json::from_text(r#"{"pid":"p1"}"#);
        assert!(Claim::of(no_offset.as_ref())
            .unwrap()
            .positions()
            .is_empty());
        assert_eq!(
            Claim::of(Json::from_text(r#"{"token":"x"}"#).as_ref()),
            None
        );
        assert!(parse("not ours").is_empty());
    }
}
