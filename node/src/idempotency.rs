//! Idempotent publishing: a publish may carry an `idempotency_key`; a second
//! publish with the same key (from the same publisher, within the window) is
//! not delivered again, and its reply repeats the first one's outcome.
//!
//! A key is scoped to its publisher ([`scoped`]): the server API is one
//! publisher, an authenticated socket publishes as its user, an anonymous
//! socket as its connection. The scoped key travels with the message
//! (`Delivery::idempotency`, and across the cluster in the envelope), so
//! every node recognises a retry, wherever it was sent.
//!
//! [`KeyWindow`] is the bounded memory behind it: entries live for the
//! window and the whole set holds at most a configured number of bytes (the
//! oldest go first; [`KeyWindow::evicted`] counts those forgotten early).
//! [`PublishKeys`] is a node's record of keyed publishes: the ones it made
//! (with their outcome) and the ones it received from other nodes (with the
//! names they were delivered to). History appends are checked where they are
//! stored instead (the Redis append script, or the memory history), in the
//! same atomic step as the append.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long keys are kept when `--idempotency-window-seconds` is not given.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

/// Memory for keys when `--idempotency-max-bytes` is not given (about
/// 130,000 keys).
pub const DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Longest `idempotency_key`, in bytes.
pub const MAX_KEY_LEN: usize = 128;

/// What one entry costs besides its own bytes (map and queue slots, the
/// outcome), for the byte bound.
pub const ENTRY_COST: usize = 128;

/// Check a client's `idempotency_key`: 1 to [`MAX_KEY_LEN`] printable ASCII
/// characters, no spaces.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "idempotency_key must be a string of 1 to {MAX_KEY_LEN} printable ASCII characters without spaces"
        ));
    }
    Ok(())
}

/// An `idempotency_key` field's JSON text, checked: a string that passes
/// [`check_key`] (a number, object or bad string is refused).
pub fn key_from_json(json: &str) -> Result<String, String> {
    let key: String = serde_json::from_str(json).map_err(|_| check_key("").unwrap_err())?;
    check_key(&key)?;
    Ok(key)
}

/// Who publishes with a key: keys of different publishers never meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publisher<'a> {
    /// The server API (every caller holding the API key).
    Api,
    /// An authenticated socket: its user (`root_id`), on any connection.
    User(&'a str),
    /// An anonymous socket: that connection only (`client_id`).
    Connection(&'a str),
}

/// The scoped key: `api\nKEY`, `u\nROOT_ID\nKEY` or `c\nCLIENT_ID\nKEY`.
/// Keys hold no newline, so distinct (publisher, key) pairs never give the
/// same text.
pub fn scoped(publisher: Publisher<'_>, key: &str) -> Arc<str> {
    Arc::from(match publisher {
        Publisher::Api => format!("api\n{key}"),
        Publisher::User(root) => format!("u\n{root}\n{key}"),
        Publisher::Connection(client) => format!("c\n{client}\n{key}"),
    })
}

struct Slot<V> {
    value: V,
    /// Which insert made it (the queue may still name older ones).
    serial: u64,
    cost: usize,
}

/// Values by key for a window of time, bounded in bytes. Keys are held as
/// 128-bit hashes with per-process random keys, so an entry's size does not
/// depend on the key's and no one can aim a collision.
pub struct KeyWindow<V> {
    hashers: (RandomState, RandomState),
    slots: HashMap<u128, Slot<V>>,
    order: VecDeque<(u128, Instant, u64)>,
    serial: u64,
    window: Duration,
    max_bytes: usize,
    bytes: usize,
    evicted: u64,
}

impl<V> KeyWindow<V> {
    pub fn new(window: Duration, max_bytes: usize) -> Self {
        KeyWindow {
            hashers: (RandomState::new(), RandomState::new()),
            slots: HashMap::new(),
            order: VecDeque::new(),
            serial: 0,
            window,
            max_bytes: max_bytes.max(ENTRY_COST),
            bytes: 0,
            evicted: 0,
        }
    }

    /// The hash of a key made of parts (e.g. a channel and a scoped key).
    pub fn hash(&self, parts: &[&str]) -> u128 {
        let a = self.hashers.0.hash_one(parts);
        let b = self.hashers.1.hash_one(parts);
        (u128::from(a) << 64) | u128::from(b)
    }

    /// Drop what is older than the window, then the oldest while over the
    /// byte bound.
    fn expire(&mut self, now: Instant) {
        while let Some(&(key, at, serial)) = self.order.front() {
            let old = now.duration_since(at) >= self.window;
            if !old && self.bytes <= self.max_bytes {
                break;
            }
            self.order.pop_front();
            // The queue may name a key that was replaced since.
            if self.slots.get(&key).is_some_and(|s| s.serial == serial) {
                let slot = self.slots.remove(&key).expect("present");
                self.bytes -= slot.cost;
                if !old {
                    self.evicted += 1;
                }
            }
        }
    }

    pub fn get(&mut self, key: u128) -> Option<&mut V> {
        self.expire(Instant::now());
        self.slots.get_mut(&key).map(|s| &mut s.value)
    }

    /// Insert (or replace) `key`, costing [`ENTRY_COST`] plus `extra` bytes.
    pub fn insert(&mut self, key: u128, value: V, extra: usize) {
        let now = Instant::now();
        let cost = ENTRY_COST + extra;
        self.serial += 1;
        let serial = self.serial;
        if let Some(old) = self.slots.insert(
            key,
            Slot {
                value,
                serial,
                cost,
            },
        ) {
            self.bytes -= old.cost;
        }
        self.bytes += cost;
        self.order.push_back((key, now, serial));
        self.expire(now);
    }

    pub fn remove(&mut self, key: u128) {
        if let Some(slot) = self.slots.remove(&key) {
            self.bytes -= slot.cost;
        }
    }

    /// Add `extra` bytes to an entry's cost (it recorded more).
    pub fn grow(&mut self, key: u128, extra: usize) {
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.cost += extra;
            self.bytes += extra;
        }
        self.expire(Instant::now());
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries dropped before their window ended, to stay within the bytes.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// What a node knows about a scoped key.
#[derive(Clone, Debug)]
pub enum Seen<O> {
    /// This node published it: the outcome (`None` while in flight).
    Published(Option<O>),
    /// It arrived from another node, to these names (channels, users or
    /// client ids, or `*` for a broadcast).
    Received(Vec<String>),
}

/// What to do with a keyed delivery that arrived from another node.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// A copy: every name it carries was delivered before, or this node
    /// published the key itself.
    Drop,
    /// Deliver to `fresh` (the names not delivered yet), skipping members of
    /// `reached` (names delivered earlier under the same key).
    Deliver {
        fresh: Vec<String>,
        reached: Vec<String>,
    },
}

/// A node's keyed publishes, made here or received; `O` is the outcome
/// a publish reports.
pub struct PublishKeys<O> {
    keys: Mutex<KeyWindow<Seen<O>>>,
}

impl<O: Clone> PublishKeys<O> {
    pub fn new(window: Duration, max_bytes: usize) -> Self {
        PublishKeys {
            keys: Mutex::new(KeyWindow::new(window, max_bytes)),
        }
    }

    /// A publish with `key` starts: `None` when the key is new (it is now
    /// in flight here), else what is known about it.
    pub fn begin(&self, key: &str) -> Option<Seen<O>> {
        let mut keys = self.keys.lock();
        let h = keys.hash(&[key]);
        if let Some(seen) = keys.get(h) {
            return Some(seen.clone());
        }
        keys.insert(h, Seen::Published(None), 0);
        None
    }

    /// Record the outcome of this node's publish with `key`.
    pub fn finish(&self, key: &str, outcome: O) {
        let mut keys = self.keys.lock();
        let h = keys.hash(&[key]);
        match keys.get(h) {
            Some(seen @ Seen::Published(_)) => *seen = Seen::Published(Some(outcome)),
            Some(Seen::Received(_)) => {}
            None => keys.insert(h, Seen::Published(Some(outcome)), 0),
        }
    }

    /// Change the recorded outcome of this node's publish with `key` (a
    /// relay outcome that arrived later).
    pub fn update(&self, key: &str, f: impl FnOnce(&mut O)) {
        let mut keys = self.keys.lock();
        let h = keys.hash(&[key]);
        if let Some(Seen::Published(Some(outcome))) = keys.get(h) {
            f(outcome);
        }
    }

    /// Forget a publish with `key` that did nothing (it failed before
    /// anything was delivered), so a retry starts afresh.
    pub fn abandon(&self, key: &str) {
        let mut keys = self.keys.lock();
        let h = keys.hash(&[key]);
        keys.remove(h);
    }

    /// A delivery with `key` arrived from another node, for `names`.
    pub fn arrived(&self, key: &str, names: &[String]) -> Arrival {
        let mut keys = self.keys.lock();
        let h = keys.hash(&[key]);
        let bytes = |names: &[String]| names.iter().map(|n| n.len() + 24).sum::<usize>();
        match keys.get(h) {
            None => {
                keys.insert(h, Seen::Received(names.to_vec()), bytes(names));
                Arrival::Deliver {
                    fresh: names.to_vec(),
                    reached: Vec::new(),
                }
            }
            Some(Seen::Published(_)) => Arrival::Drop,
            Some(Seen::Received(before)) => {
                let fresh: Vec<String> = names
                    .iter()
                    .filter(|n| !before.contains(n))
                    .cloned()
                    .collect();
                if fresh.is_empty() {
                    return Arrival::Drop;
                }
                let reached = before.clone();
                before.extend(fresh.iter().cloned());
                keys.grow(h, bytes(&fresh));
                Arrival::Deliver { fresh, reached }
            }
        }
    }

    /// (keys held, bytes, keys forgotten early).
    pub fn stats(&self) -> (usize, usize, u64) {
        let keys = self.keys.lock();
        (keys.len(), keys.bytes(), keys.evicted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keys_are_printable_ascii_up_to_128_bytes() {
        assert!(check_key("a").is_ok());
        assert!(check_key("550e8400-e29b-41d4-a716-446655440000").is_ok());
        assert!(check_key(&"k".repeat(128)).is_ok());
        for bad in ["", " ", "a b", "tab\there", "é", "line\n"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_key(&"k".repeat(129)).is_err());
    }

    #[test]
    fn scopes_keep_publishers_apart() {
        let a = scoped(Publisher::Api, "k");
        let u = scoped(Publisher::User("k"), "k");
        let c = scoped(Publisher::Connection("k"), "k");
        assert!(a != u && u != c && a != c);
        // A key holds no newline, so the text ends with exactly the key.
        assert!(check_key("b\nc").is_err());
        assert_ne!(
            scoped(Publisher::User("a\nb"), "c"),
            scoped(Publisher::User("a"), "bc")
        );
    }

    #[test]
    fn a_key_published_here_is_a_duplicate_until_the_window_ends() {
        let keys: PublishKeys<u32> = PublishKeys::new(Duration::from_millis(200), 1 << 20);
        assert!(keys.begin("k").is_none());
        assert!(matches!(keys.begin("k"), Some(Seen::Published(None))));
        keys.finish("k", 7);
        assert!(matches!(keys.begin("k"), Some(Seen::Published(Some(7)))));
        assert_eq!(keys.arrived("k", &names(&["x"])), Arrival::Drop);
        std::thread::sleep(Duration::from_millis(250));
        assert!(keys.begin("k").is_none(), "forgotten after the window");
    }

    #[test]
    fn arrivals_deliver_each_name_once_and_skip_what_was_reached() {
        let keys: PublishKeys<u32> = PublishKeys::new(Duration::from_secs(60), 1 << 20);
        assert_eq!(
            keys.arrived("k", &names(&["x"])),
            Arrival::Deliver {
                fresh: names(&["x"]),
                reached: vec![]
            }
        );
        assert_eq!(
            keys.arrived("k", &names(&["y"])),
            Arrival::Deliver {
                fresh: names(&["y"]),
                reached: names(&["x"])
            }
        );
        assert_eq!(keys.arrived("k", &names(&["x", "y"])), Arrival::Drop);
        assert!(matches!(keys.begin("k"), Some(Seen::Received(_))));
        // Another key is independent.
        assert!(matches!(
            keys.arrived("other", &names(&["x"])),
            Arrival::Deliver { .. }
        ));
    }

    #[test]
    fn the_window_stays_within_its_bytes_and_counts_what_it_forgot() {
        let mut w: KeyWindow<()> = KeyWindow::new(Duration::from_secs(60), 100 * ENTRY_COST);
        for i in 0..1000u32 {
            let h = w.hash(&[&i.to_string()]);
            w.insert(h, (), 0);
        }
        assert_eq!(w.len(), 100);
        assert!(w.bytes() <= 100 * ENTRY_COST);
        assert_eq!(w.evicted(), 900);
        let newest = w.hash(&["999"]);
        let oldest = w.hash(&["0"]);
        assert!(w.get(newest).is_some());
        assert!(w.get(oldest).is_none());
    }
}
