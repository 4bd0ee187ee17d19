//! The engine: connect virtual users, drive publishes at the executor's rate,
//! measure deliveries end to end, and collect metrics.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use rand::Rng;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::metrics::Metrics;
use crate::scenario::{Scenario, Via, Workload};

type Ws = WebSocketStream<TcpStream>;

/// Options from the command line that apply to a run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub api_key: Option<String>,
    /// Local addresses to spread client sockets over (more 4-tuples).
    pub source_ips: Vec<IpAddr>,
    pub quiet: bool,
    /// This process runs `segment` of `segments` (worker processes).
    pub segment: (u64, u64),
}

/// Counters the progress line and the time series read while running.
#[derive(Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub errors: AtomicU64,
    pub connected: AtomicU64,
    stop: AtomicBool,
}

/// One sample per second for the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    pub t: f64,
    pub sent_per_s: u64,
    pub received_per_s: u64,
    pub p99_ms: f64,
}

/// Everything a run produced.
pub struct Outcome {
    pub metrics: Metrics,
    pub samples: Vec<Sample>,
}

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(16 * 1024)
}

/// `ws://host:port[/…]` → socket address (loopback IP literals only).
pub fn socket_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow::anyhow!("{url}: only ws:// URLs are supported"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|_| anyhow::anyhow!("{url}: need an IP address and port"))?;
    if !addr.ip().is_loopback() {
        anyhow::bail!("{url}: load is only sent to loopback addresses (127.0.0.0/8, ::1)");
    }
    Ok(addr)
}

/// Open one WebSocket to `base` (`ws://host:port`) with a query string.
async fn connect(base: &str, query: &str, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let addr = socket_addr(base)?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let url = format!("{}/websocket{}", base.trim_end_matches('/'), query);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(client_config())).await?;
    Ok(ws)
}

/// The `"t":` send timestamp of a delivered payload, found without parsing JSON.
pub fn sent_at(text: &str) -> Option<u64> {
    let i = text.find("\"t\":")? + 4;
    let digits: &str = &text[i..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

struct Plan {
    /// Channel names subscribers join; a publish goes to one of them.
    channels: Vec<String>,
    /// Members per channel.
    members: u64,
    payload: usize,
    via: Via,
    publishers: u64,
}

fn plan(workload: &Workload, segment: (u64, u64)) -> Option<Plan> {
    let (prefix, channels, members, payload, via, publishers) = match workload {
        Workload::Fanout {
            subscribers,
            payload_bytes,
            publish_via,
            publishers,
            history,
        } => (
            if *history { "h:" } else { "b:" },
            1,
            *subscribers,
            *payload_bytes,
            *publish_via,
            *publishers,
        ),
        Workload::Targeted {
            subscribers,
            payload_bytes,
            publish_via,
            publishers,
            history,
        } => (
            if *history { "h:" } else { "b:" },
            *subscribers,
            1,
            *payload_bytes,
            *publish_via,
            *publishers,
        ),
        Workload::Chat {
            rooms,
            members,
            payload_bytes,
        } => ("chat:", *rooms, *members, *payload_bytes, Via::Ws, 1),
        _ => return None,
    };
    let (index, of) = segment;
    Some(Plan {
        channels: (0..channels)
            .map(|i| format!("{prefix}bench-{i}"))
            .collect(),
        // Each worker process holds its share of every channel's members.
        members: members / of + u64::from(index < members % of),
        payload,
        via,
        publishers: (publishers / of).max(1),
    })
}

/// Run a scenario and collect its metrics.
pub async fn run(scenario: &Scenario, options: &Options) -> anyhow::Result<Outcome> {
    match &scenario.workload {
        Workload::Idle { node_pid } => idle(scenario, options, *node_pid).await,
        Workload::Connect {} => connect_loop(scenario, options).await,
        workload => {
            let plan = plan(workload, options.segment).expect("a publishing workload");
            publish_run(scenario, options, plan).await
        }
    }
}

fn pick<T>(items: &[T], i: usize) -> Option<&T> {
    (!items.is_empty()).then(|| &items[i % items.len()])
}

async fn publish_run(
    scenario: &Scenario,
    options: &Options,
    plan: Plan,
) -> anyhow::Result<Outcome> {
    let live = Arc::new(Live::default());
    let collected = Arc::new(Mutex::new(Metrics::default()));
    let mut setup = Metrics::default();

    // Subscribers: `members` per channel, spread over URLs and source IPs.
    let mut readers = Vec::new();
    let mut i = 0usize;
    let connect_started = Instant::now();
    for channel in &plan.channels {
        for _ in 0..plan.members {
            let base = scenario.urls[i % scenario.urls.len()].clone();
            let source = pick(&options.source_ips, i).copied();
            let started = Instant::now();
            let mut ws = match connect(&base, &format!("?channel_id={channel}"), source).await {
                Ok(ws) => ws,
                Err(e) => {
                    setup.add("errors", 1);
                    if !options.quiet {
                        eprintln!("connect failed: {e}");
                    }
                    continue;
                }
            };
            setup
                .trend("ws_connecting")
                .record_micros(started.elapsed().as_micros() as u64);
            // The connection frame.
            let _ = ws.next().await;
            setup.add("ws_sessions", 1);
            live.connected.fetch_add(1, Ordering::Relaxed);
            readers.push(tokio::spawn(subscriber(
                ws,
                live.clone(),
                collected.clone(),
            )));
            i += 1;
        }
    }
    if !options.quiet {
        eprintln!(
            "{} subscribers connected in {:.1}s",
            live.connected.load(Ordering::Relaxed),
            connect_started.elapsed().as_secs_f64()
        );
    }
    // Let the node finish subscribing (relay interest is asynchronous).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..plan.publishers {
        let base = scenario.urls[p as usize % scenario.urls.len()].clone();
        let ctx = PublisherCtx {
            base,
            api_key: options.api_key.clone().or(scenario.api_key.clone()),
            channels: plan.channels.clone(),
            payload: "x".repeat(plan.payload),
            share: (p, plan.publishers),
            executor: scenario.executor.clone(),
            warmup: scenario.warmup,
            duration: scenario.duration,
            live: live.clone(),
            seq: seq.clone(),
            started,
        };
        publishers.push(match plan.via {
            Via::Ws => tokio::spawn(publish_ws(ctx)),
            Via::Api => tokio::spawn(publish_api(ctx)),
        });
    }
    tokio::time::sleep(scenario.warmup).await;
    let samples = progress(scenario, options, &live, &collected, Instant::now()).await;
    for p in publishers {
        if let Ok(Err(e)) = p.await {
            setup.add("errors", 1);
            if !options.quiet {
                eprintln!("publisher failed: {e}");
            }
        }
    }
    // Wait for in-flight deliveries.
    tokio::time::sleep(scenario.drain).await;
    live.stop.store(true, Ordering::Release);
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
    }
    let mut metrics = collected.lock().clone();
    metrics.merge(&setup);
    let sent = live.sent.load(Ordering::Relaxed);
    let received = live.received.load(Ordering::Relaxed);
    let expected = sent * plan.members;
    metrics.seconds = scenario.duration.as_secs_f64();
    metrics.add("iterations", sent);
    metrics.add("ws_msgs_sent", sent);
    metrics.add("deliveries_expected", expected);
    metrics.add("deliveries_received", received);
    metrics.rate("delivery_loss", expected.saturating_sub(received), expected);
    // More than expected means something was delivered twice.
    metrics.add("deliveries_duplicated", received.saturating_sub(expected));
    metrics.add("errors", live.errors.load(Ordering::Relaxed));
    let dropped = expected_iterations(scenario).saturating_sub(sent);
    metrics.add("dropped_iterations", dropped);
    Ok(Outcome { metrics, samples })
}

fn expected_iterations(scenario: &Scenario) -> u64 {
    if !scenario.executor.is_arrival_rate() {
        return 0;
    }
    let mut total = 0.0;
    let step = Duration::from_millis(100);
    let mut t = Duration::ZERO;
    while t < scenario.duration {
        total += scenario.executor.target_at(t) as f64 * step.as_secs_f64();
        t += step;
    }
    total as u64
}

/// Reads deliveries, timing each from its `"t"` stamp.
async fn subscriber(mut ws: Ws, live: Arc<Live>, collected: Arc<Mutex<Metrics>>) {
    let mut local = Metrics::default();
    let opened = Instant::now();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
        if live.stop.load(Ordering::Acquire) {
            break;
        }
        match next {
            Err(_) => continue,
            Ok(Some(Ok(Message::Text(text)))) => {
                if text.contains("\"w\":1,") {
                    continue;
                }
                if let Some(t) = sent_at(&text) {
                    local
                        .trend("delivery_latency")
                        .record_micros(now_micros().saturating_sub(t));
                    live.received.fetch_add(1, Ordering::Relaxed);
                }
                local.add("ws_msgs_received", 1);
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                live.errors.fetch_add(1, Ordering::Relaxed);
                local.add("ws_closed_by_server", 1);
                break;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    local
        .trend("ws_session_duration")
        .record_micros(opened.elapsed().as_micros() as u64);
    let _ = ws.close(None).await;
    collected.lock().merge(&local);
}

struct PublisherCtx {
    base: String,
    api_key: Option<String>,
    channels: Vec<String>,
    payload: String,
    /// (index, count) of this publisher among all.
    share: (u64, u64),
    executor: crate::scenario::Executor,
    /// Publishes before this are marked `"w":1` and not measured.
    warmup: Duration,
    duration: Duration,
    live: Arc<Live>,
    seq: Arc<AtomicU64>,
    started: Instant,
}

impl PublisherCtx {
    /// How many publishes this publisher owes by now (integral of its rate).
    fn owed(&self, due: &mut f64, last: &mut Duration, now: Duration) -> u64 {
        let rate =
            self.executor.target_at(now.saturating_sub(self.warmup)) as f64 / self.share.1 as f64;
        *due += rate * (now - *last).as_secs_f64();
        *last = now;
        let n = due.floor();
        *due -= n;
        n as u64
    }

    fn warming(&self) -> bool {
        self.started.elapsed() < self.warmup
    }

    fn end(&self) -> Duration {
        self.warmup + self.duration
    }

    /// Count a sent publish unless it was a warm-up one.
    fn sent(&self, n: u64, warm: bool) {
        if !warm {
            self.live.sent.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn data(&self) -> (String, String) {
        let channel = if self.channels.len() == 1 {
            self.channels[0].clone()
        } else {
            self.channels[rand::thread_rng().gen_range(0..self.channels.len())].clone()
        };
        let s = self.seq.fetch_add(1, Ordering::Relaxed);
        let warm = if self.warming() { "\"w\":1," } else { "" };
        let data = format!(
            "{{{warm}\"t\":{},\"s\":{},\"p\":\"{}\"}}",
            now_micros(),
            s,
            self.payload
        );
        (channel, data)
    }
}

async fn publish_ws(ctx: PublisherCtx) -> anyhow::Result<()> {
    let mut ws = connect(
        &ctx.base,
        &format!("?channel_id=publisher-{}", ctx.share.0),
        None,
    )
    .await?;
    let _ = ws.next().await;
    let (mut sink, mut stream) = ws.split();
    // Errors (policy, rate limit) come back on the stream.
    let live = ctx.live.clone();
    let errors = tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            if m.is_text() || m.is_close() {
                live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let (mut due, mut last) = (0.0, Duration::ZERO);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while ctx.started.elapsed() < ctx.end() {
        tick.tick().await;
        let n = ctx.owed(&mut due, &mut last, ctx.started.elapsed());
        let warm = ctx.warming();
        for _ in 0..n {
            let (channel, data) = ctx.data();
            let frame =
                format!("{{\"type\":\"channel\",\"channel_ids\":[\"{channel}\"],\"data\":{data}}}");
            sink.feed(Message::Text(Utf8Bytes::from(frame))).await?;
        }
        if n > 0 {
            sink.flush().await?;
            ctx.sent(n, warm);
        }
    }
    errors.abort();
    Ok(())
}

async fn publish_api(ctx: PublisherCtx) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!(
        "{}/api/notify/channels",
        ctx.base
            .replacen("ws://", "http://", 1)
            .trim_end_matches('/')
    );
    let key = ctx.api_key.clone().unwrap_or_default();
    let (mut due, mut last) = (0.0, Duration::ZERO);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while ctx.started.elapsed() < ctx.end() {
        tick.tick().await;
        let n = ctx.owed(&mut due, &mut last, ctx.started.elapsed());
        for _ in 0..n {
            let warm = ctx.warming();
            let (channel, data) = ctx.data();
            let body = format!("{{\"channel_ids\":[\"{channel}\"],\"data\":{data}}}");
            let ok = http
                .post(&url)
                .header("X-API-Key", &key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                ctx.sent(1, warm);
            } else {
                ctx.live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// Print a live progress line each second until the measured phase ends;
/// returns per-second samples.
async fn progress(
    scenario: &Scenario,
    options: &Options,
    live: &Live,
    collected: &Mutex<Metrics>,
    started: Instant,
) -> Vec<Sample> {
    let _ = collected;
    let mut samples = Vec::new();
    let (mut last_sent, mut last_received) = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while started.elapsed() < scenario.duration {
        tick.tick().await;
        let sent = live.sent.load(Ordering::Relaxed);
        let received = live.received.load(Ordering::Relaxed);
        let sample = Sample {
            t: started.elapsed().as_secs_f64(),
            sent_per_s: sent - last_sent,
            received_per_s: received - last_received,
            p99_ms: 0.0,
        };
        (last_sent, last_received) = (sent, received);
        if !options.quiet {
            eprint!(
                "\rrunning [{:>4.0}s/{:.0}s] conns={} sent/s={} received/s={} errors={}   ",
                sample.t,
                scenario.duration.as_secs_f64(),
                live.connected.load(Ordering::Relaxed),
                sample.sent_per_s,
                sample.received_per_s,
                live.errors.load(Ordering::Relaxed)
            );
        }
        samples.push(sample);
    }
    if !options.quiet {
        eprintln!();
    }
    samples
}

/// Hold idle connections; report the node's memory per connection.
async fn idle(
    scenario: &Scenario,
    options: &Options,
    node_pid: Option<u32>,
) -> anyhow::Result<Outcome> {
    let target = scenario.executor.peak();
    let (index, of) = options.segment;
    let mine = target / of + u64::from(index < target % of);
    let rss_before = node_pid.and_then(rss_bytes);
    let mut metrics = Metrics::default();
    let mut conns = Vec::with_capacity(mine as usize);
    let started = Instant::now();
    for i in 0..mine as usize {
        let base = &scenario.urls[i % scenario.urls.len()];
        let source = pick(&options.source_ips, i).copied();
        let t = Instant::now();
        match connect(base, "", source).await {
            Ok(mut ws) => {
                let _ = ws.next().await;
                metrics
                    .trend("ws_connecting")
                    .record_micros(t.elapsed().as_micros() as u64);
                metrics.add("ws_sessions", 1);
                conns.push(ws);
            }
            Err(e) => {
                metrics.add("errors", 1);
                if !options.quiet && metrics.counter("errors") < 5 {
                    eprintln!("connect failed: {e}");
                }
            }
        }
        if !options.quiet && i % 1000 == 999 {
            eprint!("\r{} idle connections", i + 1);
        }
    }
    if !options.quiet {
        eprintln!(
            "\r{} idle connections open in {:.1}s",
            conns.len(),
            started.elapsed().as_secs_f64()
        );
    }
    tokio::time::sleep(scenario.duration).await;
    if let (Some(before), Some(after)) = (rss_before, node_pid.and_then(rss_bytes)) {
        let per = (after.saturating_sub(before)) as f64 / conns.len().max(1) as f64;
        metrics.gauge("node_rss_bytes", after as f64);
        metrics.gauge("node_rss_per_connection_bytes", per);
    }
    metrics.seconds = scenario.duration.as_secs_f64();
    drop(conns);
    Ok(Outcome {
        metrics,
        samples: Vec::new(),
    })
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Connect, read the connection frame, close; `vus` loops in parallel.
async fn connect_loop(scenario: &Scenario, options: &Options) -> anyhow::Result<Outcome> {
    let vus = scenario.executor.peak().max(1);
    let (index, of) = options.segment;
    let mine = (vus / of + u64::from(index < vus % of)).max(1);
    let started = Instant::now();
    let live = Arc::new(Live::default());
    let mut tasks = Vec::new();
    for v in 0..mine {
        let scenario_urls = scenario.urls.clone();
        let sources = options.source_ips.clone();
        let duration = scenario.duration;
        let live = live.clone();
        tasks.push(tokio::spawn(async move {
            let mut m = Metrics::default();
            let mut i = v as usize;
            while started.elapsed() < duration {
                let base = &scenario_urls[i % scenario_urls.len()];
                let source = pick(&sources, i).copied();
                i += mine as usize;
                let t = Instant::now();
                match connect(base, "", source).await {
                    Ok(mut ws) => {
                        let first = ws.next().await;
                        if matches!(first, Some(Ok(Message::Text(_)))) {
                            m.trend("ws_connecting")
                                .record_micros(t.elapsed().as_micros() as u64);
                            m.add("ws_sessions", 1);
                            live.connected.fetch_add(1, Ordering::Relaxed);
                        } else {
                            m.add("errors", 1);
                        }
                        let _ = ws.close(None).await;
                        // Read the close reply so the server side ends cleanly.
                        let _ = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
                    }
                    Err(_) => m.add("errors", 1),
                }
            }
            m
        }));
    }
    let mut metrics = Metrics::default();
    for t in tasks {
        if let Ok(m) = t.await {
            metrics.merge(&m);
        }
    }
    metrics.seconds = started.elapsed().as_secs_f64();
    let _ = options;
    Ok(Outcome {
        metrics,
        samples: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_send_stamp_without_parsing() {
        assert_eq!(sent_at("{\"t\":1234,\"s\":1,\"p\":\"x\"}"), Some(1234));
        assert_eq!(
            sent_at("{\"type\":\"publication\",\"data\":{\"t\":77}}"),
            Some(77)
        );
        assert_eq!(sent_at("{\"x\":1}"), None);
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(socket_addr("ws://127.0.0.1:8000").is_ok());
        assert!(socket_addr("ws://localhost:8000/").is_ok());
        assert!(socket_addr("ws://10.0.0.1:8000").is_err());
        assert!(socket_addr("http://127.0.0.1:8000").is_err());
    }
}
