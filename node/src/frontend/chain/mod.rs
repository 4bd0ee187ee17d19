//! chain's protocol at `/socket/sse` (docs/chain.md): a `GET` event stream
//! carries the server's messages, each `POST` one client message, both
//! finding their session through a cookie and the `sid` query parameter.
//! Topics are mesh channels.
//!
//! - [`wire`]: the positional arrays and the SSE framing;
//! - [`codec`]: publications as chain broadcasts;
//! - [`session`]: one session's protocol state, over the node's operations;
//! - [`link`]: what waits for its event stream, across dropped streams.
//!
//! A session outlives its stream for the grace period (`--chain-grace-ms`,
//! 15 s): its memberships stay, broadcasts are buffered (and their loss
//! reported when the buffer is full), and a `GET` with the same cookie and
//! `sid` resumes it. Sessions live on the node that created them; another
//! node answers a `POST` with 410 and a `GET` with a new session.

pub mod codec;
pub mod link;
pub mod session;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use parking_lot::Mutex;

use self::codec::ChainCodec;
use self::link::Take;
use self::session::{reasons, ChainSession, PostError, FRONTEND};
use crate::address::FrameLimit;
use crate::codec::Codec;
use crate::frontend::Frontend;
use crate::http_error::HttpError;
use crate::node::Node;
use crate::transport;

/// The session cookie: chain's name for the endpoint `/socket`
/// (`"_sse_"` and the first 8 hex digits of md5("/socket/sse")).
pub const COOKIE: &str = "_sse_d4edab26";
/// The cookie's path (chain's: the endpoint's SSE path).
pub const PATH: &str = "/socket/sse";
/// Sessions one cookie remembers (one per `sid`, i.e. per browser tab).
const MAX_COOKIE_ENTRIES: usize = 16;

/// chain's protocol.
pub struct Chain;

/// The sessions this node holds, by id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<ChainSession>>>,
}

impl Sessions {
    fn get(&self, id: &str) -> Option<Arc<ChainSession>> {
        self.map
            .lock()
            .get(id)
            .filter(|s| !s.link.is_ended())
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone)]
struct Shared {
    sessions: Arc<Sessions>,
    codec: Arc<dyn Codec>,
}

impl Frontend for Chain {
    fn name(&self) -> &'static str {
        FRONTEND
    }

    fn codec(&self, node: &Node) -> Arc<dyn Codec> {
        let sent = node
            .metrics
            .frontend
            .messages_out
            .with_label_values(&[FRONTEND]);
        Arc::new(ChainCodec::new(sent))
    }

    fn routes(&self, node: &Arc<Node>) -> Router<Arc<Node>> {
        node.metrics.frontend.init(FRONTEND, reasons::ALL);
        let shared = Shared {
            sessions: Arc::default(),
            codec: self.codec(node),
        };
        let post_shared = shared.clone();
        Router::new().route(
            PATH,
            get(move |state, query, request| stream(state, query, request, shared.clone())).post(
                move |state, query, headers, body| {
                    post(state, query, headers, body, post_shared.clone())
                },
            ),
        )
    }
}

/// The `sid` of a request: the query's (a browser tab's), else `"sid"`.
fn sid_of(query: &HashMap<String, String>) -> Result<String, HttpError> {
    let sid = query.get("sid").map(String::as_str).unwrap_or("sid");
    let valid = !sid.is_empty()
        && sid.len() <= 64
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(HttpError::bad_request(
            "sid must be 1 to 64 letters, digits, '-' or '_'",
        ));
    }
    Ok(sid.to_string())
}

/// The cookie's `sid → session id` entries, in order.
fn cookie_entries(headers: &HeaderMap) -> Vec<(String, String)> {
    let prefix = format!("{COOKIE}=");
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(prefix.as_str()))
        .flat_map(|v| v.split('&'))
        .filter_map(|e| e.split_once('='))
        .map(|(s, id)| (s.to_string(), id.to_string()))
        .collect()
}

/// The session a request's cookie names for its `sid`, if this node holds it.
fn lookup(shared: &Shared, headers: &HeaderMap, sid: &str) -> Option<Arc<ChainSession>> {
    let entries = cookie_entries(headers);
    let (_, id) = entries.iter().rev().find(|(s, _)| s == sid)?;
    shared.sessions.get(id)
}

/// The cookie after `sid` was given session `id`: entries for sessions
/// this node no longer holds are dropped (chain prunes them on join).
fn set_cookie(shared: &Shared, headers: &HeaderMap, sid: &str, id: &str) -> HeaderValue {
    let mut entries: Vec<(String, String)> = cookie_entries(headers)
        .into_iter()
        .filter(|(s, i)| s != sid && shared.sessions.get(i).is_some())
        .collect();
    entries.push((sid.to_string(), id.to_string()));
    let skip = entries.len().saturating_sub(MAX_COOKIE_ENTRIES);
    let value: Vec<String> = entries[skip..]
        .iter()
        .map(|(s, i)| format!("{s}={i}"))
        .collect();
    let cookie = format!(
        "{COOKIE}={}; Path={PATH}; Max-Age=14400; HttpOnly; SameSite=Lax",
        value.join("&")
    );
    HeaderValue::from_str(&cookie).expect("cookie is ASCII")
}

fn refuse(node: &Node, status: StatusCode, code: &'static str, message: &str) -> Response {
    node.metrics.frontend.error(FRONTEND, code);
    HttpError::new(status, code, message).into_response()
}

/// `GET /socket/sse?sid=…`: resume the cookie's session for `sid`, or
/// start one, and stream its messages.
async fn stream(
    State(node): State<Arc<Node>>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
    shared: Shared,
) -> Response {
    let sid = match sid_of(&query) {
        Ok(sid) => sid,
        Err(e) => return e.into_response(),
    };
    // Without the body (not `Sync`), so the request can be held across awaits.
    let request = {
        let (parts, _) = request.into_parts();
        http::Request::from_parts(parts, ())
    };
    let headers = request.headers();
    let (session, cookie) = match lookup(&shared, headers, &sid) {
        Some(session) => (session, None),
        None => match start(&node, &shared, &query, &request).await {
            Ok(session) => {
                let cookie = set_cookie(&shared, headers, &sid, &session.id);
                (session, Some(cookie))
            }
            Err(response) => return response,
        },
    };
    // What the client got last (EventSource sends it when it reconnects).
    let last_event_id = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let Some(generation) = session.attach(last_event_id) else {
        return refuse(
            &node,
            StatusCode::GONE,
            reasons::GONE,
            "the session has ended",
        );
    };
    let heartbeat = node.config.connections.liveness.map(|l| l.interval);
    let body = Body::from_stream(events(session, generation, heartbeat));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(wire::SSE_CONTENT_TYPE),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(wire::SSE_CACHE_CONTROL),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(cookie) = cookie {
        h.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// A new session: admitted, its token checked, its connection opened and
/// its supervisor started.
async fn start(
    node: &Arc<Node>,
    shared: &Shared,
    query: &HashMap<String, String>,
    request: &http::Request<()>,
) -> Result<Arc<ChainSession>, Response> {
    let admission = node.admit().map_err(|e| {
        HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string()).into_response()
    })?;
    let identity =
        super::connect_identity(node, query.get("token"), request.headers()).map_err(|why| {
            let message = format!("Could not initialize connection: {why}");
            refuse(
                node,
                StatusCode::FORBIDDEN,
                reasons::CONNECT_REFUSED,
                &message,
            )
        })?;
    let conn = node
        .open(admission, identity, shared.codec.clone(), None, |_| None)
        .await;
    let frames = FrameLimit::new(
        node.config.client_rate,
        node.config.client_burst,
        transport::Accepted::address_of(request),
    );
    let id = session_id();
    let session = Arc::new(ChainSession::new(id.clone(), node.clone(), conn, frames));
    shared.sessions.map.lock().insert(id, session.clone());
    let sessions = shared.sessions.clone();
    let grace = node.config.chain.grace;
    tokio::spawn(session.clone().supervise(grace, move |id| {
        sessions.map.lock().remove(id);
    }));
    Ok(session)
}

/// 128 random bits, hex.
fn session_id() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

/// The event stream of `generation`: what the link has, as it comes; a
/// comment every `heartbeat` without events; a last `event: close` if the
/// node closed the session. Dropping it detaches the stream.
fn events(
    session: Arc<ChainSession>,
    generation: u64,
    heartbeat: Option<std::time::Duration>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    struct Attached {
        session: Arc<ChainSession>,
        generation: u64,
        done: bool,
    }
    impl Drop for Attached {
        fn drop(&mut self) {
            self.session.link.detach(self.generation);
        }
    }
    let attached = Attached {
        session,
        generation,
        done: false,
    };
    futures_util::stream::unfold(attached, move |mut a| async move {
        if a.done {
            return None;
        }
        let session = a.session.clone();
        loop {
            let link = &session.link;
            let woken = link.woken();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match link.take(a.generation) {
                Take::Events(bytes) => return Some((Ok(bytes), a)),
                Take::End(None) => return None,
                Take::End(Some(reason)) => {
                    a.done = true;
                    return Some((Ok(transport::sse::sse_close(reason)), a));
                }
                Take::Empty => {}
            }
            match heartbeat {
                Some(every) => {
                    if tokio::time::timeout(every, woken).await.is_err() {
                        let beat = Bytes::from_static(transport::sse::SSE_HEARTBEAT);
                        return Some((Ok(beat), a));
                    }
                }
                None => woken.await,
            }
        }
    })
}

/// `POST /socket/sse?sid=…`: one message for the cookie's session; its
/// replies go to the event stream. 410 if this node does not hold the
/// session (it never did, or it ended).
async fn post(
    State(node): State<Arc<Node>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
    shared: Shared,
) -> Response {
    let sid = match sid_of(&query) {
        Ok(sid) => sid,
        Err(e) => return e.into_response(),
    };
    let Some(session) = lookup(&shared, &headers, &sid) else {
        return refuse(&node, StatusCode::GONE, reasons::GONE, "no such session");
    };
    let limit = node.config.max_message_size;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(_) => {
            return refuse(
                &node,
                StatusCode::PAYLOAD_TOO_LARGE,
                reasons::TOO_LARGE,
                &format!("a message is at most {limit} bytes"),
            )
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return refuse(
            &node,
            StatusCode::BAD_REQUEST,
            reasons::BAD_MESSAGE,
            "the body is not UTF-8",
        );
    };
    match session.post(text).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(PostError::BadMessage(why)) => {
            HttpError::new(StatusCode::BAD_REQUEST, reasons::BAD_MESSAGE, why).into_response()
        }
        Err(PostError::RateLimited) => HttpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            reasons::RATE_LIMITED,
            "too many messages; slow down",
        )
        .into_response(),
        Err(PostError::Gone) => refuse(&node, StatusCode::GONE, reasons::GONE, "no such session"),
    }
}
