//! A connection's wait for its next frame, cheap when frames keep coming.
//!
//! Every connection of a segment watches one stop signal. Polling a
//! `watch::Receiver::changed` future takes the lock of that watch's waiter
//! list, and creating and dropping one per frame does so twice more, so a
//! `select!` over the socket and the stop signal costs three turns of a lock
//! that all of a segment's connections share, for every frame read. Here the
//! stop future lives as long as the read loop, and it is polled only when the
//! socket has nothing ready (once per wake-up), or first on every
//! [`STOP_EVERY`]th frame in a row, so that a socket that is never idle still
//! stops.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::{Error, Message};

use crate::client::Ws;

/// Frames read in a row before the stop signal is looked at first.
const STOP_EVERY: u32 = 32;

/// What a wait ended with.
pub(super) enum Woke<T> {
    /// The socket's next item (`None`: the stream ended).
    Frame(Option<Result<Message, Error>>),
    /// What `other` had ready.
    Other(T),
    /// The stop future completed.
    Stop,
}

/// Frames read since the stop signal was last looked at.
#[derive(Default)]
pub(super) struct Turns(u32);

impl Turns {
    /// Wait for the next frame on `ws`, for `other`, or for `stop`.
    pub(super) async fn next<T, S: Future>(
        &mut self,
        ws: &mut Ws,
        mut stop: Pin<&mut S>,
        mut other: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Woke<T> {
        std::future::poll_fn(|cx| {
            if self.0 >= STOP_EVERY {
                self.0 = 0;
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Stop);
                }
            }
            if let Poll::Ready(frame) = ws.poll_next_unpin(cx) {
                self.0 += 1;
                return Poll::Ready(Woke::Frame(frame));
            }
            if let Poll::Ready(t) = other(cx) {
                return Poll::Ready(Woke::Other(t));
            }
            self.0 = 0;
            match stop.as_mut().poll(cx) {
                Poll::Ready(_) => Poll::Ready(Woke::Stop),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}
