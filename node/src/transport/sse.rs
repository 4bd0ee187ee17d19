//! The same outbox, drained into HTTP instead of a WebSocket: a streaming
//! response of Server-Sent Events, or one long-poll reply. A front-end that
//! offers SSE or long polling opens its connection as usual (its codec
//! encodes deliveries into the outbox) and returns one of these as the body.
//!
//! An SSE event is `data: FRAME\n\n` (a frame with newlines becomes several
//! `data:` lines, as the SSE format requires); when the outbox closes the
//! stream ends after a final `event: close\ndata: CODE REASON\n\n`.
//!
//! Liveness, as for a WebSocket (whose pings these stand in for): an SSE
//! stream idle for a ping interval gets a comment line (`:\n\n`), which
//! clients ignore; a dead peer leaves it unacknowledged and the kernel drops
//! the connection after `TCP_USER_TIMEOUT` (the ping interval plus the pong
//! timeout, set on every accepted socket). A long-polling client has no
//! connection between polls: [`PollClock`] tells its front-end when none has
//! come for that long.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::liveness::Heard;
use crate::outbox::{CloseReason, Outbox};

/// One SSE event for a frame.
pub fn sse_event(frame: &str) -> Bytes {
    let mut out = String::with_capacity(frame.len() + 8);
    for line in frame.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The last SSE event, telling the client why the stream ends.
pub fn sse_close(reason: CloseReason) -> Bytes {
    Bytes::from(format!(
        "event: close\ndata: {} {}\n\n",
        reason.code(),
        reason.text()
    ))
}

/// The comment an idle SSE stream gets every `heartbeat`.
pub const SSE_HEARTBEAT: &[u8] = b":\n\n";

/// Drain `outbox` (an `Arc<Outbox>`, or a `ConnOutbox` for a connection's)
/// as an SSE body: every queued frame as one event, as soon
/// as it is queued, until the outbox closes; a heartbeat comment after each
/// `heartbeat` without an event (the node's ping interval; `None`: never).
/// The caller closes the outbox (through the node) when the HTTP client
/// goes away.
pub fn sse_stream<O>(
    outbox: O,
    heartbeat: Option<Duration>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send
where
    O: AsRef<Outbox> + Send + 'static,
{
    let state = (outbox, VecDeque::<Utf8Bytes>::new(), false);
    futures_util::stream::unfold(state, move |(outbox, mut batch, done)| async move {
        if done {
            return None;
        }
        loop {
            if let Some(frame) = batch.pop_front() {
                return Some((Ok(sse_event(&frame)), (outbox, batch, false)));
            }
            let closing = outbox.as_ref().take(&mut batch);
            if !batch.is_empty() {
                continue;
            }
            if let Some(reason) = closing {
                return Some((Ok(sse_close(reason)), (outbox, batch, true)));
            }
            match heartbeat {
                Some(every) => {
                    if tokio::time::timeout(every, outbox.as_ref().ready())
                        .await
                        .is_err()
                    {
                        let beat = Bytes::from_static(SSE_HEARTBEAT);
                        return Some((Ok(beat), (outbox, batch, false)));
                    }
                }
                None => outbox.as_ref().ready().await,
            }
        }
    })
}

/// A long-polling client's liveness: between polls it has no connection,
/// so it is gone when no poll has been in progress for `bound` (the ping
/// interval plus the pong timeout). The front-end holds one per session,
/// wraps each poll in [`PollClock::polling`], and closes the session when
/// [`PollClock::expired`] resolves.
pub struct PollClock {
    heard: Heard,
    /// Polls in progress.
    polls: AtomicUsize,
}

impl Default for PollClock {
    fn default() -> Self {
        PollClock::new()
    }
}

/// A poll in progress (see [`PollClock::polling`]).
pub struct Polling<'a>(&'a PollClock);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.heard.now();
        self.0.polls.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PollClock {
    pub fn new() -> Self {
        PollClock {
            heard: Heard::new(),
            polls: AtomicUsize::new(0),
        }
    }

    /// A poll began; it ends when the guard is dropped.
    pub fn polling(&self) -> Polling<'_> {
        self.heard.now();
        self.polls.fetch_add(1, Ordering::Relaxed);
        Polling(self)
    }

    /// Resolves once no poll has been in progress for `bound`.
    pub async fn expired(&self, bound: Duration) {
        loop {
            let deadline = self.heard.last() + bound;
            if self.polls.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(bound).await;
            } else if tokio::time::Instant::now() >= deadline {
                return;
            } else {
                tokio::time::sleep_until(deadline).await;
            }
        }
    }
}

/// One long-poll reply: everything queued, waiting up to `wait` for the
/// first frame. Returns the frames and the close reason once the outbox is
/// closing (the client should not poll again).
pub async fn poll(outbox: &Outbox, wait: Duration) -> (Vec<Utf8Bytes>, Option<CloseReason>) {
    let mut batch = VecDeque::new();
    let mut closing = outbox.take(&mut batch);
    if batch.is_empty() && closing.is_none() {
        let _ = tokio::time::timeout(wait, outbox.ready()).await;
        closing = outbox.take(&mut batch);
    }
    (batch.into_iter().collect(), closing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::Arc;

    #[tokio::test]
    async fn an_outbox_drains_into_an_sse_body() {
        let outbox = Arc::new(Outbox::new(1 << 16));
        outbox.push(Utf8Bytes::from(r#"{"type":"chat","data":{"m":1}}"#));
        outbox.push(Utf8Bytes::from("two\nlines"));
        let body = sse_stream(outbox.clone(), None);
        tokio::pin!(body);
        let first = body.next().await.expect("event").expect("bytes");
        assert_eq!(
            &first[..],
            b"data: {\"type\":\"chat\",\"data\":{\"m\":1}}\n\n"
        );
        let second = body.next().await.expect("event").expect("bytes");
        assert_eq!(&second[..], b"data: two\ndata: lines\n\n");
        // Frames queued later arrive as they come; a close ends the stream.
        let later = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                outbox.push(Utf8Bytes::from("{}"));
                outbox.close(CloseReason::Drain);
            }
        });
        let mut rest = Vec::new();
        while let Some(chunk) = body.next().await {
            rest.extend_from_slice(&chunk.expect("bytes"));
        }
        later.await.expect("task");
        assert_eq!(
            String::from_utf8(rest).expect("utf-8"),
            "data: {}\n\nevent: close\ndata: 1012 reconnect\n\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_sse_stream_gets_a_heartbeat_every_interval() {
        let outbox = Arc::new(Outbox::new(1 << 16));
        let body = sse_stream(outbox.clone(), Some(Duration::from_secs(25)));
        tokio::pin!(body);
        let started = tokio::time::Instant::now();
        let beat = body.next().await.expect("event").expect("bytes");
        assert_eq!(&beat[..], SSE_HEARTBEAT);
        assert_eq!(started.elapsed(), Duration::from_secs(25));
        outbox.push(Utf8Bytes::from("x"));
        let event = body.next().await.expect("event").expect("bytes");
        assert_eq!(&event[..], b"data: x\n\n");
        assert_eq!(started.elapsed(), Duration::from_secs(25));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_session_expires_after_the_bound_without_a_poll() {
        let clock = PollClock::new();
        let bound = Duration::from_secs(35);
        let started = tokio::time::Instant::now();
        {
            let _poll = clock.polling();
            // A poll in progress for longer than the bound keeps it alive.
            tokio::time::advance(Duration::from_secs(50)).await;
            let early = tokio::time::timeout(Duration::from_secs(1), clock.expired(bound)).await;
            assert!(early.is_err(), "expired during a poll");
        }
        clock.expired(bound).await;
        assert_eq!(started.elapsed(), Duration::from_secs(51 + 35));
    }

    #[tokio::test]
    async fn a_long_poll_returns_what_is_queued_or_waits() {
        let outbox = Outbox::new(1 << 16);
        outbox.push(Utf8Bytes::from("a"));
        outbox.push(Utf8Bytes::from("b"));
        let (frames, closing) = poll(&outbox, Duration::from_secs(5)).await;
        assert_eq!(frames, vec![Utf8Bytes::from("a"), Utf8Bytes::from("b")]);
        assert_eq!(closing, None);
        outbox.close(CloseReason::Disconnected);
        let (frames, closing) = poll(&outbox, Duration::from_secs(5)).await;
        assert!(frames.is_empty());
        assert_eq!(closing, Some(CloseReason::Disconnected));
    }
}
