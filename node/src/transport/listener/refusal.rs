//! Answers given before any HTTP is read (or after the listener read a
//! head itself): a status line, extra headers and a JSON body, then the
//! connection closes.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::address::Addresses;
use crate::http_error::HttpError;

/// An answer given before any HTTP is read: status line, extra headers,
/// JSON body.
pub(super) struct Refusal {
    pub(super) status: String,
    pub(super) headers: String,
    pub(super) body: String,
}

impl Refusal {
    /// A front-end's error, as its status and JSON body.
    pub(super) fn of(e: &HttpError) -> Refusal {
        Refusal {
            status: format!(
                "{} {}",
                e.status.as_str(),
                e.status.canonical_reason().unwrap_or("")
            ),
            headers: String::new(),
            body: crate::http_error::body(&e.message, e.code),
        }
    }

    /// Over the listener's cap: `503`, code `capacity`.
    pub(super) fn capacity(label: &str) -> Refusal {
        let message = if label == "admin" {
            "the admin listener holds its maximum of connections (--max-admin-connections)"
        } else {
            // The same words as the node's own capacity error.
            "the node holds its maximum of connections (--max-connections)"
        };
        Refusal {
            status: "503 Service Unavailable".into(),
            headers: String::new(),
            body: crate::http_error::body(message, "capacity"),
        }
    }

    /// Over the address's connection rate: `429`, code `rate_limited`,
    /// `Retry-After` in whole seconds (at least 1).
    pub(super) fn address_rate(addresses: Option<&Addresses>, wait: Duration) -> Refusal {
        let rate = addresses.and_then(|a| a.limits().connections);
        let (rate, burst) = rate.map_or((0, 0), |r| (r.rate, r.burst));
        let message = format!(
            "too many new connections from this address: at most {rate}/s, {burst} at once \
             (--address-connection-rate, --address-connection-burst); retry in {:.1} s",
            wait.as_secs_f64()
        );
        Refusal {
            status: "429 Too Many Requests".into(),
            headers: format!(
                "retry-after: {}\r\n",
                wait.as_secs_f64().ceil().max(1.0) as u64
            ),
            body: crate::http_error::body(&message, "rate_limited"),
        }
    }
}

/// Answer a connection with `refusal`, then close. What the client sent is
/// read (and dropped) for a moment so the close does not reset the
/// connection before the client reads the reply.
pub(super) async fn refuse<T: AsyncRead + AsyncWrite + Unpin>(mut tcp: T, refusal: Refusal) {
    let Refusal {
        status,
        headers,
        body,
    } = refusal;
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{headers}\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let said = async {
        tcp.write_all(reply.as_bytes()).await?;
        tcp.shutdown().await
    };
    if tokio::time::timeout(Duration::from_secs(1), said)
        .await
        .is_ok_and(|r| r.is_ok())
    {
        let mut sink = [0u8; 4096];
        let drain = async {
            let mut total = 0;
            while total < 64 * 1024 {
                match tcp.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
}
