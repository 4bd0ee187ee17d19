//! The same outbox, drained into HTTP instead of a WebSocket: a streaming
//! response of Server-Sent Events, or one long-poll reply. A front-end that
//! offers SSE or long polling opens its connection as usual (its codec
//! encodes deliveries into the outbox) and returns one of these as the body.
//!
//! An SSE event is `data: FRAME\n\n` (a frame with newlines becomes several
//! `data:` lines, as the SSE format requires); when the outbox closes the
//! stream ends after a final `event: close\ndata: CODE REASON\n\n`.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::outbox::{CloseReason, Outbox};

/// One SSE event for a frame.
pub fn sse_event(frame: &str) -> Bytes {
    let mut out = String::with_capacity(frame.len() + 8);
    for line in frame.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The last SSE event, telling the client why the stream ends.
pub fn sse_close(reason: CloseReason) -> Bytes {
    Bytes::from(format!(
        "event: close\ndata: {} {}\n\n",
        reason.code(),
        reason.text()
    ))
}

/// Drain `outbox` (an `Arc<Outbox>`, or a `ConnOutbox` for a connection's)
/// as an SSE body: every queued frame as one event, as soon
/// as it is queued, until the outbox closes. The caller closes the outbox
/// (through the node) when the HTTP client goes away.
pub fn sse_stream<O>(outbox: O) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send
where
    O: AsRef<Outbox> + Send + 'static,
{
    let state = (outbox, VecDeque::<Utf8Bytes>::new(), false);
    futures_util::stream::unfold(state, |(outbox, mut batch, done)| async move {
        if done {
            return None;
        }
        loop {
            if let Some(frame) = batch.pop_front() {
                return Some((Ok(sse_event(&frame)), (outbox, batch, false)));
            }
            let closing = outbox.as_ref().take(&mut batch);
            if !batch.is_empty() {
                continue;
            }
            if let Some(reason) = closing {
                return Some((Ok(sse_close(reason)), (outbox, batch, true)));
            }
            outbox.as_ref().ready().await;
        }
    })
}

/// One long-poll reply: everything queued, waiting up to `wait` for the
/// first frame. Returns the frames and the close reason once the outbox is
/// closing (the client should not poll again).
pub async fn poll(outbox: &Outbox, wait: Duration) -> (Vec<Utf8Bytes>, Option<CloseReason>) {
    let mut batch = VecDeque::new();
    let mut closing = outbox.take(&mut batch);
    if batch.is_empty() && closing.is_none() {
        let _ = tokio::time::timeout(wait, outbox.ready()).await;
        closing = outbox.take(&mut batch);
    }
    (batch.into_iter().collect(), closing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::Arc;

    #[tokio::test]
    async fn an_outbox_drains_into_an_sse_body() {
        let outbox = Arc::new(Outbox::new(1 << 16));
        outbox.push(Utf8Bytes::from(r#"{"type":"chat","data":{"m":1}}"#));
        outbox.push(Utf8Bytes::from("two\nlines"));
        let body = sse_stream(outbox.clone());
        tokio::pin!(body);
        let first = body.next().await.expect("event").expect("bytes");
        assert_eq!(
            &first[..],
            b"data: {\"type\":\"chat\",\"data\":{\"m\":1}}\n\n"
        );
        let second = body.next().await.expect("event").expect("bytes");
        assert_eq!(&second[..], b"data: two\ndata: lines\n\n");
        // Frames queued later arrive as they come; a close ends the stream.
        let later = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                outbox.push(Utf8Bytes::from("{}"));
                outbox.close(CloseReason::Drain);
            }
        });
        let mut rest = Vec::new();
        while let Some(chunk) = body.next().await {
            rest.extend_from_slice(&chunk.expect("bytes"));
        }
        later.await.expect("task");
        assert_eq!(
            String::from_utf8(rest).expect("utf-8"),
            "data: {}\n\nevent: close\ndata: 1012 reconnect\n\n"
        );
    }

    #[tokio::test]
    async fn a_long_poll_returns_what_is_queued_or_waits() {
        let outbox = Outbox::new(1 << 16);
        outbox.push(Utf8Bytes::from("a"));
        outbox.push(Utf8Bytes::from("b"));
        let (frames, closing) = poll(&outbox, Duration::from_secs(5)).await;
        assert_eq!(frames, vec![Utf8Bytes::from("a"), Utf8Bytes::from("b")]);
        assert_eq!(closing, None);
        outbox.close(CloseReason::Disconnected);
        let (frames, closing) = poll(&outbox, Duration::from_secs(5)).await;
        assert!(frames.is_empty());
        assert_eq!(closing, Some(CloseReason::Disconnected));
    }
}
