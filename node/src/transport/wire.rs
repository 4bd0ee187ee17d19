//! A WebSocket's socket, shared by tungstenite's reader and the
//! connection's own frame writer.
//!
//! tungstenite reads and decodes the client's frames through a [`Wire`].
//! Until a connection's writer takes over ([`Wire::frames`]), whatever
//! tungstenite writes goes straight to the socket: a front-end's handshake
//! replies, a refusal's close frame. Once [`Frames`] has it, the writer
//! alone writes to the socket: it encodes the outbox's text frames itself
//! (a server's frames are unmasked: a header of 2 to 10 bytes and the
//! payload), gathers them in one buffer and sends them with one write.
//! What tungstenite still writes, the pong for a client's ping and the
//! reply to its close, gathers whole in a side buffer that the writer
//! sends between its own frames, so the two never interleave within a
//! frame.
//!
//! This replaces a stream split into a sink and a stream behind a shared
//! lock, with tungstenite's message encoding and its waker bookkeeping on
//! every send (BENCHMARKS.md, "The writer encodes its own frames").

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Frame opcodes the writer sends (RFC 6455, 5.2), with the FIN bit.
const TEXT: u8 = 0x81;
const CLOSE: u8 = 0x88;
const PING: u8 = 0x89;

/// A writer's buffer above this size after a send is freed rather than
/// kept for the next one: an idle connection keeps a small one.
const KEEP: usize = 4 * 1024;

/// Most bytes tungstenite's replies may gather for a writer that does not
/// send them (a client flooding pings while its own socket is full, or
/// while its close is awaited): beyond this its writes fail, and so does
/// the read that caused them.
const CONTROL_MAX: usize = 64 * 1024;

struct Shared<T> {
    io: T,
    /// Set once [`Frames`] writes the socket: tungstenite's writes then
    /// gather in `control`.
    taken: bool,
    control: Vec<u8>,
    /// The writer, waiting for `control` ([`Frames::control`]).
    writer: Option<Waker>,
}

/// The socket as tungstenite sees it (see the module documentation).
pub struct Wire<T> {
    shared: Arc<Mutex<Shared<T>>>,
}

impl<T> Wire<T> {
    pub fn new(io: T) -> Self {
        let shared = Shared {
            io,
            taken: false,
            control: Vec::new(),
            writer: None,
        };
        Wire {
            shared: Arc::new(Mutex::new(shared)),
        }
    }

    /// The writer that takes the socket's writes from here on. What
    /// tungstenite still buffers goes to the writer with its next flush
    /// (which then never waits), ahead of the writer's own frames.
    pub fn frames(&self) -> Frames<T> {
        self.shared.lock().taken = true;
        Frames {
            shared: self.shared.clone(),
            buf: Vec::new(),
            sent: 0,
            closed: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Wire<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.shared.lock().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Wire<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut shared = self.shared.lock();
        if !shared.taken {
            return Pin::new(&mut shared.io).poll_write(cx, buf);
        }
        if shared.control.len() + buf.len() > CONTROL_MAX {
            return Poll::Ready(Err(io::Error::other("control replies not sent")));
        }
        shared.control.extend_from_slice(buf);
        let writer = shared.writer.take();
        drop(shared);
        if let Some(writer) = writer {
            writer.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = self.shared.lock();
        match shared.taken {
            false => Pin::new(&mut shared.io).poll_flush(cx),
            true => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = self.shared.lock();
        match shared.taken {
            false => Pin::new(&mut shared.io).poll_shutdown(cx),
            true => Poll::Ready(Ok(())),
        }
    }
}

/// The connection's frame writer: frames are encoded into one buffer, and
/// [`Frames::send`] writes it (with tungstenite's replies after it).
pub struct Frames<T> {
    shared: Arc<Mutex<Shared<T>>>,
    buf: Vec<u8>,
    /// How much of `buf` the socket took.
    sent: usize,
    /// A close frame is queued: tungstenite's replies stay unsent.
    closed: bool,
}

impl<T: AsyncWrite + Unpin> Frames<T> {
    /// Queue a text frame.
    pub fn text(&mut self, payload: &[u8]) {
        self.frame(TEXT, payload);
    }

    /// Queue a ping (empty).
    pub fn ping(&mut self) {
        self.frame(PING, &[]);
    }

    /// Queue a close frame: `code`, then `reason` (cut to the 123 bytes a
    /// control frame has room for, on a character boundary). tungstenite's
    /// replies so far go ahead of it: nothing may follow a close.
    pub fn close(&mut self, code: u16, reason: &str) {
        gather(&mut self.buf, &mut self.shared.lock());
        self.closed = true;
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = [0u8; 125];
        payload[..2].copy_from_slice(&code.to_be_bytes());
        payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
        self.frame(CLOSE, &payload[..2 + end]);
    }

    fn frame(&mut self, first: u8, payload: &[u8]) {
        let len = payload.len();
        self.buf.reserve(len + 10);
        self.buf.push(first);
        match len {
            0..=125 => self.buf.push(len as u8),
            126..=0xffff => {
                self.buf.push(126);
                self.buf.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                self.buf.push(127);
                self.buf.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        self.buf.extend_from_slice(payload);
    }

    /// Bytes queued and not yet sent.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Write everything queued, and tungstenite's replies gathered so far.
    pub fn send(&mut self) -> impl Future<Output = io::Result<()>> + Send + '_
    where
        T: Send,
    {
        std::future::poll_fn(move |cx| self.poll_send(cx))
    }

    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = self.shared.lock();
        if !self.closed {
            gather(&mut self.buf, &mut shared);
        }
        while self.sent < self.buf.len() {
            match ready!(Pin::new(&mut shared.io).poll_write(cx, &self.buf[self.sent..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        ready!(Pin::new(&mut shared.io).poll_flush(cx))?;
        self.sent = 0;
        self.buf.clear();
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Wait until tungstenite has written a reply for the writer to send.
    pub fn control(&self) -> impl Future<Output = ()> + Send + '_
    where
        T: Send,
    {
        std::future::poll_fn(move |cx| {
            let mut shared = self.shared.lock();
            if !shared.control.is_empty() {
                return Poll::Ready(());
            }
            match &shared.writer {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => shared.writer = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }
}

/// Move tungstenite's replies behind the frames queued in `buf` (a
/// frame's boundary).
fn gather<T>(buf: &mut Vec<u8>, shared: &mut Shared<T>) {
    if shared.control.is_empty() {
        return;
    }
    if buf.is_empty() {
        std::mem::swap(buf, &mut shared.control);
    } else {
        buf.extend_from_slice(&shared.control);
        shared.control.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A frame as a client decodes it: (first byte, payload).
    fn decode(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let first = bytes[at];
            let (len, head) = match bytes[at + 1] {
                126 => (
                    u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                    4,
                ),
                127 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&bytes[at + 2..at + 10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                n => (n as usize, 2),
            };
            out.push((first, bytes[at + head..at + head + len].to_vec()));
            at += head + len;
        }
        out
    }

    #[tokio::test]
    async fn frames_of_every_length_form_and_a_reply_goes_between_frames() {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let mut wire = Wire::new(server);
        // Before the writer takes the socket, tungstenite's writes go to it.
        wire.write_all(b"\x8a\x00").await.unwrap();
        let mut frames = wire.frames();
        let long = vec![b'x'; 70_000];
        frames.text(b"hi");
        frames.text(&long[..300]);
        // A reply tungstenite writes meanwhile waits for the writer.
        wire.write_all(b"\x8a\x01p").await.unwrap();
        frames.text(&long);
        frames.ping();
        frames.close(4010, "ping timeout");
        // A reply written after the close frame is queued is never sent.
        wire.write_all(b"\x8a\x01q").await.unwrap();
        frames.send().await.unwrap();
        assert_eq!(frames.buffered(), 0);
        drop((wire, frames));
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        let got = decode(&all);
        let mut close = 4010u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"ping timeout");
        let want = vec![
            (0x8a, vec![]),
            (0x81, b"hi".to_vec()),
            (0x81, long[..300].to_vec()),
            (0x81, long.clone()),
            (0x89, vec![]),
            (0x8a, b"p".to_vec()),
            (0x88, close),
        ];
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_reply_wakes_the_waiting_writer_and_replies_past_the_cap_fail() {
        let (server, _client) = tokio::io::duplex(1024);
        let mut wire = Wire::new(server);
        let frames = wire.frames();
        let waiting = tokio::spawn(async move {
            frames.control().await;
            frames
        });
        wire.write_all(b"\x8a\x00").await.unwrap();
        let frames = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("the writer is woken")
            .unwrap();
        let flood = vec![0u8; CONTROL_MAX];
        assert!(wire.write_all(&flood).await.is_err());
        drop(frames);
    }

    #[test]
    fn a_close_reason_is_cut_on_a_character_boundary() {
        let (server, _client) = tokio::io::duplex(1024);
        let mut frames = Wire::new(server).frames();
        frames.close(1000, &"é".repeat(100));
        let got = decode(&frames.buf);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.len(), 2 + 122);
        assert!(std::str::from_utf8(&got[0].1[2..]).is_ok());
    }
}
