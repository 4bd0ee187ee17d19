//! The Redis broker: how a cluster's nodes reach each other and where
//! channel history and presence live.
//!
//! - [`client`]: Redis connection settings and which server owns a name;
//! - [`relay`]: the cluster relay (publish, receive, history publications);
//! - [`interest`]: which topics a node subscribes to;
//! - [`membership`]: heartbeats and live peers;
//! - [`store`]: history (streams) and presence (hashes) in Redis.
//!
//! Publishing to a history channel is one step: the relay runs the store's
//! append script, which assigns the position and publishes the positioned
//! envelope on the channel's topic (`Relay::publish_history`).

pub mod client;
pub mod interest;
pub mod membership;
pub mod relay;
pub mod store;
