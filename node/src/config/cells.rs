//! Settings of the Cells event gateway (`/ws/event`, docs/cells.md): which
//! JWT claims hold a session's user, profile, roles and workspaces, the
//! event kinds `POST /api/events` accepts, and the largest client frame;
//! and of `/ws/chat`: the ping timeout, the read-only claim and how much
//! history a room keeps.

use std::time::Duration;

use serde::Deserialize;

use super::addresses::Rate;
use super::ConfigError;

/// Environment variable names of these flags.
pub mod env {
    pub const USER_CLAIM: &str = "PUBMESH_CELLS_USER_CLAIM";
    pub const PROFILE_CLAIM: &str = "PUBMESH_CELLS_PROFILE_CLAIM";
    pub const ROLES_CLAIM: &str = "PUBMESH_CELLS_ROLES_CLAIM";
    pub const WORKSPACES_CLAIM: &str = "PUBMESH_CELLS_WORKSPACES_CLAIM";
    pub const EVENT_KINDS: &str = "PUBMESH_CELLS_EVENT_KINDS";
    pub const MAX_MESSAGE_SIZE: &str = "PUBMESH_CELLS_MAX_MESSAGE_SIZE";
    pub const COALESCE_KEYS: &str = "PUBMESH_CELLS_COALESCE_KEYS";
    pub const COALESCE_IDLE_MS: &str = "PUBMESH_CELLS_COALESCE_IDLE_MS";
    pub const COALESCE_MAX_WAIT_MS: &str = "PUBMESH_CELLS_COALESCE_MAX_WAIT_MS";
    pub const SESSION_RATE: &str = "PUBMESH_CELLS_SESSION_RATE";
    pub const SESSION_BURST: &str = "PUBMESH_CELLS_SESSION_BURST";
    pub const SILENT_RATE: &str = "PUBMESH_CELLS_SILENT_RATE";
    pub const SILENT_BURST: &str = "PUBMESH_CELLS_SILENT_BURST";
    pub const CHAT_PING_TIMEOUT_MS: &str = "PUBMESH_CELLS_CHAT_PING_TIMEOUT_MS";
    pub const CHAT_READONLY_CLAIM: &str = "PUBMESH_CELLS_CHAT_READONLY_CLAIM";
    pub const CHAT_HISTORY_SIZE: &str = "PUBMESH_CELLS_CHAT_HISTORY_SIZE";
    pub const CHAT_HISTORY_TTL_SECONDS: &str = "PUBMESH_CELLS_CHAT_HISTORY_TTL_SECONDS";
    pub const CHAT_ACCESS_URL: &str = "PUBMESH_CELLS_CHAT_ACCESS_URL";
    pub const CHAT_ACCESS_TIMEOUT_MS: &str = "PUBMESH_CELLS_CHAT_ACCESS_TIMEOUT_MS";
}

/// The first characters of a chat room's channel name: an internal name
/// (U+0001 first, which client channel names cannot contain), so only
/// `/ws/chat` joins and publishes there.
pub const CHAT_ROOM_PREFIX: &str = "\u{1}chat:";

/// The coalescing keys of the built-in kinds: the node uuid of node events.
pub const DEFAULT_COALESCE_KEYS: &[(&str, &str)] =
    &[("tree", "Target.Uuid"), ("meta", "Target.Uuid")];

/// The event kinds every node accepts.
pub const BUILTIN_KINDS: &[&str] = &["tree", "meta", "task", "idm", "activity"];

/// The flags (flattened into [`super::Cli`]).
#[derive(clap::Args, Debug, Default)]
pub struct CellsCli {
    /// Cells gateway: the JWT claim holding a session's user (login) [default: name, falling back to sub]
    #[arg(long, env = env::USER_CLAIM)]
    pub cells_user_claim: Option<String>,
    /// Cells gateway: the JWT claim holding a session's profile (a string) [default: profile]
    #[arg(long, env = env::PROFILE_CLAIM)]
    pub cells_profile_claim: Option<String>,
    /// Cells gateway: the JWT claim holding a session's roles (an array of strings) [default: roles]
    #[arg(long, env = env::ROLES_CLAIM)]
    pub cells_roles_claim: Option<String>,
    /// Cells gateway: the JWT claim holding a session's workspace ids (an array of strings) [default: workspaces]
    #[arg(long, env = env::WORKSPACES_CLAIM)]
    pub cells_workspaces_claim: Option<String>,
    /// Cells gateway: event kinds accepted besides tree, meta, task, idm and activity (comma separated)
    #[arg(long, env = env::EVENT_KINDS, value_delimiter = ',')]
    pub cells_event_kinds: Option<Vec<String>>,
    /// Cells gateway: the largest client frame on /ws/event, in bytes; larger ones close the socket with 1009 [default: 2048]
    #[arg(long, env = env::MAX_MESSAGE_SIZE)]
    pub cells_max_message_size: Option<usize>,
    /// Cells gateway: which field of an event's body is its coalescing key, per kind, as kind=Dotted.Path pairs (comma separated; `none` for no coalescing) [default: tree=Target.Uuid,meta=Target.Uuid]
    #[arg(long, env = env::COALESCE_KEYS, value_delimiter = ',')]
    pub cells_coalesce_keys: Option<Vec<String>>,
    /// Cells gateway: a key's burst is merged and sent this long after its last event, in milliseconds [default: 1000]
    #[arg(long, env = env::COALESCE_IDLE_MS)]
    pub cells_coalesce_idle_ms: Option<u64>,
    /// Cells gateway: a key's burst is sent at the latest this long after its first event, in milliseconds [default: 5000]
    #[arg(long, env = env::COALESCE_MAX_WAIT_MS)]
    pub cells_coalesce_max_wait_ms: Option<u64>,
    /// Cells gateway: events per second one session receives; beyond, events are dropped for it (0: no limit) [default: 30]
    #[arg(long, env = env::SESSION_RATE)]
    pub cells_session_rate: Option<u32>,
    /// Cells gateway: the per-session bucket size [default: 20]
    #[arg(long, env = env::SESSION_BURST)]
    pub cells_session_burst: Option<u32>,
    /// Cells gateway: events marked "Silent" a node publishes per second; beyond, they are dropped (0: no limit) [default: 20]
    #[arg(long, env = env::SILENT_RATE)]
    pub cells_silent_rate: Option<u32>,
    /// Cells gateway: the silent events' bucket size [default: 10]
    #[arg(long, env = env::SILENT_BURST)]
    pub cells_silent_burst: Option<u32>,
    /// Cells chat: a session that sends no JOIN ping for a room this long leaves it, in milliseconds [default: 20000]
    #[arg(long, env = env::CHAT_PING_TIMEOUT_MS)]
    pub cells_chat_ping_timeout_ms: Option<u64>,
    /// Cells chat: the JWT claim listing the rooms a session may read but not post to ("*", room uuids or TYPE:object) [default: chat_readonly]
    #[arg(long, env = env::CHAT_READONLY_CLAIM)]
    pub cells_chat_readonly_claim: Option<String>,
    /// Cells chat: messages (and deletions) a room's history keeps [default: 1000]
    #[arg(long, env = env::CHAT_HISTORY_SIZE)]
    pub cells_chat_history_size: Option<usize>,
    /// Cells chat: seconds a room's history is kept after its last message [default: 2592000, 30 days]
    #[arg(long, env = env::CHAT_HISTORY_TTL_SECONDS)]
    pub cells_chat_history_ttl_seconds: Option<u64>,
    /// Cells chat: a backend asked at each JOIN whether the user may write, only read, or not enter the room (POST, JSON; docs/cells.md) [default: none]
    #[arg(long, env = env::CHAT_ACCESS_URL)]
    pub cells_chat_access_url: Option<String>,
    /// Cells chat: how long the access backend may take; a JOIN it does not answer in time is refused [default: 2000]
    #[arg(long, env = env::CHAT_ACCESS_TIMEOUT_MS)]
    pub cells_chat_access_timeout_ms: Option<u64>,
}

/// The `[cells]` table of the TOML file.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct CellsFile {
    pub user_claim: Option<String>,
    pub profile_claim: Option<String>,
    pub roles_claim: Option<String>,
    pub workspaces_claim: Option<String>,
    pub event_kinds: Option<Vec<String>>,
    pub max_message_size: Option<usize>,
    pub coalesce_keys: Option<Vec<String>>,
    pub coalesce_idle_ms: Option<u64>,
    pub coalesce_max_wait_ms: Option<u64>,
    pub session_rate: Option<u32>,
    pub session_burst: Option<u32>,
    pub silent_rate: Option<u32>,
    pub silent_burst: Option<u32>,
    pub chat_ping_timeout_ms: Option<u64>,
    pub chat_readonly_claim: Option<String>,
    pub chat_history_size: Option<usize>,
    pub chat_history_ttl_seconds: Option<u64>,
    pub chat_access_url: Option<String>,
    pub chat_access_timeout_ms: Option<u64>,
}

/// The resolved settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cells {
    pub user_claim: String,
    pub profile_claim: String,
    pub roles_claim: String,
    pub workspaces_claim: String,
    /// Every accepted kind: the built-in ones, then the configured ones.
    pub kinds: Vec<String>,
    pub max_message_size: usize,
    /// (kind, dotted path of the key in the body): events of these kinds
    /// with a key are coalesced; others pass through at once.
    pub coalesce_keys: Vec<(String, String)>,
    /// A burst is sent this long after its last event...
    pub coalesce_idle: Duration,
    /// ...or this long after its first, whichever comes first.
    pub coalesce_max_wait: Duration,
    /// Events one session receives (`None`: no limit).
    pub session_rate: Option<Rate>,
    /// Events marked silent one node publishes (`None`: no limit).
    pub silent_rate: Option<Rate>,
    /// A chat session leaves a room it sent no JOIN ping for this long.
    pub chat_ping_timeout: Duration,
    /// The claim listing a session's read-only rooms.
    pub chat_readonly_claim: String,
    /// Messages and deletions kept per room.
    pub chat_history_size: usize,
    pub chat_history_ttl_seconds: u64,
    /// The backend asked at each JOIN, if any.
    pub chat_access_url: Option<String>,
    pub chat_access_timeout: Duration,
}

impl Default for Cells {
    fn default() -> Self {
        Cells::resolve(&CellsCli::default(), &CellsFile::default()).expect("defaults are valid")
    }
}

impl Cells {
    /// Flags first, then the file, then the defaults.
    pub(super) fn resolve(cli: &CellsCli, file: &CellsFile) -> Result<Self, ConfigError> {
        let pick = |flag: &Option<String>, key: &Option<String>, default: &str| {
            flag.clone()
                .or_else(|| key.clone())
                .unwrap_or_else(|| default.to_string())
        };
        let mut kinds: Vec<String> = BUILTIN_KINDS.iter().map(|k| k.to_string()).collect();
        let extra = cli.cells_event_kinds.clone().or(file.event_kinds.clone());
        for kind in extra.unwrap_or_default() {
            let kind = kind.trim().to_string();
            let plain = !kind.is_empty()
                && kind.len() <= 64
                && kind
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !plain {
                return Err(ConfigError::Invalid(format!(
                    "cells event kind {kind:?} must be 1 to 64 characters of [A-Za-z0-9_.-]"
                )));
            }
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        let coalesce_keys = coalesce_keys(
            cli.cells_coalesce_keys
                .clone()
                .or(file.coalesce_keys.clone()),
            &kinds,
        )?;
        let idle = cli
            .cells_coalesce_idle_ms
            .or(file.coalesce_idle_ms)
            .unwrap_or(1000);
        let max_wait = cli
            .cells_coalesce_max_wait_ms
            .or(file.coalesce_max_wait_ms)
            .unwrap_or(5000);
        if idle == 0 || max_wait < idle || max_wait > 600_000 {
            return Err(ConfigError::Invalid(
                "cells coalesce_idle_ms must be at least 1 and coalesce_max_wait_ms between it and 600000".into(),
            ));
        }
        let bucket = |rate: Option<u32>, burst: Option<u32>, default: (u32, u32), name: &str| {
            let rate = rate.unwrap_or(default.0);
            let burst = burst.unwrap_or(default.1);
            match (rate, burst) {
                (0, _) => Ok(None),
                (_, 0) => Err(ConfigError::Invalid(format!(
                    "cells {name}_burst must be at least 1"
                ))),
                (rate, burst) => Ok(Some(Rate { rate, burst })),
            }
        };
        let session_rate = bucket(
            cli.cells_session_rate.or(file.session_rate),
            cli.cells_session_burst.or(file.session_burst),
            (30, 20),
            "session",
        )?;
        let silent_rate = bucket(
            cli.cells_silent_rate.or(file.silent_rate),
            cli.cells_silent_burst.or(file.silent_burst),
            (20, 10),
            "silent",
        )?;
        let cells = Cells {
            user_claim: pick(&cli.cells_user_claim, &file.user_claim, "name"),
            profile_claim: pick(&cli.cells_profile_claim, &file.profile_claim, "profile"),
            roles_claim: pick(&cli.cells_roles_claim, &file.roles_claim, "roles"),
            workspaces_claim: pick(
                &cli.cells_workspaces_claim,
                &file.workspaces_claim,
                "workspaces",
            ),
            kinds,
            max_message_size: cli
                .cells_max_message_size
                .or(file.max_message_size)
                .unwrap_or(2048),
            coalesce_keys,
            coalesce_idle: Duration::from_millis(idle),
            coalesce_max_wait: Duration::from_millis(max_wait),
            session_rate,
            silent_rate,
            chat_ping_timeout: Duration::from_millis(
                cli.cells_chat_ping_timeout_ms
                    .or(file.chat_ping_timeout_ms)
                    .unwrap_or(20_000),
            ),
            chat_readonly_claim: pick(
                &cli.cells_chat_readonly_claim,
                &file.chat_readonly_claim,
                "chat_readonly",
            ),
            chat_history_size: cli
                .cells_chat_history_size
                .or(file.chat_history_size)
                .unwrap_or(1000),
            chat_history_ttl_seconds: cli
                .cells_chat_history_ttl_seconds
                .or(file.chat_history_ttl_seconds)
                .unwrap_or(30 * 24 * 3600),
            chat_access_url: cli
                .cells_chat_access_url
                .clone()
                .or(file.chat_access_url.clone()),
            chat_access_timeout: Duration::from_millis(
                cli.cells_chat_access_timeout_ms
                    .or(file.chat_access_timeout_ms)
                    .unwrap_or(2000),
            ),
        };
        let web = |u: &String| u.starts_with("http://") || u.starts_with("https://");
        if cells.chat_access_url.as_ref().is_some_and(|u| !web(u))
            || !(1..=60_000).contains(&cells.chat_access_timeout.as_millis())
        {
            return Err(ConfigError::Invalid(
                "cells chat_access_url must be an http:// or https:// URL, and \
                 chat_access_timeout_ms between 1 and 60000"
                    .into(),
            ));
        }
        let ping_ms = cells.chat_ping_timeout.as_millis();
        if !(200..=3_600_000).contains(&ping_ms)
            || !(1..=crate::policy::MAX_HISTORY_SIZE).contains(&cells.chat_history_size)
            || cells.chat_history_ttl_seconds == 0
        {
            return Err(ConfigError::Invalid(format!(
                "cells chat_ping_timeout_ms must be between 200 and 3600000, chat_history_size \
                 between 1 and {}, chat_history_ttl_seconds at least 1",
                crate::policy::MAX_HISTORY_SIZE
            )));
        }
        if cells.max_message_size < 256 {
            return Err(ConfigError::Invalid(
                "cells max_message_size must be at least 256".into(),
            ));
        }
        for (name, claim) in [
            ("user_claim", &cells.user_claim),
            ("profile_claim", &cells.profile_claim),
            ("roles_claim", &cells.roles_claim),
            ("workspaces_claim", &cells.workspaces_claim),
            ("chat_readonly_claim", &cells.chat_readonly_claim),
        ] {
            if claim.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "cells {name} must not be empty"
                )));
            }
        }
        Ok(cells)
    }
}

impl Cells {
    /// The namespace of chat rooms: history (so messages are stored where
    /// history is: Redis in a cluster, memory on one node) and presence
    /// (a room's members), for authenticated sessions.
    pub fn chat_namespace(&self) -> crate::policy::NamespaceConfig {
        crate::policy::NamespaceConfig {
            pattern: format!("{CHAT_ROOM_PREFIX}*"),
            history_size: self.chat_history_size,
            history_ttl_seconds: self.chat_history_ttl_seconds,
            presence: true,
            join_leave: false,
            subscribe: crate::policy::SubscribePolicy::Authenticated,
            publish: Some(crate::policy::ChannelPublish::None),
        }
    }
}

/// Parse `kind=Dotted.Path` pairs; `None` gives the defaults, `["none"]`
/// nothing. Each kind must be accepted and named once.
fn coalesce_keys(
    pairs: Option<Vec<String>>,
    kinds: &[String],
) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(pairs) = pairs else {
        return Ok(DEFAULT_COALESCE_KEYS
            .iter()
            .map(|(k, p)| (k.to_string(), p.to_string()))
            .collect());
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in pairs {
        let pair = pair.trim();
        if pair.is_empty() || pair == "none" {
            continue;
        }
        let invalid = || {
            ConfigError::Invalid(format!(
                "cells coalesce key {pair:?} must be kind=Dotted.Path with an accepted kind, each kind once"
            ))
        };
        let (kind, path) = pair.split_once('=').ok_or_else(invalid)?;
        let (kind, path) = (kind.trim(), path.trim());
        let path_ok = !path.is_empty() && path.split('.').all(|part| !part.is_empty());
        if !path_ok || !kinds.iter().any(|k| k == kind) || out.iter().any(|(k, _)| k == kind) {
            return Err(invalid());
        }
        out.push((kind.to_string(), path.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(cli: CellsCli) -> Result<Cells, ConfigError> {
        Cells::resolve(&cli, &CellsFile::default())
    }

    #[test]
    fn coalescing_and_rate_settings_resolve_and_bad_ones_are_refused() {
        let d = Cells::default();
        assert_eq!(d.coalesce_idle, Duration::from_secs(1));
        assert_eq!(d.coalesce_max_wait, Duration::from_secs(5));
        assert_eq!(
            d.session_rate,
            Some(Rate {
                rate: 30,
                burst: 20
            })
        );
        assert_eq!(
            d.silent_rate,
            Some(Rate {
                rate: 20,
                burst: 10
            })
        );
        let c = with(CellsCli {
            cells_coalesce_keys: Some(vec!["task=Job.ID".into(), " tree = Target.Uuid ".into()]),
            cells_session_rate: Some(0),
            ..CellsCli::default()
        })
        .unwrap();
        assert_eq!(
            c.coalesce_keys,
            [
                ("task".to_string(), "Job.ID".to_string()),
                ("tree".into(), "Target.Uuid".into())
            ]
        );
        assert_eq!(c.session_rate, None);
        let off = with(CellsCli {
            cells_coalesce_keys: Some(vec!["none".into()]),
            ..CellsCli::default()
        })
        .unwrap();
        assert!(off.coalesce_keys.is_empty());
        for keys in [
            "nokind",
            "chat=Target.Uuid",
            "tree=",
            "tree=a..b",
            "tree=a,tree=b",
        ] {
            let cli = CellsCli {
                cells_coalesce_keys: Some(keys.split(',').map(String::from).collect()),
                ..CellsCli::default()
            };
            assert!(with(cli).is_err(), "{keys}");
        }
        for cli in [
            CellsCli {
                cells_coalesce_idle_ms: Some(0),
                ..CellsCli::default()
            },
            CellsCli {
                cells_coalesce_idle_ms: Some(2000),
                cells_coalesce_max_wait_ms: Some(1000),
                ..CellsCli::default()
            },
            CellsCli {
                cells_silent_burst: Some(0),
                ..CellsCli::default()
            },
        ] {
            assert!(with(cli).is_err());
        }
    }

    #[test]
    fn chat_settings_resolve_and_bad_ones_are_refused() {
        let d = Cells::default();
        assert_eq!(d.chat_ping_timeout, Duration::from_secs(20));
        assert_eq!(d.chat_readonly_claim, "chat_readonly");
        let ns = d.chat_namespace();
        assert!(ns.pattern.starts_with('\u{1}') && ns.pattern.ends_with('*'));
        assert_eq!((ns.history_size, ns.presence), (1000, true));
        let c = with(CellsCli {
            cells_chat_ping_timeout_ms: Some(1500),
            cells_chat_history_size: Some(10),
            ..CellsCli::default()
        })
        .unwrap();
        assert_eq!(c.chat_ping_timeout, Duration::from_millis(1500));
        assert_eq!(c.chat_namespace().history_size, 10);
        for cli in [
            CellsCli {
                cells_chat_ping_timeout_ms: Some(10),
                ..CellsCli::default()
            },
            CellsCli {
                cells_chat_history_size: Some(0),
                ..CellsCli::default()
            },
            CellsCli {
                cells_chat_history_ttl_seconds: Some(0),
                ..CellsCli::default()
            },
            CellsCli {
                cells_chat_readonly_claim: Some(String::new()),
                ..CellsCli::default()
            },
            CellsCli {
                cells_chat_access_url: Some("ftp://x".into()),
                ..CellsCli::default()
            },
        ] {
            assert!(with(cli).is_err());
        }
    }
}
