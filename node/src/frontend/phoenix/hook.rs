//! Backend calls of the channel rules (docs/phoenix.md, "Join hooks" and
//! "Event rules"), for Phoenix and chain alike: a join to a topic that
//! matches a `[[phoenix_join_hooks]]` pattern, or a push of an event that a
//! `[[channel_events]]` table forwards, is `POST`ed to the backend with the
//! topic, the params or payload and the client's claims; the backend's
//! answer becomes the reply or the refusal reason. A slow, failing or
//! nonsensical backend gives an error reply with a stable reason, never a
//! hung join or push.

use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::join_hooks::JoinHook;
use crate::conn::Conn;

/// Refusal reasons of a backend that did not answer properly, and of the
/// rules themselves.
pub mod reasons {
    /// The backend refused (the reply carries its own reason); the metric
    /// code.
    pub const BACKEND_REFUSED: &str = "backend_refused";
    /// A `[[channel_events]]` table refuses the event.
    pub const EVENT_REFUSED: &str = "event_refused";
    /// No answer within the hook's `timeout_ms`.
    pub const BACKEND_TIMEOUT: &str = "backend_timeout";
    /// Unreachable, or an HTTP status other than 2xx.
    pub const BACKEND_UNAVAILABLE: &str = "backend_unavailable";
    /// A 2xx answer that is not `{"ok": …}` or `{"error": "…"}`.
    pub const BACKEND_BAD_ANSWER: &str = "backend_bad_answer";
}

/// The body of a join hook's request.
#[derive(Serialize)]
pub struct JoinCall<'a> {
    pub topic: &'a str,
    pub params: &'a RawValue,
    pub client_id: &'a str,
    pub user_id: &'a str,
    pub authenticated: bool,
}

/// The body of a forwarded event's request.
#[derive(Serialize)]
pub struct EventCall<'a> {
    pub topic: &'a str,
    pub event: &'a str,
    pub payload: &'a RawValue,
    pub client_id: &'a str,
    pub user_id: &'a str,
    pub authenticated: bool,
}

/// Who is asking: the connection's user id, whether it is authenticated,
/// and its token (the backend's bearer).
pub struct Caller {
    pub user_id: String,
    pub authenticated: bool,
    pub token: Option<String>,
}

impl Caller {
    pub fn of(conn: &Conn) -> Caller {
        let state = conn.state.lock();
        Caller {
            user_id: state.root_id.to_string(),
            authenticated: state.authenticated,
            token: state.token.clone(),
        }
    }
}

/// The metric code of a refusal: the stable `backend_*` reasons as
/// themselves, a backend's own reason as `backend_refused`.
pub fn refusal_code(why: &str) -> &'static str {
    [
        reasons::BACKEND_TIMEOUT,
        reasons::BACKEND_UNAVAILABLE,
        reasons::BACKEND_BAD_ANSWER,
    ]
    .into_iter()
    .find(|r| *r == why)
    .unwrap_or(reasons::BACKEND_REFUSED)
}

/// Ask a join hook's backend about `conn`'s join to `topic`.
pub async fn ask_join(hook: &JoinHook, conn: &Conn, topic: &str, params: &RawValue) -> Verdict {
    let caller = Caller::of(conn);
    let call = JoinCall {
        topic,
        params,
        client_id: &conn.client_id,
        user_id: &caller.user_id,
        authenticated: caller.authenticated,
    };
    ask(&hook.url, hook.timeout, &call, caller.token.as_deref()).await
}

/// Forward `conn`'s push of `event` to `topic` to the backend at `url`.
pub async fn forward(
    (url, timeout): (&str, Duration),
    conn: &Conn,
    topic: &str,
    event: &str,
    payload: &RawValue,
) -> Verdict {
    let caller = Caller::of(conn);
    let call = EventCall {
        topic,
        event,
        payload,
        client_id: &conn.client_id,
        user_id: &caller.user_id,
        authenticated: caller.authenticated,
    };
    ask(url, timeout, &call, caller.token.as_deref()).await
}

/// What the backend decided.
#[derive(Debug)]
pub enum Verdict {
    /// Join; the reply's response.
    Ok(Box<RawValue>),
    /// Refuse with this reason (the backend's, or one of [`reasons`]).
    Refused(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    ok: Option<Box<RawValue>>,
    error: Option<String>,
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client always builds")
    })
}

/// Ask the backend at `url` (bearer: the client's token), within `timeout`.
pub async fn ask(
    url: &str,
    timeout: Duration,
    call: &impl Serialize,
    token: Option<&str>,
) -> Verdict {
    let refused = |r: &str| Verdict::Refused(r.to_string());
    let mut request = client().post(url).timeout(timeout).json(call);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let sent = async {
        let response = request.send().await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.bytes().await?))
    };
    // The client's timeout covers the body too; this bounds everything.
    let (status, body) = match tokio::time::timeout(timeout, sent).await {
        Err(_) => return refused(reasons::BACKEND_TIMEOUT),
        Ok(Err(e)) if e.is_timeout() => return refused(reasons::BACKEND_TIMEOUT),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, url, "channel rule backend unreachable");
            return refused(reasons::BACKEND_UNAVAILABLE);
        }
        Ok(Ok(answer)) => answer,
    };
    if !status.is_success() {
        tracing::warn!(status = status.as_u16(), url, "channel rule backend failed");
        return refused(reasons::BACKEND_UNAVAILABLE);
    }
    match serde_json::from_slice::<Answer>(&body) {
        Ok(Answer {
            ok: Some(response),
            error: None,
        }) if response.get().starts_with('{') => Verdict::Ok(response),
        Ok(Answer {
            ok: None,
            error: Some(reason),
        }) if !reason.is_empty() && reason.len() <= 255 => Verdict::Refused(reason),
        _ => refused(reasons::BACKEND_BAD_ANSWER),
    }
}
