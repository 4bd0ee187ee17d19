//! `--heap-huge-pages` (on by default): a node started without glibc's
//! heap tunables executes itself once more with them, in the same process,
//! and serves as usual; tunables already set are kept; `false` leaves
//! glibc's defaults.
//!
//! glibc rewrites `GLIBC_TUNABLES` in a process's environment as it reads
//! it, so what the node was given is read from `PUBMESH_HEAP_TUNED`, and
//! whether glibc applied it from the process's mappings: with
//! `glibc.malloc.arena_max=1` no thread gets an arena of its own.

use std::collections::HashMap;

use pubmesh_tests::harness::{patience, Node};
use serde_json::json;

/// The environment of a running process.
fn environ(pid: u32) -> HashMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Arenas glibc made for threads: each reserves 64 MiB at a 64 MiB boundary,
/// an anonymous read-write start followed by the inaccessible rest.
fn thread_arenas(pid: u32) -> usize {
    const HEAP_MAX: u64 = 64 << 20;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let anon: Vec<(u64, u64, String)> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?.to_string();
            if fields.nth(3).is_some() {
                return None; // a file or a named region
            }
            let (start, end) = range.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            Some((start, end, perms))
        })
        .collect();
    anon.windows(2)
        .filter(|w| {
            let ((start, end, perms), (next, next_end, next_perms)) = (&w[0], &w[1]);
            start % HEAP_MAX == 0
                && perms == "rw-p"
                && end == next
                && next_perms == "---p"
                && next_end - start == HEAP_MAX
        })
        .count()
}

/// A node started with `GLIBC_TUNABLES` set to `value`, or unset.
async fn with_tunables(value: Option<&str>) -> Node {
    Node::start_with_env(&[], &[("GLIBC_TUNABLES", value)]).await
}

/// A notification through the API reaches a subscriber of `node`.
async fn serves(node: &Node) {
    let mut sub = node.client("channel_id=heap").await;
    let (status, _) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": ["heap"], "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(sub.recv_within(patience(10)).await, json!({"n": 1}));
}

#[tokio::test]
async fn a_node_runs_with_one_arena_on_huge_pages_in_the_process_it_was_started_as() {
    let node = with_tunables(None).await;
    // The process the test started is the one serving (executed again in
    // place, same pid), with the tunables in its environment.
    let env = environ(node.pid());
    assert_eq!(
        env.get("PUBMESH_HEAP_TUNED").map(String::as_str),
        Some("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1")
    );
    serves(&node).await;
    assert_eq!(thread_arenas(node.pid()), 0, "one arena for every thread");
    // Logged once: by the node that runs, not by the first start.
    let log = node.log_text();
    assert_eq!(
        log.matches("heap: one glibc arena on transparent huge pages")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("pubmesh listening").count(), 1, "{log}");
}

#[tokio::test]
async fn tunables_already_set_are_kept_and_only_the_missing_one_is_added() {
    let node = with_tunables(Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=8")).await;
    let env = environ(node.pid());
    assert_eq!(
        env.get("PUBMESH_HEAP_TUNED").map(String::as_str),
        Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=8:glibc.malloc.hugetlb=1")
    );
    serves(&node).await;

    // Both set already: nothing to add, and the node is not executed again.
    let node = with_tunables(Some("glibc.malloc.hugetlb=0:glibc.malloc.arena_max=4")).await;
    assert_eq!(environ(node.pid()).get("PUBMESH_HEAP_TUNED"), None);
    serves(&node).await;
    assert!(node.log_text().contains("heap: as GLIBC_TUNABLES sets it"));
}

#[tokio::test]
async fn heap_huge_pages_false_keeps_glibcs_defaults() {
    for (args, env) in [
        (vec!["--heap-huge-pages", "false"], vec![]),
        (vec![], vec![("PUBMESH_HEAP_HUGE_PAGES", Some("off"))]),
    ] {
        let mut env = env;
        env.push(("GLIBC_TUNABLES", None));
        let node = Node::start_with_env(&args, &env).await;
        let seen = environ(node.pid());
        assert_eq!(seen.get("GLIBC_TUNABLES"), None);
        assert_eq!(seen.get("PUBMESH_HEAP_TUNED"), None);
        assert!(!node.log_text().contains("heap:"));
        serves(&node).await;
        assert!(
            thread_arenas(node.pid()) > 0,
            "glibc's default: threads get arenas of their own"
        );
    }
}
