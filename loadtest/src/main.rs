//! `pubmesh-load run SCENARIO.toml`: run a scenario against pubmesh nodes,
//! print a k6-style summary, exit 99 when a threshold fails.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pubmesh_loadtest::metrics::evaluate;
use pubmesh_loadtest::run::{run, Options};
use pubmesh_loadtest::scenario::{parse_duration, Executor, Scenario};
use pubmesh_loadtest::summary;

/// Exit code when a threshold fails (as k6).
const THRESHOLDS_FAILED: u8 = 99;

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
    Run(RunArgs),
    /// Check a scenario file and print what it would do.
    Inspect { scenario: PathBuf },
}

#[derive(clap::Args)]
struct RunArgs {
    scenario: PathBuf,
    /// Node URLs (ws://host:port), overriding the scenario's (repeatable).
    #[arg(long = "url")]
    urls: Vec<String>,
    /// Server API key for `publish_via = "api"`.
    #[arg(long, env = "PUBMESH_API_KEY")]
    api_key: Option<String>,
    /// Override the measured duration (e.g. 30s).
    #[arg(long)]
    duration: Option<String>,
    /// Override the rate of an arrival-rate executor (iterations/s).
    #[arg(long)]
    rate: Option<u64>,
    /// Override the VUs of a VU executor.
    #[arg(long)]
    vus: Option<u64>,
    /// Node process id, for the idle workload's memory per connection.
    #[arg(long)]
    node_pid: Option<u32>,
    /// Local source addresses for client sockets, e.g. 127.0.0.2 (repeatable).
    #[arg(long = "source-ip")]
    source_ips: Vec<IpAddr>,
    /// Write the summary as JSON (k6 shape).
    #[arg(long)]
    summary_export: Option<PathBuf>,
    /// Write a self-contained HTML report.
    #[arg(long)]
    report: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command {
        Command::Inspect { scenario } => match load(&scenario) {
            Ok(s) => {
                println!(
                    "{}: {:?} / {:?}, {:?}",
                    s.name, s.executor, s.workload, s.duration
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run(args) => runtime.block_on(run_cmd(args)),
    }
}

fn load(path: &PathBuf) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Scenario::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
}

async fn run_cmd(args: RunArgs) -> ExitCode {
    let mut scenario = match load(&args.scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if !args.urls.is_empty() {
        scenario.urls = args.urls.clone();
    }
    if let Some(d) = &args.duration {
        match parse_duration(d) {
            Ok(d) => scenario.duration = d,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    }
    if let (pubmesh_loadtest::scenario::Workload::Idle { node_pid }, Some(pid)) =
        (&mut scenario.workload, args.node_pid)
    {
        *node_pid = Some(pid);
    }
    match (&mut scenario.executor, args.rate, args.vus) {
        (Executor::ConstantArrivalRate { rate }, Some(r), _) => *rate = r,
        (Executor::ConstantVus { vus }, _, Some(v)) => *vus = v,
        _ => {}
    }
    let options = Options {
        api_key: args.api_key.clone(),
        source_ips: args.source_ips.clone(),
        quiet: args.quiet,
        segment: (0, 1),
    };
    let outcome = match run(&scenario, &options).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("run failed: {e}");
            return ExitCode::from(1);
        }
    };
    let results = evaluate(&outcome.metrics, &scenario.parsed_thresholds());
    println!(
        "{}",
        summary::text(&scenario.name, &outcome.metrics, &results)
    );
    if let Some(path) = &args.summary_export {
        let json = summary::export(&outcome.metrics, &results);
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&json).expect("json")) {
            eprintln!("{}: {e}", path.display());
        }
    }
    if let Some(path) = &args.report {
        let page = summary::html(&scenario.name, &outcome.metrics, &results, &outcome.samples);
        if let Err(e) = std::fs::write(path, page) {
            eprintln!("{}: {e}", path.display());
        }
    }
    if results.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(THRESHOLDS_FAILED)
    }
}
