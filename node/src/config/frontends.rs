//! Settings of the front-ends other than the native one.

use std::time::Duration;

use super::{ConfigError, FileConfig};

/// `PUBMESH_PHOENIX_HEARTBEAT_TIMEOUT_MS`.
pub const PHOENIX_HEARTBEAT_TIMEOUT_MS: &str = "PUBMESH_PHOENIX_HEARTBEAT_TIMEOUT_MS";
/// `PUBMESH_PHOENIX_LONGPOLL_GRACE_MS`.
pub const PHOENIX_LONGPOLL_GRACE_MS: &str = "PUBMESH_PHOENIX_LONGPOLL_GRACE_MS";

/// Front-end flags (flattened into the command line).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct FrontendFlags {
    /// Close a Phoenix socket (/socket/websocket) that sent nothing, not even a heartbeat, for this long, in ms [default: 60000]
    #[arg(long, env = PHOENIX_HEARTBEAT_TIMEOUT_MS)]
    pub phoenix_heartbeat_timeout_ms: Option<u64>,
    /// End a Phoenix long-polling session (/socket/longpoll) that has not polled for this long, in ms; it keeps its channels meanwhile [default: 15000]
    #[arg(long, env = PHOENIX_LONGPOLL_GRACE_MS)]
    pub phoenix_longpoll_grace_ms: Option<u64>,
}

/// The Phoenix Channels front-end's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhoenixConfig {
    /// Idle time after which a socket is closed (4408).
    pub heartbeat_timeout: Duration,
    /// How long a long-polling session outlives its last poll.
    pub longpoll_grace: Duration,
    /// Backend join hooks by topic pattern (`[[phoenix_join_hooks]]`).
    pub join_hooks: Vec<super::join_hooks::JoinHook>,
    /// What clients' pushes do, by topic and event (`[[channel_events]]`).
    pub event_rules: Vec<super::join_hooks::EventRule>,
}

impl PhoenixConfig {
    /// From the flags, else the file's `phoenix_heartbeat_timeout_ms` and
    /// `phoenix_longpoll_grace_ms`, else 60 s and 15 s.
    pub fn resolve(flags: &FrontendFlags, file: &FileConfig) -> Result<PhoenixConfig, ConfigError> {
        let ms = flags
            .phoenix_heartbeat_timeout_ms
            .or(file.phoenix_heartbeat_timeout_ms)
            .unwrap_or(60_000);
        let grace_ms = flags
            .phoenix_longpoll_grace_ms
            .or(file.phoenix_longpoll_grace_ms)
            .unwrap_or(15_000);
        if !(100..=3_600_000).contains(&grace_ms) {
            return Err(ConfigError::Invalid(
                "phoenix_longpoll_grace_ms must be between 100 and 3600000".into(),
            ));
        }
        if ms < 100 {
            return Err(ConfigError::Invalid(
                "phoenix_heartbeat_timeout_ms must be >= 100".into(),
            ));
        }
        Ok(PhoenixConfig {
            heartbeat_timeout: Duration::from_millis(ms),
            longpoll_grace: Duration::from_millis(grace_ms),
            join_hooks: super::join_hooks::resolve(
                file.phoenix_join_hooks.as_deref().unwrap_or_default(),
            )?,
            event_rules: super::join_hooks::resolve_events(
                file.channel_events.as_deref().unwrap_or_default(),
            )?,
        })
    }
}

impl Default for PhoenixConfig {
    fn default() -> Self {
        PhoenixConfig {
            heartbeat_timeout: Duration::from_secs(60),
            longpoll_grace: Duration::from_secs(15),
            join_hooks: Vec::new(),
            event_rules: Vec::new(),
        }
    }
}
