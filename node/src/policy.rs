//! Policy: who may publish and subscribe where, and channel options by
//! namespace. Pure rules over plain values (no connection, hub or node
//! types), so every layer can ask without an import cycle.
//!
//! Channel options by namespace:
//!
//! A namespace matches channel names by pattern (`chat:*` is a prefix, `lobby`
//! an exact name, `*` everything); the first match in file order wins. It sets
//! history, presence, join/leave events and who may subscribe and publish.
//! Channels that match no namespace get [`ChannelOptions::default`]: no
//! history, no presence, anyone may subscribe, publishing per
//! `--client-channel-publish`.

use clap::ValueEnum;
use serde::Deserialize;

/// Who may publish to channels from a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelPublish {
    /// Any socket may publish to any channel.
    Any,
    /// Only members of a channel may publish to it.
    Members,
    /// Sockets may not publish to channels (the server API still can).
    None,
}

/// Who may send `user` / `client` frames from a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectPublish {
    /// Any socket, anonymous ones included.
    Any,
    /// Only sockets with a valid token.
    Authenticated,
    /// No socket (the server API still can).
    None,
}

/// What the rules need to know about a connection.
#[derive(Clone, Copy, Debug)]
pub struct Claims<'a> {
    /// Has a verified token.
    pub authenticated: bool,
    /// The token's `channels` claim (names or `prefix*` patterns).
    pub channels: Option<&'a [String]>,
}

/// May a connection with these claims subscribe to `channel` (and read its
/// history and presence)? The error is the message clients see.
pub fn may_subscribe(
    options: &ChannelOptions,
    claims: Claims<'_>,
    channel: &str,
) -> Result<(), String> {
    let allowed = match options.subscribe {
        SubscribePolicy::Anyone => true,
        SubscribePolicy::Authenticated => claims.authenticated,
        SubscribePolicy::Claim => {
            claims.authenticated
                && claims
                    .channels
                    .map(|list| list.iter().any(|p| pattern_matches(p, channel)))
                    .unwrap_or(false)
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(format!("not allowed to subscribe to channel {channel:?}"))
    }
}

/// May a socket publish to `channel` under `policy` (the namespace's, else
/// `--client-channel-publish`)?
pub fn may_publish_channel(
    policy: ChannelPublish,
    is_member: bool,
    channel: &str,
) -> Result<(), String> {
    match policy {
        ChannelPublish::Any => Ok(()),
        ChannelPublish::None => Err(format!(
            "publishing to channel {channel:?} from a socket is disabled"
        )),
        ChannelPublish::Members if is_member => Ok(()),
        ChannelPublish::Members => Err(format!("not a member of channel {channel:?}")),
    }
}

/// May a socket send `user` or `client` messages (`kind`) under `policy`?
pub fn may_publish_direct(
    policy: DirectPublish,
    authenticated: bool,
    kind: &str,
) -> Result<(), String> {
    match policy {
        DirectPublish::Any => Ok(()),
        DirectPublish::Authenticated if authenticated => Ok(()),
        DirectPublish::Authenticated => {
            Err(format!("{kind} messages need an authenticated socket"))
        }
        DirectPublish::None => Err(format!("{kind} messages from a socket are disabled")),
    }
}

/// Who may subscribe to a channel (and read its history and presence).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribePolicy {
    /// Any socket, anonymous ones included.
    #[default]
    Anyone,
    /// Sockets with a valid token.
    Authenticated,
    /// Sockets whose token has a `channels` claim listing the channel (or a
    /// pattern that matches it).
    Claim,
}

/// One `[[namespaces]]` table of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// `prefix*`, an exact channel name, or `*`.
    pub pattern: String,
    /// Publications kept per channel; 0 turns history off.
    #[serde(default)]
    pub history_size: usize,
    /// Seconds history is kept after the channel's last publication.
    #[serde(default)]
    pub history_ttl_seconds: u64,
    /// Track who is in the channel.
    #[serde(default)]
    pub presence: bool,
    /// Push join/leave events to members (needs presence).
    #[serde(default)]
    pub join_leave: bool,
    #[serde(default)]
    pub subscribe: SubscribePolicy,
    /// Who may publish from a socket; `--client-channel-publish` when absent.
    pub publish: Option<ChannelPublish>,
}

/// The options a channel ends up with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelOptions {
    pub history_size: usize,
    pub history_ttl_seconds: u64,
    pub presence: bool,
    pub join_leave: bool,
    pub subscribe: SubscribePolicy,
    pub publish: Option<ChannelPublish>,
}

impl ChannelOptions {
    pub fn history(&self) -> bool {
        self.history_size > 0
    }
}

/// Largest history a channel may keep.
pub const MAX_HISTORY_SIZE: usize = 100_000;

/// The configured namespaces, checked at start-up, and the internal ones
/// front-ends add for channels of their own (names starting with U+0001,
/// such as Cells chat rooms), which take precedence.
#[derive(Clone, Debug, Default)]
pub struct Namespaces {
    rules: Vec<(Pattern, ChannelOptions)>,
    /// Rules of internal channels (checked only for names starting with
    /// [`INTERNAL_PREFIX`], so they never slow down other channels).
    internal: Vec<(Pattern, ChannelOptions)>,
}

/// The first character of internal channel names, which client channel
/// names cannot contain.
pub const INTERNAL_PREFIX: char = '\u{1}';

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("pattern must not be empty".into());
        }
        match text.find('*') {
            None => Ok(Pattern::Exact(text.to_string())),
            Some(i) if i == text.len() - 1 => Ok(Pattern::Prefix(text[..i].to_string())),
            Some(_) => Err(format!("pattern {text:?}: '*' is only allowed at the end")),
        }
    }

    fn matches(&self, channel: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == channel,
            Pattern::Prefix(prefix) => channel.starts_with(prefix.as_str()),
        }
    }
}

/// Does `pattern` (exact, `prefix*` or `*`) match `channel`? Used for the
/// `channels` JWT claim too.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    Pattern::parse(pattern)
        .map(|p| p.matches(channel))
        .unwrap_or(false)
}

impl Namespaces {
    pub fn new(configs: &[NamespaceConfig]) -> Result<Namespaces, String> {
        let mut rules = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            let at = |m: String| format!("namespaces[{i}] ({}): {m}", c.pattern);
            let pattern = Pattern::parse(&c.pattern).map_err(at)?;
            if c.history_size > MAX_HISTORY_SIZE {
                return Err(at(format!(
                    "history_size must be at most {MAX_HISTORY_SIZE}"
                )));
            }
            if c.history_size > 0 && c.history_ttl_seconds == 0 {
                return Err(at("history_size needs history_ttl_seconds > 0".into()));
            }
            if c.history_size == 0 && c.history_ttl_seconds > 0 {
                return Err(at("history_ttl_seconds needs history_size > 0".into()));
            }
            if c.join_leave && !c.presence {
                return Err(at("join_leave needs presence = true".into()));
            }
            rules.push((
                pattern,
                ChannelOptions {
                    history_size: c.history_size,
                    history_ttl_seconds: c.history_ttl_seconds,
                    presence: c.presence,
                    join_leave: c.join_leave,
                    subscribe: c.subscribe,
                    publish: c.publish,
                },
            ));
        }
        Ok(Namespaces {
            rules,
            internal: Vec::new(),
        })
    }

    /// Add the namespace of internal channels `config.pattern` (which must
    /// start with [`INTERNAL_PREFIX`]).
    pub fn with_internal(mut self, config: &NamespaceConfig) -> Result<Namespaces, String> {
        if !config.pattern.starts_with(INTERNAL_PREFIX) {
            return Err(format!("{:?} is not an internal pattern", config.pattern));
        }
        let mut one = Namespaces::new(std::slice::from_ref(config))?;
        self.internal.append(&mut one.rules);
        Ok(self)
    }

    /// The options of a channel.
    pub fn options(&self, channel: &str) -> ChannelOptions {
        let rules = if channel.starts_with(INTERNAL_PREFIX) && !self.internal.is_empty() {
            &self.internal
        } else {
            &self.rules
        };
        rules
            .iter()
            .find(|(p, _)| p.matches(channel))
            .map(|(_, o)| o.clone())
            .unwrap_or_default()
    }

    /// True when no configured namespace turns on history or presence (the
    /// fast path; internal channels may still have them, see
    /// [`Namespaces::is_plain_for`]).
    pub fn is_plain(&self) -> bool {
        self.rules.iter().all(|(_, o)| !o.history() && !o.presence)
    }

    /// True when none of `channels` can have history or presence.
    pub fn is_plain_for(&self, channels: &[String]) -> bool {
        self.is_plain()
            && (self.internal.is_empty()
                || !channels.iter().any(|c| c.starts_with(INTERNAL_PREFIX)))
    }

    /// True when some channels (configured or internal) keep presence.
    pub fn keeps_presence(&self) -> bool {
        self.rules
            .iter()
            .chain(&self.internal)
            .any(|(_, o)| o.presence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(toml_text: &str) -> Result<Namespaces, String> {
        #[derive(Deserialize)]
        struct F {
            namespaces: Vec<NamespaceConfig>,
        }
        let f: F = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        Namespaces::new(&f.namespaces)
    }

    #[test]
    fn first_matching_namespace_wins() {
        let n = ns(r#"
            [[namespaces]]
            pattern = "chat:vip*"
            subscribe = "claim"
            [[namespaces]]
            pattern = "chat:*"
            history_size = 10
            history_ttl_seconds = 60
            presence = true
            join_leave = true
        "#)
        .expect("valid");
        assert_eq!(n.options("chat:vip1").subscribe, SubscribePolicy::Claim);
        assert!(!n.options("chat:vip1").history());
        assert_eq!(n.options("chat:room").history_size, 10);
        assert!(n.options("chat:room").join_leave);
        assert_eq!(n.options("other"), ChannelOptions::default());
        assert!(!n.is_plain());
    }

    #[test]
    fn bad_namespaces_are_rejected_with_a_message() {
        let e = ns("[[namespaces]]\npattern = \"a*b\"").unwrap_err();
        assert!(e.contains("only allowed at the end"), "{e}");
        let e = ns("[[namespaces]]\npattern = \"a\"\nhistory_size = 5").unwrap_err();
        assert!(e.contains("history_ttl_seconds"), "{e}");
        let e = ns("[[namespaces]]\npattern = \"a\"\njoin_leave = true").unwrap_err();
        assert!(e.contains("presence"), "{e}");
        let e = ns("[[namespaces]]\npattern = \"a\"\nhistroy_size = 5").unwrap_err();
        assert!(e.contains("histroy_size"), "{e}");
    }

    #[test]
    fn internal_namespaces_apply_to_internal_names_only() {
        let configured = ns("[[namespaces]]\npattern = \"*\"\npresence = true").expect("valid");
        let room = NamespaceConfig {
            pattern: "\u{1}room:*".into(),
            history_size: 5,
            history_ttl_seconds: 60,
            presence: true,
            join_leave: false,
            subscribe: SubscribePolicy::Authenticated,
            publish: None,
        };
        let n = configured.with_internal(&room).expect("internal");
        assert_eq!(n.options("\u{1}room:1").history_size, 5);
        assert_eq!(n.options("\u{1}other:1"), ChannelOptions::default());
        assert_eq!(n.options("room:1").history_size, 0);
        assert!(n.options("room:1").presence);
        let plain = Namespaces::default()
            .with_internal(&room)
            .expect("internal");
        assert!(plain.is_plain() && plain.keeps_presence());
        assert!(plain.is_plain_for(&["a".into()]));
        assert!(!plain.is_plain_for(&["\u{1}room:1".into()]));
        let outside = NamespaceConfig {
            pattern: "room:*".into(),
            ..room
        };
        assert!(Namespaces::default().with_internal(&outside).is_err());
    }

    #[test]
    fn claim_patterns_match_prefixes_and_names() {
        assert!(pattern_matches("chat:*", "chat:1"));
        assert!(pattern_matches("*", "x"));
        assert!(pattern_matches("x", "x"));
        assert!(!pattern_matches("x", "xy"));
    }
}
