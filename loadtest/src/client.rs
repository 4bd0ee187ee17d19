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
        .read_buffer_size(4096)
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
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(client_config()))
        .await
        .map_err(|e| err("handshake", &e))?;
    Ok(ws)
}

/// A delivery as the harness stamps it: `{"t":MICROS,"s":SEQ[,"w":1],"p":"…"}`.
pub fn payload(t: u64, seq: u64, warm: bool, pad: &str) -> String {
    let mut s = String::with_capacity(48 + pad.len());
    s.push_str("{\"t\":");
    s.push_str(&t.to_string());
    s.push_str(",\"s\":");
    s.push_str(&seq.to_string());
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

    #[test]
    fn source_addresses_cycle_over_loopback() {
        assert_eq!(source_ip(5, 1), None);
        assert_eq!(source_ip(0, 4), Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(source_ip(5, 4), Some("127.0.0.2".parse().expect("ip")));
        assert_eq!(query_escape("a:b c"), "a%3Ab%20c");
    }
}
