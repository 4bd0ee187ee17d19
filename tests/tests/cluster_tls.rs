//! TLS to Redis: two nodes reach a TLS-only `redis-server` (`--port 0`) over
//! `rediss://` with a CA made by `openssl` here, and deliver across nodes; a
//! `rediss://` URL the node cannot honour stops it at start-up.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use pubmesh_tests::harness::{cluster_slot, eventually, free_port, patience, temp_dir, Node};
use serde_json::json;

const PASSWORD: &str = "tls-test-password";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate it signs for 127.0.0.1 and localhost.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pubmesh test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write san.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    // A second CA that signed nothing the server presents.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=some other CA",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
        ],
    );
}

/// A `redis-server` that speaks only TLS, with a password.
struct TlsRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl TlsRedis {
    async fn start() -> TlsRedis {
        let dir = temp_dir("redis-tls");
        make_certificates(&dir);
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args([
                "--tls-cert-file",
                "server.pem",
                "--tls-key-file",
                "server.key",
            ])
            .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
            .args(["--requirepass", PASSWORD])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed?)");
        let redis = TlsRedis { child, port, dir };
        eventually("TLS redis answers PING", patience(20), || async {
            redis.cli(&["PING"]).filter(|r| r.trim() == "PONG")
        })
        .await;
        redis
    }

    /// `redis-cli` over TLS; its stdout.
    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(self.dir.join("ca.pem"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["--no-auth-warning", "-a", PASSWORD])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }

    fn url(&self) -> String {
        format!("rediss://:{PASSWORD}@127.0.0.1:{}", self.port)
    }

    fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pubmesh_bin() -> PathBuf {
    std::env::var_os("PUBMESH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/debug/pubmesh")
                .to_path_buf()
        })
}

/// Run the binary with these flags until it exits (it must refuse to start).
fn refused(args: &[&str]) -> (i32, String) {
    let port = free_port().to_string();
    let mut child = Command::new(pubmesh_bin())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pubmesh");
    // A node that starts would run forever: give it a deadline, then kill it.
    let deadline = std::time::Instant::now() + patience(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            return (status.code().unwrap_or(-1), stderr);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("pubmesh {args:?} started instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test]
async fn two_nodes_deliver_across_a_tls_only_redis() {
    let _slot = cluster_slot().await;
    let redis = TlsRedis::start().await;
    let (url, ca) = (redis.url(), redis.ca());
    let args = ["--redis-url", url.as_str(), "--redis-tls-ca", ca.as_str()];
    let a = Node::start(&args).await;
    let b = Node::start(&args).await;
    for node in [&a, &b] {
        eventually("both nodes see each other", patience(20), || async move {
            let (_, body) = node.get("/api/nodes").await;
            (body["nodes"].as_array().map(Vec::len) == Some(2)).then_some(())
        })
        .await;
    }
    let mut member = b.client("channel_id=secure-room").await;
    eventually("b subscribed over TLS", patience(20), || async {
        let reply = redis.cli(&["PUBSUB", "NUMSUB", "pubmesh.ch.{secure-room}"])?;
        (reply.lines().nth(1) == Some("1")).then_some(())
    })
    .await;
    let (status, body) = a
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["secure-room"], "data": {"type": "t", "data": {"n": 1}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = member.recv().await;
    assert_eq!(got["data"], json!({"n": 1}), "{got}");
    // Every client of the node (relay publisher, subscriber, store) is on TLS:
    // the server has no plain-text port, and lists the nodes' connections.
    let clients = redis.cli(&["CLIENT", "LIST"]).expect("client list");
    assert!(clients.lines().count() >= 4, "{clients}");
}

#[tokio::test]
async fn a_rediss_url_that_cannot_be_honoured_stops_start_up() {
    let dir = temp_dir("tls-refuse");
    let not_pem = dir.join("not-a-cert.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").expect("write");
    let not_pem = not_pem.display().to_string();
    let (code, stderr) = refused(&[
        "--redis-url",
        "rediss://127.0.0.1:1",
        "--redis-tls-ca",
        &not_pem,
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no PEM certificate"), "{stderr}");

    let missing = dir.join("missing.pem").display().to_string();
    let (code, stderr) = refused(&[
        "--redis-url",
        "rediss://:hunter2@127.0.0.1:1",
        "--redis-tls-ca",
        &missing,
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    // A CA for plain-text Redis is a mistake, not something to ignore.
    let (code, stderr) = refused(&[
        "--redis-url",
        "redis://127.0.0.1:1",
        "--redis-tls-ca",
        &missing,
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no --redis-url is rediss://"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_node_that_does_not_trust_the_redis_certificate_never_becomes_ready() {
    let redis = TlsRedis::start().await;
    let url = redis.url();
    let other = redis.dir.join("other.pem").display().to_string();
    let node = Node::spawn_unready(&["--redis-url", &url, "--redis-tls-ca", &other]).await;
    // The node keeps trying and says why; it never talks to Redis in clear text.
    eventually("a TLS error in the log", patience(20), || async {
        let log = node.log_text();
        (log.contains("Redis") && log.to_lowercase().contains("certificate")).then_some(())
    })
    .await;
    let (status, _) = node.get("/readyz").await;
    assert_eq!(status, 503);
}
