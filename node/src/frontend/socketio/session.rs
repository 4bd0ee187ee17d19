//! The Socket.IO state of one Engine.IO connection once it has joined a
//! namespace: the namespaces it is in and their rooms, the server's pings,
//! client packets in, node calls out, replies queued through the node.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use super::args::{auth_token, connect_token, message, with_attachments};
use super::backend::Backend;
use super::codec;
use super::engineio::{self, Eio, PacketType};
pub use super::pings::{Due, Pings};
use super::recovery::{Claim, Connecting, Offsets};
use super::wire::{self, Json, Packet, Reassembly, Start, Version};
use crate::config::socketio::SocketIo;
use crate::conn::Conn;
use crate::node::{JoinRequest, Node};
use crate::outbox::CloseReason;
use crate::transport::{Flow, Session};

mod events;
mod resume;
use resume::Resumable;

/// The front-end's name in metrics.
pub const FRONTEND: &str = "socketio";

/// Most attachments one binary packet may announce.
pub const MAX_ATTACHMENTS: usize = 64;

/// The codes of the front-end's error metrics (docs/socketio.md).
pub mod reasons {
    /// A packet Engine.IO or Socket.IO cannot read (the connection is closed).
    pub const BAD_PACKET: &str = "bad_packet";
    /// A CONNECT to a namespace that is not served.
    pub const INVALID_NAMESPACE: &str = "invalid_namespace";
    /// A CONNECT refused: bad token, `--require-auth`, or its default rooms.
    pub const CONNECT_REFUSED: &str = "connect_refused";
    /// No pong within the ping timeout.
    pub const PING_TIMEOUT: &str = "ping_timeout";
    /// No CONNECT within the connect timeout.
    pub const CONNECT_TIMEOUT: &str = "connect_timeout";
    /// A join event answered with anything but its `ok`.
    pub const JOIN_REFUSED: &str = "join_refused";
    /// A client event no join event or backend handles.
    pub const UNHANDLED_EVENT: &str = "unhandled_event";
    /// The backend did not answer in time / answered an error or not JSON /
    /// could not be reached (the client's ack carries the code).
    pub const BACKEND_TIMEOUT: &str = "backend_timeout";
    pub const BACKEND_ERROR: &str = "backend_error";
    pub const BACKEND_UNAVAILABLE: &str = "backend_unavailable";

    pub const ALL: &[&str] = &[
        BAD_PACKET,
        INVALID_NAMESPACE,
        CONNECT_REFUSED,
        PING_TIMEOUT,
        CONNECT_TIMEOUT,
        JOIN_REFUSED,
        UNHANDLED_EVENT,
        BACKEND_TIMEOUT,
        BACKEND_ERROR,
        BACKEND_UNAVAILABLE,
    ];
}

/// The message of the CONNECT_ERROR for a namespace not served (the
/// reference server's).
pub const INVALID_NAMESPACE: &str = "Invalid namespace";

/// The Socket.IO state of one connection.
pub struct SioSession {
    node: Arc<Node>,
    conn: Arc<Conn>,
    config: Arc<SocketIo>,
    /// The namespaces served other than `/`.
    namespaces: Arc<Vec<String>>,
    version: Version,
    eio: Eio,
    /// Connected namespaces and the channels of their rooms.
    connected: HashMap<String, BTreeSet<String>>,
    pings: Pings,
    /// A binary packet waiting for its attachments, and their bytes so far.
    pending: Option<(Reassembly, usize)>,
    /// The namespace the client connected to first (joined in `on_open`).
    first: Option<Connecting>,
    /// Where unhandled events go.
    backend: Option<Arc<Backend>>,
    /// Recovery positions (shared with the codec), and the namespaces it is
    /// on for, with their recovery ids.
    offsets: Arc<Offsets>,
    resumable: HashMap<String, Resumable>,
    /// The client closed the connection on purpose (`1`).
    closed_by_client: bool,
    metrics: Option<Arc<super::metrics::NamespaceMetrics>>,
}

impl SioSession {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: Arc<Node>,
        conn: Arc<Conn>,
        config: Arc<SocketIo>,
        namespaces: Arc<Vec<String>>,
        eio: Eio,
        first: Option<Connecting>,
        pings: Pings,
    ) -> Self {
        node.metrics
            .frontend
            .connections
            .with_label_values(&[FRONTEND])
            .inc();
        let version = match eio {
            Eio::V4 => Version::V5,
            Eio::V3 => Version::V4,
        };
        SioSession {
            node,
            conn,
            config,
            namespaces,
            version,
            eio,
            connected: HashMap::new(),
            pings,
            pending: None,
            first,
            backend: None,
            offsets: Arc::default(),
            resumable: HashMap::new(),
            closed_by_client: false,
            metrics: None,
        }
    }

    /// Send client events no join event handles to the front-end's
    /// backend, track recovery positions in its codec's offsets, count in
    /// its namespace metrics.
    pub(crate) fn with_shared(mut self, shared: &super::Shared) -> Self {
        self.backend = shared.backend.clone();
        self.offsets = shared.offsets.clone();
        self.metrics = shared.metrics.clone();
        self
    }

    /// The socket is in namespace `nsp` now, in these rooms' channels.
    fn entered(&mut self, nsp: String, channels: BTreeSet<String>) {
        if let Some(m) = &self.metrics {
            m.sockets.with_label_values(&[&nsp]).inc();
        }
        self.connected.insert(nsp, channels);
    }

    /// The socket left namespace `nsp` (or the connection ended).
    fn exited(&self, nsp: &str) {
        if let Some(m) = &self.metrics {
            m.sockets.with_label_values(&[nsp]).dec();
        }
    }

    fn send(&self, text: String) {
        self.node.send(&self.conn, Utf8Bytes::from(text));
    }

    fn received(&self) {
        self.node
            .metrics
            .frontend
            .messages_in
            .with_label_values(&[FRONTEND])
            .inc();
    }

    fn error(&self, code: &str) {
        self.node.metrics.frontend.error(FRONTEND, code);
    }

    /// A packet that cannot be read: the connection is closed, as the
    /// reference server does.
    fn bad_packet(&self, why: &dyn std::fmt::Display) -> Flow {
        self.error(reasons::BAD_PACKET);
        tracing::info!(error = %why, client_id = %self.conn.client_id, "socket.io connection sent a bad packet; closing");
        Flow::Close(CloseReason::BadFrame)
    }

    fn connect_error(&self, nsp: &str, why: &str) {
        self.send(message(&Packet::connect_error(self.version, nsp, why)));
    }

    /// Join namespace `nsp` (served, identity checked): its default rooms,
    /// answered by the CONNECT reply once the rooms are joined.
    async fn connect(&mut self, connecting: Connecting) {
        let Connecting { nsp, claim } = connecting;
        let Some(namespace) = self.config.namespace(&nsp) else {
            self.error(reasons::INVALID_NAMESPACE);
            return self.connect_error(&nsp, INVALID_NAMESPACE);
        };
        let channels: Vec<String> = namespace
            .rooms
            .iter()
            .map(|r| codec::channel(&nsp, r))
            .collect();
        if let Some(window) = namespace.recovery {
            return self.connect_resumable(nsp, window, claim, channels).await;
        }
        let reply = message(&Packet::connected(self.version, &nsp, &self.conn.client_id));
        if channels.is_empty() {
            self.send(reply);
            self.entered(nsp, BTreeSet::new());
            return;
        }
        let request = JoinRequest {
            channels: &channels,
            positioned: false,
            since: &HashMap::new(),
        };
        match self
            .node
            .join(&self.conn, request, |_| Some(Utf8Bytes::from(reply)))
            .await
        {
            Ok(()) => {
                self.entered(nsp, channels.into_iter().collect());
            }
            Err(e) => {
                self.error(reasons::CONNECT_REFUSED);
                self.connect_error(&nsp, &e.to_string());
            }
        }
    }

    /// A CONNECT after the first: a new token in `auth` changes the
    /// connection's identity (for every namespace, as it is one mesh
    /// connection).
    async fn reconnect_namespace(
        &mut self,
        nsp: String,
        token: Option<String>,
        claim: Option<Claim>,
    ) {
        if self.connected.contains_key(&nsp) {
            // Already in: answer again.
            return self.send(message(&Packet::connected(
                self.version,
                &nsp,
                &self.conn.client_id,
            )));
        }
        if self.config.namespace(&nsp).is_none() {
            self.error(reasons::INVALID_NAMESPACE);
            return self.connect_error(&nsp, INVALID_NAMESPACE);
        }
        if let Some(token) = token {
            let current = self.conn.state.lock().token.clone();
            if current.as_deref() != Some(crate::auth::strip_bearer(&token)) {
                let identity = self.node.identify(Some(&token));
                if identity.expires_at.is_none() {
                    self.error(reasons::CONNECT_REFUSED);
                    return self.connect_error(&nsp, super::TOKEN_INVALID);
                }
                if let Err(e) = self.node.reauthenticate(&self.conn, identity).await {
                    self.error(reasons::CONNECT_REFUSED);
                    return self.connect_error(&nsp, &e.to_string());
                }
            }
        }
        self.connect(Connecting { nsp, claim }).await
    }

    async fn disconnect(&mut self, nsp: &str) {
        if let Some(channels) = self.connected.remove(nsp) {
            self.exited(nsp);
            let channels: Vec<String> = channels.into_iter().collect();
            self.node.leave(&self.conn, &channels, || None).await;
        }
        self.end_resumable(nsp, true).await;
    }

    fn ack(&self, nsp: &str, id: Option<u64>, answer: &str) -> Option<Utf8Bytes> {
        let id = id?;
        Some(Utf8Bytes::from(message(&Packet::Ack {
            nsp: nsp.to_string(),
            id,
            args: vec![Json::from_value(&answer)],
            attachments: None,
        })))
    }

    async fn packet(&mut self, packet: Packet, attachments: Vec<Bytes>) -> Flow {
        match packet {
            Packet::Connect { nsp, data, query } => {
                let token = connect_token(data.as_ref(), query.as_deref(), &self.config.auth_field);
                let claim = Claim::of(data.as_ref());
                self.reconnect_namespace(nsp, token, claim).await
            }
            Packet::Disconnect { nsp } => self.disconnect(&nsp).await,
            Packet::Event {
                nsp,
                id,
                event,
                args,
                ..
            } => {
                if !self.connected.contains_key(&nsp) {
                    // The reference server drops packets for namespaces the
                    // socket is not in.
                    return Flow::Continue;
                }
                if let Some(m) = &self.metrics {
                    m.events_in.with_label_values(&[&nsp]).inc();
                }
                match (
                    self.config.join_event(&nsp, &event).cloned(),
                    self.backend.clone(),
                ) {
                    (Some(join), _) => self.join_event(join, nsp, id, args).await,
                    (None, Some(backend)) => {
                        let args = with_attachments(args, &attachments);
                        self.backend_event(&backend, nsp, id, event, args).await
                    }
                    (None, None) => self.error(reasons::UNHANDLED_EVENT),
                }
            }
            // The server asks for no acks yet; a client's error packet means nothing to it.
            Packet::Ack { .. } | Packet::ConnectError { .. } => {}
        }
        Flow::Continue
    }

    /// The text of an Engine.IO message: a Socket.IO packet, maybe the start
    /// of a binary one.
    async fn sio_text(&mut self, text: &str) -> Flow {
        if self.pending.is_some() {
            return self.bad_packet(&"a text packet arrived while attachments were awaited");
        }
        let packet = match Packet::decode(text) {
            Ok(p) => p,
            Err(e) => return self.bad_packet(&e),
        };
        if packet.attachments() > MAX_ATTACHMENTS {
            return self.bad_packet(&"too many attachments");
        }
        match Reassembly::start(packet) {
            Ok(Start::Complete(p)) => self.packet(p, Vec::new()).await,
            Ok(Start::Pending(r)) => {
                self.pending = Some((r, 0));
                Flow::Continue
            }
            Err(e) => self.bad_packet(&e),
        }
    }

    async fn sio_binary(&mut self, data: Bytes) -> Flow {
        let Some((mut r, bytes)) = self.pending.take() else {
            return self.bad_packet(&wire::DecodeError::UnexpectedBinary);
        };
        let bytes = bytes + data.len();
        if bytes > self.config.max_payload {
            return self.bad_packet(&"attachments over maxPayload");
        }
        if !r.push(data) {
            self.pending = Some((r, bytes));
            return Flow::Continue;
        }
        match r.finish() {
            Some(done) => self.packet(done.packet, done.attachments).await,
            None => Flow::Continue,
        }
    }
}

impl Session for SioSession {
    async fn on_open(&mut self) {
        if let Some(nsp) = self.first.take() {
            self.connect(nsp).await;
        }
    }

    async fn on_text(&mut self, text: Utf8Bytes) -> Flow {
        self.received();
        let packet = match engineio::Packet::decode_text(&text) {
            Ok(p) => p,
            Err(e) => return self.bad_packet(&e),
        };
        let engineio::Data::Text(data) = packet.data else {
            return self.bad_packet(&"binary data in a text frame");
        };
        match packet.kind {
            PacketType::Message => self.sio_text(&data).await,
            PacketType::Pong => {
                self.pings.pong(Instant::now());
                Flow::Continue
            }
            PacketType::Ping if self.eio == Eio::V3 => {
                self.pings.client_ping(Instant::now());
                self.send(format!("{}{data}", PacketType::Pong.digit()));
                Flow::Continue
            }
            PacketType::Close => {
                self.closed_by_client = true;
                Flow::Close(CloseReason::Disconnected)
            }
            PacketType::Noop | PacketType::Upgrade => Flow::Continue,
            // A v4 client never pings, and never opens.
            PacketType::Ping | PacketType::Open => {
                self.bad_packet(&format!("unexpected {:?} packet", packet.kind))
            }
        }
    }

    async fn on_binary(&mut self, data: Bytes) -> Flow {
        self.received();
        match engineio::Packet::decode_binary(self.eio, &data) {
            Ok(engineio::Packet {
                data: engineio::Data::Binary(b),
                ..
            }) => self.sio_binary(b).await,
            Ok(_) => self.bad_packet(&"binary frame is not a message"),
            Err(e) => self.bad_packet(&e),
        }
    }

    async fn on_tick(&mut self) -> Flow {
        self.refresh().await;
        match self.pings.due(Instant::now()) {
            Due::Nothing => Flow::Continue,
            Due::Ping => {
                self.send(PacketType::Ping.digit().to_string());
                Flow::Continue
            }
            Due::Dead => {
                self.error(reasons::PING_TIMEOUT);
                Flow::Close(CloseReason::PingTimeout)
            }
        }
    }

    async fn on_close(&mut self, closed_by_server: Option<CloseReason>) {
        self.node
            .metrics
            .frontend
            .connections
            .with_label_values(&[FRONTEND])
            .dec();
        self.close_resumable().await;
        for nsp in self.connected.keys() {
            self.exited(nsp);
        }
        self.connected.clear();
        self.pending = None;
        self.node.close(&self.conn, closed_by_server);
    }
}
