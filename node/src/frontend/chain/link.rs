//! A chain session's link to its client: the frames for its event streams,
//! which stream (if any) is attached, and when the session was last heard
//! from.
//!
//! Every frame for the session goes through here, attached or not, so their
//! order is the order the node queued them in. Each gets an event id
//! (`id: N`, counting from 1), and the last `--chain-buffer-frames` frames
//! a stream was given stay here: a stream can die without the server
//! noticing at once (no FIN from a vanished network), so what was written
//! into it may never have arrived. A `GET` carrying `Last-Event-ID` (which
//! `EventSource` sends by itself when it reconnects) gets again everything
//! after that id.
//!
//! Without a stream, at most `--chain-buffer-frames` broadcasts wait (the
//! same bound applies to what a resumed stream is owed); later broadcasts
//! are dropped and counted per topic, and the resumed stream gets, right
//! after the broadcasts that were kept, one `[2,topic,"_overflow",{"dropped":n}]`
//! per topic that lost some. Replies are never dropped (the client's own
//! POST rate bounds them). With a stream attached, the only bound is the
//! outbox's bytes: beyond it the session ends as a slow consumer, as a
//! WebSocket would.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::wire::{self, Message};
use crate::outbox::CloseReason;

/// The event a client gets for broadcasts it lost.
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

fn is_broadcast(frame: &Utf8Bytes) -> bool {
    frame.as_str().starts_with("[2,")
}

fn topic_of(frame: &Utf8Bytes) -> Option<String> {
    match Message::decode(frame.as_str()) {
        Ok(Message::Broadcast { topic, .. }) => Some(topic),
        _ => None,
    }
}

struct State {
    /// Frames by id: those given to a stream (at most `max_frames` of them
    /// are kept), then those not given yet.
    log: VecDeque<(u64, Utf8Bytes)>,
    next_id: u64,
    /// The last id given to a stream.
    given: u64,
    /// Bytes of the frames not given yet.
    owed_bytes: usize,
    /// Topics of broadcasts that left the log, by id (for a `Last-Event-ID`
    /// older than the log).
    trimmed: VecDeque<(u64, String)>,
    /// Broadcasts dropped per topic, not reported yet.
    dropped: BTreeMap<String, u64>,
    /// Generation of the attached stream (each GET takes the next one).
    generation: u64,
    attached: bool,
    /// When the last stream went away or the last POST came in.
    last_heard: Instant,
    ended: Option<Ended>,
}

impl State {
    fn owed(&self) -> impl DoubleEndedIterator<Item = &(u64, Utf8Bytes)> {
        let given = self.given;
        self.log.iter().filter(move |(id, _)| *id > given)
    }

    fn push(&mut self, frame: Utf8Bytes) {
        self.owed_bytes += frame.len();
        self.log.push_back((self.next_id, frame));
        self.next_id += 1;
    }

    /// Keep at most `max` frames that were given.
    fn trim(&mut self, max: usize) {
        let given = self
            .log
            .iter()
            .take_while(|(id, _)| *id <= self.given)
            .count();
        for _ in max..given {
            let Some((id, frame)) = self.log.pop_front() else {
                break;
            };
            if let Some(topic) = is_broadcast(&frame).then(|| topic_of(&frame)).flatten() {
                self.trimmed.push_back((id, topic));
                if self.trimmed.len() > 4 * max {
                    self.trimmed.pop_front();
                }
            }
        }
    }
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
                log: VecDeque::new(),
                next_id: 1,
                given: 0,
                owed_bytes: 0,
                trimmed: VecDeque::new(),
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
        if is_broadcast(&frame) && !state.attached {
            let owed = state.owed().filter(|(_, f)| is_broadcast(f)).count();
            if owed >= self.max_frames {
                if let Some(topic) = topic_of(&frame) {
                    *state.dropped.entry(topic).or_default() += 1;
                }
                return true;
            }
        }
        if state.owed_bytes + frame.len() > self.max_bytes {
            return false;
        }
        state.push(frame);
        drop(state);
        self.wake.notify_waiters();
        true
    }

    /// A new stream, which replaces any other; `last_event_id` is the
    /// last event its client got (`Last-Event-ID`). Returns its
    /// generation, or `None` if the session has ended.
    pub fn attach(&self, last_event_id: Option<u64>) -> Option<u64> {
        let mut state = self.state.lock();
        if state.ended.is_some() {
            return None;
        }
        state.generation += 1;
        state.attached = true;
        let first = state.log.front().map_or(state.next_id, |(id, _)| *id);
        if let Some(last) = last_event_id.filter(|l| *l < state.given) {
            // Given but maybe never received: owed again. What left the
            // log meanwhile is lost, and reported.
            let lost: Vec<String> = state
                .trimmed
                .iter()
                .filter(|(id, _)| *id > last)
                .map(|(_, topic)| topic.clone())
                .collect();
            state.trimmed.retain(|(id, _)| *id <= last);
            for topic in lost {
                *state.dropped.entry(topic).or_default() += 1;
            }
            state.given = last.max(first.saturating_sub(1));
            state.owed_bytes = state.owed().map(|(_, f)| f.len()).sum();
        }
        // What a resumed stream is owed has the same bound as a buffer:
        // the newest broadcasts beyond it are dropped, and reported.
        let owed: Vec<u64> = state
            .owed()
            .filter(|(_, f)| is_broadcast(f))
            .map(|(id, _)| *id)
            .collect();
        if owed.len() > self.max_frames {
            let excess = &owed[self.max_frames..];
            let mut kept = VecDeque::with_capacity(state.log.len());
            for (id, frame) in std::mem::take(&mut state.log) {
                if excess.binary_search(&id).is_ok() {
                    state.owed_bytes -= frame.len();
                    if let Some(topic) = topic_of(&frame) {
                        *state.dropped.entry(topic).or_default() += 1;
                    }
                } else {
                    kept.push_back((id, frame));
                }
            }
            state.log = kept;
        }
        // The reports go where the loss is: after what was kept, before
        // anything queued from now on.
        for (topic, dropped) in std::mem::take(&mut state.dropped) {
            state.push(Utf8Bytes::from(overflow(&topic, dropped).encode()));
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
        state.log.clear();
        state.owed_bytes = 0;
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

    /// Everything owed to stream `generation`, as SSE events with ids.
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
        let mut out = String::new();
        let mut last = None;
        for (id, frame) in state.owed() {
            out.push_str("id: ");
            out.push_str(&id.to_string());
            out.push('\n');
            out.push_str(&wire::sse_event(frame.as_str()));
            last = Some(*id);
        }
        let Some(last) = last else {
            return Take::Empty;
        };
        state.given = last;
        state.owed_bytes = 0;
        state.trim(self.max_frames);
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
mod tests;
