//! The Cells event gateway at `/ws/event` (docs/cells.md): sessions
//! subscribe with a JWT whose claims say what they may see, and typed
//! events published with an audience (`POST /api/events`, see [`events`])
//! reach exactly the sessions they entitle, on every node.
//!
//! - [`wire`]: the Cells frames (control messages, node events, chat);
//! - [`codec`]: the audience check and the frames of one event;
//! - [`session`]: one socket: subscribe, refresh, unsubscribe, errors;
//! - [`events`]: the server API's event requests;
//! - [`coalesce`]: bursts for one key merged before they are published;
//! - [`chat`]: `/ws/chat`, rooms on mesh channels.
//!
//! A subscribed session joins one internal group per workspace, role,
//! profile and user of its claims (`Node::set_groups`), so an event's
//! delivery travels only to nodes with members in the groups it names and
//! is offered only to those members; the codec then checks the session's
//! claims and encodes once per set of matching workspaces.

pub mod chat;
pub mod coalesce;
pub mod codec;
pub mod events;
pub mod session;
pub mod wire;

use std::sync::{Arc, Weak};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use self::coalesce::Coalescer;
use self::codec::CellsCodec;
use self::session::CellsSession;
use crate::codec::Codec;
use crate::frontend::Frontend;
use crate::node::Node;
use crate::transport::{self, Session};

/// The internal group family of Cells sessions, and the `frontend` label
/// of its metrics.
pub const FAMILY: &str = "cells";

/// The codes of `pubmesh_frontend_errors_total{frontend="cells"}`.
pub const ERROR_CODES: &[&str] = &[
    "bad_json",
    "empty_jwt",
    "bad_jwt",
    "bad_claims",
    "too_many_groups",
    "rate_limited",
    "too_big",
    "bad_request",
    "unknown_kind",
];

/// The internal group of one workspace (`ws`), user, role or profile.
pub fn group(kind: &str, id: &str) -> String {
    crate::node::group_name(FAMILY, &format!("{kind}/{id}"))
}

/// The gateway's state on one node: the coalescer, and the counters of
/// `pubmesh_cells_events_total`.
pub struct Gateway {
    pub coalescer: Arc<Coalescer>,
    /// `pubmesh_cells_events_total{outcome}`.
    pub counter: prometheus::IntCounterVec,
    /// The chat's metrics and rooms.
    pub chat: Arc<chat::Chat>,
}

/// The gateways of the nodes of this process (one in production; tests may
/// run several nodes in one process). The node does not own its
/// front-ends' state, so it is found here by node.
static GATEWAYS: parking_lot::Mutex<Vec<(Weak<Node>, Arc<Gateway>)>> =
    parking_lot::Mutex::new(Vec::new());

/// The gateway of `node`, made (and its metrics registered, at zero) on
/// first use.
pub fn gateway(node: &Arc<Node>) -> Arc<Gateway> {
    let mut all = GATEWAYS.lock();
    all.retain(|(n, _)| n.strong_count() > 0);
    if let Some(g) = find(&all, node) {
        return g;
    }
    let counter = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "pubmesh_cells_events_total",
            "Cells gateway events by outcome: coalesced (held for a burst), merged (bursts sent), passed (sent at once), dropped_silent_rate (silent events over the node's limit), dropped_session_rate (events not sent to a session over its limit), dropped_expired (events not sent to a session whose token expired)",
        ),
        &["outcome"],
    )
    .expect("valid metric");
    node.metrics
        .registry
        .register(Box::new(counter.clone()))
        .expect("unique metric");
    let g = Arc::new(Gateway {
        coalescer: Arc::new(Coalescer::new(&node.config.cells, counter.clone())),
        counter,
        chat: Arc::new(chat::Chat::new(
            &node.metrics.registry,
            node.config.cells.chat_access_url.clone().map(|url| {
                chat::access::AccessHook::new(url, node.config.cells.chat_access_timeout)
            }),
        )),
    });
    all.push((Arc::downgrade(node), g.clone()));
    g
}

fn find(all: &[(Weak<Node>, Arc<Gateway>)], node: &Node) -> Option<Arc<Gateway>> {
    all.iter()
        .find(|(n, _)| std::ptr::eq(n.as_ptr(), node))
        .map(|(_, g)| g.clone())
}

/// The Cells gateway.
pub struct Cells;

impl Frontend for Cells {
    fn name(&self) -> &'static str {
        "cells"
    }

    fn codec(&self, node: &Node) -> Arc<dyn Codec> {
        let out = node
            .metrics
            .frontend
            .messages_out
            .with_label_values(&[FAMILY]);
        // The gateway is made by `routes`, before the codec.
        let gateway = find(&GATEWAYS.lock(), node);
        let counter = |outcome: &str| match &gateway {
            Some(g) => g.counter.with_label_values(&[outcome]),
            None => prometheus::IntCounter::new("unregistered", "unregistered").expect("valid"),
        };
        Arc::new(CellsCodec::new(
            out,
            node.config.cells.session_rate,
            counter("dropped_session_rate"),
            counter("dropped_expired"),
        ))
    }

    fn routes(&self, node: &Arc<Node>) -> Router<Arc<Node>> {
        node.metrics.frontend.init(FAMILY, ERROR_CODES);
        node.metrics.frontend.init(chat::FAMILY, chat::ERROR_CODES);
        let chat = gateway(node).chat.clone();
        for kind in &node.config.cells.kinds {
            node.metrics
                .frontend
                .events_in
                .with_label_values(&[FAMILY, kind]);
        }
        let codec = self.codec(node);
        let chat_codec: Arc<dyn Codec> = Arc::new(chat::ChatCodec::new(
            node.metrics
                .frontend
                .messages_out
                .with_label_values(&[chat::FAMILY]),
        ));
        let tick = chat::session::ChatSession::tick(node.config.cells.chat_ping_timeout);
        Router::new()
            .route(
                "/ws/event",
                get(move |state, request| {
                    websocket(state, request, codec.clone(), None, CellsSession::new)
                }),
            )
            .route(
                "/ws/chat",
                get(move |state, request| {
                    let chat = chat.clone();
                    websocket(
                        state,
                        request,
                        chat_codec.clone(),
                        Some(tick),
                        move |n, c| chat::session::ChatSession::new(n, c, chat),
                    )
                }),
            )
    }
}

/// `GET /ws/event` and `GET /ws/chat`: admit, upgrade and run a Cells
/// session (`tick`: how often its `on_tick` runs). The socket is anonymous
/// until its first `subscribe`.
async fn websocket<S: Session + 'static>(
    State(node): State<Arc<Node>>,
    mut request: Request,
    codec: Arc<dyn Codec>,
    tick: Option<std::time::Duration>,
    session: impl FnOnce(Arc<Node>, Arc<crate::conn::Conn>) -> S + Send + 'static,
) -> Response {
    let (admission, reply) = match super::admit_upgrade(&node, &request) {
        Ok(admitted) => admitted,
        Err(e) => return e.into_response(),
    };
    let address = transport::Accepted::address_of(&request);
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let max = node.config.cells.max_message_size;
        let Some(socket) = super::upgraded(&node, on_upgrade, max).await else {
            return;
        };
        let identity = node.identify(None);
        let conn = node.open(admission, identity, codec, None, |_| None).await;
        let settings = transport::Settings {
            tick,
            ..super::socket_settings(&node, address)
        };
        let session = session(node.clone(), conn.clone());
        transport::run(socket, &conn.outbox, session, settings).await;
    });
    reply.map(|()| axum::body::Body::empty())
}
