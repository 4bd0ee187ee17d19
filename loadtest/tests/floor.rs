//! `pubmesh-floor` driven briefly by `pubmesh-load` with the bundled W1 and
//! W2 scenarios (fewer subscribers): every publish reaches its recipients,
//! nothing is lost, and the floor's own delivery count (what
//! `scripts/bench-floor` divides its CPU by) covers every delivery the
//! harness received.

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

/// Run `name` against the floor with `subscribers` over `channels`; returns
/// the summary export.
fn drive(floor: &Floor, name: &str, subscribers: u64, channels: u64, rate: u64) -> Value {
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
        .args(["--subscribers", &subscribers.to_string()])
        .args(["--channels", &channels.to_string()])
        .args(["--rate", &rate.to_string()])
        .args(["--duration", "2s", "--warmup", "300ms", "--drain", "1s"])
        .arg("--summary-export")
        .arg(&out_json)
        .stdin(Stdio::null())
        .output()
        .expect("run pubmesh-load");
    let text = std::fs::read_to_string(&out_json).unwrap_or_default();
    let _ = std::fs::remove_file(&out_json);
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: no summary ({e}): {out:?}"));
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
