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
use std::future::Future;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use tokio_tungstenite::tungstenite::Utf8Bytes;

mod close;
pub use close::CloseReason;

/// [`Outbox::offer`] queues a frame only while the outbox holds at most this
/// fraction of its bound (a quarter): a socket that far behind is not
/// keeping up, and frames that may be lost are lost first.
pub const VOLATILE_SHARE: usize = 4;

/// Most bytes a writer's flush window waits for (see [`Outbox::window_bytes`]).
pub const WINDOW_BYTES: usize = 64 * 1024;

/// Result of a push.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// This push overflowed the bound: the outbox is now closed as a slow consumer.
    Overflowed,
    /// The outbox was already closed; the frame was dropped.
    Closed,
}

/// The tasks waiting on an outbox: usually one (the connection's writer),
/// kept inline so that an idle connection allocates nothing for it.
#[derive(Default)]
struct Waiters {
    first: Option<Waker>,
    /// Other tasks waiting at the same time (a Socket.IO poll during an
    /// upgrade); a few at most, the oldest woken to make room. Boxed: one
    /// pointer in every connection's outbox, where a `Vec` would be three.
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<Waker>>>,
}

/// More tasks than this waiting at once: the oldest is woken (it waits
/// again if it still wants to) rather than kept.
const MORE_WAITERS: usize = 3;

impl Waiters {
    fn register(&mut self, waker: &Waker) {
        match &self.first {
            None => self.first = Some(waker.clone()),
            Some(w) if w.will_wake(waker) => {}
            Some(_) => {
                let more = self.more.get_or_insert_with(Box::default);
                if more.iter().any(|w| w.will_wake(waker)) {
                    return;
                }
                more.push(waker.clone());
                if more.len() > MORE_WAITERS {
                    more.remove(0).wake();
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.more.is_none()
    }

    /// Take every waiter, to wake once the lock is released.
    fn take(&mut self) -> Waiters {
        std::mem::take(self)
    }

    fn wake(self) {
        if let Some(w) = self.first {
            w.wake();
        }
        if let Some(more) = self.more {
            more.into_iter().for_each(Waker::wake);
        }
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Utf8Bytes>,
    bytes: usize,
    /// Bytes reserved by [`Outbox::hold`] for frames not queued yet.
    held: usize,
    closed: Option<CloseReason>,
    /// Tasks waiting for a frame or the close ([`Outbox::ready`]), each
    /// registered while the queue was empty: the next push, offer or close
    /// takes and wakes them. A push while nobody waits (the writer is
    /// running, or already woken) wakes nothing.
    on_frame: Waiters,
    /// The writer waiting, while it writes, for a slow-consumer close
    /// ([`Outbox::overflowed`]), or in its flush window for enough to be
    /// queued ([`Outbox::filled`]); pushes wake it only in the window.
    on_overflow: Option<Waker>,
    /// The writer waits in its flush window: the push that brings the queue
    /// to [`Outbox::window_bytes`] wakes `on_overflow`.
    windowing: bool,
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

    /// Everyone to wake on a close.
    fn closing(&mut self) -> (Waiters, Option<Waker>) {
        (self.on_frame.take(), self.on_overflow.take())
    }

    /// Keep the writer's waker in `on_overflow` (unless it is there).
    fn watch(&mut self, waker: &Waker) {
        match &self.on_overflow {
            Some(w) if w.will_wake(waker) => {}
            _ => self.on_overflow = Some(waker.clone()),
        }
    }

    /// The writer to wake now that `bytes` more are queued, if it waits in
    /// its flush window and the queue has reached `enough`.
    fn window_full(&mut self, enough: usize) -> Option<Waker> {
        if !self.windowing || self.bytes + self.held < enough {
            return None;
        }
        self.windowing = false;
        self.on_overflow.take()
    }
}

fn wake_all((frame, overflow): (Waiters, Option<Waker>)) {
    frame.wake();
    if let Some(w) = overflow {
        w.wake();
    }
}

/// Frames waiting to be written to one socket.
///
/// One lock guards the queue, the byte count, the close and the waiting
/// tasks' wakers, so a waiter registers only after seeing (under the lock)
/// that there is nothing to take, and every push after that sees it: no
/// wake-up is lost, and pushes while the writer runs cost no wake-up.
/// Wakers are woken after the lock is released.
pub struct Outbox {
    /// Locked only for a push or a take, never across an `.await`.
    state: Mutex<State>,
    limit: usize,
}

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
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
            let wake = state.closing();
            drop(state);
            wake_all(wake);
            return Push::Overflowed;
        }
        state.bytes += len;
        state.queue.push_back(frame);
        let writer = state.window_full(self.window_bytes());
        if state.on_frame.is_empty() && writer.is_none() {
            return Push::Queued;
        }
        let wake = state.on_frame.take();
        drop(state);
        wake.wake();
        if let Some(writer) = writer {
            writer.wake();
        }
        Push::Queued
    }

    /// What a writer's flush window waits for at most: a quarter of the
    /// bound, and never more than 64 KiB (enough for one write). A burst
    /// ends the window early, so the window never holds frames back until
    /// the outbox overflows.
    pub fn window_bytes(&self) -> usize {
        (self.limit / VOLATILE_SHARE).clamp(1, WINDOW_BYTES)
    }

    /// Wait (the writer, in its flush window) until the outbox holds
    /// [`Outbox::window_bytes`] or is closing; pushes below that do not wake
    /// it. Taking what is queued ends the wait's registration.
    pub fn filled(&self) -> impl Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx| {
            let mut state = self.state.lock();
            if state.closed.is_some() || state.bytes + state.held >= self.window_bytes() {
                state.windowing = false;
                return Poll::Ready(());
            }
            state.watch(cx.waker());
            state.windowing = true;
            Poll::Pending
        })
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
        state.bytes += len;
        state.queue.extend(frames.cloned());
        let wake = state.on_frame.take();
        let writer = state.window_full(self.window_bytes());
        drop(state);
        wake.wake();
        if let Some(writer) = writer {
            writer.wake();
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
            let wake = state.closing();
            drop(state);
            wake_all(wake);
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
        let Some(frame) = first else {
            return true;
        };
        state.bytes += frame.len();
        state.queue.push_back(frame);
        let wake = state.on_frame.take();
        drop(state);
        wake.wake();
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
        let wake = state.closing();
        drop(state);
        wake_all(wake);
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
        Self::take_locked(&mut state, into)
    }

    fn take_locked(state: &mut State, into: &mut VecDeque<Utf8Bytes>) -> Option<CloseReason> {
        if into.is_empty() {
            std::mem::swap(into, &mut state.queue);
        } else {
            into.append(&mut state.queue);
        }
        state.bytes = 0;
        state.windowing = false;
        if state.queue.capacity() > 64 {
            state.queue = VecDeque::new();
        }
        state.closed
    }

    /// Wait until something is queued or the outbox is closed (at once if
    /// it is already): a waiter takes what is queued before waiting again.
    pub fn ready(&self) -> impl Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx| {
            let mut state = self.state.lock();
            if !state.queue.is_empty() || state.closed.is_some() {
                return Poll::Ready(());
            }
            state.on_frame.register(cx.waker());
            Poll::Pending
        })
    }

    /// [`Outbox::take`] once something is queued or the outbox is closed:
    /// the writer's wait and its take under one lock.
    pub fn next<'a>(
        &'a self,
        into: &'a mut VecDeque<Utf8Bytes>,
    ) -> impl Future<Output = Option<CloseReason>> + Send + 'a {
        std::future::poll_fn(move |cx| self.poll_next(cx, into))
    }

    fn poll_next(
        &self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<Utf8Bytes>,
    ) -> Poll<Option<CloseReason>> {
        let mut state = self.state.lock();
        if !state.queue.is_empty() || state.closed.is_some() {
            return Poll::Ready(Self::take_locked(&mut state, into));
        }
        state.on_frame.register(cx.waker());
        Poll::Pending
    }

    /// Wait until the outbox closes as a slow consumer (the writer, while a
    /// write is stuck on a full socket, gives up then). Pushes do not wake
    /// this wait; a close for another reason leaves it pending for good.
    pub fn overflowed(&self) -> impl Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx| {
            let mut state = self.state.lock();
            match state.closed {
                Some(CloseReason::SlowConsumer) => Poll::Ready(()),
                Some(_) => Poll::Pending,
                None => {
                    state.watch(cx.waker());
                    Poll::Pending
                }
            }
        })
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
mod tests;
