//! One segment of a run: connects its share of the subscribers, starts its
//! share of the iterations, and reports metrics once a second. A run is one
//! segment in-process, or several in worker processes (k6 execution
//! segments); the coordinator merges them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::client::{self, classify, connect, now_micros, payload, Frame, Ws};
use crate::metrics::{Metrics, Recorder};
use crate::protocol::{self, Protocol, Session};
use crate::scenario::{split, Connections, Publish, Scenario, Subscribers, Target, Via, Workload};

mod protocol_subscriber;
mod wait;

use wait::{Turns, Woke};

/// Connection attempts in flight at once while setting up subscribers.
const SETUP_CONCURRENCY: usize = 256;
/// How long one connect + handshake + first frame may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// What a segment needs to run: also the first line sent to a worker process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SegmentSpec {
    pub scenario: Scenario,
    /// (index, count)
    pub segment: (u64, u64),
    pub api_key: Option<String>,
    /// Source addresses 127.0.0.1 … 127.0.0.N (≤ 1: the OS chooses).
    pub source_ips: u64,
}

/// What a segment reports to the coordinator.
#[derive(Debug)]
pub enum Event {
    /// Setup is done (subscribers connected); waiting for `Start`.
    Ready { connected: u64, failed: u64 },
    /// Everything recorded during second `index` after `Start`.
    Sample {
        index: u64,
        metrics: Metrics,
        conns: u64,
        vus: u64,
    },
    /// A line for the operator.
    Log(String),
    /// The segment finished.
    Done(Box<Report>),
    /// The segment failed (worker died, bad output).
    Failed(String),
}

/// The end of a segment: what remains recorded, and what the delivery
/// accounting needs.
#[derive(Debug, Default)]
pub struct Report {
    pub metrics: Metrics,
    /// Measured publishes per target (channel or user index).
    pub sent_by_target: HashMap<u64, u64>,
    /// Connected steady subscribers per target (channel or user index).
    pub members: HashMap<u64, u64>,
    /// Measured publishes with exactly one intended recipient (client target).
    pub direct: u64,
}

/// What the coordinator tells a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Start,
    Stop,
}

fn map_to_json(m: &HashMap<u64, u64>) -> Value {
    Value::Array(m.iter().map(|(k, v)| json!([k, v])).collect())
}

fn map_from_json(v: &Value) -> HashMap<u64, u64> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_u64()?, p[1].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

impl Event {
    /// One line of the worker → parent stream.
    pub fn to_line(&self) -> String {
        let v = match self {
            Event::Ready { connected, failed } => {
                json!({"ready": {"connected": connected, "failed": failed}})
            }
            Event::Sample {
                index,
                metrics,
                conns,
                vus,
            } => {
                json!({"sample": {"index": index, "metrics": metrics.to_wire(), "conns": conns, "vus": vus}})
            }
            Event::Log(line) => json!({"log": line}),
            Event::Failed(why) => json!({"failed": why}),
            Event::Done(r) => json!({"done": {
                "metrics": r.metrics.to_wire(),
                "sent_by_target": map_to_json(&r.sent_by_target),
                "members": map_to_json(&r.members),
                "direct": r.direct,
            }}),
        };
        v.to_string()
    }

    pub fn from_line(line: &str) -> anyhow::Result<Event> {
        let v: Value = serde_json::from_str(line)?;
        if let Some(r) = v.get("ready") {
            return Ok(Event::Ready {
                connected: r["connected"].as_u64().unwrap_or(0),
                failed: r["failed"].as_u64().unwrap_or(0),
            });
        }
        if let Some(s) = v.get("sample") {
            return Ok(Event::Sample {
                index: s["index"].as_u64().unwrap_or(0),
                metrics: Metrics::from_wire(&s["metrics"])?,
                conns: s["conns"].as_u64().unwrap_or(0),
                vus: s["vus"].as_u64().unwrap_or(0),
            });
        }
        if let Some(l) = v.get("log") {
            return Ok(Event::Log(l.as_str().unwrap_or_default().to_string()));
        }
        if let Some(f) = v.get("failed") {
            return Ok(Event::Failed(f.as_str().unwrap_or_default().to_string()));
        }
        if let Some(d) = v.get("done") {
            return Ok(Event::Done(Box::new(Report {
                metrics: Metrics::from_wire(&d["metrics"])?,
                sent_by_target: map_from_json(&d["sent_by_target"]),
                members: map_from_json(&d["members"]),
                direct: d["direct"].as_u64().unwrap_or(0),
            })));
        }
        anyhow::bail!("unknown event line")
    }
}

/// Shared state of a running segment.
struct Ctx {
    spec: SegmentSpec,
    rec: Recorder,
    open: AtomicU64,
    vus: AtomicU64,
    /// Stop starting iterations (time is up, or the run was aborted).
    halt: AtomicBool,
    /// Tells every connection to close.
    stop: watch::Sender<bool>,
    t0: OnceLock<Instant>,
    /// Publishes sent per target index (a channel's or a user's), measured
    /// phase only: indexed, not hashed, as this is counted per publish.
    sent: Mutex<Vec<u64>>,
    direct: AtomicU64,
    seq: AtomicU64,
    conn_counter: AtomicU64,
    pad: String,
    events: mpsc::UnboundedSender<Event>,
    http: reqwest::Client,
}

impl Ctx {
    fn scenario(&self) -> &Scenario {
        &self.spec.scenario
    }

    fn log(&self, line: String) {
        let _ = self.events.send(Event::Log(line));
    }

    /// Seconds since `Start`.
    fn elapsed(&self) -> Duration {
        self.t0.get().map(|t| t.elapsed()).unwrap_or_default()
    }

    fn warmup(&self) -> Duration {
        self.scenario().effective_warmup()
    }

    /// The end of iterations (warm-up + measured phase).
    fn end(&self) -> Duration {
        self.warmup() + self.scenario().measured()
    }

    /// The executor's clock (0 at the start of the measured phase).
    fn exec_time(&self) -> Duration {
        self.elapsed().saturating_sub(self.warmup())
    }

    fn warming(&self) -> bool {
        self.elapsed() < self.warmup()
    }

    fn running(&self) -> bool {
        !self.halt.load(Ordering::Relaxed) && self.elapsed() < self.end()
    }

    /// A globally distinct index for a connection that is not a subscriber.
    fn next_conn_index(&self) -> u64 {
        let (index, of) = self.spec.segment;
        self.conn_counter.fetch_add(1, Ordering::Relaxed) * of + index
    }

    fn url(&self, j: u64) -> &str {
        let urls = &self.scenario().urls;
        &urls[(j % urls.len() as u64) as usize]
    }

    /// Connect connection `j` and read its connection frame; records
    /// `ws_connecting`, `ws_sessions` and the `connected` check. Returns the
    /// socket and its client id.
    async fn open(&self, j: u64, query: &str) -> Option<(Ws, String)> {
        let started = Instant::now();
        let source = client::source_ip(j, self.spec.source_ips);
        let attempt = async {
            let mut ws = connect(self.url(j), query, source)
                .await
                .map_err(|e| (e.code, e.detail))?;
            let connecting = started.elapsed();
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.contains("\"type\":\"connection\"") => {
                        let id = client::json_str_field(&t, "client_id")
                            .unwrap_or_default()
                            .to_string();
                        return Ok((ws, id, connecting));
                    }
                    Some(Ok(Message::Close(f))) => {
                        let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                        return Err(("close", code.to_string()));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(("read", e.to_string())),
                    None => return Err(("eof", "closed before the connection frame".into())),
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok((ws, id, connecting))) => {
                self.rec.other(|m| {
                    m.trend("ws_connecting")
                        .record_micros(connecting.as_micros() as u64);
                    m.add("ws_sessions", 1);
                    m.check("connection frame received", true);
                });
                self.open.fetch_add(1, Ordering::Relaxed);
                Some((ws, id))
            }
            Ok(Err((code, detail))) => {
                let code = if code == "close" {
                    detail.clone()
                } else {
                    code.to_string()
                };
                self.connect_failed(&code, &detail);
                None
            }
            Err(_) => {
                self.connect_failed("connect_timeout", "timed out");
                None
            }
        }
    }

    fn connect_failed(&self, code: &str, detail: &str) {
        let first = self.rec.with(|s| {
            s.other.error(code);
            s.other.check("connection frame received", false);
            s.other.counter("errors") <= 3
        });
        if first {
            self.log(format!("connect failed: {code}: {detail}"));
        }
    }

    fn count_sent(&self, target: Option<u64>) {
        match target {
            Some(t) => {
                let mut sent = self.sent.lock();
                let i = t as usize;
                if i >= sent.len() {
                    sent.resize(i + 1, 0);
                }
                sent[i] += 1;
            }
            None => {
                self.direct.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Why a connection's read loop ended.
#[derive(PartialEq, Eq)]
enum End {
    Stopped,
    Closed,
}

/// Read a connection until `stop` (or `until`), recording what arrives;
/// frames from `outgoing` are sent on it. `measured`: deliveries count.
async fn read_loop(
    ctx: &Ctx,
    ws: &mut Ws,
    stop: &mut watch::Receiver<bool>,
    mut outgoing: Option<mpsc::Receiver<String>>,
    until: Option<Instant>,
    measured: bool,
) -> End {
    if *stop.borrow() {
        return End::Stopped;
    }
    let deadline = tokio::time::sleep_until(
        until
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
            .into(),
    );
    let stopped = async {
        tokio::select! {
            _ = stop.changed() => {}
            _ = deadline => {}
        }
    };
    tokio::pin!(stopped);
    let mut turns = Turns::default();
    loop {
        let woke = turns
            .next(ws, stopped.as_mut(), |cx| match outgoing.as_mut() {
                Some(rx) => rx.poll_recv(cx),
                None => Poll::Pending,
            })
            .await;
        match woke {
            Woke::Stop => return End::Stopped,
            Woke::Other(Some(frame)) => {
                if ws
                    .send(Message::Text(Utf8Bytes::from(frame)))
                    .await
                    .is_err()
                {
                    ctx.rec.other(|m| m.error("ws_write"));
                    return End::Closed;
                }
                ctx.rec.other(|m| m.add("ws_msgs_sent", 1));
            }
            Woke::Other(None) => outgoing = None,
            Woke::Frame(msg) => match msg {
                Some(Ok(Message::Text(t))) => match classify(&t) {
                    Frame::Delivery(sent) if measured => {
                        ctx.rec.delivery(now_micros().saturating_sub(sent))
                    }
                    Frame::Error(code) => {
                        ctx.rec.received();
                        ctx.rec.other(|m| m.error(code));
                    }
                    _ => ctx.rec.received(),
                },
                Some(Ok(Message::Close(f))) => {
                    let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                    ctx.rec.other(|m| m.error(&code.to_string()));
                    return End::Closed;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) => {
                    ctx.rec.other(|m| m.error("ws_read"));
                    return End::Closed;
                }
                None => {
                    ctx.rec.other(|m| m.error("eof"));
                    return End::Closed;
                }
            },
        }
    }
}

/// Close a connection and record its session.
async fn finish(ctx: &Ctx, mut ws: Ws, opened: Instant, end: End) {
    ctx.open.fetch_sub(1, Ordering::Relaxed);
    ctx.rec.other(|m| {
        m.trend("ws_session_duration")
            .record_micros(opened.elapsed().as_micros() as u64)
    });
    if end == End::Stopped {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
}

/// Run one segment to the end. `control` delivers `Start` (after `Ready`)
/// and possibly `Stop`.
pub async fn run_segment(
    spec: SegmentSpec,
    events: mpsc::UnboundedSender<Event>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let pad = match spec.scenario.workload() {
        Ok(Workload::PubSub { publish, .. }) => "x".repeat(publish.payload_bytes),
        _ => String::new(),
    };
    let (stop, _) = watch::channel(false);
    let ctx = Arc::new(Ctx {
        spec,
        rec: Recorder::default(),
        open: AtomicU64::new(0),
        vus: AtomicU64::new(0),
        halt: AtomicBool::new(false),
        stop,
        t0: OnceLock::new(),
        sent: Mutex::new(Vec::new()),
        direct: AtomicU64::new(0),
        seq: AtomicU64::new(0),
        conn_counter: AtomicU64::new(0),
        pad,
        events: events.clone(),
        http: reqwest::Client::new(),
    });

    // Setup.
    let mut tasks = JoinSet::new();
    let setup = Instant::now();
    let mut members = HashMap::new();
    let mut clients = Vec::new();
    let mut member_queues = Vec::new();
    let mut publishers = Vec::new();
    if let Ok(Workload::PubSub {
        subscribers,
        publish,
        ..
    }) = ctx.scenario().workload()
    {
        let (subscribers, publish) = (subscribers.clone(), publish.clone());
        let set = connect_subscribers(&ctx, &subscribers, &publish, &mut tasks).await;
        members = set.members;
        clients = set.clients;
        member_queues = set.queues;
        if publish.via == Via::Ws && ctx.scenario().executor.is_arrival_rate() {
            let n = split(publish.connections, ctx.spec.segment).count().max(1);
            for _ in 0..n {
                if let Some(q) = start_publisher(&ctx, &mut tasks).await {
                    publishers.push(q);
                }
            }
        }
    }
    let connected = ctx.open.load(Ordering::Relaxed);
    let failed = ctx.rec.with(|s| s.other.counter("errors"));
    ctx.log(format!(
        "segment {}/{}: {connected} connections set up in {:.1}s",
        ctx.spec.segment.0 + 1,
        ctx.spec.segment.1,
        setup.elapsed().as_secs_f64()
    ));
    let _ = events.send(Event::Ready { connected, failed });

    // Wait for the coordinator.
    let go = matches!(control.recv().await, Some(Control::Start));
    let _ = ctx.t0.set(Instant::now());
    if !go {
        ctx.halt.store(true, Ordering::Relaxed);
    }
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Some(c) = control.recv().await {
                if c == Control::Stop {
                    ctx.halt.store(true, Ordering::Relaxed);
                }
            }
            // The coordinator went away: stop.
            ctx.halt.store(true, Ordering::Relaxed);
        });
    }
    let sampler = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let t0 = ctx.t0.get().copied().unwrap_or_else(Instant::now);
            let mut index = 0;
            loop {
                tokio::time::sleep_until((t0 + Duration::from_secs(index + 1)).into()).await;
                let metrics = ctx.rec.take();
                let _ = ctx.events.send(Event::Sample {
                    index,
                    metrics,
                    conns: ctx.open.load(Ordering::Relaxed),
                    vus: ctx.vus.load(Ordering::Relaxed),
                });
                index += 1;
            }
        })
    };

    // The executor.
    if go {
        match ctx.scenario().workload() {
            Ok(Workload::PubSub { publish, churn, .. }) => {
                let publish = publish.clone();
                if let Some(churn) = churn {
                    let n = split(churn.connections, ctx.spec.segment).count();
                    for _ in 0..n {
                        let ctx = ctx.clone();
                        let session = churn.session;
                        tasks.spawn(async move { churner(ctx, session).await });
                    }
                }
                let targets = Targets {
                    clients: Arc::new(clients),
                    queues: Arc::new(member_queues),
                    publishers: Arc::new(publishers),
                };
                if ctx.scenario().executor.is_arrival_rate() {
                    publish_at_rate(&ctx, &publish, &targets).await;
                } else {
                    publish_vus(&ctx, &publish, &targets).await;
                }
                drop(targets);
                // In-flight deliveries.
                wait_or_halt(&ctx, ctx.scenario().drain).await;
            }
            Ok(Workload::Connections(c)) => {
                let c = c.clone();
                if ctx.scenario().executor.is_arrival_rate() {
                    connections_at_rate(&ctx, &c).await;
                } else {
                    connection_vus(&ctx, &c).await;
                }
            }
            Err(e) => {
                let _ = events.send(Event::Failed(e));
                return;
            }
        }
    }
    let _ = ctx.stop.send(true);
    let closing = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), closing)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    // The sampler may be mid-tick on another worker thread, holding metrics
    // it took but has not sent yet: wait for it to end, so its last sample
    // is sent before `Done` (the coordinator stops reading at `Done`).
    sampler.abort();
    let _ = sampler.await;
    let mut metrics = ctx.rec.take();
    metrics.seconds = ctx
        .elapsed()
        .saturating_sub(ctx.warmup())
        .as_secs_f64()
        .min(ctx.scenario().measured().as_secs_f64());
    let report = Report {
        metrics,
        sent_by_target: (ctx.sent.lock().iter().enumerate())
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| (t as u64, *n))
            .collect(),
        members,
        direct: ctx.direct.load(Ordering::Relaxed),
    };
    let _ = events.send(Event::Done(Box::new(report)));
}

async fn wait_or_halt(ctx: &Ctx, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !ctx.halt.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50).min(until - Instant::now())).await;
    }
}

struct SubscriberSet {
    members: HashMap<u64, u64>,
    clients: Vec<String>,
    queues: Vec<(u64, mpsc::Sender<String>)>,
}

/// Connect this segment's subscribers, at most [`SETUP_CONCURRENCY`] at once.
async fn connect_subscribers(
    ctx: &Arc<Ctx>,
    subs: &Subscribers,
    publish: &Publish,
    tasks: &mut JoinSet<()>,
) -> SubscriberSet {
    let range = split(subs.count, ctx.spec.segment);
    let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut pending = JoinSet::new();
    for j in range {
        let permit = gate.clone().acquire_owned().await.expect("open semaphore");
        let ctx = ctx.clone();
        let subs = subs.clone();
        let member_queue = publish.via == Via::Member;
        pending.spawn(async move {
            let _permit = permit;
            let joined = subscribe_one(&ctx, &subs, j).await;
            joined.map(|(ws, id, targets, session)| {
                let (tx, rx) = if member_queue {
                    let (tx, rx) = mpsc::channel(256);
                    (Some(tx), Some(rx))
                } else {
                    (None, None)
                };
                (ws, id, targets, tx, rx, session)
            })
        });
    }
    let mut set = SubscriberSet {
        members: HashMap::new(),
        clients: Vec::new(),
        queues: Vec::new(),
    };
    while let Some(done) = pending.join_next().await {
        let Ok(Some((mut ws, id, targets, tx, rx, session))) = done else {
            continue;
        };
        for t in &targets {
            *set.members.entry(*t).or_insert(0) += 1;
        }
        set.clients.push(id);
        if let Some(tx) = tx {
            set.queues.push((targets.first().copied().unwrap_or(0), tx));
        }
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let opened = Instant::now();
            let mut stop = ctx.stop.subscribe();
            let end = match session {
                Some(mut session) => {
                    protocol_subscriber::read_loop(&ctx, &mut ws, &mut session, &mut stop).await
                }
                None => read_loop(&ctx, &mut ws, &mut stop, rx, None, true).await,
            };
            finish(&ctx, ws, opened, end).await;
        });
    }
    set
}

/// A connected subscriber: its socket, client id (native), targets, and
/// protocol state (other protocols).
type Subscribed = (Ws, String, Vec<u64>, Option<Session>);

/// Connect subscriber `j`, join its channels; returns its targets.
async fn subscribe_one(ctx: &Ctx, subs: &Subscribers, j: u64) -> Option<Subscribed> {
    let channels = subs.channels_of(j);
    let names: Vec<String> = channels
        .iter()
        .map(|c| Scenario::channel_name(&subs.channel_prefix, *c))
        .collect();
    if subs.protocol != Protocol::Native {
        let (ws, session) = protocol_subscriber::open(ctx, subs, j, names).await?;
        return Some((ws, String::new(), channels, Some(session)));
    }
    let mut query = String::new();
    if let Some(first) = names.first() {
        query = format!("?channel_id={}", client::query_escape(first));
    }
    if let Some(u) = subs.user_of(j) {
        let secret = ctx.scenario().jwt_secret.as_deref().unwrap_or_default();
        let token = match client::token(secret, &subs.user_name(u)) {
            Ok(t) => t,
            Err(e) => {
                ctx.connect_failed("token", &e.to_string());
                return None;
            }
        };
        query = format!("?token={token}");
    }
    let (mut ws, id) = ctx.open(j, &query).await?;
    if names.len() > 1 {
        let list: Vec<String> = names[1..].iter().map(|n| format!("\"{n}\"")).collect();
        let frame = format!(
            "{{\"type\":\"subscribe\",\"channel_ids\":[{}],\"ref\":1}}",
            list.join(",")
        );
        let ok = async {
            ws.send(Message::Text(Utf8Bytes::from(frame))).await.ok()?;
            loop {
                match ws.next().await? {
                    Ok(Message::Text(t)) if t.contains("\"ref\":1") => {
                        return Some(t.contains("\"type\":\"subscribed\""))
                    }
                    Ok(Message::Text(_)) | Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => {}
                    _ => return None,
                }
            }
        };
        let ok = tokio::time::timeout(CONNECT_TIMEOUT, ok)
            .await
            .ok()
            .flatten()
            .unwrap_or(false);
        ctx.rec.other(|m| {
            m.add("ws_msgs_sent", 1);
            m.check("subscribe acknowledged", ok);
            if !ok {
                m.error("subscribe");
            }
        });
        if !ok {
            ctx.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
    }
    let targets = match subs.user_of(j) {
        Some(u) => vec![u],
        None => channels,
    };
    Some((ws, id, targets, None))
}

/// A dedicated publisher socket; returns the queue its frames go through.
async fn start_publisher(ctx: &Arc<Ctx>, tasks: &mut JoinSet<()>) -> Option<mpsc::Sender<String>> {
    let j = ctx.next_conn_index();
    let (mut ws, _) = ctx.open(j, "").await?;
    let (tx, mut rx) = mpsc::channel::<String>(8192);
    let ctx = ctx.clone();
    tasks.spawn(async move {
        let opened = Instant::now();
        let mut stop = ctx.stop.subscribe();
        let end = loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break End::Stopped,
                frame = rx.recv() => {
                    let Some(frame) = frame else { break End::Stopped };
                    let mut n = 1;
                    let mut ok = ws.feed(Message::Text(Utf8Bytes::from(frame))).await.is_ok();
                    while ok && n < 256 {
                        match rx.try_recv() {
                            Ok(f) => {
                                ok = ws.feed(Message::Text(Utf8Bytes::from(f))).await.is_ok();
                                n += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    ok = ok && ws.flush().await.is_ok();
                    ctx.rec.other(|m| m.add("ws_msgs_sent", n));
                    if !ok {
                        ctx.rec.other(|m| m.error("ws_write"));
                        break End::Closed;
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        ctx.rec.received();
                        if let Frame::Error(code) = classify(&t) {
                            ctx.rec.other(|m| m.error(code));
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                        ctx.rec.other(|m| m.error(&code.to_string()));
                        break End::Closed;
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        ctx.rec.other(|m| m.error("ws_read"));
                        break End::Closed;
                    }
                },
            }
        };
        finish(&ctx, ws, opened, end).await;
    });
    Some(tx)
}

/// Where publishes can go.
#[derive(Clone)]
struct Targets {
    clients: Arc<Vec<String>>,
    queues: Arc<Vec<(u64, mpsc::Sender<String>)>>,
    publishers: Arc<Vec<mpsc::Sender<String>>>,
}

/// One publish, built: the target index (None for a client) and the
/// frame/body.
struct Message1 {
    target: Option<u64>,
    kind: Target,
    id: String,
    data: String,
}

fn build(ctx: &Ctx, publish: &Publish, targets: &Targets, warm: bool) -> Option<Message1> {
    let subs = ctx.scenario().subscribers.as_ref()?;
    let mut rng = rand::thread_rng();
    let (target, id) = match publish.target {
        Target::Channel => {
            let c = rng.gen_range(0..subs.channels);
            (Some(c), Scenario::channel_name(&subs.channel_prefix, c))
        }
        Target::User => {
            let u = rng.gen_range(0..subs.users.max(1));
            (Some(u), subs.user_name(u))
        }
        Target::Client => {
            if targets.clients.is_empty() {
                return None;
            }
            let i = rng.gen_range(0..targets.clients.len());
            (None, targets.clients[i].clone())
        }
    };
    let seq = ctx.seq.fetch_add(1, Ordering::Relaxed);
    Some(Message1 {
        target,
        kind: publish.target,
        id,
        data: payload(now_micros(), seq, warm, &ctx.pad),
    })
}

impl Message1 {
    fn ids_field(&self) -> &'static str {
        match self.kind {
            Target::Channel => "channel_ids",
            Target::User => "root_ids",
            Target::Client => "client_ids",
        }
    }

    /// The publish frame, built in one allocation: this runs for every
    /// publish, up to the harness's highest rates.
    fn frame(&self, reference: Option<u64>) -> String {
        use std::fmt::Write as _;
        let kind = match self.kind {
            Target::Channel => "channel",
            Target::User => "user",
            Target::Client => "client",
        };
        let mut f = String::with_capacity(64 + self.id.len() + self.data.len());
        for part in ["{\"type\":\"", kind, "\",\"", self.ids_field(), "\":[\""] {
            f.push_str(part);
        }
        for part in [self.id.as_str(), "\"],\"data\":", self.data.as_str()] {
            f.push_str(part);
        }
        if let Some(r) = reference {
            let _ = write!(f, ",\"ref\":{r}");
        }
        f.push('}');
        f
    }

    fn api_path(&self) -> &'static str {
        match self.kind {
            Target::Channel => "/api/notify/channels",
            Target::User => "/api/notify/users",
            Target::Client => "/api/notify/clients",
        }
    }

    fn body(&self) -> String {
        format!(
            "{{\"{}\":[\"{}\"],\"data\":{}}}",
            self.ids_field(),
            self.id,
            self.data
        )
    }
}

/// POST one publish to the server API; true when accepted.
async fn post(ctx: &Ctx, msg: &Message1) -> bool {
    let j = ctx.next_conn_index();
    let (path, body) = match ctx.scenario().subscribers.as_ref() {
        Some(subs) if subs.protocol != Protocol::Native => {
            let event = ctx
                .scenario()
                .publish
                .as_ref()
                .map_or("bench", |p| p.event.as_str());
            protocol::api_publish(subs.protocol, event, &msg.id, &msg.data)
        }
        _ => (msg.api_path(), msg.body()),
    };
    let url = format!("{}{path}", client::http_base(ctx.url(j)));
    let key = ctx
        .spec
        .api_key
        .clone()
        .or_else(|| ctx.scenario().api_key.clone())
        .unwrap_or_default();
    let started = Instant::now();
    let result = ctx
        .http
        .post(url)
        .header("X-API-Key", key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let took = started.elapsed().as_micros() as u64;
    let ok = match &result {
        Ok(r) if r.status().is_success() => true,
        Ok(r) => {
            let code = format!("http_{}", r.status().as_u16());
            ctx.rec.other(|m| m.error(&code));
            false
        }
        Err(_) => {
            ctx.rec.other(|m| m.error("http"));
            false
        }
    };
    ctx.rec.other(|m| {
        m.trend("http_req_duration").record_micros(took);
        m.add("http_reqs", 1);
        m.check("publish accepted", ok);
    });
    ok
}

/// Open-loop publishing: iterations started at the executor's rate.
async fn publish_at_rate(ctx: &Arc<Ctx>, publish: &Publish, targets: &Targets) {
    let (_, of) = ctx.spec.segment;
    let max_vus = split(ctx.scenario().executor.max_vus(), ctx.spec.segment)
        .count()
        .max(1);
    let gate = Arc::new(Semaphore::new(max_vus));
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut due, mut last) = (0.0f64, ctx.elapsed());
    let mut rr = 0usize;
    let mut inflight = JoinSet::new();
    while ctx.running() {
        tick.tick().await;
        // A tick that fires late must not plan arrivals past the end.
        let now = ctx.elapsed().min(ctx.end());
        let rate = ctx.scenario().executor.target_at(ctx.exec_time()) / of as f64;
        due += rate * (now - last).as_secs_f64();
        last = now;
        let n = due.floor();
        due -= n;
        // The VUs carrying the iterations: the publisher connections (or the
        // members that publish), or the HTTP requests in flight.
        let vus = match publish.via {
            Via::Ws => targets.publishers.len(),
            Via::Member => targets.queues.len(),
            Via::Api => max_vus - gate.available_permits(),
        };
        ctx.vus.store(vus as u64, Ordering::Relaxed);
        for _ in 0..n as u64 {
            let warm = ctx.warming();
            let Some(msg) = build(ctx, publish, targets, warm) else {
                dropped(ctx, warm);
                continue;
            };
            match publish.via {
                Via::Ws => {
                    if targets.publishers.is_empty() {
                        dropped(ctx, warm);
                        continue;
                    }
                    rr = rr.wrapping_add(1);
                    let q = &targets.publishers[rr % targets.publishers.len()];
                    if q.try_send(msg.frame(None)).is_ok() {
                        started(ctx, &msg, warm);
                    } else {
                        dropped(ctx, warm);
                    }
                }
                Via::Member => {
                    if targets.queues.is_empty() {
                        dropped(ctx, warm);
                        continue;
                    }
                    let i = rand::thread_rng().gen_range(0..targets.queues.len());
                    let frame = member_frame(ctx, targets, i, &msg);
                    if targets.queues[i].1.try_send(frame.0).is_ok() {
                        if !warm {
                            ctx.rec.other(|m| m.add("iterations", 1));
                            ctx.count_sent(Some(frame.1));
                        }
                    } else {
                        dropped(ctx, warm);
                    }
                }
                Via::Api => {
                    let Ok(permit) = gate.clone().try_acquire_owned() else {
                        dropped(ctx, warm);
                        continue;
                    };
                    if !warm {
                        ctx.rec.other(|m| m.add("iterations", 1));
                    }
                    let ctx = ctx.clone();
                    inflight.spawn(async move {
                        let _permit = permit;
                        if post(&ctx, &msg).await && !warm {
                            ctx.count_sent(msg.target);
                        }
                    });
                }
            }
        }
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
    ctx.vus.store(0, Ordering::Relaxed);
}

/// The frame member `i` posts (to its own room), and that room.
fn member_frame(ctx: &Ctx, targets: &Targets, i: usize, msg: &Message1) -> (String, u64) {
    let subs = ctx.scenario().subscribers.as_ref().expect("pubsub");
    let room = targets.queues[i].0;
    let m = Message1 {
        target: Some(room),
        kind: Target::Channel,
        id: Scenario::channel_name(&subs.channel_prefix, room),
        data: msg.data.clone(),
    };
    (m.frame(None), room)
}

fn started(ctx: &Ctx, msg: &Message1, warm: bool) {
    if !warm {
        ctx.rec.other(|m| m.add("iterations", 1));
        ctx.count_sent(msg.target);
    }
}

fn dropped(ctx: &Ctx, warm: bool) {
    if !warm {
        ctx.rec.other(|m| m.add("dropped_iterations", 1));
    }
}

/// Closed-loop publishing: each VU publishes, waits for the acknowledgement
/// (or the API reply), thinks, repeats. VUs follow the executor's target.
async fn publish_vus(ctx: &Arc<Ctx>, publish: &Publish, targets: &Targets) {
    let publish = Arc::new(publish.clone());
    let targets = targets.clone();
    drive_vus(ctx, move |ctx, stop| {
        let publish = publish.clone();
        let targets = targets.clone();
        async move { publisher_vu(ctx, &publish, &targets, stop).await }
    })
    .await;
}

/// Keep `target_at(t)` (this segment's share) VUs running; each is one task
/// spawned by `vu` and stopped through its watch.
async fn drive_vus<F, Fut>(ctx: &Arc<Ctx>, vu: F)
where
    F: Fn(Arc<Ctx>, watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut running: Vec<watch::Sender<bool>> = Vec::new();
    let mut set = JoinSet::new();
    while ctx.running() {
        let total = ctx.scenario().executor.target_at(ctx.exec_time()).round() as u64;
        let want = split(total, ctx.spec.segment).count();
        while running.len() < want {
            let (tx, rx) = watch::channel(false);
            running.push(tx);
            set.spawn(vu(ctx.clone(), rx));
        }
        while running.len() > want {
            if let Some(tx) = running.pop() {
                let _ = tx.send(true);
            }
        }
        ctx.vus.store(running.len() as u64, Ordering::Relaxed);
        while set.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for tx in running.drain(..) {
        let _ = tx.send(true);
    }
    ctx.vus.store(0, Ordering::Relaxed);
    let all = async { while set.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .is_err()
    {
        set.abort_all();
    }
}

async fn publisher_vu(
    ctx: Arc<Ctx>,
    publish: &Publish,
    targets: &Targets,
    mut stop: watch::Receiver<bool>,
) {
    let mut ws = None;
    let opened = Instant::now();
    if publish.via == Via::Ws {
        let j = ctx.next_conn_index();
        match ctx.open(j, "").await {
            Some((w, _)) => ws = Some(w),
            None => return,
        }
    }
    let mut reference = 0u64;
    while ctx.running() && !*stop.borrow() {
        let warm = ctx.warming();
        let Some(msg) = build(&ctx, publish, targets, warm) else {
            return;
        };
        let started_at = Instant::now();
        let mut broken = false;
        let ok = match (&mut ws, publish.via) {
            (Some(ws), _) => {
                reference += 1;
                let (ok, gone) = publish_ws_acked(&ctx, ws, &msg, reference).await;
                broken = gone;
                ok
            }
            (None, Via::Api) => post(&ctx, &msg).await,
            (None, _) => {
                if targets.queues.is_empty() {
                    return;
                }
                let i = rand::thread_rng().gen_range(0..targets.queues.len());
                let (frame, room) = member_frame(&ctx, targets, i, &msg);
                let sent = targets.queues[i].1.send(frame).await.is_ok();
                if sent && !warm {
                    ctx.count_sent(Some(room));
                    ctx.rec.other(|m| m.add("iterations", 1));
                }
                if publish.think_time.is_zero() {
                    tokio::task::yield_now().await;
                }
                think(publish, &mut stop).await;
                continue;
            }
        };
        if !warm {
            ctx.rec.other(|m| {
                m.add("iterations", 1);
                m.trend("iteration_duration")
                    .record_micros(started_at.elapsed().as_micros() as u64);
            });
            if ok {
                ctx.count_sent(msg.target);
            }
        }
        if broken {
            // The socket is gone; the VU ends (its session with it).
            if let Some(ws) = ws.take() {
                finish(&ctx, ws, opened, End::Closed).await;
            }
            return;
        }
        think(publish, &mut stop).await;
    }
    if let Some(ws) = ws {
        finish(&ctx, ws, opened, End::Stopped).await;
    }
}

async fn think(publish: &Publish, stop: &mut watch::Receiver<bool>) {
    if !publish.think_time.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(publish.think_time) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Send a frame with a `ref` and wait for its acknowledgement: (accepted,
/// socket gone).
async fn publish_ws_acked(ctx: &Ctx, ws: &mut Ws, msg: &Message1, reference: u64) -> (bool, bool) {
    if ws
        .send(Message::Text(Utf8Bytes::from(msg.frame(Some(reference)))))
        .await
        .is_err()
    {
        ctx.rec.other(|m| m.error("ws_write"));
        return (false, true);
    }
    ctx.rec.other(|m| m.add("ws_msgs_sent", 1));
    // `"ref":1` must not match `"ref":12`.
    let needles = [
        format!("\"ref\":{reference},"),
        format!("\"ref\":{reference}}}"),
    ];
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    ctx.rec.received();
                    if !needles.iter().any(|n| t.contains(n.as_str())) {
                        continue;
                    }
                    return match classify(&t) {
                        Frame::Error(code) => {
                            ctx.rec.other(|m| m.error(code));
                            (false, false)
                        }
                        _ => (true, false),
                    };
                }
                Some(Ok(Message::Close(f))) => {
                    let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                    ctx.rec.other(|m| m.error(&code.to_string()));
                    return (false, true);
                }
                Some(Ok(_)) => {}
                _ => {
                    ctx.rec.other(|m| m.error("ws_read"));
                    return (false, true);
                }
            }
        }
    };
    let (ok, gone) = tokio::time::timeout(CONNECT_TIMEOUT, wait)
        .await
        .unwrap_or((false, false));
    ctx.rec.other(|m| m.check("publish accepted", ok));
    (ok, gone)
}

/// A background connection: connect, hold a jittered session, close, repeat.
async fn churner(ctx: Arc<Ctx>, session: Duration) {
    let subs = ctx.scenario().subscribers.clone();
    let mut stop = ctx.stop.subscribe();
    while ctx.running() && !*stop.borrow() {
        let j = ctx.next_conn_index();
        let query = match &subs {
            Some(s) if s.users == 0 => {
                let c = rand::thread_rng().gen_range(0..s.channels);
                format!(
                    "?channel_id={}",
                    Scenario::channel_name(&s.channel_prefix, c)
                )
            }
            _ => String::new(),
        };
        let Some((mut ws, _)) = ctx.open(j, &query).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let opened = Instant::now();
        let jitter = rand::thread_rng().gen_range(0.5..1.5);
        let until = Instant::now() + session.mul_f64(jitter);
        let end = read_loop(&ctx, &mut ws, &mut stop, None, Some(until), false).await;
        ctx.rec.other(|m| m.add("churn_sessions", 1));
        finish(&ctx, ws, opened, end).await;
    }
}

/// The query for connection `j` of a connection workload.
fn connection_query(c: &Connections, j: u64) -> String {
    if c.channels == 0 || c.subscribe {
        String::new()
    } else {
        format!(
            "?channel_id={}",
            Scenario::channel_name(&c.channel_prefix, j % c.channels)
        )
    }
}

/// One connection iteration: connect, hold (`hold`, or until `stop`), close.
async fn connection_iteration(
    ctx: &Ctx,
    c: &Connections,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let j = ctx.next_conn_index();
    let started = Instant::now();
    let Some((mut ws, _)) = ctx.open(j, &connection_query(c, j)).await else {
        return false;
    };
    if c.subscribe && c.channels > 0 {
        let channel = Scenario::channel_name(&c.channel_prefix, j % c.channels);
        if !subscribe_and_wait(ctx, &mut ws, &channel, started).await {
            finish(ctx, ws, started, End::Stopped).await;
            return true;
        }
    }
    let until = c.hold.map(|h| Instant::now() + h);
    let end = read_loop(ctx, &mut ws, stop, None, until, false).await;
    finish(ctx, ws, started, end).await;
    ctx.rec.other(|m| {
        m.add("iterations", 1);
        m.trend("iteration_duration")
            .record_micros(started.elapsed().as_micros() as u64);
    });
    true
}

/// Send a `subscribe` to `channel` and wait for its `subscribed` reply;
/// records `subscribe_ack` (from the frame to the reply) and
/// `connect_subscribe` (from the start of the connect), or an error.
async fn subscribe_and_wait(ctx: &Ctx, ws: &mut Ws, channel: &str, started: Instant) -> bool {
    let frame = format!(r#"{{"type":"subscribe","channel_ids":["{channel}"],"ref":1}}"#);
    let sent = Instant::now();
    if ws.send(Message::Text(frame.into())).await.is_err() {
        ctx.rec.other(|m| m.error("subscribe_send"));
        return false;
    }
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"type\":\"subscribed\"") => {
                    return Ok(())
                }
                Some(Ok(Message::Text(t))) if t.contains("\"type\":\"error\"") => {
                    return Err("subscribe_refused")
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    return Err("subscribe_closed")
                }
                Some(Ok(_)) => continue,
            }
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, wait).await {
        Ok(Ok(())) => {
            ctx.rec.other(|m| {
                m.trend("subscribe_ack")
                    .record_micros(sent.elapsed().as_micros() as u64);
                m.trend("connect_subscribe")
                    .record_micros(started.elapsed().as_micros() as u64);
                m.add("subscribes", 1);
            });
            true
        }
        Ok(Err(code)) => {
            ctx.rec.other(|m| m.error(code));
            false
        }
        Err(_) => {
            ctx.rec.other(|m| m.error("subscribe_timeout"));
            false
        }
    }
}

/// Connection VUs: each VU is one connection (held, or cycled with `hold`).
async fn connection_vus(ctx: &Arc<Ctx>, c: &Connections) {
    let c = Arc::new(c.clone());
    drive_vus(ctx, move |ctx, mut stop| {
        let c = c.clone();
        async move {
            // drive_vus stops every VU (through `stop`) before the run ends.
            while !*stop.borrow() && ctx.running() {
                if !connection_iteration(&ctx, &c, &mut stop).await {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
    .await;
}

/// Connections started at a rate (connect rate); each holds `hold` (default
/// none) then closes.
async fn connections_at_rate(ctx: &Arc<Ctx>, c: &Connections) {
    let (_, of) = ctx.spec.segment;
    let max_vus = split(ctx.scenario().executor.max_vus(), ctx.spec.segment)
        .count()
        .max(1);
    let gate = Arc::new(Semaphore::new(max_vus));
    let c = Arc::new(Connections {
        hold: Some(c.hold.unwrap_or(Duration::ZERO)),
        ..c.clone()
    });
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut due, mut last) = (0.0f64, ctx.elapsed());
    let mut set = JoinSet::new();
    while ctx.running() {
        tick.tick().await;
        // A tick that fires late must not plan arrivals past the end.
        let now = ctx.elapsed().min(ctx.end());
        due += ctx.scenario().executor.target_at(ctx.exec_time()) / of as f64
            * (now - last).as_secs_f64();
        last = now;
        let n = due.floor();
        due -= n;
        for _ in 0..n as u64 {
            let Ok(permit) = gate.clone().try_acquire_owned() else {
                dropped(ctx, false);
                continue;
            };
            let ctx = ctx.clone();
            let c = c.clone();
            set.spawn(async move {
                let _permit = permit;
                let mut stop = ctx.stop.subscribe();
                connection_iteration(&ctx, &c, &mut stop).await;
            });
        }
        ctx.vus.store(
            (max_vus - gate.available_permits()) as u64,
            Ordering::Relaxed,
        );
        while set.try_join_next().is_some() {}
    }
    let all = async { while set.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(10), all).await;
    ctx.vus.store(0, Ordering::Relaxed);
}
