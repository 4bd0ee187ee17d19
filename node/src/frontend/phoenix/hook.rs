//! Backend join hooks (docs/phoenix.md, "Join hooks"): a join to a topic
//! that matches a `[[phoenix_join_hooks]]` pattern is `POST`ed to the
//! hook's URL with the topic, the join params and the socket's claims; the
//! backend's answer becomes the join reply or the refusal reason. A slow,
//! failing or nonsensical backend gives an error reply with a stable
//! reason, never a hung join.

use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::join_hooks::JoinHook;

/// Refusal reasons of a backend that did not answer properly.
pub mod reasons {
    /// No answer within the hook's `timeout_ms`.
    pub const BACKEND_TIMEOUT: &str = "backend_timeout";
    /// Unreachable, or an HTTP status other than 2xx.
    pub const BACKEND_UNAVAILABLE: &str = "backend_unavailable";
    /// A 2xx answer that is not `{"ok": …}` or `{"error": "…"}`.
    pub const BACKEND_BAD_ANSWER: &str = "backend_bad_answer";
}

/// The request body.
#[derive(Serialize)]
pub struct JoinCall<'a> {
    pub topic: &'a str,
    pub params: &'a RawValue,
    pub client_id: &'a str,
    pub user_id: &'a str,
    pub authenticated: bool,
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

/// Ask the hook's backend about a join (bearer: the socket's token).
pub async fn ask(hook: &JoinHook, call: &JoinCall<'_>, token: Option<&str>) -> Verdict {
    let refused = |r: &str| Verdict::Refused(r.to_string());
    let mut request = client().post(&hook.url).timeout(hook.timeout).json(call);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let sent = async {
        let response = request.send().await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.bytes().await?))
    };
    // The client's timeout covers the body too; this bounds everything.
    let (status, body) = match tokio::time::timeout(hook.timeout, sent).await {
        Err(_) => return refused(reasons::BACKEND_TIMEOUT),
        Ok(Err(e)) if e.is_timeout() => return refused(reasons::BACKEND_TIMEOUT),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, url = %hook.url, "phoenix join hook unreachable");
            return refused(reasons::BACKEND_UNAVAILABLE);
        }
        Ok(Ok(answer)) => answer,
    };
    if !status.is_success() {
        tracing::warn!(status = status.as_u16(), url = %hook.url, "phoenix join hook failed");
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
