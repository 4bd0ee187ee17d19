//! A polling request for a session another node owns: forwarded there as
//! is, its answer relayed (see [`super`]).

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, Method};

use super::FORWARDED;
use crate::frontend::socketio::engineio::ServerError;
use crate::frontend::socketio::sid::owner;
use crate::frontend::socketio::{refuse, Shared};
use crate::node::Node;

/// A request for a sid this node does not hold: to its owner, if the sid
/// is genuine and names another node.
pub(super) async fn forward(
    node: &Node,
    shared: &Shared,
    method: Method,
    headers: HeaderMap,
    raw_query: String,
    sid: &str,
    body: Bytes,
) -> Response {
    if headers.contains_key(FORWARDED) {
        return refuse(ServerError::UnknownSid);
    }
    let Some(owner) = owner(sid, &node.config.api_key) else {
        return refuse(ServerError::UnknownSid);
    };
    if owner == shared.advertise {
        return refuse(ServerError::UnknownSid);
    }
    let url = format!("{owner}/socket.io/?{raw_query}");
    let timeout = shared.config.ping_interval + shared.config.ping_timeout + Duration::from_secs(5);
    let mut request = shared
        .http
        .request(method, &url)
        .header(FORWARDED, "1")
        .timeout(timeout)
        .body(body);
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let ct = answer.headers().get(header::CONTENT_TYPE).cloned();
            let body = answer.bytes().await.unwrap_or_default();
            let mut response = (status, body).into_response();
            if let Some(ct) = ct {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            response
        }
        Err(e) => {
            tracing::info!(error = %e, owner, "socket.io poll could not reach its owner");
            refuse(ServerError::UnknownSid)
        }
    }
}
