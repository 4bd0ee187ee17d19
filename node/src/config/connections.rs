//! Connection deadlines and liveness settings: how long a client may take to
//! send its HTTP request, how many connections the admin listener takes,
//! server pings and TCP keepalive (docs/protocol.md, "Liveness").

use std::time::Duration;

use super::{ConfigError, FileConfig};

/// Environment variable names of these flags.
pub mod env {
    pub const HEADER_TIMEOUT_SECONDS: &str = "PUBMESH_HEADER_TIMEOUT_SECONDS";
    pub const HANDSHAKE_TIMEOUT_SECONDS: &str = "PUBMESH_HANDSHAKE_TIMEOUT_SECONDS";
    pub const MAX_ADMIN_CONNECTIONS: &str = "PUBMESH_MAX_ADMIN_CONNECTIONS";
    pub const PING_INTERVAL_SECONDS: &str = "PUBMESH_PING_INTERVAL_SECONDS";
    pub const PONG_TIMEOUT_SECONDS: &str = "PUBMESH_PONG_TIMEOUT_SECONDS";
    pub const TCP_KEEPALIVE_SECONDS: &str = "PUBMESH_TCP_KEEPALIVE_SECONDS";
}

/// The flags (flattened into [`super::Cli`]).
#[derive(clap::Args, Debug, Default)]
pub struct ConnectionCli {
    /// Seconds a client has to send a request's headers, from its connection or its previous request; idle HTTP keep-alive connections close after it too [default: 10]
    #[arg(long, env = env::HEADER_TIMEOUT_SECONDS)]
    pub header_timeout_seconds: Option<u64>,
    /// Seconds from a request's headers to a finished WebSocket upgrade, or to the whole body of an API request [default: 10]
    #[arg(long, env = env::HANDSHAKE_TIMEOUT_SECONDS)]
    pub handshake_timeout_seconds: Option<u64>,
    /// Open connections the --admin-listen listener accepts; further ones get 503 [default: 128]
    #[arg(long, env = env::MAX_ADMIN_CONNECTIONS)]
    pub max_admin_connections: Option<usize>,
    /// Seconds between the server's WebSocket pings; 0 turns pings (and the pong deadline) off [default: 25]
    #[arg(long, env = env::PING_INTERVAL_SECONDS)]
    pub ping_interval_seconds: Option<u64>,
    /// Seconds a client has to answer a ping (any frame counts); a connection that misses it is closed with 4010 [default: 10]
    #[arg(long, env = env::PONG_TIMEOUT_SECONDS)]
    pub pong_timeout_seconds: Option<u64>,
    /// TCP keepalive on accepted sockets: idle seconds before the first probe (then 3 probes, a third of it apart); 0 turns it off [default: 30]
    #[arg(long, env = env::TCP_KEEPALIVE_SECONDS)]
    pub tcp_keepalive_seconds: Option<u64>,
}

/// Server pings: one every `interval`; a connection that sends nothing
/// within `timeout` of a ping is dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Liveness {
    /// The longest a dead peer stays connected after its last frame.
    pub fn bound(&self) -> Duration {
        self.interval + self.timeout
    }
}

/// The resolved settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connections {
    /// A request's head must arrive within this (hyper's header read timeout).
    pub header_timeout: Duration,
    /// From a request's head to the upgraded socket, or to its whole body.
    pub handshake_timeout: Duration,
    /// Connections the admin listener holds at once.
    pub max_admin_connections: usize,
    /// Server pings and their deadline (`None`: off).
    pub liveness: Option<Liveness>,
    /// TCP keepalive idle time (`None`: off).
    pub tcp_keepalive: Option<Duration>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_admin_connections: 128,
            liveness: Some(Liveness {
                interval: Duration::from_secs(25),
                timeout: Duration::from_secs(10),
            }),
            tcp_keepalive: Some(Duration::from_secs(30)),
        }
    }
}

impl Connections {
    /// Flags first, then the file, then the defaults.
    pub(super) fn resolve(cli: &ConnectionCli, file: &FileConfig) -> Result<Self, ConfigError> {
        let secs = |flag: Option<u64>, key: Option<u64>, default: u64| {
            Duration::from_secs(flag.or(key).unwrap_or(default))
        };
        let header_timeout = secs(cli.header_timeout_seconds, file.header_timeout_seconds, 10);
        let handshake_timeout = secs(
            cli.handshake_timeout_seconds,
            file.handshake_timeout_seconds,
            10,
        );
        let ping = secs(cli.ping_interval_seconds, file.ping_interval_seconds, 25);
        let pong = secs(cli.pong_timeout_seconds, file.pong_timeout_seconds, 10);
        let keepalive = secs(cli.tcp_keepalive_seconds, file.tcp_keepalive_seconds, 30);
        let max_admin_connections = cli
            .max_admin_connections
            .or(file.max_admin_connections)
            .unwrap_or(128);
        let positive = [
            ("header_timeout_seconds", header_timeout.as_secs()),
            ("handshake_timeout_seconds", handshake_timeout.as_secs()),
            ("pong_timeout_seconds", pong.as_secs()),
            ("max_admin_connections", max_admin_connections as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be > 0")));
            }
        }
        // Durations far beyond any use would overflow deadline arithmetic.
        let year = 365 * 24 * 3600;
        for (name, value) in [
            ("header_timeout_seconds", header_timeout),
            ("handshake_timeout_seconds", handshake_timeout),
            ("ping_interval_seconds", ping),
            ("pong_timeout_seconds", pong),
            ("tcp_keepalive_seconds", keepalive),
        ] {
            if value.as_secs() > year {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be at most {year} (a year)"
                )));
            }
        }
        Ok(Connections {
            header_timeout,
            handshake_timeout,
            max_admin_connections,
            liveness: (!ping.is_zero()).then_some(Liveness {
                interval: ping,
                timeout: pong,
            }),
            tcp_keepalive: (!keepalive.is_zero()).then_some(keepalive),
        })
    }
}
