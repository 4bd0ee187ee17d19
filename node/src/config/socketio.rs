//! Settings of the Socket.IO front-end (`/socket.io/`, docs/socketio.md):
//! Engine.IO timers and payload bound, the namespaces served and the rooms
//! each joins on connect, and the client events that join or leave rooms
//! through a declarative table (enough for Flamenco's `/subscription`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// Environment variable names of these flags.
pub mod env {
    pub const PING_INTERVAL_MS: &str = "PUBMESH_SOCKETIO_PING_INTERVAL_MS";
    pub const PING_TIMEOUT_MS: &str = "PUBMESH_SOCKETIO_PING_TIMEOUT_MS";
    pub const MAX_PAYLOAD: &str = "PUBMESH_SOCKETIO_MAX_PAYLOAD";
    pub const CONNECT_TIMEOUT_MS: &str = "PUBMESH_SOCKETIO_CONNECT_TIMEOUT_MS";
    pub const ADVERTISE_URL: &str = "PUBMESH_SOCKETIO_ADVERTISE_URL";
    pub const BACKEND_URL: &str = "PUBMESH_SOCKETIO_BACKEND_URL";
    pub const BACKEND_TIMEOUT_MS: &str = "PUBMESH_SOCKETIO_BACKEND_TIMEOUT_MS";
}

/// The main namespace.
pub const MAIN: &str = "/";

/// The flags (flattened into [`super::Cli`]).
#[derive(clap::Args, Debug, Default)]
pub struct SocketIoCli {
    /// Socket.IO: milliseconds between the server's Engine.IO pings, announced in the handshake [default: 25000]
    #[arg(long, env = env::PING_INTERVAL_MS)]
    pub socketio_ping_interval_ms: Option<u64>,
    /// Socket.IO: milliseconds a client has to answer a ping before it is dropped [default: 20000]
    #[arg(long, env = env::PING_TIMEOUT_MS)]
    pub socketio_ping_timeout_ms: Option<u64>,
    /// Socket.IO: the largest Engine.IO message (WebSocket frame) a client may send, in bytes; larger ones close the connection with 1009 [default: 1000000]
    #[arg(long, env = env::MAX_PAYLOAD)]
    pub socketio_max_payload: Option<usize>,
    /// Socket.IO: milliseconds a new connection has to join a namespace (CONNECT) before it is closed [default: 45000]
    #[arg(long, env = env::CONNECT_TIMEOUT_MS)]
    pub socketio_connect_timeout_ms: Option<u64>,
    /// Socket.IO: this node's URL as the other nodes reach it (http://host:port), where they forward long-polling requests for sessions it holds [default: http:// and --listen, 127.0.0.1 for an unspecified address]
    #[arg(long, env = env::ADVERTISE_URL)]
    pub socketio_advertise_url: Option<String>,
    /// Socket.IO: where client events that no join event handles are POSTed (a full URL); none: they are dropped
    #[arg(long, env = env::BACKEND_URL)]
    pub socketio_backend_url: Option<String>,
    /// Socket.IO: how long the backend has to answer an event; then the ack is an error [default: 5000]
    #[arg(long, env = env::BACKEND_TIMEOUT_MS)]
    pub socketio_backend_timeout_ms: Option<u64>,
}

/// The `[socketio]` table of the TOML file.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct SocketIoFile {
    pub ping_interval_ms: Option<u64>,
    pub ping_timeout_ms: Option<u64>,
    pub max_payload: Option<usize>,
    pub connect_timeout_ms: Option<u64>,
    pub advertise_url: Option<String>,
    pub backend_url: Option<String>,
    pub backend_timeout_ms: Option<u64>,
    /// The key of the CONNECT `auth` object holding the JWT [default: token].
    pub auth_field: Option<String>,
    #[serde(default)]
    pub namespaces: Vec<NamespaceFile>,
    #[serde(default)]
    pub join_events: Vec<JoinEventFile>,
}

/// `[[socketio.namespaces]]`: a namespace served besides `/` (or `/`
/// itself, to give it default rooms).
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct NamespaceFile {
    pub name: String,
    /// Rooms every socket joins when it connects to the namespace.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Connection-state recovery: how long after a disconnection a client
    /// may come back (to any node) and get what its rooms missed.
    pub recovery_seconds: Option<u64>,
}

/// `[[socketio.join_events]]`: a client event whose payload picks rooms to
/// join or leave, answered (when the client asks for an ack) with one of the
/// configured strings.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct JoinEventFile {
    pub event: String,
    pub namespace: Option<String>,
    pub op_field: Option<String>,
    pub subscribe: Option<String>,
    pub unsubscribe: Option<String>,
    pub type_field: Option<String>,
    pub id_field: Option<String>,
    /// `uuid` (the id must parse as a UUID) or `any` [default: uuid].
    pub id_format: Option<IdFormat>,
    pub ok: Option<String>,
    pub invalid_id: Option<String>,
    pub unknown_type: Option<String>,
    pub invalid_op: Option<String>,
    /// Prefix of the answer when the join fails; the error follows.
    pub failed: Option<String>,
    pub types: BTreeMap<String, JoinTypeFile>,
}

/// One `type` of a join event: its rooms (`{id}` stands for the id field).
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct JoinTypeFile {
    pub rooms: Vec<String>,
    /// The answer when a room needs `{id}` and the payload has none.
    pub missing_id: Option<String>,
}

/// What a join event's id must look like.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdFormat {
    #[default]
    Uuid,
    Any,
}

/// A namespace served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub rooms: Vec<String>,
    /// Connection-state recovery's window (`None`: off).
    pub recovery: Option<Duration>,
}

/// A join event, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinEvent {
    pub event: String,
    pub namespace: String,
    pub op_field: String,
    pub subscribe: String,
    pub unsubscribe: String,
    pub type_field: String,
    pub id_field: String,
    pub id_format: IdFormat,
    pub ok: String,
    pub invalid_id: String,
    pub unknown_type: String,
    pub invalid_op: String,
    pub failed: String,
    pub types: BTreeMap<String, JoinType>,
}

/// One type of a join event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinType {
    pub rooms: Vec<String>,
    pub missing_id: String,
}

impl JoinType {
    /// Do its rooms need an id?
    pub fn needs_id(&self) -> bool {
        self.rooms.iter().any(|r| r.contains("{id}"))
    }
}

/// The resolved settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketIo {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub max_payload: usize,
    pub connect_timeout: Duration,
    /// Where other nodes reach this one (None: from `--listen`).
    pub advertise_url: Option<String>,
    /// Where unhandled client events go, and how long it may take.
    pub backend_url: Option<String>,
    pub backend_timeout: Duration,
    pub auth_field: String,
    /// `/` first, then the others in file order.
    pub namespaces: Vec<Namespace>,
    pub join_events: Vec<JoinEvent>,
}

impl Default for SocketIo {
    fn default() -> Self {
        SocketIo::resolve(&SocketIoCli::default(), &SocketIoFile::default())
            .expect("defaults are valid")
    }
}

fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid(message)
}

/// A namespace name: `/`, or `/` and 1 to 64 characters of
/// `[A-Za-z0-9_.~/-]` (no `,`, `?` or `:`, which frame packets and rooms).
fn namespace_name(name: &str) -> Result<(), ConfigError> {
    let rest = name.strip_prefix('/').unwrap_or("");
    let plain = name == MAIN
        || (name.starts_with('/')
            && !rest.is_empty()
            && rest.len() <= 64
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.~/-".contains(&b)));
    if plain {
        Ok(())
    } else {
        Err(invalid(format!(
            "socketio namespace {name:?} must be / or / followed by 1 to 64 characters of [A-Za-z0-9_.~/-]"
        )))
    }
}

fn room_name(room: &str) -> Result<(), ConfigError> {
    crate::limits::channel_name(&room.replace("{id}", "x"))
        .map_err(|e| invalid(format!("socketio room {room:?}: {e}")))
}

impl SocketIo {
    /// Flags first, then the file, then the defaults.
    pub fn resolve(cli: &SocketIoCli, file: &SocketIoFile) -> Result<Self, ConfigError> {
        let ms = |flag: Option<u64>, key: Option<u64>, default: u64| {
            Duration::from_millis(flag.or(key).unwrap_or(default))
        };
        let ping_interval = ms(cli.socketio_ping_interval_ms, file.ping_interval_ms, 25_000);
        let ping_timeout = ms(cli.socketio_ping_timeout_ms, file.ping_timeout_ms, 20_000);
        let connect_timeout = ms(
            cli.socketio_connect_timeout_ms,
            file.connect_timeout_ms,
            45_000,
        );
        for (name, d) in [
            ("ping_interval_ms", ping_interval),
            ("ping_timeout_ms", ping_timeout),
            ("connect_timeout_ms", connect_timeout),
        ] {
            if d < Duration::from_millis(50) || d > Duration::from_secs(3600) {
                return Err(invalid(format!("socketio {name} must be 50 to 3600000")));
            }
        }
        let max_payload = cli
            .socketio_max_payload
            .or(file.max_payload)
            .unwrap_or(1_000_000);
        if !(256..=64 << 20).contains(&max_payload) {
            return Err(invalid(
                "socketio max_payload must be 256 bytes to 64 MiB".into(),
            ));
        }
        let mut namespaces = vec![Namespace {
            name: MAIN.to_string(),
            rooms: Vec::new(),
            recovery: None,
        }];
        for n in &file.namespaces {
            namespace_name(&n.name)?;
            for r in &n.rooms {
                if r.contains("{id}") {
                    return Err(invalid(format!(
                        "socketio default room {r:?} cannot use {{id}}"
                    )));
                }
                room_name(r)?;
            }
            let recovery = match n.recovery_seconds {
                None => None,
                Some(s @ 1..=86_400) => Some(Duration::from_secs(s)),
                Some(_) => {
                    return Err(invalid(format!(
                        "socketio namespace {:?}: recovery_seconds must be 1 to 86400",
                        n.name
                    )))
                }
            };
            if n.name == MAIN {
                namespaces[0].rooms = n.rooms.clone();
                namespaces[0].recovery = recovery;
            } else if namespaces.iter().any(|m| m.name == n.name) {
                return Err(invalid(format!(
                    "socketio namespace {:?} is configured twice",
                    n.name
                )));
            } else {
                namespaces.push(Namespace {
                    name: n.name.clone(),
                    rooms: n.rooms.clone(),
                    recovery,
                });
            }
        }
        let mut join_events = Vec::new();
        for e in &file.join_events {
            join_events.push(resolve_join_event(e, &namespaces)?);
        }
        Ok(SocketIo {
            ping_interval,
            ping_timeout,
            max_payload,
            connect_timeout,
            advertise_url: match cli
                .socketio_advertise_url
                .clone()
                .or(file.advertise_url.clone())
            {
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    return Err(invalid(format!(
                        "socketio advertise_url {url:?} must start with http:// or https://"
                    )))
                }
                url => url.map(|u| u.trim_end_matches('/').to_string()),
            },
            backend_url: match cli
                .socketio_backend_url
                .clone()
                .or(file.backend_url.clone())
            {
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    return Err(invalid(format!(
                        "socketio backend_url {url:?} must start with http:// or https://"
                    )))
                }
                url => url,
            },
            backend_timeout: ms(
                cli.socketio_backend_timeout_ms,
                file.backend_timeout_ms,
                5_000,
            ),
            auth_field: file.auth_field.clone().unwrap_or_else(|| "token".into()),
            namespaces,
            join_events,
        })
    }

    /// The namespace called `name`, if served.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    /// The join event `event` of namespace `nsp`, if configured.
    pub fn join_event(&self, nsp: &str, event: &str) -> Option<&JoinEvent> {
        self.join_events
            .iter()
            .find(|e| e.namespace == nsp && e.event == event)
    }
}

/// Event names a client may not emit (the reference parser refuses them),
/// so none can be a join event.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

fn resolve_join_event(
    e: &JoinEventFile,
    namespaces: &[Namespace],
) -> Result<JoinEvent, ConfigError> {
    let namespace = e.namespace.clone().unwrap_or_else(|| MAIN.to_string());
    if !namespaces.iter().any(|n| n.name == namespace) {
        return Err(invalid(format!(
            "socketio join event {:?}: namespace {namespace:?} is not configured",
            e.event
        )));
    }
    if e.event.is_empty() || RESERVED_EVENTS.contains(&e.event.as_str()) {
        return Err(invalid(format!(
            "socketio join event {:?} is empty or reserved",
            e.event
        )));
    }
    if e.types.is_empty() {
        return Err(invalid(format!(
            "socketio join event {:?} has no types",
            e.event
        )));
    }
    let pick = |v: &Option<String>, default: &str| v.clone().unwrap_or_else(|| default.to_string());
    let mut types = BTreeMap::new();
    for (name, t) in &e.types {
        if t.rooms.is_empty() {
            return Err(invalid(format!(
                "socketio join event {:?}: type {name:?} has no rooms",
                e.event
            )));
        }
        for r in &t.rooms {
            room_name(r)?;
        }
        types.insert(
            name.clone(),
            JoinType {
                rooms: t.rooms.clone(),
                missing_id: pick(
                    &t.missing_id,
                    &format!("operation on {name} requires an id"),
                ),
            },
        );
    }
    Ok(JoinEvent {
        event: e.event.clone(),
        namespace,
        op_field: pick(&e.op_field, "op"),
        subscribe: pick(&e.subscribe, "subscribe"),
        unsubscribe: pick(&e.unsubscribe, "unsubscribe"),
        type_field: pick(&e.type_field, "type"),
        id_field: pick(&e.id_field, "id"),
        id_format: e.id_format.unwrap_or_default(),
        ok: pick(&e.ok, "ok"),
        invalid_id: pick(&e.invalid_id, "invalid id, ignoring request"),
        unknown_type: pick(&e.unknown_type, "unknown type, ignoring request"),
        invalid_op: pick(&e.invalid_op, "invalid operation, ignoring request"),
        failed: pick(&e.failed, "unable to perform operation: "),
        types,
    })
}
