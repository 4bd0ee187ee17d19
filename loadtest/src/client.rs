//! WebSocket client pieces: connecting from a chosen 127.0.0.x source
//! address, building payloads, and reading deliveries without full JSON
//! parsing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Microseconds since the Unix epoch (the clock senders stamp payloads with).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Small client buffers: tens of thousands of sockets per process.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(4 << 20)
}

/// `ws://host:port[/…]` → socket address (loopback only).
pub fn socket_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow::anyhow!("{url}: only ws:// URLs are supported"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|_| anyhow::anyhow!("{url}: need an IP address and port"))?;
    if !addr.ip().is_loopback() {
        anyhow::bail!("{url}: load is only sent to loopback addresses (127.0.0.0/8, ::1)");
    }
    Ok(addr)
}

/// The HTTP base of a node URL (`ws://h:p` → `http://h:p`).
pub fn http_base(url: &str) -> String {
    url.replacen("ws://", "http://", 1)
        .trim_end_matches('/')
        .to_string()
}

/// Source address number `j` of `n` (127.0.0.1 … 127.0.0.n); `None` when
/// the operating system should choose.
pub fn source_ip(j: u64, n: u64) -> Option<IpAddr> {
    if n <= 1 {
        return None;
    }
    let k = (j % n.min(254)) as u8 + 1;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)))
}

/// Why a connection attempt failed (an error code for metrics).
#[derive(Debug)]
pub struct ConnectError {
    pub code: &'static str,
    pub detail: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// Open a WebSocket to `base` + `/websocket` + `query`, from `source`.
pub async fn connect(base: &str, query: &str, source: Option<IpAddr>) -> Result<Ws, ConnectError> {
    connect_path(base, &format!("/websocket{query}"), source).await
}

/// Open a WebSocket to `base` + `path` (with its query), from `source`.
pub async fn connect_path(
    base: &str,
    path: &str,
    source: Option<IpAddr>,
) -> Result<Ws, ConnectError> {
    let err = |code, e: &dyn std::fmt::Display| ConnectError {
        code,
        detail: e.to_string(),
    };
    let addr = socket_addr(base).map_err(|e| err("bad_url", &e))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| err("socket", &e))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| err("bind", &e))?;
    }
    let stream = socket.connect(addr).await.map_err(|e| err("connect", &e))?;
    let _ = stream.set_nodelay(true);
    handshake(stream, &addr.to_string(), path)
        .await
        .map_err(|e| err("handshake", &e))
}

/// The opening handshake (RFC 6455 §4.1), written and read here rather than
/// by tungstenite's client, which builds an `http::Request` from a URL and
/// parses the reply into an `http::Response` for every connection: one
/// write of the request with a fresh key, then the reply head read and its
/// status and `Sec-WebSocket-Accept` checked. Bytes after the head (the
/// server's first frames, when they came in the same segment) are kept for
/// the socket.
async fn handshake(mut stream: TcpStream, host: &str, path: &str) -> anyhow::Result<Ws> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
    let key = generate_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let head = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            anyhow::bail!("the server closed the connection during the handshake");
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        anyhow::ensure!(buf.len() < 16 * 1024, "reply head over 16 KiB");
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut reply = httparse::Response::new(&mut headers);
    reply.parse(&buf[..head])?;
    let code = reply.code.unwrap_or(0);
    anyhow::ensure!(
        code == 101,
        "HTTP error: {code} {}",
        reply.reason.unwrap_or("")
    );
    let accept = reply
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| h.value);
    anyhow::ensure!(
        accept == Some(derive_accept_key(key.as_bytes()).as_bytes()),
        "wrong Sec-WebSocket-Accept"
    );
    let rest = buf.split_off(head);
    Ok(WebSocketStream::from_partially_read(
        stream,
        rest,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        Some(client_config()),
    )
    .await)
}

/// A delivery as the harness stamps it: `{"t":MICROS,"s":SEQ[,"w":1],"p":"…"}`.
pub fn payload(t: u64, seq: u64, warm: bool, pad: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(64 + pad.len());
    // Into the string itself: no allocation per number.
    let _ = write!(s, "{{\"t\":{t},\"s\":{seq}");
    if warm {
        s.push_str(",\"w\":1");
    }
    s.push_str(",\"p\":\"");
    s.push_str(pad);
    s.push_str("\"}");
    s
}

/// What a received text frame is, found by a tiny scan instead of parsing.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A measured delivery sent at this many µs since the epoch.
    Delivery(u64),
    /// A warm-up delivery (not measured).
    Warm,
    /// `{"type":"error",…,"code":"…"}`.
    Error(&'a str),
    /// Anything else (acknowledgements, connection frames).
    Other,
}

/// Classify a frame. Deliveries start with `{"t":` (the node forwards the
/// `data` object byte for byte).
pub fn classify(text: &str) -> Frame<'_> {
    let b = text.as_bytes();
    if let Some(rest) = b.strip_prefix(b"{\"t\":") {
        let mut t: u64 = 0;
        let mut i = 0;
        while i < rest.len() && rest[i].is_ascii_digit() {
            t = t.wrapping_mul(10).wrapping_add((rest[i] - b'0') as u64);
            i += 1;
        }
        if i == 0 {
            return Frame::Other;
        }
        // `,"s":N,"w":1` — look only at the next few bytes for the mark.
        let window = &rest[i..rest.len().min(i + 40)];
        if window.windows(6).any(|w| w == b"\"w\":1,") {
            return Frame::Warm;
        }
        return Frame::Delivery(t);
    }
    // Other frames are rare: look for the type anywhere (key order is not
    // fixed).
    if text.contains("\"type\":\"error\"")
        || (text.contains("\"type\":\"walker\"") && text.contains("\"error\":"))
    {
        return Frame::Error(json_str_field(text, "code").unwrap_or("unknown"));
    }
    Frame::Other
}

/// The value of a string field `"name":"value"` (no escapes), by scanning.
pub fn json_str_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let start = text.find(&key)? + key.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// An HS256 token for `sub` (user subscribers), valid for a day.
pub fn token(secret: &str, sub: &str) -> anyhow::Result<String> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp = now_micros() / 1_000_000 + 86_400;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub, exp },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Percent-encode a query value.
pub fn query_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_deliveries_without_parsing() {
        let p = payload(1234, 7, false, "xx");
        assert_eq!(p, "{\"t\":1234,\"s\":7,\"p\":\"xx\"}");
        assert_eq!(classify(&p), Frame::Delivery(1234));
        assert_eq!(classify(&payload(99, 1, true, "")), Frame::Warm);
        // A pad containing the mark does not fool the scan into a warm frame
        // beyond the header window... but the header itself decides.
        assert_eq!(
            classify(&payload(5, 1, false, &"x".repeat(100))),
            Frame::Delivery(5)
        );
        assert_eq!(
            classify("{\"type\":\"error\",\"error\":\"no\",\"code\":\"forbidden\"}"),
            Frame::Error("forbidden")
        );
        assert_eq!(
            classify(
                "{\"code\":\"rate_limited\",\"error\":\"slow down\",\"ref\":3,\"type\":\"error\"}"
            ),
            Frame::Error("rate_limited")
        );
        assert_eq!(
            classify("{\"type\":\"subscribed\",\"channel_ids\":[\"a\"],\"ref\":1}"),
            Frame::Other
        );
        assert_eq!(classify("{\"t\":\"x\"}"), Frame::Other);
        // The result is the same as a JSON parser's.
        let v: serde_json::Value = serde_json::from_str(&p).expect("json");
        assert_eq!(v["t"], 1234);
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(socket_addr("ws://127.0.0.1:8000").is_ok());
        assert!(socket_addr("ws://localhost:8000/").is_ok());
        assert!(socket_addr("ws://127.0.0.9:8000").is_ok());
        assert!(socket_addr("ws://10.0.0.1:8000").is_err());
        assert!(socket_addr("http://127.0.0.1:8000").is_err());
        assert_eq!(http_base("ws://127.0.0.1:8000/"), "http://127.0.0.1:8000");
    }

    #[tokio::test]
    async fn the_handshake_reaches_a_tungstenite_server_and_keeps_its_first_frame() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
            // Sent at once: it may share a segment with the 101.
            ws.send(Message::text("first")).await.expect("send");
            let echo = ws.next().await.expect("frame").expect("frame");
            ws.send(echo).await.expect("send");
        });
        let mut ws = connect(&url, "?channel_id=x", None).await.expect("connect");
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("first"));
        ws.send(Message::text("again")).await.expect("send");
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("again"));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_refused_handshake_is_a_handshake_error_with_the_status() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            let mut head = [0u8; 1024];
            let _ = tcp.read(&mut head).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let Err(e) = connect(&url, "", None).await else {
            panic!("a 503 was taken for an upgrade");
        };
        assert_eq!(e.code, "handshake");
        assert!(e.detail.contains("503"), "{}", e.detail);
    }

    #[test]
    fn source_addresses_cycle_over_loopback() {
        assert_eq!(source_ip(5, 1), None);
        assert_eq!(source_ip(0, 4), Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(source_ip(5, 4), Some("127.0.0.2".parse().expect("ip")));
        assert_eq!(query_escape("a:b c"), "a%3Ab%20c");
    }
}
