//! Between deliveries and cluster envelopes: the envelope's extra part, and
//! deliveries rebuilt from what an envelope carried.

use std::sync::Arc;

use bytes::Bytes;

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
    extra: &ExtraRef<'_>,
    position: Option<Position>,
) -> Delivery {
    let channel = match &target {
        Target::Channels(v) if v.len() == 1 => Some(Arc::from(v[0].as_str())),
        _ => extra.channel.map(Arc::from),
    };
    Delivery {
        target,
        channel,
        event: extra.event.map(Arc::from),
        kind: DeliveryKind::from_tag(extra.kind),
        data,
        position,
        origin: extra.origin_client.map(Arc::from),
        audience: extra.audience.map(Bytes::copy_from_slice),
        idempotency: extra.idempotency.map(Arc::from),
    }
}

#[cfg(test)]
mod tests {
    use pubmesh_cluster_proto::{
        self as proto, Decoded, DeliverRef, Targets, TargetsRef, TargetsView,
    };

    use super::*;

    fn published() -> Delivery {
        Delivery {
            target: Target::Channels(vec!["news".into()]),
            channel: Some(Arc::from("news")),
            event: Some(Arc::from("created")),
            kind: DeliveryKind::Join,
            data: Utf8Bytes::from_static(r#"{"x":1}"#),
            position: None,
            origin: Some(Arc::from("n1-abc")),
            audience: Some(Bytes::from_static(b"\x00aud")),
            idempotency: Some(Arc::from("u:alice:k1")),
        }
    }

    /// A delivery read in place from the envelope a peer wrote for it is
    /// the delivery that peer published, and the same as one read from the
    /// owned decode of those bytes.
    #[test]
    fn a_delivery_decoded_in_place_is_the_published_one_and_the_owned_decode_agrees() {
        for delivery in [
            published(),
            Delivery::new(
                Target::Channels(vec!["news".into()]),
                Utf8Bytes::from_static("{}"),
            ),
        ] {
            let wire = proto::encode_deliver(
                "n1",
                42,
                TargetsRef::One(Targets::TAG_CHANNELS, "news"),
                delivery.data.as_bytes(),
                &extra_ref(&delivery),
            );
            let Ok(Decoded::Deliver(borrowed)) = proto::decode_ref(&wire) else {
                panic!("read in place");
            };
            let TargetsView::Channels(names) = &borrowed.targets else {
                panic!("a channel: {:?}", borrowed.targets);
            };
            let target = Target::Channels(names.to_vec());
            let data = Utf8Bytes::from(borrowed.frame);
            assert_eq!(delivery_of(target, data, &borrowed.extra, None), delivery);

            let owned = proto::decode(&wire).expect("decodes");
            let from_owned = DeliverRef::of(&owned).expect("a delivery");
            assert_eq!(from_owned, borrowed);
            let proto::Body::Deliver(d) = &owned.body else {
                panic!("a delivery");
            };
            assert_eq!(extra_of(&delivery), d.extra);
        }
    }
}
