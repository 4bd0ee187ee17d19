//! What the Cells chat's test files share: tokens and chat sessions.
#![allow(dead_code)]

use pubmesh_tests::harness::{hs256_with, patience, Client, Node};
use serde_json::{json, Value};

pub const SECRET: &str = "chat-secret";

pub fn chat_url(node: &Node) -> String {
    node.ws("").replace("/websocket", "/ws/chat")
}

/// A token for `user` with `extra` claims.
pub fn token_with(user: &str, extra: Value) -> String {
    let mut claims = json!({"sub": format!("id-{user}"), "name": user});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    hs256_with(SECRET, claims, 300)
}

/// `{"Type":…,"RoomTypeObject":…}`.
pub fn room(kind: &str, object: &str) -> Value {
    json!({"Type": kind, "RoomTypeObject": object})
}

/// A subscribed `/ws/chat` session.
pub struct Chat {
    pub client: Client,
    pub user: String,
    /// The uuid of the session's marker room (see [`Chat::history`]).
    marker: Option<String>,
}

impl Chat {
    pub async fn open(node: &Node, user: &str) -> Chat {
        Chat::open_with(node, user, json!({})).await
    }

    pub async fn open_with(node: &Node, user: &str, claims: Value) -> Chat {
        let mut client = Client::connect_raw(&chat_url(node), None)
            .await
            .expect("connect");
        client
            .send(json!({"@type": "subscribe", "jwt": token_with(user, claims)}))
            .await;
        Chat {
            client,
            user: user.into(),
            marker: None,
        }
    }

    /// The next frame that is a ROOM_UPDATE of `room_uuid` listing `users`.
    pub async fn room_update(&mut self, room_uuid: &str, users: &[&str]) -> Value {
        self.client
            .recv_until(|f| {
                f["@type"] == "ROOM_UPDATE"
                    && f["Room"]["Uuid"] == room_uuid
                    && names(&f["Room"]["Users"]) == users
            })
            .await
    }

    /// JOIN a room and wait until its ROOM_UPDATE lists `members`; returns
    /// the room.
    pub async fn join(&mut self, kind: &str, object: &str, members: &[&str]) -> Value {
        self.client
            .send(json!({"@type": "JOIN", "Room": room(kind, object)}))
            .await;
        let f = self
            .client
            .recv_until(|f| {
                f["@type"] == "ROOM_UPDATE"
                    // protojson leaves out an empty object (GLOBAL rooms).
                    && f["Room"]["RoomTypeObject"].as_str().unwrap_or("") == object
                    && names(&f["Room"]["Users"]) == members
            })
            .await;
        f["Room"].clone()
    }

    pub async fn ping(&mut self, kind: &str, object: &str) {
        self.client
            .send(json!({"@type": "JOIN", "Room": room(kind, object),
                         "Message": {"Message": "PING"}}))
            .await;
    }

    pub async fn post(&mut self, room_uuid: &str, text: &str) {
        self.client
            .send(json!({"@type": "POST", "Message": {"RoomUuid": room_uuid, "Message": text}}))
            .await;
    }

    /// The next posted message (a frame with a `RoomUuid` and no `@type`).
    pub async fn message(&mut self) -> Value {
        self.client
            .recv_until(|f| f.get("@type").is_none() && f.get("RoomUuid").is_some())
            .await
    }

    /// HISTORY of a room: every frame it sends (ROOM_UPDATE, messages,
    /// MAY_HAVE_MORE). Cells marks no end, so the session joins a marker
    /// room of its own once and asks for its (empty) history after:
    /// frames are answered in order, so the marker's ROOM_UPDATE ends the
    /// page. Nothing else may be sent to the session meanwhile.
    pub async fn history(
        &mut self,
        kind: &str,
        object: &str,
        range: Option<(i64, i64)>,
    ) -> Vec<Value> {
        let marker_object = format!("marker-{}", self.user);
        if self.marker.is_none() {
            let user = self.user.clone();
            let r = self.join("USER", &marker_object, &[user.as_str()]).await;
            self.marker = Some(r["Uuid"].as_str().expect("uuid").to_string());
        }
        let mut frame = json!({"@type": "HISTORY", "Room": room(kind, object)});
        if let Some((offset, limit)) = range {
            frame["Message"] =
                json!({"Message": json!({"Offset": offset, "Limit": limit}).to_string()});
        }
        self.client.send(frame).await;
        self.client
            .send(json!({"@type": "HISTORY", "Room": room("USER", &marker_object)}))
            .await;
        let marker = self.marker.clone().expect("marker");
        let mut out = Vec::new();
        loop {
            let f = self.client.recv_within(patience(30)).await;
            if f["@type"] == "ROOM_UPDATE" && f["Room"]["Uuid"] == marker.as_str() {
                return out;
            }
            out.push(f);
        }
    }
}

/// A JSON array of strings as a Vec.
pub fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The `Message` texts of the message frames among `frames`.
pub fn texts(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f.get("@type").is_none())
        .filter_map(|f| f["Message"].as_str().map(String::from))
        .collect()
}
