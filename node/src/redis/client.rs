//! Which Redis server owns a name (connection settings are in
//! `redis_connect`).

/// Which of `n` Redis servers owns `name` (a channel, user or node id), by
/// rendezvous hashing with a fixed hash: every node makes the same choice, and
/// adding a server moves only the names that the new server wins.
pub fn shard_index(name: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    (0..n)
        .max_by_key(|&i| fnv1a(name.as_bytes(), i as u64))
        .unwrap_or(0)
}

/// FNV-1a, 64 bit, seeded: stable across processes and versions.
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche so nearby seeds give unrelated orders.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::shard_index;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_index("x", 1), 0);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let name = format!("chan-{i}");
            let s = shard_index(&name, 3);
            assert_eq!(s, shard_index(&name, 3));
            counts[s] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        // Adding a server only moves names to the new server.
        for i in 0..1000 {
            let name = format!("chan-{i}");
            let (before, after) = (shard_index(&name, 3), shard_index(&name, 4));
            assert!(after == before || after == 3);
        }
    }
}
