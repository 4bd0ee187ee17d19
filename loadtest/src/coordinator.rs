//! Runs a scenario: one segment in-process, or `workers` segments in worker
//! processes (this binary re-executed as `pubmesh-load worker`), started
//! together once every segment has connected; merges their streams into one
//! set of metrics, per-second samples and the live progress line, and stops
//! the run early when an `abortOnFail` threshold fails.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::engine::{run_segment, Control, Event, Report, SegmentSpec};
use crate::metrics::{evaluate, Metric, Metrics, ThresholdResult, Trend};
use crate::scenario::{Scenario, Target, Via, Workload};
use crate::threshold::Stat;

/// Connections one process keeps at most (the open-file cap is 20,000).
pub const CONNECTIONS_PER_PROCESS: u64 = 18_000;
/// Connections per source address before another 127.0.0.x is used.
pub const CONNECTIONS_PER_SOURCE_IP: u64 = 15_000;

/// Command-line choices that shape a run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Worker processes; 0 = from the scenario, or from the connection count.
    pub workers: u64,
    /// Source addresses; 0 = from the scenario, or from the connection count.
    pub source_ips: u64,
    pub api_key: Option<String>,
    pub quiet: bool,
}

/// One second of the run, all segments together.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the measured phase began (negative in warm-up).
    pub t: f64,
    pub sent_per_s: u64,
    pub delivered_per_s: u64,
    pub received_per_s: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub connections: u64,
    pub vus: u64,
    pub errors: u64,
    /// Median and worst WebSocket connect time of the connections opened in
    /// that second (0 when none opened).
    pub connect_p50_ms: f64,
    pub connect_max_ms: f64,
}

/// Everything a run produced.
pub struct Outcome {
    pub metrics: Metrics,
    pub samples: Vec<Sample>,
    pub results: Vec<ThresholdResult>,
    /// Stopped early by an `abortOnFail` threshold.
    pub aborted: bool,
    pub workers: u64,
}

/// How many worker processes and source addresses a run uses.
pub fn plan(scenario: &Scenario, options: &RunOptions) -> (u64, u64) {
    let peak = scenario.peak_connections();
    let workers = match (options.workers, scenario.workers) {
        (0, 0) => peak.div_ceil(CONNECTIONS_PER_PROCESS).max(1),
        (0, w) => w,
        (w, _) => w,
    };
    let ips = match (options.source_ips, scenario.source_ips) {
        (0, 0) => peak.div_ceil(CONNECTIONS_PER_SOURCE_IP).max(1),
        (0, n) => n,
        (n, _) => n,
    };
    (workers, ips)
}

struct SegmentLink {
    control: mpsc::UnboundedSender<Control>,
}

fn start_in_process(spec: SegmentSpec, events: mpsc::UnboundedSender<(u64, Event)>) -> SegmentLink {
    let index = spec.segment.0;
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(run_segment(spec, ev_tx, ctl_rx));
    tokio::spawn(async move {
        while let Some(e) = ev_rx.recv().await {
            if events.send((index, e)).is_err() {
                break;
            }
        }
    });
    SegmentLink { control: ctl_tx }
}

fn start_worker(
    spec: SegmentSpec,
    threads: usize,
    events: mpsc::UnboundedSender<(u64, Event)>,
) -> anyhow::Result<SegmentLink> {
    let index = spec.segment.0;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("worker")
        .arg("--threads")
        .arg(threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let first = serde_json::to_string(&spec)? + "\n";
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Control>();
    tokio::spawn(async move {
        if stdin.write_all(first.as_bytes()).await.is_err() {
            return;
        }
        while let Some(c) = ctl_rx.recv().await {
            let line = match c {
                Control::Start => "start\n",
                Control::Stop => "stop\n",
            };
            if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut done = false;
        while let Ok(Some(line)) = lines.next_line().await {
            match Event::from_line(&line) {
                Ok(e) => {
                    done |= matches!(e, Event::Done(_));
                    if events.send((index, e)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = events.send((index, Event::Failed(format!("bad worker line: {e}"))));
                    break;
                }
            }
        }
        let status = child.wait().await;
        if !done {
            let _ = events.send((
                index,
                Event::Failed(format!("worker {} exited: {status:?}", index + 1)),
            ));
        }
    });
    Ok(SegmentLink { control: ctl_tx })
}

#[derive(Default)]
struct Bucket {
    metrics: Metrics,
    reported: u64,
    conns: u64,
    vus: u64,
}

/// Run a scenario to the end (or to an abort) and evaluate its thresholds.
pub async fn run(scenario: &Scenario, options: &RunOptions) -> anyhow::Result<Outcome> {
    let (workers, source_ips) = plan(scenario, options);
    let node_pid = match scenario.workload() {
        Ok(Workload::Connections(c)) => c.node_pid,
        _ => None,
    };
    // Before any connection exists, so connections opened during setup count.
    let rss_before = node_pid.and_then(rss_bytes);
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mut links = Vec::new();
    let spec = |i| SegmentSpec {
        scenario: scenario.clone(),
        segment: (i, workers),
        api_key: options.api_key.clone(),
        source_ips,
    };
    if workers <= 1 {
        links.push(start_in_process(spec(0), ev_tx.clone()));
    } else {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (cores / workers as usize).max(1);
        for i in 0..workers {
            links.push(start_worker(spec(i), threads, ev_tx.clone())?);
        }
    }
    drop(ev_tx);
    let n = links.len() as u64;
    let say = |line: &str| {
        if !options.quiet {
            eprintln!("{line}");
        }
    };
    say(&format!(
        "pubmesh-load: {} — {} segment(s), {} source address(es), peak {} connections",
        scenario.name,
        n,
        source_ips,
        scenario.peak_connections()
    ));

    // Setup: every segment connects, then all start together.
    let setup = Instant::now();
    let mut ready = 0;
    let mut connected_at_start = 0;
    let mut total = Metrics::default();
    let mut reports: Vec<Report> = Vec::new();
    let fail = |links: &[SegmentLink], why: String| {
        for l in links {
            let _ = l.control.send(Control::Stop);
        }
        anyhow::anyhow!(why)
    };
    while ready < n {
        match ev_rx.recv().await {
            Some((_, Event::Ready { connected, .. })) => {
                ready += 1;
                connected_at_start += connected;
            }
            Some((_, Event::Log(line))) => say(&line),
            Some((_, Event::Failed(why))) => return Err(fail(&links, why)),
            Some((_, Event::Sample { metrics, .. })) => total.merge(&metrics),
            Some((_, Event::Done(r))) => {
                reports.push(*r);
                ready += 1;
            }
            None => return Err(anyhow::anyhow!("every segment ended during setup")),
        }
    }
    say(&format!(
        "setup done in {:.1}s",
        setup.elapsed().as_secs_f64()
    ));
    for l in &links {
        let _ = l.control.send(Control::Start);
    }

    let warmup = scenario.effective_warmup().as_secs_f64();
    let measured = scenario.measured().as_secs_f64();
    let span = Span {
        warmup,
        measured,
        drain: match scenario.workload() {
            Ok(Workload::PubSub { .. }) => scenario.drain.as_secs_f64(),
            _ => 0.0,
        },
    };
    if !options.quiet && warmup > 0.0 {
        // The first per-second line comes a second in: say the warm-up began.
        eprintln!("warm-up [  0.0s/{warmup:.1}s] conns={connected_at_start} (not measured)");
    }
    let thresholds = scenario.parsed_thresholds();
    let abort_on: Vec<_> = thresholds
        .iter()
        .filter(|(_, t)| t.abort_on_fail)
        .cloned()
        .collect();
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut buckets: BTreeMap<u64, Bucket> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut aborted = false;
    let mut peak_conns = 0u64;
    let mut peak_vus = 0u64;
    let mut rss_peak = 0u64;
    let mut progress_len = 0;
    while (reports.len() as u64) < n {
        let Some((_, event)) = ev_rx.recv().await else {
            break;
        };
        match event {
            Event::Sample {
                index,
                metrics,
                conns,
                vus,
            } => {
                total.merge(&metrics);
                let b = buckets.entry(index).or_default();
                b.metrics.merge(&metrics);
                b.reported += 1;
                b.conns += conns;
                b.vus += vus;
                // Close every complete second (in order).
                while let Some(entry) = buckets.first_entry() {
                    if entry.get().reported < n - reports.len() as u64 {
                        break;
                    }
                    let (i, b) = (*entry.key(), entry.remove());
                    let sample = to_sample(i, &span, &b);
                    peak_conns = peak_conns.max(sample.connections);
                    peak_vus = peak_vus.max(sample.vus);
                    if let Some(rss) = node_pid.and_then(rss_bytes) {
                        rss_peak = rss_peak.max(rss);
                    }
                    if !options.quiet {
                        let line = progress_line(&sample, &span, &total);
                        progress_len = progress(&line, tty, progress_len);
                    }
                    samples.push(sample);
                    if !aborted && !abort_on.is_empty() {
                        total.seconds = (started.elapsed().as_secs_f64() - warmup).max(0.001);
                        let failed: Vec<_> = evaluate(&total, &abort_on)
                            .into_iter()
                            .filter(|r| r.observed.is_some() && !r.ok)
                            .collect();
                        if let Some(r) = failed.first() {
                            aborted = true;
                            if !options.quiet {
                                eprintln!(
                                    "\nthreshold {} {} failed (abortOnFail): stopping",
                                    r.metric, r.threshold.source
                                );
                            }
                            for l in &links {
                                let _ = l.control.send(Control::Stop);
                            }
                        }
                    }
                }
            }
            Event::Log(line) => {
                if !options.quiet {
                    if progress_len > 0 && tty {
                        eprintln!();
                        progress_len = 0;
                    }
                    eprintln!("{line}");
                }
            }
            Event::Done(r) => reports.push(*r),
            Event::Failed(why) => return Err(fail(&links, why)),
            Event::Ready { .. } => {}
        }
    }
    if !options.quiet && tty && progress_len > 0 {
        eprintln!();
    }
    for (i, b) in std::mem::take(&mut buckets) {
        let sample = to_sample(i, &span, &b);
        peak_conns = peak_conns.max(sample.connections);
        samples.push(sample);
    }

    // Merge what remained and do the delivery accounting.
    let mut members: HashMap<u64, u64> = HashMap::new();
    let mut sent: HashMap<u64, u64> = HashMap::new();
    let mut direct = 0;
    for r in &reports {
        total.merge(&r.metrics);
        for (k, v) in &r.members {
            *members.entry(*k).or_insert(0) += v;
        }
        for (k, v) in &r.sent_by_target {
            *sent.entry(*k).or_insert(0) += v;
        }
        direct += r.direct;
    }
    let elapsed_measured = (started.elapsed().as_secs_f64() - warmup).max(0.0);
    total.seconds = if aborted {
        elapsed_measured.min(measured).max(0.001)
    } else {
        measured
    };
    if let Ok(Workload::PubSub { publish, .. }) = scenario.workload() {
        let publishes: u64 = sent.values().sum::<u64>() + direct;
        let expected: u64 = match publish.target {
            Target::Client => direct,
            _ => sent
                .iter()
                .map(|(t, n)| n * members.get(t).copied().unwrap_or(0))
                .sum(),
        };
        let received = total.counter("deliveries_received");
        total.add("publishes", publishes);
        total.add("deliveries_expected", expected);
        total.add("deliveries_received", 0);
        total.rate("delivery_loss", expected.saturating_sub(received), expected);
        // More than expected: someone got what it was not a target of
        // (e.g. an event outside a session's entitlement).
        total.add("deliveries_extra", received.saturating_sub(expected));
        if !aborted {
            let planned = scenario.executor.expected_iterations(scenario.measured());
            let started_its = total.counter("iterations") + total.counter("dropped_iterations");
            // Iterations the scheduler never got to (the process was behind).
            let missed = (planned - started_its as f64 - 1.0).max(0.0);
            if scenario.executor.is_arrival_rate() && missed >= 1.0 && missed > planned * 0.001 {
                total.add("dropped_iterations", missed as u64);
            }
        }
    }
    total.add("errors", 0);
    total.add("dropped_iterations", 0);
    // k6's `vus` (the VUs at the end of the measured phase, with the range
    // they moved in) and `vus_max` (the VUs allocated: an arrival-rate
    // executor's maxVUs unless its VUs are the publishing connections, else
    // the peak).
    let in_run: Vec<u64> = samples
        .iter()
        .filter(|s| s.t <= measured + 0.5)
        .map(|s| s.vus)
        .collect();
    let last_vus = in_run.last().copied().unwrap_or(0) as f64;
    let (min_vus, max_vus) = in_run
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    total.gauge_range(
        "vus",
        last_vus,
        if in_run.is_empty() {
            0.0
        } else {
            min_vus as f64
        },
        max_vus as f64,
    );
    let allocated = match scenario.workload() {
        _ if !scenario.executor.is_arrival_rate() => 0,
        Ok(Workload::PubSub { publish, .. }) if publish.via != Via::Api => 0,
        _ => scenario.executor.max_vus(),
    };
    total.gauge("vus_max", peak_vus.max(allocated) as f64);
    total.gauge("ws_connections_max", peak_conns as f64);
    if let (Some(before), true) = (rss_before, rss_peak > 0) {
        total.gauge("node_rss_bytes", rss_peak as f64);
        total.gauge(
            "node_rss_per_connection_bytes",
            rss_peak.saturating_sub(before) as f64 / peak_conns.max(1) as f64,
        );
    }
    total.finish_checks();
    // `errors{code:4008}` and the like: a submetric that never happened is
    // zero when its counter exists.
    for (name, _) in &thresholds {
        if let Some((base, _)) = name.split_once('{') {
            if matches!(total.by_name.get(base), Some(Metric::Counter(_)))
                && !total.by_name.contains_key(name)
            {
                total.add(name, 0);
            }
        }
    }
    let results = evaluate(&total, &thresholds);
    Ok(Outcome {
        metrics: total,
        samples,
        results,
        aborted,
        workers: n,
    })
}

/// The phases of a run, in seconds.
#[derive(Clone, Copy, Debug)]
struct Span {
    warmup: f64,
    measured: f64,
    drain: f64,
}

fn to_sample(index: u64, span: &Span, b: &Bucket) -> Sample {
    let lat = match b.metrics.by_name.get("delivery_latency") {
        Some(Metric::Trend(t)) => t.clone(),
        _ => Trend::default(),
    };
    let connect = match b.metrics.by_name.get("ws_connecting") {
        Some(Metric::Trend(t)) => t.clone(),
        _ => Trend::default(),
    };
    Sample {
        // The end of the second the sample covers — or of the run, for the
        // last, shorter one: no time outside the run.
        t: (index as f64 + 1.0).min(span.warmup + span.measured + span.drain) - span.warmup,
        sent_per_s: b.metrics.counter("iterations"),
        delivered_per_s: b.metrics.counter("deliveries_received"),
        received_per_s: b.metrics.counter("ws_msgs_received"),
        p50_ms: lat.stat(&Stat::Med),
        p99_ms: lat.stat(&Stat::Percentile(99.0)),
        max_ms: lat.stat(&Stat::Max),
        connections: b.conns,
        vus: b.vus,
        errors: b.metrics.counter("errors"),
        connect_p50_ms: connect.stat(&Stat::Med),
        connect_max_ms: connect.stat(&Stat::Max),
    }
}

/// One progress line: the phase, and the time into that phase out of its
/// length (never outside it).
fn progress_line(s: &Sample, span: &Span, total: &Metrics) -> String {
    let (phase, at, of) = if s.t <= 0.0 && span.warmup > 0.0 {
        (
            "warm-up",
            (span.warmup + s.t).clamp(0.0, span.warmup),
            span.warmup,
        )
    } else if s.t <= span.measured + 1e-6 || span.drain <= 0.0 {
        ("running", s.t.clamp(0.0, span.measured), span.measured)
    } else {
        (
            "drain  ",
            (s.t - span.measured).clamp(0.0, span.drain),
            span.drain,
        )
    };
    format!(
        "{phase} [{at:>5.1}s/{of:.1}s] conns={} vus={} it/s={} deliveries/s={} p99={:.2}ms errors={} dropped={}",
        s.connections,
        s.vus,
        s.sent_per_s,
        s.delivered_per_s,
        s.p99_ms,
        total.counter("errors"),
        total.counter("dropped_iterations"),
    )
}

/// Print the progress line (rewritten in place on a terminal).
fn progress(line: &str, tty: bool, last_len: usize) -> usize {
    if tty {
        let pad = last_len.saturating_sub(line.len());
        eprint!("\r{line}{}", " ".repeat(pad));
    } else {
        eprintln!("{line}");
    }
    line.len()
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Worker mode: read the segment from the first stdin line, run it, stream
/// events to stdout; `start`/`stop` lines on stdin control it.
pub async fn worker_main() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no segment on stdin"))?;
    let spec: SegmentSpec = serde_json::from_str(&first)?;
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let c = match line.trim() {
                "start" => Control::Start,
                "stop" => Control::Stop,
                _ => continue,
            };
            if ctl_tx.send(c).is_err() {
                return;
            }
        }
        // The parent is gone: stop.
        let _ = ctl_tx.send(Control::Stop);
    });
    let segment = tokio::spawn(run_segment(spec, ev_tx, ctl_rx));
    let mut out = tokio::io::stdout();
    while let Some(e) = ev_rx.recv().await {
        let done = matches!(e, Event::Done(_) | Event::Failed(_));
        out.write_all((e.to_line() + "\n").as_bytes()).await?;
        out.flush().await?;
        if done {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), segment).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The number in `[  x.xs/y.ys]` and the phase length after it.
    fn times(line: &str) -> (f64, f64) {
        let inner = &line[line.find('[').expect("[") + 1..line.find(']').expect("]")];
        let (at, of) = inner.split_once('/').expect("/");
        let num = |s: &str| {
            s.trim()
                .trim_end_matches('s')
                .parse::<f64>()
                .expect("number")
        };
        (num(at), num(of))
    }

    #[test]
    fn every_reported_time_is_inside_the_run() {
        let span = Span {
            warmup: 0.3,
            measured: 2.0,
            drain: 0.5,
        };
        let total = Metrics::default();
        // Buckets are whole seconds from the start of the warm-up; the run
        // ends 2.8 s in, so the third bucket is cut there.
        let ts: Vec<f64> = (0..3)
            .map(|i| to_sample(i, &span, &Bucket::default()).t)
            .collect();
        assert_eq!(ts.len(), 3);
        assert!(
            (ts[0] - 0.7).abs() < 1e-9 && (ts[1] - 1.7).abs() < 1e-9,
            "{ts:?}"
        );
        assert!((ts[2] - 2.5).abs() < 1e-9, "{ts:?}");
        for t in &ts {
            assert!(
                *t >= -span.warmup && *t <= span.measured + span.drain,
                "{t}"
            );
        }
        let phase_of = |t: f64| {
            let s = Sample {
                t,
                ..to_sample(0, &span, &Bucket::default())
            };
            let line = progress_line(&s, &span, &total);
            let (at, of) = times(&line);
            assert!((0.0..=of).contains(&at), "{line}");
            (line[..7].trim().to_string(), at, of)
        };
        assert_eq!(phase_of(-0.1).0, "warm-up");
        assert!((phase_of(-0.1).1 - 0.2).abs() < 0.051);
        assert_eq!(phase_of(0.7), ("running".into(), 0.7, 2.0));
        assert_eq!(phase_of(2.5), ("drain".into(), 0.5, 0.5));
        // Without a drain, a late sample still reads as the end of the run.
        let no_drain = Span { drain: 0.0, ..span };
        let s = Sample {
            t: 2.4,
            ..to_sample(0, &no_drain, &Bucket::default())
        };
        assert_eq!(times(&progress_line(&s, &no_drain, &total)), (2.0, 2.0));
    }
}
