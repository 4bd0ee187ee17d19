//! Configuration: command-line flags, `PUBMESH_*` environment variables and an
//! optional TOML file, in that order of precedence.
//!
//! Every flag is an `Option` in [`Cli`] so that "not given" can fall back to the
//! file; [`Config::load`] resolves the three sources into one [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use serde::Deserialize;

pub mod addresses;
mod cli;
pub mod connections;
pub mod env;
mod relay;
pub use addresses::AddressLimits;
pub use cli::Cli;
pub use connections::{Connections, Liveness};
pub use relay::RelayLimits;

pub use crate::policy::{ChannelPublish, DirectPublish};
pub use bounds::{ChurnLimit, IdempotencyLimits};

mod bounds;
pub mod cells;
pub mod chain;
mod checks;
pub mod join_hooks;
pub mod socketio;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The TOML file: the same keys as the flags, all optional. Unknown keys are an error.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub listen_backlog: Option<u32>,
    pub node_id: Option<String>,
    pub api_key: Option<String>,
    pub jwt_secret: Option<String>,
    pub jwt_public_key: Option<PathBuf>,
    pub require_auth: Option<bool>,
    pub anonymous_id: Option<String>,
    #[serde(default)]
    pub redis_url: Vec<String>,
    pub redis_prefix: Option<String>,
    pub redis_cluster: Option<bool>,
    pub redis_tls_ca: Option<PathBuf>,
    pub backend_url: Option<String>,
    pub walker_timeout_ms: Option<u64>,
    pub drain_seconds: Option<u64>,
    pub log_format: Option<LogFormat>,
    pub heap_huge_pages: Option<bool>,
    pub max_message_size: Option<usize>,
    pub outbox_bytes: Option<usize>,
    pub client_rate: Option<u32>,
    pub client_burst: Option<u32>,
    pub max_channels_per_connection: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_ids_per_message: Option<usize>,
    pub client_channel_publish: Option<ChannelPublish>,
    pub client_user_publish: Option<DirectPublish>,
    pub client_client_publish: Option<DirectPublish>,
    pub flush_window_us: Option<u64>,
    pub presence_ttl_seconds: Option<u64>,
    pub relay_queue_bytes: Option<usize>,
    pub relay_receive_bytes: Option<usize>,
    pub relay_retry_ms: Option<u64>,
    pub relay_probe_ms: Option<u64>,
    pub relay_interest_rate: Option<u32>,
    pub relay_join_timeout_ms: Option<u64>,
    pub relay_batch_bytes: Option<usize>,
    pub relay_batch_us: Option<u64>,
    pub relay_interest_us: Option<u64>,
    pub relay_interest_routing: Option<bool>,
    pub relay_node_addressing: Option<bool>,
    pub relay_owned_channels: Option<bool>,
    pub phoenix_heartbeat_timeout_ms: Option<u64>,
    pub phoenix_longpoll_grace_ms: Option<u64>,
    pub idempotency_window_seconds: Option<u64>,
    pub idempotency_max_bytes: Option<usize>,
    pub client_channel_churn: Option<usize>,
    pub client_channel_churn_seconds: Option<u64>,
    pub header_timeout_seconds: Option<u64>,
    pub handshake_timeout_seconds: Option<u64>,
    pub max_admin_connections: Option<usize>,
    pub ping_interval_seconds: Option<u64>,
    pub pong_timeout_seconds: Option<u64>,
    pub tcp_keepalive_seconds: Option<u64>,
    pub address_connection_rate: Option<u32>,
    pub address_connection_burst: Option<u32>,
    pub address_frame_rate: Option<u32>,
    pub address_frame_burst: Option<u32>,
    pub address_ipv4_prefix: Option<u8>,
    pub address_ipv6_prefix: Option<u8>,
    pub address_table_entries: Option<usize>,
    pub trusted_networks: Option<Vec<String>>,
    /// Channel options by namespace (file only): `[[namespaces]]` tables.
    #[serde(default)]
    pub namespaces: Vec<crate::policy::NamespaceConfig>,
    /// The Cells gateway's `[cells]` table.
    #[serde(default)]
    pub cells: cells::CellsFile,
    #[serde(default)]
    pub chain: chain::ChainFile,
    pub phoenix_join_hooks: Option<Vec<join_hooks::JoinHookFile>>,
    pub channel_events: Option<Vec<join_hooks::EventRuleFile>>,
    /// The Socket.IO front-end's `[socketio]` table.
    #[serde(default)]
    pub socketio: socketio::SocketIoFile,
}

/// The resolved configuration a node runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where the server API and /metrics are served when apart from `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// listen(2) backlog; None: the host's `net.core.somaxconn`.
    pub listen_backlog: Option<u32>,
    pub node_id: String,
    /// The server API key and whether it was generated at start-up.
    pub api_key: String,
    pub api_key_generated: bool,
    pub jwt_secret: Option<String>,
    pub jwt_public_key: Option<PathBuf>,
    pub require_auth: bool,
    pub anonymous_id: String,
    pub redis_urls: Vec<String>,
    pub redis_prefix: String,
    pub redis_cluster: bool,
    /// CA for `rediss://` URLs (None: the system's CAs).
    pub redis_tls_ca: Option<PathBuf>,
    pub backend_url: Option<String>,
    pub walker_timeout: Duration,
    pub drain: Duration,
    pub log_format: LogFormat,
    /// glibc's allocator with one arena on huge pages (see [`crate::heap`]).
    pub heap_huge_pages: bool,
    pub max_message_size: usize,
    pub outbox_bytes: usize,
    pub client_rate: u32,
    pub client_burst: u32,
    pub max_channels_per_connection: usize,
    pub max_connections: Option<usize>,
    pub max_ids_per_message: usize,
    pub client_channel_publish: ChannelPublish,
    pub client_user_publish: DirectPublish,
    pub client_client_publish: DirectPublish,
    pub flush_window: Duration,
    pub presence_ttl: Duration,
    pub namespaces: crate::policy::Namespaces,
    /// Bounds of the cluster relay (see docs/cluster.md).
    pub relay: RelayLimits,
    pub phoenix: frontends::PhoenixConfig,
    /// How long idempotency keys are remembered, in how much memory.
    pub idempotency: IdempotencyLimits,
    /// Distinct channels a socket may join or leave per window.
    pub channel_churn: ChurnLimit,
    /// Request deadlines, the admin listener's cap, pings, TCP keepalive.
    pub connections: Connections,
    /// The Cells gateway (docs/cells.md).
    pub cells: cells::Cells,
    /// Budgets per client address and the networks exempt from them.
    pub addresses: AddressLimits,
    /// The Socket.IO front-end (docs/socketio.md).
    pub socketio: socketio::SocketIo,
    /// chain's protocol at `/socket/sse` (docs/chain.md).
    pub chain: chain::Chain,
}

/// A configuration that cannot be used, with a message fit for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

pub const DEFAULT_ANONYMOUS_ID: &str = "n::000000000000000000000001";

impl Config {
    /// Resolve flags (and their env vars), then the TOML file, then defaults.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::resolve(cli, file)
    }

    /// A configuration from the text of a TOML file alone (flags and
    /// environment not consulted): for embedding, tests and fuzzing.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        Config::resolve(Cli::default(), file)
    }

    /// A configuration with every default, for tests and embedding.
    pub fn defaults() -> Config {
        Config::resolve(Cli::default(), FileConfig::default()).expect("defaults are valid")
    }

    fn resolve(cli: Cli, file: FileConfig) -> Result<Config, ConfigError> {
        let (idempotency, channel_churn) = bounds::resolve(&cli.bounds, &file)?;
        let connections = Connections::resolve(&cli.connections, &file)?;
        let cells = cells::Cells::resolve(&cli.cells, &file.cells)?;
        let addresses = AddressLimits::resolve(&cli.addresses, &file)?;
        let socketio = socketio::SocketIo::resolve(&cli.socketio, &file.socketio)?;
        let chain = chain::Chain::resolve(&cli.chain, &file.chain)?;
        let phoenix = frontends::PhoenixConfig::resolve(&cli.frontends, &file)?;
        let node_id = cli.node_id.or(file.node_id).unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().simple().to_string();
            format!("n{}", &id[..12])
        });
        if !valid_node_id(&node_id) {
            return Err(ConfigError::Invalid(format!(
                "node id {node_id:?} must be 1 to 64 characters of [A-Za-z0-9_-]"
            )));
        }
        let (api_key, api_key_generated) = match cli.api_key.or(file.api_key) {
            Some(key) if key.is_empty() => {
                return Err(ConfigError::Invalid("api key must not be empty".into()))
            }
            Some(key) => (key, false),
            None => (uuid::Uuid::new_v4().simple().to_string(), true),
        };
        let redis_urls = if cli.redis_url.is_empty() {
            file.redis_url
        } else {
            cli.redis_url
        };
        for url in &redis_urls {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::Invalid(format!(
                    "redis url {:?} must start with redis:// or rediss://",
                    crate::redis_connect::redacted(url)
                )));
            }
        }
        let redis_tls_ca = cli.redis_tls_ca.or(file.redis_tls_ca);
        if redis_urls.iter().any(|u| crate::redis_connect::uses_tls(u)) {
            // Refuse now rather than never connecting (or connecting in clear text).
            crate::redis_connect::tls_config(redis_tls_ca.as_deref())
                .map_err(ConfigError::Invalid)?;
        } else if let Some(ca) = &redis_tls_ca {
            return Err(ConfigError::Invalid(format!(
                "--redis-tls-ca {} is given but no --redis-url is rediss://",
                ca.display()
            )));
        }
        let backend_url = cli
            .backend_url
            .or(file.backend_url)
            .map(|u| u.trim_end_matches('/').to_string());
        if let Some(url) = &backend_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "backend url {url:?} must start with http:// or https://"
                )));
            }
        }
        let redis_cluster = cli.redis_cluster.or(file.redis_cluster).unwrap_or(false);
        if redis_cluster && redis_urls.is_empty() {
            return Err(ConfigError::Invalid(
                "--redis-cluster needs at least one --redis-url".into(),
            ));
        }
        let auth_patterns: Vec<String> = file
            .namespaces
            .iter()
            .filter(|n| n.subscribe != crate::policy::SubscribePolicy::Anyone)
            .map(|n| n.pattern.clone())
            .collect();
        let config = Config {
            listen: cli
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:8000".parse().expect("valid address")),
            admin_listen: cli.admin_listen.or(file.admin_listen),
            listen_backlog: cli.listen_backlog.or(file.listen_backlog),
            node_id,
            api_key,
            api_key_generated,
            jwt_secret: cli.jwt_secret.or(file.jwt_secret),
            jwt_public_key: cli.jwt_public_key.or(file.jwt_public_key),
            require_auth: cli.require_auth.or(file.require_auth).unwrap_or(false),
            anonymous_id: cli
                .anonymous_id
                .or(file.anonymous_id)
                .unwrap_or_else(|| DEFAULT_ANONYMOUS_ID.to_string()),
            redis_urls,
            redis_prefix: cli
                .redis_prefix
                .or(file.redis_prefix)
                .unwrap_or_else(|| "pubmesh".to_string()),
            redis_cluster,
            redis_tls_ca,
            backend_url,
            walker_timeout: Duration::from_millis(
                cli.walker_timeout_ms
                    .or(file.walker_timeout_ms)
                    .unwrap_or(10_000),
            ),
            drain: Duration::from_secs(cli.drain_seconds.or(file.drain_seconds).unwrap_or(10)),
            log_format: cli
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            heap_huge_pages: cli.heap_huge_pages.or(file.heap_huge_pages).unwrap_or(true),
            max_message_size: cli
                .max_message_size
                .or(file.max_message_size)
                .unwrap_or(64 * 1024),
            outbox_bytes: cli
                .outbox_bytes
                .or(file.outbox_bytes)
                .unwrap_or(1024 * 1024),
            client_rate: cli.client_rate.or(file.client_rate).unwrap_or(100),
            client_burst: cli.client_burst.or(file.client_burst).unwrap_or(200),
            max_channels_per_connection: cli
                .max_channels_per_connection
                .or(file.max_channels_per_connection)
                .unwrap_or(128),
            max_connections: cli.max_connections.or(file.max_connections),
            max_ids_per_message: cli
                .max_ids_per_message
                .or(file.max_ids_per_message)
                .unwrap_or(crate::limits::DEFAULT_MAX_IDS_PER_MESSAGE),
            client_channel_publish: cli
                .client_channel_publish
                .or(file.client_channel_publish)
                .unwrap_or(ChannelPublish::Members),
            client_user_publish: cli
                .client_user_publish
                .or(file.client_user_publish)
                .unwrap_or(DirectPublish::Authenticated),
            client_client_publish: cli
                .client_client_publish
                .or(file.client_client_publish)
                .unwrap_or(DirectPublish::Authenticated),
            flush_window: Duration::from_micros(
                cli.flush_window_us.or(file.flush_window_us).unwrap_or(1000),
            ),
            presence_ttl: Duration::from_secs(
                cli.presence_ttl_seconds
                    .or(file.presence_ttl_seconds)
                    .unwrap_or(30),
            ),
            phoenix,
            namespaces: crate::policy::Namespaces::new(&file.namespaces)
                .and_then(|n| n.with_internal(&cells.chat_namespace()))
                .map_err(ConfigError::Invalid)?,
            relay: {
                let d = RelayLimits::default();
                RelayLimits {
                    queue_bytes: cli
                        .relay_queue_bytes
                        .or(file.relay_queue_bytes)
                        .unwrap_or(d.queue_bytes),
                    receive_bytes: cli
                        .relay_receive_bytes
                        .or(file.relay_receive_bytes)
                        .unwrap_or(d.receive_bytes),
                    retry: cli
                        .relay_retry_ms
                        .or(file.relay_retry_ms)
                        .map_or(d.retry, Duration::from_millis),
                    probe: cli
                        .relay_probe_ms
                        .or(file.relay_probe_ms)
                        .map_or(d.probe, Duration::from_millis),
                    interest_rate: cli
                        .relay_interest_rate
                        .or(file.relay_interest_rate)
                        .unwrap_or(d.interest_rate),
                    join_timeout: cli
                        .relay_join_timeout_ms
                        .or(file.relay_join_timeout_ms)
                        .map_or(d.join_timeout, Duration::from_millis),
                    batch_bytes: cli
                        .relay_batch_bytes
                        .or(file.relay_batch_bytes)
                        .unwrap_or(d.batch_bytes),
                    batch_wait: cli
                        .relay_batch_us
                        .or(file.relay_batch_us)
                        .map_or(d.batch_wait, Duration::from_micros),
                    interest_wait: cli
                        .relay_interest_us
                        .or(file.relay_interest_us)
                        .map_or(d.interest_wait, Duration::from_micros),
                    interest_routing: cli
                        .relay_interest_routing
                        .or(file.relay_interest_routing)
                        .unwrap_or(d.interest_routing),
                    node_addressing: cli
                        .relay_node_addressing
                        .or(file.relay_node_addressing)
                        .unwrap_or(d.node_addressing),
                    owned_channels: cli
                        .relay_owned_channels
                        .or(file.relay_owned_channels)
                        .unwrap_or(d.owned_channels),
                }
            },
            idempotency,
            channel_churn,
            connections,
            cells,
            addresses,
            socketio,
            chain,
        };
        config.check()?;
        config.check_auth(&auth_patterns)?;
        Ok(config)
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Node ids go into client ids and Redis channel names: keep them plain.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub mod frontends;
#[cfg(test)]
mod tests;
