//! Redis pub/sub channel names, in one place.
//!
//! | topic | name | subscribed by |
//! |---|---|---|
//! | a channel's messages | `{p}.ch.{{channel}}` | nodes with at least one local member |
//! | a user's messages | `{p}.u.{user}` | nodes with at least one connection of that user |
//! | a client's messages, replies | `{p}.n.{node}` | the node itself |
//! | broadcast to everyone | `{p}.all` | every node |
//! | control: heartbeats, leaving, disconnect, channel queries | `{p}.ctl` | every node |
//!
//! A channel's topic wraps the channel name in literal braces: `pubmesh.ch.{room-1}`.
//! In Redis Cluster that is a hash tag, so the topic and the channel's history
//! and presence keys (`pubmesh.h.{room-1}`, …) share one slot, and one Lua
//! script can append to the history and `SPUBLISH` the message atomically.
//! Different channels still spread over the shards. The other names are used
//! as-is; avoid braces in the prefix.

/// Builds and parses the Redis channel names for one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// `{prefix}.` — stored with the dot so building a name is one allocation.
    base: String,
}

/// What a Redis channel name refers to; the inverse of the [`Topics`] builders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicKind<'a> {
    /// `{p}.ch.{{channel}}`
    Channel(&'a str),
    /// `{p}.u.{user}`
    User(&'a str),
    /// `{p}.n.{node}`
    Node(&'a str),
    /// `{p}.all`
    All,
    /// `{p}.ctl`
    Control,
}

impl Topics {
    /// The prefix used when none is configured.
    pub const DEFAULT_PREFIX: &'static str = "pubmesh";

    /// Names under `prefix` (`--redis-prefix`).
    pub fn new(prefix: &str) -> Self {
        let mut base = String::with_capacity(prefix.len() + 1);
        base.push_str(prefix);
        base.push('.');
        Topics { base }
    }

    /// The prefix these names live under.
    pub fn prefix(&self) -> &str {
        &self.base[..self.base.len() - 1]
    }

    /// `{p}.ch.{{channel}}` (literal braces: a Redis Cluster hash tag shared
    /// with the channel's history and presence keys): messages for a channel.
    pub fn channel(&self, channel: &str) -> String {
        self.join3("ch.{", channel, "}")
    }

    /// `{p}.u.{user}`: messages for every connection of a user (root id).
    pub fn user(&self, user: &str) -> String {
        self.join("u.", user)
    }

    /// [`Topics::channel`] written into `out` (emptied first), for a name
    /// needed only for a moment: no allocation once `out` is large enough.
    pub fn channel_in(&self, channel: &str, out: &mut String) {
        self.join3_in("ch.{", channel, "}", out);
    }

    /// [`Topics::user`] written into `out` (emptied first).
    pub fn user_in(&self, user: &str, out: &mut String) {
        self.join3_in("u.", user, "", out);
    }

    /// `{p}.n.{node}`: messages for clients owned by `node`, and replies to it.
    pub fn node(&self, node: &str) -> String {
        self.join("n.", node)
    }

    /// `{p}.all`: broadcast to every connection on every node.
    pub fn all(&self) -> String {
        self.join("all", "")
    }

    /// `{p}.ctl`: cluster control traffic (heartbeats, leaving, disconnect, queries).
    pub fn control(&self) -> String {
        self.join("ctl", "")
    }

    /// What `topic` names, or `None` if it is not one of ours.
    ///
    /// Exact inverse of the builders: `parse(&t.channel(x)) == Some(Channel(x))`
    /// for every `x`, including names that contain dots.
    pub fn parse<'a>(&self, topic: &'a str) -> Option<TopicKind<'a>> {
        let rest = topic.strip_prefix(self.base.as_str())?;
        if let Some(name) = rest.strip_prefix("ch.{") {
            name.strip_suffix('}').map(TopicKind::Channel)
        } else if let Some(name) = rest.strip_prefix("u.") {
            Some(TopicKind::User(name))
        } else if let Some(name) = rest.strip_prefix("n.") {
            Some(TopicKind::Node(name))
        } else if rest == "all" {
            Some(TopicKind::All)
        } else if rest == "ctl" {
            Some(TopicKind::Control)
        } else {
            None
        }
    }

    fn join(&self, kind: &str, name: &str) -> String {
        self.join3(kind, name, "")
    }

    /// `{base}{kind}{name}{end}` in one allocation of the exact size (a
    /// topic is built for every relayed publish).
    fn join3(&self, kind: &str, name: &str, end: &str) -> String {
        let len = self.base.len() + kind.len() + name.len() + end.len();
        let mut out = String::with_capacity(len);
        self.join3_in(kind, name, end, &mut out);
        out
    }

    fn join3_in(&self, kind: &str, name: &str, end: &str, out: &mut String) {
        out.clear();
        out.push_str(&self.base);
        out.push_str(kind);
        out.push_str(name);
        out.push_str(end);
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics::new(Self::DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefix_builds_the_documented_names() {
        let t = Topics::default();
        assert_eq!(t.prefix(), "pubmesh");
        assert_eq!(t.channel("news"), "pubmesh.ch.{news}");
        assert_eq!(t.user("u42"), "pubmesh.u.u42");
        assert_eq!(t.node("n1"), "pubmesh.n.n1");
        assert_eq!(t.all(), "pubmesh.all");
        assert_eq!(t.control(), "pubmesh.ctl");
    }

    #[test]
    fn parse_inverts_every_builder() {
        for prefix in ["pubmesh", "a.b", "x"] {
            let t = Topics::new(prefix);
            for name in ["news", "a.b.c", "", "ch.x", "all", "ünï"] {
                assert_eq!(t.parse(&t.channel(name)), Some(TopicKind::Channel(name)));
                assert_eq!(t.parse(&t.user(name)), Some(TopicKind::User(name)));
                assert_eq!(t.parse(&t.node(name)), Some(TopicKind::Node(name)));
            }
            // The in-place builders write the same names over what was there.
            let mut out = String::from("left over from before");
            for name in ["news", "a.b.c", ""] {
                t.channel_in(name, &mut out);
                assert_eq!(out, t.channel(name));
                t.user_in(name, &mut out);
                assert_eq!(out, t.user(name));
            }
            assert_eq!(t.parse(&t.all()), Some(TopicKind::All));
            assert_eq!(t.parse(&t.control()), Some(TopicKind::Control));
        }
    }

    #[test]
    fn parse_rejects_foreign_names() {
        let t = Topics::default();
        for other in [
            "other.ch.{news}",
            "pubmesh.ch.news",
            "pubmesh",
            "pubmesh.",
            "pubmesh.all.x",
            "pubmesh.ctlx",
            "pubmesh.x.y",
            "pubmeshch.news",
            "",
        ] {
            assert_eq!(t.parse(other), None, "{other:?}");
        }
        assert_eq!(Topics::new("pub").parse("pubmesh.all"), None);
    }
}
