//! HTTP errors as JSON: every error answer of every listener is
//! `{"error":"…","code":"…"}` with a stable code (docs/protocol.md,
//! "HTTP errors"), whether a handler produced it ([`HttpError`]) or the
//! router did (405, 413, an extractor's rejection: [`json_errors`]).

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

/// Longest plain-text error body carried over into a JSON error, in bytes.
const MAX_TEXT: usize = 1024;

/// An error answer: status, stable code, message.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        HttpError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

/// `{"error":…,"code":…}`: the message first, as in the native protocol's
/// error frames.
pub fn body(message: &str, code: &str) -> String {
    format!(
        "{{\"error\":{},\"code\":{}}}",
        serde_json::to_string(message).expect("strings serialize"),
        serde_json::to_string(code).expect("strings serialize")
    )
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(body(&self.message, self.code)));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// The stable code of an error status the router (not a handler) answered.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "bad_request",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    }
}

/// Middleware (`axum::middleware::from_fn`, through a closure that gives
/// `max_body`): turn an error answer that is not JSON yet into one.
/// `max_body` is the body limit a 413 names.
pub async fn json_errors(max_body: usize, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, original) = response.into_parts();
    let message = match status {
        // The router adds `Allow` itself, after this layer.
        StatusCode::METHOD_NOT_ALLOWED => format!("{method} is not allowed on {path}"),
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("the request body is larger than --max-message-size ({max_body} bytes)")
        }
        _ => {
            let text = axum::body::to_bytes(original, MAX_TEXT)
                .await
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                .unwrap_or_default();
            if text.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_ascii_lowercase()
            } else {
                text
            }
        }
    };
    let mut response = HttpError::new(status, code_of(status), message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
}
