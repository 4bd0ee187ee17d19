//! The checks a resolved [`Config`] must pass before a node starts with it:
//! sizes that must be positive or ordered, and settings that need a key.

use std::time::Duration;

use super::{Config, ConfigError};

impl Config {
    /// Refuse settings that need client tokens when no key can verify one:
    /// every socket would be closed, or no one could ever subscribe.
    pub(super) fn check_auth(&self, auth_patterns: &[String]) -> Result<(), ConfigError> {
        if self.jwt_secret.is_some() || self.jwt_public_key.is_some() {
            return Ok(());
        }
        if self.require_auth {
            return Err(ConfigError::Invalid(
                "--require-auth needs --jwt-secret or --jwt-public-key: without a key no token \
                 is valid and every socket would be closed with 4001"
                    .into(),
            ));
        }
        if !auth_patterns.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "namespaces {} let only authenticated sockets subscribe, but no \
                 --jwt-secret or --jwt-public-key is set: no one could subscribe to them",
                auth_patterns.join(", ")
            )));
        }
        Ok(())
    }

    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_message_size", self.max_message_size),
            ("outbox_bytes", self.outbox_bytes),
            ("client_rate", self.client_rate as usize),
            ("client_burst", self.client_burst as usize),
            (
                "max_channels_per_connection",
                self.max_channels_per_connection,
            ),
            ("max_ids_per_message", self.max_ids_per_message),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be > 0")));
            }
        }
        if self.relay.queue_bytes < 2 * self.max_message_size
            || self.relay.receive_bytes < self.max_message_size
        {
            return Err(ConfigError::Invalid(
                "relay_queue_bytes must be at least twice, and relay_receive_bytes at least, max_message_size".into(),
            ));
        }
        if self.flush_window > Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "flush_window_us must be at most 100000".into(),
            ));
        }
        if self.relay.batch_wait > Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "relay_batch_us must be at most 100000".into(),
            ));
        }
        if self.relay.interest_wait > Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "relay_interest_us must be at most 100000".into(),
            ));
        }
        if self.relay.batch_bytes > pubmesh_cluster_proto::MAX_ENVELOPE_BYTES {
            return Err(ConfigError::Invalid(format!(
                "relay_batch_bytes must be at most {} (the largest envelope a node accepts)",
                pubmesh_cluster_proto::MAX_ENVELOPE_BYTES
            )));
        }
        if self.relay.probe < Duration::from_millis(50) || self.relay.interest_rate == 0 {
            return Err(ConfigError::Invalid(
                "relay_probe_ms must be >= 50 and relay_interest_rate > 0".into(),
            ));
        }
        if self.relay.join_timeout < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "relay_join_timeout_ms must be >= 100".into(),
            ));
        }
        if self.listen_backlog == Some(0) {
            return Err(ConfigError::Invalid("listen_backlog must be > 0".into()));
        }
        if self.admin_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(ConfigError::Invalid(
                "--admin-listen must differ from --listen".into(),
            ));
        }
        if self.outbox_bytes < self.max_message_size {
            return Err(ConfigError::Invalid(
                "outbox_bytes must be at least max_message_size".into(),
            ));
        }
        Ok(())
    }
}
