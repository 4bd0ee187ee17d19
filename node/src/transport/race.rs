//! Wait for the first of a connection's futures to finish, polling only the
//! ones that were woken.
//!
//! `tokio::select!` polls every branch each time the task wakes. A
//! connection's task wakes once per delivery (the outbox), and polling the
//! reader too on each of those wakes went down into the WebSocket frame
//! reader for nothing. Here each future gets its own waker: a wake marks
//! that future and wakes the task, and the task polls only the marked ones.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// A future borrowed for the race.
pub type Branch<'a, T> = Pin<&'a mut (dyn Future<Output = T> + Send)>;

/// What the branches' wakers share with the racing task.
struct Marks {
    /// One bit per branch: woken since the task last polled it.
    woken: AtomicU8,
    /// The racing task, woken whenever a bit is set.
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
        self.marks.woken.fetch_or(self.bit, Ordering::AcqRel);
        self.marks.task.wake();
    }
}

/// The output of the first branch to finish; the others are not polled
/// again (the caller drops them). Branches are polled in their order when
/// several were woken, and all of them on the first poll. At most 8.
pub async fn first<T, const N: usize>(mut branches: [Branch<'_, T>; N]) -> T {
    const { assert!(N >= 1 && N <= 8, "one to eight branches") };
    let marks = Arc::new(Marks {
        woken: AtomicU8::new(u8::MAX),
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
        // this waker, one before it has set its mark already.
        marks.task.register(cx.waker());
        let mut woken = marks.woken.swap(0, Ordering::AcqRel);
        while woken != 0 {
            let i = woken.trailing_zeros() as usize;
            woken &= woken - 1;
            let Some(branch) = branches.get_mut(i) else {
                continue;
            };
            if let Poll::Ready(out) = branch.as_mut().poll(&mut Context::from_waker(&wakers[i])) {
                return Poll::Ready(out);
            }
        }
        Poll::Pending
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

    #[tokio::test]
    async fn a_branch_woken_while_another_is_polled_is_polled_too() {
        let flag = Notify::new();
        // The waiter is polled first and waits; the notifier, polled after it
        // in the same pass, wakes it and then waits forever. The waiter's
        // wake must not be lost.
        let waiter = pin!(async {
            flag.notified().await;
            "waiter"
        });
        let notifier = pin!(async {
            flag.notify_waiters();
            std::future::pending::<&str>().await
        });
        let race = first([waiter as Branch<'_, _>, notifier]);
        let winner = tokio::time::timeout(std::time::Duration::from_secs(10), race).await;
        assert_eq!(winner, Ok("waiter"), "the waiter's wake was lost");
    }
}
