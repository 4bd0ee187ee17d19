//! The Redis broker: how a cluster's nodes reach each other and where
//! channel history and presence live.
//!
//! - [`client`]: which server owns a name;
//! - [`relay`]: the cluster relay (publishing lanes, receive, interest,
//!   membership, history publications, readiness);
//! - [`queue`], [`dedup`], [`health`]: the relay's byte-bounded queues and
//!   retry buffer, duplicate filters, and active readiness probes; `kept`:
//!   what a lane sends again after an outage although Redis confirmed it;
//! - [`envelope`]: deliveries to and from cluster envelopes;
//! - [`store`]: history (streams) and presence (hashes) in Redis.
//!
//! Routing (topic names from `pubmesh_cluster_proto::Topics`):
//! - a channel's messages go to `{p}.ch.{{channel}}`, a user's to `{p}.u.{user}`;
//!   a node subscribes to those only while it has local members, and lets go
//!   [`relay::LINGER`] after the last one leaves (so join/leave churn costs nothing;
//!   see [`relay`]);
//! - with interest routing (`--relay-interest-routing`, [`views`]) nodes tell
//!   each other which of those topics they listen to, and a node publishes a
//!   channel's or user's message to Redis only when some peer may need it;
//! - messages for client ids go straight to the owning node's inbox `{p}.n.{node}`;
//! - broadcasts use `{p}.all`; membership, disconnects and channel queries `{p}.ctl`.
//!
//! With several `--redis-url`s each name lives on one server chosen by
//! rendezvous hashing ([`client::shard_index`]); `{p}.all` and `{p}.ctl` live on
//! the first. With `--redis-cluster` every topic uses sharded pub/sub
//! (`SSUBSCRIBE`/`SPUBLISH`), which Redis Cluster routes to the topic's slot.
//!
//! Publishing never blocks: messages go to one bounded queue per server (its
//! lane), drained by a task that pipelines whole batches in one round trip
//! and sends the next only after it completes, so one publisher's messages
//! to one topic stay in order. Each server has a dedicated subscriber
//! connection whose reader only decodes and pushes to outboxes. A node
//! ignores the echo of its own messages (it delivered them locally first);
//! history publications are the exception: the store's append script
//! publishes them, and every node (this one included) delivers them from
//! Redis, in offset order.
//!
//! What travels is the protocol-neutral delivery (cluster-proto version 2:
//! data plus channel, event, kind, origin and audience); each node encodes
//! it for its own connections' protocols.
//!
//! Why fred: its subscriber client re-issues subscriptions after a reconnect
//! (plain, pattern and sharded ones), it pipelines commands sent concurrently
//! on one connection, and it speaks Redis Cluster including sharded pub/sub.
//! pubmesh also reconciles its own subscription set after every reconnect, so
//! an outage at start-up heals the same way.

//!
//! Publishing to a history channel is one step: the relay runs the store's
//! append script, which assigns the position and publishes the positioned
//! envelope on the channel's topic (`Relay::publish_history`).

pub mod client;
pub mod dedup;
pub mod envelope;
pub mod health;
mod inbound;
mod interest;
mod kept;
mod membership;
mod plan;
mod publisher;
pub mod queue;
pub mod relay;
mod routing;
mod state;
pub mod store;
mod views;
mod watermark;
