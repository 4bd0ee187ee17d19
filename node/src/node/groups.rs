//! Internal groups: channels a front-end puts its connections in to index
//! them for its own deliveries (the Cells gateway's workspaces, roles,
//! profile and user). Their names start with [`GROUP_PREFIX`], which no
//! client or API channel name may contain, so only the front-end that made
//! them can join them or publish to them; the registries, the interest
//! tracking and the relay treat them like any channel, so a node receives a
//! group's deliveries only while it has members in it.

use std::collections::HashSet;
use std::sync::Arc;

use super::{MeshError, Node, Published, Scope};
use crate::codec::Tag;
use crate::conn::Conn;
use crate::delivery::Delivery;

/// The first character of every internal group name (U+0001, refused in
/// client channel names by [`crate::limits::channel_name`]).
pub const GROUP_PREFIX: char = '\u{1}';

/// The internal group `{family}:{id}` (e.g. `cells.ws:w1`).
pub fn group_name(family: &str, id: &str) -> String {
    format!("{GROUP_PREFIX}{family}:{id}")
}

impl Node {
    /// Make `groups` the connection's internal groups under `family` and
    /// `tag` its codec's data: join the new ones, leave the others. The tag
    /// is set first, so a codec that checks it never sends what the new
    /// claims do not entitle. Joining counts toward
    /// `--client-channel-churn` and `--max-channels-per-connection`; when
    /// refused, nothing changed but the tag.
    pub async fn set_groups(
        &self,
        conn: &Arc<Conn>,
        family: &str,
        groups: &[String],
        tag: Option<Tag>,
    ) -> Result<(), MeshError> {
        let prefix = format!("{GROUP_PREFIX}{family}:");
        let (join, leave) = {
            let mut state = conn.state.lock();
            state.tag = tag;
            let want: HashSet<&str> = groups.iter().map(String::as_str).collect();
            let join: Vec<String> = want
                .iter()
                .filter(|g| !state.channels.contains(**g))
                .map(|g| g.to_string())
                .collect();
            let leave: Vec<String> = state
                .channels
                .iter()
                .filter(|c| c.starts_with(&prefix) && !want.contains(&***c))
                .map(|c| c.to_string())
                .collect();
            (join, leave)
        };
        if !leave.is_empty() {
            let change = self.hub.unsubscribe(conn, &leave);
            self.interest(change);
        }
        if join.is_empty() {
            return Ok(());
        }
        let fresh: Vec<&str> = join.iter().map(String::as_str).collect();
        self.may_churn(conn, &fresh)?;
        let limit = self.config.max_channels_per_connection;
        let change = self
            .hub
            .subscribe(conn, &join, limit)
            .map_err(MeshError::TooManyChannels)?;
        conn.state.lock().churn.record(fresh.iter().copied());
        self.interest(change);
        if let Err(e) = self.relay.interest_applied(&join, &[]).await {
            // Not confirmed in time: leave what this call joined.
            let change = self.hub.unsubscribe(conn, &join);
            self.interest(change);
            return Err(MeshError::Unavailable(e.to_string()));
        }
        Ok(())
    }

    /// Publish a delivery addressed to internal groups, cluster-wide, and
    /// wait for the relay's outcome. Group deliveries never keep history.
    pub async fn publish_groups(&self, delivery: Delivery) -> Published {
        self.publish_confirmed(delivery, Scope::Cluster).await
    }
}
