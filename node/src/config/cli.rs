//! The command-line flags (each with its `PUBMESH_*` variable).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use super::{
    addresses, bounds, cells, chain, connections, env, frontends, socketio, ChannelPublish,
    DirectPublish, LogFormat,
};

/// Command-line flags. Everything is optional here; defaults live in [`Config::load`].
#[derive(Parser, Debug, Default)]
#[command(
    name = "pubmesh",
    version,
    about = "Real-time WebSocket pub/sub server",
    after_help = "Every flag can be set with its PUBMESH_* environment variable (shown with each \
flag) or in a TOML file (--config). Boolean variables accept 1/0, true/false, yes/no, on/off. \
PUBMESH_REDIS_URL takes a comma-separated list. The log level comes from RUST_LOG \
(default: info,fred=error; e.g. RUST_LOG=debug or RUST_LOG=pubmesh_node=debug)."
)]
pub struct Cli {
    /// Address to listen on for WebSocket, health, and (without --admin-listen) API and metrics [default: 127.0.0.1:8000]
    #[arg(long, env = env::LISTEN)]
    pub listen: Option<SocketAddr>,
    /// Separate address for the server API (/api/*) and /metrics, which then leave --listen
    #[arg(long, env = env::ADMIN_LISTEN)]
    pub admin_listen: Option<SocketAddr>,
    /// Pending-connection queue of the listeners (listen(2) backlog) [default: /proc/sys/net/core/somaxconn]
    #[arg(long, env = env::LISTEN_BACKLOG)]
    pub listen_backlog: Option<u32>,
    /// This node's id ([A-Za-z0-9_-], at most 64); random when not given
    #[arg(long, env = env::NODE_ID)]
    pub node_id: Option<String>,
    /// Server API key; a random one is generated and logged when not given
    #[arg(long, env = env::API_KEY, hide_env_values = true)]
    pub api_key: Option<String>,
    /// HS256 shared secret for client JWTs
    #[arg(long, env = env::JWT_SECRET, hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM file with an RSA (RS256) or EC P-256 (ES256) public key for client JWTs
    #[arg(long, env = env::JWT_PUBLIC_KEY)]
    pub jwt_public_key: Option<PathBuf>,
    /// Close sockets that have no valid token (code 4001); needs --jwt-secret or --jwt-public-key
    #[arg(long, env = env::REQUIRE_AUTH, num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub require_auth: Option<bool>,
    /// root_id of anonymous sockets [default: n::000000000000000000000001]
    #[arg(long, env = env::ANONYMOUS_ID)]
    pub anonymous_id: Option<String>,
    /// Redis URL (redis:// or rediss://) for the cluster relay; repeatable, or comma-separated in PUBMESH_REDIS_URL: channels are spread over them
    #[arg(long, env = env::REDIS_URL, value_delimiter = ',', hide_env_values = true)]
    pub redis_url: Vec<String>,
    /// Prefix of every Redis channel name [default: pubmesh]
    #[arg(long, env = env::REDIS_PREFIX)]
    pub redis_prefix: Option<String>,
    /// Treat --redis-url as a Redis Cluster and use sharded pub/sub (SSUBSCRIBE/SPUBLISH)
    #[arg(long, env = env::REDIS_CLUSTER, num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub redis_cluster: Option<bool>,
    /// PEM file with the CA certificate(s) that sign the Redis servers' certificates, for rediss:// URLs [default: the system's CAs]
    #[arg(long, env = env::REDIS_TLS_CA)]
    pub redis_tls_ca: Option<PathBuf>,
    /// Base URL of the walker backend (`POST {url}/walker/{name}`)
    #[arg(long, env = env::BACKEND_URL)]
    pub backend_url: Option<String>,
    /// Walker backend timeout in milliseconds [default: 10000]
    #[arg(long, env = env::WALKER_TIMEOUT_MS)]
    pub walker_timeout_ms: Option<u64>,
    /// Seconds over which a SIGTERM drain closes clients [default: 10]
    #[arg(long, env = env::DRAIN_SECONDS)]
    pub drain_seconds: Option<u64>,
    /// TOML configuration file (keys are flag names with '_' for '-')
    #[arg(long, env = env::CONFIG)]
    pub config: Option<PathBuf>,
    /// Log format [default: text]
    #[arg(long, env = env::LOG_FORMAT)]
    pub log_format: Option<LogFormat>,
    /// Run glibc's allocator with one arena on transparent huge pages (the node executes itself once more at start-up with GLIBC_TUNABLES set; keys already in GLIBC_TUNABLES stay): fewer TLB misses per delivery; false: glibc's defaults [default: true]
    #[arg(long, env = env::HEAP_HUGE_PAGES, num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub heap_huge_pages: Option<bool>,
    /// Largest accepted client frame or API body in bytes [default: 65536]
    #[arg(long, env = env::MAX_MESSAGE_SIZE)]
    pub max_message_size: Option<usize>,
    /// Per-connection outbox bound in bytes; overflow closes the socket with 4008 [default: 1048576]
    #[arg(long, env = env::OUTBOX_BYTES)]
    pub outbox_bytes: Option<usize>,
    /// Frames per second a socket may send (token bucket rate) [default: 100]
    #[arg(long, env = env::CLIENT_RATE)]
    pub client_rate: Option<u32>,
    /// Token bucket size for --client-rate [default: 200]
    #[arg(long, env = env::CLIENT_BURST)]
    pub client_burst: Option<u32>,
    /// Channels one socket may be a member of [default: 128]
    #[arg(long, env = env::MAX_CHANNELS_PER_CONNECTION)]
    pub max_channels_per_connection: Option<usize>,
    /// Connections this node accepts; further upgrades get 503 [default: open-file limit - 256]
    #[arg(long, env = env::MAX_CONNECTIONS)]
    pub max_connections: Option<usize>,
    /// Distinct channel, user or client ids one frame or API call may name; duplicates are dropped first [default: 100]
    #[arg(long, env = env::MAX_IDS_PER_MESSAGE)]
    pub max_ids_per_message: Option<usize>,
    /// Who may publish `channel` frames from a socket [default: members]
    #[arg(long, env = env::CLIENT_CHANNEL_PUBLISH)]
    pub client_channel_publish: Option<ChannelPublish>,
    /// Who may send `user` frames from a socket [default: authenticated]
    #[arg(long, env = env::CLIENT_USER_PUBLISH)]
    pub client_user_publish: Option<DirectPublish>,
    /// Who may send `client` frames from a socket [default: authenticated]
    #[arg(long, env = env::CLIENT_CLIENT_PUBLISH)]
    pub client_client_publish: Option<DirectPublish>,
    /// Longest a busy socket writer (it found more than one frame queued) waits to gather more frames before it writes, in µs (at most 100000; 0: never) [default: 1000]
    #[arg(long, env = env::FLUSH_WINDOW_US)]
    pub flush_window_us: Option<u64>,
    /// Cluster presence entries of a node that stops refreshing them expire after this [default: 30]
    #[arg(long, env = env::PRESENCE_TTL_SECONDS)]
    pub presence_ttl_seconds: Option<u64>,
    /// Bytes of envelopes the relay holds for Redis (queued, in flight or waiting out an outage); beyond, publishes fail (`queue_full`) [default: 33554432]
    #[arg(long, env = env::RELAY_QUEUE_BYTES)]
    pub relay_queue_bytes: Option<usize>,
    /// Bytes of received envelopes the relay may hold per Redis connection before it drops (`lagged`): sizes the receive ring to this many bytes of --max-message-size envelopes, at least 64 (the reader takes each message as it arrives, so the ring holds more only while the node starts) [default: 4194304]
    #[arg(long, env = env::RELAY_RECEIVE_BYTES)]
    pub relay_receive_bytes: Option<usize>,
    /// How long a publish waits for an unreachable Redis before it is reported failed (`redis_down`), in ms [default: 5000]
    #[arg(long, env = env::RELAY_RETRY_MS)]
    pub relay_retry_ms: Option<u64>,
    /// Interval of the readiness probe (PING and canary round trip per Redis server), in ms; a probe gets the same deadline [default: 1000]
    #[arg(long, env = env::RELAY_PROBE_MS)]
    pub relay_probe_ms: Option<u64>,
    /// Redis channel (un)subscriptions per second this node may issue; the rest wait [default: 20000]
    #[arg(long, env = env::RELAY_INTEREST_RATE)]
    pub relay_interest_rate: Option<u32>,
    /// Longest a join waits for Redis to confirm its new subscriptions, in ms; past it the join fails with `unavailable` instead of answering before it would receive other nodes' messages [default: 10000]
    #[arg(long, env = env::RELAY_JOIN_TIMEOUT_MS)]
    pub relay_join_timeout_ms: Option<u64>,
    /// Largest batch envelope: envelopes for the same Redis channel queued together share one PUBLISH up to this many bytes (at most 16777216); 0 sends each alone (the format of builds without batches) [default: 65536]
    #[arg(long, env = env::RELAY_BATCH_BYTES)]
    pub relay_batch_bytes: Option<usize>,
    /// How long a busy publishing lane (its last pipeline carried more than one envelope) waits for more envelopes before it sends, in microseconds (under 1000: one pass of the other ready tasks); 0: it sends what queued during the previous round trip [default: 1000]
    #[arg(long, env = env::RELAY_BATCH_US)]
    pub relay_batch_us: Option<u64>,
    /// Least time between the starts of two passes of a busy interest task (its last pass changed subscriptions), in microseconds: the joins that arrive meanwhile share one SUBSCRIBE and its PING; an idle task starts at once; 0: a pass as soon as the last one ends [default: 1000]
    #[arg(long, env = env::RELAY_INTEREST_US)]
    pub relay_interest_us: Option<u64>,
    /// Share interest with peers and publish a channel's or user's message to Redis only when a peer listens to it (false: relay every publish, like builds without interest routing) [default: true]
    #[arg(long, env = env::RELAY_INTEREST_ROUTING, num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub relay_interest_routing: Option<bool>,
    /// With interest routing on one Redis server (not a cluster), send a channel's or user's message that exactly one peer listens to to that peer's inbox, where the messages for it share one PUBLISH (false: to the channel's or user's own Redis channel; set it on every node of a rolling upgrade from a build without it) [default: true]
    #[arg(long, env = env::RELAY_NODE_ADDRESSING, num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub relay_node_addressing: Option<bool>,
    /// On one Redis server (not a cluster), send the messages of a channel whose id names a node (`{unix seconds}:{32 hex}:{node id}`, the form a node gives a connection without `channel_id`) to that node's inbox, and do not subscribe to this node's own such channels in Redis: a fresh channel costs Redis and the peers nothing (false: such channels are like any other; set it on every node of a rolling upgrade from a build without it) [default: true]
    #[arg(long, env = env::RELAY_OWNED_CHANNELS, num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub relay_owned_channels: Option<bool>,
    #[command(flatten)]
    pub frontends: frontends::FrontendFlags,
    #[command(flatten)]
    pub bounds: bounds::BoundsCli,
    #[command(flatten)]
    pub connections: connections::ConnectionCli,
    #[command(flatten)]
    pub cells: cells::CellsCli,
    #[command(flatten)]
    pub chain: chain::ChainCli,
    #[command(flatten)]
    pub addresses: addresses::AddressCli,
    #[command(flatten)]
    pub socketio: socketio::SocketIoCli,
}
