//! `pubmesh-floor` driven briefly by `pubmesh-load` with the bundled W1 and
//! W2 scenarios (fewer subscribers): every publish reaches its recipients,
//! nothing is lost, and the floor's own delivery count (what
//! `scripts/bench-floor` divides its CPU by) covers every delivery the
//! harness received. With W4's scenario every session is answered
//! `subscribed` and ends with the close handshake.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const LOAD: &str = env!("CARGO_BIN_EXE_pubmesh-load");
const FLOOR: &str = env!("CARGO_BIN_EXE_pubmesh-floor");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running floor; its stderr lines arrive on `lines`.
struct Floor {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
}

impl Floor {
    fn start() -> Floor {
        let port = free_port();
        let mut child = Command::new(FLOOR)
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pubmesh-floor");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the floor never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Floor { child, port, lines }
    }

    /// Wait (with a deadline) for the floor to log a delivery count of at
    /// least `at_least`: it logs its running count whenever a session ends,
    /// and a publisher's close comes after all its deliveries were handed
    /// to the writers. Returns the count, or the highest one seen.
    fn delivered(&self, at_least: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        while seen < at_least {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            if let Some(n) = line.strip_prefix("delivered_total ") {
                seen = seen.max(n.trim().parse().expect("a count"));
            }
        }
        seen
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"))
}

fn count(v: &Value, metric: &str) -> u64 {
    v["metrics"][metric]["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("{metric} has no count: {}", v["metrics"][metric]))
}

/// Run the bundled scenario `name` against the floor with `args` added;
/// returns the summary export.
fn run_load(floor: &Floor, name: &str, args: &[String]) -> Value {
    let out_json = std::env::temp_dir().join(format!(
        "pubmesh-floor-test-{name}-{}-{}.json",
        std::process::id(),
        floor.port
    ));
    let out = Command::new(LOAD)
        .arg("run")
        .arg(scenario(name))
        .args([
            "--quiet",
            "--url",
            &format!("ws://127.0.0.1:{}", floor.port),
        ])
        .args(args)
        .arg("--summary-export")
        .arg(&out_json)
        .stdin(Stdio::null())
        .output()
        .expect("run pubmesh-load");
    let text = std::fs::read_to_string(&out_json).unwrap_or_default();
    let _ = std::fs::remove_file(&out_json);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: no summary ({e}): {out:?}"))
}

/// Run `name` against the floor with `subscribers` over `channels`; returns
/// the summary export.
fn drive(floor: &Floor, name: &str, subscribers: u64, channels: u64, rate: u64) -> Value {
    let args = [
        "--subscribers",
        &subscribers.to_string(),
        "--channels",
        &channels.to_string(),
        "--rate",
        &rate.to_string(),
        "--duration",
        "2s",
        "--warmup",
        "300ms",
        "--drain",
        "1s",
    ]
    .map(String::from);
    let v = run_load(floor, name, &args);
    assert_eq!(count(&v, "ws_sessions"), subscribers + publishers(name));
    v
}

/// The publisher sockets the bundled scenario opens.
fn publishers(name: &str) -> u64 {
    match name {
        "targeted" => 4,
        _ => 1,
    }
}

fn check(floor: &Floor, v: &Value, per_publish: u64) {
    let expected = count(v, "deliveries_expected");
    assert!(expected > 0, "{v}");
    assert_eq!(expected, count(v, "publishes") * per_publish, "{v}");
    assert_eq!(count(v, "deliveries_received"), expected, "{v}");
    assert_eq!(v["metrics"]["delivery_loss"]["value"], 0.0, "{v}");
    // The floor counts warm-up deliveries too, which the harness leaves out.
    let delivered = floor.delivered(expected);
    assert!(
        delivered >= expected,
        "floor {delivered} < harness {expected}"
    );
}

/// W1's shape: every publish to the one channel reaches all its sockets.
#[test]
fn fanout_reaches_every_socket_of_the_channel() {
    let floor = Floor::start();
    let v = drive(&floor, "fanout", 40, 1, 50);
    check(&floor, &v, 40);
}

/// W2's shape: each publish names one random channel of one socket and
/// reaches exactly that socket.
#[test]
fn targeted_reaches_the_one_socket_of_each_channel() {
    let floor = Floor::start();
    let v = drive(&floor, "targeted", 60, 60, 300);
    check(&floor, &v, 1);
}

/// W4's shape: each new connection subscribes to a channel no one else
/// uses and is answered `subscribed`; the floor answers its close frame
/// with one (checked on a socket of our own).
#[test]
fn connect_fresh_sessions_are_answered_and_closed_cleanly() {
    let floor = Floor::start();
    let v = run_load(
        &floor,
        "connect-fresh",
        &["--rate", "200", "--duration", "2s"].map(String::from),
    );
    let sessions = count(&v, "ws_sessions");
    // 2 s at 200/s, less what a busy machine could not start.
    assert!(sessions >= 200, "{v}");
    assert_eq!(count(&v, "subscribes"), sessions, "{v}");
    assert_eq!(count(&v, "errors"), 0, "{v}");

    // The close handshake, by hand: a close frame (status 1000) is
    // answered with a close frame carrying the same status.
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", floor.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(
        b"GET /websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("upgrade");
    // A masked close frame with status 1000 (mask 0: the bytes as they are).
    s.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
        .expect("close");
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the floor closes the socket");
    assert!(
        got.ends_with(&[0x88, 0x02, 0x03, 0xe8]),
        "no close reply at the end of {:?}",
        String::from_utf8_lossy(&got)
    );
}
