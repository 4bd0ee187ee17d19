//! One `/ws/chat` socket: `subscribe` as on `/ws/event`, then JOIN (and
//! its 15 s pings), LEAVE, HISTORY, POST and DELETE_MSG. Requests Cells
//! ignores are ignored here too, and counted; nothing is stored for them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::access::Access;
use super::rooms;
use super::{Chat, FAMILY};
use crate::conn::Conn;
use crate::delivery::{Delivery, Target};
use crate::frontend::cells::session::{authenticate, closed, Refusal, Verified};
use crate::frontend::cells::wire::{
    self, error_frame, ChatError, ChatMessage, ChatRequest, ChatRoom, Control, HistoryRange,
    EMPTY_JWT_CHAT,
};
use crate::node::{JoinRequest, Node, Read, Scope};
use crate::outbox::CloseReason;
use crate::presence::PresenceEntry;
use crate::transport::{Flow, Session};

/// The Cells user of a subscribed session.
struct User {
    name: String,
    /// The read-only claim's entries.
    read_only: Vec<String>,
    /// Token expiry, seconds since the epoch: the claims stop counting then.
    expires_at: u64,
    /// The token, for the access backend.
    token: String,
}

/// A room the session joined.
struct Member {
    room: ChatRoom,
    channel: String,
    /// Read-only by the claim or the access backend.
    read_only: bool,
    /// The access backend's answer was `read` (kept when a new token
    /// changes the claim).
    backend_read_only: bool,
    /// The last JOIN (or JOIN ping) for it.
    pinged: Instant,
}

/// The chat state of one socket.
pub struct ChatSession {
    node: Arc<Node>,
    conn: Arc<Conn>,
    chat: Arc<Chat>,
    user: Option<User>,
    /// Joined rooms, by uuid.
    rooms: HashMap<String, Member>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why a request was ignored (a `pubmesh_cells_chat_refused_total` reason).
type Ignored = &'static str;

impl ChatSession {
    pub fn new(node: Arc<Node>, conn: Arc<Conn>, chat: Arc<Chat>) -> Self {
        node.metrics
            .frontend
            .connections
            .with_label_values(&[FAMILY])
            .inc();
        ChatSession {
            node,
            conn,
            chat,
            user: None,
            rooms: HashMap::new(),
        }
    }

    /// How often [`Session::on_tick`] checks pings and the token.
    pub fn tick(ping_timeout: Duration) -> Duration {
        (ping_timeout / 4).min(Duration::from_secs(1))
    }

    /// Send the error frame, and close.
    fn refuse(&mut self, Refusal(code, text, reason): Refusal) -> Flow {
        self.node.metrics.frontend.error(FAMILY, code);
        self.node
            .send(&self.conn, Utf8Bytes::from(error_frame(&text)));
        Flow::Close(reason)
    }

    async fn subscribe(&mut self, jwt: &str) -> Result<(), Refusal> {
        let Verified {
            claims,
            all,
            expires_at,
        } = authenticate(&self.node, &self.conn, jwt, true).await?;
        let claim = &self.node.config.cells.chat_readonly_claim;
        let read_only = rooms::read_only_claim(&all, claim)
            .map_err(|e| Refusal("bad_claims", e, CloseReason::BadFrame))?;
        if self.user.as_ref().is_some_and(|u| u.name != claims.user) {
            self.leave_all().await;
        }
        for m in self.rooms.values_mut() {
            m.read_only = m.backend_read_only || rooms::is_read_only(&read_only, &m.room);
        }
        self.user = Some(User {
            name: claims.user,
            read_only,
            expires_at,
            token: crate::auth::strip_bearer(jwt).to_string(),
        });
        Ok(())
    }

    /// The subscribed user, while its token is valid.
    fn user(&self) -> Result<&User, Ignored> {
        match &self.user {
            Some(u) if u.expires_at > now_secs() => Ok(u),
            _ => Err("not_subscribed"),
        }
    }

    /// A joined room and its user, for a POST or DELETE_MSG.
    fn writable(&self, room_uuid: &str) -> Result<(&Member, String), Ignored> {
        let user = self.user()?.name.clone();
        let member = self.rooms.get(room_uuid).ok_or("not_joined")?;
        if member.read_only {
            return Err("read_only");
        }
        Ok((member, user))
    }

    /// The room with its members: the users present, cluster-wide.
    fn with_users(member: &Member, present: Vec<PresenceEntry>) -> ChatRoom {
        ChatRoom {
            users: rooms::users(present.into_iter().map(|e| e.user_id)),
            last_updated: i32::try_from(now_secs()).unwrap_or(i32::MAX),
            ..member.room.clone()
        }
    }

    /// Tell the room's members its member list after `user` joined or
    /// left, when that changed it: the user's first session in the room
    /// joined, or its last one left.
    async fn announce(&self, member: &Member, user: &str, joined: bool) {
        let Ok(present) = self.node.presence(&member.channel).await else {
            return;
        };
        let sessions = present.iter().filter(|e| e.user_id == user).count();
        if sessions != usize::from(joined) {
            return;
        }
        let room = Self::with_users(member, present);
        let data = Utf8Bytes::from(wire::room_update(&room));
        let update = Delivery::new(Target::Channels(vec![member.channel.clone()]), data);
        self.node.publish(update, Scope::Cluster);
    }

    async fn join(&mut self, room: &ChatRoom, ping: bool) -> Result<(), Ignored> {
        let user = self.user()?;
        let (name, token) = (user.name.clone(), user.token.clone());
        let room = rooms::named(room).map_err(|_| "bad_room")?;
        let read_only = rooms::is_read_only(&user.read_only, &room);
        if let Some(m) = self.rooms.get_mut(&room.uuid) {
            m.pinged = Instant::now();
            return Ok(());
        }
        let channel = rooms::channel(&room.uuid);
        // A ping never makes a room: it joins one only if it has members
        // or messages (a session back after its pings stopped).
        if ping && !self.exists(&channel).await? {
            return Ok(());
        }
        let backend_read_only = match &self.chat.access {
            None => false,
            Some(hook) => match hook.check(&name, &room, &token).await? {
                Access::Write => false,
                Access::Read => true,
                Access::None => return Err("forbidden"),
            },
        };
        let request = JoinRequest {
            channels: std::slice::from_ref(&channel),
            positioned: false,
            since: &HashMap::new(),
        };
        self.node
            .join(&self.conn, request, |_| None)
            .await
            .map_err(|_| "join_refused")?;
        self.chat.member(&room.uuid, true);
        let member = Member {
            room,
            channel,
            read_only: read_only || backend_read_only,
            backend_read_only,
            pinged: Instant::now(),
        };
        self.announce(&member, &name, true).await;
        self.rooms.insert(member.room.uuid.clone(), member);
        Ok(())
    }

    /// Does the room have members or stored messages?
    async fn exists(&self, channel: &str) -> Result<bool, Ignored> {
        let present = self
            .node
            .presence(channel)
            .await
            .map_err(|_| "unavailable")?;
        if !present.is_empty() {
            return Ok(true);
        }
        let options = self
            .node
            .may_read(Some(&self.conn), channel, Read::History)
            .map_err(|_| "not_subscribed")?;
        let page = self
            .node
            .history(channel, None, 1, &options)
            .await
            .map_err(|_| "unavailable")?;
        Ok(!page.publications.is_empty())
    }

    /// Leave a joined room and tell its members.
    async fn leave(&mut self, room_uuid: &str) {
        let Some(member) = self.rooms.remove(room_uuid) else {
            return;
        };
        let user = match &self.user {
            Some(u) => u.name.clone(),
            None => self.conn.state.lock().root_id.to_string(),
        };
        self.node
            .leave(&self.conn, std::slice::from_ref(&member.channel), || None)
            .await;
        self.chat.member(room_uuid, false);
        self.announce(&member, &user, false).await;
    }

    async fn leave_all(&mut self) {
        let all: Vec<String> = self.rooms.keys().cloned().collect();
        for uuid in all {
            self.leave(&uuid).await;
        }
    }

    /// The stored messages of a joined room, oldest first.
    async fn messages(&self, member: &Member) -> Result<Vec<ChatMessage>, Ignored> {
        let options = self
            .node
            .may_read(Some(&self.conn), &member.channel, Read::History)
            .map_err(|_| "not_subscribed")?;
        let page = self
            .node
            .history(&member.channel, None, options.history_size, &options)
            .await
            .map_err(|_| "unavailable")?;
        Ok(rooms::live_messages(
            page.publications.iter().map(|p| p.data.as_str()),
        ))
    }

    /// HISTORY: `ROOM_UPDATE`, the page's messages, then `MAY_HAVE_MORE`
    /// after a full page.
    async fn history(&self, room: &ChatRoom, range: HistoryRange) -> Result<(), Ignored> {
        self.user()?;
        let uuid = rooms::uuid_of(room).map_err(|_| "bad_room")?;
        let member = self.rooms.get(&uuid).ok_or("not_joined")?;
        let messages = self.messages(member).await?;
        let present = self
            .node
            .presence(&member.channel)
            .await
            .map_err(|_| "unavailable")?;
        let room = Self::with_users(member, present);
        let (page, full) = rooms::page(&messages, range);
        let send = |frame: String| self.node.send(&self.conn, Utf8Bytes::from(frame));
        send(wire::room_update(&room));
        for m in page {
            send(wire::chat_message(m));
        }
        if full {
            let first = page.first().map_or(0, |m| m.timestamp);
            send(wire::may_have_more(
                &uuid,
                first,
                range.offset.saturating_add(range.limit),
                range.limit,
            ));
        }
        Ok(())
    }

    /// Store a room frame (message or deletion) and send it to the room's
    /// members on every node.
    async fn store(&self, channel: &str, frame: String) -> Result<(), Ignored> {
        let delivery = Delivery::new(
            Target::Channels(vec![channel.to_string()]),
            Utf8Bytes::from(frame),
        );
        self.node
            .publish_channels(delivery, Scope::Cluster)
            .await
            .map(|_| ())
            .map_err(|_| "unavailable")
    }

    async fn post(&self, message: ChatMessage) -> Result<(), Ignored> {
        let (member, author) = self.writable(&message.room_uuid)?;
        let text = rooms::sanitize(&message.message);
        if text.trim().is_empty() {
            return Err("empty_message");
        }
        let posted = ChatMessage {
            uuid: uuid::Uuid::new_v4().to_string(),
            room_uuid: member.room.uuid.clone(),
            message: text,
            author,
            timestamp: now_secs() as i64,
            activity: message.activity,
            info: message.info,
        };
        self.store(&member.channel, wire::chat_message(&posted))
            .await?;
        self.chat.messages.with_label_values(&["posted"]).inc();
        Ok(())
    }

    /// DELETE_MSG: only of a stored message whose author is the session's
    /// user (the stored author, not the one the client sends).
    async fn delete(&self, message: ChatMessage) -> Result<(), Ignored> {
        let (member, user) = self.writable(&message.room_uuid)?;
        let stored = self
            .messages(member)
            .await?
            .into_iter()
            .find(|m| m.uuid == message.uuid)
            .ok_or("not_found")?;
        if stored.author != user {
            return Err("not_author");
        }
        self.store(&member.channel, wire::delete_msg(&stored))
            .await?;
        self.chat.messages.with_label_values(&["deleted"]).inc();
        Ok(())
    }

    async fn handle(&mut self, text: &str) -> Flow {
        self.node
            .metrics
            .frontend
            .messages_in
            .with_label_values(&[FAMILY])
            .inc();
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
            return self.refuse(Refusal("bad_json", e.to_string(), CloseReason::BadFrame));
        }
        let request = match ChatRequest::decode(text) {
            Ok(request) => request,
            Err(ChatError::EmptyJwt) => {
                let text = EMPTY_JWT_CHAT.to_string();
                return self.refuse(Refusal("empty_jwt", text, CloseReason::Unauthorized));
            }
            Err(ChatError::BadRange(_) | ChatError::NegativeRange) => {
                self.chat.refuse("bad_range");
                return Flow::Continue;
            }
            Err(_) => {
                self.chat.refuse("bad_message");
                return Flow::Continue;
            }
        };
        let done = match request {
            ChatRequest::Control(Control::Subscribe { jwt }) => {
                return match self.subscribe(&jwt).await {
                    Ok(()) => Flow::Continue,
                    Err(refusal) => self.refuse(refusal),
                };
            }
            ChatRequest::Control(Control::Unsubscribe) => {
                self.leave_all().await;
                self.user = None;
                Ok(())
            }
            ChatRequest::Control(Control::Other(_)) | ChatRequest::Ignored(_) => Err("bad_message"),
            ChatRequest::Join { room, ping } => self.join(&room, ping).await,
            ChatRequest::Leave { room } => match rooms::uuid_of(&room) {
                Ok(uuid) => {
                    self.leave(&uuid).await;
                    Ok(())
                }
                Err(_) => Err("bad_room"),
            },
            ChatRequest::History { room, range } => self.history(&room, range).await,
            ChatRequest::Post { message } => self.post(message).await,
            ChatRequest::DeleteMsg { message } => self.delete(message).await,
        };
        if let Err(reason) = done {
            self.chat.refuse(reason);
        }
        Flow::Continue
    }
}

impl Session for ChatSession {
    async fn on_text(&mut self, text: Utf8Bytes) -> Flow {
        self.handle(&text).await
    }

    async fn on_binary(&mut self, _data: Bytes) -> Flow {
        let text = "binary frames are not supported; send JSON text".to_string();
        self.refuse(Refusal("bad_json", text, CloseReason::BadFrame))
    }

    /// Leave the rooms not pinged within the timeout, and every room once
    /// the token expired or the node made the socket leave (its identity
    /// changed).
    async fn on_tick(&mut self) -> Flow {
        if self.user.is_some() && self.user().is_err() {
            self.leave_all().await;
            self.user = None;
        }
        let timeout = self.node.config.cells.chat_ping_timeout;
        let stale: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, m)| m.pinged.elapsed() > timeout || !self.conn.is_member(&m.channel))
            .map(|(uuid, _)| uuid.clone())
            .collect();
        for uuid in stale {
            self.leave(&uuid).await;
        }
        Flow::Continue
    }

    async fn on_close(&mut self, closed_by_server: Option<CloseReason>) {
        self.leave_all().await;
        closed(&self.node, &self.conn, FAMILY, closed_by_server);
    }
}
