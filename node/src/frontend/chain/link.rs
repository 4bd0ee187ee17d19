//! A chain session's link to its client: the frames waiting for an event
//! stream, which stream (if any) is attached, and when the session was last
//! heard from.
//!
//! Every frame for the session goes through here, attached or not, so their
//! order is the order the node queued them in. With a stream attached the
//! buffer is drained as fast as the client reads, and only the outbox's byte
//! bound applies (beyond it the session ends as a slow consumer, as a
//! WebSocket would). Without one, at most `--chain-buffer-frames`
//! broadcasts wait; later broadcasts are dropped and counted per topic, and
//! the next stream gets, right after the frames that were kept, one
//! `[2,topic,"_overflow",{"dropped":n}]` per topic that lost some. Replies
//! are never dropped (the client's own POST rate bounds them).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::wire::{self, Message};
use crate::outbox::CloseReason;

/// The event a client gets for broadcasts it lost while detached.
pub const OVERFLOW: &str = "_overflow";

/// What a stream finds when it looks.
#[derive(Debug, PartialEq)]
pub enum Take {
    /// SSE events to write.
    Events(Bytes),
    /// Nothing yet.
    Empty,
    /// This stream is done: another replaced it, or the session ended
    /// (with the server's reason, if it closed it).
    End(Option<CloseReason>),
}

/// How a session's link ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// No stream and no POST for the grace period.
    Expired,
    /// The node closed the connection (drain, API disconnect, overflow).
    Closed(CloseReason),
}

struct State {
    buffer: VecDeque<Utf8Bytes>,
    bytes: usize,
    /// Broadcasts dropped per topic since the last stream read.
    dropped: BTreeMap<String, u64>,
    /// Generation of the attached stream (each GET takes the next one).
    generation: u64,
    attached: bool,
    /// When the last stream went away or the last POST came in.
    last_heard: Instant,
    ended: Option<Ended>,
}

/// One session's link.
pub struct Link {
    state: Mutex<State>,
    /// Wakes the attached stream.
    wake: Notify,
    /// Wakes the session's supervisor (attached, detached, heard from).
    changed: Notify,
    max_frames: usize,
    max_bytes: usize,
}

impl Link {
    pub fn new(max_frames: usize, max_bytes: usize) -> Link {
        Link {
            state: Mutex::new(State {
                buffer: VecDeque::new(),
                bytes: 0,
                dropped: BTreeMap::new(),
                generation: 0,
                attached: false,
                last_heard: Instant::now(),
                ended: None,
            }),
            wake: Notify::new(),
            changed: Notify::new(),
            max_frames,
            max_bytes,
        }
    }

    /// Queue one frame. `false`: the byte bound is exceeded (the session
    /// must end as a slow consumer).
    pub fn queue(&self, frame: Utf8Bytes) -> bool {
        let mut state = self.state.lock();
        if state.ended.is_some() {
            return true;
        }
        let broadcast = frame.as_str().starts_with("[2,");
        if broadcast && !state.attached && state.buffer.len() >= self.max_frames {
            if let Ok(Message::Broadcast { topic, .. }) = Message::decode(frame.as_str()) {
                *state.dropped.entry(topic).or_default() += 1;
            }
            return true;
        }
        if state.bytes + frame.len() > self.max_bytes {
            return false;
        }
        state.bytes += frame.len();
        state.buffer.push_back(frame);
        drop(state);
        self.wake.notify_waiters();
        true
    }

    /// A new stream: it replaces any other. Returns its generation, or
    /// `None` if the session has ended.
    pub fn attach(&self) -> Option<u64> {
        let mut state = self.state.lock();
        if state.ended.is_some() {
            return None;
        }
        state.generation += 1;
        state.attached = true;
        // The reports go where the loss is: after what was kept, before
        // anything queued from now on.
        for (topic, dropped) in std::mem::take(&mut state.dropped) {
            let report = Utf8Bytes::from(overflow(&topic, dropped).encode());
            state.bytes += report.len();
            state.buffer.push_back(report);
        }
        let generation = state.generation;
        drop(state);
        self.wake.notify_waiters();
        self.changed.notify_waiters();
        Some(generation)
    }

    /// Stream `generation` went away.
    pub fn detach(&self, generation: u64) {
        let mut state = self.state.lock();
        if state.generation != generation || !state.attached {
            return;
        }
        state.attached = false;
        state.last_heard = Instant::now();
        drop(state);
        self.changed.notify_waiters();
    }

    /// The client POSTed: the grace period starts again. `false` if the
    /// session has ended.
    pub fn heard(&self) -> bool {
        let mut state = self.state.lock();
        if state.ended.is_some() {
            return false;
        }
        state.last_heard = Instant::now();
        drop(state);
        self.changed.notify_waiters();
        true
    }

    /// End the link (once): streams end, POSTs get 410.
    pub fn end(&self, how: Ended) -> bool {
        let mut state = self.state.lock();
        if state.ended.is_some() {
            return false;
        }
        state.ended = Some(how);
        state.buffer.clear();
        state.bytes = 0;
        drop(state);
        self.wake.notify_waiters();
        true
    }

    pub fn is_ended(&self) -> bool {
        self.state.lock().ended.is_some()
    }

    /// When the session expires unless a stream attaches or a POST comes
    /// (`None`: a stream is attached).
    pub fn deadline(&self, grace: Duration) -> Option<Instant> {
        let state = self.state.lock();
        (!state.attached).then(|| state.last_heard + grace)
    }

    /// Everything waiting for stream `generation`, as SSE events.
    pub fn take(&self, generation: u64) -> Take {
        let mut state = self.state.lock();
        if let Some(how) = state.ended {
            return Take::End(match how {
                Ended::Closed(reason) => Some(reason),
                Ended::Expired => None,
            });
        }
        if state.generation != generation {
            return Take::End(None);
        }
        if state.buffer.is_empty() {
            return Take::Empty;
        }
        let mut out = String::with_capacity(state.bytes + 16 * state.buffer.len());
        for frame in state.buffer.drain(..) {
            out.push_str(&wire::sse_event(frame.as_str()));
        }
        state.bytes = 0;
        Take::Events(Bytes::from(out))
    }

    /// Resolves when there may be something for a stream: call before
    /// [`Link::take`] and await after it found nothing.
    pub fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Resolves when a stream attached or detached or a POST came.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

/// `[2,topic,"_overflow",{"dropped":n}]`.
pub fn overflow(topic: &str, dropped: u64) -> Message {
    let payload = format!(r#"{{"dropped":{dropped}}}"#);
    Message::Broadcast {
        topic: topic.to_string(),
        event: OVERFLOW.to_string(),
        payload: wire::Payload::from_json(&payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(topic: &str, n: u32) -> Utf8Bytes {
        Utf8Bytes::from(format!(r#"[2,"{topic}","message",{{"n":{n}}}]"#))
    }

    fn events(take: Take) -> String {
        match take {
            Take::Events(bytes) => String::from_utf8(bytes.to_vec()).expect("utf-8"),
            other => panic!("no events: {other:?}"),
        }
    }

    #[test]
    fn a_detached_link_keeps_the_first_broadcasts_and_reports_the_rest_per_topic() {
        let link = Link::new(2, 1 << 20);
        for (i, topic) in ["a", "a", "a", "b", "a"].iter().enumerate() {
            assert!(link.queue(b(topic, i as u32)));
        }
        // Replies are kept whatever the bound.
        assert!(link.queue(Utf8Bytes::from("[1,1,2,0]")));
        let generation = link.attach().expect("open");
        assert_eq!(
            events(link.take(generation)),
            "data: [2,\"a\",\"message\",{\"n\":0}]\n\n\
             data: [2,\"a\",\"message\",{\"n\":1}]\n\n\
             data: [1,1,2,0]\n\n\
             data: [2,\"a\",\"_overflow\",{\"dropped\":2}]\n\n\
             data: [2,\"b\",\"_overflow\",{\"dropped\":1}]\n\n"
        );
        assert_eq!(link.take(generation), Take::Empty);
        // Attached, the frame bound does not apply.
        for i in 0..5 {
            assert!(link.queue(b("a", i)));
        }
        assert_eq!(events(link.take(generation)).matches("data: ").count(), 5);
    }

    #[test]
    fn a_new_stream_replaces_the_old_and_the_byte_bound_ends_the_session() {
        let link = Link::new(8, 30);
        let first = link.attach().expect("open");
        let second = link.attach().expect("open");
        assert_eq!(link.take(first), Take::End(None));
        link.detach(first);
        assert_eq!(
            link.deadline(Duration::from_secs(1)),
            None,
            "still attached"
        );
        link.detach(second);
        assert!(link.deadline(Duration::from_secs(1)).is_some());
        assert!(link.queue(b("a", 1)));
        assert!(!link.queue(b("a", 2)), "over 30 bytes");
        assert!(link.end(Ended::Closed(CloseReason::SlowConsumer)));
        assert!(!link.end(Ended::Expired));
        assert_eq!(link.attach(), None);
        assert!(!link.heard());
        assert_eq!(
            link.take(second),
            Take::End(Some(CloseReason::SlowConsumer))
        );
    }
}
