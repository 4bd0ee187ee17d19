//! A level that tasks wait on, each for its own threshold, each woken only
//! when the level reaches it.
//!
//! Joins wait twice: for Redis to confirm the subscriptions of their
//! interest change ([`super::state::Inner::applied`]) and for every peer to
//! acknowledge the announced version ([`super::views::Interests::acked`]).
//! A `watch` channel would wake every waiting join on every change: at
//! thousands of connects a second that is hundreds of joins in flight times
//! hundreds of passes and acknowledgements a second, nearly all of them
//! woken to find they must wait on. Here a change wakes only the waiters
//! whose threshold it reached: one wake-up per join and stage.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

pub(super) struct Watermark {
    state: Mutex<State>,
}

struct State {
    level: u64,
    /// (threshold, waiter id) → its waker, in threshold order.
    waiting: BTreeMap<(u64, u64), Waker>,
    next_id: u64,
}

impl Watermark {
    pub(super) fn new(level: u64) -> Self {
        Watermark {
            state: Mutex::new(State {
                level,
                waiting: BTreeMap::new(),
                next_id: 0,
            }),
        }
    }

    pub(super) fn level(&self) -> u64 {
        self.state.lock().level
    }

    /// Set the level (it may fall as well as rise) and wake the waiters it
    /// reaches.
    pub(super) fn set(&self, level: u64) {
        let woken = {
            let mut st = self.state.lock();
            st.level = level;
            st.reached()
        };
        for waker in woken {
            waker.wake();
        }
    }

    /// Raise the level to `level` if that is higher; whether it rose.
    pub(super) fn raise(&self, level: u64) -> bool {
        let woken = {
            let mut st = self.state.lock();
            if level <= st.level {
                return false;
            }
            st.level = level;
            st.reached()
        };
        for waker in woken {
            waker.wake();
        }
        true
    }

    /// Resolves once the level is at least `threshold`.
    pub(super) fn reached(&self, threshold: u64) -> Reached<'_> {
        Reached {
            mark: self,
            threshold,
            id: None,
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state.lock().waiting.len()
    }
}

impl State {
    /// Take out the wakers of every threshold at or below the level.
    fn reached(&mut self) -> Vec<Waker> {
        let above = match self.level.checked_add(1) {
            Some(next) => self.waiting.split_off(&(next, 0)),
            None => BTreeMap::new(),
        };
        std::mem::replace(&mut self.waiting, above)
            .into_values()
            .collect()
    }
}

/// The future of [`Watermark::reached`]. Dropping it (a timeout) removes
/// its waker.
pub(super) struct Reached<'a> {
    mark: &'a Watermark,
    threshold: u64,
    id: Option<u64>,
}

impl Future for Reached<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut st = this.mark.state.lock();
        if st.level >= this.threshold {
            if let Some(id) = this.id.take() {
                st.waiting.remove(&(this.threshold, id));
            }
            return Poll::Ready(());
        }
        let id = *this.id.get_or_insert_with(|| {
            st.next_id += 1;
            st.next_id
        });
        match st.waiting.get_mut(&(this.threshold, id)) {
            Some(waker) => waker.clone_from(cx.waker()),
            None => {
                st.waiting.insert((this.threshold, id), cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for Reached<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.mark.state.lock().waiting.remove(&(self.threshold, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waiter(count: &Arc<Count>) -> Waker {
        Waker::from(count.clone())
    }

    fn poll(fut: &mut Pin<Box<Reached<'_>>>, waker: &Waker) -> Poll<()> {
        fut.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_change_wakes_only_the_waiters_whose_threshold_it_reached() {
        let mark = Watermark::new(0);
        let counts: Vec<Arc<Count>> = (0..3)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        let mut futs: Vec<_> = [5, 10, 15]
            .iter()
            .map(|&t| Box::pin(mark.reached(t)))
            .collect();
        for (fut, count) in futs.iter_mut().zip(&counts) {
            assert!(poll(fut, &waiter(count)).is_pending());
        }
        assert_eq!(mark.waiting(), 3);

        mark.set(4);
        let woken = |c: &[Arc<Count>]| {
            c.iter()
                .map(|c| c.0.load(Ordering::SeqCst))
                .collect::<Vec<_>>()
        };
        assert_eq!(woken(&counts), [0, 0, 0]);

        mark.set(10);
        assert_eq!(woken(&counts), [1, 1, 0]);
        assert!(poll(&mut futs[0], &waiter(&counts[0])).is_ready());
        assert!(poll(&mut futs[1], &waiter(&counts[1])).is_ready());
        assert_eq!(mark.waiting(), 1);

        // A fall wakes nobody; a raise below the level does not lower it.
        mark.set(2);
        assert!(!mark.raise(1));
        assert_eq!(mark.level(), 2);
        assert_eq!(woken(&counts), [1, 1, 0]);

        assert!(mark.raise(u64::MAX));
        assert_eq!(woken(&counts), [1, 1, 1]);
        assert!(poll(&mut futs[2], &waiter(&counts[2])).is_ready());
        assert_eq!(mark.waiting(), 0);
    }

    #[test]
    fn a_dropped_waiter_leaves_nothing_behind() {
        let mark = Watermark::new(0);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let mut fut = Box::pin(mark.reached(7));
        assert!(poll(&mut fut, &waiter(&count)).is_pending());
        // Polled again with another waker: still one entry.
        assert!(poll(&mut fut, &waiter(&count)).is_pending());
        assert_eq!(mark.waiting(), 1);
        drop(fut);
        assert_eq!(mark.waiting(), 0);
        mark.set(7);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_waiter_already_reached_resolves_at_once() {
        let mark = Watermark::new(3);
        mark.reached(3).await;
        assert_eq!(mark.waiting(), 0);
    }

    #[tokio::test]
    async fn a_task_waiting_on_the_level_resumes_when_it_is_reached() {
        let mark = Arc::new(Watermark::new(0));
        let waiting = {
            let mark = mark.clone();
            tokio::spawn(async move { mark.reached(2).await })
        };
        while mark.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        mark.raise(1);
        assert!(!waiting.is_finished());
        mark.raise(2);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("woken")
            .expect("no panic");
    }
}
