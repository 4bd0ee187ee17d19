//! `pubmesh-load run SCENARIO.toml`: run a scenario against pubmesh nodes,
//! print a k6-style summary, exit 99 when a threshold fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pubmesh_loadtest::coordinator::{self, plan, RunOptions};
use pubmesh_loadtest::scenario::{parse_duration, Executor, Scenario, Workload};
use pubmesh_loadtest::{summary, THRESHOLDS_FAILED};

#[derive(Parser)]
#[command(
    name = "pubmesh-load",
    version,
    about = "k6-style load harness for pubmesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario file.
    Run(Box<RunArgs>),
    /// Check a scenario file and print what it would do.
    Inspect { scenario: PathBuf },
    /// Internal: run one segment for a parent process (stdin/stdout).
    #[command(hide = true)]
    Worker {
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    scenario: PathBuf,
    /// Node URLs (ws://host:port), replacing the scenario's (repeatable).
    #[arg(long = "url")]
    urls: Vec<String>,
    /// Server API key for `via = "api"`.
    #[arg(long, env = "PUBMESH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// HS256 secret for user subscribers.
    #[arg(long, env = "PUBMESH_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Measured duration of a constant executor (e.g. 30s).
    #[arg(long)]
    duration: Option<String>,
    /// Iterations/s of a constant-arrival-rate executor.
    #[arg(long)]
    rate: Option<u64>,
    /// VUs of a constant-vus executor.
    #[arg(long)]
    vus: Option<u64>,
    /// Most iterations in flight for an arrival-rate executor.
    #[arg(long)]
    max_vus: Option<u64>,
    /// Steady subscribers.
    #[arg(long)]
    subscribers: Option<u64>,
    /// Distinct channels the subscribers use.
    #[arg(long)]
    channels: Option<u64>,
    /// Node process id: report its memory per connection (connection workloads).
    #[arg(long)]
    node_pid: Option<u32>,
    /// Payload padding in bytes.
    #[arg(long)]
    payload_bytes: Option<usize>,
    /// Warm-up before the measured phase (e.g. 2s).
    #[arg(long)]
    warmup: Option<String>,
    /// Wait for in-flight deliveries after the last publish (e.g. 2s).
    #[arg(long)]
    drain: Option<String>,
    /// Worker processes (0 = enough for the connection count).
    #[arg(long, default_value_t = 0)]
    workers: u64,
    /// Source addresses 127.0.0.1 … 127.0.0.N (0 = enough for the connection count).
    #[arg(long, default_value_t = 0)]
    source_ips: u64,
    /// Write the summary as JSON (k6 summary-export shape).
    #[arg(long)]
    summary_export: Option<PathBuf>,
    /// Trend statistics in the summary export (k6's --summary-trend-stats).
    #[arg(long, default_value = summary::DEFAULT_TREND_STATS)]
    summary_trend_stats: String,
    /// Write a self-contained HTML report.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the per-second samples as JSON lines.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// No progress line and no end-of-test summary on the terminal.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_open_files();
    match cli.command {
        Command::Inspect { scenario } => match load(&scenario) {
            Ok(s) => {
                inspect(&s);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Worker { threads } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(coordinator::worker_main()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("worker: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(run_cmd(*args))
        }
    }
}

/// Raise the soft open-file limit to the hard one.
fn raise_open_files() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

fn load(path: &Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Scenario::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn inspect(s: &Scenario) {
    let (workers, ips) = plan(s, &RunOptions::default());
    println!("{}: {}", s.name, s.description);
    println!("  urls:        {}", s.urls.join(", "));
    println!("  load:        {}", describe_executor(&s.executor));
    println!(
        "  timing:      measured for {}, after a {} warm-up; then {} to let in-flight deliveries arrive",
        secs(s.measured()),
        secs(s.effective_warmup()),
        secs(s.drain)
    );
    match s.workload() {
        Ok(Workload::PubSub {
            subscribers,
            publish,
            churn,
        }) => {
            println!(
                "  subscribers: {} {:?} sockets over {} channels named {}-N, {} channel(s) each ({:?} assignment){}",
                subscribers.count,
                subscribers.protocol,
                subscribers.channels,
                subscribers.channel_prefix,
                subscribers.channels_per_subscriber,
                subscribers.assign,
                if subscribers.users > 0 {
                    format!(", {} of them as users with tokens", subscribers.users)
                } else {
                    String::new()
                }
            );
            println!(
                "  publish:     each iteration sends one {}-byte message to a {:?} target via {:?}, from {} connection(s){}",
                publish.payload_bytes,
                publish.target,
                publish.via,
                publish.connections,
                if publish.think_time.is_zero() {
                    String::new()
                } else {
                    format!(", pausing {} after each", secs(publish.think_time))
                }
            );
            if let Some(c) = churn {
                println!("  churn:       {c:?}");
            }
        }
        Ok(Workload::Connections(c)) => println!("  connections: {c:?}"),
        Err(e) => println!("  workload:    {e}"),
    }
    println!(
        "  peak connections {}, {} worker process(es), {} source address(es)",
        s.peak_connections(),
        workers,
        ips
    );
    for (metric, t) in s.parsed_thresholds() {
        println!(
            "  threshold:   {metric} {}{}",
            t.source,
            if t.abort_on_fail {
                " (abortOnFail)"
            } else {
                ""
            }
        );
    }
}

fn secs(d: std::time::Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The command line with secret values replaced by `***`.
fn redacted_command(args: impl Iterator<Item = String>) -> String {
    const SECRET: [&str; 2] = ["--api-key", "--jwt-secret"];
    let mut out = Vec::new();
    let mut hide_next = false;
    for arg in args {
        if hide_next {
            out.push("***".to_string());
            hide_next = false;
        } else if SECRET.contains(&arg.as_str()) {
            hide_next = true;
            out.push(arg);
        } else if let Some(flag) = SECRET.iter().find(|f| arg.starts_with(&format!("{f}="))) {
            out.push(format!("{flag}=***"));
        } else {
            out.push(arg);
        }
    }
    out.join(" ")
}

/// The report's account of the run: command, date, commit, targets, load.
fn run_info(scenario: &Scenario) -> summary::RunInfo {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty());
    summary::RunInfo {
        command: redacted_command(std::env::args()),
        date: httpdate::fmt_http_date(std::time::SystemTime::now()),
        commit,
        urls: scenario.urls.clone(),
        load: describe_executor(&scenario.executor),
    }
}

/// The executor in plain words.
fn describe_executor(e: &Executor) -> String {
    let stages = |stages: &[pubmesh_loadtest::scenario::Stage], unit: &str| {
        stages
            .iter()
            .map(|st| format!("to {} {unit} over {}", st.target, secs(st.duration)))
            .collect::<Vec<_>>()
            .join(", then ")
    };
    let cap = |max: &Option<u64>| match max {
        Some(m) => format!("; at most {m} iterations in flight, more are dropped and counted"),
        None => String::new(),
    };
    match e {
        Executor::ConstantVus { vus } => {
            format!("{vus} virtual users, each running iterations back to back")
        }
        Executor::RampingVus {
            start_vus,
            stages: st,
        } => format!(
            "virtual users ramped from {start_vus} {}",
            stages(st, "users")
        ),
        Executor::ConstantArrivalRate { rate, max_vus } => format!(
            "{rate} iterations started per second, whatever their duration{}",
            cap(max_vus)
        ),
        Executor::RampingArrivalRate {
            start_rate,
            stages: st,
            max_vus,
        } => format!(
            "iterations per second ramped from {start_rate} {}{}",
            stages(st, "per second"),
            cap(max_vus)
        ),
    }
}

/// A hint when the nodes refused the scenario's publishes by policy.
fn policy_hint(metrics: &pubmesh_loadtest::metrics::Metrics) -> Option<String> {
    let forbidden = metrics.counter("errors{code:forbidden}");
    (forbidden > 0).then(|| {
        format!(
            "     hint: the nodes refused {forbidden} frames with \"forbidden\": their publish policy \
             does not allow what the scenario sends. Start the nodes with \
             --client-channel-publish any (or members, with publishers subscribed), \
             --client-user-publish any / --client-client-publish any, or publish with via = \"api\" and --api-key."
        )
    })
}

/// Apply command-line overrides to the scenario.
fn apply(args: &RunArgs, s: &mut Scenario) -> Result<(), String> {
    if !args.urls.is_empty() {
        s.urls = args.urls.clone();
    }
    if let Some(k) = &args.jwt_secret {
        s.jwt_secret = Some(k.clone());
    }
    if let Some(d) = &args.duration {
        if s.executor.stages_duration().is_some() {
            return Err("--duration does not apply to a ramping executor".into());
        }
        s.duration = Some(parse_duration(d)?);
    }
    if let Some(d) = &args.warmup {
        s.warmup = parse_duration(d)?;
    }
    if let Some(d) = &args.drain {
        s.drain = parse_duration(d)?;
    }
    match (&mut s.executor, args.rate, args.vus) {
        (Executor::ConstantArrivalRate { rate, .. }, Some(r), _) => *rate = r,
        (Executor::ConstantVus { vus }, _, Some(v)) => *vus = v,
        (_, None, None) => {}
        _ => return Err("--rate/--vus do not apply to this executor".into()),
    }
    if let Some(m) = args.max_vus {
        match &mut s.executor {
            Executor::ConstantArrivalRate { max_vus, .. }
            | Executor::RampingArrivalRate { max_vus, .. } => *max_vus = Some(m),
            _ => return Err("--max-vus applies to arrival-rate executors".into()),
        }
    }
    if args.subscribers.is_some() || args.channels.is_some() {
        let subs = s
            .subscribers
            .as_mut()
            .ok_or("--subscribers/--channels need a publishing scenario")?;
        if let Some(n) = args.subscribers {
            subs.count = n;
        }
        if let Some(n) = args.channels {
            subs.channels = n;
        }
    }
    if let Some(pid) = args.node_pid {
        s.connections
            .as_mut()
            .ok_or("--node-pid needs a connections workload")?
            .node_pid = Some(pid);
    }
    if let Some(b) = args.payload_bytes {
        s.publish
            .as_mut()
            .ok_or("--payload-bytes needs a publishing scenario")?
            .payload_bytes = b;
    }
    s.validate()
}

async fn run_cmd(args: RunArgs) -> ExitCode {
    let mut scenario = match load(&args.scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = apply(&args, &mut scenario) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let options = RunOptions {
        workers: args.workers,
        source_ips: args.source_ips,
        api_key: args.api_key.clone(),
        quiet: args.quiet,
    };
    let trend_stats = match summary::parse_trend_stats(&args.summary_trend_stats) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let info = run_info(&scenario);
    let started = std::time::Instant::now();
    let outcome = match coordinator::run(&scenario, &options).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("run failed: {e}");
            return ExitCode::from(1);
        }
    };
    if !args.quiet {
        println!(
            "{}",
            summary::text(&scenario.name, &outcome.metrics, &outcome.results)
        );
        if outcome.aborted {
            println!("     the run was aborted by a threshold (abortOnFail)");
        }
    }
    if let Some(hint) = policy_hint(&outcome.metrics) {
        eprintln!("{hint}");
    }
    let mut io_failed = false;
    if let Some(path) = &args.summary_export {
        let json = summary::export(
            &outcome.metrics,
            &outcome.results,
            &trend_stats,
            started.elapsed().as_secs_f64() * 1000.0,
        );
        let text = serde_json::to_string_pretty(&json).expect("json");
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("{}: {e}", path.display());
            io_failed = true;
        }
    }
    if let Some(path) = &args.report {
        let page = summary::html(
            &scenario.name,
            &scenario.description,
            &info,
            &outcome.metrics,
            &outcome.results,
            &outcome.samples,
        );
        if let Err(e) = std::fs::write(path, page) {
            eprintln!("{}: {e}", path.display());
            io_failed = true;
        }
    }
    if let Some(path) = &args.samples {
        let lines: String = outcome
            .samples
            .iter()
            .map(|s| serde_json::to_string(s).expect("json") + "\n")
            .collect();
        if let Err(e) = std::fs::write(path, lines) {
            eprintln!("{}: {e}", path.display());
            io_failed = true;
        }
    }
    if !outcome.results.iter().all(|r| r.ok) {
        ExitCode::from(THRESHOLDS_FAILED)
    } else if io_failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_command;

    #[test]
    fn secrets_stay_out_of_the_recorded_command() {
        let args = [
            "pubmesh-load",
            "run",
            "s.toml",
            "--api-key",
            "k1",
            "--jwt-secret=s2",
            "--rate",
            "5",
        ];
        let line = redacted_command(args.iter().map(|s| s.to_string()));
        assert_eq!(
            line,
            "pubmesh-load run s.toml --api-key *** --jwt-secret=*** --rate 5"
        );
    }
}
