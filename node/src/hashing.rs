//! The maps on a node's hot paths (the hub's registries, a connection's
//! channels, the relay's interest and peer views) hash with foldhash
//! rather than std's SipHash-1-3, which was 3.5–4.4 % of a node's CPU
//! when sessions connect, subscribe and leave at 8,000/s: every join and
//! leave looks up several of them (BENCHMARKS.md, "W4: the hot maps hash
//! with foldhash").
//!
//! Keys are names clients choose, so the hasher must not be predictable:
//! each map gets its own random seed (`foldhash::fast::RandomState`, the
//! hasher hashbrown itself uses by default), so a list of names that
//! collide in every node cannot be prepared in advance. foldhash does not
//! claim to resist an attacker who learns a map's seed by probing one node
//! interactively (its README, "HashDoS resistance"); the registries are
//! also sharded 64 ways, each shard with its own seed. The relay's copy
//! filter (`redis::dedup`) and lane keys (`redis::queue::stream_key`) hash
//! with foldhash too, one seed per process, since their keys must stay the
//! same for the life of the process.

/// A `HashMap` with a per-map random foldhash seed.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` with a per-map random foldhash seed.
pub type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// The hasher of [`HashMap`] and [`HashSet`], for picking a shard.
pub type RandomState = foldhash::fast::RandomState;

/// An empty set with room for `n` entries.
pub fn set_with_capacity<T>(n: usize) -> HashSet<T> {
    HashSet::with_capacity_and_hasher(n, RandomState::default())
}

/// An empty map with room for `n` entries.
pub fn map_with_capacity<K, V>(n: usize) -> HashMap<K, V> {
    HashMap::with_capacity_and_hasher(n, RandomState::default())
}

/// A hash of `value` that stays the same for the life of the process (one
/// seed drawn at first use), for keys kept outside a map: the relay's copy
/// filter and lane keys.
pub fn process_hash<T: std::hash::Hash>(value: T) -> u64 {
    use std::hash::BuildHasher;
    static SEED: std::sync::LazyLock<RandomState> = std::sync::LazyLock::new(RandomState::default);
    SEED.hash_one(value)
}
