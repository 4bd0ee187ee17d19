//! Client events to an HTTP backend: an event no join event handles is
//! `POST`ed to `--socketio-backend-url` with the socket's ids and token;
//! the answer gives the ack's arguments and may emit events to the sender,
//! join or leave rooms, and publish to rooms (docs/socketio.md).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::walker::WalkerError;

/// The request body.
#[derive(Serialize)]
pub struct EventCall<'a> {
    pub namespace: &'a str,
    pub event: &'a str,
    pub args: Vec<&'a RawValue>,
    pub socket_id: &'a str,
    pub user_id: &'a str,
    /// The socket's rooms in the namespace.
    pub rooms: Vec<&'a str>,
    /// The client waits for an ack.
    pub ack: bool,
}

/// An event to the sender.
#[derive(Deserialize, Debug)]
pub struct Emit {
    pub event: String,
    #[serde(default)]
    pub args: Vec<Box<RawValue>>,
}

/// A publication to a room of the socket's namespace (on every node).
#[derive(Deserialize, Debug)]
pub struct Broadcast {
    pub room: String,
    pub event: String,
    pub data: Box<RawValue>,
}

/// The backend's answer; every field is optional.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct Answer {
    /// The ack's arguments (none: an empty ack).
    pub ack: Vec<Box<RawValue>>,
    pub emit: Vec<Emit>,
    pub join: Vec<String>,
    pub leave: Vec<String>,
    pub broadcast: Vec<Broadcast>,
}

/// An HTTP client for the backend.
pub struct Backend {
    url: String,
    timeout: Duration,
    http: reqwest::Client,
}

impl Backend {
    pub fn new(url: String, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client without TLS always builds");
        Backend { url, timeout, http }
    }

    /// Send one event; the backend's answer.
    pub async fn call(
        &self,
        call: &EventCall<'_>,
        token: Option<&str>,
    ) -> Result<Answer, WalkerError> {
        let mut request = self.http.post(&self.url).json(call);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                WalkerError::Timeout(self.timeout.as_millis())
            } else {
                WalkerError::Unavailable(e.to_string())
            }
        };
        let response = request.send().await.map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            return Err(WalkerError::Status(status.as_u16()));
        }
        let body = response.bytes().await.map_err(classify)?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Answer::default());
        }
        serde_json::from_slice(&body).map_err(|_| WalkerError::NotJson)
    }
}
