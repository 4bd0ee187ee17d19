//! WebSocket upgrades answered without the HTTP stack.
//!
//! A connection's first request is read here, before hyper sees it. When
//! it is a complete `GET` head that a front-end's [`Direct`] handler takes
//! (the native `/websocket` on the client listener), the `101` is answered
//! from this module and the socket runs in a task of its own: no HTTP
//! connection state, router, middleware or upgrade hand-off, and the `101`
//! leaves in the same write as the connection's first frame (one loopback
//! send, one wake-up of the client, fewer). Anything
//! else, or a head that does not arrive in one piece within
//! [`HEAD_MAX`] bytes, goes to hyper with the bytes already read in front
//! of the socket ([`Prefaced`]), and is answered as before.
//!
//! Hyper reads a head into an 8 KiB buffer that grows; the direct path
//! reads at most [`HEAD_MAX`] bytes into a buffer of the head's size.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::http_error::HttpError;

/// The largest request head the direct path reads; a longer one (many
/// cookies, say) is left to hyper.
pub const HEAD_MAX: usize = 2048;

/// Header slots for parsing a head; a head with more is left to hyper.
const MAX_HEADERS: usize = 32;

/// What a [`Direct`] handler runs on the connection once it is taken: the
/// accepted socket, with the `101` in front of its first write and
/// anything the client sent after its head in front of its reads.
pub type DirectRun<T> =
    Box<dyn FnOnce(Prefaced<T>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A taken upgrade: the reply (a `101` from [`super::accept`]) and what
/// runs on the socket.
pub struct Taken<T> {
    pub reply: http::Response<()>,
    pub run: DirectRun<T>,
}

/// A handler of upgrades answered directly. For a request head it returns
/// `None` when the request is not its own, or not one it answers itself
/// (hyper then serves it as any request, errors included); `Some(Err)` to
/// refuse it (answered with the error's status and JSON body, then the
/// connection closes); `Some(Ok)` to take it.
pub type Direct<T> =
    Arc<dyn Fn(&http::Request<()>) -> Option<Result<Taken<T>, HttpError>> + Send + Sync>;

/// The outcome of reading a connection's first bytes.
// Returned once per connection and taken apart at once: not worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Head {
    /// A complete request head (no body: a `GET`): the request, every byte
    /// read, and the head's length in them.
    Request(http::Request<()>, Vec<u8>, usize),
    /// Bytes that are not (yet) a complete head the direct path reads.
    Other(Vec<u8>),
    /// The connection closed or failed before sending anything.
    Gone,
}

/// Read the first request from `io`: as much as one read brings, and more
/// while the head is incomplete and under [`HEAD_MAX`].
pub async fn read_head<T: AsyncRead + Unpin>(io: &mut T) -> Head {
    let mut buf = Vec::with_capacity(512);
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= HEAD_MAX {
                return Head::Other(buf);
            }
            buf.reserve_exact((buf.capacity() * 2).min(HEAD_MAX) - buf.len());
        }
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) if buf.is_empty() => return Head::Gone,
            Ok(0) | Err(_) => return Head::Other(buf),
            Ok(_) => {}
        }
        match parse(&buf) {
            Parsed::Complete(request, len) => return Head::Request(request, buf, len),
            Parsed::Partial => continue,
            Parsed::Other => return Head::Other(buf),
        }
    }
}

#[allow(clippy::large_enum_variant)]
enum Parsed {
    Complete(http::Request<()>, usize),
    Partial,
    Other,
}

/// A `GET` head of HTTP/1.1 without a body, as an `http::Request`.
fn parse(buf: &[u8]) -> Parsed {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut slots);
    let len = match head.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if head.method != Some("GET") || head.version != Some(1) {
        return Parsed::Other;
    }
    let Some(Ok(uri)) = head.path.map(http::Uri::try_from) else {
        return Parsed::Other;
    };
    let mut request = http::Request::new(());
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.reserve(head.headers.len());
    for h in head.headers.iter() {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Other;
        };
        // A body (or a transfer coding) on a GET is left to hyper.
        if name == http::header::CONTENT_LENGTH && value != "0"
            || name == http::header::TRANSFER_ENCODING
        {
            return Parsed::Other;
        }
        headers.append(name, value);
    }
    Parsed::Complete(request, len)
}

/// The bytes of a reply head without a body (a `101`).
pub fn reply_head(reply: &http::Response<()>) -> Vec<u8> {
    let status = reply.status();
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in reply.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A socket with bytes already read in front of what it reads next, and
/// bytes to write in front of what is written to it first (sent with the
/// first write or flush).
pub struct Prefaced<T> {
    io: T,
    read: Vec<u8>,
    read_at: usize,
    write: Vec<u8>,
    written: usize,
}

impl<T> Prefaced<T> {
    pub fn new(io: T, read: Vec<u8>, write: Vec<u8>) -> Prefaced<T> {
        Prefaced {
            io,
            read,
            read_at: 0,
            write,
            written: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> Prefaced<T> {
    /// Write what is left of the write preface.
    fn poll_preface(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.write.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if !self.write.is_empty() {
            self.write = Vec::new();
            self.written = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefaced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read_at < this.read.len() {
            let rest = &this.read[this.read_at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read_at += n;
            if this.read_at == this.read.len() {
                this.read = Vec::new();
                this.read_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefaced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.written < this.write.len() {
            // The preface and the first bytes in one system call.
            let parts = [
                io::IoSlice::new(&this.write[this.written..]),
                io::IoSlice::new(buf),
            ];
            let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &parts))?;
            let left = this.write.len() - this.written;
            if n < left {
                this.written += n;
                // Only preface bytes went: finish it, then write `buf`.
                ready!(this.poll_preface(cx))?;
                return Pin::new(&mut this.io).poll_write(cx, buf);
            }
            this.write = Vec::new();
            this.written = 0;
            if n > left {
                return Poll::Ready(Ok(n - left));
            }
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.written < this.write.len() {
            // Rare (hyper never has a write preface): one buffer at a time.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(this).poll_write(cx, first);
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_preface(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_preface(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const UPGRADE: &str = "GET /websocket?channel_id=c HTTP/1.1\r\nHost: x\r\n\
        Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[tokio::test]
    async fn a_get_head_is_read_with_what_follows_it() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client
            .write_all(format!("{UPGRADE}\u{81}\u{0}").as_bytes())
            .await
            .unwrap();
        let Head::Request(request, read, len) = read_head(&mut server).await else {
            panic!("not a request");
        };
        assert_eq!(len, UPGRADE.len());
        assert_eq!(request.uri().path(), "/websocket");
        assert_eq!(request.uri().query(), Some("channel_id=c"));
        assert_eq!(request.headers()["upgrade"], "websocket");
        assert_eq!(request.headers().len(), 5);
        assert_eq!(&read[len..], "\u{81}\u{0}".as_bytes());
    }

    #[tokio::test]
    async fn a_head_in_pieces_is_read_whole() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let (first, second) = UPGRADE.split_at(40);
        let reader = tokio::spawn(async move { read_head(&mut server).await });
        client.write_all(first.as_bytes()).await.unwrap();
        tokio::task::yield_now().await;
        client.write_all(second.as_bytes()).await.unwrap();
        assert!(matches!(reader.await.unwrap(), Head::Request(_, read, len) if read.len() == len));
    }

    #[tokio::test]
    async fn what_the_direct_path_does_not_read_is_kept_whole() {
        for (bytes, why) in [
            (
                "POST /api/broadcast HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
                "a POST",
            ),
            ("GET / HTTP/1.0\r\n\r\n", "HTTP/1.0"),
            (
                "GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
                "a GET with a body",
            ),
            ("\x16\x03\x01\x02\x00", "TLS"),
        ] {
            let (mut client, mut server) = tokio::io::duplex(4096);
            client.write_all(bytes.as_bytes()).await.unwrap();
            drop(client);
            match read_head(&mut server).await {
                Head::Other(read) => assert_eq!(read, bytes.as_bytes(), "{why}"),
                _ => panic!("{why} was taken"),
            }
        }
        // A head longer than HEAD_MAX.
        let long = format!("GET / HTTP/1.1\r\nCookie: {}\r\n\r\n", "a".repeat(HEAD_MAX));
        let (mut client, mut server) = tokio::io::duplex(8192);
        client.write_all(long.as_bytes()).await.unwrap();
        let Head::Other(read) = read_head(&mut server).await else {
            panic!("a long head was taken");
        };
        assert_eq!(read.len(), HEAD_MAX);
        assert!(long.as_bytes().starts_with(&read));
        // Nothing at all.
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert!(matches!(read_head(&mut server).await, Head::Gone));
    }

    #[tokio::test]
    async fn the_prefaces_come_first() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut io = Prefaced::new(server, b"ab".to_vec(), b"HTTP/1.1 101\r\n\r\n".to_vec());
        client.write_all(b"cd").await.unwrap();
        let mut read = [0u8; 4];
        io.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"abcd");
        io.write_all(b"frame").await.unwrap();
        io.flush().await.unwrap();
        let mut got = vec![0u8; 21];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 101\r\n\r\nframe");
        // A flush alone sends the write preface.
        let (mut client, server) = tokio::io::duplex(4096);
        let mut io = Prefaced::new(server, Vec::new(), b"101".to_vec());
        io.flush().await.unwrap();
        let mut got = [0u8; 3];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"101");
    }

    #[tokio::test]
    async fn vectored_writes_pass_through_after_the_preface() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut io = Prefaced::new(server, Vec::new(), b"101|".to_vec());
        let parts = [io::IoSlice::new(b"ab"), io::IoSlice::new(b"cd")];
        let mut sent = 0;
        while sent < 4 {
            let n = std::future::poll_fn(|cx| {
                let rest: Vec<io::IoSlice<'_>> = if sent < 2 {
                    vec![io::IoSlice::new(&b"ab"[sent..]), parts[1]]
                } else {
                    vec![io::IoSlice::new(&b"cd"[sent - 2..])]
                };
                Pin::new(&mut io).poll_write_vectored(cx, &rest)
            })
            .await
            .unwrap();
            sent += n;
        }
        io.flush().await.unwrap();
        let mut got = [0u8; 8];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"101|abcd");
    }

    #[test]
    fn a_reply_head_is_a_status_line_and_headers() {
        let reply = http::Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert_eq!(
            reply_head(&reply),
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"
        );
    }
}
