//! HTTP: the server API (`/api/*`, API key required), health (`/livez`,
//! `/readyz`), `/metrics`, and every front-end's routes (mounted from
//! [`crate::frontend::registry`]).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::frontend::registry::frontends;
use crate::http_error::HttpError;
use crate::node::{MeshError, Node, Scope};

mod publish;
mod read;

use publish::{broadcast, disconnect, events, notify_channels, notify_clients, notify_users};
use read::{channels, history, nodes, presence};

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
