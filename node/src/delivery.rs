//! What the mesh moves: protocol-neutral deliveries and their addresses.
//!
//! A [`Delivery`] says who receives a message and what it is (channel, event
//! name, data, position, origin, audience), never how it looks on a wire:
//! each connection's [`Codec`](crate::codec::Codec) turns it into frames at
//! the edge, once per codec slot present among the recipients.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A boxed future, so traits with async methods stay object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a message is addressed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Channels(Vec<String>),
    Users(Vec<String>),
    Clients(Vec<String>),
    All,
}

impl Target {
    /// Label for per-kind metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Channels(_) => "channels",
            Target::Users(_) => "users",
            Target::Clients(_) => "clients",
            Target::All => "broadcast",
        }
    }
}

/// A place in a channel's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// What kind of message a delivery is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeliveryKind {
    /// A publication (from a socket or the server API).
    #[default]
    Message,
    /// A presence join event; `data` is the presence entry as JSON.
    Join,
    /// A presence leave event; `data` is the presence entry as JSON.
    Leave,
}

impl DeliveryKind {
    /// The tag in the cluster envelope (`Extra::kind`).
    pub fn tag(self) -> u8 {
        match self {
            DeliveryKind::Message => 0,
            DeliveryKind::Join => 1,
            DeliveryKind::Leave => 2,
        }
    }

    pub fn from_tag(tag: u8) -> DeliveryKind {
        match tag {
            1 => DeliveryKind::Join,
            2 => DeliveryKind::Leave,
            _ => DeliveryKind::Message,
        }
    }
}

/// One message on its way to connections, in no wire protocol's form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Who receives it.
    pub target: Target,
    /// The channel, when the message was published to exactly one channel
    /// (the topic of Phoenix or chain frames).
    pub channel: Option<Arc<str>>,
    /// The event name, for protocols that name events; `None` for native
    /// publications, whose `data` is the whole jac-cloud frame.
    pub event: Option<Arc<str>>,
    pub kind: DeliveryKind,
    /// The payload: JSON text for every protocol pubmesh speaks today.
    pub data: Utf8Bytes,
    /// Set for publications to history channels.
    pub position: Option<Position>,
    /// Client id of the publishing connection; `None` for the server API.
    pub origin: Option<Arc<str>>,
    /// Opaque per-message audience or metadata (e.g. claims to filter on);
    /// carried across the cluster unread.
    pub audience: Option<Bytes>,
    /// The publisher's scoped idempotency key, when the publish carried one
    /// (see [`crate::idempotency`]): nodes deliver it once per key.
    pub idempotency: Option<Arc<str>>,
}

impl Delivery {
    /// A plain message with nothing but a target and data.
    pub fn new(target: Target, data: Utf8Bytes) -> Delivery {
        let channel = match &target {
            Target::Channels(names) if names.len() == 1 => Some(Arc::from(names[0].as_str())),
            _ => None,
        };
        Delivery {
            target,
            channel,
            event: None,
            kind: DeliveryKind::Message,
            data,
            position: None,
            origin: None,
            audience: None,
            idempotency: None,
        }
    }

    /// The same message addressed to one channel (history publications are
    /// delivered channel by channel).
    pub fn for_channel(&self, channel: &str) -> Delivery {
        Delivery {
            target: Target::Channels(vec![channel.to_string()]),
            channel: Some(Arc::from(channel)),
            ..self.clone()
        }
    }
}

/// Changes in remote interest caused by a registry update: the relay subscribes
/// to a channel or user when the first local member appears and unsubscribes
/// when the last one leaves.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InterestChange {
    pub channels_added: Vec<Arc<str>>,
    pub channels_removed: Vec<Arc<str>>,
    pub users_added: Vec<Arc<str>>,
    pub users_removed: Vec<Arc<str>>,
}

impl InterestChange {
    pub fn is_empty(&self) -> bool {
        self.channels_added.is_empty()
            && self.channels_removed.is_empty()
            && self.users_added.is_empty()
            && self.users_removed.is_empty()
    }

    pub fn merge(&mut self, other: InterestChange) {
        self.channels_added.extend(other.channels_added);
        self.channels_removed.extend(other.channels_removed);
        self.users_added.extend(other.users_added);
        self.users_removed.extend(other.users_removed);
    }
}
