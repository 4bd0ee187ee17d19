//! Wait for the first of a connection's futures to finish, polling only the
//! ones that were woken.
//!
//! `tokio::select!` polls every branch each time the task wakes. A
//! connection's task wakes once per delivery (the outbox), and polling the
//! reader too on each of those wakes went down into the WebSocket frame
//! reader for nothing. Here each future gets its own waker: a wake marks
//! that future and wakes the task, and the task polls only the marked ones.
//!
//! A wake that comes while the task is polling its branches (the reader
//! queued a reply, so the writer is woken) only sets its mark: the poll
//! looks at the marks again before it returns and polls the newly marked
//! branches at once. Waking the running task instead would make tokio
//! reschedule it as a yield, behind the other ready tasks, and wake a
//! parked worker thread to steal it: a futex call and a context switch on
//! another thread for each reply to a client frame.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// A future borrowed for the race.
pub type Branch<'a, T> = Pin<&'a mut (dyn Future<Output = T> + Send)>;

/// What the branches' wakers share with the racing task.
struct Marks {
    /// One bit per branch: woken since the task last polled it.
    woken: AtomicU8,
    /// Set while the racing task polls its branches: a wake then only sets
    /// its bit, which the poll reads before it returns.
    polling: AtomicBool,
    /// The racing task, woken when a bit is set while it is not polling.
    task: AtomicWaker,
}

/// The waker handed to one branch.
struct Mark {
    marks: Arc<Marks>,
    bit: u8,
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // SeqCst on both sides: either the poll sees this bit after it
        // cleared `polling`, or this sees `polling` cleared and wakes.
        self.marks.woken.fetch_or(self.bit, Ordering::SeqCst);
        if !self.marks.polling.load(Ordering::SeqCst) {
            self.marks.task.wake();
        }
    }
}

/// Passes over newly marked branches one poll of the task makes before it
/// yields instead: a branch that wakes itself to yield (as tokio's
/// resources do when the task's budget is spent) is not polled forever.
const PASSES: u32 = 4;

/// The output of the first branch to finish; the others are not polled
/// again (the caller drops them). Branches are polled in their order when
/// several were woken, and all of them on the first poll; branches woken
/// during a poll are polled in the same poll (up to [`PASSES`] passes, while
/// the task's cooperative budget lasts). At most 8.
pub async fn first<T, const N: usize>(mut branches: [Branch<'_, T>; N]) -> T {
    const { assert!(N >= 1 && N <= 8, "one to eight branches") };
    let marks = Arc::new(Marks {
        woken: AtomicU8::new(u8::MAX),
        polling: AtomicBool::new(false),
        task: AtomicWaker::new(),
    });
    let wakers: [Waker; N] = std::array::from_fn(|i| {
        Waker::from(Arc::new(Mark {
            marks: marks.clone(),
            bit: 1 << i,
        }))
    });
    std::future::poll_fn(move |cx| {
        // Register before reading the marks: a wake after this line wakes
        // this waker (or, while `polling`, is read below), one before it
        // has set its mark already.
        marks.task.register(cx.waker());
        marks.polling.store(true, Ordering::SeqCst);
        let mut passes = 0;
        loop {
            let mut woken = marks.woken.swap(0, Ordering::SeqCst);
            if woken == 0 {
                marks.polling.store(false, Ordering::SeqCst);
                // A wake between the swap and the store set its bit without
                // waking the task: look once more.
                if marks.woken.load(Ordering::SeqCst) == 0 {
                    return Poll::Pending;
                }
                marks.polling.store(true, Ordering::SeqCst);
                continue;
            }
            if passes == PASSES || (passes > 0 && !tokio::task::coop::has_budget_remaining()) {
                // Yield: the marks stay for the next poll.
                marks.woken.fetch_or(woken, Ordering::SeqCst);
                marks.polling.store(false, Ordering::SeqCst);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            passes += 1;
            while woken != 0 {
                let i = woken.trailing_zeros() as usize;
                woken &= woken - 1;
                let Some(branch) = branches.get_mut(i) else {
                    continue;
                };
                let polled = branch.as_mut().poll(&mut Context::from_waker(&wakers[i]));
                if let Poll::Ready(out) = polled {
                    marks.polling.store(false, Ordering::SeqCst);
                    return Poll::Ready(out);
                }
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;

    /// Counts its polls; finishes after `notify` fires `fires` times.
    async fn counted(
        polls: &AtomicUsize,
        notify: &Notify,
        fires: usize,
        out: &'static str,
    ) -> &'static str {
        for _ in 0..fires {
            let notified = notify.notified();
            let mut notified = pin!(notified);
            std::future::poll_fn(|cx| {
                polls.fetch_add(1, Ordering::Relaxed);
                notified.as_mut().poll(cx)
            })
            .await;
        }
        out
    }

    #[tokio::test]
    async fn only_the_woken_branch_is_polled_and_the_first_to_finish_wins() {
        let (reads, writes) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (read_wake, write_wake) = (Notify::new(), Notify::new());
        let reader = pin!(counted(&reads, &read_wake, 1, "reader"));
        let writer = pin!(counted(&writes, &write_wake, 50, "writer"));
        let race = first([reader as Branch<'_, _>, writer]);
        let waker = async {
            loop {
                write_wake.notify_one();
                tokio::task::yield_now().await;
            }
        };
        let winner = tokio::select! {
            winner = race => winner,
            _ = waker => unreachable!(),
        };
        assert_eq!(winner, "writer");
        // The reader was polled once (the first poll) while the writer was
        // woken fifty times.
        assert_eq!(reads.load(Ordering::Relaxed), 1);
        assert!(writes.load(Ordering::Relaxed) >= 50);
    }

    /// A waker that counts its wakes.
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_branch_woken_during_the_poll_finishes_in_it_without_waking_the_task() {
        // The writer waits first; the reader, polled after it in the same
        // pass, wakes it (a reply queued) and then waits forever. The
        // writer's wake must not be lost: the same poll finishes with the
        // writer, and the task is not woken to poll again.
        let flag = Notify::new();
        let writer = pin!(async {
            flag.notified().await;
            "writer"
        });
        let reader = pin!(async {
            flag.notify_waiters();
            std::future::pending::<&str>().await
        });
        let mut race = pin!(first([writer as Branch<'_, _>, reader]));
        let counted = Arc::new(Counted(AtomicUsize::new(0)));
        let waker = Waker::from(counted.clone());
        let polled = race.as_mut().poll(&mut Context::from_waker(&waker));
        assert_eq!(polled, Poll::Ready("writer"), "the writer's wake was lost");
        assert_eq!(counted.0.load(Ordering::Relaxed), 0, "the task was woken");
    }

    #[test]
    fn a_branch_that_always_wakes_itself_yields_after_a_bounded_number_of_passes() {
        let polls = AtomicUsize::new(0);
        let spinner = pin!(std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            cx.waker().wake_by_ref();
            Poll::<&str>::Pending
        }));
        let mut race = pin!(first([spinner as Branch<'_, _>]));
        let counted = Arc::new(Counted(AtomicUsize::new(0)));
        let waker = Waker::from(counted.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(race.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(polls.load(Ordering::Relaxed), PASSES as usize);
        assert_eq!(counted.0.load(Ordering::Relaxed), 1, "it yields once");
        // Its mark stays: the next poll polls it again.
        assert_eq!(race.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(polls.load(Ordering::Relaxed), 2 * PASSES as usize);
        assert_eq!(counted.0.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn wakes_from_another_thread_are_never_lost() {
        // Ping-pong with a thread: it sends the next item as soon as the
        // racing task has taken the last one, so its wake lands while the
        // task is still finishing that poll. A wake lost there hangs the
        // receiver, and the timeout fails the test.
        const ITEMS: usize = 100_000;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let taken = Arc::new(AtomicUsize::new(0));
        let gave_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sender = std::thread::spawn({
            let (taken, gave_up) = (taken.clone(), gave_up.clone());
            move || {
                for i in 0..ITEMS {
                    while taken.load(Ordering::Acquire) < i {
                        if gave_up.load(Ordering::Relaxed) {
                            return;
                        }
                        std::hint::spin_loop();
                    }
                    tx.send(i).unwrap();
                }
            }
        });
        let received = runtime.block_on(async {
            let taken = taken.clone();
            tokio::spawn(async move {
                let counter = pin!(async {
                    let mut n = 0;
                    while n < ITEMS {
                        rx.recv().await.unwrap();
                        n += 1;
                        taken.store(n, Ordering::Release);
                    }
                    n
                });
                let idle = pin!(std::future::pending::<usize>());
                let race = first([counter as Branch<'_, _>, idle]);
                tokio::time::timeout(std::time::Duration::from_secs(60), race).await
            })
            .await
            .unwrap()
        });
        gave_up.store(true, Ordering::Relaxed);
        sender.join().unwrap();
        assert_eq!(received, Ok(ITEMS), "a wake was lost");
    }
}
