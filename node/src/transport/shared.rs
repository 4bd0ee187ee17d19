//! A plain TCP socket that the tasks delivering to its connection may write
//! to as well as its own task.
//!
//! A delivery to a connection whose writer waits with nothing to write
//! would wake the connection's task, which would take the frame from the
//! outbox, frame it and write it. [`SharedSocket`] lets the delivering task
//! write the frame itself ([`DirectWrite`], through
//! [`crate::outbox::Outbox::send`]): one non-blocking system call, and no
//! wake-up, task poll or hand-over of the frame.
//!
//! Two rules keep the byte stream whole and in order:
//! - Every write is all or nothing. What the kernel does not take at once
//!   stays here (`pending`) and goes before anything else: WebSocket
//!   frames from the connection's task (through [`SharedIo`]) and from
//!   delivering tasks never interleave within a frame.
//! - A delivering task writes only while the outbox says the writer waits
//!   with everything it took written, and only while nothing is pending
//!   here: its frame comes after every frame queued before it.
//!
//! Once a close frame has gone through [`SharedIo`] (the server's close,
//! or tungstenite's reply to the client's) nothing is written directly.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::listener::Held;
use crate::outbox::{DirectWrite, Wrote};

/// A connection's socket, shared by its task ([`SharedIo`]) and the tasks
/// that deliver to it ([`DirectWrite`]).
pub struct SharedSocket {
    held: Held,
    out: Mutex<Out>,
}

/// Bytes written but not yet taken by the kernel, and whether frames may
/// still be written directly.
#[derive(Default)]
struct Out {
    pending: Vec<u8>,
    at: usize,
    /// A close frame went out (or bytes that do not parse as whole frames):
    /// no more direct writes.
    closed: bool,
}

impl SharedSocket {
    fn tcp(&self) -> &TcpStream {
        self.held.tcp()
    }

    /// Write what is pending; ready when nothing is.
    fn poll_drain(&self, out: &mut Out, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while out.at < out.pending.len() {
            ready!(self.tcp().poll_write_ready(cx))?;
            match self.tcp().try_write(&out.pending[out.at..]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => out.at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if out.at > 0 {
            out.pending = Vec::new();
            out.at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl DirectWrite for SharedSocket {
    fn write_text(&self, frame: &[u8]) -> Wrote {
        let mut out = self.out.lock();
        if out.closed || out.at < out.pending.len() {
            return Wrote::Nothing;
        }
        let mut head = [0u8; 10];
        let head = text_head(&mut head, frame.len());
        let parts = [io::IoSlice::new(head), io::IoSlice::new(frame)];
        let total = head.len() + frame.len();
        match self.tcp().try_write_vectored(&parts) {
            Ok(n) if n == total => Wrote::All,
            Ok(0) | Err(_) => Wrote::Nothing,
            Ok(n) => {
                // The rest of the frame goes before anything else.
                let mut rest = Vec::with_capacity(total - n);
                if n < head.len() {
                    rest.extend_from_slice(&head[n..]);
                    rest.extend_from_slice(frame);
                } else {
                    rest.extend_from_slice(&frame[n - head.len()..]);
                }
                out.pending = rest;
                out.at = 0;
                Wrote::Part
            }
        }
    }
}

/// The header of an unmasked, final text frame of `len` bytes.
fn text_head(buf: &mut [u8; 10], len: usize) -> &[u8] {
    buf[0] = 0x81;
    if len < 126 {
        buf[1] = len as u8;
        &buf[..2]
    } else if len <= u16::MAX as usize {
        buf[1] = 126;
        buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        &buf[..4]
    } else {
        buf[1] = 127;
        buf[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        &buf[..10]
    }
}

/// Whether `bytes`, whole server frames, hold a close frame; `true` too
/// when they do not parse as whole frames (then nothing may be written
/// directly any more).
fn closes(mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        if bytes.len() < 2 || bytes[0] & 0x0f == 0x8 || bytes[1] & 0x80 != 0 {
            return true;
        }
        let (len, head) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as u64, 4),
            127 if bytes.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return true,
            n => (n as u64, 2),
        };
        let Some(end) = (head as u64).checked_add(len) else {
            return true;
        };
        if end > bytes.len() as u64 {
            return true;
        }
        bytes = &bytes[end as usize..];
    }
    false
}

/// The connection task's side of a [`SharedSocket`]: what tungstenite reads
/// from and writes to, with bytes already read in front of its reads.
pub struct SharedIo {
    socket: Arc<SharedSocket>,
    read: Vec<u8>,
    read_at: usize,
}

impl SharedIo {
    /// Share `held`, with `read` in front of what it reads and `write` (a
    /// `101`) in front of what is written to it.
    pub fn new(held: Held, read: Vec<u8>, write: Vec<u8>) -> (SharedIo, Arc<SharedSocket>) {
        let socket = Arc::new(SharedSocket {
            held,
            out: Mutex::new(Out {
                pending: write,
                at: 0,
                closed: false,
            }),
        });
        let io = SharedIo {
            socket: socket.clone(),
            read,
            read_at: 0,
        };
        (io, socket)
    }
}

impl AsyncRead for SharedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if super::direct::read_preface(&mut this.read, &mut this.read_at, buf) {
            return Poll::Ready(Ok(()));
        }
        let tcp = this.socket.tcp();
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            match tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedIo {
    /// All of `buf` or nothing: what the kernel does not take now is kept
    /// and written before anything else.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let socket = &*self.socket;
        let tcp = socket.tcp();
        let mut out = socket.out.lock();
        if !out.closed && closes(buf) {
            out.closed = true;
        }
        // What is pending and then `buf`, in one system call (a `101` and
        // the connection frame leave in one segment).
        let mut done = None;
        while out.at < out.pending.len() {
            ready!(tcp.poll_write_ready(cx))?;
            let left = out.pending.len() - out.at;
            let parts = [
                io::IoSlice::new(&out.pending[out.at..]),
                io::IoSlice::new(buf),
            ];
            match tcp.try_write_vectored(&parts) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) if n >= left => {
                    out.pending = Vec::new();
                    out.at = 0;
                    done = Some(n - left);
                }
                Ok(n) => out.at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let done = match done {
            Some(n) => n,
            None => match tcp.try_write(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Poll::Ready(Err(e)),
            },
        };
        if done < buf.len() {
            out.pending = buf[done..].to_vec();
            out.at = 0;
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &*self.socket;
        let mut out = socket.out.lock();
        socket.poll_drain(&mut out, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &*self.socket;
        let mut out = socket.out.lock();
        ready!(socket.poll_drain(&mut out, cx))?;
        out.closed = true;
        Poll::Ready(socket2::SockRef::from(socket.tcp()).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests;
