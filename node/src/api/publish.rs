//! The publishing routes of the server API: `/api/notify/*`,
//! `/api/broadcast`, `/api/events` and `/api/disconnect`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{bad, check_ids, frame, mesh_error, parse, scope, ApiError};
use crate::delivery::{Delivery, Target};
use crate::http_error::HttpError;
use crate::node::{Node, Published};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyChannels {
    channel_ids: Vec<String>,
    data: Box<RawValue>,
    #[serde(default)]
    local: bool,
    /// The event name for protocols that name events (Phoenix); the native
    /// protocol ignores it.
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    idempotency_key: Option<Box<RawValue>>,
    /// Socket.IO sockets in any of these channels do not receive it (the
    /// `except` of a Socket.IO emit; other protocols ignore it).
    #[serde(default)]
    except: Vec<String>,
    /// Socket.IO: may be dropped for a socket whose outbox is behind rather
    /// than queued (a `volatile` emit; other protocols queue it).
    #[serde(default)]
    volatile: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyUsers {
    root_ids: Vec<String>,
    data: Box<RawValue>,
    #[serde(default)]
    local: bool,
    /// As for channels: the event name where protocols name events.
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    idempotency_key: Option<Box<RawValue>>,
    /// Socket.IO sockets in any of these channels do not receive it (the
    /// `except` of a Socket.IO emit; other protocols ignore it).
    #[serde(default)]
    except: Vec<String>,
    /// Socket.IO: may be dropped for a socket whose outbox is behind rather
    /// than queued (a `volatile` emit; other protocols queue it).
    #[serde(default)]
    volatile: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyClients {
    client_ids: Vec<String>,
    data: Box<RawValue>,
    #[serde(default)]
    local: bool,
    /// As for channels: the event name where protocols name events.
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    idempotency_key: Option<Box<RawValue>>,
    /// Socket.IO sockets in any of these channels do not receive it (the
    /// `except` of a Socket.IO emit; other protocols ignore it).
    #[serde(default)]
    except: Vec<String>,
    /// Socket.IO: may be dropped for a socket whose outbox is behind rather
    /// than queued (a `volatile` emit; other protocols queue it).
    #[serde(default)]
    volatile: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    data: Box<RawValue>,
    #[serde(default)]
    local: bool,
    /// As for channels: the event name where protocols name events.
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    idempotency_key: Option<Box<RawValue>>,
    /// Socket.IO sockets in any of these channels do not receive it (the
    /// `except` of a Socket.IO emit; other protocols ignore it).
    #[serde(default)]
    except: Vec<String>,
    /// Socket.IO: may be dropped for a socket whose outbox is behind rather
    /// than queued (a `volatile` emit; other protocols queue it).
    #[serde(default)]
    volatile: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Disconnect {
    #[serde(default)]
    client_ids: Vec<String>,
    #[serde(default)]
    root_ids: Vec<String>,
    #[serde(default)]
    local: bool,
}

/// The body's `idempotency_key`, scoped to the server API.
fn idempotency(raw: &Option<Box<RawValue>>) -> Result<Option<Arc<str>>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let key = crate::idempotency::key_from_json(raw.get()).map_err(bad)?;
    Ok(Some(crate::idempotency::scoped(
        crate::idempotency::Publisher::Api,
        &key,
    )))
}

/// Publish and wait for the outcome; a history store that cannot be
/// reached is a 503 (the publish may or may not have been appended: retry
/// with the same `idempotency_key`).
async fn publish(
    node: &Node,
    target: Target,
    frame: Utf8Bytes,
    local: bool,
    key: Option<Arc<str>>,
    emit: Emit<'_>,
) -> Result<Json<Published>, ApiError> {
    let mut except = emit.except;
    if !except.is_empty() {
        check_ids(node, &mut except, "except")?;
    }
    let mut delivery = Delivery::new(target, frame);
    delivery.idempotency = key;
    delivery.audience = crate::frontend::socketio::codec::emit_audience(&except, emit.volatile);
    if let Some(event) = emit.event {
        crate::limits::event_name(event).map_err(|m| bad(format!("event: {m}")))?;
        delivery.event = Some(Arc::from(event));
    }
    node.publish_channels_confirmed(delivery, scope(local))
        .await
        .map(Json)
        .map_err(mesh_error)
}

/// What a publish says for protocols that name events (Phoenix, Socket.IO)
/// and for Socket.IO emits.
struct Emit<'a> {
    event: Option<&'a str>,
    except: Vec<String>,
    volatile: bool,
}

impl<'a> Emit<'a> {
    fn new(event: &'a Option<String>, except: Vec<String>, volatile: bool) -> Self {
        Emit {
            event: event.as_deref(),
            except,
            volatile,
        }
    }
}

fn count(node: &Node, kind: &str) {
    node.metrics.messages_in.inc(kind);
}

pub(super) async fn notify_channels(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Json<Published>, ApiError> {
    let mut req: NotifyChannels = parse(&body)?;
    check_ids(&node, &mut req.channel_ids, "channel_ids")?;
    let key = idempotency(&req.idempotency_key)?;
    count(&node, "api_channels");
    let frame = frame(&req.data)?;
    let emit = Emit::new(&req.event, req.except, req.volatile);
    let target = Target::Channels(req.channel_ids);
    publish(&node, target, frame, req.local, key, emit).await
}

pub(super) async fn notify_users(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Json<Published>, ApiError> {
    let mut req: NotifyUsers = parse(&body)?;
    check_ids(&node, &mut req.root_ids, "root_ids")?;
    let key = idempotency(&req.idempotency_key)?;
    count(&node, "api_users");
    let frame = frame(&req.data)?;
    let emit = Emit::new(&req.event, req.except, req.volatile);
    let target = Target::Users(req.root_ids);
    publish(&node, target, frame, req.local, key, emit).await
}

pub(super) async fn notify_clients(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Json<Published>, ApiError> {
    let mut req: NotifyClients = parse(&body)?;
    check_ids(&node, &mut req.client_ids, "client_ids")?;
    let key = idempotency(&req.idempotency_key)?;
    count(&node, "api_clients");
    let frame = frame(&req.data)?;
    let emit = Emit::new(&req.event, req.except, req.volatile);
    let target = Target::Clients(req.client_ids);
    publish(&node, target, frame, req.local, key, emit).await
}

pub(super) async fn broadcast(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Json<Published>, ApiError> {
    let req: Broadcast = parse(&body)?;
    let key = idempotency(&req.idempotency_key)?;
    count(&node, "api_broadcast");
    let frame = frame(&req.data)?;
    let emit = Emit::new(&req.event, req.except, req.volatile);
    publish(&node, Target::All, frame, req.local, key, emit).await
}

/// `POST /api/events`: a typed event for the Cells gateway's sessions
/// (docs/cells.md). An event with a coalescing key is held for its burst
/// and answered `{"coalesced":true,…}`; others are published at once.
pub(super) async fn events(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::frontend::cells::{self, coalesce::Offer, events};
    let refused = |(code, message): events::Refusal| {
        node.metrics.frontend.error("cells", code);
        HttpError::new(StatusCode::BAD_REQUEST, code, message)
    };
    let request: events::EventRequest =
        parse(&body).map_err(|e| refused(("bad_request", e.message)))?;
    let event = events::check(&node, request).map_err(refused)?;
    count(&node, "api_events");
    node.metrics
        .frontend
        .events_in
        .with_label_values(&["cells", &event.kind])
        .inc();
    match cells::gateway(&node).coalescer.offer(&node, event) {
        Offer::Held { key, pending } => Ok(Json(json!({
            "coalesced": true,
            "key": key,
            "pending": pending,
        }))),
        Offer::Now { flushed, event } => {
            let coalescer = &cells::gateway(&node).coalescer;
            if let Some(burst) = flushed {
                coalescer.publish(&node, &burst).await;
            }
            Ok(Json(match coalescer.publish(&node, &event).await {
                Some(published) => serde_json::to_value(published).expect("replies serialize"),
                None => json!({"dropped": "silent_rate"}),
            }))
        }
    }
}

pub(super) async fn disconnect(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut req: Disconnect = parse(&body)?;
    if req.client_ids.is_empty() && req.root_ids.is_empty() {
        return Err(bad("give client_ids or root_ids"));
    }
    for (ids, name) in [
        (&mut req.client_ids, "client_ids"),
        (&mut req.root_ids, "root_ids"),
    ] {
        if !ids.is_empty() {
            check_ids(&node, ids, name)?;
        }
    }
    count(&node, "api_disconnect");
    let closed = node.disconnect(&req.client_ids, &req.root_ids, scope(req.local));
    Ok(Json(json!({
        "local_disconnects": closed,
        "relayed": !req.local && node.relay_name() != "memory",
    })))
}
