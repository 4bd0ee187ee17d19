//! `pubmesh-floor`: the floor pubmesh's fan-out is compared with.
//!
//! It answers just enough of the `/websocket` protocol for
//! `pubmesh-load run loadtest/scenarios/fanout.toml` (W1),
//! `loadtest/scenarios/targeted.toml` (W2) and
//! `loadtest/scenarios/connect-fresh.toml` (W4) to drive it: every socket
//! gets a connection frame; a socket that connected with `?channel_id=NAME`
//! is a recipient for NAME, and so is one that sent a `subscribe` naming it
//! (answered `subscribed` at once); a close frame is answered with a close
//! frame; a `channel` frame from any socket has its `data`
//! object framed once as a WebSocket text frame, and those same bytes (one
//! shared buffer) go to every recipient of each name in its `channel_ids`
//! (W1: the 1,000 sockets of one name; W2: the one socket of a random name).
//! Each socket has a writer task that writes everything queued for it in
//! one `write`, as pubmesh's socket writers do (the same tokio runtime). No
//! unsubscribe, no JSON parsing, no cluster, no limits: what is left is the
//! handshake, reading frames, one map lookup per named channel, handing the
//! frame to each writer and the kernel's cost of the writes.
//! BENCHMARKS.md divides pubmesh's CPU per delivery (W1, W2) and per
//! session (W4) by this program's.
//!
//! ```sh
//! pubmesh-floor 127.0.0.1:18200
//! ```
//!
//! Loopback only: it refuses any other listen address.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

type Frame = Arc<Vec<u8>>;
/// Writers by the channel name their socket connected with.
type Recipients = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::UnboundedSender<Frame>)>>>>;

/// Frames handed to recipients since start; logged when a publisher leaves.
static DELIVERED: AtomicU64 = AtomicU64::new(0);

#[tokio::main]
async fn main() -> io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18200".into())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("address: {e}")))?;
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pubmesh-floor listens on loopback addresses only",
        ));
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let listener = TcpListener::bind(addr).await?;
    eprintln!("pubmesh-floor listening on ws://{addr}/websocket");
    let recipients: Recipients = Arc::default();
    let mut ids = 0u64;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let recipients = recipients.clone();
        ids += 1;
        let id = ids;
        tokio::spawn(async move {
            let mut channels = Vec::new();
            let result = session(stream, id, &mut channels, &recipients).await;
            let mut map = recipients.lock().expect("not poisoned");
            for name in channels {
                if let Some(list) = map.get_mut(&name) {
                    list.retain(|(other, _)| *other != id);
                    if list.is_empty() {
                        map.remove(&name);
                    }
                }
            }
            drop(map);
            if let Err(e) = result {
                eprintln!("delivered_total {}", DELIVERED.load(Ordering::Relaxed));
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    eprintln!("socket {id}: {e}");
                }
            }
        });
    }
}

/// Handshake, connection frame, then read frames: fan out, answer
/// subscribes and the close. `channels` collects the names the socket is a
/// recipient for (connected with, subscribed to).
async fn session(
    stream: TcpStream,
    id: u64,
    channels: &mut Vec<String>,
    recipients: &Recipients,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut path = String::new();
    reader.read_line(&mut path).await?;
    let mut key = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("sec-websocket-key") {
                key = Some(value.trim().to_string());
            }
        }
    }
    let key = key.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no key"))?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    write.write_all(response.as_bytes()).await?;
    let channel = path
        .split_whitespace()
        .nth(1)
        .and_then(|target| target.split_once("channel_id="))
        .map(|(_, rest)| rest.split('&').next().unwrap_or_default().to_string());
    let hello = format!(
        "{{\"type\":\"connection\",\"data\":{{\"client_id\":\"floor-{id}\",\"root_id\":\"anonymous\",\"channel_id\":\"{}\",\"node_id\":\"floor\"}}}}",
        channel.as_deref().unwrap_or("none")
    );
    write.write_all(&text_frame(hello.as_bytes())).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    if let Some(name) = channel {
        recipients
            .lock()
            .expect("not poisoned")
            .entry(name.clone())
            .or_default()
            .push((id, tx.clone()));
        channels.push(name);
    }
    let writer = tokio::spawn(async move {
        // Everything queued since the last write goes out in one write; an
        // empty frame (after the close reply) ends the writer.
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut last = first.is_empty();
            batch.extend_from_slice(&first);
            while !last {
                let Ok(more) = rx.try_recv() else { break };
                last = more.is_empty();
                batch.extend_from_slice(&more);
            }
            if write.write_all(&batch).await.is_err() || last {
                return;
            }
            batch.clear();
        }
    });
    // Every socket may publish; recipients never do in W1, so their reader
    // simply waits for the close.
    loop {
        let (opcode, payload) = read_frame(&mut reader).await?;
        match opcode {
            0x1 if payload.starts_with(br#"{"type":"subscribe""#) => {
                // W4: the socket becomes a recipient of each name, answered
                // at once (one map insert per name, as the floor's only
                // subscription work).
                let names = channel_ids(&payload).unwrap_or_default();
                let mut map = recipients.lock().expect("not poisoned");
                for name in names.split(',') {
                    let name = name.trim().trim_matches('"');
                    if !name.is_empty() {
                        map.entry(name.to_string())
                            .or_default()
                            .push((id, tx.clone()));
                        channels.push(name.to_string());
                    }
                }
                drop(map);
                let reply = format!(r#"{{"type":"subscribed","channel_ids":[{names}],"ref":1}}"#);
                let _ = tx.send(Arc::new(text_frame(reply.as_bytes())));
            }
            0x1 => {
                if let (Some(data), Some(names)) = (data_object(&payload), channel_ids(&payload)) {
                    let frame = Arc::new(text_frame(data));
                    let mut map = recipients.lock().expect("not poisoned");
                    for name in names.split(',') {
                        let name = name.trim().trim_matches('"');
                        if let Some(list) = map.get_mut(name) {
                            // A recipient whose writer is gone is dropped.
                            list.retain(|(_, tx)| tx.send(frame.clone()).is_ok());
                            DELIVERED.fetch_add(list.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
            0x8 => {
                if channels.is_empty() {
                    eprintln!("delivered_total {}", DELIVERED.load(Ordering::Relaxed));
                }
                // The close handshake: the client's status code echoed
                // back, after whatever is queued; then the socket closes.
                let mut close = vec![0x88, payload.len().min(2) as u8];
                close.extend_from_slice(&payload[..payload.len().min(2)]);
                let _ = tx.send(Arc::new(close));
                let _ = tx.send(Arc::new(Vec::new()));
                let _ = writer.await;
                return Ok(());
            }
            _ => {}
        }
    }
}

/// A server (unmasked) text frame.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= u16::MAX as usize => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// Read one (masked, client) frame: opcode and unmasked payload.
async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let mut len = (head[1] & 0x7f) as u64;
    if len == 126 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b).await?;
        len = u16::from_be_bytes(b) as u64;
    } else if len == 127 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).await?;
        len = u64::from_be_bytes(b);
    }
    if len > 1 << 20 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too big"));
    }
    let mut mask = [0u8; 4];
    if head[1] & 0x80 != 0 {
        r.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok((head[0] & 0x0f, payload))
}

/// The inside of a `channel` frame's `channel_ids` list: quoted names
/// separated by commas (the harness's names hold neither).
fn channel_ids(frame: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"channel_ids\":[";
    let start = frame.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = frame[start..].iter().position(|&b| b == b']')?;
    std::str::from_utf8(&frame[start..start + len]).ok()
}

/// The `data` object of a `channel` frame, by brace matching (the harness's
/// payloads hold no braces inside strings).
fn data_object(frame: &[u8]) -> Option<&[u8]> {
    let start = frame.windows(7).position(|w| w == b"\"data\":")? + 7;
    let mut depth = 0usize;
    for (i, &b) in frame[start..].iter().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(&frame[start..start + i + 1]);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_cut_out_of_a_channel_frame() {
        let frame = br#"{"type":"channel","channel_ids":["fanout-0"],"data":{"t":1,"s":2,"p":"xx"},"ref":3}"#;
        assert_eq!(data_object(frame), Some(&br#"{"t":1,"s":2,"p":"xx"}"#[..]));
        assert_eq!(data_object(b"{\"type\":\"x\"}"), None);
        assert_eq!(channel_ids(frame), Some("\"fanout-0\""));
        let two = br#"{"type":"channel","channel_ids":["a-1","a-2"],"data":{}}"#;
        assert_eq!(channel_ids(two), Some("\"a-1\",\"a-2\""));
        assert_eq!(channel_ids(b"{\"type\":\"x\"}"), None);
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let payload = vec![b'a'; 300];
        let frame = text_frame(&payload);
        let (op, back) = read_frame(&mut &frame[..]).await.expect("frame");
        assert_eq!((op, back), (1, payload));
    }
}
