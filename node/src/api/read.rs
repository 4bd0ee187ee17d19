//! The reading routes of the server API: `/api/history`,
//! `/api/presence`, `/api/nodes` and `/api/channels`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{bad, mesh_error, ApiError};
use crate::http_error::HttpError;
use crate::node::{Node, Read};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    channel: String,
    limit: Option<usize>,
    since_offset: Option<u64>,
    epoch: Option<String>,
}

/// `GET /api/history?channel=C[&limit=N][&since_offset=O&epoch=E]`
pub(super) async fn history(
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
pub(super) struct PresenceQuery {
    channel: String,
}

/// `GET /api/presence?channel=C`
pub(super) async fn presence(
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
pub(super) struct NodesReply {
    nodes: Vec<crate::relay::NodeInfo>,
}

pub(super) async fn nodes(State(node): State<Arc<Node>>) -> Json<NodesReply> {
    Json(NodesReply {
        nodes: node.nodes(),
    })
}

pub(super) async fn channels(
    State(node): State<Arc<Node>>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
