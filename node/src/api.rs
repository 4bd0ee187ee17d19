//! HTTP: the server API (`/api/*`, API key required), health (`/livez`,
//! `/readyz`), `/metrics`, and every front-end's routes (mounted from
//! [`crate::frontend::registry`]).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::delivery::{Delivery, Target};
use crate::frontend::registry::frontends;
use crate::http_error::HttpError;
use crate::node::{MeshError, Node, Published, Read, Scope};

type ApiError = HttpError;

fn bad(message: impl Into<String>) -> ApiError {
    HttpError::bad_request(message)
}

/// The HTTP status of a mesh error answered by the API.
fn mesh_error(e: MeshError) -> ApiError {
    let status = match &e {
        MeshError::BadRequest(_) | MeshError::BadPosition { .. } => StatusCode::BAD_REQUEST,
        MeshError::TooManyChannels(_) => StatusCode::BAD_REQUEST,
        MeshError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        MeshError::Unauthorized => StatusCode::UNAUTHORIZED,
        MeshError::Forbidden(_) => StatusCode::FORBIDDEN,
        MeshError::NoHistory(_) | MeshError::NoPresence(_) => StatusCode::NOT_FOUND,
        MeshError::Draining | MeshError::AtCapacity | MeshError::Unavailable(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    HttpError::new(status, e.code(), e.to_string())
}

/// Every error answer of a listener as JSON (see [`crate::http_error`]).
fn with_json_errors(router: Router, node: &Node) -> Router {
    let max = node.config.max_message_size;
    router.layer(middleware::from_fn(move |request: Request, next: Next| {
        crate::http_error::json_errors(max, request, next)
    }))
}

/// Every route of the node.
pub fn router(node: Arc<Node>) -> Router {
    let router = Router::new()
        .merge(admin_routes(&node))
        .merge(client_routes(&node))
        .fallback(not_found)
        .with_state(node.clone());
    with_json_errors(router, &node)
}

/// The client listener when the API and metrics have their own
/// (`--admin-listen`): the WebSocket endpoint and health only.
pub fn client_router(node: Arc<Node>) -> Router {
    let router = Router::new()
        .merge(client_routes(&node))
        .fallback(not_found)
        .with_state(node.clone());
    with_json_errors(router, &node)
}

/// The `--admin-listen` listener: the server API, /metrics and health.
pub fn admin_router(node: Arc<Node>) -> Router {
    let router = Router::new()
        .merge(admin_routes(&node))
        .merge(health_routes())
        .fallback(not_found)
        .with_state(node.clone());
    with_json_errors(router, &node)
}

/// Every front-end's routes (from the registry) and health.
fn client_routes(node: &Arc<Node>) -> Router<Arc<Node>> {
    let mut router = Router::new();
    for frontend in frontends() {
        router = router.merge(frontend.routes(node));
    }
    router.merge(health_routes())
}

fn health_routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/livez", get(|| async { Json(json!({"live": true})) }))
        .route("/readyz", get(readyz))
}

fn admin_routes(node: &Arc<Node>) -> Router<Arc<Node>> {
    Router::new()
        .route("/api/notify/channels", post(notify_channels))
        .route("/api/notify/users", post(notify_users))
        .route("/api/notify/clients", post(notify_clients))
        .route("/api/broadcast", post(broadcast))
        .route("/api/events", post(events))
        .route("/api/disconnect", post(disconnect))
        .route("/api/nodes", get(nodes))
        .route("/api/channels", get(channels))
        .route("/api/history", get(history))
        .route("/api/presence", get(presence))
        .route_layer(middleware::from_fn_with_state(node.clone(), body_within))
        .route_layer(middleware::from_fn_with_state(node.clone(), require_key))
        .layer(DefaultBodyLimit::max(node.config.max_message_size))
        .route("/metrics", get(metrics))
}

async fn not_found() -> ApiError {
    HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// Constant-time comparison, so the key cannot be guessed byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(crate::auth::strip_bearer)
}

async fn require_key(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let route = request.uri().path().to_string();
    let ok = presented_key(request.headers())
        .map(|k| same(k.as_bytes(), node.config.api_key.as_bytes()))
        .unwrap_or(false);
    if !ok {
        node.metrics
            .errors
            .with_label_values(&["unauthorized"])
            .inc();
        return HttpError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key",
        )
        .into_response();
    }
    let started = Instant::now();
    let response = next.run(request).await;
    node.metrics
        .api_latency
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// An API request's body must arrive within `--handshake-timeout-seconds`
/// of its head: a body sent byte by byte would hold the connection (and its
/// place under the listener's cap) for as long as the sender likes.
async fn body_within(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let within = node.config.connections.handshake_timeout;
    let limit = node.config.max_message_size;
    match tokio::time::timeout(within, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, bytes.into())).await,
        Ok(Err(e)) => {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_big {
                HttpError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the request body is larger than --max-message-size ({limit} bytes)"),
                )
            } else {
                bad(format!("cannot read the request body: {e}"))
            }
            .into_response()
        }
        Err(_) => {
            node.metrics
                .http_timeouts
                .with_label_values(&["handshake"])
                .inc();
            HttpError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the request body did not arrive within {} s (--handshake-timeout-seconds)",
                    within.as_secs()
                ),
            )
            .into_response()
        }
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            bad(format!("body is not valid JSON: {e}"))
        } else {
            bad(e.to_string())
        }
    })
}

/// De-duplicated, capped and checked ids (see [`crate::limits::id_list`]).
fn check_ids(node: &Node, ids: &mut Vec<String>, name: &str) -> Result<(), ApiError> {
    *ids = crate::limits::id_list(std::mem::take(ids), name, node.config.max_ids_per_message)
        .map_err(bad)?;
    Ok(())
}

fn frame(data: &RawValue) -> Result<Utf8Bytes, ApiError> {
    if !data.get().starts_with('{') {
        return Err(bad("data must be an object"));
    }
    Ok(Utf8Bytes::from(data.get().to_string()))
}

fn scope(local: bool) -> Scope {
    if local {
        Scope::Local
    } else {
        Scope::Cluster
    }
}

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
    node.metrics.messages_in.with_label_values(&[kind]).inc();
}

async fn notify_channels(
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

async fn notify_users(
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

async fn notify_clients(
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

async fn broadcast(
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
async fn events(
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

async fn disconnect(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    channel: String,
    limit: Option<usize>,
    since_offset: Option<u64>,
    epoch: Option<String>,
}

/// `GET /api/history?channel=C[&limit=N][&since_offset=O&epoch=E]`
async fn history(
    State(node): State<Arc<Node>>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    crate::limits::channel_name(&q.channel).map_err(bad)?;
    let options = node
        .may_read(None, &q.channel, Read::History)
        .map_err(mesh_error)?;
    let since = match (q.since_offset, q.epoch) {
        (None, None) => None,
        (Some(offset), Some(epoch)) => Some(crate::history::Position { offset, epoch }),
        _ => return Err(bad("since_offset and epoch go together")),
    };
    let limit = q.limit.unwrap_or(options.history_size);
    let page = node
        .history(&q.channel, since.as_ref(), limit, &options)
        .await
        .map_err(mesh_error)?;
    let frame = crate::frontend::native::codec::history_frame(&q.channel, &page, None);
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        frame.as_str().to_string(),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceQuery {
    channel: String,
}

/// `GET /api/presence?channel=C`
async fn presence(
    State(node): State<Arc<Node>>,
    query: Result<Query<PresenceQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    crate::limits::channel_name(&q.channel).map_err(bad)?;
    node.may_read(None, &q.channel, Read::Presence)
        .map_err(mesh_error)?;
    let clients = node.presence(&q.channel).await.map_err(mesh_error)?;
    // Keys in a fixed order: channel, count, clients (each entry client_id,
    // user_id, node_id, info), as docs/protocol.md shows them.
    let body = format!(
        "{{\"channel\":{},\"count\":{},\"clients\":{}}}",
        serde_json::to_string(&q.channel).expect("strings serialize"),
        clients.len(),
        serde_json::to_string(&clients).expect("entries serialize")
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /api/nodes`: each node's fields in [`crate::relay::NodeInfo`]'s order.
#[derive(serde::Serialize)]
struct NodesReply {
    nodes: Vec<crate::relay::NodeInfo>,
}

async fn nodes(State(node): State<Arc<Node>>) -> Json<NodesReply> {
    Json(NodesReply {
        nodes: node.nodes(),
    })
}

async fn channels(State(node): State<Arc<Node>>) -> Result<Json<serde_json::Value>, ApiError> {
    let channels = node.channels().await.map_err(|e| {
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "relay_unavailable",
            e.to_string(),
        )
    })?;
    let list: Vec<_> = channels
        .into_iter()
        .map(|(channel, members)| json!({"channel": channel, "members": members}))
        .collect();
    Ok(Json(json!({ "channels": list })))
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    match node.readiness() {
        Ok(()) => {
            node.metrics.ready.set(1);
            Json(json!({"ready": true})).into_response()
        }
        Err(reason) => {
            node.metrics.ready.set(0);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"ready": false, "reason": reason})),
            )
                .into_response()
        }
    }
}
