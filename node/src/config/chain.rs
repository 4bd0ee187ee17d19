//! Settings of chain's protocol at `/socket/sse` (docs/chain.md): how long a
//! session outlives its event stream, and how much it buffers meanwhile.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// Environment variable names of these flags.
pub mod env {
    pub const GRACE_MS: &str = "PUBMESH_CHAIN_GRACE_MS";
    pub const BUFFER_FRAMES: &str = "PUBMESH_CHAIN_BUFFER_FRAMES";
}

/// The flags (flattened into [`super::Cli`]).
#[derive(clap::Args, Debug, Default)]
pub struct ChainCli {
    /// chain (/socket/sse): a session without an event stream keeps its memberships this long, in ms, then ends (its POSTs get 410) [default: 15000]
    #[arg(long, env = env::GRACE_MS)]
    pub chain_grace_ms: Option<u64>,
    /// chain (/socket/sse): messages a session without an event stream buffers; later ones are dropped and the loss is reported on resume [default: 256]
    #[arg(long, env = env::BUFFER_FRAMES)]
    pub chain_buffer_frames: Option<usize>,
}

/// The `[chain]` table of the TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ChainFile {
    pub grace_ms: Option<u64>,
    pub buffer_frames: Option<usize>,
}

/// The resolved settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// How long a session outlives its last event stream (or POST).
    pub grace: Duration,
    /// Messages buffered for a session without an event stream.
    pub buffer_frames: usize,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            grace: Duration::from_secs(15),
            buffer_frames: 256,
        }
    }
}

impl Chain {
    /// Flags first, then the file, then the defaults.
    pub fn resolve(cli: &ChainCli, file: &ChainFile) -> Result<Chain, ConfigError> {
        let d = Chain::default();
        let grace_ms = cli.chain_grace_ms.or(file.grace_ms);
        let grace = grace_ms.map(Duration::from_millis).unwrap_or(d.grace);
        if grace < Duration::from_millis(100) || grace > Duration::from_secs(3600) {
            return Err(ConfigError::Invalid(
                "chain_grace_ms must be between 100 and 3600000".into(),
            ));
        }
        let buffer_frames = cli
            .chain_buffer_frames
            .or(file.buffer_frames)
            .unwrap_or(d.buffer_frames);
        if !(1..=65_536).contains(&buffer_frames) {
            return Err(ConfigError::Invalid(
                "chain_buffer_frames must be between 1 and 65536".into(),
            ));
        }
        Ok(Chain {
            grace,
            buffer_frames,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_bounds_are_checked() {
        let file = ChainFile {
            grace_ms: Some(2000),
            buffer_frames: Some(8),
        };
        let resolved = Chain::resolve(&ChainCli::default(), &file).expect("valid");
        assert_eq!(resolved.grace, Duration::from_secs(2));
        assert_eq!(resolved.buffer_frames, 8);
        let cli = ChainCli {
            chain_grace_ms: Some(500),
            chain_buffer_frames: None,
        };
        assert_eq!(
            Chain::resolve(&cli, &file).expect("valid").grace,
            Duration::from_millis(500)
        );
        assert_eq!(
            Chain::resolve(&ChainCli::default(), &ChainFile::default()).expect("valid"),
            Chain::default()
        );
        for bad in [
            ChainFile {
                grace_ms: Some(10),
                buffer_frames: None,
            },
            ChainFile {
                grace_ms: None,
                buffer_frames: Some(0),
            },
        ] {
            assert!(Chain::resolve(&ChainCli::default(), &bad).is_err());
        }
    }
}
