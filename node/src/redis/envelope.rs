//! Between deliveries and cluster envelopes: the envelope's extra part, and
//! deliveries rebuilt from what an envelope carried.

use std::sync::Arc;

use pubmesh_cluster_proto::{Extra, ExtraRef};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::delivery::{Delivery, DeliveryKind, Position, Target};

/// The envelope's extra part of a delivery.
pub fn extra_of(delivery: &Delivery) -> Extra {
    Extra {
        channel: delivery.channel.as_deref().map(str::to_string),
        event: delivery.event.as_deref().map(str::to_string),
        kind: delivery.kind.tag(),
        origin_client: delivery.origin.as_deref().map(str::to_string),
        audience: delivery.audience.clone(),
        idempotency: delivery.idempotency.as_deref().map(str::to_string),
    }
}

/// The envelope's extra part of a delivery, borrowed from it (what
/// [`extra_of`] copies).
pub fn extra_ref(delivery: &Delivery) -> ExtraRef<'_> {
    ExtraRef {
        channel: delivery.channel.as_deref(),
        event: delivery.event.as_deref(),
        kind: delivery.kind.tag(),
        origin_client: delivery.origin.as_deref(),
        audience: delivery.audience.as_deref(),
        idempotency: delivery.idempotency.as_deref(),
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
        idempotency: extra.idempotency.as_deref().map(Arc::from),
    }
}
