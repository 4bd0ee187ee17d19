//! The walker backend: a `walker` frame becomes
//! `POST {backend}/walker/{name}` carrying the context, the entry node, the
//! caller's ids and its bearer token.

use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

/// Why a walker call failed; each maps to a stable code.
#[derive(Debug, thiserror::Error)]
pub enum WalkerError {
    #[error("no backend is configured (--backend-url)")]
    NoBackend,
    #[error("backend timed out after {0} ms")]
    Timeout(u128),
    #[error("backend answered {0}")]
    Status(u16),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("backend answered with something that is not JSON")]
    NotJson,
}

impl WalkerError {
    pub fn code(&self) -> &'static str {
        match self {
            WalkerError::NoBackend => "no_backend",
            WalkerError::Timeout(_) => "backend_timeout",
            WalkerError::Status(_) | WalkerError::NotJson => "backend_error",
            WalkerError::Unavailable(_) => "backend_unavailable",
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            WalkerError::Status(s) => Some(*s),
            _ => None,
        }
    }
}

/// The request body sent to the backend.
#[derive(Serialize)]
pub struct WalkerCall<'a> {
    pub context: &'a RawValue,
    pub node: Option<&'a str>,
    pub client_id: &'a str,
    pub root_id: &'a str,
    pub channel_id: &'a str,
}

/// An HTTP client for one backend.
pub struct WalkerClient {
    base: String,
    timeout: Duration,
    http: reqwest::Client,
}

impl WalkerClient {
    pub fn new(base: String, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client without TLS always builds");
        WalkerClient {
            base,
            timeout,
            http,
        }
    }

    /// Call walker `name`; returns the backend's JSON answer as text.
    pub async fn call(
        &self,
        name: &str,
        call: &WalkerCall<'_>,
        token: Option<&str>,
    ) -> Result<String, WalkerError> {
        let url = format!("{}/walker/{}", self.base, name);
        let mut request = self.http.post(url).json(call);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.classify(e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(WalkerError::Status(status.as_u16()));
        }
        let body = response.text().await.map_err(|e| self.classify(e))?;
        if serde_json::from_str::<&RawValue>(&body).is_err() {
            return Err(WalkerError::NotJson);
        }
        Ok(body)
    }

    fn classify(&self, e: reqwest::Error) -> WalkerError {
        if e.is_timeout() {
            WalkerError::Timeout(self.timeout.as_millis())
        } else {
            WalkerError::Unavailable(e.to_string())
        }
    }
}

/// Walker names end up in a URL path: keep them plain.
pub fn valid_walker_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && name != "."
        && name != ".."
}
