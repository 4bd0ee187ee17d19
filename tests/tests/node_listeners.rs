//! Listeners and start-up checks: `--admin-listen` moves the server API and
//! /metrics off the client port, `--listen-backlog` sets the listen(2) queue,
//! and configurations that cannot work stop the node with exit code 2.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use pubmesh_tests::harness::{free_port, patience, temp_dir, Node, API_KEY};

async fn status(url: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test]
async fn admin_listen_serves_api_and_metrics_apart_from_clients() {
    let admin = free_port();
    let admin_addr = format!("127.0.0.1:{admin}");
    let node = Node::start(&["--admin-listen", &admin_addr]).await;
    let client = node.http();
    // Client port: WebSocket and health only.
    assert_eq!(status(&format!("{client}/api/nodes")).await, 404);
    assert_eq!(status(&format!("{client}/metrics")).await, 404);
    assert_eq!(status(&format!("{client}/readyz")).await, 200);
    let mut ws = node.client("channel_id=room").await;
    // Admin port: API (with the key), metrics, health.
    let admin = format!("http://{admin_addr}");
    assert_eq!(status(&format!("{admin}/api/nodes")).await, 200);
    assert_eq!(status(&format!("{admin}/readyz")).await, 200);
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("pubmesh_connections 1"), "{metrics}");
    let unauthorised = reqwest::Client::new()
        .get(format!("{admin}/api/nodes"))
        .send()
        .await
        .expect("request");
    assert_eq!(unauthorised.status().as_u16(), 401);
    // The API on the admin port reaches clients of the client port.
    let reply = reqwest::Client::new()
        .post(format!("{admin}/api/notify/channels"))
        .header("X-API-Key", API_KEY)
        .json(
            &serde_json::json!({"channel_ids": ["room"], "data": {"type": "t", "data": {"n": 1}}}),
        )
        .send()
        .await
        .expect("notify");
    assert_eq!(reply.status().as_u16(), 200);
    let got = ws.recv().await;
    assert_eq!(got["data"]["n"], 1, "{got}");
}

/// The Send-Q column of `ss -ltn` is a listening socket's backlog.
fn backlog_of(port: u16) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace().nth(2)?.parse().ok()
}

#[tokio::test]
async fn listen_backlog_defaults_to_somaxconn_and_is_configurable() {
    let node = Node::start(&["--listen-backlog", "77"]).await;
    assert_eq!(backlog_of(node.port), Some(77));
    let node = Node::start(&[]).await;
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("somaxconn")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(backlog_of(node.port), Some(somaxconn));
}

fn pubmesh_bin() -> PathBuf {
    std::env::var_os("PUBMESH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/pubmesh")
        })
}

/// Run the node; it must exit by itself (it refuses to start).
fn refused(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut child = Command::new(pubmesh_bin())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pubmesh");
    let deadline = std::time::Instant::now() + patience(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return (
                status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).to_string(),
            );
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("pubmesh {args:?} started instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test]
async fn configurations_that_cannot_work_stop_start_up() {
    let (code, stderr) = refused(&["--require-auth"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--require-auth needs --jwt-secret"),
        "{stderr}"
    );
    // Boolean environment variables accept 1/0.
    let (code, stderr) = refused(&[], &[("PUBMESH_REQUIRE_AUTH", "1")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--require-auth needs"), "{stderr}");

    let dir = temp_dir("ns-auth");
    let file = dir.join("pubmesh.toml");
    std::fs::write(
        &file,
        "[[namespaces]]\npattern = \"staff:*\"\nsubscribe = \"authenticated\"\n",
    )
    .expect("write");
    let (code, stderr) = refused(&["--config", &file.display().to_string()], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("staff:*"), "{stderr}");
    assert!(stderr.contains("no one could subscribe"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn help_hides_secrets_and_names_lists_and_rust_log() {
    let out = Command::new(pubmesh_bin())
        .arg("--help")
        .env("PUBMESH_API_KEY", "very-secret-key")
        .env("PUBMESH_JWT_SECRET", "very-secret-jwt")
        .env("PUBMESH_REDIS_URL", "redis://:very-secret-pw@10.0.0.5:6379")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(!help.contains("very-secret"), "{help}");
    assert!(help.contains("RUST_LOG"), "{help}");
    assert!(help.contains("comma-separated"), "{help}");
    assert!(help.contains("1/0"), "{help}");
}

#[tokio::test]
async fn a_policy_close_is_logged_once_with_its_count() {
    let node = Node::start(&["--client-rate", "1", "--client-burst", "2"]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = node.client("").await;
        for _ in 0..5 {
            c.send_text("{\"type\":\"connection\"}").await;
        }
        clients.push(c);
    }
    for c in &mut clients {
        let close = c.expect_close().await;
        assert_eq!(close.map(|(code, _)| code), Some(4029));
    }
    let line =
        pubmesh_tests::harness::eventually("the policy-close log line", patience(10), || {
            let log = node.log_text();
            async move {
                log.lines()
                    .find(|l| l.contains("closed a socket by policy"))
                    .map(str::to_string)
            }
        })
        .await;
    assert!(
        line.contains("code=4029") && line.contains("rate_limited"),
        "{line}"
    );
    // No colour codes in a log file.
    assert!(!node.log_text().contains('\u{1b}'), "{}", node.log_text());
    // Three closes within a second: at most a line or two, never one per close
    // beyond the first of each second.
    let lines = node.log_text().matches("closed a socket by policy").count();
    assert!((1..=3).contains(&lines), "{lines}");
}
