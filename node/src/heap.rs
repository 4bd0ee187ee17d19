//! glibc's allocator set up for a node's heap: one arena, on transparent
//! huge pages (`--heap-huge-pages`, on by default).
//!
//! Every delivery reads a few small objects of its connection (the member
//! snapshot, the connection, its outbox, its task), scattered over a heap
//! that holds thousands of connections. On 4 KiB pages nearly every one of
//! those reads also misses the TLB, and in a virtual machine a TLB miss walks
//! two sets of page tables. With the heap on 2 MiB pages a W2 delivery costs
//! 6–8 % less CPU on 2 nodes + Redis (BENCHMARKS.md, "The heap on huge
//! pages").
//!
//! glibc puts its main arena on huge pages when asked through the tunable
//! `glibc.malloc.hugetlb=1`, but not the arenas it makes for other threads;
//! `glibc.malloc.arena_max=1` keeps every thread on the main arena. glibc
//! reads tunables only when a process starts, from `GLIBC_TUNABLES`, so a
//! node that should have them and was started without them executes itself
//! again, once, with them added: same process id, same arguments, before
//! any thread or socket exists. A key already in `GLIBC_TUNABLES` is left as
//! it was set. The pages are transparent huge pages, used when the host's
//! `/sys/kernel/mm/transparent_hugepage/enabled` is `madvise` or `always`.

/// Set in the environment of the node executed again, so it does not try
/// a second time: the `GLIBC_TUNABLES` it was given (glibc may rewrite that
/// variable as it reads it).
const DONE: &str = "PUBMESH_HEAP_TUNED";

/// The tunables a node's heap gets, unless `GLIBC_TUNABLES` sets them.
const TUNABLES: [(&str, &str); 2] = [
    ("glibc.malloc.hugetlb", "1"),
    ("glibc.malloc.arena_max", "1"),
];

/// `current` (a `GLIBC_TUNABLES` value) with each of [`TUNABLES`] it does
/// not set appended; `None` when it sets them all.
pub fn with_tunables(current: &str) -> Option<String> {
    let set = |key: &str| {
        current
            .split(':')
            .any(|item| item.split('=').next() == Some(key))
    };
    let mut out = current.to_string();
    for (key, value) in TUNABLES {
        if !set(key) {
            if !out.is_empty() {
                out.push(':');
            }
            out.push_str(key);
            out.push('=');
            out.push_str(value);
        }
    }
    (out != current).then_some(out)
}

/// How the heap was set up, for the start-up log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heap {
    /// `--heap-huge-pages false`, or not glibc on Linux: the allocator's defaults.
    Default,
    /// The tunables are in effect.
    Tuned,
    /// `GLIBC_TUNABLES` already set both keys: left as it was.
    AsSet,
    /// Executing the node again failed (why); the allocator's defaults.
    Failed(String),
}

/// With `huge_pages`, make sure the tunables are in effect: when they are
/// not, execute this program again with them (this returns only if that
/// fails). Call before any thread is started.
pub fn tune(huge_pages: bool) -> Heap {
    if !huge_pages || !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return Heap::Default;
    }
    if std::env::var_os(DONE).is_some() {
        return Heap::Tuned;
    }
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    let Some(tunables) = with_tunables(&current) else {
        return Heap::AsSet;
    };
    reexec(tunables)
}

#[cfg(unix)]
fn reexec(tunables: String) -> Heap {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args
        .next()
        .unwrap_or_else(|| std::ffi::OsString::from("pubmesh"));
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", &tunables)
        .env(DONE, &tunables)
        .exec();
    Heap::Failed(err.to_string())
}

#[cfg(not(unix))]
fn reexec(_: String) -> Heap {
    Heap::Default
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunables_are_added_to_what_is_set_and_never_override_it() {
        assert_eq!(
            with_tunables("").as_deref(),
            Some("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1")
        );
        assert_eq!(
            with_tunables("glibc.malloc.tcache_count=16").as_deref(),
            Some("glibc.malloc.tcache_count=16:glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1")
        );
        assert_eq!(
            with_tunables("glibc.malloc.arena_max=4").as_deref(),
            Some("glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1")
        );
        assert_eq!(
            with_tunables("glibc.malloc.hugetlb=0:glibc.malloc.arena_max=8"),
            None
        );
    }
}
