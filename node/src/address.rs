//! Budgets per client address, which outlive the client's sockets.
//!
//! A socket's own frame budget (`--client-rate`) starts full on every new
//! connection, so a client that reconnects as soon as it is closed would
//! get a fresh budget each time. Here each client address (an IPv4 address
//! or an IPv6 /64, configurable) has two token buckets that every socket
//! from it shares and that reconnecting does not refill:
//!
//! - **connections**: each accepted connection takes a token; without one
//!   the listener answers `429` and closes ([`Addresses::admit`]);
//! - **frames**: each frame of each WebSocket of the address takes a token
//!   (after its socket's own); without one the socket is closed with 4029
//!   ([`FrameLimit`]).
//!
//! Peers in `--trusted-networks` have no address budget. The table is
//! bounded (`--address-table-entries`): sharded LRU maps, each behind its
//! own lock (never held across `.await` or while an entry is locked); the
//! least recently seen address is forgotten first. Sockets keep the entry
//! they were admitted with, so forgetting an address never refunds the
//! frames its open sockets spend.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

use crate::config::addresses::Rate;
use crate::config::AddressLimits;
use crate::metrics::Metrics;

/// Shards of the table: connections from different addresses rarely wait
/// for the same lock.
const SHARDS: usize = 16;

/// A token bucket's state; its rate and burst are passed in by the owner,
/// so every bucket of a kind shares one setting.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst as f64,
            last: now,
        }
    }

    /// Take one token, or say how long until there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.rate as f64).min(rate.burst as f64);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / rate.rate as f64,
            ))
        }
    }

    /// Would this bucket be full by `now` (so forgetting it loses nothing)?
    fn refilled(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate.rate as f64 >= rate.burst as f64
    }
}

/// One address: what all its sockets share.
#[derive(Debug)]
struct Entry {
    /// Locked for one bucket operation at a time.
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    connections: Bucket,
    frames: Bucket,
}

/// The part of an address that makes it one client.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Key {
    V4(u32),
    V6(u128),
}

/// One shard of the table: addresses, least recently seen first out.
type Shard = LruCache<Key, Arc<Entry>>;

/// The table of client addresses and their budgets (one per node, for the
/// client listener).
pub struct Addresses {
    limits: AddressLimits,
    /// Each shard an LRU map, locked for one lookup or insert.
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
}

/// What the listener does with a new connection.
#[derive(Debug)]
pub enum Admit {
    /// From a trusted network, or no budget is on: no address budget.
    Trusted,
    /// Counted against this address's budgets.
    Counted(AddressBudget),
    /// Over the address's connection rate: refuse; a token comes in this long.
    Refused(Duration),
}

/// A socket's handle on its address's budgets.
#[derive(Clone)]
pub struct AddressBudget {
    entry: Arc<Entry>,
    table: Arc<Addresses>,
}

impl std::fmt::Debug for AddressBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressBudget").finish_non_exhaustive()
    }
}

impl Addresses {
    pub fn new(limits: AddressLimits, metrics: Arc<Metrics>) -> Arc<Addresses> {
        // Rounded down: the table never holds more than the setting.
        let per_shard =
            NonZeroUsize::new((limits.table_entries / SHARDS).max(1)).expect("at least one");
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(LruCache::new(per_shard)))
            .collect();
        Arc::new(Addresses {
            limits,
            shards,
            hasher: RandomState::new(),
            metrics,
        })
    }

    /// The settings in force.
    pub fn limits(&self) -> &AddressLimits {
        &self.limits
    }

    /// A new connection from `peer`: take a connection token from its
    /// address, and hand out the budget its sockets share.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Admit {
        let peer = peer.to_canonical();
        let limits = &self.limits;
        if (limits.connections.is_none() && limits.frames.is_none()) || limits.is_trusted(peer) {
            return Admit::Trusted;
        }
        let now = Instant::now();
        let entry = self.entry(self.key(peer), now);
        if let Some(rate) = limits.connections {
            if let Err(wait) = entry.buckets.lock().connections.take(rate, now) {
                self.metrics.address.limited("connection");
                return Admit::Refused(wait);
            }
        }
        Admit::Counted(AddressBudget {
            entry,
            table: self.clone(),
        })
    }

    fn key(&self, ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(a) => {
                let keep = 32 - u32::from(self.limits.ipv4_prefix);
                Key::V4(u32::from(a).checked_shr(keep).unwrap_or(0))
            }
            IpAddr::V6(a) => {
                let keep = 128 - u32::from(self.limits.ipv6_prefix);
                Key::V6(u128::from(a).checked_shr(keep).unwrap_or(0))
            }
        }
    }

    /// The address's entry, made (full) if it is not in the table; making
    /// one in a full shard forgets the shard's least recently seen address.
    fn entry(&self, key: Key, now: Instant) -> Arc<Entry> {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let mut shard = shard.lock();
        if let Some(entry) = shard.get(&key) {
            return entry.clone();
        }
        let entry = Arc::new(Entry {
            buckets: Mutex::new(Buckets {
                connections: Bucket::full(self.rate(self.limits.connections), now),
                frames: Bucket::full(self.rate(self.limits.frames), now),
            }),
        });
        match shard.push(key, entry.clone()) {
            Some((_, old)) => {
                drop(shard);
                if !self.rested(&old, now) {
                    self.metrics.address.evicted.inc();
                }
            }
            None => self.metrics.address.entries.inc(),
        }
        entry
    }

    /// A bucket's setting, or a placeholder for a bound that is off (its
    /// bucket is never used).
    fn rate(&self, rate: Option<Rate>) -> Rate {
        rate.unwrap_or(Rate { rate: 1, burst: 1 })
    }

    /// Does this entry carry nothing a fresh one would not (no open socket,
    /// both buckets refilled)?
    fn rested(&self, entry: &Arc<Entry>, now: Instant) -> bool {
        if Arc::strong_count(entry) > 1 {
            return false;
        }
        let b = entry.buckets.lock();
        let full = |bucket: &Bucket, rate: Option<Rate>| {
            rate.is_none_or(|rate| bucket.refilled(rate, now))
        };
        full(&b.connections, self.limits.connections) && full(&b.frames, self.limits.frames)
    }

    /// Addresses in the table.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AddressBudget {
    /// Take one frame token from the address (`false`: none left; counted).
    fn take_frame(&self, now: Instant) -> bool {
        let Some(rate) = self.table.limits.frames else {
            return true;
        };
        let taken = self.entry.buckets.lock().frames.take(rate, now).is_ok();
        if !taken {
            self.table.metrics.address.limited("frame");
        }
        taken
    }
}

/// A socket's frame budget: its own bucket (`--client-rate`,
/// `--client-burst`), then its address's (when it has one).
pub struct FrameLimit {
    rate: Rate,
    own: Bucket,
    address: Option<AddressBudget>,
}

impl FrameLimit {
    pub fn new(rate: u32, burst: u32, address: Option<AddressBudget>) -> FrameLimit {
        let rate = Rate { rate, burst };
        FrameLimit {
            rate,
            own: Bucket::full(rate, Instant::now()),
            address,
        }
    }

    /// May the socket take one more frame? `false`: close it (4029).
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        if self.own.take(self.rate, now).is_err() {
            return false;
        }
        self.address.as_ref().is_none_or(|a| a.take_frame(now))
    }
}

#[cfg(test)]
mod tests;
