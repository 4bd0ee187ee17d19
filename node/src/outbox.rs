//! A connection's outbox: frames waiting for the socket writer, bounded in bytes.
//!
//! Publishers push pre-encoded frames (a refcount bump of a shared `Bytes`); the
//! writer task takes everything queued at once, feeds it to the socket and
//! flushes once. An empty outbox owns no heap memory, which keeps idle
//! connections small. When a push would exceed the byte bound the outbox closes
//! itself with [`CloseReason::SlowConsumer`]: nothing else waits for a slow reader.
//!
//! Frames a connection will get later (live publications held back while a
//! recovery reads history) count against the same bound: [`Outbox::hold`]
//! reserves their bytes and [`Outbox::release`] gives them back when they
//! are queued or dropped.
//!
//! A frame that may be lost (a Socket.IO `volatile` emit) is [`Outbox::offer`]ed
//! rather than pushed: it is queued only while the outbox holds little, and
//! dropped otherwise, without counting toward the slow-consumer close.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Why a connection is being closed by the server, with its documented close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The node is draining (SIGTERM): 1012 "reconnect".
    Drain,
    /// No valid token under `--require-auth`: 4001.
    Unauthorized,
    /// `POST /api/disconnect`: 4002.
    Disconnected,
    /// The outbox overflowed: 4008.
    SlowConsumer,
    /// Too many frames per second: 4029.
    RateLimited,
    /// A frame over `--max-message-size`: 1009.
    TooBig,
    /// A text frame that is not valid UTF-8: 1007.
    InvalidUtf8,
    /// A WebSocket protocol violation (reserved opcode or bits, unmasked
    /// client frame, bad control frame): 1002.
    ProtocolError,
    /// Nothing from the client within `--pong-timeout-seconds` of a ping
    /// (or for the ping interval plus that): 4010.
    PingTimeout,
    /// A Phoenix socket sent nothing (not even a heartbeat) for
    /// `--phoenix-heartbeat-timeout-ms`: 4408.
    HeartbeatTimeout,
    /// A frame the socket's protocol cannot read at all (e.g. a Phoenix
    /// frame that is not a 5-element array): 4400.
    BadFrame,
    /// The subscriptions a connection needs from the start (its user, a
    /// native connection's own channel) were not in place cluster-wide
    /// within `--relay-join-timeout-ms`: 1013 "try again later".
    Unavailable,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Drain => 1012,
            CloseReason::TooBig => 1009,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::ProtocolError => 1002,
            CloseReason::Unauthorized => 4001,
            CloseReason::Disconnected => 4002,
            CloseReason::SlowConsumer => 4008,
            CloseReason::RateLimited => 4029,
            CloseReason::PingTimeout => 4010,
            CloseReason::HeartbeatTimeout => 4408,
            CloseReason::BadFrame => 4400,
            CloseReason::Unavailable => 1013,
        }
    }

    /// The close frame's reason text; also the metric label.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Drain => "reconnect",
            CloseReason::TooBig => "message too big",
            CloseReason::InvalidUtf8 => "invalid utf-8",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::Disconnected => "disconnected",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::RateLimited => "rate limited",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::HeartbeatTimeout => "heartbeat timeout",
            CloseReason::BadFrame => "bad frame",
            CloseReason::Unavailable => "try again later",
        }
    }

    /// Label for `pubmesh_connections_closed_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Drain => "drain",
            CloseReason::TooBig => "too_big",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::Disconnected => "disconnected",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::BadFrame => "bad_frame",
            CloseReason::Unavailable => "unavailable",
        }
    }
}

/// [`Outbox::offer`] queues a frame only while the outbox holds at most this
/// fraction of its bound (a quarter): a socket that far behind is not
/// keeping up, and frames that may be lost are lost first.
pub const VOLATILE_SHARE: usize = 4;

/// Result of a push.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// This push overflowed the bound: the outbox is now closed as a slow consumer.
    Overflowed,
    /// The outbox was already closed; the frame was dropped.
    Closed,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Utf8Bytes>,
    bytes: usize,
    /// Bytes reserved by [`Outbox::hold`] for frames not queued yet.
    held: usize,
    closed: Option<CloseReason>,
}

impl State {
    /// Would `len` more bytes overflow `limit`? If so, close as a slow
    /// consumer and drop everything queued or held.
    fn overflows(&mut self, len: usize, limit: usize) -> bool {
        if self.bytes + self.held + len <= limit {
            return false;
        }
        self.closed = Some(CloseReason::SlowConsumer);
        self.queue = VecDeque::new();
        self.bytes = 0;
        self.held = 0;
        true
    }
}

/// Frames waiting to be written to one socket.
pub struct Outbox {
    /// Locked only for a push or a take, never across an `.await`.
    state: Mutex<State>,
    /// Wakes the writer when the queue goes from empty to non-empty or on close.
    wake: Notify,
    limit: usize,
}

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            limit,
        }
    }

    /// Queue one frame. Never blocks on the socket.
    pub fn push(&self, frame: Utf8Bytes) -> Push {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return Push::Closed;
        }
        let len = frame.len();
        if state.overflows(len, self.limit) {
            drop(state);
            self.wake.notify_one();
            return Push::Overflowed;
        }
        let was_empty = state.queue.is_empty();
        state.bytes += len;
        state.queue.push_back(frame);
        drop(state);
        if was_empty {
            self.wake.notify_one();
        }
        Push::Queued
    }

    /// Queue `frames` (one message's frames, all or none) if the outbox is
    /// open and, with them, holds at most a [`VOLATILE_SHARE`]th of its bound
    /// (queued and held bytes); otherwise drop them. Never closes the outbox.
    /// True when queued.
    pub fn offer<'a>(&self, frames: impl Iterator<Item = &'a Utf8Bytes> + Clone) -> bool {
        let len: usize = frames.clone().map(|f| f.len()).sum();
        let mut state = self.state.lock();
        if state.closed.is_some() || state.bytes + state.held + len > self.limit / VOLATILE_SHARE {
            return false;
        }
        let was_empty = state.queue.is_empty();
        state.bytes += len;
        state.queue.extend(frames.cloned());
        drop(state);
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Reserve `len` bytes for frames to be queued later, as if they were
    /// queued now: beyond the bound the outbox closes as a slow consumer
    /// ([`Push::Overflowed`]) exactly as [`Outbox::push`] would.
    pub fn hold(&self, len: usize) -> Push {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return Push::Closed;
        }
        if state.overflows(len, self.limit) {
            drop(state);
            self.wake.notify_one();
            return Push::Overflowed;
        }
        state.held += len;
        Push::Queued
    }

    /// Give back bytes reserved by [`Outbox::hold`].
    pub fn release(&self, len: usize) {
        let mut state = self.state.lock();
        state.held = state.held.saturating_sub(len);
    }

    /// Start a connection's stream: drop what was queued before it was open
    /// (frames that raced its registration, of publications made before its
    /// first frame) and queue `first`, its first frame, if any. Called
    /// before the writer runs. False when the outbox is closed.
    pub fn start(&self, first: Option<Utf8Bytes>) -> bool {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return false;
        }
        state.queue.clear();
        state.bytes = 0;
        if let Some(frame) = first {
            state.bytes += frame.len();
            state.queue.push_back(frame);
        }
        drop(state);
        self.wake.notify_one();
        true
    }

    /// Ask the writer to close the socket after what is queued (unless the
    /// outbox is already closing for another reason). Returns false if it was.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return false;
        }
        state.closed = Some(reason);
        drop(state);
        self.wake.notify_one();
        true
    }

    /// The close reason, if the outbox is closing.
    pub fn closed(&self) -> Option<CloseReason> {
        self.state.lock().closed
    }

    /// Move everything queued into `into` (which the writer reuses) and return
    /// the close reason when the outbox is closing.
    pub fn take(&self, into: &mut VecDeque<Utf8Bytes>) -> Option<CloseReason> {
        let mut state = self.state.lock();
        if into.is_empty() {
            std::mem::swap(into, &mut state.queue);
        } else {
            into.append(&mut state.queue);
        }
        state.bytes = 0;
        if state.queue.capacity() > 64 {
            state.queue = VecDeque::new();
        }
        state.closed
    }

    /// Wait until something is queued or the outbox is closed.
    pub async fn ready(&self) {
        self.wake.notified().await
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Bytes reserved by [`Outbox::hold`].
    pub fn held_bytes(&self) -> usize {
        self.state.lock().held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_as_slow_consumer_and_drops_the_queue() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.push(Utf8Bytes::from("123456")), Push::Queued);
        assert_eq!(outbox.push(Utf8Bytes::from("123456")), Push::Overflowed);
        assert_eq!(outbox.push(Utf8Bytes::from("1")), Push::Closed);
        let mut batch = VecDeque::new();
        assert_eq!(outbox.take(&mut batch), Some(CloseReason::SlowConsumer));
        assert!(batch.is_empty());
    }

    #[test]
    fn take_moves_everything_and_resets_the_byte_count() {
        let outbox = Outbox::new(100);
        for _ in 0..3 {
            outbox.push(Utf8Bytes::from("abcd"));
        }
        assert_eq!(outbox.queued_bytes(), 12);
        let mut batch = VecDeque::new();
        assert_eq!(outbox.take(&mut batch), None);
        assert_eq!(batch.len(), 3);
        assert_eq!(outbox.queued_bytes(), 0);
        assert!(outbox.close(CloseReason::Drain));
        assert!(!outbox.close(CloseReason::Disconnected));
        assert_eq!(outbox.closed(), Some(CloseReason::Drain));
    }

    #[test]
    fn offered_frames_are_dropped_beyond_a_quarter_of_the_bound_without_closing() {
        let outbox = Outbox::new(40);
        let two = [Utf8Bytes::from("1234"), Utf8Bytes::from("12")];
        assert!(outbox.offer(two.iter()));
        assert_eq!(outbox.queued_bytes(), 6);
        assert!(
            !outbox.offer([Utf8Bytes::from("12345")].iter()),
            "6 + 5 > 40 / 4"
        );
        assert_eq!(outbox.closed(), None);
        assert_eq!(
            outbox.push(Utf8Bytes::from("12345678901234567890")),
            Push::Queued
        );
        let mut batch = VecDeque::new();
        outbox.take(&mut batch);
        assert_eq!(
            batch.len(),
            3,
            "the dropped frame is not queued, and none of a pair is split"
        );
        assert!(outbox.offer([Utf8Bytes::from("12345")].iter()));
        outbox.close(CloseReason::Drain);
        assert!(!outbox.offer([Utf8Bytes::from("1")].iter()));
    }

    #[test]
    fn held_bytes_count_against_the_bound_until_released() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.hold(6), Push::Queued);
        assert_eq!(outbox.push(Utf8Bytes::from("1234")), Push::Queued);
        let mut batch = VecDeque::new();
        outbox.take(&mut batch);
        assert_eq!(outbox.held_bytes(), 6, "writing does not free held bytes");
        outbox.release(6);
        assert_eq!(outbox.hold(10), Push::Queued);
        assert_eq!(outbox.hold(1), Push::Overflowed);
        assert_eq!(outbox.held_bytes(), 0);
        assert_eq!(outbox.hold(1), Push::Closed);
        assert_eq!(outbox.take(&mut batch), Some(CloseReason::SlowConsumer));
    }
}
