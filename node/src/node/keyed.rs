//! Publishes with an idempotency key (see [`crate::idempotency`]): each
//! key is delivered once per recipient and appended once per history
//! channel, however often it is retried and through whichever node.
//!
//! - The plain part (everything but history channels) is published once per
//!   key by this node; a retry repeats the recorded outcome. When that
//!   outcome was `relay: failed`, the retry sends the relay part again (not
//!   the local one): receivers that got the first copy drop the second.
//! - History channels are always handed to the store, which checks and sets
//!   the key in the same step as the append (the Redis script, or the memory
//!   history): it alone knows whether an append that timed out landed.
//! - Keyed deliveries from other nodes are delivered once per (key, name);
//!   a node that published the key itself drops them.

use std::sync::Arc;

use super::{MeshError, Node, Published, Scope};
use crate::delivery::{Delivery, Target};
use crate::idempotency::{Arrival, Seen};
use crate::relay::{RelayOutcome, Relayed};

impl Node {
    /// [`Node::publish_channels`] for a delivery with an idempotency key.
    pub(super) async fn publish_keyed(
        &self,
        delivery: Delivery,
        scope: Scope,
        confirm: bool,
    ) -> Result<Published, MeshError> {
        let key = delivery.idempotency.clone().expect("a keyed delivery");
        let (plain, with_history) = self.split_history(&delivery, scope)?;
        let before = self.keys.begin(&key);
        let mut done = Published::default();
        let mut duplicate = false;
        let mut pending: Option<Relayed> = None;
        match (&plain, &before) {
            (Some(part), None) => {
                let (sent, relayed) = self.publish_relayed(part.clone(), scope, true);
                done = sent;
                if confirm {
                    done = self.confirm(done, relayed).await;
                } else {
                    pending = Some(relayed);
                }
            }
            (Some(part), Some(Seen::Published(Some(first))))
                if first.relay == RelayOutcome::Failed && scope == Scope::Cluster =>
            {
                // Delivered here the first time, not to the others: send
                // their part again; a node that got the first drops this one.
                duplicate = true;
                done.local_deliveries = first.local_deliveries;
                let relayed = self.relay_remote(part, true);
                done.relay = RelayOutcome::Queued;
                if confirm {
                    done.relay = relayed.outcome(self.relay.settle_within()).await;
                } else {
                    pending = Some(relayed);
                }
                done.relayed = done.relay == RelayOutcome::Sent;
            }
            (_, Some(Seen::Published(Some(first)))) => {
                duplicate = plain.is_some();
                done.local_deliveries = first.local_deliveries;
                done.relay = first.relay;
                done.relayed = first.relayed;
            }
            (Some(_), Some(Seen::Published(None))) => {
                // The first is still on its way.
                duplicate = true;
                done.relay = RelayOutcome::Queued;
            }
            (Some(_), Some(Seen::Received(_))) => {
                // Another node published it, and this node received it.
                duplicate = true;
                done.relay = RelayOutcome::Sent;
                done.relayed = true;
            }
            (None, _) => {}
        }
        for channel in with_history {
            let options = self.config.namespaces.options(&channel);
            let one = delivery.for_channel(&channel);
            let appended = match self.relay.publish_history(&one, &options).await {
                Ok(appended) => appended,
                Err(e) => {
                    // What was done stays recorded; nothing done: forgotten.
                    if plain.is_some() || !done.positions.is_empty() || before.is_some() {
                        self.keys.finish(&key, done);
                    } else {
                        self.keys.abandon(&key);
                    }
                    self.count_keys();
                    return Err(e.into());
                }
            };
            done.positions
                .insert(channel.clone(), appended.position.clone());
            if appended.duplicate {
                duplicate = true;
                if appended.relayed && done.relay != RelayOutcome::Failed {
                    done.relay = RelayOutcome::Sent;
                    done.relayed = true;
                }
            } else {
                self.appended(&mut done, one, appended);
            }
        }
        done.duplicate = Some(duplicate);
        if duplicate {
            self.metrics.idempotent_duplicates.inc();
        }
        self.keys.finish(&key, done.clone());
        if let Some(relayed) = pending {
            // Record the relay's outcome once known, for a later retry.
            let keys = self.keys.clone();
            let within = self.relay.settle_within();
            tokio::spawn(async move {
                let outcome = relayed.outcome(within).await;
                keys.update(&key, |o| {
                    o.relay = outcome;
                    o.relayed = outcome == RelayOutcome::Sent;
                });
            });
        }
        self.count_keys();
        Ok(done)
    }

    /// A keyed delivery from another node: delivered to the names not yet
    /// reached under its key (skipping members of channels that were).
    pub(super) fn deliver_keyed(&self, delivery: &Delivery, key: &Arc<str>) -> usize {
        let names: Vec<String> = match &delivery.target {
            Target::Channels(v) | Target::Users(v) | Target::Clients(v) => v.clone(),
            Target::All => vec!["*".to_string()],
        };
        let arrival = self.keys.arrived(key, &names);
        self.count_keys();
        let (fresh, reached) = match arrival {
            Arrival::Drop => {
                self.metrics.idempotent_dropped.inc();
                return 0;
            }
            Arrival::Deliver { fresh, reached } => (fresh, reached),
        };
        let target = match &delivery.target {
            Target::Channels(_) => Target::Channels(fresh),
            Target::Users(_) => Target::Users(fresh),
            Target::Clients(_) => Target::Clients(fresh),
            Target::All => Target::All,
        };
        let part = Delivery {
            target,
            ..delivery.clone()
        };
        let Target::Channels(_) = &part.target else {
            return self.hub.deliver(&part);
        };
        if reached.is_empty() {
            return self.hub.deliver(&part);
        }
        let mut recipients = self.hub.recipients(&part.target);
        recipients.retain(|c| !reached.iter().any(|b| c.is_member(b)));
        self.hub.fan_out(&recipients, &part)
    }

    /// Mirror the key memory in the metrics.
    fn count_keys(&self) {
        let (held, _, evicted) = self.keys.stats();
        self.metrics.idempotency_keys.set(held as i64);
        let counted = self.metrics.idempotency_evicted.get();
        if evicted > counted {
            self.metrics.idempotency_evicted.inc_by(evicted - counted);
        }
    }
}
