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
    /// ([`Outbox::overflowed`]); pushes do not wake it.
    on_overflow: Option<Waker>,
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
        if state.on_frame.is_empty() {
            return Push::Queued;
        }
        let wake = state.on_frame.take();
        drop(state);
        wake.wake();
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
        state.bytes += len;
        state.queue.extend(frames.cloned());
        let wake = state.on_frame.take();
        drop(state);
        wake.wake();
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
                    match &state.on_overflow {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => state.on_overflow = Some(cx.waker().clone()),
                    }
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
    fn start_drops_what_raced_it_and_queues_the_first_frame_first() {
        let outbox = Outbox::new(100);
        outbox.push(Utf8Bytes::from("early"));
        assert!(outbox.start(Some(Utf8Bytes::from("hello"))));
        outbox.push(Utf8Bytes::from("later"));
        assert_eq!(outbox.queued_bytes(), 10);
        let mut batch = VecDeque::new();
        assert_eq!(outbox.take(&mut batch), None);
        assert_eq!(Vec::from(batch), ["hello", "later"].map(Utf8Bytes::from));
        // Without a first frame it only drops; once closed it does nothing.
        outbox.push(Utf8Bytes::from("x"));
        assert!(outbox.start(None));
        assert_eq!(outbox.queued_bytes(), 0);
        outbox.close(CloseReason::Unavailable);
        assert!(!outbox.start(Some(Utf8Bytes::from("hello"))));
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

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn counting() -> (std::sync::Arc<Count>, Waker) {
        let count = std::sync::Arc::new(Count(Default::default()));
        (count.clone(), Waker::from(count))
    }

    fn wakes(count: &Count) -> usize {
        count.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn only_the_push_after_a_wait_wakes_the_waiter() {
        let outbox = Outbox::new(1 << 20);
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut batch = VecDeque::new();
        {
            let mut next = std::pin::pin!(outbox.next(&mut batch));
            assert_eq!(next.as_mut().poll(&mut cx), Poll::Pending);
            for _ in 0..100 {
                outbox.push(Utf8Bytes::from("x"));
            }
            assert_eq!(wakes(&count), 1, "one wake for a hundred pushes");
            assert_eq!(next.as_mut().poll(&mut cx), Poll::Ready(None));
        }
        assert_eq!(batch.len(), 100);
        // Pushes while the writer writes (nobody waits) wake nothing; the
        // next wait finds them at once.
        outbox.push(Utf8Bytes::from("y"));
        assert_eq!(wakes(&count), 1);
        let mut ready = std::pin::pin!(outbox.ready());
        assert_eq!(ready.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn a_close_wakes_the_waiter_and_an_overflow_the_stuck_writer() {
        let outbox = Outbox::new(4);
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut ready = std::pin::pin!(outbox.ready());
        assert_eq!(ready.as_mut().poll(&mut cx), Poll::Pending);
        let mut overflowed = std::pin::pin!(outbox.overflowed());
        assert_eq!(overflowed.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(outbox.push(Utf8Bytes::from("1234")), Push::Queued);
        assert_eq!(
            wakes(&count),
            1,
            "a push wakes the waiter, not the overflow wait"
        );
        assert_eq!(overflowed.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(outbox.push(Utf8Bytes::from("5")), Push::Overflowed);
        assert_eq!(wakes(&count), 2);
        assert_eq!(overflowed.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(ready.as_mut().poll(&mut cx), Poll::Ready(()));

        let other = Outbox::new(4);
        let mut overflowed = std::pin::pin!(other.overflowed());
        assert_eq!(overflowed.as_mut().poll(&mut cx), Poll::Pending);
        assert!(other.close(CloseReason::Drain));
        assert_eq!(wakes(&count), 3, "a close wakes it to look");
        assert_eq!(
            overflowed.as_mut().poll(&mut cx),
            Poll::Pending,
            "only a slow-consumer close ends this wait"
        );
    }

    #[test]
    fn every_waiting_task_is_woken() {
        let outbox = Outbox::new(1 << 20);
        let counts: Vec<_> = (0..2).map(|_| counting()).collect();
        let mut waits: Vec<_> = (0..2).map(|_| Box::pin(outbox.ready())).collect();
        for (wait, (_, waker)) in waits.iter_mut().zip(&counts) {
            let mut cx = Context::from_waker(waker);
            assert_eq!(wait.as_mut().poll(&mut cx), Poll::Pending);
        }
        outbox.push(Utf8Bytes::from("x"));
        assert!(counts.iter().all(|(c, _)| wakes(c) == 1));
    }

    /// Many threads push while one writer takes and waits, as fast as it
    /// can: every frame must reach the writer, and a frame pushed while the
    /// writer drains must never be stranded (a lost wake-up would leave the
    /// writer waiting past the deadline with frames queued).
    #[test]
    fn no_frame_is_stranded_by_a_lost_wake_up() {
        const PUSHERS: usize = 8;
        const EACH: usize = 20_000;
        let outbox = std::sync::Arc::new(Outbox::new(usize::MAX / 2));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("runtime");
        let writer = {
            let outbox = outbox.clone();
            runtime.spawn(async move {
                let mut batch = VecDeque::new();
                let mut seen = [0usize; PUSHERS];
                let mut total = 0;
                while total < PUSHERS * EACH {
                    // The deadline is looked at first: a timer that woke the
                    // writer must not rescue a wait that a push failed to wake.
                    let stranded = tokio::select! {
                        biased;
                        _ = tokio::time::sleep(std::time::Duration::from_secs(20)) => true,
                        _ = outbox.next(&mut batch) => false,
                    };
                    if stranded {
                        let queued = outbox.queued_bytes();
                        panic!("writer stranded after {total} frames, {queued} bytes queued");
                    }
                    for frame in batch.drain(..) {
                        let (pusher, n) = frame.split_once(':').expect("pusher:n");
                        let (pusher, n): (usize, usize) =
                            (pusher.parse().expect("pusher"), n.parse().expect("n"));
                        assert_eq!(n, seen[pusher], "frames of one pusher in order");
                        seen[pusher] += 1;
                        total += 1;
                    }
                    // Sometimes yield, so pushes land both while the writer
                    // waits and while it drains.
                    if total % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                total
            })
        };
        let pushers: Vec<_> = (0..PUSHERS)
            .map(|p| {
                let outbox = outbox.clone();
                std::thread::spawn(move || {
                    for n in 0..EACH {
                        assert_eq!(
                            outbox.push(Utf8Bytes::from(format!("{p}:{n}"))),
                            Push::Queued
                        );
                        if n % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for p in pushers {
            p.join().expect("pusher");
        }
        let total = runtime.block_on(writer).expect("writer");
        assert_eq!(total, PUSHERS * EACH);
    }
}
