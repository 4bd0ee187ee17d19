//! Node ids, client ids and the channel ids nodes give.
//!
//! A client id names one WebSocket connection anywhere in the cluster and says
//! which node owns it, so any node can route to it without a lookup:
//!
//! ```text
//! {unix seconds}:{32 lowercase hex}:{node id}
//! 1730887348:f46d85203c704c099e9f44e948322a20:n1
//! ```
//!
//! A channel id a node gives a connection that did not ask for one has the
//! same form, so it names its node too ([`channel_owner`]): any node can send
//! that channel's messages straight to the node it names.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest node id accepted by [`valid_node_id`].
pub const MAX_NODE_ID_LEN: usize = 64;

/// Whether `id` is a usable node id: 1 to 64 characters from `[A-Za-z0-9_-]`.
///
/// Node ids end up inside Redis channel names (`{p}.n.{node}`) and client ids,
/// so they may not contain `.`, `:`, braces or whitespace.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A fresh client id owned by `node_id`: `{unix secs}:{uuid v4 as 32 lowercase hex}:{node_id}`.
///
/// `node_id` is expected to satisfy [`valid_node_id`] (the node checks its own
/// id at start-up); otherwise [`owner_node`] will not recognise the result.
pub fn new_client_id(node_id: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // A version 4 UUID from the thread's generator (ChaCha, seeded from the
    // OS), not `Uuid::new_v4`, which asks the kernel for every id: a
    // connection takes two (its client id and its fresh channel).
    let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    // Built in place: `format!` through `Display` costs more than the rest.
    let mut id = String::with_capacity(20 + 1 + 32 + 1 + node_id.len());
    let _ = write!(id, "{secs}");
    id.push(':');
    id.push_str(uuid.simple().encode_lower(&mut uuid::Uuid::encode_buffer()));
    id.push(':');
    id.push_str(node_id);
    id
}

/// The node that owns `client_id`: everything after the second `:`.
///
/// Returns `None` when there are fewer than two `:` or when that remainder is
/// not a [`valid_node_id`], so an id supplied by a client can never route to a
/// Redis channel outside `{p}.n.{valid node id}`. The first two parts are not
/// checked; use [`valid_client_id`] for a full check.
pub fn owner_node(client_id: &str) -> Option<&str> {
    let mut parts = client_id.splitn(3, ':');
    parts.next()?;
    parts.next()?;
    parts.next().filter(|node| valid_node_id(node))
}

/// Whether `client_id` has exactly the form produced by [`new_client_id`]:
/// decimal seconds, 32 lowercase hex digits, and a [`valid_node_id`].
pub fn valid_client_id(client_id: &str) -> bool {
    let mut parts = client_id.splitn(3, ':');
    let (Some(secs), Some(hex), Some(node)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !secs.is_empty()
        && secs.len() <= 20
        && secs.bytes().all(|b| b.is_ascii_digit())
        && hex.len() == 32
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && valid_node_id(node)
}

/// The node a channel id of the client-id form names, or `None` for any
/// other channel id: a channel id a node gives ([`new_client_id`]'s form)
/// names the node that gave it.
pub fn channel_owner(channel: &str) -> Option<&str> {
    if valid_client_id(channel) {
        owner_node(channel)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_accept_the_documented_alphabet_only() {
        assert!(valid_node_id("n1"));
        assert!(valid_node_id("node_A-9"));
        assert!(valid_node_id(&"x".repeat(64)));
        assert!(!valid_node_id(""));
        assert!(!valid_node_id(&"x".repeat(65)));
        for bad in ["a.b", "a:b", "a b", "{a}", "é", "a/b", "a\n"] {
            assert!(!valid_node_id(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn new_client_id_has_the_documented_form_and_names_its_owner() {
        let id = new_client_id("n1");
        assert!(valid_client_id(&id), "{id}");
        assert_eq!(owner_node(&id), Some("n1"));
        let parts: Vec<&str> = id.split(':').collect();
        assert_eq!(parts.len(), 3);
        let secs: u64 = parts[0].parse().unwrap();
        assert!(secs > 1_600_000_000);
        assert_eq!(parts[1].len(), 32);
        let uuid = uuid::Uuid::parse_str(parts[1]).expect("a UUID");
        assert_eq!(uuid.get_version_num(), 4, "{id}");
        assert_ne!(new_client_id("n1"), id, "ids must be unique");
    }

    #[test]
    fn only_a_channel_id_of_the_exact_client_id_form_names_a_node() {
        let id = new_client_id("node-7");
        assert_eq!(channel_owner(&id), Some("node-7"));
        assert_eq!(
            channel_owner("1730887348:f46d85203c704c099e9f44e948322a20:n1"),
            Some("n1")
        );
        for other in [
            "lobby",
            "a:b:n1",
            "1730887348:f46d85203c704c099e9f44e948322a20",
            "1730887348:F46D85203C704C099E9F44E948322A20:n1",
            "1730887348:f46d85203c704c099e9f44e948322a2:n1",
            "1730887348:f46d85203c704c099e9f44e948322a20:n.1",
            "x1730887348:f46d85203c704c099e9f44e948322a20:n1",
        ] {
            assert_eq!(channel_owner(other), None, "{other}");
        }
    }

    #[test]
    fn owner_node_is_everything_after_the_second_colon() {
        assert_eq!(
            owner_node("1730887348:f46d85203c704c099e9f44e948322a20:n1"),
            Some("n1")
        );
        assert_eq!(owner_node("a:b:node-7"), Some("node-7"));
        assert_eq!(owner_node("a:b:"), None);
        assert_eq!(owner_node("a:b"), None);
        assert_eq!(owner_node("nocolon"), None);
        assert_eq!(
            owner_node("a:b:c:d"),
            None,
            "':' is not a node id character"
        );
        assert_eq!(owner_node("a:b:x.ch.secret"), None);
    }

    #[test]
    fn valid_client_id_rejects_malformed_parts() {
        assert!(valid_client_id(
            "1730887348:f46d85203c704c099e9f44e948322a20:n1"
        ));
        assert!(!valid_client_id(
            "1730887348:F46D85203C704C099E9F44E948322A20:n1"
        ));
        assert!(!valid_client_id("1730887348:f46d85203c704c09:n1"));
        assert!(!valid_client_id("x:f46d85203c704c099e9f44e948322a20:n1"));
        assert!(!valid_client_id(":f46d85203c704c099e9f44e948322a20:n1"));
        assert!(!valid_client_id(
            "1730887348:f46d85203c704c099e9f44e948322a20:"
        ));
    }
}
