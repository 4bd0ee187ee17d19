//! A client of chain's protocol at `/socket/sse`, as a browser runs it: an
//! event stream (`GET`) and one `POST` per message, both carrying the
//! session cookie and the tab's `sid`.

use std::collections::VecDeque;
use std::time::Duration;

use pubmesh_node::frontend::chain::wire::SseDecoder;
use serde_json::Value;

use crate::harness::patience;

/// One browser tab speaking chain's protocol to one node.
pub struct Sse {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub sid: String,
    /// The session cookie (`name=value`), once the node set one.
    pub cookie: Option<String>,
    stream: Option<reqwest::Response>,
    decoder: SseDecoder,
    events: VecDeque<String>,
    /// The last event id received (sent as `Last-Event-ID` on reconnect,
    /// as `EventSource` does).
    pub last_id: Option<String>,
    /// Set-Cookie, status and headers of the last `GET`.
    pub last_status: u16,
    pub last_headers: reqwest::header::HeaderMap,
}

impl Sse {
    /// A tab with its `sid` (no request made yet).
    pub fn new(base: &str, sid: &str) -> Sse {
        Sse {
            http: reqwest::Client::new(),
            base: base.to_string(),
            sid: sid.to_string(),
            cookie: None,
            stream: None,
            decoder: SseDecoder::new(),
            events: VecDeque::new(),
            last_id: None,
            last_status: 0,
            last_headers: Default::default(),
        }
    }

    /// Open a tab and its event stream (which must be accepted).
    pub async fn open(base: &str, sid: &str) -> Sse {
        let mut sse = Sse::new(base, sid);
        let status = sse.connect("").await;
        assert_eq!(status, 200, "GET /socket/sse");
        sse
    }

    fn url(&self, extra: &str) -> String {
        format!("{}/socket/sse?sid={}{extra}", self.base, self.sid)
    }

    /// `GET /socket/sse?sid=…{extra}` (e.g. `&token=…`): the event stream,
    /// replacing any open one. Returns the status.
    pub async fn connect(&mut self, extra: &str) -> u16 {
        self.stream = None;
        self.decoder = SseDecoder::new();
        self.events.clear();
        let mut request = self.http.get(self.url(extra));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(id) = &self.last_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("GET /socket/sse");
        self.last_status = response.status().as_u16();
        self.last_headers = response.headers().clone();
        if let Some(set) = response
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
        {
            self.cookie = set.split(';').next().map(str::to_string);
        }
        if self.last_status == 200 {
            self.stream = Some(response);
        }
        self.last_status
    }

    /// Close the event stream (the session stays, for the grace period).
    pub fn drop_stream(&mut self) {
        self.stream = None;
    }

    /// `POST` one message; returns the status and body.
    pub async fn post(&self, body: &str) -> (u16, String) {
        let mut request = self
            .http
            .post(self.url(""))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.expect("POST /socket/sse");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// `POST` a JSON array; it must be accepted (200).
    pub async fn send(&self, message: Value) {
        let (status, body) = self.post(&message.to_string()).await;
        assert_eq!(status, 200, "POST {message}: {body}");
    }

    /// The next event's `data`, raw; `None` if the stream ended or nothing
    /// came within `within`.
    pub async fn next_raw(&mut self, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            let stream = self.stream.as_mut()?;
            match tokio::time::timeout_at(deadline, stream.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(chunk))) => {
                    let events = self.decoder.feed(&chunk);
                    self.events.extend(events);
                    if let Some(id) = self.decoder.last_id() {
                        self.last_id = Some(id.to_string());
                    }
                }
                Ok(_) => {
                    self.stream = None;
                    return None;
                }
            }
        }
    }

    /// The next message (patiently).
    pub async fn recv(&mut self) -> Value {
        let raw = self
            .next_raw(patience(10))
            .await
            .expect("an event within the deadline");
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("event {raw}: {e}"))
    }

    /// Skip messages until one matches.
    pub async fn recv_until(&mut self, mut matches: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await;
            if matches(&v) {
                return v;
            }
        }
    }

    /// The reply to `[0, j, r, …]` (messages before it are skipped).
    pub async fn call(&mut self, message: Value) -> Value {
        let (j, r) = (message[1].clone(), message[2].clone());
        self.send(message).await;
        self.recv_until(|v| v[0] == 1 && v[1] == j && v[2] == r)
            .await
    }

    /// Nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(event) = self.next_raw(quiet).await {
            panic!("unexpected event: {event}");
        }
    }
}
