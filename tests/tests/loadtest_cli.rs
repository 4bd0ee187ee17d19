//! pubmesh-load against a real node: exit codes, summary export shape and
//! the counts it reports. Correctness only; never speed.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use pubmesh_tests::harness::{temp_dir, Node};

fn load_bin() -> PathBuf {
    std::env::var_os("PUBMESH_LOAD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/pubmesh-load")
        })
}

fn scenario(text: &str) -> PathBuf {
    let path = temp_dir("scenario").join("s.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("scenario");
    path
}

const FANOUT: &str = r#"
name = "e2e"
duration = "2s"
warmup = "500ms"
drain = "1s"
[executor]
type = "constant-arrival-rate"
rate = 20
[workload]
kind = "fanout"
subscribers = 5
publish_via = "api"
[thresholds]
deliveries_received = ["count>0"]
delivery_loss = ["rate<0.01"]
"#;

async fn node() -> Node {
    Node::start(&[]).await
}

fn run(node: &Node, scenario: &PathBuf, export: &PathBuf) -> std::process::Output {
    Command::new(load_bin())
        .arg("run")
        .arg(scenario)
        .args(["--url", &format!("ws://127.0.0.1:{}", node.port)])
        .args(["--api-key", pubmesh_tests::harness::API_KEY])
        .arg("--summary-export")
        .arg(export)
        .arg("--quiet")
        .output()
        .expect("run pubmesh-load (cargo build --bin pubmesh-load)")
}

#[tokio::test]
async fn a_passing_run_exits_zero_and_exports_k6_shaped_metrics() {
    let node = node().await;
    let export = temp_dir("export").join("summary.json");
    let out = run(&node, &scenario(FANOUT), &export);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("✓ delivery_loss rate<0.01"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&export).expect("export")).expect("json");
    let m = &json["metrics"];
    let sent = m["ws_msgs_sent"]["count"].as_u64().expect("sent");
    assert!(sent >= 30, "about 40 publishes expected, got {sent}");
    // Five subscribers receive each publish exactly once.
    assert_eq!(m["deliveries_expected"]["count"].as_u64(), Some(sent * 5));
    assert_eq!(m["deliveries_received"]["count"].as_u64(), Some(sent * 5));
    assert_eq!(m["deliveries_duplicated"]["count"].as_u64(), Some(0));
    assert_eq!(m["delivery_loss"]["thresholds"]["rate<0.01"]["ok"], true);
    assert!(m["delivery_latency"]["p(95)"].as_f64().is_some());
    assert!(json["root_group"].is_object());
}

#[tokio::test]
async fn a_failing_threshold_exits_99() {
    let node = node().await;
    let export = temp_dir("export").join("summary.json");
    let failing = FANOUT.replace("count>0", "count>1000000000");
    let out = run(&node, &scenario(&failing), &export);
    assert_eq!(
        out.status.code(),
        Some(99),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&export).expect("export")).expect("json");
    assert_eq!(
        json["metrics"]["deliveries_received"]["thresholds"]["count>1000000000"]["ok"],
        false
    );
}

#[tokio::test]
async fn a_bad_scenario_exits_2_with_a_message() {
    let node = node().await;
    let export = temp_dir("export").join("summary.json");
    let out = run(
        &node,
        &scenario("name = \"x\"\nduration = \"1y\"\n"),
        &export,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
}
