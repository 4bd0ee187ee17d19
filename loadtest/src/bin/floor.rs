//! `pubmesh-floor`: the floor pubmesh's fan-out is compared with.
//!
//! It answers just enough of the `/websocket` protocol for
//! `pubmesh-load run loadtest/scenarios/fanout.toml` to drive it: every
//! socket gets a connection frame; a socket that connected with a
//! `channel_id` is a recipient; a `channel` frame from any socket has its
//! `data` object framed once as a WebSocket text frame, and those same bytes
//! are written to every recipient with one blocking `write` each. No
//! registry, no channels, no outboxes, no async runtime: one thread per
//! publishing socket, so what is left is the kernel's cost of the writes
//! plus reading the publisher. BENCHMARKS.md divides pubmesh's CPU per
//! delivery by this program's.
//!
//! ```sh
//! pubmesh-floor 127.0.0.1:18200
//! ```
//!
//! Loopback only: it refuses any other listen address.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

type Recipients = Arc<Mutex<Vec<TcpStream>>>;

fn main() -> io::Result<()> {
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
    let listener = TcpListener::bind(addr)?;
    eprintln!("pubmesh-floor listening on ws://{addr}/websocket");
    let recipients: Recipients = Arc::default();
    let ids = Arc::new(AtomicU64::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let recipients = recipients.clone();
        let id = ids.fetch_add(1, Ordering::Relaxed);
        std::thread::spawn(move || {
            if let Err(e) = serve(stream, id, &recipients) {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    eprintln!("socket {id}: {e}");
                }
            }
        });
    }
    Ok(())
}

/// Handshake, connection frame, then (for publishers) read frames and fan out.
fn serve(stream: TcpStream, id: u64, recipients: &Recipients) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut path = String::new();
    reader.read_line(&mut path)?;
    let mut key = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
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
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )?;
    let channel = path
        .split_whitespace()
        .nth(1)
        .and_then(|target| target.split_once("channel_id="))
        .map(|(_, rest)| rest.split('&').next().unwrap_or_default().to_string());
    let hello = format!(
        "{{\"type\":\"connection\",\"data\":{{\"client_id\":\"floor-{id}\",\"root_id\":\"anonymous\",\"channel_id\":\"{}\",\"node_id\":\"floor\"}}}}",
        channel.as_deref().unwrap_or("none")
    );
    out.write_all(&text_frame(hello.as_bytes()))?;
    if channel.is_some() {
        recipients.lock().expect("not poisoned").push(out);
    }
    // Every socket may publish; recipients never do in W1, so their reader
    // simply waits for the close.
    loop {
        let (opcode, payload) = read_frame(&mut reader)?;
        match opcode {
            0x1 => {
                if let Some(data) = data_object(&payload) {
                    let frame = text_frame(data);
                    let mut list = recipients.lock().expect("not poisoned");
                    // One write per recipient; a recipient that is gone is dropped.
                    list.retain_mut(|s| s.write_all(&frame).is_ok());
                }
            }
            0x8 => return Ok(()),
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
fn read_frame(r: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head)?;
    let mut len = (head[1] & 0x7f) as u64;
    if len == 126 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b)?;
        len = u16::from_be_bytes(b) as u64;
    } else if len == 127 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        len = u64::from_be_bytes(b);
    }
    if len > 1 << 20 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too big"));
    }
    let mut mask = [0u8; 4];
    if head[1] & 0x80 != 0 {
        r.read_exact(&mut mask)?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok((head[0] & 0x0f, payload))
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
    }

    #[test]
    fn frames_round_trip() {
        let payload = vec![b'a'; 300];
        let frame = text_frame(&payload);
        let (op, back) = read_frame(&mut &frame[..]).expect("frame");
        assert_eq!((op, back), (1, payload));
    }
}
