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

#[test]
fn a_flush_window_ends_once_a_burst_has_queued_enough_for_a_write() {
    let outbox = Outbox::new(1 << 20);
    assert_eq!(
        outbox.window_bytes(),
        WINDOW_BYTES,
        "64 KiB of a 1 MiB bound"
    );
    assert_eq!(
        Outbox::new(4000).window_bytes(),
        1000,
        "a quarter of a small bound"
    );
    let (count, waker) = counting();
    let mut cx = Context::from_waker(&waker);
    let frame = Utf8Bytes::from("x".repeat(4096));
    let mut filled = std::pin::pin!(outbox.filled());
    assert_eq!(filled.as_mut().poll(&mut cx), Poll::Pending);
    for _ in 0..15 {
        outbox.push(frame.clone());
    }
    assert_eq!(wakes(&count), 0, "60 KiB queued: the window goes on");
    assert_eq!(filled.as_mut().poll(&mut cx), Poll::Pending);
    outbox.push(frame.clone());
    assert_eq!(wakes(&count), 1, "64 KiB queued: the window ends");
    assert_eq!(filled.as_mut().poll(&mut cx), Poll::Ready(()));
    // Only the window's wait is woken: while the writer writes, a backlog
    // past the mark wakes nothing more.
    outbox.push(frame.clone());
    assert_eq!(wakes(&count), 1);

    // A take ends the window: later pushes do not wake the old wait.
    let mut batch = VecDeque::new();
    outbox.take(&mut batch);
    let mut filled = std::pin::pin!(outbox.filled());
    assert_eq!(filled.as_mut().poll(&mut cx), Poll::Pending);
    outbox.take(&mut batch);
    for _ in 0..20 {
        outbox.push(frame.clone());
    }
    assert_eq!(wakes(&count), 1);
    // Polled again (a timer or another wake), it sees what is queued.
    assert_eq!(filled.as_mut().poll(&mut cx), Poll::Ready(()));
    // A close ends a window too.
    let other = Outbox::new(1 << 20);
    let mut filled = std::pin::pin!(other.filled());
    assert_eq!(filled.as_mut().poll(&mut cx), Poll::Pending);
    other.close(CloseReason::Drain);
    assert_eq!(wakes(&count), 2);
    assert_eq!(filled.as_mut().poll(&mut cx), Poll::Ready(()));
}
