//! The access backend (`--cells-chat-access-url`): asked at each JOIN
//! whether the user may write in the room, only read it, or not enter it,
//! as Cells checks a `NODE` room against the user's rights on the node.
//!
//! `POST {url}` with `{"user","room":{"Uuid","Type","RoomTypeObject"}}` and
//! the session's token as `Authorization: Bearer`; the answer is
//! `{"access":"write"|"read"|"none"}`. Anything else (another status, other
//! JSON, no answer in time) refuses the JOIN: access fails closed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::frontend::cells::wire::ChatRoom;

/// What the backend allows in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Write,
    Read,
    None,
}

/// An HTTP client for the access backend.
pub struct AccessHook {
    url: String,
    http: reqwest::Client,
}

#[derive(Serialize)]
struct Ask<'a> {
    user: &'a str,
    room: &'a ChatRoom,
}

#[derive(Deserialize)]
struct Answer {
    access: Access,
}

impl AccessHook {
    pub fn new(url: String, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client always builds");
        AccessHook { url, http }
    }

    /// What `user` (with `token`) may do in `room`; `Err` is the reason to
    /// count when the backend gave no usable answer.
    pub async fn check(
        &self,
        user: &str,
        room: &ChatRoom,
        token: &str,
    ) -> Result<Access, &'static str> {
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .json(&Ask { user, room })
            .send()
            .await
            .map_err(|_| "access_unavailable")?;
        if !response.status().is_success() {
            return Err("access_unavailable");
        }
        let answer: Answer = response.json().await.map_err(|_| "access_unavailable")?;
        Ok(answer.access)
    }
}
