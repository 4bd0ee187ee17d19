//! Between deliveries and cluster envelopes: the envelope's extra part,
//! deliveries rebuilt from what an envelope carried, and the memory of
//! recent multi-topic messages that drops their duplicates.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use pubmesh_cluster_proto::Extra;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::delivery::{Delivery, DeliveryKind, Position, Target};

/// How many recent (origin, seq) pairs are remembered to drop duplicates.
const RECENT: usize = 4096;

/// Recently seen (origin, seq) of multi-topic messages.
#[derive(Default)]
pub struct Recent {
    set: HashSet<(String, u64)>,
    order: VecDeque<(String, u64)>,
}

impl Recent {
    /// True the first time a pair is seen.
    pub fn first(&mut self, origin: &str, seq: u64) -> bool {
        let key = (origin.to_string(), seq);
        if self.set.contains(&key) {
            return false;
        }
        if self.order.len() >= RECENT {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(key.clone());
        self.order.push_back(key);
        true
    }
}

/// The envelope's extra part of a delivery.
pub fn extra_of(delivery: &Delivery) -> Extra {
    Extra {
        channel: delivery.channel.as_deref().map(str::to_string),
        event: delivery.event.as_deref().map(str::to_string),
        kind: delivery.kind.tag(),
        origin_client: delivery.origin.as_deref().map(str::to_string),
        audience: delivery.audience.clone(),
    }
}

/// A delivery from what an envelope carried.
pub fn delivery_of(
    target: Target,
    data: Utf8Bytes,
    extra: Extra,
    position: Option<Position>,
) -> Delivery {
    let channel = match &target {
        Target::Channels(v) if v.len() == 1 => Some(Arc::from(v[0].as_str())),
        _ => extra.channel.as_deref().map(Arc::from),
    };
    Delivery {
        target,
        channel,
        event: extra.event.as_deref().map(Arc::from),
        kind: DeliveryKind::from_tag(extra.kind),
        data,
        position,
        origin: extra.origin_client.as_deref().map(Arc::from),
        audience: extra.audience,
    }
}
