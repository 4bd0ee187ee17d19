//! Real processes for end-to-end tests: `pubmesh` nodes and `redis-server`s on
//! free loopback ports, WebSocket and HTTP clients, and `eventually`.
//!
//! Every wait has a deadline scaled by `PUBMESH_TEST_PATIENCE` (default 1), so
//! a slow machine can be given more time without touching the tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The API key every test node uses.
pub const API_KEY: &str = "test-key";
/// The anonymous root id.
pub const ANONYMOUS: &str = "n::000000000000000000000001";

/// A deadline of `secs` seconds times the patience multiplier.
pub fn patience(secs: u64) -> Duration {
    let factor: f64 = std::env::var("PUBMESH_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs as f64 * factor)
}

/// Poll `check` until it returns `Some`, or panic after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pubmesh-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Write `text` to a fresh `pubmesh.toml` and return its path.
pub fn config_file(text: &str) -> String {
    let path = temp_dir("config").join("pubmesh.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

fn pubmesh_bin() -> PathBuf {
    let path = std::env::var_os("PUBMESH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target/debug/pubmesh"));
    assert!(
        path.exists(),
        "pubmesh binary not found at {} (run `cargo build --bin pubmesh` or set PUBMESH_BIN)",
        path.display()
    );
    path
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// A masked client WebSocket frame under 126 bytes, for raw-TCP tests
/// (mask key zero, as RFC 6455 allows, so the payload is sent as is).
pub fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![first_byte, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

/// A node id of its own for a test node.
fn fresh_node_id() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A running `pubmesh` process.
pub struct Node {
    child: Option<Child>,
    pub port: u16,
    pub node_id: String,
    log: PathBuf,
    args: Vec<String>,
    /// Environment variables set (`Some`) or removed (`None`) for it.
    env: Vec<(String, Option<String>)>,
}

impl Node {
    /// Start a node with a test API key and these extra flags; waits for /readyz.
    pub async fn start(args: &[&str]) -> Node {
        Node::start_with_env(args, &[]).await
    }

    /// Like [`Node::start`] with a chosen node id; does not wait for readiness
    /// when `args` contain a Redis URL that is down (use `wait_live`).
    pub async fn start_as(node_id: &str, args: &[&str]) -> Node {
        let node = Node::spawn(node_id, free_port(), owned(args), Vec::new());
        node.wait_ready().await;
        node
    }

    /// Like [`Node::start`], with environment variables set (`Some`) or
    /// removed (`None`).
    pub async fn start_with_env(args: &[&str], env: &[(&str, Option<&str>)]) -> Node {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect();
        let node = Node::spawn(&fresh_node_id(), free_port(), owned(args), env);
        node.wait_ready().await;
        node
    }

    /// Start a node and wait only until it answers `/livez` (for nodes that
    /// start degraded, e.g. with Redis down).
    pub async fn spawn_unready(args: &[&str]) -> Node {
        let node = Node::spawn(&fresh_node_id(), free_port(), owned(args), Vec::new());
        node.wait_live().await;
        node
    }

    fn spawn(
        node_id: &str,
        port: u16,
        args: Vec<String>,
        env: Vec<(String, Option<String>)>,
    ) -> Node {
        let dir = temp_dir("node");
        let log = dir.join("node.log");
        let out = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(pubmesh_bin());
        for (key, value) in &env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let child = command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--node-id")
            .arg(node_id)
            .arg("--api-key")
            .arg(API_KEY)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start pubmesh");
        Node {
            child: Some(child),
            port,
            node_id: node_id.to_string(),
            log,
            args,
            env,
        }
    }

    /// Start again on the same port with the same flags (after a kill).
    pub async fn restart(&mut self) {
        self.kill();
        let fresh = Node::spawn(
            &self.node_id,
            self.port,
            self.args.clone(),
            self.env.clone(),
        );
        *self = fresh;
        self.wait_ready().await;
    }

    pub async fn wait_ready(&self) {
        self.wait_for("readyz", "ready").await;
    }

    /// Wait until the HTTP listener answers at all (e.g. /livez).
    pub async fn wait_live(&self) {
        self.wait_for("livez", "live").await;
    }

    /// Wait until `GET /{path}` answers 2xx.
    async fn wait_for(&self, path: &str, what: &str) {
        let url = format!("{}/{path}", self.http());
        let http = reqwest::Client::new();
        eventually(
            &format!("node {} {what}", self.node_id),
            patience(30),
            || {
                let req = http.get(&url).send();
                async move {
                    req.await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| ())
                }
            },
        )
        .await;
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://…/websocket` with an optional query string (without `?`).
    pub fn ws(&self, query: &str) -> String {
        if query.is_empty() {
            format!("ws://127.0.0.1:{}/websocket", self.port)
        } else {
            format!("ws://127.0.0.1:{}/websocket?{query}", self.port)
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn sigterm(&self) {
        signal(self.pid(), "TERM");
    }

    /// Freeze the process (SIGSTOP).
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// Resume a frozen process (SIGCONT).
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// Send SIGKILL without reaping (see [`Node::wait_exit`]).
    pub fn sigkill(&self) {
        signal(self.pid(), "KILL");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Wait for the process to exit; returns its exit status.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "node {} did not exit within {within:?}\n{}",
                    self.node_id,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http()))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of an unlabelled metric (or a full `name{labels}` series).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// POST a JSON body to the server API with the test key.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.http()))
            .header("X-API-Key", API_KEY)
            .json(&body)
            .send()
            .await
            .expect("api request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// GET from the server API with the test key.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.http()))
            .header("X-API-Key", API_KEY)
            .send()
            .await
            .expect("api request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Members of `channel` across the cluster, as `/api/channels` reports them.
    pub async fn channel_members(&self, channel: &str) -> u64 {
        let (status, body) = self.get("/api/channels").await;
        assert_eq!(status, 200, "{body}");
        body["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["channel"] == channel)
            .and_then(|c| c["members"].as_u64())
            .unwrap_or(0)
    }

    /// Wait until `channel` has `n` members across the cluster.
    pub async fn wait_members(&self, channel: &str, n: u64) {
        eventually(
            &format!("{n} members in {channel}"),
            patience(30),
            || async { (self.channel_members(channel).await == n).then_some(()) },
        )
        .await;
    }

    /// Connect a client and read its connection frame.
    pub async fn client(&self, query: &str) -> Client {
        Client::connect(&self.ws(query)).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- log of node {} ----\n{}",
                self.node_id,
                self.log_text()
            );
        }
        self.kill();
    }
}

/// A `redis-server` on a free port, keeping nothing on disk.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    pub async fn start() -> Redis {
        let port = free_port();
        let mut redis = Redis {
            child: None,
            port,
            dir: temp_dir("redis"),
        };
        redis.spawn().await;
        redis
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed?)");
        self.child = Some(child);
        let port = self.port;
        eventually(&format!("redis on {port}"), patience(20), || async move {
            redis_cmd(port, &["PING"])
                .await
                .filter(|r| r.contains("PONG"))
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port (empty: nothing was persisted).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Start again after a [`Redis::kill`], on the same port.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis is still running");
        self.spawn().await;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Freeze the process (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// Resume a frozen process (SIGCONT).
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// Run a command; the reply as raw RESP text.
    pub async fn cmd(&self, args: &[&str]) -> Option<String> {
        redis_cmd(self.port, args).await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Send one RESP command to a Redis on `port`; returns the raw reply.
pub async fn redis_cmd(port: u16, args: &[&str]) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).to_string())
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Held by a test that starts a whole cluster, for as long as it runs.
pub struct ClusterSlot {
    _here: tokio::sync::SemaphorePermit<'static>,
    _machine: std::fs::File,
}

/// Tests that start whole clusters take this first, so only a couple run at
/// once on a small machine: at most 2 per test binary, and at most
/// `PUBMESH_TEST_CLUSTER_SLOTS` (default 2) across every test binary running
/// on the machine (`scripts/run-tests` runs several side by side). The
/// machine-wide slots are file locks in the temporary directory, released
/// when their holder ends, however it ends.
pub async fn cluster_slot() -> ClusterSlot {
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    let here = SLOTS.acquire().await.expect("semaphore never closes");
    let slots: usize = std::env::var("PUBMESH_TEST_CLUSTER_SLOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2);
    let machine = tokio::task::spawn_blocking(move || machine_slot(slots))
        .await
        .expect("slot task");
    ClusterSlot {
        _here: here,
        _machine: machine,
    }
}

/// Lock one of `slots` lock files: a free one if there is one, otherwise wait
/// for one picked at random.
fn machine_slot(slots: usize) -> std::fs::File {
    let dir = std::env::temp_dir().join("pubmesh-tests-cluster-slots");
    std::fs::create_dir_all(&dir).expect("slot directory");
    let open = |i: usize| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("slot-{i}")))
            .expect("slot file")
    };
    for i in 0..slots {
        let file = open(i);
        if file.try_lock().is_ok() {
            return file;
        }
    }
    let file = open(rand_u16() as usize % slots);
    file.lock().expect("slot lock");
    file
}

/// A port `p` such that `p` and `p + 10000` (the Redis Cluster bus) are free.
fn free_cluster_port() -> u16 {
    loop {
        let p = 20_000 + (rand_u16() % 10_000);
        let ok = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if ok(p) && ok(p + 10_000) {
            return p;
        }
    }
}

fn rand_u16() -> u16 {
    (uuid::Uuid::new_v4().as_u128() % 65_536) as u16
}

/// A Redis Cluster of `masters` masters and no replicas.
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    dir: PathBuf,
}

impl RedisCluster {
    pub async fn start(masters: usize) -> RedisCluster {
        let dir = temp_dir("redis-cluster");
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..masters {
            let port = free_cluster_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            nodes.push(child);
            ports.push(port);
        }
        for &port in &ports {
            eventually(&format!("redis {port}"), patience(20), || async move {
                redis_cmd(port, &["PING"])
                    .await
                    .filter(|r| r.contains("PONG"))
            })
            .await;
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        for &port in &ports {
            eventually(
                &format!("cluster ok on {port}"),
                patience(30),
                || async move {
                    redis_cmd(port, &["CLUSTER", "INFO"])
                        .await
                        .filter(|r| r.contains("cluster_state:ok"))
                },
            )
            .await;
        }
        RedisCluster { nodes, ports, dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A WebSocket client speaking the native protocol.
pub struct Client {
    ws: Ws,
    /// The connection frame's `data`.
    pub info: Value,
}

impl Client {
    /// Connect and read the connection frame.
    pub async fn connect(url: &str) -> Client {
        let mut client = Client::connect_raw(url, None).await.expect("connect");
        let first = client.recv().await;
        assert_eq!(first["type"], "connection", "first frame: {first}");
        client.info = first["data"].clone();
        client
    }

    /// Connect with an `Authorization: Bearer` header.
    pub async fn connect_with_token(url: &str, token: &str) -> Client {
        let mut client = Client::connect_raw(url, Some(token))
            .await
            .expect("connect");
        let first = client.recv().await;
        assert_eq!(first["type"], "connection", "first frame: {first}");
        client.info = first["data"].clone();
        client
    }

    /// Connect without reading anything.
    pub async fn connect_raw(
        url: &str,
        token: Option<&str>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request()?;
        if let Some(token) = token {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Client {
            ws,
            info: Value::Null,
        })
    }

    pub fn client_id(&self) -> String {
        self.info["client_id"]
            .as_str()
            .expect("client_id")
            .to_string()
    }

    pub fn root_id(&self) -> String {
        self.info["root_id"].as_str().expect("root_id").to_string()
    }

    pub fn channel_id(&self) -> String {
        self.info["channel_id"]
            .as_str()
            .expect("channel_id")
            .to_string()
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(Utf8Bytes::from(frame.to_string())))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(Utf8Bytes::from(text)))
            .await
            .expect("send");
    }

    pub async fn send_message(
        &mut self,
        message: Message,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(message).await
    }

    /// The next JSON text frame (panics after the default deadline).
    pub async fn recv(&mut self) -> Value {
        self.recv_within(patience(10)).await
    }

    pub async fn recv_within(&mut self, within: Duration) -> Value {
        self.try_recv_within(within)
            .await
            .unwrap_or_else(|| panic!("no frame within {within:?}"))
    }

    /// The next JSON text frame, or `None` when none came within `within`.
    pub async fn try_recv_within(&mut self, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return None;
            };
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Some(
                        serde_json::from_str(&text)
                            .unwrap_or_else(|e| panic!("bad JSON {text}: {e}")),
                    )
                }
                Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket error: {e}"),
                None => panic!("socket ended"),
            }
        }
    }

    /// The next text frame, or `None` once the connection has ended (close
    /// frame, error or end of stream).
    pub async fn recv_or_end(&mut self) -> Option<String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return Some(text.to_string()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Read and count text frames until the connection ends; returns the
    /// count and the close frame's code and reason, if one arrived. Panics if
    /// the connection is still open after `within`.
    pub async fn read_to_end(&mut self, within: Duration) -> (u64, Option<(u16, String)>) {
        let deadline = Instant::now() + within;
        let mut frames = 0;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("still open after {within:?} and {frames} frames"));
            match next {
                Some(Ok(Message::Text(_))) => frames += 1,
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (
                        frames,
                        Some((u16::from(frame.code), frame.reason.to_string())),
                    )
                }
                Some(Ok(Message::Close(None))) => {
                    return (frames, Some((u16::from(CloseCode::Status), String::new())))
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (frames, None),
            }
        }
    }

    /// Skip frames until one matches.
    pub async fn recv_until(&mut self, mut matches: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let frame = self.recv().await;
            if matches(&frame) {
                return frame;
            }
        }
    }

    /// Assert nothing arrives for `quiet` (the one allowed timed wait: silence).
    /// Read (answering the server's pings, as tungstenite does while it
    /// reads) until `n` pings have arrived; text frames are skipped. Panics
    /// if the connection ends or `within` passes first.
    pub async fn read_pings(&mut self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let mut pings = 0;
        while pings < n {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{pings} pings of {n} within {within:?}"));
            match next {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Text(_) | Message::Pong(_))) => {}
                other => panic!("connection ended after {pings} pings: {other:?}"),
            }
        }
    }

    /// The server's pings (answered while reading) are not frames here.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(Message::Text(text)))) => panic!("expected silence, got {text}"),
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Read until the server closes; returns the close code and reason.
    /// `None` when the connection ended without a close frame.
    pub async fn expect_close(&mut self) -> Option<(u16, String)> {
        let deadline = Instant::now() + patience(20);
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("no close within the deadline");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Some((u16::from(frame.code), frame.reason.to_string()))
                }
                Some(Ok(Message::Close(None))) => {
                    return Some((u16::from(CloseCode::Status), String::new()))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// An HS256 token for `sub`, valid for `ttl_secs` (negative: already expired).
pub fn hs256(secret: &str, sub: &str, ttl_secs: i64) -> String {
    hs256_with(secret, serde_json::json!({"sub": sub}), ttl_secs)
}

/// An HS256 token with extra claims.
pub fn hs256_with(secret: &str, mut claims: Value, ttl_secs: i64) -> String {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    claims["exp"] = Value::from(now + ttl_secs);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// Two nodes started with the same arguments, once each sees both in
/// `/api/nodes`.
pub async fn two_nodes(args: &[&str]) -> (Node, Node) {
    let a = Node::start(args).await;
    let b = Node::start(args).await;
    see_each_other(&[&a, &b]).await;
    (a, b)
}

/// Wait until every one of `nodes` lists all of them in `/api/nodes`.
pub async fn see_each_other(nodes: &[&Node]) {
    for node in nodes {
        eventually("membership", patience(20), || async move {
            let (_, body) = node.get("/api/nodes").await;
            (body["nodes"].as_array().map(Vec::len) == Some(nodes.len())).then_some(())
        })
        .await;
    }
}
