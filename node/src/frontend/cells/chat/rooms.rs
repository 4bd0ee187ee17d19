//! Chat rooms and their stored messages, as plain values: a room's uuid
//! and channel, the read-only claim, the sanitised text, and the history
//! of a room read back as its live messages and pages.
//!
//! A room's history is its channel's history: every POST is stored as the
//! `ChatMessage` frame members received, every DELETE_MSG as the
//! `{"@type":"DELETE_MSG",…}` frame; reading it back drops deleted
//! messages.

use serde_json::{Map, Value};

use crate::config::cells::CHAT_ROOM_PREFIX;
use crate::frontend::cells::wire::{ChatMessage, ChatRoom, HistoryRange, RoomType};

/// Names the room uuids derived from a room's type and object (a fixed,
/// random namespace, so they differ from any other product's uuids).
const ROOM_NAMESPACE: &str = "pubmesh.cells.chat.room.v1";

/// The uuid of the room of `kind` and `object`: the same on every node and
/// across restarts (a name-based, SHA-1 uuid), so finding a room needs no
/// lookup and two nodes never make two rooms for one object.
pub fn room_uuid(kind: RoomType, object: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut hash = Sha1::new();
    hash.update(ROOM_NAMESPACE.as_bytes());
    hash.update([0]);
    hash.update(kind.as_str().as_bytes());
    hash.update([0]);
    hash.update(object.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The internal channel of a room.
pub fn channel(room_uuid: &str) -> String {
    format!("{CHAT_ROOM_PREFIX}{room_uuid}")
}

/// The room a JOIN names (its type and object; the object may be empty
/// only for `GLOBAL`, and `ANY` names no room), with its uuid set.
pub fn named(room: &ChatRoom) -> Result<ChatRoom, String> {
    if room.kind == RoomType::Any {
        return Err("room type ANY names no room".into());
    }
    if !(room.kind == RoomType::Global && room.type_object.is_empty()) {
        crate::frontend::cells::events::check_id("RoomTypeObject", &room.type_object)?;
    }
    Ok(ChatRoom {
        uuid: room_uuid(room.kind, &room.type_object),
        kind: room.kind,
        type_object: room.type_object.clone(),
        ..ChatRoom::default()
    })
}

/// The uuid of the room a LEAVE or HISTORY names: from its type and
/// object when it has them, else its `Uuid`.
pub fn uuid_of(room: &ChatRoom) -> Result<String, String> {
    if !room.uuid.is_empty() && room.type_object.is_empty() {
        return Ok(room.uuid.clone());
    }
    named(room).map(|r| r.uuid)
}

/// The rooms a token makes read-only: its `claim` as an array of strings
/// or one comma separated string; each is `*` (every room), a room uuid or
/// `TYPE:object`.
pub fn read_only_claim(all: &Map<String, Value>, claim: &str) -> Result<Vec<String>, String> {
    crate::frontend::cells::session::claim_list(all, claim)
}

/// Is `room` read-only under the read-only claim's `entries`?
pub fn is_read_only(entries: &[String], room: &ChatRoom) -> bool {
    let typed = format!("{}:{}", room.kind.as_str(), room.type_object);
    entries
        .iter()
        .any(|e| e == "*" || *e == room.uuid || *e == typed)
}

/// The text of a POST made safe to show as HTML: markup characters become
/// entities (so `<b>` reads as `<b>`, never as a tag) and control
/// characters other than line breaks and tabs are dropped.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A room's live messages, oldest first, from its stored frames (messages
/// and deletions, in the order they were stored). Frames that are neither
/// are skipped.
pub fn live_messages<'a>(stored: impl Iterator<Item = &'a str>) -> Vec<ChatMessage> {
    let mut messages: Vec<ChatMessage> = Vec::new();
    for text in stored {
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        if value.get("@type").and_then(Value::as_str) == Some("DELETE_MSG") {
            if let Some(uuid) = value.pointer("/Message/Uuid").and_then(Value::as_str) {
                messages.retain(|m| m.uuid != uuid);
            }
        } else if let Ok(m) = serde_json::from_value::<ChatMessage>(value) {
            if !m.uuid.is_empty() {
                messages.push(m);
            }
        }
    }
    messages
}

/// One HISTORY page: `Offset` counts from the newest message, `Limit` 0
/// means every message; the page is sent oldest first. The second value
/// is true when the page is full (`Limit` > 0 messages), so older
/// messages may follow (`MAY_HAVE_MORE`).
pub fn page(messages: &[ChatMessage], range: HistoryRange) -> (&[ChatMessage], bool) {
    let n = messages.len();
    let offset = usize::try_from(range.offset).unwrap_or(usize::MAX).min(n);
    let end = n - offset;
    let start = match usize::try_from(range.limit) {
        Ok(0) => 0,
        Ok(limit) => end.saturating_sub(limit),
        Err(_) => 0,
    };
    let page = &messages[start..end];
    let full = range.limit > 0 && page.len() as i64 == range.limit;
    (page, full)
}

/// A room's members: the distinct users present, sorted.
pub fn users(present: impl Iterator<Item = String>) -> Vec<String> {
    let mut users: Vec<String> = present.collect();
    users.sort();
    users.dedup();
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(uuid: &str, text: &str) -> String {
        crate::frontend::cells::wire::chat_message(&ChatMessage {
            uuid: uuid.into(),
            room_uuid: "r".into(),
            message: text.into(),
            author: "alice".into(),
            timestamp: 1_700_000_000,
            ..ChatMessage::default()
        })
    }

    #[test]
    fn room_uuids_are_stable_and_distinct_per_type_and_object() {
        let a = room_uuid(RoomType::Node, "n-1");
        assert_eq!(a, room_uuid(RoomType::Node, "n-1"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "5", "a name-based SHA-1 uuid: {a}");
        assert_ne!(a, room_uuid(RoomType::Workspace, "n-1"));
        assert_ne!(a, room_uuid(RoomType::Node, "n-2"));
        // Pinned: rooms stored by an earlier build must keep their uuid.
        assert_eq!(a, "de901614-eb96-5222-9ed6-fc886d250a25");
        assert_eq!(
            room_uuid(RoomType::Global, ""),
            "8d1c403a-cbb0-5931-9d20-96865e6590d6"
        );
    }

    #[test]
    fn rooms_are_named_by_type_and_object() {
        let r = |kind, object: &str| ChatRoom {
            kind,
            type_object: object.into(),
            ..ChatRoom::default()
        };
        assert!(named(&r(RoomType::Global, "")).is_ok());
        assert!(named(&r(RoomType::Node, "")).is_err());
        assert!(named(&r(RoomType::Any, "x")).is_err());
        assert!(named(&r(RoomType::Node, "a\u{1}b")).is_err());
        let joined = named(&r(RoomType::Node, "n-1")).unwrap();
        assert_eq!(joined.uuid, room_uuid(RoomType::Node, "n-1"));
        let by_uuid = ChatRoom {
            uuid: joined.uuid.clone(),
            ..ChatRoom::default()
        };
        // A room without an object is named by its Uuid when it has one.
        assert_eq!(uuid_of(&by_uuid), Ok(joined.uuid.clone()));
        assert_eq!(
            uuid_of(&ChatRoom::default()),
            Ok(room_uuid(RoomType::Global, ""))
        );
        let with_object = ChatRoom {
            uuid: "ignored".into(),
            ..r(RoomType::Node, "n-1")
        };
        assert_eq!(uuid_of(&with_object), Ok(joined.uuid));
    }

    #[test]
    fn the_read_only_claim_names_rooms_by_uuid_type_or_star() {
        let all: Map<String, Value> =
            serde_json::from_str(r#"{"ro":["NODE:n-1"],"csv":"a, *","bad":[1]}"#).unwrap();
        let room = named(&ChatRoom {
            kind: RoomType::Node,
            type_object: "n-1".into(),
            ..ChatRoom::default()
        })
        .unwrap();
        assert!(is_read_only(&read_only_claim(&all, "ro").unwrap(), &room));
        assert!(is_read_only(&read_only_claim(&all, "csv").unwrap(), &room));
        assert!(!is_read_only(
            &read_only_claim(&all, "none").unwrap(),
            &room
        ));
        assert!(is_read_only(std::slice::from_ref(&room.uuid), &room));
        assert!(read_only_claim(&all, "bad").is_err());
    }

    #[test]
    fn text_is_sanitised() {
        assert_eq!(
            sanitize("<script>alert('x')</script> & \"hi\"\u{7}\n"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &#34;hi&#34;\n"
        );
    }

    #[test]
    fn deleted_messages_leave_the_history_and_pages_count_from_the_newest() {
        let del = crate::frontend::cells::wire::delete_msg(&ChatMessage {
            uuid: "m2".into(),
            ..ChatMessage::default()
        });
        let stored = [
            message("m1", "one"),
            message("m2", "two"),
            "not json".to_string(),
            message("m3", "three"),
            del,
            message("m4", "four"),
        ];
        let live = live_messages(stored.iter().map(String::as_str));
        let ids: Vec<&str> = live.iter().map(|m| m.uuid.as_str()).collect();
        assert_eq!(ids, ["m1", "m3", "m4"]);
        let at = |offset, limit| {
            let (p, full) = page(&live, HistoryRange { offset, limit });
            (p.iter().map(|m| m.uuid.as_str()).collect::<Vec<_>>(), full)
        };
        assert_eq!(at(0, 2), (vec!["m3", "m4"], true));
        assert_eq!(at(2, 2), (vec!["m1"], false));
        assert_eq!(at(0, 0), (vec!["m1", "m3", "m4"], false));
        assert_eq!(at(0, i64::MAX), (vec!["m1", "m3", "m4"], false));
        assert_eq!(at(i64::MAX, 5), (vec![], false));
        assert_eq!(at(1, 2), (vec!["m1", "m3"], true));
    }

    #[test]
    fn users_are_distinct_and_sorted() {
        let present = ["bob", "alice", "bob"].map(String::from).into_iter();
        assert_eq!(users(present), ["alice", "bob"]);
    }
}
