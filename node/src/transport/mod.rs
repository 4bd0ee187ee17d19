//! Transport: moving frames between a client and a connection's outbox,
//! separate from any protocol.
//!
//! A WebSocket connection runs as one task holding three futures: the
//! reader (frames from the client, rate limited, handed to the front-end's
//! [`Session`] hooks, plus server ticks), the writer (drains the outbox:
//! encodes every queued frame into one buffer and writes it once; sends the
//! server's pings) and the [`liveness`] watchdog, each polled only when its
//! own waker was woken ([`race`]: a delivery wakes the writer, not the frame
//! reader). When one ends, all are dropped, the socket closes and the
//! session's `on_close` runs. [`wire`] shares the socket between
//! tungstenite's reader and the writer, which encodes its frames itself.
//! [`listener`] accepts connections and serves HTTP within bounds;
//! [`direct`] answers a native upgrade without the HTTP stack;
//! [`upgrade`] does the HTTP upgrade; [`sse`] drains the same outbox into a
//! streaming HTTP response (Server-Sent Events) or a long-poll reply.

pub mod direct;
pub mod listener;
pub mod liveness;
mod race;
pub mod sse;
pub mod upgrade;
pub mod wire;

pub use direct::{Direct, DirectRun, Prefaced, Taken};
pub use listener::{Accepted, Held};
pub use upgrade::{accept, socket_config, upgraded, Socket, UpgradeError};
pub use wire::{Frames, Wire};

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use self::liveness::{Heard, Pings};
use crate::address::{AddressBudget, FrameLimit};
use crate::config::Liveness;
use crate::outbox::{CloseReason, Outbox};

/// What the reader should do after a frame.
pub enum Flow {
    Continue,
    /// Close the connection with this reason (queued after pending frames).
    Close(CloseReason),
}

/// A front-end's per-connection protocol state: the hooks a transport calls.
/// Replies go to the connection's outbox (through the node), never to the
/// socket directly, so any transport can carry them.
pub trait Session: Send {
    /// The connection is established (before any client frame).
    fn on_open(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// A text frame arrived.
    fn on_text(&mut self, text: Utf8Bytes) -> impl Future<Output = Flow> + Send;
    /// A binary frame arrived.
    fn on_binary(&mut self, data: Bytes) -> impl Future<Output = Flow> + Send;
    /// The server tick (every [`Settings::tick`]): protocol pings and timeouts.
    fn on_tick(&mut self) -> impl Future<Output = Flow> + Send {
        async { Flow::Continue }
    }
    /// The connection ended: closed by the server for this reason, or
    /// (`None`) by the client or a failed socket. Called exactly once.
    fn on_close(
        &mut self,
        closed_by_server: Option<CloseReason>,
    ) -> impl Future<Output = ()> + Send;
}

/// Per-connection transport settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Client frames per second (token bucket rate) and burst.
    pub rate: u32,
    pub burst: u32,
    /// The frame budget this socket shares with the other sockets of its
    /// client address ([`Accepted::address_of`]); `None`: none.
    pub address: Option<AddressBudget>,
    /// Longest a busy writer waits to gather more frames before it flushes.
    pub flush_window: Duration,
    /// How often [`Session::on_tick`] runs; `None` for never.
    pub tick: Option<Duration>,
    /// Server pings and the deadline to answer them; `None`: no pings.
    pub liveness: Option<Liveness>,
}

/// Run one WebSocket connection to its end: read frames into the session,
/// drain `outbox` to the socket, then call the session's `on_close`.
pub async fn run<S, T>(
    mut socket: WebSocketStream<Wire<T>>,
    outbox: &Outbox,
    mut session: S,
    settings: Settings,
) where
    S: Session,
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    // From here on the writer alone writes the socket; what tungstenite
    // still holds (a front-end's frames sent before this) goes first.
    let mut frames = socket.get_ref().frames();
    if socket.flush().await.is_err() {
        outbox.close(CloseReason::Disconnected);
        Box::pin(session.on_close(None)).await;
        return;
    }
    let stream = &mut socket;
    // The session's handlers run boxed: their futures live only while a
    // frame is handled, and inline they would size every idle connection's
    // task for the largest of them (see BENCHMARKS.md, W3).
    Box::pin(session.on_open()).await;
    let heard = Heard::new();
    let closed_by_server = {
        // Each future is polled only when it was woken: a delivery wakes the
        // writer alone, not the reader's frame decoder (see [`race`]).
        let reader = pin!(async {
            let mut limit =
                FrameLimit::new(settings.rate, settings.burst, settings.address.clone());
            let mut tick = settings.tick.map(|every| {
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            loop {
                let next = async {
                    match tick.as_mut() {
                        Some(t) => {
                            tokio::select! {
                                message = stream.next() => Some(message),
                                _ = t.tick() => None,
                            }
                        }
                        None => Some(stream.next().await),
                    }
                };
                let next = next.await;
                if matches!(next, Some(Some(_))) {
                    // Any frame (or error) from the client shows it is there.
                    heard.now();
                }
                let flow = match next {
                    None => Box::pin(session.on_tick()).await,
                    Some(None | Some(Ok(Message::Close(_)))) => return None,
                    Some(Some(Ok(Message::Text(text)))) => {
                        if !limit.allow() {
                            Flow::Close(CloseReason::RateLimited)
                        } else {
                            Box::pin(session.on_text(text)).await
                        }
                    }
                    Some(Some(Ok(Message::Binary(data)))) => {
                        if !limit.allow() {
                            Flow::Close(CloseReason::RateLimited)
                        } else {
                            Box::pin(session.on_binary(data)).await
                        }
                    }
                    // Pings and pongs cost a token like any other frame, so a
                    // ping flood closes with 4029 too.
                    Some(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {
                        if !limit.allow() {
                            Flow::Close(CloseReason::RateLimited)
                        } else {
                            Flow::Continue
                        }
                    }
                    Some(Some(Ok(Message::Frame(_)))) => Flow::Continue,
                    Some(Some(Err(WsError::Capacity(
                        CapacityError::MessageTooLong { .. } | CapacityError::TooManyHeaders,
                    )))) => Flow::Close(CloseReason::TooBig),
                    Some(Some(Err(WsError::Utf8(_)))) => Flow::Close(CloseReason::InvalidUtf8),
                    Some(Some(Err(WsError::Protocol(e))))
                        if !matches!(e, ProtocolError::ResetWithoutClosingHandshake) =>
                    {
                        tracing::debug!(error = %e, "protocol violation");
                        Flow::Close(CloseReason::ProtocolError)
                    }
                    Some(Some(Err(e))) => {
                        tracing::debug!(error = %e, "read error");
                        return None;
                    }
                };
                if let Flow::Close(reason) = flow {
                    outbox.close(reason);
                    // The writer sends the close frame; stop reading, but stay
                    // pending so the writer can finish.
                    std::future::pending::<()>().await;
                }
            }
        });
        let writer = pin!(write_loop(
            settings.flush_window,
            settings.liveness.map(Pings::new),
            &heard,
            outbox,
            &mut frames,
        ));
        let watchdog = pin!(async { Some(liveness::watchdog(settings.liveness, &heard).await) });
        race::first([reader as race::Branch<'_, _>, writer, watchdog]).await
    };
    if closed_by_server == Some(CloseReason::PingTimeout) {
        // The peer is gone or not reading: the node forgets it now, then the
        // close frame goes out for a peer that may still read it.
        outbox.close(CloseReason::Disconnected);
        Box::pin(session.on_close(closed_by_server)).await;
        send_close(&mut frames, CloseReason::PingTimeout).await;
        // A peer that was only stalled gets to read it (and its pongs do
        // not meet a closed socket, which would reset the connection).
        until_close_reply(&mut socket).await;
        return;
    }
    match closed_by_server {
        // The client closed: send what is queued and tungstenite's reply to
        // the close.
        None => {
            let reply = async {
                // tungstenite hands its reply to the writer; any error of
                // its own changes nothing about what is queued.
                let _ = socket.flush().await;
                frames.send().await
            };
            let _ = tokio::time::timeout(Duration::from_millis(500), reply).await;
        }
        // Stuck on a full socket: nothing more will get through.
        Some(CloseReason::SlowConsumer) => {}
        // We sent a close frame: read (and drop) what the client still sends
        // until its close reply, so closing the socket does not reset the
        // connection before the client has read our close frame.
        Some(_) => until_close_reply(&mut socket).await,
    }
    // Whatever is left in the outbox is dropped with the connection.
    outbox.close(CloseReason::Disconnected);
    Box::pin(session.on_close(closed_by_server)).await;
}

/// After our close frame: read (and drop) what the client still sends until
/// its close reply, for at most 2 s, so closing the socket does not reset
/// the connection before the client has read the close frame.
async fn until_close_reply<R>(stream: &mut R)
where
    R: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    let drain = async {
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// Most bytes the writer gathers before it writes them, when a pass has
/// more to write.
const WRITE_BUFFER: usize = 16 * 1024;

/// Drain the outbox until it closes, and send pings on their schedule;
/// returns the server's close reason (the pong deadline passed:
/// [`CloseReason::PingTimeout`], close frame not sent), or `None` when the
/// socket failed.
async fn write_loop<T>(
    window: Duration,
    mut pings: Option<Pings>,
    heard: &Heard,
    outbox: &Outbox,
    frames: &mut Frames<T>,
) -> Option<CloseReason>
where
    T: AsyncWrite + Unpin + Send,
{
    let mut batch: VecDeque<Utf8Bytes> = VecDeque::new();
    // One timer for the ping schedule, moved only when the schedule moves: a
    // new timer for every idle wait would enter tokio's timer wheel and
    // leave it again on every delivery.
    let mut ping_timer = pin!(pings
        .as_ref()
        .map(|p| tokio::time::sleep_until(p.next_event())));
    // What the last wait took: the wake and the take cost one lock.
    let mut taken: Option<Option<CloseReason>> = None;
    // tungstenite wrote a reply (a pong) for this writer to send.
    let mut reply = false;
    loop {
        // Pings keep their schedule while frames flow, too.
        let ping = match pings.as_mut().map(|p| p.due(heard)) {
            Some(liveness::Due::Dead) => return Some(CloseReason::PingTimeout),
            Some(liveness::Due::Ping) => true,
            _ => false,
        };
        let closing = match taken.take() {
            Some(closing) => closing,
            None => outbox.take(&mut batch),
        };
        if batch.is_empty() && !ping && !reply {
            if let Some(reason) = closing {
                send_close(frames, reason).await;
                return Some(reason);
            }
            if batch.capacity() > 64 {
                batch = VecDeque::new();
            }
            // The ping schedule's timer, moved to its next event; without
            // pings, a wait that never ends.
            let timer = match (&pings, ping_timer.as_mut().as_pin_mut()) {
                (Some(p), Some(mut timer)) => {
                    let at = p.next_event();
                    if timer.deadline() != at {
                        timer.as_mut().reset(at);
                    }
                    Some(timer)
                }
                _ => None,
            };
            // The outbox first: when a delivery woke the writer, the timer
            // is not polled (`due` above keeps the schedule).
            tokio::select! {
                biased;
                closing = outbox.next(&mut batch) => taken = Some(closing),
                _ = frames.control() => reply = true,
                _ = async {
                    match timer {
                        Some(timer) => timer.await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            continue;
        }
        reply = false;
        let io = async {
            if ping {
                frames.ping();
            }
            if !window.is_zero() && batch.len() > 1 {
                // Behind: let more frames arrive so they share a syscall,
                // for at most `window`, and not once a burst has queued
                // enough for a write (it must not wait into an overflow).
                let queued: usize = batch.iter().map(|f| f.len()).sum();
                if queued < outbox.window_bytes() {
                    let _ = tokio::time::timeout(window, outbox.filled()).await;
                }
                outbox.take(&mut batch);
            }
            while let Some(frame) = batch.pop_front() {
                frames.text(frame.as_bytes());
                if frames.buffered() >= WRITE_BUFFER {
                    frames.send().await?;
                }
            }
            frames.send().await
        };
        tokio::pin!(io);
        // Frames pushed meanwhile wait for the next pass without waking
        // this one; a slow consumer stuck on a full socket buffer will never
        // read a close frame: drop it as soon as its outbox overflows.
        let result = tokio::select! {
            biased;
            result = &mut io => Some(result),
            _ = outbox.overflowed() => None,
        };
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "write error");
                return None;
            }
            None => return Some(CloseReason::SlowConsumer),
        }
    }
}

/// Send a close frame with `reason` after whatever is queued, giving a
/// peer that does not read 2 s.
async fn send_close<T>(frames: &mut Frames<T>, reason: CloseReason)
where
    T: AsyncWrite + Unpin + Send,
{
    frames.close(reason.code(), reason.text());
    let _ = tokio::time::timeout(Duration::from_secs(2), frames.send()).await;
}
