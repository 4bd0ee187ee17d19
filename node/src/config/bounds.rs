//! Settings of idempotent publishing and of the per-socket bound on channel
//! churn: their flags (flattened into [`super::Cli`]), environment
//! variables, file keys (in [`super::FileConfig`]) and resolved values.

use std::time::Duration;

use clap::Args;

use super::{ConfigError, FileConfig};

pub const IDEMPOTENCY_WINDOW_SECONDS: &str = "PUBMESH_IDEMPOTENCY_WINDOW_SECONDS";
pub const IDEMPOTENCY_MAX_BYTES: &str = "PUBMESH_IDEMPOTENCY_MAX_BYTES";
pub const CLIENT_CHANNEL_CHURN: &str = "PUBMESH_CLIENT_CHANNEL_CHURN";
pub const CLIENT_CHANNEL_CHURN_SECONDS: &str = "PUBMESH_CLIENT_CHANNEL_CHURN_SECONDS";

/// Longest idempotency window accepted (a day).
const MAX_WINDOW_SECONDS: u64 = 86_400;

/// The flags of this module.
#[derive(Args, Debug, Default)]
pub struct BoundsCli {
    /// How long a publish's idempotency_key is remembered: a retry with the same key within it is not delivered or appended again [default: 300]
    #[arg(long, env = IDEMPOTENCY_WINDOW_SECONDS)]
    pub idempotency_window_seconds: Option<u64>,
    /// Memory a node gives to remembered idempotency keys (about 128 bytes each); beyond, the oldest are forgotten early [default: 16777216]
    #[arg(long, env = IDEMPOTENCY_MAX_BYTES)]
    pub idempotency_max_bytes: Option<usize>,
    /// Distinct channels one socket may join or leave per --client-channel-churn-seconds; a subscribe beyond gets `rate_limited` [default: 500]
    #[arg(long, env = CLIENT_CHANNEL_CHURN)]
    pub client_channel_churn: Option<usize>,
    /// The window of --client-channel-churn, in seconds [default: 10]
    #[arg(long, env = CLIENT_CHANNEL_CHURN_SECONDS)]
    pub client_channel_churn_seconds: Option<u64>,
}

/// How keyed publishes are remembered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyLimits {
    /// How long a key is kept (in memory and in Redis).
    pub window: Duration,
    /// Bytes of keys a node keeps in memory.
    pub max_bytes: usize,
}

impl Default for IdempotencyLimits {
    fn default() -> Self {
        IdempotencyLimits {
            window: crate::idempotency::DEFAULT_WINDOW,
            max_bytes: crate::idempotency::DEFAULT_MAX_BYTES,
        }
    }
}

/// How many distinct channels a socket may join or leave per window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChurnLimit {
    pub channels: usize,
    pub window: Duration,
}

impl Default for ChurnLimit {
    fn default() -> Self {
        ChurnLimit {
            channels: 500,
            window: Duration::from_secs(10),
        }
    }
}

/// Resolve this module's settings: flags (and environment), then the file,
/// then defaults.
pub fn resolve(
    cli: &BoundsCli,
    file: &FileConfig,
) -> Result<(IdempotencyLimits, ChurnLimit), ConfigError> {
    let d = IdempotencyLimits::default();
    let window = cli
        .idempotency_window_seconds
        .or(file.idempotency_window_seconds)
        .map_or(d.window, Duration::from_secs);
    if window.is_zero() || window.as_secs() > MAX_WINDOW_SECONDS {
        return Err(ConfigError::Invalid(format!(
            "idempotency_window_seconds must be 1 to {MAX_WINDOW_SECONDS}"
        )));
    }
    let max_bytes = cli
        .idempotency_max_bytes
        .or(file.idempotency_max_bytes)
        .unwrap_or(d.max_bytes);
    if max_bytes < 64 * crate::idempotency::ENTRY_COST {
        return Err(ConfigError::Invalid(format!(
            "idempotency_max_bytes must be at least {}",
            64 * crate::idempotency::ENTRY_COST
        )));
    }
    let c = ChurnLimit::default();
    let churn = ChurnLimit {
        channels: cli
            .client_channel_churn
            .or(file.client_channel_churn)
            .unwrap_or(c.channels),
        window: cli
            .client_channel_churn_seconds
            .or(file.client_channel_churn_seconds)
            .map_or(c.window, Duration::from_secs),
    };
    if churn.channels == 0 || churn.window.is_zero() {
        return Err(ConfigError::Invalid(
            "client_channel_churn and client_channel_churn_seconds must be > 0".into(),
        ));
    }
    Ok((IdempotencyLimits { window, max_bytes }, churn))
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Config};
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_then_file_then_defaults() {
        let config = Config::defaults();
        assert_eq!(config.idempotency, IdempotencyLimits::default());
        assert_eq!(config.channel_churn, ChurnLimit::default());
        let cli = Cli::try_parse_from([
            "pubmesh",
            "--idempotency-window-seconds",
            "30",
            "--client-channel-churn",
            "7",
        ])
        .expect("parses");
        let file: FileConfig = toml::from_str(
            "idempotency_window_seconds = 99\nidempotency_max_bytes = 65536\nclient_channel_churn_seconds = 3\n",
        )
        .expect("toml");
        let (idem, churn) = resolve(&cli.bounds, &file).expect("valid");
        assert_eq!(idem.window, Duration::from_secs(30));
        assert_eq!(idem.max_bytes, 65536);
        assert_eq!(churn.channels, 7);
        assert_eq!(churn.window, Duration::from_secs(3));
    }

    #[test]
    fn zero_or_tiny_settings_are_refused() {
        for text in [
            "idempotency_window_seconds = 0",
            "idempotency_window_seconds = 86401",
            "idempotency_max_bytes = 100",
            "client_channel_churn = 0",
            "client_channel_churn_seconds = 0",
        ] {
            let err = Config::from_toml(text).expect_err(text);
            assert!(err.to_string().contains("must be"), "{text}: {err}");
        }
    }
}
