//! One client connection as the mesh sees it, whatever its protocol.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::OwnedSemaphorePermit;

use crate::codec::{Codec, ConnInfo, Tag};
use crate::delivery::Delivery;
use crate::hashing::{HashMap, HashSet};
use crate::outbox::Outbox;

/// One client connection.
pub struct Conn {
    /// Process-unique number, the key inside member sets.
    pub id: u64,
    /// Cluster-unique id given to the client (`{secs}:{hex}:{node}`).
    pub client_id: Arc<str>,
    /// The native protocol's fixed channel (`?channel_id=` or generated),
    /// joined at open and never left; `None` for other protocols, so they
    /// cost no Redis subscription for it.
    pub home: Option<Arc<str>>,
    /// Frames waiting for this connection's writer.
    pub outbox: Outbox,
    /// How deliveries are encoded for this connection.
    pub codec: Arc<dyn Codec>,
    /// Identity and memberships; locked briefly, never across an `.await`.
    pub state: Mutex<ConnState>,
    /// The connection permit taken at admission; released at close.
    pub(crate) permit: Mutex<Option<OwnedSemaphorePermit>>,
}

/// The mutable part of a connection.
pub struct ConnState {
    /// The user id (JWT `sub`, or the anonymous id).
    pub root_id: Arc<str>,
    /// The raw token the socket authenticated with, passed on to the walker backend.
    pub token: Option<String>,
    /// True when `root_id` comes from a verified token.
    pub authenticated: bool,
    /// When that token expires (seconds since the epoch); 0 when anonymous.
    pub expires_at: u64,
    /// Channels this connection is a member of (including `home`).
    pub channels: HashSet<Arc<str>>,
    /// The token's `channels` claim (names or `prefix*` patterns).
    pub allowed_channels: Option<Arc<[String]>>,
    /// The token's `info` claim, JSON text, shown in presence.
    pub info: Option<Arc<str>>,
    /// History channels this connection receives with positions; empty for
    /// most connections.
    pub positioned: HashMap<Arc<str>, ChannelPos>,
    /// Distinct channels joined or left lately (`--client-channel-churn`).
    pub churn: Churn,
    /// The front-end's data for its codec (see [`Tag`]); `None` for most.
    pub tag: Option<Tag>,
}

/// The distinct channels a connection joined or left in the current window:
/// each costs the node a Redis (un)subscription, so a socket may change
/// only so many per window. Windows are fixed, starting at the first change
/// after the previous one ended.
#[derive(Debug, Default)]
pub struct Churn {
    started: Option<Instant>,
    names: HashSet<Arc<str>>,
}

impl Churn {
    /// May the connection change these channels now, given at most `limit`
    /// distinct ones per `window`? Names already changed in this window are
    /// free. `Err` carries the time until the window ends. Records nothing.
    pub fn check(
        &mut self,
        names: &[&str],
        limit: usize,
        window: Duration,
    ) -> Result<(), Duration> {
        let now = Instant::now();
        match self.started {
            Some(at) if now.duration_since(at) < window => {}
            _ => {
                self.started = None;
                self.names.clear();
            }
        }
        let new = names.iter().filter(|n| !self.names.contains(**n)).count();
        if self.names.len() + new <= limit {
            return Ok(());
        }
        let started = self.started.unwrap_or(now);
        Err(window.saturating_sub(now.duration_since(started)))
    }

    /// Count these channels as changed in the current window.
    pub fn record<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let mut any = false;
        for name in names {
            any = true;
            if !self.names.contains(name) {
                self.names.insert(Arc::from(name));
            }
        }
        if any && self.started.is_none() {
            self.started = Some(Instant::now());
        }
    }
}

/// Delivery state of one positioned subscription.
#[derive(Debug, Default)]
pub struct ChannelPos {
    /// Epoch and offset of the last publication delivered; later copies at or
    /// below it are duplicates.
    pub epoch: Option<Arc<str>>,
    pub last: u64,
    /// While a recovery reads history, live publications wait here.
    pub recovering: Option<Held>,
}

/// Live publications held back while a recovery reads history. Their cost
/// is reserved in the connection's outbox ([`crate::outbox::Outbox::hold`]),
/// so they count against `--outbox-bytes` like queued frames.
#[derive(Debug, Default)]
pub struct Held {
    pub deliveries: Vec<Delivery>,
    /// The sum of their [`Held::cost`].
    pub bytes: usize,
}

impl Held {
    /// What holding `delivery` costs: its data, its channel name and the
    /// fixed size of a delivery.
    pub fn cost(delivery: &Delivery) -> usize {
        delivery.data.len()
            + delivery.channel.as_deref().map_or(0, str::len)
            + std::mem::size_of::<Delivery>()
    }
}

impl ChannelPos {
    /// Should a publication at (`epoch`, `offset`) be delivered after what
    /// was delivered so far? Records it when so.
    pub fn advance(&mut self, epoch: &str, offset: u64) -> bool {
        if self.epoch.as_deref() == Some(epoch) && offset <= self.last {
            return false;
        }
        if self.epoch.as_deref() != Some(epoch) {
            self.epoch = Some(Arc::from(epoch));
        }
        self.last = offset;
        true
    }

    /// Is a publication at (`epoch`, `offset`) past the next one expected?
    /// A channel's publications reach every node in offset order, so the
    /// ones in between were lost on the way (or, on one node with several
    /// publishers, are a moment late) and are to be read from history.
    pub fn gap(&self, epoch: &str, offset: u64) -> bool {
        self.epoch.as_deref() == Some(epoch) && offset > self.last.saturating_add(1)
    }
}

/// Who a connection is: decided from its token at open, and again when it
/// re-authenticates.
#[derive(Clone, Debug)]
pub struct Identity {
    pub root_id: String,
    /// The raw token (without `Bearer `).
    pub token: Option<String>,
    /// Token expiry (seconds since the epoch) when authenticated.
    pub expires_at: Option<u64>,
    /// The token's `channels` claim.
    pub channels: Option<Vec<String>>,
    /// The token's `info` claim (JSON text).
    pub info: Option<String>,
}

impl Conn {
    pub fn root_id(&self) -> Arc<str> {
        self.state.lock().root_id.clone()
    }

    /// The native protocol's fixed channel, or "".
    pub fn home(&self) -> &str {
        self.home.as_deref().unwrap_or("")
    }

    /// Is this connection a member of that channel?
    pub fn is_member(&self, channel: &str) -> bool {
        self.state.lock().channels.contains(channel)
    }

    /// What a codec may read for a notice.
    pub fn with_info<T>(&self, f: impl FnOnce(&ConnInfo<'_>) -> T) -> T {
        let root = self.root_id();
        f(&ConnInfo {
            client_id: &self.client_id,
            root_id: &root,
            home: self.home(),
        })
    }
}

/// A connection's outbox, owned (for an SSE body that outlives the handler).
pub struct ConnOutbox(pub Arc<Conn>);

impl AsRef<Outbox> for ConnOutbox {
    fn as_ref(&self) -> &Outbox {
        &self.0.outbox
    }
}
