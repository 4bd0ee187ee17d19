//! Settings of the front-ends other than the native one.

use std::time::Duration;

use super::ConfigError;

/// `PUBMESH_PHOENIX_HEARTBEAT_TIMEOUT_MS`.
pub const PHOENIX_HEARTBEAT_TIMEOUT_MS: &str = "PUBMESH_PHOENIX_HEARTBEAT_TIMEOUT_MS";

/// Front-end flags (flattened into the command line).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct FrontendFlags {
    /// Close a Phoenix socket (/socket/websocket) that sent nothing, not even a heartbeat, for this long, in ms [default: 60000]
    #[arg(long, env = PHOENIX_HEARTBEAT_TIMEOUT_MS)]
    pub phoenix_heartbeat_timeout_ms: Option<u64>,
}

/// The Phoenix Channels front-end's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhoenixConfig {
    /// Idle time after which a socket is closed (4408).
    pub heartbeat_timeout: Duration,
}

impl PhoenixConfig {
    /// From the flag, else the file's `phoenix_heartbeat_timeout_ms`, else 60 s.
    pub fn resolve(flags: &FrontendFlags, file: Option<u64>) -> Result<PhoenixConfig, ConfigError> {
        let ms = flags
            .phoenix_heartbeat_timeout_ms
            .or(file)
            .unwrap_or(60_000);
        if ms < 100 {
            return Err(ConfigError::Invalid(
                "phoenix_heartbeat_timeout_ms must be >= 100".into(),
            ));
        }
        Ok(PhoenixConfig {
            heartbeat_timeout: Duration::from_millis(ms),
        })
    }
}

impl Default for PhoenixConfig {
    fn default() -> Self {
        PhoenixConfig {
            heartbeat_timeout: Duration::from_secs(60),
        }
    }
}
