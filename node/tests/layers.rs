//! The module structure of node/src stays layered: no import cycle between
//! the crate's top-level modules, none between the files of one directory
//! module, front-ends reach the mesh only through the node's operations, and
//! no source file grows past ~600 lines. Read from the source text: a
//! reference is any `crate::a::…` / `super::…` / sibling path outside
//! comments (see docs/architecture.md, "Layers").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest a file may be, in lines.
const MAX_LINES: usize = 600;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Source text without comments (line comments and doc comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `prefix::name` that follows `prefix::` in `text` (names only).
fn after(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
        // `use crate::{a, b}` and `super::{x, y}` lists.
        if let Some(inner) = rest.strip_prefix('{') {
            let list: String = inner.chars().take_while(|c| *c != '}').collect();
            for item in list.split(',') {
                let item = item.trim();
                let name: String = item
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

struct Source {
    /// Path under src/, e.g. `node/ops.rs`.
    rel: String,
    /// Top-level module (`node`), or "" for lib.rs/main.rs.
    top: String,
    /// The directory module's file name (`ops`), or "mod"/"" at the top.
    file: String,
    text: String,
}

fn sources() -> Vec<Source> {
    let root = src();
    let mut paths = Vec::new();
    files(&root, &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&root)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            let parts: Vec<&str> = rel.split('/').collect();
            let (top, file) = match parts.as_slice() {
                [one] => (one.trim_end_matches(".rs").to_string(), String::new()),
                [dir, rest @ ..] => (
                    dir.to_string(),
                    rest.join("/").trim_end_matches(".rs").to_string(),
                ),
                [] => unreachable!(),
            };
            let top = if top == "lib" || top == "main" {
                String::new()
            } else {
                top
            };
            let text = code(&std::fs::read_to_string(&p).expect("read"));
            Source {
                rel,
                top,
                file,
                text,
            }
        })
        .collect()
}

/// A cycle in `graph`, if any.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut c = stack[at..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn top_level_modules_form_no_cycle() {
    let sources = sources();
    let tops: BTreeSet<String> = sources.iter().map(|s| s.top.clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in sources.iter().filter(|s| !s.top.is_empty()) {
        let edges = graph.entry(s.top.clone()).or_default();
        for name in after(&s.text, "crate::") {
            if tops.contains(&name) && name != s.top {
                edges.insert(name);
            }
        }
    }
    assert!(graph.len() > 10, "found the modules: {graph:?}");
    assert_eq!(cycle(&graph), None, "import cycle between modules");
    // The layering the docs describe.
    let uses = |a: &str, b: &str| graph.get(a).is_some_and(|e| e.contains(b));
    for low in [
        "delivery", "codec", "conn", "outbox", "policy", "history", "presence",
    ] {
        for high in ["node", "frontend", "api", "transport", "relay", "redis"] {
            assert!(!uses(low, high), "{low} must not use {high}");
        }
    }
    assert!(
        !uses("relay", "redis"),
        "the relay seam must not know Redis"
    );
    assert!(!uses("transport", "node"), "transport knows no node");
}

#[test]
fn files_of_one_directory_form_no_cycle() {
    let sources = sources();
    let mut dirs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for s in &sources {
        if s.file.is_empty() || s.file == "mod" || s.file.contains('/') {
            continue;
        }
        let siblings: BTreeSet<String> = sources
            .iter()
            .filter(|o| o.top == s.top && !o.file.is_empty() && o.file != "mod")
            .filter(|o| !o.file.contains('/'))
            .map(|o| o.file.clone())
            .collect();
        let mut edges = BTreeSet::new();
        let crate_prefix = format!("crate::{}::", s.top);
        for name in after(&s.text, "super::")
            .into_iter()
            .chain(after(&s.text, &crate_prefix))
        {
            if siblings.contains(&name) && name != s.file {
                edges.insert(name);
            }
        }
        dirs.entry(s.top.clone())
            .or_default()
            .insert(s.file.clone(), edges);
    }
    for (dir, graph) in &dirs {
        assert_eq!(cycle(graph), None, "import cycle inside {dir}/");
    }
}

#[test]
fn front_ends_use_the_node_api_not_the_hub_or_the_broker() {
    for s in sources().iter().filter(|s| s.top == "frontend") {
        for forbidden in ["hub", "relay", "redis"] {
            let used = after(&s.text, "crate::").contains(forbidden)
                || after(&s.text, "node::").contains(forbidden);
            assert!(!used, "{} uses {forbidden}", s.rel);
        }
    }
}

#[test]
fn no_source_file_is_too_long() {
    for s in sources() {
        let lines = s.text.lines().count();
        assert!(lines <= MAX_LINES, "{} has {lines} lines", s.rel);
    }
}
