//! The `pubmesh` binary: parse configuration, set up logging, bind, run.

use std::io::IsTerminal;

use clap::Parser;
use pubmesh_node::config::{Cli, Config, LogFormat};
use pubmesh_node::heap::Heap;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let config = match Config::load(Cli::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pubmesh: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Before any thread: this may execute the node again (see `heap`).
    let heap = pubmesh_node::heap::tune(config.heap_huge_pages);
    // RUST_LOG sets the level; by default pubmesh logs at info and reports
    // Redis outages itself (the Redis client library only its errors).
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,fred=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: files, pipes and log collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    match heap {
        Heap::Tuned => tracing::info!("heap: one glibc arena on transparent huge pages"),
        Heap::Failed(error) => {
            tracing::warn!(%error, "heap: glibc's defaults (executing the node again failed)")
        }
        Heap::AsSet => tracing::info!("heap: as GLIBC_TUNABLES sets it"),
        Heap::Default => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(serve(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "pubmesh stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), pubmesh_node::StartError> {
    let open_files = pubmesh_node::limits::raise_open_files();
    if open_files < pubmesh_node::limits::LOW_OPEN_FILES {
        tracing::warn!(
            open_files,
            "the open-file limit is low: it caps connections"
        );
    }
    let mut config = config;
    if config.max_connections.is_none() && open_files > 512 {
        config.max_connections = Some(open_files as usize - 256);
    }
    let listener = pubmesh_node::bind(config.listen, config.listen_backlog)?;
    let addr = listener.local_addr()?;
    let admin = match config.admin_listen {
        Some(admin) => Some(pubmesh_node::bind(admin, config.listen_backlog)?),
        None => None,
    };
    let admin_addr = admin.as_ref().map(|a| a.local_addr()).transpose()?;
    let backlog = config
        .listen_backlog
        .unwrap_or_else(pubmesh_node::somaxconn);
    if config.api_key_generated {
        tracing::warn!(api_key = %config.api_key, "no --api-key given; generated one for this run");
    }
    let node = pubmesh_node::build(config)?;
    node.metrics.open_files_limit.set(open_files as i64);
    tracing::info!(
        node_id = node.node_id(),
        %addr,
        relay = node.relay_name(),
        open_files,
        backlog,
        admin = admin_addr.map(|a| a.to_string()),
        "pubmesh listening: ws://{addr}/websocket"
    );
    pubmesh_node::run_with_admin(node, listener, admin, pubmesh_node::shutdown::signal()).await?;
    tracing::info!("pubmesh stopped");
    Ok(())
}
