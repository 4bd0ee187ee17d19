//! The `pubmesh-load` binary end to end: exit codes, the summary export, and
//! runs against a real node (in-process and with worker processes).
//!
//! The node tests need the `pubmesh` binary: `PUBMESH_BIN`, or
//! `target/debug/pubmesh` (build it with `cargo build --bin pubmesh`). Without
//! it they print a note and return.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const LOAD: &str = env!("CARGO_BIN_EXE_pubmesh-load");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "pubmesh-load-test-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(args: &[&str]) -> Output {
    Command::new(LOAD)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pubmesh-load")
}

fn export(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("export written")).expect("json")
}

fn count(v: &Value, metric: &str) -> u64 {
    v["metrics"][metric]["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("{metric} has no count: {}", v["metrics"][metric]))
}

#[test]
fn failing_threshold_exits_99_with_k6_shaped_export() {
    let dir = TempDir::new("exit");
    // Nothing listens on this port: every connection fails.
    let port = free_port();
    let scenario = dir.file(
        "s.toml",
        &format!(
            r#"name = "refused"
urls = ["ws://127.0.0.1:{port}"]
duration = "1s"
[executor]
type = "constant-vus"
vus = 2
[connections]
hold = "100ms"
[thresholds]
errors = ["count<1"]
"errors{{code:connect}}" = ["count>0"]
ws_sessions = ["count<1"]
"#
        ),
    );
    let out_json = dir.0.join("summary.json");
    let report = dir.0.join("report.html");
    let out = load(&[
        "run",
        scenario.to_str().expect("path"),
        "--quiet",
        "--summary-export",
        out_json.to_str().expect("path"),
        "--report",
        report.to_str().expect("path"),
    ]);
    assert_eq!(out.status.code(), Some(99), "{out:?}");
    let v = export(&out_json);
    // k6 writes `true` for a threshold that FAILED.
    assert_eq!(v["metrics"]["errors"]["thresholds"]["count<1"], true);
    assert_eq!(
        v["metrics"]["errors{code:connect}"]["thresholds"]["count>0"],
        false
    );
    assert!(count(&v, "errors") > 0);
    // A metric that never had a sample still reports its threshold.
    assert_eq!(v["metrics"]["ws_sessions"]["thresholds"]["count<1"], true);
    // The whole run: at least the 1 s scenario.
    let ran = v["state"]["testRunDurationMs"].as_f64().expect("duration");
    assert!(ran >= 1000.0, "ran {ran} ms");
    assert_eq!(
        v["root_group"]["checks"]["connection frame received"]["passes"],
        0
    );
    let page = std::fs::read_to_string(&report).expect("report");
    assert!(page.contains("<svg") && page.contains("Some thresholds failed"));
    // The run's metadata: command, date, commit (or none), targets, load.
    assert!(page.contains("--summary-export"), "{page}");
    assert!(page.contains(&format!("ws://127.0.0.1:{port}")), "{page}");
    assert!(page.contains(" GMT</code>"), "{page}");
    assert!(page.contains("<th>commit</th>"), "{page}");
    assert!(page.contains("2 virtual users"), "{page}");
    // Every connection was refused: the errors chart and the connect-time
    // chart are there, with their units.
    assert!(page.contains("Errors per second (errors/s)"), "{page}");
    assert!(
        page.contains("connect time of the connections opened each second (ms)"),
        "{page}"
    );
}

#[test]
fn bad_scenarios_exit_2_and_every_shipped_one_inspects() {
    let dir = TempDir::new("bad");
    let bad = dir.file("bad.toml", "name = \"x\"\n");
    assert_eq!(
        load(&["run", bad.to_str().expect("path")]).status.code(),
        Some(2)
    );
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    for entry in std::fs::read_dir(shipped).expect("scenarios") {
        let path = entry.expect("entry").path();
        let out = load(&["inspect", path.to_str().expect("path")]);
        assert!(out.status.success(), "{}: {out:?}", path.display());
    }
}

/// A node on a free port, killed on drop.
struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PUBMESH_BIN") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/pubmesh");
    p.exists().then_some(p)
}

fn start_node(extra: &[&str]) -> Option<Node> {
    let Some(bin) = node_binary() else {
        eprintln!("note: no pubmesh binary (cargo build --bin pubmesh); skipping");
        return None;
    };
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(bin)
        .args(["--listen", &listen, "--api-key", "test-key"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start node");
    let node = Node {
        child,
        url: format!("ws://{listen}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = TcpStream::connect(&listen)
            .and_then(|mut s| {
                s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut body = String::new();
                s.read_to_string(&mut body)?;
                Ok(body.starts_with("HTTP/1.1 200"))
            })
            .unwrap_or(false);
        if ready {
            return Some(node);
        }
        assert!(Instant::now() < deadline, "node did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_against(node: &Node, dir: &TempDir, scenario: &str, extra: &[&str]) -> (Output, Value) {
    let path = dir.file("scenario.toml", scenario);
    let json = dir.0.join("summary.json");
    let mut args = vec![
        "run",
        path.to_str().expect("path"),
        "--quiet",
        "--url",
        &node.url,
        "--summary-export",
        json.to_str().expect("path"),
    ];
    args.extend_from_slice(extra);
    let out = load(&args);
    let v = export(&json);
    (out, v)
}

/// Every publish reaches every member: deliveries received equal the
/// expected count, with no loss, through both publish paths.
#[test]
fn fanout_is_measured_end_to_end() {
    let Some(node) = start_node(&[]) else { return };
    let dir = TempDir::new("fanout");
    for via in ["member", "api"] {
        let scenario = format!(
            r#"name = "e2e"
duration = "2s"
warmup = "300ms"
drain = "1s"
[executor]
type = "constant-arrival-rate"
rate = 40
[subscribers]
count = 30
channels = 3
channels_per_subscriber = 2
channel_prefix = "e2e-{via}"
[publish]
via = "{via}"
payload_bytes = 200
[thresholds]
delivery_loss = ["rate==0"]
deliveries_received = ["count>0"]
delivery_latency = ["p(99)<5000"]
"#
        );
        let (out, v) = run_against(&node, &dir, &scenario, &["--api-key", "test-key"]);
        assert_eq!(out.status.code(), Some(0), "{via}: {out:?}\n{v}");
        let expected = count(&v, "deliveries_expected");
        // 2 of 3 channels each: every channel has 20 members.
        assert_eq!(expected, count(&v, "publishes") * 20, "{via}");
        assert_eq!(count(&v, "deliveries_received"), expected, "{via}");
        assert_eq!(count(&v, "ws_sessions"), 30, "{via}");
        assert_eq!(v["metrics"]["delivery_loss"]["value"], 0.0);
        assert_eq!(
            v["root_group"]["checks"]["subscribe acknowledged"]["passes"],
            30
        );
        assert!(v["metrics"]["delivery_latency"]["p(99)"].as_f64().is_some());
        // Arrival-rate executors report k6's `vus` and `vus_max` gauges.
        let vus = &v["metrics"]["vus"];
        let (value, min, max) = (
            vus["value"].as_f64().expect("vus value"),
            vus["min"].as_f64().expect("vus min"),
            vus["max"].as_f64().expect("vus max"),
        );
        assert!(min <= value && value <= max, "{via}: {vus}");
        let vus_max = v["metrics"]["vus_max"]["value"].as_f64().expect("vus_max");
        if via == "member" {
            // Every member publishes: 30 VUs once publishing runs.
            assert_eq!((value, max, vus_max), (30.0, 30.0, 30.0), "{vus}");
        } else {
            // HTTP publishes: maxVUs allocated, those in flight busy.
            assert_eq!(vus_max, 1000.0, "{via}");
            assert!(max <= vus_max, "{via}: {vus}");
        }
    }
}

/// Worker processes each run a segment; the parent merges them into the
/// same totals one process would report.
#[test]
fn workers_merge_into_one_summary() {
    let Some(node) = start_node(&[]) else { return };
    let dir = TempDir::new("workers");
    let scenario = r#"name = "workers"
duration = "2s"
warmup = "300ms"
drain = "1s"
[executor]
type = "constant-arrival-rate"
rate = 30
[chat]
rooms = 5
members = 7
[thresholds]
delivery_loss = ["rate==0"]
"#;
    let (out, v) = run_against(&node, &dir, scenario, &["--workers", "3"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{v}");
    assert_eq!(count(&v, "ws_sessions"), 35);
    assert_eq!(
        v["root_group"]["checks"]["connection frame received"]["passes"],
        35
    );
    let expected = count(&v, "deliveries_expected");
    assert!(expected > 0);
    // Every post reaches its room's 7 members, across processes.
    assert_eq!(expected, count(&v, "publishes") * 7);
    assert_eq!(count(&v, "deliveries_received"), expected);
    assert_eq!(v["metrics"]["ws_connections_max"]["value"], 35.0);
}

/// Forbidden publishes show as errors by code and as delivery loss, and an
/// `abortOnFail` threshold stops the run early with exit code 99.
#[test]
fn errors_by_code_and_abort_on_fail() {
    let Some(node) = start_node(&["--client-channel-publish", "members"]) else {
        return;
    };
    let dir = TempDir::new("abort");
    let scenario = r#"name = "forbidden"
duration = "60s"
warmup = "0s"
drain = "500ms"
[executor]
type = "constant-arrival-rate"
rate = 20
[subscribers]
count = 5
channel_prefix = "abort"
[publish]
via = "ws"
[thresholds]
"errors{code:forbidden}" = [{ threshold = "count<1", abortOnFail = true }]
"#;
    let (out, v) = run_against(&node, &dir, scenario, &[]);
    assert_eq!(out.status.code(), Some(99), "{out:?}\n{v}");
    assert!(count(&v, "errors{code:forbidden}") > 0);
    // The run says why, and what to change.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hint: the nodes refused") && stderr.contains("--client-channel-publish"),
        "{stderr}"
    );
    assert_eq!(
        v["metrics"]["errors{code:forbidden}"]["thresholds"]["count<1"],
        true
    );
    // Nothing was delivered: the publisher is not a member.
    assert_eq!(v["metrics"]["delivery_loss"]["value"], 1.0);
    // Stopped well before the 60 s it was given.
    let ran = v["state"]["testRunDurationMs"].as_f64().expect("duration");
    assert!(ran < 60_000.0, "ran {ran} ms");
}

/// Connection VUs hold their connections; the connect-rate executor counts
/// sessions.
#[test]
fn connection_workloads_count_sessions() {
    let Some(node) = start_node(&[]) else { return };
    let dir = TempDir::new("conns");
    let held = r#"name = "held"
duration = "2s"
[executor]
type = "constant-vus"
vus = 40
[connections]
channels = 4
[thresholds]
ws_connections_max = ["value==40"]
errors = ["count<1"]
"#;
    let (out, v) = run_against(&node, &dir, held, &["--summary-trend-stats", "avg,count"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{v}");
    assert_eq!(count(&v, "ws_sessions"), 40);
    let duration = v["metrics"]["ws_session_duration"]
        .as_object()
        .expect("trend");
    assert_eq!(duration.keys().collect::<Vec<_>>(), ["avg", "count"]);
    assert_eq!(duration["count"], 40);
    assert_eq!(v["metrics"]["vus"]["max"], 40.0);
    assert_eq!(v["metrics"]["vus_max"]["value"], 40.0);
    let rate = r#"name = "rate"
duration = "2s"
[executor]
type = "constant-arrival-rate"
rate = 50
max_vus = 50
[connections]
hold = "0s"
[thresholds]
errors = ["count<1"]
"#;
    let samples = dir.0.join("rate-samples.jsonl");
    let (out, v) = run_against(
        &node,
        &dir,
        rate,
        &["--samples", samples.to_str().expect("path")],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{v}");
    // Connections opened during the run show in the connect-time figures
    // (the report's connect-time chart).
    let text = std::fs::read_to_string(&samples).expect("samples");
    let connect_max: f64 = text
        .lines()
        .map(|l| {
            let s: Value = serde_json::from_str(l).expect("json");
            s["connect_max_ms"].as_f64().expect("connect_max_ms")
        })
        .fold(0.0, f64::max);
    assert!(connect_max > 0.0, "{text}");
    let sessions = count(&v, "ws_sessions");
    let dropped = count(&v, "dropped_iterations");
    // Sessions happened, and never more iterations than the executor planned
    // (50/s for 2 s). How many fit in the window depends on the machine's
    // speed, which tests do not judge.
    assert!(sessions > 0, "{v}");
    assert!(sessions + dropped <= 100, "{v}");
    assert_eq!(count(&v, "errors"), 0, "{v}");
    // An arrival-rate executor allocates maxVUs; no more than that are busy.
    assert_eq!(v["metrics"]["vus_max"]["value"], 50.0, "{v}");
    assert!(
        v["metrics"]["vus"]["max"].as_f64().expect("vus") <= 50.0,
        "{v}"
    );
}

/// `--help` names the environment variables but never shows their values.
#[test]
fn help_hides_secrets() {
    let out = Command::new(env!("CARGO_BIN_EXE_pubmesh-load"))
        .args(["run", "--help"])
        .env("PUBMESH_API_KEY", "very-secret-key")
        .env("PUBMESH_JWT_SECRET", "very-secret-jwt")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("PUBMESH_API_KEY"), "{help}");
    assert!(!help.contains("very-secret"), "{help}");
}

/// The progress lines cover the warm-up, and every time they and the
/// samples report lies inside the run (warm-up, measured phase, drain).
#[test]
fn progress_covers_warm_up_and_stays_inside_the_run() {
    let Some(node) = start_node(&[]) else { return };
    let dir = TempDir::new("progress");
    let scenario = dir.file(
        "s.toml",
        r#"name = "progress"
duration = "2s"
warmup = "1500ms"
drain = "700ms"
[executor]
type = "constant-arrival-rate"
rate = 20
[subscribers]
count = 4
channels = 2
[publish]
via = "member"
"#,
    );
    let samples = dir.0.join("samples.jsonl");
    let out = load(&[
        "run",
        scenario.to_str().expect("path"),
        "--url",
        &node.url,
        "--samples",
        samples.to_str().expect("path"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let phases: Vec<(&str, f64, f64)> = stderr
        .lines()
        .filter(|l| l.contains("s/") && l.contains('['))
        .map(|l| {
            let inner = &l[l.find('[').expect("[") + 1..l.find(']').expect("]")];
            let (at, of) = inner.split_once('/').expect("/");
            let num = |s: &str| {
                s.trim()
                    .trim_end_matches('s')
                    .parse::<f64>()
                    .expect("number")
            };
            (l[..7].trim(), num(at), num(of))
        })
        .collect();
    assert_eq!(phases.first(), Some(&("warm-up", 0.0, 1.5)), "{stderr}");
    assert!(phases.contains(&("warm-up", 1.0, 1.5)), "{stderr}");
    assert!(phases.iter().any(|p| p.0 == "running"), "{stderr}");
    for (phase, at, of) in &phases {
        let length = match *phase {
            "warm-up" => 1.5,
            "running" => 2.0,
            _ => 0.7,
        };
        assert_eq!(*of, length, "{stderr}");
        assert!((0.0..=length).contains(at), "{phase} {at}: {stderr}");
    }
    let text = std::fs::read_to_string(&samples).expect("samples");
    let ts: Vec<f64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["t"]
                .as_f64()
                .expect("t")
        })
        .collect();
    assert!(ts.len() >= 4, "{text}");
    for t in &ts {
        assert!(
            (-1.5..=2.7 + 1e-9).contains(t),
            "{t} outside the run: {text}"
        );
    }
}
