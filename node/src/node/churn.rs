//! The per-socket bound on channel churn (`--client-channel-churn`): each
//! distinct channel a socket joins or leaves costs the node a Redis
//! (un)subscription, out of one budget for every socket
//! (`--relay-interest-rate`), so one socket may change only so many per
//! window. Beyond, a subscribe is refused with `rate_limited`; a leave is
//! always done, and counts.

use super::{MeshError, Node};
use crate::conn::Conn;

impl Node {
    /// May `conn` join these channels it is not in, within
    /// `--client-channel-churn` distinct channels per window?
    pub(super) fn may_churn(&self, conn: &Conn, fresh: &[&str]) -> Result<(), MeshError> {
        if fresh.is_empty() {
            return Ok(());
        }
        let limit = &self.config.channel_churn;
        let checked = conn
            .state
            .lock()
            .churn
            .check(fresh, limit.channels, limit.window);
        checked.map_err(|wait| {
            self.metrics.channel_churn_refused.inc();
            MeshError::RateLimited(format!(
                "a socket may join or leave at most {} distinct channels per {} s \
                 (--client-channel-churn); try again in {:.1} s",
                limit.channels,
                limit.window.as_secs(),
                wait.as_secs_f64()
            ))
        })
    }
}
